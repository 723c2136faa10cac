//! The broker (RabbitMQ through lapin): topology, confirmed publishing, consuming.
//!
//! Per pool: `<farm>.<pool>.priority` (consumed first), `<farm>.<pool>.work` and
//! `<farm>.<pool>.dead`; per farm: `<farm>.results`. All are quorum queues: replicated and
//! durable, with a broker-side delivery limit as a backstop to the ledger's attempt count.
//! On RabbitMQ 3.10 a quorum queue cannot also be a priority queue, hence the separate
//! lane. Every publish is persistent, `mandatory` and waits for the publisher confirm; a
//! returned or nacked message is a failed publish.

use lapin::message::Delivery;
use lapin::options::{
    BasicGetOptions, BasicNackOptions, BasicPublishOptions, ConfirmSelectOptions,
    QueueDeclareOptions,
};
use lapin::publisher_confirm::Confirmation;
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties};

use crate::config::Config;

/// Broker-side delivery limit, above the ledger's attempts so the ledger decides first:
/// deliveries also return when a cell's connection drops, which is no attempt's fault.
const DELIVERY_LIMIT_SLACK: u32 = 10;
/// Header carrying why a message was dead-lettered.
pub const REASON_HEADER: &str = "x-cellfarm-reason";
/// Header carrying the job id of a message a cell dead-lettered.
pub const JOB_ID_HEADER: &str = "x-cellfarm-job-id";

#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    #[error("broker: {0}")]
    Amqp(#[from] lapin::Error),
    #[error("publish to queue {queue} was returned by the broker: {reply}")]
    Returned { queue: String, reply: String },
    #[error("publish to queue {queue} was refused (nack) by the broker")]
    Nacked { queue: String },
}

/// Queue names of a farm.
#[derive(Debug, Clone)]
pub struct Names {
    farm: String,
}

impl Names {
    pub fn new(farm: &str) -> Names {
        Names { farm: farm.into() }
    }
    /// The farm's name, the prefix of every queue.
    pub fn farm(&self) -> &str {
        &self.farm
    }
    pub fn work(&self, pool: &str) -> String {
        format!("{}.{pool}.work", self.farm)
    }
    pub fn priority(&self, pool: &str) -> String {
        format!("{}.{pool}.priority", self.farm)
    }
    pub fn dead(&self, pool: &str) -> String {
        format!("{}.{pool}.dead", self.farm)
    }
    pub fn results(&self) -> String {
        format!("{}.results", self.farm)
    }
    /// The queue a job goes to.
    pub fn lane(&self, pool: &str, priority: bool) -> String {
        if priority {
            self.priority(pool)
        } else {
            self.work(pool)
        }
    }
}

pub async fn connect(url: &str) -> Result<Connection, QueueError> {
    let props = ConnectionProperties::default()
        .with_executor(tokio_executor_trait::Tokio::current())
        .with_reactor(tokio_reactor_trait::Tokio);
    Ok(Connection::connect(url, props).await?)
}

fn quorum_args(dead_letter_to: Option<&str>, max_length: Option<u64>, limit: u32) -> FieldTable {
    let mut args = FieldTable::default();
    args.insert(
        "x-queue-type".into(),
        AMQPValue::LongString("quorum".into()),
    );
    if let Some(dead) = dead_letter_to {
        args.insert("x-delivery-limit".into(), AMQPValue::LongInt(limit as i32));
        args.insert(
            "x-dead-letter-exchange".into(),
            AMQPValue::LongString("".into()),
        );
        args.insert(
            "x-dead-letter-routing-key".into(),
            AMQPValue::LongString(dead.into()),
        );
    }
    if let Some(max) = max_length {
        args.insert("x-max-length".into(), AMQPValue::LongLongInt(max as i64));
        // A full queue refuses the publish (the publisher sees a nack) rather than
        // silently dropping the oldest job.
        args.insert(
            "x-overflow".into(),
            AMQPValue::LongString("reject-publish".into()),
        );
    }
    args
}

/// Declares every queue of the farm; idempotent.
pub async fn declare(channel: &Channel, config: &Config) -> Result<(), QueueError> {
    let names = Names::new(&config.farm.name);
    let durable = QueueDeclareOptions {
        durable: true,
        ..Default::default()
    };
    let limit = config.cell.max_attempts + DELIVERY_LIMIT_SLACK;
    for (pool, p) in &config.pools {
        let dead = names.dead(pool);
        channel
            .queue_declare(&dead, durable, quorum_args(None, None, limit))
            .await?;
        for queue in [names.priority(pool), names.work(pool)] {
            let args = quorum_args(Some(&dead), p.max_queue_length, limit);
            channel.queue_declare(&queue, durable, args).await?;
        }
    }
    channel
        .queue_declare(&names.results(), durable, quorum_args(None, None, limit))
        .await?;
    Ok(())
}

/// One connection to the farm's broker with a confirmed publisher, the farm's topology
/// declared on it. Dropping it closes the connection; [`Broker::close`] waits for that.
pub struct Broker {
    conn: Option<Connection>,
    publisher: Publisher,
    names: Names,
}

impl Broker {
    /// Connects, opens the confirmed publisher and declares every queue of the farm.
    pub async fn connect(config: &Config) -> Result<Broker, QueueError> {
        let conn = connect(&config.amqp.url).await?;
        let publisher = Publisher::open(&conn).await?;
        declare(publisher.channel(), config).await?;
        Ok(Broker {
            conn: Some(conn),
            publisher,
            names: Names::new(&config.farm.name),
        })
    }

    pub fn publisher(&self) -> &Publisher {
        &self.publisher
    }

    pub fn names(&self) -> &Names {
        &self.names
    }

    pub fn connection(&self) -> &Connection {
        self.conn.as_ref().expect("only taken by close and drop")
    }

    /// Ready messages in a queue and its consumers (see [`ready`]).
    pub async fn ready(&self, queue: &str) -> Result<(u32, u32), QueueError> {
        ready(self.publisher.channel(), queue).await
    }

    /// Ready messages in a pool's priority lane and work queue together.
    pub async fn pool_ready(&self, pool: &str) -> Result<u64, QueueError> {
        pool_ready(self.publisher.channel(), &self.names, pool).await
    }

    /// Closes the connection and waits for the broker to say so.
    pub async fn close(mut self, why: &str) {
        if let Some(conn) = self.conn.take() {
            if let Err(e) = conn.close(200, why).await {
                tracing::debug!(error = %e, "closing the broker connection");
            }
        }
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        // lapin keeps a dropped connection open; close it in the background.
        let (Some(conn), Ok(runtime)) = (self.conn.take(), tokio::runtime::Handle::try_current())
        else {
            return;
        };
        runtime.spawn(async move {
            let _ = conn.close(200, "dropped").await;
        });
    }
}

/// Ready messages in a queue (the broker does not count unacked deliveries).
pub async fn ready(channel: &Channel, queue: &str) -> Result<(u32, u32), QueueError> {
    let q = channel
        .queue_declare(
            queue,
            QueueDeclareOptions {
                passive: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await?;
    Ok((q.message_count(), q.consumer_count()))
}

/// Ready messages in a pool's priority lane and work queue together.
pub async fn pool_ready(channel: &Channel, names: &Names, pool: &str) -> Result<u64, QueueError> {
    let mut total = 0;
    for lane in [names.priority(pool), names.work(pool)] {
        total += u64::from(ready(channel, &lane).await?.0);
    }
    Ok(total)
}

/// A channel in confirm mode.
#[derive(Clone)]
pub struct Publisher {
    channel: Channel,
}

impl Publisher {
    pub async fn open(conn: &Connection) -> Result<Publisher, QueueError> {
        let channel = conn.create_channel().await?;
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await?;
        Ok(Publisher { channel })
    }

    pub fn channel(&self) -> &Channel {
        &self.channel
    }

    /// Publishes a persistent message to `queue` and waits for the broker's confirm.
    pub async fn publish(
        &self,
        queue: &str,
        body: &[u8],
        headers: &[(&str, &str)],
    ) -> Result<(), QueueError> {
        let mut table = FieldTable::default();
        for (k, v) in headers {
            table.insert(
                ShortString::from(*k),
                AMQPValue::LongString(LongString::from(*v)),
            );
        }
        let confirm = self.send(queue, body, table).await?.await?;
        confirmed(queue, confirm)
    }

    /// Publishes persistent messages to `queue`, all of them before awaiting any
    /// confirm: one round trip for the lot instead of one each. The results are in the
    /// order of `bodies`; each is `Ok` only once the broker has confirmed that message.
    pub async fn publish_many(
        &self,
        queue: &str,
        bodies: &[Vec<u8>],
    ) -> Vec<Result<(), QueueError>> {
        let mut pending = Vec::with_capacity(bodies.len());
        for body in bodies {
            pending.push(self.send(queue, body, FieldTable::default()).await);
        }
        let mut results = Vec::with_capacity(bodies.len());
        for sent in pending {
            results.push(match sent {
                Ok(confirm) => match confirm.await {
                    Ok(c) => confirmed(queue, c),
                    Err(e) => Err(e.into()),
                },
                Err(e) => Err(e),
            });
        }
        results
    }

    /// Sends one persistent, mandatory message; the returned future is its confirm.
    async fn send(
        &self,
        queue: &str,
        body: &[u8],
        headers: FieldTable,
    ) -> Result<lapin::publisher_confirm::PublisherConfirm, QueueError> {
        let props = BasicProperties::default()
            .with_delivery_mode(2)
            .with_content_type("application/json".into())
            .with_headers(headers);
        let options = BasicPublishOptions {
            mandatory: true,
            ..Default::default()
        };
        Ok(self
            .channel
            .basic_publish("", queue, options, body, props)
            .await?)
    }
}

/// What a confirm says of one message: a mandatory message the broker could not route
/// comes back, a nack means it was not kept.
fn confirmed(queue: &str, confirm: Confirmation) -> Result<(), QueueError> {
    match confirm {
        Confirmation::Ack(None) | Confirmation::NotRequested => Ok(()),
        Confirmation::Ack(Some(returned)) => Err(QueueError::Returned {
            queue: queue.into(),
            reply: returned.reply_text.to_string(),
        }),
        Confirmation::Nack(_) => Err(QueueError::Nacked {
            queue: queue.into(),
        }),
    }
}

/// Takes the next ready message of `queue`, if there is one (`basic.get`): a delivery is
/// only ever taken for a slot that starts it at once. See [`crate::cell`]'s session for
/// why a cell does not keep consumers with a prefetch.
pub async fn take(channel: &Channel, queue: &str) -> Result<Option<Delivery>, QueueError> {
    let got = channel.basic_get(queue, BasicGetOptions::default()).await?;
    Ok(got.map(|m| m.delivery))
}

/// A message in a dead-letter queue, as [`browse`] saw it.
#[derive(Debug, Clone, PartialEq)]
pub struct DeadLetter {
    /// The job id: the `x-cellfarm-job-id` header, else the body's; empty if neither.
    pub job_id: String,
    /// Why it is there: the cell's `x-cellfarm-reason`, else the broker's `x-death`.
    pub reason: String,
}

/// Looks at up to `limit` messages at the head of `queue` without taking them: each is
/// fetched unacknowledged and all are returned at once (nack, requeue), as RabbitMQ's
/// own "get messages, requeue" does. The queue keeps every message, in order.
pub async fn browse(
    channel: &Channel,
    queue: &str,
    limit: usize,
) -> Result<Vec<DeadLetter>, QueueError> {
    let mut seen = Vec::new();
    let mut last = None;
    while seen.len() < limit {
        let Some(m) = channel.basic_get(queue, BasicGetOptions::default()).await? else {
            break;
        };
        last = Some(m.delivery.delivery_tag);
        seen.push(dead_letter(&m.delivery.data, &m.delivery.properties));
    }
    if let Some(tag) = last {
        let back = BasicNackOptions {
            multiple: true,
            requeue: true,
        };
        channel.basic_nack(tag, back).await?;
    }
    Ok(seen)
}

fn dead_letter(body: &[u8], props: &BasicProperties) -> DeadLetter {
    let header = props
        .headers()
        .as_ref()
        .and_then(|h| match h.inner().get(JOB_ID_HEADER) {
            Some(AMQPValue::LongString(s)) => Some(s.to_string()),
            _ => None,
        })
        .filter(|id| !id.is_empty());
    let job_id = header.unwrap_or_else(|| {
        serde_json::from_slice::<serde_json::Value>(body)
            .ok()
            .and_then(|v| v.get("job_id")?.as_str().map(str::to_string))
            .unwrap_or_default()
    });
    let reason = reason(props)
        .or_else(|| broker_death(props))
        .unwrap_or_else(|| "no reason given".into());
    DeadLetter { job_id, reason }
}

/// What the broker's `x-death` header says of a message it dead-lettered by itself:
/// the first entry's reason, queue and count, e.g. `delivery_limit in t.default.work
/// (1 time)`.
pub fn broker_death(props: &BasicProperties) -> Option<String> {
    let headers = props.headers().as_ref()?;
    let AMQPValue::FieldArray(deaths) = headers.inner().get("x-death")? else {
        return None;
    };
    let AMQPValue::FieldTable(first) = deaths.as_slice().first()? else {
        return None;
    };
    let text = |key: &str| match first.inner().get(key) {
        Some(AMQPValue::LongString(s)) => s.to_string(),
        Some(AMQPValue::ShortString(s)) => s.to_string(),
        _ => "?".into(),
    };
    let count = match first.inner().get("count") {
        Some(AMQPValue::LongLongInt(n)) => n.to_string(),
        Some(AMQPValue::LongInt(n)) => n.to_string(),
        _ => "?".into(),
    };
    Some(format!(
        "{} in {} ({count} time(s))",
        text("reason"),
        text("queue")
    ))
}

/// The reason header of a dead-lettered delivery, if any.
pub fn reason(props: &BasicProperties) -> Option<String> {
    let headers = props.headers().as_ref()?;
    match headers.inner().get(REASON_HEADER)? {
        AMQPValue::LongString(s) => Some(s.to_string()),
        _ => None,
    }
}
