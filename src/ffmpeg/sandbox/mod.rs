//! Every FFmpeg and ffprobe runs confined: a source that takes over the decoder gets no
//! network, no credentials, no root, and no file but its own job's.
//!
//! Four layers, each tried at start ([`Sandbox::start`]) and named in the log:
//! * `user`: a cell running as root runs FFmpeg as `cell.sandbox_user`, with no
//!   supplementary groups (a cell that is not root runs it as itself);
//! * `network`: a new user and network namespace, with no interface but a loopback
//!   that is down: no metadata address, broker, database or S3;
//! * `landlock`: read-only access to the system's programs, libraries and fonts
//!   ([`rules::SYSTEM_READ`]), read and write to the run's own paths ([`Access`]), no
//!   TCP, no signal or abstract socket out of the sandbox;
//! * `seccomp`: calls a transcoder never makes fail with `EPERM` ([`seccomp::DENIED`]).
//!
//! Always, whatever `cell.sandbox` says: an empty environment, limits on address
//! space, CPU seconds, file size and tasks, a process group of its own, and death with
//! the cell. `cell.sandbox` decides what a missing layer means: `require` refuses to
//! start, `best-effort` runs with the layers there are, `off` uses none.

mod child;
pub mod report;
mod rules;
mod seccomp;

use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::Deserialize;
use tokio::process::Command;

use crate::config::CellConfig;
use child::{Plan, Resource, Rlimit};
pub use rules::Access;
pub use seccomp::DENIED;

/// What a missing layer means (`cell.sandbox`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Mode {
    /// Refuse to start without every layer, naming those missing.
    #[default]
    Require,
    /// Run with the layers there are, naming those missing at start.
    BestEffort,
    /// No layer; the limits and the empty environment stay.
    Off,
}

/// A layer of confinement that a kernel or a container may lack.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Layer {
    User,
    Network,
    Landlock,
    Seccomp,
}

impl Layer {
    pub const ALL: [Layer; 4] = [Layer::User, Layer::Network, Layer::Landlock, Layer::Seccomp];

    pub fn name(self) -> &'static str {
        match self {
            Layer::User => "user",
            Layer::Network => "network",
            Layer::Landlock => "landlock",
            Layer::Seccomp => "seccomp",
        }
    }

    /// What lacks it, and what to do.
    fn hint(self) -> &'static str {
        match self {
            Layer::User => "cell.sandbox_user must name a user of /etc/passwd other than root",
            Layer::Network => {
                "unprivileged user namespaces are off (sysctl user.max_user_namespaces, \
                 kernel.unprivileged_userns_clone, kernel.apparmor_restrict_unprivileged_userns) \
                 or a container runtime forbids unshare"
            }
            Layer::Landlock => {
                "needs Linux 5.13 or later with landlock among the LSMs (lsm= boot parameter)"
            }
            Layer::Seccomp => "needs a kernel with seccomp filters (CONFIG_SECCOMP_FILTER)",
        }
    }
}

/// The two programs, each found on `PATH` at start: the child's environment is empty.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tool {
    Ffmpeg,
    Ffprobe,
}

impl Tool {
    pub fn name(self) -> &'static str {
        match self {
            Tool::Ffmpeg => "ffmpeg",
            Tool::Ffprobe => "ffprobe",
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    #[error("{key} = {value:?}: {reason}")]
    Config {
        key: &'static str,
        value: String,
        reason: String,
    },
    #[error("cell.sandbox = \"require\" but the sandbox lacks {missing}; set cell.sandbox = \"best-effort\" to run without it")]
    Missing { missing: String },
    #[error("{tool} does not run confined ({layers}): {reason}")]
    Broken {
        tool: &'static str,
        layers: String,
        reason: String,
    },
}

/// How FFmpeg is confined on this machine: the programs, the layers in force, and what
/// each run needs prepared. Built once at start.
#[derive(Clone)]
pub struct Sandbox {
    ffmpeg: PathBuf,
    ffprobe: PathBuf,
    layers: Vec<Layer>,
    /// uid and gid FFmpeg runs as, when the cell is root.
    ids: Option<(u32, u32)>,
    seccomp: Option<Arc<seccomp::Filters>>,
    /// Largest file one process may write (`RLIMIT_FSIZE`).
    file_size_bytes: u64,
    /// Most tasks of one sandbox (`RLIMIT_NPROC`, in its own user namespace).
    tasks: u64,
    /// Cores of this machine: a process can burn at most this many CPU seconds a second.
    cpus: u64,
}

impl std::fmt::Debug for Sandbox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sandbox")
            .field("ffmpeg", &self.ffmpeg)
            .field("ffprobe", &self.ffprobe)
            .field("layers", &self.layers)
            .field("ids", &self.ids)
            .finish_non_exhaustive()
    }
}

/// The most tasks one FFmpeg may have when `cell.ffmpeg_max_tasks` is 0: threads count,
/// and FFmpeg runs decoder, filter and encoder threads for every core.
pub fn default_tasks(cpus: u64) -> u64 {
    64 + 8 * cpus
}

/// `layers` as one phrase: `user, network`.
fn names(layers: &[Layer]) -> String {
    if layers.is_empty() {
        return "no layer".into();
    }
    layers
        .iter()
        .map(|l| l.name())
        .collect::<Vec<_>>()
        .join(", ")
}

impl Sandbox {
    /// Finds the programs and runs `ffmpeg -version` and `ffprobe -version` with every
    /// layer. When that fails, tries each layer on its own to name those missing, and
    /// keeps those that work; with `require`, a missing layer is an error naming it.
    pub async fn start(cell: &CellConfig) -> Result<Sandbox, SandboxError> {
        let mut sandbox = Sandbox::armed(cell)?;
        let quick = match sandbox.arm(cell) {
            Ok(()) => sandbox.versions().await.map_err(|(_, reason)| reason),
            Err(e) => Err(e),
        };
        if let Err(first) = quick {
            if cell.sandbox != Mode::Off {
                tracing::debug!(error = %first, "FFmpeg fails with every layer; trying each");
                sandbox.keep_working_layers(cell).await?;
            }
            sandbox
                .versions()
                .await
                .map_err(|(tool, reason)| SandboxError::Broken {
                    tool: tool.name(),
                    layers: names(&sandbox.layers),
                    reason,
                })?;
        }
        tracing::info!(layers = %names(&sandbox.layers), ffmpeg = %sandbox.ffmpeg.display(),
            ffprobe = %sandbox.ffprobe.display(), user = ?sandbox.ids, "FFmpeg sandbox");
        Ok(sandbox)
    }

    /// The process's one sandbox, made on first use, for commands that probe now and
    /// then (`submit`, the trigger) and have no start of their own. Nothing is tried
    /// unless `best-effort` must learn which layers there are: under `require`, a layer
    /// that fails makes the probe fail, naming the error.
    pub async fn shared(cell: &CellConfig) -> Result<&'static Sandbox, String> {
        static SHARED: tokio::sync::OnceCell<Result<Sandbox, String>> =
            tokio::sync::OnceCell::const_new();
        let make = || async {
            match cell.sandbox {
                Mode::BestEffort => Sandbox::start(cell).await,
                Mode::Require | Mode::Off => Sandbox::armed(cell).and_then(|mut s| {
                    s.arm(cell)
                        .map(|()| s)
                        .map_err(|missing| SandboxError::Missing { missing })
                }),
            }
            .map_err(|e| e.to_string())
        };
        SHARED
            .get_or_init(make)
            .await
            .as_ref()
            .map_err(Clone::clone)
    }

    /// The sandbox `cell` describes, with every layer (none when `off`), nothing armed.
    fn armed(cell: &CellConfig) -> Result<Sandbox, SandboxError> {
        let mut sandbox = Sandbox::prepare(cell)?;
        if cell.sandbox == Mode::Off {
            tracing::warn!("cell.sandbox = \"off\": FFmpeg runs unconfined, with limits only");
            sandbox.layers.clear();
        }
        Ok(sandbox)
    }

    /// Readies the layers in force that need it: who FFmpeg runs as, the seccomp filters.
    fn arm(&mut self, cell: &CellConfig) -> Result<(), String> {
        if self.layers.contains(&Layer::User) {
            self.user(&cell.sandbox_user)?;
        }
        if self.layers.contains(&Layer::Seccomp) {
            self.seccomp = Some(Arc::new(seccomp::compile()?));
        }
        Ok(())
    }

    /// `ffmpeg -version` and `ffprobe -version` as the sandbox stands.
    async fn versions(&self) -> Result<(), (Tool, String)> {
        for tool in [Tool::Ffmpeg, Tool::Ffprobe] {
            self.version(tool).await.map_err(|reason| (tool, reason))?;
        }
        Ok(())
    }

    /// The sandbox `cell` describes, every layer assumed, nothing tried.
    fn prepare(cell: &CellConfig) -> Result<Sandbox, SandboxError> {
        let path = std::env::var("PATH").unwrap_or_default();
        let find = |key: &'static str, program: &str| {
            rules::find_program(program, &path).ok_or_else(|| SandboxError::Config {
                key,
                value: program.into(),
                reason: "no such executable file, nor on PATH (apt-get install ffmpeg)".into(),
            })
        };
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get() as u64);
        Ok(Sandbox {
            ffmpeg: find("cell.ffmpeg", &cell.ffmpeg)?,
            ffprobe: find("cell.ffprobe", &cell.ffprobe)?,
            layers: Layer::ALL.to_vec(),
            ids: None,
            seccomp: None,
            file_size_bytes: cell.ffmpeg_max_file_mib.saturating_mul(1 << 20),
            tasks: match cell.ffmpeg_max_tasks {
                0 => default_tasks(cpus),
                n => n,
            },
            cpus,
        })
    }

    /// Keeps the layers that work on their own; with `require`, one missing is an error.
    async fn keep_working_layers(&mut self, cell: &CellConfig) -> Result<(), SandboxError> {
        let (present, missing) = self.try_layers(cell).await;
        self.layers = present;
        if missing.is_empty() {
            return Ok(());
        }
        let text = missing.join("; ");
        if cell.sandbox == Mode::Require {
            return Err(SandboxError::Missing { missing: text });
        }
        tracing::warn!(missing = %text, "FFmpeg runs without some sandbox layers (cell.sandbox = \"best-effort\")");
        Ok(())
    }

    /// Tries each layer alone; the layers that work, and a line for each that does not.
    async fn try_layers(&mut self, cell: &CellConfig) -> (Vec<Layer>, Vec<String>) {
        let (mut present, mut missing) = (Vec::new(), Vec::new());
        for layer in Layer::ALL {
            let tried = match layer {
                Layer::User => self.user(&cell.sandbox_user),
                Layer::Seccomp => match seccomp::compile() {
                    Ok(filters) => {
                        self.seccomp = Some(Arc::new(filters));
                        Ok(())
                    }
                    Err(e) => Err(e),
                },
                Layer::Network | Layer::Landlock => Ok(()),
            };
            let mut alone = self.clone();
            alone.layers = vec![layer];
            let worked = match tried {
                Ok(()) => alone.version(Tool::Ffmpeg).await,
                Err(e) => Err(e),
            };
            match worked {
                Ok(()) => present.push(layer),
                Err(reason) => {
                    missing.push(format!("{} ({reason}; {})", layer.name(), layer.hint()));
                }
            }
        }
        (present, missing)
    }

    /// Settles who FFmpeg runs as: the cell's own user unless that is root.
    fn user(&mut self, user: &str) -> Result<(), String> {
        if !rustix::process::geteuid().is_root() {
            return Ok(());
        }
        let passwd = std::fs::read_to_string("/etc/passwd").unwrap_or_default();
        let ids = rules::lookup_user(&passwd, user)
            .ok_or_else(|| format!("cell.sandbox_user = {user:?} is not in /etc/passwd"))?;
        if ids.0 == 0 || ids.1 == 0 {
            return Err(format!("cell.sandbox_user = {user:?} is root"));
        }
        self.ids = Some(ids);
        Ok(())
    }

    /// Runs `tool -version` confined: Ok when it prints and exits 0.
    async fn version(&self, tool: Tool) -> Result<(), String> {
        let limits = Limits {
            memory_bytes: super::PROBE_MEMORY_BYTES,
            cpu_secs: 10,
        };
        let mut run = self
            .command(tool, &Access::default(), limits)
            .map_err(|e| e.to_string())?;
        run.cmd
            .arg("-version")
            .stdin(std::process::Stdio::null())
            .kill_on_drop(true);
        let out = run.cmd.output().await.map_err(|e| e.to_string())?;
        if out.status.success() && !out.stdout.is_empty() {
            Ok(())
        } else {
            let err = String::from_utf8_lossy(&out.stderr);
            Err(format!(
                "{} -version: {} {}",
                tool.name(),
                out.status,
                err.trim()
            ))
        }
    }

    /// The layers in force.
    pub fn layers(&self) -> &[Layer] {
        &self.layers
    }

    /// A sandbox with no layer (limits only), for tools that are not the cell's.
    pub fn unconfined(cell: &CellConfig) -> Result<Sandbox, SandboxError> {
        let mut sandbox = Sandbox::prepare(cell)?;
        sandbox.layers.clear();
        Ok(sandbox)
    }

    /// Gives `path` to the user FFmpeg runs as, so that it may write there (when the
    /// cell is root; otherwise they are the same user already).
    pub fn hand_over(&self, path: &Path) -> std::io::Result<()> {
        match self.ids.filter(|_| self.layers.contains(&Layer::User)) {
            Some((uid, gid)) => std::os::unix::fs::chown(path, Some(uid), Some(gid)),
            None => Ok(()),
        }
    }

    /// A command for `tool` confined for one run using `access`, and what must stay
    /// open until it has been spawned.
    pub fn command(
        &self,
        tool: Tool,
        access: &Access,
        limits: Limits,
    ) -> Result<Confined, landlock::RulesetError> {
        let on = |layer| self.layers.contains(&layer);
        let ruleset = if on(Layer::Landlock) {
            let mut read = access.read.clone();
            let program = self.program(tool);
            // A program outside /usr (cell.ffmpeg = "/opt/ffmpeg/bin/ffmpeg") needs its
            // own directory, where its libraries usually are too.
            read.extend(program.parent().map(Path::to_path_buf));
            rules::ruleset(read, access.write.clone())?
        } else {
            None
        };
        let cpu = limits.cpu_secs.saturating_mul(self.cpus).max(1);
        let plan = Plan {
            ids: self.ids.filter(|_| on(Layer::User)),
            namespaces: on(Layer::Network),
            limits: [
                Rlimit {
                    resource: Resource::AddressSpace,
                    soft: limits.memory_bytes,
                    hard: limits.memory_bytes,
                },
                // SIGXCPU at the soft limit, SIGKILL at the hard one.
                Rlimit {
                    resource: Resource::CpuSeconds,
                    soft: cpu,
                    hard: cpu.saturating_add(5),
                },
                Rlimit {
                    resource: Resource::FileSize,
                    soft: self.file_size_bytes,
                    hard: self.file_size_bytes,
                },
            ],
            // Counted per user namespace: without one it would count the cell's threads.
            tasks: on(Layer::Network).then_some(self.tasks),
            parent: std::process::id(),
            landlock: ruleset.as_ref().map(AsRawFd::as_raw_fd),
            seccomp: self.seccomp.clone().filter(|_| on(Layer::Seccomp)),
        };
        let mut cmd = Command::new(self.program(tool));
        // Found by its full path, known by its name: `ps` and logs show `ffmpeg …`.
        cmd.arg0(tool.name()).env_clear();
        if let Some(dir) = access.workdir() {
            cmd.current_dir(dir);
        }
        child::confine(&mut cmd, plan);
        Ok(Confined { cmd, ruleset })
    }

    fn program(&self, tool: Tool) -> &Path {
        match tool {
            Tool::Ffmpeg => &self.ffmpeg,
            Tool::Ffprobe => &self.ffprobe,
        }
    }
}

/// The limits of one run that come from its job.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub memory_bytes: u64,
    /// The run's wall-clock timeout; its CPU seconds are this times the cores.
    pub cpu_secs: u64,
}

/// A command ready to spawn, and the Landlock ruleset its child enforces: keep it
/// open until the spawn has returned.
pub struct Confined {
    pub cmd: Command,
    pub ruleset: Option<OwnedFd>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modes_read_as_written() {
        #[derive(Deserialize)]
        struct T {
            m: Mode,
        }
        let read = |s: &str| toml::from_str::<T>(&format!("m = \"{s}\"")).map(|t| t.m);
        assert_eq!(read("require").unwrap(), Mode::Require);
        assert_eq!(read("best-effort").unwrap(), Mode::BestEffort);
        assert_eq!(read("off").unwrap(), Mode::Off);
        assert!(read("on").is_err());
        assert_eq!(Mode::default(), Mode::Require);
    }

    #[test]
    fn tasks_grow_with_the_cores_and_layers_read_as_a_list() {
        assert_eq!(default_tasks(2), 80);
        assert!(default_tasks(96) > 3 * 96);
        assert_eq!(names(&[Layer::User, Layer::Seccomp]), "user, seccomp");
        assert_eq!(names(&[]), "no layer");
    }
}
