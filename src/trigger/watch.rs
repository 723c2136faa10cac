//! `cellfarm watch s3://bucket/prefix/`: the trigger for places without Lambda (and the
//! local demo). Every pass lists the prefix and sends each object the ledger has not
//! taken in this version (ETag) through [`Trigger::object`], so an object becomes jobs
//! once, across restarts of the watcher. `--reconcile` makes one pass and exits: next to
//! the Lambda it finds objects whose events were lost.

use std::time::Duration;

use super::{Outcome, Trigger, Upload};
use crate::boot::Systems;
use crate::config::Config;
use crate::ledger::SubmitOutcome;
use crate::queue::Broker;
use crate::s3url::S3Url;

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

/// `cellfarm watch`: what to watch, and how.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The prefix to watch, s3://bucket/prefix/.
    #[arg(value_parser = S3Url::parse)]
    pub url: S3Url,
    /// Seconds between passes.
    #[arg(long = "interval", default_value_t = 10)]
    pub interval_secs: u64,
    /// One pass, then exit: find objects that never became jobs (lost events).
    #[arg(long)]
    pub reconcile: bool,
}

/// Watches until Ctrl-C (or one pass with `reconcile`). `location` is this process's
/// `--config`, which launched cells are started with.
pub async fn run(
    config: &Config,
    location: &str,
    sdk: &aws_config::SdkConfig,
    args: Args,
) -> anyhow::Result<()> {
    let url = &args.url;
    anyhow::ensure!(
        !config.routes.is_empty(),
        "watch {url}: the config has no [[routes]], so no object would become a job"
    );
    let systems = Systems::connect(config, sdk)
        .await?
        .with_cloud(config, location, "watch", None)?;
    let watcher = Watcher {
        config,
        systems: &systems,
    };
    let stop = tokio_util::sync::CancellationToken::new();
    let on_signal = stop.clone();
    tokio::spawn(async move {
        let _ = tokio::signal::ctrl_c().await;
        on_signal.cancel();
    });
    let interval = (!args.reconcile).then(|| Duration::from_secs(args.interval_secs.max(1)));
    let pass = watcher.run(url, interval, stop).await?;
    if args.reconcile {
        println!(
            "{} object(s) under {url}; {} taken, {} job(s) enqueued",
            pass.objects, pass.taken, pass.enqueued
        );
    }
    Ok(())
}

pub struct Watcher<'a> {
    pub config: &'a Config,
    pub systems: &'a Systems,
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
        let broker = Broker::connect(self.config).await?;
        let result = self.pass_on(&broker, url).await;
        broker.close("pass over").await;
        result
    }

    async fn pass_on(&self, broker: &Broker, url: &S3Url) -> anyhow::Result<Pass> {
        let (store, ledger) = (self.systems.store.as_ref(), &self.systems.ledger);
        let trigger = Trigger {
            config: self.config,
            store,
            ledger,
            publisher: broker.publisher(),
        };
        let mut pass = Pass::default();
        let mut outcomes = Vec::new();
        for o in store.list(&url.bucket, &url.key).await? {
            if o.key.ends_with('/') {
                continue;
            }
            pass.objects += 1;
            // Some S3 servers (s3s-fs) list objects without their ETag.
            let o = if o.etag.is_empty() {
                store.head(&url.bucket, &o.key).await?
            } else {
                o
            };
            let seen = ledger.seen(&url.bucket, &o.key).await?;
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
                let new = jobs.iter().filter(|j| j.outcome != SubmitOutcome::Known);
                pass.enqueued += new.count();
            }
            outcomes.push(outcome);
        }
        let pools = super::pools(&outcomes);
        self.systems
            .kick(self.config, broker, "watch", &pools)
            .await;
        Ok(pass)
    }
}
