//! The trigger: new objects become jobs by the config's routes, through `cellfarm watch`
//! (polling s3s-fs) and through the real binary as a Lambda custom runtime (`bootstrap`)
//! fed by a test runtime API on loopback.

mod common;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::lambda_api::RuntimeApi;
use common::Farm;
use serde_json::{json, Value};

/// Routes: `urgent/` to the priority lane; `.mp4` under `in/` to the `short` pool when
/// it lasts under 5 s, to `long` (two pipelines) otherwise; anything else matches none.
const ROUTES: &str = r#"
[pools.short]
ceiling = 1
idle_grace_secs = 2
cooldown_secs = 0

[pools.long]

[[routes]]
name = "urgent"
prefix = "urgent/"
pipelines = ["thumbnails"]
priority = true

[[routes]]
name = "short"
prefix = "in/"
glob = "**.mp4"
max_secs = 5
pool = "short"
pipelines = ["thumbnails"]

[[routes]]
name = "long"
prefix = "in/"
glob = "**.mp4"
min_secs = 5
pool = "long"
pipelines = ["thumbnails", "h264_ladder"]
"#;

/// (pool, pipeline, key) of every job, sorted.
async fn jobs(farm: &Farm) -> Vec<(String, String, String)> {
    sqlx::query_as("SELECT pool, pipeline, source_key FROM jobs ORDER BY 1, 2, 3")
        .fetch_all(farm.ledger.pool())
        .await
        .expect("query jobs")
}

/// A 12 s MPEG-4 clip of about 20 MB with its index (`moov`) at the end, as FFmpeg
/// writes by default: the ranged probe must read both ends to find its duration.
fn big_clip(path: &Path) {
    let status = Command::new("ffmpeg")
        .args(["-nostdin", "-loglevel", "error", "-y", "-f", "lavfi", "-i"])
        .arg("testsrc2=size=1280x720:rate=25")
        .args(["-t", "12", "-c:v", "mpeg4", "-q:v", "1", "-f", "mp4"])
        .arg(path)
        .status()
        .expect("ffmpeg");
    assert!(status.success());
    let size = std::fs::metadata(path).expect("clip").len();
    assert!(
        size > 8 << 20,
        "the clip must be larger than both probe ranges ({size} B)"
    );
}

async fn wait_jobs(farm: &Farm, n: usize, timeout: Duration) {
    let what = format!("{n} jobs in the ledger");
    farm.wait_until(timeout, what, || async { jobs(farm).await.len() >= n })
        .await
}

/// Property: routing is by prefix, glob and duration (a ranged probe of both ends of the
/// object): a short clip lands in the `short` pool, a long one in `long` with both its
/// pipelines, an `urgent/` upload on the priority lane, and an object no route matches
/// becomes no job.
#[tokio::test(flavor = "multi_thread")]
async fn routes_send_short_and_long_inputs_to_their_pools_and_urgent_ones_first() {
    let farm = Farm::new("routes", ROUTES).await;
    farm.put_file("urgent/u.mp4", &farm.clip("u", 1.0, "testsrc"));
    farm.put_file("in/short.mp4", &farm.clip("short", 2.0, "testsrc"));
    let long = farm.dir.path().join("long.mp4");
    big_clip(&long);
    farm.put_file("in/long.mp4", &long);
    farm.put_bytes("in/notes.txt", b"not a video".to_vec());

    let url = format!("s3://{}/", farm.bucket);
    let out = farm.run(&["watch", &url, "--reconcile"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(said.contains("4 job(s) enqueued"), "{said}");

    let s = |a: &str, b: &str, c: &str| (a.to_string(), b.to_string(), c.to_string());
    assert_eq!(
        jobs(&farm).await,
        vec![
            s("default", "thumbnails", "urgent/u.mp4"),
            s("long", "h264_ladder", "in/long.mp4"),
            s("long", "thumbnails", "in/long.mp4"),
            s("short", "thumbnails", "in/short.mp4"),
        ]
    );
    assert_eq!(farm.drain(&farm.names.priority("default")).await.len(), 1);
    assert_eq!(farm.drain(&farm.names.work("default")).await.len(), 0);
    assert_eq!(farm.drain(&farm.names.work("short")).await.len(), 1);
    assert_eq!(farm.drain(&farm.names.work("long")).await.len(), 2);

    // A second pass finds nothing new.
    let out = farm.run(&["watch", &url, "--reconcile"]);
    assert!(String::from_utf8_lossy(&out.stdout).contains("0 taken, 0 job(s) enqueued"));
}

/// Property: objects dropped while `watch` runs each become exactly one job, across a
/// restart (SIGKILL) of the watcher: the ledger remembers what it took.
#[tokio::test(flavor = "multi_thread")]
async fn watch_takes_each_new_object_once_across_a_restart() {
    let mut farm = Farm::new("watch", ROUTES).await;
    let clip = farm.clip("clip", 1.0, "testsrc");
    let url = format!("s3://{}/in/", farm.bucket);
    let watch = |farm: &Farm| {
        let mut cmd = farm.cellfarm();
        cmd.args(["watch", &url, "--interval", "1"]);
        cmd
    };
    let first = farm.start(watch(&farm));
    farm.put_file("in/a.mp4", &clip);
    farm.put_file("in/b.mp4", &clip);
    wait_jobs(&farm, 2, Duration::from_secs(60)).await;
    // Kill it once it has taken both objects (remembered after their publishes): a kill
    // between a job's row and its publish is another property (a job with no message).
    let taken = || async {
        let n: i64 = sqlx::query_scalar("SELECT count(*) FROM trigger_objects")
            .fetch_one(farm.ledger.pool())
            .await
            .expect("count taken objects");
        n >= 2
    };
    farm.wait_until(Duration::from_secs(30), "both objects taken", taken)
        .await;
    farm.kill(first);

    farm.put_file("in/c.mp4", &clip);
    let second = farm.start(watch(&farm));
    wait_jobs(&farm, 3, Duration::from_secs(60)).await;
    // A few more passes of the new watcher, and of nothing else.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(jobs(&farm).await.len(), 3);
    assert_eq!(
        farm.drain(&farm.names.work("short")).await.len(),
        3,
        "each object enqueued once"
    );
    // The new watcher asked the ledger about the three objects once, on its first pass,
    // and about none on the passes after it: a pass does not re-read what it has taken.
    let log = std::fs::read_to_string(farm.dir.path().join(format!("cell{second}.log")))
        .expect("the second watcher's log");
    let passes: Vec<&str> = log.lines().filter(|l| l.contains("watch pass")).collect();
    assert_eq!(passes.len(), 1, "{log}");
    assert!(passes[0].contains("looked_up=3"), "{log}");
}

/// (ETag, size) of an object.
async fn head(farm: &Farm, key: &str) -> (String, u64) {
    use cellfarm::store::ObjectStore;
    let meta = farm.store.head(&farm.bucket, key).await.expect("head");
    (meta.etag, meta.size)
}

fn record(bucket: &str, key: &str, (etag, size): (&str, u64), sequencer: &str) -> Value {
    json!({
        "eventVersion": "2.1", "eventSource": "aws:s3", "awsRegion": "us-east-1",
        "eventTime": "2026-11-23T10:00:00.000Z", "eventName": "ObjectCreated:Put",
        "userIdentity": { "principalId": "AWS:AIDAEXAMPLE" },
        "requestParameters": { "sourceIPAddress": "127.0.0.1" },
        "responseElements": { "x-amz-request-id": "C3D13FE58DE4C810", "x-amz-id-2": "FMyUVURIY8" },
        "s3": {
            "s3SchemaVersion": "1.0", "configurationId": "cellfarm-trigger",
            "bucket": { "name": bucket, "ownerIdentity": { "principalId": "A3NL1KOZZKExample" },
                        "arn": format!("arn:aws:s3:::{bucket}") },
            "object": { "key": key, "size": size, "eTag": etag, "sequencer": sequencer }
        }
    })
}

fn outcomes(answer: &Value) -> Vec<String> {
    answer["records"]
        .as_array()
        .map(|r| {
            r.iter()
                .map(|r| r["outcome"].as_str().unwrap_or("?").to_string())
                .collect()
        })
        .unwrap_or_default()
}

/// Property: the real binary as a Lambda `bootstrap` turns S3 events into jobs: keys are
/// URL-decoded (`+` a space, `%2B` a plus), a repeated record is the same job, a key no
/// route matches and a malformed record fail only themselves, `s3:TestEvent` is
/// ignored, a stale event (an older upload's, by sequencer) makes no job; the trigger's
/// tick starts a farm at zero cells, which then does the work.
#[tokio::test(flavor = "multi_thread")]
// One scenario read top to bottom: splitting it would hide the order its steps rely on.
#[allow(clippy::too_many_lines)]
async fn the_lambda_turns_s3_events_into_jobs_once_and_starts_the_farm() {
    let mut farm = Farm::new("lambda", &format!("[cloud]\nkind = \"local\"\n{ROUTES}")).await;
    let clip = farm.clip("clip", 1.0, "testsrc");
    farm.put_file("in/my clip+1.mp4", &clip);
    let (clip_etag, clip_size) = head(&farm, "in/my clip+1.mp4").await;
    farm.put_file("in/v.mp4", &clip);
    let v1 = head(&farm, "in/v.mp4").await;
    farm.put_file("in/v.mp4", &farm.clip("clip2", 2.0, "testsrc"));
    let v2 = head(&farm, "in/v.mp4").await;
    assert_ne!(v1, v2);

    let api = RuntimeApi::start();
    let bootstrap = farm.dir.path().join("bootstrap");
    std::os::unix::fs::symlink(env!("CARGO_BIN_EXE_cellfarm"), &bootstrap).expect("symlink");
    let mut cmd = Command::new(&bootstrap);
    cmd.env("CELLFARM_CONFIG", &farm.config_path)
        .env("AWS_LAMBDA_RUNTIME_API", &api.address)
        .env("AWS_LAMBDA_FUNCTION_NAME", "cellfarm-trigger")
        .env("AWS_LAMBDA_FUNCTION_MEMORY_SIZE", "256")
        .env("AWS_LAMBDA_FUNCTION_VERSION", "$LATEST");
    farm.start(cmd);

    let b = farm.bucket.clone();
    let quoted = format!("\"{clip_etag}\"");
    api.invoke(
        "req-1",
        json!({ "Records": [
            record(&b, "in/my+clip%2B1.mp4", (&quoted, clip_size), "0055AED6DCD90281E5"),
            record(&b, "in/my+clip%2B1.mp4", (&quoted, clip_size), "0055AED6DCD90281E5"),
            record(&b, "other/x.mp4", (&quoted, clip_size), "0055AED6DCD90281E6"),
            { "eventName": "ObjectCreated:Put", "s3": 5 },
        ]}),
    );
    api.invoke(
        "req-2",
        json!({ "Service": "Amazon S3", "Event": "s3:TestEvent", "Bucket": b }),
    );
    api.invoke(
        "req-3",
        json!({ "Records": [
            record(&b, "in/v.mp4", (&v2.0, v2.1), "0000000000000000B0"),
            record(&b, "in/v.mp4", (&v1.0, v1.1), "0000000000000000A0"),
        ]}),
    );

    let wait = Duration::from_secs(60);
    let a1 = api
        .answer("req-1", wait)
        .unwrap_or_else(|| panic!("no answer:\n{}", farm.logs()));
    assert_eq!(a1.kind, "response", "{:?}", a1.body);
    assert_eq!(
        outcomes(&a1.body),
        ["routed", "routed", "unrouted", "malformed"]
    );
    assert_eq!(a1.body["records"][0]["key"], "in/my clip+1.mp4");
    assert_eq!(a1.body["records"][0]["jobs"][0]["outcome"], "enqueued");
    assert_eq!(a1.body["records"][1]["jobs"][0]["outcome"], "known");
    let a2 = api.answer("req-2", wait).expect("an answer");
    assert_eq!(a2.kind, "response");
    assert_eq!(outcomes(&a2.body), Vec::<String>::new());
    let a3 = api.answer("req-3", wait).expect("an answer");
    assert_eq!(outcomes(&a3.body), ["routed", "stale"]);

    let s = |k: &str| ("short".to_string(), "thumbnails".to_string(), k.to_string());
    assert_eq!(
        jobs(&farm).await,
        vec![s("in/my clip+1.mp4"), s("in/v.mp4")]
    );
    let etags: Vec<String> =
        sqlx::query_scalar("SELECT source_etag FROM jobs WHERE source_key = 'in/v.mp4'")
            .fetch_all(farm.ledger.pool())
            .await
            .expect("query");
    assert_eq!(etags, vec![v2.0], "the newer upload is the job");

    // Zero to one: the trigger's tick launched a cell, which does both jobs.
    let ids: Vec<String> = sqlx::query_scalar("SELECT id FROM jobs")
        .fetch_all(farm.ledger.pool())
        .await
        .expect("query");
    for id in &ids {
        farm.wait_state(id, "succeeded", Duration::from_secs(120))
            .await;
    }
    let launchers: Vec<String> = farm
        .cell_events("launch")
        .await
        .into_iter()
        .map(|e| e.cell_id)
        .collect();
    assert_eq!(launchers, ["trigger"]);
}
