//! Driving FFmpeg and ffprobe safely.
//!
//! * No shell: the program and a list of arguments, built by pure functions.
//! * Inputs are local files only: every `-i` gets `-protocol_whitelist file` (no network)
//!   and a demuxer allow-list (no playlists or lists that would open other files).
//! * Each process runs with a timeout, an address-space cap, and dies with its cell
//!   (`PR_SET_PDEATHSIG`), so a killed cell leaves no FFmpeg behind.
//! * The stderr tail is kept for the error message: a corrupt video fails with FFmpeg's
//!   own reason.

pub mod probe;
pub mod template;

use std::collections::VecDeque;
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Command;
use tokio_util::sync::CancellationToken;

/// Lines of stderr kept for the error message.
const TAIL_LINES: usize = 12;
/// Longest stderr line kept, in bytes; FFmpeg can print very long lines on bad input.
const TAIL_LINE_BYTES: usize = 400;

/// Limits every FFmpeg process runs under.
#[derive(Debug, Clone)]
pub struct Limits {
    pub timeout: Duration,
    pub memory_bytes: u64,
    /// Demuxers inputs may be opened with (`format_whitelist`).
    pub demuxers: Vec<String>,
    /// Most pixels a decoder may allocate for one frame (`-max_pixels`).
    pub max_pixels: Option<u64>,
}

#[derive(Debug, thiserror::Error)]
pub enum FfmpegError {
    #[error("cannot start {program}: {source} (is FFmpeg installed and on PATH?)")]
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
    #[error("{program} killed by signal {signal}: {tail}")]
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
    let guard = input_guard(limits);
    let mut args: Vec<String> = [
        "-hide_banner",
        "-nostdin",
        "-nostats",
        "-y",
        "-loglevel",
        "error",
    ]
    .into_iter()
    .map(String::from)
    .collect();
    for arg in step {
        if arg == "-i" {
            args.extend(guard.iter().cloned());
        }
        args.push(arg.clone());
    }
    args
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
        .map(|step| {
            let expanded = step
                .iter()
                .map(|a| template::expand(a, vars))
                .collect::<Result<Vec<_>, _>>()?;
            Ok(ffmpeg_args(&expanded, limits))
        })
        .collect()
}

/// Runs `program` with `args` under `limits`; Ok only on exit status 0.
pub async fn run(
    program: &str,
    args: &[String],
    limits: &Limits,
    cancel: &CancellationToken,
) -> Result<String, FfmpegError> {
    tracing::debug!(program, ?args, "running");
    let mut cmd = Command::new(program);
    cmd.args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        // A group of its own: a Ctrl-C or a service manager's signal to the cell's group
        // must not kill FFmpeg mid-job (the cell decides: drain, or hand the job back).
        .process_group(0);
    confine(&mut cmd, limits.memory_bytes);
    let mut child = cmd.spawn().map_err(|source| FfmpegError::Spawn {
        program: program.into(),
        source,
    })?;
    let stderr = child.stderr.take().expect("stderr is piped");
    let stdout = child.stdout.take().expect("stdout is piped");
    let tail = tokio::spawn(read_tail(stderr));
    let out = tokio::spawn(async move {
        let mut buf = Vec::new();
        let mut stdout = stdout;
        tokio::io::AsyncReadExt::read_to_end(&mut stdout, &mut buf)
            .await
            .map(|_| buf)
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

/// Keeps the last [`TAIL_LINES`] lines of a stream, each cut to [`TAIL_LINE_BYTES`].
async fn read_tail(stream: impl tokio::io::AsyncRead + Unpin) -> String {
    let mut lines = BufReader::new(stream).split(b'\n');
    let mut tail = VecDeque::with_capacity(TAIL_LINES);
    while let Ok(Some(line)) = lines.next_segment().await {
        let mut line = String::from_utf8_lossy(&line).trim_end().to_string();
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

/// Caps the child's address space and ties its life to the cell's.
///
/// `pre_exec` is the one `unsafe` in the crate: the closure runs between fork and exec
/// and calls only `setrlimit` and `prctl`, both async-signal-safe.
#[allow(unsafe_code)]
fn confine(cmd: &mut Command, memory_bytes: u64) {
    // SAFETY: see above; no allocation or locking happens in the closure.
    unsafe {
        cmd.pre_exec(move || {
            let limit = libc::rlimit {
                rlim_cur: memory_bytes as libc::rlim_t,
                rlim_max: memory_bytes as libc::rlim_t,
            };
            if libc::setrlimit(libc::RLIMIT_AS, &limit) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            // A cell killed with SIGKILL must not leave FFmpeg encoding on its own.
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
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
        let tail = read_tail(text.as_bytes()).await;
        assert!(tail.starts_with("line 38 | "), "{tail}");
        assert!(tail.ends_with("line 49"), "{tail}");
        let graph = format!("{} matches no streams", "[0:v]scale=1280:720;".repeat(100));
        let tail = read_tail(graph.as_bytes()).await;
        assert!(tail.ends_with("matches no streams"), "{tail}");
        assert!(tail.starts_with("[0:v]scale"), "{tail}");
        assert!(
            tail.len() <= TAIL_LINE_BYTES + " … ".len(),
            "{}",
            tail.len()
        );
    }
}
