//! What the ledger says about the farm over time, for alerts and the dashboard: arrivals
//! and ends in a window, the last hour's failures and interruptions, each pipeline's
//! usual pace, and jobs finished per minute.

use sqlx::Row;

use super::{Ledger, LedgerError};

/// A pool over a recent window.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct PoolWindow {
    /// Jobs created in the window.
    pub arrived: u64,
    /// Jobs that ended in the window.
    pub finished: u64,
    /// Cells launched in the window.
    pub launched: u64,
}

/// The farm's last hour.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct LastHour {
    pub finished: u64,
    /// Of those, `failed` or `dead`.
    pub failed: u64,
    pub interruptions: u64,
}

/// Jobs that ended in one minute.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct Minute {
    /// Seconds since the Unix epoch, at the minute's start.
    pub at: i64,
    pub succeeded: u64,
    /// `failed` or `dead`.
    pub failed: u64,
}

fn count(row: &sqlx::postgres::PgRow, name: &str) -> u64 {
    row.get::<i64, _>(name).max(0) as u64
}

impl Ledger {
    /// What happened to `pool` in the last `secs` seconds.
    pub async fn pool_window(&self, pool: &str, secs: f64) -> Result<PoolWindow, LedgerError> {
        let row = sqlx::query(
            "SELECT
               (SELECT count(*) FROM jobs WHERE pool = $1
                  AND created_at > now() - make_interval(secs => $2)) AS arrived,
               (SELECT count(*) FROM jobs WHERE pool = $1 AND finished_at IS NOT NULL
                  AND finished_at > now() - make_interval(secs => $2)) AS finished,
               (SELECT coalesce(sum(cells), 0)::int8 FROM cell_events WHERE pool = $1
                  AND kind = 'launch' AND at > now() - make_interval(secs => $2)) AS launched",
        )
        .bind(pool)
        .bind(secs)
        .fetch_one(&self.pool)
        .await?;
        Ok(PoolWindow {
            arrived: count(&row, "arrived"),
            finished: count(&row, "finished"),
            launched: count(&row, "launched"),
        })
    }

    /// Jobs finished and failed, and spot interruptions, in the last hour.
    pub async fn last_hour(&self) -> Result<LastHour, LedgerError> {
        let row = sqlx::query(
            "SELECT
               (SELECT count(*) FROM jobs WHERE finished_at > now() - interval '1 hour'
                  AND state IN ('succeeded', 'failed', 'dead')) AS finished,
               (SELECT count(*) FROM jobs WHERE finished_at > now() - interval '1 hour'
                  AND state IN ('failed', 'dead')) AS failed,
               (SELECT count(*) FROM cell_events WHERE kind = 'interruption'
                  AND at > now() - interval '1 hour') AS interruptions",
        )
        .fetch_one(&self.pool)
        .await?;
        Ok(LastHour {
            finished: count(&row, "finished"),
            failed: count(&row, "failed"),
            interruptions: count(&row, "interruptions"),
        })
    }

    /// Each pipeline's usual pace over the last day: seconds of source its succeeded
    /// jobs had, over the seconds their last attempts ran.
    pub async fn usual_pace(&self) -> Result<Vec<(String, f64)>, LedgerError> {
        let rows: Vec<(String, f64)> = sqlx::query_as(
            "SELECT pipeline,
                    sum((probe->>'duration')::float8)
                      / sum(extract(epoch FROM finished_at - started_at))::float8
             FROM jobs
             WHERE state = 'succeeded' AND finished_at > now() - interval '1 day'
               AND probe->>'duration' IS NOT NULL AND finished_at > started_at
             GROUP BY pipeline",
        )
        .fetch_all(&self.pool)
        .await?;
        Ok(rows)
    }

    /// Jobs ended per minute over the last `minutes`, oldest first; minutes with none
    /// are left out.
    pub async fn per_minute(&self, minutes: i32) -> Result<Vec<Minute>, LedgerError> {
        let rows = sqlx::query(
            "SELECT floor(extract(epoch FROM date_trunc('minute', finished_at)))::int8 AS at,
                    count(*) FILTER (WHERE state = 'succeeded') AS succeeded,
                    count(*) FILTER (WHERE state IN ('failed', 'dead')) AS failed
             FROM jobs
             WHERE finished_at > date_trunc('minute', now()) - make_interval(mins => $1)
             GROUP BY 1 ORDER BY 1",
        )
        .bind(minutes)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .iter()
            .map(|r| Minute {
                at: r.get("at"),
                succeeded: count(r, "succeeded"),
                failed: count(r, "failed"),
            })
            .collect())
    }
}
