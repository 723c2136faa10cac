//! Work the broker does not show as ready: a cell holds no message it has not started,
//! and a job row left `queued` with its message in no queue is reconciled.

mod common;

use std::time::Duration;

use cellfarm::queue;
use common::{edit, Farm, REALTIME};
use lapin::options::{BasicGetOptions, BasicNackOptions};

/// Cells of one slot on the `local` cloud, in a pool of one cell at most (so no tick
/// launches a third: the test starts both cells), whose idle cells die after 2 s.
fn one_slot_cells(farm: &Farm) {
    farm.edit_config(|doc| {
        edit::set(doc, "cell.slots", 1);
        edit::add(doc, "pools.default.ceiling", 1);
        edit::add(doc, "pools.default.idle_grace_secs", 2);
    });
}

/// `cellfarm submit` of `key` to the realtime pipeline (`--priority` with `priority`);
/// returns the job id.
fn submit(farm: &Farm, key: &str, priority: bool) -> String {
    let url = format!("s3://{}/{key}", farm.bucket);
    let mut args = vec!["submit", &url, "--pipeline", "realtime"];
    if priority {
        args.push("--priority");
    }
    let out = farm.run(&args);
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(out.status.success(), "submit failed: {stdout}");
    stdout
        .split_whitespace()
        .nth(1)
        .expect("submit prints a job id")
        .to_string()
}

/// The cells that ran a job's attempts, in order.
async fn cells_of(farm: &Farm, id: &str) -> Vec<String> {
    sqlx::query_scalar("SELECT cell_id FROM job_attempts WHERE job_id = $1 ORDER BY id")
        .bind(id)
        .fetch_all(farm.ledger.pool())
        .await
        .expect("query attempts")
}

/// Property: a busy cell does not hold a job it cannot start. Cell A (one slot) runs a
/// long priority job when a second long job is submitted to the work queue; cell B then
/// starts beside it, idle. The second job is not hidden in A's prefetch (where the
/// broker counts it unacknowledged and the ledger queued, so idle B would die beside
/// it, and the job would wait for A's slot): B takes and runs it, and dies of idleness
/// no earlier than that job started.
#[tokio::test(flavor = "multi_thread")]
async fn a_prefetched_long_job_keeps_its_cells_neighbour_alive() {
    let mut farm = Farm::new("backlog", &format!("[cloud]\nkind = \"local\"\n{REALTIME}")).await;
    one_slot_cells(&farm);
    let long = farm.clip("long", 20.0, "testsrc");
    farm.put_file("inbox/first.mp4", &long);
    let short = farm.clip("short", 4.0, "testsrc");
    farm.put_file("inbox/second.mp4", &short);

    let a = farm.start_cell(&[]);
    let consuming = || async { farm.logs().contains("consuming") };
    farm.wait_until(Duration::from_secs(60), "cell A consuming", consuming)
        .await;
    let first = submit(&farm, "inbox/first.mp4", true);
    farm.wait_state(&first, "running", Duration::from_secs(60))
        .await;
    let second = submit(&farm, "inbox/second.mp4", false);
    let b = farm.start_cell(&[]);

    farm.wait_state(&second, "succeeded", Duration::from_secs(120))
        .await;
    let ran_on = cells_of(&farm, &second).await;
    assert_eq!(ran_on.len(), 1, "one attempt: {ran_on:?}\n{}", farm.logs());
    assert!(
        ran_on[0].contains(&format!("-{b}-")),
        "the second job ran on B (pid {b}), not behind the first on A (pid {a}): {ran_on:?}\n{}",
        farm.logs()
    );
    let started: chrono::DateTime<chrono::Utc> =
        sqlx::query_scalar("SELECT min(started_at) FROM job_attempts WHERE job_id = $1")
            .bind(&second)
            .fetch_one(farm.ledger.pool())
            .await
            .expect("query attempts");
    let early: Vec<_> = farm
        .cell_events("death")
        .await
        .into_iter()
        .filter(|e| e.at < started)
        .collect();
    assert!(
        early.is_empty(),
        "a cell died while the job was queued: {early:?}"
    );
    farm.wait_state(&first, "succeeded", Duration::from_secs(120))
        .await;
}

/// Returns the message of `queue` to the broker until the broker dead-letters it at the
/// queue's delivery limit; panics unless that happens.
async fn exhaust_deliveries(farm: &Farm, queue: &str) {
    let conn = queue::connect(&farm.config.amqp.url)
        .await
        .expect("RabbitMQ");
    let channel = conn.create_channel().await.expect("channel");
    for _ in 0..100 {
        let got = channel
            .basic_get(queue, BasicGetOptions::default())
            .await
            .expect("basic.get");
        let Some(m) = got else {
            return;
        };
        let back = BasicNackOptions {
            requeue: true,
            ..Default::default()
        };
        m.delivery.nack(back).await.expect("nack");
    }
    panic!("the broker never dead-lettered the message of {queue}");
}

/// Property: a job whose message the broker dead-lettered by itself (at the queue's
/// delivery limit: every delivery returned) does not stay `queued`: a cell marks it
/// `dead` with the broker's reason, leaves the dead letter in place, and a cell run
/// `--until-idle` ends.
#[tokio::test(flavor = "multi_thread")]
async fn a_dead_lettered_jobs_row_leaves_queued() {
    let mut farm = Farm::new("deadletter", REALTIME).await;
    let clip = farm.clip("clip", 1.0, "testsrc");
    farm.put_file("inbox/clip.mp4", &clip);
    let id = submit(&farm, "inbox/clip.mp4", false);
    exhaust_deliveries(&farm, &farm.names.work("default")).await;
    let dead = farm.names.dead("default");
    // The broker moves a dead letter on its own time: wait for it to land.
    let landed = || async {
        let (in_dead, _) = queue::ready(farm.publisher.channel(), &dead)
            .await
            .expect("the dead-letter queue");
        in_dead == 1
    };
    farm.wait_until(
        Duration::from_secs(10),
        "the broker to dead-letter the message",
        landed,
    )
    .await;
    assert_eq!(farm.job(&id).await.expect("a row").0, "queued");

    let status = farm.run_cell_with_env(&["--until-idle", "2"], &[], Duration::from_secs(120));
    assert!(status.success(), "{}", farm.logs());
    let (state, attempts, error) = farm.job(&id).await.expect("a row");
    assert_eq!((state.as_str(), attempts), ("dead", 0), "{}", farm.logs());
    let error = error.unwrap_or_default();
    assert!(
        error.contains("dead-lettered") && error.contains("delivery_limit"),
        "the reason names the broker's dead letter: {error}"
    );
    let letters = farm.drain(&dead).await;
    assert_eq!(letters.len(), 1, "the dead letter stays in {dead}");
}

/// Property: a job whose message is in no queue (here, purged) is published again from
/// the ledger, recorded, and runs once; a cell run `--until-idle` ends.
#[tokio::test(flavor = "multi_thread")]
async fn a_lost_message_is_published_again() {
    let mut farm = Farm::new("lostmessage", REALTIME).await;
    let clip = farm.clip("clip", 1.0, "testsrc");
    farm.put_file("inbox/clip.mp4", &clip);
    let id = submit(&farm, "inbox/clip.mp4", false);
    let lost = farm.drain(&farm.names.work("default")).await;
    assert_eq!(lost.len(), 1, "the message is gone from the queue");

    let status = farm.run_cell_with_env(&["--until-idle", "2"], &[], Duration::from_secs(120));
    assert!(status.success(), "{}", farm.logs());
    assert_eq!(farm.job(&id).await.expect("a row").0, "succeeded");
    assert_eq!(farm.attempts(&id).await, ["succeeded"], "run once");
    assert!(
        farm.logs().contains("reconciled: a lost message"),
        "the re-publish is logged\n{}",
        farm.logs()
    );
}
