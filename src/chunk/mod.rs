//! Chunked encoding: one long title cut into chunks that many cells encode at once.
//!
//! A job of a chunked pipeline (config `[pipelines.X.chunked]`) runs in three stages, each
//! a job on the pool's queues and a row in the ledger:
//!
//! 1. **Split** (the title's own job): the source's video frames are listed (one demux,
//!    no decode: each packet's timestamp and key flag), scene cuts found when the
//!    pipeline asks (one decode at a small size), and the cut points chosen by [`cuts`]:
//!    at a keyframe where one falls near the target, else at any frame. The ledger
//!    records the [`Plan`] and one child job per chunk, plus one for the audio, in the
//!    transaction that sets the title `waiting`.
//! 2. **Chunks and audio**: each chunk job decodes its frames exactly (an accurate seek
//!    to between its first frame and the one before, then `-frames:v`), encodes them and
//!    checks what it made ([`Checked`]: frame count, length, codec parameters, and a
//!    digest of every decoded frame). The audio is encoded once, for the whole title.
//! 3. **Assemble**: the commit of the last child sets the title `queued` again, to be
//!    assembled (one transaction holding the title's row: two chunks committed at once
//!    assemble once). Assembly joins the chunks by stream copy, muxes the audio, and
//!    publishes only an output that decodes without error, has the source's frame count
//!    and length, and is frame for frame the chunks; a chunk that disagrees is encoded
//!    again, not the title.
//!
//! Why frame-exact cuts: a stream-copy split can only cut at the source's keyframes, and
//! a mezzanine may have one keyframe in two hours (Av1an's experience); decoding to the
//! cut makes any frame a cut point, at the price of decoding from the keyframe before it.

use serde::{Deserialize, Serialize};

/// How a chunked pipeline cuts its titles (`[pipelines.X.chunked]`).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Chunking {
    /// Target chunk length in seconds; a cut moves to a keyframe within a quarter of it.
    #[serde(default = "default_chunk_secs")]
    pub chunk_secs: f64,
    /// Cut at scene changes instead, each chunk between `min_secs` and `max_secs` long.
    pub scenes: Option<Scenes>,
    /// A filter chain for each chunk's video (`scale=-2:720`), after the chunk's own
    /// timestamp reset; the chunk's options may not carry `-vf`.
    pub filter: Option<String>,
    /// FFmpeg output options for each chunk's video (`-c:v libx264 -crf 23 …`);
    /// `{threads}` is the job's thread count.
    pub video: Vec<String>,
    /// FFmpeg output options for the title's audio, encoded once.
    #[serde(default = "default_audio")]
    pub audio: Vec<String>,
    /// The assembled output's path under the job's output prefix.
    #[serde(default = "default_output")]
    pub output: String,
}

/// Scene-aligned cuts.
#[derive(Debug, Clone, Copy, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Scenes {
    pub min_secs: f64,
    pub max_secs: f64,
    /// `scdet`'s threshold (0–100): how different two frames must be to be a cut.
    #[serde(default = "default_threshold")]
    pub threshold: f64,
}

fn default_chunk_secs() -> f64 {
    60.0
}

fn default_threshold() -> f64 {
    10.0
}

fn default_audio() -> Vec<String> {
    ["-c:a", "aac", "-b:a", "128k"].map(String::from).to_vec()
}

fn default_output() -> String {
    "video.mp4".into()
}

impl Chunking {
    /// Checks the settings; the error names the key.
    pub fn validate(&self) -> Result<(), String> {
        if !(self.chunk_secs.is_finite() && self.chunk_secs >= 1.0) {
            return Err("chunked.chunk_secs must be at least 1".into());
        }
        if let Some(s) = &self.scenes {
            if !(s.min_secs >= 1.0 && s.max_secs >= 2.0 * s.min_secs) {
                return Err(
                    "chunked.scenes needs min_secs >= 1 and max_secs >= 2 × min_secs".into(),
                );
            }
            if !(0.0..=100.0).contains(&s.threshold) {
                return Err("chunked.scenes.threshold must be within 0–100".into());
            }
        }
        if self.video.is_empty() {
            return Err("chunked.video must name the chunks' encoder options".into());
        }
        if self
            .video
            .iter()
            .any(|a| matches!(a.as_str(), "-vf" | "-filter:v" | "-filter_complex"))
        {
            return Err("chunked.video may not filter: put the filter in chunked.filter".into());
        }
        if self.output.is_empty() || self.output.contains("..") || self.output.starts_with('/') {
            return Err("chunked.output must be a relative path".into());
        }
        Ok(())
    }
}

/// One chunk of a title: frames `first_frame .. first_frame + frames` of the source's
/// first video stream, in presentation order.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Chunk {
    pub index: u32,
    /// Chunks in the title.
    pub of: u32,
    pub first_frame: u64,
    pub frames: u64,
    /// Seconds from the start of the source to seek to: halfway between the chunk's
    /// first frame and the frame before, so that an accurate seek keeps exactly that
    /// frame first whatever the rounding. Zero for the first chunk.
    pub seek: f64,
    /// Seconds of source the chunk covers.
    pub secs: f64,
    /// True when the chunk starts on a keyframe of the source (no frames decoded only
    /// to be dropped).
    pub at_keyframe: bool,
}

/// What the split decided for one title.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Plan {
    pub chunks: Vec<Chunk>,
    /// Video frames in the source: the assembled output has exactly these.
    pub frames: u64,
    /// Seconds the source's video lasts (last frame's end), which the output's video
    /// matches within one frame.
    pub video_secs: f64,
    /// Seconds one frame lasts (the source's typical frame interval).
    pub frame_secs: f64,
    /// Whether the title has audio, encoded by its own job.
    pub audio: bool,
}

/// What a chunk's own checks found of the chunk it made.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Checked {
    pub index: u32,
    /// The chunk's object.
    pub key: String,
    pub frames: u64,
    pub secs: f64,
    pub params: Params,
    /// SHA-256 over the MD5 of every video packet (each coded frame), in order
    /// ([`digest`]): an assembly by stream copy that has the same packets has the same
    /// frames.
    pub digest: String,
    /// SHA-256 of the chunk's bytes, as uploaded: the assembly checks what it
    /// downloads against it.
    pub sha256: String,
}

/// The codec parameters every chunk of a title must share for a stream-copy join.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Params {
    pub codec: String,
    pub profile: String,
    pub width: u32,
    pub height: u32,
    pub pix_fmt: String,
    pub time_base: String,
}

impl std::fmt::Display for Params {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} {} {}×{} {} tb {}",
            self.codec, self.profile, self.width, self.height, self.pix_fmt, self.time_base
        )
    }
}

/// The source's video frames: presentation times in seconds (ascending), which of them
/// are keyframes, and the time the file starts at (what `-ss` counts from).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Frames {
    pub times: Vec<f64>,
    pub keyframes: Vec<usize>,
    pub start: f64,
}

impl Frames {
    /// Reads ffprobe's `-of compact` listing of the first video stream's packets
    /// (`packet|pts_time=…|flags=K_`) and the format's `start_time`. Packets come in
    /// decode order; a frame's index is the rank of its time.
    pub fn parse(listing: &str) -> Result<Frames, String> {
        let mut packets: Vec<(f64, bool)> = Vec::new();
        let mut start = None;
        for line in listing.lines() {
            let section = line.split('|').next().unwrap_or_default();
            let field = |name: &str| {
                line.split('|')
                    .find_map(|f| f.strip_prefix(name)?.strip_prefix('='))
            };
            match section {
                "packet" => {
                    let Some(t) = field("pts_time").and_then(|t| t.parse::<f64>().ok()) else {
                        return Err(format!("a video packet has no timestamp: {line}"));
                    };
                    let key = field("flags").is_some_and(|f| f.starts_with('K'));
                    packets.push((t, key));
                }
                "format" => start = field("start_time").and_then(|t| t.parse().ok()),
                _ => {}
            }
        }
        if packets.is_empty() {
            return Err("the source has no video frames".into());
        }
        packets.sort_by(|a, b| a.0.total_cmp(&b.0));
        let keyframes = packets
            .iter()
            .enumerate()
            .filter(|(_, p)| p.1)
            .map(|(i, _)| i)
            .collect();
        let times: Vec<f64> = packets.into_iter().map(|p| p.0).collect();
        Ok(Frames {
            start: start.unwrap_or(times[0]),
            times,
            keyframes,
        })
    }

    /// The typical frame interval: the median gap between frames.
    pub fn frame_secs(&self) -> f64 {
        let mut gaps: Vec<f64> = self.times.windows(2).map(|w| w[1] - w[0]).collect();
        if gaps.is_empty() {
            return 0.04;
        }
        gaps.sort_by(f64::total_cmp);
        gaps[gaps.len() / 2]
    }

    /// The index of the frame shown at `secs` (the last frame at or before it).
    pub fn at(&self, secs: f64) -> usize {
        self.times
            .partition_point(|t| *t <= secs + 1e-6)
            .saturating_sub(1)
    }
}

/// The frames each chunk starts at (the first is always 0), by the pipeline's rule:
/// with `scenes`, at the scene change (`scene_cuts`, frame indices) nearest the middle
/// of each `min..max` window, or at `max` when the window has none; else every
/// `chunk_secs`, moved to the nearest keyframe within a quarter of it. A remainder
/// shorter than half a chunk (or than `min_secs`) joins the chunk before it.
pub fn cuts(frames: &Frames, rule: &Chunking, scene_cuts: &[usize]) -> Vec<usize> {
    let t = &frames.times;
    let end = t[t.len() - 1] + frames.frame_secs();
    let mut starts = vec![0usize];
    loop {
        let from = t[*starts.last().expect("starts is never empty")];
        let (lo, aim, hi, candidates, least) = match &rule.scenes {
            Some(s) => (
                from + s.min_secs,
                from + (s.min_secs + s.max_secs) / 2.0,
                from + s.max_secs,
                scene_cuts,
                s.min_secs,
            ),
            None => {
                let c = rule.chunk_secs;
                (
                    from + 0.75 * c,
                    from + c,
                    from + 1.25 * c,
                    frames.keyframes.as_slice(),
                    c / 2.0,
                )
            }
        };
        if end - aim < least {
            break;
        }
        let nearest = candidates
            .iter()
            .copied()
            .filter(|&i| i < t.len() && t[i] >= lo && t[i] <= hi && end - t[i] >= least)
            .min_by(|&a, &b| (t[a] - aim).abs().total_cmp(&(t[b] - aim).abs()));
        let next = match (nearest, &rule.scenes) {
            (Some(i), _) => i,
            (None, Some(_)) => nearest_keyframe(frames, hi).unwrap_or(frames.at(hi)),
            (None, None) => frames.at(aim),
        };
        if next <= *starts.last().expect("starts is never empty") || end - t[next] < least {
            break;
        }
        starts.push(next);
    }
    starts
}

/// A keyframe within two frames before `secs`, to cut on instead of the frame there.
fn nearest_keyframe(frames: &Frames, secs: f64) -> Option<usize> {
    let slack = 2.0 * frames.frame_secs();
    frames
        .keyframes
        .iter()
        .copied()
        .rev()
        .find(|&i| frames.times[i] <= secs && frames.times[i] >= secs - slack)
}

/// The plan for cutting at `starts` (from [`cuts`]).
pub fn plan(frames: &Frames, starts: &[usize], audio: bool) -> Plan {
    let t = &frames.times;
    let frame_secs = frames.frame_secs();
    let total = t.len();
    let of = starts.len() as u32;
    let chunks = starts
        .iter()
        .enumerate()
        .map(|(index, &first)| {
            let next = starts.get(index + 1).copied().unwrap_or(total);
            let end = if next < total {
                t[next]
            } else {
                t[total - 1] + frame_secs
            };
            Chunk {
                index: index as u32,
                of,
                first_frame: first as u64,
                frames: (next - first) as u64,
                seek: if first == 0 {
                    0.0
                } else {
                    ((t[first - 1] + t[first]) / 2.0 - frames.start).max(0.0)
                },
                secs: end - t[first],
                at_keyframe: frames.keyframes.binary_search(&first).is_ok(),
            }
        })
        .collect();
    Plan {
        chunks,
        frames: total as u64,
        video_secs: t[total - 1] + frame_secs - t[0],
        frame_secs,
        audio,
    }
}

/// The scene changes `scdet` logged (`lavfi.scd.time: 12.48`), as frame indices.
pub fn scene_cut(line: &str, frames: &Frames) -> Option<usize> {
    let secs: f64 = line
        .split("lavfi.scd.time:")
        .nth(1)?
        .trim()
        .split(|c: char| c.is_whitespace() || c == ',')
        .next()?
        .parse()
        .ok()?;
    Some(frames.at(secs + frames.start))
}

/// The MD5 of each frame or packet, in order: the last field of each line of FFmpeg's
/// `framemd5` output (packets with `-c copy`, decoded frames without).
pub fn frame_md5s(framemd5: &str) -> Vec<&str> {
    framemd5
        .lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .filter_map(|l| l.rsplit(',').next().map(str::trim))
        .collect()
}

/// Folds frames' or packets' MD5s into one digest: two files with the same digest have
/// the same frames in the same order.
pub fn digest(md5s: &[&str]) -> String {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    for md5 in md5s {
        h.update(md5.as_bytes());
        h.update(b"\n");
    }
    hex::encode(h.finalize())
}

#[cfg(test)]
mod tests;
