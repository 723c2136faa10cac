//! A soak pool on the `local` cloud: background work fills the room the other pools
//! leave under `farm.max_cells`, and gives it back when they need it.

mod common;

use std::time::Duration;

use common::{edit, Farm, Lazy};

/// Two pools of at most two cells each, one job a cell (one slot), in a farm of two
/// cells: `soak` gets what `main` leaves. Both encode in real time (`-re`), so jobs last
/// their clip.
const POOLS: &str = r#"
[cloud]
kind = "local"

[pools.main]
jobs_per_cell = 1
ceiling = 2
step = 2
cooldown_secs = 1
idle_grace_secs = 2
launch_timeout_secs = 60

[pools.soak]
jobs_per_cell = 1
ceiling = 2
step = 2
cooldown_secs = 1
idle_grace_secs = 2
launch_timeout_secs = 60

[pipelines.main]
pool = "main"
output = "s3://cellfarm-demo/outputs/main/"
steps = [{ args = ["-re", "-i", "{input}", "-c:v", "libx264", "-preset", "ultrafast", "-an", "{out}/out.mp4"] }]
outputs = [{ path = "out.mp4", video_codec = "h264" }]

[pipelines.soak]
pool = "soak"
output = "s3://cellfarm-demo/outputs/soak/"
steps = [{ args = ["-re", "-i", "{input}", "-c:v", "libx264", "-preset", "ultrafast", "-an", "{out}/out.mp4"] }]
outputs = [{ path = "out.mp4", video_codec = "h264" }]
"#;

/// `cellfarm submit` of every object under `prefix` to the pipeline of that name.
fn submit(farm: &Farm, prefix: &str) {
    let url = format!("s3://{}/{prefix}/", farm.bucket);
    let out = farm.run(&["submit", "--prefix", &url, "--pipeline", prefix]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Jobs of `pipeline` by state: (started, queued or running).
async fn progress(farm: &Farm, pipeline: &str) -> (i64, i64) {
    sqlx::query_as(
        "SELECT count(*) FILTER (WHERE started_at IS NOT NULL),
                count(*) FILTER (WHERE state IN ('queued', 'running'))
         FROM jobs WHERE pipeline = $1",
    )
    .bind(pipeline)
    .fetch_one(farm.ledger.pool())
    .await
    .expect("count")
}

/// Property: a soak pool grows only into the room under `farm.max_cells` (two cells
/// while the farm is idle); when the main pool's work arrives, the busy soak cells
/// finish their running jobs, take no more, and die (a `death` saying why) while soak
/// work still waits; once the main pool's cells have died, the soak pool takes the room
/// back and finishes. Nothing is lost or done twice: every job succeeds at its one
/// attempt.
#[tokio::test(flavor = "multi_thread")]
async fn soak_work_fills_spare_room_and_gives_it_back() {
    let farm = Farm::new("soak", POOLS).await;
    farm.edit_config(|doc| {
        edit::add(doc, "farm.max_cells", 2);
        // One job a cell at a time: the soak work cannot all start on two cells.
        edit::set(doc, "cell.slots", 1);
        edit::add(doc, "pools.soak.soak", true);
    });
    let long = farm.clip("long", 5.0, "testsrc");
    let short = farm.clip("short", 2.0, "testsrc");
    for i in 0..4 {
        farm.put_file(&format!("soak/clip{i}.mp4"), &long);
    }
    for i in 0..2 {
        farm.put_file(&format!("main/clip{i}.mp4"), &short);
    }
    submit(&farm, "soak");
    farm.wait_until(
        Duration::from_secs(60),
        "two soak jobs to start on the room of an idle farm",
        || async { progress(&farm, "soak").await.0 == 2 },
    )
    .await;
    assert_eq!(
        farm.siblings().len(),
        2,
        "the soak pool filled the farm's two places"
    );
    submit(&farm, "main");

    let seen = std::cell::Cell::new((0, 0));
    let what = Lazy(|| format!("every job to end (soak, main unfinished: {:?})", seen.get()));
    farm.wait_until(Duration::from_secs(120), what, || async {
        let left = (
            progress(&farm, "soak").await.1,
            progress(&farm, "main").await.1,
        );
        seen.set(left);
        left == (0, 0)
    })
    .await;

    let attempts = farm.attempts_by_job().await;
    assert_eq!(attempts.len(), 6, "{attempts:?}");
    for (id, outcomes) in &attempts {
        assert_eq!(
            outcomes,
            &["succeeded"],
            "job {id}: one attempt, which succeeded"
        );
    }
    let yields: Vec<_> = (farm.cell_events("death").await.into_iter())
        .filter(|e| e.pool == "soak" && e.reason.starts_with("soak:"))
        .collect();
    assert!(!yields.is_empty(), "the soak cells gave the room back");
    let first_yield = yields.iter().map(|e| e.at).min().expect("a yield");
    let started_after: i64 =
        sqlx::query_scalar("SELECT count(*) FROM jobs WHERE pipeline = 'soak' AND started_at > $1")
            .bind(first_yield)
            .fetch_one(farm.ledger.pool())
            .await
            .expect("count");
    assert!(
        started_after > 0,
        "soak work still waited when its cells yielded, and ran once the room came back"
    );
    let main_launch = (farm.cell_events("launch").await.into_iter())
        .filter(|e| e.pool == "main")
        .map(|e| e.at)
        .min()
        .expect("the main pool launched");
    eprintln!(
        "MEASURED soak yields = {}; first yield {:.1} s after the main pool's first launch",
        yields.len(),
        (first_yield - main_launch).num_milliseconds() as f64 / 1e3
    );
}
