//! Alerts, as Hudl has them: a pool that does not scale while its backlog grows, a
//! failure rate above a threshold, jobs running slower than their pipeline's usual
//! pace, a budget nearly spent, spot interruptions above a rate.
//!
//! [`evaluate`] is one pure function of [`Facts`] (read from the ledger, Redis and the
//! broker by [`gather`]) and the config's `[alerts]`: `cellfarm status`, the dashboard,
//! its `/metrics` and the webhook all show the same alerts.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::config::{AlertsConfig, Config};
use crate::ledger::Ledger;
use crate::locks::Coordinator;
use crate::progress::JobProgress;

/// What a pool did over the last `alerts.not_scaling_secs`.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct PoolFacts {
    pub pool: String,
    /// Jobs queued now.
    pub queued: u64,
    /// Jobs that arrived in the window, and jobs that finished in it.
    pub arrived: u64,
    pub finished: u64,
    /// Cells launched for the pool in the window.
    pub launched: u64,
    /// Cells alive and pending now, and the most the pool may have.
    pub cells: u64,
    pub ceiling: u64,
    pub spent_today_usd: Option<f64>,
    pub budget_per_day_usd: Option<f64>,
}

/// Everything the alerts are judged on.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Facts {
    pub pools: Vec<PoolFacts>,
    /// Jobs finished in the last hour, and how many of them failed or died.
    pub finished_last_hour: u64,
    pub failed_last_hour: u64,
    pub running: Vec<JobProgress>,
    /// Each pipeline's usual pace in work-seconds a second: its succeeded jobs' work
    /// (probed duration × cost_factor) over their run time, the last day.
    pub usual_pace: BTreeMap<String, f64>,
    pub interruptions_last_hour: u64,
}

/// What an alert is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum AlertKind {
    NotScaling,
    FailureRate,
    SlowJob,
    Budget,
    Interruptions,
}

impl AlertKind {
    pub const ALL: [AlertKind; 5] = [
        AlertKind::NotScaling,
        AlertKind::FailureRate,
        AlertKind::SlowJob,
        AlertKind::Budget,
        AlertKind::Interruptions,
    ];

    /// The word in JSON, keys and metric labels.
    pub fn as_str(self) -> &'static str {
        match self {
            AlertKind::NotScaling => "not_scaling",
            AlertKind::FailureRate => "failure_rate",
            AlertKind::SlowJob => "slow_job",
            AlertKind::Budget => "budget",
            AlertKind::Interruptions => "interruptions",
        }
    }
}

impl std::fmt::Display for AlertKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One alert: what, about which pool, pipeline or job, and why, in words.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Alert {
    pub kind: AlertKind,
    /// The pool, the job, or `farm`.
    pub subject: String,
    pub message: String,
}

impl Alert {
    /// What identifies the alert across evaluations: a webhook hears each key once.
    pub fn key(&self) -> String {
        format!("{}:{}", self.kind, self.subject)
    }
}

/// The alerts `facts` raise under `policy`.
pub fn evaluate(facts: &Facts, policy: &AlertsConfig) -> Vec<Alert> {
    let mut alerts = Vec::new();
    let window = policy.not_scaling_secs;
    for p in &facts.pools {
        if p.queued > 0 && p.arrived > p.finished && p.launched == 0 && p.cells < p.ceiling {
            alerts.push(Alert {
                kind: AlertKind::NotScaling,
                subject: p.pool.clone(),
                message: format!(
                    "backlog grew by {} jobs in {window} s ({} queued) with no launch; {} of {} cells",
                    p.arrived - p.finished,
                    p.queued,
                    p.cells,
                    p.ceiling
                ),
            });
        }
        if let (Some(spent), Some(budget)) = (p.spent_today_usd, p.budget_per_day_usd) {
            if spent >= policy.budget_share * budget {
                alerts.push(Alert {
                    kind: AlertKind::Budget,
                    subject: p.pool.clone(),
                    message: format!("spent ${spent:.2} of ${budget:.2} today"),
                });
            }
        }
    }
    if facts.finished_last_hour >= policy.failure_min_jobs.max(1) {
        let rate = facts.failed_last_hour as f64 / facts.finished_last_hour as f64;
        if rate > policy.failure_rate {
            alerts.push(Alert {
                kind: AlertKind::FailureRate,
                subject: "farm".into(),
                message: format!(
                    "{} of {} jobs failed in the last hour ({:.0}%, over {:.0}%)",
                    facts.failed_last_hour,
                    facts.finished_last_hour,
                    100.0 * rate,
                    100.0 * policy.failure_rate
                ),
            });
        }
    }
    for j in &facts.running {
        let job = &j.job;
        let usual = facts.usual_pace.get(&job.pipeline).copied();
        let (Some(usual), Some(work)) = (usual, job.work_secs) else {
            continue;
        };
        if job.elapsed_secs < policy.slow_after_secs || usual <= 0.0 {
            continue;
        }
        let pace = job.fraction * work / job.elapsed_secs;
        if pace < policy.slow_ratio * usual {
            alerts.push(Alert {
                kind: AlertKind::SlowJob,
                subject: job.job_id.clone(),
                message: format!(
                    "{} on {} at {:.0}% of its pipeline's usual pace",
                    job.pipeline,
                    j.cell_id,
                    100.0 * pace / usual
                ),
            });
        }
    }
    if facts.interruptions_last_hour > policy.interruptions_per_hour {
        alerts.push(Alert {
            kind: AlertKind::Interruptions,
            subject: "farm".into(),
            message: format!(
                "{} spot interruptions in the last hour (over {})",
                facts.interruptions_last_hour, policy.interruptions_per_hour
            ),
        });
    }
    alerts
}

/// Reads the facts: the ledger's windows, and what `status` already gathered (each
/// pool's cells, costs and running jobs).
pub async fn gather(
    config: &Config,
    ledger: &Ledger,
    locks: &Coordinator,
    status: &crate::status::Status,
) -> anyhow::Result<Facts> {
    let window = config.alerts.not_scaling_secs as f64;
    let mut pools = Vec::new();
    for (name, pool) in &config.pools {
        let w = ledger.pool_window(name, window).await?;
        let cells = status
            .cells
            .iter()
            .filter(|b| !b.draining && b.pools.iter().any(|p| p == name))
            .count() as u64;
        let cost = status.pools.iter().find(|c| &c.pool == name);
        let queued = status
            .progress
            .iter()
            .find(|p| &p.pool == name)
            .map_or(0, |p| p.queued);
        pools.push(PoolFacts {
            pool: name.clone(),
            queued,
            arrived: w.arrived,
            finished: w.finished,
            launched: w.launched,
            cells: cells + u64::from(locks.pending(name).await?),
            ceiling: u64::from(pool.effective_ceiling()),
            spent_today_usd: cost.and_then(|c| c.spent_today_usd),
            budget_per_day_usd: pool.budget_per_day,
        });
    }
    let hour = ledger.last_hour().await?;
    let usual_pace = ledger
        .usual_pace()
        .await?
        .into_iter()
        .map(|(pipeline, pace)| {
            let cost = config
                .pipelines
                .get(&pipeline)
                .map_or(1.0, |p| p.cost_factor);
            (pipeline, pace * cost)
        })
        .collect();
    Ok(Facts {
        pools,
        finished_last_hour: hour.finished,
        failed_last_hour: hour.failed,
        running: status.running.clone(),
        usual_pace,
        interruptions_last_hour: hour.interruptions,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::locks::RunningJob;

    fn healthy() -> Facts {
        Facts {
            pools: vec![PoolFacts {
                pool: "default".into(),
                queued: 20,
                arrived: 30,
                finished: 10,
                launched: 2,
                cells: 4,
                ceiling: 8,
                spent_today_usd: Some(5.0),
                budget_per_day_usd: Some(10.0),
            }],
            finished_last_hour: 100,
            failed_last_hour: 3,
            running: vec![JobProgress {
                cell_id: "c1".into(),
                job: RunningJob {
                    job_id: "j1".into(),
                    pool: "default".into(),
                    pipeline: "hls".into(),
                    fraction: 0.5,
                    speed: Some(2.0),
                    elapsed_secs: 60.0,
                    work_secs: Some(120.0),
                },
                eta_secs: Some(60.0),
            }],
            usual_pace: [("hls".to_string(), 1.0)].into(),
            interruptions_last_hour: 1,
        }
    }

    fn kinds(facts: &Facts) -> Vec<AlertKind> {
        evaluate(facts, &AlertsConfig::default())
            .into_iter()
            .map(|a| a.kind)
            .collect()
    }

    #[test]
    fn a_healthy_farm_raises_nothing() {
        assert_eq!(kinds(&healthy()), vec![]);
        assert_eq!(kinds(&Facts::default()), vec![]);
    }

    #[test]
    fn a_growing_backlog_without_launches_is_not_scaling() {
        let mut f = healthy();
        f.pools[0].launched = 0;
        assert_eq!(kinds(&f), vec![AlertKind::NotScaling]);
        f.pools[0].cells = 8;
        assert_eq!(kinds(&f), vec![], "at its ceiling, not launching is right");
        f.pools[0].cells = 4;
        f.pools[0].finished = 40;
        assert_eq!(kinds(&f), vec![], "the backlog shrinks");
    }

    #[test]
    fn a_failure_rate_above_the_threshold_alerts() {
        let mut f = healthy();
        f.failed_last_hour = 21;
        assert_eq!(kinds(&f), vec![AlertKind::FailureRate]);
        f.finished_last_hour = 5;
        f.failed_last_hour = 5;
        assert_eq!(kinds(&f), vec![], "too few jobs to judge");
    }

    #[test]
    fn a_job_at_under_half_its_pipelines_pace_is_slow() {
        let mut f = healthy();
        f.running[0].job.fraction = 0.2;
        let alerts = evaluate(&f, &AlertsConfig::default());
        assert_eq!(alerts.len(), 1, "{alerts:?}");
        assert_eq!(
            (alerts[0].kind, alerts[0].key()),
            (AlertKind::SlowJob, "slow_job:j1".into())
        );
        f.running[0].job.elapsed_secs = 10.0;
        f.running[0].job.fraction = 0.01;
        assert_eq!(kinds(&f), vec![], "too early to judge");
    }

    #[test]
    fn a_budget_nearly_spent_alerts() {
        let mut f = healthy();
        f.pools[0].spent_today_usd = Some(9.0);
        assert_eq!(kinds(&f), vec![AlertKind::Budget]);
    }

    #[test]
    fn interruptions_above_the_rate_alert() {
        let mut f = healthy();
        f.interruptions_last_hour = 6;
        assert_eq!(kinds(&f), vec![AlertKind::Interruptions]);
    }
}
