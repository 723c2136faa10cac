//! A pipeline's limits: what a source must stay within, checked at probe, before any
//! encoding, failing once; and what a cell does with a job it has no room for.

mod common;

use std::process::Command;

use common::Farm;

/// Pipelines over the example `thumbnails` steps with tight limits.
const LIMITED: &str = r#"
[pipelines.short_only]
pool = "default"
output = "s3://cellfarm-demo/outputs/short_only/"
limits = { max_duration_secs = 1.5 }
steps = [{ args = ["-i", "{input}", "-frames:v", "1", "{out}/poster.jpg"] }]
outputs = [{ path = "poster.jpg", video_codec = "mjpeg" }]

[pipelines.no_room]
pool = "default"
output = "s3://cellfarm-demo/outputs/no_room/"
limits = { scratch_factor = 1e12 }
steps = [{ args = ["-i", "{input}", "-frames:v", "1", "{out}/poster.jpg"] }]
outputs = [{ path = "poster.jpg", video_codec = "mjpeg" }]

[pipelines.slow]
pool = "default"
output = "s3://cellfarm-demo/outputs/slow/"
cost_factor = 0.01
steps = [{ args = ["-re", "-i", "{input}", "-f", "null", "-"] }, { args = ["-i", "{input}", "-frames:v", "1", "{out}/poster.jpg"] }]
outputs = [{ path = "poster.jpg", video_codec = "mjpeg" }]
"#;

/// A one-frame H.264 of 8200×4400: a small file whose frames are beyond 8K UHD, the
/// default `max_pixels`.
fn pixel_bomb(path: &std::path::Path) {
    let status = Command::new("ffmpeg")
        .args(["-nostdin", "-loglevel", "error", "-y", "-f", "lavfi", "-i"])
        .arg("color=c=black:s=8200x4400:r=1:d=1")
        .args([
            "-c:v",
            "libx264",
            "-preset",
            "ultrafast",
            "-pix_fmt",
            "yuv420p",
        ])
        .arg(path)
        .status()
        .expect("ffmpeg is installed");
    assert!(status.success(), "making the pixel bomb");
}

/// Seconds from a job's first attempt's start to its end, from the ledger.
async fn cost_secs(farm: &Farm, id: &str) -> f64 {
    sqlx::query_scalar(
        "SELECT EXTRACT(EPOCH FROM max(finished_at) - min(started_at))::float8
         FROM job_attempts WHERE job_id = $1",
    )
    .bind(id)
    .fetch_one(farm.ledger.pool())
    .await
    .expect("query attempts")
}

/// Property: a source over its pipeline's `max_duration_secs`, and a pixel bomb over
/// the default `max_pixels`, fail at probe in one attempt with the limit named; a step
/// far past the estimate derived from its source (no timeout set) fails once, as
/// permanent; and a job that does not fit on a cell's scratch disk is handed back
/// without spending attempts (outcome `fault`) until its fault budget runs out, and
/// only then ends, `dead`.
#[tokio::test(flavor = "multi_thread")]
async fn sources_beyond_limits_fail_once_and_no_room_hands_back() {
    let mut farm = Farm::new("limits", LIMITED).await;
    farm.edit_config(|doc| {
        common::edit::add(doc, "cell.min_step_timeout_secs", 1);
        common::edit::add(doc, "cell.fault_budget_secs", 4);
    });
    let clip = farm.clip("clip", 3.0, "testsrc2");
    farm.put_file("inbox/clip.mp4", &clip);
    let bomb = farm.dir.path().join("bomb.mp4");
    pixel_bomb(&bomb);
    farm.put_file("inbox/bomb.mp4", &bomb);

    let too_long = farm.submit_id("inbox/clip.mp4", "short_only");
    let bombed = farm.submit_id("inbox/bomb.mp4", "thumbnails");
    let slow = farm.submit_id("inbox/clip.mp4", "slow");
    let roomless = farm.submit_id("inbox/clip.mp4", "no_room");
    let status = farm.run_cell_until_idle();
    assert!(status.success(), "cell exit {status}\n{}", farm.logs());

    for (id, what, named) in [
        (&too_long, "too long", "limits.max_duration_secs = 1.5"),
        (&bombed, "pixel bomb", "limits.max_pixels = 33177600"),
        (&slow, "far past its estimate", "its estimate"),
    ] {
        let (state, attempts, error) = farm.job(id).await.expect("a ledger row");
        let error = error.unwrap_or_default();
        assert_eq!(state, "failed", "{what}: {error}\n{}", farm.logs());
        assert_eq!(attempts, 1, "{what}: one attempt, no retry");
        assert!(error.contains(named), "{what}: {error}");
        println!(
            "{what}: failed in {:.2} s: {error}",
            cost_secs(&farm, id).await
        );
    }
    assert!(
        farm.job(&bombed)
            .await
            .unwrap()
            .2
            .unwrap()
            .contains("8200×4400"),
        "the bomb's size is named"
    );

    let (state, attempts, error) = farm.job(&roomless).await.expect("a ledger row");
    let error = error.unwrap_or_default();
    let outcomes = farm.attempts(&roomless).await;
    assert_eq!(state, "dead", "{error}\n{}", farm.logs());
    assert!(error.contains("scratch space"), "{error}");
    assert!(error.contains("fault_budget_secs"), "{error}");
    // Every hand-back spent nothing; only the attempt that ended the job counts.
    assert_eq!(attempts, 1, "no room costs no attempt: {outcomes:?}");
    let (last, before) = outcomes.split_last().expect("attempts");
    assert_eq!(last, "failed", "{outcomes:?}");
    assert!(
        before.len() >= 2 && before.iter().all(|o| o == "fault"),
        "handed back each time until the budget ran out: {outcomes:?}"
    );
    assert!(farm.output_keys("no_room").await.is_empty());
}
