//! What a cell is doing: the deliveries it is handling (one count of running work), the
//! attempts running in it (whose leases the tick renews and whose estimates a spot
//! notice weighs), and since when it has been idle (one idle clock).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use super::Cell;
use crate::locks::RunningJob;

/// The jobs this cell is running, and since when it has been idle.
pub(super) struct Work {
    inner: Mutex<WorkState>,
}

pub(super) struct WorkState {
    /// Deliveries being handled, claimed or not yet.
    handling: usize,
    /// Attempts running here: the only leases the tick renews, and what a spot notice
    /// weighs against its deadline.
    pub(super) jobs: BTreeMap<String, Running>,
    /// When the last delivery was done with, or the cell started: the one idle clock.
    last_busy: Instant,
    /// Attempts in a row that failed for the farm's own systems (S3, the broker, the
    /// ledger, scratch): a run of them says this cell cannot reach or hold its work.
    faults_in_a_row: u32,
}

/// One job running in this cell.
pub(super) struct Running {
    /// Cuts this job alone short.
    pub(super) cancel: CancellationToken,
    pub(super) started: Instant,
    /// Estimated wall seconds of the whole attempt, once the source is probed.
    pub(super) estimate_secs: Option<f64>,
    /// Since when its FFmpeg steps run, while they run.
    encoding_since: Option<Instant>,
    pool: String,
    pipeline: String,
    /// Written by the task reading FFmpeg's progress, read by the beat.
    progress: Arc<Mutex<Progress>>,
}

/// How far a job is: the fraction done (0 to 1) and FFmpeg's last speed.
#[derive(Debug, Clone, Copy, Default)]
struct Progress {
    fraction: f64,
    speed: Option<f64>,
}

/// Tells a job's progress to its cell: the fraction done (0 to 1) and FFmpeg's speed.
pub type Meter = Arc<dyn Fn(f64, Option<f64>) + Send + Sync>;

impl Work {
    pub(super) fn new() -> Work {
        Work {
            inner: Mutex::new(WorkState {
                handling: 0,
                jobs: BTreeMap::new(),
                last_busy: Instant::now(),
                faults_in_a_row: 0,
            }),
        }
    }

    pub(super) fn state(&self) -> std::sync::MutexGuard<'_, WorkState> {
        self.inner.lock().expect("never poisoned")
    }

    pub(super) fn begin(&self) {
        self.state().handling += 1;
    }

    /// Counts an attempt's end: a fault of the farm's systems adds to the run, anything
    /// else (a success, the media's own failure) ends it.
    pub(super) fn record_fault(&self, fault: bool) {
        let mut s = self.state();
        s.faults_in_a_row = if fault { s.faults_in_a_row + 1 } else { 0 };
    }

    /// Attempts in a row that ended in a fault of the farm's systems.
    pub(super) fn faults_in_a_row(&self) -> u32 {
        self.state().faults_in_a_row
    }

    pub(super) fn end(&self) {
        let mut s = self.state();
        s.handling -= 1;
        s.last_busy = Instant::now();
    }

    /// Deliveries being handled now.
    pub(super) fn running(&self) -> usize {
        self.state().handling
    }

    /// How long the cell has had nothing to do; `None` while busy.
    pub(super) fn idle_for(&self) -> Option<Duration> {
        let s = self.state();
        (s.handling == 0).then(|| s.last_busy.elapsed())
    }
}

impl Cell {
    /// Records that this cell runs `job_id` of `pool` and `pipeline` (so the tick renews
    /// its lease and the beat shows it) and returns the token that cuts this job alone
    /// short and the meter its progress goes to.
    pub(super) fn track(
        &self,
        job_id: &str,
        (pool, pipeline): (&str, &str),
        abort: &CancellationToken,
    ) -> (CancellationToken, Meter) {
        let cancel = abort.child_token();
        let progress = Arc::new(Mutex::new(Progress::default()));
        let running = Running {
            cancel: cancel.clone(),
            started: Instant::now(),
            estimate_secs: None,
            encoding_since: None,
            pool: pool.to_string(),
            pipeline: pipeline.to_string(),
            progress: progress.clone(),
        };
        self.work.state().jobs.insert(job_id.to_string(), running);
        let meter: Meter = Arc::new(move |fraction, speed| {
            let mut p = progress.lock().expect("never poisoned");
            // A later step never reports less done than an earlier one.
            p.fraction = p.fraction.max(fraction);
            if speed.is_some() {
                p.speed = speed;
            }
        });
        (cancel, meter)
    }

    /// The jobs running here and how far each has got, for the beat.
    pub(super) fn running_jobs(&self) -> Vec<RunningJob> {
        let s = self.work.state();
        s.jobs
            .iter()
            .map(|(id, job)| {
                let p = *job.progress.lock().expect("never poisoned");
                RunningJob {
                    job_id: id.clone(),
                    pool: job.pool.clone(),
                    pipeline: job.pipeline.clone(),
                    fraction: p.fraction,
                    speed: p.speed,
                    elapsed_secs: job.started.elapsed().as_secs_f64(),
                    work_secs: job.estimate_secs,
                }
            })
            .collect()
    }

    /// Cuts short the jobs of `job_ids` that run here (cancelled by hand); true if any
    /// did.
    pub(super) fn cut(&self, job_ids: &[String]) -> bool {
        let s = self.work.state();
        let mut cut = false;
        for id in job_ids {
            if let Some(job) = s.jobs.get(id) {
                tracing::info!(job = %id, "cancelled by hand; stopping it");
                job.cancel.cancel();
                cut = true;
            }
        }
        cut
    }

    pub(super) fn untrack(&self, job_id: &str) {
        self.work.state().jobs.remove(job_id);
    }

    /// Records that `job_id`'s FFmpeg steps have started (`on`) or ended.
    pub(super) fn encoding(&self, job_id: &str, on: bool) {
        if let Some(job) = self.work.state().jobs.get_mut(job_id) {
            job.encoding_since = on.then(Instant::now);
        }
    }

    /// Encodes running here that should end within [`super::slots::LOOKAHEAD`]: each
    /// may have the next job taken for its slot.
    pub(super) fn ending_soon(&self) -> usize {
        let s = self.work.state();
        s.jobs
            .values()
            .filter(|job| {
                let fraction = job.progress.lock().expect("never poisoned").fraction;
                job.encoding_since.is_some_and(|since| {
                    remaining(since.elapsed(), fraction, job.estimate_secs)
                        .is_some_and(|r| r <= super::slots::LOOKAHEAD)
                })
            })
            .count()
    }

    pub(super) fn estimate(&self, job_id: &str, secs: f64) {
        if let Some(job) = self.work.state().jobs.get_mut(job_id) {
            job.estimate_secs = Some(secs);
        }
    }
}

/// How long an encode running for `elapsed` has left: extrapolated from its progress
/// once FFmpeg has reported some, else its estimate less the time spent; `None` when
/// neither is known.
fn remaining(elapsed: Duration, fraction: f64, estimate_secs: Option<f64>) -> Option<Duration> {
    let secs = if fraction >= MEASURED_FRACTION {
        elapsed.as_secs_f64() * (1.0 - fraction.min(1.0)) / fraction
    } else {
        estimate_secs? - elapsed.as_secs_f64()
    };
    Some(Duration::from_secs_f64(secs.max(0.0)))
}

/// The progress past which the encode's own pace says more than the pipeline's estimate.
const MEASURED_FRACTION: f64 = 0.05;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_encode_left_is_its_pace_once_measured_else_its_estimate() {
        let secs = |d: Option<Duration>| d.map(|d| d.as_secs_f64());
        let ten = Duration::from_secs(10);
        assert_eq!(secs(remaining(ten, 0.5, Some(100.0))), Some(10.0));
        assert_eq!(secs(remaining(ten, 0.0, Some(12.0))), Some(2.0));
        assert_eq!(secs(remaining(ten, 0.01, Some(5.0))), Some(0.0), "overdue");
        assert_eq!(remaining(ten, 0.0, None), None);
        assert_eq!(secs(remaining(ten, 1.0, None)), Some(0.0));
    }
}
