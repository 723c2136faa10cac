//! Machines nobody works on are ended: on the `local` cloud a sibling is a real process,
//! and a hung cell is one stopped with SIGSTOP.

mod common;

use std::time::Duration;

use common::Farm;

/// A pool kept at two cells, whose launches must be alive within fifteen seconds.
const KEPT: &str = r#"
[cloud]
kind = "local"

[pools.kept]
floor = 2
ceiling = 2
cooldown_secs = 0
launch_timeout_secs = 15
"#;

/// The `local` cloud's siblings of `pool`: their pids and launch ids.
fn launched(farm: &Farm) -> Vec<(u32, String)> {
    farm.siblings()
        .into_iter()
        .filter_map(|pid| {
            let environ = std::fs::read(format!("/proc/{pid}/environ")).ok()?;
            let id = environ.split(|b| *b == 0).find_map(|kv| {
                let kv = std::str::from_utf8(kv).ok()?;
                kv.strip_prefix("CELLFARM_LAUNCH_ID=").map(str::to_string)
            })?;
            Some((pid, id))
        })
        .collect()
}

/// Property: a launched cell that stops beating (hung: SIGSTOP) is ended by the next
/// tick past its launch timeout, recorded as reaped with its reason, and replaced,
/// because the pool's floor needs it; nothing else is ended.
#[tokio::test(flavor = "multi_thread")]
async fn a_silent_sibling_is_reaped_and_replaced() {
    let mut farm = Farm::new("reap", KEPT).await;
    // A cell started by hand ticks for the pool: it launches the second cell.
    farm.start_cell(&["--pool", "kept"]);
    let first = farm
        .wait_until(Duration::from_secs(60), "a launched sibling", || async {
            launched(&farm).into_iter().next()
        })
        .await;
    let (pid, id) = first;
    // Alive first (its launch is no longer pending), then hung.
    let alive = || async {
        let beats = farm.run(&["status", "--json"]);
        String::from_utf8_lossy(&beats.stdout).contains(&format!("\"machine\": \"{id}\""))
    };
    farm.wait_until(Duration::from_secs(60), "the sibling beats", alive)
        .await;
    let stop = std::process::Command::new("kill")
        .args(["-STOP", &pid.to_string()])
        .status()
        .expect("kill -STOP");
    assert!(stop.success());

    let reaped = || async {
        let events = farm.cell_events("reap").await;
        (!events.is_empty()).then_some(events)
    };
    let events = farm
        .wait_until(Duration::from_secs(60), "the hung sibling reaped", reaped)
        .await;
    assert_eq!(events.len(), 1, "one machine reaped: {events:?}");
    assert_eq!(events[0].cell_id, id);
    assert!(
        events[0].reason.contains("no cell beat on it"),
        "{events:?}"
    );
    // Ended: gone, or a zombie its launcher has not reaped.
    let gone = || async { !farm.siblings().contains(&pid) };
    farm.wait_until(Duration::from_secs(10), "the hung process ended", gone)
        .await;

    // The floor wants two cells: a replacement is launched and comes alive.
    let replaced = || async {
        launched(&farm)
            .into_iter()
            .find(|(p, launch)| *p != pid && *launch != id)
    };
    farm.wait_until(Duration::from_secs(60), "a replacement sibling", replaced)
        .await;
    assert_eq!(
        farm.cells_launched().await,
        2,
        "the first sibling and its replacement"
    );
    assert_eq!(
        farm.cell_events("reap").await.len(),
        1,
        "nothing else reaped"
    );
}
