//! Spot notices: the cell polls instance metadata and leaves before its machine is
//! reclaimed, losing nothing.
//!
//! An interruption notice (`spot/instance-action`) comes about two minutes ahead. The
//! cell stops consuming, hands back at once every job that cannot finish before the
//! reclaim less `cloud.interruption_margin_secs` (a job not yet probed has no estimate
//! and counts as one that cannot), lets the others run until that margin, then cuts
//! whatever is left short. Handed-back jobs go back to `queued` without spending an
//! attempt, their attempt ends `interrupted`, and nothing is uploaded after the cut: the
//! upload comes after the last ledger check, and a cut attempt commits nothing.
//!
//! A rebalance recommendation comes earlier and promises nothing: the cell stops taking
//! new jobs, finishes the ones it has, and leaves. Either way the cell stops counting as
//! alive, and a last mitosis tick launches its replacement.

use std::sync::Arc;
use std::time::Duration;

use super::{Cell, Exit, Shutdown};
use crate::ledger::EventKind;
use crate::metadata::{InstanceAction, Metadata, Rebalance};

impl Cell {
    pub(super) async fn watch_metadata(self: Arc<Self>, metadata: Metadata, shutdown: Shutdown) {
        let period = Duration::from_secs(self.config().cloud.metadata_poll_secs);
        let mut every = tokio::time::interval(period);
        let mut rebalancing = false;
        loop {
            every.tick().await;
            match metadata.instance_action().await {
                Ok(Some(action)) => return self.interrupted(action, &shutdown).await,
                Ok(None) => {}
                Err(e) => tracing::warn!(error = %e, "cannot read the spot notice"),
            }
            if rebalancing {
                continue;
            }
            match metadata.rebalance().await {
                Ok(Some(r)) => {
                    rebalancing = true;
                    self.rebalance(r, &shutdown).await;
                }
                Ok(None) => {}
                Err(e) => tracing::warn!(error = %e, "cannot read the rebalance recommendation"),
            }
        }
    }

    async fn interrupted(&self, action: InstanceAction, shutdown: &Shutdown) {
        let reason = format!(
            "spot interruption: {} at {}",
            action.action,
            action.time.to_rfc3339()
        );
        let left = (action.time - chrono::Utc::now())
            .to_std()
            .unwrap_or_default();
        let margin = Duration::from_secs(self.config().cloud.interruption_margin_secs);
        let budget = left.saturating_sub(margin);
        tracing::warn!(%reason, left_secs = left.as_secs(), budget_secs = budget.as_secs(),
            "spot interruption notice: stopping");
        self.leave_on_notice(&reason, EventKind::Interruption, shutdown)
            .await;
        let mut kept = 0;
        for (job_id, job) in self.work.state().jobs.iter() {
            let remaining = job
                .estimate_secs
                .map(|e| e - job.started.elapsed().as_secs_f64());
            if remaining.is_some_and(|r| r <= budget.as_secs_f64()) {
                kept += 1;
            } else {
                tracing::info!(job = %job_id, remaining_secs = ?remaining,
                    "cannot finish before the reclaim; handing back now");
                job.cancel.cancel();
            }
        }
        if kept > 0 {
            tracing::info!(
                jobs = kept,
                budget_secs = budget.as_secs(),
                "letting jobs finish"
            );
        }
        tokio::time::sleep(budget).await;
        if !shutdown.abort.is_cancelled() {
            tracing::warn!("the reclaim is near: handing back what still runs");
            shutdown.abort.cancel();
        }
    }

    async fn rebalance(&self, r: Rebalance, shutdown: &Shutdown) {
        let reason = format!("rebalance recommendation at {}", r.notice_time.to_rfc3339());
        tracing::warn!(%reason, "elevated reclaim risk: finishing running jobs, taking no more");
        self.leave_on_notice(&reason, EventKind::Rebalance, shutdown)
            .await;
    }

    /// Records why the cell leaves, stops its consuming, and beats as draining at once
    /// (so ticks stop counting it as alive and launch its replacement).
    async fn leave_on_notice(&self, reason: &str, kind: EventKind, shutdown: &Shutdown) {
        self.leave(Exit::Notice(reason.to_string()));
        shutdown.drain.cancel();
        self.beat(shutdown).await;
        for pool in &self.pools {
            if let Err(e) = self
                .systems
                .ledger
                .record_event(pool, kind, &self.cell_id, 1, reason)
                .await
            {
                tracing::warn!(error = %e, "cannot record the {kind}");
            }
        }
    }
}
