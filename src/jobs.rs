//! `cellfarm jobs`: the ledger's jobs, newest first, with where each one's outputs are,
//! so that a source's outputs can be found by the source's name.

use std::fmt;

use serde::Serialize;

use crate::config::Config;
use crate::ledger::{JobFilter, JobRow, JobState};
use crate::outkey;
use crate::s3url::S3Url;

/// Jobs listed when `--limit` is not given.
const DEFAULT_LIMIT: i64 = 100;

/// `cellfarm jobs`: which jobs, and how to print them.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Only the jobs of this object, s3://bucket/key.
    #[arg(long, value_parser = S3Url::parse, conflicts_with = "state")]
    pub source: Option<S3Url>,
    /// Only jobs in this state.
    #[arg(long, value_parser = state_parser())]
    pub state: Option<JobState>,
    /// Only jobs of this pipeline.
    #[arg(long)]
    pub pipeline: Option<String>,
    /// List at most this many jobs.
    #[arg(long, default_value_t = DEFAULT_LIMIT, value_parser = clap::value_parser!(i64).range(1..))]
    pub limit: i64,
    /// Print one JSON array, for scripts.
    #[arg(long)]
    pub json: bool,
}

/// `--state`: the ledger's words for a job's state, listed in `--help`.
fn state_parser() -> impl clap::builder::TypedValueParser<Value = JobState> {
    use clap::builder::TypedValueParser;
    let words = JobState::ALL.iter().map(|s| s.as_str());
    clap::builder::PossibleValuesParser::new(words)
        .map(|word| word.parse().expect("every listed word is a state"))
}

/// One job as listed: its outputs and manifest as `s3://` URLs.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Listed {
    pub job_id: String,
    pub pipeline: String,
    pub pool: String,
    pub state: JobState,
    pub attempts: i32,
    pub source: String,
    /// The job's output prefix, `s3://bucket/prefix/`.
    pub output: String,
    pub error: Option<String>,
    pub outputs: Vec<String>,
    /// The manifest written last under the output prefix (succeeded jobs only).
    pub manifest: Option<String>,
    pub submitted_at: chrono::DateTime<chrono::Utc>,
    pub updated_at: chrono::DateTime<chrono::Utc>,
}

impl From<JobRow> for Listed {
    fn from(row: JobRow) -> Listed {
        let job = row.message;
        let manifest = match job.output_prefix() {
            Ok(prefix) if row.state == JobState::Succeeded => Some(format!(
                "s3://{}/{}",
                prefix.bucket,
                outkey::manifest_key(&prefix.key)
            )),
            _ => None,
        };
        Listed {
            source: format!("s3://{}/{}", job.source.bucket, job.source.key),
            outputs: row
                .outputs
                .iter()
                .map(|o| format!("s3://{}/{}", o.bucket, o.key))
                .collect(),
            manifest,
            job_id: job.job_id,
            pipeline: job.pipeline,
            pool: row.pool,
            state: row.state,
            attempts: row.attempts,
            output: job.output,
            error: row.error,
            submitted_at: row.created_at,
            updated_at: row.updated_at,
        }
    }
}

impl fmt::Display for Listed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "{} {} {} attempts {} {}",
            self.job_id, self.pipeline, self.state, self.attempts, self.source
        )?;
        if let Some(error) = &self.error {
            writeln!(f, "  error: {error}")?;
        }
        if self.outputs.is_empty() {
            writeln!(f, "  outputs go under {}", self.output)?;
        }
        for output in &self.outputs {
            writeln!(f, "  {output}")?;
        }
        if let Some(manifest) = &self.manifest {
            writeln!(f, "  manifest: {manifest}")?;
        }
        Ok(())
    }
}

/// `cellfarm jobs`: prints the jobs `args` asks for, newest first.
pub async fn run(config: &Config, args: Args) -> anyhow::Result<()> {
    let ledger = crate::boot::ledger(config).await?;
    ledger.check_migrated().await?;
    let filter = JobFilter {
        source: args.source.map(|u| (u.bucket, u.key)),
        state: args.state,
        pipeline: args.pipeline,
    };
    let listed: Vec<Listed> = ledger
        .jobs(&filter, args.limit)
        .await?
        .into_iter()
        .map(Listed::from)
        .collect();
    if args.json {
        println!("{}", serde_json::to_string_pretty(&listed)?);
    } else if listed.is_empty() {
        println!("no jobs");
    } else {
        for job in &listed {
            print!("{job}");
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::job::{JobMessage, OutputObject, SourceObject};

    fn row(state: JobState) -> JobRow {
        let source = SourceObject {
            bucket: "in".into(),
            key: "inbox/clip 1.mp4".into(),
            etag: "e".into(),
        };
        let mut message = JobMessage::new("thumbnails", source, "", false);
        message.output = format!("s3://out/thumbnails/inbox/clip 1.mp4/{}/", message.job_id);
        let at = chrono::DateTime::UNIX_EPOCH;
        JobRow {
            outputs: vec![OutputObject {
                bucket: "out".into(),
                key: format!("thumbnails/inbox/clip 1.mp4/{}/poster.jpg", message.job_id),
                size: 1,
            }],
            message,
            pool: "default".into(),
            state,
            attempts: 1,
            error: None,
            created_at: at,
            updated_at: at,
        }
    }

    #[test]
    fn a_succeeded_job_lists_its_outputs_and_manifest() {
        let listed = Listed::from(row(JobState::Succeeded));
        let prefix = format!("s3://out/thumbnails/inbox/clip 1.mp4/{}/", listed.job_id);
        assert_eq!(listed.outputs, [format!("{prefix}poster.jpg")]);
        assert_eq!(listed.manifest, Some(format!("{prefix}_manifest.json")));
        let text = listed.to_string();
        assert!(text.starts_with(&format!("{} thumbnails succeeded", listed.job_id)));
        assert!(
            text.contains(&format!("\n  manifest: {prefix}_manifest.json\n")),
            "{text}"
        );
    }

    #[test]
    fn an_unfinished_job_has_no_manifest_and_shows_its_error() {
        let mut r = row(JobState::Queued);
        r.outputs.clear();
        r.error = Some("ffprobe: invalid data".into());
        let listed = Listed::from(r);
        assert_eq!(listed.manifest, None);
        let text = listed.to_string();
        assert!(
            text.contains("\n  error: ffprobe: invalid data\n"),
            "{text}"
        );
        let prefix = "s3://out/thumbnails/inbox/clip 1.mp4/";
        assert!(
            text.contains(&format!("\n  outputs go under {prefix}")),
            "{text}"
        );
    }
}
