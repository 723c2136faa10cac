//! `cellfarm simulate SCENARIO.toml`: a discrete-event simulation of a farm on a
//! virtual clock that drives the real mitosis code ([`crate::mitosis::Ticker`], and
//! through it [`crate::mitosis::decide`] and the pool's policy from a real
//! [`crate::config::Config`]) against a model of the world: launch latency, spot
//! interruptions by type and AZ with their notice, prices and per-second billing, slots,
//! job arrivals and durations. See `docs/simulate.md`.
//!
//! * `scenario` — the scenario file, and the cellfarm config built from it.
//! * `world` — the modelled world: jobs, queue, instances, cells, events, tallies.
//! * `farm` — the world as [`crate::mitosis::Farm`] and [`crate::cloud::Cloud`].
//! * `engine` — the event loop and the two policies (cellfarm's tick, message-count).
//! * `report`, `svg` — the report (text, JSON) and the chart.
//!
//! Each scenario runs five times on the same seed: cellfarm and message-count on spot,
//! both on on-demand, and a fixed on-demand farm of cellfarm's peak.
//!
//! The pool's daily budget (`[pool] budget_per_day`) is held by the real tick:
//! `farm::Sim` answers its spend with the world's own billing of the UTC day so far
//! (each instance at its market's price), and the report shows the costliest day
//! against the budget.

mod engine;
mod farm;
mod report;
mod scenario;
mod svg;
mod world;

#[cfg(test)]
mod tests;

use std::path::PathBuf;
use std::time::Instant;

pub use report::{Report, RunReport};
pub use scenario::{Scenario, ScenarioError};

use engine::{Controller, Outcome, Variant};
use world::Market;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// The scenario (TOML): workload, pool policy, launch and spot model.
    pub scenario: PathBuf,
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
    /// Write a chart of backlog and cells over time (SVG).
    #[arg(long, value_name = "PATH")]
    pub svg: Option<PathBuf>,
    /// Override the scenario's seed.
    #[arg(long)]
    pub seed: Option<u64>,
    /// Run a scenario of chunked titles with each title as one job, to compare.
    #[arg(long)]
    pub whole: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum SimulateError {
    #[error(transparent)]
    Scenario(#[from] ScenarioError),
    #[error("writing the chart {path}: {source}")]
    Chart {
        path: String,
        source: std::io::Error,
    },
}

impl SimulateError {
    /// A bad scenario is a usage error (the binary exits 64).
    pub fn is_usage(&self) -> bool {
        matches!(self, SimulateError::Scenario(_))
    }
}

pub fn run(args: &Args) -> Result<(), SimulateError> {
    let mut scenario = Scenario::load(&args.scenario)?;
    if let Some(seed) = args.seed {
        scenario.seed = seed;
    }
    if args.whole {
        scenario.jobs.chunked = None;
    }
    let started = Instant::now();
    let (mut report, outcomes) = simulate(&scenario)?;
    report.wall_secs = Some(started.elapsed().as_secs_f64());
    if let Some(path) = &args.svg {
        let series: Vec<svg::Series<'_>> = (outcomes.iter().zip(["#c0392b", "#2471a3"]))
            .map(|((name, o), colour)| svg::Series {
                name,
                samples: &o.world.samples,
                colour,
            })
            .collect();
        let title = format!(
            "{}: backlog and cells (seed {})",
            scenario.name, scenario.seed
        );
        let ceiling = outcomes.first().map_or(1, |(_, o)| o.ceiling);
        std::fs::write(path, svg::chart(&title, &series, ceiling)).map_err(|source| {
            SimulateError::Chart {
                path: path.display().to_string(),
                source,
            }
        })?;
    }
    if args.json {
        let json = serde_json::to_string_pretty(&report).expect("a report always serializes");
        println!("{json}");
    } else {
        print!("{}", report.text());
    }
    Ok(())
}

const CELLFARM: Variant = Variant {
    name: "cellfarm spot",
    controller: Controller::Cellfarm,
    market: Market::Spot,
    fixed_cells: None,
};
const MESSAGE_COUNT: Variant = Variant {
    name: "message-count spot",
    controller: Controller::MessageCount,
    market: Market::Spot,
    fixed_cells: None,
};

/// The spot runs by name, kept whole for the chart.
pub type SpotRuns = Vec<(&'static str, Outcome)>;

/// Runs the scenario five ways and reports them side by side; also returns the two
/// spot runs (cellfarm, message-count) for the chart.
pub fn simulate(scenario: &Scenario) -> Result<(Report, SpotRuns), SimulateError> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("a current-thread runtime without I/O can be built");
    let mut variants = vec![
        CELLFARM,
        MESSAGE_COUNT,
        Variant {
            name: "cellfarm on-demand",
            market: Market::OnDemand,
            ..CELLFARM
        },
        Variant {
            name: "message-count on-demand",
            market: Market::OnDemand,
            ..MESSAGE_COUNT
        },
    ];
    let mut runs = Vec::new();
    let mut spot_outcomes = Vec::new();
    let mut i = 0;
    while i < variants.len() {
        let v = variants[i];
        let mut outcome = runtime.block_on(engine::run(scenario, &v))?;
        let run = report::run_report(&v, &mut outcome);
        if i == 0 {
            // On-demand sized for cellfarm's peak, for the whole run.
            variants.push(Variant {
                name: "fixed on-demand",
                market: Market::OnDemand,
                fixed_cells: Some(run.peak_cells.max(1)),
                ..CELLFARM
            });
        }
        runs.push(run);
        if v.market == Market::Spot {
            // The chart needs the samples only: let the jobs go.
            outcome.world.jobs = Vec::new();
            outcome.world.tally.turnaround_secs = Vec::new();
            spot_outcomes.push((v.name, outcome));
        }
        i += 1;
    }
    report::compare(&mut runs);
    let jobs = runs
        .first()
        .map_or(0, |r| r.jobs_completed + r.jobs_unfinished);
    let report = Report {
        scenario: scenario.name.clone(),
        seed: scenario.seed,
        jobs,
        runs,
        wall_secs: None,
    };
    Ok((report, spot_outcomes))
}
