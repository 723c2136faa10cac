//! The job message (contract v1), the result message, and the job id.
//!
//! Messages are JSON. Readers tolerate unknown fields, so a newer producer's message is
//! still read by an older cell while queues are full (Hudl's rolling updates); a message
//! of another major version is refused with a reason and dead-lettered.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// The message version this build writes and reads.
pub const VERSION: u32 = 1;

/// One unit of work: run `pipeline` on `source`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobMessage {
    pub v: u32,
    pub job_id: String,
    pub pipeline: String,
    pub source: SourceObject,
    /// Where outputs go (`s3://bucket/prefix/`): the pipeline's `output` template
    /// expanded at submission (see [`crate::outkey`]), so a config change does not move a
    /// queued job's outputs.
    pub output: String,
    /// True when `output` is this job's own expanded prefix; false in messages from
    /// builds before output templates, whose `output` is the pipeline's prefix, under
    /// which the job writes to `<job id>/` (see [`JobMessage::output_prefix`]).
    #[serde(default)]
    pub output_expanded: bool,
    #[serde(default)]
    pub priority: bool,
    /// Estimated work in seconds (probe duration × pipeline cost), when known.
    #[serde(default)]
    pub work_secs: Option<f64>,
    /// Delivery attempt this message starts; the ledger is the authority.
    #[serde(default)]
    pub attempt: u32,
    /// Set on the jobs a chunked title is split into: which part of the title this job
    /// makes (see [`crate::chunk`]). A title's own message has none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub part: Option<Part>,
}

/// One part of a chunked title, made by its own job.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Part {
    /// The video of frames `first_frame .. first_frame + frames` of the source.
    Chunk(crate::chunk::Chunk),
    /// The title's whole audio, encoded once (AAC encoded per chunk would drift by its
    /// priming samples at each join).
    Audio,
}

impl Part {
    /// The part's name in its job id and its object key: `chunk-00003`, `audio`.
    pub fn tag(&self) -> String {
        match self {
            Part::Chunk(c) => format!("chunk-{:05}", c.index),
            Part::Audio => "audio".into(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SourceObject {
    pub bucket: String,
    pub key: String,
    /// ETag without quotes.
    pub etag: String,
}

/// Published on the results queue once a job's outputs are durable.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ResultMessage {
    pub v: u32,
    pub job_id: String,
    pub pipeline: String,
    pub source: SourceObject,
    pub outputs: Vec<OutputObject>,
    /// The job's `_manifest.json`, written after every output: a reader that sees it
    /// sees them all.
    #[serde(default)]
    pub manifest: Option<OutputObject>,
    pub attempt: u32,
    pub cell_id: String,
    /// The defects the pipeline's detector passes flagged, one line each
    /// (`source: black picture from 2.00 s to 4.00 s`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
    /// The detector passes' reports, also written beside the outputs.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub defects: Vec<crate::ffmpeg::detect::Report>,
    /// What a chunk's own checks found of the chunk it made, for the title's assembly.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub chunk: Option<Box<crate::chunk::Checked>>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OutputObject {
    pub bucket: String,
    pub key: String,
    pub size: u64,
}

/// Why a message body is not a job.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum MessageError {
    #[error("message is not JSON: {0}")]
    NotJson(String),
    #[error("message has version {0}, this cell reads version {VERSION}")]
    Version(u64),
    #[error("message has no version field \"v\"")]
    NoVersion,
    #[error("message is not a valid v1 job: {0}")]
    Invalid(String),
}

impl JobMessage {
    pub fn new(pipeline: &str, source: SourceObject, output: &str, priority: bool) -> Self {
        JobMessage {
            v: VERSION,
            job_id: job_id(&source.bucket, &source.key, &source.etag, pipeline),
            pipeline: pipeline.into(),
            source,
            output: output.into(),
            output_expanded: true,
            priority,
            work_secs: None,
            attempt: 0,
            part: None,
        }
    }

    /// The job that makes `part` of this title: the same source, pipeline and output,
    /// its own id, weighing `work_secs`.
    pub fn child(&self, part: Part, work_secs: f64) -> JobMessage {
        let tag = part.tag();
        JobMessage {
            job_id: part_id(&self.job_id, &tag),
            part: Some(part),
            work_secs: Some(work_secs),
            attempt: 0,
            ..self.clone()
        }
    }

    /// Reads a message body, checking the version before the fields.
    pub fn parse(body: &[u8]) -> Result<JobMessage, MessageError> {
        let value: serde_json::Value =
            serde_json::from_slice(body).map_err(|e| MessageError::NotJson(e.to_string()))?;
        match value.get("v").map(serde_json::Value::as_u64) {
            None => return Err(MessageError::NoVersion),
            Some(Some(v)) if v == u64::from(VERSION) => {}
            Some(Some(v)) => return Err(MessageError::Version(v)),
            Some(None) => return Err(MessageError::Invalid("\"v\" is not a number".into())),
        }
        let job: JobMessage =
            serde_json::from_value(value).map_err(|e| MessageError::Invalid(e.to_string()))?;
        let title = job_id(
            &job.source.bucket,
            &job.source.key,
            &job.source.etag,
            &job.pipeline,
        );
        let expected = match &job.part {
            None => title,
            Some(part) => part_id(&title, &part.tag()),
        };
        if job.job_id != expected {
            return Err(MessageError::Invalid(format!(
                "job_id {} does not match its source and pipeline",
                job.job_id
            )));
        }
        Ok(job)
    }

    /// The key prefix, ending in `/`, this job's outputs and manifest go under.
    pub fn output_prefix(&self) -> Result<crate::s3url::S3Url, String> {
        let mut url = crate::s3url::S3Url::parse(&self.output)?;
        let base = url.key.trim_end_matches('/');
        let sep = if base.is_empty() { "" } else { "/" };
        url.key = if self.output_expanded {
            format!("{base}{sep}")
        } else {
            format!("{base}{sep}{}/", self.job_id)
        };
        Ok(url)
    }

    pub fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("a job message always serializes")
    }
}

/// Strips the quotes S3 puts around ETags in HEAD and List responses (events omit them).
pub fn unquote_etag(etag: &str) -> &str {
    etag.trim().trim_matches('"')
}

/// The job id: the same upload (bucket, key, ETag) through the same pipeline is the same
/// job, however often it is submitted or its event is delivered.
pub fn job_id(bucket: &str, key: &str, etag: &str, pipeline: &str) -> String {
    let mut h = Sha256::new();
    for part in [bucket, key, unquote_etag(etag), pipeline] {
        h.update(part.as_bytes());
        h.update([0u8]);
    }
    hex::encode(&h.finalize()[..16])
}

/// The id of the job that makes part `tag` of title `title_id`.
fn part_id(title_id: &str, tag: &str) -> String {
    let mut h = Sha256::new();
    for part in [title_id, tag] {
        h.update(part.as_bytes());
        h.update([0u8]);
    }
    hex::encode(&h.finalize()[..16])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn source() -> SourceObject {
        SourceObject {
            bucket: "in".into(),
            key: "a/clip 1.mp4".into(),
            etag: "abc".into(),
        }
    }

    #[test]
    fn the_job_id_is_deterministic_and_ignores_etag_quotes() {
        let a = job_id("in", "a/clip 1.mp4", "\"abc\"", "hls");
        assert_eq!(a, job_id("in", "a/clip 1.mp4", "abc", "hls"));
        assert_ne!(a, job_id("in", "a/clip 1.mp4", "abc", "thumbs"));
        assert_ne!(a, job_id("in", "a/clip 1.mp", "4abc", "hls"));
        assert_eq!(a.len(), 32);
    }

    #[test]
    fn a_message_round_trips_and_tolerates_new_fields() {
        let m = JobMessage::new("hls", source(), "s3://out/hls/", true);
        assert_eq!(JobMessage::parse(&m.to_json()).unwrap(), m);
        let mut v: serde_json::Value = serde_json::from_slice(&m.to_json()).unwrap();
        v["added_in_v1_3"] = serde_json::json!({"x": 1});
        let body = serde_json::to_vec(&v).unwrap();
        assert_eq!(JobMessage::parse(&body).unwrap(), m);
    }

    #[test]
    fn an_old_minimal_message_is_read_with_defaults() {
        let id = job_id("in", "a/clip 1.mp4", "abc", "hls");
        let body = format!(
            r#"{{"v":1,"job_id":"{id}","pipeline":"hls","output":"s3://o/p/",
                "source":{{"bucket":"in","key":"a/clip 1.mp4","etag":"abc"}}}}"#
        );
        let m = JobMessage::parse(body.as_bytes()).unwrap();
        assert!(!m.priority);
        assert_eq!(m.attempt, 0);
    }

    #[test]
    fn an_older_message_keeps_its_outputs_under_the_job_id() {
        let mut m = JobMessage::new("hls", source(), "s3://o/hls/in/clip/j1/", false);
        assert_eq!(m.output_prefix().unwrap().key, "hls/in/clip/j1/");
        let body = String::from_utf8(m.to_json())
            .unwrap()
            .replace(",\"output_expanded\":true", "");
        m = JobMessage::parse(body.as_bytes()).unwrap();
        m.output = "s3://o/hls".into();
        assert_eq!(m.output_prefix().unwrap().key, format!("hls/{}/", m.job_id));
    }

    #[test]
    fn a_part_has_its_own_id_which_a_reader_checks() {
        let title = JobMessage::new("long", source(), "s3://o/t/", false);
        let audio = title.child(Part::Audio, 3.0);
        assert_ne!(audio.job_id, title.job_id);
        assert_eq!(JobMessage::parse(&audio.to_json()).unwrap(), audio);
        let mut forged = audio.clone();
        forged.part = None;
        assert!(matches!(
            JobMessage::parse(&forged.to_json()),
            Err(MessageError::Invalid(_))
        ));
    }

    #[test]
    fn malformed_messages_say_why() {
        assert!(matches!(
            JobMessage::parse(b"not json"),
            Err(MessageError::NotJson(_))
        ));
        assert_eq!(JobMessage::parse(b"{}"), Err(MessageError::NoVersion));
        assert_eq!(
            JobMessage::parse(br#"{"v":2}"#),
            Err(MessageError::Version(2))
        );
        assert!(matches!(
            JobMessage::parse(br#"{"v":1}"#),
            Err(MessageError::Invalid(_))
        ));
        let mut m = JobMessage::new("hls", source(), "s3://o/", false);
        m.job_id = "forged".into();
        assert!(matches!(
            JobMessage::parse(&m.to_json()),
            Err(MessageError::Invalid(_))
        ));
    }
}
