//! What an H.264 sequence parameter set says about the picture: its size after
//! cropping, chroma format and bit depth (and so FFmpeg's pixel format), field coding,
//! sample aspect ratio and transfer characteristic.
//!
//! Read for the in-process output checks ([`super::mp4`]): an SPS this reader does not
//! fully understand gives `None`, and the caller falls back to ffprobe.

/// The parts of an SPS an output check looks at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sps {
    pub width: u32,
    pub height: u32,
    /// As FFmpeg's decoder names it: `yuv420p`, `yuvj420p`, `yuv420p10le`, `gray`, …
    pub pix_fmt: String,
    /// False for field-coded (interlaced or MBAFF) video.
    pub frame_mbs_only: bool,
    /// Sample aspect ratio, reduced; `None` when not signalled.
    pub sar: Option<(u32, u32)>,
    /// `transfer_characteristics` of the VUI, when signalled.
    pub transfer: Option<u8>,
}

/// Reads the SPS NAL unit `nal` (its header byte first, emulation-prevention bytes
/// still in).
pub fn sps(nal: &[u8]) -> Option<Sps> {
    let (&header, body) = nal.split_first()?;
    if header & 0x1F != 7 {
        return None;
    }
    let rbsp = unescape(body);
    let mut r = Bits::new(&rbsp);
    let profile = r.bits(8)?;
    r.bits(16)?; // constraint flags, level
    r.ue()?; // seq_parameter_set_id
    let (chroma, depth) = if HIGH_PROFILES.contains(&profile) {
        chroma_and_depth(&mut r)?
    } else {
        (1, 8)
    };
    r.ue()?; // log2_max_frame_num_minus4
    skip_picture_order(&mut r)?;
    r.ue()?; // max_num_ref_frames
    r.bit()?; // gaps_in_frame_num_value_allowed
    let width_mbs = r.ue()? + 1;
    let height_units = r.ue()? + 1;
    let frame_mbs_only = r.bit()?;
    if !frame_mbs_only {
        r.bit()?; // mb_adaptive_frame_field
    }
    r.bit()?; // direct_8x8_inference
    let field_factor = if frame_mbs_only { 1 } else { 2 };
    let (sub_w, sub_h) = match chroma {
        1 => (2, 2),
        2 => (2, 1),
        _ => (1, 1),
    };
    let mut width = width_mbs.checked_mul(16)?;
    let mut height = height_units.checked_mul(16 * field_factor)?;
    if r.bit()? {
        let (left, right, top, bottom) = (r.ue()?, r.ue()?, r.ue()?, r.ue()?);
        width = width.checked_sub(left.checked_add(right)?.checked_mul(sub_w)?)?;
        let rows = top.checked_add(bottom)?.checked_mul(sub_h * field_factor)?;
        height = height.checked_sub(rows)?;
    }
    let vui = if r.bit()? {
        vui(&mut r)?
    } else {
        Vui::default()
    };
    if vui.matrix == Some(0) {
        return None; // RGB in a 4:4:4 stream (gbrp): left to ffprobe
    }
    Some(Sps {
        width,
        height,
        pix_fmt: pix_fmt(chroma, depth, vui.full_range)?,
        frame_mbs_only,
        sar: vui.sar.filter(|(w, h)| *w > 0 && *h > 0).map(reduce),
        transfer: vui.transfer,
    })
}

/// The profiles whose SPS carries chroma format, bit depths and scaling lists.
const HIGH_PROFILES: [u32; 13] = [100, 110, 122, 244, 44, 83, 86, 118, 128, 138, 139, 134, 135];

/// `chroma_format_idc` and the bit depth of a high profile's SPS, past its scaling
/// lists.
fn chroma_and_depth(r: &mut Bits) -> Option<(u32, u32)> {
    let chroma = r.ue()?;
    if chroma > 3 {
        return None;
    }
    if chroma == 3 && r.bit()? {
        return None; // separate colour planes: left to ffprobe
    }
    let depth = 8 + r.ue()?;
    let chroma_depth = 8 + r.ue()?;
    if chroma_depth != depth && chroma != 0 {
        return None;
    }
    r.bit()?; // qpprime_y_zero_transform_bypass
    if r.bit()? {
        let lists = if chroma == 3 { 12 } else { 8 };
        for i in 0..lists {
            if r.bit()? {
                skip_scaling_list(r, if i < 6 { 16 } else { 64 })?;
            }
        }
    }
    Some((chroma, depth))
}

/// Past `pic_order_cnt_type` and what it brings.
fn skip_picture_order(r: &mut Bits) -> Option<()> {
    match r.ue()? {
        0 => {
            r.ue()?;
        }
        1 => {
            r.bit()?;
            r.se()?;
            r.se()?;
            for _ in 0..r.ue()? {
                r.se()?;
            }
        }
        2 => {}
        _ => return None,
    }
    Some(())
}

/// What the start of the VUI says: aspect ratio, range and colour description.
#[derive(Default)]
struct Vui {
    sar: Option<(u32, u32)>,
    full_range: bool,
    transfer: Option<u8>,
    matrix: Option<u32>,
}

fn vui(r: &mut Bits) -> Option<Vui> {
    let mut vui = Vui::default();
    if r.bit()? {
        vui.sar = match r.bits(8)? {
            255 => Some((r.bits(16)?, r.bits(16)?)),
            0 => None,
            idc => Some(*ASPECT_RATIOS.get(idc as usize - 1)?),
        };
    }
    if r.bit()? {
        r.bit()?; // overscan_appropriate
    }
    if r.bit()? {
        r.bits(3)?; // video_format
        vui.full_range = r.bit()?;
        if r.bit()? {
            r.bits(8)?; // colour_primaries
            vui.transfer = Some(r.bits(8)? as u8);
            vui.matrix = Some(r.bits(8)?);
        }
    }
    Some(vui)
}

/// `aspect_ratio_idc` 1 to 16 (H.264 Table E-1).
const ASPECT_RATIOS: [(u32, u32); 16] = [
    (1, 1),
    (12, 11),
    (10, 11),
    (16, 11),
    (40, 33),
    (24, 11),
    (20, 11),
    (32, 11),
    (80, 33),
    (18, 11),
    (15, 11),
    (64, 33),
    (160, 99),
    (4, 3),
    (3, 2),
    (2, 1),
];

/// FFmpeg's name for a picture of `chroma_format_idc` and bit depth; 8-bit full-range
/// YUV is the `yuvj` formats, as FFmpeg 5's decoder still reports it.
fn pix_fmt(chroma: u32, depth: u32, full_range: bool) -> Option<String> {
    let base = match chroma {
        0 => "gray",
        1 => "yuv420p",
        2 => "yuv422p",
        _ => "yuv444p",
    };
    Some(match depth {
        8 if full_range && chroma != 0 => base.replacen("yuv", "yuvj", 1),
        8 => base.to_string(),
        9 | 10 | 12 | 14 => format!("{base}{depth}le"),
        _ => return None,
    })
}

fn reduce((w, h): (u32, u32)) -> (u32, u32) {
    let (mut a, mut b) = (w, h);
    while b != 0 {
        (a, b) = (b, a % b);
    }
    (w / a, h / a)
}

fn skip_scaling_list(r: &mut Bits, size: usize) -> Option<()> {
    let (mut last, mut next) = (8i64, 8i64);
    for _ in 0..size {
        if next != 0 {
            next = (last + r.se()? + 256).rem_euclid(256);
        }
        if next != 0 {
            last = next;
        }
    }
    Some(())
}

/// The RBSP of a NAL unit's payload: every `00 00 03` loses its `03`.
fn unescape(body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(body.len());
    let mut zeros = 0;
    for &b in body {
        if zeros >= 2 && b == 3 {
            zeros = 0;
            continue;
        }
        zeros = if b == 0 { zeros + 1 } else { 0 };
        out.push(b);
    }
    out
}

/// A big-endian bit reader with the Exp-Golomb codes of H.264.
struct Bits<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Bits<'a> {
    fn new(bytes: &'a [u8]) -> Bits<'a> {
        Bits { bytes, at: 0 }
    }

    fn bit(&mut self) -> Option<bool> {
        let byte = self.bytes.get(self.at / 8)?;
        let bit = byte >> (7 - self.at % 8) & 1;
        self.at += 1;
        Some(bit == 1)
    }

    fn bits(&mut self, n: u32) -> Option<u32> {
        (0..n).try_fold(0u32, |acc, _| Some(acc << 1 | u32::from(self.bit()?)))
    }

    /// Unsigned Exp-Golomb; longer than 31 bits is no SPS this reader takes.
    fn ue(&mut self) -> Option<u32> {
        let mut zeros = 0;
        while !self.bit()? {
            zeros += 1;
            if zeros > 31 {
                return None;
            }
        }
        let rest = self.bits(zeros)?;
        ((1u64 << zeros) - 1 + u64::from(rest)).try_into().ok()
    }

    fn se(&mut self) -> Option<i64> {
        let k = i64::from(self.ue()?);
        Some(if k % 2 == 1 { (k + 1) / 2 } else { -k / 2 })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exp_golomb_codes_read_as_the_standard_lists_them() {
        // 1 | 010 | 011 | 00100 | 00101 → ue 0, 1, 2, 3, 4
        let bytes = [0b1010_0110, 0b0100_0010, 0b1000_0000];
        let mut r = Bits::new(&bytes);
        let got: Vec<u32> = (0..5).map(|_| r.ue().unwrap()).collect();
        assert_eq!(got, [0, 1, 2, 3, 4]);
        // se: 1 → 0, 010 → 1, 011 → -1
        let mut r = Bits::new(&[0b1010_0110]);
        assert_eq!((r.se(), r.se(), r.se()), (Some(0), Some(1), Some(-1)));
    }

    #[test]
    fn emulation_prevention_bytes_are_dropped() {
        assert_eq!(unescape(&[0, 0, 3, 1, 0, 0, 3, 0]), [0, 0, 1, 0, 0, 0]);
        assert_eq!(unescape(&[0, 3, 0]), [0, 3, 0]);
    }

    #[test]
    fn pixel_formats_follow_chroma_depth_and_range() {
        assert_eq!(pix_fmt(1, 8, false).as_deref(), Some("yuv420p"));
        assert_eq!(pix_fmt(1, 8, true).as_deref(), Some("yuvj420p"));
        assert_eq!(pix_fmt(1, 10, true).as_deref(), Some("yuv420p10le"));
        assert_eq!(pix_fmt(3, 8, false).as_deref(), Some("yuv444p"));
        assert_eq!(pix_fmt(0, 8, true).as_deref(), Some("gray"));
        assert_eq!(pix_fmt(1, 11, false), None);
        assert_eq!(reduce((64, 48)), (4, 3));
    }

    #[test]
    fn a_truncated_or_foreign_nal_is_not_read() {
        assert_eq!(sps(&[]), None);
        assert_eq!(sps(&[0x68, 0xEE, 0x3C, 0x80]), None, "a PPS");
        assert_eq!(sps(&[0x67, 0x64, 0x00]), None, "cut short");
    }
}
