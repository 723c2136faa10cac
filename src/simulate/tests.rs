//! The simulator's properties, each on a small scenario (fast in a debug build).

use super::engine::{self, Controller, Outcome, Variant};
use super::scenario::Dist;
use super::world::Market;
use super::*;

/// Ten minutes of a small burst after a backlog of 40, on 2-slot cells, ceiling 5.
const SMALL: &str = r#"
name = "small"
seed = 7
max_hours = 24
[pool]
jobs_per_cell = 4
ceiling = 5
step = 2
idle_grace_secs = 60
[jobs]
backlog = 40
arrivals_per_min = [[0, 0], [10, 20], [30, 0]]
duration_secs = { uniform = { min = 20, max = 90 } }
[[instance_types]]
name = "c5.xlarge"
slots = 2
spot_usd_per_hour = 0.07
on_demand_usd_per_hour = 0.17
interruption_band = "5-10%"
[[instance_types]]
name = "c6i.xlarge"
slots = 2
spot_usd_per_hour = 0.065
on_demand_usd_per_hour = 0.17
interruption_band = ">20%"
"#;

fn small(extra: &str) -> Scenario {
    Scenario::parse(&format!("{extra}\n{SMALL}"), "small").unwrap()
}

/// Interruptions far above real rates (10,000 times the Advisor's bands: about one per
/// instance every three to twelve hours, and each type+AZ market reclaimed whole about
/// every seven hours); jobs of up to five minutes, so that some cannot finish within a
/// notice.
fn stressed() -> Scenario {
    let mut s = small("");
    s.jobs.duration_secs = Dist::Uniform {
        min: 60.0,
        max: 300.0,
    };
    s.spot.interruption_multiplier = 10_000.0;
    s.spot.correlated_per_month = 0.01;
    s
}

fn quiet() -> Scenario {
    let mut s = small("");
    s.spot.interruption_multiplier = 0.0;
    s
}

fn run(scenario: &Scenario, v: &Variant) -> Outcome {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    runtime.block_on(engine::run(scenario, v)).unwrap()
}

fn both_policies() -> [Variant; 2] {
    [
        Variant {
            name: "cellfarm",
            controller: Controller::Cellfarm,
            market: Market::Spot,
            fixed_cells: None,
        },
        Variant {
            name: "message-count",
            controller: Controller::MessageCount,
            market: Market::Spot,
            fixed_cells: None,
        },
    ]
}

/// Every job completed, none twice, none left; the tally agrees with the jobs.
fn assert_exactly_once(o: &Outcome, why: &str) {
    let w = &o.world;
    assert!(!o.hit_horizon, "{why}: ended before the horizon");
    assert!(w.jobs.iter().all(|j| j.done), "{why}: every job done");
    assert_eq!(w.tally.completed, w.jobs.len() as u64, "{why}: each once");
    assert_eq!(w.tally.duplicates, 0, "{why}: none twice");
    assert!(w.queue.is_empty() && w.running == 0, "{why}: nothing left");
}

/// Property: the simulation is a function of the scenario and its seed (no wall clock,
/// no unseeded randomness), and the seed matters.
#[test]
fn the_same_seed_gives_the_same_report() {
    let s = stressed();
    let (a, _) = simulate(&s).unwrap();
    let (b, _) = simulate(&s).unwrap();
    assert_eq!(a, b);
    let mut other = s.clone();
    other.seed += 1;
    assert_ne!(simulate(&other).unwrap().0, a, "another seed, another run");
}

/// Property: without interruptions no running job is ever handed back, so no work is
/// lost, and every job completes exactly once, under both policies.
#[test]
fn no_interruptions_lose_no_work() {
    let s = quiet();
    for v in both_policies() {
        let o = run(&s, &v);
        assert_eq!(o.world.tally.interruptions, 0, "{}", v.name);
        assert_eq!(o.world.tally.lost_work_ms, 0, "{}: no work lost", v.name);
        assert_eq!(o.world.tally.handed_back, 0, "{}", v.name);
        assert_exactly_once(&o, v.name);
    }
}

/// Property: under interruptions far above real rates (single and whole-market), the
/// handed-back jobs are re-queued and every job still completes exactly once.
#[test]
fn with_stressed_interruptions_every_job_completes_exactly_once() {
    let (mut interruptions, mut handed_back) = (0, 0);
    for seed in 0..5 {
        let mut s = stressed();
        s.seed = seed;
        for v in both_policies() {
            let o = run(&s, &v);
            interruptions += o.world.tally.interruptions;
            handed_back += o.world.tally.handed_back;
            assert_exactly_once(&o, &format!("{} seed {seed}", v.name));
        }
    }
    assert!(
        interruptions > 20,
        "stressed: {interruptions} interruptions"
    );
    assert!(
        handed_back > 5,
        "running jobs were handed back: {handed_back}"
    );
}

/// Property: after every event of the run, the instances serving the pool (booting or
/// alive; not those leaving after a notice) are within the ceiling, for both policies,
/// with and without interruptions; and the farm did reach it.
#[test]
fn the_ceiling_is_never_exceeded() {
    for s in [quiet(), stressed()] {
        for v in both_policies() {
            let o = run(&s, &v);
            let t = &o.world.tally;
            assert_eq!(t.over_ceiling, 0, "{}: checked at every step", v.name);
            assert!(t.peak_cells <= o.ceiling, "{}", v.name);
            assert_eq!(t.peak_cells, o.ceiling, "{}: the burst fills it", v.name);
        }
    }
}

/// Property: a farm with floor 0 and no cell starts itself when work arrives (the
/// trigger's tick, zero to one), grows, and dies back to zero cells after the work.
#[test]
fn zero_to_one_and_back_to_zero() {
    let mut s = quiet();
    s.jobs.backlog = 0;
    let o = run(&s, &both_policies()[0]);
    let w = &o.world;
    assert_exactly_once(&o, "cellfarm");
    assert_eq!(
        w.samples.first().map(|x| x.requested),
        Some(0),
        "starts at 0"
    );
    assert!(w.samples.iter().any(|x| x.alive > 1), "grows past one cell");
    assert_eq!(o.floor, 0);
    assert!(w.live.is_empty(), "back to zero instances");
    assert_eq!(w.alive_registered, 0);
    assert_eq!(
        w.tally.deaths, w.tally.launches,
        "every cell died by itself"
    );
}

/// Property: every run of a scenario gets the same jobs, the fixed farm never launches
/// past its first cells, and the spend ratios compare each run with its on-demand
/// counterpart.
#[test]
fn the_report_compares_spot_with_on_demand() {
    let (r, spot) = simulate(&quiet()).unwrap();
    assert_eq!(r.runs.len(), 5);
    for run in &r.runs {
        let jobs = run.jobs_completed + run.jobs_unfinished;
        assert_eq!(
            jobs, r.jobs,
            "{}: every run gets the same workload",
            run.name
        );
    }
    assert_eq!(spot.len(), 2, "the chart gets the two spot runs");
    let fixed = r.runs.iter().find(|r| r.policy == "fixed").unwrap();
    assert_eq!(fixed.launches, u64::from(fixed.peak_cells));
    assert!((fixed.spend_vs_fixed_on_demand - 1.0).abs() < 1e-9);
    for run in &r.runs {
        assert!(run.spend_usd > 0.0, "{}", run.name);
        if run.market == "spot" {
            assert!(run.spend_vs_on_demand_same_policy < 0.6, "{}", run.name);
        }
    }
    assert!(r.text().contains("turnaround p95"));
    assert!(serde_json::to_string(&r).unwrap().contains("\"spend_usd\""));
}

/// Property: a pool whose every cell is reclaimed at once (a whole type+AZ) is replaced
/// by the leaving cells' last ticks and finishes its work. Found by this simulator: the
/// tick used to count leaving machines as pending, so each leaving cell waited for the
/// others' "launches", and then no cell was left to tick.
#[test]
fn a_pool_reclaimed_all_at_once_is_replaced() {
    let mut s = stressed();
    s.instance_types.truncate(1);
    s.spot.azs.truncate(1);
    s.spot.interruption_multiplier = 1.0;
    // About ten whole-market reclaims an hour, taking every cell.
    s.spot.correlated_per_month = 7200.0;
    s.spot.correlated_fraction = 1.0;
    let o = run(&s, &both_policies()[0]);
    assert!(o.world.tally.correlated_reclaims > 0);
    assert_exactly_once(&o, "cellfarm");
}

/// Demand far above what the pool may hold or spend: ten jobs a minute for two days on
/// a pool of 5 cells (a ceiling of 8 lowered by a quota of 20 vCPUs at 4 a cell) that
/// serves about eleven, with a budget of $1 a day (about three hours of the full pool
/// on spot), under interruptions that take cells away for the budget to not replace.
fn over_budget(budget: &str) -> Scenario {
    let mut s = stressed();
    s.max_hours = 48.0;
    s.jobs.backlog = 0;
    s.jobs.arrivals_per_min = vec![[0.0, 10.0], [2880.0, 10.0]];
    let pool = format!("ceiling = 8\nmax_vcpus = 20\nvcpus_per_cell = 4\n{budget}");
    for (key, value) in pool.parse::<toml::Table>().unwrap() {
        s.pool.insert(key, value);
    }
    s
}

/// Property: the ceiling and the budget are never exceeded, for cellfarm on spot and on
/// on-demand prices. The ceiling (the vCPU quota's 5 cells here) holds after every
/// event. The budget stops launches: every launch of a UTC day came while the day's
/// spend (ended instances and running ones so far, with their minute's minimum) was
/// below the budget `B`. What a day may spend past `B` is what the instances that
/// existed at its last launch go on to cost: with `t` that launch, `S(t) < B` the
/// day's spend then, `n` the instances right after it, `p` the highest price and `E`
/// the day's end (or the run's), the day's spend is at most
/// `S(t) + n · p · max(60 s, E − t)`, and so below `B + n · p · max(60 s, E − t)`, where
/// `n` is at most the ceiling plus the instances leaving on a spot notice (each gone
/// within its notice); a day without a launch has `t` its start, `S(t)` = 0 and `n` the
/// previous last launch's. Running cells are not stopped: on-demand, never interrupted
/// and never idle, the pool's 5 cells spend about $20 a day against the $1. Without the
/// budget, the spot run spends more than twice as much on its first day.
#[test]
fn the_ceiling_and_the_budget_are_never_exceeded() {
    const DAY_MS: u64 = 86_400_000;
    let budget = 1.0;
    for market in [Market::Spot, Market::OnDemand] {
        let v = Variant {
            market,
            ..both_policies()[0]
        };
        let o = run(&over_budget("budget_per_day = 1.0"), &v);
        let w = &o.world;
        let why = format!("{market:?}");
        assert_eq!(o.ceiling, 5, "{why}: the vCPU quota lowers the ceiling");
        assert_eq!(w.tally.over_ceiling, 0, "{why}: checked at every step");
        assert_eq!(w.tally.peak_cells, 5, "{why}: demand fills the ceiling");
        assert_eq!(w.days.len(), 2, "{why}: two days");
        let p = w.markets.iter().map(|m| m.usd_per_hour).fold(0.0, f64::max);
        // A day without a launch bills only instances that existed at its start: those
        // of the last launch before it, at most.
        let mut instances = 0;
        for (d, day) in w.days.iter().enumerate() {
            let start = d as u64 * DAY_MS;
            let (t, spent, n) = day.last_launch.unwrap_or((start, 0.0, instances));
            instances = n;
            assert!(
                spent < budget,
                "{why} day {d}: a launch at ${spent:.3} spent"
            );
            let end = ((d as u64 + 1) * DAY_MS).min(o.end);
            let after = ((end - t) as f64 / 1000.0).max(60.0);
            let bound = spent + f64::from(n) * p * after / 3600.0;
            assert!(
                day.closed_usd <= bound + 1e-9,
                "{why} day {d}: ${:.3} spent, bound ${bound:.3}",
                day.closed_usd
            );
            assert!(
                day.closed_usd >= budget,
                "{why} day {d}: the budget is reached"
            );
        }
        if market == Market::Spot {
            let unbounded = run(&over_budget(""), &v);
            assert!(
                unbounded.world.days[0].closed_usd > 2.0 * w.days[0].closed_usd,
                "{why}: the budget held spend back"
            );
        }
    }
}

/// Property: a 2-hour title chunked across a farm of up to 40 cells finishes in a small
/// fraction of the time one slot takes for it whole, each of its jobs exactly once.
#[test]
fn a_chunked_title_finishes_in_about_the_time_of_its_chunks() {
    let chunked = Scenario::parse(
        include_str!("../../examples/simulate-title.toml"),
        "simulate-title.toml",
    )
    .unwrap();
    let mut whole = chunked.clone();
    whole.jobs.chunked = None;
    let v = &both_policies()[0];
    let (c, w) = (run(&chunked, v), run(&whole, v));
    assert_exactly_once(&c, "chunked");
    assert_exactly_once(&w, "whole");
    // 1 split + 120 chunks + 1 assembly.
    assert_eq!(c.world.jobs.len(), 122);
    let (tc, tw) = (
        c.world.tally.turnaround_secs[0],
        w.world.tally.turnaround_secs[0],
    );
    eprintln!(
        "2-hour title: chunked {tc:.0} s, whole {tw:.0} s, peak cells {}",
        c.world.tally.peak_cells
    );
    assert!(tw >= 14_400.0, "whole takes its work: {tw}");
    assert!(tc < tw / 10.0, "chunked {tc} s against whole {tw} s");
}
