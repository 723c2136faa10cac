//! Live config: a cell started from a config object in S3 (s3s-fs) applies a changed
//! object between jobs and refuses an invalid one.

mod common;

use std::time::{Duration, Instant};

use cellfarm::config::Config;
use cellfarm::locks::Coordinator;
use cellfarm::store::ObjectStore;
use common::Farm;

const CONFIG_KEY: &str = "config/cellfarm.toml";

/// The version (ETag) of the config object.
async fn version(farm: &Farm) -> String {
    farm.store
        .head(&farm.bucket, CONFIG_KEY)
        .await
        .expect("head the config")
        .etag
}

/// The config version the farm's one cell reports in its heartbeat.
async fn beat_version(farm: &Farm) -> Option<String> {
    let beats = Coordinator::connect(&farm.config.redis.url, &farm.name)
        .await
        .expect("Redis");
    let alive = beats.alive().await.expect("heartbeats");
    alive.first().and_then(|b| b.config_version.clone())
}

async fn wait_version(farm: &Farm, want: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while beat_version(farm).await.as_deref() != Some(want) {
        assert!(
            Instant::now() < deadline,
            "the cell never reported config {want}:\n{}",
            farm.logs()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// File names of a job's outputs, sorted.
async fn outputs(farm: &Farm, id: &str) -> Vec<String> {
    let mut names: Vec<String> = farm
        .outputs(id)
        .await
        .iter()
        .map(|k| k.rsplit('/').next().unwrap_or_default().to_string())
        .collect();
    names.sort();
    names
}

/// Property: changing the config object while a cell runs changes the pipeline the next
/// job runs, without a restart, and the heartbeat reports the new version; an invalid
/// new config is refused with the key it gets wrong, and the cell keeps working on the
/// config it had.
#[tokio::test(flavor = "multi_thread")]
async fn a_changed_config_object_changes_the_next_job_and_a_bad_one_is_refused() {
    let mut farm = Farm::new("live", "").await;
    let text = farm.put_live_config(CONFIG_KEY);
    let first = version(&farm).await;
    let clip = farm.clip("clip", 2.0, "testsrc");
    for i in 1..=3 {
        farm.put_file(&format!("in/clip{i}.mp4"), &clip);
    }

    farm.start_cell_from_s3(CONFIG_KEY);
    wait_version(&farm, &first).await;

    let id1 = farm.submit_id("in/clip1.mp4", "thumbnails");
    farm.wait_state(&id1, "succeeded", Duration::from_secs(60))
        .await;
    assert_eq!(outputs(&farm, &id1).await, ["contact.jpg", "poster.jpg"]);

    // The poster becomes a PNG.
    let png = text
        .replace("\"{out}/poster.jpg\"", "\"{out}/poster.png\"")
        .replace(
            "{ path = \"poster.jpg\", content_type = \"image/jpeg\", video_codec = \"mjpeg\" }",
            "{ path = \"poster.png\", content_type = \"image/png\", video_codec = \"png\" }",
        );
    assert_ne!(png, text);
    Config::parse(&png, "new").expect("the new config is valid");
    farm.put_bytes(CONFIG_KEY, png.clone().into_bytes());
    let second = version(&farm).await;
    wait_version(&farm, &second).await;
    let id2 = farm.submit_id("in/clip2.mp4", "thumbnails");
    farm.wait_state(&id2, "succeeded", Duration::from_secs(60))
        .await;
    assert_eq!(outputs(&farm, &id2).await, ["contact.jpg", "poster.png"]);

    // A typo: refused, and the cell goes on with the PNG config.
    let bad = png.replace("config_check_secs = 1", "config_check_secs = 1\nslotz = 4");
    farm.put_bytes(CONFIG_KEY, bad.into_bytes());
    let deadline = Instant::now() + Duration::from_secs(30);
    while !farm.logs().contains("new config refused") {
        assert!(Instant::now() < deadline, "no refusal:\n{}", farm.logs());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(
        farm.logs().contains("cell.slotz: unknown key"),
        "{}",
        farm.logs()
    );
    assert_eq!(beat_version(&farm).await.as_deref(), Some(second.as_str()));
    let id3 = farm.submit_id("in/clip3.mp4", "thumbnails");
    farm.wait_state(&id3, "succeeded", Duration::from_secs(60))
        .await;
    assert_eq!(outputs(&farm, &id3).await, ["contact.jpg", "poster.png"]);
}
