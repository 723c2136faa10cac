//! The cell: the long-running worker (`cellfarm cell`).
//!
//! Boot ([`run`]): check the host, connect, declare the topology. Work: consume the
//! priority lane first, then the work queue, with at most one job per slot; each
//! delivery becomes an [`attempt::Attempt`] that ends in one [`attempt::Settle`], applied
//! in one place ([`Cell::settle`]) after the job's durable effects (outputs in S3, a row
//! in the ledger). Tick ([`tick`]): every heartbeat, beat in Redis, renew the leases of
//! running jobs, re-publish jobs whose cell died, run mitosis. Reload ([`reload`]): apply
//! a changed config between jobs. Spot ([`spot`]): on a reclaim notice, stop consuming,
//! hand back what cannot finish, exit. Stop: on the shutdown token, stop consuming, let
//! running jobs finish within the grace period, hand back what is left, exit.
//!
//! The cell owns its reconnect loop (lapin does not reconnect): a lost connection voids
//! the deliveries on it, which the broker redelivers; jobs already running carry on and
//! commit through the ledger, and their late acks fail harmlessly.

mod alive;
mod attempt;
mod chunks;
mod laps;
mod metrics;
mod reconcile;
mod reload;
mod running;
mod session;
mod slots;
mod spot;
mod start;
mod tick;
mod work;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use lapin::message::Delivery;
use lapin::options::{BasicAckOptions, BasicNackOptions};
use tokio::sync::RwLock;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::boot::Systems;
use crate::config::Config;
use crate::failure;
use crate::job::{JobMessage, ResultMessage};
use crate::queue::{Names, Publisher, QueueError, JOB_ID_HEADER, REASON_HEADER};

use attempt::{Attempt, Ending, Settle};
use laps::{Laps, Phase};
use reload::Reload;
use running::Work;
use slots::{Slots, Turn};

pub use start::{run, Options};
pub use work::output_key;

/// Longest wait between reconnect attempts.
const MAX_BACKOFF: Duration = Duration::from_secs(10);
/// How long a publish waits for the broker to come back before the job is left to its
/// lease.
const PUBLISH_PATIENCE: Duration = Duration::from_secs(120);
/// How long an ack or nack may take: a frame written on a live connection, at once.
const SETTLE_PATIENCE: Duration = Duration::from_secs(5);
/// How much longer than its publish patience a cell keeps the claim on a result it
/// committed: the outbox must not re-send a result whose publish is still waiting.
const RESULT_CLAIM_MARGIN: Duration = Duration::from_secs(10);

/// How the cell is told to stop.
#[derive(Clone, Default)]
pub struct Shutdown {
    /// Stop taking work; let running jobs finish.
    pub drain: CancellationToken,
    /// Kill running jobs now and hand them back.
    pub abort: CancellationToken,
}

/// Why a cell stops before it is told to, and what happens after it has drained.
#[derive(Debug, Clone, PartialEq)]
enum Exit {
    /// Mitosis decided this cell is surplus: its machine ends.
    Die,
    /// A spot notice or rebalance recommendation (the reason): its machine ends, and
    /// jobs cut short are handed back as `interrupted`.
    Notice(String),
    /// A live config named a newer binary, fetched and verified: re-execute with it.
    Update(std::path::PathBuf),
    /// Its last jobs all failed for the farm's own systems as this cell reaches them
    /// (the reason): its machine ends, and a replacement is launched in its place.
    Sick(String),
}

/// Who a cell is and where it came from.
struct Identity {
    /// The EC2 instance id on `ec2`, else `<host>-<pid>-<random>`.
    pub cell_id: String,
    /// The launch that made this cell (`--launch-id`, or the instance id), cleared from
    /// the pending launches on its first beat.
    pub launch_id: Option<String>,
    /// Instance metadata, polled for spot notices; `None` off EC2.
    pub metadata: Option<crate::metadata::Metadata>,
}

impl Identity {
    /// The machine this cell runs on, as its cloud names it: the instance id on EC2, the
    /// launch id of a `local` sibling; none for a cell started by hand.
    fn machine(&self) -> Option<String> {
        self.launch_id.clone()
    }
}

struct Cell {
    /// The config in force; a newer version replaces it between jobs ([`reload`]).
    config: std::sync::RwLock<Arc<Config>>,
    reload: Reload,
    systems: Systems,
    names: Names,
    pub cell_id: String,
    /// Pools this cell consumes from.
    pools: Vec<String>,
    slots: Slots,
    work: Work,
    /// The current session's publisher; `None` while reconnecting.
    publisher: RwLock<Option<Publisher>>,
    /// Seconds since the Unix epoch.
    started_at: i64,
    metadata: Option<crate::metadata::Metadata>,
    /// How FFmpeg is confined, settled at start.
    sandbox: crate::ffmpeg::Sandbox,
    /// The machine this cell runs on (see [`Identity::machine`]).
    machine: Option<String>,
    exit: Mutex<Option<Exit>>,
    launch_id: Mutex<Option<String>>,
    /// The last beat sent, which the cell's `/metrics` serves.
    last_beat: Mutex<Option<crate::locks::Beat>>,
}

impl Cell {
    fn new(
        config: Arc<Config>,
        reload: Reload,
        systems: Systems,
        pools: Vec<String>,
        identity: Identity,
        sandbox: crate::ffmpeg::Sandbox,
    ) -> Cell {
        let machine = identity.machine();
        Cell {
            names: Names::new(&config.farm.name),
            slots: Slots::new(&config),
            config: std::sync::RwLock::new(config),
            reload,
            systems,
            cell_id: identity.cell_id,
            pools,
            work: Work::new(),
            publisher: RwLock::new(None),
            started_at: chrono::Utc::now().timestamp(),
            machine,
            metadata: identity.metadata,
            sandbox,
            exit: Mutex::new(None),
            launch_id: Mutex::new(identity.launch_id),
            last_beat: Mutex::new(None),
        }
    }

    /// The config in force now.
    fn config(&self) -> Arc<Config> {
        self.config.read().expect("never poisoned").clone()
    }

    /// Why the cell stopped on its own, if it did (check after [`Cell::run`] returns).
    fn exit(&self) -> Option<Exit> {
        self.exit.lock().expect("never poisoned").clone()
    }

    /// Records why the cell leaves. The first reason stays, except that a spot notice
    /// replaces any: the machine is going away whatever else was planned.
    fn leave(&self, exit: Exit) {
        let mut current = self.exit.lock().expect("never poisoned");
        if current.is_none() || matches!(exit, Exit::Notice(_)) {
            *current = Some(exit);
        }
    }

    /// The spot notice or rebalance recommendation this cell is leaving on, if any.
    fn notice(&self) -> Option<String> {
        match self.exit() {
            Some(Exit::Notice(reason)) => Some(reason),
            _ => None,
        }
    }

    /// True once the cell no longer counts as alive: it is dying, leaving on a notice,
    /// or sick.
    fn deregistered(&self) -> bool {
        matches!(
            self.exit(),
            Some(Exit::Die | Exit::Notice(_) | Exit::Sick(_))
        )
    }

    /// True when the cell leaves work behind that another cell must take: on a notice,
    /// or sick.
    fn needs_replacement(&self) -> bool {
        matches!(self.exit(), Some(Exit::Notice(_) | Exit::Sick(_)))
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

    /// Everything about one delivery, ending in one [`Settle`].
    async fn handle(
        &self,
        pool: &str,
        delivery: &Delivery,
        abort: &CancellationToken,
        turn: &Turn,
    ) {
        let job = match JobMessage::parse(&delivery.data) {
            Ok(job) => job,
            Err(e) => {
                tracing::warn!(pool, error = %e, "malformed message; dead-lettering");
                let settle = Settle::DeadLetter {
                    reason: e.to_string(),
                    job_id: String::new(),
                };
                return self.settle(pool, delivery, settle).await;
            }
        };
        let span = tracing::info_span!("job", job = %job.job_id, pipeline = %job.pipeline);
        async {
            let laps = Laps::start();
            let settle = self.attempt(pool, job, abort, turn, &laps).await;
            self.settle(pool, delivery, settle).await;
            laps.lap(Phase::Settle);
            tracing::info!(%laps, "job timings");
        }
        .instrument(span)
        .await;
    }

    /// Claims and runs one job; the attempt is tracked (its lease renewed, its estimate
    /// weighed by a spot notice) while it runs.
    async fn attempt(
        &self,
        pool: &str,
        job: JobMessage,
        abort: &CancellationToken,
        turn: &Turn,
        laps: &Laps,
    ) -> Settle {
        let config = self.config();
        let lease = Duration::from_secs(config.cell.lease_secs);
        let max = config.cell.max_attempts;
        let ledger = &self.systems.ledger;
        let claimed = Attempt::claim(ledger, job, pool, &self.cell_id, lease, max).await;
        laps.lap(Phase::Claim);
        let mut attempt = match claimed {
            Ok(attempt) => attempt,
            Err(settle) => return settle,
        };
        let source = &attempt.job.source;
        tracing::info!(attempt = attempt.id.attempt, source = %format!("s3://{}/{}", source.bucket, source.key), "job started");
        let started = Instant::now();
        let what = (pool, attempt.job.pipeline.as_str());
        let (cancel, progress) = self.track(&attempt.id.job_id, what, abort);
        attempt.cancel = cancel;
        let job_id = attempt.id.job_id.clone();
        let estimate = |secs: f64| self.estimate(&job_id, secs);
        let encoding = |on: bool| self.encoding(&job_id, on);
        let ctx = work::Context {
            // The config of this attempt: a reload takes effect from the next job on.
            config: &config,
            store: self.systems.store.as_ref(),
            sandbox: &self.sandbox,
            threads: self.slots.threads(),
            estimate: &estimate,
            turn,
            encoding: &encoding,
            progress,
            laps,
        };
        let produced = work::execute(&ctx, &attempt).await;
        self.untrack(&job_id);
        let fault = matches!(&produced, Err(f) if failure::class(f) == failure::Class::Fault)
            && !attempt.cancel.is_cancelled();
        self.work.record_fault(fault);
        let notice = self.notice();
        let ending = Ending {
            max_attempts: max,
            notice: notice.as_deref(),
            result_claim: PUBLISH_PATIENCE + RESULT_CLAIM_MARGIN,
            fault_budget: Duration::from_secs(config.cell.fault_budget_secs),
        };
        let settle = attempt.end(produced, ending).await;
        laps.lap(Phase::Commit);
        tracing::info!(
            secs = started.elapsed().as_secs_f64(),
            settle = settle.kind(),
            "attempt over"
        );
        settle
    }

    /// Applies a delivery's fate: the one place a delivery is acked or returned.
    async fn settle(&self, pool: &str, delivery: &Delivery, settle: Settle) {
        let acked = match settle {
            Settle::Ack => true,
            Settle::Requeue => false,
            Settle::DeadLetter { reason, job_id } => {
                let queue = self.names.dead(pool);
                let headers = [
                    (REASON_HEADER, reason.as_str()),
                    (JOB_ID_HEADER, job_id.as_str()),
                ];
                let published = self
                    .publish(&queue, &delivery.data, &headers, PUBLISH_PATIENCE)
                    .await;
                if let Err(e) = published {
                    tracing::error!(job = job_id, error = %e, "cannot dead-letter");
                }
                true
            }
            Settle::Republish(job) => {
                let lane = self.names.lane(pool, job.priority);
                let published = self
                    .publish(&lane, &job.to_json(), &[], PUBLISH_PATIENCE)
                    .await;
                if let Err(e) = &published {
                    tracing::warn!(job = %job.job_id, error = %e, "cannot re-publish; returning the delivery");
                }
                published.is_ok()
            }
            Settle::Commit(result) => {
                if let Err(e) = self.send_result(&result, PUBLISH_PATIENCE).await {
                    tracing::warn!(error = %e, "result not published yet; the outbox will re-send it");
                }
                true
            }
            Settle::Spawn(jobs) => {
                for job in jobs {
                    let lane = self.names.lane(pool, job.priority);
                    let published = self
                        .publish(&lane, &job.to_json(), &[], PUBLISH_PATIENCE)
                        .await;
                    if let Err(e) = published {
                        tracing::warn!(job = %job.job_id, error = %e, "cannot publish; the reconciliation will");
                    }
                }
                true
            }
        };
        settle_delivery(delivery, acked).await;
    }

    /// Publishes a committed job's result and records that it went out.
    async fn send_result(
        &self,
        result: &ResultMessage,
        patience: Duration,
    ) -> Result<(), crate::failure::JobFailure> {
        let body = serde_json::to_vec(result).expect("a result always serializes");
        self.publish(&self.names.results(), &body, &[], patience)
            .await?;
        self.systems.ledger.result_sent(&result.job_id).await?;
        Ok(())
    }
}

/// Acks a delivery, or returns it to its queue. A failure means the channel is gone: the
/// broker redelivers, and the ledger makes a redelivered finished job a no-op.
async fn settle_delivery(delivery: &Delivery, ack: bool) {
    let settled = async {
        if ack {
            delivery.acker.ack(BasicAckOptions::default()).await
        } else {
            let requeue = BasicNackOptions {
                requeue: true,
                ..Default::default()
            };
            delivery.acker.nack(requeue).await
        }
    };
    // lapin 2.5 never answers the ack of a `basic.get` delivery whose connection is gone
    // (its acker holds no channel error): bounded, so that the slot is freed.
    match tokio::time::timeout(SETTLE_PATIENCE, settled).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => {
            tracing::warn!(error = %e, ack, "settling failed; the delivery will come back")
        }
        Err(_) => tracing::warn!(
            ack,
            "settling got no answer (its connection is gone); the delivery will come back"
        ),
    }
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|_| "cell".into())
}
