//! The `cellfarm` binary: parse the command line, load the config, run the subcommand
//! (its body lives in its module), map errors to an exit code (64 for a bad config or
//! usage, 1 for anything else).

use std::process::ExitCode;

use clap::{Parser, Subcommand};

use cellfarm::boot::{self, ConfigSource};
use cellfarm::{args, by_hand, cell, dashboard, jobs, simulate, status, submit, trigger};

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
    /// How logs are written to stderr: `text` (coloured only on a terminal) or `json`
    /// (one object per line, for journald and CloudWatch).
    #[arg(
        long,
        env = "CELLFARM_LOG_FORMAT",
        global = true,
        default_value = "text"
    )]
    log_format: boot::LogFormat,
    /// The S3 server an s3:// config is read from when it is not AWS (turns on path
    /// style); the config's own [s3] table is not read yet.
    #[arg(long, env = "CELLFARM_S3_ENDPOINT", global = true, value_name = "URL")]
    s3_endpoint: Option<String>,
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
    Submit(submit::Args),
    /// Run a cell: consume jobs until stopped.
    Cell(cell::Options),
    /// Print the FFmpeg command lines a pipeline runs (one JSON array per step), for
    /// checking a pipeline by hand or running the same work outside the farm.
    Args(args::Args),
    /// Show the sandbox layers FFmpeg gets on this machine (`--starts N`: and what they
    /// cost a start).
    Sandbox(cellfarm::ffmpeg::sandbox::report::Args),
    /// Show queues, jobs by state, live cells and recent failures.
    Status {
        #[arg(long)]
        json: bool,
    },
    /// List jobs, newest first, with their outputs' s3:// URLs: by source object, state or
    /// pipeline.
    Jobs(jobs::Args),
    /// Serve the farm on one page (and as JSON under /api/, and /metrics).
    Dashboard(dashboard::Args),
    /// Stop a queued or running job: its row says cancelled at once, and the cell running
    /// it stops it within a heartbeat, publishing nothing.
    Cancel(by_hand::Args),
    /// Queue a failed, dead or cancelled job again, with fresh attempts.
    Retry(by_hand::Args),
    /// The trigger without Lambda: poll s3://bucket/prefix/ and turn each new object
    /// into jobs by the config's routes, once.
    Watch(trigger::watch::Args),
    /// Simulate a farm on a virtual clock: the real mitosis tick against a model of spot
    /// instances and a workload, beside a message-count policy and on-demand farms.
    Simulate(simulate::Args),
    /// Check the AWS account against what the farm needs (the spot service-linked role,
    /// the launch template, subnets, roles, buckets, the S3 notification) and name every
    /// gap with its fix; exit 1 when there is one.
    Doctor(cellfarm::doctor::Args),
    /// The trigger as an AWS Lambda function (also when this binary runs as
    /// `bootstrap`): S3 events from the runtime API at AWS_LAMBDA_RUNTIME_API.
    Lambda,
}

fn main() -> ExitCode {
    // A Lambda custom runtime runs the binary as `bootstrap`, with no arguments.
    let argv0 = std::env::args_os().next().map(std::path::PathBuf::from);
    let cli = match argv0.as_ref().and_then(|p| p.file_name()) {
        Some(name) if name == "bootstrap" => Cli::parse_from(["bootstrap", "lambda"]),
        _ => Cli::parse(),
    };
    // The simulator reads its own scenario and needs no config, no runtime, no logs.
    if let Command::Simulate(a) = &cli.command {
        return match simulate::run(a) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("cellfarm: {e}");
                ExitCode::from(if e.is_usage() { EXIT_CONFIG } else { 1 })
            }
        };
    }
    boot::init_logs(cli.log_format);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime can be built");
    let sdk = runtime.block_on(cellfarm::aws::sdk_config());
    let loaded = ConfigSource::new(&cli.config, &sdk, cli.s3_endpoint.as_deref())
        .and_then(|source| Ok((runtime.block_on(source.load())?, source)));
    let (config, source) = match loaded {
        Ok(loaded) => loaded,
        Err(e) => {
            eprintln!("cellfarm: {e}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    match runtime.block_on(run(cli.command, config, source, &sdk)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("cellfarm: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(
    command: Command,
    (config, version): (cellfarm::config::Config, String),
    source: ConfigSource,
    sdk: &aws_config::SdkConfig,
) -> anyhow::Result<()> {
    let location = source.location.clone();
    match command {
        Command::Check => {
            println!("config ok: farm {}", config.farm.name);
            Ok(())
        }
        Command::Migrate => {
            boot::ledger(&config).await?.migrate().await?;
            println!("ledger migrated (schema {})", config.postgres.schema);
            Ok(())
        }
        Command::Args(a) => args::run(&config, a).await,
        Command::Sandbox(a) => cellfarm::ffmpeg::sandbox::report::run(&config, a).await,
        Command::Submit(a) => submit::run(&config, &location, sdk, a).await,
        Command::Cell(opts) => cell::run(source, (config, version), sdk, opts).await,
        Command::Watch(a) => trigger::watch::run(&config, &location, sdk, a).await,
        Command::Lambda => trigger::lambda::run(config, &location, sdk).await,
        Command::Status { json } => status::run(&config, sdk, json).await,
        Command::Jobs(a) => jobs::run(&config, a).await,
        Command::Dashboard(a) => dashboard::run(&config, sdk, &a).await,
        Command::Cancel(a) => by_hand::cancel(&config, &a).await,
        Command::Retry(a) => by_hand::retry(&config, sdk, &a).await,
        Command::Doctor(a) => cellfarm::doctor::run(&config, sdk, &a).await,
        // Handled before the config is loaded; kept here so the match stays whole.
        Command::Simulate(_) => unreachable!("main runs the simulator before loading a config"),
    }
}
