//! The daily budget on the `local` cloud: the ledger's cell events bill the day, the
//! tick holds launches back once it is spent, and `cellfarm status` says so.

mod common;

use std::time::Duration;

use cellfarm::ledger::EventKind;
use common::{edit, Farm};

/// A pool at $3.60 a cell-hour ($0.001 a second) with $1.00 a day.
const BUDGET: &str = r#"
[cloud]
kind = "local"

[pools.budget]
jobs_per_cell = 10
ceiling = 4
idle_grace_secs = 2
launch_timeout_secs = 60
budget_per_day = 1.0
price_per_hour = 3.6

[pipelines.budget]
pool = "budget"
output = "s3://cellfarm-demo/outputs/budget/"
steps = [{ args = ["-i", "{input}", "-c:v", "libx264", "-preset", "ultrafast", "-an", "{out}/out.mp4"] }]
outputs = [{ path = "out.mp4", video_codec = "h264" }]
"#;

fn status(farm: &Farm) -> (String, serde_json::Value) {
    let text = farm.run(&["status"]);
    assert!(
        text.status.success(),
        "{}",
        String::from_utf8_lossy(&text.stderr)
    );
    let json = farm.run(&["status", "--json"]);
    assert!(
        json.status.success(),
        "{}",
        String::from_utf8_lossy(&json.stderr)
    );
    let json: serde_json::Value = serde_json::from_slice(&json.stdout).expect("status JSON");
    let pool = json["pools"]
        .as_array()
        .expect("pools")
        .iter()
        .find(|p| p["pool"] == "budget")
        .expect("the budget pool")
        .clone();
    (String::from_utf8_lossy(&text.stdout).into(), pool)
}

/// Property: once the ledger's cell events bill a pool's day at its budget (20 cells
/// that each lived under a minute: 20 × 60 s × $0.001 = $1.20 of $1.00), a submission
/// launches no cell, its tick logs why, and `cellfarm status` shows the spend, the budget and "launches
/// stopped: budget spent"; with the budget raised, the same submission launches a cell.
#[tokio::test(flavor = "multi_thread")]
async fn a_spent_budget_stops_launches_and_status_says_so() {
    let farm = Farm::new("budget", BUDGET).await;
    for kind in [EventKind::Launch, EventKind::Death] {
        let cells = if kind == EventKind::Launch { 20 } else { 1 };
        for _ in 0..(20 / cells) {
            farm.ledger
                .record_event("budget", kind, "earlier", cells, "the test's earlier cells")
                .await
                .expect("record");
        }
    }
    farm.put_file("budget/a.mp4", &farm.clip("a", 1.0, "testsrc"));
    let url = format!("s3://{}/budget/a.mp4", farm.bucket);
    let out = farm.run(&["submit", &url, "--pipeline", "budget"]);
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{log}");
    assert!(
        log.contains("launches stopped: budget spent ($1.20 of $1.00 today)"),
        "submit's tick says why: {log}"
    );
    assert_eq!(farm.cells_launched().await, 20, "no launch past the budget");
    assert!(farm.siblings().is_empty());
    let (text, pool) = status(&farm);
    assert!(
        text.contains("spent today $1.20 of $1.00  launches stopped: budget spent"),
        "{text}"
    );
    assert_eq!(pool["launches_stopped"], true, "{pool}");
    assert!((pool["spent_today_usd"].as_f64().unwrap() - 1.2).abs() < 1e-9);

    farm.edit_config(|doc| edit::set(doc, "pools.budget.budget_per_day", 100.0));
    farm.put_file("budget/b.mp4", &farm.clip("b", 1.0, "testsrc"));
    farm.submit("budget/b.mp4", "budget");
    assert_eq!(farm.cells_launched().await, 21, "under budget, zero to one");
    let (text, pool) = status(&farm);
    assert!(!text.contains("launches stopped"), "{text}");
    assert_eq!(pool["launches_stopped"], false, "{pool}");
    farm.wait_until(
        Duration::from_secs(120),
        "both jobs done and the cell gone",
        || async {
            let unfinished: i64 = sqlx::query_scalar(
                "SELECT count(*) FROM jobs WHERE state IN ('queued', 'running')",
            )
            .fetch_one(farm.ledger.pool())
            .await
            .expect("count");
            unfinished == 0 && farm.siblings().is_empty()
        },
    )
    .await;
}

/// Property: the ledger's spend query carries the cells launched and not ended before
/// UTC midnight into the day (launches less deaths, reaps and notices; other pools and
/// kinds apart), and gives the day's changes after it, oldest first, ends negative.
#[tokio::test(flavor = "multi_thread")]
async fn the_ledger_carries_yesterdays_cells_into_today() {
    let farm = Farm::new("budget-carry", BUDGET).await;
    let midnight = cellfarm::mitosis::budget::day_start(chrono::Utc::now().timestamp());
    let rows: &[(i64, &str, &str, i32)] = &[
        (-7200, "budget", "launch", 5),
        (-3600, "budget", "death", 1),
        (-3500, "budget", "reap", 1),
        (-3400, "budget", "rebalance", 1),
        (-3300, "other", "launch", 7),
        (1, "budget", "interruption", 1),
        (2, "budget", "launch", 3),
        (3, "other", "death", 1),
    ];
    for &(offset, pool, kind, cells) in rows {
        sqlx::query(
            "INSERT INTO cell_events (at, pool, kind, cell_id, cells, reason)
             VALUES (to_timestamp($1), $2, $3, 'test', $4, 'test')",
        )
        .bind((midnight + offset) as f64)
        .bind(pool)
        .bind(kind)
        .bind(cells)
        .execute(farm.ledger.pool())
        .await
        .expect("insert");
    }
    let day = farm
        .ledger
        .cell_changes("budget", midnight)
        .await
        .expect("query");
    assert_eq!(day.carried, 2, "5 launched, 3 ended before midnight");
    let changes: Vec<(i64, i32)> = day
        .changes
        .iter()
        .map(|c| (c.at - midnight, c.cells))
        .collect();
    assert_eq!(changes, [(1, -1), (2, 3)]);
}
