//! Where one delivery's wall time goes: each phase of its handling, measured by laps of
//! one clock, logged once when the delivery is settled (`job timings`), so that
//! `scripts/bench.sh` can tell the time FFmpeg takes from the time around it.

use std::fmt;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// The phases of a delivery, in the order they happen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// The ledger's claim of the job.
    Claim,
    /// The source's HEAD and the scratch space check.
    Head,
    /// Downloading the source and the pipeline's assets.
    Download,
    /// Probing the source (or reading the probe made at submission) and recording it.
    Probe,
    /// Waiting for an encoder: a job taken ahead waits for a running encode to end.
    /// Not overhead: the slot's CPU is busy meanwhile.
    Slot,
    /// The pipeline's FFmpeg steps: the part that is not overhead.
    Ffmpeg,
    /// Checking the outputs against the pipeline's expectations.
    Checks,
    /// Digesting and uploading the outputs and the manifest, with the last look that
    /// the attempt still holds the job.
    Upload,
    /// Committing the outcome to the ledger.
    Commit,
    /// Publishing the result (or a retry) and acknowledging the delivery.
    Settle,
}

const PHASES: [Phase; 10] = [
    Phase::Claim,
    Phase::Head,
    Phase::Download,
    Phase::Probe,
    Phase::Slot,
    Phase::Ffmpeg,
    Phase::Checks,
    Phase::Upload,
    Phase::Commit,
    Phase::Settle,
];

impl Phase {
    fn name(self) -> &'static str {
        match self {
            Phase::Claim => "claim",
            Phase::Head => "head",
            Phase::Download => "download",
            Phase::Probe => "probe",
            Phase::Slot => "slot",
            Phase::Ffmpeg => "ffmpeg",
            Phase::Checks => "checks",
            Phase::Upload => "upload",
            Phase::Commit => "commit",
            Phase::Settle => "settle",
        }
    }

    fn index(self) -> usize {
        PHASES
            .iter()
            .position(|p| *p == self)
            .expect("every phase is listed")
    }
}

/// One clock for one delivery; each [`Laps::lap`] charges the time since the last lap
/// to a phase.
pub struct Laps {
    inner: Mutex<Inner>,
}

struct Inner {
    last: Instant,
    spent: [Duration; PHASES.len()],
}

impl Laps {
    /// Starts the clock.
    pub fn start() -> Laps {
        Laps {
            inner: Mutex::new(Inner {
                last: Instant::now(),
                spent: [Duration::ZERO; PHASES.len()],
            }),
        }
    }

    /// Charges the time since the last lap to `phase`.
    pub fn lap(&self, phase: Phase) {
        let mut inner = self.inner.lock().expect("never poisoned");
        let now = Instant::now();
        let since = now - inner.last;
        inner.spent[phase.index()] += since;
        inner.last = now;
    }
}

impl fmt::Display for Laps {
    /// `claim=0.8ms head=1.1ms … total=412.0ms`: every phase, then the total.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let spent = self.inner.lock().expect("never poisoned").spent;
        for (phase, d) in PHASES.iter().zip(spent) {
            write!(f, "{}={:.1}ms ", phase.name(), d.as_secs_f64() * 1e3)?;
        }
        let total: Duration = spent.iter().sum();
        write!(f, "total={:.1}ms", total.as_secs_f64() * 1e3)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The milliseconds the line gives `name`.
    fn ms(line: &str, name: &str) -> f64 {
        let field = line
            .split(' ')
            .find_map(|f| f.strip_prefix(&format!("{name}=")))
            .unwrap_or_else(|| panic!("{name} in {line}"));
        field.trim_end_matches("ms").parse().unwrap()
    }

    #[test]
    fn each_lap_charges_its_phase_and_the_line_names_them_all() {
        let laps = Laps::start();
        std::thread::sleep(Duration::from_millis(2));
        laps.lap(Phase::Download);
        laps.lap(Phase::Ffmpeg);
        std::thread::sleep(Duration::from_millis(2));
        laps.lap(Phase::Download);
        let line = laps.to_string();
        assert!(ms(&line, "download") >= 4.0, "{line}");
        assert!(ms(&line, "ffmpeg") < ms(&line, "download"), "{line}");
        for phase in PHASES {
            assert!(line.contains(&format!("{}=", phase.name())), "{line}");
        }
        assert_eq!(ms(&line, "commit"), 0.0);
        let sum: f64 = PHASES.iter().map(|p| ms(&line, p.name())).sum();
        assert!((ms(&line, "total") - sum).abs() < 0.5, "{line}");
    }
}
