//! The event loop: one run of a scenario under one policy and one market, on a virtual
//! clock. cellfarm's policy is the real [`Ticker`], called as cells (`tick_cell`),
//! `submit` and the trigger (`kick`) call it; the message-count policy is a KEDA-like
//! controller.

use std::collections::VecDeque;

use rand::Rng;

use super::farm::Sim;
use super::scenario::{correlated_per_sec, Scenario, ScenarioError, POOL};
use super::world::{ms, CellState, Event, Market, Ms, World};
use crate::config::Config;
use crate::mitosis::{Me, Policy, TickOutcome, Ticker};

/// Who decides how many cells the pool has.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Controller {
    /// cellfarm's mitosis: one cell a round ticks, idle cells take the deaths it offers,
    /// and `submit` and the trigger kick.
    Cellfarm,
    /// KEDA-style: cells = ceil(ready ÷ target), polled, with a scale-down window.
    MessageCount,
}

/// One run of the scenario.
#[derive(Debug, Clone, Copy)]
pub struct Variant {
    pub name: &'static str,
    pub controller: Controller,
    pub market: Market,
    /// Cells alive from t = 0 and pinned there (floor = ceiling): a fixed farm.
    pub fixed_cells: Option<u32>,
}

/// What a run leaves: the world at the end, and when and why it ended.
pub struct Outcome {
    pub world: World,
    pub end: Ms,
    /// The run hit `max_hours` with work or surplus cells left.
    pub hit_horizon: bool,
    pub floor: u32,
    pub ceiling: u32,
    /// The pool's `budget_per_day`, which cellfarm's tick holds to.
    pub budget_per_day: Option<f64>,
}

pub async fn run(scenario: &Scenario, variant: &Variant) -> Result<Outcome, ScenarioError> {
    let overrides: Vec<(&str, u32)> = match variant.fixed_cells {
        Some(n) => vec![("floor", n), ("ceiling", n)],
        None => vec![],
    };
    let config = scenario.config(&overrides)?;
    let policy = Policy::from(&config.pools[POOL]);
    let world = World::new(scenario.clone(), variant.market, policy.ceiling);
    let mut engine = Engine {
        sim: Sim::new(world),
        config: &config,
        variant: *variant,
        floor: policy.floor,
        ceiling: policy.ceiling,
        grace_secs: policy.idle_grace_secs,
        horizon: ms(scenario.max_hours * 3600.0),
        arrivals: Arrivals::new(&scenario.jobs.arrivals_per_min),
        trigger_due: false,
        reregister: Vec::new(),
        wanted: VecDeque::new(),
    };
    engine.start().await;
    let hit_horizon = engine.run_events().await;
    let mut world = engine.sim.into_world();
    let end = world.now;
    let live: Vec<u32> = world.live.iter().copied().collect();
    for c in live {
        world.hand_back(c, |_| false);
        world.terminate(c);
    }
    Ok(Outcome {
        world,
        end,
        hit_horizon,
        floor: policy.floor,
        ceiling: policy.ceiling,
        budget_per_day: config.pools[POOL].budget_per_day,
    })
}

struct Engine<'a> {
    sim: Sim,
    config: &'a Config,
    variant: Variant,
    floor: u32,
    ceiling: u32,
    grace_secs: u64,
    horizon: Ms,
    arrivals: Arrivals,
    trigger_due: bool,
    /// Cells that deregistered to die and then stayed: their next beat re-registers.
    reregister: Vec<u32>,
    /// The message-count controller's recent wishes (its scale-down window).
    wanted: VecDeque<(Ms, u32)>,
}

impl Engine<'_> {
    fn cellfarm(&self) -> bool {
        self.variant.controller == Controller::Cellfarm
    }

    /// The backlog, the fixed farm, the first arrival, the first beats and polls.
    async fn start(&mut self) {
        let backlog = {
            let mut w = self.sim.world();
            if let Some(n) = self.variant.fixed_cells {
                for id in w.launch_cells(n) {
                    let c: u32 = id[1..].parse().expect("ids are c<index>");
                    w.cells[c as usize].running_at = 0;
                    w.alive(c);
                }
            }
            let backlog = w.scenario.jobs.backlog;
            for _ in 0..backlog {
                let work = w.job_secs();
                w.enqueue_new(ms(work));
            }
            if let Some(t) = self.arrivals.next(&mut w.work_rng, 0) {
                w.at(t, Event::Arrival);
            }
            w.at(0, Event::Round);
            if !self.cellfarm() {
                w.at(0, Event::Poll);
            }
            for m in 0..w.markets.len() as u32 {
                self.schedule_market_reclaim(&mut w, m);
            }
            backlog
        };
        if backlog > 0 && self.cellfarm() {
            self.kick("submit").await;
        }
    }

    /// Runs events until the work is done and the farm is back at its floor; true if
    /// the horizon came first.
    async fn run_events(&mut self) -> bool {
        loop {
            let event = {
                let mut w = self.sim.world();
                if self.finished(&w) {
                    return false;
                }
                if w.peek_time().map_or(true, |t| t > self.horizon) {
                    w.now = self.horizon;
                    return true;
                }
                w.next().expect("peeked")
            };
            self.handle(event).await;
            self.replace_drained().await;
            self.sim.world().check_ceiling();
        }
    }

    fn finished(&self, w: &World) -> bool {
        w.live.len() as u32 <= self.floor
            && w.queue.is_empty()
            && w.running == 0
            && !self.arrivals.left
            && w.live
                .iter()
                .all(|&c| w.cells[c as usize].state == CellState::Alive)
    }

    async fn handle(&mut self, event: Event) {
        match event {
            Event::Arrival => self.arrival(),
            Event::TriggerTick => {
                self.trigger_due = false;
                self.kick("trigger").await;
            }
            Event::Round => self.round().await,
            Event::Poll => self.poll(),
            Event::Alive(c) => self.sim.world().alive(c),
            Event::Done { cell, job, attempt } => self.sim.world().done(cell, job, attempt),
            Event::Notice(c) => self.notice(c),
            Event::MarketReclaim(m) => self.market_reclaim(m),
            Event::Reclaim(c) => {
                let mut w = self.sim.world();
                w.hand_back(c, |_| false);
                w.terminate(c);
            }
        }
    }

    fn arrival(&mut self) {
        let mut w = self.sim.world();
        let work = w.job_secs();
        w.enqueue_new(ms(work));
        let now = w.now;
        if let Some(t) = self.arrivals.next(&mut w.work_rng, now) {
            w.at(t, Event::Arrival);
        }
        if self.cellfarm() && !self.trigger_due {
            self.trigger_due = true;
            let batch = ms(w.scenario.cell.trigger_batch_secs as f64);
            w.at(now + batch, Event::TriggerTick);
        }
    }

    /// One heartbeat of the farm. Every cell beats through [`Ticker::tick_cell`] in a
    /// real farm, and whichever comes first claims the round and ticks; here the oldest
    /// alive cell comes first, then every cell idle past its grace, which alone may take
    /// a death. A busy cell that lost the round does nothing, so it is not called.
    async fn round(&mut self) {
        let (rep, idle) = {
            let mut w = self.sim.world();
            for c in std::mem::take(&mut self.reregister) {
                let cell = &mut w.cells[c as usize];
                if cell.state == CellState::Alive && !cell.registered {
                    cell.registered = true;
                    w.alive_registered += 1;
                }
            }
            w.sample();
            let next = w.now + ms(w.scenario.cell.heartbeat_secs as f64);
            w.at(next, Event::Round);
            let grace = self.grace_secs;
            let idle: Vec<u32> = (w.idle.iter().copied())
                .filter(|&c| w.idle_secs(c).is_some_and(|s| s >= grace))
                .collect();
            (w.oldest_alive(), idle)
        };
        if !self.cellfarm() {
            return;
        }
        if let Some(c) = rep.filter(|c| !idle.contains(c)) {
            self.cell_tick(c).await;
        }
        for c in idle {
            self.cell_tick(c).await;
        }
    }

    async fn cell_tick(&mut self, c: u32) {
        let (id, idle_secs) = {
            let w = self.sim.world();
            let cell = &w.cells[c as usize];
            if cell.state != CellState::Alive {
                return;
            }
            (cell.id.clone(), w.idle_secs(c))
        };
        let me = Me {
            cell_id: &id,
            machine: Some(&id),
            idle_secs,
            leaving: false,
        };
        let ticker = self.ticker(&id);
        let dies = ticker.tick_cell(&[POOL.to_string()], me).await;
        let mut w = self.sim.world();
        if dies {
            w.terminate(c);
            w.tally.deaths += 1;
        } else if !w.cells[c as usize].registered {
            self.reregister.push(c);
        }
    }

    fn ticker<'t>(&'t self, who: &'t str) -> Ticker<'t> {
        Ticker {
            config: self.config,
            farm: &self.sim,
            cloud: &self.sim,
            who,
        }
    }

    /// What `submit` and the trigger do after publishing: [`Ticker::kick`].
    async fn kick(&self, who: &str) {
        self.ticker(who).kick([&POOL.to_string()]).await;
    }

    /// The real tick. The simulator's farm cannot fail, nor be locked by another.
    async fn tick(&self, who: &str, me: Option<Me<'_>>) -> TickOutcome {
        let (outcome, _) = self
            .ticker(who)
            .tick(POOL, me)
            .await
            .expect("the simulated farm and cloud never fail");
        debug_assert_ne!(outcome, TickOutcome::Busy, "one decider at a time");
        outcome
    }

    /// A spot notice: the cell leaves, hands back what cannot finish before the reclaim
    /// less the margin, lets the rest finish, and once drained (a cell of cellfarm)
    /// ticks for its replacement, as `cell::session` does.
    fn notice(&mut self, c: u32) {
        let mut w = self.sim.world();
        let cell = &w.cells[c as usize];
        let state = cell.state;
        if matches!(state, CellState::Leaving | CellState::Gone) || cell.running_at > w.now {
            return;
        }
        w.tally.interruptions += 1;
        w.stop_serving(c, CellState::Leaving);
        let notice = w.scenario.cell.spot_notice_secs;
        let margin = w.scenario.cell.interruption_margin_secs;
        let deadline = w.now + ms(notice.saturating_sub(margin) as f64);
        w.hand_back(c, |j| j.start + j.work <= deadline);
        let reclaim = w.now + ms(notice as f64);
        w.at(reclaim, Event::Reclaim(c));
        // A booting cell runs no cellfarm yet: nobody ticks for it.
        if state == CellState::Alive && w.cells[c as usize].jobs.is_empty() {
            w.drained.push(c);
        }
    }

    /// The replacement ticks of cells that left on a notice and have drained.
    async fn replace_drained(&mut self) {
        let drained = std::mem::take(&mut self.sim.world().drained);
        if !self.cellfarm() {
            return;
        }
        for c in drained {
            let id = self.sim.world().cells[c as usize].id.clone();
            let me = Me {
                cell_id: &id,
                machine: Some(&id),
                idle_secs: None,
                leaving: true,
            };
            self.tick(&id, Some(me)).await;
        }
    }

    fn market_reclaim(&mut self, m: u32) {
        let hit: Vec<u32> = {
            let mut w = self.sim.world();
            w.tally.correlated_reclaims += 1;
            let fraction = w.scenario.spot.correlated_fraction;
            let in_market: Vec<u32> = (w.live.iter().copied())
                .filter(|&c| w.cells[c as usize].market == m)
                .collect();
            let hit = in_market
                .into_iter()
                .filter(|_| w.rng.gen::<f64>() < fraction)
                .collect();
            self.schedule_market_reclaim(&mut w, m);
            hit
        };
        for c in hit {
            self.notice(c);
        }
    }

    fn schedule_market_reclaim(&self, w: &mut World, m: u32) {
        let rate = correlated_per_sec(&w.scenario.spot);
        if w.market != Market::Spot || rate <= 0.0 {
            return;
        }
        let wait = -w.rng.gen::<f64>().max(f64::MIN_POSITIVE).ln() / rate;
        let t = w.now as f64 + wait * 1000.0;
        if t < self.horizon as f64 {
            w.at(t as Ms, Event::MarketReclaim(m));
        }
    }

    /// The message-count controller: cells = ceil(ready ÷ target) within floor and
    /// ceiling; growth at once, shrinking only to the most wanted in the window.
    fn poll(&mut self) {
        let mut w = self.sim.world();
        let mc = w.scenario.message_count.clone();
        let target = mc
            .target
            .unwrap_or(self.config.pools[POOL].jobs_per_cell)
            .max(1);
        let want = (w.queue.len() as u64).div_ceil(u64::from(target));
        let want = u32::try_from(want).unwrap_or(u32::MAX);
        let want = want.clamp(self.floor, self.ceiling);
        let now = w.now;
        self.wanted.push_back((now, want));
        let window = ms(mc.scale_down_window_secs as f64);
        while self.wanted.front().is_some_and(|&(t, _)| t + window < now) {
            self.wanted.pop_front();
        }
        let keep = self.wanted.iter().map(|&(_, n)| n).max().unwrap_or(want);
        let have = w.serving();
        if want > have {
            w.launch_cells(want - have);
        } else if keep < have {
            scale_in(&mut w, have - keep);
        }
        w.at(now + ms(mc.poll_secs as f64), Event::Poll);
    }
}

/// Removes `n` serving instances: booting ones first, then idle cells, then busy cells,
/// which drain (finish their jobs, take no more) before they end.
fn scale_in(w: &mut World, n: u32) {
    let rank = |s: CellState, idle: bool| match (s, idle) {
        (CellState::Booting, _) => 0,
        (CellState::Alive, true) => 1,
        (CellState::Alive, false) => 2,
        _ => 3,
    };
    let mut cells: Vec<(u8, u32)> = (w.live.iter().copied())
        .map(|c| (rank(w.cells[c as usize].state, w.idle.contains(&c)), c))
        .filter(|&(r, _)| r < 3)
        .collect();
    cells.sort_unstable();
    for &(r, c) in cells.iter().take(n as usize) {
        w.tally.deaths += 1;
        if r == 2 {
            w.stop_serving(c, CellState::Draining);
        } else {
            w.terminate(c);
        }
    }
}

/// A Poisson arrival process whose rate follows a piecewise-linear curve, drawn by
/// thinning: candidates at the curve's top rate, each kept with rate(t) ÷ top.
struct Arrivals {
    /// `(ms, jobs per ms)` points.
    points: Vec<(f64, f64)>,
    top: f64,
    /// Arrivals remain to be drawn.
    left: bool,
}

impl Arrivals {
    fn new(per_min: &[[f64; 2]]) -> Arrivals {
        let points: Vec<(f64, f64)> = (per_min.iter())
            .map(|&[min, rate]| (min * 60_000.0, rate / 60_000.0))
            .collect();
        let top = points.iter().map(|p| p.1).fold(0.0, f64::max);
        Arrivals {
            left: top > 0.0,
            points,
            top,
        }
    }

    fn rate(&self, t: f64) -> f64 {
        let i = self.points.partition_point(|p| p.0 <= t);
        if i == 0 || i == self.points.len() {
            return 0.0;
        }
        let ((t0, r0), (t1, r1)) = (self.points[i - 1], self.points[i]);
        r0 + (r1 - r0) * (t - t0) / (t1 - t0).max(1.0)
    }

    /// The next arrival after `now`, or None when the curve has ended.
    fn next(&mut self, rng: &mut impl Rng, now: Ms) -> Option<Ms> {
        let end = self.points.last().map_or(0.0, |p| p.0);
        let mut t = now as f64;
        while self.left {
            t += -rng.gen::<f64>().max(f64::MIN_POSITIVE).ln() / self.top;
            if t >= end {
                self.left = false;
            } else if rng.gen::<f64>() * self.top < self.rate(t) {
                return Some(t as Ms);
            }
        }
        None
    }
}
