//! Chunked titles: one long video split into chunks that several real cells encode,
//! joined once, frame for frame the source; a chunk lost to a dead cell or a spot
//! notice is the only thing done again.

mod common;

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use cellfarm::chunk::Plan;
use cellfarm::job::{JobMessage, Part, ResultMessage, SourceObject};
use cellfarm::ledger::{AttemptId, Committed, Ledger};
use common::imds::MetadataServer;
use common::Farm;

/// Lossless chunks (x264 `-qp 0` of yuv420p decodes to the source's very pixels), so
/// that the output can be held to the source frame by frame: 4 s chunks, or scene cuts
/// between 2 and 5 s apart; and a real-time one (a 4 s chunk takes 4 s) for cuts.
const PIPELINES: &str = r#"
[pipelines.lossless]
pool = "default"
output = "s3://cellfarm-demo/outputs/lossless/"
[pipelines.lossless.chunked]
chunk_secs = 4
video = ["-c:v", "libx264", "-preset", "ultrafast", "-qp", "0", "-threads", "{threads}"]

[pipelines.scenes]
pool = "default"
output = "s3://cellfarm-demo/outputs/scenes/"
[pipelines.scenes.chunked]
scenes = { min_secs = 2, max_secs = 5 }
video = ["-c:v", "libx264", "-preset", "ultrafast", "-qp", "0", "-threads", "{threads}"]

[pipelines.slow]
pool = "default"
output = "s3://cellfarm-demo/outputs/slow/"
cost_factor = 1.0
[pipelines.slow.chunked]
chunk_secs = 4
filter = "realtime"
video = ["-c:v", "libx264", "-preset", "ultrafast", "-threads", "{threads}"]
"#;

/// A spot pool on the local cloud with room for one cell: a cell that leaves on a
/// notice is replaced by its last tick.
const SPOT: &str = r#"
[cloud]
kind = "local"
metadata_poll_secs = 1
interruption_margin_secs = 5

[pools.spot]
jobs_per_cell = 10
ceiling = 1
cooldown_secs = 0
idle_grace_secs = 10
launch_timeout_secs = 60

[pipelines.spot]
pool = "spot"
output = "s3://cellfarm-demo/outputs/spot/"
cost_factor = 1.0
[pipelines.spot.chunked]
chunk_secs = 6
filter = "realtime"
video = ["-c:v", "libx264", "-preset", "ultrafast", "-threads", "{threads}"]
"#;

fn ffmpeg(args: &[&str]) {
    let status = Command::new("ffmpeg")
        .args(["-nostdin", "-v", "error", "-y"])
        .args(args)
        .status()
        .expect("ffmpeg is installed");
    assert!(status.success(), "ffmpeg {args:?}");
}

/// `secs` of 320×240 at 25 fps with a tone, and a single keyframe: no stream-copy cut
/// is possible anywhere but the start.
fn one_keyframe_clip(path: &Path, secs: u32) {
    let video = format!("testsrc2=size=320x240:rate=25:duration={secs}");
    let audio = format!("sine=frequency=440:sample_rate=48000:duration={secs}");
    let out = path.to_str().expect("a UTF-8 path");
    ffmpeg(&[
        "-f",
        "lavfi",
        "-i",
        &video,
        "-f",
        "lavfi",
        "-i",
        &audio,
        "-c:v",
        "libx264",
        "-preset",
        "ultrafast",
        "-pix_fmt",
        "yuv420p",
        "-g",
        "100000",
        "-keyint_min",
        "100000",
        "-sc_threshold",
        "0",
        "-c:a",
        "aac",
        out,
    ]);
}

/// Five 3 s scenes of different test patterns, 25 fps, with a tone.
fn scenes_clip(path: &Path) {
    let sources = [
        "testsrc2",
        "smptebars",
        "rgbtestsrc",
        "mandelbrot",
        "testsrc",
    ];
    let mut args: Vec<String> = Vec::new();
    for s in sources {
        args.extend(["-f", "lavfi", "-i"].map(String::from));
        args.push(format!("{s}=size=320x240:rate=25,trim=duration=3"));
    }
    args.extend(
        [
            "-f",
            "lavfi",
            "-i",
            "sine=frequency=330:sample_rate=48000:duration=15",
        ]
        .map(String::from),
    );
    args.extend([
        "-filter_complex".into(),
        "[0:v][1:v][2:v][3:v][4:v]concat=n=5:v=1:a=0,format=yuv420p[v]".into(),
    ]);
    args.extend(
        [
            "-map",
            "[v]",
            "-map",
            "5:a",
            "-c:v",
            "libx264",
            "-preset",
            "ultrafast",
            "-c:a",
            "aac",
        ]
        .map(String::from),
    );
    args.push(path.to_str().expect("a UTF-8 path").into());
    ffmpeg(&args.iter().map(String::as_str).collect::<Vec<_>>());
}

/// The MD5 of each decoded video frame of a file, in order.
fn frame_md5s(path: &Path) -> Vec<String> {
    let out = Command::new("ffmpeg")
        .args(["-nostdin", "-v", "error", "-i"])
        .arg(path)
        .args(["-map", "0:v:0", "-f", "framemd5", "-"])
        .output()
        .expect("ffmpeg is installed");
    assert!(out.status.success(), "decoding {}", path.display());
    cellfarm::chunk::frame_md5s(&String::from_utf8_lossy(&out.stdout))
        .into_iter()
        .map(String::from)
        .collect()
}

/// Decodes with `-xerror`: true when it exits 0 and logs nothing.
fn decodes_cleanly(path: &Path) -> bool {
    let out = Command::new("ffmpeg")
        .args(["-nostdin", "-v", "error", "-xerror", "-i"])
        .arg(path)
        .args(["-f", "null", "-"])
        .output()
        .expect("ffmpeg is installed");
    out.status.success() && out.stderr.is_empty()
}

/// A title's parts: (job id, state, cell, kind, attempts' outcomes).
#[derive(Debug)]
struct PartRow {
    id: String,
    state: String,
    cell: Option<String>,
    kind: String,
    outcomes: Vec<String>,
}

async fn parts(farm: &Farm, title: &str) -> Vec<PartRow> {
    let rows: Vec<(String, String, Option<String>, String)> = sqlx::query_as(
        "SELECT id, state, cell_id, message->'part'->>'kind' FROM jobs WHERE parent = $1
         ORDER BY (message->'part'->>'index')::int NULLS LAST",
    )
    .bind(title)
    .fetch_all(farm.ledger.pool())
    .await
    .expect("query the parts");
    let mut out = Vec::new();
    for (id, state, cell, kind) in rows {
        let outcomes = farm.attempts(&id).await;
        out.push(PartRow {
            id,
            state,
            cell,
            kind,
            outcomes,
        });
    }
    out
}

async fn plan(farm: &Farm, title: &str) -> Plan {
    let plan: serde_json::Value = sqlx::query_scalar("SELECT plan FROM jobs WHERE id = $1")
        .bind(title)
        .fetch_one(farm.ledger.pool())
        .await
        .expect("query the plan");
    serde_json::from_value(plan).expect("a plan")
}

/// The result messages published for `ids`.
async fn results_for(farm: &Farm, ids: &BTreeSet<String>) -> Vec<ResultMessage> {
    farm.drain(&farm.names.results())
        .await
        .into_iter()
        .filter_map(|(body, _)| serde_json::from_slice::<ResultMessage>(&body).ok())
        .filter(|r| ids.contains(&r.job_id))
        .collect()
}

/// Holds a finished title to its source: every part done, the output exactly the
/// source's frames (lossless chunks) and the chunks' frames, decoding cleanly, one
/// result published for the title and none for its parts, the title split once and
/// assembled once.
async fn check_title(farm: &Farm, title: &str, pipeline: &str, source: &Path) -> Vec<PartRow> {
    let parts = parts(farm, title).await;
    assert!(parts.iter().all(|p| p.state == "succeeded"), "{parts:?}");
    let output = format!("outputs/{pipeline}/in/title.mp4/{title}/video.mp4");
    let keys = farm.output_keys(pipeline).await;
    assert!(keys.contains(&output), "{keys:?}");
    let out = farm.fetch(&output).await;
    assert!(decodes_cleanly(&out), "the output decodes without error");
    let source_frames = frame_md5s(source);
    let got = frame_md5s(&out);
    assert_eq!(
        got.len(),
        source_frames.len(),
        "exactly the source's frame count"
    );
    assert!(got == source_frames, "frame for frame the source");
    let mut chunk_frames = Vec::new();
    for key in keys.iter().filter(|k| k.contains("/_chunks/chunk-")) {
        chunk_frames.extend(frame_md5s(&farm.fetch(key).await));
    }
    assert!(got == chunk_frames, "frame for frame the chunks, in order");
    let v = common::video_stream(&common::probe(&out));
    let secs = common::seconds(&v["duration"]);
    let want = source_frames.len() as f64 / 25.0;
    assert!(
        (secs - want).abs() <= 0.04 + 1e-6,
        "{secs} s, the source {want} s"
    );
    assert_eq!(farm.attempts(title).await, vec!["split", "succeeded"]);
    let mut ids: BTreeSet<String> = parts.iter().map(|p| p.id.clone()).collect();
    ids.insert(title.to_string());
    let results = results_for(farm, &ids).await;
    assert_eq!(results.len(), 1, "one result: {results:?}");
    assert_eq!(results[0].job_id, title);
    parts
}

/// Two cells of one slot each, run until the queues are empty.
async fn two_cells_until_done(farm: &mut Farm, title: &str) {
    farm.edit_config(|doc| {
        doc["cell"]["slots"] = toml::Value::Integer(1);
    });
    farm.start_cell(&["--until-idle", "3"]);
    farm.start_cell(&["--until-idle", "3"]);
    farm.wait_state(title, "succeeded", Duration::from_secs(240))
        .await;
}

/// Property: a source with a single keyframe is cut at exact frames into 4 chunks,
/// which two cells encode; the assembled output is exactly the source's frames (no
/// frame lost or doubled at a cut), the chunks' frames, as long as the source, decodes
/// cleanly, and is published once.
#[tokio::test(flavor = "multi_thread")]
async fn a_one_keyframe_title_is_cut_at_exact_frames_and_assembled_once() {
    let mut farm = Farm::new("chunked", PIPELINES).await;
    let source = farm.dir.path().join("title.mp4");
    one_keyframe_clip(&source, 16);
    farm.put_file("in/title.mp4", &source);
    let title = farm.submit_id("in/title.mp4", "lossless");
    two_cells_until_done(&mut farm, &title).await;

    let plan = plan(&farm, &title).await;
    assert_eq!(plan.chunks.len(), 4, "{plan:?}");
    assert_eq!(plan.frames, 400);
    assert!(plan.chunks[1..].iter().all(|c| !c.at_keyframe));
    let parts = check_title(&farm, &title, "lossless", &source).await;
    let kinds: Vec<&str> = parts.iter().map(|p| p.kind.as_str()).collect();
    assert_eq!(
        kinds,
        ["chunk", "chunk", "chunk", "chunk", "audio"],
        "{parts:?}"
    );
    let cells: BTreeSet<_> = parts.iter().filter_map(|p| p.cell.clone()).collect();
    assert!(cells.len() >= 2, "the parts ran on two cells: {parts:?}");
    assert!(
        parts.iter().all(|p| p.outcomes == ["succeeded"]),
        "{parts:?}"
    );
}

/// Property: with scene cuts asked for, chunks start at the source's scene changes
/// (every 3 s here, within the 2–5 s window), and the title is the source frame for
/// frame.
#[tokio::test(flavor = "multi_thread")]
async fn a_title_with_scene_cuts_is_cut_at_its_scenes() {
    let mut farm = Farm::new("scenes", PIPELINES).await;
    let source = farm.dir.path().join("title.mp4");
    scenes_clip(&source);
    farm.put_file("in/title.mp4", &source);
    let title = farm.submit_id("in/title.mp4", "scenes");
    two_cells_until_done(&mut farm, &title).await;

    let plan = plan(&farm, &title).await;
    let starts: Vec<u64> = plan.chunks.iter().map(|c| c.first_frame).collect();
    assert_eq!(starts, vec![0, 75, 150, 225, 300], "{plan:?}");
    check_title(&farm, &title, "scenes", &source).await;
}

/// Waits until a chunk of `title` has run for a second; returns the parts running.
async fn running_parts(farm: &Farm, title: &str) -> BTreeSet<String> {
    farm.wait_until(
        Duration::from_secs(90),
        "a chunk to be encoding",
        || async {
            let n: i64 = sqlx::query_scalar(
                "SELECT count(*) FROM jobs WHERE parent = $1 AND state = 'running'
               AND message->'part'->>'kind' = 'chunk' AND started_at < now() - interval '1 second'",
            )
            .bind(title)
            .fetch_one(farm.ledger.pool())
            .await
            .expect("query the parts");
            n > 0
        },
    )
    .await;
    sqlx::query_scalar("SELECT id FROM jobs WHERE parent = $1 AND state = 'running'")
        .bind(title)
        .fetch_all(farm.ledger.pool())
        .await
        .expect("query the parts")
        .into_iter()
        .collect()
}

/// Property: a cell killed in the middle of a chunk, after it finished another, costs
/// that chunk alone: the parts it held are lost and done again by a new cell (the whole
/// farm restarted), the chunk it finished stands, every other part runs once, and the
/// title is still assembled once, with the source's frames.
#[tokio::test(flavor = "multi_thread")]
async fn a_cell_killed_mid_chunk_costs_that_chunk_alone() {
    let mut farm = Farm::new("chunkkill", PIPELINES).await;
    farm.edit_config(|doc| {
        doc["cell"]["slots"] = toml::Value::Integer(1);
    });
    let source = farm.dir.path().join("title.mp4");
    one_keyframe_clip(&source, 16);
    farm.put_file("in/title.mp4", &source);
    farm.start_cell(&[]);
    let title = farm.submit_id("in/title.mp4", "slow");
    farm.wait_until(Duration::from_secs(90), "a chunk to be done", || async {
        parts(&farm, &title)
            .await
            .iter()
            .any(|p| p.state == "succeeded")
    })
    .await;
    let held = running_parts(&farm, &title).await;
    farm.kill(0);
    farm.start_cell(&["--until-idle", "3"]);
    farm.wait_state(&title, "succeeded", Duration::from_secs(180))
        .await;

    let parts = parts(&farm, &title).await;
    for p in &parts {
        if held.contains(&p.id) {
            assert_eq!(p.outcomes, ["lost", "succeeded"], "{p:?}");
        } else {
            assert_eq!(p.outcomes, ["succeeded"], "{p:?}");
        }
    }
    let cells: BTreeSet<_> = parts.iter().filter_map(|p| p.cell.clone()).collect();
    assert_eq!(
        cells.len(),
        2,
        "the dead cell's finished chunks stand: {parts:?}"
    );
    assert_eq!(farm.attempts(&title).await, vec!["split", "succeeded"]);
    let mut ids: BTreeSet<String> = parts.iter().map(|p| p.id.clone()).collect();
    ids.insert(title.clone());
    assert_eq!(results_for(&farm, &ids).await.len(), 1, "published once");
    let out = farm
        .fetch(&format!("outputs/slow/in/title.mp4/{title}/video.mp4"))
        .await;
    assert_eq!(frame_md5s(&out).len(), 400, "the source's frames");
    assert!(decodes_cleanly(&out));
}

/// How a test spoils the first chunk a title commits.
enum Spoil {
    /// Its object in storage is overwritten.
    Object,
    /// The packet digest its commit recorded no longer matches it (the join would not
    /// be the frames the chunk checked).
    Digest,
}

/// Runs a title on one cell, spoils its first chunk once committed, and checks that the
/// assembly sends that chunk alone back, and then assembles the title once.
async fn spoiled_chunk_is_made_again_alone(test: &str, spoil: Spoil) {
    let mut farm = Farm::new(test, PIPELINES).await;
    farm.edit_config(|doc| {
        doc["cell"]["slots"] = toml::Value::Integer(1);
    });
    let source = farm.dir.path().join("title.mp4");
    one_keyframe_clip(&source, 16);
    farm.put_file("in/title.mp4", &source);
    farm.start_cell(&["--until-idle", "3"]);
    let title = farm.submit_id("in/title.mp4", "slow");
    let first = farm
        .wait_until(
            Duration::from_secs(90),
            "the first chunk to be done",
            || async {
                let parts = parts(&farm, &title).await;
                let done = parts
                    .iter()
                    .find(|p| p.kind == "chunk" && p.state == "succeeded");
                done.map(|p| p.id.clone())
            },
        )
        .await;
    match spoil {
        Spoil::Object => {
            let key = farm.outputs(&first).await.remove(0);
            assert!(key.contains("/_chunks/chunk-"), "{key}");
            farm.put_bytes(&key, b"not the chunk that was committed".to_vec());
        }
        Spoil::Digest => {
            sqlx::query(
                "UPDATE jobs SET result = jsonb_set(result, '{chunk,digest}', '\"0000\"')
                 WHERE id = $1",
            )
            .bind(&first)
            .execute(farm.ledger.pool())
            .await
            .expect("spoil the digest");
        }
    }
    farm.wait_state(&title, "succeeded", Duration::from_secs(180))
        .await;

    let parts = parts(&farm, &title).await;
    for p in &parts {
        let once: &[&str] = if p.id == first {
            &["succeeded", "succeeded"]
        } else {
            &["succeeded"]
        };
        assert_eq!(p.outcomes, once, "{p:?}");
    }
    assert_eq!(farm.attempts(&title).await, ["split", "redo", "succeeded"]);
    let mut ids: BTreeSet<String> = parts.iter().map(|p| p.id.clone()).collect();
    ids.insert(title.clone());
    assert_eq!(results_for(&farm, &ids).await.len(), 1, "published once");
    let out = farm
        .fetch(&format!("outputs/slow/in/title.mp4/{title}/video.mp4"))
        .await;
    assert_eq!(frame_md5s(&out).len(), 400, "the source's frames");
    assert!(decodes_cleanly(&out));
}

/// Property: a chunk whose object is altered after it committed (storage lost or
/// damaged it) is caught by the assembly, before any join, and made again alone; the
/// title is then assembled, once, from the chunk made again.
#[tokio::test(flavor = "multi_thread")]
async fn a_chunk_altered_in_storage_is_made_again_alone() {
    spoiled_chunk_is_made_again_alone("chunkredo", Spoil::Object).await;
}

/// Property: a joined output whose frames in a chunk's range are not the frames that
/// chunk committed is not published: that chunk alone is made again, and the title is
/// assembled once.
#[tokio::test(flavor = "multi_thread")]
async fn a_join_that_is_not_the_chunks_frames_makes_that_chunk_again() {
    spoiled_chunk_is_made_again_alone("chunkdigest", Spoil::Digest).await;
}

/// Property: a spot notice while a chunk cannot finish before the reclaim hands that
/// chunk back (`interrupted`, no attempt spent); the replacement cell the leaving cell
/// launches does it, every other part runs once, and the title is assembled once.
#[tokio::test(flavor = "multi_thread")]
async fn a_spot_notice_mid_chunk_hands_back_that_chunk_alone() {
    let mut farm = Farm::new("chunkspot", SPOT).await;
    farm.edit_config(|doc| {
        doc["cell"]["slots"] = toml::Value::Integer(1);
    });
    let source = farm.dir.path().join("title.mp4");
    one_keyframe_clip(&source, 24);
    farm.put_file("in/title.mp4", &source);
    let imds = MetadataServer::start(&[("instance-id", "i-0chunks")]);
    farm.start_cell_with_env(&["--pool", "spot"], &[("CELLFARM_METADATA_URL", &imds.url)]);
    let title = farm.submit_id("in/title.mp4", "spot");
    let held = running_parts(&farm, &title).await;
    // 8 s to the reclaim less the 5 s margin: 3 s, and a 6 s chunk needs about 5 more.
    let at = (chrono::Utc::now() + chrono::Duration::seconds(8))
        .to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    imds.set(
        "spot/instance-action",
        &format!(r#"{{"action": "terminate", "time": "{at}"}}"#),
    );
    let noticed = Instant::now();
    farm.wait_exit(0, Duration::from_secs(20), "the noticed cell to leave")
        .await;
    eprintln!("notice -> cell gone: {:?}", noticed.elapsed());
    farm.wait_state(&title, "succeeded", Duration::from_secs(240))
        .await;

    let parts = parts(&farm, &title).await;
    let handed: Vec<&PartRow> = parts.iter().filter(|p| p.outcomes.len() > 1).collect();
    assert!(
        !handed.is_empty(),
        "the running chunk was handed back: {parts:?}"
    );
    for p in &parts {
        if p.outcomes.len() > 1 {
            assert!(
                held.contains(&p.id),
                "only a part held at the notice: {p:?}"
            );
            assert_eq!(p.outcomes, ["interrupted", "succeeded"], "{p:?}");
        } else {
            assert_eq!(p.outcomes, ["succeeded"], "{p:?}");
        }
    }
    assert_eq!(farm.attempts(&title).await, vec!["split", "succeeded"]);
    let mut ids: BTreeSet<String> = parts.iter().map(|p| p.id.clone()).collect();
    ids.insert(title.clone());
    assert_eq!(results_for(&farm, &ids).await.len(), 1, "published once");
    assert_eq!(farm.cell_events("interruption").await.len(), 1);
}

/// Property: when a title's last two parts commit at the same moment, on two cells,
/// exactly one commit hands the title on to be assembled (never none, never both), in
/// each of 25 races.
#[tokio::test(flavor = "multi_thread")]
async fn the_last_two_parts_committed_at_once_assemble_once() {
    let farm = Farm::new("chunkrace", "").await;
    let ledger = &farm.ledger;
    let lease = Duration::from_secs(60);
    for round in 0..25 {
        let (title, children) = split_title(ledger, &format!("e{round}")).await;
        let one = claim(ledger, &children[0], "cell-1", lease).await;
        let two = claim(ledger, &children[1], "cell-2", lease).await;
        let (r1, r2) = (result(&children[0], &one), result(&children[1], &two));
        let (c1, c2) = tokio::join!(
            ledger.succeed(&one, &r1, lease),
            ledger.succeed(&two, &r2, lease)
        );
        let (c1, c2) = (c1.expect("commit"), c2.expect("commit"));
        assert!(c1.held && c2.held);
        let handed = [&c1, &c2].iter().filter(|c| c.assemble.is_some()).count();
        assert_eq!(handed, 1, "round {round}: {c1:?} {c2:?}");
        let state = farm.job(&title.job_id).await.expect("the title").0;
        assert_eq!(state, "queued", "the title waits to be assembled");
    }
}

async fn claim(ledger: &Ledger, job: &JobMessage, cell: &str, lease: Duration) -> AttemptId {
    match ledger
        .claim(job, "default", cell, lease, 3)
        .await
        .expect("claim")
    {
        cellfarm::ledger::Claim::Run { attempt, .. } => AttemptId {
            job_id: job.job_id.clone(),
            attempt,
            cell_id: cell.into(),
        },
        other => panic!("cannot claim {}: {other:?}", job.job_id),
    }
}

fn result(job: &JobMessage, a: &AttemptId) -> ResultMessage {
    ResultMessage {
        v: 1,
        job_id: job.job_id.clone(),
        pipeline: job.pipeline.clone(),
        source: job.source.clone(),
        outputs: Vec::new(),
        manifest: None,
        attempt: a.attempt as u32,
        cell_id: a.cell_id.clone(),
        warnings: Vec::new(),
        defects: Vec::new(),
        chunk: None,
    }
}

/// A title of pipeline `race` (source version `etag`) split into a chunk and its audio.
async fn split_title(ledger: &Ledger, etag: &str) -> (JobMessage, [JobMessage; 2]) {
    let source = SourceObject {
        bucket: "in".into(),
        key: "title.mp4".into(),
        etag: etag.into(),
    };
    let title = JobMessage::new("race", source, "s3://out/race/", false);
    ledger.insert(&title, "default").await.expect("insert");
    let children = resplit(ledger, &title).await.1;
    (title, children)
}

/// Claims `title` and splits it (again) into the same two parts.
async fn resplit(ledger: &Ledger, title: &JobMessage) -> (Committed, [JobMessage; 2]) {
    let a = claim(ledger, title, "cell-split", Duration::from_secs(60)).await;
    let chunk = cellfarm::chunk::Chunk {
        index: 0,
        of: 1,
        first_frame: 0,
        frames: 25,
        seek: 0.0,
        secs: 1.0,
        at_keyframe: true,
    };
    let children = [
        title.child(Part::Chunk(chunk), 1.0),
        title.child(Part::Audio, 0.1),
    ];
    let plan = serde_json::json!({"chunks": []});
    let committed = ledger.split(&a, &plan, &children).await.expect("split");
    assert!(committed.held);
    (committed, children)
}

/// Property: a title that failed (one part failed for good) and is retried keeps the
/// parts it made: its split again makes only the part that failed, and when every part
/// is already made, the split hands the title straight to its assembly.
#[tokio::test(flavor = "multi_thread")]
async fn a_retried_title_keeps_the_parts_it_made() {
    let farm = Farm::new("chunkretry", "").await;
    let ledger = &farm.ledger;
    let lease = Duration::from_secs(60);
    let (title, [chunk, audio]) = split_title(ledger, "e1").await;
    let made = claim(ledger, &chunk, "cell-1", lease).await;
    assert!(
        ledger
            .succeed(&made, &result(&chunk, &made), lease)
            .await
            .expect("commit")
            .held
    );
    let broken = claim(ledger, &audio, "cell-2", lease).await;
    let failed = cellfarm::ledger::JobState::Failed;
    ledger
        .fail(&broken, failed, "no audio")
        .await
        .expect("fail");
    let (state, _, error) = farm.job(&title.job_id).await.expect("the title");
    assert_eq!(state, "failed");
    assert!(error.unwrap_or_default().contains("no audio"));

    ledger
        .reopen(&title.job_id)
        .await
        .expect("reopen")
        .expect("a failed title reopens");
    let (again, _) = resplit(ledger, &title).await;
    assert!(again.assemble.is_none(), "the audio is still to make");
    assert_eq!(
        farm.attempts(&chunk.job_id).await,
        ["succeeded"],
        "the chunk is kept"
    );
    assert_eq!(
        farm.job(&audio.job_id).await.expect("the audio").0,
        "queued"
    );
    let redo = claim(ledger, &audio, "cell-3", lease).await;
    let last = ledger
        .succeed(&redo, &result(&audio, &redo), lease)
        .await
        .expect("commit");
    assert_eq!(last.assemble.map(|m| m.job_id), Some(title.job_id.clone()));

    // Every part made, then the assembly failed: split again (a cell of an older
    // build, say), the title goes straight to its assembly.
    let (t, _) = split_title(ledger, "e2").await;
    for part in ledger.parts(&t.job_id).await.expect("parts") {
        let a = claim(ledger, &part.message, "cell-4", lease).await;
        ledger
            .succeed(&a, &result(&part.message, &a), lease)
            .await
            .expect("commit");
    }
    let id = claim(ledger, &t, "cell-5", lease).await;
    ledger
        .fail(&id, failed, "the join failed")
        .await
        .expect("fail");
    ledger
        .reopen(&t.job_id)
        .await
        .expect("reopen")
        .expect("reopens");
    let (again, _) = resplit(ledger, &t).await;
    assert_eq!(again.assemble.map(|m| m.job_id), Some(t.job_id));
}
