//! Defect detectors: one decode pass finds black, frozen and silent stretches and
//! damaged bytes, each with its time range, and the pipeline's policy decides.

mod common;

use std::path::Path;
use std::process::Command;

use common::Farm;

/// Every detector flags; one pass over the source, one over the output.
const PIPELINES: &str = r#"
[pipelines.lenient]
pool = "default"
output = "s3://cellfarm-demo/outputs/lenient/"
steps = [
  { detect = { decode_errors = "flag" } },
  { args = ["-i", "{input}", "-c:v", "libx264", "-preset", "ultrafast", "-c:a", "aac", "{out}/out.mp4"] },
  { detect = { input = "{out}/out.mp4", decode_errors = "flag" } },
]
outputs = [{ path = "out.mp4", video_codec = "h264" }]

[pipelines.strict]
pool = "default"
output = "s3://cellfarm-demo/outputs/strict/"
steps = [
  { detect = { decode_errors = "ignore", black = "reject" } },
  { args = ["-i", "{input}", "-c:v", "libx264", "-preset", "ultrafast", "-c:a", "aac", "{out}/out.mp4"] },
]
outputs = [{ path = "out.mp4", video_codec = "h264" }]

[pipelines.inside]
pool = "default"
output = "s3://cellfarm-demo/outputs/inside/"
steps = [
  { args = ["-i", "{input}", "-map", "0:v:0", "-map", "0:a:0", "-c:v", "libx264", "-preset", "ultrafast", "-c:a", "aac", "{out}/out.mp4"], detect = { decode_errors = "flag" } },
]
outputs = [{ path = "out.mp4", video_codec = "h264" }]

[pipelines.inside_strict]
pool = "default"
output = "s3://cellfarm-demo/outputs/inside_strict/"
steps = [
  { args = ["-i", "{input}", "-c:v", "libx264", "-preset", "ultrafast", "-c:a", "aac", "{out}/out.mp4"], detect = { decode_errors = "ignore", freeze = "reject" } },
]
outputs = [{ path = "out.mp4", video_codec = "h264" }]
"#;

/// A 10 s clip: picture 0–2 s, black 2–4 s, a frozen frame 4–6 s, picture to the end;
/// a tone with silence 6–8 s; bytes overwritten in the last tenth of its media data.
fn defective_clip(path: &Path) {
    let made = Command::new("ffmpeg")
        .args(["-nostdin", "-v", "error", "-y"])
        .args(["-f", "lavfi", "-i", "testsrc2=s=320x240:r=25:d=2"])
        .args(["-f", "lavfi", "-i", "color=c=black:s=320x240:r=25:d=2"])
        .args(["-f", "lavfi", "-i"])
        .arg("testsrc2=s=320x240:r=25:d=0.04,loop=loop=49:size=1:start=0,setpts=N/25/TB")
        .args(["-f", "lavfi", "-i", "testsrc2=s=320x240:r=25:d=4"])
        .args(["-f", "lavfi", "-i", "sine=f=440:r=48000:d=6"])
        .args(["-f", "lavfi", "-i", "anullsrc=r=48000:cl=mono:d=2"])
        .args(["-f", "lavfi", "-i", "sine=f=440:r=48000:d=2"])
        .args(["-filter_complex"])
        .arg("[0:v][1:v][2:v][3:v]concat=n=4:v=1:a=0[v];[4:a][5:a][6:a]concat=n=3:v=0:a=1[a]")
        .args([
            "-map",
            "[v]",
            "-map",
            "[a]",
            "-c:v",
            "libx264",
            "-preset",
            "ultrafast",
        ])
        .args(["-g", "25", "-c:a", "aac"])
        .arg(path)
        .status()
        .expect("ffmpeg is installed");
    assert!(made.success());
    let mut bytes = std::fs::read(path).expect("the clip");
    let find = |tag: &[u8]| bytes.windows(4).position(|w| w == tag).expect("an MP4 box");
    let (mdat, moov) = (find(b"mdat"), find(b"moov"));
    assert!(mdat < moov, "the media data comes first (no faststart)");
    let span = moov - mdat;
    let mut x: u32 = 12345;
    for at in (mdat + span * 88 / 100..mdat + span * 97 / 100).step_by(97) {
        x = x.wrapping_mul(1_103_515_245).wrapping_add(12345);
        bytes[at] = (x >> 16) as u8;
    }
    std::fs::write(path, bytes).expect("write the clip");
}

/// The defects of one kind in a report: (start, end).
fn ranges(report: &serde_json::Value, kind: &str) -> Vec<(f64, f64)> {
    report["defects"]
        .as_array()
        .expect("a list of defects")
        .iter()
        .filter(|d| d["kind"] == kind)
        .filter_map(|d| Some((d["start"].as_f64()?, d["end"].as_f64()?)))
        .collect()
}

fn near(got: (f64, f64), want: (f64, f64), slack: f64, what: &str) {
    assert!(
        (got.0 - want.0).abs() <= slack && (got.1 - want.1).abs() <= slack,
        "{what}: {got:?}, expected {want:?} ± {slack}"
    );
}

/// Property: on a made clip with 2 s black, 2 s frozen, 2 s silence and a damaged tail,
/// each defect is found once with its time range (the black stretch is not also
/// reported frozen); a flagging pipeline succeeds with each in its result's warnings, in
/// the manifest and in a JSON report beside the outputs; a rejecting one fails naming
/// the defect and its range, and publishes nothing; a clean source reports nothing.
#[tokio::test(flavor = "multi_thread")]
async fn detectors_find_each_defect_and_the_policy_decides() {
    let farm = Farm::new("detect", PIPELINES).await;
    let defective = farm.dir.path().join("defects.mp4");
    defective_clip(&defective);
    farm.put_file("inbox/defects.mp4", &defective);
    let clean = farm.clip("clean", 4.0, "testsrc2");
    farm.put_file("inbox/clean.mp4", &clean);
    let flagged = farm.submit_id("inbox/defects.mp4", "lenient");
    let rejected = farm.submit_id("inbox/defects.mp4", "strict");
    let fine = farm.submit_id("inbox/clean.mp4", "lenient");
    let mut farm = farm;
    assert!(farm.run_cell_until_idle().success(), "{}", farm.logs());

    flagged_defects_succeed_with_warnings(&farm, &flagged).await;
    let (state, attempts, error) = farm.job(&rejected).await.expect("a row");
    let error = error.unwrap_or_default();
    assert_eq!((state.as_str(), attempts), ("failed", 1), "{error}");
    assert!(
        error.contains("source: black picture from 2.00 s to 4.00 s")
            && error.contains("pipelines.strict.steps[0].detect.black = \"reject\""),
        "{error}"
    );
    assert!(
        farm.output_keys("strict").await.is_empty()
            && farm.manifest_keys("strict").await.is_empty(),
        "a rejected source publishes nothing"
    );
    let (state, _, error) = farm.job(&fine).await.expect("a row");
    assert_eq!(state, "succeeded", "{error:?}");
    let result = result(&farm, &fine).await;
    assert!(result.get("warnings").is_none(), "{result}");
    for report in result["defects"].as_array().expect("reports") {
        assert_eq!(report["defects"], serde_json::json!([]), "{report}");
    }
}

/// The result message the ledger holds for a job.
async fn result(farm: &Farm, id: &str) -> serde_json::Value {
    sqlx::query_scalar("SELECT result FROM jobs WHERE id = $1")
        .bind(id)
        .fetch_one(farm.ledger.pool())
        .await
        .expect("the result")
}

/// An object of the farm's bucket, as JSON.
async fn json_object(farm: &Farm, key: &str) -> serde_json::Value {
    let bytes = std::fs::read(farm.fetch(key).await).expect("fetched");
    serde_json::from_slice(&bytes).expect("JSON")
}

/// The flagging pipeline's job on the defective clip: succeeded, each defect in its
/// source report once with its time range, in the warnings, and beside the outputs.
async fn flagged_defects_succeed_with_warnings(farm: &Farm, id: &str) {
    let (state, _, error) = farm.job(id).await.expect("a row");
    assert_eq!(state, "succeeded", "{error:?}\n{}", farm.logs());
    let result = result(farm, id).await;
    let source = &result["defects"][0];
    assert_eq!(source["file"], "source");
    assert_eq!(ranges(source, "black").len(), 1, "{source}");
    near(ranges(source, "black")[0], (2.0, 4.0), 0.05, "black");
    let freeze = ranges(source, "freeze");
    assert_eq!(freeze.len(), 1, "black is not also frozen: {source}");
    near(freeze[0], (4.0, 6.04), 0.1, "freeze");
    assert_eq!(ranges(source, "silence").len(), 1, "{source}");
    near(ranges(source, "silence")[0], (6.0, 8.0), 0.05, "silence");
    let errors = ranges(source, "decode_errors");
    assert_eq!(errors.len(), 1, "{source}");
    assert!(
        errors[0].0 >= 7.5 && errors[0].1 <= 10.5,
        "the damage is in the last tenth: {errors:?}"
    );
    for (start, _) in ranges(source, "truncated") {
        assert!(start >= 7.5, "frames lost only to the damage: {source}");
    }
    let warnings: Vec<&str> = result["warnings"]
        .as_array()
        .expect("warnings")
        .iter()
        .filter_map(|w| w.as_str())
        .collect();
    assert!(
        warnings.contains(&"source: black picture from 2.00 s to 4.00 s"),
        "{warnings:?}"
    );
    assert_eq!(result["defects"][1]["file"], "out.mp4", "the output's pass");
    let prefix = format!("outputs/lenient/inbox/defects.mp4/{id}");
    let written = json_object(farm, &format!("{prefix}/_defects/source.json")).await;
    assert_eq!(
        &written, source,
        "the report beside the outputs is the ledger's"
    );
    let manifest = json_object(farm, &format!("{prefix}/_manifest.json")).await;
    assert_eq!(manifest["warnings"], result["warnings"]);
    assert_eq!(
        manifest["defects"][0]["key"],
        format!("{prefix}/_defects/source.json")
    );
}

/// Property: detectors inside the encode's own graph (one decode for both) find what a
/// separate pass finds, each defect with the same time range, and their policy decides
/// the same way: flagged, the job succeeds with the report beside its output; rejected,
/// it fails naming the defect and publishes nothing.
#[tokio::test(flavor = "multi_thread")]
async fn detectors_inside_the_encode_find_what_a_pass_finds() {
    let mut farm = Farm::new("detectin", PIPELINES).await;
    let defective = farm.dir.path().join("defects.mp4");
    defective_clip(&defective);
    farm.put_file("inbox/defects.mp4", &defective);
    let pass = farm.submit_id("inbox/defects.mp4", "lenient");
    let inside = farm.submit_id("inbox/defects.mp4", "inside");
    let rejected = farm.submit_id("inbox/defects.mp4", "inside_strict");
    assert!(farm.run_cell_until_idle().success(), "{}", farm.logs());

    let (state, _, error) = farm.job(&inside).await.expect("a row");
    assert_eq!(state, "succeeded", "{error:?}");
    let by_pass = result(&farm, &pass).await["defects"][0].clone();
    let by_inside = result(&farm, &inside).await["defects"][0].clone();
    assert_eq!(by_inside["file"], "source");
    for kind in ["black", "freeze", "silence", "decode_errors"] {
        let (a, b) = (ranges(&by_pass, kind), ranges(&by_inside, kind));
        assert_eq!(a.len(), b.len(), "{kind}: {by_pass} against {by_inside}");
        for (a, b) in a.iter().zip(&b) {
            near(*b, *a, 0.1, kind);
        }
    }
    assert_eq!(
        by_inside["frames"], by_pass["frames"],
        "the same frames decoded"
    );
    let prefix = format!("outputs/inside/inbox/defects.mp4/{inside}");
    let written = json_object(&farm, &format!("{prefix}/_defects/source.json")).await;
    assert_eq!(written, by_inside);

    let (state, _, error) = farm.job(&rejected).await.expect("a row");
    let error = error.unwrap_or_default();
    assert_eq!(state, "failed", "{error}");
    assert!(
        error.contains("source: frozen picture from 4.")
            && error.contains("pipelines.inside_strict.steps[0].detect.freeze = \"reject\""),
        "{error}"
    );
    assert!(farm.output_keys("inside_strict").await.is_empty());
}
