//! Reconciling the ledger with the queues: a job row in `queued` whose message is in no
//! queue of its pool. Without this, a message the broker dead-lettered by itself (at the
//! queue's delivery limit) or lost (a purged queue, a `submit` killed between its row and
//! its publish) would leave a row that keeps a cell alive (mitosis counts queued rows)
//! and a `cell --until-idle` running, forever.
//!
//! For each pool, one cell per lease period (a lock per pool, held until it expires, so
//! that a farm of many cells does not repeat the pass every heartbeat) looks at the
//! jobs queued and untouched for longer than a lease, and only while the pool's queues
//! hold no ready message. A cell holds no message it has not started (see
//! [`super::session`]), so the pool's messages are then all running jobs' — and a queued
//! row has no message, except in the moment between a cell taking it and claiming the
//! row, or on an older cell that still prefetches. For each such job:
//! * its message is in the pool's dead-letter queue (the first [`DEAD_SCAN`] messages,
//!   looked at and left in place): the job is marked `dead` with the dead letter's
//!   reason (the broker's `x-death`, or a cell's `x-cellfarm-reason`);
//! * otherwise its message is published again from the ledger, and the re-publish
//!   recorded in the row (`error`, and a count); after [`MAX_REPUBLISHES`] the job is
//!   marked `dead` instead, so a job whose message keeps vanishing ends.
//!
//! A re-published copy of a job whose message was not lost after all is harmless: the
//! ledger's claim runs a job once at a time and drops a delivery of a job that is
//! running elsewhere or has ended.

use std::time::Duration;

use super::Cell;
use crate::queue::{self, Publisher};

/// Re-publishes of a job's lost message before it is marked dead instead.
const MAX_REPUBLISHES: i32 = 3;
/// Messages of a dead-letter queue looked at for queued jobs, from its head. A job whose
/// dead letter lies deeper is re-published instead (and ends as above if it keeps
/// being dead-lettered).
const DEAD_SCAN: usize = 1000;

impl Cell {
    /// Reconciles the queued jobs of each pool this cell serves (see the module's doc).
    pub(super) async fn reconcile(&self) {
        let Some(publisher) = self.publisher.read().await.clone() else {
            return;
        };
        for pool in &self.pools {
            if let Err(e) = self.reconcile_pool(pool, &publisher).await {
                tracing::warn!(
                    pool,
                    error = format!("{e:#}"),
                    "cannot reconcile queued jobs"
                );
            }
        }
    }

    /// One pass over `pool`, unless another cell made one within the last lease: the
    /// lock is left to expire, which spaces passes a lease apart across the farm (a
    /// queued job is only looked at once it is a lease old anyway). A pass that runs
    /// longer than that may overlap the next, which is harmless: a re-published
    /// duplicate is dropped by the ledger's claim.
    async fn reconcile_pool(&self, pool: &str, publisher: &Publisher) -> anyhow::Result<()> {
        let period_ms = self.config().cell.lease_secs.saturating_mul(1000);
        let taken = self
            .systems
            .locks
            .try_lock(&format!("reconcile:{pool}"), period_ms)
            .await?;
        if taken.is_none() {
            return Ok(());
        }
        self.reconcile_locked(pool, publisher).await
    }

    async fn reconcile_locked(&self, pool: &str, publisher: &Publisher) -> anyhow::Result<()> {
        let channel = publisher.channel();
        if queue::pool_ready(channel, &self.names, pool).await? > 0 {
            return Ok(());
        }
        let bound = Duration::from_secs(self.config().cell.lease_secs);
        let ledger = &self.systems.ledger;
        let stale = ledger.stale_queued(pool, bound).await?;
        if stale.is_empty() {
            return Ok(());
        }
        let dead = queue::browse(channel, &self.names.dead(pool), DEAD_SCAN).await?;
        for (job, republished) in stale {
            let id = &job.job_id;
            if let Some(letter) = dead.iter().find(|d| &d.job_id == id) {
                let reason = format!("its message was dead-lettered: {}", letter.reason);
                if ledger.bury_queued(id, &reason).await? {
                    tracing::warn!(pool, job = %id, %reason, "reconciled: a queued job is dead");
                }
            } else if republished >= MAX_REPUBLISHES {
                let reason = format!(
                    "its message was in no queue of pool {pool} after {republished} re-publishes"
                );
                if ledger.bury_queued(id, &reason).await? {
                    tracing::warn!(pool, job = %id, %reason, "reconciled: a queued job is dead");
                }
            } else {
                let lane = self.names.lane(pool, job.priority);
                self.publish(&lane, &job.to_json(), &[], Duration::ZERO)
                    .await?;
                let note = format!(
                    "re-published ({} of {MAX_REPUBLISHES}): queued for over {} s with its \
                     message in no queue of pool {pool}",
                    republished + 1,
                    bound.as_secs()
                );
                if ledger.republished(id, &note).await? {
                    tracing::warn!(pool, job = %id, %note, "reconciled: a lost message");
                }
            }
        }
        Ok(())
    }
}
