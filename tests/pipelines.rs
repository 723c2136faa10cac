//! The shipped example pipelines, end to end through a real cell.

mod common;

use std::time::Duration;

use cellfarm::job::ResultMessage;
use common::{probe, seconds, video_stream, Farm};

/// Property: every example pipeline turns a source into outputs that exist in S3 and are
/// what the pipeline promises (codec, resolution, duration within one frame); the ledger
/// says `succeeded` with those outputs; one result message per job reaches the results
/// queue.
#[tokio::test(flavor = "multi_thread")]
// One scenario read top to bottom: splitting it would hide the order its steps rely on.
#[allow(clippy::too_many_lines)]
async fn every_example_pipeline_produces_verified_outputs() {
    let mut farm = Farm::new("pipelines", "").await;
    let clip = farm.clip("clip", 4.0, "testsrc2");
    farm.put_file("inbox/clip.mp4", &clip);
    let source_secs = seconds(&video_stream(&probe(&clip))["duration"]);
    let pipelines = ["h264_ladder", "thumbnails", "fermi", "hls"];
    let ids: Vec<String> = pipelines
        .iter()
        .map(|p| farm.submit_id("inbox/clip.mp4", p))
        .collect();
    let status = farm.run_cell_until_idle();
    assert!(status.success(), "cell exit {status}\n{}", farm.logs());

    for (id, pipeline) in ids.iter().zip(pipelines) {
        let (state, attempts, error) = farm.job(id).await.expect("a ledger row");
        assert_eq!(state, "succeeded", "{pipeline}: {error:?}\n{}", farm.logs());
        assert_eq!(attempts, 1, "{pipeline}");
        let mut recorded = farm.outputs(id).await;
        recorded.sort();
        let mut stored = farm.output_keys(pipeline).await;
        stored.sort();
        assert_eq!(recorded, stored, "{pipeline}: ledger outputs = S3 objects");
        assert!(!stored.is_empty(), "{pipeline}: no outputs");
        assert!(stored.iter().all(|k| k.contains(id.as_str())), "{stored:?}");
    }

    // One frame at 25 fps, plus a millisecond for the rounding of printed durations.
    let frame = 1.0 / 25.0 + 0.001;
    // Outputs are found by the source's name: <prefix>/<source key>/<job id>/<name>.
    let key = |pipeline: &str, id: &str, name: &str| {
        format!("outputs/{pipeline}/inbox/clip.mp4/{id}/{name}")
    };
    for (name, height) in [("720p.mp4", 720), ("480p.mp4", 480)] {
        let p = probe(&farm.fetch(&key("h264_ladder", &ids[0], name)).await);
        let v = video_stream(&p);
        assert_eq!(v["codec_name"], "h264", "{name}");
        assert_eq!(v["height"], height, "{name}");
        let secs = seconds(&v["duration"]);
        assert!(
            (secs - source_secs).abs() <= frame,
            "{name}: {secs} vs {source_secs}"
        );
        assert!(p["streams"]
            .as_array()
            .unwrap()
            .iter()
            .any(|s| s["codec_name"] == "aac"));
    }
    for name in ["poster.jpg", "contact.jpg"] {
        let p = probe(&farm.fetch(&key("thumbnails", &ids[1], name)).await);
        assert_eq!(video_stream(&p)["codec_name"], "mjpeg", "{name}");
    }
    // FERMI: intro + source + outro, each as long as its longer stream (concat pads).
    let parts: f64 = ["intro.mp4", "clip.mp4", "outro.mp4"]
        .iter()
        .map(|local| seconds(&probe(&farm.dir.path().join(local))["format"]["duration"]))
        .sum();
    let p = probe(&farm.fetch(&key("fermi", &ids[2], "fermi.mp4")).await);
    let v = video_stream(&p);
    assert_eq!(
        (v["width"].as_u64(), v["height"].as_u64()),
        (Some(1280), Some(720))
    );
    let secs = seconds(&v["duration"]);
    assert!((secs - parts).abs() <= frame, "fermi: {secs} vs {parts}");
    // HLS: a master playlist naming the media playlist, which names every segment.
    let master = std::fs::read_to_string(farm.fetch(&key("hls", &ids[3], "master.m3u8")).await)
        .expect("master playlist");
    assert!(master.contains("720p.m3u8"), "{master}");
    let media = std::fs::read_to_string(farm.fetch(&key("hls", &ids[3], "720p.m3u8")).await)
        .expect("media playlist");
    let segments: Vec<&str> = media.lines().filter(|l| l.ends_with(".ts")).collect();
    assert!(!segments.is_empty(), "{media}");
    let stored = farm.output_keys("hls").await;
    for s in segments {
        assert!(
            stored.iter().any(|k| k.ends_with(s)),
            "segment {s} not in {stored:?}"
        );
    }

    let results = farm.drain(&farm.names.results()).await;
    let mut result_ids: Vec<String> = results
        .iter()
        .map(|(body, _)| {
            let r: ResultMessage = serde_json::from_slice(body).expect("a result message");
            assert!(!r.outputs.is_empty());
            r.job_id
        })
        .collect();
    result_ids.sort();
    let mut want = ids.clone();
    want.sort();
    assert_eq!(result_ids, want, "one result message per job");
}

/// Property: the same object submitted twice is one job: the second submit publishes
/// nothing, the job runs once, and one result message is published.
#[tokio::test(flavor = "multi_thread")]
async fn a_duplicate_submission_is_the_same_job_done_once() {
    let mut farm = Farm::new("duplicate", "").await;
    farm.put_file("inbox/a.mp4", &farm.clip("a", 2.0, "testsrc"));
    let first = farm.submit("inbox/a.mp4", "thumbnails");
    let second = farm.submit("inbox/a.mp4", "thumbnails");
    let id = first.split_whitespace().nth(1).expect("an id").to_string();
    assert!(first.starts_with("enqueued"), "{first}");
    assert!(second.starts_with("known"), "{second}");
    assert!(second.contains(&id), "{second}");

    let status = farm.run_cell_until_idle();
    assert!(status.success());
    farm.wait_state(&id, "succeeded", Duration::from_secs(5))
        .await;
    assert_eq!(farm.attempts(&id).await, vec!["succeeded"]);
    assert_eq!(farm.drain(&farm.names.results()).await.len(), 1);
    assert_eq!(farm.output_keys("thumbnails").await.len(), 2);
}
