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

    pub(super) fn estimate(&self, job_id: &str, secs: f64) {
        if let Some(job) = self.work.state().jobs.get_mut(job_id) {
            job.estimate_secs = Some(secs);
        }
    }
}
