//! The scenario file: the world the simulator models, and the pool policy under test as
//! the very `[pools.*]` table a user writes in `cellfarm.toml`.

use std::path::Path;

use rand::rngs::StdRng;
use rand::Rng;
use serde::{Deserialize, Serialize};

use crate::config::Config;

/// The pool every simulated job belongs to.
pub const POOL: &str = "sim";
/// The pipeline every simulated job runs (its cost factor is 1: a job's duration is its
/// work).
pub const PIPELINE: &str = "sim";
/// The Spot Instance Advisor's month.
const MONTH_SECS: f64 = 30.0 * 24.0 * 3600.0;

#[derive(Debug, thiserror::Error)]
pub enum ScenarioError {
    #[error("reading scenario {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("invalid scenario {path}: {reason}")]
    Invalid { path: String, reason: String },
}

/// A whole scenario. Every field has a default but the job load.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Scenario {
    #[serde(default = "default_name")]
    pub name: String,
    /// Seed of every random draw: the same seed gives the same report.
    #[serde(default)]
    pub seed: u64,
    /// The simulation stops here even if work remains (it then reports the unfinished).
    #[serde(default = "default_max_hours")]
    pub max_hours: f64,
    /// The pool policy, copied as `[pools.sim]` into a cellfarm config and parsed by
    /// `Config::parse`: the keys and defaults users know (`jobs_per_cell`, `floor`,
    /// `ceiling`, `step`, `cooldown_secs`, `idle_grace_secs`, `launch_timeout_secs`, …).
    #[serde(default = "empty_table")]
    pub pool: toml::Table,
    #[serde(default)]
    pub cell: CellModel,
    #[serde(default)]
    pub launch: LaunchModel,
    pub jobs: Jobs,
    #[serde(default)]
    pub spot: SpotModel,
    #[serde(default = "default_types")]
    pub instance_types: Vec<InstanceType>,
    #[serde(default)]
    pub message_count: MessageCount,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct CellModel {
    /// A cell's heartbeat, and so its mitosis tick (`[cell] heartbeat_secs`).
    #[serde(default = "default_heartbeat")]
    pub heartbeat_secs: u64,
    /// Seconds before the reclaim by which running jobs are handed back
    /// (`[cloud] interruption_margin_secs`).
    #[serde(default = "default_margin")]
    pub interruption_margin_secs: u64,
    /// Seconds between a spot notice and the reclaim.
    #[serde(default = "default_notice")]
    pub spot_notice_secs: u64,
    /// The trigger's ticks for arrivals within this window are one tick (a Lambda per
    /// S3 event ticks far more often; the decisions barely differ).
    #[serde(default = "default_trigger_batch")]
    pub trigger_batch_secs: u64,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct LaunchModel {
    /// From the launch API call to a running (billed) instance.
    #[serde(default = "default_api_to_running")]
    pub api_to_running_secs: Dist,
    /// From a running instance to the cell's first heartbeat (boot, config, connect).
    #[serde(default = "default_cell_start")]
    pub cell_start_secs: Dist,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Jobs {
    /// Jobs queued at t = 0 (a `cellfarm submit --prefix` of a whole bucket).
    #[serde(default)]
    pub backlog: u64,
    /// Arrival rate over time: `[minute, jobs per minute]` points, linear between, none
    /// after the last point (a Poisson process).
    #[serde(default)]
    pub arrivals_per_min: Vec<[f64; 2]>,
    /// Seconds one job occupies one slot.
    pub duration_secs: Dist,
    /// What the ledger knows of a job's work: `none` (today: every job weighs the
    /// default 180 s until it runs) or `exact` (`work_secs` set at submit).
    #[serde(default)]
    pub estimates: Estimates,
    /// Set, every job is a title of a chunked pipeline ([`crate::chunk`]): a split,
    /// then its chunks, all queued at once, then an assembly once the last is done.
    pub chunked: Option<ChunkModel>,
}

/// How a chunked title runs: its work (`duration_secs`) cut into chunks of
/// `chunk_secs` of work each.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ChunkModel {
    /// Slot seconds of work per chunk: the pipeline's `chunk_secs` × its cost factor.
    pub chunk_secs: f64,
    /// Slot seconds of the split (one demux of the title; more with scene cuts).
    pub split_secs: f64,
    /// Slot seconds of the assembly: the parts downloaded, joined by stream copy, the
    /// result decoded once to check it frame by frame.
    pub assemble_secs: f64,
    /// Extra work each chunk costs over its share of the whole encode, as a fraction
    /// (`scripts/bench-chunked.sh` measures it).
    #[serde(default)]
    pub overhead: f64,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Estimates {
    #[default]
    None,
    Exact,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct SpotModel {
    /// Multiplies every interruption rate: 1 is the Advisor's bands, stress modes use
    /// hundreds or thousands.
    #[serde(default = "one")]
    pub interruption_multiplier: f64,
    /// Per (type, AZ) market: times a month the whole market is reclaimed together.
    #[serde(default = "default_correlated")]
    pub correlated_per_month: f64,
    /// Share of the market's instances a correlated reclaim takes.
    #[serde(default = "one")]
    pub correlated_fraction: f64,
    #[serde(default = "default_azs")]
    pub azs: Vec<String>,
    /// EC2 bills per second with a minimum of a minute (Linux).
    #[serde(default = "default_billing_minimum")]
    pub billing_minimum_secs: u64,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct InstanceType {
    pub name: String,
    /// Concurrent jobs a cell of this type runs.
    pub slots: u32,
    pub spot_usd_per_hour: f64,
    pub on_demand_usd_per_hour: f64,
    /// The Spot Instance Advisor's frequency of interruption: `<5%`, `5-10%`, `10-15%`,
    /// `15-20%` or `>20%` a month.
    #[serde(default = "default_band")]
    pub interruption_band: String,
    /// Share of launches that go to this type (diversification).
    #[serde(default = "one")]
    pub weight: f64,
}

/// The KEDA-style policy run beside cellfarm's: cells = ceil(ready ÷ target).
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct MessageCount {
    /// Ready messages per cell; default: the pool's `jobs_per_cell`.
    pub target: Option<u32>,
    /// KEDA's `pollingInterval` (30 s by default).
    #[serde(default = "default_poll")]
    pub poll_secs: u64,
    /// The HPA's scale-down stabilization window (300 s by default).
    #[serde(default = "default_window")]
    pub scale_down_window_secs: u64,
}

/// A distribution of seconds.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum Dist {
    Fixed(f64),
    Uniform {
        min: f64,
        max: f64,
    },
    /// Log-normal, given by its median and 95th percentile.
    Lognormal {
        median: f64,
        p95: f64,
    },
}

impl Dist {
    pub fn sample(&self, rng: &mut StdRng) -> f64 {
        match *self {
            Dist::Fixed(x) => x,
            Dist::Uniform { min, max } => min + (max - min) * rng.gen::<f64>(),
            Dist::Lognormal { median, p95 } => {
                // 1.6449 is the standard normal's 95th percentile.
                let sigma = (p95 / median).ln().max(0.0) / 1.6449;
                (median.ln() + sigma * normal(rng)).exp()
            }
        }
    }

    fn check(&self, what: &str) -> Result<(), String> {
        let ok = match *self {
            Dist::Fixed(x) => x >= 0.0,
            Dist::Uniform { min, max } => min >= 0.0 && max >= min,
            Dist::Lognormal { median, p95 } => median > 0.0 && p95 >= median,
        };
        ok.then_some(())
            .ok_or_else(|| format!("{what}: {self:?} is not a distribution of seconds"))
    }
}

/// A standard normal draw (Box–Muller), so that no distribution crate is needed.
fn normal(rng: &mut StdRng) -> f64 {
    let u1 = rng.gen::<f64>().max(f64::MIN_POSITIVE);
    let u2 = rng.gen::<f64>();
    (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()
}

impl Scenario {
    pub fn load(path: &Path) -> Result<Scenario, ScenarioError> {
        let name = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| ScenarioError::Read {
            path: name.clone(),
            source,
        })?;
        Scenario::parse(&text, &name)
    }

    pub fn parse(text: &str, source_name: &str) -> Result<Scenario, ScenarioError> {
        let invalid = |reason: String| ScenarioError::Invalid {
            path: source_name.to_string(),
            reason,
        };
        let scenario: Scenario = toml::from_str(text).map_err(|e| invalid(e.to_string()))?;
        scenario.check().map_err(invalid)?;
        Ok(scenario)
    }

    fn check(&self) -> Result<(), String> {
        self.jobs.duration_secs.check("jobs.duration_secs")?;
        if let Some(c) = &self.jobs.chunked {
            let ok = c.chunk_secs >= 1.0
                && c.split_secs >= 0.0
                && c.assemble_secs >= 0.0
                && c.overhead >= 0.0;
            if !ok {
                return Err("jobs.chunked: chunk_secs >= 1, the rest >= 0".into());
            }
        }
        self.launch
            .api_to_running_secs
            .check("launch.api_to_running_secs")?;
        self.launch
            .cell_start_secs
            .check("launch.cell_start_secs")?;
        if self.instance_types.is_empty() || self.spot.azs.is_empty() {
            return Err("at least one instance type and one AZ".into());
        }
        for t in &self.instance_types {
            band_fraction(&t.interruption_band)
                .ok_or_else(|| format!("{}: unknown band {:?}", t.name, t.interruption_band))?;
            if t.slots == 0 || t.weight < 0.0 {
                return Err(format!("{}: slots must be > 0, weight >= 0", t.name));
            }
        }
        if self.cell.heartbeat_secs == 0 || self.message_count.poll_secs == 0 {
            return Err("heartbeat_secs and message_count.poll_secs must be > 0".into());
        }
        let pts = &self.jobs.arrivals_per_min;
        if pts.windows(2).any(|w| w[1][0] < w[0][0]) || pts.iter().any(|p| p[1] < 0.0) {
            return Err("jobs.arrivals_per_min: minutes must rise, rates be >= 0".into());
        }
        Ok(())
    }

    /// The cellfarm config the simulated cells run: the scenario's pool as `[pools.sim]`,
    /// its heartbeat and interruption margin, parsed by the same code as a user's file.
    /// `pool` overrides keys of the pool table (the fixed on-demand farm's floor).
    pub fn config(&self, pool: &[(&str, u32)]) -> Result<Config, ScenarioError> {
        let mut table = self.pool.clone();
        for (key, value) in pool {
            table.insert((*key).into(), toml::Value::Integer(i64::from(*value)));
        }
        if table.contains_key("budget_per_day") && !table.contains_key("price_per_hour") {
            // The config needs a price with a budget; the simulated farm bills each
            // instance at its own type's price instead.
            let most = (self.instance_types.iter())
                .map(|t| t.on_demand_usd_per_hour)
                .fold(0.0, f64::max);
            table.insert("price_per_hour".into(), toml::Value::Float(most.max(0.001)));
        }
        let text = format!(
            r#"
[farm]
name = "simulate"
[amqp]
url = "amqp://simulated"
[postgres]
url = "postgres://simulated/simulated"
[redis]
url = "redis://simulated"
[cell]
heartbeat_secs = {heartbeat}
[cloud]
interruption_margin_secs = {margin}
[pipelines.{PIPELINE}]
pool = "{POOL}"
output = "s3://simulated/out/"
steps = [{{ args = ["-i", "{{input}}", "{{out}}/out.mp4"] }}]
outputs = [{{ path = "out.mp4" }}]
[pools.{POOL}]
{table}"#,
            heartbeat = self.cell.heartbeat_secs,
            margin = self.cell.interruption_margin_secs,
        );
        Config::parse(&text, &format!("scenario {:?} [pool]", self.name)).map_err(|e| {
            ScenarioError::Invalid {
                path: self.name.clone(),
                reason: e.to_string(),
            }
        })
    }
}

/// The middle of a Spot Instance Advisor band, as a fraction of instances interrupted a
/// month (`>20%` counts as 25 %).
pub fn band_fraction(band: &str) -> Option<f64> {
    let band: String = band.chars().filter(|c| !c.is_whitespace()).collect();
    Some(match band.trim_end_matches('%') {
        "<5" => 0.025,
        "5-10" => 0.075,
        "10-15" => 0.125,
        "15-20" => 0.175,
        ">20" => 0.25,
        _ => return None,
    })
}

/// Interruptions per second of one instance of a band, times the multiplier.
pub fn per_sec(fraction_a_month: f64, multiplier: f64) -> f64 {
    fraction_a_month * multiplier / MONTH_SECS
}

pub fn correlated_per_sec(spot: &SpotModel) -> f64 {
    per_sec(spot.correlated_per_month, spot.interruption_multiplier)
}

fn default_name() -> String {
    "scenario".into()
}
/// A week past the last arrival is enough for any sane policy to drain.
fn default_max_hours() -> f64 {
    24.0 * 14.0
}
fn empty_table() -> toml::Table {
    toml::Table::new()
}
fn default_heartbeat() -> u64 {
    5
}
fn default_margin() -> u64 {
    20
}
fn default_notice() -> u64 {
    120
}
fn default_trigger_batch() -> u64 {
    1
}
/// About 30 s from RunInstances to `running` (AWS's usual figure for a spot launch).
fn default_api_to_running() -> Dist {
    Dist::Lognormal {
        median: 30.0,
        p95: 60.0,
    }
}
/// Boot, pull the config, connect to the broker, ledger and Redis.
fn default_cell_start() -> Dist {
    Dist::Lognormal {
        median: 20.0,
        p95: 45.0,
    }
}
fn one() -> f64 {
    1.0
}
/// A type+AZ market reclaimed as a whole about once a year.
fn default_correlated() -> f64 {
    0.1
}
fn default_azs() -> Vec<String> {
    ["us-east-1a", "us-east-1b", "us-east-1c"]
        .map(String::from)
        .to_vec()
}
fn default_billing_minimum() -> u64 {
    60
}
fn default_band() -> String {
    "<5%".into()
}
fn default_poll() -> u64 {
    30
}
fn default_window() -> u64 {
    300
}
/// FERMI's c5.2xlarge, at us-east-1 prices of 2024 (spot varies by the hour).
fn default_types() -> Vec<InstanceType> {
    vec![InstanceType {
        name: "c5.2xlarge".into(),
        slots: 8,
        spot_usd_per_hour: 0.14,
        on_demand_usd_per_hour: 0.34,
        interruption_band: default_band(),
        weight: 1.0,
    }]
}

impl Default for CellModel {
    fn default() -> Self {
        CellModel {
            heartbeat_secs: default_heartbeat(),
            interruption_margin_secs: default_margin(),
            spot_notice_secs: default_notice(),
            trigger_batch_secs: default_trigger_batch(),
        }
    }
}

impl Default for LaunchModel {
    fn default() -> Self {
        LaunchModel {
            api_to_running_secs: default_api_to_running(),
            cell_start_secs: default_cell_start(),
        }
    }
}

impl Default for SpotModel {
    fn default() -> Self {
        SpotModel {
            interruption_multiplier: 1.0,
            correlated_per_month: default_correlated(),
            correlated_fraction: 1.0,
            azs: default_azs(),
            billing_minimum_secs: default_billing_minimum(),
        }
    }
}

impl Default for MessageCount {
    fn default() -> Self {
        MessageCount {
            target: None,
            poll_secs: default_poll(),
            scale_down_window_secs: default_window(),
        }
    }
}
