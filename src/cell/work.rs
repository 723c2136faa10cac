//! One attempt at one job, from source object to uploaded outputs.
//!
//! Everything happens in a scratch directory of its own (`<scratch>/<job>-<attempt>-<cell>`)
//! that is removed when the attempt ends, however it ends. The object key never becomes
//! an FFmpeg argument: the source is downloaded to a fixed name (`in/source`).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use tokio_util::sync::CancellationToken;

use crate::config::{Config, OutputSpec, Pipeline};
use crate::failure::JobFailure;
use crate::ffmpeg::{self, probe, Limits};
use crate::job::{JobMessage, OutputObject};
use crate::s3url::S3Url;
use crate::store::ObjectStore;

use super::attempt::Attempt;

/// What an attempt needs from its cell.
pub struct Context<'a> {
    pub config: &'a Config,
    pub store: &'a dyn ObjectStore,
    pub threads: usize,
    /// Told the attempt's estimated wall seconds once the source is probed.
    pub estimate: &'a (dyn Fn(f64) + Sync),
}

/// A directory removed on drop.
struct Scratch(PathBuf);

impl Scratch {
    fn create(path: PathBuf) -> Result<Scratch, JobFailure> {
        let scratch = Scratch(path);
        for sub in ["in", "out", "work"] {
            let dir = scratch.0.join(sub);
            std::fs::create_dir_all(&dir).map_err(|source| JobFailure::Scratch {
                path: dir.display().to_string(),
                source,
            })?;
        }
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

/// Runs the job's pipeline and uploads its outputs; the caller commits to the ledger.
pub async fn execute(
    ctx: &Context<'_>,
    attempt: &Attempt<'_>,
) -> Result<Vec<OutputObject>, JobFailure> {
    let job = &attempt.job;
    let pipeline = ctx
        .config
        .pipelines
        .get(&job.pipeline)
        .ok_or_else(|| JobFailure::Pipeline {
            pipeline: job.pipeline.clone(),
            reason: "no such pipeline in the cell's config".into(),
        })?;
    let limits = limits(ctx.config, pipeline);
    let root = Path::new(&ctx.config.cell.scratch_dir).join(format!(
        "{}-{}-{}",
        job.job_id, attempt.id.attempt, attempt.id.cell_id
    ));
    let scratch = Scratch::create(root)?;
    let source_probe = fetch_source(ctx, attempt, pipeline, &limits, &scratch).await?;
    let vars = fetch_assets(ctx, pipeline, &scratch).await?;
    let commands =
        ffmpeg::commands(pipeline.step_args(), &vars, &limits.demuxers).map_err(|reason| {
            JobFailure::Pipeline {
                pipeline: job.pipeline.clone(),
                reason,
            }
        })?;
    for (i, args) in commands.iter().enumerate() {
        ffmpeg::run("ffmpeg", args, &limits, &attempt.cancel)
            .await
            .map_err(|source| JobFailure::Step { step: i, source })?;
    }
    // Outputs are our own files with names from the config, so image outputs may be
    // probed with the image2 demuxer that untrusted sources are denied.
    let mut output_limits = limits.clone();
    output_limits.demuxers.push("image2".into());
    let out = scratch.0.join("out");
    let files = check_outputs(
        pipeline,
        &out,
        &source_probe,
        &output_limits,
        &attempt.cancel,
    )
    .await?;
    // Last look before anything becomes visible: a superseded attempt uploads nothing.
    if !attempt.holds().await? {
        return Err(JobFailure::Superseded);
    }
    upload(ctx, job, files).await
}

/// Downloads the source to `in/source` and probes it; the estimate and the ledger learn
/// what it is.
async fn fetch_source(
    ctx: &Context<'_>,
    attempt: &Attempt<'_>,
    pipeline: &Pipeline,
    limits: &Limits,
    scratch: &Scratch,
) -> Result<probe::Probe, JobFailure> {
    let input = scratch.0.join("in/source");
    let src = &attempt.job.source;
    ctx.store
        .download(&src.bucket, &src.key, Some(&src.etag), &input)
        .await?;
    let source_probe = probe::probe(&input, limits, &attempt.cancel)
        .await
        .map_err(JobFailure::Probe)?;
    if source_probe.video().is_none() && source_probe.audio().is_none() {
        return Err(JobFailure::Output {
            path: "source".into(),
            reason: "the source has no audio or video stream".into(),
        });
    }
    if let Some(duration) = source_probe.duration {
        (ctx.estimate)(duration * pipeline.cost_factor);
    }
    let probe_json = serde_json::to_value(&source_probe).expect("a probe always serializes");
    attempt.record_probe(&probe_json).await?;
    Ok(source_probe)
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

/// Uploads the checked outputs under the job's output prefix.
async fn upload(
    ctx: &Context<'_>,
    job: &JobMessage,
    files: Vec<OutputFile>,
) -> Result<Vec<OutputObject>, JobFailure> {
    let dest = S3Url::parse(&job.output).map_err(|reason| JobFailure::Pipeline {
        pipeline: job.pipeline.clone(),
        reason,
    })?;
    let mut outputs = Vec::with_capacity(files.len());
    for (rel, path, content_type) in files {
        let key = output_key(&dest.key, &rel);
        let size = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
        ctx.store
            .upload(&dest.bucket, &key, &path, content_type.as_deref())
            .await?;
        outputs.push(OutputObject {
            bucket: dest.bucket.clone(),
            key,
            size,
        });
    }
    Ok(outputs)
}

fn limits(config: &Config, pipeline: &Pipeline) -> Limits {
    let secs = pipeline
        .step_timeout_secs
        .unwrap_or(config.cell.step_timeout_secs);
    Limits {
        timeout: std::time::Duration::from_secs(secs),
        memory_bytes: config.cell.ffmpeg_memory_mib * 1024 * 1024,
        demuxers: config.cell.demuxers.clone(),
    }
}

fn path_arg(path: &Path) -> String {
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

type OutputFile = (String, PathBuf, Option<String>);

/// Finds every declared output and checks it; a missing or wrong output fails the job.
async fn check_outputs(
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
            if needs_probe(spec) {
                let p =
                    probe::probe(&path, limits, cancel)
                        .await
                        .map_err(|e| JobFailure::Output {
                            path: rel.clone(),
                            reason: e.to_string(),
                        })?;
                probe::verify(&spec.expect(), &p, source).map_err(|reason| JobFailure::Output {
                    path: rel.clone(),
                    reason,
                })?;
            }
            files.push((rel, path, spec.content_type.clone()));
        }
    }
    Ok(files)
}

fn needs_probe(spec: &OutputSpec) -> bool {
    spec.video_codec.is_some()
        || spec.audio_codec.is_some()
        || spec.width.is_some()
        || spec.height.is_some()
        || spec.duration.is_some()
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
