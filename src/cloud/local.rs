//! The `local` cloud: a sibling cell is a `cellfarm cell` process on this machine, in a
//! session of its own so it outlives the cell that launched it, as an instance would.

use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Command, Stdio};

use async_trait::async_trait;

use super::{Cloud, CloudError, Machine, LAUNCH_ID_ENV};

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

    /// The cell processes of `pool` (of any pool with `None`) that this cloud launched
    /// (they carry a launch id; cells started by hand do not), alive and past exec.
    fn cells(&self, pool: Option<&str>) -> std::io::Result<Vec<Process>> {
        let want = self.args(pool.unwrap_or_default());
        // Without a pool, everything but the pool's name.
        let want = &want[..want.len() - usize::from(pool.is_none())];
        let boot = boot_time()?;
        let mut cells = Vec::new();
        for (pid, argv) in processes()? {
            if argv.len() < want.len() + 1 || argv[1..=want.len()] != want[..] {
                continue;
            }
            let dir = PathBuf::from(format!("/proc/{pid}"));
            let Ok(stat) = std::fs::read_to_string(dir.join("stat")) else {
                continue;
            };
            // The fields after the command name, which may itself hold spaces.
            let Some((_, rest)) = stat.rsplit_once(") ") else {
                continue;
            };
            let fields: Vec<&str> = rest.split(' ').collect();
            // A child that exited but was not reaped yet is a zombie, not a cell.
            let zombie = fields.first() == Some(&"Z");
            // A cell runs a multi-threaded runtime. A single-threaded process with a
            // cell's command line is a cell's child between fork and exec (FFmpeg being
            // spawned), or a cell not yet started, which Redis counts as pending.
            let threads = fields.get(17).and_then(|t| t.parse::<u32>().ok());
            if zombie || !threads.is_some_and(|t| t > 1) || !argv[0].ends_with("cellfarm") {
                continue;
            }
            let Some(id) = launch_id(&dir) else { continue };
            // Field 22 of stat, the start time in clock ticks after boot; Linux reports
            // these in USER_HZ, which is 100 on every architecture we run on.
            let ticks: i64 = fields.get(19).and_then(|t| t.parse().ok()).unwrap_or(0);
            let launched_at = boot + ticks / 100;
            cells.push(Process {
                pid,
                machine: Machine { id, launched_at },
            });
        }
        Ok(cells)
    }
}

/// A cell process of this cloud.
struct Process {
    pid: u32,
    machine: Machine,
}

/// Every process with its command line.
fn processes() -> std::io::Result<impl Iterator<Item = (u32, Vec<String>)>> {
    let entries = std::fs::read_dir("/proc")?;
    // Numeric entries only: /proc/self and /proc/thread-self are this very process.
    Ok(entries.flatten().filter_map(|e| {
        let pid: u32 = e.file_name().to_str()?.parse().ok()?;
        let cmdline = std::fs::read(e.path().join("cmdline")).ok()?;
        let argv = cmdline
            .split(|b| *b == 0)
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect();
        Some((pid, argv))
    }))
}

/// The launch id the process was started with (`CELLFARM_LAUNCH_ID`).
fn launch_id(dir: &std::path::Path) -> Option<String> {
    let environ = std::fs::read(dir.join("environ")).ok()?;
    environ.split(|b| *b == 0).find_map(|kv| {
        let kv = std::str::from_utf8(kv).ok()?;
        kv.strip_prefix(LAUNCH_ID_ENV)?
            .strip_prefix('=')
            .map(str::to_string)
    })
}

/// When this machine booted, in seconds since the Unix epoch (`btime` in /proc/stat).
fn boot_time() -> std::io::Result<i64> {
    let stat = std::fs::read_to_string("/proc/stat")?;
    stat.lines()
        .find_map(|l| l.strip_prefix("btime "))
        .and_then(|t| t.trim().parse().ok())
        .ok_or_else(|| std::io::Error::other("no btime in /proc/stat"))
}

#[async_trait]
impl Cloud for LocalCloud {
    async fn launch(&self, pool: &str, n: u32, token: &str) -> Result<Vec<String>, CloudError> {
        let mut ids = Vec::new();
        let fail = |reason: String, launched: &[String]| CloudError::Launch {
            pool: pool.into(),
            n,
            reason,
            launched: launched.to_vec(),
        };
        std::fs::create_dir_all(&self.log_dir).map_err(|e| fail(e.to_string(), &ids))?;
        for i in 0..n {
            let id = format!("local-{token}-{i}");
            let log = std::fs::File::create(self.log_dir.join(format!("{id}.log")))
                .map_err(|e| fail(e.to_string(), &ids))?;
            let err = log.try_clone().map_err(|e| fail(e.to_string(), &ids))?;
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
                .map_err(|e| fail(format!("{}: {e}", self.binary.display()), &ids))?;
            ids.push(id);
        }
        Ok(ids)
    }

    async fn machines(&self, pool: &str) -> Result<Option<Vec<Machine>>, CloudError> {
        let cells = self.cells(Some(pool)).map_err(|e| CloudError::Count {
            pool: pool.into(),
            reason: e.to_string(),
        })?;
        let machines = cells.into_iter().map(|c| c.machine).collect();
        Ok(Some(machines))
    }

    async fn terminate(&self, ids: &[String]) -> Result<(), CloudError> {
        let fail = |reason: String| CloudError::TerminateOthers {
            ids: ids.to_vec(),
            reason,
        };
        let cells = self.cells(None).map_err(|e| fail(e.to_string()))?;
        let pids: Vec<String> = cells
            .into_iter()
            .filter(|c| ids.contains(&c.machine.id))
            .map(|c| c.pid.to_string())
            .collect();
        if pids.is_empty() {
            return Ok(());
        }
        // SIGKILL ends a stopped or hung process too; its FFmpeg children die with it
        // (PR_SET_PDEATHSIG).
        let status = Command::new("kill")
            .arg("-KILL")
            .args(&pids)
            .status()
            .map_err(|e| fail(format!("kill: {e}")))?;
        if !status.success() {
            return Err(fail(format!(
                "kill -KILL {} exited {status}",
                pids.join(" ")
            )));
        }
        Ok(())
    }

    async fn terminate_self(&self) -> Result<(), CloudError> {
        Ok(())
    }
}
