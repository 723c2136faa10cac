//! What an MP4 holds, read from its boxes in-process: an H.264/AAC rendition is checked
//! with a few reads of its `moov` instead of an ffprobe process (about 60 ms here, two
//! of them for a two-rung ladder).
//!
//! Only outputs are read this way (files a confined FFmpeg wrote from names in the
//! config); sources are always probed by ffprobe in the sandbox. The reader describes a
//! file as ffprobe would (format name, streams in track order, codec, size, pixel format,
//! durations, frame rate, channels) and gives `None` for anything it does not fully
//! understand, where the caller falls back to ffprobe: another codec, a fragmented or
//! rotated file, an edit list with more than one segment, interlaced video.
//!
//! It is also stricter than ffprobe about the file being whole: the top-level boxes
//! must tile the file exactly, and every chunk the sample tables point at must lie inside
//! the media data, so an output cut short reads as `None` and is probed.

use std::io::{Read, Seek, SeekFrom};
use std::path::Path;

use super::h264;
use super::probe::{Probe, Stream};

/// The name ffprobe gives the format.
const FORMAT: &str = "mov,mp4,m4a,3gp,3g2,mj2";
/// The largest `moov` read: a two-hour title's sample tables are a few MiB.
const MAX_MOOV_BYTES: u64 = 64 << 20;
/// More top-level boxes than this is a fragmented file, left to ffprobe.
const MAX_TOP_BOXES: usize = 16;

/// The MP4 at `path` as ffprobe would describe it, or `None` (see the module).
pub fn read(path: &Path) -> Option<Probe> {
    let mut file = std::fs::File::open(path).ok()?;
    let size = file.metadata().ok()?.len();
    let top = top_boxes(&mut file, size)?;
    if top.first()?.kind != *b"ftyp" {
        return None;
    }
    let moov = top.iter().find(|b| b.kind == *b"moov")?;
    let media: Vec<(u64, u64)> = top
        .iter()
        .filter(|b| b.kind == *b"mdat")
        .map(|b| (b.body, b.end))
        .collect();
    if moov.end - moov.body > MAX_MOOV_BYTES || media.is_empty() {
        return None;
    }
    let mut bytes = vec![0; usize::try_from(moov.end - moov.body).ok()?];
    file.seek(SeekFrom::Start(moov.body)).ok()?;
    file.read_exact(&mut bytes).ok()?;
    movie(&bytes, &media)
}

/// A top-level box: its type, where its body starts and where it ends.
struct TopBox {
    kind: [u8; 4],
    body: u64,
    end: u64,
}

/// The top-level boxes, which must tile the file's `size` bytes exactly.
fn top_boxes(file: &mut std::fs::File, size: u64) -> Option<Vec<TopBox>> {
    let mut boxes = Vec::new();
    let mut at = 0;
    while at < size {
        if boxes.len() == MAX_TOP_BOXES {
            return None;
        }
        let mut head = [0u8; 16];
        file.seek(SeekFrom::Start(at)).ok()?;
        let n = file.read(&mut head).ok()?;
        if n < 8 {
            return None;
        }
        let kind: [u8; 4] = head[4..8].try_into().ok()?;
        let (len, header) = match u32::from_be_bytes(head[..4].try_into().ok()?) {
            0 => (size - at, 8),
            1 if n == 16 => (u64::from_be_bytes(head[8..16].try_into().ok()?), 16),
            1 => return None,
            len => (u64::from(len), 8),
        };
        let end = at.checked_add(len)?;
        if len < header || end > size {
            return None;
        }
        boxes.push(TopBox {
            kind,
            body: at + header,
            end,
        });
        at = end;
    }
    Some(boxes)
}

/// The body of a `moov`, with the extents of the file's media data.
fn movie(moov: &[u8], media: &[(u64, u64)]) -> Option<Probe> {
    let kids = children(moov)?;
    if find(&kids, b"mvex").is_some() {
        return None;
    }
    let mvhd = find(&kids, b"mvhd")?;
    let movie_scale = u64::from(if mvhd.first()? == &1 {
        be32(mvhd, 20)?
    } else {
        be32(mvhd, 12)?
    });
    let mut streams = Vec::new();
    let mut sample_bytes = 0u64;
    for (kind, trak) in &kids {
        if kind == b"trak" {
            let (stream, bytes) = track(trak, movie_scale, media)?;
            streams.push(stream);
            sample_bytes = sample_bytes.checked_add(bytes)?;
        }
    }
    let payload: u64 = media.iter().map(|(body, end)| end - body).sum();
    if streams.is_empty() || sample_bytes > payload {
        return None;
    }
    let duration = streams
        .iter()
        .filter_map(|s| s.duration)
        .fold(None, |max: Option<f64>, d| {
            Some(max.map_or(d, |m| m.max(d)))
        });
    Some(Probe {
        format: FORMAT.into(),
        duration,
        streams,
    })
}

/// One `trak`: its stream, and the bytes its samples take in the media data.
fn track(trak: &[u8], movie_scale: u64, media: &[(u64, u64)]) -> Option<(Stream, u64)> {
    let kids = children(trak)?;
    upright(find(&kids, b"tkhd")?)?;
    let mdia = children(find(&kids, b"mdia")?)?;
    let mdhd = find(&mdia, b"mdhd")?;
    let (scale, media_duration) = if mdhd.first()? == &1 {
        (be32(mdhd, 20)?, be64(mdhd, 24)?)
    } else {
        (be32(mdhd, 12)?, u64::from(be32(mdhd, 16)?))
    };
    if scale == 0 || movie_scale == 0 {
        return None;
    }
    let handler = find(&mdia, b"hdlr")?.get(8..12)?;
    let stbl = children(find(&children(find(&mdia, b"minf")?)?, b"stbl")?)?;
    let (samples, ticks) = time_to_sample(find(&stbl, b"stts")?)?;
    let bytes = sample_sizes(find(&stbl, b"stsz")?, samples)?;
    chunks_inside(&stbl, media)?;
    let duration = match find(&kids, b"edts") {
        None => media_duration as f64 / f64::from(scale),
        Some(edts) => one_edit(find(&children(edts)?, b"elst")?)? as f64 / movie_scale as f64,
    };
    let entry = sample_entry(find(&stbl, b"stsd")?)?;
    let mut stream = match handler {
        b"vide" => video(entry)?,
        b"soun" => audio(entry)?,
        _ => return None,
    };
    stream.duration = Some(duration);
    if stream.kind == "video" && samples > 1 && ticks > 0 {
        stream.fps = Some(samples as f64 * f64::from(scale) / ticks as f64);
    }
    Some((stream, bytes))
}

/// A track header whose matrix is the identity: nothing turns the picture.
fn upright(tkhd: &[u8]) -> Option<()> {
    const IDENTITY: [u32; 9] = [0x10000, 0, 0, 0, 0x10000, 0, 0, 0, 0x4000_0000];
    let at = if tkhd.first()? == &1 { 52 } else { 40 };
    let matrix: Vec<u32> = (0..9)
        .map(|i| be32(tkhd, at + 4 * i))
        .collect::<Option<_>>()?;
    (matrix == IDENTITY).then_some(())
}

/// The samples in a track and their total duration in the track's ticks.
fn time_to_sample(stts: &[u8]) -> Option<(u64, u64)> {
    let count = be32(stts, 4)? as usize;
    (0..count).try_fold((0u64, 0u64), |(samples, ticks), i| {
        let n = u64::from(be32(stts, 8 + 8 * i)?);
        let delta = u64::from(be32(stts, 12 + 8 * i)?);
        Some((samples + n, ticks.checked_add(n.checked_mul(delta)?)?))
    })
}

/// The bytes of a track's `samples` samples; a size table of another length is not
/// the file's.
fn sample_sizes(stsz: &[u8], samples: u64) -> Option<u64> {
    let fixed = u64::from(be32(stsz, 4)?);
    let count = u64::from(be32(stsz, 8)?);
    if count != samples {
        return None;
    }
    if fixed != 0 {
        return fixed.checked_mul(count);
    }
    (0..count as usize).try_fold(0u64, |sum, i| {
        Some(sum + u64::from(be32(stsz, 12 + 4 * i)?))
    })
}

/// Every chunk offset (`stco` or `co64`) points inside a media data box.
fn chunks_inside(stbl: &[([u8; 4], &[u8])], media: &[(u64, u64)]) -> Option<()> {
    let (table, wide) = match (find(stbl, b"stco"), find(stbl, b"co64")) {
        (Some(t), None) => (t, false),
        (None, Some(t)) => (t, true),
        _ => return None,
    };
    let count = be32(table, 4)? as usize;
    for i in 0..count {
        let offset = if wide {
            be64(table, 8 + 8 * i)?
        } else {
            u64::from(be32(table, 8 + 4 * i)?)
        };
        if !media
            .iter()
            .any(|(body, end)| (*body..*end).contains(&offset))
        {
            return None;
        }
    }
    Some(())
}

/// The length, in movie ticks, of an edit list of one segment that plays the media at
/// normal rate (what FFmpeg writes to skip B-frame delay or AAC priming).
fn one_edit(elst: &[u8]) -> Option<u64> {
    if be32(elst, 4)? != 1 {
        return None;
    }
    let (duration, media_time, rate) = if elst.first()? == &1 {
        (be64(elst, 8)?, be64(elst, 16)? as i64, be32(elst, 24)?)
    } else {
        (
            u64::from(be32(elst, 8)?),
            i64::from(be32(elst, 12)? as i32),
            be32(elst, 16)?,
        )
    };
    (media_time >= 0 && rate == 0x10000).then_some(duration)
}

/// The one sample entry of a sample description: its type and body.
fn sample_entry(stsd: &[u8]) -> Option<([u8; 4], &[u8])> {
    if be32(stsd, 4)? != 1 {
        return None;
    }
    let entries = children(stsd.get(8..)?)?;
    match entries.as_slice() {
        [one] => Some(*one),
        _ => None,
    }
}

/// An `avc1`/`avc3` visual sample entry, described by its SPS.
fn video((kind, entry): ([u8; 4], &[u8])) -> Option<Stream> {
    if !matches!(&kind, b"avc1" | b"avc3") {
        return None;
    }
    let kids = children(entry.get(78..)?)?;
    let avcc = find(&kids, b"avcC")?;
    if avcc.get(5)? & 0x1F == 0 {
        return None;
    }
    let len = usize::from(u16::from_be_bytes(avcc.get(6..8)?.try_into().ok()?));
    let sps = h264::sps(avcc.get(8..8 + len)?)?;
    if !sps.frame_mbs_only {
        return None;
    }
    let sar = sps.sar.or_else(|| {
        let pasp = find(&kids, b"pasp")?;
        Some((be32(pasp, 0)?, be32(pasp, 4)?))
    });
    Some(Stream {
        kind: "video".into(),
        codec: "h264".into(),
        width: Some(sps.width),
        height: Some(sps.height),
        pix_fmt: Some(sps.pix_fmt),
        color_transfer: match sps.transfer {
            None | Some(2) => None,
            Some(t) => Some(transfer_name(t)?.into()),
        },
        field_order: Some("progressive".into()),
        sar: sar
            .filter(|(w, h)| w != h && *w > 0 && *h > 0)
            .map(|(w, h)| format!("{w}:{h}")),
        ..Stream::default()
    })
}

/// FFmpeg's names for the transfer characteristics it prints (H.273).
fn transfer_name(t: u8) -> Option<&'static str> {
    Some(match t {
        1 => "bt709",
        4 => "gamma22",
        5 => "gamma28",
        6 => "smpte170m",
        7 => "smpte240m",
        8 => "linear",
        13 => "iec61966-2-1",
        14 => "bt2020-10",
        15 => "bt2020-12",
        16 => "smpte2084",
        18 => "arib-std-b67",
        _ => return None,
    })
}

/// An `mp4a` sound sample entry holding AAC-LC, described by its AudioSpecificConfig.
fn audio((kind, entry): ([u8; 4], &[u8])) -> Option<Stream> {
    // QuickTime's sound description versions 1 and 2 lay the entry out otherwise.
    if &kind != b"mp4a" || be16(entry, 8)? != 0 {
        return None;
    }
    let esds = find(&children(entry.get(28..)?)?, b"esds")?;
    let config = decoder_config(esds.get(4..)?)?;
    let (object_type, specific) = config;
    if object_type != 0x40 {
        return None;
    }
    // AudioSpecificConfig: object type (5 bits), rate index (4), channel config (4).
    let bits = u16::from_be_bytes(specific.get(..2)?.try_into().ok()?);
    let (aot, rate_index, channels) = (bits >> 11, (bits >> 7) & 0xF, (bits >> 3) & 0xF);
    const RATES: [u32; 13] = [
        96000, 88200, 64000, 48000, 44100, 32000, 24000, 22050, 16000, 12000, 11025, 8000, 7350,
    ];
    let channels = match channels {
        1..=6 => u32::from(channels),
        7 => 8,
        _ => return None,
    };
    if aot != 2 {
        return None; // HE-AAC's SBR doubles the rate the decoder reports
    }
    Some(Stream {
        kind: "audio".into(),
        codec: "aac".into(),
        sample_rate: Some(*RATES.get(usize::from(rate_index))?),
        channels: Some(channels),
        ..Stream::default()
    })
}

/// The object type and decoder-specific info of an `esds`'s ES descriptor.
fn decoder_config(mut b: &[u8]) -> Option<(u8, &[u8])> {
    let (tag, body) = descriptor(&mut b)?;
    if tag != 0x03 {
        return None;
    }
    let flags = *body.get(2)?;
    let mut at = 3;
    if flags & 0x80 != 0 {
        at += 2;
    }
    if flags & 0x40 != 0 {
        at += 1 + usize::from(*body.get(at)?);
    }
    if flags & 0x20 != 0 {
        at += 2;
    }
    let mut rest = body.get(at..)?;
    let (tag, config) = descriptor(&mut rest)?;
    if tag != 0x04 {
        return None;
    }
    let object_type = *config.first()?;
    let mut rest = config.get(13..)?;
    let (tag, specific) = descriptor(&mut rest)?;
    (tag == 0x05).then_some((object_type, specific))
}

/// One MPEG-4 descriptor: its tag and body, taken off the front of `b`.
fn descriptor<'a>(b: &mut &'a [u8]) -> Option<(u8, &'a [u8])> {
    let (&tag, mut rest) = b.split_first()?;
    let mut len = 0usize;
    for _ in 0..4 {
        let (&byte, after) = rest.split_first()?;
        rest = after;
        len = len << 7 | usize::from(byte & 0x7F);
        if byte & 0x80 == 0 {
            break;
        }
    }
    let body = rest.get(..len)?;
    *b = &rest[len..];
    Some((tag, body))
}

/// The boxes that make up `data`, which they must fill exactly.
fn children(mut data: &[u8]) -> Option<Vec<([u8; 4], &[u8])>> {
    let mut kids = Vec::new();
    while !data.is_empty() {
        let len = be32(data, 0)?;
        let kind: [u8; 4] = data.get(4..8)?.try_into().ok()?;
        let (header, len) = match len {
            0 => (8, data.len()),
            1 => (16, usize::try_from(be64(data, 8)?).ok()?),
            len => (8, len as usize),
        };
        if len < header {
            return None;
        }
        kids.push((kind, data.get(header..len)?));
        data = &data[len..];
    }
    Some(kids)
}

fn find<'a>(kids: &[([u8; 4], &'a [u8])], kind: &[u8; 4]) -> Option<&'a [u8]> {
    kids.iter().find(|(k, _)| k == kind).map(|(_, body)| *body)
}

fn be16(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_be_bytes(b.get(at..at + 2)?.try_into().ok()?))
}

fn be32(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_be_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

fn be64(b: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_be_bytes(b.get(at..at + 8)?.try_into().ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ffmpeg::probe::testing::{ffprobe, same_streams};

    fn make(path: &Path, args: &[&str]) {
        let made = std::process::Command::new("ffmpeg")
            .args(["-nostdin", "-v", "error", "-y"])
            .args(args)
            .arg(path)
            .status()
            .unwrap();
        assert!(made.success(), "{}", path.display());
    }

    const VIDEO: &[&str] = &["-f", "lavfi", "-i", "testsrc2=size=1280x720:rate=25:d=3"];
    const STEREO: &[&str] = &["-f", "lavfi", "-i", "sine=f=440:r=48000:d=3"];

    /// What FFmpeg writes, read here and by ffprobe: the two agree on every field an
    /// output check or a manifest holds (durations to the millisecond the edit list is
    /// written in), for the shapes the shipped pipelines make and a few they could.
    #[test]
    fn the_reader_agrees_with_ffprobe_on_what_ffmpeg_writes() {
        let dir = tempfile::tempdir().unwrap();
        let x264: &[&str] = &["-c:v", "libx264", "-preset", "ultrafast"];
        let aac: &[&str] = &["-c:a", "aac", "-b:a", "96k"];
        let cases: Vec<(&str, Vec<&[&str]>)> = vec![
            ("ladder.mp4", vec![VIDEO, STEREO, x264, aac, &["-shortest"]]),
            (
                "bframes.mp4",
                vec![VIDEO, STEREO, &["-c:v", "libx264", "-preset", "fast"], aac],
            ),
            ("silent.mp4", vec![VIDEO, x264]),
            (
                "faststart.mp4",
                vec![VIDEO, STEREO, x264, aac, &["-movflags", "+faststart"]],
            ),
            (
                "odd.mp4",
                vec![
                    &[
                        "-f",
                        "lavfi",
                        "-i",
                        "testsrc=size=322x242:rate=30000/1001:d=2",
                    ],
                    x264,
                ],
            ),
            ("full.mp4", vec![VIDEO, x264, &["-pix_fmt", "yuvj420p"]]),
            ("deep.mp4", vec![VIDEO, x264, &["-pix_fmt", "yuv420p10le"]]),
            ("444.mp4", vec![VIDEO, x264, &["-pix_fmt", "yuv444p"]]),
            (
                "anamorphic.mp4",
                vec![VIDEO, x264, &["-vf", "setsar=64/45", "-frames:v", "10"]],
            ),
            (
                "mono.mp4",
                vec![
                    VIDEO,
                    &["-f", "lavfi", "-i", "sine=r=44100:d=2"],
                    x264,
                    aac,
                    &["-ac", "1"],
                ],
            ),
            (
                "surround.mp4",
                vec![VIDEO, STEREO, x264, aac, &["-ac", "6", "-t", "2"]],
            ),
        ];
        for (name, parts) in cases {
            let path = dir.path().join(name);
            make(&path, &parts.concat());
            let theirs = ffprobe(&path);
            let ours = read(&path).unwrap_or_else(|| panic!("{name} not read"));
            let (a, b) = (ours.duration.unwrap(), theirs.duration.unwrap());
            assert!((a - b).abs() < 0.0015, "{name}: ours {a}, ffprobe {b}");
            same_streams(name, &ours, &theirs, 0.0015, 1e-6);
        }
    }

    #[test]
    fn what_the_reader_does_not_know_is_left_to_ffprobe() {
        let dir = tempfile::tempdir().unwrap();
        let whole = dir.path().join("whole.mp4");
        make(
            &whole,
            &[
                VIDEO,
                STEREO,
                &["-c:v", "libx264", "-preset", "ultrafast", "-t", "2"],
            ]
            .concat(),
        );
        assert!(read(&whole).is_some());
        let bytes = std::fs::read(&whole).unwrap();
        for cut in [bytes.len() - 1, bytes.len() / 2, 100] {
            let short = dir.path().join("short.mp4");
            std::fs::write(&short, &bytes[..cut]).unwrap();
            assert_eq!(read(&short), None, "cut at {cut}");
        }
        let faststart = dir.path().join("faststart.mp4");
        make(
            &faststart,
            &[
                VIDEO,
                &["-c:v", "libx264", "-preset", "ultrafast", "-t", "2"],
                &["-movflags", "+faststart"],
            ]
            .concat(),
        );
        let bytes = std::fs::read(&faststart).unwrap();
        let short = dir.path().join("short-faststart.mp4");
        std::fs::write(&short, &bytes[..bytes.len() - 1000]).unwrap();
        assert_eq!(read(&short), None, "media data cut short");
        for (name, codec) in [
            (
                "hevc.mp4",
                &[
                    "-c:v",
                    "libx265",
                    "-x265-params",
                    "log-level=error",
                    "-t",
                    "1",
                ][..],
            ),
            ("mpeg4.mp4", &["-c:v", "mpeg4", "-t", "1"][..]),
            (
                "fragmented.mp4",
                &[
                    "-c:v",
                    "libx264",
                    "-t",
                    "2",
                    "-movflags",
                    "+frag_keyframe+empty_moov",
                ][..],
            ),
            (
                "interlaced.mp4",
                &["-c:v", "libx264", "-t", "1", "-flags", "+ildct"][..],
            ),
        ] {
            let path = dir.path().join(name);
            make(&path, &[VIDEO, codec].concat());
            assert_eq!(read(&path), None, "{name}");
        }
        let text = dir.path().join("not.mp4");
        std::fs::write(&text, b"not an mp4 at all").unwrap();
        assert_eq!(read(&text), None);
    }
}
