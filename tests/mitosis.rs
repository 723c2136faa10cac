//! Mitosis and death on the `local` cloud: siblings are real `cellfarm cell` processes.

mod common;

use std::cell::Cell;
use std::time::{Duration, Instant};

use cellfarm::cloud::{Cloud, LocalCloud};
use cellfarm::locks::{Beat, Coordinator};
use cellfarm::mitosis::{self, TickOutcome};
use common::{edit, Farm, Lazy};

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

/// Property: with no cell running, submitting 40 jobs (10 a cell, ceiling 4) grows the
/// farm to 4 cells and never above; every job succeeds at its first and only attempt (a
/// cell dying under a job would show as a second one); every cell is gone within the
/// idle grace + 10 s of the last job, each recording its death.
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

    // Sampled at every poll of both waits.
    let peak = Cell::new(0);
    let sample = || peak.set(peak.get().max(farm.siblings().len()));
    let done = Cell::new(0);
    let what = Lazy(|| format!("40 jobs to succeed ({} did)", done.get()));
    farm.wait_until(Duration::from_secs(180), what, || async {
        sample();
        let (succeeded, unfinished): (i64, i64) = sqlx::query_as(
            "SELECT count(*) FILTER (WHERE state = 'succeeded'),
                    count(*) FILTER (WHERE state IN ('queued', 'running'))
             FROM jobs",
        )
        .fetch_one(farm.ledger.pool())
        .await
        .expect("count");
        done.set(succeeded);
        succeeded == 40 && unfinished == 0
    })
    .await;
    let last_job = Instant::now();
    farm.wait_until(
        Duration::from_secs(3 + 10),
        "every cell to die within the idle grace (3 s) + 10 s of the last job",
        || async {
            sample();
            farm.siblings().is_empty()
        },
    )
    .await;
    let gone = last_job.elapsed();

    assert_eq!(
        peak.get(),
        4,
        "the farm grows to its ceiling and never above\n{}",
        sibling_logs(&farm)
    );
    let attempts = farm.attempts_by_job().await;
    assert_eq!(attempts.len(), 40, "{attempts:?}");
    for (id, outcomes) in &attempts {
        assert_eq!(
            outcomes,
            &["succeeded"],
            "job {id}: one attempt, which succeeded\n{}",
            sibling_logs(&farm)
        );
    }
    assert_eq!(farm.output_keys("burst").await.len(), 40);
    let launches = farm.cell_events("launch").await;
    assert_eq!(
        farm.cells_launched().await,
        4,
        "launched exactly the cells needed: {launches:?}"
    );
    let deaths = farm.cell_events("death").await;
    assert_eq!(deaths.len(), 4, "every cell recorded its death: {deaths:?}");
    let reaction = launches.first().expect("a launch").at - submitted;
    eprintln!(
        "MEASURED reaction (submit start -> first launch) = {} ms; last job -> last cell gone = {:.1} s; peak cells = {} (ceiling 4)",
        reaction.num_milliseconds(),
        gone.as_secs_f64(),
        peak.get()
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
    let mut doc = farm.config_doc();
    edit::swap(&mut doc, "cloud.kind", "local", "none");
    let quiet = farm.dir.path().join("no-cloud.toml");
    std::fs::write(&quiet, edit::to_text(&doc)).expect("write");
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
    assert_eq!(farm.cells_launched().await, 4);
    let running = cloud
        .count("burst")
        .await
        .expect("count")
        .expect("the local cloud counts its cells");
    assert!(running <= 4, "{running} cells of a ceiling of 4");
    // Let the launched cells finish the work and die, so the test leaves nothing behind.
    farm.wait_until(
        Duration::from_secs(120),
        "the cells to finish and die",
        || async { farm.siblings().is_empty() },
    )
    .await;
}

/// Property: a cell started on an empty queue terminates itself after its idle grace
/// period, recording its death, so no instance is left running for nothing.
#[tokio::test(flavor = "multi_thread")]
async fn an_idle_cell_dies_after_its_grace_period() {
    let mut farm = Farm::new("idle", BURST).await;
    let started = Instant::now();
    farm.start_cell(&["--pool", "burst"]);
    // Until it has exec'd, the child still shows the test's command line.
    farm.wait_until(Duration::from_secs(10), "the cell to start", || async {
        !farm.siblings().is_empty()
    })
    .await;
    farm.wait_until(Duration::from_secs(30), "the idle cell to die", || async {
        farm.siblings().is_empty()
    })
    .await;
    assert!(
        started.elapsed() >= Duration::from_secs(3),
        "not before the grace period"
    );
    let deaths = farm.cell_events("death").await;
    assert_eq!(deaths.len(), 1, "{deaths:?}");
}

/// How many of `calls`, run at once, said yes.
async fn yeses<F>(calls: impl Iterator<Item = F>) -> usize
where
    F: std::future::Future<Output = Result<bool, cellfarm::locks::LocksError>>,
{
    let answers = futures_util::future::join_all(calls).await;
    answers
        .into_iter()
        .filter(|a| *a.as_ref().expect("redis"))
        .count()
}

/// Property, on the real Redis: a cell counts as serving its pools from its beat until
/// it beats as draining or is removed, so the trigger's cheap look sees exactly the
/// cells whose last look before death is still to come.
#[tokio::test(flavor = "multi_thread")]
async fn a_cell_serves_its_pools_from_its_beat_until_it_drains() {
    let redis = common::env("CELLFARM_TEST_REDIS", "redis://127.0.0.1:6379");
    let farm = format!("serving-{}", std::process::id());
    let locks = Coordinator::connect(&redis, &farm).await.expect("redis");
    let mut beat = Beat {
        cell_id: "a".into(),
        host: "h".into(),
        pid: 1,
        pools: vec!["p".into(), "q".into()],
        slots: 1,
        running: 0,
        started_at: 0,
        draining: false,
        config_version: None,
        machine: None,
        leaving: false,
        jobs: Vec::new(),
    };
    let serving = |pool| locks.serving(pool);
    assert_eq!(serving("p").await.expect("count"), 0);
    locks.beat(&beat, 30).await.expect("beat");
    assert_eq!(serving("p").await.expect("count"), 1);
    assert_eq!(serving("q").await.expect("count"), 1);
    beat.draining = true;
    locks.beat(&beat, 30).await.expect("beat");
    assert_eq!(serving("p").await.expect("count"), 0, "draining");
    beat.draining = false;
    locks.beat(&beat, 30).await.expect("beat");
    locks.remove("a").await.expect("remove");
    assert_eq!(serving("q").await.expect("count"), 0, "removed");
    beat.cell_id = "b".into();
    locks.beat(&beat, 1).await.expect("beat");
    tokio::time::sleep(Duration::from_millis(2100)).await;
    assert_eq!(
        serving("p").await.expect("count"),
        0,
        "a silent cell expires"
    );
}

/// Property, on the real Redis: of a herd beating at once, exactly one claims a pool's
/// round; an offer of three deaths lets exactly three of ten idle cells go, however
/// they race; a cell of two pools takes a death from both or from neither.
#[tokio::test(flavor = "multi_thread")]
async fn one_round_one_decider_and_an_offer_bounds_the_deaths() {
    let redis = common::env("CELLFARM_TEST_REDIS", "redis://127.0.0.1:6379");
    let farm = format!("rounds-{}", std::process::id());
    let locks = Coordinator::connect(&redis, &farm).await.expect("redis");

    let won = yeses((0..20).map(|_| locks.claim_round("p", 60_000))).await;
    assert_eq!(won, 1, "one decider a round");
    assert!(
        locks.claim_round("q", 60_000).await.expect("claim"),
        "rounds are per pool"
    );

    let p = ["p".to_string()];
    locks.offer_deaths("p", 3, 60_000).await.expect("offer");
    let taken = yeses((0..10).map(|_| locks.take_deaths(&p))).await;
    assert_eq!(taken, 3, "the offer bounds the deaths");

    let both = ["p".to_string(), "q".to_string()];
    locks.offer_deaths("p", 1, 60_000).await.expect("offer");
    assert!(
        !locks.take_deaths(&both).await.expect("take"),
        "q offers none"
    );
    assert!(
        locks.take_deaths(&p).await.expect("take"),
        "p's death was not spent by the refused take"
    );
    locks.offer_deaths("p", 1, 60_000).await.expect("offer");
    locks.offer_deaths("q", 1, 60_000).await.expect("offer");
    assert!(locks.take_deaths(&both).await.expect("take"));
    locks.offer_deaths("p", 5, 60_000).await.expect("offer");
    locks.offer_deaths("p", 0, 60_000).await.expect("withdraw");
    assert!(!locks.take_deaths(&p).await.expect("take"), "withdrawn");
}
