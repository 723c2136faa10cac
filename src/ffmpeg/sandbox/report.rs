//! `cellfarm sandbox`: the layers this machine gives FFmpeg, and what they cost a start.

use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use super::{names, Access, Sandbox, Tool};
use crate::config::Config;
use crate::ffmpeg::Limits;

/// What to report.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Also run this many one-frame encodes confined and as many with no layer,
    /// alternating, and print the milliseconds per start of each.
    #[arg(long, default_value_t = 0)]
    pub starts: u32,
}

/// Prints the layers in force (failing as a cell would with `cell.sandbox = "require"`
/// and a layer missing), then the timings asked for.
pub async fn run(config: &Config, args: Args) -> anyhow::Result<()> {
    let sandbox = Sandbox::start(&config.cell).await?;
    println!("sandbox layers: {}", names(sandbox.layers()));
    if args.starts == 0 {
        return Ok(());
    }
    let bare = Sandbox::unconfined(&config.cell)?;
    let memory_bytes = config.cell.ffmpeg_memory_mib * 1024 * 1024;
    let (mut confined, mut unconfined) = (Duration::ZERO, Duration::ZERO);
    for _ in 0..args.starts {
        unconfined += one_frame(&bare, memory_bytes).await?;
        confined += one_frame(&sandbox, memory_bytes).await?;
    }
    let ms = |d: Duration| d.as_secs_f64() * 1000.0 / f64::from(args.starts);
    println!(
        "{} starts: {:.1} ms per start confined, {:.1} ms with no layer, {:+.1} ms for confinement",
        args.starts,
        ms(confined),
        ms(unconfined),
        ms(confined) - ms(unconfined)
    );
    Ok(())
}

/// One 640×360 frame from FFmpeg's test source to a JPEG in a scratch directory of its
/// own: a start, a tiny encode, an exit.
async fn one_frame(sandbox: &Sandbox, memory_bytes: u64) -> anyhow::Result<Duration> {
    let dir = tempfile::tempdir()?;
    sandbox.hand_over(dir.path())?;
    let limits = Limits {
        timeout: Duration::from_secs(60),
        memory_bytes,
        access: Access::scratch(dir.path()),
        demuxers: Vec::new(),
        max_pixels: None,
    };
    let mut args: Vec<String> = [
        "-hide_banner",
        "-nostdin",
        "-loglevel",
        "error",
        "-f",
        "lavfi",
        "-i",
        "testsrc2=s=640x360:d=1",
        "-frames:v",
        "1",
        "-y",
    ]
    .map(String::from)
    .to_vec();
    args.push(dir.path().join("frame.jpg").display().to_string());
    let started = Instant::now();
    crate::ffmpeg::run(
        sandbox,
        Tool::Ffmpeg,
        &args,
        &limits,
        &CancellationToken::new(),
    )
    .await?;
    Ok(started.elapsed())
}
