//! The FFmpeg sandbox against a decoder taken over by its source: a stand-in for
//! `ffmpeg` (tests/common/hostile_ffmpeg.rs) that tries what an attacker would.

mod common;

use std::io::Read;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use common::imds::MetadataServer;
use common::Farm;

/// A pipeline whose one step makes the stand-in attack; `TARGETS` is filled in by the
/// test once it knows its addresses and paths.
const HOSTILE: &str = r#"
[pipelines.exploited]
pool = "default"
output = "s3://cellfarm-demo/outputs/exploited/"
steps = [{ args = ["-i", "{input}", "-hostile", "TARGETS", "{out}/x.mp4"] }]
outputs = [{ path = "x.mp4" }]
"#;

/// Builds the stand-in into a directory of its own: Landlock lets FFmpeg read the
/// directory its program is in, which must hold nothing else.
fn build_stand_in(dir: &Path) -> PathBuf {
    let bin = dir.join("bin");
    std::fs::create_dir_all(&bin).expect("mkdir");
    let out = bin.join("ffmpeg");
    let source = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/common/hostile_ffmpeg.rs");
    let status = std::process::Command::new("rustc")
        .args(["--edition", "2021", "-o"])
        .arg(&out)
        .arg(&source)
        .status()
        .expect("rustc is on PATH");
    assert!(status.success(), "building the stand-in");
    out
}

/// A loopback listener that counts the connections it accepts.
fn listener() -> (String, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr").to_string();
    let connections = Arc::new(AtomicUsize::new(0));
    let seen = connections.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            seen.fetch_add(1, Ordering::SeqCst);
            let _ = (&stream).read(&mut [0u8; 64]);
        }
    });
    (addr, connections)
}

/// Another job's source in this farm's scratch directory, as a cell leaves it while
/// that job runs: owned by the user FFmpeg runs as.
fn other_jobs_input(scratch: &Path) -> PathBuf {
    let dir = scratch.join("other-job-1-cell/in");
    std::fs::create_dir_all(&dir).expect("mkdir");
    let input = dir.join("source");
    std::fs::write(&input, b"someone else's video").expect("write");
    if rustix::process::geteuid().is_root() {
        for p in [dir.parent().expect("the attempt dir"), &dir, &input] {
            std::os::unix::fs::chown(p, Some(65534), Some(65534)).expect("chown");
        }
    }
    input
}

/// Property: a decoder taken over by its source gets nothing. The stand-in connects to
/// no listener, metadata server, broker or database; reads neither `/etc/shadow`, the
/// cell's config, another job's input, nor the cell's environment; writes nothing
/// outside its scratch directory; sees no environment variable (the cell has S3
/// credentials in its own); cannot start 1000 tasks or reserve 16 GiB. Its job fails
/// with the stand-in's own report as the reason, the listener saw no connection, and
/// the same cell goes on to succeed with a normal job.
#[tokio::test(flavor = "multi_thread")]
async fn a_taken_over_decoder_reaches_nothing_and_the_cell_goes_on() {
    let mut farm = Farm::new("sandbox", HOSTILE).await;
    let ffmpeg = build_stand_in(farm.dir.path());
    let (listener, connections) = listener();
    let imds = MetadataServer::start(&[("instance-id", "i-0sandbox")]);
    let other = other_jobs_input(&farm.dir.path().join("scratch"));
    let escape = std::env::temp_dir().join(format!("cellfarm-escape-{}", rand::random::<u32>()));
    let targets = format!(
        "listener={listener},imds={},config={},other={},escape={}",
        imds.url.trim_start_matches("http://").trim_end_matches('/'),
        farm.config_path.display(),
        other.display(),
        escape.display()
    );
    let text = std::fs::read_to_string(&farm.config_path).expect("config");
    std::fs::write(&farm.config_path, text.replace("TARGETS", &targets)).expect("config");
    farm.edit_config(|doc| {
        common::edit::add(doc, "cell.ffmpeg", ffmpeg.display().to_string());
    });
    let clip = farm.clip("clip", 1.0, "testsrc2");
    farm.put_file("inbox/exploit.mp4", &clip);
    farm.put_file("inbox/normal.mp4", &clip);
    let exploited = farm.submit_id("inbox/exploit.mp4", "exploited");
    let normal = farm.submit_id("inbox/normal.mp4", "thumbnails");

    // The cell has the farm's S3 credentials (scripts/env.sh) and a metadata address in
    // its environment: the stand-in must see neither.
    assert!(
        std::env::var_os("AWS_SECRET_ACCESS_KEY").is_some(),
        "run through scripts/env.sh"
    );
    let status = farm.run_cell_with_env(
        &["--until-idle", "2"],
        &[("CELLFARM_METADATA_URL", imds.url.as_str())],
        std::time::Duration::from_secs(300),
    );
    assert!(status.success(), "{}", farm.logs());

    let (state, _, error) = farm.job(&exploited).await.expect("a row");
    let error = error.unwrap_or_default();
    assert_eq!(state, "failed", "{error}\n{}", farm.logs());
    assert!(
        error.contains("hostile decoder achieved: none"),
        "the stand-in got something: {error}"
    );
    assert!(!error.contains("ACHIEVED"), "{error}");
    for tried in [
        "blocked read config",
        "blocked read other job",
        "blocked read cell environ",
        "blocked write outside scratch",
        "blocked environment: empty",
        "blocked fork: stopped after",
        "blocked allocate",
    ] {
        assert!(
            error.contains(tried),
            "{tried} is not in the report: {error}"
        );
    }
    assert_eq!(
        connections.load(Ordering::SeqCst),
        0,
        "the listener was reached"
    );
    assert!(!escape.exists(), "the stand-in wrote {}", escape.display());
    let (state, _, error) = farm.job(&normal).await.expect("a row");
    assert_eq!(state, "succeeded", "{error:?}\n{}", farm.logs());
}
