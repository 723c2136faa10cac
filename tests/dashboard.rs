//! `cellfarm dashboard`: its API, page and `/metrics` against a farm in a known state.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Child, Stdio};

use common::http::get;
use common::{prom, Farm};

/// Starts the dashboard on a free loopback port; returns it and its base URL.
fn start_dashboard(farm: &Farm) -> (Child, String) {
    let mut child = farm
        .cellfarm()
        .args(["dashboard", "--listen", "127.0.0.1:0"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("start the dashboard");
    let mut line = String::new();
    BufReader::new(child.stdout.as_mut().expect("piped"))
        .read_line(&mut line)
        .expect("the dashboard says where it is");
    let url = line
        .trim()
        .strip_prefix("dashboard at ")
        .unwrap_or_else(|| panic!("unexpected first line: {line}"))
        .to_string();
    (child, url)
}

/// A farm with one job in every state, a launch, a spot cell that lived exactly 1800 s
/// at $0.04 an hour ($0.10 on demand) and was interrupted, handing back 600 s of work.
async fn known_state(farm: &Farm) {
    let pool = farm.ledger.pool();
    for state in [
        "queued",
        "running",
        "succeeded",
        "failed",
        "dead",
        "cancelled",
    ] {
        sqlx::query(
            "INSERT INTO jobs (id, pipeline, pool, source_bucket, source_key, source_etag, message,
                               state, lease_expires, error, started_at, finished_at, attempts)
             VALUES ($1, 'thumbnails', 'default', 'b', $1, 'e', '{}'::jsonb, $2,
                     CASE WHEN $2 = 'running' THEN now() + interval '1 hour' END,
                     CASE WHEN $2 IN ('failed', 'dead') THEN 'bad media: ' || $2 END,
                     now() - interval '40 s',
                     CASE WHEN $2 IN ('succeeded', 'failed', 'dead', 'cancelled') THEN now() - interval '10 s' END,
                     1)",
        )
        .bind(format!("job-{state}"))
        .bind(state)
        .execute(pool)
        .await
        .expect("insert a job");
    }
    sqlx::query(
        "INSERT INTO cell_events (at, pool, kind, cell_id, cells, reason, instance_id,
                                  instance_type, az, lifecycle, price_per_hour, on_demand_per_hour)
         VALUES (date_trunc('second', now()) - interval '3700 s', 'default', 'launch', 'submit', 1,
                 'backlog', NULL, NULL, NULL, NULL, NULL, NULL),
                (date_trunc('second', now()) - interval '3600 s', 'default', 'alive', 'i-0abc', 1,
                 'up', 'i-0abc', 'c5.large', 'us-east-1a', 'spot', 0.04, 0.10),
                (date_trunc('second', now()) - interval '1800 s', 'default', 'interruption',
                 'i-0abc', 1, 'spot notice', NULL, NULL, NULL, NULL, NULL, NULL)",
    )
    .execute(pool)
    .await
    .expect("insert cell events");
    sqlx::query(
        "INSERT INTO job_attempts (job_id, attempt, cell_id, started_at, finished_at, outcome)
         VALUES ('job-queued', 1, 'i-0abc', now() - interval '2400 s', now() - interval '1800 s',
                 'interrupted')",
    )
    .execute(pool)
    .await
    .expect("insert an attempt");
}

/// Property: for a farm in a known state, `/api/snapshot` counts every job state once,
/// names the interruption by instance type and AZ with the 600 s of work it cost, and
/// bills the interrupted cell's 1800 s exactly ($0.02 spent, $0.05 on demand, $0.03
/// saved); the page draws both charts and every table; `/metrics` parses as
/// Prometheus text and its job counters equal the ledger's; and with a token in the
/// config nothing is served without it. Breaks if billing, the interruption join or the
/// counters drift from the ledger.
#[tokio::test(flavor = "multi_thread")]
async fn the_api_page_and_metrics_tell_a_known_farm_exactly() {
    let farm = Farm::new("dashboard", "[dashboard]\ntoken = \"s3cret\"\n").await;
    known_state(&farm).await;
    let (mut child, url) = start_dashboard(&farm);

    assert_eq!(get(&url, "/api/snapshot", None).0, 401, "no token, no data");
    assert_eq!(get(&url, "/metrics", Some("wrong")).0, 401);
    let (code, body) = get(&url, "/api/snapshot", Some("s3cret"));
    assert_eq!(code, 200, "{body}");
    let snap: serde_json::Value = serde_json::from_str(&body).expect("JSON");

    check_snapshot(&snap);
    check_page(&url);
    check_metrics(&farm, &url).await;
    child.kill().expect("stop the dashboard");
    let _ = child.wait();
}

/// The snapshot's counts, interruption and bill, against [`known_state`].
fn check_snapshot(snap: &serde_json::Value) {
    let mut states: Vec<(String, i64)> = snap["status"]["jobs"]
        .as_array()
        .expect("jobs by state")
        .iter()
        .map(|c| {
            (
                c["state"].as_str().expect("a state").to_string(),
                c["jobs"].as_i64().expect("a count"),
            )
        })
        .collect();
    states.sort();
    let want: Vec<(String, i64)> = [
        "cancelled",
        "dead",
        "failed",
        "queued",
        "running",
        "succeeded",
    ]
    .iter()
    .map(|s| (s.to_string(), 1))
    .collect();
    assert_eq!(states, want);
    let life = &snap["spend_life"];
    assert_eq!(life["instance_secs"], 1800);
    let dollars = |v: &serde_json::Value| (v.as_f64().expect("dollars") * 1e6).round() / 1e6;
    assert_eq!(dollars(&life["spend_usd"]), 0.02);
    assert_eq!(dollars(&life["on_demand_usd"]), 0.05);
    assert_eq!(dollars(&life["savings_usd"]), 0.03);
    let interruptions = snap["interruptions"].as_array().expect("interruptions");
    assert_eq!(interruptions.len(), 1, "{interruptions:?}");
    assert_eq!(interruptions[0]["instance_type"], "c5.large");
    assert_eq!(interruptions[0]["az"], "us-east-1a");
    assert_eq!(interruptions[0]["interruptions"], 1);
    assert_eq!(interruptions[0]["lost_work_secs"], 600.0);
    let failures = snap["status"]["failures"].as_array().expect("failures");
    assert_eq!(failures.len(), 2, "failed and dead, with their reasons");
    let minutes: u64 = snap["minutes"]
        .as_array()
        .expect("minutes")
        .iter()
        .map(|m| m["succeeded"].as_u64().expect("a count") + m["failed"].as_u64().expect("a count"))
        .sum();
    assert_eq!(
        minutes, 3,
        "succeeded, failed and dead ended in the last hour"
    );
}

/// The page: both charts, the tables, links to jobs carrying the token.
fn check_page(url: &str) {
    let (code, page) = get(url, "/?token=s3cret", None);
    assert_eq!(code, 200);
    for part in [
        "id=\"jobs-chart\"",
        "id=\"cells-chart\"",
        "<polyline class=\"alive\"",
        "id=\"pools\"",
        "id=\"failures\"",
        "href=\"/api/jobs/job-failed?token=s3cret\"",
        "c5.large",
        "$0.03",
    ] {
        assert!(page.contains(part), "the page lacks {part}:\n{page}");
    }
    let (code, job) = get(url, "/api/jobs/job-failed", Some("s3cret"));
    assert_eq!(code, 200);
    assert!(job.contains("bad media: failed"), "{job}");
}

/// `/metrics` parses, and its job counters are the ledger's.
async fn check_metrics(farm: &Farm, url: &str) {
    let (code, text) = get(url, "/metrics", Some("s3cret"));
    assert_eq!(code, 200);
    let samples = prom::parse(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));
    let counts: Vec<(String, String, i64)> =
        sqlx::query_as("SELECT pipeline, state, count(*) FROM jobs GROUP BY 1, 2")
            .fetch_all(farm.ledger.pool())
            .await
            .expect("count jobs");
    for (pipeline, state, n) in counts {
        let series = if ["queued", "running"].contains(&state.as_str()) {
            format!("cellfarm_jobs{{pool=\"default\",pipeline=\"{pipeline}\",state=\"{state}\"}}")
        } else {
            format!("cellfarm_jobs_total{{pool=\"default\",pipeline=\"{pipeline}\",outcome=\"{state}\"}}")
        };
        assert_eq!(
            prom::sample(&samples, &series),
            Some(n as f64),
            "{series}\n{text}"
        );
    }
    let spend = prom::sample(&samples, "cellfarm_spend_dollars_total").expect("spend");
    assert!((spend - 0.02).abs() < 1e-9, "{spend}");
    assert_eq!(
        prom::sample(
            &samples,
            "cellfarm_interruptions_total{instance_type=\"c5.large\",az=\"us-east-1a\"}"
        ),
        Some(1.0)
    );
    assert_eq!(
        prom::sample(
            &samples,
            "cellfarm_job_duration_seconds_count{pool=\"default\",pipeline=\"thumbnails\"}"
        ),
        Some(1.0)
    );
}
