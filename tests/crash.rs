//! A cell killed mid-job loses nothing and leaves nothing behind.

mod common;

use std::time::Duration;

use cellfarm::job::ResultMessage;
use common::faulty_s3::{Faults, FaultyS3};
use common::{edit, probe, seconds, video_stream, wait_until, Farm, REALTIME};
use sha2::Digest;

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

/// Property: a cell killed while it uploads a job's outputs publishes no manifest (a
/// reader that waits for the manifest sees nothing of the half-made set), and another
/// cell then completes the job once: one manifest, naming every output with the
/// checksum of what S3 holds, and one result, which names the manifest.
#[tokio::test(flavor = "multi_thread")]
async fn a_cell_killed_mid_upload_publishes_no_manifest() {
    let mut farm = Farm::new("midupload", "").await;
    let clip = farm.clip("clip", 2.0, "testsrc2");
    farm.put_file("inbox/clip.mp4", &clip);
    let id = farm.submit_id("inbox/clip.mp4", "h264_ladder");
    // A slow S3 for one of the two outputs: its PUT waits 3 s, so the cell is
    // mid-upload for seconds after the other output is up (outputs upload at once).
    let slow = Faults::on(&["PUT"], 0, 1)
        .paths_containing("480p.mp4")
        .delaying(Duration::from_secs(3));
    let proxy = FaultyS3::start(slow);
    farm.edit_config(|doc| edit::set(doc, "s3.endpoint", proxy.url.as_str()));
    let first = farm.start_cell(&[]);
    farm.wait_until(Duration::from_secs(60), "a first output", || async {
        !farm.output_keys("h264_ladder").await.is_empty()
    })
    .await;
    let killed = std::process::Command::new("kill")
        .args(["-9", &first.to_string()])
        .status()
        .expect("kill");
    assert!(killed.success());
    assert_eq!(farm.output_keys("h264_ladder").await.len(), 1, "mid-upload");
    assert!(
        farm.manifest_keys("h264_ladder").await.is_empty(),
        "no manifest for a half-published set"
    );

    let s3 = common::env("CELLFARM_TEST_S3", "http://127.0.0.1:8014");
    farm.edit_config(|doc| edit::set(doc, "s3.endpoint", s3.as_str()));
    assert!(farm.run_cell_until_idle().success(), "{}", farm.logs());
    let (state, _, error) = farm.job(&id).await.expect("row");
    assert_eq!(state, "succeeded", "{error:?}\n{}", farm.logs());
    assert_eq!(farm.attempts(&id).await, vec!["lost", "succeeded"]);

    let manifests = farm.manifest_keys("h264_ladder").await;
    assert_eq!(manifests.len(), 1, "{manifests:?}");
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(farm.fetch(&manifests[0]).await).expect("read"))
            .expect("the manifest is JSON");
    assert_eq!(manifest["job_id"], id.as_str());
    let mut listed = Vec::new();
    for output in manifest["outputs"].as_array().expect("outputs") {
        let key = output["key"].as_str().expect("a key");
        let bytes = std::fs::read(farm.fetch(key).await).expect("read");
        assert_eq!(output["size"], bytes.len(), "{key}");
        let sha = hex::encode(sha2::Sha256::digest(&bytes));
        assert_eq!(output["sha256"], sha.as_str(), "{key}");
        listed.push(key.to_string());
    }
    listed.sort();
    let mut stored = farm.output_keys("h264_ladder").await;
    stored.sort();
    assert_eq!(listed, stored, "the manifest names every output");

    let results = farm.drain(&farm.names.results()).await;
    assert_eq!(results.len(), 1, "one result");
    let result: ResultMessage = serde_json::from_slice(&results[0].0).expect("a result");
    assert_eq!(
        result.manifest.expect("names its manifest").key,
        manifests[0]
    );
}
