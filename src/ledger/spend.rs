//! What a pool's cells have cost today, as the ledger's `cell_events` tell it: launches
//! add cells, deaths, reaps and spot notices end them.

use super::{Ledger, LedgerError};

/// The event kinds that end a cell. A cell leaving on a spot notice or a rebalance
/// recommendation records no death: its notice is its end (a rebalanced cell may run on
/// while it finishes its jobs, which this counts short).
const ENDS: &[&str] = &["death", "reap", "interruption", "rebalance"];

/// A change in a pool's cells at one moment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CellChange {
    /// Seconds since the Unix epoch.
    pub at: i64,
    /// Cells launched (positive) or ended (negative).
    pub cells: i32,
}

/// A pool's cells since a moment: those the events count as running then, and the
/// changes after, oldest first.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CellChanges {
    /// Launches less ends before the moment (never below 0).
    pub carried: u32,
    pub changes: Vec<CellChange>,
}

impl Ledger {
    /// The pool's cells since `since` (seconds since the Unix epoch): see
    /// [`CellChanges`].
    pub async fn cell_changes(&self, pool: &str, since: i64) -> Result<CellChanges, LedgerError> {
        let carried: i64 = sqlx::query_scalar(
            "SELECT coalesce(sum(CASE WHEN kind = 'launch' THEN cells ELSE -cells END), 0)::int8
             FROM cell_events
             WHERE pool = $1 AND at < to_timestamp($2) AND (kind = 'launch' OR kind = ANY($3))",
        )
        .bind(pool)
        .bind(since as f64)
        .bind(ENDS)
        .fetch_one(&self.pool)
        .await?;
        let rows: Vec<(i64, i32)> = sqlx::query_as(
            "SELECT floor(extract(epoch FROM at))::int8,
                    CASE WHEN kind = 'launch' THEN cells ELSE -cells END
             FROM cell_events
             WHERE pool = $1 AND at >= to_timestamp($2) AND (kind = 'launch' OR kind = ANY($3))
             ORDER BY at, id",
        )
        .bind(pool)
        .bind(since as f64)
        .bind(ENDS)
        .fetch_all(&self.pool)
        .await?;
        Ok(CellChanges {
            carried: u32::try_from(carried.max(0)).unwrap_or(u32::MAX),
            changes: rows
                .into_iter()
                .map(|(at, cells)| CellChange { at, cells })
                .collect(),
        })
    }
}
