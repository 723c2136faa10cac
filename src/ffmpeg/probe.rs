//! ffprobe: what a file holds, and whether an output is what its pipeline promised.
//!
//! An FFmpeg stopped by a signal can leave a valid but truncated MP4, so exit 0 is not
//! success: every output is probed and checked against what was [`Expect`]ed of it.

use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use super::{input_guard, run, FfmpegError, Limits};

/// What an output must be; `None` is not checked.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Expect {
    /// Video codec as ffprobe names it (`h264`, `mjpeg`, …); `"none"` never matches.
    pub video_codec: Option<String>,
    pub audio_codec: Option<String>,
    pub width: Option<u32>,
    pub height: Option<u32>,
    pub duration: Option<Length>,
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

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Stream {
    pub kind: String,
    pub codec: String,
    pub width: Option<u32>,
    pub height: Option<u32>,
    pub duration: Option<f64>,
    /// Frames per second of a video stream.
    pub fps: Option<f64>,
}

impl Probe {
    pub fn video(&self) -> Option<&Stream> {
        self.streams.iter().find(|s| s.kind == "video")
    }

    pub fn audio(&self) -> Option<&Stream> {
        self.streams.iter().find(|s| s.kind == "audio")
    }
}

/// Probes a local file.
pub async fn probe(
    path: &std::path::Path,
    limits: &Limits,
    cancel: &CancellationToken,
) -> Result<Probe, FfmpegError> {
    let mut args: Vec<String> = vec!["-v".into(), "error".into()];
    args.extend(input_guard(&limits.demuxers));
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
    let json = run("ffprobe", &args, limits, cancel).await?;
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
    avg_frame_rate: Option<String>,
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
        .map(|s| Stream {
            kind: s.codec_type.unwrap_or_default(),
            codec: s.codec_name.unwrap_or_default(),
            width: s.width,
            height: s.height,
            duration: s.duration.as_deref().and_then(seconds),
            fps: s.avg_frame_rate.as_deref().and_then(rate),
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

/// Checks a probed output against what is expected of it; `source` is the probed input. Durations
/// match within two frames of the output's rate (one frame each side of rounding), or
/// 0.1 s when there is no video.
pub fn verify(spec: &Expect, out: &Probe, source: &Probe) -> Result<(), String> {
    let video = out.video();
    if let Some(codec) = &spec.video_codec {
        let found = video.map(|v| v.codec.as_str()).unwrap_or("none");
        if found != codec {
            return Err(format!("video codec is {found}, expected {codec}"));
        }
    }
    if let Some(codec) = &spec.audio_codec {
        let found = out.audio().map(|a| a.codec.as_str()).unwrap_or("none");
        if found != codec {
            return Err(format!("audio codec is {found}, expected {codec}"));
        }
    }
    for (want, got, what) in [
        (spec.width, video.and_then(|v| v.width), "width"),
        (spec.height, video.and_then(|v| v.height), "height"),
    ] {
        if want.is_some() && want != got {
            return Err(format!("{what} is {got:?}, expected {want:?}"));
        }
    }
    let expected = match spec.duration {
        None => return Ok(()),
        Some(Length::Seconds(s)) => s,
        Some(Length::OfSource) => source.duration.ok_or("the source has no duration")?,
    };
    let got = out.duration.ok_or("the output has no duration")?;
    let tolerance = video.and_then(|v| v.fps).map_or(0.1, |fps| 2.0 / fps);
    if (got - expected).abs() > tolerance {
        return Err(format!(
            "duration is {got:.3} s, expected {expected:.3} s (truncated or wrong cut)"
        ));
    }
    Ok(())
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
        }
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
        truncated.duration = Some(7.5);
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
    }
}
