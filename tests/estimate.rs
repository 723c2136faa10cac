//! Work-aware scaling needs each queued job's work before any cell has run it.

mod common;

use common::Farm;

/// The estimated work seconds each job of `pipeline` carries in its message.
async fn work_secs(farm: &Farm, pipeline: &str) -> Vec<Option<f64>> {
    sqlx::query_scalar(
        "SELECT (message->>'work_secs')::float8 FROM jobs WHERE pipeline = $1 ORDER BY id",
    )
    .bind(pipeline)
    .fetch_all(farm.ledger.pool())
    .await
    .expect("query the jobs")
}

/// Property: `submit` and the trigger store each job's work (the source's duration from
/// a ranged probe × the pipeline's `cost_factor`) in its message, so that three queued
/// long videos weigh more than three short clips before any cell starts one; a source
/// whose duration cannot be read is still enqueued, with no estimate.
#[tokio::test(flavor = "multi_thread")]
async fn queued_jobs_carry_their_estimated_work() {
    let farm = Farm::new("estimate", "").await;
    farm.put_file("by-hand/long.mp4", &farm.clip("long", 6.0, "testsrc"));
    farm.put_bytes("by-hand/noise.mp4", b"not a video at all".to_vec());
    let url = format!("s3://{}/by-hand/", farm.bucket);
    let out = farm.run(&["submit", "--prefix", &url, "--pipeline", "h264_ladder"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut estimates = work_secs(&farm, "h264_ladder").await;
    estimates.sort_by(|a, b| a.partial_cmp(b).expect("no NaN"));
    assert_eq!(estimates.len(), 2, "{estimates:?}");
    assert_eq!(estimates[0], None, "the unreadable source has no estimate");
    let long = estimates[1].expect("the clip's estimate");
    // h264_ladder's cost factor is the default, 1.
    assert!((long - 6.0).abs() < 0.2, "6 s × 1: {long}");

    // The trigger: the example route sends inbox/ to every pipeline.
    farm.put_file("inbox/short.mp4", &farm.clip("short", 2.0, "testsrc"));
    let inbox = format!("s3://{}/inbox/", farm.bucket);
    let out = farm.run(&["watch", &inbox, "--reconcile"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let thumbs = work_secs(&farm, "thumbnails").await;
    assert_eq!(thumbs.len(), 1, "{thumbs:?}");
    let short = thumbs[0].expect("the trigger's estimate");
    // thumbnails' cost factor is 0.1.
    assert!((short - 0.2).abs() < 0.02, "2 s × 0.1: {short}");
}
