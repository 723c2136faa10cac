//! `cellfarm cancel JOB` and `cellfarm retry JOB`: a job stopped or run again by hand.
//!
//! Cancel is the ledger's word ([`crate::ledger::Ledger::cancel`]): the row ends as
//! `cancelled` at once, and the cell running the job sees it on its next beat, kills its
//! FFmpeg and publishes nothing. Retry queues a failed, dead or cancelled job again with
//! fresh attempts and publishes its message to its lane.

use anyhow::Context as _;

use crate::config::Config;
use crate::ledger::{Cancel, JobState};
use crate::queue::Names;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// The job id (32 hex characters, as `cellfarm jobs` lists it).
    pub job_id: String,
}

/// `cellfarm cancel JOB`.
pub async fn cancel(config: &Config, args: &Args) -> anyhow::Result<()> {
    let ledger = crate::boot::ledger(config).await?;
    ledger.check_migrated().await?;
    match ledger.cancel(&args.job_id).await? {
        Cancel::Cancelled {
            was: JobState::Running,
            cell_id,
        } => {
            let cell = cell_id.unwrap_or_else(|| "its cell".into());
            println!(
                "job {} cancelled: {cell} stops it within a heartbeat",
                args.job_id
            );
        }
        Cancel::Cancelled { was, .. } => {
            println!("job {} cancelled (it was {was})", args.job_id);
        }
        Cancel::Over(state) => {
            anyhow::bail!("job {} is already {state}: nothing to cancel", args.job_id)
        }
        Cancel::Unknown => anyhow::bail!("no job {} in the ledger", args.job_id),
    }
    Ok(())
}

/// `cellfarm retry JOB`.
pub async fn retry(
    config: &Config,
    sdk: &aws_config::SdkConfig,
    args: &Args,
) -> anyhow::Result<()> {
    let systems = crate::boot::Systems::connect(config, sdk).await?;
    // A cancelled job may still be stopping on its cell: a second attempt beside it
    // would share its job id in that cell.
    let beats = systems.locks.alive().await?;
    if let Some(cell) = beats
        .iter()
        .find(|b| b.jobs.iter().any(|j| j.job_id == args.job_id))
    {
        anyhow::bail!(
            "job {} is still stopping on {}: retry it once that cell has let it go (a heartbeat)",
            args.job_id,
            cell.cell_id
        );
    }
    let (job, pool) = match systems.ledger.reopen(&args.job_id).await? {
        Ok(reopened) => reopened,
        Err(Some(state)) => anyhow::bail!(
            "job {} is {state}: only a failed, dead or cancelled job can be retried",
            args.job_id
        ),
        Err(None) => anyhow::bail!("no job {} in the ledger", args.job_id),
    };
    let broker = crate::boot::broker(config).await?;
    let lane = Names::new(&config.farm.name).lane(&pool, job.priority);
    let published = broker
        .publisher()
        .publish(&lane, &job.to_json(), &[])
        .await
        .with_context(|| {
            format!(
                "job {} is queued in the ledger but its message did not reach {lane}; \
                 a cell's reconciliation re-publishes it",
                job.job_id
            )
        });
    broker.close("done").await;
    published?;
    println!("job {} queued again on {lane}", job.job_id);
    Ok(())
}
