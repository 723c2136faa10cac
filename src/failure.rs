//! Why a job failed, and whether trying again can help: one pure function decides.
//!
//! * Fault: the farm's own systems failed (S3, the broker, the ledger, this cell's
//!   scratch disk, or the job does not fit on it): the media is not to blame, so the job
//!   goes back to its queue *without* spending an attempt, after a backoff, bounded per
//!   job by time (`cell.fault_budget_secs`) instead of by count.
//! * Retryable: the media's processing hiccuped (an FFmpeg killed by a signal, or past a
//!   timeout set by hand): the job goes back to its queue and the attempt counts.
//! * Permanent: the input or the pipeline is at fault (corrupt or unsupported media, a
//!   source beyond the pipeline's limits or far past its own estimate, an output that
//!   is not what the pipeline promised, a source that vanished or changed): the job
//!   fails at once and is dead-lettered with the reason.

use crate::ffmpeg::FfmpegError;
use crate::ledger::LedgerError;
use crate::queue::QueueError;
use crate::store::StoreError;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Class {
    Fault,
    Retryable,
    Permanent,
}

#[derive(Debug, thiserror::Error)]
pub enum JobFailure {
    #[error("{0}")]
    Store(#[from] StoreError),
    #[error("probing the source: {0}")]
    Probe(FfmpegError),
    #[error("step {step}: {source}")]
    Step { step: usize, source: FfmpegError },
    #[error("output {path}: {reason}")]
    Output { path: String, reason: String },
    #[error("pipeline {pipeline}: {reason}")]
    Pipeline { pipeline: String, reason: String },
    #[error("{0}")]
    Ledger(#[from] LedgerError),
    #[error("{0}")]
    Queue(#[from] QueueError),
    #[error("scratch directory {path}: {source}")]
    Scratch {
        path: String,
        source: std::io::Error,
    },
    /// The source is beyond one of its pipeline's `limits`.
    #[error("source {what} is {seen}, over pipelines.{pipeline}.limits.{key} = {limit}")]
    Limit {
        pipeline: String,
        what: &'static str,
        key: &'static str,
        seen: String,
        limit: String,
    },
    /// A step ran past the timeout derived from the job's own estimate.
    #[error(
        "step {step} ran past {secs} s, {margin}× its estimate from the source's \
         duration and the pipeline's cost_factor: {source}"
    )]
    OverEstimate {
        step: usize,
        secs: u64,
        margin: f64,
        source: FfmpegError,
    },
    /// This cell's scratch disk cannot hold the job; another cell may.
    #[error("the job needs {needed_mib} MiB of scratch space, {free_mib} MiB are free here")]
    NoRoom { needed_mib: u64, free_mib: u64 },
    /// A detector pass found a defect its pipeline rejects.
    #[error("{file}: {defect} (pipelines.{pipeline}.steps[{step}].detect.{key} = \"reject\")")]
    Defect {
        pipeline: String,
        step: usize,
        /// `source`, or the output's path.
        file: String,
        /// The first rejected defect, with its time range, and how many more.
        defect: String,
        key: &'static str,
    },
    /// A chunk of a chunked title is not what its plan says: the chunk is encoded again.
    #[error("chunk {index}: {reason}")]
    Chunk { index: u32, reason: String },
    #[error("another attempt took the job over")]
    Superseded,
    #[error("cancelled: the cell is stopping")]
    Cancelled,
}

/// What becomes of a job after a failed attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fate {
    /// Another attempt holds the job: this one records nothing.
    Superseded,
    /// Cut short by the cell stopping (a signal, a spot notice): back to the queue
    /// without spending an attempt.
    HandBack,
    /// The farm's own systems failed: back to the queue after a backoff, without
    /// spending an attempt.
    Fault,
    /// The world hiccuped: back to the queue, the attempt counts.
    Retry,
    /// The media or the pipeline is at fault: `failed`, dead-lettered.
    Fail,
    /// Retryable, but every attempt is spent: `dead`, dead-lettered.
    Dead,
}

/// Where the failed attempt stood.
#[derive(Debug, Clone, Copy)]
pub struct Attempted {
    /// This attempt's number, from 1.
    pub number: u32,
    pub max_attempts: u32,
    /// The attempt's cancel token fired (the cell is stopping, or a spot notice cut this
    /// job): whatever it failed with, the failure may be the cut's doing.
    pub cut_short: bool,
    /// Seconds since the job's first attempt that ended in a fault began (this one's
    /// start when none did).
    pub faulting_secs: f64,
    /// How long faults may go on before the job is given up (`cell.fault_budget_secs`).
    pub fault_budget_secs: f64,
}

/// Decides a failed attempt's fate: one pure function, so the cell and its tests agree.
pub fn classify(failure: &JobFailure, at: Attempted) -> Fate {
    match failure {
        JobFailure::Superseded => Fate::Superseded,
        JobFailure::Cancelled
        | JobFailure::Probe(FfmpegError::Cancelled { .. })
        | JobFailure::Step {
            source: FfmpegError::Cancelled { .. },
            ..
        } => Fate::HandBack,
        _ if at.cut_short => Fate::HandBack,
        f => match (class(f), at.number >= at.max_attempts) {
            (Class::Permanent, _) => Fate::Fail,
            (Class::Fault, _) if at.faulting_secs >= at.fault_budget_secs => Fate::Dead,
            (Class::Fault, _) => Fate::Fault,
            (Class::Retryable, false) => Fate::Retry,
            (Class::Retryable, true) => Fate::Dead,
        },
    }
}

/// Whether trying again can help. `Cancelled` and `Superseded` are not failures of the
/// job and [`classify`] settles them first; they class as retryable.
pub fn class(failure: &JobFailure) -> Class {
    use Class::*;
    match failure {
        JobFailure::Store(StoreError::NotFound { .. } | StoreError::Changed { .. }) => Permanent,
        JobFailure::Store(StoreError::Failed { .. }) => Fault,
        // A local file that cannot be written or read is this cell's disk.
        JobFailure::Store(StoreError::Local { .. }) => Fault,
        JobFailure::Probe(e) | JobFailure::Step { source: e, .. } => match e {
            FfmpegError::Failed { .. } | FfmpegError::BadOutput { .. } => Permanent,
            FfmpegError::Killed { .. }
            | FfmpegError::TimedOut { .. }
            | FfmpegError::Spawn { .. }
            | FfmpegError::Cancelled { .. } => Retryable,
        },
        JobFailure::Output { .. }
        | JobFailure::Pipeline { .. }
        | JobFailure::Limit { .. }
        | JobFailure::Defect { .. }
        | JobFailure::OverEstimate { .. } => Permanent,
        JobFailure::Ledger(_)
        | JobFailure::Queue(_)
        | JobFailure::Scratch { .. }
        | JobFailure::NoRoom { .. } => Fault,
        JobFailure::Chunk { .. } | JobFailure::Superseded | JobFailure::Cancelled => Retryable,
    }
}

/// An error and its sources, `outer: inner: …`: SDK errors put the useful part deep.
pub fn chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::process::ExitStatusExt;

    fn failed() -> FfmpegError {
        FfmpegError::Failed {
            program: "ffmpeg".into(),
            status: std::process::ExitStatus::from_raw(1 << 8),
            tail: "moov atom not found".into(),
        }
    }

    #[test]
    fn bad_media_is_permanent_hiccups_retryable_and_the_farms_faults_free() {
        let cases = [
            (JobFailure::Probe(failed()), Class::Permanent),
            (
                JobFailure::Step {
                    step: 0,
                    source: failed(),
                },
                Class::Permanent,
            ),
            (
                JobFailure::Step {
                    step: 1,
                    source: FfmpegError::TimedOut {
                        program: "ffmpeg".into(),
                        secs: 1,
                        tail: String::new(),
                    },
                },
                Class::Retryable,
            ),
            (
                JobFailure::Store(StoreError::Changed {
                    bucket: "b".into(),
                    key: "k".into(),
                    etag: "e".into(),
                }),
                Class::Permanent,
            ),
            (
                JobFailure::Store(StoreError::Failed {
                    op: "GET",
                    bucket: "b".into(),
                    key: "k".into(),
                    message: "connection reset".into(),
                }),
                Class::Fault,
            ),
            (
                JobFailure::NoRoom {
                    needed_mib: 9000,
                    free_mib: 100,
                },
                Class::Fault,
            ),
            (
                JobFailure::Limit {
                    pipeline: "hls".into(),
                    what: "duration",
                    key: "max_duration_secs",
                    seen: "36000 s".into(),
                    limit: "7200".into(),
                },
                Class::Permanent,
            ),
            (
                JobFailure::Output {
                    path: "720p.mp4".into(),
                    reason: "truncated".into(),
                },
                Class::Permanent,
            ),
        ];
        for (failure, want) in cases {
            assert_eq!(class(&failure), want, "{failure}");
        }
    }

    #[test]
    // One table, read top to bottom: split, its rows would lose their neighbours.
    #[allow(clippy::too_many_lines)]
    fn the_fate_table() {
        use Fate::*;
        let timed_out = || JobFailure::Step {
            step: 0,
            source: FfmpegError::TimedOut {
                program: "ffmpeg".into(),
                secs: 1,
                tail: String::new(),
            },
        };
        let cancelled = || JobFailure::Step {
            step: 0,
            source: FfmpegError::Cancelled {
                program: "ffmpeg".into(),
            },
        };
        let at = |number, cut_short| Attempted {
            number,
            max_attempts: 3,
            cut_short,
            faulting_secs: 0.0,
            fault_budget_secs: 600.0,
        };
        let s3_down = || {
            JobFailure::Store(StoreError::Failed {
                op: "PUT",
                bucket: "b".into(),
                key: "k".into(),
                message: "HTTP 500 InternalError".into(),
            })
        };
        let cases = [
            ("a hiccup is retried", timed_out(), at(1, false), Retry),
            (
                "until the attempts run out",
                timed_out(),
                at(3, false),
                Dead,
            ),
            (
                "bad media fails at once",
                JobFailure::Probe(failed()),
                at(1, false),
                Fail,
            ),
            (
                "even on the last attempt",
                JobFailure::Probe(failed()),
                at(3, false),
                Fail,
            ),
            (
                "a cancelled step is handed back",
                cancelled(),
                at(1, false),
                HandBack,
            ),
            (
                "a stop is handed back",
                JobFailure::Cancelled,
                at(3, true),
                HandBack,
            ),
            (
                "a failure while stopping is the stop's doing",
                JobFailure::Probe(failed()),
                at(1, true),
                HandBack,
            ),
            (
                "S3 down costs no attempt, even on the last",
                s3_down(),
                at(3, false),
                Fault,
            ),
            (
                "until faults outlast the budget",
                s3_down(),
                Attempted {
                    faulting_secs: 600.0,
                    ..at(1, false)
                },
                Dead,
            ),
            (
                "a superseded attempt records nothing",
                JobFailure::Superseded,
                at(1, true),
                Superseded,
            ),
        ];
        for (why, failure, at, want) in cases {
            assert_eq!(classify(&failure, at), want, "{why}: {failure}");
        }
    }

    #[test]
    fn the_reason_keeps_ffmpegs_words() {
        let f = JobFailure::Probe(failed());
        assert!(f.to_string().contains("moov atom not found"));
    }
}
