//! Every heartbeat, two loops: the pulse (beat, renew the leases of running jobs) and,
//! on a task of its own so that its slow calls never hold the pulse up, the tick (apply
//! a changed config, re-send unpublished results, re-publish jobs of dead cells,
//! reconcile queued jobs with the queues, and run mitosis for each pool the cell serves).

use std::sync::Arc;
use std::time::{Duration, Instant};

use super::{hostname, Cell, Exit, Shutdown};
use crate::cloud::Cloud;
use crate::config::Config;
use crate::ledger::EventKind;
use crate::locks::Beat;
use crate::mitosis::{LiveFarm, Me, Ticker};
use crate::queue::Publisher;

impl Cell {
    /// The pulse, every heartbeat, on its own task: the beat and the leases of running
    /// jobs must not wait behind the tick's slow calls (a config or binary download, an
    /// EC2 launch), or the cell would look dead and its jobs be taken over.
    pub(super) async fn pulse_loop(self: Arc<Self>, shutdown: Shutdown) {
        let period = Duration::from_secs(self.config().cell.heartbeat_secs);
        let mut every = tokio::time::interval(period);
        let mut first = true;
        loop {
            every.tick().await;
            if self.beat(&shutdown).await {
                if std::mem::take(&mut first) {
                    // Off the pulse: metadata and the ledger must not delay the next beat.
                    tokio::spawn(self.clone().record_alive());
                }
                // A launched cell stops counting as pending once it is alive.
                let launch_id = self.launch_id.lock().expect("never poisoned").take();
                if let Some(id) = launch_id {
                    for pool in &self.pools {
                        if let Err(e) = self.systems.locks.remove_pending(pool, &id).await {
                            tracing::warn!(error = %e, "cannot clear the pending launch");
                        }
                    }
                }
            }
            self.renew_leases().await;
        }
    }

    /// The tick, every heartbeat: apply a changed config, re-send unpublished results,
    /// re-publish jobs whose cell died, and run mitosis.
    pub(super) async fn tick_loop(self: Arc<Self>, shutdown: Shutdown) {
        let period = Duration::from_secs(self.config().cell.heartbeat_secs);
        let mut every = tokio::time::interval(period);
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let check = Duration::from_secs(self.config().cell.config_check_secs);
        let mut last_check = Instant::now();
        loop {
            every.tick().await;
            if !check.is_zero() && last_check.elapsed() >= check {
                last_check = Instant::now();
                self.reload(&shutdown).await;
            }
            self.resend_results().await;
            self.republish_expired().await;
            self.reconcile().await;
            if !shutdown.drain.is_cancelled() {
                self.check_health(&shutdown).await;
            }
            if !shutdown.drain.is_cancelled() {
                self.mitosis(&shutdown).await;
            }
        }
    }

    /// True when the beat went out. A cell that is dying or leaving on a notice beats as
    /// draining: it no longer counts as alive, but its machine is still worked on (and so
    /// not silent).
    pub(super) async fn beat(&self, shutdown: &Shutdown) -> bool {
        let beat = Beat {
            cell_id: self.cell_id.clone(),
            host: hostname(),
            pid: std::process::id(),
            pools: self.pools.clone(),
            slots: self.slots.count(),
            config_version: Some(self.reload.version()),
            running: self.work.running(),
            started_at: self.started_at,
            draining: shutdown.drain.is_cancelled() || self.deregistered(),
            machine: self.machine.clone(),
            leaving: self.needs_replacement(),
            jobs: self.running_jobs(),
        };
        let ttl = 3 * self.config().cell.heartbeat_secs;
        let sent = self.systems.locks.beat(&beat, ttl).await;
        *self.last_beat.lock().expect("never poisoned") = Some(beat);
        match sent {
            Ok(()) => true,
            Err(e) => {
                tracing::warn!(error = %e, "heartbeat failed");
                false
            }
        }
    }

    async fn renew_leases(&self) {
        let lease = Duration::from_secs(self.config().cell.lease_secs);
        let leases: Vec<String> = self.work.state().jobs.keys().cloned().collect();
        let ledger = &self.systems.ledger;
        if let Err(e) = ledger.renew(&self.cell_id, &leases, lease).await {
            tracing::warn!(error = %e, "cannot renew job leases");
        }
        // A job cancelled by hand stops here within a beat; its attempt commits nothing.
        match ledger.cancelled_among(&self.cell_id, &leases).await {
            Ok(cancelled) => {
                self.cut(&cancelled);
            }
            Err(e) => tracing::warn!(error = %e, "cannot check for cancelled jobs"),
        }
    }

    /// Publishes results whose publish did not go out (the outbox), one sender at a
    /// time: each is claimed for a lease while this tick sends it.
    async fn resend_results(&self) {
        let lease = Duration::from_secs(self.config().cell.lease_secs);
        match self.systems.ledger.claim_unsent_results(lease).await {
            Ok(results) => {
                for result in results {
                    tracing::info!(job = %result.job_id, "re-sending an unpublished result");
                    if let Err(e) = self.send_result(&result, Duration::ZERO).await {
                        tracing::warn!(job = %result.job_id, error = %e, "cannot re-send a result");
                    }
                }
            }
            Err(e) => tracing::warn!(error = %e, "cannot read the result outbox"),
        }
    }

    async fn republish_expired(&self) {
        let ledger = &self.systems.ledger;
        let jobs = match ledger.expired().await {
            Ok(jobs) => jobs,
            Err(e) => return tracing::warn!(error = %e, "cannot read expired jobs"),
        };
        for (job, pool) in jobs {
            let lane = self.names.lane(&pool, job.priority);
            if let Err(e) = self
                .publish(&lane, &job.to_json(), &[], Duration::ZERO)
                .await
            {
                tracing::warn!(job = %job.job_id, error = %e, "cannot re-publish an expired job; next tick");
                continue;
            }
            match ledger.requeue_expired(&job.job_id).await {
                Ok(true) => {
                    tracing::warn!(job = %job.job_id, "lease expired (its cell died); re-published")
                }
                Ok(false) => {}
                Err(e) => {
                    tracing::warn!(job = %job.job_id, error = %e, "cannot requeue an expired job")
                }
            }
        }
    }

    /// One patient tick per pool for a cell that is leaving after a spot notice (it no
    /// longer counts as alive, nor its machine as pending), so the jobs it gave back get
    /// a replacement cell.
    pub(super) async fn replace(&self, broker: &crate::queue::Broker) {
        let Some(cloud) = &self.systems.cloud else {
            return;
        };
        let config = self.config();
        let farm = self.live_farm(broker.publisher());
        let ticker = self.ticker(&config, &farm, cloud.as_ref());
        let me = Me {
            cell_id: &self.cell_id,
            machine: self.machine.as_deref(),
            idle_secs: None,
            leaving: true,
        };
        for pool in &self.pools {
            match ticker.tick_patiently(pool, Some(me)).await {
                Ok(outcome) => tracing::info!(pool, ?outcome, "mitosis tick for a replacement"),
                Err(e) => tracing::warn!(
                    pool,
                    error = format!("{e:#}"),
                    "cannot tick for a replacement"
                ),
            }
        }
    }

    /// Drains a cell whose last `cell.max_faults_in_a_row` attempts all failed for the
    /// farm's own systems: a machine that cannot reach S3 or keep its scratch disk
    /// should not go on taking jobs only to hand them back. It is recorded as a death
    /// with its reason, and replaced once drained (see [`Cell::needs_replacement`]).
    ///
    /// Only where a cloud can launch the replacement: a cell run by hand is better kept
    /// handing jobs back than gone.
    async fn check_health(&self, shutdown: &Shutdown) {
        let most = self.config().cell.max_faults_in_a_row;
        let faults = self.work.faults_in_a_row();
        if most == 0 || faults < most || self.systems.cloud.is_none() {
            return;
        }
        let reason = format!(
            "sick: its last {faults} attempts failed for the farm's systems (S3, the broker, the ledger or scratch)"
        );
        tracing::error!(%reason, "draining this cell for a replacement");
        self.leave(Exit::Sick(reason.clone()));
        shutdown.drain.cancel();
        // Beat as leaving now, as a spot notice does: the replacement tick must not find
        // this machine still holding its place under the ceiling.
        self.beat(shutdown).await;
        for pool in &self.pools {
            let recorded = self
                .systems
                .ledger
                .record_event(pool, EventKind::Death, &self.cell_id, 1, &reason)
                .await;
            if let Err(e) = recorded {
                tracing::warn!(error = %e, "cannot record the death");
            }
        }
    }

    /// One mitosis tick per pool; a decision to die drains the cell.
    async fn mitosis(&self, shutdown: &Shutdown) {
        let Some(cloud) = &self.systems.cloud else {
            return;
        };
        let Some(publisher) = self.publisher.read().await.clone() else {
            return;
        };
        let config = self.config();
        let farm = self.live_farm(&publisher);
        let ticker = self.ticker(&config, &farm, cloud.as_ref());
        let me = Me {
            cell_id: &self.cell_id,
            machine: self.machine.as_deref(),
            idle_secs: self.work.idle_for().map(|d| d.as_secs()),
            leaving: false,
        };
        if ticker.tick_cell(&self.pools, me).await {
            self.leave(Exit::Die);
            shutdown.drain.cancel();
        }
    }

    fn live_farm<'a>(&'a self, publisher: &'a Publisher) -> LiveFarm<'a> {
        LiveFarm::new(
            &self.systems.ledger,
            &self.systems.locks,
            publisher,
            &self.names,
        )
    }

    fn ticker<'a>(
        &'a self,
        config: &'a Config,
        farm: &'a LiveFarm<'a>,
        cloud: &'a dyn Cloud,
    ) -> Ticker<'a> {
        Ticker {
            config,
            farm,
            cloud,
            who: &self.cell_id,
        }
    }
}
