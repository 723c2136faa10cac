//! `cellfarm status`: the farm at a glance, from the broker, the ledger and Redis.

use serde::Serialize;

use crate::boot::Systems;
use crate::config::Config;
use crate::ledger::{Failure, Ledger, StateCount};
use crate::locks::{Beat, Coordinator};
use crate::queue::{Broker, Names};

#[derive(Debug, Serialize)]
pub struct Status {
    pub farm: String,
    pub queues: Vec<QueueDepth>,
    pub jobs: Vec<StateCount>,
    pub cells: Vec<Beat>,
    pub failures: Vec<Failure>,
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
    Ok(Status {
        farm: config.farm.name.clone(),
        queues,
        jobs: ledger.state_counts().await?,
        cells: beats.alive().await?,
        failures: ledger.recent_failures(FAILURES_SHOWN).await?,
    })
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
