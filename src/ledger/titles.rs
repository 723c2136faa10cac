//! Chunked titles in the ledger (see [`crate::chunk`]): a title's split records its
//! parts as child rows, the last part's commit hands the title on to be assembled, and
//! an assembly that finds a bad chunk sends that chunk alone back.

use serde_json::Value;
use sqlx::Row;

use super::{close_attempt, AttemptId, AttemptOutcome, JobState, Ledger, LedgerError};
use crate::job::{JobMessage, ResultMessage};

type Tx<'a> = sqlx::Transaction<'a, sqlx::Postgres>;

/// What a commit did.
#[derive(Debug, Clone, PartialEq)]
pub struct Committed {
    /// False when another attempt held the job: nothing was written.
    pub held: bool,
    /// The title this commit made ready to assemble (it was its last part): its
    /// message, to publish.
    pub assemble: Option<JobMessage>,
}

/// One part of a title as the ledger holds it.
#[derive(Debug, Clone)]
pub struct PartRow {
    pub message: JobMessage,
    pub state: JobState,
    /// The committed result, once the part has succeeded.
    pub result: Option<ResultMessage>,
}

/// Locks the row of `job_id`'s title, if the job is a part of one, before the part's
/// own row changes: every transition of a title's parts is thereby serialized on the
/// title, and each one sees the parts committed before it.
pub(super) async fn lock_parent(
    tx: &mut Tx<'_>,
    job_id: &str,
) -> Result<Option<String>, LedgerError> {
    let parent: Option<String> = sqlx::query_scalar("SELECT parent FROM jobs WHERE id = $1")
        .bind(job_id)
        .fetch_optional(&mut **tx)
        .await?
        .flatten();
    if let Some(title) = &parent {
        sqlx::query("SELECT 1 FROM jobs WHERE id = $1 FOR UPDATE")
            .bind(title)
            .execute(&mut **tx)
            .await?;
    }
    Ok(parent)
}

/// Sets `title` `queued` to be assembled if it waits and every part has succeeded;
/// returns its message. The caller holds the title's row ([`lock_parent`]).
pub(super) async fn ready_to_assemble(
    tx: &mut Tx<'_>,
    title: &str,
) -> Result<Option<JobMessage>, LedgerError> {
    let message: Option<sqlx::types::Json<JobMessage>> = sqlx::query_scalar(
        "UPDATE jobs AS t SET state = 'queued', assemble = true, updated_at = now()
         WHERE t.id = $1 AND t.state = 'waiting'
           AND NOT EXISTS (SELECT 1 FROM jobs AS p
                           WHERE p.parent = t.id AND p.state <> 'succeeded')
         RETURNING message",
    )
    .bind(title)
    .fetch_optional(&mut **tx)
    .await?;
    Ok(message.map(|m| m.0))
}

/// Ends `title` in `state` because its part `part` did, and the parts not yet started
/// with it: a title is only worth its every part.
pub(super) async fn fail_title(
    tx: &mut Tx<'_>,
    title: &str,
    part: &str,
    state: JobState,
    error: &str,
) -> Result<(), LedgerError> {
    let tag: Option<String> =
        sqlx::query_scalar("SELECT message->'part'->>'kind' FROM jobs WHERE id = $1")
            .bind(part)
            .fetch_one(&mut **tx)
            .await?;
    let reason = format!(
        "its {} part {part} failed: {error}",
        tag.unwrap_or_default()
    );
    sqlx::query(
        "UPDATE jobs SET state = $2, error = $3, updated_at = now(), finished_at = now()
         WHERE id = $1 AND state = 'waiting'",
    )
    .bind(title)
    .bind(state.as_str())
    .bind(&reason)
    .execute(&mut **tx)
    .await?;
    sqlx::query(
        "UPDATE jobs SET state = $2, error = 'its title failed', updated_at = now(),
                finished_at = now()
         WHERE parent = $1 AND state = 'queued'",
    )
    .bind(title)
    .bind(state.as_str())
    .execute(&mut **tx)
    .await?;
    Ok(())
}

impl Ledger {
    /// Records a title's split: its `plan`, and one `queued` row per part (`parts`, the
    /// title's probe copied to each), in the transaction that sets the title `waiting`
    /// (no lease: nothing runs it until its last part commits). The split attempt does
    /// not count against the title's attempts, which are its assembly's.
    ///
    /// A title split again (retried after it failed) keeps the parts it already made
    /// that the new split asks for unchanged; the others are made again, and parts of
    /// the old plan the new one lacks are forgotten. When every part is already done,
    /// the title goes straight to its assembly (`assemble`). Nothing is written, and
    /// `held` is false, if this attempt no longer holds the title.
    pub async fn split(
        &self,
        a: &AttemptId,
        plan: &Value,
        parts: &[JobMessage],
    ) -> Result<Committed, LedgerError> {
        let mut tx = self.pool.begin().await?;
        let done = sqlx::query(
            "UPDATE jobs SET state = 'waiting', plan = $4, assemble = false, attempts = 0,
                    cell_id = NULL, lease_expires = NULL, updated_at = now()
             WHERE id = $1 AND attempts = $2 AND cell_id = $3 AND state = 'running'",
        )
        .bind(&a.job_id)
        .bind(a.attempt)
        .bind(&a.cell_id)
        .bind(plan)
        .execute(&mut *tx)
        .await?;
        let held = done.rows_affected() == 1;
        let outcome = if held {
            AttemptOutcome::Split
        } else {
            AttemptOutcome::Superseded
        };
        close_attempt(&mut tx, &a.job_id, a.attempt, outcome, None).await?;
        let mut assemble = None;
        if held {
            let ids: Vec<&str> = parts.iter().map(|p| p.job_id.as_str()).collect();
            sqlx::query("DELETE FROM jobs WHERE parent = $1 AND NOT (id = ANY($2))")
                .bind(&a.job_id)
                .bind(&ids)
                .execute(&mut *tx)
                .await?;
            let messages: Vec<Value> = parts
                .iter()
                .map(|p| serde_json::to_value(p).expect("a job message always serializes"))
                .collect();
            sqlx::query(
                "INSERT INTO jobs (id, pipeline, pool, source_bucket, source_key, source_etag,
                                   message, probe, parent)
                 SELECT p.id, t.pipeline, t.pool, t.source_bucket, t.source_key,
                        t.source_etag, p.message, t.probe, t.id
                 FROM unnest($2::text[], $3::jsonb[]) AS p(id, message), jobs AS t
                 WHERE t.id = $1
                 ON CONFLICT (id) DO UPDATE SET
                     state = 'queued', attempts = 0, republished = 0, error = NULL,
                     outputs = NULL, result = NULL, result_sent = false, cell_id = NULL,
                     lease_expires = NULL, finished_at = NULL, updated_at = now(),
                     message = EXCLUDED.message, parent = EXCLUDED.parent
                 WHERE jobs.state <> 'succeeded' OR jobs.message <> EXCLUDED.message",
            )
            .bind(&a.job_id)
            .bind(&ids)
            .bind(&messages)
            .execute(&mut *tx)
            .await?;
            assemble = ready_to_assemble(&mut tx, &a.job_id).await?;
        }
        tx.commit().await?;
        Ok(Committed { held, assemble })
    }

    /// A title's parts, chunks in order and then the audio.
    pub async fn parts(&self, title: &str) -> Result<Vec<PartRow>, LedgerError> {
        let rows = sqlx::query(
            "SELECT message, state, result FROM jobs WHERE parent = $1
             ORDER BY (message->'part'->>'index')::int NULLS LAST",
        )
        .bind(title)
        .fetch_all(&self.pool)
        .await?;
        rows.into_iter()
            .map(|r| {
                let message: sqlx::types::Json<JobMessage> = r.get("message");
                let result: Option<sqlx::types::Json<ResultMessage>> = r.get("result");
                Ok(PartRow {
                    message: message.0,
                    state: r.get::<String, _>("state").parse()?,
                    result: result.map(|r| r.0),
                })
            })
            .collect()
    }

    /// Sends the parts `part_ids` of the title this assembly attempt holds back to be
    /// made again, because `reason`, and sets the title `waiting` for them; the
    /// assembly attempt counts. Returns the parts' messages to publish, or None, and
    /// nothing written, if this attempt no longer holds the title.
    pub async fn redo(
        &self,
        a: &AttemptId,
        part_ids: &[String],
        reason: &str,
    ) -> Result<Option<Vec<JobMessage>>, LedgerError> {
        let mut tx = self.pool.begin().await?;
        let done = sqlx::query(
            "UPDATE jobs SET state = 'waiting', assemble = false, error = $4,
                    cell_id = NULL, lease_expires = NULL, updated_at = now()
             WHERE id = $1 AND attempts = $2 AND cell_id = $3 AND state = 'running'",
        )
        .bind(&a.job_id)
        .bind(a.attempt)
        .bind(&a.cell_id)
        .bind(reason)
        .execute(&mut *tx)
        .await?;
        let held = done.rows_affected() == 1;
        let outcome = if held {
            AttemptOutcome::Redo
        } else {
            AttemptOutcome::Superseded
        };
        close_attempt(&mut tx, &a.job_id, a.attempt, outcome, Some(reason)).await?;
        let mut messages = None;
        if held {
            let again: Vec<sqlx::types::Json<JobMessage>> = sqlx::query_scalar(
                "UPDATE jobs SET state = 'queued', attempts = 0, error = $3, outputs = NULL,
                        result = NULL, finished_at = NULL, updated_at = now()
                 WHERE parent = $1 AND id = ANY($2) AND state = 'succeeded'
                 RETURNING message",
            )
            .bind(&a.job_id)
            .bind(part_ids)
            .bind(reason)
            .fetch_all(&mut *tx)
            .await?;
            messages = Some(again.into_iter().map(|m| m.0).collect());
        }
        tx.commit().await?;
        Ok(messages)
    }
}
