//! Faults of the farm's own S3 cost time, not work: through an S3 endpoint that answers
//! a fixed share of requests with `500 InternalError` (tests/common/faulty_s3.rs), every
//! job still succeeds once, no attempt is spent and nothing is encoded twice, and a
//! prefix submit enqueues what it can read and names what it could not.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use cellfarm::config::S3;
use cellfarm::job::ResultMessage;
use cellfarm::store::{ObjectStore, S3Store, StoreError};
use common::faulty_s3::{Faults, FaultyS3};
use common::{edit, env, Farm};

/// Objects under the prefix, one in four of them flaky: HEAD fails for these.
const OBJECTS: usize = 8;

async fn store_at(endpoint: &str) -> S3Store {
    S3Store::connect(&S3 {
        endpoint: Some(endpoint.to_string()),
        region: Some("us-east-1".into()),
        path_style: true,
        ..S3::default()
    })
    .await
}

/// Property: the proxy forwards requests unchanged when it injects no fault (PUT, HEAD
/// and GET through it succeed, with the bytes put), and a request it fails is answered
/// `HTTP 500 InternalError` (HEAD: `HTTP 500`, a HEAD answer has no body) and never
/// reaches S3.
#[tokio::test(flavor = "multi_thread")]
async fn the_proxy_forwards_requests_or_fails_them_as_told() {
    let direct = store_at(&env("CELLFARM_TEST_S3", "http://127.0.0.1:8014")).await;
    let bucket = format!("cf-faulty-s3-{}", rand::random::<u32>());
    direct
        .client()
        .create_bucket()
        .bucket(&bucket)
        .send()
        .await
        .expect("create a bucket (is s3s-fs running? scripts/services.sh)");
    let proxy = FaultyS3::start(Faults::none());
    let store = store_at(&proxy.url).await;
    let file = tempfile::NamedTempFile::new().expect("a temp file");
    let bytes: Vec<u8> = (0..3_000_000).map(|_| rand::random::<u8>()).collect();
    std::fs::write(file.path(), &bytes).expect("write");

    store
        .upload(&bucket, "a.bin", file.path(), None)
        .await
        .expect("a PUT through the proxy");
    let meta = store
        .head(&bucket, "a.bin")
        .await
        .expect("a HEAD through the proxy");
    assert_eq!(meta.size, bytes.len() as u64);
    let got = store
        .get_bytes(&bucket, "a.bin")
        .await
        .expect("a GET through the proxy");
    assert!(got == bytes, "the GET returns the bytes put");
    let forwarded = proxy.counts();
    assert!(forwarded.failed.is_empty(), "{forwarded:?}");
    for method in ["PUT", "HEAD", "GET"] {
        assert!(forwarded.forwarded(method) > 0, "{method}: {forwarded:?}");
    }

    proxy.set(Faults::on(&[], 1, 1));
    let put = store.upload(&bucket, "b.bin", file.path(), None).await;
    let get = store.get_bytes(&bucket, "a.bin").await;
    let head = store.head(&bucket, "a.bin").await;
    for (what, e, says) in [
        ("PUT", put.err(), "HTTP 500 InternalError"),
        ("GET", get.err(), "HTTP 500 InternalError"),
        ("HEAD", head.err(), "HTTP 500"),
    ] {
        let e = e.unwrap_or_else(|| panic!("{what} succeeded through a proxy failing all"));
        assert!(e.to_string().contains(says), "{what}: {e}");
    }
    let counts = proxy.counts();
    assert_eq!(
        counts.forwarded, forwarded.forwarded,
        "nothing more forwarded"
    );
    for method in ["PUT", "HEAD", "GET"] {
        assert!(counts.failed(method) > 0, "{method}: {counts:?}");
    }
    assert!(
        matches!(
            direct.head(&bucket, "b.bin").await,
            Err(StoreError::NotFound { .. })
        ),
        "a failed PUT never reached S3"
    );
}

/// The job ids a submit printed, by source URL.
fn job_ids(stdout: &str) -> BTreeMap<String, String> {
    stdout
        .lines()
        .filter_map(|l| {
            let fields: Vec<&str> = l.split_whitespace().collect();
            match fields[..] {
                [outcome, id, _, source] if ["enqueued", "known"].contains(&outcome) => {
                    Some((source.to_string(), id.to_string()))
                }
                _ => None,
            }
        })
        .collect()
}

/// Submits everything under `inbox/` through the proxy, which fails HEAD for the
/// flaky objects, again until every object is enqueued; checks each run names exactly
/// the objects it could not read and fails. Returns the job ids.
fn submit_through_faults(farm: &Farm, proxy: &FaultyS3, flaky: &[String]) -> Vec<String> {
    proxy.set(Faults::on(&["HEAD"], 3, 4).paths_containing("/flaky-"));
    let prefix = format!("s3://{}/inbox/", farm.bucket);
    let mut ids = BTreeMap::new();
    for run in 1.. {
        let out = farm.run(&["submit", "--prefix", &prefix, "--pipeline", "thumbnails"]);
        let stdout = String::from_utf8_lossy(&out.stdout).to_string();
        let stderr = String::from_utf8_lossy(&out.stderr).to_string();
        let printed = job_ids(&stdout);
        let unread: Vec<&String> = flaky.iter().filter(|u| !printed.contains_key(*u)).collect();
        ids.extend(printed);
        if unread.is_empty() {
            assert!(out.status.success(), "{stdout}{stderr}");
            break;
        }
        assert!(
            run < 5,
            "the flaky objects are never read: {stdout}{stderr}"
        );
        assert!(!out.status.success(), "{stdout}{stderr}");
        for u in &unread {
            let line = stderr.lines().find(|l| l.contains(&format!("{u}:")));
            let line = line.unwrap_or_else(|| panic!("{u} is not reported: {stderr}"));
            assert!(line.contains("HTTP 500"), "{line}");
        }
        let want = format!(
            "{} of {OBJECTS} objects could not be submitted",
            unread.len()
        );
        assert!(stderr.contains(&want), "{stderr}");
    }
    assert!(proxy.counts().failed("HEAD") > 0, "{:?}", proxy.counts());
    assert_eq!(ids.len(), OBJECTS, "{ids:?}");
    ids.into_values().collect()
}

/// Every attempt of the farm's jobs: (job id, outcome, error).
async fn attempt_rows(farm: &Farm) -> Vec<(String, String, Option<String>)> {
    sqlx::query_as("SELECT job_id, coalesce(outcome, 'open'), error FROM job_attempts ORDER BY id")
        .fetch_all(farm.ledger.pool())
        .await
        .expect("query job_attempts")
}

/// Property: through an S3 endpoint that fails a fixed share of HEAD, GET and PUT
/// requests with 500, a prefix submit names the objects it could not read and exits
/// non-zero while enqueuing the rest, and a second submit enqueues those; then every
/// job succeeds exactly once (one result message each), no attempt is spent on S3's
/// faults (`attempts` is 1; the attempts S3 ended are `fault`), and no attempt ended on
/// an upload fault, so no finished encode was thrown away and done again.
#[tokio::test(flavor = "multi_thread")]
async fn s3_faults_cost_time_not_attempts_nor_encodes() {
    let mut farm = Farm::new("s3-faults", "").await;
    let proxy = FaultyS3::start(Faults::none());
    farm.edit_config(|doc| edit::set(doc, "s3.endpoint", proxy.url.as_str()));
    let clip = farm.clip("clip", 1.0, "testsrc");
    let mut flaky = Vec::new();
    for i in 0..OBJECTS {
        let key = match i % 4 {
            1 => format!("inbox/flaky-{i}.mp4"),
            _ => format!("inbox/clip-{i}.mp4"),
        };
        farm.put_file(&key, &clip);
        if key.contains("flaky") {
            flaky.push(format!("s3://{}/{key}", farm.bucket));
        }
    }
    let ids = submit_through_faults(&farm, &proxy, &flaky);

    proxy.set(Faults::on(&["GET", "PUT"], 3, 4));
    let status = farm.run_cell_with_env(&["--until-idle", "5"], &[], Duration::from_secs(600));
    assert!(status.success(), "{}", farm.logs());

    let counts = proxy.counts();
    assert!(
        counts.failed("PUT") > 0 && counts.failed("GET") > 0,
        "the proxy failed no GET or PUT: {counts:?}"
    );
    let rows = attempt_rows(&farm).await;
    for id in &ids {
        let (state, attempts, error) = farm.job(id).await.expect("a row");
        let tried: Vec<_> = rows.iter().filter(|r| &r.0 == id).collect();
        assert_eq!(
            state,
            "succeeded",
            "{id}: {error:?} {tried:?}\n{}",
            farm.logs()
        );
        assert_eq!(attempts, 1, "{id}: S3's faults spent an attempt: {tried:?}");
        let outcomes: Vec<&str> = tried.iter().map(|r| r.1.as_str()).collect();
        let (last, before) = outcomes.split_last().expect("an attempt");
        assert!(
            *last == "succeeded" && before.iter().all(|o| *o == "fault"),
            "{id}: {tried:?}"
        );
    }
    let uploads_lost: Vec<_> = rows
        .iter()
        .filter(|r| r.2.as_deref().is_some_and(|e| e.contains("S3 PUT")))
        .collect();
    assert!(
        uploads_lost.is_empty(),
        "an upload fault ended an attempt, its encode was done again: {uploads_lost:?}"
    );
    let mut results: Vec<String> = farm
        .drain(&farm.names.results())
        .await
        .iter()
        .map(|(body, _)| {
            let r: ResultMessage = serde_json::from_slice(body).expect("a result message");
            r.job_id
        })
        .collect();
    results.sort();
    let mut want = ids.clone();
    want.sort();
    assert_eq!(results, want, "one result message per job");
    assert!(farm.drain(&farm.names.dead("default")).await.is_empty());
}
