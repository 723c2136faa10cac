//! `cellfarm submit`: enqueue objects as jobs, by hand or for reprocessing.
//!
//! The ledger row is written first: a job id it already knows is not published again
//! (the same upload submitted twice is one job), unless `force` asks to reprocess a
//! finished job.

use std::time::{Duration, Instant};

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

/// Jobs recorded in the ledger in one statement and published before their confirms
/// are awaited: the unit of a prefix submit's work.
const BATCH: usize = 1000;
/// HEADs at once for a listing that came without ETags.
const HEADS_AT_ONCE: usize = 32;

/// An object to enqueue, and what a ranged probe found of it, when it could tell. The
/// probe goes into the job's ledger row, so that the cell that runs the job does not
/// probe the source again.
#[derive(Debug, Clone, PartialEq)]
pub struct Source {
    pub meta: ObjectMeta,
    pub probe: Option<probe::Probe>,
}

impl Source {
    /// The source's seconds, when the probe told.
    pub fn duration_secs(&self) -> Option<f64> {
        self.probe.as_ref().and_then(|p| p.duration)
    }
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
    /// Do not probe each object before enqueueing it. For backlogs of millions: jobs
    /// are enqueued thousands a second, each cell probes its own source, and mitosis
    /// counts the jobs as of unknown length until then.
    #[arg(long)]
    pub no_probe: bool,
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
    let clock = Instant::now();
    let found = objects(store, url, prefix).await?;
    for u in &found.unreadable {
        eprintln!("{u}");
    }
    let listed = found.objects.len();
    tracing::info!(
        objects = listed,
        secs = clock.elapsed().as_secs_f64(),
        "listed"
    );
    let clock = Instant::now();
    let objects = if args.no_probe {
        let unprobed = |meta| Source { meta, probe: None };
        found.objects.into_iter().map(unprobed).collect()
    } else {
        let probed = probed(config, store, bucket, found.objects).await;
        tracing::info!(
            objects = listed,
            secs = clock.elapsed().as_secs_f64(),
            "probed"
        );
        probed
    };
    let clock = Instant::now();
    let done = submit(
        config,
        &systems.ledger,
        broker.publisher(),
        bucket,
        &objects,
        &req,
    )
    .await?;
    let secs = clock.elapsed().as_secs_f64();
    let per_sec = (done.len() as f64 / secs).round();
    tracing::info!(jobs = done.len(), secs, per_sec, "recorded and published");
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
        // "Directory" placeholder objects are not media.
        let listed = store.list(&url.bucket, &url.key).await?;
        let listed = listed.into_iter().filter(|o| !o.key.ends_with('/'));
        // Some S3 servers (s3s-fs) list objects without their ETag: HEAD those.
        let heads = listed.map(|o| async move {
            if !o.etag.is_empty() {
                return Ok(o);
            }
            store
                .head(&url.bucket, &o.key)
                .await
                .map_err(|e| Unreadable {
                    source: format!("s3://{}/{}", url.bucket, o.key),
                    error: e.to_string(),
                })
        });
        let mut heads = futures_util::stream::iter(heads).buffered(HEADS_AT_ONCE);
        while let Some(head) = heads.next().await {
            match head {
                Ok(meta) => found.objects.push(meta),
                Err(u) => found.unreadable.push(u),
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

/// Enqueues `objects` as jobs of one pipeline, [`BATCH`] at a time: the batch's new
/// jobs are recorded in one ledger statement, then published with their confirms
/// awaited together. The ledger row comes first, as for one job: a job the ledger already
/// knew is not published again, unless `force` resets a finished one. A batch whose
/// publish fails has its unpublished new rows removed, and the submit stops with the
/// error (the jobs before it stay enqueued).
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
    for batch in objects.chunks(BATCH) {
        let jobs = batch
            .iter()
            .map(|source| job(bucket, source, req, pipeline))
            .collect::<anyhow::Result<Vec<_>>>()?;
        let probes: Vec<Option<serde_json::Value>> = batch
            .iter()
            .map(|s| {
                s.probe
                    .as_ref()
                    .map(|p| serde_json::to_value(p).expect("a probe serializes"))
            })
            .collect();
        let new = ledger.insert_many(&jobs, &probes, pool).await?;
        let mut outcomes = Vec::with_capacity(jobs.len());
        for job in &jobs {
            outcomes.push(if new.contains(&job.job_id) {
                SubmitOutcome::Enqueued
            } else if req.force && ledger.reset(&job.job_id).await? {
                SubmitOutcome::Requeued
            } else {
                SubmitOutcome::Known
            });
        }
        let to_publish: Vec<&JobMessage> = jobs
            .iter()
            .zip(&outcomes)
            .filter(|(_, o)| **o != SubmitOutcome::Known)
            .map(|(j, _)| j)
            .collect();
        let bodies: Vec<Vec<u8>> = to_publish.iter().map(|j| j.to_json()).collect();
        let published = publisher.publish_many(&lane, &bodies).await;
        if let Some((i, e)) = published
            .iter()
            .enumerate()
            .find_map(|(i, r)| r.as_ref().err().map(|e| (i, e)))
        {
            let unpublished: Vec<String> = to_publish
                .iter()
                .zip(&published)
                .filter(|(_, r)| r.is_err())
                .map(|(j, _)| j.job_id.clone())
                .filter(|id| new.contains(id))
                .collect();
            ledger.forget_many(&unpublished).await?;
            let job = to_publish[i];
            return Err(anyhow::anyhow!(
                "cannot enqueue s3://{bucket}/{} (job {}): {e}",
                job.source.key,
                job.job_id
            ));
        }
        for (job, outcome) in jobs.into_iter().zip(outcomes) {
            done.push(Submitted {
                source: format!("s3://{bucket}/{}", job.source.key),
                job_id: job.job_id,
                pipeline: req.pipeline.into(),
                outcome,
            });
        }
    }
    Ok(done)
}

/// The job message for one object.
fn job(
    bucket: &str,
    src: &Source,
    req: &Request<'_>,
    pipeline: &crate::config::Pipeline,
) -> anyhow::Result<JobMessage> {
    let o = &src.meta;
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
    // What mitosis weighs the queued job by, before any cell has run it.
    job.work_secs = src.duration_secs().map(|secs| secs * pipeline.cost_factor);
    Ok(job)
}

/// The objects with their probes, a few at a time.
async fn probed(
    config: &Config,
    store: &dyn ObjectStore,
    bucket: &str,
    objects: Vec<ObjectMeta>,
) -> Vec<Source> {
    let probes = objects.into_iter().map(|meta| async move {
        let probe = ranged(config, store, bucket, &meta).await;
        Source { meta, probe }
    });
    futures_util::stream::iter(probes)
        .buffered(PROBES_AT_ONCE)
        .collect()
        .await
}

/// What the source is, from its first and last bytes only, laid out at their offsets in
/// a sparse file so that ffprobe finds an index at either end. `None` when it cannot
/// tell (logged).
pub async fn ranged(
    config: &Config,
    store: &dyn ObjectStore,
    bucket: &str,
    meta: &ObjectMeta,
) -> Option<probe::Probe> {
    match ranged_probe(config, store, bucket, meta).await {
        Ok(p) => Some(p),
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
) -> anyhow::Result<probe::Probe> {
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
    Ok(probe::probe(file.path(), sandbox, &limits, &never).await?)
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
