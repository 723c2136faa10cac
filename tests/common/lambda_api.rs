//! A test AWS Lambda runtime API on loopback (the interface a custom runtime's
//! `bootstrap` talks to): it hands out queued events on `GET …/invocation/next` (holding
//! the request while none is queued, as Lambda does) and records what the function
//! posts to `…/response` and `…/error`.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::http::{serve, Response};
use super::wait::poll_sync;

/// What the function answered to one invocation.
#[derive(Debug, Clone)]
pub struct Answer {
    pub request_id: String,
    /// `response` or `error`.
    pub kind: String,
    pub body: serde_json::Value,
}

pub struct RuntimeApi {
    /// `host:port`, for `AWS_LAMBDA_RUNTIME_API`.
    pub address: String,
    events: Arc<Mutex<VecDeque<(String, serde_json::Value)>>>,
    answers: Arc<Mutex<Vec<Answer>>>,
}

impl RuntimeApi {
    pub fn start() -> RuntimeApi {
        let events: Arc<Mutex<VecDeque<(String, serde_json::Value)>>> = Default::default();
        let answers: Arc<Mutex<Vec<Answer>>> = Default::default();
        let (e, a) = (events.clone(), answers.clone());
        let url = serve(move |r| {
            const PREFIX: &str = "/2018-06-01/runtime/invocation/";
            if r.method == "GET" && r.path == format!("{PREFIX}next") {
                loop {
                    let next = e.lock().expect("never poisoned").pop_front();
                    if let Some((id, event)) = next {
                        let deadline = chrono::Utc::now().timestamp_millis() + 60_000;
                        return Response::new("200 OK", event.to_string())
                            .header("lambda-runtime-aws-request-id", &id)
                            .header("lambda-runtime-deadline-ms", &deadline.to_string())
                            .header(
                                "lambda-runtime-invoked-function-arn",
                                "arn:aws:lambda:us-east-1:123456789012:function:cellfarm-trigger",
                            )
                            .header(
                                "lambda-runtime-trace-id",
                                "Root=1-00000000-000000000000000000000000",
                            )
                            .header("content-type", "application/json");
                    }
                    std::thread::sleep(Duration::from_millis(50));
                }
            }
            if let Some(rest) = r.path.strip_prefix(PREFIX) {
                if let Some((id, kind)) = rest.split_once('/') {
                    let body = serde_json::from_slice(&r.body).unwrap_or_else(|_| {
                        serde_json::Value::String(String::from_utf8_lossy(&r.body).into())
                    });
                    a.lock().expect("never poisoned").push(Answer {
                        request_id: id.to_string(),
                        kind: kind.to_string(),
                        body,
                    });
                    return Response::new("202 Accepted", "{}");
                }
            }
            Response::new("404 Not Found", "")
        });
        RuntimeApi {
            address: url.trim_start_matches("http://").to_string(),
            events,
            answers,
        }
    }

    /// Queues an invocation.
    pub fn invoke(&self, request_id: &str, event: serde_json::Value) {
        self.events
            .lock()
            .expect("never poisoned")
            .push_back((request_id.to_string(), event));
    }

    /// Waits for the answer to `request_id`; `None` if none came within `timeout`.
    pub fn answer(&self, request_id: &str, timeout: Duration) -> Option<Answer> {
        poll_sync(timeout, || {
            self.answers
                .lock()
                .expect("never poisoned")
                .iter()
                .find(|a| a.request_id == request_id)
                .cloned()
        })
    }
}
