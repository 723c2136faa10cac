//! The farm's configuration: one TOML file, read once, validated as a whole.
//!
//! Loading reports every problem at once, each naming its key (`pipelines.hls.pool`), and
//! rejects unknown keys, so that a typo never silently falls back to a default. A config
//! can live on local disk or in S3 (`s3://bucket/key`); see [`crate::store`] for the
//! latter.

use std::collections::BTreeMap;
use std::fmt;

use serde::Deserialize;

use crate::ffmpeg::template;

/// Seconds a job lease lasts without renewal. Cells renew every heartbeat, so a lease only
/// runs out when its cell is dead or cut off; short enough that a killed cell's job is
/// picked up within half a minute.
const DEFAULT_LEASE_SECS: u64 = 30;
/// Heartbeat and tick period. A few seconds keeps leases fresh at negligible cost.
const DEFAULT_HEARTBEAT_SECS: u64 = 5;
/// Attempts before a job is dead-lettered. Three covers a crash plus a spot reclaim.
const DEFAULT_MAX_ATTEMPTS: u32 = 3;
/// How long SIGTERM waits for running jobs before handing them back. Below systemd's
/// default stop timeout and the two-minute spot notice.
const DEFAULT_SHUTDOWN_GRACE_SECS: u64 = 90;
/// An FFmpeg step that runs longer than this is killed (one hour of encoding per step).
const DEFAULT_STEP_TIMEOUT_SECS: u64 = 3600;
/// Address-space cap per FFmpeg process: generous for 1080p x264, fatal for a decoder
/// bomb.
const DEFAULT_FFMPEG_MEMORY_MIB: u64 = 4096;

/// The demuxers a source may be opened with. Playlists (`hls`), lists (`concat`) and
/// image sequences (`image2`) are left out on purpose: they make FFmpeg open other files.
pub const DEFAULT_DEMUXERS: &[&str] = &[
    "mov,mp4,m4a,3gp,3g2,mj2",
    "matroska,webm",
    "avi",
    "mpegts",
    "flv",
    "mpeg",
    "mxf",
    "wav",
    "mp3",
    "aac",
    "ogg",
    "flac",
    "png_pipe",
    "jpeg_pipe",
];

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub farm: Farm,
    pub amqp: Amqp,
    pub postgres: Postgres,
    pub redis: Redis,
    #[serde(default)]
    pub s3: S3,
    #[serde(default)]
    pub cell: Cell,
    #[serde(default)]
    pub cloud: Cloud,
    pub pools: BTreeMap<String, Pool>,
    pub pipelines: BTreeMap<String, Pipeline>,
    /// How the trigger (Lambda, `watch`) turns a new object into jobs; the first route
    /// that matches wins.
    #[serde(default)]
    pub routes: Vec<Route>,
    /// The binary cells should run (see [`crate::update`]).
    pub update: Option<Update>,
}

/// The `[update]` table: a cellfarm binary in S3 and its SHA-256.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Update {
    pub binary_url: String,
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
pub struct Farm {
    /// Prefix of every queue, Redis key and tag of this farm.
    pub name: String,
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

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct S3 {
    /// Custom endpoint (s3s-fs, MinIO); `None` means AWS.
    pub endpoint: Option<String>,
    pub region: Option<String>,
    #[serde(default)]
    pub path_style: bool,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Cell {
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
    #[serde(default = "default_grace")]
    pub shutdown_grace_secs: u64,
    #[serde(default = "default_step_timeout")]
    pub step_timeout_secs: u64,
    #[serde(default = "default_memory")]
    pub ffmpeg_memory_mib: u64,
    /// Demuxers a source may be opened with (FFmpeg `format_whitelist`).
    #[serde(default = "default_demuxers")]
    pub demuxers: Vec<String>,
    /// Seconds between checks of the config's version (its ETag in S3); a changed
    /// config is applied between jobs. 0 turns live reloading off.
    #[serde(default = "default_config_check")]
    pub config_check_secs: u64,
}

impl Default for Cell {
    fn default() -> Self {
        Cell {
            slots: 0,
            threads_per_job: 0,
            scratch_dir: default_scratch(),
            lease_secs: DEFAULT_LEASE_SECS,
            heartbeat_secs: DEFAULT_HEARTBEAT_SECS,
            max_attempts: DEFAULT_MAX_ATTEMPTS,
            shutdown_grace_secs: DEFAULT_SHUTDOWN_GRACE_SECS,
            step_timeout_secs: DEFAULT_STEP_TIMEOUT_SECS,
            ffmpeg_memory_mib: DEFAULT_FFMPEG_MEMORY_MIB,
            demuxers: default_demuxers(),
            config_check_secs: default_config_check(),
        }
    }
}

impl Cell {
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
}

impl Pool {
    pub fn policy(&self) -> crate::mitosis::Policy {
        crate::mitosis::Policy {
            jobs_per_cell: self.jobs_per_cell,
            work_secs_per_cell: self.work_secs_per_cell,
            floor: self.floor,
            ceiling: self.ceiling,
            step: self.step,
            idle_grace_secs: self.idle_grace_secs,
        }
    }
}

/// Where sibling cells come from.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Cloud {
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

impl Default for Cloud {
    fn default() -> Self {
        Cloud {
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
    pub config_url: Option<String>,
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
    /// Launch on-demand for what spot capacity refused.
    #[serde(default)]
    pub on_demand_fallback: bool,
    /// When TerminateInstances on itself fails, power the machine off (its shutdown
    /// behaviour is `terminate`). Off only for tests on a machine that is not a cell.
    #[serde(default = "default_true")]
    pub poweroff_fallback: bool,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Pipeline {
    pub pool: String,
    /// Where outputs go: `s3://bucket/prefix/`; each job writes under `<prefix><job id>/`.
    pub output: String,
    /// Work-seconds per second of source: the wall seconds one job slot spends on each
    /// second of source. It weighs the backlog for work-aware mitosis, and tells a cell
    /// under a spot notice whether a running job can finish in time.
    #[serde(default = "default_cost")]
    pub cost_factor: f64,
    /// Per-step timeout for this pipeline, overriding `cell.step_timeout_secs`.
    pub step_timeout_secs: Option<u64>,
    /// Extra inputs by name (`intro = "s3://bucket/intro.mp4"`), usable as `{intro}`.
    #[serde(default)]
    pub assets: BTreeMap<String, String>,
    pub steps: Vec<Step>,
    pub outputs: Vec<OutputSpec>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Step {
    /// FFmpeg arguments, one list element per argument, with `{placeholders}`.
    pub args: Vec<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OutputSpec {
    /// Path relative to the job's output directory; a `*` in the file name matches many.
    pub path: String,
    pub content_type: Option<String>,
    /// Expected video codec (`h264`, `mjpeg`, …), checked with ffprobe.
    pub video_codec: Option<String>,
    pub audio_codec: Option<String>,
    pub width: Option<u32>,
    pub height: Option<u32>,
    /// Expected duration: `"source"` (the probed input) or seconds.
    pub duration: Option<Duration>,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(untagged)]
pub enum Duration {
    Seconds(f64),
    Named(String),
}

/// RabbitMQ's default `consumer_timeout`: 30 minutes.
fn default_consumer_timeout() -> u64 {
    1800
}
/// A HEAD of the config object every half minute per cell costs nothing worth counting.
fn default_config_check() -> u64 {
    30
}
fn default_metadata_poll() -> u64 {
    2
}
/// A spot notice comes two minutes ahead; twenty seconds leaves time to kill FFmpeg,
/// record the hand-back and re-publish.
fn default_interruption_margin() -> u64 {
    20
}
fn default_template_version() -> String {
    "$Latest".into()
}
fn default_allocation() -> String {
    "capacity-optimized".into()
}
fn default_true() -> bool {
    true
}
fn default_schema() -> String {
    "cellfarm".into()
}
fn default_scratch() -> String {
    "/var/tmp/cellfarm".into()
}
fn default_lease() -> u64 {
    DEFAULT_LEASE_SECS
}
fn default_heartbeat() -> u64 {
    DEFAULT_HEARTBEAT_SECS
}
fn default_max_attempts() -> u32 {
    DEFAULT_MAX_ATTEMPTS
}
fn default_grace() -> u64 {
    DEFAULT_SHUTDOWN_GRACE_SECS
}
fn default_step_timeout() -> u64 {
    DEFAULT_STEP_TIMEOUT_SECS
}
fn default_memory() -> u64 {
    DEFAULT_FFMPEG_MEMORY_MIB
}
fn default_demuxers() -> Vec<String> {
    DEFAULT_DEMUXERS.iter().map(|d| d.to_string()).collect()
}
fn default_cost() -> f64 {
    1.0
}
/// Ten jobs a cell: FERMI's first mitosis factor was of this order.
fn default_jobs_per_cell() -> u32 {
    10
}
/// A small ceiling by default: a typo must not launch a fleet.
fn default_ceiling() -> u32 {
    4
}
fn default_step() -> u32 {
    2
}
/// Long enough for launched cells to start beating.
fn default_cooldown() -> u64 {
    30
}
/// A minute of idling before a cell gives its machine back.
fn default_idle_grace() -> u64 {
    60
}
/// EC2 spot instances usually boot in one to three minutes.
fn default_launch_timeout() -> u64 {
    300
}

/// Every problem found in one config, each naming its key.
#[derive(Debug, thiserror::Error)]
pub struct ConfigError {
    pub source_name: String,
    pub problems: Vec<String>,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "invalid config {}: {} problem(s): {}",
            self.source_name,
            self.problems.len(),
            self.problems.join("; ")
        )
    }
}

impl Config {
    /// Parses and validates a config; `source_name` (a path or URL) goes into errors.
    pub fn parse(text: &str, source_name: &str) -> Result<Config, ConfigError> {
        let fail = |problems| ConfigError {
            source_name: source_name.to_string(),
            problems,
        };
        let mut value: toml::Value = toml::from_str(text).map_err(|e| fail(vec![e.to_string()]))?;
        let mut problems = Vec::new();
        // Unknown keys are reported and dropped, so the typed pass can report the rest.
        drop_unknown_keys(&mut value, &mut problems);
        let config = match Config::deserialize(value) {
            Ok(config) => config,
            Err(e) => {
                problems.push(e.to_string());
                return Err(fail(problems));
            }
        };
        config.validate(&mut problems);
        if problems.is_empty() {
            Ok(config)
        } else {
            Err(fail(problems))
        }
    }

    fn validate(&self, problems: &mut Vec<String>) {
        let mut bad = |key: String, why: &str| problems.push(format!("{key}: {why}"));
        if !valid_name(&self.farm.name) {
            bad("farm.name".into(), "must be 1-40 of [a-z0-9_-]");
        }
        if !valid_name(&self.postgres.schema) {
            bad("postgres.schema".into(), "must be 1-40 of [a-z0-9_-]");
        }
        check_url(&self.amqp.url, &["amqp", "amqps"], "amqp.url", &mut bad);
        check_url(
            &self.postgres.url,
            &["postgres", "postgresql"],
            "postgres.url",
            &mut bad,
        );
        check_url(&self.redis.url, &["redis", "rediss"], "redis.url", &mut bad);
        if let Some(endpoint) = &self.s3.endpoint {
            check_url(endpoint, &["http", "https"], "s3.endpoint", &mut bad);
        }
        let c = &self.cell;
        if c.lease_secs < 2 * c.heartbeat_secs {
            bad(
                "cell.lease_secs".into(),
                "must be at least twice cell.heartbeat_secs",
            );
        }
        if c.heartbeat_secs == 0 {
            bad("cell.heartbeat_secs".into(), "must be above 0");
        }
        if c.max_attempts == 0 {
            bad("cell.max_attempts".into(), "must be above 0");
        }
        if c.step_timeout_secs == 0 {
            bad("cell.step_timeout_secs".into(), "must be above 0");
        }
        if c.demuxers.is_empty() {
            bad("cell.demuxers".into(), "must name at least one demuxer");
        }
        self.validate_cloud(&mut bad);
        self.validate_routes(&mut bad);
        if let Some(u) = &self.update {
            if crate::s3url::S3Url::parse(&u.binary_url).is_err() {
                bad("update.binary_url".into(), "must be s3://bucket/key");
            }
            if u.sha256.len() != 64 || !u.sha256.bytes().all(|b| b.is_ascii_hexdigit()) {
                bad("update.sha256".into(), "must be 64 hex digits (sha256sum)");
            }
        }
        if self.pools.is_empty() {
            bad("pools".into(), "at least one pool is needed");
        }
        for (name, pool) in &self.pools {
            if !valid_name(name) {
                bad(format!("pools.{name}"), "pool names are 1-40 of [a-z0-9_-]");
            }
            if pool.jobs_per_cell == 0 {
                bad(format!("pools.{name}.jobs_per_cell"), "must be above 0");
            }
            if pool
                .work_secs_per_cell
                .is_some_and(|w| w.is_nan() || w <= 0.0)
            {
                bad(
                    format!("pools.{name}.work_secs_per_cell"),
                    "must be above 0",
                );
            }
            if pool.ceiling < pool.floor || pool.ceiling == 0 {
                bad(
                    format!("pools.{name}.ceiling"),
                    "must be above 0 and at least the floor",
                );
            }
            if pool.step == 0 {
                bad(format!("pools.{name}.step"), "must be above 0");
            }
        }
        if self.pipelines.is_empty() {
            bad("pipelines".into(), "at least one pipeline is needed");
        }
        for (name, p) in &self.pipelines {
            let key = |k: &str| format!("pipelines.{name}.{k}");
            if !valid_name(name) {
                bad(
                    format!("pipelines.{name}"),
                    "pipeline names are 1-40 of [a-z0-9_-]",
                );
            }
            if !self.pools.contains_key(&p.pool) {
                bad(key("pool"), &format!("no pool named {:?}", p.pool));
            }
            if crate::s3url::S3Url::parse(&p.output).is_err() {
                bad(key("output"), "must be s3://bucket/prefix/");
            }
            if p.cost_factor.is_nan() || p.cost_factor <= 0.0 {
                bad(key("cost_factor"), "must be above 0");
            }
            for (asset, url) in &p.assets {
                if crate::s3url::S3Url::parse(url).is_err() {
                    bad(key(&format!("assets.{asset}")), "must be s3://bucket/key");
                }
            }
            if p.steps.is_empty() {
                bad(key("steps"), "at least one step is needed");
            }
            let names: Vec<&str> = p.assets.keys().map(String::as_str).collect();
            for (i, step) in p.steps.iter().enumerate() {
                if step.args.is_empty() {
                    bad(key(&format!("steps[{i}].args")), "empty");
                }
                for arg in &step.args {
                    if let Err(e) = template::check(arg, &names) {
                        bad(key(&format!("steps[{i}].args")), &e);
                    }
                }
            }
            if p.outputs.is_empty() {
                bad(key("outputs"), "at least one output is needed");
            }
            for (i, o) in p.outputs.iter().enumerate() {
                check_output(o, &key(&format!("outputs[{i}]")), &mut bad);
            }
        }
    }

    fn validate_routes(&self, bad: &mut impl FnMut(String, &str)) {
        for (i, r) in self.routes.iter().enumerate() {
            let key = |k: &str| format!("routes[{i}].{k}");
            if r.pipelines.is_empty() {
                bad(key("pipelines"), "at least one pipeline is needed");
            }
            for p in &r.pipelines {
                if !self.pipelines.contains_key(p) {
                    bad(key("pipelines"), &format!("no pipeline named {p:?}"));
                }
            }
            if let Some(pool) = &r.pool {
                if !self.pools.contains_key(pool) {
                    bad(key("pool"), &format!("no pool named {pool:?}"));
                }
            }
            for (k, v) in [("min_secs", r.min_secs), ("max_secs", r.max_secs)] {
                if v.is_some_and(|v| v.is_nan() || v < 0.0) {
                    bad(key(k), "must be 0 or more");
                }
            }
            if let (Some(min), Some(max)) = (r.min_secs, r.max_secs) {
                if min >= max {
                    bad(key("max_secs"), "must be above min_secs");
                }
            }
        }
    }

    fn validate_cloud(&self, bad: &mut impl FnMut(String, &str)) {
        let cloud = &self.cloud;
        if let Some(url) = &cloud.metadata_url {
            check_url(url, &["http"], "cloud.metadata_url", bad);
        }
        if cloud.metadata_poll_secs == 0 {
            bad("cloud.metadata_poll_secs".into(), "must be above 0");
        }
        let Some(ec2) = &cloud.ec2 else {
            if cloud.kind == CloudKind::Ec2 {
                bad(
                    "cloud.ec2".into(),
                    "kind = \"ec2\" needs a [cloud.ec2] table",
                );
            }
            return;
        };
        if let Some(endpoint) = &ec2.endpoint {
            check_url(endpoint, &["http", "https"], "cloud.ec2.endpoint", bad);
        }
        if let Some(url) = &ec2.config_url {
            if crate::s3url::S3Url::parse(url).is_err() {
                bad("cloud.ec2.config_url".into(), "must be s3://bucket/key");
            }
        }
        if ec2.launch_template.is_none() {
            if ec2.image_id.is_none() {
                bad(
                    "cloud.ec2.image_id".into(),
                    "needed when no launch_template is given",
                );
            }
            if ec2.instance_types.is_empty() {
                bad(
                    "cloud.ec2.instance_types".into(),
                    "needed when no launch_template is given",
                );
            }
        }
        const STRATEGIES: &[&str] = &[
            "capacity-optimized",
            "capacity-optimized-prioritized",
            "price-capacity-optimized",
            "lowest-price",
            "diversified",
        ];
        if !STRATEGIES.contains(&ec2.allocation_strategy.as_str()) {
            bad(
                "cloud.ec2.allocation_strategy".into(),
                &format!("must be one of {}", STRATEGIES.join(", ")),
            );
        }
    }

    /// The keys that differ from `new` and that a running cell cannot change: its
    /// connections, names, queues and leases. A new config that changes any of them
    /// needs a restart.
    pub fn restart_keys(&self, new: &Config) -> Vec<&'static str> {
        let (a, b) = (self, new);
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
            (
                "s3",
                (&a.s3.endpoint, &a.s3.region, a.s3.path_style)
                    == (&b.s3.endpoint, &b.s3.region, b.s3.path_style),
            ),
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

    /// The longest a delivery of `pools` can stay unacknowledged in a cell with `slots`
    /// slots, in seconds, from the step timeouts: a job lasts at most T = step timeout ×
    /// (steps + the source probe + one probe per output), and a prefetched delivery
    /// waits for a slot before it runs, so the bound is max(2, slots) × pools × T.
    pub fn unacked_bound_secs(&self, pools: &[String], slots: usize) -> u64 {
        let longest = self
            .pipelines
            .values()
            .filter(|p| pools.contains(&p.pool))
            .map(|p| {
                let timeout = p.step_timeout_secs.unwrap_or(self.cell.step_timeout_secs);
                timeout * (p.steps.len() + 1 + p.outputs.len()) as u64
            })
            .max()
            .unwrap_or(0);
        slots.max(2) as u64 * pools.len().max(1) as u64 * longest
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

fn check_output(o: &OutputSpec, key: &str, bad: &mut impl FnMut(String, &str)) {
    let path = std::path::Path::new(&o.path);
    let escapes = path.is_absolute()
        || path
            .components()
            .any(|c| !matches!(c, std::path::Component::Normal(_)));
    if o.path.is_empty() || escapes {
        bad(
            format!("{key}.path"),
            "must be a relative path inside the job's output directory",
        );
    }
    if o.path.contains('*') && o.path.rsplit('/').skip(1).any(|d| d.contains('*')) {
        bad(
            format!("{key}.path"),
            "a `*` may appear only in the file name",
        );
    }
    if let Some(Duration::Named(n)) = &o.duration {
        if n != "source" {
            bad(format!("{key}.duration"), "must be \"source\" or seconds");
        }
    }
}

fn check_url(url: &str, schemes: &[&str], key: &str, bad: &mut impl FnMut(String, &str)) {
    let scheme = url.split_once("://").map(|(s, _)| s);
    if !scheme.is_some_and(|s| schemes.contains(&s)) {
        bad(
            key.into(),
            &format!("must be a URL with scheme {}", schemes.join(" or ")),
        );
    }
}

fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 40
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-')
}

/// Reports and removes every key no table accepts; serde alone stops at the first.
fn drop_unknown_keys(root: &mut toml::Value, problems: &mut Vec<String>) {
    const TOP: &[&str] = &[
        "farm",
        "amqp",
        "postgres",
        "redis",
        "s3",
        "cell",
        "cloud",
        "pools",
        "pipelines",
        "routes",
        "update",
    ];
    const SECTIONS: &[(&str, &[&str])] = &[
        ("farm", &["name"]),
        ("amqp", &["url", "consumer_timeout_secs"]),
        ("postgres", &["url", "schema"]),
        ("redis", &["url"]),
        ("update", &["binary_url", "sha256"]),
        ("s3", &["endpoint", "region", "path_style"]),
        (
            "cloud",
            &[
                "kind",
                "binary",
                "log_dir",
                "metadata_url",
                "metadata_poll_secs",
                "interruption_margin_secs",
                "ec2",
            ],
        ),
        (
            "cell",
            &[
                "slots",
                "threads_per_job",
                "scratch_dir",
                "lease_secs",
                "heartbeat_secs",
                "max_attempts",
                "shutdown_grace_secs",
                "step_timeout_secs",
                "ffmpeg_memory_mib",
                "demuxers",
                "config_check_secs",
            ],
        ),
    ];
    const POOL: &[&str] = &[
        "max_queue_length",
        "jobs_per_cell",
        "work_secs_per_cell",
        "floor",
        "ceiling",
        "step",
        "cooldown_secs",
        "idle_grace_secs",
        "launch_timeout_secs",
    ];
    const PIPELINE: &[&str] = &[
        "pool",
        "output",
        "cost_factor",
        "step_timeout_secs",
        "assets",
        "steps",
        "outputs",
    ];
    const EC2: &[&str] = &[
        "region",
        "endpoint",
        "config_url",
        "launch_template",
        "launch_template_version",
        "image_id",
        "instance_types",
        "subnets",
        "security_groups",
        "instance_profile",
        "key_name",
        "allocation_strategy",
        "on_demand_fallback",
        "poweroff_fallback",
    ];
    const STEP: &[&str] = &["args"];
    const ROUTE: &[&str] = &[
        "name",
        "bucket",
        "prefix",
        "glob",
        "min_secs",
        "max_secs",
        "pipelines",
        "pool",
        "priority",
    ];
    const OUTPUT: &[&str] = &[
        "path",
        "content_type",
        "video_codec",
        "audio_codec",
        "width",
        "height",
        "duration",
    ];
    let Some(top) = root.as_table_mut() else {
        return;
    };
    check_table(top, "", TOP, problems);
    for (section, allowed) in SECTIONS {
        if let Some(t) = top.get_mut(*section).and_then(toml::Value::as_table_mut) {
            check_table(t, section, allowed, problems);
        }
    }
    let ec2 = top
        .get_mut("cloud")
        .and_then(|c| c.get_mut("ec2"))
        .and_then(toml::Value::as_table_mut);
    if let Some(t) = ec2 {
        check_table(t, "cloud.ec2", EC2, problems);
    }
    let routes = top.get_mut("routes").and_then(toml::Value::as_array_mut);
    for (i, route) in routes.into_iter().flatten().enumerate() {
        if let Some(t) = route.as_table_mut() {
            check_table(t, &format!("routes[{i}]"), ROUTE, problems);
        }
    }
    let pools = top.get_mut("pools").and_then(toml::Value::as_table_mut);
    for (name, pool) in pools.into_iter().flatten() {
        if let Some(t) = pool.as_table_mut() {
            check_table(t, &format!("pools.{name}"), POOL, problems);
        }
    }
    let pipelines = top.get_mut("pipelines").and_then(toml::Value::as_table_mut);
    for (name, p) in pipelines.into_iter().flatten() {
        let Some(t) = p.as_table_mut() else { continue };
        let prefix = format!("pipelines.{name}");
        check_table(t, &prefix, PIPELINE, problems);
        for (list, allowed) in [("steps", STEP), ("outputs", OUTPUT)] {
            let items = t.get_mut(list).and_then(toml::Value::as_array_mut);
            for (i, item) in items.into_iter().flatten().enumerate() {
                if let Some(it) = item.as_table_mut() {
                    check_table(it, &format!("{prefix}.{list}[{i}]"), allowed, problems);
                }
            }
        }
    }
}

fn check_table(t: &mut toml::Table, prefix: &str, allowed: &[&str], problems: &mut Vec<String>) {
    t.retain(|key, _| {
        let known = allowed.contains(&key);
        if !known {
            let full = if prefix.is_empty() {
                key.to_string()
            } else {
                format!("{prefix}.{key}")
            };
            problems.push(format!(
                "{full}: unknown key (allowed: {})",
                allowed.join(", ")
            ));
        }
        known
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
        [farm]
        name = "demo"
        [amqp]
        url = "amqp://guest:guest@127.0.0.1:5672/%2f"
        [postgres]
        url = "postgres://postgres@127.0.0.1/test"
        [redis]
        url = "redis://127.0.0.1:6379"
        [pools.default]
        [pipelines.thumbs]
        pool = "default"
        output = "s3://out/thumbs/"
        steps = [{ args = ["-i", "{input}", "-frames:v", "1", "{out}/poster.jpg"] }]
        outputs = [{ path = "poster.jpg", video_codec = "mjpeg" }]
    "#;

    #[test]
    fn a_good_config_loads_with_defaults() {
        let c = Config::parse(GOOD, "good.toml").unwrap();
        assert_eq!(c.cell.max_attempts, DEFAULT_MAX_ATTEMPTS);
        assert_eq!(c.postgres.schema, "cellfarm");
        assert_eq!(c.cell.slots_for(8), 8);
        assert_eq!(c.cell.threads_for(8), 1);
    }

    #[test]
    fn every_bad_key_is_named_at_once() {
        let text = GOOD
            .replace("[redis]", "[redis]\nurll = \"x\"")
            .replace("pool = \"default\"", "pool = \"nope\"")
            .replace(
                "[pools.default]",
                "[pools.default]\n[cell]\nmax_attempts = 0",
            )
            .replace("{out}/poster.jpg", "{outt}/poster.jpg");
        let err = Config::parse(&text, "bad.toml").unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("redis.urll: unknown key"), "{msg}");
        assert!(msg.contains("pipelines.thumbs.pool"), "{msg}");
        assert!(msg.contains("cell.max_attempts"), "{msg}");
        assert!(msg.contains("pipelines.thumbs.steps[0].args"), "{msg}");
        assert_eq!(err.problems.len(), 4, "{msg}");
    }

    #[test]
    fn only_what_a_running_cell_can_change_is_changed_live() {
        let old = Config::parse(GOOD, "old").unwrap();
        let live = GOOD.replace("\"1\", \"{out}", "\"2\", \"{out}") + "\n[cell]\nslots = 3\n";
        assert!(old
            .restart_keys(&Config::parse(&live, "new").unwrap())
            .is_empty());
        let fixed = GOOD
            .replace("redis://127.0.0.1:6379", "redis://10.0.0.1:6379")
            .replace("[pools.default]", "[pools.default]\n[pools.more]");
        let keys = old.restart_keys(&Config::parse(&fixed, "new").unwrap());
        assert_eq!(keys, ["redis.url", "pools (names, max_queue_length)"]);
    }

    #[test]
    fn the_unacked_bound_grows_with_slots_pools_and_steps() {
        let c = Config::parse(GOOD, "c").unwrap();
        let pools = vec!["default".to_string()];
        // One step, the source probe, one output probe: 3 × 3600 s; 2 slots.
        assert_eq!(c.unacked_bound_secs(&pools, 1), 2 * 3 * 3600);
        assert_eq!(c.unacked_bound_secs(&pools, 4), 4 * 3 * 3600);
        assert_eq!(c.unacked_bound_secs(&["other".to_string()], 4), 0);
    }

    #[test]
    fn output_paths_cannot_escape_the_output_directory() {
        for path in ["../x.mp4", "/etc/passwd", "a/../../b", "*/x.ts"] {
            let text = GOOD.replace("path = \"poster.jpg\"", &format!("path = {path:?}"));
            let err = Config::parse(&text, "c").unwrap_err();
            assert!(err.to_string().contains("outputs[0].path"), "{path}: {err}");
        }
    }
}
