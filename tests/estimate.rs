//! What a submission learns of a source: work-aware scaling needs each queued job's
//! work before any cell has run it, and the cell that runs it need not probe it again.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

use common::{edit, Farm};

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

/// Property: a source probed at submission is probed once. A cell whose ffprobe fails
/// every probe (it answers only `-version`, the start-up check) still runs a thumbnails
/// job submitted with its ranged probe, because the probe is in the job's ledger row and
/// the JPEG outputs are read in-process; the same cell fails the job submitted with
/// `--no-probe` at the source's probe, so the first job did not get by on luck.
#[tokio::test(flavor = "multi_thread")]
async fn a_source_probed_at_submission_is_not_probed_again() {
    let mut farm = Farm::new("probe-once", "").await;
    farm.put_file("in/probed.mp4", &farm.clip("probed", 2.0, "testsrc"));
    farm.put_file("in/unprobed.mp4", &farm.clip("unprobed", 2.0, "testsrc2"));
    let probed = farm.submit_id("in/probed.mp4", "thumbnails");
    let url = format!("s3://{}/in/unprobed.mp4", farm.bucket);
    let out = farm.run(&["submit", &url, "--pipeline", "thumbnails", "--no-probe"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    let unprobed = stdout
        .split_whitespace()
        .nth(1)
        .expect("a job id")
        .to_string();

    let broken = farm.dir.path().join("ffprobe-that-fails");
    std::fs::write(
        &broken,
        "#!/bin/sh\n[ \"$1\" = -version ] && exec /usr/bin/ffprobe -version\n\
         echo \"this ffprobe never probes\" >&2\nexit 1\n",
    )
    .expect("write the stand-in");
    std::fs::set_permissions(&broken, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    farm.edit_config(|doc| {
        edit::add(doc, "cell.ffprobe", broken.display().to_string());
        // The stand-in is a shell script: the point here is what runs, not confinement.
        edit::add(doc, "cell.sandbox", "off");
    });
    let status = farm.run_cell_until_idle();
    assert!(status.success(), "{}", farm.logs());

    let (state, _, error) = farm.job(&probed).await.expect("the probed job");
    assert_eq!(state, "succeeded", "{error:?}\n{}", farm.logs());
    assert_eq!(farm.outputs(&probed).await.len(), 2);
    farm.wait_state(&unprobed, "failed", Duration::from_secs(30))
        .await;
    let (_, _, error) = farm.job(&unprobed).await.expect("the unprobed job");
    let error = error.expect("a reason");
    assert!(error.contains("this ffprobe never probes"), "{error}");
}
