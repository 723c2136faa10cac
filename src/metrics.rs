//! `/metrics` in the Prometheus text format (version 0.0.4): the dashboard's view of the
//! whole farm ([`farm`]), and a cell's view of itself ([`cell`]).
//!
//! Conventional names and units: counters end in `_total`, durations are `_seconds`,
//! money `_dollars`. The job counters are the ledger's own counts, so they survive any
//! restart and agree with `cellfarm jobs` exactly.

use std::fmt::Write as _;

use crate::alerts::AlertKind;
use crate::dashboard::snapshot::Snapshot;
use crate::ledger::DURATION_BUCKETS;
use crate::locks::Beat;

/// The content type of the text format.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Escapes a label value: backslash, double quote and newline.
pub fn label(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// Writes a metric family's `# HELP` and `# TYPE` lines.
fn family(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
}

/// The farm's metrics, as the dashboard serves them.
pub fn farm(s: &Snapshot) -> String {
    let mut out = String::with_capacity(8 * 1024);
    family(
        &mut out,
        "cellfarm_jobs_total",
        "counter",
        "Jobs that ended, by pool, pipeline and outcome (the ledger's count).",
    );
    for c in s.counts.iter().filter(|c| c.state.is_final()) {
        let _ = writeln!(
            out,
            "cellfarm_jobs_total{{pool=\"{}\",pipeline=\"{}\",outcome=\"{}\"}} {}",
            label(&c.pool),
            label(&c.pipeline),
            c.state,
            c.jobs
        );
    }
    family(
        &mut out,
        "cellfarm_jobs",
        "gauge",
        "Jobs queued or running now, by pool and pipeline.",
    );
    for c in s.counts.iter().filter(|c| !c.state.is_final()) {
        let _ = writeln!(
            out,
            "cellfarm_jobs{{pool=\"{}\",pipeline=\"{}\",state=\"{}\"}} {}",
            label(&c.pool),
            label(&c.pipeline),
            c.state,
            c.jobs
        );
    }
    durations(&mut out, s);
    pools(&mut out, s);
    spend_and_interruptions(&mut out, s);
    family(
        &mut out,
        "cellfarm_alerts",
        "gauge",
        "Alerts raised now, by kind.",
    );
    for kind in AlertKind::ALL {
        let n = s.status.alerts.iter().filter(|a| a.kind == kind).count();
        let _ = writeln!(out, "cellfarm_alerts{{kind=\"{kind}\"}} {n}");
    }
    out
}

fn durations(out: &mut String, s: &Snapshot) {
    family(
        out,
        "cellfarm_job_duration_seconds",
        "histogram",
        "Run time of succeeded jobs: their last attempt's start to the commit.",
    );
    for d in &s.durations {
        let labels = format!(
            "pool=\"{}\",pipeline=\"{}\"",
            label(&d.pool),
            label(&d.pipeline)
        );
        for (le, n) in DURATION_BUCKETS.iter().zip(&d.buckets) {
            let _ = writeln!(
                out,
                "cellfarm_job_duration_seconds_bucket{{{labels},le=\"{le}\"}} {n}"
            );
        }
        let _ = writeln!(
            out,
            "cellfarm_job_duration_seconds_bucket{{{labels},le=\"+Inf\"}} {}\n\
             cellfarm_job_duration_seconds_sum{{{labels}}} {}\n\
             cellfarm_job_duration_seconds_count{{{labels}}} {}",
            d.count, d.sum_secs, d.count
        );
    }
}

/// The per-pool gauges, in the order [`pool_values`] gives them.
const POOL_GAUGES: [(&str, &str); 5] = [
    (
        "cellfarm_queue_ready_messages",
        "Ready messages in the pool's priority lane and work queue.",
    ),
    (
        "cellfarm_cells_alive",
        "Cells beating for the pool, not draining.",
    ),
    (
        "cellfarm_cells_pending",
        "Cells launched for the pool and not alive yet.",
    ),
    (
        "cellfarm_remaining_work_seconds",
        "Work-seconds the pool's unfinished jobs still need.",
    ),
    (
        "cellfarm_encode_speed_ratio",
        "Mean speed of the pool's running encodes against realtime.",
    ),
];

/// A pool's values of [`POOL_GAUGES`].
fn pool_values(s: &Snapshot, pool: &crate::dashboard::snapshot::PoolNow) -> [f64; 5] {
    let remaining = s
        .status
        .progress
        .iter()
        .find(|x| x.pool == pool.pool)
        .map_or(0.0, |x| x.remaining_work_secs);
    let speeds: Vec<f64> = s
        .status
        .running
        .iter()
        .filter(|j| j.job.pool == pool.pool)
        .filter_map(|j| j.job.speed)
        .collect();
    let speed = if speeds.is_empty() {
        0.0
    } else {
        speeds.iter().sum::<f64>() / speeds.len() as f64
    };
    [
        pool.ready as f64,
        pool.alive as f64,
        pool.pending as f64,
        remaining,
        speed,
    ]
}

fn pools(out: &mut String, s: &Snapshot) {
    let rows: Vec<(&str, [f64; 5])> = s
        .pools
        .iter()
        .map(|p| (p.pool.as_str(), pool_values(s, p)))
        .collect();
    for (i, (name, help)) in POOL_GAUGES.iter().enumerate() {
        family(out, name, "gauge", help);
        for (pool, values) in &rows {
            let _ = writeln!(out, "{name}{{pool=\"{}\"}} {}", label(pool), values[i]);
        }
    }
}

fn spend_and_interruptions(out: &mut String, s: &Snapshot) {
    family(
        out,
        "cellfarm_interruptions_total",
        "counter",
        "Spot interruptions, by instance type and AZ.",
    );
    family(
        out,
        "cellfarm_interrupted_work_seconds_total",
        "counter",
        "Seconds of work handed back on spot notices.",
    );
    for i in &s.interruptions {
        let labels = format!(
            "instance_type=\"{}\",az=\"{}\"",
            label(i.instance_type.as_deref().unwrap_or("unknown")),
            label(i.az.as_deref().unwrap_or("unknown"))
        );
        let _ = writeln!(
            out,
            "cellfarm_interruptions_total{{{labels}}} {}\ncellfarm_interrupted_work_seconds_total{{{labels}}} {}",
            i.interruptions, i.lost_work_secs
        );
    }
    family(
        out,
        "cellfarm_spend_dollars_total",
        "counter",
        "Dollars the farm's machines cost over its life.",
    );
    let _ = writeln!(
        out,
        "cellfarm_spend_dollars_total {}",
        s.spend_life.spend_usd
    );
    family(
        out,
        "cellfarm_on_demand_dollars_total",
        "counter",
        "Dollars the same machine time would cost on demand.",
    );
    let _ = writeln!(
        out,
        "cellfarm_on_demand_dollars_total {}",
        s.spend_life.on_demand_usd
    );
}

/// A cell's own metrics, from its beat: what it runs and how fast.
pub fn cell(beat: &Beat) -> String {
    let mut out = String::with_capacity(2048);
    let id = label(&beat.cell_id);
    family(
        &mut out,
        "cellfarm_cell_slots",
        "gauge",
        "Job slots of this cell.",
    );
    let _ = writeln!(out, "cellfarm_cell_slots{{cell=\"{id}\"}} {}", beat.slots);
    family(
        &mut out,
        "cellfarm_cell_running_jobs",
        "gauge",
        "Deliveries this cell is handling.",
    );
    let _ = writeln!(
        out,
        "cellfarm_cell_running_jobs{{cell=\"{id}\"}} {}",
        beat.running
    );
    family(
        &mut out,
        "cellfarm_cell_draining",
        "gauge",
        "1 while the cell takes no new work.",
    );
    let _ = writeln!(
        out,
        "cellfarm_cell_draining{{cell=\"{id}\"}} {}",
        u8::from(beat.draining)
    );
    family(
        &mut out,
        "cellfarm_encode_speed_ratio",
        "gauge",
        "Speed of each running encode against realtime.",
    );
    for j in &beat.jobs {
        let _ = writeln!(
            out,
            "cellfarm_encode_speed_ratio{{cell=\"{id}\",pool=\"{}\",pipeline=\"{}\",job=\"{}\"}} {}",
            label(&j.pool),
            label(&j.pipeline),
            label(&j.job_id),
            j.speed.unwrap_or(0.0)
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_are_escaped() {
        assert_eq!(label("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
    }
}
