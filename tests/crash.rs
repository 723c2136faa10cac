//! A cell killed mid-job loses nothing and leaves nothing behind.

mod common;

use std::time::Duration;

use common::{probe, seconds, video_stream, wait_until, Farm, REALTIME};

/// FFmpeg processes working in this farm's scratch directory.
fn ffmpegs_in(dir: &std::path::Path) -> Vec<u32> {
    let needle = dir.to_string_lossy().to_string();
    let mut pids = Vec::new();
    for entry in std::fs::read_dir("/proc").expect("/proc").flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
        if cmdline.starts_with("ffmpeg") && cmdline.contains(&needle) {
            pids.push(pid);
        }
    }
    pids
}

/// Property: a cell killed with SIGKILL mid-job takes its FFmpeg with it, publishes no
/// partial output, and a second cell completes the job; the ledger shows both attempts.
#[tokio::test(flavor = "multi_thread")]
async fn a_killed_cells_job_is_completed_by_another_cell() {
    let mut farm = Farm::new("crash", REALTIME).await;
    let clip = farm.clip("clip", 6.0, "testsrc");
    farm.put_file("inbox/clip.mp4", &clip);
    let id = farm.submit_id("inbox/clip.mp4", "realtime");
    let first = farm.start_cell(&[]);

    farm.wait_until(Duration::from_secs(60), "FFmpeg to start", || async {
        !ffmpegs_in(farm.dir.path()).is_empty()
    })
    .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let killed = std::process::Command::new("kill")
        .args(["-9", &first.to_string()])
        .status()
        .expect("kill");
    assert!(killed.success());

    wait_until(
        Duration::from_secs(5),
        "FFmpeg to die with its killed cell",
        || async { ffmpegs_in(farm.dir.path()).is_empty() },
    )
    .await;
    assert!(
        farm.output_keys("realtime").await.is_empty(),
        "no partial output is visible"
    );
    assert_eq!(farm.job(&id).await.expect("row").0, "running");

    assert!(farm.run_cell_until_idle().success(), "{}", farm.logs());
    let (state, attempts, error) = farm.job(&id).await.expect("row");
    assert_eq!(state, "succeeded", "{error:?}\n{}", farm.logs());
    assert_eq!(attempts, 2);
    assert_eq!(farm.attempts(&id).await, vec!["lost", "succeeded"]);
    let keys = farm.output_keys("realtime").await;
    assert_eq!(keys.len(), 1, "{keys:?}");
    let out = video_stream(&probe(&farm.fetch(&keys[0]).await));
    let want = seconds(&video_stream(&probe(&clip))["duration"]);
    assert!(
        (seconds(&out["duration"]) - want).abs() <= 0.041,
        "a whole output"
    );
    assert_eq!(farm.drain(&farm.names.results()).await.len(), 1);
}
