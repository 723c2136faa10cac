//! `cellfarm args`: the FFmpeg command lines a pipeline runs, one JSON array per step,
//! for checking a pipeline by hand or running the same work outside the farm (the
//! benchmark runs them raw). The input is probed, as a cell probes its source, so the
//! pipeline's vars choose as they would for it.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::ffmpeg::{probe, Access, Limits, Sandbox};

/// What to fill the pipeline's placeholders with.
#[derive(Debug, clap::Args)]
pub struct Args {
    #[arg(long)]
    pub pipeline: String,
    /// Local source file, for {input}.
    #[arg(long)]
    pub input: String,
    /// Output directory, for {out} (and {work}).
    #[arg(long)]
    pub out: String,
    /// FFmpeg threads, for {threads}.
    #[arg(long, default_value_t = 1)]
    pub threads: usize,
    /// A local file for a pipeline asset: NAME=PATH.
    #[arg(long = "asset", value_name = "NAME=PATH")]
    pub assets: Vec<String>,
}

pub async fn run(config: &Config, args: Args) -> anyhow::Result<()> {
    let p = config.pipeline(&args.pipeline)?;
    if p.chunked.is_some() {
        anyhow::bail!(
            "pipeline {} is chunked: its commands follow each title's split (see docs/chunked.md)",
            args.pipeline
        );
    }
    // The probe runs as a cell's does: confined, reading the input only.
    let sandbox = Sandbox::start(&config.cell).await?;
    let limits = Limits {
        timeout: Duration::from_secs(60),
        memory_bytes: config.cell.ffmpeg_memory_mib * 1024 * 1024,
        access: Access::read(Path::new(&args.input)),
        demuxers: config.cell.demuxers.clone(),
        max_pixels: Some(p.limits.max_pixels),
    };
    let never = CancellationToken::new();
    let source = probe::probe(Path::new(&args.input), &sandbox, &limits, &never)
        .await
        .map_err(|e| anyhow::anyhow!("probing {}: {e}", args.input))?;
    let mut base = BTreeMap::from([
        ("input", args.input),
        ("out", args.out.clone()),
        ("work", args.out),
        ("threads", args.threads.to_string()),
    ]);
    for a in &args.assets {
        let (name, path) = a
            .split_once('=')
            .ok_or_else(|| anyhow::anyhow!("--asset {a}: expected NAME=PATH"))?;
        base.insert(name, path.to_string());
    }
    let pipeline_error = |e: String| anyhow::anyhow!("pipeline {}: {e}", args.pipeline);
    let vars = p
        .step_vars(&config.vars, &source, base)
        .map_err(pipeline_error)?;
    let commands =
        crate::ffmpeg::commands(p.step_args(), &vars, &limits).map_err(pipeline_error)?;
    for command in commands {
        let mut argv = vec!["ffmpeg".to_string()];
        argv.extend(command);
        println!("{}", serde_json::to_string(&argv)?);
    }
    Ok(())
}
