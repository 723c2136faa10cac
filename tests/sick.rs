//! A cell that cannot reach the farm's systems stops taking work and is replaced.

mod common;

use std::time::Duration;

use common::faulty_s3::{Faults, FaultyS3};
use common::{edit, Farm};

/// Siblings on this machine, quick to launch.
const LOCAL: &str = r#"
[cloud]
kind = "local"
"#;

/// Property: a cell whose last `cell.max_faults_in_a_row` attempts all failed for the
/// farm's own systems (here: every source download answered `500` by S3) drains, is
/// recorded as a death with that reason, and a replacement cell is launched that does
/// the work; the faults spent none of the jobs' attempts.
#[tokio::test(flavor = "multi_thread")]
async fn a_cell_failing_on_the_farms_systems_drains_and_is_replaced() {
    let farm = Farm::new("sick", LOCAL).await;
    // Every GET of a source fails, after the SDK's own retries too.
    let proxy = FaultyS3::start(Faults::on(&["GET"], 1, 1).paths_containing("/inbox/"));
    farm.edit_config(|doc| {
        edit::set(doc, "s3.endpoint", proxy.url.as_str());
        edit::add(doc, "cell.max_faults_in_a_row", 3);
    });
    let clip = farm.clip("clip", 1.0, "testsrc2");
    let mut ids = Vec::new();
    for i in 0..4 {
        let key = format!("inbox/clip{i}.mp4");
        farm.put_file(&key, &clip);
        // The first submit finds no cell alive and launches one (zero to one).
        ids.push(farm.submit_id(&key, "thumbnails"));
    }

    let died = || async {
        let deaths = farm.cell_events("death").await;
        deaths.into_iter().find(|e| e.reason.starts_with("sick"))
    };
    let death = farm
        .wait_until(Duration::from_secs(90), "the cell to fall sick", died)
        .await;
    // Two slots: the tick may see a fourth fault before it acts on the third.
    let run: u32 = death
        .reason
        .strip_prefix("sick: its last ")
        .and_then(|r| r.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("{death:?}"));
    assert!(run >= 3, "{death:?}");
    // S3 is well again: the replacement can work.
    proxy.set(Faults::none());

    for id in &ids {
        let done = || async {
            farm.job(id)
                .await
                .is_some_and(|(state, _, _)| state == "succeeded")
        };
        farm.wait_until(Duration::from_secs(120), format!("{id} to succeed"), done)
            .await;
        let (_, attempts, _) = farm.job(id).await.expect("row");
        assert_eq!(attempts, 1, "faults spent no attempt of {id}");
    }
    let replacements = farm
        .cell_events("launch")
        .await
        .into_iter()
        .filter(|e| e.at >= death.at)
        .count();
    assert!(
        replacements >= 1,
        "a replacement was launched\n{}",
        farm.logs()
    );
    let faulted: usize = farm
        .attempts_by_job()
        .await
        .values()
        .map(|outcomes| outcomes.iter().filter(|o| *o == "fault").count())
        .sum();
    assert!(faulted >= 3, "{faulted} attempts ended in a fault");
}
