//! Large files through the object store: an output larger than the part size goes up as
//! a multipart upload and a source larger than it comes down as parallel byte ranges,
//! both byte for byte; a failed multipart upload leaves no parts behind.

mod common;

use std::path::Path;

use cellfarm::config::S3;
use cellfarm::store::{ObjectStore, S3Store, StoreError};
use cellfarm::update::sha256_file;
use common::{env, Farm};
use rand::RngCore;

/// S3's smallest part but the last, and the smallest `s3.part_size_mib`.
const PART_MIB: u64 = 5;

/// A file of `mib` MiB and `extra` bytes of random data (incompressible, and no part
/// alike).
fn random_file(path: &Path, mib: u64, extra: usize) {
    let mut bytes = vec![0u8; (mib << 20) as usize + extra];
    rand::thread_rng().fill_bytes(&mut bytes);
    std::fs::write(path, bytes).expect("write the random file");
}

/// Property: with 5 MiB parts, a 13 MiB file uploaded through the store is one object
/// of its size made of three parts (ETag `"<hex>-3"`), kept its content type, and
/// downloaded through the store (by ranges) it has the file's SHA-256; a download with
/// another ETag fails with `Changed`.
#[tokio::test(flavor = "multi_thread")]
async fn a_multipart_output_and_a_ranged_source_round_trip() {
    let farm = Farm::new("multipart", "").await;
    let store = S3Store::connect(&S3 {
        part_size_mib: PART_MIB,
        concurrency: 3,
        ..farm.config.s3.clone()
    })
    .await;
    let up = farm.dir.path().join("up.bin");
    random_file(&up, 13, 12_345);
    let size = std::fs::metadata(&up).expect("stat").len();

    store
        .upload(&farm.bucket, "big/out.bin", &up, Some("video/mp4"))
        .await
        .expect("the multipart upload");
    let head = store
        .client()
        .head_object()
        .bucket(&farm.bucket)
        .key("big/out.bin")
        .send()
        .await
        .expect("HEAD the uploaded object");
    assert_eq!(head.content_length(), Some(size as i64));
    assert_eq!(head.content_type(), Some("video/mp4"));
    let etag = head.e_tag().expect("an ETag").to_string();
    let (hex, parts) = etag
        .trim_matches('"')
        .split_once('-')
        .unwrap_or_else(|| panic!("{etag} is not a multipart ETag"));
    assert_eq!(parts, "3", "{etag}");
    assert!(
        hex.len() == 32 && hex.chars().all(|c| c.is_ascii_hexdigit()),
        "{etag}"
    );

    let down = farm.dir.path().join("down.bin");
    let got = store
        .download(&farm.bucket, "big/out.bin", Some(&etag), &down)
        .await
        .expect("the ranged download");
    assert_eq!(got, size);
    assert_eq!(sha256_file(&down).unwrap(), sha256_file(&up).unwrap());

    let stale = store
        .download(
            &farm.bucket,
            "big/out.bin",
            Some("0123456789abcdef-3"),
            &down,
        )
        .await;
    assert!(
        matches!(stale, Err(StoreError::Changed { .. })),
        "{stale:?}"
    );
}

/// Property: when a multipart upload fails after its parts were stored (here the server
/// refuses to complete it: parts of 1 MiB, which the config refuses, are below S3's
/// minimum), the upload is aborted: the bucket lists no multipart upload in progress,
/// and no object. An upload to a missing bucket fails with `NotFound`, of a directory
/// with `Local`. Run on moto: s3s-fs does not implement ListMultipartUploads, and
/// creates a missing bucket on a multipart upload.
#[tokio::test(flavor = "multi_thread")]
async fn a_failed_multipart_upload_leaves_no_parts() {
    let dir = tempfile::tempdir().expect("a temp dir");
    let store = S3Store::connect(&S3 {
        endpoint: Some(env("CELLFARM_TEST_EC2", "http://127.0.0.1:5000")),
        region: Some("us-east-1".into()),
        path_style: true,
        part_size_mib: 1,
        concurrency: 2,
    })
    .await;
    let bucket = format!("cf-multipart-abort-{}", rand::random::<u32>());
    let client = store.client();
    client
        .create_bucket()
        .bucket(&bucket)
        .send()
        .await
        .expect("create a bucket on moto (is it running? scripts/services.sh)");
    let file = dir.path().join("three-parts.bin");
    random_file(&file, 2, 1000);

    let failed = store.upload(&bucket, "out.bin", &file, None).await;
    assert!(
        matches!(failed, Err(StoreError::Failed { .. })),
        "{failed:?}"
    );
    let uploads = client
        .list_multipart_uploads()
        .bucket(&bucket)
        .send()
        .await
        .expect("ListMultipartUploads");
    assert!(uploads.uploads().is_empty(), "{:?}", uploads.uploads());
    let object = store.head(&bucket, "out.bin").await;
    assert!(
        matches!(object, Err(StoreError::NotFound { .. })),
        "{object:?}"
    );

    let missing = format!("{bucket}-missing");
    let no_bucket = store.upload(&missing, "out.bin", &file, None).await;
    assert!(
        matches!(no_bucket, Err(StoreError::NotFound { .. })),
        "{no_bucket:?}"
    );
    let not_a_file = store.upload(&bucket, "out.bin", dir.path(), None).await;
    assert!(
        matches!(not_a_file, Err(StoreError::Local { .. })),
        "{not_a_file:?}"
    );
}
