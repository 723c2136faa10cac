//! Self-update: a cell re-executes itself with the binary the config names in S3 once
//! its SHA-256 checks out, and refuses one that does not.

mod common;

use std::time::Duration;

use cellfarm::update::sha256_file;
use common::{logs_in, wait_until, Farm, Lazy};

const CONFIG_KEY: &str = "config/cellfarm.toml";

/// What `/proc/<pid>/exe` points to.
fn exe(pid: u32) -> String {
    std::fs::read_link(format!("/proc/{pid}/exe"))
        .map(|p| p.display().to_string())
        .unwrap_or_default()
}

/// Property: a live config naming a binary with a wrong SHA-256 is refused and the cell
/// keeps its binary; naming one with the right hash makes the cell drain and re-execute
/// itself with it (same process), and the updated cell does the next job.
#[tokio::test(flavor = "multi_thread")]
async fn a_cell_picks_up_a_verified_binary_and_refuses_a_wrong_hash() {
    let mut farm = Farm::new("update", "").await;
    // A different binary that still runs: ours with a few bytes appended.
    let mut bytes = std::fs::read(env!("CARGO_BIN_EXE_cellfarm")).expect("the binary");
    bytes.extend_from_slice(b"\ncellfarm update test\n");
    let new = farm.dir.path().join("cellfarm-new");
    std::fs::write(&new, &bytes).expect("write the new binary");
    let sha = sha256_file(&new).expect("hash");
    farm.put_bytes("bin/cellfarm-new", bytes);

    let text = farm.put_live_config(CONFIG_KEY);
    let cell = farm.start_cell_from_s3(CONFIG_KEY);
    let pid = farm.pid(cell);
    let original = exe(pid);

    let update = |sha: &str| {
        format!(
            "{text}\n[update]\nbinary_url = \"s3://{}/bin/cellfarm-new\"\nsha256 = \"{sha}\"\n",
            farm.bucket
        )
    };
    farm.wait_until(Duration::from_secs(30), "the cell to consume", || async {
        farm.logs().contains("consuming")
    })
    .await;
    // The real hash with its last digit changed (to anything but what it was).
    let last = if sha.ends_with('0') { '1' } else { '0' };
    let wrong = format!("{}{last}", &sha[..63]);
    farm.put_bytes(CONFIG_KEY, update(&wrong).into_bytes());
    farm.wait_until(
        Duration::from_secs(30),
        "the wrong hash refused",
        || async { farm.logs().contains("new config refused") },
    )
    .await;
    assert!(farm.logs().contains("SHA-256"), "{}", farm.logs());
    assert_eq!(exe(pid), original, "the cell kept its binary");

    farm.put_bytes(CONFIG_KEY, update(&sha).into_bytes());
    let updated = format!("cellfarm-{}", &sha[..16]);
    let what = format!("the cell to re-execute itself as {updated}");
    let dir = farm.dir.path().to_path_buf();
    wait_until(
        Duration::from_secs(60),
        Lazy(|| format!("{what}\n{}", logs_in(&dir))),
        || {
            // A cell that exits instead fails now, not at the timeout.
            let exited = farm.cell_exited(cell);
            assert!(
                exited.is_none(),
                "the cell exited: {exited:?}\n{}",
                logs_in(&dir)
            );
            std::future::ready(exe(pid).contains(&updated))
        },
    )
    .await;
    farm.put_file("in/clip.mp4", &farm.clip("clip", 1.0, "testsrc"));
    let id = farm.submit_id("in/clip.mp4", "thumbnails");
    farm.wait_state(&id, "succeeded", Duration::from_secs(60))
        .await;
    assert_eq!(
        exe(pid).rsplit('/').next(),
        Some(&*format!("cellfarm-{}", &sha[..16]))
    );
}
