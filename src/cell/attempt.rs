//! One delivery's life: an [`Attempt`] owns one claim on one job and every ledger
//! transition of it (claim → probe → holds → succeed | retry | fail | hand back | bury),
//! and ends in one [`Settle`]: what becomes of the delivery, applied in one place by the
//! cell ([`super::Cell::settle`]).
//!
//! The ledger decides before the broker hears: a transition is committed first, then the
//! settle publishes (a retry, a hand-back, a dead letter, a result) and acks. A transition
//! that cannot be recorded returns the delivery to its queue instead.

use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::failure::{class, classify, Attempted, Class, Fate, JobFailure};
use crate::job::{JobMessage, ResultMessage, VERSION};
use crate::ledger::{AttemptId, AttemptOutcome, Claim, JobState, Ledger, LedgerError};

use super::work::{Outcome, Produced};

/// What becomes of a delivery.
#[derive(Debug)]
pub enum Settle {
    /// Acknowledge: the ledger has the outcome, or the delivery was a duplicate.
    Ack,
    /// Return the delivery to its queue: its outcome could not be recorded (the ledger
    /// or the broker is unreachable), so the job is tried again rather than left queued
    /// in the ledger with no message.
    Requeue,
    /// Publish the delivery's body to the pool's dead-letter queue with the reason, then
    /// acknowledge.
    DeadLetter { reason: String, job_id: String },
    /// Publish this job to its lane (a retry, a hand-back), then acknowledge; return the
    /// delivery if the publish fails.
    Republish(JobMessage),
    /// The job committed: publish its result (the ledger's outbox re-sends it if this
    /// fails), then acknowledge.
    Commit(ResultMessage),
    /// The ledger has queued these jobs (a title's parts, or a title to assemble):
    /// publish them to the lane, then acknowledge. A publish that fails leaves its job
    /// queued in the ledger, and the reconciliation publishes it again.
    Spawn(Vec<JobMessage>),
}

impl Settle {
    /// The settle's name, for logs.
    pub fn kind(&self) -> &'static str {
        match self {
            Settle::Ack => "ack",
            Settle::Requeue => "requeue",
            Settle::DeadLetter { .. } => "dead-letter",
            Settle::Republish(_) => "re-publish",
            Settle::Commit(_) => "commit",
            Settle::Spawn(_) => "spawn",
        }
    }
}

/// What an attempt's end needs from its cell.
pub struct Ending<'a> {
    pub max_attempts: u32,
    /// Why a cut-short job goes back: a spot notice (`interrupted`), or else a plain
    /// stop.
    pub notice: Option<&'a str>,
    /// How long this cell alone may publish a committed result: longer than it waits
    /// for the broker, so that the outbox never re-sends a result still being sent.
    pub result_claim: Duration,
    /// `cell.fault_budget_secs`.
    pub fault_budget: Duration,
}

/// The longest wait before a job that met a fault goes back to its queue.
const MAX_FAULT_BACKOFF: Duration = Duration::from_secs(16);

/// Waits 1, 2, 4, … seconds after the job's first, second, third … fault, so that an
/// outage is not hammered by every cell at full speed.
fn fault_backoff(faults: i64) -> Duration {
    let exp = u32::try_from(faults.clamp(0, 8)).unwrap_or(8);
    Duration::from_secs(1u64 << exp).min(MAX_FAULT_BACKOFF)
}

/// One claim on one job by this cell.
pub struct Attempt<'a> {
    pub job: JobMessage,
    pub id: AttemptId,
    ledger: &'a Ledger,
    /// Cuts this attempt alone short (a child of the cell's abort token).
    pub cancel: CancellationToken,
    /// What the ledger already knew of the source when the job was claimed: the
    /// submission's ranged probe, or an earlier attempt's probe.
    pub known_probe: Option<serde_json::Value>,
    /// Set when the job is a chunked title whose parts are all done: the plan to
    /// assemble them by.
    pub plan: Option<serde_json::Value>,
}

impl<'a> Attempt<'a> {
    /// Claims `job` for a new attempt, or says what to do with a delivery that may not
    /// run: a duplicate is acked, a job with every attempt spent is buried and
    /// dead-lettered.
    pub async fn claim(
        ledger: &'a Ledger,
        job: JobMessage,
        pool: &str,
        cell_id: &str,
        lease: Duration,
        max_attempts: u32,
    ) -> Result<Attempt<'a>, Settle> {
        let claim = match ledger.claim(&job, pool, cell_id, lease, max_attempts).await {
            Ok(claim) => claim,
            Err(e) => {
                tracing::warn!(error = %e, "cannot claim; returning the delivery");
                tokio::time::sleep(Duration::from_secs(1)).await;
                return Err(Settle::Requeue);
            }
        };
        match claim {
            Claim::Run {
                attempt,
                probe,
                plan,
            } => Ok(Attempt {
                id: AttemptId {
                    job_id: job.job_id.clone(),
                    attempt,
                    cell_id: cell_id.into(),
                },
                job,
                ledger,
                cancel: CancellationToken::new(),
                known_probe: probe,
                plan,
            }),
            Claim::Waiting => {
                tracing::info!("duplicate delivery of a title waiting for its parts; dropping");
                Err(Settle::Ack)
            }
            Claim::Finished { state } => {
                tracing::info!(%state, "duplicate delivery of a finished job; dropping");
                Err(Settle::Ack)
            }
            Claim::HeldElsewhere { cell_id } => {
                tracing::info!(holder = %cell_id, "another cell holds the job; dropping the duplicate");
                Err(Settle::Ack)
            }
            Claim::Exhausted { attempts, error } => {
                let reason = format!("gave up after {attempts} attempts: {error}");
                tracing::warn!(%reason, "dead-lettering");
                if let Err(e) = ledger.bury(&job.job_id, &reason).await {
                    tracing::warn!(error = %e, "cannot mark the job dead");
                    return Err(Settle::Requeue);
                }
                Err(Settle::DeadLetter {
                    reason,
                    job_id: job.job_id,
                })
            }
        }
    }

    /// Records what the source is (its probe), for status and the work estimate.
    pub async fn record_probe(&self, probe: &serde_json::Value) -> Result<(), LedgerError> {
        self.ledger.record_probe(&self.id.job_id, probe).await
    }

    /// The parts of the chunked title this attempt assembles.
    pub async fn parts(&self) -> Result<Vec<crate::ledger::PartRow>, LedgerError> {
        self.ledger.parts(&self.id.job_id).await
    }

    /// True while this attempt still holds the job: checked before anything is uploaded.
    pub async fn holds(&self) -> Result<bool, LedgerError> {
        self.ledger.holds(&self.id).await
    }

    /// Ends the attempt with what it produced: commits a success, or records the
    /// failure's fate.
    pub async fn end(self, produced: Result<Outcome, JobFailure>, ending: Ending<'_>) -> Settle {
        let settle = match produced {
            Ok(Outcome::Made(produced)) => self.succeed(*produced, ending.result_claim).await,
            Ok(Outcome::Split { plan, parts }) => self.split(&plan, parts).await,
            Ok(Outcome::Redo { parts, reason }) => self.redo(&parts, &reason).await,
            Err(failure) => {
                let cut_short = self.cancel.is_cancelled();
                // Only a fault needs its history; a ledger that cannot tell is itself
                // a fault, and the hand-back that follows will meet it again.
                let (faulting_secs, faults) = if class(&failure) == Class::Fault && !cut_short {
                    self.ledger
                        .fault_history(&self.id)
                        .await
                        .unwrap_or((0.0, 0))
                } else {
                    (0.0, 0)
                };
                let at = Attempted {
                    number: self.id.attempt as u32,
                    max_attempts: ending.max_attempts,
                    cut_short,
                    faulting_secs,
                    fault_budget_secs: ending.fault_budget.as_secs_f64(),
                };
                let fate = classify(&failure, at);
                self.fail(fate, failure, ending.notice, faults).await
            }
        };
        settle.unwrap_or_else(|e| {
            // If the ledger still shows this attempt running, its lease (no longer
            // renewed) runs out before the returned delivery is claimed again.
            tracing::warn!(error = %e, "cannot record the outcome; returning the delivery");
            Settle::Requeue
        })
    }

    async fn succeed(&self, produced: Produced, claim: Duration) -> Result<Settle, LedgerError> {
        let result = ResultMessage {
            v: VERSION,
            job_id: self.job.job_id.clone(),
            pipeline: self.job.pipeline.clone(),
            source: self.job.source.clone(),
            outputs: produced.outputs,
            manifest: produced.manifest,
            attempt: self.id.attempt as u32,
            cell_id: self.id.cell_id.clone(),
            warnings: produced.warnings,
            defects: produced.reports,
            chunk: produced.chunk.map(Box::new),
        };
        let committed = self.ledger.succeed(&self.id, &result, claim).await?;
        if !committed.held {
            tracing::warn!("the job was taken over before commit; nothing committed");
            return Ok(Settle::Ack);
        }
        tracing::info!(
            attempt = self.id.attempt,
            outputs = result.outputs.len(),
            "job succeeded"
        );
        if self.job.part.is_none() {
            return Ok(Settle::Commit(result));
        }
        // A part's result is its title's: the title's last part hands it on.
        if committed.assemble.is_some() {
            tracing::info!("the title's last part: the title goes to be assembled");
        }
        Ok(Settle::Spawn(committed.assemble.into_iter().collect()))
    }

    /// Records the title's split and publishes its parts.
    async fn split(
        &self,
        plan: &crate::chunk::Plan,
        parts: Vec<JobMessage>,
    ) -> Result<Settle, LedgerError> {
        let json = serde_json::to_value(plan).expect("a plan always serializes");
        let committed = self.ledger.split(&self.id, &json, &parts).await?;
        if !committed.held {
            tracing::warn!("the title was taken over before its split was recorded");
            return Ok(Settle::Ack);
        }
        tracing::info!(
            chunks = plan.chunks.len(),
            parts = parts.len(),
            "title split"
        );
        if let Some(title) = committed.assemble {
            tracing::info!("every part was made before: the title goes to be assembled");
            return Ok(Settle::Spawn(vec![title]));
        }
        Ok(Settle::Spawn(parts))
    }

    /// Sends the parts an assembly found wanting back to be made again.
    async fn redo(&self, parts: &[String], reason: &str) -> Result<Settle, LedgerError> {
        let Some(again) = self.ledger.redo(&self.id, parts, reason).await? else {
            tracing::warn!("the title was taken over before its assembly ended");
            return Ok(Settle::Ack);
        };
        tracing::warn!(
            reason,
            parts = again.len(),
            "assembly sends parts back to be made again"
        );
        Ok(Settle::Spawn(again))
    }

    async fn fail(
        &self,
        fate: Fate,
        failure: JobFailure,
        notice: Option<&str>,
        faults: i64,
    ) -> Result<Settle, LedgerError> {
        let attempt = self.id.attempt;
        let error = failure.to_string();
        let (held, settle) = match fate {
            Fate::Superseded => {
                tracing::warn!("another attempt took the job over; this one commits nothing");
                return Ok(Settle::Ack);
            }
            Fate::HandBack => {
                let (outcome, reason) = match notice {
                    Some(reason) => (AttemptOutcome::Interrupted, reason),
                    None => (AttemptOutcome::HandedBack, "the cell is stopping"),
                };
                tracing::info!(%outcome, reason, %error, "handing the job back");
                let held = self.ledger.hand_back(&self.id, outcome, reason).await?;
                (held, Settle::Republish(self.job.clone()))
            }
            Fate::Fault => {
                let wait = fault_backoff(faults);
                tracing::warn!(%error, wait_secs = wait.as_secs(), "the farm's systems failed; handing the job back without spending an attempt");
                let held = self
                    .ledger
                    .hand_back(&self.id, AttemptOutcome::Fault, &error)
                    .await?;
                // The delivery is still unacknowledged: a cell that dies while waiting
                // leaves it to the broker to deliver again.
                tokio::time::sleep(wait).await;
                (held, Settle::Republish(self.job.clone()))
            }
            Fate::Retry => {
                tracing::warn!(attempt, %error, "retryable failure; re-queueing");
                let held = self.ledger.retry(&self.id, &error).await?;
                let mut next = self.job.clone();
                next.attempt = attempt as u32 + 1;
                (held, Settle::Republish(next))
            }
            Fate::Fail | Fate::Dead => {
                let (state, reason) = match fate {
                    Fate::Fail => (JobState::Failed, error),
                    _ if faults > 0 || class(&failure) == Class::Fault => (
                        JobState::Dead,
                        format!("gave up after the farm's systems failed for longer than cell.fault_budget_secs: {error}"),
                    ),
                    _ => (
                        JobState::Dead,
                        format!("gave up after {attempt} attempts: {error}"),
                    ),
                };
                tracing::warn!(attempt, %state, %reason, "job failed; dead-lettering");
                let held = self.ledger.fail(&self.id, state, &reason).await?;
                let job_id = self.id.job_id.clone();
                (held, Settle::DeadLetter { reason, job_id })
            }
        };
        // An attempt that no longer holds the job leaves it to the one that does.
        Ok(if held { settle } else { Settle::Ack })
    }
}
