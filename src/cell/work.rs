//! One attempt at one job, from source object to uploaded outputs.
//!
//! Everything happens in a scratch directory of its own (`<scratch>/<job>-<attempt>-<cell>`)
//! that is removed when the attempt ends, however it ends. The object key never becomes
//! an FFmpeg argument: the source is downloaded to a fixed name (`in/source`).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use futures_util::{StreamExt, TryStreamExt};
use tokio_util::sync::CancellationToken;

use crate::config::{Config, Detect, OutputSpec, Pipeline, Policy, SourceLimits, TIMEOUT_MARGIN};
use crate::failure::JobFailure;
use crate::ffmpeg::{
    self, detect, header, probe, progress, Access, FfmpegError, Limits, Sandbox, Tool,
};
use crate::job::{unquote_etag, JobMessage, OutputObject};
use crate::store::{ObjectMeta, ObjectStore, StoreError};

use super::attempt::Attempt;
use super::laps::{Laps, Phase};

/// What an attempt needs from its cell.
pub struct Context<'a> {
    pub config: &'a Config,
    pub store: &'a dyn ObjectStore,
    /// How FFmpeg runs: confined to the attempt's scratch directory.
    pub sandbox: &'a Sandbox,
    pub threads: usize,
    /// Told the attempt's estimated wall seconds once the source is probed.
    pub estimate: &'a (dyn Fn(f64) + Sync),
    /// The attempt's place in line for an encoder, taken for its FFmpeg steps only.
    pub turn: &'a super::slots::Turn,
    /// Told when the attempt's FFmpeg steps start (true) and end (false).
    pub encoding: &'a (dyn Fn(bool) + Sync),
    /// Told how far the attempt's FFmpeg steps have got, as they run.
    pub progress: super::running::Meter,
    /// Where the attempt's time goes.
    pub laps: &'a Laps,
}

/// A directory removed on drop.
pub(super) struct Scratch(pub(super) PathBuf);

impl Scratch {
    /// Makes the directory and its `in`, `out` and `work`, owned by the user FFmpeg
    /// runs as, which may write only there.
    pub(super) fn create(path: PathBuf, sandbox: &Sandbox) -> Result<Scratch, JobFailure> {
        let scratch = Scratch(path);
        for sub in ["in", "out", "work"] {
            let dir = scratch.0.join(sub);
            std::fs::create_dir_all(&dir)
                .and_then(|()| sandbox.hand_over(&dir))
                .map_err(|source| JobFailure::Scratch {
                    path: dir.display().to_string(),
                    source,
                })?;
        }
        sandbox
            .hand_over(&scratch.0)
            .map_err(|source| JobFailure::Scratch {
                path: scratch.0.display().to_string(),
                source,
            })?;
        Ok(scratch)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        if let Err(e) = std::fs::remove_dir_all(&self.0) {
            tracing::warn!(path = %self.0.display(), error = %e, "cannot remove scratch directory");
        }
    }
}

/// What an attempt produced: its outputs and the manifest written after them, and what
/// its detector passes found and flagged.
pub struct Produced {
    pub outputs: Vec<OutputObject>,
    /// None for a part of a chunked title, which its title's manifest names.
    pub manifest: Option<OutputObject>,
    pub warnings: Vec<String>,
    pub reports: Vec<detect::Report>,
    /// What a chunk's checks found of it.
    pub chunk: Option<crate::chunk::Checked>,
}

/// How an attempt that went well ends.
pub enum Outcome {
    /// Outputs made and uploaded: commit them.
    Made(Box<Produced>),
    /// A chunked title split: record the plan and its parts.
    Split {
        plan: crate::chunk::Plan,
        parts: Vec<JobMessage>,
    },
    /// An assembly found these parts (job ids) wanting: make them again.
    Redo { parts: Vec<String>, reason: String },
}

/// Runs the job's pipeline and uploads its outputs, then its manifest; the caller
/// commits to the ledger. A chunked pipeline's jobs run in [`super::chunks`].
pub async fn execute(ctx: &Context<'_>, attempt: &Attempt<'_>) -> Result<Outcome, JobFailure> {
    let job = &attempt.job;
    let pipeline = ctx
        .config
        .pipelines
        .get(&job.pipeline)
        .ok_or_else(|| JobFailure::Pipeline {
            pipeline: job.pipeline.clone(),
            reason: "no such pipeline in the cell's config".into(),
        })?;
    if let Some(chunking) = &pipeline.chunked {
        return super::chunks::execute(ctx, attempt, pipeline, chunking).await;
    }
    let mut limits = limits(ctx.config, pipeline);
    let root = scratch_root(ctx, attempt);
    let source = make_room(ctx, job, pipeline, &root).await?;
    let scratch = Scratch::create(root, ctx.sandbox)?;
    ctx.laps.lap(Phase::Head);
    limits.access = Access::scratch(&scratch.0);
    let source_probe = fetch_source(ctx, attempt, &source, pipeline, &limits, &scratch).await?;
    let base = fetch_assets(ctx, pipeline, &scratch).await?;
    ctx.laps.lap(Phase::Download);
    let vars = pipeline
        .step_vars(&ctx.config.vars, &source_probe, base)
        .map_err(|reason| JobFailure::Pipeline {
            pipeline: job.pipeline.clone(),
            reason,
        })?;
    let plan = plan(pipeline, &vars, &limits, &scratch, &source_probe).map_err(|reason| {
        JobFailure::Pipeline {
            pipeline: job.pipeline.clone(),
            reason,
        }
    })?;
    let derived = explicit_timeout(ctx.config, pipeline).is_none();
    if derived {
        let floor = ctx.config.cell.min_step_timeout_secs;
        let secs = pipeline.derived_timeout_secs(source_probe.duration.unwrap_or(0.0), floor);
        limits.timeout = std::time::Duration::from_secs(secs);
    }
    // The slot is held for the encode alone: the download above and the checks and
    // upload below overlap other jobs' encodes.
    let encoder = ctx
        .turn
        .encoder(&attempt.cancel)
        .await
        .ok_or(JobFailure::Cancelled)?;
    ctx.laps.lap(Phase::Slot);
    (ctx.encoding)(true);
    let ran = run_steps(ctx, attempt, &plan, &limits, derived, &source_probe).await;
    (ctx.encoding)(false);
    drop(encoder);
    let reports = ran?;
    ctx.laps.lap(Phase::Ffmpeg);
    // Outputs are our own files with names from the config, so image outputs may be
    // probed with the image2 demuxer that untrusted sources are denied.
    let mut output_limits = limits.clone();
    output_limits.demuxers.push("image2".into());
    let out = scratch.0.join("out");
    let files = check_outputs(
        ctx,
        pipeline,
        &out,
        &source_probe,
        &output_limits,
        &attempt.cancel,
    )
    .await?;
    ctx.laps.lap(Phase::Checks);
    // Last look before anything becomes visible: a superseded attempt uploads nothing.
    if !attempt.holds().await? {
        return Err(JobFailure::Superseded);
    }
    let produced = publish(ctx, attempt, &source_probe, files, reports, &scratch).await;
    ctx.laps.lap(Phase::Upload);
    produced.map(|p| Outcome::Made(Box::new(p)))
}

/// The attempt's own scratch directory: `<scratch>/<job>-<attempt>-<cell>`.
pub(super) fn scratch_root(ctx: &Context<'_>, attempt: &Attempt<'_>) -> PathBuf {
    Path::new(&ctx.config.cell.scratch_dir).join(format!(
        "{}-{}-{}",
        attempt.job.job_id, attempt.id.attempt, attempt.id.cell_id
    ))
}

/// A step, ready to run: FFmpeg's whole argument list (with the pipeline's detectors
/// as one more output when the step runs them inside its own graph), or a detector pass
/// over a file.
enum Planned<'p> {
    Ffmpeg {
        args: Vec<String>,
        detect: Option<&'p Detect>,
    },
    Detect {
        detect: &'p Detect,
        path: PathBuf,
        /// `source`, or the output's path.
        file: String,
    },
}

/// The pipeline's steps with `vars` substituted, in order.
fn plan<'p>(
    pipeline: &'p Pipeline,
    vars: &BTreeMap<&str, String>,
    limits: &Limits,
    scratch: &Scratch,
    source: &probe::Probe,
) -> Result<Vec<Planned<'p>>, String> {
    pipeline
        .steps
        .iter()
        .map(|step| match &step.detect {
            Some(detect) if !step.args.is_empty() => {
                inside(&step.args, detect, vars, limits, source)
            }
            Some(detect) => Ok(match detect.output_path() {
                Some(rel) => Planned::Detect {
                    detect,
                    path: scratch.0.join("out").join(rel),
                    file: rel.to_string(),
                },
                None => Planned::Detect {
                    detect,
                    path: scratch.0.join("in/source"),
                    file: "source".into(),
                },
            }),
            None => ffmpeg::command(&step.args, vars, limits)
                .map(|args| Planned::Ffmpeg { args, detect: None }),
        })
        .collect()
}

/// A step that runs the detectors inside its own FFmpeg: its arguments, and the
/// detectors as one more output reading the source (`-i {input}`) it decodes anyway.
fn inside<'p>(
    step: &[String],
    detect: &'p Detect,
    vars: &BTreeMap<&str, String>,
    limits: &Limits,
    source: &probe::Probe,
) -> Result<Planned<'p>, String> {
    let input = ffmpeg::input_number(step, "{input}")
        .ok_or("a step with detect reads the source: it needs -i {input}")?;
    let mut args = step
        .iter()
        .map(|a| ffmpeg::template::expand(a, vars))
        .collect::<Result<Vec<_>, _>>()?;
    args.extend(detect::output(input, source, &detect.tuning()).unwrap_or_default());
    Ok(Planned::Ffmpeg {
        args: ffmpeg::ffmpeg_args_logging(&args, limits, detect::LOGLEVEL),
        detect: Some(detect),
    })
}

/// Runs the pipeline's steps in order, each FFmpeg step reporting its progress to the
/// job's meter (a step past a derived timeout is over its estimate); returns the
/// reports of its detector passes.
async fn run_steps(
    ctx: &Context<'_>,
    attempt: &Attempt<'_>,
    plan: &[Planned<'_>],
    limits: &Limits,
    derived: bool,
    source: &probe::Probe,
) -> Result<Vec<detect::Report>, JobFailure> {
    let steps = plan.len();
    let mut reports = Vec::new();
    for (step, planned) in plan.iter().enumerate() {
        let (args, inside) = match planned {
            Planned::Ffmpeg { args, detect } => (args, detect),
            Planned::Detect { detect, path, file } => {
                let pass = Pass {
                    step,
                    detect,
                    path,
                    file,
                };
                reports.push(pass.run(ctx, attempt, source, limits).await?);
                continue;
            }
        };
        let report = step_report(&ctx.progress, step, steps, source.duration);
        let log = std::sync::Arc::new(std::sync::Mutex::new(detect::Log::default()));
        let ran = match inside {
            None => ffmpeg::run_reporting(
                ctx.sandbox,
                Tool::Ffmpeg,
                args,
                limits,
                &attempt.cancel,
                Some(report),
            )
            .await
            .map(drop),
            Some(_) => {
                let sink = log.clone();
                let watch: ffmpeg::Watch =
                    Box::new(move |line| sink.lock().expect("never poisoned").line(line));
                ffmpeg::run_reporting_watching(
                    ctx.sandbox,
                    Tool::Ffmpeg,
                    args,
                    limits,
                    &attempt.cancel,
                    report,
                    watch,
                )
                .await
            }
        };
        ran.map_err(|source| match source {
            FfmpegError::TimedOut { secs, .. } if derived => JobFailure::OverEstimate {
                step,
                secs,
                margin: TIMEOUT_MARGIN,
                source,
            },
            source => JobFailure::Step { step, source },
        })?;
        if let Some(detect) = inside {
            let log = std::mem::take(&mut *log.lock().expect("never poisoned"));
            let found = log.report("source", source, &detect.tuning());
            reports.push(hold_to_policy(detect, &attempt.job.pipeline, step, found)?);
        }
    }
    Ok(reports)
}

/// Holds what a detector run found to the pipeline's policies: a rejected defect fails
/// the job, an ignored one is dropped from the report, a flagged one stays in it (and
/// becomes a warning).
fn hold_to_policy(
    detect: &Detect,
    pipeline: &str,
    step: usize,
    mut report: detect::Report,
) -> Result<detect::Report, JobFailure> {
    report
        .defects
        .retain(|d| detect.policy(d.kind) != Policy::Ignore);
    let mut rejected = report
        .defects
        .iter()
        .filter(|d| detect.policy(d.kind) == Policy::Reject);
    if let Some(first) = rejected.next() {
        let more = rejected.count();
        return Err(JobFailure::Defect {
            pipeline: pipeline.into(),
            step,
            file: report.file.clone(),
            defect: match more {
                0 => first.to_string(),
                n => format!("{first}, and {n} more rejected"),
            },
            key: first.kind.key(),
        });
    }
    Ok(report)
}

/// One detector pass of a job.
struct Pass<'a> {
    step: usize,
    detect: &'a Detect,
    path: &'a Path,
    file: &'a str,
}

impl Pass<'_> {
    /// Decodes the file once with every detector, and holds what they found to the
    /// pipeline's policies ([`hold_to_policy`]).
    async fn run(
        &self,
        ctx: &Context<'_>,
        attempt: &Attempt<'_>,
        source: &probe::Probe,
        limits: &Limits,
    ) -> Result<detect::Report, JobFailure> {
        let failed = |source| JobFailure::Step {
            step: self.step,
            source,
        };
        let probed = match self.detect.output_path() {
            None => source.clone(),
            Some(_) => describe(ctx, self.path, limits, &attempt.cancel)
                .await
                .map_err(failed)?,
        };
        let tuning = self.detect.tuning();
        let report = match detect::args(&path_arg(self.path), &probed, &tuning, limits) {
            None => detect::Report {
                file: self.file.into(),
                ..detect::Report::default()
            },
            Some(args) => {
                let log = std::sync::Arc::new(std::sync::Mutex::new(detect::Log::default()));
                let sink = log.clone();
                let watch: ffmpeg::Watch =
                    Box::new(move |line| sink.lock().expect("never poisoned").line(line));
                ffmpeg::run_watching(
                    ctx.sandbox,
                    Tool::Ffmpeg,
                    &args,
                    limits,
                    &attempt.cancel,
                    watch,
                )
                .await
                .map_err(failed)?;
                let log = std::mem::take(&mut *log.lock().expect("never poisoned"));
                log.report(self.file, &probed, &tuning)
            }
        };
        hold_to_policy(self.detect, &attempt.job.pipeline, self.step, report)
    }
}

/// Where step `step` of `steps` sends FFmpeg's progress: the job's meter, as a fraction
/// of the whole pipeline over a source of `duration` seconds.
pub(super) fn step_report(
    meter: &super::running::Meter,
    step: usize,
    steps: usize,
    duration: Option<f64>,
) -> progress::Report {
    let meter = meter.clone();
    std::sync::Arc::new(move |sample| {
        meter(
            progress::fraction(step, steps, &sample, duration),
            sample.speed,
        );
    })
}

/// Looks the source object up (one HEAD, which the download then goes by), and checks
/// that it is the version submitted, and its size against the pipeline's limit and this
/// cell's free scratch space, before downloading anything.
pub(super) async fn make_room(
    ctx: &Context<'_>,
    job: &JobMessage,
    pipeline: &Pipeline,
    root: &Path,
) -> Result<ObjectMeta, JobFailure> {
    let src = &job.source;
    let meta = ctx.store.head(&src.bucket, &src.key).await?;
    let want = unquote_etag(&src.etag);
    if !want.is_empty() && meta.etag != want {
        return Err(StoreError::Changed {
            bucket: src.bucket.clone(),
            key: src.key.clone(),
            etag: src.etag.clone(),
        }
        .into());
    }
    let mib = meta.size.div_ceil(1 << 20);
    if let Some(max) = pipeline.limits.max_source_mib {
        if mib > max {
            return Err(JobFailure::Limit {
                pipeline: job.pipeline.clone(),
                what: "size",
                key: "max_source_mib",
                seen: format!("{mib} MiB"),
                limit: max.to_string(),
            });
        }
    }
    let needed_mib = (mib as f64 * pipeline.limits.scratch_factor).ceil() as u64;
    let dir = root.parent().unwrap_or(root);
    std::fs::create_dir_all(dir).map_err(|source| JobFailure::Scratch {
        path: dir.display().to_string(),
        source,
    })?;
    let free_mib = free_bytes(dir).map_err(|source| JobFailure::Scratch {
        path: dir.display().to_string(),
        source,
    })? >> 20;
    if needed_mib > free_mib {
        return Err(JobFailure::NoRoom {
            needed_mib,
            free_mib,
        });
    }
    Ok(meta)
}

/// Bytes free to unprivileged users on the file system holding `dir`.
fn free_bytes(dir: &Path) -> std::io::Result<u64> {
    let stat = rustix::fs::statvfs(dir)?;
    Ok(stat.f_bavail.saturating_mul(stat.f_frsize))
}

/// Downloads the source to `in/source`, probes it and holds it to the pipeline's
/// limits; the estimate and the ledger learn what it is.
///
/// Probed once: a probe the ledger already holds for the job (made at submission, or
/// by an earlier attempt) is used as it is. The job id is derived from the source's
/// ETag and [`make_room`] has checked that ETag, so the probe describes these bytes.
pub(super) async fn fetch_source(
    ctx: &Context<'_>,
    attempt: &Attempt<'_>,
    source: &ObjectMeta,
    pipeline: &Pipeline,
    limits: &Limits,
    scratch: &Scratch,
) -> Result<probe::Probe, JobFailure> {
    let input = scratch.0.join("in/source");
    let src = &attempt.job.source;
    ctx.store
        .download_found(&src.bucket, source, &input)
        .await?;
    ctx.laps.lap(Phase::Download);
    let known = attempt
        .known_probe
        .as_ref()
        .and_then(|v| serde_json::from_value::<probe::Probe>(v.clone()).ok())
        .filter(|p| !p.streams.is_empty());
    let source_probe = match known {
        Some(known) => known,
        None => {
            let p = probe::probe(&input, ctx.sandbox, limits, &attempt.cancel)
                .await
                .map_err(|e| {
                    pixel_bomb(&attempt.job.pipeline, &pipeline.limits, &e)
                        .unwrap_or(JobFailure::Probe(e))
                })?;
            let probe_json = serde_json::to_value(&p).expect("a probe always serializes");
            attempt.record_probe(&probe_json).await?;
            p
        }
    };
    if source_probe.video().is_none() && source_probe.audio().is_none() {
        return Err(JobFailure::Output {
            path: "source".into(),
            reason: "the source has no audio or video stream".into(),
        });
    }
    within_limits(&attempt.job.pipeline, &pipeline.limits, &source_probe)?;
    ctx.laps.lap(Phase::Probe);
    if let Some(duration) = source_probe.duration {
        (ctx.estimate)(duration * pipeline.cost_factor);
    }
    Ok(source_probe)
}

/// The limit a probe that failed on `-max_pixels` met: FFmpeg refuses to allocate the
/// frame ("Picture size 8200x4400 exceeds specified max pixel count"), so the probe
/// never returns the size for [`within_limits`] to check.
fn pixel_bomb(pipeline: &str, limits: &SourceLimits, e: &FfmpegError) -> Option<JobFailure> {
    let FfmpegError::Failed { tail, .. } = e else {
        return None;
    };
    if !tail.contains("exceeds specified max pixel count") {
        return None;
    }
    let seen = tail
        .split("Picture size ")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .map_or("unknown".to_string(), |size| size.replace('x', "×"));
    Some(JobFailure::Limit {
        pipeline: pipeline.into(),
        what: "frame",
        key: "max_pixels",
        seen,
        limit: limits.max_pixels.to_string(),
    })
}

/// Holds a probed source to its pipeline's limits: streams, pixels per frame, duration.
pub fn within_limits(
    pipeline: &str,
    limits: &SourceLimits,
    source: &probe::Probe,
) -> Result<(), JobFailure> {
    let over = |what, key, seen: String, limit: String| JobFailure::Limit {
        pipeline: pipeline.into(),
        what,
        key,
        seen,
        limit,
    };
    let streams = source.streams.len();
    if streams > limits.max_streams as usize {
        let max = limits.max_streams.to_string();
        return Err(over("streams", "max_streams", streams.to_string(), max));
    }
    for v in source.streams.iter().filter(|s| s.kind == "video") {
        let (w, h) = (v.width.unwrap_or(0), v.height.unwrap_or(0));
        if u64::from(w) * u64::from(h) > limits.max_pixels {
            let seen = format!("{w}×{h}");
            let max = limits.max_pixels.to_string();
            return Err(over("frame", "max_pixels", seen, max));
        }
    }
    if let (Some(secs), Some(max)) = (source.duration, limits.max_duration_secs) {
        if secs > max {
            let seen = format!("{secs:.0} s");
            return Err(over("duration", "max_duration_secs", seen, max.to_string()));
        }
    }
    Ok(())
}

/// Downloads the pipeline's assets, and names every local path a step may use.
async fn fetch_assets<'p>(
    ctx: &Context<'_>,
    pipeline: &'p Pipeline,
    scratch: &Scratch,
) -> Result<BTreeMap<&'p str, String>, JobFailure> {
    let mut vars: BTreeMap<&str, String> = BTreeMap::new();
    vars.insert("input", path_arg(&scratch.0.join("in/source")));
    vars.insert("out", path_arg(&scratch.0.join("out")));
    vars.insert("work", path_arg(&scratch.0.join("work")));
    vars.insert("threads", ctx.threads.to_string());
    for (name, url) in &pipeline.assets {
        let local = scratch.0.join(format!("in/asset-{name}"));
        ctx.store
            .download(&url.bucket, &url.key, None, &local)
            .await?;
        vars.insert(name.as_str(), path_arg(&local));
    }
    Ok(vars)
}

/// Uploads the checked outputs under the job's output prefix, and the detector passes'
/// reports under `_defects/`, then the manifest that names them all: the manifest is
/// the last object written, so a reader that sees it sees every output, and an attempt
/// cut short leaves none (the next overwrites).
pub(super) async fn publish(
    ctx: &Context<'_>,
    attempt: &Attempt<'_>,
    source: &probe::Probe,
    files: Vec<OutputFile>,
    reports: Vec<detect::Report>,
    scratch: &Scratch,
) -> Result<Produced, JobFailure> {
    let job = &attempt.job;
    let dest = job.output_prefix().map_err(|reason| JobFailure::Pipeline {
        pipeline: job.pipeline.clone(),
        reason,
    })?;
    let (uploaded, reported) = tokio::try_join!(
        upload_all(ctx, &dest, files),
        upload_all(ctx, &dest, report_files(&reports, scratch)?),
    )?;
    let (entries, uploaded): (Vec<_>, Vec<_>) = uploaded.into_iter().unzip();
    // The manifest holds each report whole, with the key it was written to.
    let report_entries: Vec<serde_json::Value> = reported
        .iter()
        .zip(&reports)
        .map(|((entry, _), report)| {
            let mut whole = serde_json::to_value(report).expect("a report always serializes");
            whole["key"] = entry["key"].clone();
            whole
        })
        .collect();
    let warnings = detect::warnings(&reports);
    let manifest = serde_json::json!({
        "v": crate::job::VERSION,
        "job_id": job.job_id,
        "pipeline": job.pipeline,
        "source": job.source,
        "source_probe": source,
        "attempt": attempt.id.attempt,
        "cell_id": attempt.id.cell_id,
        "outputs": entries,
        "warnings": warnings,
        "defects": report_entries,
    });
    let path = scratch.0.join("work/_manifest.json");
    let body = serde_json::to_vec_pretty(&manifest).expect("a manifest always serializes");
    std::fs::write(&path, &body).map_err(|source| JobFailure::Scratch {
        path: path.display().to_string(),
        source,
    })?;
    let key = crate::outkey::manifest_key(&dest.key);
    upload_patiently(ctx, &dest.bucket, &key, &path, Some("application/json")).await?;
    let manifest = OutputObject {
        bucket: dest.bucket,
        key,
        size: body.len() as u64,
    };
    Ok(Produced {
        outputs: uploaded,
        manifest: Some(manifest),
        warnings,
        reports,
        chunk: None,
    })
}

/// Uploads `files` under `dest`, a few at a time (an HLS ladder has hundreds of
/// segments), each digested while the others upload; returns each one's manifest entry
/// and object, in the order of `files`.
async fn upload_all(
    ctx: &Context<'_>,
    dest: &crate::s3url::S3Url,
    files: Vec<OutputFile>,
) -> Result<Vec<(serde_json::Value, OutputObject)>, JobFailure> {
    let uploads = files.into_iter().map(|file| async move {
        let key = output_key(&dest.key, &file.rel);
        let path = file.path.clone();
        let digested = tokio::task::spawn_blocking(move || digest(&path))
            .await
            .map_err(std::io::Error::other)
            .and_then(|r| r);
        let (size, sha256) = digested.map_err(|source| JobFailure::Scratch {
            path: file.path.display().to_string(),
            source,
        })?;
        upload_patiently(
            ctx,
            &dest.bucket,
            &key,
            &file.path,
            file.content_type.as_deref(),
        )
        .await?;
        let entry = serde_json::json!({
            "key": key, "size": size, "sha256": sha256,
            "content_type": file.content_type, "probe": file.probe,
        });
        let output = OutputObject {
            bucket: dest.bucket.clone(),
            key,
            size,
        };
        Ok::<_, JobFailure>((entry, output))
    });
    futures_util::stream::iter(uploads)
        .buffered(UPLOADS_AT_ONCE)
        .try_collect()
        .await
}

/// The detector passes' reports, written to scratch to be uploaded beside the outputs
/// as `_defects/<file>.json`.
fn report_files(
    reports: &[detect::Report],
    scratch: &Scratch,
) -> Result<Vec<OutputFile>, JobFailure> {
    let mut files = Vec::new();
    for (i, report) in reports.iter().enumerate() {
        let path = scratch.0.join(format!("work/_defects-{i}.json"));
        let body = serde_json::to_vec_pretty(report).expect("a report always serializes");
        std::fs::write(&path, body).map_err(|source| JobFailure::Scratch {
            path: path.display().to_string(),
            source,
        })?;
        files.push(OutputFile {
            rel: format!("_defects/{}.json", report.file),
            path,
            content_type: Some("application/json".into()),
            probe: None,
        });
    }
    Ok(files)
}

/// Outputs uploaded at once by one attempt: enough to hide each PUT's round trip behind
/// the others', few enough that a slot's uploads do not crowd the other slots'.
const UPLOADS_AT_ONCE: usize = 4;

/// Tries an upload whose SDK retries all failed again, with backoff, before the attempt
/// gives up the outputs it made: an S3 hiccup must not cost an encode.
const UPLOAD_TRIES: u32 = 6;

pub(super) async fn upload_patiently(
    ctx: &Context<'_>,
    bucket: &str,
    key: &str,
    path: &Path,
    content_type: Option<&str>,
) -> Result<(), JobFailure> {
    let mut wait = std::time::Duration::from_secs(1);
    for tries in 1.. {
        match ctx.store.upload(bucket, key, path, content_type).await {
            Ok(()) => return Ok(()),
            Err(e @ StoreError::Failed { .. }) if tries < UPLOAD_TRIES => {
                tracing::warn!(error = %e, tries, wait_secs = wait.as_secs(), "upload failed; trying again from the same output");
                tokio::time::sleep(wait).await;
                wait *= 2;
            }
            Err(e) => return Err(e.into()),
        }
    }
    unreachable!("the loop returns on its last try")
}

/// Size and SHA-256 (hex) of a local file, read in blocks.
pub(super) fn digest(path: &Path) -> std::io::Result<(u64, String)> {
    use sha2::{Digest, Sha256};
    use std::io::Read;
    let mut file = std::fs::File::open(path)?;
    let mut hash = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut size = 0u64;
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hash.update(&buf[..n]);
        size += n as u64;
    }
    Ok((size, hex::encode(hash.finalize())))
}

/// A step timeout set by hand: the pipeline's, else the cell's.
pub(super) fn explicit_timeout(config: &Config, pipeline: &Pipeline) -> Option<u64> {
    pipeline.step_timeout_secs.or(config.cell.step_timeout_secs)
}

/// The limits of the probe and the steps; a derived step timeout replaces this one's
/// once the source is probed.
pub(super) fn limits(config: &Config, pipeline: &Pipeline) -> Limits {
    let secs = explicit_timeout(config, pipeline).unwrap_or(config.cell.min_step_timeout_secs);
    Limits {
        timeout: std::time::Duration::from_secs(secs),
        memory_bytes: config.cell.ffmpeg_memory_mib * 1024 * 1024,
        access: Access::default(),
        demuxers: config.cell.demuxers.clone(),
        max_pixels: Some(pipeline.limits.max_pixels),
    }
}

pub(super) fn path_arg(path: &Path) -> String {
    path.to_string_lossy().into_owned()
}

/// `<prefix>/<relative path>`, with exactly one `/` between the parts: the prefix is the
/// job's own, expanded at submission (see [`crate::outkey`]).
pub fn output_key(prefix: &str, rel: &str) -> String {
    let prefix = prefix.trim_end_matches('/');
    if prefix.is_empty() {
        rel.to_string()
    } else {
        format!("{prefix}/{rel}")
    }
}

/// A checked output, ready to upload.
pub(super) struct OutputFile {
    /// Relative to the job's output directory.
    pub(super) rel: String,
    pub(super) path: PathBuf,
    pub(super) content_type: Option<String>,
    /// What ffprobe found, when the output was probed.
    pub(super) probe: Option<probe::Probe>,
}

/// What a file the job wrote is: read in-process where [`header::read`] knows the
/// format (still images, H.264/AAC in MP4 or MPEG-TS), else probed by ffprobe.
pub(super) async fn describe(
    ctx: &Context<'_>,
    path: &Path,
    limits: &Limits,
    cancel: &CancellationToken,
) -> Result<probe::Probe, FfmpegError> {
    match header::read(path) {
        Some(p) => Ok(p),
        None => probe::probe(path, ctx.sandbox, limits, cancel).await,
    }
}

/// Finds every declared output and checks it ([`describe`]); a missing or wrong output
/// fails the job.
async fn check_outputs(
    ctx: &Context<'_>,
    pipeline: &Pipeline,
    out_dir: &Path,
    source: &probe::Probe,
    limits: &Limits,
    cancel: &CancellationToken,
) -> Result<Vec<OutputFile>, JobFailure> {
    let mut files = Vec::new();
    for spec in &pipeline.outputs {
        let found = resolve(out_dir, &spec.path);
        if found.is_empty() {
            return Err(JobFailure::Output {
                path: spec.path.clone(),
                reason: "FFmpeg exited 0 but did not write it".into(),
            });
        }
        for rel in found {
            let path = out_dir.join(&rel);
            let size = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
            if size == 0 {
                return Err(JobFailure::Output {
                    path: rel,
                    reason: "empty file".into(),
                });
            }
            let mut found = None;
            if needs_probe(spec) {
                let p =
                    describe(ctx, &path, limits, cancel)
                        .await
                        .map_err(|e| JobFailure::Output {
                            path: rel.clone(),
                            reason: e.to_string(),
                        })?;
                probe::verify(&spec.expect(), &p, source).map_err(|reason| JobFailure::Output {
                    path: rel.clone(),
                    reason,
                })?;
                found = Some(p);
            }
            files.push(OutputFile {
                rel,
                path,
                content_type: spec.content_type.clone(),
                probe: found,
            });
        }
    }
    Ok(files)
}

fn needs_probe(spec: &OutputSpec) -> bool {
    spec.expect() != probe::Expect::default()
}

/// The files under `dir` that `pattern` names; `*` matches within the file name only.
fn resolve(dir: &Path, pattern: &str) -> Vec<String> {
    let (sub, name) = pattern.rsplit_once('/').unwrap_or(("", pattern));
    if !name.contains('*') {
        return if dir.join(pattern).is_file() {
            vec![pattern.to_string()]
        } else {
            Vec::new()
        };
    }
    let Ok(entries) = std::fs::read_dir(dir.join(sub)) else {
        return Vec::new();
    };
    let mut found: Vec<String> = entries
        .flatten()
        .filter(|e| e.file_type().is_ok_and(|t| t.is_file()))
        .filter_map(|e| e.file_name().into_string().ok())
        .filter(|f| wildcard(name, f))
        .map(|f| {
            if sub.is_empty() {
                f
            } else {
                format!("{sub}/{f}")
            }
        })
        .collect();
    found.sort();
    found
}

/// Matches `name` against `pattern`, where `*` stands for any run of characters.
fn wildcard(pattern: &str, name: &str) -> bool {
    match pattern.split_once('*') {
        None => pattern == name,
        Some((head, tail)) => {
            let Some(rest) = name.strip_prefix(head) else {
                return false;
            };
            (0..=rest.len())
                .filter(|i| rest.is_char_boundary(*i))
                .any(|i| wildcard(tail, &rest[i..]))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wildcards_match_file_names() {
        assert!(wildcard("*.ts", "720p_000.ts"));
        assert!(wildcard("720p_*.ts", "720p_012.ts"));
        assert!(!wildcard("*.ts", "720p.m3u8"));
        assert!(wildcard("a*b*c", "aXbYc"));
        assert!(!wildcard("a*b*c", "aXbY"));
    }

    #[test]
    fn output_keys_join_cleanly() {
        assert_eq!(output_key("out/hls/j1/", "hls/a.ts"), "out/hls/j1/hls/a.ts");
        assert_eq!(output_key("out/j1", "x.mp4"), "out/j1/x.mp4");
        assert_eq!(output_key("", "x.mp4"), "x.mp4");
    }

    #[test]
    fn resolve_finds_globbed_and_plain_outputs() {
        let dir = std::env::temp_dir().join(format!("cellfarm-resolve-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("hls")).unwrap();
        for f in ["hls/a_001.ts", "hls/a_000.ts", "hls/a.m3u8", "poster.jpg"] {
            std::fs::write(dir.join(f), b"x").unwrap();
        }
        assert_eq!(
            resolve(&dir, "hls/*.ts"),
            vec!["hls/a_000.ts", "hls/a_001.ts"]
        );
        assert_eq!(resolve(&dir, "poster.jpg"), vec!["poster.jpg"]);
        assert!(resolve(&dir, "missing.jpg").is_empty());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
