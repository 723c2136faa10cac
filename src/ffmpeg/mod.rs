//! Driving FFmpeg and ffprobe safely.
//!
//! * No shell: the program and a list of arguments, built by pure functions.
//! * Inputs are local files only: every `-i` gets `-protocol_whitelist file` (no network)
//!   and a demuxer allow-list (no playlists or lists that would open other files).
//! * Each process runs confined ([`sandbox`]): no network, no credentials, no root, only
//!   its own job's files; with a timeout, limits on memory, CPU, file size and tasks,
//!   and it dies with its cell (`PR_SET_PDEATHSIG`), so a killed cell leaves no FFmpeg
//!   behind.
//! * The stderr tail is kept for the error message: a corrupt video fails with FFmpeg's
//!   own reason.

pub mod detect;
pub mod h264;
pub mod header;
pub mod mp4;
pub mod probe;
pub mod progress;
pub mod sandbox;
pub mod template;
pub mod ts;

use std::collections::VecDeque;
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Command;
use tokio_util::sync::CancellationToken;

pub use sandbox::{Access, Sandbox, Tool};

/// Lines of stderr kept for the error message.
const TAIL_LINES: usize = 12;
/// Longest stderr line kept, in bytes; FFmpeg can print very long lines on bad input.
const TAIL_LINE_BYTES: usize = 400;

/// Address space of a process that only prints its version.
const PROBE_MEMORY_BYTES: u64 = 1 << 30;

/// Limits every FFmpeg process runs under, and what it may touch.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Wall-clock time; CPU seconds are this times the cores.
    pub timeout: Duration,
    pub memory_bytes: u64,
    /// The files the process may read and write besides the system's.
    pub access: Access,
    /// Demuxers inputs may be opened with (`format_whitelist`).
    pub demuxers: Vec<String>,
    /// Most pixels a decoder may allocate for one frame (`-max_pixels`).
    pub max_pixels: Option<u64>,
}

#[derive(Debug, thiserror::Error)]
pub enum FfmpegError {
    #[error("cannot start {program}: {source}")]
    Spawn {
        program: String,
        source: std::io::Error,
    },
    #[error("{program} failed ({status}): {tail}")]
    Failed {
        program: String,
        status: ExitStatus,
        tail: String,
    },
    #[error("{program} killed by signal {signal}{}: {tail}", signal_reason(*.signal))]
    Killed {
        program: String,
        signal: i32,
        tail: String,
    },
    #[error("{program} timed out after {secs} s: {tail}")]
    TimedOut {
        program: String,
        secs: u64,
        tail: String,
    },
    #[error("{program} stopped: the job was cancelled")]
    Cancelled { program: String },
    #[error("{program} printed unreadable output: {reason}")]
    BadOutput { program: String, reason: String },
}

/// Streams an input may declare. Real media has a handful; a crafted file declaring
/// thousands makes the demuxer allocate for each.
pub const MAX_INPUT_STREAMS: u32 = 32;

/// The options put in front of every `-i`: only local files, only allowed demuxers, a
/// bounded number of streams and of pixels per frame.
pub fn input_guard(limits: &Limits) -> Vec<String> {
    let mut guard: Vec<String> = vec![
        "-protocol_whitelist".into(),
        "file".into(),
        "-format_whitelist".into(),
        limits.demuxers.join(","),
        "-max_streams".into(),
        MAX_INPUT_STREAMS.to_string(),
    ];
    if let Some(pixels) = limits.max_pixels {
        guard.extend(["-max_pixels".into(), pixels.to_string()]);
    }
    guard
}

/// Builds the full FFmpeg argument list from a step's expanded arguments: global flags
/// first, then the arguments with the input guard before every `-i`.
pub fn ffmpeg_args(step: &[String], limits: &Limits) -> Vec<String> {
    ffmpeg_args_logging(step, limits, "error")
}

/// [`ffmpeg_args`] at another `-loglevel`: a detector pass reads its own log.
pub fn ffmpeg_args_logging(step: &[String], limits: &Limits, loglevel: &str) -> Vec<String> {
    let guard = input_guard(limits);
    let mut args: Vec<String> = ["-hide_banner", "-nostdin", "-nostats", "-y", "-loglevel"]
        .into_iter()
        .map(String::from)
        .collect();
    args.push(loglevel.into());
    for arg in step {
        if arg == "-i" {
            args.extend(guard.iter().cloned());
        }
        args.push(arg.clone());
    }
    args
}

/// The number FFmpeg gives the input `-i <file>` in `step` (0 for the first `-i`).
pub fn input_number(step: &[String], file: &str) -> Option<usize> {
    step.windows(2)
        .filter(|w| w[0] == "-i")
        .position(|w| w[1] == file)
}

/// The FFmpeg argument lists of a pipeline's steps (each step's arguments, with
/// `{placeholders}`), with `vars` substituted.
pub fn commands<'a>(
    steps: impl IntoIterator<Item = &'a [String]>,
    vars: &std::collections::BTreeMap<&str, String>,
    limits: &Limits,
) -> Result<Vec<Vec<String>>, String> {
    steps
        .into_iter()
        .map(|step| command(step, vars, limits))
        .collect()
}

/// The FFmpeg argument list of one step, with `vars` substituted.
pub fn command(
    step: &[String],
    vars: &std::collections::BTreeMap<&str, String>,
    limits: &Limits,
) -> Result<Vec<String>, String> {
    let expanded = step
        .iter()
        .map(|a| template::expand(a, vars))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(ffmpeg_args(&expanded, limits))
}

/// Runs `tool` with `args` under `limits`, confined by `sandbox`; Ok only on exit
/// status 0.
pub async fn run(
    sandbox: &Sandbox,
    tool: Tool,
    args: &[String],
    limits: &Limits,
    cancel: &CancellationToken,
) -> Result<String, FfmpegError> {
    run_reporting(sandbox, tool, args, limits, cancel, None).await
}

/// [`run`], and with `report`, FFmpeg also writes its progress to stdout
/// ([`progress::PROGRESS_ARGS`]), and each block goes to `report` as it arrives;
/// stdout is then the progress alone, and `Ok` carries nothing.
pub async fn run_reporting(
    sandbox: &Sandbox,
    tool: Tool,
    args: &[String],
    limits: &Limits,
    cancel: &CancellationToken,
    report: Option<progress::Report>,
) -> Result<String, FfmpegError> {
    run_full(sandbox, tool, args, limits, cancel, report, None).await
}

/// Where each line of a process's stderr goes as it arrives.
pub type Watch = Box<dyn FnMut(&str) + Send>;

/// [`run`] for a process whose log is its result (a detector pass, run with
/// `-loglevel level+info`): every stderr line goes to `watch` as it arrives, and the
/// error message of a failure keeps only the lines logged as warnings or errors.
pub async fn run_watching(
    sandbox: &Sandbox,
    tool: Tool,
    args: &[String],
    limits: &Limits,
    cancel: &CancellationToken,
    watch: Watch,
) -> Result<(), FfmpegError> {
    run_full(sandbox, tool, args, limits, cancel, None, Some(watch))
        .await
        .map(drop)
}

/// [`run_reporting`] and [`run_watching`] at once: an encode with detectors in its
/// graph reports its progress and has its log read.
pub async fn run_reporting_watching(
    sandbox: &Sandbox,
    tool: Tool,
    args: &[String],
    limits: &Limits,
    cancel: &CancellationToken,
    report: progress::Report,
    watch: Watch,
) -> Result<(), FfmpegError> {
    run_full(
        sandbox,
        tool,
        args,
        limits,
        cancel,
        Some(report),
        Some(watch),
    )
    .await
    .map(drop)
}

async fn run_full(
    sandbox: &Sandbox,
    tool: Tool,
    args: &[String],
    limits: &Limits,
    cancel: &CancellationToken,
    report: Option<progress::Report>,
    watch: Option<Watch>,
) -> Result<String, FfmpegError> {
    let program = tool.name();
    tracing::debug!(program, ?args, layers = ?sandbox.layers(), "running");
    let run_limits = sandbox::Limits {
        memory_bytes: limits.memory_bytes,
        cpu_secs: limits.timeout.as_secs().max(1),
    };
    let confined = sandbox
        .command(tool, &limits.access, run_limits)
        .map_err(|e| FfmpegError::Spawn {
            program: program.into(),
            source: std::io::Error::other(format!("preparing its Landlock rules: {e}")),
        })?;
    let mut cmd: Command = confined.cmd;
    if report.is_some() {
        cmd.args(progress::PROGRESS_ARGS);
    }
    cmd.args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        // A group of its own: a Ctrl-C or a service manager's signal to the cell's group
        // must not kill FFmpeg mid-job (the cell decides: drain, or hand the job back).
        .process_group(0);
    let mut child = cmd.spawn().map_err(|source| FfmpegError::Spawn {
        program: program.into(),
        source,
    })?;
    // The child has its own copy of the ruleset now.
    drop(confined.ruleset);
    let stderr = child.stderr.take().expect("stderr is piped");
    let stdout = child.stdout.take().expect("stdout is piped");
    let tail = tokio::spawn(read_tail(stderr, watch));
    let out = tokio::spawn(async move {
        match report {
            Some(report) => read_progress(stdout, &report).await,
            None => {
                let mut buf = Vec::new();
                let mut stdout = stdout;
                tokio::io::AsyncReadExt::read_to_end(&mut stdout, &mut buf)
                    .await
                    .map(|_| buf)
            }
        }
    });
    let status = tokio::select! {
        status = child.wait() => Some(status),
        _ = tokio::time::sleep(limits.timeout) => None,
        _ = cancel.cancelled() => {
            let _ = child.kill().await;
            return Err(FfmpegError::Cancelled { program: program.into() });
        }
    };
    let status = match status {
        Some(status) => status,
        None => {
            let _ = child.kill().await;
            let tail = tail.await.unwrap_or_default();
            return Err(FfmpegError::TimedOut {
                program: program.into(),
                secs: limits.timeout.as_secs(),
                tail,
            });
        }
    };
    let status = status.map_err(|source| FfmpegError::Spawn {
        program: program.into(),
        source,
    })?;
    let tail = tail.await.unwrap_or_default();
    let stdout = out.await.ok().and_then(Result::ok).unwrap_or_default();
    check_status(program, status, tail)?;
    String::from_utf8(stdout).map_err(|e| FfmpegError::BadOutput {
        program: program.into(),
        reason: e.to_string(),
    })
}

fn check_status(program: &str, status: ExitStatus, tail: String) -> Result<(), FfmpegError> {
    use std::os::unix::process::ExitStatusExt;
    if status.success() {
        return Ok(());
    }
    let program = program.to_string();
    match status.signal() {
        Some(signal) => Err(FfmpegError::Killed {
            program,
            signal,
            tail,
        }),
        None => Err(FfmpegError::Failed {
            program,
            status,
            tail,
        }),
    }
}

/// Hands each progress block on as its closing line arrives; reads to the end, so
/// FFmpeg never blocks on a full pipe.
async fn read_progress(
    stream: impl tokio::io::AsyncRead + Unpin,
    report: &progress::Report,
) -> std::io::Result<Vec<u8>> {
    let mut lines = BufReader::new(stream).split(b'\n');
    let mut parser = progress::Parser::default();
    while let Some(line) = lines.next_segment().await? {
        if let Some(sample) = parser.line(&String::from_utf8_lossy(&line)) {
            report(sample);
        }
    }
    Ok(Vec::new())
}

/// Keeps the last [`TAIL_LINES`] lines of a stream, each cut to [`TAIL_LINE_BYTES`];
/// with `watch`, hands every line to it and keeps only warnings and errors.
async fn read_tail(stream: impl tokio::io::AsyncRead + Unpin, mut watch: Option<Watch>) -> String {
    let mut lines = BufReader::new(stream).split(b'\n');
    let mut tail = VecDeque::with_capacity(TAIL_LINES);
    while let Ok(Some(line)) = lines.next_segment().await {
        let mut line = String::from_utf8_lossy(&line).trim_end().to_string();
        if let Some(watch) = watch.as_mut() {
            watch(&line);
            if !["[warning]", "[error]", "[fatal]"]
                .iter()
                .any(|l| line.contains(l))
            {
                continue;
            }
        }
        if line.is_empty() {
            continue;
        }
        if line.len() > TAIL_LINE_BYTES {
            line = shorten(&line);
        }
        if tail.len() == TAIL_LINES {
            tail.pop_front();
        }
        tail.push_back(line);
    }
    if tail.is_empty() {
        "no error output".into()
    } else {
        Vec::from(tail).join(" | ")
    }
}

/// A long line's start and end: FFmpeg echoes a whole filter graph before the reason,
/// which comes last ("… matches no streams").
fn shorten(line: &str) -> String {
    let mut head = TAIL_LINE_BYTES / 4;
    while !line.is_char_boundary(head) {
        head -= 1;
    }
    let mut tail = line.len() - (TAIL_LINE_BYTES - head);
    while !line.is_char_boundary(tail) {
        tail += 1;
    }
    format!("{} … {}", &line[..head], &line[tail..])
}

/// What a signal that killed FFmpeg says about why: the limits send some of them.
fn signal_reason(signal: i32) -> &'static str {
    match signal {
        libc::SIGXCPU => " (SIGXCPU: over its CPU seconds)",
        libc::SIGXFSZ => " (SIGXFSZ: a file over cell.ffmpeg_max_file_mib)",
        libc::SIGSYS => " (SIGSYS: a system call the sandbox denies)",
        libc::SIGKILL => " (SIGKILL)",
        libc::SIGSEGV => " (SIGSEGV: a crash)",
        _ => "",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_input_is_guarded() {
        let step: Vec<String> = ["-i", "/j/source", "-i", "/j/intro", "/j/out/x.mp4"]
            .into_iter()
            .map(String::from)
            .collect();
        let limits = Limits {
            timeout: Duration::from_secs(1),
            memory_bytes: 1 << 30,
            access: Access::default(),
            demuxers: vec!["mov".to_string(), "matroska".to_string()],
            max_pixels: Some(33_177_600),
        };
        let args = ffmpeg_args(&step, &limits);
        let guards: Vec<usize> = args
            .iter()
            .enumerate()
            .filter(|(_, a)| *a == "-protocol_whitelist")
            .map(|(i, _)| i)
            .collect();
        assert_eq!(guards.len(), 2);
        for i in guards {
            assert_eq!(args[i + 1], "file");
            assert_eq!(args[i + 2], "-format_whitelist");
            assert_eq!(args[i + 3], "mov,matroska");
            assert_eq!(args[i + 4], "-max_streams");
            assert_eq!(args[i + 6], "-max_pixels");
            assert_eq!(args[i + 7], "33177600");
            assert_eq!(args[i + 8], "-i");
        }
        assert_eq!(args.last().map(String::as_str), Some("/j/out/x.mp4"));
        assert!(args.contains(&"-nostdin".to_string()));
    }

    #[tokio::test]
    async fn the_tail_keeps_the_last_lines() {
        let text: String = (0..50).map(|i| format!("line {i}\n")).collect();
        let tail = read_tail(text.as_bytes(), None).await;
        assert!(tail.starts_with("line 38 | "), "{tail}");
        assert!(tail.ends_with("line 49"), "{tail}");
        let graph = format!("{} matches no streams", "[0:v]scale=1280:720;".repeat(100));
        let tail = read_tail(graph.as_bytes(), None).await;
        assert!(tail.ends_with("matches no streams"), "{tail}");
        assert!(tail.starts_with("[0:v]scale"), "{tail}");
        assert!(
            tail.len() <= TAIL_LINE_BYTES + " … ".len(),
            "{}",
            tail.len()
        );
    }
}
