//! The SQL ledger (PostgreSQL through sqlx): one row per job, one per attempt.
//!
//! The ledger, not the broker, is the authority on a job. A delivery claims the row
//! (attempt + 1, a lease); only the attempt that holds the claim may commit, so a zombie
//! attempt (a cell cut off from the broker but still encoding) commits nothing; a lease
//! that runs out puts the job back to `queued` and its message is published again.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use serde_json::Value;
use sqlx::postgres::{PgPool, PgPoolOptions};
use sqlx::{Executor, Row};

use crate::config::Postgres;
use crate::job::{JobMessage, OutputObject, ResultMessage};

mod by_hand;
mod costs;
mod spend;
mod titles;
mod watch;
mod words;

pub use by_hand::Cancel;
pub use costs::{Interruptions, Machine};
pub use spend::{CellChange, CellChanges};
pub use titles::{Committed, PartRow};
pub use watch::{Durations, JobCount, LastHour, Minute, PoolWindow, DURATION_BUCKETS};
pub use words::{AttemptOutcome, EventKind, JobState, SubmitOutcome, UnknownWord};

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

#[derive(Debug, thiserror::Error)]
pub enum LedgerError {
    #[error("ledger database: {0}")]
    Db(#[from] sqlx::Error),
    #[error("ledger migrations: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error(
        "the ledger in schema {schema} is not migrated to version {want}: run `cellfarm migrate`"
    )]
    NotMigrated { schema: String, want: i64 },
    #[error(transparent)]
    Word(#[from] UnknownWord),
}

/// One attempt of one job by one cell: whose claim a transition checks.
#[derive(Debug, Clone, PartialEq)]
pub struct AttemptId {
    pub job_id: String,
    /// 1 for the first attempt.
    pub attempt: i32,
    pub cell_id: String,
}

/// What a delivery may do with its job.
#[derive(Debug, Clone, PartialEq)]
pub enum Claim {
    /// Run it: this is attempt `attempt`. `probe` is what the ledger already knows of
    /// the source (a ranged probe at submission, or an earlier attempt's), for this
    /// job's source version: the job id is derived from the ETag. `plan` is set when
    /// the job is a chunked title whose parts are all done: the attempt assembles them
    /// by that plan (see [`crate::chunk`]).
    Run {
        attempt: i32,
        probe: Option<Value>,
        plan: Option<Value>,
    },
    /// Already done or already failed: the delivery is a duplicate.
    Finished { state: JobState },
    /// A chunked title waiting for its parts: the delivery is a duplicate.
    Waiting,
    /// Another cell holds a live lease; the delivery is a duplicate.
    HeldElsewhere { cell_id: String },
    /// Every attempt is spent: dead-letter it with the last error.
    Exhausted { attempts: i32, error: String },
}

/// One pipeline's share of a pool's unfinished jobs (see [`Ledger::pool_load`]).
#[derive(Debug, Clone, PartialEq)]
pub struct PipelineLoad {
    pub pipeline: String,
    pub running: u64,
    /// Jobs queued: waiting for a cell, whether the broker shows their message as
    /// ready or not.
    pub queued: u64,
    /// Sum of the messages' own estimates, already in work-seconds.
    pub estimated_secs: f64,
    /// Seconds of source of the probed jobs without an estimate.
    pub probed_secs: f64,
    /// Jobs with neither an estimate nor a probe yet.
    pub unknown: u64,
}

/// Jobs per (pool, state), for `cellfarm status`.
#[derive(Debug, Clone, serde::Serialize)]
pub struct StateCount {
    pub pool: String,
    pub state: JobState,
    pub jobs: i64,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct Failure {
    pub job_id: String,
    pub pipeline: String,
    pub source: String,
    pub state: JobState,
    pub attempts: i32,
    pub error: String,
    pub at: chrono::DateTime<chrono::Utc>,
}

/// Which jobs [`Ledger::jobs`] lists; every field set narrows the list.
#[derive(Debug, Clone, Default)]
pub struct JobFilter {
    /// The source object: (bucket, key).
    pub source: Option<(String, String)>,
    pub state: Option<JobState>,
    pub pipeline: Option<String>,
}

/// One job as the ledger holds it, for `cellfarm jobs`.
#[derive(Debug, Clone)]
pub struct JobRow {
    /// The message as published: source, pipeline, output prefix.
    pub message: JobMessage,
    pub pool: String,
    pub state: JobState,
    pub attempts: i32,
    pub error: Option<String>,
    /// The objects written, once the job has succeeded.
    pub outputs: Vec<OutputObject>,
    pub created_at: chrono::DateTime<chrono::Utc>,
    pub updated_at: chrono::DateTime<chrono::Utc>,
}

#[derive(Clone)]
pub struct Ledger {
    pool: PgPool,
    schema: String,
}

impl Ledger {
    /// Connects with every session's `search_path` set to the farm's schema.
    pub async fn connect(cfg: &Postgres) -> Result<Ledger, LedgerError> {
        let schema = cfg.schema.clone();
        let set_path = format!("SET search_path TO \"{schema}\"");
        let pool = PgPoolOptions::new()
            .max_connections(8)
            .acquire_timeout(Duration::from_secs(10))
            .after_connect(move |conn, _| {
                let set_path = set_path.clone();
                Box::pin(async move {
                    conn.execute(set_path.as_str()).await?;
                    Ok(())
                })
            })
            .connect(&cfg.url)
            .await?;
        Ok(Ledger { pool, schema })
    }

    pub async fn migrate(&self) -> Result<(), LedgerError> {
        let create = format!("CREATE SCHEMA IF NOT EXISTS \"{}\"", self.schema);
        sqlx::query(&create).execute(&self.pool).await?;
        MIGRATOR.run(&self.pool).await?;
        Ok(())
    }

    /// Fails unless every migration this build knows has been applied.
    pub async fn check_migrated(&self) -> Result<(), LedgerError> {
        let want = MIGRATOR.iter().map(|m| m.version).max().unwrap_or(0);
        let applied: Option<i64> =
            sqlx::query_scalar("SELECT max(version) FROM _sqlx_migrations WHERE success")
                .fetch_one(&self.pool)
                .await
                .unwrap_or(None);
        if applied.unwrap_or(0) < want {
            return Err(LedgerError::NotMigrated {
                schema: self.schema.clone(),
                want,
            });
        }
        Ok(())
    }

    /// Records a new job as `queued`; false if the job id is already known.
    pub async fn insert(&self, job: &JobMessage, pool: &str) -> Result<bool, LedgerError> {
        let done = sqlx::query(
            "INSERT INTO jobs (id, pipeline, pool, source_bucket, source_key, source_etag, message)
             VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT (id) DO NOTHING",
        )
        .bind(&job.job_id)
        .bind(&job.pipeline)
        .bind(pool)
        .bind(&job.source.bucket)
        .bind(&job.source.key)
        .bind(&job.source.etag)
        .bind(sqlx::types::Json(job))
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() == 1)
    }

    /// Records many new jobs of one pool in one statement, each with what a ranged probe
    /// found of its source (`probes[i]` for `jobs[i]`); returns the ids that were new.
    /// A job already known is left as it is, as by [`Ledger::insert`].
    pub async fn insert_many(
        &self,
        jobs: &[JobMessage],
        probes: &[Option<Value>],
        pool: &str,
    ) -> Result<HashSet<String>, LedgerError> {
        debug_assert_eq!(jobs.len(), probes.len(), "one probe slot per job");
        let column = |f: fn(&JobMessage) -> &str| jobs.iter().map(f).collect::<Vec<&str>>();
        let messages: Vec<Value> = jobs
            .iter()
            .map(|j| serde_json::to_value(j).expect("a job message always serializes"))
            .collect();
        let new: Vec<String> = sqlx::query_scalar(
            "INSERT INTO jobs (id, pipeline, pool, source_bucket, source_key, source_etag,
                               message, probe)
             SELECT id, pipeline, $7, bucket, key, etag, message, probe
             FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[],
                         $6::jsonb[], $8::jsonb[])
                  AS t(id, pipeline, bucket, key, etag, message, probe)
             ON CONFLICT (id) DO NOTHING
             RETURNING id",
        )
        .bind(column(|j| &j.job_id))
        .bind(column(|j| &j.pipeline))
        .bind(column(|j| &j.source.bucket))
        .bind(column(|j| &j.source.key))
        .bind(column(|j| &j.source.etag))
        .bind(messages)
        .bind(pool)
        .bind(probes)
        .fetch_all(&self.pool)
        .await?;
        Ok(new.into_iter().collect())
    }

    /// Removes jobs that were never published (their publish failed).
    pub async fn forget_many(&self, job_ids: &[String]) -> Result<(), LedgerError> {
        sqlx::query("DELETE FROM jobs WHERE id = ANY($1) AND state = 'queued' AND attempts = 0")
            .bind(job_ids)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Puts a finished job back to `queued` with fresh attempts (reprocessing on demand).
    /// Returns false for a job that is queued or running now.
    /// A chunked title starts again from its split: its parts are forgotten.
    pub async fn reset(&self, job_id: &str) -> Result<bool, LedgerError> {
        let mut tx = self.pool.begin().await?;
        let done = sqlx::query(
            "UPDATE jobs SET state = 'queued', attempts = 0, republished = 0, error = NULL,
                    outputs = NULL, plan = NULL, assemble = false,
                    result = NULL, result_sent = false,
                    cell_id = NULL, lease_expires = NULL, updated_at = now()
             WHERE id = $1 AND state IN ('succeeded', 'failed', 'dead')",
        )
        .bind(job_id)
        .execute(&mut *tx)
        .await?;
        if done.rows_affected() == 1 {
            sqlx::query("DELETE FROM jobs WHERE parent = $1")
                .bind(job_id)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(done.rows_affected() == 1)
    }

    /// Claims a job for one attempt by `cell_id`, creating its row if the message came
    /// from elsewhere.
    pub async fn claim(
        &self,
        job: &JobMessage,
        pool: &str,
        cell_id: &str,
        lease: Duration,
        max_attempts: u32,
    ) -> Result<Claim, LedgerError> {
        self.insert(job, pool).await?;
        let mut tx = self.pool.begin().await?;
        let row = sqlx::query(
            "SELECT state, attempts, cell_id, lease_expires < now() AS expired, error, probe,
                    CASE WHEN assemble THEN plan END AS plan
             FROM jobs WHERE id = $1 FOR UPDATE",
        )
        .bind(&job.job_id)
        .fetch_one(&mut *tx)
        .await?;
        let state: JobState = row.get::<String, _>("state").parse()?;
        let attempts: i32 = row.get("attempts");
        let holder: Option<String> = row.get("cell_id");
        let expired: Option<bool> = row.get("expired");
        let claim = match state {
            s if s.is_final() => Claim::Finished { state },
            JobState::Waiting => Claim::Waiting,
            JobState::Running if expired == Some(false) => Claim::HeldElsewhere {
                cell_id: holder.unwrap_or_default(),
            },
            _ if attempts >= max_attempts as i32 => Claim::Exhausted {
                attempts,
                error: row
                    .get::<Option<String>, _>("error")
                    .unwrap_or_else(|| "the cell running it was lost every time".into()),
            },
            _ => {
                if state == JobState::Running {
                    // The previous holder's lease ran out: that attempt is lost.
                    let lost = AttemptOutcome::Lost;
                    close_attempt(&mut tx, &job.job_id, attempts, lost, None).await?;
                }
                let attempt = attempts + 1;
                sqlx::query(
                    "UPDATE jobs SET state = 'running', attempts = $2, cell_id = $3,
                            lease_expires = now() + make_interval(secs => $4),
                            started_at = now(), updated_at = now()
                     WHERE id = $1",
                )
                .bind(&job.job_id)
                .bind(attempt)
                .bind(cell_id)
                .bind(lease.as_secs_f64())
                .execute(&mut *tx)
                .await?;
                sqlx::query(
                    "INSERT INTO job_attempts (job_id, attempt, cell_id) VALUES ($1, $2, $3)",
                )
                .bind(&job.job_id)
                .bind(attempt)
                .bind(cell_id)
                .execute(&mut *tx)
                .await?;
                Claim::Run {
                    attempt,
                    probe: row.get("probe"),
                    plan: row.get("plan"),
                }
            }
        };
        tx.commit().await?;
        Ok(claim)
    }

    /// Ends a job whose attempts are all spent, whoever held it last.
    pub async fn bury(&self, job_id: &str, reason: &str) -> Result<(), LedgerError> {
        sqlx::query(
            "UPDATE jobs SET state = 'dead', error = $2, cell_id = NULL, lease_expires = NULL,
                    updated_at = now(), finished_at = now()
             WHERE id = $1 AND state IN ('queued', 'running')",
        )
        .bind(job_id)
        .bind(reason)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    pub async fn record_probe(&self, job_id: &str, probe: &Value) -> Result<(), LedgerError> {
        sqlx::query("UPDATE jobs SET probe = $2, updated_at = now() WHERE id = $1")
            .bind(job_id)
            .bind(probe)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// True while `cell_id`'s attempt still holds the job (checked before uploading).
    pub async fn holds(&self, a: &AttemptId) -> Result<bool, LedgerError> {
        let held: Option<bool> = sqlx::query_scalar(
            "SELECT lease_expires > now() FROM jobs
             WHERE id = $1 AND attempts = $2 AND cell_id = $3 AND state = 'running'",
        )
        .bind(&a.job_id)
        .bind(a.attempt)
        .bind(&a.cell_id)
        .fetch_optional(&self.pool)
        .await?
        .flatten();
        Ok(held == Some(true))
    }

    /// Commits a success with its result message (the outbox), which this cell alone
    /// may publish for `claim`; nothing is written if this attempt no longer holds the
    /// job. A part of a chunked title commits holding its title's row, and the commit
    /// of the title's last part sets the title `queued` to be assembled: of two parts
    /// committed at once, the second to take the title's row sees the first's commit,
    /// so exactly one of them hands the title on. A part's result is the title's own
    /// business and is not published.
    pub async fn succeed(
        &self,
        a: &AttemptId,
        result: &ResultMessage,
        claim: Duration,
    ) -> Result<Committed, LedgerError> {
        let mut tx = self.pool.begin().await?;
        let parent = titles::lock_parent(&mut tx, &a.job_id).await?;
        let done = sqlx::query(
            "UPDATE jobs SET state = 'succeeded', error = NULL, outputs = $4, result = $5,
                    result_sent = parent IS NOT NULL, lease_expires = NULL,
                    updated_at = now(), finished_at = now(),
                    result_claimed_until = now() + make_interval(secs => $6)
             WHERE id = $1 AND attempts = $2 AND cell_id = $3 AND state = 'running'",
        )
        .bind(&a.job_id)
        .bind(a.attempt)
        .bind(&a.cell_id)
        .bind(sqlx::types::Json(&result.outputs))
        .bind(sqlx::types::Json(result))
        .bind(claim.as_secs_f64())
        .execute(&mut *tx)
        .await?;
        let held = done.rows_affected() == 1;
        let outcome = if held {
            AttemptOutcome::Succeeded
        } else {
            AttemptOutcome::Superseded
        };
        close_attempt(&mut tx, &a.job_id, a.attempt, outcome, None).await?;
        let assemble = match (&parent, held) {
            (Some(title), true) => titles::ready_to_assemble(&mut tx, title).await?,
            _ => None,
        };
        tx.commit().await?;
        Ok(Committed { held, assemble })
    }

    pub async fn result_sent(&self, job_id: &str) -> Result<(), LedgerError> {
        sqlx::query("UPDATE jobs SET result_sent = true WHERE id = $1")
            .bind(job_id)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Claims, for `claim`, up to 100 committed results not yet published whose last
    /// claim ran out (their cell died, or gave up publishing through an outage), and
    /// returns them to be published by the caller.
    pub async fn claim_unsent_results(
        &self,
        claim: Duration,
    ) -> Result<Vec<ResultMessage>, LedgerError> {
        let rows: Vec<sqlx::types::Json<ResultMessage>> = sqlx::query_scalar(
            "UPDATE jobs SET result_claimed_until = now() + make_interval(secs => $1)
             WHERE id IN (
                 SELECT id FROM jobs
                 WHERE state = 'succeeded' AND NOT result_sent AND result IS NOT NULL
                   AND coalesce(result_claimed_until, finished_at) < now()
                 LIMIT 100 FOR UPDATE SKIP LOCKED)
             RETURNING result",
        )
        .bind(claim.as_secs_f64())
        .fetch_all(&self.pool)
        .await?;
        Ok(rows.into_iter().map(|r| r.0).collect())
    }

    /// Ends the job as `failed` (permanent) or `dead` (attempts spent).
    pub async fn fail(
        &self,
        a: &AttemptId,
        state: JobState,
        error: &str,
    ) -> Result<bool, LedgerError> {
        debug_assert!(state.is_final(), "a failure ends the job");
        self.end_failed(a, state, AttemptOutcome::Failed, error)
            .await
    }

    /// Puts the job back to `queued` after a retryable failure; the attempt counts.
    pub async fn retry(&self, a: &AttemptId, error: &str) -> Result<bool, LedgerError> {
        self.end_failed(a, JobState::Queued, AttemptOutcome::Retry, error)
            .await
    }

    /// Hands the job back without spending an attempt; the attempt ends as `outcome`
    /// (`handed_back` on a stop, `interrupted` on a spot notice, `fault` when the farm's
    /// own systems failed).
    pub async fn hand_back(
        &self,
        a: &AttemptId,
        outcome: AttemptOutcome,
        reason: &str,
    ) -> Result<bool, LedgerError> {
        let (job_id, attempt, cell_id) = (&a.job_id, a.attempt, &a.cell_id);
        let mut tx = self.pool.begin().await?;
        let done = sqlx::query(
            "UPDATE jobs SET state = 'queued', attempts = attempts - 1, cell_id = NULL,
                    lease_expires = NULL, updated_at = now()
             WHERE id = $1 AND attempts = $2 AND cell_id = $3 AND state = 'running'",
        )
        .bind(job_id)
        .bind(attempt)
        .bind(cell_id)
        .execute(&mut *tx)
        .await?;
        if done.rows_affected() == 1 {
            close_attempt(&mut tx, job_id, attempt, outcome, Some(reason)).await?;
        }
        tx.commit().await?;
        Ok(done.rows_affected() == 1)
    }

    /// How long the job has been failing for the farm's faults: seconds since the first
    /// attempt that ended in `fault` began (this attempt's start when none did), and how
    /// many did.
    pub async fn fault_history(&self, a: &AttemptId) -> Result<(f64, i64), LedgerError> {
        let row = sqlx::query(
            "SELECT COALESCE(EXTRACT(EPOCH FROM now() - min(started_at))::float8, 0) AS secs,
                    count(*) FILTER (WHERE outcome = 'fault') AS faults
             FROM job_attempts
             WHERE job_id = $1
               AND (outcome = 'fault' OR (attempt = $2 AND cell_id = $3 AND finished_at IS NULL))",
        )
        .bind(&a.job_id)
        .bind(a.attempt)
        .bind(&a.cell_id)
        .fetch_one(&self.pool)
        .await?;
        Ok((row.get("secs"), row.get("faults")))
    }

    /// Ends a failed attempt in `state` (`queued` to retry, `failed`, `dead`).
    async fn end_failed(
        &self,
        a: &AttemptId,
        state: JobState,
        outcome: AttemptOutcome,
        error: &str,
    ) -> Result<bool, LedgerError> {
        let (job_id, attempt, cell_id) = (&a.job_id, a.attempt, &a.cell_id);
        let mut tx = self.pool.begin().await?;
        let parent = titles::lock_parent(&mut tx, job_id).await?;
        let done = sqlx::query(
            "UPDATE jobs SET state = $4, error = $5,
                    cell_id = CASE WHEN $4 = 'queued' THEN NULL ELSE cell_id END,
                    lease_expires = NULL, updated_at = now(),
                    finished_at = CASE WHEN $4 = 'queued' THEN NULL ELSE now() END
             WHERE id = $1 AND attempts = $2 AND cell_id = $3 AND state = 'running'",
        )
        .bind(job_id)
        .bind(attempt)
        .bind(cell_id)
        .bind(state.as_str())
        .bind(error)
        .execute(&mut *tx)
        .await?;
        let held = done.rows_affected() == 1;
        let outcome = if held {
            outcome
        } else {
            AttemptOutcome::Superseded
        };
        close_attempt(&mut tx, job_id, attempt, outcome, Some(error)).await?;
        if let (Some(title), true) = (&parent, held && state.is_final()) {
            titles::fail_title(&mut tx, title, job_id, state, error).await?;
        }
        tx.commit().await?;
        Ok(held)
    }

    /// Extends the leases of the jobs `cell_id` is running (`job_ids`); called each
    /// heartbeat. A job the cell has let go of keeps its old lease and runs out.
    pub async fn renew(
        &self,
        cell_id: &str,
        job_ids: &[String],
        lease: Duration,
    ) -> Result<u64, LedgerError> {
        if job_ids.is_empty() {
            return Ok(0);
        }
        let done = sqlx::query(
            "UPDATE jobs SET lease_expires = now() + make_interval(secs => $3)
             WHERE cell_id = $1 AND id = ANY($2) AND state = 'running'",
        )
        .bind(cell_id)
        .bind(job_ids)
        .bind(lease.as_secs_f64())
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected())
    }

    /// Jobs whose lease ran out (their cell died or was cut off), with their pools.
    /// The caller re-publishes each, then calls [`Ledger::requeue_expired`]: publishing
    /// first means a failed publish leaves the job expired, to be tried again.
    pub async fn expired(&self) -> Result<Vec<(JobMessage, String)>, LedgerError> {
        let rows = sqlx::query(
            "SELECT message, pool FROM jobs
             WHERE state = 'running' AND lease_expires < now() LIMIT 100",
        )
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .into_iter()
            .map(|row| {
                let message: sqlx::types::Json<JobMessage> = row.get("message");
                (message.0, row.get("pool"))
            })
            .collect())
    }

    /// Puts a job whose lease ran out back to `queued`, closing its lost attempt; false if
    /// another cell did it first or the holder came back.
    pub async fn requeue_expired(&self, job_id: &str) -> Result<bool, LedgerError> {
        let mut tx = self.pool.begin().await?;
        let attempts: Option<i32> = sqlx::query_scalar(
            "UPDATE jobs SET state = 'queued', cell_id = NULL, lease_expires = NULL,
                    updated_at = now()
             WHERE id = $1 AND state = 'running' AND lease_expires < now()
             RETURNING attempts",
        )
        .bind(job_id)
        .fetch_optional(&mut *tx)
        .await?;
        if let Some(attempts) = attempts {
            let lost = AttemptOutcome::Lost;
            close_attempt(&mut tx, job_id, attempts, lost, Some("lease expired")).await?;
        }
        tx.commit().await?;
        Ok(attempts.is_some())
    }

    /// What `pool`'s unfinished jobs weigh: per pipeline, the running jobs, the work the
    /// messages estimated (`work_secs`), the probed seconds of source of the others, and
    /// how many have neither. Read from the `pool_load` summary the jobs' own
    /// transactions keep (migration 0008): 16 rows a pipeline, whatever the backlog.
    pub async fn pool_load(&self, pool: &str) -> Result<Vec<PipelineLoad>, LedgerError> {
        let rows = sqlx::query(
            "SELECT pipeline, sum(running)::int8 AS running, sum(queued)::int8 AS queued,
                    sum(estimated_ms)::float8 / 1000 AS estimated,
                    sum(probed_ms)::float8 / 1000 AS probed,
                    sum(unknown)::int8 AS unknown
             FROM pool_load WHERE pool = $1
             GROUP BY pipeline HAVING sum(running) + sum(queued) > 0
             ORDER BY pipeline",
        )
        .bind(pool)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .iter()
            .map(|row| PipelineLoad {
                pipeline: row.get("pipeline"),
                running: row.get::<i64, _>("running").max(0) as u64,
                queued: row.get::<i64, _>("queued").max(0) as u64,
                estimated_secs: row.get("estimated"),
                probed_secs: row.get("probed"),
                unknown: row.get::<i64, _>("unknown").max(0) as u64,
            })
            .collect())
    }

    /// Up to 100 jobs of `pool` that have been `queued`, untouched, for longer than
    /// `older_than`, each with how many times it was re-published for a lost message.
    /// Only meaningful while the pool's queues hold no ready message (see
    /// [`crate::cell`]'s reconciliation).
    pub async fn stale_queued(
        &self,
        pool: &str,
        older_than: Duration,
    ) -> Result<Vec<(JobMessage, i32)>, LedgerError> {
        let rows = sqlx::query(
            "SELECT message, republished FROM jobs
             WHERE pool = $1 AND state = 'queued'
               AND updated_at < now() - make_interval(secs => $2)
             ORDER BY updated_at LIMIT 100",
        )
        .bind(pool)
        .bind(older_than.as_secs_f64())
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .into_iter()
            .map(|row| {
                let message: sqlx::types::Json<JobMessage> = row.get("message");
                (message.0, row.get("republished"))
            })
            .collect())
    }

    /// Ends a job still `queued` as `dead` with `reason` (its message is dead-lettered
    /// or lost for good); false if it is no longer queued.
    pub async fn bury_queued(&self, job_id: &str, reason: &str) -> Result<bool, LedgerError> {
        let done = sqlx::query(
            "UPDATE jobs SET state = 'dead', error = $2, updated_at = now(), finished_at = now()
             WHERE id = $1 AND state = 'queued'",
        )
        .bind(job_id)
        .bind(reason)
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() == 1)
    }

    /// Records that a `queued` job's message was published again because it was in no
    /// queue: one more re-publish, `note` as its error, and a fresh `updated_at`, so that
    /// it is not looked at again before the bound; false if it is no longer queued.
    pub async fn republished(&self, job_id: &str, note: &str) -> Result<bool, LedgerError> {
        let done = sqlx::query(
            "UPDATE jobs SET republished = republished + 1, error = $2, updated_at = now()
             WHERE id = $1 AND state = 'queued'",
        )
        .bind(job_id)
        .bind(note)
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() == 1)
    }

    /// The version of `bucket/key` the trigger last took, and its event sequencer.
    pub async fn seen(
        &self,
        bucket: &str,
        key: &str,
    ) -> Result<Option<(String, Option<String>)>, LedgerError> {
        Ok(sqlx::query_as(
            "SELECT etag, sequencer FROM trigger_objects WHERE bucket = $1 AND key = $2",
        )
        .bind(bucket)
        .bind(key)
        .fetch_optional(&self.pool)
        .await?)
    }

    /// The versions (ETags) of `keys` in `bucket` the trigger has taken, by key: one
    /// query for a listing's page.
    pub async fn seen_many(
        &self,
        bucket: &str,
        keys: &[&str],
    ) -> Result<HashMap<String, String>, LedgerError> {
        let rows: Vec<(String, String)> = sqlx::query_as(
            "SELECT key, etag FROM trigger_objects WHERE bucket = $1 AND key = ANY($2)",
        )
        .bind(bucket)
        .bind(keys)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows.into_iter().collect())
    }

    /// Remembers that the trigger took this version of `bucket/key`.
    pub async fn remember(
        &self,
        bucket: &str,
        key: &str,
        etag: &str,
        sequencer: Option<&str>,
        route: Option<&str>,
    ) -> Result<(), LedgerError> {
        sqlx::query(
            "INSERT INTO trigger_objects (bucket, key, etag, sequencer, route)
             VALUES ($1, $2, $3, $4, $5)
             ON CONFLICT (bucket, key) DO UPDATE
             SET etag = $3, sequencer = coalesce($4, trigger_objects.sequencer), route = $5,
                 seen_at = now()",
        )
        .bind(bucket)
        .bind(key)
        .bind(etag)
        .bind(sequencer)
        .bind(route)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Records a launch, death or interruption.
    pub async fn record_event(
        &self,
        pool: &str,
        kind: EventKind,
        cell_id: &str,
        cells: u32,
        reason: &str,
    ) -> Result<(), LedgerError> {
        sqlx::query(
            "INSERT INTO cell_events (pool, kind, cell_id, cells, reason) VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(pool)
        .bind(kind.as_str())
        .bind(cell_id)
        .bind(cells as i32)
        .bind(reason)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Jobs of `pools` that are queued or running.
    pub async fn unfinished(&self, pools: &[String]) -> Result<i64, LedgerError> {
        Ok(sqlx::query_scalar(
            "SELECT count(*) FROM jobs WHERE pool = ANY($1) AND state IN ('queued', 'running')",
        )
        .bind(pools)
        .fetch_one(&self.pool)
        .await?)
    }

    /// Jobs per (pool, state): [`Ledger::job_counts`] summed over the pipelines.
    pub async fn state_counts(&self) -> Result<Vec<StateCount>, LedgerError> {
        let mut by_state: std::collections::BTreeMap<(String, String), i64> = Default::default();
        for c in self.job_counts().await? {
            *by_state.entry((c.pool, c.state.to_string())).or_default() += c.jobs as i64;
        }
        by_state
            .into_iter()
            .map(|((pool, state), jobs)| {
                Ok(StateCount {
                    pool,
                    state: state.parse()?,
                    jobs,
                })
            })
            .collect()
    }

    pub async fn recent_failures(&self, limit: i64) -> Result<Vec<Failure>, LedgerError> {
        let rows = sqlx::query(
            "SELECT id, pipeline, source_bucket, source_key, state, attempts, error, updated_at
             FROM jobs WHERE error IS NOT NULL ORDER BY updated_at DESC LIMIT $1",
        )
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        rows.into_iter()
            .map(|r| {
                Ok(Failure {
                    job_id: r.get("id"),
                    pipeline: r.get("pipeline"),
                    source: format!(
                        "s3://{}/{}",
                        r.get::<String, _>("source_bucket"),
                        r.get::<String, _>("source_key")
                    ),
                    state: r.get::<String, _>("state").parse()?,
                    attempts: r.get("attempts"),
                    error: r.get("error"),
                    at: r.get("updated_at"),
                })
            })
            .collect()
    }

    /// Up to `limit` jobs that pass `filter`, newest (by submission) first.
    pub async fn jobs(&self, filter: &JobFilter, limit: i64) -> Result<Vec<JobRow>, LedgerError> {
        let (bucket, key) = filter
            .source
            .as_ref()
            .map(|(b, k)| (b.as_str(), k.as_str()))
            .unzip();
        let rows = sqlx::query(
            "SELECT message, pool, state, attempts, error, outputs, created_at, updated_at
             FROM jobs
             WHERE ($1::text IS NULL OR source_bucket = $1)
               AND ($2::text IS NULL OR source_key = $2)
               AND ($3::text IS NULL OR state = $3)
               AND ($4::text IS NULL OR pipeline = $4)
             ORDER BY created_at DESC, id LIMIT $5",
        )
        .bind(bucket)
        .bind(key)
        .bind(filter.state.map(JobState::as_str))
        .bind(filter.pipeline.as_deref())
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        rows.into_iter()
            .map(|r| {
                let message: sqlx::types::Json<JobMessage> = r.get("message");
                let outputs: Option<sqlx::types::Json<Vec<OutputObject>>> = r.get("outputs");
                Ok(JobRow {
                    message: message.0,
                    pool: r.get("pool"),
                    state: r.get::<String, _>("state").parse()?,
                    attempts: r.get("attempts"),
                    error: r.get("error"),
                    outputs: outputs.map(|o| o.0).unwrap_or_default(),
                    created_at: r.get("created_at"),
                    updated_at: r.get("updated_at"),
                })
            })
            .collect()
    }

    /// The connection pool, for tests and `status` queries beyond these.
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }
}

async fn close_attempt(
    tx: &mut sqlx::Transaction<'_, sqlx::Postgres>,
    job_id: &str,
    attempt: i32,
    outcome: AttemptOutcome,
    error: Option<&str>,
) -> Result<(), LedgerError> {
    sqlx::query(
        "UPDATE job_attempts SET finished_at = now(), outcome = $3, error = $4
         WHERE id = (SELECT max(id) FROM job_attempts WHERE job_id = $1 AND attempt = $2)
           AND finished_at IS NULL",
    )
    .bind(job_id)
    .bind(attempt)
    .bind(outcome.as_str())
    .bind(error)
    .execute(&mut **tx)
    .await?;
    Ok(())
}
