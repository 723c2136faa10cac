//! The jobs of a chunked pipeline (see [`crate::chunk`]): the title's split, each
//! chunk's encode and checks, the audio's encode, and the title's validated assembly.
//!
//! Parts are written under the title's output prefix, in `_chunks/`: the assembly
//! reads them from there, and they stay, so that a title can be assembled again
//! without encoding again (an S3 lifecycle rule on `_chunks/` expires them).

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Arc, Mutex};

use crate::chunk::{self, Checked, Chunk, Chunking, Frames, Params, Plan};
use crate::config::Pipeline;
use crate::failure::JobFailure;
use crate::ffmpeg::{self, probe, Access, FfmpegError, Limits, Tool};
use crate::job::{JobMessage, OutputObject, Part};

use super::attempt::Attempt;
use super::laps::Phase;
use super::work::{self, Context, Outcome, Produced, Scratch};

/// Work-seconds of a title's audio encode per second of source: AAC runs at hundreds
/// of times real time, a small share beside any video encode.
const AUDIO_COST: f64 = 0.02;

/// Runs one job of a chunked pipeline: the part its message names, or the title's
/// assembly when the ledger handed it a plan, or else the title's split.
pub(super) async fn execute(
    ctx: &Context<'_>,
    attempt: &Attempt<'_>,
    pipeline: &Pipeline,
    chunking: &Chunking,
) -> Result<Outcome, JobFailure> {
    let mut job = Job::start(ctx, attempt, pipeline).await?;
    match (&attempt.job.part, &attempt.plan) {
        (Some(Part::Chunk(c)), _) => job.chunk(c, chunking).await.map(made),
        (Some(Part::Audio), _) => job.audio(chunking).await.map(made),
        (None, Some(plan)) => {
            let plan: Plan = serde_json::from_value(plan.clone()).map_err(|e| job.bad(e))?;
            job.derive_timeout(plan.video_secs);
            job.assemble(&plan, chunking).await
        }
        (None, None) => job.split(chunking).await,
    }
}

fn made(produced: Produced) -> Outcome {
    Outcome::Made(Box::new(produced))
}

/// One attempt at a chunked pipeline's job, in its scratch directory.
struct Job<'c, 'a> {
    ctx: &'c Context<'c>,
    attempt: &'c Attempt<'a>,
    pipeline: &'c Pipeline,
    limits: Limits,
    scratch: Scratch,
    /// The source's probe: the ledger's, or this attempt's.
    source: Option<probe::Probe>,
}

impl<'c, 'a> Job<'c, 'a> {
    /// Makes the scratch directory and, except for an assembly, downloads and probes
    /// the source.
    async fn start(
        ctx: &'c Context<'c>,
        attempt: &'c Attempt<'a>,
        pipeline: &'c Pipeline,
    ) -> Result<Job<'c, 'a>, JobFailure> {
        let mut limits = work::limits(ctx.config, pipeline);
        let root = work::scratch_root(ctx, attempt);
        let assembling = attempt.plan.is_some();
        let meta = match assembling {
            true => None,
            false => Some(work::make_room(ctx, &attempt.job, pipeline, &root).await?),
        };
        let scratch = Scratch::create(root, ctx.sandbox)?;
        ctx.laps.lap(Phase::Head);
        limits.access = Access::scratch(&scratch.0);
        let mut job = Job {
            ctx,
            attempt,
            pipeline,
            limits,
            scratch,
            source: None,
        };
        if let Some(meta) = meta {
            let source =
                work::fetch_source(ctx, attempt, &meta, pipeline, &job.limits, &job.scratch)
                    .await?;
            job.derive_timeout(source.duration.unwrap_or(0.0));
            job.source = Some(source);
        }
        Ok(job)
    }

    /// Unless a step timeout is set by hand, derives it from the title's length (as an
    /// ordinary job's): a chunk may decode the title up to its cut, an assembly decodes
    /// the whole result.
    fn derive_timeout(&mut self, title_secs: f64) {
        if work::explicit_timeout(self.ctx.config, self.pipeline).is_none() {
            let floor = self.ctx.config.cell.min_step_timeout_secs;
            let secs = self.pipeline.derived_timeout_secs(title_secs, floor);
            self.limits.timeout = std::time::Duration::from_secs(secs);
        }
    }

    fn bad(&self, reason: impl std::fmt::Display) -> JobFailure {
        JobFailure::Pipeline {
            pipeline: self.attempt.job.pipeline.clone(),
            reason: reason.to_string(),
        }
    }

    fn path(&self, rel: &str) -> String {
        work::path_arg(&self.scratch.0.join(rel))
    }

    fn source(&self) -> &probe::Probe {
        self.source
            .as_ref()
            .expect("a part's or split's source is probed")
    }

    /// Decides the cut points and the parts: a split decodes nothing unless the
    /// pipeline cuts at scenes.
    async fn split(&mut self, chunking: &Chunking) -> Result<Outcome, JobFailure> {
        let frames = self.frames().await?;
        let scenes = match &chunking.scenes {
            Some(s) => self.scene_cuts(s.threshold, &frames).await?,
            None => Vec::new(),
        };
        let starts = chunk::cuts(&frames, chunking, &scenes);
        let plan = chunk::plan(&frames, &starts, self.source().audio().is_some());
        self.ctx.laps.lap(Phase::Ffmpeg);
        let title = &self.attempt.job;
        let cost = self.pipeline.cost_factor;
        let mut parts: Vec<JobMessage> = plan
            .chunks
            .iter()
            .map(|c| title.child(Part::Chunk(c.clone()), c.secs * cost))
            .collect();
        if plan.audio {
            parts.push(title.child(Part::Audio, plan.video_secs * AUDIO_COST));
        }
        tracing::info!(
            chunks = plan.chunks.len(),
            frames = plan.frames,
            at_keyframes = plan.chunks.iter().filter(|c| c.at_keyframe).count(),
            scene_cuts = scenes.len(),
            "title planned"
        );
        Ok(Outcome::Split { plan, parts })
    }

    /// Every video frame's time and key flag, from one demux of the source.
    async fn frames(&self) -> Result<Frames, JobFailure> {
        if self.source().video().is_none() {
            return Err(self.bad("a chunked pipeline needs a source with video"));
        }
        let source = self.scratch.0.join("in/source");
        let listing = self
            .listing(&source, "packet=pts_time,flags:format=start_time")
            .await
            .map_err(JobFailure::Probe)?;
        Frames::parse(&listing).map_err(|reason| JobFailure::Output {
            path: "source".into(),
            reason,
        })
    }

    /// The frames where `scdet` sees a scene change, from one decode at a small size.
    async fn scene_cuts(&self, threshold: f64, frames: &Frames) -> Result<Vec<usize>, JobFailure> {
        let step: Vec<String> = vec![
            "-i".into(),
            self.path("in/source"),
            "-map".into(),
            "0:v:0".into(),
            "-vf".into(),
            format!("scale=-2:144,scdet=threshold={threshold}"),
            "-f".into(),
            "null".into(),
            "-".into(),
        ];
        let args = ffmpeg::ffmpeg_args_logging(&step, &self.limits, "info");
        let (ran, logged) = self.run_logged(&args).await;
        ran.map_err(|source| JobFailure::Step { step: 0, source })?;
        let mut cuts: Vec<usize> = logged
            .iter()
            .filter_map(|line| chunk::scene_cut(line, frames))
            .collect();
        cuts.sort_unstable();
        cuts.dedup();
        Ok(cuts)
    }

    /// Runs FFmpeg with `args` holding an encoder slot; how it ended, and every line it
    /// logged.
    async fn run_logged(&self, args: &[String]) -> (Result<(), FfmpegError>, Vec<String>) {
        let log = Arc::new(Mutex::new(Vec::<String>::new()));
        let sink = log.clone();
        let watch: ffmpeg::Watch =
            Box::new(move |line| sink.lock().expect("never poisoned").push(line.to_string()));
        let ran = self
            .encoding(ffmpeg::run_watching(
                self.ctx.sandbox,
                Tool::Ffmpeg,
                args,
                &self.limits,
                &self.attempt.cancel,
                watch,
            ))
            .await;
        let logged = std::mem::take(&mut *log.lock().expect("never poisoned"));
        (ran, logged)
    }

    /// Runs `run` holding an encoder slot: the job's FFmpeg work, not its transfers.
    async fn encoding<T>(
        &self,
        run: impl std::future::Future<Output = Result<T, FfmpegError>>,
    ) -> Result<T, FfmpegError> {
        let Some(encoder) = self.ctx.turn.encoder(&self.attempt.cancel).await else {
            return Err(FfmpegError::Cancelled {
                program: "ffmpeg".into(),
            });
        };
        self.ctx.laps.lap(Phase::Slot);
        (self.ctx.encoding)(true);
        let ran = run.await;
        (self.ctx.encoding)(false);
        drop(encoder);
        ran
    }

    /// Encodes one chunk's frames exactly, checks the chunk against its plan, and
    /// uploads it.
    async fn chunk(&mut self, c: &Chunk, chunking: &Chunking) -> Result<Produced, JobFailure> {
        (self.ctx.estimate)(c.secs * self.pipeline.cost_factor);
        let mut step: Vec<String> = Vec::new();
        if c.first_frame > 0 {
            step.extend(["-ss".into(), format!("{:.6}", c.seek)]);
        }
        // The accurate seek drops the frames before the chunk's first; the timestamps
        // then start at zero, so that no frame is duplicated to fill the gap.
        let filter = match &chunking.filter {
            Some(f) => format!("setpts=PTS-STARTPTS,{f}"),
            None => "setpts=PTS-STARTPTS".into(),
        };
        step.extend(["-i", "{input}", "-map", "0:v:0", "-vf"].map(String::from));
        step.extend([filter, "-frames:v".into(), c.frames.to_string()]);
        step.extend(chunking.video.iter().cloned());
        step.extend(["-an".into(), "{out}/chunk.mp4".into()]);
        self.run(&step, Some(c.secs)).await?;
        self.ctx.laps.lap(Phase::Ffmpeg);
        let file = self.scratch.0.join("out/chunk.mp4");
        let checked = self.check_chunk(c, &file).await?;
        self.ctx.laps.lap(Phase::Checks);
        let key = part_key(
            &self.attempt.job,
            &format!("{}.mp4", Part::Chunk(c.clone()).tag()),
        )?;
        let output = self.upload(&key, &file, "video/mp4").await?;
        Ok(Produced {
            outputs: vec![output],
            manifest: None,
            warnings: Vec::new(),
            reports: Vec::new(),
            chunk: Some(Checked {
                key: key.key,
                ..checked
            }),
        })
    }

    /// Encodes the title's whole audio once, and uploads it.
    async fn audio(&mut self, chunking: &Chunking) -> Result<Produced, JobFailure> {
        let mut step: Vec<String> = ["-i", "{input}", "-map", "0:a:0", "-vn"]
            .map(String::from)
            .to_vec();
        step.extend(chunking.audio.iter().cloned());
        step.push("{out}/audio.m4a".into());
        self.run(&step, self.source().duration).await?;
        self.ctx.laps.lap(Phase::Ffmpeg);
        let file = self.scratch.0.join("out/audio.m4a");
        let found = work::describe(self.ctx, &file, &self.limits, &self.attempt.cancel)
            .await
            .map_err(|e| output_error("audio.m4a", e))?;
        if found.audio().is_none() {
            return Err(output_error("audio.m4a", "no audio stream"));
        }
        self.ctx.laps.lap(Phase::Checks);
        let key = part_key(&self.attempt.job, "audio.m4a")?;
        let output = self.upload(&key, &file, "audio/mp4").await?;
        Ok(Produced {
            outputs: vec![output],
            manifest: None,
            warnings: Vec::new(),
            reports: Vec::new(),
            chunk: None,
        })
    }

    /// Runs one FFmpeg step (`{input}`, `{out}` and `{threads}` expanded) holding an
    /// encoder slot, reporting progress over `secs` of media.
    async fn run(&self, step: &[String], secs: Option<f64>) -> Result<(), JobFailure> {
        let vars: BTreeMap<&str, String> = [
            ("input", self.path("in/source")),
            ("out", self.path("out")),
            ("threads", self.ctx.threads.to_string()),
        ]
        .into_iter()
        .collect();
        let args = ffmpeg::command(step, &vars, &self.limits).map_err(|e| self.bad(e))?;
        let report = work::step_report(&self.ctx.progress, 0, 1, secs);
        self.encoding(ffmpeg::run_reporting(
            self.ctx.sandbox,
            Tool::Ffmpeg,
            &args,
            &self.limits,
            &self.attempt.cancel,
            Some(report),
        ))
        .await
        .map(drop)
        .map_err(|source| JobFailure::Step { step: 0, source })
    }

    /// What the chunk is: its coded frames counted and digested (one demux), its length
    /// and codec parameters read; a chunk that disagrees with its plan fails, to be
    /// encoded again. The chunk is not decoded here: the assembly decodes the whole
    /// title once, and only on an error the chunks one by one, to find the culprit.
    async fn check_chunk(&self, c: &Chunk, file: &Path) -> Result<Checked, JobFailure> {
        let wrong = |reason: String| JobFailure::Chunk {
            index: c.index,
            reason,
        };
        let params = self.params(file).await.map_err(wrong)?;
        let md5s = self.packets(file, &params.codec, "work/chunk.md5").await?;
        let frames = md5s.len() as u64;
        if frames != c.frames {
            return Err(wrong(format!("{frames} frames, the plan has {}", c.frames)));
        }
        let found = work::describe(self.ctx, file, &self.limits, &self.attempt.cancel)
            .await
            .map_err(|e| wrong(e.to_string()))?;
        let secs = found.video_duration().unwrap_or(0.0);
        let frame = c.secs / c.frames.max(1) as f64;
        if (secs - c.secs).abs() > frame + 1e-3 {
            return Err(wrong(format!(
                "{secs:.3} s long, the plan has {:.3} s",
                c.secs
            )));
        }
        Ok(Checked {
            index: c.index,
            key: String::new(),
            frames,
            secs,
            params,
            digest: chunk::digest(&md5s.iter().map(String::as_str).collect::<Vec<_>>()),
            sha256: work::digest(file)
                .map_err(|source| JobFailure::Scratch {
                    path: file.display().to_string(),
                    source,
                })?
                .1,
        })
    }

    /// The MD5 of each of `file`'s video packets (its coded frames, of `codec`), in
    /// order, from one demux (`-c copy -f framemd5`, written to `md5_rel`): nothing is
    /// decoded. The parameter sets are left out ([`parameter_sets_out`]): a join by the
    /// concat demuxer repeats them in every chunk's first packet.
    async fn packets(
        &self,
        file: &Path,
        codec: &str,
        md5_rel: &str,
    ) -> Result<Vec<String>, JobFailure> {
        let mut step: Vec<String> = ["-i", &work::path_arg(file), "-map", "0:v:0", "-c", "copy"]
            .map(String::from)
            .to_vec();
        if let Some(filter) = parameter_sets_out(codec) {
            step.extend(["-bsf:v".into(), filter.into()]);
        }
        step.extend(["-f".into(), "framemd5".into(), self.path(md5_rel)]);
        let args = ffmpeg::ffmpeg_args(&step, &self.limits);
        ffmpeg::run(
            self.ctx.sandbox,
            Tool::Ffmpeg,
            &args,
            &self.limits,
            &self.attempt.cancel,
        )
        .await
        .map_err(|source| JobFailure::Step { step: 0, source })?;
        let path = self.scratch.0.join(md5_rel);
        let text = std::fs::read_to_string(&path).map_err(|source| JobFailure::Scratch {
            path: path.display().to_string(),
            source,
        })?;
        Ok(chunk::frame_md5s(&text)
            .into_iter()
            .map(String::from)
            .collect())
    }

    /// Decodes `file`'s video whole with `-xerror`: `Err` with what the decoder said
    /// when it failed or logged anything.
    async fn decodes(&self, file: &Path) -> Result<Result<(), String>, JobFailure> {
        let step: Vec<String> = vec![
            "-xerror".into(),
            "-i".into(),
            work::path_arg(file),
            "-map".into(),
            "0:v:0".into(),
            "-f".into(),
            "null".into(),
            "-".into(),
        ];
        let args = ffmpeg::ffmpeg_args(&step, &self.limits);
        let (ran, logged) = self.run_logged(&args).await;
        match ran {
            Err(e @ FfmpegError::Failed { .. }) => Ok(Err(format!("does not decode: {e}"))),
            Err(source) => Err(JobFailure::Step { step: 0, source }),
            Ok(()) if !logged.is_empty() => {
                Ok(Err(format!("decoding logged: {}", logged.join(" | "))))
            }
            Ok(()) => Ok(Ok(())),
        }
    }

    /// The video's codec parameters, as ffprobe reports them.
    async fn params(&self, file: &Path) -> Result<Params, String> {
        let entries = "stream=codec_name,profile,width,height,pix_fmt,time_base";
        let listing = self
            .listing(file, entries)
            .await
            .map_err(|e| e.to_string())?;
        parse_params(&listing)
    }

    /// ffprobe's `-of compact` listing of `entries` of `file`'s first video stream.
    async fn listing(&self, file: &Path, entries: &str) -> Result<String, FfmpegError> {
        let mut args: Vec<String> = vec!["-v".into(), "error".into()];
        args.extend(ffmpeg::input_guard(&self.limits));
        args.extend(["-select_streams", "v:0", "-show_entries", entries].map(String::from));
        args.extend(["-of", "compact", "-i"].map(String::from));
        args.push(work::path_arg(file));
        ffmpeg::run(
            self.ctx.sandbox,
            Tool::Ffprobe,
            &args,
            &self.limits,
            &self.attempt.cancel,
        )
        .await
    }

    async fn upload(
        &self,
        key: &crate::s3url::S3Url,
        file: &Path,
        content_type: &str,
    ) -> Result<OutputObject, JobFailure> {
        if !self.attempt.holds().await? {
            return Err(JobFailure::Superseded);
        }
        work::upload_patiently(self.ctx, &key.bucket, &key.key, file, Some(content_type)).await?;
        self.ctx.laps.lap(Phase::Upload);
        let size = std::fs::metadata(file).map(|m| m.len()).unwrap_or(0);
        Ok(OutputObject {
            bucket: key.bucket.clone(),
            key: key.key.clone(),
            size,
        })
    }
}

mod assemble;

/// The bitstream filter that drops a codec's parameter sets from its packets (H.264's
/// SPS and PPS, HEVC's VPS, SPS and PPS), when it has them in-band.
fn parameter_sets_out(codec: &str) -> Option<&'static str> {
    match codec {
        "h264" => Some("filter_units=remove_types=7|8"),
        "hevc" => Some("filter_units=remove_types=32|33|34"),
        _ => None,
    }
}

/// Where a part of `job`'s title is written: `<title's prefix>_chunks/<name>`.
fn part_key(job: &JobMessage, name: &str) -> Result<crate::s3url::S3Url, JobFailure> {
    let mut url = job.output_prefix().map_err(|reason| JobFailure::Pipeline {
        pipeline: job.pipeline.clone(),
        reason,
    })?;
    url.key = work::output_key(&url.key, &format!("_chunks/{name}"));
    Ok(url)
}

fn output_error(path: &str, reason: impl std::fmt::Display) -> JobFailure {
    JobFailure::Output {
        path: path.into(),
        reason: reason.to_string(),
    }
}

/// Reads ffprobe's `-of compact` line for a video stream
/// (`stream|codec_name=h264|profile=High|width=320|…`).
fn parse_params(listing: &str) -> Result<Params, String> {
    let line = listing
        .lines()
        .find(|l| l.starts_with("stream|"))
        .ok_or("no video stream")?;
    let field = |name: &str| {
        line.split('|')
            .find_map(|f| f.strip_prefix(name)?.strip_prefix('='))
            .unwrap_or_default()
            .to_string()
    };
    let number = |name: &str| field(name).parse::<u32>().map_err(|_| format!("no {name}"));
    Ok(Params {
        codec: field("codec_name"),
        profile: field("profile"),
        width: number("width")?,
        height: number("height")?,
        pix_fmt: field("pix_fmt"),
        time_base: field("time_base"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codec_parameters_are_read_from_a_compact_listing() {
        let p = parse_params(
            "stream|codec_name=h264|profile=High|width=320|height=240|pix_fmt=yuv420p|time_base=1/12800\n",
        )
        .unwrap();
        assert_eq!(p.to_string(), "h264 High 320×240 yuv420p tb 1/12800");
        assert!(parse_params("").is_err());
    }

    #[test]
    fn parts_go_under_the_titles_prefix() {
        let source = crate::job::SourceObject {
            bucket: "in".into(),
            key: "long.mov".into(),
            etag: "e".into(),
        };
        let title = JobMessage::new("long", source, "s3://out/long/t1/", false);
        let key = part_key(&title, "chunk-00002.mp4").unwrap();
        assert_eq!(key.key, "long/t1/_chunks/chunk-00002.mp4");
        assert_eq!(key.bucket, "out");
    }
}
