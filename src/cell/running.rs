//! What a cell is doing: the deliveries it is handling (one count of running work), the
//! attempts running in it (whose leases the tick renews and whose estimates a spot
//! notice weighs), and since when it has been idle (one idle clock).

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use super::Cell;

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
}

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
    /// Records that this cell runs `job_id` (so the tick renews its lease) and returns
    /// the token that cuts this job alone short.
    pub(super) fn track(&self, job_id: &str, abort: &CancellationToken) -> CancellationToken {
        let cancel = abort.child_token();
        let running = Running {
            cancel: cancel.clone(),
            started: Instant::now(),
            estimate_secs: None,
        };
        self.work.state().jobs.insert(job_id.to_string(), running);
        cancel
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
