//! Times one file through the store four ways: uploaded by one PUT and by a multipart
//! upload, downloaded by one GET and by parallel ranges. Run by
//! `scripts/bench-multipart.sh`, which makes the file, compares the downloads with it
//! and prints the ratios.
//!
//!   bench_multipart FILE BUCKET PART_SIZE_MIB CONCURRENCY
//!
//! Prints `<way> <seconds>` lines; the downloads land next to FILE as `FILE.get` and
//! `FILE.ranged`. The S3 server is `CELLFARM_TEST_S3` (s3s-fs by default).

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::Context;
use cellfarm::config::S3;
use cellfarm::store::{ObjectStore, S3Store};

/// The two stores under test: one whose part size exceeds the file (so one request
/// each way), one with the part size given.
async fn stores(size: u64, part_size_mib: u64, concurrency: usize) -> (S3Store, S3Store) {
    let cfg = S3 {
        endpoint: Some(std::env::var("CELLFARM_TEST_S3").unwrap_or("http://127.0.0.1:8014".into())),
        region: Some("us-east-1".into()),
        path_style: true,
        part_size_mib,
        concurrency,
    };
    let whole = S3 {
        part_size_mib: (size >> 20) + 1,
        ..cfg.clone()
    };
    (S3Store::connect(&whole).await, S3Store::connect(&cfg).await)
}

/// Runs `f` once; prints and returns its wall time.
async fn timed<F: std::future::Future<Output = anyhow::Result<()>>>(
    way: &str,
    f: F,
) -> anyhow::Result<()> {
    let start = Instant::now();
    f.await.with_context(|| way.to_string())?;
    println!("{way} {:.2}", start.elapsed().as_secs_f64());
    Ok(())
}

fn with_suffix(path: &Path, suffix: &str) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(suffix);
    name.into()
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [file, bucket, part_size_mib, concurrency] = args.as_slice() else {
        anyhow::bail!("usage: bench_multipart FILE BUCKET PART_SIZE_MIB CONCURRENCY");
    };
    let file = Path::new(file);
    let size = std::fs::metadata(file).context("the file")?.len();
    let (whole, parts) = stores(size, part_size_mib.parse()?, concurrency.parse()?).await;
    // Already there from an earlier run is fine; any other failure shows at the PUT.
    let _ = whole.client().create_bucket().bucket(bucket).send().await;

    let (single, multi) = ("bench/single", "bench/multipart");
    timed("put_single", async {
        Ok(whole.upload(bucket, single, file, None).await?)
    })
    .await?;
    timed("put_multipart", async {
        Ok(parts.upload(bucket, multi, file, None).await?)
    })
    .await?;
    let etag = whole.head(bucket, multi).await?.etag;
    anyhow::ensure!(etag.contains('-'), "{multi} has no multipart ETag: {etag}");
    let get = with_suffix(file, ".get");
    timed("get_single", async {
        whole.download(bucket, single, None, &get).await?;
        Ok(())
    })
    .await?;
    let ranged = with_suffix(file, ".ranged");
    timed("get_ranged", async {
        parts.download(bucket, multi, Some(&etag), &ranged).await?;
        Ok(())
    })
    .await?;
    for key in [single, multi] {
        whole
            .client()
            .delete_object()
            .bucket(bucket)
            .key(key)
            .send()
            .await?;
    }
    Ok(())
}
