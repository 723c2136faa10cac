//! SIGTERM: stop taking work, finish or hand back what runs, exit 0.

mod common;

use std::time::Duration;

use common::{wait_until, Farm, REALTIME};

fn signal(pid: u32, sig: &str) {
    let ok = std::process::Command::new("kill")
        .args([sig, &pid.to_string()])
        .status()
        .expect("kill");
    assert!(ok.success());
}

/// Waits for a process that is not our child to go (the Farm owns the Child).
async fn wait_gone(pid: u32, timeout: Duration) {
    wait_until(timeout, format!("cell {pid} to exit"), || async {
        !std::path::Path::new(&format!("/proc/{pid}")).exists()
            || std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .is_ok_and(|s| s.contains(") Z "))
    })
    .await
}

/// Property: one SIGTERM lets the running job finish and commit, then the cell exits.
#[tokio::test(flavor = "multi_thread")]
async fn sigterm_drains_the_running_job_then_exits() {
    let mut farm = Farm::new("drain", REALTIME).await;
    farm.put_file("inbox/clip.mp4", &farm.clip("clip", 3.0, "testsrc"));
    let id = farm.submit_id("inbox/clip.mp4", "realtime");
    let pid = farm.start_cell(&[]);
    farm.wait_state(&id, "running", Duration::from_secs(60))
        .await;
    signal(pid, "-TERM");
    wait_gone(pid, Duration::from_secs(30)).await;
    let (state, attempts, error) = farm.job(&id).await.expect("row");
    assert_eq!(state, "succeeded", "{error:?}\n{}", farm.logs());
    assert_eq!(attempts, 1);
}

/// Property: a second SIGTERM stops now: the running job is killed and handed back
/// without spending an attempt, re-published, and completed later by another cell; no
/// partial output is published.
#[tokio::test(flavor = "multi_thread")]
async fn a_second_sigterm_hands_the_job_back_without_spending_an_attempt() {
    let mut farm = Farm::new("handback", REALTIME).await;
    farm.put_file("inbox/clip.mp4", &farm.clip("clip", 8.0, "testsrc"));
    let id = farm.submit_id("inbox/clip.mp4", "realtime");
    let pid = farm.start_cell(&[]);
    farm.wait_state(&id, "running", Duration::from_secs(60))
        .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    signal(pid, "-TERM");
    tokio::time::sleep(Duration::from_millis(300)).await;
    signal(pid, "-TERM");
    wait_gone(pid, Duration::from_secs(15)).await;

    let (state, attempts, _) = farm.job(&id).await.expect("row");
    assert_eq!((state.as_str(), attempts), ("queued", 0), "{}", farm.logs());
    assert_eq!(farm.attempts(&id).await, vec!["handed_back"]);
    assert!(
        farm.output_keys("realtime").await.is_empty(),
        "no partial output"
    );

    assert!(farm.run_cell_until_idle().success(), "{}", farm.logs());
    let (state, attempts, error) = farm.job(&id).await.expect("row");
    assert_eq!(state, "succeeded", "{error:?}\n{}", farm.logs());
    assert_eq!(attempts, 1, "the handed-back attempt did not count");
    assert_eq!(farm.attempts(&id).await, vec!["handed_back", "succeeded"]);
}
