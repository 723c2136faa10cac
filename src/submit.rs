//! `cellfarm submit`: enqueue objects as jobs, by hand or for reprocessing.
//!
//! The ledger row is written first: a job id it already knows is not published again
//! (the same upload submitted twice is one job), unless `force` asks to reprocess a
//! finished job.

use std::time::Duration;

use futures_util::StreamExt;

use crate::boot::Systems;
use crate::config::Config;
use crate::ffmpeg::{probe, Limits};
use crate::job::{JobMessage, SourceObject};
use crate::ledger::{Ledger, SubmitOutcome};
use crate::outkey;
use crate::queue::{Names, Publisher};
use crate::s3url::S3Url;
use crate::store::{ObjectMeta, ObjectStore};

/// Bytes read from each end of an object for the ranged probe: enough for an MP4 `moov`
/// at either end, a Matroska header, or the first and last timestamps of a TS.
const PROBE_BYTES: u64 = 4 << 20;
/// Ranged probes run at once by `submit --prefix`.
const PROBES_AT_ONCE: usize = 8;

/// An object to enqueue, and its duration when a ranged probe could tell.
#[derive(Debug, Clone, PartialEq)]
pub struct Source {
    pub meta: ObjectMeta,
    pub duration_secs: Option<f64>,
}

/// What happened to one object.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Submitted {
    pub job_id: String,
    pub source: String,
    pub pipeline: String,
    pub outcome: SubmitOutcome,
}

/// `cellfarm submit`: what to enqueue, and how to print it.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The object, s3://bucket/key.
    #[arg(value_parser = S3Url::parse, required_unless_present = "prefix")]
    pub url: Option<S3Url>,
    /// Every object under s3://bucket/prefix/ (reprocessing on demand).
    #[arg(long, value_parser = S3Url::parse, conflicts_with = "url")]
    pub prefix: Option<S3Url>,
    #[arg(long)]
    pub pipeline: String,
    /// Put the jobs on the priority lane.
    #[arg(long)]
    pub priority: bool,
    /// Reprocess jobs that already finished.
    #[arg(long)]
    pub force: bool,
    #[arg(long)]
    pub json: bool,
}

/// Enqueues the objects `args` names, prints what became of each, and runs one mitosis
/// tick for the pipeline's pool so that a farm with no cell starts itself.
/// `location` is this process's `--config`, which launched cells are started with.
pub async fn run(
    config: &Config,
    location: &str,
    sdk: &aws_config::SdkConfig,
    args: Args,
) -> anyhow::Result<()> {
    let pool = &config.pipeline(&args.pipeline)?.pool;
    let systems = Systems::connect(config, sdk)
        .await?
        .with_cloud(config, location, "submit", None)?;
    let broker = crate::boot::broker(config).await?;
    let req = Request {
        pipeline: &args.pipeline,
        pool: None,
        priority: args.priority,
        force: args.force,
    };
    let (url, prefix) = match (&args.url, &args.prefix) {
        (Some(url), None) => (url, false),
        (None, Some(url)) => (url, true),
        _ => anyhow::bail!("give an object URL or --prefix s3://bucket/prefix/"),
    };
    let bucket = &url.bucket;
    let store = systems.store.as_ref();
    let objects = probed(config, store, bucket, objects(store, url, prefix).await?).await;
    let done = submit(
        config,
        &systems.ledger,
        broker.publisher(),
        bucket,
        &objects,
        &req,
    )
    .await?;
    systems.kick(config, &broker, "submit", [pool]).await;
    broker.close("done").await;
    for s in &done {
        if args.json {
            println!("{}", serde_json::to_string(s)?);
        } else {
            println!("{:<9} {} {} {}", s.outcome, s.job_id, s.pipeline, s.source);
        }
    }
    if !args.json {
        println!("{} object(s) under {url}", done.len());
    }
    Ok(())
}

pub struct Request<'a> {
    pub pipeline: &'a str,
    /// The pool whose queues carry the jobs (default: the pipeline's own).
    pub pool: Option<&'a str>,
    pub priority: bool,
    pub force: bool,
}

/// The objects a submit names: one object, or every object under a prefix.
pub async fn objects(
    store: &dyn ObjectStore,
    url: &S3Url,
    prefix: bool,
) -> anyhow::Result<Vec<ObjectMeta>> {
    if prefix {
        let mut objects = Vec::new();
        for o in store.list(&url.bucket, &url.key).await? {
            // "Directory" placeholder objects are not media.
            if o.key.ends_with('/') {
                continue;
            }
            // Some S3 servers (s3s-fs) list objects without their ETag.
            if o.etag.is_empty() {
                objects.push(store.head(&url.bucket, &o.key).await?);
            } else {
                objects.push(o);
            }
        }
        Ok(objects)
    } else {
        Ok(vec![store.head(&url.bucket, &url.key).await?])
    }
}

pub async fn submit(
    config: &Config,
    ledger: &Ledger,
    publisher: &Publisher,
    bucket: &str,
    objects: &[Source],
    req: &Request<'_>,
) -> anyhow::Result<Vec<Submitted>> {
    let pipeline = config.pipeline(req.pipeline)?;
    let pool = req.pool.unwrap_or(&pipeline.pool);
    let names = Names::new(&config.farm.name);
    let lane = names.lane(pool, req.priority);
    let mut done = Vec::with_capacity(objects.len());
    for Source {
        meta: o,
        duration_secs,
    } in objects
    {
        anyhow::ensure!(
            !o.etag.is_empty(),
            "s3://{bucket}/{} has no ETag: the job id and the If-Match check need one",
            o.key
        );
        let source = SourceObject {
            bucket: bucket.into(),
            key: o.key.clone(),
            etag: o.etag.clone(),
        };
        let mut job = JobMessage::new(req.pipeline, source, "", req.priority);
        // Expanded once, here: a config change later does not move a queued job's outputs.
        job.output = outkey::for_job(&pipeline.output, &job)?;
        // What mitosis weighs the queued job by, before any cell has probed it.
        job.work_secs = duration_secs.map(|secs| secs * pipeline.cost_factor);
        let outcome = if ledger.insert(&job, pool).await? {
            SubmitOutcome::Enqueued
        } else if req.force && ledger.reset(&job.job_id).await? {
            SubmitOutcome::Requeued
        } else {
            SubmitOutcome::Known
        };
        if outcome != SubmitOutcome::Known {
            if let Err(e) = publisher.publish(&lane, &job.to_json(), &[]).await {
                if outcome == SubmitOutcome::Enqueued {
                    ledger.forget(&job.job_id).await?;
                }
                return Err(anyhow::anyhow!(
                    "cannot enqueue s3://{bucket}/{} (job {}): {e}",
                    o.key,
                    job.job_id
                ));
            }
        }
        done.push(Submitted {
            job_id: job.job_id,
            source: format!("s3://{bucket}/{}", o.key),
            pipeline: req.pipeline.into(),
            outcome,
        });
    }
    Ok(done)
}

/// The objects with their durations, probed a few at a time.
async fn probed(
    config: &Config,
    store: &dyn ObjectStore,
    bucket: &str,
    objects: Vec<ObjectMeta>,
) -> Vec<Source> {
    let probes = objects.into_iter().map(|meta| async move {
        let duration_secs = ranged_duration(config, store, bucket, &meta).await;
        Source {
            meta,
            duration_secs,
        }
    });
    futures_util::stream::iter(probes)
        .buffered(PROBES_AT_ONCE)
        .collect()
        .await
}

/// The source's duration from its first and last bytes only, laid out at their offsets
/// in a sparse file so that ffprobe finds an index at either end. `None` when it cannot
/// tell (logged).
pub async fn ranged_duration(
    config: &Config,
    store: &dyn ObjectStore,
    bucket: &str,
    meta: &ObjectMeta,
) -> Option<f64> {
    match ranged_probe(config, store, bucket, meta).await {
        Ok(d) => d,
        Err(e) => {
            tracing::warn!(bucket, key = %meta.key, error = format!("{e:#}"), "ranged probe failed");
            None
        }
    }
}

async fn ranged_probe(
    config: &Config,
    store: &dyn ObjectStore,
    bucket: &str,
    meta: &ObjectMeta,
) -> anyhow::Result<Option<f64>> {
    use std::io::{Seek, SeekFrom, Write};
    let head_end = meta.size.min(PROBE_BYTES);
    let tail_start = meta.size.saturating_sub(PROBE_BYTES).max(head_end);
    let head = store.get_range(bucket, &meta.key, 0..head_end).await?;
    let tail = store
        .get_range(bucket, &meta.key, tail_start..meta.size)
        .await?;
    let file = tempfile::NamedTempFile::new()?;
    {
        let mut f = file.as_file();
        f.set_len(meta.size)?;
        f.write_all(&head)?;
        f.seek(SeekFrom::Start(tail_start))?;
        f.write_all(&tail)?;
    }
    let limits = Limits {
        timeout: Duration::from_secs(30),
        memory_bytes: config.cell.ffmpeg_memory_mib * 1024 * 1024,
        demuxers: config.cell.demuxers.clone(),
    };
    let never = tokio_util::sync::CancellationToken::new();
    let p = probe::probe(file.path(), &limits, &never).await?;
    Ok(p.duration)
}
