//! The modelled world: jobs, a queue, instances and the cells on them, a virtual clock
//! and its event queue. [`Sim`] shows it to the real mitosis tick as a
//! [`crate::mitosis::Farm`] and a [`crate::cloud::Cloud`].

use std::cmp::Reverse;
use std::collections::{BTreeSet, BinaryHeap, VecDeque};

use rand::rngs::StdRng;
use rand::Rng;

use super::scenario::{band_fraction, per_sec, Estimates, Scenario};

/// Virtual time, in milliseconds since the start.
pub type Ms = u64;

pub fn ms(secs: f64) -> Ms {
    (secs.max(0.0) * 1000.0).round() as Ms
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Event {
    /// The next arrival of the arrival curve.
    Arrival,
    /// The trigger's (coalesced) tick after arrivals.
    TriggerTick,
    /// Every heartbeat: cells tick (cellfarm), the chart samples.
    Round,
    /// The message-count controller polls.
    Poll,
    /// A launched cell's first heartbeat.
    Alive(u32),
    /// A job ends on a cell; stale unless the job is still on this attempt.
    Done { cell: u32, job: u32, attempt: u32 },
    /// A spot interruption notice for one instance.
    Notice(u32),
    /// A whole (type, AZ) market is reclaimed.
    MarketReclaim(u32),
    /// The instance is gone, two minutes after its notice.
    Reclaim(u32),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Market {
    Spot,
    OnDemand,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CellState {
    Booting,
    Alive,
    /// Scaled in by the message-count controller: finishes its jobs, takes no more.
    Draining,
    /// Had a spot notice: waits for the reclaim.
    Leaving,
    Gone,
}

pub struct Job {
    pub arrive: Ms,
    pub work: Ms,
    pub start: Ms,
    pub attempt: u32,
    pub done: bool,
    /// The title this job is a stage of, when jobs are chunked titles.
    pub part: Option<(u32, Stage)>,
}

/// A chunked title's jobs, in order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    Split,
    Chunk,
    Assemble,
}

/// A chunked title: when it arrived, its whole work, and its chunks not yet done.
pub struct Title {
    pub arrive: Ms,
    pub work: Ms,
    pub chunks_left: u32,
}

pub struct Cell {
    pub id: String,
    pub market: u32,
    pub slots: u32,
    pub running_at: Ms,
    pub state: CellState,
    /// Has a heartbeat in the live set (a dying cell deregisters first).
    pub registered: bool,
    pub jobs: Vec<u32>,
    pub idle_since: Ms,
}

/// A (type, AZ) pair: its interruption rate and price.
pub struct SpotMarket {
    pub type_index: usize,
    pub slots: u32,
    pub usd_per_hour: f64,
    /// Interruptions per second of one instance.
    pub rate: f64,
    pub weight: f64,
}

/// What happened, for the report.
#[derive(Debug, Default, Clone)]
pub struct Tally {
    pub launches: u64,
    pub deaths: u64,
    pub interruptions: u64,
    pub correlated_reclaims: u64,
    pub handed_back: u64,
    pub lost_work_ms: u64,
    pub completed: u64,
    /// Completions of a job already done: must stay 0.
    pub duplicates: u64,
    pub idle_cell_ms: u128,
    pub spend_usd: f64,
    pub billed_secs: f64,
    /// Billed seconds times the cell's slots: what slot utilization divides by.
    pub billed_slot_secs: f64,
    /// Seconds of slots spent on jobs, completed or handed back.
    pub busy_slot_ms: u64,
    pub peak_cells: u32,
    pub peak_alive: u32,
    /// Steps after which the pool's serving instances exceeded its ceiling: must stay 0.
    pub over_ceiling: u64,
    pub last_done: Ms,
    pub turnaround_secs: Vec<f32>,
}

/// One UTC day of the run (virtual time 0 is a midnight), for the daily budget.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Day {
    /// Dollars billed within the day by instances that have ended.
    pub closed_usd: f64,
    /// The day's last launch: when, what the day had cost then (running instances
    /// included), and the instances that existed right after it.
    pub last_launch: Option<(Ms, f64, u32)>,
}

const DAY_MS: Ms = 86_400_000;

/// An instance's billed span (running from `start` to `end`, at least the minimum), as
/// seconds per day.
fn per_day(start: Ms, end: Ms, minimum: Ms) -> impl Iterator<Item = (usize, f64)> {
    let end = end.max(start + minimum);
    let mut t = start;
    std::iter::from_fn(move || {
        (t < end).then(|| {
            let day = t / DAY_MS;
            let until = end.min((day + 1) * DAY_MS);
            let secs = (until - t) as f64 / 1000.0;
            t = until;
            (day as usize, secs)
        })
    })
}

/// One chart sample.
#[derive(Debug, Clone, Copy)]
pub struct Sample {
    pub t: Ms,
    pub ready: u64,
    /// Instances serving the pool, booting ones included: cells asked for.
    pub requested: u32,
    pub alive: u32,
}

pub struct World {
    pub now: Ms,
    /// Draws of the infrastructure: launch latencies, markets, interruptions.
    pub rng: StdRng,
    /// Draws of the workload (arrivals, durations), a stream of its own so that every
    /// run of a scenario gets the same jobs whatever its cells do.
    pub work_rng: StdRng,
    events: BinaryHeap<Reverse<(Ms, u64, Event)>>,
    seq: u64,
    pub scenario: Scenario,
    pub market: Market,
    pub markets: Vec<SpotMarket>,
    pub ceiling: u32,
    pub jobs: Vec<Job>,
    /// Chunked titles, when the scenario's jobs are.
    pub titles: Vec<Title>,
    pub queue: VecDeque<u32>,
    pub cells: Vec<Cell>,
    /// One entry per free slot of an alive cell (stale once the cell stops taking work).
    free: VecDeque<u32>,
    /// Launches recorded and not alive yet, with their expiry (Redis' pending set).
    pub pending: Vec<(u32, Ms)>,
    pub cooling_until: Ms,
    /// Instances that exist (the cloud's count).
    pub live: BTreeSet<u32>,
    /// Alive cells with nothing running.
    pub idle: BTreeSet<u32>,
    /// Alive, registered cells (the heartbeat set).
    pub alive_registered: u32,
    /// Booting or alive instances (see [`World::serving`]).
    serving: u32,
    pub running: u64,
    /// Work of queued and running jobs, for `estimates = "exact"`.
    pub outstanding_work_ms: u64,
    pub tally: Tally,
    pub samples: Vec<Sample>,
    pub launch_tokens: u64,
    /// Cells leaving on a notice whose last job just ended: each ticks once more for
    /// its replacement (the engine runs those ticks).
    pub drained: Vec<u32>,
    /// The run's UTC days, for the daily budget.
    pub days: Vec<Day>,
}

impl World {
    pub fn new(scenario: Scenario, market: Market, ceiling: u32) -> World {
        let seeded = <StdRng as rand::SeedableRng>::seed_from_u64;
        // Any fixed odd constant gives the infrastructure a stream apart from the work's.
        let rng = seeded(scenario.seed ^ 0x9e37_79b9_7f4a_7c15);
        let work_rng = seeded(scenario.seed);
        let markets = markets(&scenario, market);
        World {
            now: 0,
            rng,
            work_rng,
            events: BinaryHeap::new(),
            seq: 0,
            scenario,
            market,
            markets,
            ceiling,
            jobs: Vec::new(),
            titles: Vec::new(),
            queue: VecDeque::new(),
            cells: Vec::new(),
            free: VecDeque::new(),
            pending: Vec::new(),
            cooling_until: 0,
            live: BTreeSet::new(),
            idle: BTreeSet::new(),
            alive_registered: 0,
            serving: 0,
            running: 0,
            outstanding_work_ms: 0,
            tally: Tally::default(),
            samples: Vec::new(),
            launch_tokens: 0,
            drained: Vec::new(),
            days: Vec::new(),
        }
    }

    fn day(&mut self, day: usize) -> &mut Day {
        if self.days.len() <= day {
            self.days.resize(day + 1, Day::default());
        }
        &mut self.days[day]
    }

    /// Dollars billed within the day of `now` so far: ended instances, and running ones
    /// up to now (their minute's minimum included).
    pub fn spent_today(&self) -> f64 {
        let today = (self.now / DAY_MS) as usize;
        let minimum = ms(self.scenario.spot.billing_minimum_secs as f64);
        let running = self.live.iter().map(|&c| {
            let cell = &self.cells[c as usize];
            if cell.running_at >= self.now {
                return 0.0;
            }
            let price = self.markets[cell.market as usize].usd_per_hour;
            let secs: f64 = per_day(cell.running_at, self.now, minimum)
                .filter(|&(day, _)| day == today)
                .map(|(_, secs)| secs)
                .sum();
            secs * price / 3600.0
        });
        let closed = self.days.get(today).map_or(0.0, |d| d.closed_usd);
        closed + running.sum::<f64>()
    }

    pub fn at(&mut self, t: Ms, event: Event) {
        self.seq += 1;
        self.events.push(Reverse((t, self.seq, event)));
    }

    /// The next event, with the clock moved to it (idle time accounted).
    pub fn next(&mut self) -> Option<Event> {
        let Reverse((t, _, event)) = self.events.pop()?;
        let dt = t.saturating_sub(self.now);
        self.tally.idle_cell_ms += u128::from(dt) * self.idle.len() as u128;
        self.now = self.now.max(t);
        Some(event)
    }

    pub fn peek_time(&self) -> Option<Ms> {
        self.events.peek().map(|Reverse((t, _, _))| *t)
    }

    /// Instances that serve the pool: existing, not leaving after a notice, not draining.
    pub fn serving(&self) -> u32 {
        self.serving
    }

    /// Checked after every step: the peak, and whether the ceiling held.
    pub fn check_ceiling(&mut self) {
        let serving = self.serving();
        self.tally.peak_cells = self.tally.peak_cells.max(serving);
        self.tally.peak_alive = self.tally.peak_alive.max(self.alive_registered);
        if serving > self.ceiling {
            self.tally.over_ceiling += 1;
        }
    }

    pub fn sample(&mut self) {
        let s = Sample {
            t: self.now,
            ready: self.queue.len() as u64,
            requested: self.serving(),
            alive: self.alive_registered,
        };
        self.samples.push(s);
    }

    pub fn pending_count(&mut self) -> u32 {
        let now = self.now;
        self.pending.retain(|&(_, expires)| expires > now);
        self.pending.len() as u32
    }

    /// A job's duration, drawn.
    pub fn job_secs(&mut self) -> f64 {
        self.scenario.jobs.duration_secs.sample(&mut self.work_rng)
    }

    /// A new job, queued (and started if a slot is free); with chunked titles, the
    /// title's split.
    pub fn enqueue_new(&mut self, work: Ms) {
        match self.scenario.jobs.chunked.clone() {
            None => self.enqueue(work, None),
            Some(c) => {
                let title = self.titles.len() as u32;
                self.titles.push(Title {
                    arrive: self.now,
                    work,
                    chunks_left: 0,
                });
                self.enqueue(ms(c.split_secs), Some((title, Stage::Split)));
            }
        }
        self.dispatch();
    }

    fn enqueue(&mut self, work: Ms, part: Option<(u32, Stage)>) {
        let id = self.jobs.len() as u32;
        self.jobs.push(Job {
            arrive: self.now,
            work,
            start: 0,
            attempt: 0,
            done: false,
            part,
        });
        self.outstanding_work_ms += work;
        self.queue.push_back(id);
    }

    /// What follows a done job: the next stage of its title, or the end of a job or a
    /// title (its turnaround).
    fn follow(&mut self, job: u32) {
        let (part, arrive) = (self.jobs[job as usize].part, self.jobs[job as usize].arrive);
        let c = self.scenario.jobs.chunked.clone();
        match (part, c) {
            (Some((t, Stage::Split)), Some(c)) => {
                let work = self.titles[t as usize].work as f64 / 1000.0;
                let n = (work / c.chunk_secs).round().max(1.0);
                let each = ms(work / n * (1.0 + c.overhead));
                self.titles[t as usize].chunks_left = n as u32;
                for _ in 0..n as u32 {
                    self.enqueue(each, Some((t, Stage::Chunk)));
                }
            }
            (Some((t, Stage::Chunk)), Some(c)) => {
                let title = &mut self.titles[t as usize];
                title.chunks_left -= 1;
                if title.chunks_left == 0 {
                    self.enqueue(ms(c.assemble_secs), Some((t, Stage::Assemble)));
                }
            }
            (Some((t, _)), _) => {
                let arrive = self.titles[t as usize].arrive;
                let turnaround = (self.now - arrive) as f32 / 1000.0;
                self.tally.turnaround_secs.push(turnaround);
            }
            (None, _) => {
                let turnaround = (self.now - arrive) as f32 / 1000.0;
                self.tally.turnaround_secs.push(turnaround);
            }
        }
    }

    /// Launches `n` instances; each runs after the API latency and is a cell after its
    /// own start. Spot instances get their interruption drawn.
    pub fn launch_cells(&mut self, n: u32) -> Vec<String> {
        let spent = self.spent_today();
        let ids: Vec<String> = (0..n).map(|_| self.launch_one()).collect();
        let (now, live) = (self.now, self.live.len() as u32);
        self.day((now / DAY_MS) as usize).last_launch = Some((now, spent, live));
        ids
    }

    fn launch_one(&mut self) -> String {
        let total: f64 = self.markets.iter().map(|m| m.weight).sum();
        let mut pick = self.rng.gen::<f64>() * total;
        let market = self
            .markets
            .iter()
            .position(|m| {
                pick -= m.weight;
                pick < 0.0
            })
            .unwrap_or(self.markets.len() - 1);
        let launch = &self.scenario.launch;
        let running_at = self.now + ms(launch.api_to_running_secs.sample(&mut self.rng));
        let alive_at = running_at + ms(launch.cell_start_secs.sample(&mut self.rng));
        let idx = self.cells.len() as u32;
        let id = format!("c{idx}");
        self.cells.push(Cell {
            id: id.clone(),
            market: market as u32,
            slots: self.markets[market].slots,
            running_at,
            state: CellState::Booting,
            registered: false,
            jobs: Vec::new(),
            idle_since: alive_at,
        });
        self.live.insert(idx);
        self.serving += 1;
        self.tally.launches += 1;
        self.at(alive_at, Event::Alive(idx));
        let rate = self.markets[market].rate;
        if rate > 0.0 {
            let wait = -self.rng.gen::<f64>().max(f64::MIN_POSITIVE).ln() / rate;
            if wait < 1e12 {
                self.at(running_at + ms(wait), Event::Notice(idx));
            }
        }
        id
    }

    /// A launched cell beats for the first time and starts consuming.
    pub fn alive(&mut self, c: u32) {
        let cell = &mut self.cells[c as usize];
        if cell.state != CellState::Booting {
            return;
        }
        cell.state = CellState::Alive;
        cell.registered = true;
        cell.idle_since = self.now;
        let slots = cell.slots;
        self.alive_registered += 1;
        self.pending.retain(|&(p, _)| p != c);
        self.idle.insert(c);
        self.free.extend(std::iter::repeat(c).take(slots as usize));
        self.dispatch();
    }

    /// Ready jobs go to free slots, round-robin over cells like the broker's consumers.
    pub fn dispatch(&mut self) {
        while !self.queue.is_empty() {
            let Some(c) = self.free.pop_front() else {
                return;
            };
            if self.cells[c as usize].state != CellState::Alive {
                continue;
            }
            let job = self.queue.pop_front().expect("checked non-empty");
            self.start(c, job);
        }
    }

    fn start(&mut self, c: u32, job: u32) {
        let j = &mut self.jobs[job as usize];
        j.start = self.now;
        let (end, attempt) = (self.now + j.work, j.attempt);
        self.cells[c as usize].jobs.push(job);
        self.idle.remove(&c);
        self.running += 1;
        self.at(
            end,
            Event::Done {
                cell: c,
                job,
                attempt,
            },
        );
    }

    pub fn done(&mut self, c: u32, job: u32, attempt: u32) {
        let j = &mut self.jobs[job as usize];
        if j.attempt != attempt {
            return; // handed back meanwhile
        }
        if j.done {
            self.tally.duplicates += 1;
            return;
        }
        j.done = true;
        let work = j.work;
        self.outstanding_work_ms -= work;
        self.follow(job);
        self.tally.completed += 1;
        self.tally.busy_slot_ms += work;
        self.tally.last_done = self.now;
        self.running -= 1;
        let cell = &mut self.cells[c as usize];
        cell.jobs.retain(|&x| x != job);
        let empty = cell.jobs.is_empty();
        match cell.state {
            CellState::Alive => {
                if empty {
                    cell.idle_since = self.now;
                    self.idle.insert(c);
                }
                self.free.push_back(c);
                self.dispatch();
            }
            CellState::Draining if empty => self.terminate(c),
            CellState::Leaving if empty => self.drained.push(c),
            _ => {}
        }
    }

    /// Hands back the cell's jobs that `keep` rejects: re-queued, their run so far lost.
    pub fn hand_back(&mut self, c: u32, keep: impl Fn(&Job) -> bool) {
        let jobs = std::mem::take(&mut self.cells[c as usize].jobs);
        let (kept, back): (Vec<u32>, Vec<u32>) = jobs
            .into_iter()
            .partition(|&j| keep(&self.jobs[j as usize]));
        for job in back {
            let j = &mut self.jobs[job as usize];
            j.attempt += 1;
            self.tally.lost_work_ms += self.now - j.start;
            self.tally.busy_slot_ms += self.now - j.start;
            self.tally.handed_back += 1;
            self.running -= 1;
            self.queue.push_back(job);
        }
        self.cells[c as usize].jobs = kept;
        self.dispatch();
    }

    /// The cell stops serving the pool (death, a notice, scale-in): out of the heartbeat
    /// set and the idle set; its queued free slots go stale.
    pub fn stop_serving(&mut self, c: u32, state: CellState) {
        let cell = &mut self.cells[c as usize];
        if cell.state == CellState::Alive && cell.registered {
            self.alive_registered -= 1;
        }
        if matches!(cell.state, CellState::Booting | CellState::Alive) {
            self.serving -= 1;
        }
        cell.registered = false;
        cell.state = state;
        self.idle.remove(&c);
    }

    /// The instance ends: billed per second with the minimum, from running to now.
    pub fn terminate(&mut self, c: u32) {
        self.stop_serving(c, CellState::Gone);
        if !self.live.remove(&c) {
            return;
        }
        let cell = &self.cells[c as usize];
        debug_assert!(cell.jobs.is_empty(), "a terminated cell holds no job");
        let (running_at, slots) = (cell.running_at, cell.slots);
        let price = self.markets[cell.market as usize].usd_per_hour;
        if self.now > running_at {
            let secs = (self.now - running_at) as f64 / 1000.0;
            let billed = secs.max(self.scenario.spot.billing_minimum_secs as f64);
            self.tally.billed_secs += billed;
            self.tally.billed_slot_secs += billed * f64::from(slots);
            self.tally.spend_usd += billed * price / 3600.0;
            let minimum = ms(self.scenario.spot.billing_minimum_secs as f64);
            for (day, secs) in per_day(running_at, self.now, minimum) {
                self.day(day).closed_usd += secs * price / 3600.0;
            }
        }
    }

    /// A cell of the pool to tick as the pool's busy (or idle) representative: the
    /// oldest alive one.
    pub fn oldest_alive(&self) -> Option<u32> {
        self.live
            .iter()
            .copied()
            .find(|&c| self.cells[c as usize].state == CellState::Alive)
    }

    /// Seconds the cell has been idle, None while it runs a job.
    pub fn idle_secs(&self, c: u32) -> Option<u64> {
        self.idle
            .contains(&c)
            .then(|| (self.now - self.cells[c as usize].idle_since) / 1000)
    }

    /// What the ledger holds of the pool: `(running, estimated secs, unknown jobs)`.
    pub fn load(&self) -> (u64, f64, u64) {
        match self.scenario.jobs.estimates {
            Estimates::None => (self.running, 0.0, self.queue.len() as u64 + self.running),
            Estimates::Exact => (self.running, self.outstanding_work_ms as f64 / 1e3, 0),
        }
    }
}

fn markets(scenario: &Scenario, market: Market) -> Vec<SpotMarket> {
    let spot = &scenario.spot;
    let azs = spot.azs.len() as f64;
    let mut out = Vec::new();
    for (type_index, t) in scenario.instance_types.iter().enumerate() {
        for _ in &spot.azs {
            let band = band_fraction(&t.interruption_band).expect("checked at load");
            let (usd_per_hour, rate) = match market {
                Market::Spot => (
                    t.spot_usd_per_hour,
                    per_sec(band, spot.interruption_multiplier),
                ),
                Market::OnDemand => (t.on_demand_usd_per_hour, 0.0),
            };
            out.push(SpotMarket {
                type_index,
                slots: t.slots,
                usd_per_hour,
                rate,
                weight: t.weight / azs,
            });
        }
    }
    out
}
