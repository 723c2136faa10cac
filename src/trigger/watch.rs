//! `cellfarm watch s3://bucket/prefix/`: the trigger for places without Lambda (and the
//! local demo). Every pass lists the prefix and sends each object the ledger has not
//! taken in this version (ETag) through [`Trigger::object`], so an object becomes jobs
//! once, across restarts of the watcher. `--reconcile` makes one pass and exits: next to
//! the Lambda it finds objects whose events were lost.

use std::time::Duration;

use super::{Outcome, Trigger, Upload};
use crate::config::Config;
use crate::ledger::Ledger;
use crate::locks::Heartbeats;
use crate::queue::{self, Publisher};
use crate::s3url::S3Url;
use crate::store::ObjectStore;

/// What one pass did.
#[derive(Debug, Default, Clone, Copy, PartialEq, serde::Serialize)]
pub struct Pass {
    /// Objects under the prefix.
    pub objects: usize,
    /// Objects taken in this pass (routed, or matched by no route).
    pub taken: usize,
    /// Jobs enqueued (not already known).
    pub enqueued: usize,
}

pub struct Watcher<'a> {
    pub config: &'a Config,
    pub store: &'a dyn ObjectStore,
    pub ledger: &'a Ledger,
    pub beats: &'a Heartbeats,
    pub cloud: Option<&'a dyn crate::cloud::Cloud>,
}

impl Watcher<'_> {
    /// Passes every `interval` until `stop` fires; one pass with `interval` `None`.
    pub async fn run(
        &self,
        url: &S3Url,
        interval: Option<Duration>,
        stop: tokio_util::sync::CancellationToken,
    ) -> anyhow::Result<Pass> {
        loop {
            let pass = match self.pass(url).await {
                Ok(pass) => pass,
                Err(e) if interval.is_some() => {
                    tracing::warn!(
                        error = format!("{e:#}"),
                        "watch pass failed; next pass retries"
                    );
                    Pass::default()
                }
                Err(e) => return Err(e),
            };
            if pass.taken > 0 {
                tracing::info!(prefix = %url, objects = pass.objects, taken = pass.taken,
                    enqueued = pass.enqueued, "watch pass");
            }
            let Some(every) = interval else {
                return Ok(pass);
            };
            tokio::select! {
                _ = tokio::time::sleep(every) => {}
                _ = stop.cancelled() => return Ok(pass),
            }
        }
    }

    async fn pass(&self, url: &S3Url) -> anyhow::Result<Pass> {
        let conn = queue::connect(&self.config.amqp.url).await?;
        let result = self.pass_on(&conn, url).await;
        let _ = conn.close(200, "pass over").await;
        result
    }

    async fn pass_on(&self, conn: &lapin::Connection, url: &S3Url) -> anyhow::Result<Pass> {
        let publisher = Publisher::open(conn).await?;
        queue::declare(publisher.channel(), self.config).await?;
        let trigger = Trigger {
            config: self.config,
            store: self.store,
            ledger: self.ledger,
            publisher: &publisher,
        };
        let mut pass = Pass::default();
        let mut outcomes = Vec::new();
        for o in self.store.list(&url.bucket, &url.key).await? {
            if o.key.ends_with('/') {
                continue;
            }
            pass.objects += 1;
            // Some S3 servers (s3s-fs) list objects without their ETag.
            let o = if o.etag.is_empty() {
                self.store.head(&url.bucket, &o.key).await?
            } else {
                o
            };
            let seen = self.ledger.seen(&url.bucket, &o.key).await?;
            if seen.is_some_and(|(etag, _)| etag == o.etag) {
                continue;
            }
            let upload = Upload {
                bucket: url.bucket.clone(),
                key: o.key.clone(),
                etag: Some(o.etag.clone()),
                size: Some(o.size),
                sequencer: None,
            };
            let outcome = trigger.object(&upload).await?;
            pass.taken += 1;
            if let Outcome::Routed { jobs, .. } = &outcome {
                pass.enqueued += jobs.iter().filter(|j| j.outcome != "known").count();
            }
            outcomes.push(outcome);
        }
        if let Some(cloud) = self.cloud {
            let pools = super::pools(&outcomes);
            super::tick(
                self.config,
                self.ledger,
                self.beats,
                cloud,
                publisher.channel(),
                "watch",
                &pools,
            )
            .await;
        }
        Ok(pass)
    }
}
