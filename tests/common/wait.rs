//! Waiting for something to happen: one polling loop for every test, so each wait states
//! what it waits for and how long, and a timeout says both.

use std::fmt::Display;
use std::future::Future;
use std::time::{Duration, Instant};

/// How often a condition is checked: quick next to every timeout the tests use (5 s and
/// up), slow enough not to load the servers being polled.
const POLL: Duration = Duration::from_millis(100);

/// What a condition returns: `true`, or `Some(value)` when the wait can end with a value
/// (an exit status, say).
pub trait Reached {
    type Value;
    fn reached(self) -> Option<Self::Value>;
}

impl Reached for bool {
    type Value = ();
    fn reached(self) -> Option<()> {
        self.then_some(())
    }
}

impl<T> Reached for Option<T> {
    type Value = T;
    fn reached(self) -> Option<T> {
        self
    }
}

/// Displays what its function returns, computed only when displayed: a timeout message
/// with the cells' logs or the last state seen, read when the wait fails and not before.
pub struct Lazy<F>(pub F);

impl<F: Fn() -> String> Display for Lazy<F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&(self.0)())
    }
}

/// Polls `cond` until it is reached and returns its value; panics naming `what` and the
/// time waited if `timeout` passes first. The condition is checked at least once.
pub async fn wait_until<R, Fut>(
    timeout: Duration,
    what: impl Display,
    mut cond: impl FnMut() -> Fut,
) -> R::Value
where
    R: Reached,
    Fut: Future<Output = R>,
{
    let started = Instant::now();
    loop {
        if let Some(value) = cond().await.reached() {
            return value;
        }
        if started.elapsed() >= timeout {
            panic!(
                "waited {:?} (timeout {timeout:?}) for {what}",
                started.elapsed()
            );
        }
        tokio::time::sleep(POLL).await;
    }
}

/// [`wait_until`] for sync code: the condition is a plain function, the thread sleeps.
#[track_caller]
pub fn wait_until_sync<R: Reached>(
    timeout: Duration,
    what: impl Display,
    cond: impl FnMut() -> R,
) -> R::Value {
    let started = Instant::now();
    match poll_sync(timeout, cond) {
        Some(value) => value,
        None => panic!(
            "waited {:?} (timeout {timeout:?}) for {what}",
            started.elapsed()
        ),
    }
}

/// Polls `cond` until it is reached, or `None` after `timeout`: for a wait whose
/// timeout is an answer, not a failure.
pub fn poll_sync<R: Reached>(timeout: Duration, mut cond: impl FnMut() -> R) -> Option<R::Value> {
    let started = Instant::now();
    loop {
        if let Some(value) = cond().reached() {
            return Some(value);
        }
        if started.elapsed() >= timeout {
            return None;
        }
        std::thread::sleep(POLL);
    }
}
