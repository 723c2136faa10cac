//! Cell events that can be costed (migration 0009): a cell's `alive` event names its
//! machine, and the machine's stays and interruptions are read back for billing.

use sqlx::Row;

use super::{EventKind, Ledger, LedgerError};
use crate::costs::Stay;

/// The machine behind a cell event, as far as it is known.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Machine {
    pub instance_id: Option<String>,
    pub instance_type: Option<String>,
    pub az: Option<String>,
    /// `spot` or `on-demand`.
    pub lifecycle: Option<String>,
    pub price_per_hour: Option<f64>,
    pub on_demand_per_hour: Option<f64>,
}

/// Spot interruptions of one instance type in one AZ, and the work they cost.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Interruptions {
    pub instance_type: Option<String>,
    pub az: Option<String>,
    pub interruptions: i64,
    /// Seconds the attempts handed back on those notices had run: work done again.
    pub lost_work_secs: f64,
}

/// The kinds that end a cell's stay.
const ENDS: &[&str] = &["death", "interruption", "rebalance", "reap"];

impl Ledger {
    /// Records that a cell came alive on `machine`, once: a cell that re-executes itself
    /// (a binary update) keeps its machine and its first `alive`.
    pub async fn record_alive(
        &self,
        pool: &str,
        cell_id: &str,
        machine: &Machine,
    ) -> Result<(), LedgerError> {
        sqlx::query(
            "INSERT INTO cell_events (pool, kind, cell_id, cells, reason, instance_id,
                 instance_type, az, lifecycle, price_per_hour, on_demand_per_hour)
             SELECT $1, $2, $3, 1, 'its cell beat for the first time', $4, $5, $6, $7, $8, $9
             WHERE NOT EXISTS (
                 SELECT 1 FROM cell_events WHERE kind = $2 AND cell_id = $3 AND pool = $1)",
        )
        .bind(pool)
        .bind(EventKind::Alive.as_str())
        .bind(cell_id)
        .bind(&machine.instance_id)
        .bind(&machine.instance_type)
        .bind(&machine.az)
        .bind(&machine.lifecycle)
        .bind(machine.price_per_hour)
        .bind(machine.on_demand_per_hour)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Every machine's stay that had not ended by `since` (seconds since the epoch).
    pub async fn stays(&self, since: i64) -> Result<Vec<Stay>, LedgerError> {
        let rows = sqlx::query(
            "SELECT a.pool, a.cell_id, a.instance_id, a.instance_type, a.az, a.lifecycle,
                    a.price_per_hour, a.on_demand_per_hour,
                    floor(extract(epoch FROM a.at))::int8 AS start,
                    (SELECT floor(extract(epoch FROM min(e.at)))::int8 FROM cell_events e
                     WHERE e.cell_id = a.cell_id AND e.kind = ANY($1) AND e.at >= a.at) AS stop
             FROM cell_events a WHERE a.kind = 'alive' ORDER BY a.at, a.id",
        )
        .bind(ENDS)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .into_iter()
            .map(|r| Stay {
                pool: r.get("pool"),
                cell_id: r.get("cell_id"),
                instance_id: r.get("instance_id"),
                instance_type: r.get("instance_type"),
                az: r.get("az"),
                lifecycle: r.get("lifecycle"),
                start: r.get("start"),
                end: r.get("stop"),
                price_per_hour: r.get("price_per_hour"),
                on_demand_per_hour: r.get("on_demand_per_hour"),
            })
            .filter(|s| s.end.map_or(true, |end| end >= since))
            .collect())
    }

    /// Spot interruptions by instance type and AZ (from each cell's `alive` event), with
    /// the seconds of work their hand-backs threw away.
    pub async fn interruptions(&self) -> Result<Vec<Interruptions>, LedgerError> {
        let rows = sqlx::query(
            "SELECT a.instance_type, a.az, count(DISTINCT i.id) AS n,
                    coalesce(sum(extract(epoch FROM t.finished_at - t.started_at)), 0)::float8 AS lost
             FROM cell_events i
             LEFT JOIN cell_events a ON a.cell_id = i.cell_id AND a.kind = 'alive'
             LEFT JOIN job_attempts t ON t.cell_id = i.cell_id AND t.outcome = 'interrupted'
             WHERE i.kind = 'interruption'
             GROUP BY a.instance_type, a.az ORDER BY n DESC, a.instance_type, a.az",
        )
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .into_iter()
            .map(|r| Interruptions {
                instance_type: r.get("instance_type"),
                az: r.get("az"),
                interruptions: r.get("n"),
                lost_work_secs: r.get("lost"),
            })
            .collect())
    }
}
