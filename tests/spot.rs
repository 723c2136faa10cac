//! Spot interruptions: a cell polls its instance metadata (a test IMDSv2 server here)
//! and leaves before the reclaim without losing a job. Its replacement comes from the
//! `local` cloud, so "another cell" is a real sibling process.

mod common;

use std::time::{Duration, Instant};

use cellfarm::locks::Coordinator;
use common::imds::MetadataServer;
use common::Farm;

/// A pool of its own with a real-time pipeline (a 20 s clip takes 20 s), mitosis on the
/// local cloud, and a 5 s margin before the reclaim.
const SPOT: &str = r#"
[cloud]
kind = "local"
metadata_poll_secs = 1
interruption_margin_secs = 5

[pools.spot]
jobs_per_cell = 10
ceiling = 2
cooldown_secs = 0
# Long enough that the cell started by hand is still there when the test's submit
# (a process that starts, probes the source's two ends and publishes) delivers its job.
idle_grace_secs = 10
launch_timeout_secs = 60

[pipelines.spot]
pool = "spot"
output = "s3://cellfarm-demo/outputs/spot/"
cost_factor = 1.0
steps = [{ args = ["-re", "-i", "{input}", "-c:v", "libx264", "-preset", "ultrafast", "-an", "{out}/out.mp4"] }]
outputs = [{ path = "out.mp4", video_codec = "h264", duration = "source" }]
"#;

/// An RFC 3339 time `secs` from now, as `spot/instance-action` carries it.
fn in_secs(secs: i64) -> String {
    (chrono::Utc::now() + chrono::Duration::seconds(secs))
        .to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

/// Starts a cell of pool `spot` that reads `imds` and waits until it beats.
async fn spot_cell(farm: &mut Farm, imds: &MetadataServer) {
    farm.start_cell_with_env(&["--pool", "spot"], &[("CELLFARM_METADATA_URL", &imds.url)]);
    let beats = Coordinator::connect(&farm.config.redis.url, &farm.name)
        .await
        .expect("Redis");
    farm.wait_until(
        Duration::from_secs(30),
        "the cell's first heartbeat",
        || async { !beats.alive().await.expect("heartbeats").is_empty() },
    )
    .await;
}

/// Waits until the job runs and its cell has probed it (the estimate a notice needs).
async fn wait_probed(farm: &Farm, id: &str) {
    farm.wait_state(id, "running", Duration::from_secs(60))
        .await;
    let what = format!("job {id} to be probed");
    farm.wait_until(Duration::from_secs(30), what, || async {
        sqlx::query_scalar::<_, bool>("SELECT probe IS NOT NULL FROM jobs WHERE id = $1")
            .bind(id)
            .fetch_one(farm.ledger.pool())
            .await
            .expect("query the probe")
    })
    .await
}

async fn attempt_cells(farm: &Farm, id: &str) -> Vec<(String, String, Option<String>)> {
    sqlx::query_as("SELECT coalesce(outcome, 'open'), cell_id, error FROM job_attempts WHERE job_id = $1 ORDER BY id")
        .bind(id)
        .fetch_all(farm.ledger.pool())
        .await
        .expect("query the ledger")
}

/// Property: a spot notice while a job that cannot finish before the reclaim runs makes
/// the cell hand the job back at once (attempt `interrupted`, no attempt spent, nothing
/// uploaded) and exit before the reclaim; a replacement cell, launched by the leaving
/// cell's last tick, completes it; the ledger records the interruption.
#[tokio::test(flavor = "multi_thread")]
async fn a_spot_notice_hands_back_a_job_that_cannot_finish_and_another_cell_completes_it() {
    let mut farm = Farm::new("spot", SPOT).await;
    farm.put_file("in/long.mp4", &farm.clip("long", 20.0, "testsrc"));
    let imds = MetadataServer::start(&[("instance-id", "i-0spot")]);
    spot_cell(&mut farm, &imds).await;
    let id = farm.submit_id("in/long.mp4", "spot");
    wait_probed(&farm, &id).await;

    // 15 s to the reclaim, less the 5 s margin: 10 s, and the job needs about 18 more.
    imds.set(
        "spot/instance-action",
        &format!(r#"{{"action": "terminate", "time": "{}"}}"#, in_secs(15)),
    );
    let noticed = Instant::now();
    let exited = farm
        .wait_exit(
            0,
            Duration::from_secs(15),
            "the cell to leave before the reclaim",
        )
        .await;
    let left_after = noticed.elapsed();
    assert!(exited.success(), "{}", farm.logs());
    assert!(
        farm.output_keys("spot").await.is_empty(),
        "nothing half-written is published"
    );

    farm.wait_state(&id, "succeeded", Duration::from_secs(120))
        .await;
    let attempts = attempt_cells(&farm, &id).await;
    assert_eq!(attempts.len(), 2, "{attempts:?}");
    let (first, second) = (&attempts[0], &attempts[1]);
    assert_eq!(first.0, "interrupted");
    assert!(
        first
            .2
            .as_deref()
            .unwrap_or_default()
            .contains("spot interruption: terminate"),
        "{first:?}"
    );
    assert_eq!(second.0, "succeeded");
    assert_ne!(first.1, second.1, "another cell completed the job");
    let (_, counted, _) = farm.job(&id).await.unwrap();
    assert_eq!(counted, 1, "the interruption spent no attempt");
    assert_eq!(
        farm.output_keys("spot").await,
        vec![format!("outputs/spot/in/long.mp4/{id}/out.mp4")]
    );

    let interruptions = farm.cell_events("interruption").await;
    assert_eq!(interruptions.len(), 1, "{interruptions:?}");
    assert_eq!(interruptions[0].cell_id, first.1);
    let launches = farm.cell_events("launch").await;
    assert_eq!(launches.len(), 1, "one replacement: {launches:?}");
    eprintln!("notice -> cell gone: {left_after:?} (reclaim at 15 s, margin 5 s)");
}

/// Property: a job whose estimate fits before the reclaim (less the margin) is not cut
/// short: it succeeds on the noticed cell, which takes no new job and then exits.
#[tokio::test(flavor = "multi_thread")]
async fn a_job_that_can_finish_before_the_reclaim_finishes_there() {
    let mut farm = Farm::new("spotfits", SPOT).await;
    farm.put_file("in/short.mp4", &farm.clip("short", 6.0, "testsrc"));
    let imds = MetadataServer::start(&[("instance-id", "i-0fits")]);
    spot_cell(&mut farm, &imds).await;
    let id = farm.submit_id("in/short.mp4", "spot");
    wait_probed(&farm, &id).await;

    imds.set(
        "spot/instance-action",
        &format!(r#"{{"action": "terminate", "time": "{}"}}"#, in_secs(60)),
    );
    farm.wait_state(&id, "succeeded", Duration::from_secs(60))
        .await;
    let attempts = attempt_cells(&farm, &id).await;
    assert_eq!(attempts.len(), 1, "{attempts:?}");
    assert_eq!(attempts[0].0, "succeeded");
    farm.wait_exit(0, Duration::from_secs(30), "the noticed cell to leave")
        .await;
    assert_eq!(farm.cell_events("interruption").await.len(), 1);
}

/// Property: on a rebalance recommendation the cell finishes the job it runs, takes no
/// new one, records the recommendation and leaves; a job submitted meanwhile is done by
/// the replacement its last tick launches.
#[tokio::test(flavor = "multi_thread")]
async fn a_rebalance_recommendation_finishes_running_work_and_hands_over_the_rest() {
    let mut farm = Farm::new("rebalance", SPOT).await;
    let clip = farm.clip("short", 4.0, "testsrc");
    farm.put_file("in/first.mp4", &clip);
    farm.put_file("in/second.mp4", &farm.clip("second", 2.0, "testsrc"));
    let imds = MetadataServer::start(&[("instance-id", "i-0rebalance")]);
    spot_cell(&mut farm, &imds).await;
    let first = farm.submit_id("in/first.mp4", "spot");
    wait_probed(&farm, &first).await;

    imds.set(
        "events/recommendations/rebalance",
        &format!(r#"{{"noticeTime": "{}"}}"#, in_secs(0)),
    );
    farm.wait_until(Duration::from_secs(10), "a rebalance event", || async {
        !farm.cell_events("rebalance").await.is_empty()
    })
    .await;
    let second = farm.submit_id("in/second.mp4", "spot");
    farm.wait_state(&first, "succeeded", Duration::from_secs(60))
        .await;
    farm.wait_state(&second, "succeeded", Duration::from_secs(120))
        .await;

    let a = attempt_cells(&farm, &first).await;
    let b = attempt_cells(&farm, &second).await;
    assert_eq!(a.len(), 1, "the running job was not cut: {a:?}");
    assert_eq!(b.len(), 1, "{b:?}");
    assert_ne!(a[0].1, b[0].1, "the recommended cell took no new job");
    assert_eq!(farm.cell_events("rebalance").await[0].cell_id, a[0].1);
    farm.wait_exit(0, Duration::from_secs(30), "the recommended cell to leave")
        .await;
}
