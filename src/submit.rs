//! `cellfarm submit`: enqueue objects as jobs, by hand or for reprocessing.
//!
//! The ledger row is written first: a job id it already knows is not published again
//! (the same upload submitted twice is one job), unless `force` asks to reprocess a
//! finished job.

use std::time::Duration;

use futures_util::StreamExt;

use crate::boot::Systems;
use crate::config::Config;
use crate::ffmpeg::{probe, Access, Limits, Sandbox};
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
    let found = objects(store, url, prefix).await?;
    for u in &found.unreadable {
        eprintln!("{u}");
    }
    let objects = probed(config, store, bucket, found.objects).await;
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
    match shortfall(found.unreadable.len(), done.len()) {
        Some(e) => anyhow::bail!(e),
        None => Ok(()),
    }
}

pub struct Request<'a> {
    pub pipeline: &'a str,
    /// The pool whose queues carry the jobs (default: the pipeline's own).
    pub pool: Option<&'a str>,
    pub priority: bool,
    pub force: bool,
}

/// What a submit found to enqueue.
#[derive(Debug, Default)]
pub struct Found {
    pub objects: Vec<ObjectMeta>,
    /// Objects under the prefix that could not be read; the others are submitted all
    /// the same.
    pub unreadable: Vec<Unreadable>,
}

/// An object under a prefix that could not be read, and why.
#[derive(Debug, Clone, PartialEq)]
pub struct Unreadable {
    /// `s3://bucket/key`.
    pub source: String,
    pub error: String,
}

impl std::fmt::Display for Unreadable {
    /// One line naming the object and the error, for stderr.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "cannot submit {}: {}", self.source, self.error)
    }
}

/// The error a prefix submit ends with when `unreadable` objects could not be read and
/// `submitted` others were; `None` when every object was read.
pub fn shortfall(unreadable: usize, submitted: usize) -> Option<String> {
    (unreadable > 0).then(|| {
        format!(
            "{unreadable} of {} objects could not be submitted",
            unreadable + submitted
        )
    })
}

/// The objects a submit names: one object, or every object under a prefix. One object
/// that cannot be read fails the submit; under a prefix, an object that cannot be read
/// is set aside in [`Found::unreadable`] so that one bad object (or one failed request)
/// does not keep the others from being submitted. A prefix that cannot be listed fails
/// at once.
pub async fn objects(store: &dyn ObjectStore, url: &S3Url, prefix: bool) -> anyhow::Result<Found> {
    if prefix {
        let mut found = Found::default();
        for o in store.list(&url.bucket, &url.key).await? {
            // "Directory" placeholder objects are not media.
            if o.key.ends_with('/') {
                continue;
            }
            // Some S3 servers (s3s-fs) list objects without their ETag.
            if o.etag.is_empty() {
                match store.head(&url.bucket, &o.key).await {
                    Ok(meta) => found.objects.push(meta),
                    Err(e) => found.unreadable.push(Unreadable {
                        source: format!("s3://{}/{}", url.bucket, o.key),
                        error: e.to_string(),
                    }),
                }
            } else {
                found.objects.push(o);
            }
        }
        Ok(found)
    } else {
        Ok(Found {
            objects: vec![store.head(&url.bucket, &url.key).await?],
            unreadable: Vec::new(),
        })
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
    // Confined like a cell's probe: these bytes are as untrusted as any source.
    let sandbox = Sandbox::shared(&config.cell)
        .await
        .map_err(|e| anyhow::anyhow!("cannot confine ffprobe: {e}"))?;
    sandbox.hand_over(file.path())?;
    let limits = Limits {
        timeout: Duration::from_secs(30),
        memory_bytes: config.cell.ffmpeg_memory_mib * 1024 * 1024,
        access: Access::read(file.path()),
        demuxers: config.cell.demuxers.clone(),
        max_pixels: None,
    };
    let never = tokio_util::sync::CancellationToken::new();
    let p = probe::probe(file.path(), sandbox, &limits, &never).await?;
    Ok(p.duration)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_submit_that_read_every_object_has_no_shortfall() {
        assert_eq!(shortfall(0, 16), None);
        assert_eq!(shortfall(0, 0), None);
    }

    #[test]
    fn the_shortfall_counts_the_unread_among_all_objects() {
        assert_eq!(
            shortfall(2, 14).as_deref(),
            Some("2 of 16 objects could not be submitted")
        );
        assert_eq!(
            shortfall(3, 0).as_deref(),
            Some("3 of 3 objects could not be submitted")
        );
    }

    #[test]
    fn an_unreadable_object_is_one_line_naming_it_and_the_error() {
        let u = Unreadable {
            source: "s3://media/in/a.mp4".into(),
            error: "S3 HEAD s3://media/in/a.mp4 failed: HTTP 500 InternalError".into(),
        };
        let line = u.to_string();
        assert!(
            line.starts_with("cannot submit s3://media/in/a.mp4: "),
            "{line}"
        );
        assert!(line.ends_with("HTTP 500 InternalError"), "{line}");
        assert!(!line.contains('\n'));
    }
}
