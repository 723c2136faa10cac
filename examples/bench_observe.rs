//! Times the ledger's side of one mitosis observation of a pool ([`Ledger::pool_load`],
//! read from the `pool_load` summary) with a small and a large backlog, beside the scan
//! of the jobs it replaced, and what keeping the summary costs a bulk insert. Run by
//! `scripts/bench-observe.sh`.
//!
//!   bench_observe SMALL LARGE
//!
//! Works in the schema `bench_observe` of `CELLFARM_TEST_PG`, which it drops first.

use std::time::{Duration, Instant};

use cellfarm::config::Postgres;
use cellfarm::ledger::Ledger;

const SCHEMA: &str = "bench_observe";
/// Reads timed per backlog; the median is printed.
const READS: usize = 21;

/// The scan `pool_load` did before the summary: every queued and running row's JSON.
const SCAN: &str = "SELECT pipeline,
        count(*) FILTER (WHERE state = 'running') AS running,
        count(*) FILTER (WHERE state = 'queued') AS queued,
        coalesce(sum((message->>'work_secs')::float8), 0) AS estimated,
        coalesce(sum((probe->>'duration')::float8)
                 FILTER (WHERE message->>'work_secs' IS NULL), 0) AS probed,
        count(*) FILTER (WHERE message->>'work_secs' IS NULL
                         AND probe->>'duration' IS NULL) AS unknown
     FROM jobs WHERE pool = 'bench' AND state IN ('queued', 'running')
     GROUP BY pipeline";

/// Queues `n` more jobs of pool `bench` in one statement, numbered from `from`.
const INSERT: &str = "INSERT INTO jobs (id, pipeline, pool, source_bucket, source_key,
        source_etag, message)
     SELECT 'job-' || i, 'p' || (i % 4), 'bench', 'in', 'k' || i, 'e',
            jsonb_build_object('job_id', 'job-' || i, 'work_secs', (i % 600) + 0.5)
     FROM generate_series($1::int8, $1::int8 + $2::int8 - 1) AS i";

fn median(mut times: Vec<Duration>) -> f64 {
    times.sort();
    times[times.len() / 2].as_secs_f64() * 1e3
}

async fn insert(ledger: &Ledger, from: i64, n: i64) -> anyhow::Result<f64> {
    let start = Instant::now();
    sqlx::query(INSERT)
        .bind(from)
        .bind(n)
        .execute(ledger.pool())
        .await?;
    Ok(start.elapsed().as_secs_f64())
}

/// Median milliseconds of the summary read and of the scan, with the backlog as it is.
async fn reads(ledger: &Ledger) -> anyhow::Result<(f64, f64)> {
    let (mut summary, mut scan) = (Vec::new(), Vec::new());
    for _ in 0..READS {
        let start = Instant::now();
        ledger.pool_load("bench").await?;
        summary.push(start.elapsed());
        let start = Instant::now();
        sqlx::query(SCAN).fetch_all(ledger.pool()).await?;
        scan.push(start.elapsed());
    }
    Ok((median(summary), median(scan)))
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let args: Vec<i64> = std::env::args()
        .skip(1)
        .map(|a| a.parse())
        .collect::<Result<_, _>>()?;
    let [small, large] = args[..] else {
        anyhow::bail!("usage: bench_observe SMALL LARGE");
    };
    let url = std::env::var("CELLFARM_TEST_PG")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into());
    let ledger = Ledger::connect(&Postgres {
        url,
        schema: SCHEMA.into(),
    })
    .await?;
    sqlx::query(&format!("DROP SCHEMA IF EXISTS {SCHEMA} CASCADE"))
        .execute(ledger.pool())
        .await?;
    ledger.migrate().await?;

    // What the summary costs an insert: the same rows with its triggers off, then on.
    sqlx::query("ALTER TABLE jobs DISABLE TRIGGER USER")
        .execute(ledger.pool())
        .await?;
    let bare = insert(&ledger, 0, small).await?;
    sqlx::query("TRUNCATE jobs CASCADE")
        .execute(ledger.pool())
        .await?;
    sqlx::query("ALTER TABLE jobs ENABLE TRIGGER USER")
        .execute(ledger.pool())
        .await?;
    let kept = insert(&ledger, 0, small).await?;
    println!(
        "insert {small} jobs: {:.1} µs a job without the summary, {:.1} µs with it",
        bare * 1e6 / small as f64,
        kept * 1e6 / small as f64
    );

    let (summary, scan) = reads(&ledger).await?;
    println!("{small:>9} queued: summary {summary:.2} ms, scan {scan:.2} ms");
    let took = insert(&ledger, small, large - small).await?;
    println!("(queued {} more in {took:.0} s)", large - small);
    sqlx::query("ANALYZE jobs").execute(ledger.pool()).await?;
    let (summary_large, scan_large) = reads(&ledger).await?;
    println!("{large:>9} queued: summary {summary_large:.2} ms, scan {scan_large:.2} ms");
    println!(
        "summary at {large} ÷ at {small}: {:.2}; scan: {:.0}",
        summary_large / summary,
        scan_large / scan
    );
    sqlx::query(&format!("DROP SCHEMA {SCHEMA} CASCADE"))
        .execute(ledger.pool())
        .await?;
    Ok(())
}
