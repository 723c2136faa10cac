//! What an output is, read from its header in-process: the output checks of an image
//! (a poster, a contact sheet) cost a few reads instead of an ffprobe process (about
//! 60 ms here, as much as the thumbnail's own FFmpeg); MP4s and MPEG-TS segments are read
//! by [`super::mp4`] and [`super::ts`].
//!
//! Only outputs are read this way (files a confined FFmpeg wrote from names in the
//! config); sources are always probed by ffprobe in the sandbox. A file this module does
//! not fully recognise gives `None`, and the caller falls back to ffprobe.

use std::path::Path;

use super::probe::{Probe, Stream};

/// The largest header this reader looks through for a JPEG's frame header: FFmpeg
/// writes it in the first few hundred bytes; EXIF or ICC segments may push it further.
const MAX_HEADER_BYTES: usize = 1 << 20;

/// What the output at `path` is, read in-process: a still image, an MP4
/// ([`super::mp4::read`]) or an MPEG-TS segment ([`super::ts::read`]); `None` when no
/// reader fully understands it.
///
/// The first bytes pick the one reader that can know the file, so a video output is
/// not read through as a would-be image first.
pub fn read(path: &Path) -> Option<Probe> {
    use std::io::Read;
    let mut magic = [0u8; 8];
    std::fs::File::open(path)
        .ok()?
        .read_exact(&mut magic)
        .ok()?;
    match magic {
        [0xFF, 0xD8, ..] | [0x89, b'P', b'N', b'G', ..] => still_image(path),
        [_, _, _, _, b'f', b't', b'y', b'p'] => super::mp4::read(path),
        [0x47, ..] => super::ts::read(path),
        _ => None,
    }
}

/// The still image at `path`, described as ffprobe would describe it (codec, size,
/// pixel format; the format is named `image2` or `png_pipe`, where ffprobe picks between
/// `image2` and `*_pipe` by the file's size), or `None` when it is not a JPEG or PNG this
/// reader understands, or when the file does not end where the format says it ends
/// (a truncated or partly written image).
pub fn still_image(path: &Path) -> Option<Probe> {
    let (head, tail) = ends(path).ok()?;
    jpeg(&head, &tail).or_else(|| png(&head, &tail))
}

/// The first [`MAX_HEADER_BYTES`] of a file and its last [`TAIL_BYTES`]: a large output
/// is never read whole.
fn ends(path: &Path) -> std::io::Result<(Vec<u8>, Vec<u8>)> {
    use std::io::{Read, Seek, SeekFrom};
    let mut file = std::fs::File::open(path)?;
    let size = file.metadata()?.len();
    let mut head = Vec::new();
    (&mut file)
        .take(MAX_HEADER_BYTES as u64)
        .read_to_end(&mut head)?;
    let mut tail = Vec::new();
    file.seek(SeekFrom::Start(size.saturating_sub(TAIL_BYTES)))?;
    file.read_to_end(&mut tail)?;
    Ok((head, tail))
}

/// Enough of the end of a file for a PNG's IEND chunk (12 bytes) or a JPEG's EOI.
const TAIL_BYTES: u64 = 12;

/// A baseline, extended or progressive JPEG ending in its EOI marker.
///
/// ```text
/// FF D8 | FF E0 len … | FF DB len … | FF C0 len P HH HH WW WW N (id HV tq)×N | … | FF D9
/// ```
fn jpeg(bytes: &[u8], tail: &[u8]) -> Option<Probe> {
    if !bytes.starts_with(&[0xFF, 0xD8]) || !tail.ends_with(&[0xFF, 0xD9]) {
        return None;
    }
    let mut at = 2;
    while at + 4 <= bytes.len() {
        if bytes[at] != 0xFF {
            return None;
        }
        let marker = bytes[at + 1];
        if marker == 0xFF {
            // A fill byte before the marker.
            at += 1;
            continue;
        }
        let len = usize::from(u16::from_be_bytes([bytes[at + 2], bytes[at + 3]]));
        let body = bytes.get(at + 4..at + 2 + len)?;
        match marker {
            0xC0..=0xC2 => return frame(body),
            // Lossless, hierarchical or arithmetic-coded: rare, left to ffprobe.
            0xC3 | 0xC5..=0xC7 | 0xC9..=0xCB | 0xCD..=0xCF => return None,
            // Entropy-coded data starts: a JPEG without a frame header before its scan.
            0xDA => return None,
            _ => at += 2 + len,
        }
    }
    None
}

/// The frame header (SOF0–SOF2) of an 8-bit JPEG: its size and sampling, named as
/// FFmpeg's decoder names the pixel format (full-range `yuvj…`).
fn frame(body: &[u8]) -> Option<Probe> {
    let [precision, h1, h0, w1, w0, components, rest @ ..] = body else {
        return None;
    };
    if *precision != 8 {
        return None;
    }
    let (height, width) = (
        u16::from_be_bytes([*h1, *h0]),
        u16::from_be_bytes([*w1, *w0]),
    );
    let sampling: Vec<u8> = rest.chunks_exact(3).map(|c| c[1]).collect();
    if sampling.len() != usize::from(*components) || width == 0 || height == 0 {
        return None;
    }
    let pix_fmt = match sampling.as_slice() {
        [_] => "gray",
        // What matters is luma's sampling relative to chroma's: FFmpeg's own encoder
        // writes 4:4:4 as 1×2 for every component.
        [y, cb, cr] if cb == cr => {
            let (yh, yv, ch, cv) = (y >> 4, y & 15, cb >> 4, cb & 15);
            if ch == 0 || cv == 0 || yh % ch != 0 || yv % cv != 0 {
                return None;
            }
            match (yh / ch, yv / cv) {
                (2, 2) => "yuvj420p",
                (2, 1) => "yuvj422p",
                (1, 1) => "yuvj444p",
                (1, 2) => "yuvj440p",
                (4, 1) => "yuvj411p",
                _ => return None,
            }
        }
        _ => return None,
    };
    Some(image(
        "image2",
        "mjpeg",
        width.into(),
        height.into(),
        pix_fmt,
    ))
}

/// A PNG whose first chunk is its IHDR and whose last is IEND.
///
/// ```text
/// 89 50 4E 47 0D 0A 1A 0A | 00 00 00 0D "IHDR" WWWW HHHH depth colour … | … | 00 00 00 00 "IEND" AE 42 60 82
/// ```
fn png(bytes: &[u8], tail: &[u8]) -> Option<Probe> {
    const SIGNATURE: [u8; 8] = [0x89, b'P', b'N', b'G', 0x0D, 0x0A, 0x1A, 0x0A];
    const IEND: [u8; 12] = [0, 0, 0, 0, b'I', b'E', b'N', b'D', 0xAE, 0x42, 0x60, 0x82];
    if !bytes.starts_with(&SIGNATURE) || !tail.ends_with(&IEND) {
        return None;
    }
    let ihdr = bytes.get(8..8 + 8 + 13)?;
    if ihdr[..8] != [0, 0, 0, 13, b'I', b'H', b'D', b'R'] {
        return None;
    }
    let width = u32::from_be_bytes(ihdr[8..12].try_into().ok()?);
    let height = u32::from_be_bytes(ihdr[12..16].try_into().ok()?);
    let pix_fmt = match (ihdr[17], ihdr[16]) {
        (0, 8) => "gray",
        (0, 16) => "gray16be",
        (2, 8) => "rgb24",
        (2, 16) => "rgb48be",
        (3, _) => "pal8",
        (4, 8) => "ya8",
        (4, 16) => "ya16be",
        (6, 8) => "rgba",
        (6, 16) => "rgba64be",
        _ => return None,
    };
    (width > 0 && height > 0).then(|| image("png_pipe", "png", width, height, pix_fmt))
}

fn image(format: &str, codec: &str, width: u32, height: u32, pix_fmt: &str) -> Probe {
    Probe {
        format: format.into(),
        duration: None,
        streams: vec![Stream {
            kind: "video".into(),
            codec: codec.into(),
            width: Some(width),
            height: Some(height),
            pix_fmt: Some(pix_fmt.into()),
            ..Stream::default()
        }],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A reader given a whole small file as both its head and its tail.
    fn both(read: fn(&[u8], &[u8]) -> Option<Probe>, bytes: &[u8]) -> Option<Probe> {
        read(bytes, bytes)
    }

    /// The smallest baseline JPEG shape: SOI, a frame header, a scan, EOI.
    fn jpeg_bytes(width: u16, height: u16, sampling: &[u8]) -> Vec<u8> {
        let mut b = vec![0xFF, 0xD8, 0xFF, 0xE0, 0x00, 0x04, 0x4A, 0x46];
        let len = 8 + 3 * sampling.len() as u16;
        b.extend([0xFF, 0xC0]);
        b.extend(len.to_be_bytes());
        b.push(8);
        b.extend(height.to_be_bytes());
        b.extend(width.to_be_bytes());
        b.push(sampling.len() as u8);
        for (i, s) in sampling.iter().enumerate() {
            b.extend([i as u8 + 1, *s, 0]);
        }
        b.extend([0xFF, 0xDA, 0x00, 0x02, 0x12, 0x34, 0xFF, 0xD9]);
        b
    }

    #[test]
    fn a_jpeg_frame_header_gives_size_and_sampling() {
        let p = both(jpeg, &jpeg_bytes(1280, 720, &[0x22, 0x11, 0x11])).unwrap();
        let v = p.video().unwrap();
        assert_eq!((v.width, v.height), (Some(1280), Some(720)));
        assert_eq!(v.pix_fmt.as_deref(), Some("yuvj420p"));
        assert_eq!((p.format.as_str(), v.codec.as_str()), ("image2", "mjpeg"));
        let same = both(jpeg, &jpeg_bytes(16, 9, &[0x12, 0x12, 0x12])).unwrap();
        assert_eq!(same.video().unwrap().pix_fmt.as_deref(), Some("yuvj444p"));
        let gray = both(jpeg, &jpeg_bytes(16, 9, &[0x11])).unwrap();
        assert_eq!(gray.video().unwrap().pix_fmt.as_deref(), Some("gray"));
    }

    #[test]
    fn a_truncated_or_odd_jpeg_is_left_to_ffprobe() {
        let whole = jpeg_bytes(1280, 720, &[0x22, 0x11, 0x11]);
        assert_eq!(both(jpeg, &whole[..whole.len() - 3]), None, "no EOI");
        assert_eq!(both(jpeg, &whole[..20]), None);
        assert_eq!(
            both(jpeg, &jpeg_bytes(1280, 720, &[0x33, 0x11, 0x11])),
            None
        );
        let mut lossless = whole.clone();
        lossless[9] = 0xC3;
        assert_eq!(both(jpeg, &lossless), None);
        assert_eq!(both(jpeg, b""), None);
        assert_eq!(both(jpeg, &[0xFF, 0xD8, 0xFF, 0xD9]), None);
    }

    #[test]
    fn a_png_header_gives_size_and_colour() {
        let mut b = vec![0x89, b'P', b'N', b'G', 0x0D, 0x0A, 0x1A, 0x0A];
        b.extend([0, 0, 0, 13]);
        b.extend(*b"IHDR");
        b.extend(321u32.to_be_bytes());
        b.extend(241u32.to_be_bytes());
        b.extend([8, 6, 0, 0, 0, 0, 0, 0, 0]);
        b.extend([0, 0, 0, 0, b'I', b'E', b'N', b'D', 0xAE, 0x42, 0x60, 0x82]);
        let p = both(png, &b).unwrap();
        let v = p.video().unwrap();
        assert_eq!((v.width, v.height), (Some(321), Some(241)));
        assert_eq!(v.pix_fmt.as_deref(), Some("rgba"));
        assert_eq!(both(png, &b[..b.len() - 1]), None, "no IEND");
    }

    /// What FFmpeg writes, read here and by ffprobe: the two agree on everything an
    /// output check looks at (streams, codec, size, pixel format), for the shapes the
    /// shipped pipelines make.
    #[test]
    fn the_reader_agrees_with_ffprobe_on_what_ffmpeg_writes() {
        let dir = tempfile::tempdir().unwrap();
        let cases = [
            ("poster.jpg", "testsrc=size=1280x720", &["-q:v", "2"][..]),
            (
                "odd.jpg",
                "testsrc=size=321x241",
                &["-pix_fmt", "yuvj420p"][..],
            ),
            ("gray.jpg", "testsrc=size=64x48", &["-pix_fmt", "gray"][..]),
            (
                "wide.jpg",
                "testsrc=size=640x360",
                &["-pix_fmt", "yuvj422p"][..],
            ),
            ("rgb.png", "testsrc=size=321x241", &[][..]),
            ("alpha.png", "testsrc=size=64x48", &["-pix_fmt", "rgba"][..]),
            (
                "deep.png",
                "testsrc=size=64x48",
                &["-pix_fmt", "rgb48be"][..],
            ),
        ];
        for (name, src, extra) in cases {
            let path = dir.path().join(name);
            let made = std::process::Command::new("ffmpeg")
                .args(["-nostdin", "-v", "error", "-f", "lavfi", "-i", src])
                .args(extra)
                .args(["-frames:v", "1"])
                .arg(&path)
                .status()
                .unwrap();
            assert!(made.success(), "{name}");
            let out = std::process::Command::new("ffprobe")
                .args(["-v", "error", "-print_format", "json"])
                .args(["-show_format", "-show_streams"])
                .arg(&path)
                .output()
                .unwrap();
            let theirs =
                crate::ffmpeg::probe::parse(&String::from_utf8_lossy(&out.stdout)).unwrap();
            let ours = still_image(&path).unwrap_or_else(|| panic!("{name} not read"));
            let (a, b) = (ours.video().unwrap(), theirs.video().unwrap());
            assert_eq!(ours.streams.len(), theirs.streams.len(), "{name}");
            assert_eq!(
                (&a.codec, a.width, a.height, &a.pix_fmt),
                (&b.codec, b.width, b.height, &b.pix_fmt),
                "{name}"
            );
        }
    }
}
