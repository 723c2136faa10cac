//! Jobs by hand: `cellfarm cancel` ends a queued or running job as `cancelled`, the
//! cell running it sees that on its next beat and stops it; `cellfarm retry` queues a
//! failed, dead or cancelled job again with fresh attempts.

use sqlx::Row;

use super::{AttemptOutcome, JobState, Ledger, LedgerError};
use crate::job::JobMessage;

/// What `cancel` found.
#[derive(Debug, Clone, PartialEq)]
pub enum Cancel {
    /// Cancelled; it was in this state (queued, or running on that cell).
    Cancelled {
        was: JobState,
        cell_id: Option<String>,
    },
    /// Already over: nothing changed.
    Over(JobState),
    /// No job has this id.
    Unknown,
}

/// The states `retry` takes a job from.
const RETRYABLE: &[&str] = &["failed", "dead", "cancelled"];

impl Ledger {
    /// Ends a queued or running job as `cancelled`, with its open attempt. Its message,
    /// if still queued, is dropped as a duplicate of a finished job when delivered; a
    /// cell running it stops it on its next beat ([`Ledger::cancelled_among`]), and its
    /// attempt can commit nothing, since the job is no longer `running`.
    pub async fn cancel(&self, job_id: &str) -> Result<Cancel, LedgerError> {
        let mut tx = self.pool.begin().await?;
        let row = sqlx::query("SELECT state, attempts, cell_id FROM jobs WHERE id = $1 FOR UPDATE")
            .bind(job_id)
            .fetch_optional(&mut *tx)
            .await?;
        let Some(row) = row else {
            return Ok(Cancel::Unknown);
        };
        let was: JobState = row.get::<String, _>("state").parse()?;
        if was.is_final() {
            return Ok(Cancel::Over(was));
        }
        let cell_id: Option<String> = row.get("cell_id");
        sqlx::query(
            "UPDATE jobs SET state = 'cancelled', error = 'cancelled by hand',
                    lease_expires = NULL, updated_at = now(), finished_at = now()
             WHERE id = $1",
        )
        .bind(job_id)
        .execute(&mut *tx)
        .await?;
        sqlx::query(
            "UPDATE job_attempts SET finished_at = now(), outcome = $2, error = 'cancelled by hand'
             WHERE job_id = $1 AND finished_at IS NULL",
        )
        .bind(job_id)
        .bind(AttemptOutcome::Cancelled.as_str())
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(Cancel::Cancelled { was, cell_id })
    }

    /// Of the jobs `cell_id` runs (`job_ids`), those cancelled by hand since it claimed
    /// them.
    pub async fn cancelled_among(
        &self,
        cell_id: &str,
        job_ids: &[String],
    ) -> Result<Vec<String>, LedgerError> {
        if job_ids.is_empty() {
            return Ok(Vec::new());
        }
        Ok(sqlx::query_scalar(
            "SELECT id FROM jobs WHERE id = ANY($1) AND cell_id = $2 AND state = 'cancelled'",
        )
        .bind(job_ids)
        .bind(cell_id)
        .fetch_all(&self.pool)
        .await?)
    }

    /// Queues a failed, dead or cancelled job again with fresh attempts, and returns its
    /// message and pool for the caller to publish; `Err(state)` names the state of a
    /// job that cannot be retried (`None`: no such job).
    pub async fn reopen(
        &self,
        job_id: &str,
    ) -> Result<Result<(JobMessage, String), Option<JobState>>, LedgerError> {
        let row = sqlx::query(
            "UPDATE jobs SET state = 'queued', attempts = 0, republished = 0, error = NULL,
                    outputs = NULL, result = NULL, result_sent = false,
                    cell_id = NULL, lease_expires = NULL, finished_at = NULL,
                    updated_at = now()
             WHERE id = $1 AND state = ANY($2)
             RETURNING message, pool",
        )
        .bind(job_id)
        .bind(RETRYABLE)
        .fetch_optional(&self.pool)
        .await?;
        if let Some(row) = row {
            let message: sqlx::types::Json<JobMessage> = row.get("message");
            return Ok(Ok((message.0, row.get("pool"))));
        }
        let state: Option<String> = sqlx::query_scalar("SELECT state FROM jobs WHERE id = $1")
            .bind(job_id)
            .fetch_optional(&self.pool)
            .await?;
        Ok(Err(state.map(|s| s.parse()).transpose()?))
    }
}
