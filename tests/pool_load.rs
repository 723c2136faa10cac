//! The ledger's pool summary (migrations 0008 and 0011) on the real PostgreSQL: what
//! the mitosis tick and `cellfarm status` read in O(1) must be what a scan of the jobs
//! would say, after any mix of the ledger's own transitions.

mod common;

use std::time::Duration;

use cellfarm::config::Postgres;
use cellfarm::job::{JobMessage, SourceObject};
use cellfarm::ledger::{AttemptId, AttemptOutcome, Claim, JobState, Ledger, PipelineLoad};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use sqlx::Row;

const POOL: &str = "p";

async fn ledger(schema: &str) -> Ledger {
    let url = common::env(
        "CELLFARM_TEST_PG",
        "postgres://postgres@127.0.0.1:5432/test",
    );
    let cfg = Postgres {
        url,
        schema: schema.into(),
    };
    let ledger = Ledger::connect(&cfg).await.expect("postgres");
    sqlx::query(&format!("DROP SCHEMA IF EXISTS \"{schema}\" CASCADE"))
        .execute(ledger.pool())
        .await
        .expect("drop the test schema");
    ledger.migrate().await.expect("migrate");
    ledger
}

/// A job of one of two pipelines; a third of them carry an estimate of their work.
fn job(i: usize) -> JobMessage {
    JobMessage {
        v: 1,
        job_id: format!("job-{i}"),
        pipeline: ["a", "b"][i % 2].into(),
        source: SourceObject {
            bucket: "in".into(),
            key: format!("k{i}.mp4"),
            etag: "e".into(),
        },
        output: format!("s3://out/{i}/"),
        output_expanded: true,
        priority: false,
        work_secs: (i % 3 == 0).then_some(0.1 + i as f64 / 7.0),
        attempt: 0,
        part: None,
    }
}

/// The oracle: the scan the summary replaces.
async fn scanned(ledger: &Ledger) -> Vec<PipelineLoad> {
    let rows = sqlx::query(
        "SELECT pipeline,
                count(*) FILTER (WHERE state = 'running') AS running,
                count(*) FILTER (WHERE state = 'queued') AS queued,
                coalesce(sum(round(((message->>'work_secs')::float8) * 1000)), 0)::float8 / 1000
                    AS estimated,
                coalesce(sum(round(((probe->>'duration')::float8) * 1000))
                         FILTER (WHERE message->>'work_secs' IS NULL), 0)::float8 / 1000 AS probed,
                count(*) FILTER (WHERE message->>'work_secs' IS NULL
                                 AND probe->>'duration' IS NULL) AS unknown
         FROM jobs WHERE pool = $1 AND state IN ('queued', 'running')
         GROUP BY pipeline ORDER BY pipeline",
    )
    .bind(POOL)
    .fetch_all(ledger.pool())
    .await
    .expect("scan");
    rows.iter()
        .map(|row| PipelineLoad {
            pipeline: row.get("pipeline"),
            running: row.get::<i64, _>("running") as u64,
            queued: row.get::<i64, _>("queued") as u64,
            estimated_secs: row.get("estimated"),
            probed_secs: row.get("probed"),
            unknown: row.get::<i64, _>("unknown") as u64,
        })
        .collect()
}

/// One random step of a job's life, through the ledger's own calls.
async fn step(ledger: &Ledger, rng: &mut StdRng, jobs: usize, attempts: &mut [i32]) {
    let i = rng.gen_range(0..jobs);
    let j = job(i);
    let me = |attempt| AttemptId {
        job_id: j.job_id.clone(),
        attempt,
        cell_id: "cell".into(),
    };
    let lease = Duration::from_secs(rng.gen_range(0..2) * 60);
    match rng.gen_range(0..10) {
        0 if rng.gen_bool(0.5) => {
            ledger.insert(&j, POOL).await.expect("insert");
        }
        0 => {
            // A batch as `submit` writes it, one new job with its ranged probe.
            let batch = [j.clone(), job((i + 1) % jobs)];
            let probe = serde_json::json!({ "duration": rng.gen_range(1.0..90.0) });
            let probes = [Some(probe), None];
            ledger
                .insert_many(&batch, &probes, POOL)
                .await
                .expect("insert many");
        }
        1 | 2 => {
            if let Claim::Run { attempt, .. } = ledger
                .claim(&j, POOL, "cell", lease, 100)
                .await
                .expect("claim")
            {
                attempts[i] = attempt;
            }
        }
        3 => {
            let probe = serde_json::json!({ "duration": rng.gen_range(1.0..90.0) });
            ledger.record_probe(&j.job_id, &probe).await.expect("probe");
        }
        4 => {
            ledger
                .retry(&me(attempts[i]), "again")
                .await
                .expect("retry");
        }
        5 => {
            let outcome = AttemptOutcome::HandedBack;
            (ledger.hand_back(&me(attempts[i]), outcome, "stop").await).expect("hand back");
        }
        6 => {
            let state = [JobState::Failed, JobState::Dead][i % 2];
            (ledger.fail(&me(attempts[i]), state, "bad").await).expect("fail");
        }
        7 => {
            ledger.reset(&j.job_id).await.expect("reset");
            (ledger.forget_many(std::slice::from_ref(&j.job_id)).await).expect("forget");
        }
        8 => {
            // By hand: a cancel, or a retry of an ended job.
            if rng.gen_bool(0.5) {
                ledger.cancel(&j.job_id).await.expect("cancel");
            } else {
                // A job in a state that cannot be retried is left as it is.
                let _refused = ledger.reopen(&j.job_id).await.expect("reopen");
            }
        }
        _ => {
            ledger.requeue_expired(&j.job_id).await.expect("requeue");
            ledger.bury_queued(&j.job_id, "lost").await.expect("bury");
        }
    }
}

/// The oracle of `status`: jobs by pool and state, counted.
async fn counted(ledger: &Ledger) -> Vec<(String, String, i64)> {
    let rows = sqlx::query(
        "SELECT pool, state, count(*) AS jobs FROM jobs GROUP BY pool, state ORDER BY pool, state",
    )
    .fetch_all(ledger.pool())
    .await
    .expect("count");
    rows.iter()
        .map(|r| (r.get("pool"), r.get("state"), r.get("jobs")))
        .collect()
}

/// Property: after every one of 600 random transitions of 40 jobs (inserts one at a
/// time and in batches, claims with live and lapsed leases, probes, retries, hand-backs,
/// failures, resets, cancels and retries by hand, forgotten and buried jobs), the summary the tick reads equals a scan
/// of the jobs, and so do the counts by state that `status` reads: no job's share is lost
/// or counted twice, and an emptied pool weighs exactly nothing.
#[tokio::test]
async fn the_pool_load_summary_always_equals_a_scan_of_the_jobs() {
    let ledger = ledger("pool_load_summary").await;
    let mut rng = StdRng::seed_from_u64(10);
    let jobs = 40;
    let mut attempts = vec![0; jobs];
    for n in 0..600 {
        step(&ledger, &mut rng, jobs, &mut attempts).await;
        let summary = ledger.pool_load(POOL).await.expect("summary");
        assert_eq!(summary, scanned(&ledger).await, "after step {n}");
        let states: Vec<_> = (ledger.state_counts().await.expect("states"))
            .into_iter()
            .map(|c| (c.pool, c.state.to_string(), c.jobs))
            .collect();
        assert_eq!(states, counted(&ledger).await, "states after step {n}");
    }
    for i in 0..jobs {
        ledger.bury(&job(i).job_id, "end").await.expect("bury");
    }
    assert_eq!(ledger.pool_load(POOL).await.expect("summary"), []);
    let crumbs: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM pool_load
         WHERE running <> 0 OR queued <> 0 OR estimated_ms <> 0 OR probed_ms <> 0 OR unknown <> 0",
    )
    .fetch_one(ledger.pool())
    .await
    .expect("crumbs");
    assert_eq!(crumbs, 0, "every share taken back exactly");
}
