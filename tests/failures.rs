//! Bad input loses nothing: corrupt media, malformed messages, poison jobs and bad
//! configs each end with a clear reason, and the farm keeps working.

mod common;

use std::time::Duration;

use common::{edit, Farm};

/// A pipeline whose step always outlives its 1 s timeout: `-re` reads a 4 s clip in
/// real time. A timeout is retryable, so this job is retried until its attempts run out.
const SLOW: &str = r#"
[pipelines.slow]
pool = "default"
output = "s3://cellfarm-demo/outputs/slow/"
step_timeout_secs = 1
steps = [{ args = ["-re", "-i", "{input}", "-c:v", "libx264", "-preset", "ultrafast", "{out}/slow.mp4"] }]
outputs = [{ path = "slow.mp4" }]
"#;

/// Property: zero-byte, random and truncated "videos" each fail their job with FFmpeg's
/// reason, go to the dead-letter queue with that reason, and the cell goes on to process
/// a good job submitted after them.
#[tokio::test(flavor = "multi_thread")]
async fn corrupt_inputs_fail_with_a_reason_and_the_cell_goes_on() {
    let mut farm = Farm::new("corrupt", "").await;
    let good = farm.clip("good", 3.0, "testsrc");
    let bytes = std::fs::read(&good).expect("clip");
    let random: Vec<u8> = (0..200_000).map(|_| rand::random::<u8>()).collect();
    farm.put_bytes("inbox/zero.mp4", Vec::new());
    farm.put_bytes("inbox/random.mp4", random);
    // The moov atom is at the end (no faststart): half a file has none.
    farm.put_bytes("inbox/truncated.mp4", bytes[..bytes.len() / 2].to_vec());
    farm.put_file("inbox/good.mp4", &good);
    let bad: Vec<String> = ["zero", "random", "truncated"]
        .iter()
        .map(|n| farm.submit_id(&format!("inbox/{n}.mp4"), "h264_ladder"))
        .collect();
    let ok = farm.submit_id("inbox/good.mp4", "h264_ladder");

    assert!(farm.run_cell_until_idle().success(), "{}", farm.logs());

    for id in &bad {
        let (state, attempts, error) = farm.job(id).await.expect("a row");
        assert_eq!(state, "failed", "{id}: {error:?}");
        assert_eq!(attempts, 1, "a permanent failure is not retried");
        let error = error.expect("an error text");
        assert!(
            error.contains("ffprobe"),
            "the reason names the tool: {error}"
        );
    }
    let (state, _, error) = farm.job(&ok).await.expect("a row");
    assert_eq!(state, "succeeded", "{error:?}\n{}", farm.logs());
    let dead = farm.drain(&farm.names.dead("default")).await;
    assert_eq!(dead.len(), 3, "each bad job is dead-lettered once");
    for (body, reason) in dead {
        let job: serde_json::Value = serde_json::from_slice(&body).expect("the original job");
        assert!(bad.contains(&job["job_id"].as_str().unwrap_or_default().to_string()));
        assert!(
            reason.is_some_and(|r| r.contains("ffprobe")),
            "a reason header"
        );
    }
    let mut keys = farm.output_keys("h264_ladder").await;
    keys.sort();
    assert_eq!(
        keys,
        [
            format!("outputs/h264_ladder/inbox/good.mp4/{ok}/480p.mp4"),
            format!("outputs/h264_ladder/inbox/good.mp4/{ok}/720p.mp4"),
        ],
        "the good job's outputs and nothing of the bad ones"
    );
}

/// Property: a message that is not JSON, or is a job of an unknown version, reaches the
/// dead-letter queue unchanged with the reason, and does not stop the cell.
#[tokio::test(flavor = "multi_thread")]
async fn malformed_messages_are_dead_lettered_with_the_reason() {
    let mut farm = Farm::new("malformed", "").await;
    let work = farm.names.work("default");
    let future = br#"{"v": 2, "job_id": "x", "pipeline": "hls"}"#.to_vec();
    for body in [b"not json at all".to_vec(), future.clone()] {
        farm.publisher
            .publish(&work, &body, &[])
            .await
            .expect("publish");
    }
    farm.put_file("inbox/a.mp4", &farm.clip("a", 1.0, "testsrc"));
    let ok = farm.submit_id("inbox/a.mp4", "thumbnails");

    assert!(farm.run_cell_until_idle().success(), "{}", farm.logs());

    let mut dead = farm.drain(&farm.names.dead("default")).await;
    dead.sort();
    assert_eq!(dead.len(), 2);
    assert_eq!(dead[0].0, b"not json at all".to_vec());
    assert!(
        dead[0].1.as_deref().is_some_and(|r| r.contains("not JSON")),
        "{:?}",
        dead[0].1
    );
    assert_eq!(dead[1].0, future);
    assert!(
        dead[1]
            .1
            .as_deref()
            .is_some_and(|r| r.contains("version 2")),
        "{:?}",
        dead[1].1
    );
    farm.wait_state(&ok, "succeeded", Duration::from_secs(5))
        .await;
}

/// Property: a job that fails retryably every time gets exactly `max_attempts` (3)
/// attempts, then goes to the dead-letter queue with its error, while other jobs keep
/// flowing.
#[tokio::test(flavor = "multi_thread")]
async fn a_poison_job_gets_exactly_its_attempts_then_the_dead_letter_queue() {
    let mut farm = Farm::new("poison", SLOW).await;
    farm.put_file("inbox/slow.mp4", &farm.clip("slow", 4.0, "testsrc"));
    farm.put_file("inbox/quick.mp4", &farm.clip("quick", 1.0, "testsrc2"));
    let poison = farm.submit_id("inbox/slow.mp4", "slow");
    let quick = farm.submit_id("inbox/quick.mp4", "thumbnails");

    assert!(farm.run_cell_until_idle().success(), "{}", farm.logs());

    let (state, attempts, error) = farm.job(&poison).await.expect("a row");
    assert_eq!(state, "dead", "{error:?}\n{}", farm.logs());
    assert_eq!(attempts, 3);
    assert_eq!(
        farm.attempts(&poison).await,
        vec!["retry", "retry", "failed"]
    );
    let error = error.expect("an error");
    assert!(
        error.contains("timed out") && error.contains("3 attempts"),
        "{error}"
    );
    let dead = farm.drain(&farm.names.dead("default")).await;
    assert_eq!(dead.len(), 1, "dead-lettered exactly once");
    assert!(dead[0]
        .1
        .as_deref()
        .is_some_and(|r| r.contains("timed out")));
    farm.wait_state(&quick, "succeeded", Duration::from_secs(5))
        .await;
    assert!(
        farm.output_keys("slow").await.is_empty(),
        "a failed job publishes nothing"
    );
}

/// Property: a config with three bad keys is refused with exit code 64, naming all three.
#[test]
fn a_bad_config_is_refused_naming_every_bad_key() {
    let dir = tempfile::tempdir().expect("tmp");
    let mut doc = edit::parse(include_str!("../examples/local.toml"));
    edit::add(&mut doc, "redis.timeout_secs", 5);
    edit::swap(&mut doc, "cell.max_attempts", 3, 0);
    edit::swap(&mut doc, "pipelines.hls.pool", "default", "gpu");
    let path = dir.path().join("bad.toml");
    std::fs::write(&path, edit::to_text(&doc)).expect("write");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_cellfarm"))
        .arg("--config")
        .arg(&path)
        .arg("check")
        .output()
        .expect("run");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(64), "{stderr}");
    for key in [
        "redis.timeout_secs",
        "cell.max_attempts",
        "pipelines.hls.pool",
    ] {
        assert!(stderr.contains(key), "{key} not named in: {stderr}");
    }
    assert!(stderr.contains("3 problem(s)"), "{stderr}");
}
