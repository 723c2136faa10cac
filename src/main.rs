//! The `cellfarm` binary: parse the command line, load the config, run, map errors to
//! an exit code (64 for a bad config or usage, 1 for anything else).

use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};

use cellfarm::boot::{self, redact};
use cellfarm::cell::{Cell, ConfigSource, Identity, Shutdown};
use cellfarm::config::{CloudKind, Config};
use cellfarm::ledger::Ledger;
use cellfarm::locks::Heartbeats;
use cellfarm::metadata::Metadata;
use cellfarm::queue::{self, Publisher};
use cellfarm::s3url::S3Url;
use cellfarm::{mitosis, status, submit, trigger, update};

/// Exit code for a bad config or command line (BSD `EX_USAGE`).
const EXIT_CONFIG: u8 = 64;

#[derive(Parser)]
#[command(
    version,
    about = "A self-balancing video-processing farm of spot instances"
)]
struct Cli {
    /// Config file: a local path or s3://bucket/key.
    #[arg(
        long,
        env = "CELLFARM_CONFIG",
        global = true,
        default_value = "cellfarm.toml"
    )]
    config: String,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Create or upgrade the ledger schema.
    Migrate,
    /// Validate the config and exit.
    Check,
    /// Enqueue objects as jobs: one object, or every object under --prefix.
    Submit {
        /// The object, s3://bucket/key.
        url: Option<String>,
        /// Every object under s3://bucket/prefix/ (reprocessing on demand).
        #[arg(long, conflicts_with = "url")]
        prefix: Option<String>,
        #[arg(long)]
        pipeline: String,
        /// Put the jobs on the priority lane.
        #[arg(long)]
        priority: bool,
        /// Reprocess jobs that already finished.
        #[arg(long)]
        force: bool,
        #[arg(long)]
        json: bool,
    },
    /// Run a cell: consume jobs until stopped.
    Cell {
        /// Pools to serve (default: all).
        #[arg(long)]
        pool: Vec<String>,
        /// Exit once the queues are empty and no job has run for this many seconds.
        #[arg(long, value_name = "SECS")]
        until_idle: Option<u64>,
    },
    /// Print the FFmpeg command lines a pipeline runs (one JSON array per step), for
    /// checking a pipeline by hand or running the same work outside the farm.
    Args {
        #[arg(long)]
        pipeline: String,
        /// Local source file, for {input}.
        #[arg(long)]
        input: String,
        /// Output directory, for {out} (and {work}).
        #[arg(long)]
        out: String,
        /// FFmpeg threads, for {threads}.
        #[arg(long, default_value_t = 1)]
        threads: usize,
        /// A local file for a pipeline asset: NAME=PATH.
        #[arg(long, value_name = "NAME=PATH")]
        asset: Vec<String>,
    },
    /// Show queues, jobs by state, live cells and recent failures.
    Status {
        #[arg(long)]
        json: bool,
    },
    /// The trigger without Lambda: poll s3://bucket/prefix/ and turn each new object
    /// into jobs by the config's routes, once.
    Watch {
        url: String,
        /// Seconds between passes.
        #[arg(long, default_value_t = 10)]
        interval: u64,
        /// One pass, then exit: find objects that never became jobs (lost events).
        #[arg(long)]
        reconcile: bool,
    },
    /// The trigger as an AWS Lambda function (also when this binary runs as
    /// `bootstrap`): S3 events from the runtime API at AWS_LAMBDA_RUNTIME_API.
    Lambda,
}

fn main() -> ExitCode {
    // A Lambda custom runtime runs the binary as `bootstrap`, with no arguments.
    let lambda = std::env::args_os()
        .next()
        .and_then(|a| {
            std::path::Path::new(&a)
                .file_name()
                .map(|n| n == "bootstrap")
        })
        .unwrap_or(false);
    let cli = if lambda {
        Cli::parse_from(["bootstrap", "lambda"])
    } else {
        Cli::parse()
    };
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "info,lapin=off,aws=warn,sqlx=warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime can be built");
    let config = match runtime.block_on(boot::load_versioned(&cli.config)) {
        Ok(config) => config,
        Err(e) => {
            eprintln!("cellfarm: {e}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    match runtime.block_on(run(cli.command, config, &cli.config)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("cellfarm: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(
    command: Command,
    (config, version): (Config, String),
    location: &str,
) -> anyhow::Result<()> {
    match command {
        Command::Args {
            pipeline,
            input,
            out,
            threads,
            asset,
        } => {
            let p = config.pipeline(&pipeline)?;
            let threads = threads.to_string();
            let mut vars = std::collections::BTreeMap::from([
                ("input", input),
                ("out", out.clone()),
                ("work", out),
                ("threads", threads),
            ]);
            for a in &asset {
                let (name, path) = a
                    .split_once('=')
                    .ok_or_else(|| anyhow::anyhow!("--asset {a}: expected NAME=PATH"))?;
                vars.insert(name, path.to_string());
            }
            let commands = cellfarm::ffmpeg::commands(p.step_args(), &vars, &config.cell.demuxers)
                .map_err(|e| anyhow::anyhow!("pipeline {pipeline}: {e}"))?;
            for args in commands {
                let mut argv = vec!["ffmpeg".to_string()];
                argv.extend(args);
                println!("{}", serde_json::to_string(&argv)?);
            }
            Ok(())
        }
        Command::Check => {
            println!("config ok: farm {}", config.farm.name);
            Ok(())
        }
        Command::Migrate => {
            let ledger = ledger(&config).await?;
            ledger.migrate().await?;
            println!("ledger migrated (schema {})", config.postgres.schema);
            Ok(())
        }
        Command::Submit {
            url,
            prefix,
            pipeline,
            priority,
            force,
            json,
        } => {
            let (url, is_prefix) = match (url, prefix) {
                (Some(u), None) => (u, false),
                (None, Some(p)) => (p, true),
                _ => anyhow::bail!("give an object URL or --prefix s3://bucket/prefix/"),
            };
            let url = S3Url::parse(&url).map_err(anyhow::Error::msg)?;
            config.pipeline(&pipeline)?;
            let store = boot::store(&config).await;
            let ledger = ledger(&config).await?;
            ledger.check_migrated().await?;
            let (conn, publisher) = broker(&config).await?;
            let req = submit::Request {
                pipeline: &pipeline,
                pool: None,
                priority,
                force,
            };
            let cloud = boot::cloud(&config, location, "submit", None).await?;
            let done = async {
                queue::declare(publisher.channel(), &config).await?;
                let objects = submit::objects(store.as_ref(), &url, is_prefix).await?;
                let done =
                    submit::submit(&config, &ledger, &publisher, &url.bucket, &objects, &req)
                        .await?;
                // Zero to one: a farm with no cell starts itself.
                if let Some(cloud) = &cloud {
                    let beats = heartbeats(&config).await?;
                    let farm = mitosis::Farm {
                        config: &config,
                        ledger: &ledger,
                        locks: &beats,
                        cloud: cloud.as_ref(),
                        channel: publisher.channel(),
                        who: "submit",
                    };
                    let pool = &config.pipeline(&pipeline)?.pool;
                    let outcome =
                        mitosis::tick_patiently(&farm, pool, None, Duration::from_secs(10)).await?;
                    tracing::info!(pool, ?outcome, "mitosis tick after submit");
                }
                anyhow::Ok(done)
            }
            .await;
            let _ = conn.close(200, "done").await;
            let done = done?;
            for s in &done {
                if json {
                    println!("{}", serde_json::to_string(s)?);
                } else {
                    println!("{:<9} {} {} {}", s.outcome, s.job_id, s.pipeline, s.source);
                }
            }
            if !json {
                println!("{} object(s) under {url}", done.len());
            }
            Ok(())
        }
        Command::Cell { pool, until_idle } => {
            let source = ConfigSource::new(location, version);
            run_cell(config, source, pool, until_idle).await
        }
        Command::Watch {
            url,
            interval,
            reconcile,
        } => {
            let url = S3Url::parse(&url).map_err(anyhow::Error::msg)?;
            anyhow::ensure!(
                !config.routes.is_empty(),
                "watch {url}: the config has no [[routes]], so no object would become a job"
            );
            let store = boot::store(&config).await;
            let ledger = ledger(&config).await?;
            ledger.check_migrated().await?;
            let beats = heartbeats(&config).await?;
            let cloud = boot::cloud(&config, location, "watch", None).await?;
            let watcher = trigger::watch::Watcher {
                config: &config,
                store: store.as_ref(),
                ledger: &ledger,
                beats: &beats,
                cloud: cloud.as_deref(),
            };
            let stop = tokio_util::sync::CancellationToken::new();
            let on_signal = stop.clone();
            tokio::spawn(async move {
                let _ = tokio::signal::ctrl_c().await;
                on_signal.cancel();
            });
            let interval = (!reconcile).then(|| Duration::from_secs(interval.max(1)));
            let pass = watcher.run(&url, interval, stop).await?;
            if reconcile {
                println!(
                    "{} object(s) under {url}; {} taken, {} job(s) enqueued",
                    pass.objects, pass.taken, pass.enqueued
                );
            }
            Ok(())
        }
        Command::Lambda => {
            let function = trigger::lambda::Function {
                store: boot::store(&config).await,
                ledger: ledger(&config).await?,
                beats: heartbeats(&config).await?,
                cloud: boot::cloud(&config, location, "trigger", None).await?,
                config,
            };
            function.serve().await
        }
        Command::Status { json } => {
            let ledger = ledger(&config).await?;
            let beats = heartbeats(&config).await?;
            let (conn, publisher) = broker(&config).await?;
            let status = status::gather(&config, &ledger, &beats, &publisher).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&status)?);
            } else {
                print!("{status}");
            }
            let _ = conn.close(200, "done").await;
            Ok(())
        }
    }
}

async fn run_cell(
    config: Config,
    source: ConfigSource,
    pools: Vec<String>,
    until_idle: Option<u64>,
) -> anyhow::Result<()> {
    for p in &pools {
        anyhow::ensure!(
            config.pools.contains_key(p),
            "--pool {p}: no such pool in the config"
        );
    }
    let identity = identity(&config, source).await?;
    let pools = match (pools.is_empty(), &identity.metadata) {
        (false, _) => pools,
        // A launched instance serves the pool it was tagged with.
        (true, Some(m)) if config.cloud.kind == CloudKind::Ec2 => {
            match m.tag(cellfarm::metadata::POOL_TAG).await {
                Ok(Some(pool)) if config.pools.contains_key(&pool) => vec![pool],
                Ok(Some(pool)) => anyhow::bail!(
                    "instance tag {}={pool}: no such pool in the config",
                    cellfarm::metadata::POOL_TAG
                ),
                Ok(None) | Err(_) => config.pools.keys().cloned().collect(),
            }
        }
        (true, _) => config.pools.keys().cloned().collect(),
    };
    boot::check_host(&config).await?;
    let slots = config
        .cell
        .slots_for(std::thread::available_parallelism().map_or(1, |n| n.get()));
    let bound = config.unacked_bound_secs(&pools, slots);
    if bound > config.amqp.consumer_timeout_secs {
        tracing::warn!(
            consumer_timeout_secs = config.amqp.consumer_timeout_secs,
            needed_secs = bound,
            "RabbitMQ's consumer_timeout may be shorter than a delivery can wait and run here \
             (slots x pools x step timeouts): long jobs would be returned and count toward \
             the delivery limit; raise consumer_timeout in rabbitmq.conf (and \
             amqp.consumer_timeout_secs), or lower step_timeout_secs"
        );
    }
    let store = boot::store(&config).await;
    if let Some(update) = config.update.as_ref().filter(|u| !update::running(u)) {
        let dir = std::path::Path::new(&config.cell.scratch_dir).join("bin");
        match update::fetch(store.as_ref(), update, &dir).await {
            Ok(binary) => return Err(update::reexec(&binary)).context("re-executing"),
            Err(e) => tracing::error!(error = %e, "staying on this binary"),
        }
    }
    let ledger = ledger(&config).await?;
    ledger.check_migrated().await?;
    let beats = heartbeats(&config).await?;
    // Fail fast on a wrong broker address; later losses are the cell's to recover from.
    let (conn, publisher) = broker(&config).await?;
    queue::declare(publisher.channel(), &config).await?;
    let _ = conn.close(200, "checked").await;
    let grace = Duration::from_secs(config.cell.shutdown_grace_secs);
    let config = Arc::new(config);
    let cloud = boot::cloud(
        &config,
        &identity.source.location,
        &identity.cell_id,
        identity.metadata.clone(),
    )
    .await?;
    let cell = Arc::new(Cell::new(
        config,
        store,
        ledger,
        beats,
        pools,
        cloud.clone(),
        identity,
    ));
    let shutdown = Shutdown::default();
    tokio::spawn(watch_signals(shutdown.clone(), grace));
    cell.clone()
        .run(shutdown, until_idle.map(Duration::from_secs))
        .await;
    // Death comes last, after the drain and the flush; a cell that had a spot notice
    // leaves too rather than wait for the reclaim.
    if let (true, Some(cloud)) = (cell.dying() || cell.noticed(), cloud) {
        tracing::info!(cell = %cell.cell_id, "terminating this cell's machine");
        cloud.terminate_self().await?;
    } else if let Some(binary) = cell.update() {
        return Err(update::reexec(&binary)).context("re-executing");
    }
    Ok(())
}

/// Who this cell is: on `ec2`, the instance (from metadata, which must answer); elsewhere
/// a name of its own, with metadata polled only if an address is configured.
async fn identity(config: &Config, source: ConfigSource) -> anyhow::Result<Identity> {
    let mut identity = Identity::local(source);
    let Some(base) = cellfarm::metadata::base_url(config) else {
        return Ok(identity);
    };
    let metadata = Metadata::new(&base)?;
    if config.cloud.kind == CloudKind::Ec2 {
        let me = metadata
            .identity()
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

async fn ledger(config: &Config) -> anyhow::Result<Ledger> {
    Ledger::connect(&config.postgres).await.with_context(|| {
        format!(
            "cannot reach PostgreSQL at {}",
            redact(&config.postgres.url)
        )
    })
}

async fn heartbeats(config: &Config) -> anyhow::Result<Heartbeats> {
    Heartbeats::connect(&config.redis.url, &config.farm.name)
        .await
        .with_context(|| format!("cannot reach Redis at {}", redact(&config.redis.url)))
}

async fn broker(config: &Config) -> anyhow::Result<(lapin::Connection, Publisher)> {
    let conn = queue::connect(&config.amqp.url)
        .await
        .with_context(|| format!("cannot reach RabbitMQ at {}", redact(&config.amqp.url)))?;
    let publisher = Publisher::open(&conn).await?;
    Ok((conn, publisher))
}
