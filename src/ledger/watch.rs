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

/// One pool's, one pipeline's jobs in one state.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct JobCount {
    pub pool: String,
    pub pipeline: String,
    pub state: super::JobState,
    pub jobs: u64,
}

/// How long a pool's, a pipeline's succeeded jobs took, as a histogram.
#[derive(Debug, Clone, PartialEq)]
pub struct Durations {
    pub pool: String,
    pub pipeline: String,
    /// Jobs that took at most each of [`DURATION_BUCKETS`] seconds (cumulative).
    pub buckets: Vec<u64>,
    pub count: u64,
    pub sum_secs: f64,
}

/// Upper bounds of the job duration histogram, in seconds: a thumbnail to an hour's
/// ladder.
pub const DURATION_BUCKETS: [f64; 10] = [
    1.0, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0,
];

impl Ledger {
    /// Jobs by pool, pipeline and state, read from the pool summary (see
    /// [`Ledger::pool_load`]): a few rows a pipeline however many jobs the ledger
    /// holds, so that a scrape of `/metrics` costs the same at a million jobs. States
    /// with no job are left out.
    pub async fn job_counts(&self) -> Result<Vec<JobCount>, LedgerError> {
        let rows = sqlx::query(
            "SELECT pool, pipeline, state, jobs FROM (
                 SELECT pool, pipeline, sum(queued)::int8 AS queued,
                        sum(running)::int8 AS running, sum(succeeded)::int8 AS succeeded,
                        sum(failed)::int8 AS failed, sum(dead)::int8 AS dead,
                        sum(cancelled)::int8 AS cancelled
                 FROM pool_load GROUP BY pool, pipeline) AS t,
             LATERAL (VALUES ('queued', queued), ('running', running),
                             ('succeeded', succeeded), ('failed', failed), ('dead', dead),
                             ('cancelled', cancelled))
                 AS s(state, jobs)
             WHERE jobs > 0
             ORDER BY pool, pipeline, state",
        )
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(JobCount {
                    pool: r.get("pool"),
                    pipeline: r.get("pipeline"),
                    state: r.get::<String, _>("state").parse()?,
                    jobs: count(r, "jobs"),
                })
            })
            .collect()
    }

    /// The succeeded jobs' run times (their last attempt's start to the commit).
    pub async fn durations(&self) -> Result<Vec<Durations>, LedgerError> {
        let rows = sqlx::query(
            "SELECT pool, pipeline,
                    array_agg(n ORDER BY le) AS buckets,
                    max(total) AS total, max(secs) AS secs
             FROM (
                 SELECT pool, pipeline, b.le,
                        count(*) FILTER (WHERE d <= b.le) AS n,
                        count(*) AS total, coalesce(sum(d), 0)::float8 AS secs
                 FROM (SELECT pool, pipeline,
                              extract(epoch FROM finished_at - started_at)::float8 AS d
                       FROM jobs WHERE state = 'succeeded' AND started_at IS NOT NULL) AS j
                 CROSS JOIN unnest($1::float8[]) AS b(le)
                 GROUP BY pool, pipeline, b.le
             ) AS per_bucket
             GROUP BY pool, pipeline ORDER BY pool, pipeline",
        )
        .bind(DURATION_BUCKETS.as_slice())
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .iter()
            .map(|r| Durations {
                pool: r.get("pool"),
                pipeline: r.get("pipeline"),
                buckets: r
                    .get::<Vec<i64>, _>("buckets")
                    .into_iter()
                    .map(|n| n.max(0) as u64)
                    .collect(),
                count: count(r, "total"),
                sum_secs: r.get("secs"),
            })
            .collect())
    }

    /// Cells launched since `since` (seconds since the epoch): (when, how many).
    pub async fn launches(&self, since: i64) -> Result<Vec<(i64, i32)>, LedgerError> {
        Ok(sqlx::query_as(
            "SELECT floor(extract(epoch FROM at))::int8, cells FROM cell_events
             WHERE kind = 'launch' AND at >= to_timestamp($1) ORDER BY at, id",
        )
        .bind(since as f64)
        .fetch_all(&self.pool)
        .await?)
    }

    /// A job's row and its attempts, as JSON, for the dashboard's link to it.
    pub async fn job_detail(&self, job_id: &str) -> Result<Option<serde_json::Value>, LedgerError> {
        Ok(sqlx::query_scalar(
            "SELECT jsonb_build_object(
                 'job', to_jsonb(j) - 'result',
                 'attempts', (SELECT coalesce(jsonb_agg(to_jsonb(a) ORDER BY a.id), '[]'::jsonb)
                              FROM job_attempts a WHERE a.job_id = j.id))
             FROM jobs j WHERE j.id = $1",
        )
        .bind(job_id)
        .fetch_optional(&self.pool)
        .await?)
    }
}
