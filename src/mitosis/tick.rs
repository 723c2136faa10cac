//! One mitosis tick for one pool: observe, decide, act, under the pool's Redis lock so
//! that ten cells seeing the same backlog launch the missing cells once, not ten times.

use std::time::Duration;

use super::{decide, Decision, Observation, Policy};
use crate::cloud::Cloud;
use crate::config::Config;
use crate::ledger::Ledger;
use crate::locks::Heartbeats;
use crate::queue::{self, Names};

/// Seconds of source assumed for a job nothing is known about yet (no estimate, no
/// probe): a few minutes of video.
const UNKNOWN_JOB_SECS: f64 = 180.0;
/// The lock outlives any tick by far; it only matters if its holder dies mid-tick.
const LOCK_TTL_MS: u64 = 15_000;

/// What a tick needs.
pub struct Farm<'a> {
    pub config: &'a Config,
    pub ledger: &'a Ledger,
    pub locks: &'a Heartbeats,
    pub cloud: &'a dyn Cloud,
    pub channel: &'a lapin::Channel,
    /// Who ticks, for the ledger's launch events: a cell id, `submit`, `trigger`…
    pub who: &'a str,
}

/// The deciding cell, when a cell decides (not `submit`).
#[derive(Clone, Copy)]
pub struct Me<'a> {
    pub cell_id: &'a str,
    /// Seconds idle, or None while busy.
    pub idle_secs: Option<u64>,
    /// The cell is leaving after a spot notice: its machine still exists in the cloud's
    /// count but no longer works for the pool, and it is not the one to die.
    pub leaving: bool,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum TickOutcome {
    /// Another cell holds the pool's lock: it is deciding.
    Busy,
    Launched(u32),
    Stayed,
    /// The calling cell is deregistered and must drain and terminate.
    Die,
}

pub async fn tick(
    farm: &Farm<'_>,
    pool: &str,
    me: Option<Me<'_>>,
) -> anyhow::Result<(TickOutcome, Observation)> {
    let Some(lock) = farm
        .locks
        .try_lock(&format!("mitosis:{pool}"), LOCK_TTL_MS)
        .await?
    else {
        return Ok((TickOutcome::Busy, Observation::default()));
    };
    let result = tick_locked(farm, pool, me).await;
    if let Err(e) = farm.locks.unlock(lock).await {
        tracing::warn!(pool, error = %e, "cannot release the mitosis lock; it expires by itself");
    }
    result
}

async fn observe(farm: &Farm<'_>, pool: &str, me: Option<Me<'_>>) -> anyhow::Result<Observation> {
    let idle_secs = me.and_then(|m| m.idle_secs);
    let names = Names::new(&farm.config.farm.name);
    let mut ready = 0;
    for lane in [names.priority(pool), names.work(pool)] {
        ready += u64::from(queue::ready(farm.channel, &lane).await?.0);
    }
    let mut in_flight = 0;
    let mut work_secs = 0.0;
    for load in farm.ledger.pool_load(pool).await? {
        // A pipeline gone from the config still has work: weigh it as plain seconds.
        let cost = farm
            .config
            .pipelines
            .get(&load.pipeline)
            .map_or(1.0, |p| p.cost_factor);
        in_flight += load.running;
        work_secs += load.estimated_secs
            + cost * (load.probed_secs + load.unknown as f64 * UNKNOWN_JOB_SECS);
    }
    let alive = farm
        .locks
        .alive()
        .await?
        .iter()
        .filter(|b| b.pools.iter().any(|p| p == pool) && !b.draining)
        .count() as u32;
    let mut pending = farm.locks.pending(pool).await?;
    // The cloud's own count is the backstop when Redis lost the pending launches.
    if let Some(existing) = farm.cloud.count(pool).await? {
        let existing = existing.saturating_sub(u32::from(me.is_some_and(|m| m.leaving)));
        tracing::debug!(
            pool,
            recorded = pending,
            existing,
            alive,
            "pending launches"
        );
        pending = pending.max(existing.saturating_sub(alive));
    }
    Ok(Observation {
        ready,
        in_flight,
        work_secs,
        alive,
        pending,
        idle_secs,
    })
}

async fn tick_locked(
    farm: &Farm<'_>,
    pool: &str,
    me: Option<Me<'_>>,
) -> anyhow::Result<(TickOutcome, Observation)> {
    let p = farm
        .config
        .pools
        .get(pool)
        .ok_or_else(|| anyhow::anyhow!("no pool named {pool:?}"))?;
    let obs = observe(farm, pool, me).await?;
    let decider = me.as_ref().map_or(farm.who, |m| m.cell_id);
    let decision = decide(&obs, &Policy::from(p));
    tracing::debug!(pool, ?obs, ?decision, "mitosis tick");
    match decision {
        Decision::Stay => Ok((TickOutcome::Stayed, obs)),
        Decision::Launch(n) => {
            let from_zero = obs.alive + obs.pending == 0;
            if !from_zero && farm.locks.cooling(pool).await? {
                return Ok((TickOutcome::Stayed, obs));
            }
            let token = format!(
                "{}-{pool}-{}",
                farm.config.farm.name,
                farm.locks.next_launch(pool).await?
            );
            let ids = farm.cloud.launch(pool, n, &token).await?;
            farm.locks
                .add_pending(pool, &ids, p.launch_timeout_secs)
                .await?;
            farm.locks.start_cooldown(pool, p.cooldown_secs).await?;
            let reason = format!(
                "{} ready, {} running, {:.0} s of work; {} alive, {} pending",
                obs.ready, obs.in_flight, obs.work_secs, obs.alive, obs.pending
            );
            tracing::info!(pool, cells = n, %reason, "mitosis: launching");
            farm.ledger
                .record_event(pool, "launch", decider, n, &reason)
                .await?;
            Ok((TickOutcome::Launched(n), obs))
        }
        Decision::Die => {
            let Some(me) = me.filter(|m| !m.leaving) else {
                return Ok((TickOutcome::Stayed, obs));
            };
            // Deregister first, then look once more: a job published after this look
            // sees no live cell here, and its publisher's tick launches one.
            farm.locks.remove(me.cell_id).await?;
            let last_look = observe(farm, pool, None).await?;
            if last_look.ready > 0 {
                return Ok((TickOutcome::Stayed, last_look));
            }
            let reason = format!(
                "idle {} s, queues empty, {} cells alive",
                me.idle_secs.unwrap_or(0),
                obs.alive
            );
            tracing::info!(pool, %reason, "death: this cell is no longer needed");
            farm.ledger
                .record_event(pool, "death", me.cell_id, 1, &reason)
                .await?;
            Ok((TickOutcome::Die, obs))
        }
    }
}

/// Waits out a lock held by another decider, for callers that must tick (submit, a
/// leaving cell).
pub async fn tick_patiently(
    farm: &Farm<'_>,
    pool: &str,
    me: Option<Me<'_>>,
    patience: Duration,
) -> anyhow::Result<TickOutcome> {
    let deadline = tokio::time::Instant::now() + patience;
    loop {
        let (outcome, _) = tick(farm, pool, me).await?;
        if outcome != TickOutcome::Busy || tokio::time::Instant::now() >= deadline {
            return Ok(outcome);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
