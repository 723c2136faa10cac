//! A chunked title's assembly: its parts joined by stream copy, and published only
//! when the result is frame for frame the chunks, as long as the source, and decodes
//! without error.

use std::path::PathBuf;

use super::{output_error, Job};
use crate::chunk::{self, Checked, Chunking, Plan};
use crate::failure::JobFailure;
use crate::ffmpeg::probe;
use crate::job::Part;
use crate::ledger::{JobState, PartRow};
use crate::store::StoreError;

use crate::cell::laps::Phase;
use crate::cell::work::{self, Outcome, OutputFile};

/// A title's done parts: its chunks in order, and its audio's object (bucket, key).
struct Parts {
    chunks: Vec<Done>,
    audio: Option<(String, String)>,
}

/// What the join reads: the chunks' concat list, and the audio.
type Inputs = (PathBuf, Option<PathBuf>);

/// A chunk as its part committed it.
struct Done {
    job_id: String,
    bucket: String,
    checked: Checked,
}

impl Job<'_, '_> {
    /// Joins the title's parts, checks the whole, and publishes it; a chunk that
    /// disagrees with the others or with what it committed goes back to be encoded
    /// again.
    pub(super) async fn assemble(
        &mut self,
        plan: &Plan,
        chunking: &Chunking,
    ) -> Result<Outcome, JobFailure> {
        let parts = self.attempt.parts().await?;
        let Parts { chunks, audio } = self.done_parts(&parts, plan)?;
        let first = &chunks[0].checked.params;
        let odd: Vec<&Done> = chunks
            .iter()
            .filter(|c| c.checked.params != *first)
            .collect();
        if !odd.is_empty() {
            let reason = format!(
                "chunk {} is {}, chunk 0 is {first}: a stream copy cannot join them",
                odd[0].checked.index, odd[0].checked.params
            );
            return Ok(redo(odd, reason));
        }
        let (inputs, altered) = self.download_parts(&chunks, audio.as_ref()).await?;
        self.ctx.laps.lap(Phase::Download);
        if let Some(first) = altered.first() {
            let reason = format!(
                "chunk {}'s object is gone or not the bytes it committed",
                first.checked.index
            );
            return Ok(redo(altered, reason));
        }
        let out = self.join(&inputs, chunking).await?;
        self.ctx.laps.lap(Phase::Ffmpeg);
        if let Some(redo) = self.compare(&out, plan, &chunks).await? {
            return Ok(redo);
        }
        let found = work::describe(self.ctx, &out, &self.limits, &self.attempt.cancel)
            .await
            .map_err(|e| output_error(&chunking.output, e))?;
        within_a_frame(&found, plan).map_err(|e| output_error(&chunking.output, e))?;
        self.ctx.laps.lap(Phase::Checks);
        if !self.attempt.holds().await? {
            return Err(JobFailure::Superseded);
        }
        let source: probe::Probe = self
            .attempt
            .known_probe
            .clone()
            .and_then(|v| serde_json::from_value(v).ok())
            .unwrap_or_default();
        let file = OutputFile {
            rel: chunking.output.clone(),
            path: out,
            content_type: Some("video/mp4".into()),
            probe: Some(found),
        };
        let produced = work::publish(
            self.ctx,
            self.attempt,
            &source,
            vec![file],
            Vec::new(),
            &self.scratch,
        )
        .await?;
        self.ctx.laps.lap(Phase::Upload);
        Ok(Outcome::Made(Box::new(produced)))
    }

    /// The title's chunks in order, each with what it committed, and its audio part's
    /// object; every part must have succeeded, and the chunks be the plan's.
    fn done_parts(&self, parts: &[PartRow], plan: &Plan) -> Result<Parts, JobFailure> {
        let mut chunks = Vec::new();
        let mut audio = None;
        for part in parts {
            let result = match (&part.result, part.state) {
                (Some(r), JobState::Succeeded) => r,
                _ => {
                    let reason =
                        format!("part {} is {}, not done", part.message.job_id, part.state);
                    return Err(self.bad(reason));
                }
            };
            let output = result
                .outputs
                .first()
                .ok_or_else(|| self.bad("a part without its object"))?;
            match (&part.message.part, &result.chunk) {
                (Some(Part::Chunk(_)), Some(checked)) => chunks.push(Done {
                    job_id: part.message.job_id.clone(),
                    bucket: output.bucket.clone(),
                    checked: (**checked).clone(),
                }),
                (Some(Part::Audio), _) => audio = Some((output.bucket.clone(), output.key.clone())),
                _ => {
                    return Err(self.bad(format!(
                        "part {} is not a chunk or audio",
                        part.message.job_id
                    )))
                }
            }
        }
        let expected: Vec<u64> = plan.chunks.iter().map(|c| c.frames).collect();
        let found: Vec<u64> = chunks.iter().map(|c| c.checked.frames).collect();
        if expected != found || plan.audio != audio.is_some() {
            return Err(self.bad(format!(
                "the parts ({found:?} frames, audio {}) are not the plan's ({expected:?}, audio {})",
                audio.is_some(),
                plan.audio
            )));
        }
        Ok(Parts { chunks, audio })
    }

    /// Downloads the chunks and the audio into `in/`: the chunks' concat list and the
    /// audio's path, and the chunks whose object is gone or not the bytes they
    /// committed (SHA-256), to be made again.
    async fn download_parts<'d>(
        &self,
        chunks: &'d [Done],
        audio: Option<&(String, String)>,
    ) -> Result<(Inputs, Vec<&'d Done>), JobFailure> {
        use futures_util::{StreamExt, TryStreamExt};
        let store = self.ctx.store;
        let wanted: Vec<(String, String, PathBuf)> = chunks
            .iter()
            .map(|c| {
                let local = self.scratch.0.join(chunk_file(c.checked.index));
                (c.bucket.clone(), c.checked.key.clone(), local)
            })
            .collect();
        let fetches = wanted.into_iter().map(|(bucket, key, local)| async move {
            match store.download(&bucket, &key, None, &local).await {
                Ok(_) => {}
                Err(StoreError::NotFound { .. }) => return Ok((local, None)),
                Err(e) => return Err(JobFailure::from(e)),
            }
            let path = local.clone();
            let sha = tokio::task::spawn_blocking(move || work::digest(&path))
                .await
                .map_err(std::io::Error::other)
                .and_then(|r| r)
                .map_err(|source| JobFailure::Scratch {
                    path: local.display().to_string(),
                    source,
                })?;
            Ok((local, Some(sha.1)))
        });
        let fetched: Vec<(PathBuf, Option<String>)> = futures_util::stream::iter(fetches)
            .buffered(4)
            .try_collect()
            .await?;
        let altered: Vec<&Done> = chunks
            .iter()
            .zip(&fetched)
            .filter(|(c, (_, sha))| sha.as_deref() != Some(c.checked.sha256.as_str()))
            .map(|(c, _)| c)
            .collect();
        let locals: Vec<&PathBuf> = fetched.iter().map(|(p, _)| p).collect();
        let list: String = locals
            .iter()
            .map(|p| format!("file '{}'\n", work::path_arg(p)))
            .collect();
        let list_path = self.scratch.0.join("work/chunks.txt");
        std::fs::write(&list_path, list).map_err(|source| JobFailure::Scratch {
            path: list_path.display().to_string(),
            source,
        })?;
        let audio_path = match audio {
            Some((bucket, key)) => {
                let local = self.scratch.0.join("in/audio.m4a");
                store.download(bucket, key, None, &local).await?;
                Some(local)
            }
            None => None,
        };
        Ok(((list_path, audio_path), altered))
    }

    /// Joins the chunks by stream copy (the concat demuxer, our own list) and muxes the
    /// audio in.
    async fn join(
        &mut self,
        (list, audio): &Inputs,
        chunking: &Chunking,
    ) -> Result<PathBuf, JobFailure> {
        let out = self.scratch.0.join("out").join(&chunking.output);
        if let Some(dir) = out.parent() {
            std::fs::create_dir_all(dir).map_err(|source| JobFailure::Scratch {
                path: dir.display().to_string(),
                source,
            })?;
        }
        let mut step: Vec<String> = ["-f", "concat", "-safe", "0", "-i"]
            .map(String::from)
            .to_vec();
        step.push(work::path_arg(list));
        if let Some(a) = audio {
            step.extend(["-i".into(), work::path_arg(a)]);
        }
        step.extend(["-map".into(), "0:v:0".into()]);
        if audio.is_some() {
            step.extend(["-map".into(), "1:a:0".into()]);
        }
        step.extend(["-c", "copy", "-movflags", "+faststart"].map(String::from));
        step.push(work::path_arg(&out));
        // The list and the parts are this job's own files.
        self.limits.demuxers.push("concat".into());
        let args = crate::ffmpeg::ffmpeg_args(&step, &self.limits);
        self.encoding(crate::ffmpeg::run(
            self.ctx.sandbox,
            crate::ffmpeg::Tool::Ffmpeg,
            &args,
            &self.limits,
            &self.attempt.cancel,
        ))
        .await
        .map_err(|source| JobFailure::Step { step: 0, source })?;
        Ok(out)
    }

    /// Holds the assembled output to the chunks: the source's frame count, and each
    /// chunk's range of packets the very packets that chunk committed (one demux); then
    /// decodes it whole with `-xerror`. A chunk whose packets differ, or that does not
    /// decode cleanly by itself when the whole does not, is sent back.
    async fn compare(
        &self,
        out: &std::path::Path,
        plan: &Plan,
        chunks: &[Done],
    ) -> Result<Option<Outcome>, JobFailure> {
        let codec = &chunks[0].checked.params.codec;
        let md5s = self.packets(out, codec, "work/title.md5").await?;
        let mut at = 0usize;
        let mut differ = Vec::new();
        for c in chunks {
            let end = (at + c.checked.frames as usize).min(md5s.len());
            let got: Vec<&str> = md5s[at..end].iter().map(String::as_str).collect();
            if chunk::digest(&got) != c.checked.digest {
                differ.push(c);
            }
            at = end;
        }
        if let Some(first) = differ.first() {
            let reason = format!(
                "the assembled frames of chunk {} are not the frames it committed",
                first.checked.index
            );
            return Ok(Some(redo(differ, reason)));
        }
        if md5s.len() as u64 != plan.frames {
            return Err(output_error(
                "the assembled output",
                format!("{} frames, the source has {}", md5s.len(), plan.frames),
            ));
        }
        let Err(log) = self.decodes(out).await? else {
            return Ok(None);
        };
        let mut culprits = Vec::new();
        for c in chunks {
            let local = self.scratch.0.join(chunk_file(c.checked.index));
            if self.decodes(&local).await?.is_err() {
                culprits.push(c);
            }
        }
        match culprits.first() {
            Some(first) => {
                let reason = format!("chunk {} does not decode cleanly", first.checked.index);
                Ok(Some(redo(culprits, reason)))
            }
            None => Err(output_error("the assembled output", log)),
        }
    }
}

/// Where the assembly downloads chunk `index`, under its scratch directory.
fn chunk_file(index: u32) -> String {
    format!("in/chunk-{index:05}.mp4")
}

/// Sends `chunks` back to be encoded again.
fn redo(chunks: Vec<&Done>, reason: String) -> Outcome {
    Outcome::Redo {
        parts: chunks.into_iter().map(|c| c.job_id.clone()).collect(),
        reason,
    }
}

/// The output's video lasts the source's within one frame, and it has audio exactly
/// when the title does.
fn within_a_frame(found: &probe::Probe, plan: &Plan) -> Result<(), String> {
    let secs = found.video_duration().unwrap_or(0.0);
    if (secs - plan.video_secs).abs() > plan.frame_secs + 1e-3 {
        return Err(format!(
            "its video lasts {secs:.3} s, the source's {:.3} s",
            plan.video_secs
        ));
    }
    if found.audio().is_some() != plan.audio {
        return Err(format!(
            "audio {}, the source's {}",
            found.audio().is_some(),
            plan.audio
        ));
    }
    Ok(())
}
