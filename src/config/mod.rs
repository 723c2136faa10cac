//! The farm's configuration: one TOML file, read once, checked as a whole.
//!
//! Reading reports every problem at once, each naming its key (`pipelines.hls.pool`), and
//! rejects unknown keys, so that a typo never silently falls back to a default. URL
//! fields are typed ([`S3Url`]), so nothing parses them again later. A config can live
//! on local disk or in S3 (`s3://bucket/key`); see [`crate::boot`] for the latter.
//!
//! * this file: the types, one per table, and what the rest of the crate asks of them;
//! * `defaults`: default values and why;
//! * `read`: TOML to types, every unknown key and bad value reported at once;
//! * `validate`: the checks serde cannot make, one function per section;
//! * `guardrails`: the pools' vCPU ceiling and budget keys.

mod defaults;
mod guardrails;
mod observe;
mod read;
#[cfg(test)]
mod tests;
mod validate;

use std::collections::BTreeMap;

use serde::Deserialize;

use crate::ffmpeg::probe;
pub use crate::ffmpeg::sandbox::Mode as SandboxMode;
use crate::s3url::S3Url;
use defaults::*;

pub use defaults::DEFAULT_DEMUXERS;
pub use observe::{AlertsConfig, DashboardConfig};
pub use read::ConfigError;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub farm: FarmConfig,
    pub amqp: Amqp,
    pub postgres: Postgres,
    pub redis: Redis,
    #[serde(default)]
    pub s3: S3,
    #[serde(default)]
    pub cell: CellConfig,
    #[serde(default)]
    pub cloud: CloudConfig,
    pub pools: BTreeMap<String, Pool>,
    /// Argument fragments every pipeline may use as `{name}`; a pipeline's own `vars`
    /// of the same name win.
    #[serde(default)]
    pub vars: BTreeMap<String, Var>,
    pub pipelines: BTreeMap<String, Pipeline>,
    /// How the trigger (Lambda, `watch`) turns a new object into jobs; the first route
    /// that matches wins.
    #[serde(default)]
    pub routes: Vec<Route>,
    /// The binary cells should run (see [`crate::update`]).
    pub update: Option<Update>,
    #[serde(default)]
    pub dashboard: DashboardConfig,
    #[serde(default)]
    pub alerts: AlertsConfig,
}

/// The `[update]` table: a cellfarm binary in S3 and its SHA-256.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Update {
    pub binary_url: S3Url,
    pub sha256: String,
}

/// One routing rule: which new objects become which jobs.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Route {
    /// For logs and the trigger's answers (default: `routes[<index>]`).
    pub name: Option<String>,
    /// The bucket the object is in (default: any).
    pub bucket: Option<String>,
    /// A literal key prefix.
    #[serde(default)]
    pub prefix: String,
    /// A glob on the whole key: `*` is any run of characters but `/`, `**` any run, `?`
    /// one character but `/`.
    pub glob: Option<String>,
    /// Content: the source lasts at least this many seconds (ranged probe).
    pub min_secs: Option<f64>,
    /// Content: the source lasts less than this many seconds (ranged probe).
    pub max_secs: Option<f64>,
    /// The pipelines to run: one job each.
    pub pipelines: Vec<String>,
    /// The pool the jobs go to (default: each pipeline's own).
    pub pool: Option<String>,
    #[serde(default)]
    pub priority: bool,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FarmConfig {
    /// Prefix of every queue, Redis key and tag of this farm.
    pub name: String,
    /// Most cells of the whole farm, across its pools: what the other pools leave under
    /// it is the ceiling of its soak pools ([`Pool::soak`]).
    #[serde(default)]
    pub max_cells: Option<u32>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Amqp {
    pub url: String,
    /// The broker's `consumer_timeout`, in seconds, as set in its `rabbitmq.conf` (the
    /// cell cannot read it over AMQP): a cell warns at start when its jobs can outlast it.
    #[serde(default = "default_consumer_timeout")]
    pub consumer_timeout_secs: u64,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Postgres {
    pub url: String,
    /// Schema holding the ledger; several farms (or tests) can share one database.
    #[serde(default = "default_schema")]
    pub schema: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Redis {
    pub url: String,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct S3 {
    /// Custom endpoint (s3s-fs, MinIO); `None` means AWS.
    pub endpoint: Option<String>,
    pub region: Option<String>,
    #[serde(default)]
    pub path_style: bool,
    /// Part size of uploads and downloads, in MiB: a file up to it is uploaded with one
    /// PUT (atomic), a larger one in parts of this size (multipart upload); an object up
    /// to it is downloaded with one GET, a larger one as byte ranges of this size. At
    /// least 5 (S3's smallest part but the last) and at most 5120 (its largest). S3
    /// takes at most 10,000 parts, so 640 GB at the default of 64; a larger file is
    /// uploaded in larger parts.
    #[serde(default = "default_part_size")]
    pub part_size_mib: u64,
    /// Parts uploaded, or ranges downloaded, at once per file. Each holds a connection
    /// and a small buffer, not a whole part.
    #[serde(default = "default_s3_concurrency")]
    pub concurrency: usize,
}

impl Default for S3 {
    /// AWS S3 with the default part size and concurrency.
    fn default() -> Self {
        S3 {
            endpoint: None,
            region: None,
            path_style: false,
            part_size_mib: default_part_size(),
            concurrency: default_s3_concurrency(),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CellConfig {
    /// Concurrent jobs; 0 means one per vCPU.
    #[serde(default)]
    pub slots: usize,
    /// FFmpeg threads per job; 0 means vCPUs / slots (at least 1).
    #[serde(default)]
    pub threads_per_job: usize,
    #[serde(default = "default_scratch")]
    pub scratch_dir: String,
    #[serde(default = "default_lease")]
    pub lease_secs: u64,
    #[serde(default = "default_heartbeat")]
    pub heartbeat_secs: u64,
    #[serde(default = "default_max_attempts")]
    pub max_attempts: u32,
    /// Seconds a job may keep failing for the farm's own faults (S3, the broker, the
    /// ledger, no room on a cell) before it is given up; such failures spend no attempt.
    #[serde(default = "default_fault_budget")]
    pub fault_budget_secs: u64,
    /// A cell whose last this many attempts all failed for the farm's own systems
    /// drains, ends its machine and is replaced; 0 never.
    #[serde(default = "default_max_faults_in_a_row")]
    pub max_faults_in_a_row: u32,
    #[serde(default = "default_grace")]
    pub shutdown_grace_secs: u64,
    /// Per-step timeout for every pipeline that sets none. Unset, each job's timeout is
    /// derived from its probed duration (see [`Pipeline::derived_timeout_secs`]).
    pub step_timeout_secs: Option<u64>,
    /// The shortest derived step timeout: room for a process start and a short
    /// source's encode whatever the estimate says.
    #[serde(default = "default_min_step_timeout")]
    pub min_step_timeout_secs: u64,
    #[serde(default = "default_memory")]
    pub ffmpeg_memory_mib: u64,
    /// Demuxers a source may be opened with (FFmpeg `format_whitelist`).
    #[serde(default = "default_demuxers")]
    pub demuxers: Vec<String>,
    /// Seconds between checks of the config's version (its ETag in S3); a changed
    /// config is applied between jobs. 0 turns live reloading off.
    #[serde(default = "default_config_check")]
    pub config_check_secs: u64,
    /// How FFmpeg and ffprobe are confined: `require` (refuse to start without every
    /// layer), `best-effort` (run with the layers this machine has) or `off`. Read at
    /// start; see [`crate::ffmpeg::sandbox`].
    #[serde(default)]
    pub sandbox: SandboxMode,
    /// Who FFmpeg runs as when the cell runs as root: a user of `/etc/passwd`, or
    /// `uid:gid`. A cell that is not root runs FFmpeg as itself.
    #[serde(default = "default_sandbox_user")]
    pub sandbox_user: String,
    /// The FFmpeg program: a path, or a name looked up on `PATH` at start.
    #[serde(default = "default_ffmpeg")]
    pub ffmpeg: String,
    /// The ffprobe program: a path, or a name looked up on `PATH` at start.
    #[serde(default = "default_ffprobe")]
    pub ffprobe: String,
    /// Largest file one FFmpeg process may write, in MiB; one over it is killed
    /// (SIGXFSZ).
    #[serde(default = "default_ffmpeg_max_file")]
    pub ffmpeg_max_file_mib: u64,
    /// Most tasks (processes and threads) one FFmpeg may have; 0 means 64 plus 8 per
    /// vCPU.
    #[serde(default)]
    pub ffmpeg_max_tasks: u64,
    /// Where the cell serves its own `/metrics` (Prometheus text), read at start; none:
    /// it serves nothing.
    #[serde(default)]
    pub metrics_listen: Option<std::net::SocketAddr>,
}

impl Default for CellConfig {
    fn default() -> Self {
        CellConfig {
            slots: 0,
            threads_per_job: 0,
            scratch_dir: default_scratch(),
            lease_secs: DEFAULT_LEASE_SECS,
            heartbeat_secs: DEFAULT_HEARTBEAT_SECS,
            max_attempts: DEFAULT_MAX_ATTEMPTS,
            fault_budget_secs: default_fault_budget(),
            max_faults_in_a_row: default_max_faults_in_a_row(),
            shutdown_grace_secs: DEFAULT_SHUTDOWN_GRACE_SECS,
            step_timeout_secs: None,
            min_step_timeout_secs: default_min_step_timeout(),
            ffmpeg_memory_mib: DEFAULT_FFMPEG_MEMORY_MIB,
            demuxers: default_demuxers(),
            config_check_secs: default_config_check(),
            sandbox: SandboxMode::default(),
            sandbox_user: default_sandbox_user(),
            ffmpeg: default_ffmpeg(),
            ffprobe: default_ffprobe(),
            ffmpeg_max_file_mib: default_ffmpeg_max_file(),
            ffmpeg_max_tasks: 0,
            metrics_listen: None,
        }
    }
}

impl CellConfig {
    /// Job slots on a machine with `vcpus` cores.
    pub fn slots_for(&self, vcpus: usize) -> usize {
        if self.slots > 0 {
            self.slots
        } else {
            vcpus.max(1)
        }
    }

    /// FFmpeg threads per job on a machine with `vcpus` cores.
    pub fn threads_for(&self, vcpus: usize) -> usize {
        if self.threads_per_job > 0 {
            self.threads_per_job
        } else {
            (vcpus / self.slots_for(vcpus)).max(1)
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Pool {
    /// Bound on the priority lane and work queue (`x-max-length`); `None` is unbounded.
    #[serde(default)]
    pub max_queue_length: Option<u64>,
    /// The mitosis factor: jobs one cell takes on before the pool wants another.
    #[serde(default = "default_jobs_per_cell")]
    pub jobs_per_cell: u32,
    /// Work-aware mitosis: seconds of encoding one cell takes on; replaces
    /// `jobs_per_cell` when set.
    pub work_secs_per_cell: Option<f64>,
    /// Cells kept even when idle.
    #[serde(default)]
    pub floor: u32,
    /// Background work on borrowed room (Netflix's soak capacity): the pool's ceiling
    /// is also what the other pools' cells leave under `farm.max_cells`, and when they
    /// need that room back, its busy cells finish their jobs, take no more, and die.
    #[serde(default)]
    pub soak: bool,
    /// Most cells the pool may have (the vCPU-quota safeguard).
    #[serde(default = "default_ceiling")]
    pub ceiling: u32,
    /// Most cells one mitosis tick launches.
    #[serde(default = "default_step")]
    pub step: u32,
    /// Seconds after a launch before the next one (zero to one ignores it).
    #[serde(default = "default_cooldown")]
    pub cooldown_secs: u64,
    /// Seconds a cell idles before it may die.
    #[serde(default = "default_idle_grace")]
    pub idle_grace_secs: u64,
    /// Seconds a launched cell counts as pending before it must be alive.
    #[serde(default = "default_launch_timeout")]
    pub launch_timeout_secs: u64,
    /// Most vCPUs the pool's cells may hold together (the EC2 vCPU quota); with it the
    /// pool's ceiling is `min(ceiling, max_vcpus / vcpus_per_cell)`.
    pub max_vcpus: Option<u32>,
    /// vCPUs of one cell, for `max_vcpus`. Default: `ec2`, the largest of
    /// `cloud.ec2.instance_types` (known families only); `local`, this machine's.
    pub vcpus_per_cell: Option<u32>,
    /// Dollars the pool may spend per UTC day; once spent, no new launches until
    /// midnight (running cells finish their work). Needs `price_per_hour`.
    pub budget_per_day: Option<f64>,
    /// Dollars one cell costs an hour (the spot price of its instance type), for
    /// `budget_per_day`.
    pub price_per_hour: Option<f64>,
    /// Dollars the same instance costs an hour on demand: what the farm would have paid
    /// without spot, for the savings `status` and the dashboard show.
    pub on_demand_per_hour: Option<f64>,
    /// The cells `max_vcpus` allows, worked out when the config is read.
    #[serde(skip)]
    pub vcpu_ceiling: Option<u32>,
}

impl Pool {
    /// The most cells the pool may have: `ceiling`, or fewer if `max_vcpus` says so.
    pub fn effective_ceiling(&self) -> u32 {
        self.vcpu_ceiling
            .map_or(self.ceiling, |cells| cells.min(self.ceiling))
    }
}

/// Where sibling cells come from.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CloudConfig {
    #[serde(default)]
    pub kind: CloudKind,
    /// `local`: the binary siblings run (default: this one).
    pub binary: Option<String>,
    /// `local`: the directory for siblings' logs (default: `<scratch_dir>/cells`).
    pub log_dir: Option<String>,
    /// Instance metadata (IMDSv2) base address, polled for spot notices. Default: the
    /// link-local IMDS address for `ec2`, none otherwise. `CELLFARM_METADATA_URL`
    /// overrides it for one process.
    pub metadata_url: Option<String>,
    /// Seconds between polls of the spot notice and rebalance recommendation.
    #[serde(default = "default_metadata_poll")]
    pub metadata_poll_secs: u64,
    /// Seconds before a spot reclaim by which every running job must be handed back.
    #[serde(default = "default_interruption_margin")]
    pub interruption_margin_secs: u64,
    /// `ec2`: how to launch sibling instances.
    pub ec2: Option<Ec2>,
}

impl Default for CloudConfig {
    fn default() -> Self {
        CloudConfig {
            kind: CloudKind::None,
            binary: None,
            log_dir: None,
            metadata_url: None,
            metadata_poll_secs: default_metadata_poll(),
            interruption_margin_secs: default_interruption_margin(),
            ec2: None,
        }
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CloudKind {
    /// No mitosis: cells are started and stopped by hand.
    #[default]
    None,
    /// Siblings are processes on this machine.
    Local,
    /// Siblings are EC2 spot instances.
    Ec2,
}

/// The `[cloud.ec2]` table: what a sibling instance is made of.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Ec2 {
    pub region: Option<String>,
    /// Custom EC2 API endpoint (moto_server in tests); `None` means AWS.
    pub endpoint: Option<String>,
    /// The config URL a sibling boots with, written as its user data (default: this
    /// cell's `--config` when that is an `s3://` URL).
    pub config_url: Option<S3Url>,
    /// A launch template (id `lt-…` or name): launches use CreateFleet `instant` across
    /// every instance type and subnet. Without one, RunInstances per type and subnet.
    pub launch_template: Option<String>,
    #[serde(default = "default_template_version")]
    pub launch_template_version: String,
    /// AMI with cellfarm baked in (required without a launch template).
    pub image_id: Option<String>,
    /// Instance types in order of preference; several spread the spot risk.
    #[serde(default)]
    pub instance_types: Vec<String>,
    #[serde(default)]
    pub subnets: Vec<String>,
    #[serde(default)]
    pub security_groups: Vec<String>,
    /// Instance profile name or ARN: the cell's credentials come from it.
    pub instance_profile: Option<String>,
    pub key_name: Option<String>,
    /// CreateFleet spot allocation strategy.
    #[serde(default = "default_allocation")]
    pub allocation_strategy: String,
    /// Launch on-demand for what spot capacity refused, within `on_demand_ceiling`.
    #[serde(default)]
    pub on_demand_fallback: bool,
    /// How many of a pool's cells may be on-demand instances at once (counted by
    /// DescribeInstances: every instance of the pool that is not spot). Default 0: no
    /// on-demand at all, so spending at on-demand prices is always a number someone
    /// wrote down; `on_demand_fallback = true` needs it above 0.
    #[serde(default)]
    pub on_demand_ceiling: u32,
    /// When TerminateInstances on itself fails, power the machine off (its shutdown
    /// behaviour is `terminate`). Off only for tests on a machine that is not a cell.
    #[serde(default = "default_true")]
    pub poweroff_fallback: bool,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Pipeline {
    pub pool: String,
    /// Where outputs go: an `s3://bucket/key` template, expanded once per job at
    /// submission (see [`crate::outkey`]) with `{source_key}`, `{source_stem}`,
    /// `{source_dir}`, `{pipeline}` and `{job_id}`. A plain prefix without placeholders
    /// means `<prefix>/{source_key}/{job_id}/`. A job writes each output at its expanded
    /// prefix + the output's `path`.
    pub output: S3Url,
    /// Work-seconds per second of source: the wall seconds one job slot spends on each
    /// second of source. It weighs the backlog for work-aware mitosis, and tells a cell
    /// under a spot notice whether a running job can finish in time.
    #[serde(default = "default_cost")]
    pub cost_factor: f64,
    /// Per-step timeout for this pipeline, overriding `cell.step_timeout_secs`.
    pub step_timeout_secs: Option<u64>,
    /// Extra inputs by name (`intro = "s3://bucket/intro.mp4"`), usable as `{intro}`.
    #[serde(default)]
    pub assets: BTreeMap<String, S3Url>,
    /// Named argument fragments, usable as `{name}` in steps: a text, or a choice on
    /// the probed source (`{ when = "audio", then = "…", else = "…" }`).
    #[serde(default)]
    pub vars: BTreeMap<String, Var>,
    /// What a source must stay within; checked before any encoding.
    #[serde(default)]
    pub limits: SourceLimits,
    #[serde(default)]
    pub steps: Vec<Step>,
    #[serde(default)]
    pub outputs: Vec<OutputSpec>,
    /// Set, the pipeline cuts each title into chunks that cells encode at once, and
    /// makes one output (see [`crate::chunk`]); it then has no `steps` or `outputs`.
    pub chunked: Option<crate::chunk::Chunking>,
}

impl Pipeline {
    /// Each step's FFmpeg arguments, placeholders unexpanded (see [`crate::ffmpeg::commands`]).
    pub fn step_args(&self) -> impl Iterator<Item = &[String]> {
        self.steps
            .iter()
            .filter(|s| s.detect.is_none())
            .map(|s| s.args.as_slice())
    }

    /// Every placeholder's value for a job on a source probed as `source`: `base` (the
    /// paths, threads and assets), the source's durations, then each var (the farm's
    /// `shared` ones, then the pipeline's own), chosen on the probe and expanded with
    /// the rest.
    pub fn step_vars<'a>(
        &'a self,
        shared: &'a BTreeMap<String, Var>,
        source: &probe::Probe,
        mut base: BTreeMap<&'a str, String>,
    ) -> Result<BTreeMap<&'a str, String>, String> {
        let secs = |s: Option<f64>| format!("{:.3}", s.unwrap_or(0.0));
        base.insert("duration", secs(source.duration));
        base.insert("video_duration", secs(source.video_duration()));
        let mut vars = base.clone();
        for (name, var) in shared.iter().chain(&self.vars) {
            let text = var.pick(source)?;
            vars.insert(name, crate::ffmpeg::template::expand(text, &base)?);
        }
        Ok(vars)
    }

    /// The step timeout of a job whose source lasts `source_secs`, when none is set:
    /// the job's own estimate (duration × cost factor) times [`TIMEOUT_MARGIN`], and at
    /// least `floor_secs` (`cell.min_step_timeout_secs`). A step that runs past it is
    /// far off its estimate: the job fails once, as permanent, instead of every attempt
    /// timing out.
    pub fn derived_timeout_secs(&self, source_secs: f64, floor_secs: u64) -> u64 {
        let estimate = source_secs.max(0.0) * self.cost_factor * TIMEOUT_MARGIN;
        (estimate.ceil() as u64).max(floor_secs)
    }
}

/// How far past its estimate a step may run before it fails, when no timeout is set.
pub const TIMEOUT_MARGIN: f64 = 4.0;

/// A named fragment of step arguments.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(untagged)]
pub enum Var {
    Text(String),
    /// `then` when the source has the fact `when` (`!fact`: has it not), else `else`.
    Choice {
        when: String,
        then: String,
        #[serde(rename = "else", default)]
        otherwise: String,
    },
}

impl Var {
    /// The condition's fact and whether it must hold, from `"fact"` or `"!fact"`.
    pub fn condition(when: &str) -> (&str, bool) {
        match when.trim().strip_prefix('!') {
            Some(fact) => (fact.trim(), false),
            None => (when.trim(), true),
        }
    }

    /// The template this var stands for, given the source's probe. `Err` names an
    /// unknown fact (validation refuses it first).
    pub fn pick(&self, source: &probe::Probe) -> Result<&str, String> {
        match self {
            Var::Text(text) => Ok(text),
            Var::Choice {
                when,
                then,
                otherwise,
            } => {
                let (fact, want) = Var::condition(when);
                let has = source
                    .has(fact)
                    .ok_or_else(|| format!("unknown fact {fact:?} in when = {when:?}"))?;
                Ok(if has == want { then } else { otherwise })
            }
        }
    }

    /// Every template text it may stand for.
    pub fn texts(&self) -> Vec<&str> {
        match self {
            Var::Text(text) => vec![text],
            Var::Choice {
                then, otherwise, ..
            } => vec![then, otherwise],
        }
    }
}

/// A pipeline's `limits` table: a source beyond one fails at probe, once, naming it.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SourceLimits {
    /// Longest source, in seconds.
    pub max_duration_secs: Option<f64>,
    /// Most pixels in one frame (width × height); also FFmpeg's `-max_pixels`, so a
    /// crafted header cannot make the decoder allocate beyond it.
    #[serde(default = "default_max_pixels")]
    pub max_pixels: u64,
    /// Most streams in the source.
    #[serde(default = "default_max_streams")]
    pub max_streams: u32,
    /// Largest source object, in MiB.
    pub max_source_mib: Option<u64>,
    /// Scratch space a job needs, as a multiple of its source's size (the source, the
    /// outputs and intermediates). A job that does not fit on a cell's free scratch
    /// space is handed to another cell, not failed.
    #[serde(default = "default_scratch_factor")]
    pub scratch_factor: f64,
}

impl Default for SourceLimits {
    fn default() -> Self {
        SourceLimits {
            max_duration_secs: None,
            max_pixels: default_max_pixels(),
            max_streams: default_max_streams(),
            max_source_mib: None,
            scratch_factor: default_scratch_factor(),
        }
    }
}

/// One step of a pipeline: an FFmpeg run (`args`), a detector pass (`detect`), or both:
/// an FFmpeg run with the detectors inside its own graph, on the source it decodes.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Step {
    /// FFmpeg arguments, one list element per argument, with `{placeholders}`.
    #[serde(default)]
    pub args: Vec<String>,
    /// A detector pass over the source or an output; with `args`, the detectors run in
    /// that FFmpeg, on its `-i {input}`, and decode nothing again.
    pub detect: Option<Detect>,
}

/// A detector pass: one decode of a file with every detector in one filter graph (see
/// [`crate::ffmpeg::detect`]), and what each kind of defect does to the job.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Detect {
    /// The file: `{input}` (the source, before the encode) or `{out}/<path>` (an
    /// output, after the step that writes it).
    #[serde(default = "default_detect_input")]
    pub input: String,
    /// Decoder errors, and fewer frames than the header promises.
    #[serde(default = "reject")]
    pub decode_errors: Policy,
    #[serde(default = "flag")]
    pub black: Policy,
    /// A frozen picture that is not black (a black stretch is reported once, as black).
    #[serde(default = "flag")]
    pub freeze: Policy,
    #[serde(default = "flag")]
    pub silence: Policy,
    /// Integrated loudness outside `loudness_lufs`.
    #[serde(default = "ignore")]
    pub loudness: Policy,
    /// Audio and video starts or durations apart by more than `max_drift_secs`.
    #[serde(default = "flag")]
    pub av_drift: Policy,
    /// The shortest black, frozen or silent stretch reported, in seconds.
    #[serde(default = "default_min_defect_secs")]
    pub min_secs: f64,
    /// `[low, high]` integrated loudness, LUFS.
    #[serde(default = "default_loudness_lufs")]
    pub loudness_lufs: [f64; 2],
    #[serde(default = "default_max_drift_secs")]
    pub max_drift_secs: f64,
}

impl Detect {
    /// What this pass does about `kind`.
    pub fn policy(&self, kind: crate::ffmpeg::detect::Kind) -> Policy {
        use crate::ffmpeg::detect::Kind;
        match kind {
            Kind::DecodeErrors | Kind::Truncated => self.decode_errors,
            Kind::Black => self.black,
            Kind::Freeze => self.freeze,
            Kind::Silence => self.silence,
            Kind::Loudness => self.loudness,
            Kind::AvDrift => self.av_drift,
        }
    }

    pub fn tuning(&self) -> crate::ffmpeg::detect::Tuning {
        crate::ffmpeg::detect::Tuning {
            min_secs: self.min_secs,
            loudness_lufs: (self.loudness_lufs[0], self.loudness_lufs[1]),
            max_drift_secs: self.max_drift_secs,
        }
    }

    /// The file the pass reads, relative to the job's outputs (`None` for the source).
    pub fn output_path(&self) -> Option<&str> {
        self.input.strip_prefix("{out}/")
    }
}

/// What a defect does to its job.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Policy {
    /// The job fails, naming the defect and where it is.
    Reject,
    /// The job succeeds with the defect among its warnings (result and manifest).
    Flag,
    /// Not reported.
    Ignore,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OutputSpec {
    /// Path relative to the job's output directory; a `*` in the file name matches many.
    pub path: String,
    pub content_type: Option<String>,
    /// Expected video codec (`h264`, `mjpeg`, …), checked with ffprobe.
    pub video_codec: Option<String>,
    /// The codec of the output's audio, when it has audio.
    pub audio_codec: Option<String>,
    /// When the output has audio: `"source"` (exactly when the source has; the default
    /// when an `audio_codec` is expected), `"always"` (the pipeline makes it) or
    /// `"none"`.
    pub audio: Option<probe::Audio>,
    pub width: Option<u32>,
    pub height: Option<u32>,
    /// The smaller of width and height, for outputs that keep a portrait source
    /// upright (`720` is 1280×720 or 720×1280).
    pub short_side: Option<u32>,
    /// Expected pixel format (`yuv420p` for 8-bit players, whatever the source).
    pub pixel_format: Option<String>,
    /// Expected duration: `"source"` (each stream as long as the source's) or seconds.
    pub duration: Option<ExpectedDuration>,
}

impl OutputSpec {
    /// What ffprobe must find in this output.
    pub fn expect(&self) -> probe::Expect {
        probe::Expect {
            video_codec: self.video_codec.clone(),
            audio_codec: self.audio_codec.clone(),
            audio: self.audio,
            width: self.width,
            height: self.height,
            short_side: self.short_side,
            pixel_format: self.pixel_format.clone(),
            duration: self.duration.as_ref().map(|d| match d {
                ExpectedDuration::Seconds(s) => probe::Length::Seconds(*s),
                ExpectedDuration::Named(_) => probe::Length::OfSource,
            }),
        }
    }
}

/// An output's expected duration: seconds, or `"source"` (the only name; validation
/// refuses others).
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(untagged)]
pub enum ExpectedDuration {
    Seconds(f64),
    Named(String),
}

impl Config {
    /// The keys that differ from `new` and that a running cell cannot change: its
    /// connections, names, queues and leases. A new config that changes any of them
    /// needs a restart.
    pub fn restart_keys(&self, new: &Config) -> Vec<&'static str> {
        let (a, b) = (self, new);
        let sandbox = |c: &Config| {
            let c = &c.cell;
            (
                c.sandbox,
                c.sandbox_user.clone(),
                c.ffmpeg.clone(),
                c.ffprobe.clone(),
                c.ffmpeg_max_file_mib,
                c.ffmpeg_max_tasks,
            )
        };
        let pools = |c: &Config| -> Vec<(String, Option<u64>)> {
            c.pools
                .iter()
                .map(|(k, p)| (k.clone(), p.max_queue_length))
                .collect()
        };
        [
            ("farm.name", a.farm.name == b.farm.name),
            ("amqp.url", a.amqp.url == b.amqp.url),
            ("postgres.url", a.postgres.url == b.postgres.url),
            ("postgres.schema", a.postgres.schema == b.postgres.schema),
            ("redis.url", a.redis.url == b.redis.url),
            // The store is built once, with its part size and concurrency.
            ("s3", a.s3 == b.s3),
            ("cell.scratch_dir", a.cell.scratch_dir == b.cell.scratch_dir),
            ("cell.lease_secs", a.cell.lease_secs == b.cell.lease_secs),
            (
                "cell.heartbeat_secs",
                a.cell.heartbeat_secs == b.cell.heartbeat_secs,
            ),
            (
                "cell.max_attempts",
                a.cell.max_attempts == b.cell.max_attempts,
            ),
            ("pools (names, max_queue_length)", pools(a) == pools(b)),
            // The sandbox is tried and built once, at start.
            (
                "cell (sandbox, sandbox_user, ffmpeg, ffprobe, ffmpeg_max_file_mib, ffmpeg_max_tasks)",
                sandbox(a) == sandbox(b),
            ),
            (
                "cloud (kind, binary, log_dir, metadata_url, ec2)",
                (
                    &a.cloud.kind,
                    &a.cloud.binary,
                    &a.cloud.log_dir,
                    &a.cloud.metadata_url,
                    &a.cloud.ec2,
                ) == (
                    &b.cloud.kind,
                    &b.cloud.binary,
                    &b.cloud.log_dir,
                    &b.cloud.metadata_url,
                    &b.cloud.ec2,
                ),
            ),
        ]
        .into_iter()
        .filter(|(_, same)| !same)
        .map(|(key, _)| key)
        .collect()
    }

    /// The longest a delivery of `pools` can stay unacknowledged, in seconds, from the
    /// step timeouts set by hand. A cell takes a message only for a free slot, so a
    /// delivery is unacknowledged only while its job runs: at most T = step timeout ×
    /// (steps + the source probe + one probe per output). A pipeline whose timeouts are
    /// derived from each source has no bound before the source is probed, and is left
    /// out.
    pub fn unacked_bound_secs(&self, pools: &[String]) -> u64 {
        self.pipelines
            .values()
            .filter(|p| pools.contains(&p.pool))
            .filter_map(|p| {
                let timeout = p.step_timeout_secs.or(self.cell.step_timeout_secs)?;
                Some(timeout * (p.steps.len() + 1 + p.outputs.len()) as u64)
            })
            .max()
            .unwrap_or(0)
    }

    /// The pipeline named `name`, or an error that names it.
    pub fn pipeline(&self, name: &str) -> anyhow::Result<&Pipeline> {
        self.pipelines.get(name).ok_or_else(|| {
            anyhow::anyhow!(
                "no pipeline named {name:?} in the config (known: {})",
                self.pipelines
                    .keys()
                    .cloned()
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        })
    }
}
