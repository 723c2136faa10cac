//! `cellfarm status`: the farm at a glance, from the broker, the ledger and Redis.

use serde::Serialize;

use crate::alerts::{self, Alert};
use crate::boot::Systems;
use crate::config::Config;
use crate::ledger::{Failure, Ledger, StateCount};
use crate::locks::{Beat, Coordinator};
use crate::mitosis::budget::{self, Spend};
use crate::progress::{self, human_secs, JobProgress, PoolProgress};
use crate::queue::{Broker, Names};

#[derive(Debug, Serialize)]
pub struct Status {
    pub farm: String,
    pub queues: Vec<QueueDepth>,
    pub jobs: Vec<StateCount>,
    pub cells: Vec<Beat>,
    pub pools: Vec<PoolCost>,
    pub failures: Vec<Failure>,
    /// Each pool's work left and its ETA.
    pub progress: Vec<PoolProgress>,
    /// Each running job's progress and ETA, from its cell's beat.
    pub running: Vec<JobProgress>,
    /// What is wrong now ([`crate::alerts::evaluate`]).
    pub alerts: Vec<Alert>,
}

/// A pool's cost guardrails now.
#[derive(Debug, Serialize)]
pub struct PoolCost {
    pub pool: String,
    /// The most cells the pool may have (its ceiling, lowered by `max_vcpus`).
    pub ceiling: u32,
    /// Dollars spent since UTC midnight, when the pool has a `price_per_hour`.
    pub spent_today_usd: Option<f64>,
    pub budget_per_day_usd: Option<f64>,
    /// Today's budget is spent: the pool launches no new cells until midnight.
    pub launches_stopped: bool,
}

#[derive(Debug, Serialize)]
pub struct QueueDepth {
    pub pool: String,
    pub queue: String,
    /// Ready messages (the broker's count).
    pub ready: u32,
    pub consumers: u32,
}

/// How many recent failures the status shows.
const FAILURES_SHOWN: i64 = 10;

/// `cellfarm status`: prints the farm at a glance, or as JSON.
pub async fn run(config: &Config, sdk: &aws_config::SdkConfig, json: bool) -> anyhow::Result<()> {
    let systems = Systems::connect(config, sdk).await?;
    let broker = crate::boot::broker(config).await?;
    let status = gather(config, &systems.ledger, &systems.locks, &broker).await?;
    broker.close("done").await;
    if json {
        println!("{}", serde_json::to_string_pretty(&status)?);
    } else {
        print!("{status}");
    }
    Ok(())
}

pub async fn gather(
    config: &Config,
    ledger: &Ledger,
    beats: &Coordinator,
    broker: &Broker,
) -> anyhow::Result<Status> {
    let names = Names::new(&config.farm.name);
    let mut queues = Vec::new();
    for pool in config.pools.keys() {
        for queue in [names.priority(pool), names.work(pool), names.dead(pool)] {
            let (ready, consumers) = broker.ready(&queue).await?;
            queues.push(QueueDepth {
                pool: pool.clone(),
                queue,
                ready,
                consumers,
            });
        }
    }
    let cells = beats.alive().await?;
    let mut pools = Vec::new();
    for (name, pool) in &config.pools {
        pools.push(pool_cost(name, pool, ledger, beats, &cells).await?);
    }
    let running = progress::running_jobs(&cells);
    let mut pool_progress = Vec::new();
    for pool in config.pools.keys() {
        let loads = ledger.pool_load(pool).await?;
        pool_progress.push(progress::pool_progress(config, pool, &loads, &running));
    }
    let mut status = Status {
        farm: config.farm.name.clone(),
        queues,
        jobs: ledger.state_counts().await?,
        cells,
        pools,
        failures: ledger.recent_failures(FAILURES_SHOWN).await?,
        progress: pool_progress,
        running,
        alerts: Vec::new(),
    };
    let facts = alerts::gather(config, ledger, beats, &status).await?;
    status.alerts = alerts::evaluate(&facts, &config.alerts);
    Ok(status)
}

/// The pool's spend today, billed from the ledger as its tick bills it
/// ([`budget::billed_secs`]), and whether its budget stops launches.
async fn pool_cost(
    name: &str,
    pool: &crate::config::Pool,
    ledger: &Ledger,
    beats: &Coordinator,
    cells: &[Beat],
) -> anyhow::Result<PoolCost> {
    let mut spent_today_usd = None;
    if let Some(price) = pool.price_per_hour {
        let now = chrono::Utc::now().timestamp();
        let since = budget::day_start(now);
        let serving = cells
            .iter()
            .filter(|b| !b.leaving && b.pools.iter().any(|p| p == name))
            .count() as u32;
        let running = serving + beats.pending(name).await?;
        let changes = ledger.cell_changes(name, since).await?;
        let secs = budget::billed_secs(changes.carried, &changes.changes, since, now, running);
        spent_today_usd = Some(secs * price / 3600.0);
    }
    let launches_stopped = match (spent_today_usd, pool.budget_per_day) {
        (Some(spent_usd), Some(budget_usd)) => Spend {
            spent_usd,
            budget_usd,
        }
        .spent(),
        _ => false,
    };
    Ok(PoolCost {
        pool: name.to_string(),
        ceiling: pool.effective_ceiling(),
        spent_today_usd,
        budget_per_day_usd: pool.budget_per_day,
        launches_stopped,
    })
}

impl std::fmt::Display for PoolCost {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "  {:<20} ceiling {:>4} cells", self.pool, self.ceiling)?;
        if let Some(spent) = self.spent_today_usd {
            write!(f, "  spent today ${spent:.2}")?;
        }
        match self.budget_per_day_usd {
            Some(budget) => write!(f, " of ${budget:.2}")?,
            None => write!(f, "  no budget")?,
        }
        if self.launches_stopped {
            write!(f, "  launches stopped: budget spent")?;
        }
        writeln!(f)
    }
}

impl std::fmt::Display for Status {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(f, "farm {}", self.farm)?;
        writeln!(
            f,
            "queues (ready messages; jobs in flight are 'running' below):"
        )?;
        for q in &self.queues {
            writeln!(
                f,
                "  {:<40} ready {:>6}  consumers {:>3}",
                q.queue, q.ready, q.consumers
            )?;
        }
        writeln!(f, "jobs:")?;
        if self.jobs.is_empty() {
            writeln!(f, "  none")?;
        }
        for j in &self.jobs {
            writeln!(f, "  {:<20} {:<10} {:>8}", j.pool, j.state, j.jobs)?;
        }
        writeln!(f, "cells alive: {}", self.cells.len())?;
        for c in &self.cells {
            let draining = if c.draining { " draining" } else { "" };
            writeln!(
                f,
                "  {:<40} running {}/{}{draining}",
                c.cell_id, c.running, c.slots
            )?;
        }
        self.write_progress(f)?;
        writeln!(f, "pools (cost guardrails, UTC day):")?;
        for p in &self.pools {
            write!(f, "{p}")?;
        }
        self.write_alerts(f)?;
        if !self.failures.is_empty() {
            writeln!(f, "recent failures:")?;
            for x in &self.failures {
                writeln!(
                    f,
                    "  {} {} {} [{} after {} attempt(s)]: {}",
                    x.at.format("%H:%M:%S"),
                    x.job_id,
                    x.source,
                    x.state,
                    x.attempts,
                    x.error
                )?;
            }
        }
        Ok(())
    }
}

impl Status {
    /// Each pool's work left and ETA, then each running job's progress and ETA.
    fn write_progress(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(f, "work left (per pool):")?;
        for p in &self.progress {
            let eta = p
                .eta_secs
                .map_or("unknown (nothing reports)".into(), human_secs);
            writeln!(
                f,
                "  {:<20} queued {:>6}  running {:>4}  {} of work  {:.2} work-s/s  ETA {eta}",
                p.pool,
                p.queued,
                p.running,
                human_secs(p.remaining_work_secs),
                p.throughput
            )?;
        }
        if !self.running.is_empty() {
            writeln!(f, "running jobs:")?;
        }
        for j in &self.running {
            let speed = j.job.speed.map_or("-".into(), |s| format!("{s:.2}x"));
            let eta = j.eta_secs.map_or("-".into(), human_secs);
            writeln!(
                f,
                "  {} {:<16} {:>5.1}%  speed {speed:>7}  ETA {eta:>7}  on {}",
                j.job.job_id,
                j.job.pipeline,
                100.0 * j.job.fraction,
                j.cell_id
            )?;
        }
        Ok(())
    }

    fn write_alerts(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.alerts.is_empty() {
            writeln!(f, "alerts: none")?;
        } else {
            writeln!(f, "alerts:")?;
        }
        for a in &self.alerts {
            writeln!(f, "  {:<14} {:<24} {}", a.kind, a.subject, a.message)?;
        }
        Ok(())
    }
}
