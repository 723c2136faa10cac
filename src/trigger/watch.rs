//! `cellfarm watch s3://bucket/prefix/`: the trigger for places without Lambda (and the
//! local demo). Every pass lists the prefix and sends each object the ledger has not
//! taken in this version (ETag) through [`Trigger::object`], so an object becomes jobs
//! once, across restarts of the watcher. `--reconcile` makes one pass and exits: next to
//! the Lambda it finds objects whose events were lost.
//!
//! A watcher remembers what it has taken or found taken (key and ETag), so that a pass
//! over a prefix of a million objects asks the ledger only about the objects that are
//! new or changed since the last pass, a listing page at a time. (On a server whose
//! listing carries no ETags, s3s-fs, each pass still HEADs every object to learn them.)

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use super::{Outcome, Trigger, Upload};
use crate::boot::Systems;
use crate::config::Config;
use crate::ledger::SubmitOutcome;
use crate::queue::Broker;
use crate::s3url::S3Url;
use crate::store::ObjectMeta;
use crate::submit;

/// Objects asked about in one ledger query.
const LOOKUP_PAGE: usize = 1000;

/// What one pass did.
#[derive(Debug, Default, Clone, Copy, PartialEq, serde::Serialize)]
pub struct Pass {
    /// Objects under the prefix.
    pub objects: usize,
    /// Objects taken in this pass (routed, or matched by no route).
    pub taken: usize,
    /// Jobs enqueued (not already known).
    pub enqueued: usize,
    /// Objects the ledger was asked about: new to this watcher, or changed.
    pub looked_up: usize,
    /// Objects listed that could not be read (HEAD failed): the next pass tries again.
    pub unreadable: usize,
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
    let watcher = Watcher::new(config, &systems);
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
        if let Some(e) = submit::shortfall(pass.unreadable, pass.objects - pass.unreadable) {
            anyhow::bail!("{e}; run the reconcile again to take them");
        }
    }
    Ok(())
}

pub struct Watcher<'a> {
    config: &'a Config,
    systems: &'a Systems,
    /// Key → ETag of the objects taken, by this watcher or before it: not asked about
    /// again while their ETag stays.
    taken: Mutex<HashMap<String, String>>,
}

impl<'a> Watcher<'a> {
    pub fn new(config: &'a Config, systems: &'a Systems) -> Watcher<'a> {
        Watcher {
            config,
            systems,
            taken: Mutex::new(HashMap::new()),
        }
    }

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
            if pass.looked_up > 0 {
                tracing::info!(prefix = %url, objects = pass.objects, looked_up = pass.looked_up,
                    taken = pass.taken, enqueued = pass.enqueued, "watch pass");
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
        let found = submit::objects(store, url, true).await?;
        for u in &found.unreadable {
            tracing::warn!(error = %u, "cannot read an object; the next pass tries again");
        }
        let mut pass = Pass {
            objects: found.objects.len() + found.unreadable.len(),
            unreadable: found.unreadable.len(),
            ..Pass::default()
        };
        let mut outcomes = Vec::new();
        let fresh: Vec<_> = {
            let taken = self.taken.lock().expect("never poisoned");
            let known = |o: &&ObjectMeta| taken.get(&o.key) == Some(&o.etag);
            found.objects.iter().filter(|o| !known(o)).collect()
        };
        for page in fresh.chunks(LOOKUP_PAGE) {
            pass.looked_up += page.len();
            let keys: Vec<&str> = page.iter().map(|o| o.key.as_str()).collect();
            let seen = ledger.seen_many(&url.bucket, &keys).await?;
            for o in page {
                if seen.get(&o.key) != Some(&o.etag) {
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
                let mut taken = self.taken.lock().expect("never poisoned");
                taken.insert(o.key.clone(), o.etag.clone());
            }
        }
        let pools = super::pools(&outcomes);
        self.systems
            .kick(self.config, broker, "watch", &pools)
            .await;
        Ok(pass)
    }
}
