//! Every shipped example pipeline over every common shape of source (see
//! tests/common/corpus.rs), judged by ffprobe of the outputs against ffprobe of the source.

mod common;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use common::corpus::{
    self, audio_streams, display_aspect, frame_secs, ratio, stream_secs, transformed, video_secs,
    Source,
};
use common::{probe, video_stream, Farm};
use serde_json::Value;

const PIPELINES: [&str; 4] = ["h264_ladder", "thumbnails", "fermi", "hls"];

/// FERMI's cut, in seconds.
const FERMI_MAX_SECS: f64 = 60.0;

/// How far an audio duration, or a duration made of several parts, may stray.
const AUDIO_SLACK_SECS: f64 = 0.15;

/// Property: every shipped example pipeline turns every common source shape (no audio,
/// several audio tracks, 5.1, 8 kHz mono, rotated portrait, odd dimensions, variable
/// frame rate, 10-bit HDR, interlaced, non-square pixels, MOV, MKV, WebM, MPEG-TS, AVI,
/// under a second, audio longer or shorter than video) into outputs that verify with
/// ffprobe: each job succeeds at its first attempt, and each output has the codec, pixel
/// format, size, display shape, streams and duration its pipeline promises for that source.
/// The whole table of shape × pipeline is printed before the assertion.
#[tokio::test(flavor = "multi_thread")]
async fn every_example_pipeline_takes_every_common_source_shape() {
    let mut farm = Farm::new("corpus", "").await;
    let started = Instant::now();
    let sources = corpus::generate(&farm.dir.path().join("corpus"));
    println!(
        "generated {} source shapes in {:.1} s",
        sources.len(),
        started.elapsed().as_secs_f64()
    );
    let mut jobs = Vec::new();
    for source in &sources {
        let key = format!("inbox/{}", source.shape.file);
        farm.put_file(&key, &source.path);
        for pipeline in PIPELINES {
            jobs.push((source, pipeline, farm.submit_id(&key, pipeline)));
        }
    }
    // Some seventy short jobs on one cell's slots: more than run_cell_until_idle's 300 s
    // allows on a small machine.
    let started = Instant::now();
    let status = farm.run_cell_with_env(&["--until-idle", "2"], &[], Duration::from_secs(1800));
    println!(
        "one cell ran {} jobs in {:.1} s",
        jobs.len(),
        started.elapsed().as_secs_f64()
    );
    let assets = Assets {
        intro: video_secs(&probe(&farm.fetch("assets/intro.mp4").await)),
        outro: video_secs(&probe(&farm.fetch("assets/outro.mp4").await)),
    };

    let mut verdicts = Vec::new();
    for (source, pipeline, id) in &jobs {
        let problems = check_job(&farm, &assets, source, pipeline, id).await;
        verdicts.push((source.shape.name, *pipeline, problems));
    }
    print_table(&verdicts);
    let failed = verdicts.iter().filter(|(_, _, p)| !p.is_empty()).count();
    assert!(status.success(), "cell exit {status}\n{}", farm.logs());
    assert_eq!(
        failed,
        0,
        "{failed} of {} cells failed: see the table above",
        verdicts.len()
    );
}

/// The farm's intro and outro video durations, in seconds.
struct Assets {
    intro: f64,
    outro: f64,
}

/// What a job got wrong, as short reasons; empty if nothing.
async fn check_job(
    farm: &Farm,
    assets: &Assets,
    source: &Source,
    pipeline: &str,
    id: &str,
) -> Vec<String> {
    let Some((state, attempts, error)) = farm.job(id).await else {
        return vec![format!("job {id} has no ledger row")];
    };
    if state != "succeeded" {
        let error = shorten(&error.unwrap_or_default());
        return vec![format!("{state} after {attempts} attempt(s): {error}")];
    }
    let mut c = Check::default();
    c.expect(attempts == 1, || format!("{attempts} attempts"));
    let outputs = Outputs {
        farm,
        keys: farm.outputs(id).await,
    };
    let src = &source.probe;
    match pipeline {
        "h264_ladder" => {
            for (name, side) in [("720p.mp4", 720), ("480p.mp4", 480)] {
                if let Some(p) = outputs.probe(name, &mut c).await {
                    c.within(name, |c| check_rendition(c, &p, src, side));
                    c.within(name, |c| check_ladder_extras(c, &p, src));
                }
            }
        }
        "thumbnails" => check_thumbnails(&mut c, &outputs, src).await,
        "fermi" => {
            if let Some(p) = outputs.probe("fermi.mp4", &mut c).await {
                c.within("fermi.mp4", |c| check_fermi(c, &p, src, assets));
            }
        }
        "hls" => check_hls(&mut c, &outputs, src).await,
        other => panic!("no checks for pipeline {other}"),
    }
    c.0
}

/// An error on one line, its middle left out if long: FFmpeg's reason comes last, after
/// the filter graph it echoes.
fn shorten(error: &str) -> String {
    let words: Vec<&str> = error.split_whitespace().collect();
    let line = words.join(" ");
    let chars: Vec<char> = line.chars().collect();
    if chars.len() <= 300 {
        return line;
    }
    let head: String = chars[..100].iter().collect();
    let tail: String = chars[chars.len() - 200..].iter().collect();
    format!("{head} … {tail}")
}

/// The reasons a cell failed, collected rather than stopping at the first.
#[derive(Default)]
struct Check(Vec<String>);

impl Check {
    fn expect(&mut self, ok: bool, why: impl FnOnce() -> String) {
        if !ok {
            self.0.push(why());
        }
    }

    /// Runs `f`, naming `what` in front of each reason it adds.
    fn within(&mut self, what: &str, f: impl FnOnce(&mut Check)) {
        let mut inner = Check::default();
        f(&mut inner);
        self.0
            .extend(inner.0.into_iter().map(|r| format!("{what}: {r}")));
    }
}

/// A job's outputs, found by file name among the keys the ledger recorded.
struct Outputs<'a> {
    farm: &'a Farm,
    keys: Vec<String>,
}

impl Outputs<'_> {
    async fn fetch(&self, name: &str, c: &mut Check) -> Option<PathBuf> {
        let key = self
            .keys
            .iter()
            .find(|k| k.rsplit('/').next() == Some(name));
        c.expect(key.is_some(), || format!("no {name} among the outputs"));
        Some(self.farm.fetch(key?).await)
    }

    async fn probe(&self, name: &str, c: &mut Check) -> Option<Value> {
        Some(probe(&self.fetch(name, c).await?))
    }
}

/// The first video stream of a probe, if any.
fn video(p: &Value) -> Option<Value> {
    p["streams"]
        .as_array()?
        .iter()
        .find(|s| s["codec_type"] == "video")
        .cloned()
}

/// The video stream of an output, checked to be H.264 in 8-bit 4:2:0.
fn h264_420(c: &mut Check, p: &Value) -> Option<Value> {
    let v = video(p);
    c.expect(v.is_some(), || "no video stream".into());
    let v = v?;
    c.expect(v["codec_name"] == "h264", || {
        format!("codec {}", v["codec_name"])
    });
    c.expect(v["pix_fmt"] == "yuv420p", || {
        format!("pix_fmt {}", v["pix_fmt"])
    });
    Some(v)
}

/// An H.264 4:2:0 8-bit picture whose shorter side is `side`, shown as the source is
/// shown, with audio iff the source has audio.
fn check_rendition(c: &mut Check, p: &Value, src: &Value, side: u64) {
    let Some(v) = h264_420(c, p) else { return };
    let (w, h) = (v["width"].as_u64(), v["height"].as_u64());
    c.expect(w.min(h) == Some(side), || {
        format!(
            "{}x{}, the shorter side is not {side}",
            v["width"], v["height"]
        )
    });
    let source_audio = !audio_streams(src).is_empty();
    let audio = audio_streams(p);
    c.expect(source_audio != audio.is_empty(), || {
        format!(
            "{} audio stream(s) for a source with audio: {source_audio}",
            audio.len()
        )
    });
    c.expect(audio.iter().all(|a| a["codec_name"] == "aac"), || {
        "audio not all aac".into()
    });
}

/// What the ladder promises beyond a rendition: square pixels, the source's display
/// shape, upright as stored, SDR, progressive, the source's durations.
fn check_ladder_extras(c: &mut Check, p: &Value, src: &Value) {
    let Some(v) = video(p) else { return };
    let sar = ratio(&v["sample_aspect_ratio"]);
    c.expect(sar.map_or(true, |r| r == 1.0 || r == 0.0), || {
        format!("SAR {}", v["sample_aspect_ratio"])
    });
    let src_v = video_stream(src);
    let want = display_aspect(&src_v);
    let (w, h) = (v["width"].as_f64(), v["height"].as_f64());
    let got = w.zip(h).map_or(0.0, |(w, h)| w / h);
    c.expect((got / want - 1.0).abs() <= 0.02, || {
        format!("frame aspect {got:.3}, the source displays {want:.3}")
    });
    c.expect(!transformed(&v), || "a display matrix or rotate tag".into());
    let transfer = v["color_transfer"].as_str().unwrap_or("");
    c.expect(!["smpte2084", "arib-std-b67"].contains(&transfer), || {
        format!("HDR transfer {transfer}")
    });
    let order = v["field_order"].as_str().unwrap_or("progressive");
    c.expect(["progressive", "unknown"].contains(&order), || {
        format!("field order {order}")
    });
    let (want, got) = (video_secs(src), stream_secs(&v));
    let slack = 2.0 * frame_secs(&src_v) + 0.001;
    c.expect(got.is_some_and(|g| (g - want).abs() <= slack), || {
        format!("video {}, the source's {want:.3} s", secs(got))
    });
    let src_audio = audio_streams(src);
    let out_audio = audio_streams(p);
    if let (Some(sa), Some(oa)) = (src_audio.first(), out_audio.first()) {
        let (want, got) = (stream_secs(sa), stream_secs(oa));
        c.expect(near(got, want, AUDIO_SLACK_SECS), || {
            format!("audio {}, the source's {}", secs(got), secs(want))
        });
    }
}

/// A duration for a reason: `1.234 s`, or `no duration`.
fn secs(s: Option<f64>) -> String {
    s.map_or("no duration".into(), |s| format!("{s:.3} s"))
}

fn near(got: Option<f64>, want: Option<f64>, slack: f64) -> bool {
    got.zip(want).is_some_and(|(g, w)| (g - w).abs() <= slack)
}

async fn check_thumbnails(c: &mut Check, outputs: &Outputs<'_>, src: &Value) {
    let portrait = display_aspect(&video_stream(src)) < 1.0;
    if let Some(p) = outputs.probe("poster.jpg", c).await {
        let v = video(&p).unwrap_or_default();
        c.expect(v["codec_name"] == "mjpeg", || {
            format!("poster {}", v["codec_name"])
        });
        let (w, h) = (v["width"].as_u64(), v["height"].as_u64());
        c.expect((h > w) == portrait, || {
            format!(
                "poster {}x{} for a source portrait: {portrait}",
                v["width"], v["height"]
            )
        });
    }
    if let Some(p) = outputs.probe("contact.jpg", c).await {
        let v = video(&p).unwrap_or_default();
        c.expect(v["codec_name"] == "mjpeg", || {
            format!("contact {}", v["codec_name"])
        });
        c.expect(v["width"] == 1280, || {
            format!("contact width {}", v["width"])
        });
    }
}

/// 720p25 H.264 with stereo 44.1 kHz AAC (silence for a silent source), as long as the
/// intro, the source's video and the outro, cut at 60 s.
fn check_fermi(c: &mut Check, p: &Value, src: &Value, assets: &Assets) {
    let Some(v) = h264_420(c, p) else { return };
    c.expect(v["width"] == 1280 && v["height"] == 720, || {
        format!("{}x{}", v["width"], v["height"])
    });
    let want = FERMI_MAX_SECS.min(assets.intro + video_secs(src) + assets.outro);
    let got = stream_secs(&v);
    c.expect(near(got, Some(want), AUDIO_SLACK_SECS), || {
        format!("video {}, expected {want:.3} s", secs(got))
    });
    let audio = audio_streams(p);
    let Some(a) = audio.first() else {
        return c.expect(false, || "no audio stream".into());
    };
    c.expect(
        a["codec_name"] == "aac" && a["channels"] == 2 && a["sample_rate"] == "44100",
        || {
            format!(
                "audio {} {} ch {} Hz",
                a["codec_name"], a["channels"], a["sample_rate"]
            )
        },
    );
    let got = stream_secs(a);
    c.expect(near(got, Some(want), AUDIO_SLACK_SECS), || {
        format!("audio {}, expected {want:.3} s", secs(got))
    });
}

/// A media playlist as long as the source's video whose first segment is a 720p
/// rendition of it.
async fn check_hls(c: &mut Check, outputs: &Outputs<'_>, src: &Value) {
    outputs.fetch("master.m3u8", c).await;
    let Some(media) = outputs.fetch("720p.m3u8", c).await else {
        return;
    };
    let media = std::fs::read_to_string(media).expect("a playlist");
    let listed: f64 = media
        .lines()
        .filter_map(|l| l.strip_prefix("#EXTINF:"))
        .filter_map(|l| {
            l.trim_end_matches(',')
                .split(',')
                .next()?
                .parse::<f64>()
                .ok()
        })
        .sum();
    let want = video_secs(src);
    let slack = AUDIO_SLACK_SECS + 2.0 * frame_secs(&video_stream(src));
    c.expect((listed - want).abs() <= slack, || {
        format!("EXTINF sum {listed:.3} s, the source's video {want:.3} s")
    });
    let Some(first) = media.lines().find(|l| l.ends_with(".ts")) else {
        return c.expect(false, || "720p.m3u8 lists no segment".into());
    };
    let segment = first.rsplit('/').next().unwrap_or(first);
    c.expect(segment.starts_with("720p_"), || {
        format!("first segment {segment}")
    });
    if let Some(p) = outputs.probe(segment, c).await {
        c.within(segment, |c| check_rendition(c, &p, src, 720));
    }
}

/// Prints shape × pipeline (ok or FAIL), then the reasons of each failed cell.
fn print_table(verdicts: &[(&str, &str, Vec<String>)]) {
    println!(
        "\n{:<20}{}",
        "shape",
        PIPELINES.map(|p| format!("{p:<13}")).concat()
    );
    for row in verdicts.chunks(PIPELINES.len()) {
        let cells: String = row
            .iter()
            .map(|(_, _, p)| format!("{:<13}", if p.is_empty() { "ok" } else { "FAIL" }))
            .collect();
        println!("{:<20}{cells}", row[0].0);
    }
    println!();
    for (shape, pipeline, problems) in verdicts.iter().filter(|(_, _, p)| !p.is_empty()) {
        println!("{shape} × {pipeline}: {}", problems.join("; "));
    }
}
