//! Odd source keys, end to end: where their outputs go, and that nothing goes elsewhere.

mod common;

use std::collections::BTreeSet;

use cellfarm::outkey::{self, Vars};
use cellfarm::s3url::S3Url;
use cellfarm::store::ObjectStore;
use common::{env, Farm};
use sha2::{Digest, Sha256};

/// The output prefix of the `thumbnails` pipeline in the example config.
const PREFIX: &str = "outputs/thumbnails/";

/// Source keys, each with how it appears in its outputs' keys.
const ODD: &[(&str, &str)] = &[
    ("odd/with space.mp4", "odd/with space.mp4"),
    ("odd/ünïcødé ✓.mp4", "odd/ünïcødé ✓.mp4"),
    ("odd/semi;colon.mp4", "odd/semi;colon.mp4"),
    ("odd/$(touch pwned).mp4", "odd/$(touch pwned).mp4"),
    ("-leading-dash.mp4", "%2Dleading-dash.mp4"),
    ("odd/-rf.mp4", "odd/%2Drf.mp4"),
    ("odd/../../escape.mp4", "odd/%2E%2E/%2E%2E/escape.mp4"),
    ("odd/./dot.mp4", "odd/%2E/dot.mp4"),
    ("odd/a+b.mp4", "odd/a+b.mp4"),
    ("odd/a%2Bb.mp4", "odd/a%2Bb.mp4"),
];

/// A 1000-byte key of 101-byte segments.
fn long_key() -> String {
    let segment = format!("{}/", "0123456789".repeat(10));
    let mut key = format!("long/{}", segment.repeat(10));
    key.truncate(996);
    key.push_str(".mp4");
    assert_eq!(key.len(), 1000);
    key
}

/// Property: sources with odd keys (a space, unicode, `;`, `$()`, a leading `-`, `..`
/// and `.` segments, `+` and `%2B`, a 1000-byte key) each give their outputs at exactly
/// `outputs/thumbnails/<key, escaped per segment>/<job id>/<name>` (a key too long is cut
/// and marked with its hash), and nothing is written outside the output prefix: the
/// bucket holds the sources, the farm's assets and those outputs, nothing else.
/// `cellfarm jobs --source … --json` names each job's outputs.
///
/// On moto's S3, not s3s-fs: s3s-fs keeps objects as files, so it resolves a `..`
/// segment (`odd/../x.mp4` lands at `x.mp4`) and cannot store keys much over 100 bytes
/// (it names a metadata file after the key in base64); S3 keeps both as they are.
#[tokio::test(flavor = "multi_thread")]
async fn odd_keys_give_outputs_under_their_names_and_nowhere_else() {
    // The only test in this binary, so no other test reads the variable; moto_server
    // (the tests' EC2 API) serves S3 on the same port.
    std::env::set_var(
        "CELLFARM_TEST_S3",
        env("CELLFARM_TEST_EC2", "http://127.0.0.1:5000"),
    );
    let mut farm = Farm::new("oddkeys", "").await;
    let clip = farm.clip("clip", 1.0, "testsrc2");
    let long = long_key();
    let mut sources: Vec<(String, String)> = ODD
        .iter()
        .map(|(k, e)| (k.to_string(), e.to_string()))
        .collect();
    sources.push((long.clone(), String::new()));
    let mut jobs = Vec::new();
    for (key, _) in &sources {
        farm.put_file(key, &clip);
        jobs.push(farm.submit_id(key, "thumbnails"));
    }

    assert!(farm.run_cell_until_idle().success(), "{}", farm.logs());
    assert!(
        !std::path::Path::new("pwned").exists(),
        "a key was run as a command"
    );

    let mut expected: BTreeSet<String> = ["assets/intro.mp4", "assets/outro.mp4"]
        .iter()
        .map(|k| k.to_string())
        .collect();
    for ((key, escaped), id) in sources.iter().zip(&jobs) {
        let (state, _, error) = farm.job(id).await.expect("a ledger row");
        assert_eq!(state, "succeeded", "{key}: {error:?}\n{}", farm.logs());
        let prefix = if key == &long {
            long_prefix(&farm, &long, id)
        } else {
            format!("{PREFIX}{escaped}/{id}/")
        };
        let want: Vec<String> = ["contact.jpg", "poster.jpg"]
            .iter()
            .map(|name| format!("{prefix}{name}"))
            .collect();
        let mut got = farm.outputs(id).await;
        got.sort();
        assert_eq!(got, want, "{key}");
        check_listing(&farm, key, id, &want, &prefix);
        expected.insert(key.clone());
        expected.extend(want);
        expected.insert(cellfarm::outkey::manifest_key(&prefix));
    }
    let stored: BTreeSet<String> = farm
        .store
        .list(&farm.bucket, "")
        .await
        .expect("list the bucket")
        .into_iter()
        .map(|o| o.key)
        .collect();
    assert_eq!(
        stored, expected,
        "the bucket holds the sources, the assets, the outputs and their manifests, nothing else"
    );
}

/// The long key's prefix: the key cut, `~`, 8 hex digits of its SHA-256, the job id; as
/// the farm's own expansion gives it.
fn long_prefix(farm: &Farm, long: &str, id: &str) -> String {
    let template = &farm
        .config
        .pipeline("thumbnails")
        .expect("thumbnails")
        .output;
    let vars = Vars {
        source_key: long,
        pipeline: "thumbnails",
        job_id: id,
    };
    let prefix = outkey::expand(template, &vars).expect("expands").key;
    let hash = hex::encode(Sha256::digest(long.as_bytes()));
    let cut = prefix
        .strip_prefix(PREFIX)
        .and_then(|p| p.strip_suffix(&format!("~{}/{id}/", &hash[..8])))
        .unwrap_or_else(|| panic!("{prefix}"));
    assert!(long.starts_with(cut) && cut.len() >= 600, "{cut}");
    assert!(prefix.len() <= outkey::MAX_PREFIX_BYTES, "{}", prefix.len());
    prefix
}

/// `cellfarm jobs --source s3://bucket/<key> --json` names the job and its outputs.
fn check_listing(farm: &Farm, key: &str, id: &str, outputs: &[String], prefix: &str) {
    let source = S3Url {
        bucket: farm.bucket.clone(),
        key: key.into(),
    };
    let out = farm.run(&["jobs", "--source", &source.to_string(), "--json"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let listed: serde_json::Value = serde_json::from_slice(&out.stdout).expect("a JSON array");
    let listed = listed.as_array().expect("an array");
    assert_eq!(listed.len(), 1, "{key}: {listed:?}");
    let job = &listed[0];
    assert_eq!(job["job_id"], id);
    assert_eq!(job["state"], "succeeded");
    let url = |k: &str| format!("s3://{}/{k}", farm.bucket);
    let want: Vec<String> = outputs.iter().map(|k| url(k)).collect();
    let mut got: Vec<String> = job["outputs"]
        .as_array()
        .expect("outputs")
        .iter()
        .map(|o| o.as_str().unwrap_or_default().to_string())
        .collect();
    got.sort();
    assert_eq!(got, want, "{key}");
    assert_eq!(job["manifest"], url(&format!("{prefix}_manifest.json")));
}
