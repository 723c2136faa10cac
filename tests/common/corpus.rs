//! The shapes of source users drop (what a phone, a camera, a screen recorder or an
//! editing tool makes), generated with FFmpeg's lavfi sources, small and a few seconds
//! long, and the ffprobe readings a test compares outputs with.
//!
//! Each shape states the facts that make it that shape; [`generate`] checks them with
//! ffprobe of the file it made, so a shape the local FFmpeg cannot make fails here and not
//! as a puzzling pipeline result.

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

use super::{probe, seconds, video_stream};

/// A fact of a source that ffprobe shows.
#[derive(Debug, Clone, Copy)]
pub enum Fact {
    /// This many audio streams (0: no audio track).
    AudioStreams(usize),
    /// The first audio stream's channels and sample rate.
    Audio { channels: u64, sample_rate: u64 },
    /// Video codec and first audio codec.
    Codecs(&'static str, &'static str),
    /// The demuxer ffprobe names.
    Format(&'static str),
    /// Coded width and height.
    Coded(u64, u64),
    /// A ±90° display matrix: shown portrait though coded landscape.
    Rotated,
    /// r_frame_rate differs from avg_frame_rate.
    VariableRate,
    /// 10-bit 4:2:0, BT.2020 primaries, PQ transfer.
    Hdr10,
    /// The video's field order.
    FieldOrder(&'static str),
    /// The video's sample aspect ratio.
    Sar(&'static str),
    /// Video and first audio stream durations, within 50 ms.
    Secs(f64, f64),
}

/// One source shape: how to make it and what it is.
#[derive(Debug)]
pub struct Shape {
    pub name: &'static str,
    /// The file name, with the extension of its container.
    pub file: &'static str,
    /// The lavfi video source.
    video: &'static str,
    /// The lavfi audio sources, one a track.
    audio: &'static [&'static str],
    /// Output options (codecs, their settings), separated by spaces.
    options: &'static str,
    /// Options of a second pass that copies the streams, separated by spaces: for metadata
    /// FFmpeg 5.1 drops when it encodes, such as the display matrix.
    remux: &'static str,
    pub facts: &'static [Fact],
}

const H264: &str = "-c:v libx264 -preset ultrafast -pix_fmt yuv420p -c:a aac";
const QVGA: &str = "testsrc2=size=320x240:rate=25:duration=2";
const TONE: &str = "sine=frequency=440:sample_rate=44100:duration=2";

/// The eighteen shapes.
pub const SHAPES: &[Shape] = &[
    Shape {
        name: "no_audio",
        file: "no_audio.mp4",
        video: QVGA,
        audio: &[],
        options: H264,
        remux: "",
        facts: &[Fact::AudioStreams(0)],
    },
    Shape {
        name: "two_audio",
        file: "two_audio.mp4",
        video: QVGA,
        audio: &[TONE, "sine=frequency=880:sample_rate=48000:duration=2"],
        options: H264,
        remux: "",
        facts: &[Fact::AudioStreams(2)],
    },
    Shape {
        name: "surround_5_1",
        file: "surround_5_1.mp4",
        video: QVGA,
        audio: &["sine=frequency=440:sample_rate=48000:duration=2,aformat=channel_layouts=5.1"],
        options: H264,
        remux: "",
        facts: &[Fact::Audio {
            channels: 6,
            sample_rate: 48000,
        }],
    },
    Shape {
        name: "mono_8k",
        file: "mono_8k.mp4",
        video: QVGA,
        audio: &["sine=frequency=440:sample_rate=8000:duration=2"],
        options: "-c:v libx264 -preset ultrafast -pix_fmt yuv420p -c:a aac -ac 1",
        remux: "",
        facts: &[Fact::Audio {
            channels: 1,
            sample_rate: 8000,
        }],
    },
    Shape {
        name: "portrait_rotated",
        file: "portrait_rotated.mp4",
        video: "testsrc2=size=640x360:rate=30:duration=2",
        audio: &[TONE],
        options: H264,
        remux: "-metadata:s:v:0 rotate=90",
        facts: &[Fact::Coded(640, 360), Fact::Rotated],
    },
    // x264 refuses odd 4:2:0 frames; MPEG-4 part 2 takes them.
    Shape {
        name: "odd_dimensions",
        file: "odd_dimensions.mp4",
        video: "testsrc=size=853x481:rate=25:duration=2",
        audio: &[TONE],
        options: "-c:v mpeg4 -q:v 5 -pix_fmt yuv420p -c:a aac",
        remux: "",
        facts: &[Fact::Coded(853, 481)],
    },
    // One second at 30 fps, then one at 15 fps.
    Shape {
        name: "variable_rate",
        file: "variable_rate.mp4",
        video: "testsrc2=size=320x240:rate=30:duration=1.5,\
                setpts='if(lt(N,30),N*2,60+(N-30)*4)/(60*TB)'",
        audio: &[TONE],
        options: "-fps_mode passthrough -c:v libx264 -preset ultrafast -pix_fmt yuv420p \
                  -c:a aac",
        remux: "",
        facts: &[Fact::VariableRate, Fact::Secs(2.0, 2.0)],
    },
    Shape {
        name: "hdr10",
        file: "hdr10.mp4",
        video: "testsrc2=size=640x360:rate=25:duration=2,format=yuv420p10le",
        audio: &[TONE],
        options: "-c:v libx265 -preset ultrafast -x265-params log-level=error \
                  -pix_fmt yuv420p10le -color_primaries bt2020 -color_trc smpte2084 \
                  -colorspace bt2020nc -tag:v hvc1 -c:a aac",
        remux: "",
        facts: &[Fact::Hdr10],
    },
    // 50 frames a second woven into 25 interlaced, top field first.
    Shape {
        name: "interlaced",
        file: "interlaced.mp4",
        video: "testsrc2=size=720x576:rate=50:duration=2,interlace=scan=tff",
        audio: &[TONE],
        options: "-c:v libx264 -preset ultrafast -pix_fmt yuv420p -flags +ilme+ildct \
                  -x264-params tff=1 -field_order tt -c:a aac",
        remux: "",
        facts: &[Fact::FieldOrder("tt")],
    },
    // PAL 16:9 as a DV camera stores it.
    Shape {
        name: "non_square_pixels",
        file: "non_square_pixels.mp4",
        video: "testsrc2=size=720x576:rate=25:duration=2,setsar=64/45",
        audio: &[TONE],
        options: H264,
        remux: "",
        facts: &[Fact::Sar("64:45")],
    },
    Shape {
        name: "mov",
        file: "mov.mov",
        video: QVGA,
        audio: &[TONE],
        options: H264,
        remux: "",
        facts: &[
            Fact::Codecs("h264", "aac"),
            Fact::Format("mov,mp4,m4a,3gp,3g2,mj2"),
        ],
    },
    Shape {
        name: "mkv",
        file: "mkv.mkv",
        video: QVGA,
        audio: &[TONE],
        options: H264,
        remux: "",
        facts: &[Fact::Codecs("h264", "aac"), Fact::Format("matroska,webm")],
    },
    Shape {
        name: "webm",
        file: "webm.webm",
        video: QVGA,
        audio: &["sine=frequency=440:sample_rate=48000:duration=2"],
        options: "-c:v libvpx-vp9 -deadline realtime -cpu-used 8 -b:v 200k -c:a libopus",
        remux: "",
        facts: &[Fact::Codecs("vp9", "opus"), Fact::Format("matroska,webm")],
    },
    Shape {
        name: "mpegts",
        file: "mpegts.ts",
        video: QVGA,
        audio: &[TONE],
        options: H264,
        remux: "",
        facts: &[Fact::Codecs("h264", "aac"), Fact::Format("mpegts")],
    },
    Shape {
        name: "avi",
        file: "avi.avi",
        video: QVGA,
        audio: &[TONE],
        options: "-c:v mpeg4 -q:v 5 -c:a libmp3lame",
        remux: "",
        facts: &[Fact::Codecs("mpeg4", "mp3"), Fact::Format("avi")],
    },
    Shape {
        name: "under_a_second",
        file: "under_a_second.mp4",
        video: "testsrc2=size=320x240:rate=25:duration=0.5",
        audio: &["sine=frequency=440:sample_rate=44100:duration=0.5"],
        options: H264,
        remux: "",
        facts: &[Fact::Secs(0.5, 0.5)],
    },
    Shape {
        name: "audio_longer",
        file: "audio_longer.mp4",
        video: QVGA,
        audio: &["sine=frequency=440:sample_rate=44100:duration=3"],
        options: H264,
        remux: "",
        facts: &[Fact::Secs(2.0, 3.0)],
    },
    Shape {
        name: "video_longer",
        file: "video_longer.mp4",
        video: "testsrc2=size=320x240:rate=25:duration=3",
        audio: &[TONE],
        options: H264,
        remux: "",
        facts: &[Fact::Secs(3.0, 2.0)],
    },
];

/// A generated source: its shape, its file and ffprobe of it.
pub struct Source {
    pub shape: &'static Shape,
    pub path: PathBuf,
    pub probe: Value,
}

/// Makes every shape in `dir`; panics if FFmpeg fails or a file lacks its shape's facts.
pub fn generate(dir: &Path) -> Vec<Source> {
    std::fs::create_dir_all(dir).expect("the corpus dir");
    SHAPES.iter().map(|shape| shape.make(dir)).collect()
}

impl Shape {
    fn make(&'static self, dir: &Path) -> Source {
        let path = dir.join(self.file);
        let encoded = if self.remux.is_empty() {
            path.clone()
        } else {
            dir.join(format!("encoded-{}", self.file))
        };
        let mut args: Vec<&str> = vec!["-f", "lavfi", "-i", self.video];
        for a in self.audio {
            args.extend(["-f", "lavfi", "-i", a]);
        }
        let maps: Vec<String> = (0..=self.audio.len()).map(|i| i.to_string()).collect();
        for m in &maps {
            args.extend(["-map", m]);
        }
        args.extend(self.options.split_whitespace());
        ffmpeg(&args, &encoded);
        if !self.remux.is_empty() {
            let input = encoded.to_str().expect("a UTF-8 path");
            let mut args = vec!["-i", input, "-map", "0", "-c", "copy"];
            args.extend(self.remux.split_whitespace());
            ffmpeg(&args, &path);
        }
        let probe = probe(&path);
        for fact in self.facts {
            assert!(
                holds(*fact, &probe),
                "{}: {fact:?} does not hold of\n{probe:#}",
                self.name
            );
        }
        Source {
            shape: self,
            path,
            probe,
        }
    }
}

fn ffmpeg(args: &[&str], out: &Path) {
    let status = Command::new("ffmpeg")
        .args(["-nostdin", "-hide_banner", "-loglevel", "error", "-y"])
        .args(args)
        .arg(out)
        .status()
        .expect("ffmpeg is installed");
    assert!(status.success(), "ffmpeg {args:?} {}", out.display());
}

/// Whether `fact` holds of a probed file.
fn holds(fact: Fact, p: &Value) -> bool {
    let v = video_stream(p);
    let audio = audio_streams(p);
    let a = audio.first().cloned().unwrap_or(Value::Null);
    match fact {
        Fact::AudioStreams(n) => audio.len() == n,
        Fact::Audio {
            channels,
            sample_rate,
        } => {
            a["channels"].as_u64() == Some(channels)
                && a["sample_rate"].as_str() == Some(&sample_rate.to_string())
        }
        Fact::Codecs(video, audio) => v["codec_name"] == video && a["codec_name"] == audio,
        Fact::Format(name) => p["format"]["format_name"] == name,
        Fact::Coded(w, h) => v["width"].as_u64() == Some(w) && v["height"].as_u64() == Some(h),
        Fact::Rotated => rotation(&v).abs() == 90.0,
        Fact::VariableRate => v["r_frame_rate"] != v["avg_frame_rate"],
        Fact::Hdr10 => {
            v["pix_fmt"] == "yuv420p10le"
                && v["color_primaries"] == "bt2020"
                && v["color_transfer"] == "smpte2084"
        }
        Fact::FieldOrder(order) => v["field_order"] == order,
        Fact::Sar(sar) => v["sample_aspect_ratio"] == sar,
        Fact::Secs(video, audio) => {
            let near = |s: Option<f64>, want: f64| s.is_some_and(|s| (s - want).abs() <= 0.05);
            near(stream_secs(&v), video) && near(stream_secs(&a), audio)
        }
    }
}

/// The audio streams of a probe, in order.
pub fn audio_streams(p: &Value) -> Vec<Value> {
    p["streams"]
        .as_array()
        .map(|s| {
            s.iter()
                .filter(|s| s["codec_type"] == "audio")
                .cloned()
                .collect()
        })
        .unwrap_or_default()
}

/// A stream's duration in seconds: its own, else Matroska's `DURATION` tag
/// (`HH:MM:SS.nnnnnnnnn`); `None` for a missing stream.
pub fn stream_secs(stream: &Value) -> Option<f64> {
    if let Some(s) = stream["duration"].as_str().and_then(|s| s.parse().ok()) {
        return Some(s);
    }
    let tag = stream["tags"]["DURATION"].as_str()?;
    let mut secs = 0.0;
    for part in tag.split(':') {
        secs = secs * 60.0 + part.parse::<f64>().ok()?;
    }
    Some(secs)
}

/// The rotation of a video stream's display matrix (or `rotate` tag) in degrees; 0 if none.
pub fn rotation(v: &Value) -> f64 {
    let matrix = v["side_data_list"]
        .as_array()
        .and_then(|l| l.iter().find_map(|d| d["rotation"].as_f64()));
    let tag = v["tags"]["rotate"].as_str().and_then(|r| r.parse().ok());
    matrix.or(tag).unwrap_or(0.0)
}

/// Whether a video stream carries a display matrix other than the identity, or a rotate tag:
/// a player would not show it as stored.
pub fn transformed(v: &Value) -> bool {
    let identity = [65536, 0, 0, 0, 65536, 0, 0, 0, 1_073_741_824];
    let matrix = v["side_data_list"].as_array().is_some_and(|l| {
        l.iter().any(|d| {
            d["displaymatrix"].as_str().is_some_and(|m| {
                let numbers: Vec<i64> = m
                    .lines()
                    .filter_map(|l| l.split_once(':'))
                    .flat_map(|(_, row)| row.split_whitespace().filter_map(|n| n.parse().ok()))
                    .collect();
                numbers != identity
            })
        })
    });
    matrix || v["tags"]["rotate"].is_string()
}

/// Width over height as the stream is displayed: sample aspect ratio applied, then the
/// display matrix's rotation.
pub fn display_aspect(v: &Value) -> f64 {
    let (w, h) = (dim(&v["width"]), dim(&v["height"]));
    let sar = ratio(&v["sample_aspect_ratio"])
        .filter(|r| *r > 0.0)
        .unwrap_or(1.0);
    let aspect = w * sar / h;
    if (rotation(v).abs() - 90.0).abs() < 1.0 {
        1.0 / aspect
    } else {
        aspect
    }
}

fn dim(v: &Value) -> f64 {
    v.as_f64().expect("a frame dimension")
}

/// `"a:b"` or `"a/b"` as a number; `None` if absent or `b` is 0.
pub fn ratio(v: &Value) -> Option<f64> {
    let (a, b) = v.as_str()?.split_once([':', '/'])?;
    let (a, b): (f64, f64) = (a.parse().ok()?, b.parse().ok()?);
    (b != 0.0).then(|| a / b)
}

/// One frame of a video stream in seconds, by its average rate (its nominal rate if the
/// average is unknown).
pub fn frame_secs(v: &Value) -> f64 {
    let rate = ratio(&v["avg_frame_rate"])
        .filter(|r| *r > 0.0)
        .or_else(|| ratio(&v["r_frame_rate"]).filter(|r| *r > 0.0))
        .unwrap_or(25.0);
    1.0 / rate
}

/// The source's video duration: its video stream's, else the container's.
pub fn video_secs(p: &Value) -> f64 {
    stream_secs(&video_stream(p)).unwrap_or_else(|| seconds(&p["format"]["duration"]))
}
