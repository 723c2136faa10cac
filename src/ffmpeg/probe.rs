//! ffprobe: what a file holds, and whether an output is what its pipeline promised.
//!
//! An FFmpeg stopped by a signal can leave a valid but truncated MP4, so exit 0 is not
//! success: every output is probed and checked against what was [`Expect`]ed of it.

use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use super::{input_guard, run, FfmpegError, Limits, Sandbox, Tool};

/// What an output must be; `None` is not checked.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Expect {
    /// Video codec as ffprobe names it (`h264`, `mjpeg`, …); `"none"` never matches.
    pub video_codec: Option<String>,
    /// The codec of the output's audio, when it has audio.
    pub audio_codec: Option<String>,
    /// When the output must have audio; unset, [`Audio::Source`] if an `audio_codec`
    /// is expected, and nothing checked otherwise (an image has no audio to follow).
    pub audio: Option<Audio>,
    pub width: Option<u32>,
    pub height: Option<u32>,
    /// The smaller of width and height: `720` fits a landscape 1280×720 and a portrait
    /// 720×1280 alike.
    pub short_side: Option<u32>,
    pub pixel_format: Option<String>,
    pub duration: Option<Length>,
}

/// When an output must carry audio.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Audio {
    /// Exactly when the source has audio.
    #[default]
    Source,
    /// Always: the pipeline makes it (silence under a source without audio).
    Always,
    /// Never.
    None,
}

/// An expected duration.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Length {
    Seconds(f64),
    /// The probed source's.
    OfSource,
}

/// What the ledger keeps of a probe.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Probe {
    pub format: String,
    /// Seconds; `None` for a still image.
    pub duration: Option<f64>,
    pub streams: Vec<Stream>,
}

/// One stream. Fields added after the first ledger rows default when read back.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Stream {
    pub kind: String,
    pub codec: String,
    /// Coded size, before rotation and sample aspect ratio.
    pub width: Option<u32>,
    pub height: Option<u32>,
    pub duration: Option<f64>,
    /// Seconds at which the stream starts (ffprobe's `start_time`; AAC priming can make
    /// it negative), when known.
    pub start: Option<f64>,
    /// Frames per second of a video stream.
    pub fps: Option<f64>,
    /// `yuv420p`, `yuv420p10le`, …
    pub pix_fmt: Option<String>,
    /// Transfer characteristic: `smpte2084` (PQ) and `arib-std-b67` (HLG) are HDR.
    pub color_transfer: Option<String>,
    /// `progressive`, or `tt`/`bb`/`tb`/`bt` for interlaced video.
    pub field_order: Option<String>,
    /// Sample (pixel) aspect ratio, `64:45`; absent or `1:1` for square pixels.
    pub sar: Option<String>,
    /// Degrees a player turns the picture (display matrix or `rotate` tag).
    pub rotation: Option<i32>,
    pub channels: Option<u32>,
    pub sample_rate: Option<u32>,
}

impl Stream {
    /// PQ or HLG transfer: needs tone mapping for an SDR output.
    pub fn is_hdr(&self) -> bool {
        matches!(
            self.color_transfer.as_deref(),
            Some("smpte2084" | "arib-std-b67")
        )
    }

    pub fn is_interlaced(&self) -> bool {
        matches!(self.field_order.as_deref(), Some("tt" | "bb" | "tb" | "bt"))
    }

    /// True when a player turns the picture a quarter turn.
    pub fn is_turned(&self) -> bool {
        self.rotation.is_some_and(|r| r.rem_euclid(180) == 90)
    }

    /// The sample aspect ratio as a number (1.0 when absent or unreadable).
    pub fn sar_ratio(&self) -> f64 {
        self.sar
            .as_deref()
            .and_then(|s| s.split_once(':'))
            .and_then(|(n, d)| Some((n.parse::<f64>().ok()?, d.parse::<f64>().ok()?)))
            .filter(|(n, d)| *n > 0.0 && *d > 0.0)
            .map_or(1.0, |(n, d)| n / d)
    }

    /// Width and height as a player shows the picture: square pixels, turned upright.
    pub fn display_size(&self) -> Option<(f64, f64)> {
        let (w, h) = (f64::from(self.width?), f64::from(self.height?));
        let w = w * self.sar_ratio();
        Some(if self.is_turned() { (h, w) } else { (w, h) })
    }
}

impl Probe {
    pub fn video(&self) -> Option<&Stream> {
        self.streams.iter().find(|s| s.kind == "video")
    }

    pub fn audio(&self) -> Option<&Stream> {
        self.streams.iter().find(|s| s.kind == "audio")
    }

    /// Streams of `kind` (`video`, `audio`, …).
    pub fn count(&self, kind: &str) -> usize {
        self.streams.iter().filter(|s| s.kind == kind).count()
    }

    /// Seconds of the first video stream, else of the file.
    pub fn video_duration(&self) -> Option<f64> {
        self.video().and_then(|v| v.duration).or(self.duration)
    }

    /// Whether the source has `fact`, one of [`FACTS`]; `None` for an unknown fact.
    pub fn has(&self, fact: &str) -> Option<bool> {
        let video = self.video();
        Some(match fact {
            "audio" => self.audio().is_some(),
            "video" => video.is_some(),
            "hdr" => video.is_some_and(Stream::is_hdr),
            "interlaced" => video.is_some_and(Stream::is_interlaced),
            "rotated" => video.is_some_and(|v| v.rotation.is_some_and(|r| r != 0)),
            "portrait" => video
                .and_then(Stream::display_size)
                .is_some_and(|(w, h)| h > w),
            _ => return None,
        })
    }
}

/// What a pipeline's conditions may ask of a source's probe (see [`Probe::has`]).
pub const FACTS: &[&str] = &["audio", "video", "hdr", "interlaced", "rotated", "portrait"];

/// Probes a local file, which `limits.access` must let ffprobe read.
pub async fn probe(
    path: &std::path::Path,
    sandbox: &Sandbox,
    limits: &Limits,
    cancel: &CancellationToken,
) -> Result<Probe, FfmpegError> {
    let mut args: Vec<String> = vec!["-v".into(), "error".into()];
    args.extend(input_guard(limits));
    args.extend(
        [
            "-print_format",
            "json",
            "-show_format",
            "-show_streams",
            "-i",
        ]
        .map(String::from),
    );
    args.push(path.to_string_lossy().into_owned());
    let json = run(sandbox, Tool::Ffprobe, &args, limits, cancel).await?;
    parse(&json).map_err(|reason| FfmpegError::BadOutput {
        program: "ffprobe".into(),
        reason,
    })
}

#[derive(Deserialize)]
struct RawProbe {
    #[serde(default)]
    streams: Vec<RawStream>,
    format: Option<RawFormat>,
}

#[derive(Deserialize)]
struct RawStream {
    codec_type: Option<String>,
    codec_name: Option<String>,
    width: Option<u32>,
    height: Option<u32>,
    duration: Option<String>,
    start_time: Option<String>,
    avg_frame_rate: Option<String>,
    pix_fmt: Option<String>,
    color_transfer: Option<String>,
    field_order: Option<String>,
    sample_aspect_ratio: Option<String>,
    channels: Option<u32>,
    sample_rate: Option<String>,
    #[serde(default)]
    side_data_list: Vec<RawSideData>,
    #[serde(default)]
    tags: std::collections::BTreeMap<String, serde_json::Value>,
}

#[derive(Deserialize)]
struct RawSideData {
    rotation: Option<f64>,
}

#[derive(Deserialize)]
struct RawFormat {
    format_name: Option<String>,
    duration: Option<String>,
}

/// Parses `ffprobe -print_format json -show_format -show_streams` output.
pub fn parse(json: &str) -> Result<Probe, String> {
    let raw: RawProbe = serde_json::from_str(json).map_err(|e| e.to_string())?;
    let format = raw.format.ok_or("no format section")?;
    let streams = raw
        .streams
        .into_iter()
        .map(|s| {
            let rotation = s
                .side_data_list
                .iter()
                .find_map(|d| d.rotation)
                .or_else(|| s.tags.get("rotate")?.as_str()?.parse().ok())
                .map(|r: f64| r.round() as i32)
                .filter(|r| *r != 0);
            Stream {
                kind: s.codec_type.unwrap_or_default(),
                codec: s.codec_name.unwrap_or_default(),
                width: s.width,
                height: s.height,
                duration: s.duration.as_deref().and_then(seconds),
                start: s
                    .start_time
                    .as_deref()
                    .and_then(|t| t.parse::<f64>().ok())
                    .filter(|t| t.is_finite()),
                fps: s.avg_frame_rate.as_deref().and_then(rate),
                pix_fmt: s.pix_fmt,
                color_transfer: s.color_transfer,
                field_order: s.field_order,
                sar: s.sample_aspect_ratio.filter(|r| r != "1:1" && r != "0:1"),
                rotation,
                channels: s.channels,
                sample_rate: s.sample_rate.and_then(|r| r.parse().ok()),
            }
        })
        .collect();
    Ok(Probe {
        format: format.format_name.unwrap_or_default(),
        duration: format.duration.as_deref().and_then(seconds),
        streams,
    })
}

fn seconds(s: &str) -> Option<f64> {
    s.parse::<f64>().ok().filter(|d| d.is_finite() && *d >= 0.0)
}

/// `"25/1"` → 25.0; `"0/0"` (no rate) → None.
fn rate(s: &str) -> Option<f64> {
    let (n, d) = s.split_once('/')?;
    let (n, d): (f64, f64) = (n.parse().ok()?, d.parse().ok()?);
    (d > 0.0 && n > 0.0).then_some(n / d)
}

/// Checks a probed output against what is expected of it; `source` is the probed
/// input. Each error names the property, what was seen and what was expected.
///
/// Durations follow the source stream by stream: the output's video against the
/// source's video, its audio against the source's audio (a source whose audio outlasts
/// its video keeps both lengths). Video matches within two frames of the output's rate
/// (one frame each side of rounding), audio within [`AUDIO_SLACK`].
pub fn verify(spec: &Expect, out: &Probe, source: &Probe) -> Result<(), String> {
    verify_video(spec, out)?;
    verify_audio(spec, out, source)?;
    match spec.duration {
        None => Ok(()),
        Some(Length::Seconds(expected)) => {
            let got = out.duration.ok_or("the output has no duration")?;
            within("duration", got, expected, video_slack(out))
        }
        Some(Length::OfSource) => verify_source_length(out, source),
    }
}

/// Audio may differ from its source by an AAC frame or two of priming and padding.
pub const AUDIO_SLACK: f64 = 0.15;

fn verify_video(spec: &Expect, out: &Probe) -> Result<(), String> {
    let video = out.video();
    if let Some(codec) = &spec.video_codec {
        let found = video.map_or("none", |v| v.codec.as_str());
        if found != codec {
            return Err(format!("video codec is {found}, expected {codec}"));
        }
    }
    let short = video.and_then(|v| Some(v.width?.min(v.height?)));
    for (want, got, what) in [
        (spec.width, video.and_then(|v| v.width), "width"),
        (spec.height, video.and_then(|v| v.height), "height"),
        (spec.short_side, short, "shorter side"),
    ] {
        if let Some(want) = want {
            if got != Some(want) {
                let got = got.map_or("none".to_string(), |g| g.to_string());
                return Err(format!("{what} is {got}, expected {want}"));
            }
        }
    }
    if let Some(want) = &spec.pixel_format {
        let got = video.and_then(|v| v.pix_fmt.as_deref()).unwrap_or("none");
        if got != want {
            return Err(format!("pixel format is {got}, expected {want}"));
        }
    }
    Ok(())
}

fn verify_audio(spec: &Expect, out: &Probe, source: &Probe) -> Result<(), String> {
    let rule = match (spec.audio, &spec.audio_codec) {
        (Some(rule), _) => rule,
        (None, Some(_)) => Audio::Source,
        (None, None) => return Ok(()),
    };
    let wanted = match rule {
        Audio::Source => source.audio().is_some(),
        Audio::Always => true,
        Audio::None => false,
    };
    match (out.audio(), wanted) {
        (None, true) => Err(match rule {
            Audio::Source => "has no audio stream, expected one: the source has audio".into(),
            _ => "has no audio stream, expected one".into(),
        }),
        (Some(a), false) if rule == Audio::None => {
            Err(format!("has an audio stream ({}), expected none", a.codec))
        }
        (Some(a), _) => match &spec.audio_codec {
            Some(codec) if a.codec != *codec => {
                Err(format!("audio codec is {}, expected {codec}", a.codec))
            }
            _ => Ok(()),
        },
        (None, false) => Ok(()),
    }
}

fn verify_source_length(out: &Probe, source: &Probe) -> Result<(), String> {
    let mut checked = false;
    if let (Some(ov), Some(_)) = (out.video(), source.video()) {
        if let (Some(got), Some(expected)) = (ov.duration.or(out.duration), source.video_duration())
        {
            within("video duration", got, expected, video_slack(out))?;
            checked = true;
        }
    }
    if let (Some(oa), Some(sa)) = (out.audio(), source.audio()) {
        if let (Some(got), Some(expected)) = (
            oa.duration.or(out.duration),
            sa.duration.or(source.duration),
        ) {
            within("audio duration", got, expected, AUDIO_SLACK)?;
            checked = true;
        }
    }
    if checked {
        return Ok(());
    }
    let expected = source.duration.ok_or("the source has no duration")?;
    let got = out.duration.ok_or("the output has no duration")?;
    within("duration", got, expected, video_slack(out))
}

/// Two frames of the output's video, or 0.1 s without video.
fn video_slack(out: &Probe) -> f64 {
    out.video().and_then(|v| v.fps).map_or(0.1, |fps| 2.0 / fps) + 0.001
}

fn within(what: &str, got: f64, expected: f64, slack: f64) -> Result<(), String> {
    if (got - expected).abs() > slack {
        return Err(format!(
            "{what} is {got:.3} s, expected {expected:.3} s ± {slack:.3} (truncated or wrong cut)"
        ));
    }
    Ok(())
}

/// What the in-process readers' tests hold them to: ffprobe itself.
#[cfg(test)]
pub(crate) mod testing {
    use super::*;

    /// ffprobe's description of a local file.
    pub fn ffprobe(path: &std::path::Path) -> Probe {
        let out = std::process::Command::new("ffprobe")
            .args(["-v", "error", "-print_format", "json"])
            .args(["-show_format", "-show_streams"])
            .arg(path)
            .output()
            .expect("ffprobe is installed");
        parse(&String::from_utf8_lossy(&out.stdout)).expect("ffprobe's JSON")
    }

    /// `ours` describes `name` as ffprobe does: the same streams with the same fields,
    /// durations within `secs` and frame rates within `fps`.
    pub fn same_streams(name: &str, ours: &Probe, theirs: &Probe, secs: f64, fps: f64) {
        assert_eq!(ours.format, theirs.format, "{name}");
        assert_eq!(ours.streams.len(), theirs.streams.len(), "{name}");
        for (a, b) in ours.streams.iter().zip(&theirs.streams) {
            let (da, db) = (a.duration.expect("ours"), b.duration.expect("ffprobe's"));
            assert!((da - db).abs() <= secs, "{name} {}: {da} vs {db}", a.kind);
            if let (Some(x), Some(y)) = (a.fps, b.fps) {
                assert!((x - y).abs() <= fps, "{name} fps {x} vs {y}");
            }
            if let Some(start) = a.start {
                let theirs = b.start.expect("ffprobe's start");
                assert!(
                    (start - theirs).abs() <= secs,
                    "{name} start {start} vs {theirs}"
                );
            }
            let mut a = a.clone();
            (a.duration, a.fps, a.start) = (b.duration, b.fps, b.start);
            assert_eq!(&a, b, "{name}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Captured from `ffprobe -v error -print_format json -show_format -show_streams` on a
    /// 12 s 720p H.264/AAC clip (trimmed to the fields we read).
    const CLIP: &str = r#"{
        "streams": [
            {"index": 0, "codec_name": "h264", "codec_type": "video", "width": 1280,
             "height": 720, "avg_frame_rate": "25/1", "duration": "12.000000"},
            {"index": 1, "codec_name": "aac", "codec_type": "audio",
             "avg_frame_rate": "0/0", "duration": "12.021333"}
        ],
        "format": {"filename": "clip1.mp4", "format_name": "mov,mp4,m4a,3gp,3g2,mj2",
                   "duration": "12.021333"}
    }"#;

    fn spec() -> Expect {
        Expect {
            video_codec: Some("h264".into()),
            audio_codec: Some("aac".into()),
            width: Some(1280),
            height: Some(720),
            duration: Some(Length::OfSource),
            ..Expect::default()
        }
    }

    /// A portrait phone clip: coded 1920×1080, turned a quarter by its display matrix.
    const PHONE: &str = r#"{
        "streams": [
            {"codec_name": "hevc", "codec_type": "video", "width": 1920, "height": 1080,
             "pix_fmt": "yuv420p10le", "color_transfer": "arib-std-b67",
             "field_order": "progressive", "sample_aspect_ratio": "1:1",
             "side_data_list": [{"side_data_type": "Display Matrix", "rotation": -90}],
             "avg_frame_rate": "30/1", "duration": "3.0"}
        ],
        "format": {"format_name": "mov,mp4,m4a,3gp,3g2,mj2", "duration": "3.0"}
    }"#;

    #[test]
    fn facts_read_rotation_hdr_and_missing_audio() {
        let p = parse(PHONE).unwrap();
        let v = p.video().unwrap();
        assert_eq!(v.rotation, Some(-90));
        assert_eq!(v.display_size(), Some((1080.0, 1920.0)));
        assert_eq!(p.has("portrait"), Some(true));
        assert_eq!(p.has("hdr"), Some(true));
        assert_eq!(p.has("audio"), Some(false));
        assert_eq!(p.has("interlaced"), Some(false));
        assert_eq!(p.has("loud"), None);
        assert_eq!(v.sar, None, "1:1 is square pixels");
        let clip = parse(CLIP).unwrap();
        assert_eq!(clip.has("portrait"), Some(false));
        assert_eq!(clip.has("audio"), Some(true));
    }

    #[test]
    fn audio_is_expected_when_the_source_has_it() {
        let with_audio = parse(CLIP).unwrap();
        let mut silent = with_audio.clone();
        silent.streams.retain(|s| s.kind != "audio");
        let spec = Expect {
            audio_codec: Some("aac".into()),
            ..Expect::default()
        };
        assert_eq!(verify(&spec, &silent, &silent), Ok(()));
        assert!(verify(&spec, &silent, &with_audio)
            .unwrap_err()
            .contains("the source has audio"));
        let image = Expect::default();
        assert_eq!(
            verify(&image, &silent, &with_audio),
            Ok(()),
            "nothing asked"
        );
        let always = Expect {
            audio: Some(Audio::Always),
            ..spec.clone()
        };
        assert!(verify(&always, &silent, &silent).is_err());
        let none = Expect {
            audio: Some(Audio::None),
            ..spec
        };
        assert!(verify(&none, &with_audio, &with_audio)
            .unwrap_err()
            .contains("expected none"));
    }

    #[test]
    fn durations_follow_each_source_stream() {
        let source = parse(CLIP).unwrap();
        let mut out = source.clone();
        // Audio that outlasts the video in the source does so in the output too.
        out.duration = Some(20.0);
        assert_eq!(verify(&spec(), &out, &source), Ok(()));
        out.streams[1].duration = Some(11.0);
        let err = verify(&spec(), &out, &source).unwrap_err();
        assert!(err.starts_with("audio duration is 11.000 s"), "{err}");
    }

    #[test]
    fn parses_a_captured_probe() {
        let p = parse(CLIP).unwrap();
        assert_eq!(p.duration, Some(12.021333));
        assert_eq!(p.video().unwrap().fps, Some(25.0));
        assert_eq!(p.audio().unwrap().fps, None);
        assert_eq!(p.video().unwrap().height, Some(720));
    }

    #[test]
    fn malformed_probes_are_errors() {
        assert!(parse("").is_err());
        assert!(parse("{\"streams\": []}").is_err());
        let p = parse(r#"{"format": {"duration": "N/A"}}"#).unwrap();
        assert_eq!(p.duration, None);
    }

    #[test]
    fn verify_accepts_a_match_and_names_each_mismatch() {
        let p = parse(CLIP).unwrap();
        assert_eq!(verify(&spec(), &p, &p), Ok(()));
        let mut truncated = p.clone();
        truncated.streams[0].duration = Some(7.5);
        assert!(verify(&spec(), &truncated, &p)
            .unwrap_err()
            .contains("truncated"));
        let mut s = spec();
        s.height = Some(480);
        assert!(verify(&s, &p, &p).unwrap_err().contains("height"));
        s = spec();
        s.video_codec = Some("hevc".into());
        assert!(verify(&s, &p, &p).unwrap_err().contains("expected hevc"));
        s = spec();
        s.duration = Some(Length::Seconds(12.05));
        assert_eq!(verify(&s, &p, &p), Ok(()));
        s = spec();
        s.height = None;
        s.short_side = Some(720);
        s.pixel_format = Some("yuv420p".into());
        assert!(verify(&s, &p, &p)
            .unwrap_err()
            .contains("pixel format is none"));
    }
}
