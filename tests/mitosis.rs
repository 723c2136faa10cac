//! Mitosis and death on the `local` cloud: siblings are real `cellfarm cell` processes.

mod common;

use std::time::{Duration, Instant};

use cellfarm::cloud::{Cloud, LocalCloud};
use cellfarm::locks::Coordinator;
use cellfarm::mitosis::{self, TickOutcome};
use common::Farm;

/// A pool that scales: 10 jobs a cell, at most 4 cells, 2 launched a tick, quick deaths.
/// Its pipeline encodes in real time (`-re`), so 40 one-second jobs keep a farm busy.
const BURST: &str = r#"
[cloud]
kind = "local"

[pools.burst]
jobs_per_cell = 10
ceiling = 4
step = 2
cooldown_secs = 1
idle_grace_secs = 3
launch_timeout_secs = 60

[pipelines.burst]
pool = "burst"
output = "s3://cellfarm-demo/outputs/burst/"
steps = [{ args = ["-re", "-i", "{input}", "-c:v", "libx264", "-preset", "ultrafast", "-an", "{out}/out.mp4"] }]
outputs = [{ path = "out.mp4", video_codec = "h264" }]
"#;

/// The logs of the cells the local cloud launched.
fn sibling_logs(farm: &Farm) -> String {
    let dir = farm.dir.path().join("scratch/cells");
    let mut all = String::new();
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let text = std::fs::read_to_string(e.path()).unwrap_or_default();
        all.push_str(&format!("--- {}\n{text}", e.path().display()));
    }
    all
}

async fn launches(farm: &Farm) -> (i64, Option<chrono::DateTime<chrono::Utc>>) {
    sqlx::query_as("SELECT coalesce(sum(cells), 0), min(at) FROM cell_events WHERE kind = 'launch'")
        .fetch_one(farm.ledger.pool())
        .await
        .expect("events")
}

/// Property: with no cell running, submitting 40 jobs (10 a cell, ceiling 4) grows the
/// farm to 4 cells and never above; every job succeeds exactly once; every cell is gone
/// within the idle grace + 10 s of the last job.
#[tokio::test(flavor = "multi_thread")]
async fn a_burst_grows_the_farm_to_its_ceiling_and_it_dies_when_done() {
    let farm = Farm::new("mitosis", BURST).await;
    let clip = farm.clip("clip", 1.0, "testsrc");
    for i in 0..40 {
        farm.put_file(&format!("burst/clip{i:02}.mp4"), &clip);
    }
    assert_eq!(farm.siblings().len(), 0);
    let submitted = chrono::Utc::now();
    let url = format!("s3://{}/burst/", farm.bucket);
    let out = farm.run(&["submit", "--prefix", &url, "--pipeline", "burst"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let mut peak = 0;
    let deadline = Instant::now() + Duration::from_secs(180);
    let last_job = loop {
        peak = peak.max(farm.siblings().len());
        let (done, unfinished): (i64, i64) = sqlx::query_as(
            "SELECT count(*) FILTER (WHERE state = 'succeeded'),
                    count(*) FILTER (WHERE state IN ('queued', 'running'))
             FROM jobs",
        )
        .fetch_one(farm.ledger.pool())
        .await
        .expect("count");
        if done == 40 && unfinished == 0 {
            break Instant::now();
        }
        assert!(
            Instant::now() < deadline,
            "{done} of 40 done\n{}",
            farm.logs()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    while !farm.siblings().is_empty() {
        peak = peak.max(farm.siblings().len());
        assert!(
            last_job.elapsed() < Duration::from_secs(3 + 10),
            "cells outlived the grace period"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let gone = last_job.elapsed();

    assert_eq!(
        peak,
        4,
        "the farm grows to its ceiling and never above\n{}",
        sibling_logs(&farm)
    );
    let once: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM (SELECT job_id FROM job_attempts WHERE outcome = 'succeeded'
                               GROUP BY job_id HAVING count(*) = 1) j",
    )
    .fetch_one(farm.ledger.pool())
    .await
    .expect("attempts");
    assert_eq!(once, 40, "every job succeeded exactly once");
    assert_eq!(farm.output_keys("burst").await.len(), 40);
    let (launched, first) = launches(&farm).await;
    assert_eq!(launched, 4, "launched exactly the cells needed");
    let deaths: i64 = sqlx::query_scalar("SELECT count(*) FROM cell_events WHERE kind = 'death'")
        .fetch_one(farm.ledger.pool())
        .await
        .expect("deaths");
    assert_eq!(deaths, 4, "every cell recorded its death");
    let reaction = first.expect("a launch") - submitted;
    eprintln!(
        "MEASURED reaction (submit start -> first launch) = {} ms; last job -> last cell gone = {:.1} s; peak cells = {peak} (ceiling 4)",
        reaction.num_milliseconds(),
        gone.as_secs_f64()
    );
}

/// Property: eight cells ticking at once on the same backlog launch exactly the missing
/// cells, once: the pool's Redis lock and the pending launches make the herd one decider.
#[tokio::test(flavor = "multi_thread")]
async fn a_herd_of_ticks_launches_the_missing_cells_once() {
    let farm = Farm::new("herd", BURST).await;
    let clip = farm.clip("clip", 1.0, "testsrc");
    for i in 0..40 {
        farm.put_file(&format!("burst/clip{i:02}.mp4"), &clip);
    }
    let url = format!("s3://{}/burst/", farm.bucket);
    // Enqueue without a cloud: this submit must not launch anything itself.
    let text = std::fs::read_to_string(&farm.config_path)
        .expect("config")
        .replace("kind = \"local\"", "kind = \"none\"");
    let quiet = farm.dir.path().join("no-cloud.toml");
    std::fs::write(&quiet, text).expect("write");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_cellfarm"))
        .arg("--config")
        .arg(&quiet)
        .args(["submit", "--prefix", &url, "--pipeline", "burst"])
        .output()
        .expect("submit");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let locks = Coordinator::connect(&farm.config.redis.url, &farm.name)
        .await
        .expect("redis");
    let cloud = LocalCloud::new(
        env!("CARGO_BIN_EXE_cellfarm").into(),
        farm.config_path.display().to_string(),
        farm.dir.path().join("cells"),
    );
    let mut policy_step = farm.config.clone();
    policy_step.pools.get_mut("burst").expect("pool").step = 4;
    let ticks = (0..8).map(|_| async {
        let live = mitosis::LiveFarm::new(&farm.ledger, &locks, &farm.publisher, &farm.names);
        let ticker = mitosis::Ticker {
            config: &policy_step,
            farm: &live,
            cloud: &cloud,
            who: "herd-test",
        };
        ticker.tick_patiently("burst", None).await
    });
    let outcomes = futures_util::future::join_all(ticks).await;
    let launched: u32 = outcomes
        .iter()
        .map(|o| match o.as_ref().expect("tick") {
            TickOutcome::Launched(n) => *n,
            _ => 0,
        })
        .sum();
    assert_eq!(launched, 4, "{outcomes:?}");
    assert_eq!(launches(&farm).await.0, 4);
    assert!(cloud.count("burst").await.expect("count").unwrap_or(0) <= 4);
    // Let the launched cells finish the work and die, so the test leaves nothing behind.
    let deadline = Instant::now() + Duration::from_secs(120);
    while !farm.siblings().is_empty() {
        assert!(
            Instant::now() < deadline,
            "cells did not finish\n{}",
            farm.logs()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Property: a cell started on an empty queue terminates itself after its idle grace
/// period, recording its death, so no instance is left running for nothing.
#[tokio::test(flavor = "multi_thread")]
async fn an_idle_cell_dies_after_its_grace_period() {
    let mut farm = Farm::new("idle", BURST).await;
    let started = Instant::now();
    farm.start_cell(&["--pool", "burst"]);
    // Until it has exec'd, the child still shows the test's command line.
    while farm.siblings().is_empty() {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "no cell started"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    while !farm.siblings().is_empty() {
        assert!(
            Instant::now() < deadline,
            "an idle cell lived on\n{}",
            farm.logs()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        started.elapsed() >= Duration::from_secs(3),
        "not before the grace period"
    );
    let deaths: i64 = sqlx::query_scalar("SELECT count(*) FROM cell_events WHERE kind = 'death'")
        .fetch_one(farm.ledger.pool())
        .await
        .expect("deaths");
    assert_eq!(deaths, 1);
}
