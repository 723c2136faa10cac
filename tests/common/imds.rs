//! A test instance-metadata server on loopback, speaking IMDSv2 as EC2 does: a session
//! token from `PUT /latest/api/token`, required on every `GET /latest/meta-data/…`
//! (401 without it), 404 for what is not set. Tests set and change the values (a spot
//! notice, say) while cells poll it.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use super::http::{serve, Response};

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
        let values: Arc<Mutex<HashMap<String, String>>> = Arc::new(Mutex::new(
            values
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        ));
        let unauthorized = Arc::new(AtomicUsize::new(0));
        let (v, u) = (values.clone(), unauthorized.clone());
        let url = serve(move |r| match (r.method.as_str(), r.path.as_str()) {
            ("PUT", "/latest/api/token") => {
                match r.headers.get("x-aws-ec2-metadata-token-ttl-seconds") {
                    Some(ttl) => Response::new("200 OK", TOKEN)
                        .header("x-aws-ec2-metadata-token-ttl-seconds", ttl),
                    None => Response::new("400 Bad Request", ""),
                }
            }
            ("GET", p) if p.starts_with("/latest/meta-data/") => {
                if r.headers
                    .get("x-aws-ec2-metadata-token")
                    .map(String::as_str)
                    != Some(TOKEN)
                {
                    u.fetch_add(1, Ordering::SeqCst);
                    return Response::new("401 Unauthorized", "");
                }
                let key = &p["/latest/meta-data/".len()..];
                match v.lock().expect("never poisoned").get(key) {
                    Some(value) => Response::new("200 OK", value.clone()),
                    None => Response::new("404 Not Found", ""),
                }
            }
            _ => Response::new("404 Not Found", ""),
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
