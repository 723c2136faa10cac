//! Live config: a cell started from a config object in S3 (s3s-fs) applies a changed
//! object between jobs and refuses an invalid one.

mod common;

use std::time::Duration;

use cellfarm::config::Config;
use cellfarm::locks::Coordinator;
use cellfarm::store::ObjectStore;
use common::{edit, Farm};

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
    let what = format!("the cell to report config {want}");
    farm.wait_until(Duration::from_secs(30), what, || async {
        beat_version(farm).await.as_deref() == Some(want)
    })
    .await
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
    let mut doc = edit::parse(&text);
    let (step, output) = (
        "pipelines.thumbnails.steps.0",
        "pipelines.thumbnails.outputs.0",
    );
    edit::swap(
        &mut doc,
        &format!("{step}.args.8"),
        "{out}/poster.jpg",
        "{out}/poster.png",
    );
    edit::swap(
        &mut doc,
        &format!("{output}.path"),
        "poster.jpg",
        "poster.png",
    );
    edit::swap(
        &mut doc,
        &format!("{output}.content_type"),
        "image/jpeg",
        "image/png",
    );
    edit::swap(&mut doc, &format!("{output}.video_codec"), "mjpeg", "png");
    let png = edit::to_text(&doc);
    Config::parse(&png, "new").expect("the new config is valid");
    farm.put_bytes(CONFIG_KEY, png.clone().into_bytes());
    let second = version(&farm).await;
    wait_version(&farm, &second).await;
    let id2 = farm.submit_id("in/clip2.mp4", "thumbnails");
    farm.wait_state(&id2, "succeeded", Duration::from_secs(60))
        .await;
    assert_eq!(outputs(&farm, &id2).await, ["contact.jpg", "poster.png"]);

    // A typo: refused, and the cell goes on with the PNG config.
    edit::add(&mut doc, "cell.slotz", 4);
    farm.put_bytes(CONFIG_KEY, edit::to_text(&doc).into_bytes());
    farm.wait_until(Duration::from_secs(30), "the typo refused", || async {
        farm.logs().contains("new config refused")
    })
    .await;
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
