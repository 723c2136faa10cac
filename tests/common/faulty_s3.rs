//! A fault-injecting S3 proxy on loopback, in front of the test S3 server (s3s-fs): it
//! forwards every request unchanged and answers a fixed share of them with
//! `500 InternalError` instead, without forwarding, counting per method what it failed
//! and what it forwarded.
//!
//! It works on bytes, not on HTTP messages: a request's head is parsed only for its
//! method, path and body framing (`Content-Length` or chunked), and is forwarded as the
//! client wrote it, so the Host header the client signed (SigV4) reaches s3s-fs, as do
//! aws-chunked bodies and `Expect: 100-continue`. Responses are copied back byte for
//! byte. Clients (hyper in the AWS SDK) do not pipeline: they send a connection's next
//! request only after the whole previous response, so an injected answer never cuts
//! into a forwarded one.

use std::collections::{BTreeMap, HashMap};
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// The body of every injected error: what S3 sends for its own internal errors.
const ERROR_BODY: &str = "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\
<Error><Code>InternalError</Code><Message>injected</Message></Error>";

/// Which requests fail. Requests are counted per method and per object (path, without
/// the query): of every `period` requests with one method to one path, the first
/// `failing` fail. Counting per object keeps the pattern the same whatever the order
/// of concurrent calls: with the SDK's 3 attempts per call, `Faults::on(&["PUT"], 3, 4)`
/// makes the first PUT call of each object fail after its retries and the next succeed
/// at once, and so on alternately.
#[derive(Debug, Clone)]
pub struct Faults {
    /// Methods that fail, upper case; empty means every method.
    methods: Vec<String>,
    failing: u32,
    period: u32,
    /// Only paths containing this fail; `None` means every path.
    paths: Option<String>,
    /// How long a request the faults apply to waits before it is forwarded.
    delay: Duration,
}

impl Faults {
    /// Forward everything.
    pub fn none() -> Faults {
        Faults::on(&[], 0, 1)
    }

    /// Of every `period` requests with one of `methods` (every method when empty) to
    /// one object, the first `failing` fail.
    pub fn on(methods: &[&str], failing: u32, period: u32) -> Faults {
        assert!(period > 0 && failing <= period, "{failing} of {period}");
        Faults {
            methods: methods.iter().map(|m| m.to_ascii_uppercase()).collect(),
            failing,
            period,
            paths: None,
            delay: Duration::ZERO,
        }
    }

    /// Holds each request these faults apply to for `delay` before forwarding it: a
    /// slow S3, so that a test can act between two uploads.
    pub fn delaying(mut self, delay: Duration) -> Faults {
        self.delay = delay;
        self
    }

    /// Fails only requests whose path contains `part`.
    pub fn paths_containing(mut self, part: &str) -> Faults {
        self.paths = Some(part.to_string());
        self
    }

    fn applies(&self, method: &str, path: &str) -> bool {
        (self.methods.is_empty() || self.methods.iter().any(|m| m == method))
            && self.paths.as_ref().map_or(true, |p| path.contains(p))
    }
}

/// Requests seen, per method.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Counts {
    /// Answered with an injected 500, never forwarded.
    pub failed: BTreeMap<String, u64>,
    pub forwarded: BTreeMap<String, u64>,
}

impl Counts {
    pub fn failed(&self, method: &str) -> u64 {
        self.failed.get(method).copied().unwrap_or(0)
    }

    pub fn forwarded(&self, method: &str) -> u64 {
        self.forwarded.get(method).copied().unwrap_or(0)
    }
}

struct State {
    faults: Faults,
    /// Requests counted against `faults`, per (method, path).
    seen: HashMap<(String, String), u32>,
    counts: Counts,
}

impl State {
    /// Whether this request fails; counts it either way.
    fn fail(&mut self, method: &str, path: &str) -> bool {
        let fail = self.faults.applies(method, path) && {
            let n = self
                .seen
                .entry((method.to_string(), path.to_string()))
                .or_insert(0);
            let fail = *n % self.faults.period < self.faults.failing;
            *n += 1;
            fail
        };
        let counts = if fail {
            &mut self.counts.failed
        } else {
            &mut self.counts.forwarded
        };
        *counts.entry(method.to_string()).or_insert(0) += 1;
        fail
    }
}

/// The proxy: it runs until the test process ends.
pub struct FaultyS3 {
    /// `http://127.0.0.1:port`, for an S3 endpoint setting.
    pub url: String,
    state: Arc<Mutex<State>>,
}

impl FaultyS3 {
    /// Starts a proxy in front of `CELLFARM_TEST_S3` with `faults`.
    pub fn start(faults: Faults) -> FaultyS3 {
        let upstream = super::env("CELLFARM_TEST_S3", "http://127.0.0.1:8014");
        let upstream = upstream
            .strip_prefix("http://")
            .expect("CELLFARM_TEST_S3 is an http:// URL")
            .trim_end_matches('/')
            .to_string();
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the S3 proxy");
        let url = format!("http://{}", listener.local_addr().expect("an address"));
        let state = Arc::new(Mutex::new(State {
            faults,
            seen: HashMap::new(),
            counts: Counts::default(),
        }));
        let shared = state.clone();
        std::thread::spawn(move || {
            for client in listener.incoming().flatten() {
                let (upstream, state) = (upstream.clone(), shared.clone());
                std::thread::spawn(move || connection(client, &upstream, &state));
            }
        });
        FaultyS3 { url, state }
    }

    /// Replaces the faults; the per-object sequences start again, the counts go on.
    pub fn set(&self, faults: Faults) {
        let mut state = self.state.lock().expect("never poisoned");
        state.faults = faults;
        state.seen.clear();
    }

    /// What the proxy failed and forwarded so far.
    pub fn counts(&self) -> Counts {
        self.state.lock().expect("never poisoned").counts.clone()
    }
}

/// One request as far as the proxy reads it.
struct Head {
    /// The head's bytes as the client sent them, through the blank line.
    raw: Vec<u8>,
    method: String,
    /// Without the query.
    path: String,
    content_length: u64,
    chunked: bool,
    expects_continue: bool,
}

/// Serves one client connection on a connection of its own to s3s-fs; ends when either
/// side closes.
fn connection(client: TcpStream, upstream: &str, state: &Mutex<State>) {
    let Ok(server) = TcpStream::connect(upstream) else {
        return;
    };
    let (Ok(to_client), Ok(from_server), Ok(client_reader)) =
        (client.try_clone(), server.try_clone(), client.try_clone())
    else {
        return;
    };
    let to_client = Arc::new(Mutex::new(to_client));
    let responses = {
        let to_client = to_client.clone();
        std::thread::spawn(move || {
            copy_responses(from_server, &to_client);
            let _ = client.shutdown(Shutdown::Both);
        })
    };
    let mut reader = BufReader::new(client_reader);
    let mut to_server = server;
    while let Some(head) = read_head(&mut reader) {
        let (failed, delay) = {
            let mut state = state.lock().expect("never poisoned");
            let delay = if state.faults.applies(&head.method, &head.path) {
                state.faults.delay
            } else {
                Duration::ZERO
            };
            (state.fail(&head.method, &head.path), delay)
        };
        let done = if failed {
            answer_500(&head, &mut reader, &to_client)
        } else {
            std::thread::sleep(delay);
            forward(&head, &mut reader, &mut to_server)
        };
        if done.is_err() {
            break;
        }
    }
    let _ = to_server.shutdown(Shutdown::Both);
    let _ = responses.join();
}

/// Copies s3s-fs's responses to the client until s3s-fs closes the connection.
fn copy_responses(mut from_server: TcpStream, to_client: &Mutex<TcpStream>) {
    let mut buf = vec![0; 64 << 10];
    while let Ok(n @ 1..) = from_server.read(&mut buf) {
        let mut client = to_client.lock().expect("never poisoned");
        if client.write_all(&buf[..n]).is_err() {
            return;
        }
    }
}

fn forward(
    head: &Head,
    reader: &mut BufReader<TcpStream>,
    server: &mut TcpStream,
) -> io::Result<()> {
    server.write_all(&head.raw)?;
    copy_body(head, reader, server)
}

/// Answers with the injected error. The body the client sends is read and dropped, so
/// the connection stays usable; a client waiting for `100 Continue` gets the error
/// instead (RFC 9110 §10.1.1) and the connection is closed after it, since whether it
/// sends its body then is up to it.
fn answer_500(
    head: &Head,
    reader: &mut BufReader<TcpStream>,
    to_client: &Mutex<TcpStream>,
) -> io::Result<()> {
    if !head.expects_continue {
        copy_body(head, reader, &mut io::sink())?;
    }
    let close = if head.expects_continue {
        "connection: close\r\n"
    } else {
        ""
    };
    let mut response = format!(
        "HTTP/1.1 500 Internal Server Error\r\ncontent-type: application/xml\r\n\
         content-length: {}\r\nx-amz-request-id: faulty-s3\r\n{close}\r\n",
        ERROR_BODY.len()
    )
    .into_bytes();
    // A response to HEAD has no body, only the length it would have.
    if head.method != "HEAD" {
        response.extend_from_slice(ERROR_BODY.as_bytes());
    }
    let mut client = to_client.lock().expect("never poisoned");
    client.write_all(&response)?;
    if head.expects_continue {
        // Read what the client still sends until it closes, so that closing first does
        // not reset the connection under the response.
        client.shutdown(Shutdown::Write)?;
        drop(client);
        reader
            .get_ref()
            .set_read_timeout(Some(Duration::from_secs(5)))?;
        let _ = io::copy(reader, &mut io::sink());
        return Err(io::Error::other("closed after an injected error"));
    }
    Ok(())
}

/// Reads a request head; `None` at the end of the connection or on a malformed head.
fn read_head(reader: &mut impl BufRead) -> Option<Head> {
    let mut raw = Vec::new();
    let mut lines = Vec::new();
    loop {
        let start = raw.len();
        match reader.read_until(b'\n', &mut raw) {
            Ok(0) | Err(_) => return None,
            Ok(_) => {}
        }
        let line = String::from_utf8_lossy(&raw[start..])
            .trim_end()
            .to_string();
        if line.is_empty() {
            if lines.is_empty() {
                // Stray blank lines between requests are allowed (RFC 9112 §2.2).
                raw.clear();
                continue;
            }
            break;
        }
        lines.push(line);
    }
    let mut request_line = lines.first()?.split_whitespace();
    let method = request_line.next()?.to_string();
    let target = request_line.next()?;
    let path = target.split('?').next().unwrap_or(target).to_string();
    let header = |name: &str| {
        lines[1..].iter().find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.trim()
                .eq_ignore_ascii_case(name)
                .then(|| v.trim().to_ascii_lowercase())
        })
    };
    Some(Head {
        method,
        path,
        content_length: header("content-length")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0),
        chunked: header("transfer-encoding").is_some_and(|v| v.contains("chunked")),
        expects_continue: header("expect").is_some_and(|v| v == "100-continue"),
        raw,
    })
}

/// Copies a request's body, framing included, from `reader` to `out`.
fn copy_body(head: &Head, reader: &mut impl BufRead, out: &mut impl Write) -> io::Result<()> {
    if !head.chunked {
        let copied = io::copy(&mut reader.by_ref().take(head.content_length), out)?;
        return if copied == head.content_length {
            Ok(())
        } else {
            Err(io::ErrorKind::UnexpectedEof.into())
        };
    }
    loop {
        let size_line = read_line(reader)?;
        out.write_all(&size_line)?;
        let size = String::from_utf8_lossy(&size_line);
        let size = size.split(';').next().unwrap_or_default().trim();
        let size = u64::from_str_radix(size, 16).map_err(io::Error::other)?;
        if size == 0 {
            // Trailer fields, then the blank line that ends the body.
            loop {
                let line = read_line(reader)?;
                out.write_all(&line)?;
                if line == b"\r\n" || line == b"\n" {
                    return Ok(());
                }
            }
        }
        // The chunk's data and the CRLF after it.
        let copied = io::copy(&mut reader.by_ref().take(size), out)?;
        if copied != size {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        out.write_all(&read_line(reader)?)?;
    }
}

fn read_line(reader: &mut impl BufRead) -> io::Result<Vec<u8>> {
    let mut line = Vec::new();
    match reader.read_until(b'\n', &mut line)? {
        0 => Err(io::ErrorKind::UnexpectedEof.into()),
        _ => Ok(line),
    }
}
