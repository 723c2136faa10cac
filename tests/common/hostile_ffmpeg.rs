//! A stand-in for `ffmpeg` that behaves like a decoder taken over by a crafted source.
//! tests/sandbox.rs compiles it with `rustc` (std only) and names it in `cell.ffmpeg`.
//!
//! Without `-hostile` among its arguments it is FFmpeg: it execs `/usr/bin/ffmpeg` with
//! the same arguments (the start-up check, and the jobs of other sources). With
//! `-hostile k=v,k=v` it tries everything an attacker would, prints one line per try to
//! stderr (`blocked …` or `ACHIEVED …`), then `hostile decoder achieved: …`, and exits 1.
//!
//! Keys: `listener`, `imds` (host:port to connect to), `config`, `other` (files to
//! read), `escape` (a file to create outside the scratch directory).

use std::collections::BTreeMap;
use std::io::Write;
use std::net::{SocketAddr, TcpStream};
use std::os::unix::process::CommandExt;
use std::time::Duration;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some(at) = args.iter().position(|a| a == "-hostile") else {
        let err = std::process::Command::new("/usr/bin/ffmpeg")
            .args(&args)
            .exec();
        eprintln!("cannot exec /usr/bin/ffmpeg: {err}");
        std::process::exit(1);
    };
    let targets: BTreeMap<&str, &str> = args[at + 1]
        .split(',')
        .filter_map(|kv| kv.split_once('='))
        .collect();
    let mut achieved = Vec::new();
    let mut report = |what: String, result: Result<String, String>| match result {
        Ok(detail) => {
            eprintln!("ACHIEVED {what}: {detail}");
            achieved.push(what);
        }
        Err(e) => eprintln!("blocked {what}: {e}"),
    };
    let parent = std::os::unix::process::parent_id();
    for (what, addr) in [
        ("listener", targets["listener"]),
        ("imds", targets["imds"]),
        ("broker", "127.0.0.1:5672"),
        ("database", "127.0.0.1:5432"),
    ] {
        report(format!("connect {what}"), connect(addr));
    }
    for (what, path) in [
        ("/etc/shadow", "/etc/shadow"),
        ("config", targets["config"]),
        ("other job", targets["other"]),
        ("cell environ", &format!("/proc/{parent}/environ")),
    ] {
        let read = std::fs::read(path).map(|b| format!("{} bytes of {path}", b.len()));
        report(format!("read {what}"), read.map_err(|e| e.to_string()));
    }
    let escape = std::fs::File::create(targets["escape"]).and_then(|mut f| f.write_all(b"out"));
    report(
        "write outside scratch".into(),
        escape
            .map(|()| targets["escape"].to_string())
            .map_err(|e| e.to_string()),
    );
    let env: Vec<String> = std::env::vars().map(|(k, _)| k).collect();
    report(
        "environment".into(),
        if env.is_empty() {
            Err("empty".into())
        } else {
            Ok(env.join(" "))
        },
    );
    report("fork".into(), fork_many(1000));
    let mut hoard: Vec<u8> = Vec::new();
    let hoarded = hoard
        .try_reserve_exact(16 << 30)
        .map(|()| "16 GiB".to_string());
    report("allocate".into(), hoarded.map_err(|e| e.to_string()));
    let summary = if achieved.is_empty() {
        "none".to_string()
    } else {
        achieved.join(", ")
    };
    eprintln!("hostile decoder achieved: {summary}");
    std::process::exit(1);
}

fn connect(addr: &str) -> Result<String, String> {
    let addr: SocketAddr = addr.parse().map_err(|e| format!("{addr}: {e}"))?;
    TcpStream::connect_timeout(&addr, Duration::from_secs(2))
        .map(|_| format!("connected to {addr}"))
        .map_err(|e| e.to_string())
}

/// Starts `n` threads that sleep: every task counts against the sandbox's task limit.
fn fork_many(n: usize) -> Result<String, String> {
    for i in 0..n {
        let spawned = std::thread::Builder::new()
            .stack_size(64 << 10)
            .spawn(|| std::thread::sleep(Duration::from_secs(600)));
        if let Err(e) = spawned {
            return Err(format!("stopped after {i} tasks: {e}"));
        }
    }
    Ok(format!("{n} tasks"))
}
