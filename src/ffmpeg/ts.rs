//! What an MPEG-TS segment holds, read in-process: an HLS rendition of hundreds of
//! segments is checked without an ffprobe process for each (about 60 ms here).
//!
//! Only outputs are read this way (files a confined FFmpeg wrote from names in the
//! config); sources are always probed by ffprobe in the sandbox. The reader follows the
//! PAT to the first program's PMT, takes H.264 video (its SPS, through
//! [`super::h264`]) and AAC audio in ADTS (its first header), and times each stream by
//! its PES timestamps as ffprobe does: from the first presentation time to the last
//! plus one frame. It gives `None` for anything it does not fully understand (another
//! codec, a file that is not whole packets, no SPS), and the caller falls back to
//! ffprobe.

use std::path::Path;

use super::h264;
use super::probe::{Probe, Stream};

const PACKET: usize = 188;
/// The largest segment read whole: HLS segments are a few MiB.
const MAX_BYTES: u64 = 256 << 20;
/// PES timestamps tick at 90 kHz.
const CLOCK: f64 = 90_000.0;

/// The segment at `path` as ffprobe would describe it, or `None` (see the module).
pub fn read(path: &Path) -> Option<Probe> {
    if std::fs::metadata(path).ok()?.len() > MAX_BYTES {
        return None;
    }
    let bytes = std::fs::read(path).ok()?;
    if bytes.is_empty() || bytes.len() % PACKET != 0 {
        return None;
    }
    let packets: Vec<Packet> = bytes
        .chunks_exact(PACKET)
        .map(packet)
        .collect::<Option<_>>()?;
    let pmt_pid = table(&packets, 0, 0x00, |t| {
        // program_number (2), then the PMT's PID: the first program that is not the NIT.
        (t.chunks_exact(4))
            .find(|p| u16::from_be_bytes([p[0], p[1]]) != 0)
            .map(|p| u16::from_be_bytes([p[2], p[3]]) & 0x1FFF)
    })?;
    let elementary = table(&packets, pmt_pid, 0x02, |t| {
        let info = usize::from(u16::from_be_bytes([*t.get(2)?, *t.get(3)?]) & 0x0FFF);
        let mut rest = t.get(4 + info..)?;
        let mut streams = Vec::new();
        while rest.len() >= 5 {
            let pid = u16::from_be_bytes([rest[1], rest[2]]) & 0x1FFF;
            let es_info = usize::from(u16::from_be_bytes([rest[3], rest[4]]) & 0x0FFF);
            streams.push((rest[0], pid));
            rest = rest.get(5 + es_info..)?;
        }
        Some(streams)
    })?;
    let mut streams = Vec::new();
    for (kind, pid) in elementary {
        let pes = Pes::gather(&packets, pid);
        let mut stream = match kind {
            0x1B => video(&pes.first_payloads)?,
            0x0F => audio(&pes.first_payloads)?,
            _ => return None,
        };
        let (first, last, count) = pes.times?;
        let span = (last - first) as f64 / CLOCK;
        let frame = match (stream.kind.as_str(), count) {
            ("video", n) if n > 1 => {
                let fps = (n - 1) as f64 / span;
                stream.fps = Some(fps);
                1.0 / fps
            }
            ("audio", _) => 1024.0 / f64::from(stream.sample_rate?),
            _ => return None,
        };
        stream.duration = Some(span + frame);
        stream.start = Some(first as f64 / CLOCK);
        streams.push((first, stream));
    }
    let start = streams.iter().map(|(first, _)| *first).min()?;
    let end = streams
        .iter()
        .map(|(first, s)| (first - start) as f64 / CLOCK + s.duration.unwrap_or(0.0))
        .fold(0.0, f64::max);
    Some(Probe {
        format: "mpegts".into(),
        duration: Some(end),
        streams: streams.into_iter().map(|(_, s)| s).collect(),
    })
}

/// One transport packet: its PID, whether a PES or section starts in it, its payload.
struct Packet<'a> {
    pid: u16,
    start: bool,
    payload: &'a [u8],
}

fn packet(p: &[u8]) -> Option<Packet<'_>> {
    if p[0] != 0x47 || p[1] & 0x80 != 0 {
        return None;
    }
    let pid = u16::from_be_bytes([p[1], p[2]]) & 0x1FFF;
    let control = (p[3] >> 4) & 0x3;
    let mut at = 4;
    if control & 0x2 != 0 {
        at += 1 + usize::from(p[4]);
    }
    let payload = if control & 0x1 != 0 {
        p.get(at..)?
    } else {
        &[]
    };
    Some(Packet {
        pid,
        start: p[1] & 0x40 != 0,
        payload,
    })
}

/// The first section of `table_id` on `pid` (one packet's worth, as FFmpeg writes
/// them), past its header and without its CRC, read by `parse`: a PAT's programs, or a
/// PMT from its PCR PID on.
fn table<T>(
    packets: &[Packet],
    pid: u16,
    table_id: u8,
    parse: impl Fn(&[u8]) -> Option<T>,
) -> Option<T> {
    let p = packets.iter().find(|p| p.pid == pid && p.start)?;
    let pointer = usize::from(*p.payload.first()?);
    let section = p.payload.get(1 + pointer..)?;
    if *section.first()? != table_id {
        return None;
    }
    let len = usize::from(u16::from_be_bytes([*section.get(1)?, *section.get(2)?]) & 0x0FFF);
    // A section longer than its packet is split over several: left to ffprobe.
    let body = section.get(3..3 + len)?;
    // Transport stream or program number (2), version (1), section numbers (2); CRC (4).
    parse(body.get(5..body.len().checked_sub(4)?)?)
}

/// What one elementary stream's PES packets say.
struct Pes {
    /// The payload of the first few PES packets, joined: enough for an SPS or a header.
    first_payloads: Vec<u8>,
    /// First and last presentation time, and how many PES packets carried one.
    times: Option<(i64, i64, u64)>,
}

impl Pes {
    fn gather(packets: &[Packet], pid: u16) -> Pes {
        let mut first_payloads = Vec::new();
        let mut times: Option<(i64, i64, u64)> = None;
        let mut started = false;
        for p in packets.iter().filter(|p| p.pid == pid) {
            if p.start {
                started = true;
                if let Some(pts) = pts(p.payload) {
                    times = Some(match times {
                        None => (pts, pts, 1),
                        Some((lo, hi, n)) => (lo.min(pts), hi.max(pts), n + 1),
                    });
                }
                if first_payloads.len() < 64 << 10 {
                    let skip = 9 + usize::from(*p.payload.get(8).unwrap_or(&0));
                    first_payloads.extend_from_slice(p.payload.get(skip..).unwrap_or(&[]));
                }
            } else if started && first_payloads.len() < 64 << 10 {
                first_payloads.extend_from_slice(p.payload);
            }
        }
        Pes {
            first_payloads,
            times,
        }
    }
}

/// The presentation time of a PES packet that starts in `payload`.
fn pts(payload: &[u8]) -> Option<i64> {
    if !payload.starts_with(&[0, 0, 1]) || payload.get(7)? & 0x80 == 0 {
        return None;
    }
    let b = payload.get(9..14)?;
    let t = (i64::from(b[0] >> 1) & 0x7) << 30
        | i64::from(b[1]) << 22
        | i64::from(b[2] >> 1) << 15
        | i64::from(b[3]) << 7
        | i64::from(b[4] >> 1);
    Some(t)
}

/// H.264 in Annex B: the first SPS NAL unit, up to the next start code.
fn video(es: &[u8]) -> Option<Stream> {
    let mut at = 0;
    while let Some(i) = find(&es[at..], &[0, 0, 1]) {
        let nal = at + i + 3;
        if es.get(nal)? & 0x1F == 7 {
            let end = find(&es[nal..], &[0, 0, 1]).map_or(es.len(), |e| nal + e);
            // A four-byte start code leaves its zero at the end of the NAL before it.
            let sps = h264::sps(es[nal..end].strip_suffix(&[0]).unwrap_or(&es[nal..end]))?;
            if !sps.frame_mbs_only {
                return None;
            }
            return Some(Stream {
                kind: "video".into(),
                codec: "h264".into(),
                width: Some(sps.width),
                height: Some(sps.height),
                pix_fmt: Some(sps.pix_fmt),
                field_order: Some("progressive".into()),
                sar: sps
                    .sar
                    .filter(|(w, h)| w != h)
                    .map(|(w, h)| format!("{w}:{h}")),
                ..Stream::default()
            });
        }
        at = nal;
    }
    None
}

/// AAC-LC in ADTS: the first frame header.
fn audio(es: &[u8]) -> Option<Stream> {
    let h = es.get(..7)?;
    if h[0] != 0xFF || h[1] & 0xF6 != 0xF0 {
        return None;
    }
    let profile = h[2] >> 6;
    let rate_index = usize::from((h[2] >> 2) & 0xF);
    let channels = u32::from((h[2] & 0x1) << 2 | h[3] >> 6);
    const RATES: [u32; 13] = [
        96000, 88200, 64000, 48000, 44100, 32000, 24000, 22050, 16000, 12000, 11025, 8000, 7350,
    ];
    if profile != 1 || !(1..=6).contains(&channels) {
        return None;
    }
    Some(Stream {
        kind: "audio".into(),
        codec: "aac".into(),
        sample_rate: Some(*RATES.get(rate_index)?),
        channels: Some(channels),
        ..Stream::default()
    })
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ffmpeg::probe::testing::{ffprobe, same_streams};

    /// What FFmpeg writes as MPEG-TS, read here and by ffprobe: the same streams,
    /// codecs, sizes, pixel formats, channels and rates, and durations to the
    /// millisecond (the audio's too: both time it from the first PES packet's start to
    /// the last one's plus one AAC frame, though a PES packet holds several).
    #[test]
    fn the_reader_agrees_with_ffprobe_on_what_ffmpeg_writes() {
        let dir = tempfile::tempdir().unwrap();
        let video = ["-f", "lavfi", "-i", "testsrc2=size=1280x720:rate=25:d=4"];
        let audio = ["-f", "lavfi", "-i", "sine=r=48000:d=4"];
        let x264 = ["-c:v", "libx264", "-preset", "ultrafast"];
        let cases: Vec<(&str, Vec<&str>)> = vec![
            (
                "plain.ts",
                [&video[..], &audio, &x264, &["-c:a", "aac", "-f", "mpegts"]].concat(),
            ),
            ("silent.ts", [&video[..], &x264, &["-f", "mpegts"]].concat()),
            (
                "odd.ts",
                [
                    &[
                        "-f",
                        "lavfi",
                        "-i",
                        "testsrc=size=322x242:rate=30000/1001:d=2",
                    ][..],
                    &audio,
                    &[
                        "-c:v", "libx264", "-preset", "fast", "-c:a", "aac", "-ac", "1", "-ar",
                        "44100",
                    ],
                    &["-t", "2", "-f", "mpegts"],
                ]
                .concat(),
            ),
        ];
        for (name, args) in cases {
            let path = dir.path().join(name);
            let made = std::process::Command::new("ffmpeg")
                .args(["-nostdin", "-v", "error", "-y"])
                .args(&args)
                .arg(&path)
                .status()
                .unwrap();
            assert!(made.success(), "{name}");
            let ours = read(&path).unwrap_or_else(|| panic!("{name} not read"));
            same_streams(name, &ours, &ffprobe(&path), 0.0015, 1e-3);
        }
    }

    #[test]
    fn what_the_reader_does_not_know_is_left_to_ffprobe() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("hevc.ts");
        let made = std::process::Command::new("ffmpeg")
            .args([
                "-nostdin",
                "-v",
                "error",
                "-y",
                "-f",
                "lavfi",
                "-i",
                "testsrc=d=1",
            ])
            .args([
                "-c:v",
                "libx265",
                "-x265-params",
                "log-level=error",
                "-f",
                "mpegts",
            ])
            .arg(&path)
            .status()
            .unwrap();
        assert!(made.success());
        assert_eq!(read(&path), None, "HEVC");
        let bytes = std::fs::read(&path).unwrap();
        std::fs::write(&path, &bytes[..bytes.len() - 100]).unwrap();
        assert_eq!(read(&path), None, "not whole packets");
        std::fs::write(&path, b"not a transport stream").unwrap();
        assert_eq!(read(&path), None);
    }
}
