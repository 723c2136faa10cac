//! Progress and jobs by hand: what a running job's cell says of it in its beat, what
//! `cellfarm status` shows, and `cellfarm cancel` / `cellfarm retry`.

mod common;

use std::time::Duration;

use cellfarm::locks::{Coordinator, RunningJob};
use common::http::get;
use common::{edit, prom, Farm, REALTIME};

/// The job `id` as the farm's live cells report it in their beats, if one runs it.
async fn beat_of(locks: &Coordinator, id: &str) -> Option<RunningJob> {
    let beats = locks.alive().await.expect("read beats");
    beats
        .into_iter()
        .flat_map(|b| b.jobs)
        .find(|j| j.job_id == id)
}

async fn coordinator(farm: &Farm) -> Coordinator {
    Coordinator::connect(&farm.config.redis.url, &farm.name)
        .await
        .expect("Redis")
}

/// Property: while a job runs, its cell's beat carries its progress, which only rises,
/// passes through values between 0 and 1 and gets past half way (a realtime encode of
/// 6 s, beats every second); `cellfarm status` shows the job with its percentage and
/// ETA, and its pool's work left with an ETA; the cell's own `/metrics`
/// (`cell.metrics_listen`) parses and shows the encode; the cell's first beat recorded
/// one `alive` event, which starts its machine's bill. Breaks if FFmpeg's `-progress` is not read
/// as it arrives (the fraction would jump from 0 to gone), or not carried in the beat.
#[tokio::test(flavor = "multi_thread")]
async fn progress_rises_in_the_heartbeat_and_status_shows_it() {
    let mut farm = Farm::new("progress", REALTIME).await;
    farm.put_file("inbox/clip.mp4", &farm.clip("clip", 6.0, "testsrc"));
    let id = farm.submit_id("inbox/clip.mp4", "realtime");
    let locks = coordinator(&farm).await;
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port();
    let metrics_at = format!("http://127.0.0.1:{port}");
    farm.edit_config(|doc| edit::add(doc, "cell.metrics_listen", format!("127.0.0.1:{port}")));
    farm.start_cell(&[]);
    let mut seen: Vec<f64> = Vec::new();
    let mut status_text = None;
    let mut metrics_text = None;
    let deadline = std::time::Instant::now() + Duration::from_secs(90);
    while farm.job(&id).await.is_none_or(|j| j.0 != "succeeded") {
        assert!(
            std::time::Instant::now() < deadline,
            "the job did not finish: {:?}\n{}",
            farm.job(&id).await,
            farm.logs()
        );
        if let Some(job) = beat_of(&locks, &id).await {
            if seen.last() != Some(&job.fraction) {
                seen.push(job.fraction);
            }
            if job.fraction > 0.0 && job.fraction < 1.0 && status_text.is_none() {
                let out = farm.run(&["status"]);
                status_text = Some(String::from_utf8_lossy(&out.stdout).to_string());
                metrics_text = Some(get(&metrics_at, "/metrics", None));
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        seen.windows(2).all(|w| w[0] <= w[1]),
        "progress never falls: {seen:?}"
    );
    let between = seen.iter().filter(|f| **f > 0.0 && **f < 1.0).count();
    assert!(between >= 2, "progress moves in steps: {seen:?}");
    assert!(
        seen.iter().all(|f| (0.0..=1.0).contains(f)),
        "within 0 and 1: {seen:?}"
    );
    assert!(
        seen.last().is_some_and(|f| *f >= 0.5),
        "past half way before the end: {seen:?}"
    );
    farm.wait_until(
        Duration::from_secs(10),
        "the cell's alive event",
        || async { farm.cell_events("alive").await.len() == 1 },
    )
    .await;
    let (code, metrics) = metrics_text.expect("the cell was scraped while the job ran");
    assert_eq!(code, 200, "{metrics}");
    let samples = prom::parse(&metrics).unwrap_or_else(|e| panic!("{e}\n{metrics}"));
    let job_label = format!("job=\"{id}\"");
    assert!(
        samples
            .iter()
            .any(|(s, _)| s.starts_with("cellfarm_encode_speed_ratio{") && s.contains(&job_label)),
        "the cell's /metrics shows the running encode:\n{metrics}"
    );
    let text = status_text.expect("status ran while the job did");
    let line = text
        .lines()
        .find(|l| l.contains(&id))
        .unwrap_or_else(|| panic!("status lists the running job:\n{text}"));
    assert!(line.contains('%') && line.contains("ETA"), "{line}");
    let pool = text
        .lines()
        .find(|l| l.contains("default") && l.contains("work-s/s"))
        .unwrap_or_else(|| panic!("status shows the pool's work left:\n{text}"));
    assert!(pool.contains("ETA"), "{pool}");
}

/// Property: `cellfarm cancel` stops a running job within a few heartbeats: its cell
/// drops it, no output object appears, its row and attempt say `cancelled`, and the
/// cell goes on to run the next job; `cellfarm retry` then queues the cancelled job
/// again and it succeeds. Breaks if the cell does not look for cancelled jobs, or if a
/// cancelled attempt can still publish or commit.
#[tokio::test(flavor = "multi_thread")]
async fn cancel_stops_a_running_job_and_the_cell_goes_on() {
    let mut farm = Farm::new("cancel", REALTIME).await;
    farm.put_file("inbox/long.mp4", &farm.clip("long", 10.0, "testsrc"));
    farm.put_file("inbox/short.mp4", &farm.clip("short", 2.0, "testsrc"));
    let long = farm.submit_id("inbox/long.mp4", "realtime");
    let locks = coordinator(&farm).await;
    farm.start_cell(&[]);
    farm.wait_until(
        Duration::from_secs(60),
        "the long job to report progress",
        || async {
            tokio::time::sleep(Duration::from_millis(100)).await;
            beat_of(&locks, &long)
                .await
                .is_some_and(|j| j.fraction > 0.0)
        },
    )
    .await;

    let out = farm.run(&["cancel", &long]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (state, _, error) = farm.job(&long).await.expect("row");
    assert_eq!(state, "cancelled", "the row says so at once");
    assert_eq!(error.as_deref(), Some("cancelled by hand"));
    farm.wait_until(
        Duration::from_secs(20),
        "the cell to drop the job",
        || async {
            tokio::time::sleep(Duration::from_millis(100)).await;
            beat_of(&locks, &long).await.is_none()
        },
    )
    .await;

    let short = farm.submit_id("inbox/short.mp4", "realtime");
    farm.wait_state(&short, "succeeded", Duration::from_secs(60))
        .await;
    assert_eq!(farm.job(&long).await.expect("row").0, "cancelled");
    assert_eq!(farm.attempts(&long).await, vec!["cancelled"]);
    let keys = farm.output_keys("realtime").await;
    assert!(
        keys.iter().all(|k| !k.contains(&long)),
        "nothing of the cancelled job was published: {keys:?}"
    );
    assert!(!keys.is_empty(), "the next job published its outputs");

    let again = farm.run(&["cancel", &long]);
    assert!(
        !again.status.success(),
        "a finished job cannot be cancelled"
    );
    let retried = farm.run(&["retry", &short]);
    assert!(!retried.status.success(), "a succeeded job is not retried");
    let retried = farm.run(&["retry", &long]);
    assert!(
        retried.status.success(),
        "{}",
        String::from_utf8_lossy(&retried.stderr)
    );
    farm.wait_state(&long, "succeeded", Duration::from_secs(90))
        .await;
    assert_eq!(farm.attempts(&long).await, vec!["cancelled", "succeeded"]);
}
