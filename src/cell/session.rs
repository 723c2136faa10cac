//! The cell's consuming: one broker connection per session, reconnecting with backoff
//! when it is lost; a free slot takes the next delivery, priority lanes first; on a stop,
//! the consumers are cancelled and what was prefetched but not started goes back.

use std::sync::Arc;
use std::time::Duration;

use futures_util::stream::{select_all, SelectAll};
use futures_util::StreamExt;
use lapin::message::Delivery;
use lapin::Channel;

use super::{settle_delivery, Cell, Shutdown, MAX_BACKOFF};

/// The first wait before reconnecting; it doubles up to [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_millis(250);
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
        let (mut priority, mut work, channels) = self.consumers(&broker).await?;
        tracing::info!(cell = %self.cell_id, "consuming");
        let mut idle_check = tokio::time::interval(Duration::from_secs(1));
        loop {
            let permit = tokio::select! {
                p = self.slots.acquire() => p,
                _ = shutdown.drain.cancelled() => break,
                _ = lost.notified() => return Err(connection_lost(&broker)),
            };
            let delivery = tokio::select! {
                biased;
                _ = shutdown.drain.cancelled() => break,
                _ = lost.notified() => return Err(connection_lost(&broker)),
                _ = self.slots.resized.notified() => {
                    for (channel, _) in &channels {
                        channel.basic_qos(self.slots.prefetch(), Default::default()).await?;
                    }
                    continue;
                }
                d = priority.next() => d,
                d = work.next() => d,
                _ = idle_check.tick() => {
                    let idle = self.work.idle_for();
                    if let (Some(limit), Some(idle)) = (until_idle, idle) {
                        if idle >= limit && self.drained(&broker).await? {
                            tracing::info!(idle_secs = limit.as_secs(), "queues drained and idle; stopping");
                            shutdown.drain.cancel();
                        }
                    }
                    continue;
                }
            };
            let (pool, delivery) = match delivery {
                Some(Ok(d)) => d,
                Some(Err(e)) => return Err(e.into()),
                None => return Err(connection_lost(&broker)),
            };
            let cell = self.clone();
            let abort = shutdown.abort.clone();
            self.work.begin();
            tokio::spawn(async move {
                cell.handle(&pool, &delivery, &abort).await;
                cell.work.end();
                drop(permit);
            });
        }
        self.stop_consuming(&channels, [&mut priority, &mut work])
            .await;
        self.slots.wait_idle().await;
        if self.needs_replacement() {
            // The jobs this cell gave back need a cell: it no longer counts as alive, so
            // the tick launches a replacement (zero to one if it was the last).
            self.replace(&broker).await;
        }
        broker.close("cell stopping").await;
        Ok(())
    }

    /// Cancels the consumers and returns what was prefetched but not started, so that
    /// other cells (or a replacement) can take it while the running jobs finish.
    async fn stop_consuming(&self, channels: &[(Channel, String)], lanes: [&mut Lane; 2]) {
        for (channel, tag) in channels {
            let cancel = lapin::options::BasicCancelOptions::default();
            if let Err(e) = channel.basic_cancel(tag, cancel).await {
                tracing::warn!(error = %e, "cannot cancel a consumer; its deliveries return at close");
            }
        }
        let unstarted = async {
            for lane in lanes {
                while let Some(Ok((_, d))) = lane.next().await {
                    settle_delivery(&d, false).await;
                }
            }
        };
        let _ = tokio::time::timeout(Duration::from_secs(5), unstarted).await;
    }

    /// One merged stream per lane (priority, work), each delivery tagged with its pool,
    /// and each consumer's channel and tag (to cancel it).
    async fn consumers(
        &self,
        broker: &Broker,
    ) -> Result<(Lane, Lane, Vec<(Channel, String)>), QueueError> {
        let prefetch = self.slots.prefetch();
        let mut priority = Vec::new();
        let mut work = Vec::new();
        let mut channels = Vec::new();
        for pool in &self.pools {
            for (lane, out) in [
                (self.names.priority(pool), &mut priority),
                (self.names.work(pool), &mut work),
            ] {
                let tag = format!("{}:{lane}", self.cell_id);
                let (channel, consumer) =
                    queue::consume(broker.connection(), &lane, &tag, prefetch).await?;
                channels.push((channel, tag));
                let pool = pool.clone();
                out.push(consumer.map(move |d| d.map(|d| (pool.clone(), d))).boxed());
            }
        }
        Ok((select_all(priority), select_all(work), channels))
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

/// One lane (priority or work) of every pool the cell serves, each delivery tagged with
/// its pool.
type Lane =
    SelectAll<futures_util::stream::BoxStream<'static, Result<(String, Delivery), lapin::Error>>>;

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
