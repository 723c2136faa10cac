//! Where sibling cells come from: a small trait with one implementation per cloud.
//!
//! `local` makes a sibling a real `cellfarm cell` process on this machine (for running a
//! farm on one host and for end-to-end tests); `ec2` makes it a spot instance.

mod ec2;
mod local;

pub use ec2::{Ec2Cloud, FARM_TAG, LAUNCHED_BY_TAG};
pub use local::LocalCloud;

use async_trait::async_trait;

#[derive(Debug, thiserror::Error)]
pub enum CloudError {
    #[error("launching {n} cell(s) for pool {pool}: {reason}")]
    Launch {
        pool: String,
        n: u32,
        reason: String,
    },
    #[error("counting the cells of pool {pool}: {reason}")]
    Count { pool: String, reason: String },
    #[error("terminating this cell's machine: {reason}")]
    Terminate { reason: String },
}

/// The cloud calls mitosis and death make.
#[async_trait]
pub trait Cloud: Send + Sync {
    /// Launches `n` cells serving `pool`. `token` is unique per decision, so a retried
    /// launch is recognisable (EC2 `ClientToken`). Returns one launch id per cell, which
    /// the new cell reports on its first heartbeat (`CELLFARM_LAUNCH_ID`).
    async fn launch(&self, pool: &str, n: u32, token: &str) -> Result<Vec<String>, CloudError>;
    /// Cells of `pool` this cloud launched that still exist, if it can tell: the ceiling
    /// holds even when Redis forgot the pending launches.
    async fn count(&self, pool: &str) -> Result<Option<u32>, CloudError>;
    /// Ends this cell's machine, after it has drained. For `local`, the process exits.
    async fn terminate_self(&self) -> Result<(), CloudError>;
}

/// The launch id environment variable a launched cell reads.
pub const LAUNCH_ID_ENV: &str = "CELLFARM_LAUNCH_ID";
