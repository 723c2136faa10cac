//! The cell's consuming: one broker connection per session, reconnecting with backoff
//! when it is lost; a free slot takes the next message, priority lanes first.
//!
//! # A delivery is only taken for a slot that will be free
//!
//! A cell holds no message it cannot start soon. A message a cell holds unstarted is
//! hidden backlog: the broker counts it as unacknowledged, not ready, the ledger as
//! queued, not running, so mitosis would let an idle neighbour die beside a busy cell
//! sitting on long jobs, and the job would wait for a slot of that cell when another is
//! free. So the session first waits until a job taken now would find an encoder (one is
//! free, or a running encode ends within [`super::slots::LOOKAHEAD`]: see
//! [`super::slots::Slots`]), then takes one message (`basic.get`) from the priority
//! lanes, then the work queues, and starts it at once: claimed, downloaded and checked,
//! it waits at most that long for its encoder. When every lane is empty it looks again
//! after a short wait ([`FIRST_POLL`], doubling to [`MAX_POLL`]). The cell's
//! unacknowledged deliveries are its running jobs, no more.
//!
//! Consumers with a prefetch cannot give that. RabbitMQ's prefetch (`basic.qos`) is per
//! consumer, and a cell has one consumer per lane and pool: up to 2 × pools × prefetch
//! deliveries, whatever its free slots. A per-channel ("global") prefetch equal to the
//! slots would bound them all together, but quorum queues refuse global QoS. A prefetch
//! that follows the free slots cannot reach zero (`prefetch_count = 0` means
//! unlimited), and pausing consumption (cancelling consumers while every slot is busy)
//! still hands a slot that frees one delivery per lane, the surplus of which must be
//! returned, and each return counts toward the queue's delivery limit. `basic.get`
//! costs a round trip per job and a few polls of an empty queue a second while a slot is
//! free: nothing beside jobs of seconds to hours, and an idle cell dies or is at its
//! pool's floor.

use std::sync::Arc;
use std::time::Duration;

use lapin::message::Delivery;
use lapin::Channel;

use super::{Cell, Shutdown, MAX_BACKOFF};

/// The first wait before reconnecting; it doubles up to [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_millis(250);
/// The first wait before looking again at queues that were all empty; it doubles up to
/// [`MAX_POLL`] while they stay empty. A job submitted to an idle cell starts within it.
const FIRST_POLL: Duration = Duration::from_millis(100);
/// The longest wait between looks at empty queues.
const MAX_POLL: Duration = Duration::from_secs(1);
use crate::queue::{self, Broker, QueueError};

impl Cell {
    /// Runs until `shutdown.drain` fires (or, with `until_idle`, until every queue it
    /// serves is empty and no job has run for that long), then drains and returns.
    pub(super) async fn run(self: Arc<Self>, shutdown: Shutdown, until_idle: Option<Duration>) {
        tracing::info!(cell = %self.cell_id, slots = self.slots.count(),
            threads = self.slots.threads(), pools = ?self.pools,
            config = %self.reload.location(), version = %self.reload.version(), "cell starting");
        let pulse = tokio::spawn(self.clone().pulse_loop(shutdown.clone()));
        let ticker = tokio::spawn(self.clone().tick_loop(shutdown.clone()));
        let metrics = self
            .config()
            .cell
            .metrics_listen
            .map(|addr| tokio::spawn(self.clone().serve_metrics(addr)));
        let watcher = self
            .metadata
            .clone()
            .map(|m| tokio::spawn(self.clone().watch_metadata(m, shutdown.clone())));
        let mut backoff = FIRST_BACKOFF;
        while !shutdown.drain.is_cancelled() {
            match self.session(&shutdown, until_idle).await {
                Ok(()) => break,
                Err(e) => {
                    *self.publisher.write().await = None;
                    let wait = jittered(backoff, rand::random());
                    tracing::warn!(error = %e, retry_in_ms = wait.as_millis() as u64,
                        "broker connection lost; reconnecting");
                    tokio::select! {
                        _ = tokio::time::sleep(wait) => {}
                        _ = shutdown.drain.cancelled() => {}
                    }
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                }
            }
        }
        // Drain: wait for running jobs; the abort token (grace period or a second signal)
        // cuts them short, and they hand themselves back.
        self.slots.wait_idle().await;
        ticker.abort();
        pulse.abort();
        if let Some(m) = metrics {
            m.abort();
        }
        if let Some(w) = watcher {
            w.abort();
        }
        if let Err(e) = self.systems.locks.remove(&self.cell_id).await {
            tracing::warn!(error = %e, "cannot remove heartbeat");
        }
        tracing::info!(cell = %self.cell_id, "cell stopped");
    }

    /// One broker connection's life: Ok when told to stop, Err when the connection fails.
    async fn session(
        self: &Arc<Self>,
        shutdown: &Shutdown,
        until_idle: Option<Duration>,
    ) -> Result<(), QueueError> {
        let broker = Broker::connect(&self.config()).await?;
        // A lost connection must be seen even while every slot is busy (and waiting to
        // publish through the dead channel), not only when the next delivery is read.
        let lost = Arc::new(tokio::sync::Notify::new());
        let notify = lost.clone();
        broker.connection().on_error(move |_| notify.notify_one());
        *self.publisher.write().await = Some(broker.publisher().clone());
        let channel = broker.connection().create_channel().await?;
        tracing::info!(cell = %self.cell_id, "consuming");
        let mut poll = FIRST_POLL;
        let mut turn = 0;
        loop {
            let permit = tokio::select! {
                p = self.slots.acquire() => p,
                _ = shutdown.drain.cancelled() => break,
                _ = lost.notified() => return Err(connection_lost(&broker)),
            };
            if shutdown.drain.is_cancelled() {
                break;
            }
            tokio::select! {
                () = self.slots.startable(|| self.ending_soon()) => {}
                _ = shutdown.drain.cancelled() => break,
                _ = lost.notified() => return Err(connection_lost(&broker)),
            }
            // Not cut short by a stop: a message the broker has sent must reach a slot.
            let taken = tokio::select! {
                _ = lost.notified() => return Err(connection_lost(&broker)),
                t = self.take(&channel, turn) => t?,
            };
            turn = turn.wrapping_add(1);
            let Some((pool, delivery)) = taken else {
                drop(permit);
                self.stop_if_idle(&broker, shutdown, until_idle).await?;
                tokio::select! {
                    _ = tokio::time::sleep(poll) => {}
                    _ = shutdown.drain.cancelled() => break,
                    _ = lost.notified() => return Err(connection_lost(&broker)),
                }
                poll = (poll * 2).min(MAX_POLL);
                continue;
            };
            poll = FIRST_POLL;
            let cell = self.clone();
            let abort = shutdown.abort.clone();
            self.work.begin();
            let turn = self.slots.turn();
            tokio::spawn(async move {
                cell.handle(&pool, &delivery, &abort, &turn).await;
                cell.work.end();
                drop(permit);
            });
        }
        self.slots.wait_idle().await;
        if self.needs_replacement() {
            // The jobs this cell gave back need a cell: it no longer counts as alive, so
            // the tick launches a replacement (zero to one if it was the last).
            self.replace(&broker).await;
        }
        broker.close("cell stopping").await;
        Ok(())
    }

    /// With `until_idle`, stops the cell once it has been idle that long and its queues
    /// are drained.
    async fn stop_if_idle(
        &self,
        broker: &Broker,
        shutdown: &Shutdown,
        until_idle: Option<Duration>,
    ) -> Result<(), QueueError> {
        let (Some(limit), Some(idle)) = (until_idle, self.work.idle_for()) else {
            return Ok(());
        };
        if idle >= limit && self.drained(broker).await? {
            tracing::info!(
                idle_secs = limit.as_secs(),
                "queues drained and idle; stopping"
            );
            shutdown.drain.cancel();
        }
        Ok(())
    }

    /// The next message for a free slot, tagged with its pool: the priority lanes of
    /// every pool first, then their work queues; `turn` rotates which pool is asked first,
    /// so that no pool of a cell starves another.
    async fn take(
        &self,
        channel: &Channel,
        turn: usize,
    ) -> Result<Option<(String, Delivery)>, QueueError> {
        let n = self.pools.len();
        for priority in [true, false] {
            for i in 0..n {
                let pool = &self.pools[(turn + i) % n];
                let lane = self.names.lane(pool, priority);
                if let Some(d) = queue::take(channel, &lane).await? {
                    return Ok(Some((pool.clone(), d)));
                }
            }
        }
        Ok(None)
    }

    /// True when the cell's queues hold no ready message and the ledger no unfinished
    /// job: the broker does not count deliveries in flight, and a job of a dead cell
    /// is only re-published once its lease runs out.
    async fn drained(&self, broker: &Broker) -> Result<bool, QueueError> {
        for pool in &self.pools {
            if broker.pool_ready(pool).await? > 0 {
                return Ok(false);
            }
        }
        match self.systems.ledger.unfinished(&self.pools).await {
            Ok(n) => Ok(n == 0),
            Err(e) => {
                tracing::warn!(error = %e, "cannot count unfinished jobs");
                Ok(false)
            }
        }
    }
}

fn connection_lost(broker: &Broker) -> QueueError {
    let state = broker.connection().status().state();
    QueueError::Amqp(lapin::Error::InvalidConnectionState(state))
}

/// A wait between half of `backoff` and all of it, placed by `unit` (in [0, 1)): after a
/// broker restart, a farm's cells come back spread over the window, not in step.
fn jittered(backoff: Duration, unit: f64) -> Duration {
    backoff.mul_f64(0.5 + 0.5 * unit.clamp(0.0, 1.0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reconnects_are_spread_over_half_the_backoff() {
        let b = Duration::from_secs(8);
        assert_eq!(jittered(b, 0.0), Duration::from_secs(4));
        assert_eq!(jittered(b, 0.5), Duration::from_secs(6));
        assert!(jittered(b, 0.999) < b);
        // A thousand cells drawing their own waits do not come back in step.
        let waits: std::collections::BTreeSet<Duration> =
            (0..1000).map(|_| jittered(b, rand::random())).collect();
        assert!(waits.len() > 900, "{} distinct waits", waits.len());
        assert!(waits.iter().all(|w| *w >= b / 2 && *w <= b));
    }
}
