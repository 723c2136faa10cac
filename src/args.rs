//! `cellfarm args`: the FFmpeg command lines a pipeline runs, one JSON array per step,
//! for checking a pipeline by hand or running the same work outside the farm (the
//! benchmark runs them raw).

use std::collections::BTreeMap;

use crate::config::Config;

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

pub fn run(config: &Config, args: Args) -> anyhow::Result<()> {
    let p = config.pipeline(&args.pipeline)?;
    let mut vars = BTreeMap::from([
        ("input", args.input),
        ("out", args.out.clone()),
        ("work", args.out),
        ("threads", args.threads.to_string()),
    ]);
    for a in &args.assets {
        let (name, path) = a
            .split_once('=')
            .ok_or_else(|| anyhow::anyhow!("--asset {a}: expected NAME=PATH"))?;
        vars.insert(name, path.to_string());
    }
    let commands = crate::ffmpeg::commands(p.step_args(), &vars, &config.cell.demuxers)
        .map_err(|e| anyhow::anyhow!("pipeline {}: {e}", args.pipeline))?;
    for command in commands {
        let mut argv = vec!["ffmpeg".to_string()];
        argv.extend(command);
        println!("{}", serde_json::to_string(&argv)?);
    }
    Ok(())
}
