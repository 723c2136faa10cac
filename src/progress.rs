//! How far the farm's work has got: each running job's ETA, and each pool's remaining
//! work and ETA, from what the cells say in their beats ([`crate::locks::RunningJob`])
//! and what the ledger says is left ([`crate::ledger::PipelineLoad`]).
//!
//! Pure functions, so `cellfarm status`, the dashboard and their tests agree.

use serde::Serialize;

use crate::config::Config;
use crate::ledger::PipelineLoad;
use crate::locks::{Beat, RunningJob};

/// A running job, where it runs, and when it should be done.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct JobProgress {
    pub cell_id: String,
    #[serde(flatten)]
    pub job: RunningJob,
    /// Seconds left at the pace the job has kept so far; `None` before it reports.
    pub eta_secs: Option<f64>,
}

/// A pool's work left and when it should be done.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct PoolProgress {
    pub pool: String,
    pub queued: u64,
    pub running: u64,
    /// Work-seconds left: the ledger's estimate of every unfinished job (see
    /// [`crate::mitosis::weigh`]), less what the running jobs have done.
    pub remaining_work_secs: f64,
    /// Work-seconds done per second now, measured on the running jobs: each one's done
    /// work (fraction × its estimate) over the time it has run.
    pub throughput: f64,
    /// Remaining work ÷ throughput; `None` while nothing runs or reports.
    pub eta_secs: Option<f64>,
}

/// Seconds left for a job `fraction` done after `elapsed_secs`, at the same pace.
pub fn job_eta(job: &RunningJob) -> Option<f64> {
    (job.fraction > 0.0 && job.fraction <= 1.0)
        .then(|| job.elapsed_secs * (1.0 - job.fraction) / job.fraction)
}

/// Work-seconds a job does per second, as measured so far; `None` before it reports.
fn job_rate(job: &RunningJob) -> Option<f64> {
    let work = job.work_secs?;
    (job.fraction > 0.0 && job.elapsed_secs > 0.0).then(|| job.fraction * work / job.elapsed_secs)
}

/// Every job the cells run now, newest cell first as `beats` gives them, with its ETA.
pub fn running_jobs(beats: &[Beat]) -> Vec<JobProgress> {
    beats
        .iter()
        .flat_map(|b| {
            b.jobs.iter().map(|job| JobProgress {
                cell_id: b.cell_id.clone(),
                eta_secs: job_eta(job),
                job: job.clone(),
            })
        })
        .collect()
}

/// `pool`'s remaining work and ETA, from its load in the ledger and its running jobs.
pub fn pool_progress(
    config: &Config,
    pool: &str,
    loads: &[PipelineLoad],
    jobs: &[JobProgress],
) -> PoolProgress {
    let (running, queued, work_secs) = crate::mitosis::weigh(config, loads);
    let mine = || jobs.iter().map(|j| &j.job).filter(|j| j.pool == pool);
    let done: f64 = mine()
        .filter_map(|j| j.work_secs.map(|w| w * j.fraction))
        .sum();
    let throughput: f64 = mine().filter_map(job_rate).sum();
    let remaining_work_secs = (work_secs - done).max(0.0);
    PoolProgress {
        pool: pool.to_string(),
        queued,
        running,
        remaining_work_secs,
        throughput,
        eta_secs: (throughput > 0.0).then(|| remaining_work_secs / throughput),
    }
}

/// A duration for people: `42s`, `3m05s`, `2h07m`.
pub fn human_secs(secs: f64) -> String {
    let s = secs.max(0.0).round() as u64;
    match s {
        0..=59 => format!("{s}s"),
        60..=3599 => format!("{}m{:02}s", s / 60, s % 60),
        _ => format!("{}h{:02}m", s / 3600, s % 3600 / 60),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job(pool: &str, fraction: f64, elapsed: f64, work: Option<f64>) -> RunningJob {
        RunningJob {
            job_id: format!("j{fraction}"),
            pool: pool.into(),
            pipeline: "realtime".into(),
            fraction,
            speed: Some(1.0),
            elapsed_secs: elapsed,
            work_secs: work,
        }
    }

    fn config() -> Config {
        let text = r#"
            [farm]
            name = "t"
            [amqp]
            url = "amqp://x"
            [postgres]
            url = "postgres://x"
            [redis]
            url = "redis://x"
            [pools.default]
            [pools.other]
            [pipelines.realtime]
            pool = "default"
            output = "s3://out/r/"
            steps = [{ args = ["-i", "{input}", "{out}/o.mp4"] }]
            outputs = [{ path = "o.mp4" }]
        "#;
        Config::parse(text, "test").expect("a valid config")
    }

    #[test]
    fn a_job_eta_keeps_its_pace() {
        assert_eq!(job_eta(&job("p", 0.25, 10.0, None)), Some(30.0));
        assert_eq!(job_eta(&job("p", 1.0, 10.0, None)), Some(0.0));
        assert_eq!(
            job_eta(&job("p", 0.0, 10.0, None)),
            None,
            "not reported yet"
        );
    }

    #[test]
    fn a_pool_eta_is_remaining_work_over_measured_throughput() {
        let loads = [PipelineLoad {
            pipeline: "gone".into(),
            running: 2,
            queued: 3,
            estimated_secs: 500.0,
            probed_secs: 0.0,
            unknown: 0,
        }];
        let beat = Beat {
            cell_id: "c".into(),
            host: "h".into(),
            pid: 1,
            pools: vec!["default".into()],
            slots: 2,
            running: 2,
            started_at: 0,
            draining: false,
            config_version: None,
            machine: None,
            leaving: false,
            jobs: vec![
                // 50 of 100 work-seconds in 25 s: 2 a second.
                job("default", 0.5, 25.0, Some(100.0)),
                // Not probed yet: no rate, nothing done.
                job("default", 0.0, 1.0, None),
                job("other", 0.5, 1.0, Some(1000.0)),
            ],
        };
        let jobs = running_jobs(&[beat]);
        assert_eq!(jobs.len(), 3);
        let p = pool_progress(&config(), "default", &loads, &jobs);
        assert_eq!((p.running, p.queued), (2, 3));
        assert_eq!(p.remaining_work_secs, 450.0);
        assert_eq!(p.throughput, 2.0);
        assert_eq!(p.eta_secs, Some(225.0));
        let idle = pool_progress(&config(), "default", &loads, &[]);
        assert_eq!((idle.remaining_work_secs, idle.eta_secs), (500.0, None));
    }

    #[test]
    fn durations_read_as_people_write_them() {
        assert_eq!(human_secs(42.4), "42s");
        assert_eq!(human_secs(185.0), "3m05s");
        assert_eq!(human_secs(7620.0), "2h07m");
        assert_eq!(human_secs(-3.0), "0s");
    }
}
