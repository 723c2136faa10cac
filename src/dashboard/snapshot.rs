//! The farm at one moment, and the last hour of it: everything the page, `/api/` and
//! `/metrics` show, read from the ledger, the broker and Redis.

use serde::Serialize;

use crate::boot::Systems;
use crate::config::Config;
use crate::costs::{self, Bill, Stay};
use crate::ledger::{Durations, Interruptions, JobCount, Ledger, Minute};
use crate::mitosis::budget;
use crate::queue::Broker;
use crate::status::{self, Status};

/// Minutes of history the charts cover.
pub const HISTORY_MINUTES: i64 = 60;

/// What the dashboard shows.
#[derive(Debug, Serialize)]
pub struct Snapshot {
    /// Seconds since the Unix epoch.
    pub at: i64,
    /// What `cellfarm status` shows: queues, jobs by state, cells, costs guardrails,
    /// recent failures, work left, running jobs, alerts.
    pub status: Status,
    /// Per pool: ready messages, cells alive and pending.
    pub pools: Vec<PoolNow>,
    /// Jobs ended per minute over the last hour (minutes without any left out).
    pub minutes: Vec<Minute>,
    /// Cells requested and alive, a point a minute over the last hour.
    pub cells: Vec<CellPoint>,
    pub interruptions: Vec<Interruptions>,
    /// Since UTC midnight, and over the farm's life.
    pub spend_today: Bill,
    pub spend_life: Bill,
    /// Jobs by pool, pipeline and state (the `/metrics` counters).
    pub counts: Vec<JobCount>,
    /// Succeeded jobs' durations (the `/metrics` histogram).
    #[serde(skip)]
    pub durations: Vec<Durations>,
}

/// A pool now.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct PoolNow {
    pub pool: String,
    /// Ready messages in its priority lane and work queue.
    pub ready: u64,
    /// Cells beating for it (not draining), and launched but not beating yet.
    pub alive: u64,
    pub pending: u64,
}

/// Cells at one minute.
#[derive(Debug, Clone, Copy, Serialize, PartialEq)]
pub struct CellPoint {
    /// Seconds since the Unix epoch.
    pub at: i64,
    /// Alive, plus launched and not alive yet (within the launch timeout).
    pub requested: u64,
    pub alive: u64,
}

/// Reads the farm now.
pub async fn gather(
    config: &Config,
    systems: &Systems,
    broker: &Broker,
) -> anyhow::Result<Snapshot> {
    let ledger = &systems.ledger;
    let status = status::gather(config, ledger, &systems.locks, broker).await?;
    let mut pools = Vec::new();
    for name in config.pools.keys() {
        let alive = status
            .cells
            .iter()
            .filter(|b| !b.draining && b.pools.iter().any(|p| p == name))
            .count() as u64;
        pools.push(PoolNow {
            pool: name.clone(),
            ready: broker.pool_ready(name).await?,
            alive,
            pending: u64::from(systems.locks.pending(name).await?),
        });
    }
    let now = chrono::Utc::now().timestamp();
    let since = now - HISTORY_MINUTES * 60;
    let stays = ledger.stays(0).await?;
    let timeout = config
        .pools
        .values()
        .map(|p| p.launch_timeout_secs)
        .max()
        .unwrap_or(0) as i64;
    let launches = ledger.launches(since - timeout).await?;
    Ok(Snapshot {
        at: now,
        pools,
        minutes: ledger.per_minute(HISTORY_MINUTES as i32).await?,
        cells: cell_points(&stays, &launches, timeout, since, now),
        interruptions: ledger.interruptions().await?,
        spend_today: costs::bill(&stays, budget::day_start(now), now),
        spend_life: costs::bill(&stays, 0, now),
        counts: ledger.job_counts().await?,
        durations: ledger.durations().await?,
        status,
    })
}

/// A job's row and attempts as JSON, for the links from the page.
pub async fn job(ledger: &Ledger, id: &str) -> anyhow::Result<Option<serde_json::Value>> {
    Ok(ledger.job_detail(id).await?)
}

/// Cells a minute from `since` to `now`: alive from the machines' stays, requested as
/// alive plus the cells launched within `timeout` before that minute that had not come
/// alive by it (a launched cell's stay has its machine's id; one started by hand has
/// none).
pub fn cell_points(
    stays: &[Stay],
    launches: &[(i64, i32)],
    timeout: i64,
    since: i64,
    now: i64,
) -> Vec<CellPoint> {
    let mut points = Vec::new();
    let mut at = since - since.rem_euclid(60);
    while at <= now {
        let alive = stays
            .iter()
            .filter(|s| s.start <= at && s.end.map_or(true, |end| end > at))
            .count() as u64;
        let window = |t: i64| t > at - timeout && t <= at;
        let launched: i64 = launches
            .iter()
            .filter(|(t, _)| window(*t))
            .map(|(_, n)| i64::from(*n))
            .sum();
        let arrived = stays
            .iter()
            .filter(|s| s.instance_id.is_some() && window(s.start))
            .count() as i64;
        let pending = (launched - arrived).max(0) as u64;
        points.push(CellPoint {
            at,
            requested: alive + pending,
            alive,
        });
        at += 60;
    }
    points
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stay(start: i64, end: Option<i64>, launched: bool) -> Stay {
        Stay {
            pool: "p".into(),
            cell_id: format!("c{start}"),
            instance_id: launched.then(|| format!("i-{start}")),
            instance_type: None,
            az: None,
            lifecycle: None,
            start,
            end,
            price_per_hour: None,
            on_demand_per_hour: None,
        }
    }

    #[test]
    fn requested_runs_ahead_of_alive_until_the_launch_comes_alive() {
        // One cell by hand from the start; two launched at 90 s, one alive at 150 s and
        // gone at 250 s, the other never alive (timeout 200 s).
        let stays = [stay(0, None, false), stay(150, Some(250), true)];
        let launches = [(90, 2)];
        let points = cell_points(&stays, &launches, 200, 0, 300);
        let seen: Vec<(i64, u64, u64)> = points
            .iter()
            .map(|p| (p.at, p.requested, p.alive))
            .collect();
        assert_eq!(
            seen,
            vec![
                (0, 1, 1),
                (60, 1, 1),
                (120, 3, 1),
                (180, 3, 2),
                (240, 3, 2),
                (300, 1, 1)
            ]
        );
    }
}
