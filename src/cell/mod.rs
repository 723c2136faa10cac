//! The cell: the long-running worker (`cellfarm cell`).
//!
//! Boot: check the host, connect, declare the topology. Work: consume the priority lane
//! first, then the work queue, with at most `slots` jobs at once; each delivery is acked
//! only after its job's durable effects (outputs in S3, a row in the ledger). Tick: every
//! heartbeat, beat in Redis, renew the leases of running jobs and re-publish jobs whose
//! cell died. Stop: on the shutdown token, stop consuming, let running jobs finish within
//! the grace period, hand back what is left, exit. Spot: on a reclaim notice from
//! instance metadata, stop consuming, hand back at once the jobs that cannot finish
//! before the reclaim and the rest when it is near, launch a replacement, exit.
//!
//! The cell owns its reconnect loop (lapin does not reconnect): a lost connection voids
//! the deliveries on it, which the broker redelivers; jobs already running carry on and
//! commit through the ledger, and their late acks fail harmlessly.

mod reload;
mod spot;
mod tick;
mod work;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::stream::{select_all, SelectAll};
use futures_util::StreamExt;
use lapin::message::Delivery;
use lapin::options::{BasicAckOptions, BasicNackOptions};
use lapin::{Channel, Connection};
use tokio::sync::{RwLock, Semaphore};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::cloud::Cloud;
use crate::config::Config;
use crate::failure::{classify, Class, JobFailure};
use crate::job::{JobMessage, ResultMessage, VERSION};
use crate::ledger::{Claim, Ledger};
use crate::locks::Heartbeats;
use crate::queue::{self, Names, Publisher, QueueError, REASON_HEADER};
use crate::store::ObjectStore;

pub use reload::ConfigSource;
pub use work::output_key;

/// Longest wait between reconnect attempts.
const MAX_BACKOFF: Duration = Duration::from_secs(10);
/// How long a publish waits for the broker to come back before the job is left to its
/// lease.
const PUBLISH_PATIENCE: Duration = Duration::from_secs(120);

/// How the cell is told to stop.
#[derive(Clone, Default)]
pub struct Shutdown {
    /// Stop taking work; let running jobs finish.
    pub drain: CancellationToken,
    /// Kill running jobs now and hand them back.
    pub abort: CancellationToken,
}

pub struct Cell {
    /// The config in force; a newer version from `source` replaces it between jobs.
    config: std::sync::RwLock<Arc<Config>>,
    source: ConfigSource,
    store: Arc<dyn ObjectStore>,
    ledger: Ledger,
    beats: Heartbeats,
    names: Names,
    pub cell_id: String,
    /// Pools this cell consumes from.
    pools: Vec<String>,
    /// Job slots, and the semaphore that holds one permit per free slot.
    slots: AtomicUsize,
    permits: Arc<Semaphore>,
    /// Tells the consuming session that `slots` changed (its prefetch follows).
    resized: tokio::sync::Notify,
    threads: AtomicUsize,
    running: AtomicUsize,
    /// Jobs whose attempts run in this cell now: the only leases the tick renews, and
    /// what a spot notice weighs against its deadline.
    jobs: std::sync::Mutex<std::collections::BTreeMap<String, Running>>,
    publisher: RwLock<Option<Publisher>>,
    started_at: i64,
    /// Where siblings come from; `None` turns mitosis and death off.
    cloud: Option<Arc<dyn Cloud>>,
    /// When the cell last had a job running: the start of its idle time.
    last_busy: std::sync::Mutex<Instant>,
    /// Set when mitosis decided this cell dies: after draining, its machine ends.
    dying: AtomicBool,
    /// Instance metadata, polled for spot notices; `None` off EC2.
    metadata: Option<crate::metadata::Metadata>,
    /// Set by a spot notice or rebalance recommendation: why this cell is leaving. Jobs
    /// cut short are handed back as `interrupted` with this reason.
    notice: std::sync::Mutex<Option<String>>,
    /// The launch this cell is, cleared from the pending launches on its first beat.
    launch_id: std::sync::Mutex<Option<String>>,
    /// A verified new binary to re-execute with once drained.
    update: std::sync::Mutex<Option<std::path::PathBuf>>,
}

/// One job running in this cell.
struct Running {
    /// Cancels this job alone (a child of the shutdown's abort token).
    cancel: CancellationToken,
    started: Instant,
    /// Estimated wall seconds of the whole attempt, once the source is probed.
    estimate_secs: Option<f64>,
}

/// Who a cell is and where it came from.
pub struct Identity {
    /// Where its config comes from, and the version it started with.
    pub source: ConfigSource,
    /// The EC2 instance id on `ec2`, else `<host>-<pid>-<random>`.
    pub cell_id: String,
    /// The launch that made this cell (`CELLFARM_LAUNCH_ID`, or the instance id).
    pub launch_id: Option<String>,
    pub metadata: Option<crate::metadata::Metadata>,
}

impl Identity {
    /// A cell on a machine that is not an EC2 instance of this farm.
    pub fn local(source: ConfigSource) -> Identity {
        Identity {
            source,
            cell_id: format!(
                "{}-{}-{:04x}",
                hostname(),
                std::process::id(),
                rand::random::<u16>()
            ),
            launch_id: std::env::var(crate::cloud::LAUNCH_ID_ENV).ok(),
            metadata: None,
        }
    }
}

impl Cell {
    pub fn new(
        config: Arc<Config>,
        store: Arc<dyn ObjectStore>,
        ledger: Ledger,
        beats: Heartbeats,
        pools: Vec<String>,
        cloud: Option<Arc<dyn Cloud>>,
        identity: Identity,
    ) -> Cell {
        let slots = config.cell.slots_for(vcpus());
        Cell {
            names: Names::new(&config.farm.name),
            slots: AtomicUsize::new(slots),
            permits: Arc::new(Semaphore::new(slots)),
            resized: tokio::sync::Notify::new(),
            threads: AtomicUsize::new(config.cell.threads_for(vcpus())),
            config: std::sync::RwLock::new(config),
            source: identity.source,
            store,
            ledger,
            beats,
            cell_id: identity.cell_id,
            pools,
            running: AtomicUsize::new(0),
            jobs: Default::default(),
            publisher: RwLock::new(None),
            started_at: chrono::Utc::now().timestamp(),
            cloud,
            last_busy: std::sync::Mutex::new(Instant::now()),
            dying: AtomicBool::new(false),
            metadata: identity.metadata,
            notice: Default::default(),
            launch_id: std::sync::Mutex::new(identity.launch_id),
            update: Default::default(),
        }
    }

    /// The config in force now.
    fn config(&self) -> Arc<Config> {
        self.config.read().expect("never poisoned").clone()
    }

    fn slots(&self) -> usize {
        self.slots.load(Ordering::SeqCst)
    }

    /// The verified binary a live config asked for (check after [`Cell::run`] returns).
    pub fn update(&self) -> Option<std::path::PathBuf> {
        self.update.lock().expect("never poisoned").clone()
    }

    /// True once a spot notice or rebalance recommendation made this cell leave.
    pub fn noticed(&self) -> bool {
        self.notice.lock().expect("never poisoned").is_some()
    }

    /// True once mitosis decided this cell dies (check after [`Cell::run`] returns).
    pub fn dying(&self) -> bool {
        self.dying.load(Ordering::SeqCst)
    }

    /// Runs until `shutdown.drain` fires (or, with `until_idle`, until every queue it
    /// serves is empty and no job has run for that long), then drains and returns.
    pub async fn run(self: Arc<Self>, shutdown: Shutdown, until_idle: Option<Duration>) {
        tracing::info!(cell = %self.cell_id, slots = self.slots(),
            threads = self.threads.load(Ordering::SeqCst), pools = ?self.pools,
            config = %self.source.location, version = %self.source.version(), "cell starting");
        let slots = self.permits.clone();
        let ticker = tokio::spawn(self.clone().tick_loop(shutdown.clone()));
        let watcher = self
            .metadata
            .clone()
            .map(|m| tokio::spawn(self.clone().watch_metadata(m, shutdown.clone())));
        let mut backoff = Duration::from_millis(250);
        while !shutdown.drain.is_cancelled() {
            match self.session(&slots, &shutdown, until_idle).await {
                Ok(()) => break,
                Err(e) => {
                    *self.publisher.write().await = None;
                    tracing::warn!(error = %e, retry_in_ms = backoff.as_millis() as u64,
                        "broker connection lost; reconnecting");
                    tokio::select! {
                        _ = tokio::time::sleep(backoff) => {}
                        _ = shutdown.drain.cancelled() => {}
                    }
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                }
            }
        }
        // Drain: wait for running jobs; the abort token (grace period or a second signal)
        // cuts them short, and they hand themselves back.
        let all = self.slots() as u32;
        let _ = slots.acquire_many(all).await;
        ticker.abort();
        if let Some(w) = watcher {
            w.abort();
        }
        if let Err(e) = self.beats.remove(&self.cell_id).await {
            tracing::warn!(error = %e, "cannot remove heartbeat");
        }
        tracing::info!(cell = %self.cell_id, "cell stopped");
    }

    /// One broker connection's life: Ok when told to stop, Err when the connection fails.
    async fn session(
        self: &Arc<Self>,
        slots: &Arc<Semaphore>,
        shutdown: &Shutdown,
        until_idle: Option<Duration>,
    ) -> Result<(), QueueError> {
        let config = self.config();
        let conn = queue::connect(&config.amqp.url).await?;
        // A lost connection must be seen even while every slot is busy (and waiting to
        // publish through the dead channel), not only when the next delivery is read.
        let lost = Arc::new(tokio::sync::Notify::new());
        let notify = lost.clone();
        conn.on_error(move |_| notify.notify_one());
        let publisher = Publisher::open(&conn).await?;
        queue::declare(publisher.channel(), &config).await?;
        *self.publisher.write().await = Some(publisher.clone());
        let (mut priority, mut work, channels) = self.consumers(&conn).await?;
        tracing::info!(cell = %self.cell_id, "consuming");
        let mut last_busy = Instant::now();
        let mut idle_check = tokio::time::interval(Duration::from_secs(1));
        loop {
            let permit = tokio::select! {
                p = slots.clone().acquire_owned() => p.expect("the slot semaphore is never closed"),
                _ = shutdown.drain.cancelled() => break,
                _ = lost.notified() => return Err(connection_lost(&conn)),
            };
            let delivery = loop {
                tokio::select! {
                    biased;
                    _ = shutdown.drain.cancelled() => break None,
                    _ = lost.notified() => return Err(connection_lost(&conn)),
                    _ = self.resized.notified() => {
                        for (channel, _) in &channels {
                            channel.basic_qos(self.prefetch(), Default::default()).await?;
                        }
                    }
                    d = priority.next() => break Some(d),
                    d = work.next() => break Some(d),
                    _ = idle_check.tick() => {
                        if self.running.load(Ordering::SeqCst) > 0 {
                            last_busy = Instant::now();
                        } else if let Some(idle) = until_idle {
                            if last_busy.elapsed() >= idle && self.drained(&publisher).await? {
                                tracing::info!(idle_secs = idle.as_secs(), "queues drained and idle; stopping");
                                shutdown.drain.cancel();
                            }
                        }
                    }
                }
            };
            let delivery = match delivery {
                None => break,
                Some(Some(Ok((pool, d)))) => (pool, d),
                Some(Some(Err(e))) => return Err(e.into()),
                Some(None) => return Err(connection_lost(&conn)),
            };
            last_busy = Instant::now();
            let cell = self.clone();
            let abort = shutdown.abort.clone();
            self.running.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                cell.handle(delivery.0, delivery.1, &abort).await;
                *cell.last_busy.lock().expect("never poisoned") = Instant::now();
                cell.running.fetch_sub(1, Ordering::SeqCst);
                drop(permit);
            });
        }
        // Stop consuming, and return what was prefetched but not started, so that other
        // cells (or a replacement) can take it while the running jobs finish.
        for (channel, tag) in &channels {
            let cancel = lapin::options::BasicCancelOptions::default();
            if let Err(e) = channel.basic_cancel(tag, cancel).await {
                tracing::warn!(error = %e, "cannot cancel a consumer; its deliveries return at close");
            }
        }
        let unstarted = async {
            while let Some(Ok((_, d))) = priority.next().await {
                nack(&d).await;
            }
            while let Some(Ok((_, d))) = work.next().await {
                nack(&d).await;
            }
        };
        let _ = tokio::time::timeout(Duration::from_secs(5), unstarted).await;
        drop(slots.acquire_many(self.slots() as u32).await);
        if self.noticed() {
            // The jobs this cell gave back need a cell: it no longer counts as alive, so
            // the tick launches a replacement (zero to one if it was the last).
            self.replace(&publisher).await;
        }
        let _ = conn.close(200, "cell stopping").await;
        Ok(())
    }

    /// One merged stream per lane, each item tagged with its pool, and each consumer's
    /// channel and tag (to cancel it).
    async fn consumers(
        &self,
        conn: &Connection,
    ) -> Result<(SelectAll<Tagged>, SelectAll<Tagged>, Vec<(Channel, String)>), QueueError> {
        let prefetch = self.prefetch();
        let mut priority = Vec::new();
        let mut work = Vec::new();
        let mut channels = Vec::new();
        for pool in &self.pools {
            for (lane, out) in [
                (self.names.priority(pool), &mut priority),
                (self.names.work(pool), &mut work),
            ] {
                let tag = format!("{}:{lane}", self.cell_id);
                let (channel, consumer) = queue::consume(conn, &lane, &tag, prefetch).await?;
                channels.push((channel, tag));
                let pool = pool.clone();
                out.push(consumer.map(move |d| d.map(|d| (pool.clone(), d))).boxed());
            }
        }
        Ok((select_all(priority), select_all(work), channels))
    }

    /// Unacked deliveries per consumer: one per slot.
    fn prefetch(&self) -> u16 {
        u16::try_from(self.slots()).unwrap_or(u16::MAX)
    }

    /// True when the cell's queues hold no ready message and the ledger no unfinished
    /// job: the broker does not count deliveries in flight, and a job of a dead cell
    /// is only re-published once its lease runs out.
    async fn drained(&self, publisher: &Publisher) -> Result<bool, QueueError> {
        for pool in &self.pools {
            for lane in [self.names.priority(pool), self.names.work(pool)] {
                if queue::ready(publisher.channel(), &lane).await?.0 > 0 {
                    return Ok(false);
                }
            }
        }
        match self.ledger.unfinished(&self.pools).await {
            Ok(n) => Ok(n == 0),
            Err(e) => {
                tracing::warn!(error = %e, "cannot count unfinished jobs");
                Ok(false)
            }
        }
    }

    /// Publishes through the current connection, waiting up to `patience` for a
    /// reconnect. The tick passes zero: heartbeats and leases must not wait on the broker.
    async fn publish(
        &self,
        queue: &str,
        body: &[u8],
        headers: &[(&str, &str)],
        patience: Duration,
    ) -> Result<(), QueueError> {
        let deadline = Instant::now() + patience;
        loop {
            let current = self.publisher.read().await.clone();
            let result = match current {
                Some(p) => p.publish(queue, body, headers).await,
                None => Err(QueueError::Amqp(lapin::Error::InvalidChannelState(
                    lapin::ChannelState::Closed,
                ))),
            };
            match result {
                Ok(()) => return Ok(()),
                Err(e @ (QueueError::Returned { .. } | QueueError::Nacked { .. })) => {
                    return Err(e)
                }
                Err(e) if Instant::now() >= deadline => return Err(e),
                Err(_) => tokio::time::sleep(Duration::from_millis(500)).await,
            }
        }
    }

    async fn dead_letter(&self, pool: &str, body: &[u8], reason: &str, job_id: &str) {
        let queue = self.names.dead(pool);
        let headers = [(REASON_HEADER, reason), ("x-cellfarm-job-id", job_id)];
        if let Err(e) = self.publish(&queue, body, &headers, PUBLISH_PATIENCE).await {
            tracing::error!(job = job_id, error = %e, "cannot dead-letter");
        }
    }

    /// Everything about one delivery, ending in exactly one ack (or a nack when the
    /// ledger itself cannot be reached).
    async fn handle(&self, pool: String, delivery: Delivery, abort: &CancellationToken) {
        let job = match JobMessage::parse(&delivery.data) {
            Ok(job) => job,
            Err(e) => {
                tracing::warn!(pool, error = %e, "malformed message; dead-lettering");
                self.dead_letter(&pool, &delivery.data, &e.to_string(), "")
                    .await;
                return ack(&delivery).await;
            }
        };
        let span = tracing::info_span!("job", job = %job.job_id, pipeline = %job.pipeline);
        self.handle_job(pool, job, delivery, abort)
            .instrument(span)
            .await
    }

    async fn handle_job(
        &self,
        pool: String,
        job: JobMessage,
        delivery: Delivery,
        abort: &CancellationToken,
    ) {
        let config = self.config();
        let lease = Duration::from_secs(config.cell.lease_secs);
        let max = config.cell.max_attempts;
        let claim = match self
            .ledger
            .claim(&job, &pool, &self.cell_id, lease, max)
            .await
        {
            Ok(claim) => claim,
            Err(e) => {
                tracing::warn!(error = %e, "cannot claim; returning the delivery");
                tokio::time::sleep(Duration::from_secs(1)).await;
                return nack(&delivery).await;
            }
        };
        match claim {
            Claim::Run { attempt } => self.attempt(&pool, &job, attempt, &delivery, abort).await,
            Claim::Finished { state } => {
                tracing::info!(state, "duplicate delivery of a finished job; dropping");
                ack(&delivery).await
            }
            Claim::HeldElsewhere { cell_id } => {
                tracing::info!(holder = %cell_id, "another cell holds the job; dropping the duplicate");
                ack(&delivery).await
            }
            Claim::Exhausted { attempts, error } => {
                let reason = format!("gave up after {attempts} attempts: {error}");
                tracing::warn!(%reason, "dead-lettering");
                if let Err(e) = self.ledger.bury(&job.job_id, &reason).await {
                    tracing::warn!(error = %e, "cannot mark the job dead");
                    return nack(&delivery).await;
                }
                self.dead_letter(&pool, &delivery.data, &reason, &job.job_id)
                    .await;
                ack(&delivery).await
            }
        }
    }

    async fn attempt(
        &self,
        pool: &str,
        job: &JobMessage,
        attempt: i32,
        delivery: &Delivery,
        abort: &CancellationToken,
    ) {
        tracing::info!(attempt, source = %format!("s3://{}/{}", job.source.bucket, job.source.key), "job started");
        let started = Instant::now();
        let abort = &self.track(&job.job_id, abort);
        let estimate = |secs: f64| self.estimate(&job.job_id, secs);
        // The config of this attempt: a reload takes effect from the next job on.
        let config = self.config();
        let ctx = work::Context {
            config: &config,
            store: self.store.as_ref(),
            ledger: &self.ledger,
            cell_id: &self.cell_id,
            threads: self.threads.load(Ordering::SeqCst),
            cancel: abort,
            estimate: &estimate,
        };
        let result = work::execute(&ctx, job, attempt).await;
        self.untrack(&job.job_id);
        let id = &job.job_id;
        let outcome = match result {
            Ok(outputs) => self.commit(job, attempt, outputs).await,
            Err(JobFailure::Superseded) => {
                tracing::warn!("another attempt took the job over; this one commits nothing");
                Ok(())
            }
            Err(JobFailure::Step {
                source: crate::ffmpeg::FfmpegError::Cancelled { .. },
                ..
            })
            | Err(JobFailure::Probe(crate::ffmpeg::FfmpegError::Cancelled { .. }))
            | Err(JobFailure::Cancelled) => self.hand_back(pool, job, attempt).await,
            Err(failure) if abort.is_cancelled() => {
                tracing::info!(error = %failure, "failed while stopping; handing back");
                self.hand_back(pool, job, attempt).await
            }
            Err(failure) => self.fail(pool, job, attempt, &delivery.data, failure).await,
        };
        match outcome {
            Ok(()) => {
                tracing::info!(
                    attempt,
                    secs = started.elapsed().as_secs_f64(),
                    "attempt over"
                );
                ack(delivery).await
            }
            Err(e) => {
                // The ledger or broker is unreachable: return the delivery so the job is
                // tried again rather than left queued in the ledger with no message. If
                // the ledger still shows this attempt running, its lease (no longer
                // renewed) runs out first.
                tracing::warn!(job = %id, error = %e, "cannot record the outcome; returning the delivery");
                nack(delivery).await
            }
        }
    }

    /// Records that this cell runs `job_id` (so the tick renews its lease) and returns
    /// the token that cuts this job alone short.
    fn track(&self, job_id: &str, abort: &CancellationToken) -> CancellationToken {
        let cancel = abort.child_token();
        let running = Running {
            cancel: cancel.clone(),
            started: Instant::now(),
            estimate_secs: None,
        };
        self.jobs
            .lock()
            .expect("never poisoned")
            .insert(job_id.to_string(), running);
        cancel
    }

    fn untrack(&self, job_id: &str) {
        self.jobs.lock().expect("never poisoned").remove(job_id);
    }

    fn estimate(&self, job_id: &str, secs: f64) {
        if let Some(job) = self.jobs.lock().expect("never poisoned").get_mut(job_id) {
            job.estimate_secs = Some(secs);
        }
    }

    async fn commit(
        &self,
        job: &JobMessage,
        attempt: i32,
        outputs: Vec<crate::job::OutputObject>,
    ) -> Result<(), JobFailure> {
        let result = ResultMessage {
            v: VERSION,
            job_id: job.job_id.clone(),
            pipeline: job.pipeline.clone(),
            source: job.source.clone(),
            outputs,
            attempt: attempt as u32,
            cell_id: self.cell_id.clone(),
        };
        if !self
            .ledger
            .succeed(&job.job_id, attempt, &self.cell_id, &result)
            .await?
        {
            tracing::warn!("the job was taken over before commit; nothing committed");
            return Ok(());
        }
        tracing::info!(attempt, outputs = result.outputs.len(), "job succeeded");
        if let Err(e) = self.send_result(&result, PUBLISH_PATIENCE).await {
            tracing::warn!(error = %e, "result not published yet; the outbox will re-send it");
        }
        Ok(())
    }

    /// Publishes a committed job's result and records that it went out.
    async fn send_result(
        &self,
        result: &ResultMessage,
        patience: Duration,
    ) -> Result<(), JobFailure> {
        let body = serde_json::to_vec(result).expect("a result always serializes");
        self.publish(&self.names.results(), &body, &[], patience)
            .await?;
        self.ledger.result_sent(&result.job_id).await?;
        Ok(())
    }

    /// Returns a job cut short to its queue without spending an attempt: `interrupted`
    /// after a spot notice, `handed_back` on a plain stop.
    async fn hand_back(
        &self,
        pool: &str,
        job: &JobMessage,
        attempt: i32,
    ) -> Result<(), JobFailure> {
        let notice = self.notice.lock().expect("never poisoned").clone();
        let (outcome, reason) = match &notice {
            Some(reason) => ("interrupted", reason.as_str()),
            None => ("handed_back", "the cell is stopping"),
        };
        tracing::info!(outcome, reason, "handing the job back");
        if self
            .ledger
            .hand_back(&job.job_id, attempt, &self.cell_id, outcome, reason)
            .await?
        {
            self.publish(
                &self.names.lane(pool, job.priority),
                &job.to_json(),
                &[],
                PUBLISH_PATIENCE,
            )
            .await?;
        }
        Ok(())
    }

    async fn fail(
        &self,
        pool: &str,
        job: &JobMessage,
        attempt: i32,
        body: &[u8],
        failure: JobFailure,
    ) -> Result<(), JobFailure> {
        let error = failure.to_string();
        let class = classify(&failure);
        let last = attempt as u32 >= self.config().cell.max_attempts;
        match (class, last) {
            (Class::Retryable, false) => {
                tracing::warn!(attempt, %error, "retryable failure; re-queueing");
                if self
                    .ledger
                    .retry(&job.job_id, attempt, &self.cell_id, &error)
                    .await?
                {
                    let mut next = job.clone();
                    next.attempt = attempt as u32 + 1;
                    self.publish(
                        &self.names.lane(pool, job.priority),
                        &next.to_json(),
                        &[],
                        PUBLISH_PATIENCE,
                    )
                    .await?;
                }
            }
            (class, _) => {
                let (state, reason) = match class {
                    Class::Permanent => ("failed", error),
                    Class::Retryable => {
                        ("dead", format!("gave up after {attempt} attempts: {error}"))
                    }
                };
                tracing::warn!(attempt, state, %reason, "job failed; dead-lettering");
                if self
                    .ledger
                    .fail(&job.job_id, attempt, &self.cell_id, state, &reason)
                    .await?
                {
                    self.dead_letter(pool, body, &reason, &job.job_id).await;
                }
            }
        }
        Ok(())
    }
}

fn connection_lost(conn: &Connection) -> QueueError {
    QueueError::Amqp(lapin::Error::InvalidConnectionState(conn.status().state()))
}

type Tagged = futures_util::stream::BoxStream<'static, Result<(String, Delivery), lapin::Error>>;

async fn ack(delivery: &Delivery) {
    if let Err(e) = delivery.acker.ack(BasicAckOptions::default()).await {
        // The channel is gone: the broker redelivers, and the ledger makes that a no-op.
        tracing::warn!(error = %e, "ack failed; the delivery will come back and be dropped as a duplicate");
    }
}

async fn nack(delivery: &Delivery) {
    let requeue = BasicNackOptions {
        requeue: true,
        ..Default::default()
    };
    if let Err(e) = delivery.acker.nack(requeue).await {
        tracing::warn!(error = %e, "nack failed; the delivery will come back");
    }
}

fn vcpus() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|_| "cell".into())
}
