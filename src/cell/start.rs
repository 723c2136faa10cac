//! `cellfarm cell`: who this cell is, which pools it serves, the checks before it takes
//! work, then the cell's run, and what its machine does once it has drained.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use aws_config::SdkConfig;

use super::reload::Reload;
use super::{Cell, Exit, Identity, Shutdown};
use crate::boot::{self, ConfigSource, Systems};
use crate::config::{CloudKind, Config};
use crate::metadata::{Metadata, POOL_TAG};
use crate::update;

/// What the command line says about this cell.
#[derive(Debug, clap::Args)]
pub struct Options {
    /// Pools to serve (default: all, or on EC2 the one its instance is tagged with).
    #[arg(long = "pool")]
    pub pools: Vec<String>,
    /// Exit once the queues are empty and no job has run for this many seconds.
    #[arg(long = "until-idle", value_name = "SECS", value_parser = parse_secs)]
    pub until_idle: Option<Duration>,
    /// The launch that made this cell; the `local` cloud sets it for its siblings.
    #[arg(long, env = "CELLFARM_LAUNCH_ID", value_name = "ID")]
    pub launch_id: Option<String>,
    /// Instance metadata base address, overriding cloud.metadata_url for this process
    /// only (`local` siblings do not inherit it).
    #[arg(long, env = "CELLFARM_METADATA_URL", value_name = "URL")]
    pub metadata_url: Option<String>,
}

fn parse_secs(s: &str) -> Result<Duration, std::num::ParseIntError> {
    s.parse().map(Duration::from_secs)
}

/// Runs a cell with the config `source` gave (`config` in `version`) until it is stopped
/// or decides to die; then ends its machine, or re-executes a newer binary.
pub async fn run(
    source: ConfigSource,
    (config, version): (Config, String),
    sdk: &SdkConfig,
    opts: Options,
) -> anyhow::Result<()> {
    for p in &opts.pools {
        anyhow::ensure!(
            config.pools.contains_key(p),
            "--pool {p}: no such pool in the config"
        );
    }
    let identity = identity(&config, &opts).await?;
    let pools = pools(&config, opts.pools, identity.metadata.as_ref()).await?;
    boot::check_host(&config).await?;
    let sandbox = crate::ffmpeg::Sandbox::start(&config.cell)
        .await
        .context("cannot confine FFmpeg (cell.sandbox)")?;
    warn_if_deliveries_outlast_the_broker(&config, &pools);
    let systems = Systems::connect(&config, sdk).await?;
    if let Some(update) = config.update.as_ref().filter(|u| !update::running(u)) {
        let dir = std::path::Path::new(&config.cell.scratch_dir).join("bin");
        match update::fetch(systems.store.as_ref(), update, &dir).await {
            Ok(binary) => return Err(update::reexec(&binary)).context("re-executing"),
            Err(e) => tracing::error!(error = %e, "staying on this binary"),
        }
    }
    // Fail fast on a wrong broker address; later losses are the cell's to recover from.
    boot::broker(&config).await?.close("checked").await;
    let systems = systems.with_cloud(
        &config,
        &source.location,
        &identity.cell_id,
        identity.metadata.clone(),
    )?;
    let grace = Duration::from_secs(config.cell.shutdown_grace_secs);
    let reload = Reload::new(source, version);
    let cell = Arc::new(Cell::new(
        Arc::new(config),
        reload,
        systems,
        pools,
        identity,
        sandbox,
    ));
    let shutdown = Shutdown::default();
    tokio::spawn(watch_signals(shutdown.clone(), grace));
    cell.clone().run(shutdown, opts.until_idle).await;
    // Death comes last, after the drain and the flush; a cell that had a spot notice
    // leaves too rather than wait for the reclaim.
    match (cell.exit(), &cell.systems.cloud) {
        (Some(Exit::Die | Exit::Notice(_) | Exit::Sick(_)), Some(cloud)) => {
            tracing::info!(cell = %cell.cell_id, "terminating this cell's machine");
            cloud.terminate_self().await?;
        }
        (Some(Exit::Update(binary)), _) => {
            return Err(update::reexec(&binary)).context("re-executing")
        }
        _ => {}
    }
    Ok(())
}

/// Who this cell is: on `ec2`, the instance (from metadata, which must answer); elsewhere
/// a name of its own, with metadata polled only if an address is configured.
async fn identity(config: &Config, opts: &Options) -> anyhow::Result<Identity> {
    let mut identity = Identity {
        cell_id: format!(
            "{}-{}-{:04x}",
            super::hostname(),
            std::process::id(),
            rand::random::<u16>()
        ),
        launch_id: opts.launch_id.clone(),
        metadata: None,
    };
    let Some(base) = crate::metadata::base_url(config, opts.metadata_url.as_deref()) else {
        return Ok(identity);
    };
    let metadata = Metadata::new(&base)?;
    if config.cloud.kind == CloudKind::Ec2 {
        let me = metadata
            .instance()
            .await
            .context("cloud.kind = \"ec2\" but this machine's instance metadata does not answer")?;
        tracing::info!(instance = %me.instance_id, r#type = %me.instance_type,
            zone = %me.availability_zone, region = %me.region, "running on EC2");
        identity.launch_id = identity.launch_id.or(Some(me.instance_id.clone()));
        identity.cell_id = me.instance_id;
    }
    identity.metadata = Some(metadata);
    Ok(identity)
}

/// The pools to serve: those asked for; else, for a launched EC2 instance, the pool it
/// was tagged with; else all.
async fn pools(
    config: &Config,
    asked: Vec<String>,
    metadata: Option<&Metadata>,
) -> anyhow::Result<Vec<String>> {
    let all = || config.pools.keys().cloned().collect();
    if !asked.is_empty() {
        return Ok(asked);
    }
    let Some(m) = metadata.filter(|_| config.cloud.kind == CloudKind::Ec2) else {
        return Ok(all());
    };
    match m.tag(POOL_TAG).await {
        Ok(Some(pool)) if config.pools.contains_key(&pool) => Ok(vec![pool]),
        Ok(Some(pool)) => {
            anyhow::bail!("instance tag {POOL_TAG}={pool}: no such pool in the config")
        }
        Ok(None) | Err(_) => Ok(all()),
    }
}

/// Warns when a delivery can stay unacked longer than RabbitMQ's `consumer_timeout`.
fn warn_if_deliveries_outlast_the_broker(config: &Config, pools: &[String]) {
    let bound = config.unacked_bound_secs(pools);
    if bound > config.amqp.consumer_timeout_secs {
        tracing::warn!(
            consumer_timeout_secs = config.amqp.consumer_timeout_secs,
            needed_secs = bound,
            "RabbitMQ's consumer_timeout may be shorter than a job can run here (its step \
             timeouts): long jobs would be returned and count toward the delivery limit; \
             raise consumer_timeout in rabbitmq.conf (and amqp.consumer_timeout_secs), or \
             lower step_timeout_secs"
        );
    }
}

/// First SIGTERM/SIGINT: drain, and abort after the grace period. Second: abort now.
async fn watch_signals(shutdown: Shutdown, grace: Duration) {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("SIGTERM can be handled");
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
    tracing::info!(
        grace_secs = grace.as_secs(),
        "stop requested: draining (signal again to stop now)"
    );
    shutdown.drain.cancel();
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
        _ = tokio::time::sleep(grace) => {}
    }
    tracing::warn!("stopping now: running jobs are handed back");
    shutdown.abort.cancel();
}
