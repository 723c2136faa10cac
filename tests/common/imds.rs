//! A test instance-metadata server on loopback, speaking IMDSv2 as EC2 does: a session
//! token from `PUT /latest/api/token`, required on every `GET /latest/meta-data/…`
//! (401 without it), 404 for what is not set. Tests set and change the values (a spot
//! notice, say) while cells poll it.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

const TOKEN: &str = "cellfarm-test-imds-token";

pub struct MetadataServer {
    pub url: String,
    values: Arc<Mutex<HashMap<String, String>>>,
    /// GETs refused for a missing or wrong token: a client that skips IMDSv2 shows here.
    pub unauthorized: Arc<AtomicUsize>,
}

impl MetadataServer {
    /// Serves `values` (paths under `/latest/meta-data/`).
    pub fn start(values: &[(&str, &str)]) -> MetadataServer {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the metadata server");
        let url = format!("http://{}", listener.local_addr().expect("an address"));
        let values: Arc<Mutex<HashMap<String, String>>> = Arc::new(Mutex::new(
            values
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        ));
        let unauthorized = Arc::new(AtomicUsize::new(0));
        let (v, u) = (values.clone(), unauthorized.clone());
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let (v, u) = (v.clone(), u.clone());
                std::thread::spawn(move || serve(stream, &v, &u));
            }
        });
        MetadataServer {
            url,
            values,
            unauthorized,
        }
    }

    pub fn set(&self, path: &str, value: &str) {
        self.values
            .lock()
            .expect("never poisoned")
            .insert(path.to_string(), value.to_string());
    }
}

/// One connection, keep-alive: requests until the client closes.
fn serve(stream: TcpStream, values: &Mutex<HashMap<String, String>>, unauthorized: &AtomicUsize) {
    let mut writer = stream.try_clone().expect("clone the stream");
    let mut reader = BufReader::new(stream);
    loop {
        let mut request_line = String::new();
        if reader.read_line(&mut request_line).unwrap_or(0) == 0 {
            return;
        }
        let mut headers = HashMap::new();
        loop {
            let mut line = String::new();
            if reader.read_line(&mut line).unwrap_or(0) == 0 {
                return;
            }
            let line = line.trim_end();
            if line.is_empty() {
                break;
            }
            if let Some((k, v)) = line.split_once(':') {
                headers.insert(k.trim().to_ascii_lowercase(), v.trim().to_string());
            }
        }
        let length: usize = headers
            .get("content-length")
            .and_then(|l| l.parse().ok())
            .unwrap_or(0);
        let mut body = vec![0; length];
        if std::io::Read::read_exact(&mut reader, &mut body).is_err() {
            return;
        }
        let mut parts = request_line.split_whitespace();
        let (method, path) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
        let (status, extra, text) = match (method, path) {
            ("PUT", "/latest/api/token") => {
                match headers.get("x-aws-ec2-metadata-token-ttl-seconds") {
                    Some(ttl) => (
                        "200 OK",
                        format!("x-aws-ec2-metadata-token-ttl-seconds: {ttl}\r\n"),
                        TOKEN.to_string(),
                    ),
                    None => ("400 Bad Request", String::new(), String::new()),
                }
            }
            ("GET", p) if p.starts_with("/latest/meta-data/") => {
                if headers.get("x-aws-ec2-metadata-token").map(String::as_str) != Some(TOKEN) {
                    unauthorized.fetch_add(1, Ordering::SeqCst);
                    ("401 Unauthorized", String::new(), String::new())
                } else {
                    let key = &p["/latest/meta-data/".len()..];
                    match values.lock().expect("never poisoned").get(key) {
                        Some(v) => ("200 OK", String::new(), v.clone()),
                        None => ("404 Not Found", String::new(), String::new()),
                    }
                }
            }
            _ => ("404 Not Found", String::new(), String::new()),
        };
        let response = format!(
            "HTTP/1.1 {status}\r\ncontent-type: text/plain\r\ncontent-length: {}\r\n{extra}\r\n{text}",
            text.len()
        );
        if writer.write_all(response.as_bytes()).is_err() {
            return;
        }
    }
}
