//! FFmpeg's `-progress pipe:1` output, parsed as it arrives.
//!
//! FFmpeg writes one block of `key=value` lines every half second (`-stats_period`),
//! closed by a `progress=` line, on the pipe it is given; the cell gives it stdout. A
//! block, as FFmpeg 5.1 writes it:
//!
//! ```text
//! frame=30
//! fps=0.00
//! stream_0_0_q=-1.0
//! bitrate=N/A
//! total_size=N/A
//! out_time_us=1200000
//! out_time_ms=1200000
//! out_time=00:00:01.200000
//! dup_frames=0
//! drop_frames=0
//! speed=38.1x
//! progress=end
//! ```
//!
//! `out_time_ms` is in microseconds too (an old FFmpeg mistake kept for compatibility),
//! so only `out_time_us` is read. Early blocks say `N/A`; a line that does not parse is
//! skipped, never an error: progress is for people, the encode goes on without it.

use std::sync::Arc;

/// The `-progress` option: FFmpeg's global flag, writing to its stdout.
pub const PROGRESS_ARGS: [&str; 2] = ["-progress", "pipe:1"];

/// One closed block: how far the output has got and how fast.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Sample {
    /// Seconds of output written (`out_time_us`), when FFmpeg knows.
    pub out_secs: Option<f64>,
    /// Seconds of output per second of wall time (`speed=2.5x`), when FFmpeg knows.
    pub speed: Option<f64>,
    /// The block was the last one (`progress=end`).
    pub end: bool,
}

/// Where a running FFmpeg's samples go; called on the task that reads its stdout.
pub type Report = Arc<dyn Fn(Sample) + Send + Sync>;

/// Collects a block's keys until its `progress=` line.
#[derive(Debug, Default)]
pub struct Parser {
    out_secs: Option<f64>,
    speed: Option<f64>,
}

impl Parser {
    /// Takes one line; returns the block's sample when the line closes it.
    pub fn line(&mut self, line: &str) -> Option<Sample> {
        let (key, value) = line.trim().split_once('=')?;
        match key {
            // e.g. `out_time_us=1200000`; `N/A` or a negative value before the first frame.
            "out_time_us" => {
                self.out_secs = value
                    .parse::<i64>()
                    .ok()
                    .filter(|us| *us >= 0)
                    .map(|us| us as f64 / 1e6);
            }
            // e.g. `speed=38.1x`, `speed= 0.98x`, `speed=N/A`.
            "speed" => {
                self.speed = value
                    .trim()
                    .strip_suffix('x')
                    .and_then(|s| s.trim().parse::<f64>().ok())
                    .filter(|s| s.is_finite() && *s > 0.0);
            }
            "progress" => {
                let sample = Sample {
                    out_secs: self.out_secs,
                    speed: self.speed,
                    end: value == "end",
                };
                *self = Parser::default();
                return Some(sample);
            }
            _ => {}
        }
        None
    }
}

/// How far a job is, from 0 to 1, when step `step` (from 0) of `steps` has written
/// `out_secs` of a source of `duration` seconds: each step weighs the same, since a
/// pipeline's steps each go over the whole source. A step's end counts it whole, since
/// an output may be shorter than the source (a thumbnail, a trimmed cut).
pub fn fraction(step: usize, steps: usize, sample: &Sample, duration: Option<f64>) -> f64 {
    let steps = steps.max(1) as f64;
    let within = if sample.end {
        1.0
    } else {
        match (sample.out_secs, duration) {
            (Some(out), Some(d)) if d > 0.0 => (out / d).clamp(0.0, 1.0),
            _ => 0.0,
        }
    };
    ((step as f64 + within) / steps).clamp(0.0, 1.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Captured from `ffmpeg -progress pipe:1 … -c:v libx264 -preset ultrafast`
    /// (FFmpeg 5.1), with a torn line and stray text of the kind a pipe can carry.
    const CAPTURED: &str = "frame=1\nfps=0.00\nstream_0_0_q=0.0\nbitrate=N/A\n\
        total_size=N/A\nout_time_us=N/A\nout_time_ms=N/A\nout_time=N/A\ndup_frames=0\n\
        drop_frames=0\nspeed=N/A\nprogress=continue\n\
        frame=15\nout_time_us=-23220\nspeed=   0x\nprogress=continue\n\
        frame=30\nfps=0.00\nstream_0_0_q=-1.0\nbitrate=N/A\ntotal_size=N/A\n\
        out_time_us=600000\nout_time_ms=600000\nout_time=00:00:00.600000\n\
        dup_frames=0\ndrop_frames=0\nspeed=1.01x\nprogress=continue\n\
        garbage without an equals sign\nout_time_us=12oops\nspeed=fast\n\
        progress=continue\n\
        frame=30\nout_time_us=1200000\nspeed=38.1x\nprogress=end\n";

    fn samples(text: &str) -> Vec<Sample> {
        let mut parser = Parser::default();
        text.lines().filter_map(|l| parser.line(l)).collect()
    }

    #[test]
    fn captured_blocks_parse_with_unknowns_as_none() {
        let got = samples(CAPTURED);
        assert_eq!(got.len(), 5);
        assert_eq!(
            (got[0].out_secs, got[0].speed, got[0].end),
            (None, None, false)
        );
        assert_eq!(
            (got[1].out_secs, got[1].speed),
            (None, None),
            "negative, 0x"
        );
        assert_eq!((got[2].out_secs, got[2].speed), (Some(0.6), Some(1.01)));
        assert_eq!((got[3].out_secs, got[3].speed), (None, None), "malformed");
        assert_eq!(
            got[4],
            Sample {
                out_secs: Some(1.2),
                speed: Some(38.1),
                end: true
            }
        );
    }

    #[test]
    fn a_block_does_not_inherit_the_previous_ones_values() {
        let got = samples("out_time_us=5000000\nspeed=2x\nprogress=continue\nprogress=continue\n");
        assert_eq!(got[1].out_secs, None);
        assert_eq!(got[1].speed, None);
    }

    #[test]
    fn the_fraction_spans_every_step_and_stays_within_0_and_1() {
        let at = |out: f64, end: bool| Sample {
            out_secs: Some(out),
            speed: None,
            end,
        };
        assert_eq!(fraction(0, 1, &at(5.0, false), Some(10.0)), 0.5);
        assert_eq!(fraction(0, 2, &at(5.0, false), Some(10.0)), 0.25);
        assert_eq!(fraction(1, 2, &at(5.0, false), Some(10.0)), 0.75);
        assert_eq!(fraction(1, 2, &at(11.0, false), Some(10.0)), 1.0);
        assert_eq!(
            fraction(0, 1, &at(2.0, true), Some(10.0)),
            1.0,
            "a short output"
        );
        assert_eq!(fraction(0, 2, &at(5.0, false), None), 0.0, "unprobed");
        assert_eq!(fraction(0, 0, &at(5.0, false), Some(10.0)), 0.5, "no steps");
    }
}
