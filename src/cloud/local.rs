//! The `local` cloud: a sibling cell is a `cellfarm cell` process on this machine, in a
//! session of its own so it outlives the cell that launched it, as an instance would.

use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Command, Stdio};

use async_trait::async_trait;

use super::{Cloud, CloudError, LAUNCH_ID_ENV};

pub struct LocalCloud {
    /// The `cellfarm` binary to run.
    binary: PathBuf,
    /// The `--config` the siblings get (a path or an s3:// URL).
    config: String,
    /// Where each sibling's log goes (`<log_dir>/<launch id>.log`).
    log_dir: PathBuf,
}

impl LocalCloud {
    pub fn new(binary: PathBuf, config: String, log_dir: PathBuf) -> LocalCloud {
        LocalCloud {
            binary,
            config,
            log_dir,
        }
    }

    /// The arguments that mark a process as a cell of `pool` launched by this cloud.
    fn args(&self, pool: &str) -> Vec<String> {
        ["--config", &self.config, "cell", "--pool", pool]
            .map(String::from)
            .to_vec()
    }
}

#[async_trait]
impl Cloud for LocalCloud {
    async fn launch(&self, pool: &str, n: u32, token: &str) -> Result<Vec<String>, CloudError> {
        let fail = |reason: String| CloudError::Launch {
            pool: pool.into(),
            n,
            reason,
        };
        std::fs::create_dir_all(&self.log_dir).map_err(|e| fail(e.to_string()))?;
        let mut ids = Vec::new();
        for i in 0..n {
            let id = format!("local-{token}-{i}");
            let log = std::fs::File::create(self.log_dir.join(format!("{id}.log")))
                .map_err(|e| fail(e.to_string()))?;
            let err = log.try_clone().map_err(|e| fail(e.to_string()))?;
            // std's Command: a dropped child keeps running, and process_group(0) puts it
            // in a group of its own, out of reach of signals sent to ours.
            Command::new(&self.binary)
                .args(self.args(pool))
                .env(LAUNCH_ID_ENV, &id)
                // A metadata address belongs to one machine; a sibling is another.
                .env_remove(crate::metadata::METADATA_URL_ENV)
                .stdin(Stdio::null())
                .stdout(log)
                .stderr(err)
                .process_group(0)
                .spawn()
                .map_err(|e| fail(format!("{}: {e}", self.binary.display())))?;
            ids.push(id);
        }
        Ok(ids)
    }

    async fn count(&self, pool: &str) -> Result<Option<u32>, CloudError> {
        let want = self.args(pool);
        let entries = std::fs::read_dir("/proc").map_err(|e| CloudError::Count {
            pool: pool.into(),
            reason: e.to_string(),
        })?;
        let mut n = 0;
        // Numeric entries only: /proc/self and /proc/thread-self are this very process.
        let processes = entries.flatten().filter(|e| {
            e.file_name()
                .to_string_lossy()
                .bytes()
                .all(|b| b.is_ascii_digit())
        });
        for entry in processes {
            let path = entry.path();
            let Ok(cmdline) = std::fs::read(path.join("cmdline")) else {
                continue;
            };
            let argv: Vec<String> = cmdline
                .split(|b| *b == 0)
                .map(|a| String::from_utf8_lossy(a).into_owned())
                .collect();
            if argv.len() < want.len() + 1 || argv[1..=want.len()] != want[..] {
                continue;
            }
            // A child that exited but was not reaped yet is a zombie, not a cell.
            let zombie = std::fs::read_to_string(path.join("stat")).is_ok_and(|s| {
                s.rsplit_once(") ")
                    .is_some_and(|(_, rest)| rest.starts_with('Z'))
            });
            // A cell runs a multi-threaded runtime. A single-threaded process with a
            // cell's command line is a cell's child between fork and exec (FFmpeg being
            // spawned), or a cell not yet started, which Redis counts as pending.
            let threads = std::fs::read_to_string(path.join("status")).is_ok_and(|s| {
                s.lines()
                    .find_map(|l| l.strip_prefix("Threads:"))
                    .and_then(|t| t.trim().parse::<u32>().ok())
                    .is_some_and(|t| t > 1)
            });
            if !zombie && threads && argv[0].ends_with("cellfarm") {
                n += 1;
            }
        }
        Ok(Some(n))
    }

    async fn terminate_self(&self) -> Result<(), CloudError> {
        Ok(())
    }
}
