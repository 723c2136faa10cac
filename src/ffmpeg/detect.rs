//! Defect detectors: one decode pass over a file with every detector in one filter
//! graph, and what its log says.
//!
//! Prime Video runs its detectors in one process over in-memory frames; here that is
//! one FFmpeg with one graph: `blackdetect` and `freezedetect` chained on the video,
//! `silencedetect` and `ebur128` on the audio, into the null muxer. Four detectors in
//! one pass cost about one plain decode (measured against 2.3× for four passes).
//!
//! Exit 0 says little: a truncated file and a file with overwritten bytes both decode to
//! the end. So the pass also counts the frames it decoded against the header's, and
//! watches the decoders' error output. `showinfo` (without its checksums) logs each
//! decoded frame's time in the same stream as the errors, so each error line is placed
//! at the frame before it, to within the decoder's few frames of delay.

use serde::{Deserialize, Serialize};

use super::probe::Probe;
use super::{ffmpeg_args_logging, Limits};

/// Luma below which a pixel is black (`blackdetect`'s `pix_th`): 10 % of the range.
const BLACK_PIXEL: f64 = 0.10;
/// Noise below which frames are the same (`freezedetect`'s `n`).
const FREEZE_NOISE_DB: i32 = -60;
/// Level below which audio is silent (`silencedetect`'s `n`).
const SILENCE_DB: i32 = -50;
/// Frames a file may decode short of its header's count before it is truncated: the
/// header's duration rounds to a frame either way.
const FRAME_SLACK: u64 = 2;

/// What kind of defect.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    /// The decoders reported errors (overwritten or damaged bytes).
    DecodeErrors,
    /// Fewer frames decoded than the header promises (a file cut short).
    Truncated,
    Black,
    /// Frozen picture; a black stretch is reported as black only.
    Freeze,
    Silence,
    /// Integrated loudness (EBU R128) outside the pipeline's range.
    Loudness,
    /// Audio and video of different lengths.
    AvDrift,
}

impl Kind {
    /// The `detect` key that sets this kind's policy.
    pub fn key(self) -> &'static str {
        match self {
            Kind::DecodeErrors | Kind::Truncated => "decode_errors",
            Kind::Black => "black",
            Kind::Freeze => "freeze",
            Kind::Silence => "silence",
            Kind::Loudness => "loudness",
            Kind::AvDrift => "av_drift",
        }
    }
}

/// One defect, with where it is when it has a place.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Defect {
    pub kind: Kind,
    /// Seconds from the start of the file; absent for a defect of the whole file.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub start: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub end: Option<f64>,
    pub detail: String,
}

impl std::fmt::Display for Defect {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.detail)?;
        match (self.start, self.end) {
            (Some(s), Some(e)) => write!(f, " from {s:.2} s to {e:.2} s"),
            (Some(s), None) => write!(f, " from {s:.2} s"),
            _ => Ok(()),
        }
    }
}

/// What one pass found in one file: the JSON report kept beside the outputs.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Report {
    /// `source`, or the output's path.
    pub file: String,
    pub defects: Vec<Defect>,
    /// Integrated loudness, LUFS, when the file has audio.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub loudness_lufs: Option<f64>,
    /// Video frames decoded, and the header's count.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub frames: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expected_frames: Option<u64>,
    /// Lines of decoder error output.
    pub error_lines: u64,
}

/// The knobs of a pass.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Tuning {
    /// Shortest black, frozen or silent stretch reported, seconds.
    pub min_secs: f64,
    /// Integrated loudness outside `[low, high]` LUFS is a defect.
    pub loudness_lufs: (f64, f64),
    /// Longest difference between audio and video durations, seconds.
    pub max_drift_secs: f64,
}

/// One line per defect the reports hold (each flagged: a rejected one fails the job,
/// an ignored one is not kept): `source: black picture from 2.00 s to 4.00 s`.
pub fn warnings(reports: &[Report]) -> Vec<String> {
    reports
        .iter()
        .flat_map(|r| r.defects.iter().map(move |d| format!("{}: {d}", r.file)))
        .collect()
}

/// The FFmpeg arguments of one pass over `path`, whose probe is `probe`; `None` when
/// it has neither video nor audio.
pub fn args(path: &str, probe: &Probe, tuning: &Tuning, limits: &Limits) -> Option<Vec<String>> {
    let mut step: Vec<String> = vec!["-i".into(), path.into()];
    step.extend(output(0, probe, tuning)?);
    Some(ffmpeg_args_logging(&step, limits, LOGLEVEL))
}

/// The level a run with detectors logs at: their findings are `info` lines, each line
/// tagged with its level so that errors stand apart.
pub const LOGLEVEL: &str = "level+info";

/// The detectors as one more output of an FFmpeg run whose input number `input` is the
/// file (its own filter graph into the null muxer): added to an encode's arguments,
/// they see the frames the encode decodes, and decode nothing again. `None` when the
/// file has neither video nor audio.
pub fn output(input: usize, probe: &Probe, tuning: &Tuning) -> Option<Vec<String>> {
    let min = tuning.min_secs;
    let mut graph = Vec::new();
    let mut maps = Vec::new();
    if probe.video().is_some() {
        graph.push(format!(
            "[{input}:v:0]blackdetect=d={min}:pix_th={BLACK_PIXEL},\
             freezedetect=n={FREEZE_NOISE_DB}dB:d={min},showinfo=checksum=0[detect_v]"
        ));
        maps.extend(["-map".to_string(), "[detect_v]".into()]);
    }
    if probe.audio().is_some() {
        // Without video, the audio's frames give the errors their times.
        let times = if probe.video().is_some() {
            ""
        } else {
            ",ashowinfo"
        };
        graph.push(format!(
            "[{input}:a:0]silencedetect=n={SILENCE_DB}dB:d={min},\
             ebur128=framelog=verbose{times}[detect_a]"
        ));
        maps.extend(["-map".to_string(), "[detect_a]".into()]);
    }
    if graph.is_empty() {
        return None;
    }
    let mut args = vec!["-filter_complex".to_string(), graph.join(";")];
    args.extend(maps);
    args.extend(["-fps_mode", "passthrough", "-f", "null", "-"].map(String::from));
    Some(args)
}

/// Reads a pass's stderr, line by line, as it arrives.
#[derive(Debug, Default)]
pub struct Log {
    /// The time of the last frame decoded: when the next lines happened.
    now: f64,
    /// Video frames decoded.
    frames: u64,
    black: Vec<(f64, f64)>,
    freeze: Vec<(f64, Option<f64>)>,
    silence: Vec<(f64, Option<f64>)>,
    in_summary: bool,
    loudness: Option<f64>,
    errors: u64,
    first_error: Option<(f64, String)>,
    last_error: f64,
}

impl Log {
    pub fn line(&mut self, line: &str) {
        let line = line.trim_end();
        if line.contains("showinfo") && line.contains(" n:") {
            if let Some(t) = number_after(line, "pts_time:") {
                self.now = t;
            }
            if line.contains("Parsed_showinfo") {
                self.frames += 1;
            }
        } else if line.contains("[error]") || line.contains("[fatal]") || corrupt(line) {
            self.errors += 1;
            self.first_error
                .get_or_insert_with(|| (self.now, message(line).to_string()));
            self.last_error = self.now;
        } else if line.contains("Summary:") && line.contains("ebur128") {
            self.in_summary = true;
        } else if self.in_summary && line.trim_start().starts_with("I:") {
            self.loudness = number_after(line, "I:");
            self.in_summary = false;
        } else {
            self.detector(line);
        }
    }

    fn detector(&mut self, line: &str) {
        if line.contains("black_start:") {
            if let (Some(s), Some(e)) = (
                number_after(line, "black_start:"),
                number_after(line, "black_end:"),
            ) {
                self.black.push((s, e));
            }
        } else if let Some(s) = number_after(line, "freezedetect.freeze_start:") {
            self.freeze.push((s, None));
        } else if let Some(e) = number_after(line, "freezedetect.freeze_end:") {
            close(&mut self.freeze, e);
        } else if let Some(s) = number_after(line, "silence_start:") {
            self.silence.push((s, None));
        } else if let Some(e) = number_after(line, "silence_end:") {
            close(&mut self.silence, e);
        }
    }

    /// The report of a pass over `file` (probed as `probe`) that has ended.
    pub fn report(self, file: &str, probe: &Probe, tuning: &Tuning) -> Report {
        let video = probe.video();
        let video_end = video.and_then(|v| v.duration).or(probe.duration);
        let audio_end = probe.audio().and_then(|a| a.duration).or(probe.duration);
        let expected_frames =
            video.and_then(|v| Some((v.duration.or(probe.duration)? * v.fps?).round() as u64));
        let mut defects = Vec::new();
        if let Some((at, first)) = &self.first_error {
            defects.push(Defect {
                kind: Kind::DecodeErrors,
                start: Some(*at),
                end: Some(self.last_error),
                detail: format!("{} lines of decoder errors (first: {first})", self.errors),
            });
        }
        let frames = video.map(|_| self.frames);
        if let (Some(got), Some(want)) = (frames, expected_frames) {
            if got + FRAME_SLACK < want {
                let fps = video.and_then(|v| v.fps).unwrap_or(1.0);
                defects.push(Defect {
                    kind: Kind::Truncated,
                    start: Some(got as f64 / fps),
                    end: video_end,
                    detail: format!("decoded {got} of the {want} frames its header promises"),
                });
            }
        }
        let black = self.black.clone();
        for (s, e) in &black {
            defects.push(range(Kind::Black, "black picture", *s, Some(*e), video_end));
        }
        for (s, e) in self.freeze {
            let end = e.or(video_end).unwrap_or(s);
            if !mostly_black(s, end, &black) {
                defects.push(range(Kind::Freeze, "frozen picture", s, e, video_end));
            }
        }
        for (s, e) in self.silence {
            defects.push(range(Kind::Silence, "silence", s, e, audio_end));
        }
        let (low, high) = tuning.loudness_lufs;
        if let Some(i) = self.loudness.filter(|i| *i < low || *i > high) {
            defects.push(Defect {
                kind: Kind::Loudness,
                start: None,
                end: None,
                detail: format!("integrated loudness {i:.1} LUFS, outside {low} to {high}"),
            });
        }
        defects.extend(drift(probe, tuning));
        Report {
            file: file.into(),
            defects,
            loudness_lufs: self.loudness.filter(|_| probe.audio().is_some()),
            frames,
            expected_frames,
            error_lines: self.errors,
        }
    }
}

/// Audio and video apart: starting at different times, or of different lengths.
fn drift(probe: &Probe, tuning: &Tuning) -> Vec<Defect> {
    let (Some(video), Some(audio)) = (probe.video(), probe.audio()) else {
        return Vec::new();
    };
    [
        ("starts at", video.start, audio.start),
        ("lasts", video.duration, audio.duration),
    ]
    .into_iter()
    .filter_map(|(what, v, a)| {
        let (v, a) = (v?, a?);
        ((v - a).abs() > tuning.max_drift_secs).then(|| Defect {
            kind: Kind::AvDrift,
            start: Some(v.min(a)),
            end: Some(v.max(a)),
            detail: format!("audio {what} {a:.3} s and video {what} {v:.3} s"),
        })
    })
    .collect()
}

/// A defect over a stretch; one still open at the end of the pass ends with its stream.
fn range(kind: Kind, what: &str, start: f64, end: Option<f64>, stream_end: Option<f64>) -> Defect {
    Defect {
        kind,
        start: Some(start),
        end: end.or(stream_end),
        detail: what.into(),
    }
}

/// True when black stretches cover at least half of `[start, end]`: `freezedetect`
/// also sees a black stretch, which is reported once, as black.
fn mostly_black(start: f64, end: f64, black: &[(f64, f64)]) -> bool {
    let covered: f64 = black
        .iter()
        .map(|(s, e)| (e.min(end) - s.max(start)).max(0.0))
        .sum();
    covered * 2.0 >= (end - start).max(f64::EPSILON)
}

fn close(open: &mut [(f64, Option<f64>)], end: f64) {
    if let Some(last) = open.last_mut().filter(|(_, e)| e.is_none()) {
        last.1 = Some(end);
    }
}

/// A decoder's warning that it output a damaged frame.
fn corrupt(line: &str) -> bool {
    line.contains("[warning]") && line.contains("corrupt decoded frame")
}

/// The message of a log line, without its `[context @ 0x…] [level]` prefixes.
fn message(line: &str) -> &str {
    let mut rest = line.trim_start();
    while let Some(after) = rest.strip_prefix('[').and_then(|r| r.split_once("] ")) {
        rest = after.1;
    }
    rest
}

/// The number right after `key` in `line` (`silence_end: 8.00002 | …` → 8.00002).
fn number_after(line: &str, key: &str) -> Option<f64> {
    let rest = line.split(key).nth(1)?.trim_start();
    let end = rest
        .find(|c: char| !(c.is_ascii_digit() || c == '.' || c == '-'))
        .unwrap_or(rest.len());
    rest[..end].parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ffmpeg::probe::Stream;

    fn probe() -> Probe {
        Probe {
            format: "mov,mp4,m4a,3gp,3g2,mj2".into(),
            duration: Some(10.0),
            streams: vec![
                Stream {
                    kind: "video".into(),
                    duration: Some(10.0),
                    fps: Some(25.0),
                    ..Stream::default()
                },
                Stream {
                    kind: "audio".into(),
                    duration: Some(10.0),
                    ..Stream::default()
                },
            ],
        }
    }

    const TUNING: Tuning = Tuning {
        min_secs: 1.0,
        loudness_lufs: (-40.0, -5.0),
        max_drift_secs: 0.1,
    };

    /// `showinfo`'s lines for video frames `from..to` at 25 fps, each followed by the
    /// second line it logs for a frame.
    fn frames(from: u32, to: u32) -> String {
        (from..to)
            .map(|n| {
                format!(
                    "[Parsed_showinfo_2 @ 0x55] [info] n:{n:4} pts:{:7} pts_time:{} pos: 260 fmt:yuv420p\n\
                     [Parsed_showinfo_2 @ 0x55] [info] color_range:unknown color_space:unknown\n",
                    n * 512,
                    f64::from(n) / 25.0
                )
            })
            .collect()
    }

    /// As FFmpeg 5.1 logs a pass over a made clip: black 2–4 s, frozen 4–6 s, silent
    /// 6–8 s, damaged bytes near the end.
    fn log() -> String {
        frames(0, 150)
            + "\
[freezedetect @ 0x55] [info] lavfi.freezedetect.freeze_start: 2
[blackdetect @ 0x55] [info] black_start:2 black_end:4 black_duration:2
[freezedetect @ 0x55] [info] lavfi.freezedetect.freeze_duration: 2
[freezedetect @ 0x55] [info] lavfi.freezedetect.freeze_end: 4
[freezedetect @ 0x55] [info] lavfi.freezedetect.freeze_start: 4
[freezedetect @ 0x55] [info] lavfi.freezedetect.freeze_duration: 2.04
[freezedetect @ 0x55] [info] lavfi.freezedetect.freeze_end: 6.04
[silencedetect @ 0x55] [info] silence_start: 6
[silencedetect @ 0x55] [info] silence_end: 8.00002 | silence_duration: 2.00002
" + &frames(150, 213)
            + "\
[h264 @ 0x55] [error] mb_skip_run 363 is invalid
[error] Error while decoding stream #0:1: Invalid data found when processing input
" + &frames(213, 240)
            + "[warning] corrupt.mp4: corrupt decoded frame in stream 0\n"
            + &frames(240, 250)
            + "\
[Parsed_ebur128_3 @ 0x55] [info] Summary:
  Integrated loudness:
    I:         -21.9 LUFS
    Threshold: -32.0 LUFS
"
    }

    fn read(log: &str, probe: &Probe) -> Report {
        let mut l = Log::default();
        log.lines().for_each(|line| l.line(line));
        l.report("source", probe, &TUNING)
    }

    #[test]
    fn each_defect_is_found_once_with_its_time_range() {
        let r = read(&log(), &probe());
        let found: Vec<(Kind, Option<f64>, Option<f64>)> =
            r.defects.iter().map(|d| (d.kind, d.start, d.end)).collect();
        assert_eq!(
            found,
            [
                (Kind::DecodeErrors, Some(8.48), Some(9.56)),
                (Kind::Black, Some(2.0), Some(4.0)),
                (Kind::Freeze, Some(4.0), Some(6.04)),
                (Kind::Silence, Some(6.0), Some(8.00002)),
            ]
        );
        assert_eq!(r.loudness_lufs, Some(-21.9));
        assert_eq!((r.frames, r.expected_frames), (Some(250), Some(250)));
        assert_eq!(r.error_lines, 3);
        assert!(
            r.defects[0].detail.contains("mb_skip_run 363 is invalid"),
            "{:?}",
            r.defects[0]
        );
    }

    #[test]
    fn a_short_decode_an_open_stretch_loudness_and_drift_are_defects() {
        let mut p = probe();
        p.streams[1].duration = Some(9.5);
        let log = frames(0, 200)
            + "[blackdetect @ 0x1] [info] black_start:7 black_end:8 black_duration:1\n\
            [silencedetect @ 0x1] [info] silence_start: 7.5\n\
            [Parsed_ebur128_0 @ 0x1] [info] Summary:\n  Integrated loudness:\n    I:         -70.0 LUFS\n";
        let r = read(&log, &p);
        let kinds: Vec<Kind> = r.defects.iter().map(|d| d.kind).collect();
        assert_eq!(
            kinds,
            [
                Kind::Truncated,
                Kind::Black,
                Kind::Silence,
                Kind::Loudness,
                Kind::AvDrift
            ]
        );
        assert_eq!(
            (r.defects[0].start, r.defects[0].end),
            (Some(8.0), Some(10.0))
        );
        assert_eq!(
            r.defects[2].end,
            Some(9.5),
            "open silence ends with the audio"
        );
    }

    #[test]
    fn audio_that_starts_late_is_drift() {
        let mut p = probe();
        p.streams[0].start = Some(0.0);
        p.streams[1].start = Some(0.5);
        let r = read(&frames(0, 250), &p);
        let drift: Vec<_> = r
            .defects
            .iter()
            .filter(|d| d.kind == Kind::AvDrift)
            .collect();
        assert_eq!(drift.len(), 1, "{:?}", r.defects);
        assert_eq!((drift[0].start, drift[0].end), (Some(0.0), Some(0.5)));
        assert!(
            drift[0].detail.contains("audio starts at 0.500 s"),
            "{}",
            drift[0].detail
        );
        p.streams[1].start = Some(-0.021);
        assert!(
            read(&frames(0, 250), &p).defects.is_empty(),
            "AAC priming is no drift"
        );
    }

    #[test]
    fn a_clean_pass_reports_nothing() {
        let log = frames(0, 250)
            + "[Parsed_ebur128_0 @ 0x1] [info] Summary:\n  Integrated loudness:\n    I:         -23.0 LUFS\n";
        let r = read(&log, &probe());
        assert!(r.defects.is_empty(), "{:?}", r.defects);
        assert_eq!(r.loudness_lufs, Some(-23.0));
    }

    #[test]
    fn the_graph_has_a_chain_per_stream_kind() {
        let limits = Limits {
            timeout: std::time::Duration::from_secs(1),
            memory_bytes: 1,
            access: crate::ffmpeg::Access::default(),
            demuxers: vec!["mov".into()],
            max_pixels: None,
        };
        let a = args("/s/in/source", &probe(), &TUNING, &limits).unwrap();
        let graph = &a[a.iter().position(|x| x == "-filter_complex").unwrap() + 1];
        assert!(
            graph.contains(
                "blackdetect=d=1:pix_th=0.1,freezedetect=n=-60dB:d=1,showinfo=checksum=0[detect_v]"
            ),
            "{graph}"
        );
        assert!(
            graph.contains("silencedetect=n=-50dB:d=1,ebur128"),
            "{graph}"
        );
        let i = a.iter().position(|x| x == "-i").unwrap();
        assert_eq!(
            a[i - 2],
            "-max_streams",
            "the input guard comes before -i: {a:?}"
        );
        let mut silent = probe();
        silent.streams.truncate(1);
        let a = args("/s/in/source", &silent, &TUNING, &limits).unwrap();
        assert!(!a.iter().any(|x| x.contains("silencedetect")));
        let mut deaf = probe();
        deaf.streams.remove(0);
        let a = args("/s/in/source", &deaf, &TUNING, &limits).unwrap();
        assert!(
            a.iter()
                .any(|x| x.ends_with("ebur128=framelog=verbose,ashowinfo[detect_a]")),
            "audio alone times the errors: {a:?}"
        );
        silent.streams.clear();
        assert_eq!(args("/s/in/source", &silent, &TUNING, &limits), None);
    }

    #[test]
    fn log_messages_lose_their_prefixes() {
        assert_eq!(message("[h264 @ 0x55] [error] bad MB"), "bad MB");
        assert_eq!(
            message("[error] Error while decoding"),
            "Error while decoding"
        );
        assert_eq!(
            number_after("silence_end: 8.00002 | x", "silence_end:"),
            Some(8.00002)
        );
    }
}
