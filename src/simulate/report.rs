//! The report of a simulation: one column per run, in text or JSON.

use std::fmt::Write as _;

use serde::Serialize;

use super::engine::{Controller, Outcome, Variant};
use super::world::Market;

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RunReport {
    pub name: String,
    pub policy: &'static str,
    pub market: &'static str,
    pub jobs_completed: u64,
    /// Jobs not done when the run hit its horizon.
    pub jobs_unfinished: u64,
    /// Completions of a job already completed (must be 0).
    pub jobs_completed_twice: u64,
    pub turnaround_p50_secs: f64,
    pub turnaround_p95_secs: f64,
    pub turnaround_p99_secs: f64,
    pub peak_cells: u32,
    pub peak_alive: u32,
    pub ceiling: u32,
    /// Steps after which serving instances exceeded the ceiling (must be 0).
    pub steps_over_ceiling: u64,
    pub spend_usd: f64,
    /// The pool's daily budget, for the runs that hold to it (cellfarm's tick; not the
    /// message-count controller, nor the fixed farm).
    pub budget_per_day_usd: Option<f64>,
    /// The costliest UTC day's spend.
    pub peak_day_spend_usd: f64,
    /// This run's spend ÷ the fixed on-demand farm's.
    pub spend_vs_fixed_on_demand: f64,
    /// This run's spend ÷ the same policy's on-demand run.
    pub spend_vs_on_demand_same_policy: f64,
    pub billed_cell_hours: f64,
    /// Slot time spent on jobs ÷ slot time billed.
    pub slot_utilization: f64,
    pub work_lost_hours: f64,
    pub jobs_handed_back: u64,
    pub launches: u64,
    pub deaths: u64,
    pub interruptions: u64,
    pub correlated_reclaims: u64,
    pub idle_cell_hours: f64,
    /// Start to the last job's completion.
    pub makespan_hours: f64,
    /// Start to the end of the run (the farm back at its floor, or the horizon).
    pub end_hours: f64,
    pub hit_horizon: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Report {
    pub scenario: String,
    pub seed: u64,
    pub jobs: u64,
    pub runs: Vec<RunReport>,
    /// Wall seconds the whole simulation took (not part of the determinism).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub wall_secs: Option<f64>,
}

const HOUR_MS: f64 = 3_600_000.0;

pub fn run_report(variant: &Variant, outcome: &mut Outcome) -> RunReport {
    let w = &mut outcome.world;
    let t = &mut w.tally;
    let q = quantiles(&mut t.turnaround_secs);
    RunReport {
        name: variant.name.into(),
        policy: match (variant.controller, variant.fixed_cells) {
            (_, Some(_)) => "fixed",
            (Controller::Cellfarm, None) => "cellfarm",
            (Controller::MessageCount, None) => "message-count",
        },
        market: match variant.market {
            Market::Spot => "spot",
            Market::OnDemand => "on-demand",
        },
        jobs_completed: t.completed,
        jobs_unfinished: w.jobs.len() as u64 - t.completed,
        jobs_completed_twice: t.duplicates,
        turnaround_p50_secs: q[0],
        turnaround_p95_secs: q[1],
        turnaround_p99_secs: q[2],
        peak_cells: t.peak_cells,
        peak_alive: t.peak_alive,
        ceiling: outcome.ceiling,
        steps_over_ceiling: t.over_ceiling,
        spend_usd: t.spend_usd,
        budget_per_day_usd: outcome.budget_per_day.filter(|_| {
            variant.controller == Controller::Cellfarm && variant.fixed_cells.is_none()
        }),
        peak_day_spend_usd: w.days.iter().map(|d| d.closed_usd).fold(0.0, f64::max),
        spend_vs_fixed_on_demand: f64::NAN,
        spend_vs_on_demand_same_policy: f64::NAN,
        billed_cell_hours: t.billed_secs / 3600.0,
        slot_utilization: t.busy_slot_ms as f64 / 1e3 / t.billed_slot_secs.max(1.0),
        work_lost_hours: t.lost_work_ms as f64 / HOUR_MS,
        jobs_handed_back: t.handed_back,
        launches: t.launches,
        deaths: t.deaths,
        interruptions: t.interruptions,
        correlated_reclaims: t.correlated_reclaims,
        idle_cell_hours: t.idle_cell_ms as f64 / HOUR_MS,
        makespan_hours: t.last_done as f64 / HOUR_MS,
        end_hours: outcome.end as f64 / HOUR_MS,
        hit_horizon: outcome.hit_horizon,
    }
}

/// p50, p95, p99 (nearest rank); zeros when nothing completed.
fn quantiles(xs: &mut [f32]) -> [f64; 3] {
    if xs.is_empty() {
        return [0.0; 3];
    }
    xs.sort_unstable_by(f32::total_cmp);
    let at = |p: f64| {
        let rank = ((p * xs.len() as f64).ceil() as usize).clamp(1, xs.len());
        f64::from(xs[rank - 1])
    };
    [at(0.50), at(0.95), at(0.99)]
}

/// Fills each run's spend ratios, from the runs named `fixed` and `<policy> on-demand`.
pub fn compare(runs: &mut [RunReport]) {
    let spend = |runs: &[RunReport], policy: &str, market: &str| {
        runs.iter()
            .find(|r| r.policy == policy && r.market == market)
            .map(|r| r.spend_usd)
    };
    let fixed = spend(runs, "fixed", "on-demand");
    let cf_od = spend(runs, "cellfarm", "on-demand");
    let mc_od = spend(runs, "message-count", "on-demand");
    for r in runs.iter_mut() {
        let ratio = |base: Option<f64>| base.map_or(f64::NAN, |b| r.spend_usd / b);
        r.spend_vs_fixed_on_demand = ratio(fixed);
        r.spend_vs_on_demand_same_policy = match r.policy {
            "cellfarm" => ratio(cf_od),
            "message-count" => ratio(mc_od),
            _ => ratio(fixed),
        };
    }
}

fn hours(h: f64) -> String {
    if h < 1.0 {
        format!("{:.0} min", h * 60.0)
    } else {
        format!("{h:.1} h")
    }
}

fn secs(s: f64) -> String {
    if s < 120.0 {
        format!("{s:.0} s")
    } else if s < 7200.0 {
        format!("{:.1} min", s / 60.0)
    } else {
        format!("{:.1} h", s / 3600.0)
    }
}

type Row = (&'static str, fn(&RunReport) -> String);

const ROWS: &[Row] = &[
    ("market", |r| r.market.to_string()),
    ("jobs done (unfinished)", |r| {
        format!("{} ({})", r.jobs_completed, r.jobs_unfinished)
    }),
    ("turnaround p50", |r| secs(r.turnaround_p50_secs)),
    ("turnaround p95", |r| secs(r.turnaround_p95_secs)),
    ("turnaround p99", |r| secs(r.turnaround_p99_secs)),
    ("peak cells / ceiling", |r| {
        format!("{} / {}", r.peak_cells, r.ceiling)
    }),
    ("spend", |r| format!("${:.2}", r.spend_usd)),
    ("costliest day / budget", |r| match r.budget_per_day_usd {
        Some(b) => format!("${:.2} / ${b:.2}", r.peak_day_spend_usd),
        None => format!("${:.2} / none", r.peak_day_spend_usd),
    }),
    ("spend ÷ fixed on-demand", |r| {
        format!("{:.1} %", 100.0 * r.spend_vs_fixed_on_demand)
    }),
    ("spend ÷ same policy on-demand", |r| {
        format!("{:.1} %", 100.0 * r.spend_vs_on_demand_same_policy)
    }),
    ("billed cell-hours", |r| {
        format!("{:.0}", r.billed_cell_hours)
    }),
    ("idle cell-hours", |r| format!("{:.0}", r.idle_cell_hours)),
    ("slot utilization", |r| {
        format!("{:.1} %", 100.0 * r.slot_utilization)
    }),
    ("work lost (jobs handed back)", |r| {
        format!("{} ({})", hours(r.work_lost_hours), r.jobs_handed_back)
    }),
    ("interruptions (correlated)", |r| {
        format!("{} ({})", r.interruptions, r.correlated_reclaims)
    }),
    ("launches / deaths", |r| {
        format!("{} / {}", r.launches, r.deaths)
    }),
    ("makespan", |r| hours(r.makespan_hours)),
    ("back at floor", |r| {
        let end = hours(r.end_hours);
        if r.hit_horizon {
            format!("no: horizon {end}")
        } else {
            end
        }
    }),
];

impl Report {
    pub fn text(&self) -> String {
        let mut out = format!(
            "scenario {} (seed {}): {} jobs\n\n",
            self.scenario, self.seed, self.jobs
        );
        let label = ROWS.iter().map(|r| r.0.chars().count()).max().unwrap_or(0);
        let cells: Vec<Vec<String>> = (self.runs.iter())
            .map(|run| ROWS.iter().map(|(_, f)| f(run)).collect())
            .collect();
        let width = |i: usize| {
            let data = cells
                .iter()
                .map(|c| c[i].chars().count())
                .max()
                .unwrap_or(0);
            data.max(self.runs[i].name.chars().count())
        };
        let widths: Vec<usize> = (0..self.runs.len()).map(width).collect();
        let _ = write!(out, "{:label$}", "");
        for (run, w) in self.runs.iter().zip(&widths) {
            let _ = write!(out, "  {:>w$}", run.name);
        }
        out.push('\n');
        for (row, (name, _)) in ROWS.iter().enumerate() {
            let _ = write!(out, "{name:label$}");
            for (col, w) in cells.iter().zip(&widths) {
                let _ = write!(out, "  {:>w$}", col[row]);
            }
            out.push('\n');
        }
        if let Some(wall) = self.wall_secs {
            let _ = writeln!(out, "\nsimulated in {wall:.2} s (wall)");
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::quantiles;

    #[test]
    fn quantiles_are_nearest_rank() {
        let mut xs: Vec<f32> = (1..=100).rev().map(|x| x as f32).collect();
        assert_eq!(quantiles(&mut xs), [50.0, 95.0, 99.0]);
        assert_eq!(quantiles(&mut []), [0.0; 3]);
    }
}
