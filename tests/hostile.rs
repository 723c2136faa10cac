//! Untrusted uploads: playlists and lists disguised as videos, and object keys that
//! would be dangerous as shell words or paths.

mod common;

use std::io::Read;
use std::net::TcpListener;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use common::{make_clip, Farm};

/// Property: an HLS playlist or a concat list uploaded as `.mp4` cannot make FFmpeg read
/// a local file (`/etc/passwd`, another job's media) or open a network connection: each
/// such job fails, nothing connects to the listener, and no output is published.
#[tokio::test(flavor = "multi_thread")]
async fn disguised_playlists_read_no_file_and_reach_no_network() {
    let mut farm = Farm::new("hostile", "").await;
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let connections = Arc::new(AtomicUsize::new(0));
    let seen = connections.clone();
    listener.set_nonblocking(false).expect("blocking");
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            seen.fetch_add(1, Ordering::SeqCst);
            let mut buf = [0u8; 512];
            let _ = (&stream).read(&mut buf);
        }
    });
    // An HLS segment another job is writing. With the protocol whitelist alone, a
    // playlist naming it "succeeds" with someone else's video (checked by hand with
    // FFmpeg 5.1); the demuxer allow-list is what stops it.
    let dir = farm.dir.path().join("scratch/other-job/out");
    std::fs::create_dir_all(&dir).expect("mkdir");
    let mp4 = dir.join("clip.mp4");
    make_clip(&mp4, 1.0, "testsrc");
    let other = dir.join("720p_000.ts");
    let remux = std::process::Command::new("ffmpeg")
        .args(["-nostdin", "-loglevel", "error", "-y", "-i"])
        .arg(&mp4)
        .args(["-c", "copy", "-f", "mpegts"])
        .arg(&other)
        .status()
        .expect("ffmpeg");
    assert!(remux.success());
    let other = other.display();

    let hostile = [
        ("hls-passwd", "#EXTM3U\n#EXT-X-TARGETDURATION:10\n#EXTINF:10,\n/etc/passwd\n#EXT-X-ENDLIST\n".to_string()),
        ("hls-other-job", format!("#EXTM3U\n#EXT-X-TARGETDURATION:10\n#EXTINF:1,\n{other}\n#EXT-X-ENDLIST\n")),
        ("hls-network", format!("#EXTM3U\n#EXT-X-TARGETDURATION:10\n#EXTINF:10,\nhttp://127.0.0.1:{port}/seg.ts\n#EXT-X-ENDLIST\n")),
        ("concat-passwd", "ffconcat version 1.0\nfile '/etc/passwd'\n".to_string()),
        ("concat-other-job", format!("ffconcat version 1.0\nfile '{other}'\n")),
        ("concat-network", format!("ffconcat version 1.0\nfile 'http://127.0.0.1:{port}/a.ts'\n")),
    ];
    let mut ids = Vec::new();
    for (name, body) in &hostile {
        let key = format!("inbox/{name}.mp4");
        farm.put_bytes(&key, body.clone().into_bytes());
        ids.push((name, farm.submit_id(&key, "thumbnails")));
    }

    assert!(farm.run_cell_until_idle().success(), "{}", farm.logs());

    for (name, id) in &ids {
        let (state, _, error) = farm.job(id).await.expect("a row");
        assert_eq!(state, "failed", "{name} must fail: {error:?}");
    }
    assert_eq!(
        connections.load(Ordering::SeqCst),
        0,
        "FFmpeg reached the network"
    );
    assert!(
        farm.output_keys("thumbnails").await.is_empty(),
        "no output from hostile input"
    );
}

/// Property: object keys are data, never arguments or paths: keys with spaces, unicode,
/// `;`, `$(…)`, `..` and a leading `-` are processed like any other.
#[tokio::test(flavor = "multi_thread")]
async fn odd_object_keys_are_processed_like_any_other() {
    let mut farm = Farm::new("keys", "").await;
    let clip = farm.clip("clip", 1.0, "testsrc2");
    let keys = [
        "inbox/with space.mp4",
        "inbox/ünïcødé ✓.mp4",
        "inbox/semi;colon.mp4",
        "inbox/$(touch pwned).mp4",
        "inbox/..dots...mp4",
        "-leading-dash.mp4",
        "inbox/-rf.mp4",
    ];
    let mut ids = Vec::new();
    for key in keys {
        farm.put_file(key, &clip);
        ids.push((key, farm.submit_id(key, "thumbnails")));
    }

    assert!(farm.run_cell_until_idle().success(), "{}", farm.logs());

    for (key, id) in &ids {
        let (state, _, error) = farm.job(id).await.expect("a row");
        assert_eq!(state, "succeeded", "{key}: {error:?}\n{}", farm.logs());
    }
    assert!(
        !std::path::Path::new("pwned").exists(),
        "a key was run as a command"
    );
    assert_eq!(farm.output_keys("thumbnails").await.len(), 2 * keys.len());
}
