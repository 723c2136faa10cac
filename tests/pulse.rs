//! The pulse (heartbeat and lease renewal) does not wait behind the tick's slow calls.

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::http::{self, Response};
use common::{edit, Farm, REALTIME};

/// How long the config's version check hangs: far longer than a lease (4 s here).
const HELD_UP: Duration = Duration::from_secs(20);

/// Property: while a cell's tick is held up by a slow call (its config lives behind an
/// S3 endpoint whose HEAD takes 20 s, five leases), the job it runs keeps its lease,
/// commits on its first attempt, and is not taken over or run twice.
#[tokio::test(flavor = "multi_thread")]
async fn leases_renew_while_the_tick_is_held_up() {
    let mut farm = Farm::new("pulse", REALTIME).await;
    let mut doc = farm.config_doc();
    edit::add(&mut doc, "cell.config_check_secs", 1);
    let text = edit::to_text(&doc);
    let slow = Arc::new(AtomicBool::new(false));
    let held = slow.clone();
    // A config object and nothing else; every HEAD hangs once `slow` is set.
    let endpoint = http::serve(move |req| {
        let etag = "\"0123456789abcdef\"";
        if req.method == "HEAD" {
            if held.load(Ordering::SeqCst) {
                std::thread::sleep(HELD_UP);
            }
            return Response::new("200 OK", "").header("etag", etag);
        }
        Response::new("200 OK", text.clone()).header("etag", etag)
    });
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_cellfarm"));
    cmd.args(["--config", "s3://config/cellfarm.toml", "cell"])
        .env("CELLFARM_S3_ENDPOINT", &endpoint);
    farm.start(cmd);
    let consuming = || async { farm.logs().contains("consuming") };
    farm.wait_until(Duration::from_secs(60), "the cell consuming", consuming)
        .await;

    slow.store(true, Ordering::SeqCst);
    let clip = farm.clip("clip", 8.0, "testsrc");
    farm.put_file("inbox/clip.mp4", &clip);
    let id = farm.submit_id("inbox/clip.mp4", "realtime");
    farm.wait_state(&id, "succeeded", Duration::from_secs(120))
        .await;
    assert_eq!(
        farm.attempts(&id).await,
        ["succeeded"],
        "one attempt, never taken over\n{}",
        farm.logs()
    );
}
