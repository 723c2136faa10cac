//! One mitosis tick for one pool: observe, decide, act, under the pool's lock so that ten
//! cells seeing the same backlog launch the missing cells once, not ten times.
//!
//! A cell does not tick every heartbeat: it ticks when it claims the pool's round, which
//! one cell a heartbeat does ([`Ticker::tick_cell`]); `submit`, the trigger and a leaving
//! cell tick whenever they must. The tick offers the pool's surplus as deaths, and an
//! idle cell takes one in a single call, then looks once more before it goes.
//!
//! The tick reads and changes the farm only through [`Farm`] (queues, ledger, heartbeats,
//! pending launches, cooldowns, events) and [`Cloud`], so its rules (cooldown, zero to
//! one, the last look before death) are tested here without a server; [`LiveFarm`] is the
//! farm on RabbitMQ, PostgreSQL and Redis.
//!
//! A pool's waiting work is the broker's ready count or the ledger's queued count,
//! whichever is larger ([`super::waiting`]): a job the broker does not show as ready (a
//! message a cell holds, or one lost) is still queued in the ledger, and a cell must not
//! die beside it; rows whose message is in no queue are reconciled by the cells' ticks.

use std::collections::{BTreeMap, HashSet};
use std::sync::Mutex;
use std::time::Duration;

use async_trait::async_trait;

use super::budget::{self, Spend};
use super::{decide, Decision, Observation, Policy};
use crate::cloud::{Cloud, CloudError, Machine};
use crate::config::Config;
use crate::ledger::{EventKind, Ledger, PipelineLoad};
use crate::locks::{Coordinator, Lock};
use crate::queue::{self, Names, Publisher};

/// Seconds of source assumed for a job nothing is known about yet (no estimate, no
/// probe): a few minutes of video.
const UNKNOWN_JOB_SECS: f64 = 180.0;
/// The lock outlives any tick by far; it only matters if its holder dies mid-tick.
const LOCK_TTL_MS: u64 = 15_000;
// A launch ends well before the lock does, the observation before it included: no
// second decider launches while the first one's launch is still in flight.
const _: () = assert!(crate::cloud::LAUNCH_DEADLINE.as_millis() * 3 / 2 < LOCK_TTL_MS as u128);
/// How long a census of the cloud's machines serves every decider of the farm: one
/// DescribeInstances a pool a minute, not one a heartbeat (the API rate is the
/// account's, shared with everything else in it). Launches in between are counted by
/// the pending launches; a machine gone in between is checked again before a reap.
const CENSUS_MS: u64 = 60_000;
/// How long a caller that must tick (submit, the trigger, a leaving cell) waits out a
/// lock held by another decider.
const PATIENCE: Duration = Duration::from_secs(10);

/// The farm as one pool's tick sees it: what it reads, and what it records.
#[async_trait]
pub trait Farm: Send + Sync {
    /// Takes the pool's mitosis lock; false while another decider holds it.
    async fn lock(&self, pool: &str) -> anyhow::Result<bool>;
    async fn unlock(&self, pool: &str) -> anyhow::Result<()>;
    /// Claims the pool's round for `ms`: true for one caller a round, the cell that
    /// ticks for everybody.
    async fn claim_round(&self, pool: &str, ms: u64) -> anyhow::Result<bool>;
    /// Offers `n` deaths in the pool for `ms`, replacing the last offer.
    async fn offer_deaths(&self, pool: &str, n: u32, ms: u64) -> anyhow::Result<()>;
    /// Takes one offered death in each of `pools`, or none; true when taken.
    async fn take_deaths(&self, pools: &[String]) -> anyhow::Result<bool>;
    /// How many cells serve the pool now: a cheap count, not an observation.
    async fn serving(&self, pool: &str) -> anyhow::Result<u64>;
    /// Ready messages in the pool's queues (the broker's count: deliveries excluded).
    async fn ready(&self, pool: &str) -> anyhow::Result<u64>;
    /// The pool's queued and running jobs, per pipeline: the ledger's count, which sees
    /// the jobs the broker's ready count misses.
    async fn load(&self, pool: &str) -> anyhow::Result<Vec<PipelineLoad>>;
    /// The cells with a fresh heartbeat: those serving the pool, and every machine a
    /// cell beats on.
    async fn cells(&self, pool: &str) -> anyhow::Result<Cells>;
    /// Launches recorded and not alive yet, within their launch timeout.
    async fn pending(&self, pool: &str) -> anyhow::Result<u32>;
    /// True while the pool is in its post-launch cooldown.
    async fn cooling(&self, pool: &str) -> anyhow::Result<bool>;
    /// A token unique to one launch decision (the cloud's idempotency token), never
    /// repeated: EC2 remembers a ClientToken for a day or more after its instances end.
    async fn launch_token(&self, pool: &str) -> anyhow::Result<String>;
    /// Records launched cells as pending for `timeout_secs` and starts the cooldown.
    async fn launched(
        &self,
        pool: &str,
        ids: &[String],
        timeout_secs: u64,
        cooldown_secs: u64,
    ) -> anyhow::Result<()>;
    /// Takes a cell out of the live set.
    async fn deregister(&self, cell_id: &str) -> anyhow::Result<()>;
    async fn record(
        &self,
        pool: &str,
        kind: EventKind,
        who: &str,
        cells: u32,
        reason: &str,
    ) -> anyhow::Result<()>;
    /// Dollars the pool's cells have cost since UTC midnight (of [`Farm::now`]), at
    /// `price_per_hour` a cell where the farm knows no better (the simulator bills at its
    /// markets' prices); `running_now` is how many cells the pool has now.
    async fn spent_today(
        &self,
        pool: &str,
        price_per_hour: f64,
        running_now: u32,
    ) -> anyhow::Result<f64>;
    /// The pool's last census of the cloud's machines, while it is fresh. A farm
    /// without a census (the simulator's) asks the cloud every tick.
    async fn census(&self, _pool: &str) -> anyhow::Result<Option<Vec<Machine>>> {
        Ok(None)
    }
    /// Keeps a census of the pool's machines for `ms`.
    async fn keep_census(
        &self,
        _pool: &str,
        _machines: &[Machine],
        _ms: u64,
    ) -> anyhow::Result<()> {
        Ok(())
    }
    /// Adds launched machines to the pool's census, if there is one, without making it
    /// last longer: until the next census, the census counts them like the others.
    async fn add_to_census(&self, _pool: &str, _launched: &[Machine]) -> anyhow::Result<()> {
        Ok(())
    }
    /// The farm's time, in seconds since the Unix epoch: the wall clock, or a simulator's.
    fn now(&self) -> i64 {
        chrono::Utc::now().timestamp()
    }
}

/// What the heartbeats say.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Cells {
    /// Cells that serve the pool and are not draining.
    pub alive: u32,
    /// The machines cells beat on, draining or not, whatever pool they serve.
    pub machines: HashSet<String>,
    /// Of those, the machines whose cells are dying: not alive, but still there, and
    /// still under the ceiling. A cell leaving on a spot notice is not among them: its
    /// machine is being reclaimed, and its replacement must not wait for that.
    pub draining: HashSet<String>,
}

/// What a tick needs.
pub struct Ticker<'a> {
    pub config: &'a Config,
    pub farm: &'a dyn Farm,
    pub cloud: &'a dyn Cloud,
    /// Who ticks, for the ledger's launch events: a cell id, `submit`, `trigger`…
    pub who: &'a str,
}

/// The deciding cell, when a cell decides (not `submit`).
#[derive(Clone, Copy)]
pub struct Me<'a> {
    pub cell_id: &'a str,
    /// The machine the cell runs on (see [`crate::locks::Beat::machine`]): never reaped
    /// by its own tick.
    pub machine: Option<&'a str>,
    /// Seconds idle, or None while busy.
    pub idle_secs: Option<u64>,
    /// The cell is leaving after a spot notice: it no longer works for the pool, and it
    /// is not the one to die.
    pub leaving: bool,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum TickOutcome {
    /// Another decider holds the pool's lock.
    Busy,
    Launched(u32),
    Stayed,
    /// The pool offered this many deaths to its idle cells.
    Shed(u32),
}

impl Ticker<'_> {
    /// One tick of `pool` under its lock; `Busy` if another decider holds it.
    pub async fn tick(
        &self,
        pool: &str,
        me: Option<Me<'_>>,
    ) -> anyhow::Result<(TickOutcome, Observation)> {
        if !self.farm.lock(pool).await? {
            return Ok((TickOutcome::Busy, Observation::default()));
        }
        let result = self.tick_locked(pool, me).await;
        if let Err(e) = self.farm.unlock(pool).await {
            tracing::warn!(
                pool,
                error = format!("{e:#}"),
                "cannot release the mitosis lock; it expires by itself"
            );
        }
        result
    }

    /// Ticks, waiting out a lock held by another decider, for callers that must tick
    /// (submit, the trigger, a leaving cell).
    pub async fn tick_patiently(
        &self,
        pool: &str,
        me: Option<Me<'_>>,
    ) -> anyhow::Result<TickOutcome> {
        let deadline = tokio::time::Instant::now() + PATIENCE;
        loop {
            let (outcome, _) = self.tick(pool, me).await?;
            if outcome != TickOutcome::Busy || tokio::time::Instant::now() >= deadline {
                return Ok(outcome);
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// A cell's heartbeat: a tick of each pool whose round it claims, then, idle past
    /// every pool's grace, one death offered by each of its pools; true when it took
    /// them and must drain and terminate. A cell serving several pools goes only when
    /// every one of them lets it go: none takes a cell another pool needs.
    pub async fn tick_cell(&self, pools: &[String], me: Me<'_>) -> bool {
        for pool in pools {
            let claimed = self.farm.claim_round(pool, self.round_ms()).await;
            let ticked = match claimed {
                Ok(true) => self.tick(pool, Some(me)).await.map(|_| ()),
                Ok(false) => Ok(()),
                Err(e) => Err(e),
            };
            if let Err(e) = ticked {
                tracing::warn!(pool, error = format!("{e:#}"), "mitosis tick failed");
            }
        }
        if !me.leaving && me.idle_secs.is_none() && self.all_soak(pools) {
            return self.yield_room(pools, me).await;
        }
        if me.leaving || !self.idle_past_grace(pools, me.idle_secs) {
            return false;
        }
        let died = match self.farm.take_deaths(pools).await {
            Ok(true) => self.die(pools, me).await,
            Ok(false) => return false,
            Err(e) => Err(e),
        };
        died.unwrap_or_else(|e| {
            tracing::warn!(error = format!("{e:#}"), "mitosis: cannot die");
            false
        })
    }

    /// A soak pool's ceiling ([`super::soak_ceiling`]): the other pools' cells are
    /// counted cheaply (serving and pending), not observed.
    async fn soak_room(&self, pool: &str, own: u32) -> anyhow::Result<u32> {
        let Some(max) = self.config.farm.max_cells else {
            return Ok(own);
        };
        let mut others = 0;
        for other in self.config.pools.keys().filter(|p| *p != pool) {
            others += self.farm.serving(other).await? + u64::from(self.farm.pending(other).await?);
        }
        Ok(super::soak_ceiling(own, max, others))
    }

    /// How long a claimed round lasts: just under a heartbeat, so that about one cell a
    /// heartbeat claims it whatever the phase of the beats.
    fn round_ms(&self) -> u64 {
        self.config.cell.heartbeat_secs * 900
    }

    /// True when every pool of `pools` is a soak pool.
    fn all_soak(&self, pools: &[String]) -> bool {
        !pools.is_empty()
            && pools
                .iter()
                .all(|pool| self.config.pools.get(pool).is_some_and(|p| p.soak))
    }

    /// A busy soak cell gives its room back: it takes one of the deaths its pools
    /// offer (a soak pool offers them while over its ceiling, work or not), and, true,
    /// finishes its running jobs, takes no more, and dies. Its jobs wait in the queue
    /// for room.
    async fn yield_room(&self, pools: &[String], me: Me<'_>) -> bool {
        const REASON: &str = "soak: the other pools took back the room under \
                              farm.max_cells; finishing running jobs, taking no more";
        let yielded = async {
            if !self.farm.take_deaths(pools).await? {
                return Ok(false);
            }
            self.farm.deregister(me.cell_id).await?;
            tracing::info!(pools = ?pools, reason = REASON, "death: yielding the room");
            (self.farm)
                .record(&pools[0], EventKind::Death, me.cell_id, 1, REASON)
                .await?;
            Ok::<_, anyhow::Error>(true)
        };
        yielded.await.unwrap_or_else(|e| {
            tracing::warn!(error = format!("{e:#}"), "mitosis: cannot yield");
            false
        })
    }

    /// True when every pool of `pools` would let a cell idle for `idle_secs` go.
    fn idle_past_grace(&self, pools: &[String], idle_secs: Option<u64>) -> bool {
        !pools.is_empty()
            && pools.iter().all(|pool| {
                (self.config.pools.get(pool))
                    .is_some_and(|p| super::may_leave(idle_secs, &Policy::from(p)))
            })
    }

    /// After work was published to `pools`: a patient tick of each pool whose round it
    /// claims, or that no cell serves (a farm with no cell starts itself). A pool with a
    /// live cell and a round already claimed is left to its cells' next round: the
    /// trigger, publishing thousands of jobs a minute, does not observe the pool for
    /// each. That loses no job: a cell that dies after this look has deregistered, and
    /// its own last look comes after the publish, so it sees the job and stays.
    /// Failures are logged: the jobs are queued whatever the tick does.
    pub async fn kick<'p>(&self, pools: impl IntoIterator<Item = &'p String>) {
        for pool in pools {
            let must = match self.farm.claim_round(pool, self.round_ms()).await {
                Ok(true) => Ok(true),
                Ok(false) => self.farm.serving(pool).await.map(|n| n == 0),
                Err(e) => Err(e),
            };
            let ticked = match must {
                Ok(true) => self.tick_patiently(pool, None).await,
                Ok(false) => {
                    tracing::debug!(pool, who = self.who, "mitosis: the pool's cells tick");
                    continue;
                }
                Err(e) => Err(e),
            };
            match ticked {
                Ok(outcome) => tracing::info!(pool, ?outcome, who = self.who, "mitosis tick"),
                Err(e) => tracing::warn!(pool, error = format!("{e:#}"), "mitosis tick failed"),
            }
        }
    }

    /// Observes the pool. Machines no cell beats on past their launch timeout are ended
    /// first, and no longer count.
    async fn observe(&self, pool: &str, me: Option<Me<'_>>) -> anyhow::Result<Observation> {
        let ready = self.farm.ready(pool).await?;
        let (in_flight, queued, work_secs) = weigh(self.config, &self.farm.load(pool).await?);
        let cells = self.farm.cells(pool).await?;
        let mut pending = self.farm.pending(pool).await?;
        // The cloud's own machines are the backstop when Redis lost the pending launches.
        if let Some((mut machines, counted)) = self.machines(pool, false).await? {
            let timeout = self.config.pools[pool].launch_timeout_secs;
            let now = self.farm.now();
            let mine = me.and_then(|m| m.machine);
            // Booting and silent machines, and the machines of dying cells, which still
            // hold their places under the ceiling.
            let count = |machines: &[Machine]| {
                let sorted = super::reap::sort(machines, &cells.machines, mine, now, timeout);
                let draining = (machines.iter())
                    .filter(|m| cells.draining.contains(&m.id))
                    .count() as u32;
                (sorted, draining)
            };
            let (mut sorted, mut draining) = count(&machines);
            // A census is taken again where it would change the decision: a machine
            // gone since (a cell that died young) must neither be reaped nor hold a
            // place. Where it says no more than the pending launches, it stands.
            let stale = !sorted.silent.is_empty() || sorted.booting + draining > pending;
            if stale && !counted {
                if let Some((fresh, _)) = self.machines(pool, true).await? {
                    machines = fresh;
                    (sorted, draining) = count(&machines);
                }
            }
            if !sorted.silent.is_empty() {
                self.reap(pool, &sorted.silent, now).await?;
            }
            tracing::debug!(
                pool,
                recorded = pending,
                booting = sorted.booting,
                draining,
                machines = machines.len(),
                "pending launches"
            );
            pending = pending.max(sorted.booting + draining);
        }
        Ok(Observation {
            ready,
            queued,
            in_flight,
            work_secs,
            alive: cells.alive,
            pending,
        })
    }

    /// The pool's machines, and whether the cloud was asked just now: the farm's
    /// census while it is fresh (and `fresh` is false), else the cloud's answer, kept
    /// as the census for [`CENSUS_MS`]. None when the cloud cannot tell.
    async fn machines(
        &self,
        pool: &str,
        fresh: bool,
    ) -> anyhow::Result<Option<(Vec<Machine>, bool)>> {
        if !fresh {
            if let Some(machines) = self.farm.census(pool).await? {
                return Ok(Some((machines, false)));
            }
        }
        let Some(machines) = self.cloud.machines(pool).await? else {
            return Ok(None);
        };
        self.farm.keep_census(pool, &machines, CENSUS_MS).await?;
        Ok(Some((machines, true)))
    }

    /// Ends machines no cell beats on, and records each with its reason.
    async fn reap(
        &self,
        pool: &str,
        silent: &[crate::cloud::Machine],
        now: i64,
    ) -> anyhow::Result<()> {
        let ids: Vec<String> = silent.iter().map(|m| m.id.clone()).collect();
        self.cloud.terminate(&ids).await?;
        for m in silent {
            let reason = format!(
                "machine {}: no cell beat on it {} s after its launch",
                m.id,
                now - m.launched_at
            );
            tracing::warn!(pool, %reason, "reaping a silent machine");
            self.farm
                .record(pool, EventKind::Reap, &m.id, 1, &reason)
                .await?;
        }
        Ok(())
    }

    async fn tick_locked(
        &self,
        pool: &str,
        me: Option<Me<'_>>,
    ) -> anyhow::Result<(TickOutcome, Observation)> {
        let p = self
            .config
            .pools
            .get(pool)
            .ok_or_else(|| anyhow::anyhow!("no pool named {pool:?}"))?;
        let obs = self.observe(pool, me).await?;
        let mut policy = Policy::from(p);
        if p.soak {
            policy.ceiling = self.soak_room(pool, policy.ceiling).await?;
        }
        let decision = decide(&obs, &policy);
        let decision = self.gate(pool, p, decision, &obs, me.is_none()).await?;
        let idle_secs = me.and_then(|m| m.idle_secs);
        tracing::debug!(pool, ?obs, ?decision, ?idle_secs, "mitosis tick");
        // Deaths are offered for one round: the next tick offers them anew, or not.
        let round_ms = self.config.cell.heartbeat_secs * 1000;
        let shed = match decision {
            Decision::Shed(n) => n,
            Decision::Launch(_) | Decision::Stay => 0,
        };
        self.farm.offer_deaths(pool, shed, round_ms).await?;
        let outcome = match decision {
            Decision::Stay => TickOutcome::Stayed,
            Decision::Launch(n) => self.launch(pool, n, &obs, me).await?,
            Decision::Shed(n) => TickOutcome::Shed(n),
        };
        Ok((outcome, obs))
    }

    /// The cost guardrails after the decision ([`budget::gate`]): a launch is a stay,
    /// logged with why, once the pool's budget for today is spent. `loud` logs it at
    /// info (submit, the trigger); a cell, which ticks every heartbeat, logs it at
    /// debug, and `cellfarm status` shows it.
    async fn gate(
        &self,
        pool: &str,
        p: &crate::config::Pool,
        decision: Decision,
        obs: &Observation,
        loud: bool,
    ) -> anyhow::Result<Decision> {
        let (Decision::Launch(_), Some(budget_usd), Some(price)) =
            (decision, p.budget_per_day, p.price_per_hour)
        else {
            return Ok(decision);
        };
        let running = obs.alive + obs.pending;
        let spent_usd = self.farm.spent_today(pool, price, running).await?;
        let (decision, hold) = budget::gate(
            decision,
            Some(Spend {
                spent_usd,
                budget_usd,
            }),
        );
        match hold {
            Some(hold) if loud => tracing::info!(pool, %hold, "mitosis: not launching"),
            Some(hold) => tracing::debug!(pool, %hold, "mitosis: not launching"),
            None => {}
        }
        Ok(decision)
    }

    /// Launches `n` cells unless the pool is cooling down after a launch; zero to one
    /// ignores the cooldown.
    async fn launch(
        &self,
        pool: &str,
        n: u32,
        obs: &Observation,
        me: Option<Me<'_>>,
    ) -> anyhow::Result<TickOutcome> {
        let p = &self.config.pools[pool];
        let from_zero = obs.alive + obs.pending == 0;
        if !from_zero && self.farm.cooling(pool).await? {
            return Ok(TickOutcome::Stayed);
        }
        let token = self.farm.launch_token(pool).await?;
        // A failed launch may have launched some cells: they bill, so they are pending
        // and recorded like any launch, and then the failure is the tick's.
        let (ids, failure) = match self.cloud.launch(pool, n, &token).await {
            Ok(ids) => (ids, None),
            Err(e) => match &e {
                CloudError::Launch { launched, .. } => (launched.clone(), Some(e)),
                _ => return Err(e.into()),
            },
        };
        let launched = ids.len() as u32;
        if launched > 0 {
            self.farm
                .launched(pool, &ids, p.launch_timeout_secs, p.cooldown_secs)
                .await?;
            let now = self.farm.now();
            let machines: Vec<Machine> = (ids.iter())
                .map(|id| Machine {
                    id: id.clone(),
                    launched_at: now,
                })
                .collect();
            self.farm.add_to_census(pool, &machines).await?;
            let mut reason = format!(
                "{} ready, {} queued, {} running, {:.0} s of work; {} alive, {} pending",
                obs.ready, obs.queued, obs.in_flight, obs.work_secs, obs.alive, obs.pending
            );
            if let Some(e) = &failure {
                reason.push_str(&format!("; {launched} of {n} launched: {e}"));
            }
            tracing::info!(pool, cells = launched, %reason, "mitosis: launching");
            let decider = me.map_or(self.who, |m| m.cell_id);
            self.farm
                .record(pool, EventKind::Launch, decider, launched, &reason)
                .await?;
        }
        match failure {
            Some(e) => Err(e.into()),
            None => Ok(TickOutcome::Launched(launched)),
        }
    }

    /// Deregisters the cell, then looks once more at each pool's waiting work: a job
    /// published after this look sees no live cell here, and its publisher's tick
    /// launches one. True when the cell goes; a cell that stays is registered again by
    /// its next beat.
    async fn die(&self, pools: &[String], me: Me<'_>) -> anyhow::Result<bool> {
        self.farm.deregister(me.cell_id).await?;
        for pool in pools {
            let ready = self.farm.ready(pool).await?;
            let (_, queued, _) = weigh(self.config, &self.farm.load(pool).await?);
            let look = Observation {
                ready,
                queued,
                ..Observation::default()
            };
            if super::waiting(&look) > 0 {
                tracing::info!(pool, ready, queued, "death: work arrived, this cell stays");
                return Ok(false);
            }
        }
        let reason = format!(
            "idle {} s, queues empty, more cells than the work needs",
            me.idle_secs.unwrap_or(0)
        );
        tracing::info!(pools = ?pools, %reason, "death: this cell is no longer needed");
        // One death, recorded in the cell's first pool: the pool's spend counts it once.
        self.farm
            .record(&pools[0], EventKind::Death, me.cell_id, 1, &reason)
            .await?;
        // The room this cell leaves is the soak pools' to take, and a soak pool whose
        // cells all yielded has none left to tick it.
        let soak: Vec<String> = (self.config.pools.iter())
            .filter(|(name, p)| p.soak && !pools.contains(name))
            .map(|(name, _)| name.clone())
            .collect();
        self.kick(&soak).await;
        Ok(true)
    }
}

/// Jobs running, jobs queued and seconds of work waiting, from a pool's load per
/// pipeline. A pipeline gone from the config still has work: it weighs as plain seconds.
pub fn weigh(config: &Config, loads: &[PipelineLoad]) -> (u64, u64, f64) {
    let mut in_flight = 0;
    let mut queued = 0;
    let mut work_secs = 0.0;
    for load in loads {
        let cost = config
            .pipelines
            .get(&load.pipeline)
            .map_or(1.0, |p| p.cost_factor);
        in_flight += load.running;
        queued += load.queued;
        work_secs += load.estimated_secs
            + cost * (load.probed_secs + load.unknown as f64 * UNKNOWN_JOB_SECS);
    }
    (in_flight, queued, work_secs)
}

/// The farm on its real systems: ready counts from RabbitMQ (through `publisher`'s
/// channel), load from the ledger, heartbeats, locks and launches from Redis.
pub struct LiveFarm<'a> {
    pub ledger: &'a Ledger,
    pub locks: &'a Coordinator,
    pub publisher: &'a Publisher,
    pub names: &'a Names,
    /// Locks this farm holds, by pool.
    held: Mutex<BTreeMap<String, Lock>>,
}

impl<'a> LiveFarm<'a> {
    pub fn new(
        ledger: &'a Ledger,
        locks: &'a Coordinator,
        publisher: &'a Publisher,
        names: &'a Names,
    ) -> LiveFarm<'a> {
        LiveFarm {
            ledger,
            locks,
            publisher,
            names,
            held: Mutex::default(),
        }
    }
}

#[async_trait]
impl Farm for LiveFarm<'_> {
    async fn lock(&self, pool: &str) -> anyhow::Result<bool> {
        let lock = self
            .locks
            .try_lock(&format!("mitosis:{pool}"), LOCK_TTL_MS)
            .await?;
        let taken = lock.is_some();
        if let Some(lock) = lock {
            self.held
                .lock()
                .expect("never poisoned")
                .insert(pool.into(), lock);
        }
        Ok(taken)
    }

    async fn unlock(&self, pool: &str) -> anyhow::Result<()> {
        let lock = self.held.lock().expect("never poisoned").remove(pool);
        if let Some(lock) = lock {
            self.locks.unlock(lock).await?;
        }
        Ok(())
    }

    async fn claim_round(&self, pool: &str, ms: u64) -> anyhow::Result<bool> {
        Ok(self.locks.claim_round(pool, ms).await?)
    }

    async fn offer_deaths(&self, pool: &str, n: u32, ms: u64) -> anyhow::Result<()> {
        Ok(self.locks.offer_deaths(pool, n, ms).await?)
    }

    async fn take_deaths(&self, pools: &[String]) -> anyhow::Result<bool> {
        Ok(self.locks.take_deaths(pools).await?)
    }

    async fn serving(&self, pool: &str) -> anyhow::Result<u64> {
        Ok(self.locks.serving(pool).await?)
    }

    async fn ready(&self, pool: &str) -> anyhow::Result<u64> {
        Ok(queue::pool_ready(self.publisher.channel(), self.names, pool).await?)
    }

    async fn load(&self, pool: &str) -> anyhow::Result<Vec<PipelineLoad>> {
        Ok(self.ledger.pool_load(pool).await?)
    }

    async fn cells(&self, pool: &str) -> anyhow::Result<Cells> {
        let beats = self.locks.alive().await?;
        let serving = beats
            .iter()
            .filter(|b| b.pools.iter().any(|p| p == pool) && !b.draining);
        let machines = |dying_only: bool| {
            let beats = beats
                .iter()
                .filter(move |b| !dying_only || (b.draining && !b.leaving));
            beats.filter_map(|b| b.machine.clone()).collect()
        };
        Ok(Cells {
            alive: serving.count() as u32,
            machines: machines(false),
            draining: machines(true),
        })
    }

    async fn pending(&self, pool: &str) -> anyhow::Result<u32> {
        Ok(self.locks.pending(pool).await?)
    }

    async fn cooling(&self, pool: &str) -> anyhow::Result<bool> {
        Ok(self.locks.cooling(pool).await?)
    }

    /// Random, not a Redis counter: a counter restarts when Redis loses its data, and
    /// a token EC2 still remembers launches nothing new (or returns the old instances).
    async fn launch_token(&self, pool: &str) -> anyhow::Result<String> {
        Ok(format!(
            "{}-{pool}-{:032x}",
            self.names.farm(),
            rand::random::<u128>()
        ))
    }

    async fn launched(
        &self,
        pool: &str,
        ids: &[String],
        timeout_secs: u64,
        cooldown_secs: u64,
    ) -> anyhow::Result<()> {
        self.locks.add_pending(pool, ids, timeout_secs).await?;
        self.locks.start_cooldown(pool, cooldown_secs).await?;
        Ok(())
    }

    async fn deregister(&self, cell_id: &str) -> anyhow::Result<()> {
        Ok(self.locks.remove(cell_id).await?)
    }

    async fn spent_today(
        &self,
        pool: &str,
        price_per_hour: f64,
        running_now: u32,
    ) -> anyhow::Result<f64> {
        let now = self.now();
        let since = budget::day_start(now);
        let cells = self.ledger.cell_changes(pool, since).await?;
        let secs = budget::billed_secs(cells.carried, &cells.changes, since, now, running_now);
        Ok(secs * price_per_hour / 3600.0)
    }

    async fn census(&self, pool: &str) -> anyhow::Result<Option<Vec<Machine>>> {
        let json = self.locks.census(pool).await?;
        // An unreadable census (another version's) is no census: the cloud is asked.
        Ok(json.and_then(|j| serde_json::from_str(&j).ok()))
    }

    async fn keep_census(&self, pool: &str, machines: &[Machine], ms: u64) -> anyhow::Result<()> {
        let json = serde_json::to_string(machines).expect("machines always serialize");
        Ok(self.locks.keep_census(pool, &json, ms).await?)
    }

    async fn add_to_census(&self, pool: &str, launched: &[Machine]) -> anyhow::Result<()> {
        let Some(mut machines) = self.census(pool).await? else {
            return Ok(());
        };
        machines.extend_from_slice(launched);
        let json = serde_json::to_string(&machines).expect("machines always serialize");
        Ok(self.locks.amend_census(pool, &json).await?)
    }

    async fn record(
        &self,
        pool: &str,
        kind: EventKind,
        who: &str,
        cells: u32,
        reason: &str,
    ) -> anyhow::Result<()> {
        Ok(self
            .ledger
            .record_event(pool, kind, who, cells, reason)
            .await?)
    }
}

#[cfg(test)]
mod tests;
