//! Where sibling cells come from: a small trait with one implementation per cloud.
//!
//! `local` makes a sibling a real `cellfarm cell` process on this machine (for running a
//! farm on one host and for end-to-end tests); `ec2` makes it a spot instance.

mod ec2;
mod local;

pub use ec2::{Ec2Cloud, FARM_TAG, LAUNCHED_BY_TAG};
pub use local::LocalCloud;

use std::time::Duration;

use async_trait::async_trait;

/// How long one launch may take, every request and retry in it included. Shorter than
/// the mitosis lock (`mitosis::tick`'s `LOCK_TTL_MS`, checked there at compile time), so
/// a slow launch cannot outlive the lock and let a second decider launch the same cells,
/// and well inside the trigger Lambda's timeout (`deploy/cellfarm.yaml`).
pub const LAUNCH_DEADLINE: Duration = Duration::from_secs(8);

#[derive(Debug, thiserror::Error)]
pub enum CloudError {
    /// A launch that failed; `launched` are the cells it started before the failure
    /// (a fleet that half succeeded, a RunInstances that worked before the next one
    /// failed): they exist and bill, so the caller records them like any launch.
    #[error("launching {n} cell(s) for pool {pool}: {reason}{}", kept(launched))]
    Launch {
        pool: String,
        n: u32,
        reason: String,
        launched: Vec<String>,
    },
    #[error("counting the cells of pool {pool}: {reason}")]
    Count { pool: String, reason: String },
    #[error("terminating this cell's machine: {reason}")]
    Terminate { reason: String },
    #[error("terminating machines {ids:?}: {reason}")]
    TerminateOthers { ids: Vec<String>, reason: String },
}

/// One machine a cloud launched for a pool, as the cloud sees it.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Machine {
    /// The cloud's name for it: the instance id on EC2, `pid-<pid>` on `local`. A cell
    /// says in its heartbeat which machine it runs on.
    pub id: String,
    /// Seconds since the Unix epoch.
    pub launched_at: i64,
}

/// The cloud calls mitosis and death make.
#[async_trait]
pub trait Cloud: Send + Sync {
    /// Launches `n` cells serving `pool` within [`LAUNCH_DEADLINE`]. `token` is unique
    /// per decision, so a retried request is recognisable (EC2 `ClientToken`). Returns
    /// one launch id per cell, which the new cell reports on its first heartbeat
    /// (`CELLFARM_LAUNCH_ID`); a failed launch names in [`CloudError::Launch`] the cells
    /// it did launch.
    async fn launch(&self, pool: &str, n: u32, token: &str) -> Result<Vec<String>, CloudError>;
    /// The machines of `pool` that still exist (booting or running), if the cloud can
    /// tell: the ceiling holds even when Redis forgot the pending launches, and a machine
    /// whose cell never beats is found and ended.
    async fn machines(&self, pool: &str) -> Result<Option<Vec<Machine>>, CloudError>;
    /// How many machines of `pool` exist, if the cloud can tell.
    async fn count(&self, pool: &str) -> Result<Option<u32>, CloudError> {
        Ok(self.machines(pool).await?.map(|m| m.len() as u32))
    }
    /// Ends machines of this farm by id (silent ones: a failed boot, a hung cell).
    async fn terminate(&self, ids: &[String]) -> Result<(), CloudError>;
    /// Ends this cell's machine, after it has drained. For `local`, the process exits.
    async fn terminate_self(&self) -> Result<(), CloudError>;
}

/// The part of a launch error that names the cells it launched anyway.
fn kept(launched: &[String]) -> String {
    if launched.is_empty() {
        String::new()
    } else {
        format!(" (launched before the failure: {})", launched.join(", "))
    }
}

/// The launch id environment variable a launched cell reads.
pub const LAUNCH_ID_ENV: &str = "CELLFARM_LAUNCH_ID";
