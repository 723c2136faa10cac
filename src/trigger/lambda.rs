//! The trigger as an AWS Lambda function (custom runtime: this binary as `bootstrap`).
//!
//! Each invocation carries an S3 event. Every `ObjectCreated` record goes through
//! [`Trigger::object`]; `s3:TestEvent` and other event types are skipped; a record that
//! cannot be read is answered as `malformed` and fails only itself. The answer lists what
//! happened to each record. If the farm's systems fail (ledger, broker), the invocation
//! fails and Lambda retries it: job ids make the retry enqueue nothing twice.

use std::sync::Arc;

use aws_lambda_events::s3::S3EventRecord;
use lambda_runtime::{service_fn, LambdaEvent};
use serde_json::{json, Value};

use super::{Trigger, Upload};
use crate::boot::Systems;
use crate::config::Config;
use crate::queue::Broker;

/// What stays warm between invocations.
pub struct Function {
    pub config: Config,
    pub systems: Systems,
}

/// `cellfarm lambda`: connects once, then serves invocations until the runtime API goes
/// away. `location` is this process's `--config`, which launched cells are started with.
pub async fn run(
    config: Config,
    location: &str,
    sdk: &aws_config::SdkConfig,
) -> anyhow::Result<()> {
    let systems = Systems::connect(&config, sdk)
        .await?
        .with_cloud(&config, location, "trigger", None)?;
    Function { config, systems }.serve().await
}

/// One record of an event, read.
#[derive(Debug, PartialEq)]
pub enum Record {
    Upload(Upload),
    /// Not an object creation (a delete, say): nothing to do.
    Skipped {
        event: String,
    },
    Malformed {
        reason: String,
    },
}

/// The records of an S3 event; `None` for the test event S3 sends when a notification
/// is configured.
pub fn records(event: &Value) -> Option<Vec<Record>> {
    if event.get("Event").and_then(Value::as_str) == Some("s3:TestEvent") {
        return None;
    }
    let Some(records) = event.get("Records").and_then(Value::as_array) else {
        return Some(vec![Record::Malformed {
            reason: "the event has no Records array".into(),
        }]);
    };
    Some(records.iter().map(record).collect())
}

fn record(raw: &Value) -> Record {
    let malformed = |reason: String| Record::Malformed { reason };
    let r: S3EventRecord = match serde_json::from_value(raw.clone()) {
        Ok(r) => r,
        Err(e) => return malformed(format!("not an S3 event record: {e}")),
    };
    let event = r.event_name.unwrap_or_default();
    if !event.starts_with("ObjectCreated:") {
        return Record::Skipped { event };
    }
    let Some(bucket) = r.s3.bucket.name.filter(|b| !b.is_empty()) else {
        return malformed("s3.bucket.name is missing".into());
    };
    let Some(raw_key) = r.s3.object.key.filter(|k| !k.is_empty()) else {
        return malformed("s3.object.key is missing".into());
    };
    let key = match super::decode_key(&raw_key) {
        Ok(k) => k,
        Err(e) => return malformed(e),
    };
    Record::Upload(Upload {
        bucket,
        key,
        etag: r.s3.object.e_tag.map(|e| e.trim_matches('"').to_string()),
        size: r.s3.object.size.and_then(|s| u64::try_from(s).ok()),
        sequencer: r.s3.object.sequencer,
    })
}

impl Function {
    /// Serves invocations until the runtime API goes away.
    pub async fn serve(self) -> anyhow::Result<()> {
        let me = Arc::new(self);
        lambda_runtime::run(service_fn(move |event: LambdaEvent<Value>| {
            let me = me.clone();
            async move { me.invoke(event.payload).await }
        }))
        .await
        .map_err(|e| anyhow::anyhow!("Lambda runtime: {e}"))
    }

    async fn invoke(&self, event: Value) -> Result<Value, lambda_runtime::Error> {
        let Some(records) = records(&event) else {
            tracing::info!("s3:TestEvent; ignored");
            return Ok(json!({ "records": [], "ignored": "s3:TestEvent" }));
        };
        let broker = Broker::connect(&self.config).await?;
        let answer = self.records(&broker, records).await;
        broker.close("invocation over").await;
        let (answers, failure) = answer?;
        if let Some(e) = failure {
            return Err(format!(
                "the farm could not take every record (Lambda retries the event): {e:#}"
            )
            .into());
        }
        Ok(json!({ "records": answers }))
    }

    async fn records(
        &self,
        broker: &Broker,
        records: Vec<Record>,
    ) -> anyhow::Result<(Vec<Value>, Option<anyhow::Error>)> {
        let trigger = Trigger {
            config: &self.config,
            store: self.systems.store.as_ref(),
            ledger: &self.systems.ledger,
            publisher: broker.publisher(),
        };
        let mut answers = Vec::new();
        let mut outcomes = Vec::new();
        let mut failure = None;
        for r in records {
            let answer = match r {
                Record::Malformed { reason } => {
                    tracing::warn!(%reason, "malformed record; skipped");
                    json!({ "outcome": "malformed", "error": reason })
                }
                Record::Skipped { event } => json!({ "outcome": "skipped", "event": event }),
                Record::Upload(u) => match trigger.object(&u).await {
                    Ok(o) => {
                        let mut v = serde_json::to_value(&o)?;
                        v["bucket"] = json!(u.bucket);
                        v["key"] = json!(u.key);
                        outcomes.push(o);
                        v
                    }
                    Err(e) => {
                        tracing::warn!(bucket = %u.bucket, key = %u.key, error = format!("{e:#}"), "record failed");
                        let v = json!({ "bucket": u.bucket, "key": u.key, "outcome": "error", "error": format!("{e:#}") });
                        failure = Some(e);
                        v
                    }
                },
            };
            answers.push(answer);
        }
        let pools = super::pools(&outcomes);
        self.systems
            .kick(&self.config, broker, "trigger", &pools)
            .await;
        Ok((answers, failure))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(key: &str, name: &str) -> Value {
        json!({ "Records": [{
            "eventVersion": "2.1", "eventSource": "aws:s3", "awsRegion": "us-east-1",
            "eventTime": "2026-11-23T10:00:00.000Z", "eventName": name,
            "userIdentity": { "principalId": "AWS:X" },
            "requestParameters": { "sourceIPAddress": "127.0.0.1" },
            "responseElements": { "x-amz-request-id": "R", "x-amz-id-2": "I" },
            "s3": { "s3SchemaVersion": "1.0", "configurationId": "c",
                    "bucket": { "name": "in", "ownerIdentity": { "principalId": "X" }, "arn": "arn:aws:s3:::in" },
                    "object": { "key": key, "size": 1024, "eTag": "\"abc\"", "sequencer": "0055AED6DCD90281E5" } }
        }]})
    }

    #[test]
    fn records_decode_keys_and_skip_what_is_not_a_creation() {
        let r = records(&event("a+b%2Bc.mp4", "ObjectCreated:Put")).unwrap();
        assert_eq!(
            r,
            vec![Record::Upload(Upload {
                bucket: "in".into(),
                key: "a b+c.mp4".into(),
                etag: Some("abc".into()),
                size: Some(1024),
                sequencer: Some("0055AED6DCD90281E5".into()),
            })]
        );
        let r = records(&event("x.mp4", "ObjectRemoved:Delete")).unwrap();
        assert!(matches!(&r[0], Record::Skipped { .. }));
        assert!(records(&json!({"Service": "Amazon S3", "Event": "s3:TestEvent"})).is_none());
        let r = records(&json!({"Records": [{"s3": 5}]})).unwrap();
        assert!(matches!(&r[0], Record::Malformed { .. }));
    }
}
