//! The tick's rules on a farm and a cloud in memory: cooldown, zero to one, the cloud's
//! count as a backstop, one decider a round, deaths offered and taken, the last look
//! before death, and the ledger's queued jobs counted as waiting work.

use std::sync::Mutex;

use async_trait::async_trait;

use super::*;
use crate::cloud::{CloudError, Machine};

const CONFIG: &str = r#"
    [farm]
    name = "t"
    [amqp]
    url = "amqp://127.0.0.1"
    [postgres]
    url = "postgres://127.0.0.1/test"
    [redis]
    url = "redis://127.0.0.1"
    [pools.p]
    jobs_per_cell = 10
    ceiling = 4
    step = 4
    idle_grace_secs = 30
    cooldown_secs = 30
    [pools.q]
    jobs_per_cell = 10
    idle_grace_secs = 30
    [pipelines.x]
    pool = "p"
    output = "s3://out/x/"
    steps = [{ args = ["-i", "{input}", "{out}/a.mp4"] }]
    outputs = [{ path = "a.mp4" }]
"#;

/// The farm's state, and what the tick did to it.
#[derive(Default)]
struct State {
    locked: bool,
    /// Pools whose round is claimed.
    rounds: std::collections::BTreeSet<String>,
    /// Deaths offered, by pool.
    deaths: std::collections::BTreeMap<String, u32>,
    /// Full ticks: observations of a pool.
    observed: u32,
    ready: u64,
    /// Ready messages of pools other than `p`.
    ready_elsewhere: std::collections::BTreeMap<String, u64>,
    /// Cells serving, and launches pending, in pools other than the one ticked.
    serving_elsewhere: std::collections::BTreeMap<String, u64>,
    pending_elsewhere: std::collections::BTreeMap<String, u32>,
    /// Ready messages seen after a deregistration (a job published meanwhile).
    ready_after_deregister: Option<u64>,
    /// Jobs the ledger holds as queued whose message is not ready: held by a cell that
    /// has not started it, or lost.
    hidden: u64,
    /// Hidden jobs seen after a deregistration.
    hidden_after_deregister: Option<u64>,
    running: u64,
    alive: u32,
    /// Machines cells beat on.
    beating: std::collections::HashSet<String>,
    /// Of those, the machines of dying cells (draining, not leaving on a notice).
    draining: std::collections::HashSet<String>,
    pending: u32,
    cooling: bool,
    deregistered: Vec<String>,
    events: Vec<(EventKind, String, u32)>,
    /// Dollars spent today.
    spent_usd: f64,
    /// The census of the pool's machines; kept only when `keeps_census`.
    census: Option<Vec<Machine>>,
    keeps_census: bool,
}

#[derive(Default)]
struct MemFarm(Mutex<State>);

impl MemFarm {
    fn with(f: impl FnOnce(&mut State)) -> MemFarm {
        let mut s = State::default();
        f(&mut s);
        MemFarm(Mutex::new(s))
    }
    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.0.lock().unwrap()
    }
}

#[async_trait]
impl Farm for MemFarm {
    async fn lock(&self, _: &str) -> anyhow::Result<bool> {
        let mut s = self.state();
        Ok(!std::mem::replace(&mut s.locked, true))
    }
    async fn unlock(&self, _: &str) -> anyhow::Result<()> {
        self.state().locked = false;
        Ok(())
    }
    async fn claim_round(&self, pool: &str, _: u64) -> anyhow::Result<bool> {
        Ok(self.state().rounds.insert(pool.into()))
    }
    async fn offer_deaths(&self, pool: &str, n: u32, _: u64) -> anyhow::Result<()> {
        self.state().deaths.insert(pool.into(), n);
        Ok(())
    }
    async fn take_deaths(&self, pools: &[String]) -> anyhow::Result<bool> {
        let mut s = self.state();
        if !pools
            .iter()
            .all(|p| s.deaths.get(p).is_some_and(|&n| n > 0))
        {
            return Ok(false);
        }
        for p in pools {
            *s.deaths.get_mut(p).expect("checked") -= 1;
        }
        Ok(true)
    }
    async fn serving(&self, pool: &str) -> anyhow::Result<u64> {
        let s = self.state();
        Ok(s.serving_elsewhere
            .get(pool)
            .copied()
            .unwrap_or(u64::from(s.alive)))
    }
    async fn ready(&self, pool: &str) -> anyhow::Result<u64> {
        let s = self.state();
        if let Some(n) = s.ready_elsewhere.get(pool) {
            return Ok(*n);
        }
        Ok(
            match (s.deregistered.is_empty(), s.ready_after_deregister) {
                (false, Some(n)) => n,
                _ => s.ready,
            },
        )
    }
    async fn load(&self, _: &str) -> anyhow::Result<Vec<PipelineLoad>> {
        let s = self.state();
        let hidden = match (s.deregistered.is_empty(), s.hidden_after_deregister) {
            (false, Some(n)) => n,
            _ => s.hidden,
        };
        Ok(vec![PipelineLoad {
            pipeline: "x".into(),
            running: s.running,
            queued: s.ready + hidden,
            estimated_secs: 0.0,
            probed_secs: 0.0,
            unknown: s.ready + hidden + s.running,
        }])
    }
    async fn cells(&self, _: &str) -> anyhow::Result<Cells> {
        let mut s = self.state();
        s.observed += 1;
        Ok(Cells {
            alive: s.alive,
            machines: s.beating.clone(),
            draining: s.draining.clone(),
        })
    }
    async fn pending(&self, pool: &str) -> anyhow::Result<u32> {
        let s = self.state();
        Ok(s.pending_elsewhere.get(pool).copied().unwrap_or(s.pending))
    }
    async fn cooling(&self, _: &str) -> anyhow::Result<bool> {
        Ok(self.state().cooling)
    }
    async fn launch_token(&self, _: &str) -> anyhow::Result<String> {
        Ok("token".into())
    }
    async fn launched(&self, _: &str, ids: &[String], _: u64, _: u64) -> anyhow::Result<()> {
        let mut s = self.state();
        s.pending += ids.len() as u32;
        s.cooling = true;
        Ok(())
    }
    async fn deregister(&self, cell_id: &str) -> anyhow::Result<()> {
        self.state().deregistered.push(cell_id.into());
        Ok(())
    }
    async fn spent_today(&self, _: &str, _: f64, _: u32) -> anyhow::Result<f64> {
        Ok(self.state().spent_usd)
    }
    async fn census(&self, _: &str) -> anyhow::Result<Option<Vec<Machine>>> {
        Ok(self.state().census.clone())
    }
    async fn keep_census(&self, _: &str, machines: &[Machine], _: u64) -> anyhow::Result<()> {
        let mut s = self.state();
        if s.keeps_census {
            s.census = Some(machines.to_vec());
        }
        Ok(())
    }
    async fn add_to_census(&self, _: &str, launched: &[Machine]) -> anyhow::Result<()> {
        if let Some(census) = &mut self.state().census {
            census.extend_from_slice(launched);
        }
        Ok(())
    }
    async fn record(
        &self,
        _: &str,
        kind: EventKind,
        who: &str,
        cells: u32,
        _: &str,
    ) -> anyhow::Result<()> {
        self.state().events.push((kind, who.into(), cells));
        Ok(())
    }
}

/// A cloud that launches instantly and has the machines the test says it has.
struct MemCloud {
    machines: Option<Vec<Machine>>,
    /// How many times the tick asked for the machines.
    asked: Mutex<u32>,
    launched: Mutex<u32>,
    terminated: Mutex<Vec<String>>,
    /// A launch fails after launching this many cells.
    fails_after: Option<u32>,
}

impl MemCloud {
    /// A cloud that cannot tell what it has.
    fn blind() -> MemCloud {
        MemCloud::with(None)
    }

    /// Machines by id and age in seconds.
    fn with(machines: Option<&[(&str, i64)]>) -> MemCloud {
        let now = chrono::Utc::now().timestamp();
        let machines = machines.map(|ms| {
            ms.iter()
                .map(|(id, age)| Machine {
                    id: id.to_string(),
                    launched_at: now - age,
                })
                .collect()
        });
        MemCloud {
            machines,
            asked: Mutex::new(0),
            launched: Mutex::new(0),
            terminated: Mutex::new(Vec::new()),
            fails_after: None,
        }
    }
}

#[async_trait]
impl Cloud for MemCloud {
    async fn launch(&self, pool: &str, n: u32, _: &str) -> Result<Vec<String>, CloudError> {
        let k = self.fails_after.map_or(n, |k| k.min(n));
        *self.launched.lock().unwrap() += k;
        let ids = (0..k).map(|i| format!("i-{i}")).collect();
        match self.fails_after {
            None => Ok(ids),
            Some(_) => Err(CloudError::Launch {
                pool: pool.into(),
                n,
                reason: "UnauthorizedOperation".into(),
                launched: ids,
            }),
        }
    }
    async fn machines(&self, _: &str) -> Result<Option<Vec<Machine>>, CloudError> {
        *self.asked.lock().unwrap() += 1;
        let terminated = self.terminated.lock().unwrap();
        Ok(self.machines.as_ref().map(|ms| {
            let alive = ms.iter().filter(|m| !terminated.contains(&m.id));
            alive.cloned().collect()
        }))
    }
    async fn terminate(&self, ids: &[String]) -> Result<(), CloudError> {
        self.terminated.lock().unwrap().extend_from_slice(ids);
        Ok(())
    }
    async fn terminate_self(&self) -> Result<(), CloudError> {
        Ok(())
    }
}

fn config() -> Config {
    Config::parse(CONFIG, "tick test").unwrap()
}

fn ticker<'a>(config: &'a Config, farm: &'a MemFarm, cloud: &'a MemCloud) -> Ticker<'a> {
    Ticker {
        config,
        farm,
        cloud,
        who: "test",
    }
}

async fn tick(farm: &MemFarm, cloud: &MemCloud, me: Option<Me<'_>>) -> TickOutcome {
    let config = config();
    let ticker = ticker(&config, farm, cloud);
    ticker.tick("p", me).await.unwrap().0
}

/// A heartbeat of the cell `me` serving pool `p` alone: true when it must go.
async fn beat(farm: &MemFarm, cloud: &MemCloud, me: Option<Me<'_>>) -> bool {
    let config = config();
    let ticker = ticker(&config, farm, cloud);
    ticker.tick_cell(&["p".into()], me.unwrap()).await
}

/// The cell `id`, on no machine, idle for `idle_secs` (`None`: busy).
fn cell(id: &str, idle_secs: Option<u64>) -> Option<Me<'_>> {
    Some(Me {
        cell_id: id,
        machine: None,
        idle_secs,
        leaving: false,
    })
}

fn idle(secs: u64) -> Option<Me<'static>> {
    cell("me", Some(secs))
}

#[tokio::test]
async fn cooldown_holds_growth_but_not_zero_to_one() {
    use TickOutcome::*;
    let cases = [
        ("zero to one ignores the cooldown", 1, 0, true, Launched(1)),
        ("a cooling pool does not grow", 40, 1, true, Stayed),
        ("a pool past its cooldown grows", 40, 1, false, Launched(3)),
    ];
    for (why, ready, alive, cooling, want) in cases {
        let farm = MemFarm::with(|s| {
            s.ready = ready;
            s.alive = alive;
            s.cooling = cooling;
        });
        let cloud = MemCloud::blind();
        assert_eq!(tick(&farm, &cloud, None).await, want, "{why}");
        let launched = match want {
            Launched(n) => n,
            _ => 0,
        };
        assert_eq!(*cloud.launched.lock().unwrap(), launched, "{why}");
        let s = farm.state();
        assert_eq!(
            s.pending, launched,
            "{why}: launches are recorded as pending"
        );
        assert!(!s.locked, "{why}: the lock is released");
        if launched > 0 {
            assert_eq!(s.events, [(EventKind::Launch, "test".into(), launched)]);
            assert!(s.cooling, "{why}: a launch starts the cooldown");
        }
    }
}

#[tokio::test]
async fn cells_launched_by_a_failed_launch_are_pending_and_recorded() {
    let farm = MemFarm::with(|s| s.ready = 40);
    let mut cloud = MemCloud::blind();
    cloud.fails_after = Some(2);
    let config = config();
    let e = ticker(&config, &farm, &cloud)
        .tick("p", None)
        .await
        .expect_err("the launch failed");
    assert!(format!("{e:#}").contains("i-0, i-1"), "{e:#}");
    let s = farm.state();
    assert_eq!(s.pending, 2, "the launched cells are pending");
    assert_eq!(s.events, [(EventKind::Launch, "test".into(), 2)]);
    assert!(!s.locked, "the lock is released");
}

#[tokio::test]
async fn a_held_lock_means_someone_else_decides() {
    let farm = MemFarm::with(|s| {
        s.ready = 40;
        s.locked = true;
    });
    let cloud = MemCloud::blind();
    assert_eq!(tick(&farm, &cloud, None).await, TickOutcome::Busy);
    assert_eq!(*cloud.launched.lock().unwrap(), 0);
}

#[tokio::test]
async fn the_clouds_machines_are_the_backstop_for_forgotten_launches() {
    // Redis lost the pending launches; four instances exist, none alive yet: at the
    // ceiling already.
    let farm = MemFarm::with(|s| s.ready = 40);
    let booting = [("a", 10), ("b", 10), ("c", 10), ("d", 10)];
    let cloud = MemCloud::with(Some(&booting));
    assert_eq!(tick(&farm, &cloud, None).await, TickOutcome::Stayed);
    assert_eq!(*cloud.launched.lock().unwrap(), 0);
}

/// Property: the census stands between ticks where it agrees with the pending launches
/// (the cloud is asked once for two ticks, and a launch joins the census), and is taken
/// again where it would hold back a launch: a machine in it that is gone since (a cell
/// that died young) holds no place.
#[tokio::test]
async fn the_census_stands_until_it_would_change_the_decision() {
    let now = chrono::Utc::now().timestamp();
    let machine = |id: &str| Machine {
        id: id.into(),
        launched_at: now - 10,
    };
    // One booting machine, recorded as pending: two ticks ask the cloud once.
    let farm = MemFarm::with(|s| {
        s.ready = 1;
        s.pending = 1;
        s.keeps_census = true;
    });
    let cloud = MemCloud::with(Some(&[("a", 10)]));
    assert_eq!(tick(&farm, &cloud, None).await, TickOutcome::Stayed);
    assert_eq!(tick(&farm, &cloud, None).await, TickOutcome::Stayed);
    assert_eq!(*cloud.asked.lock().unwrap(), 1, "one census for two ticks");

    // A census with two booting machines against no recorded launch: one is gone,
    // the cloud is asked, and the pool (ceiling 4, 40 jobs) launches past it.
    let farm = MemFarm::with(|s| {
        s.ready = 40;
        s.census = Some(vec![machine("a"), machine("gone")]);
        s.keeps_census = true;
    });
    let cloud = MemCloud::with(Some(&[("a", 10)]));
    assert_eq!(tick(&farm, &cloud, None).await, TickOutcome::Launched(3));
    assert_eq!(
        *cloud.asked.lock().unwrap(),
        1,
        "the census was taken again"
    );
    let census = farm.state().census.clone().unwrap_or_default();
    let ids: Vec<&str> = census.iter().map(|m| m.id.as_str()).collect();
    assert_eq!(
        ids,
        ["a", "i-0", "i-1", "i-2"],
        "the fresh census, and the launched cells"
    );
}

/// Property: machines being reclaimed hold no place under the ceiling, so a pool whose
/// cells all got their spot notice at once is replaced by their last ticks; and a
/// leaving cell is never the one to die.
#[tokio::test]
async fn a_leaving_cells_machine_is_not_pending_and_it_does_not_die() {
    // Both cells of the pool had a spot notice at once: each beats as leaving on its
    // machine, which still exists. Neither machine holds a place for the replacements
    // (each leaving cell's last tick would otherwise wait for the other's).
    let farm = MemFarm::with(|s| {
        s.ready = 3;
        s.beating.insert("m-me".into());
        s.beating.insert("m-other".into());
    });
    let cloud = MemCloud::with(Some(&[("m-me", 3600), ("m-other", 3600)]));
    let me = Some(Me {
        cell_id: "me",
        machine: Some("m-me"),
        idle_secs: Some(999),
        leaving: true,
    });
    assert_eq!(tick(&farm, &cloud, me).await, TickOutcome::Launched(1));
    assert!(cloud.terminated.lock().unwrap().is_empty());
    let quiet = MemFarm::with(|s| s.alive = 2);
    assert!(
        !beat(&quiet, &cloud, me).await,
        "a leaving cell takes no death"
    );
    assert!(quiet.state().deregistered.is_empty());
}

/// Property: a machine no cell beats on past its launch timeout (a failed boot, a hung
/// cell) is ended and recorded, stops holding a ceiling slot, and is replaced when the
/// work needs it; a new machine, a beating one and the decider's own are left alone.
#[tokio::test]
async fn silent_machines_are_reaped_and_replaced() {
    let farm = MemFarm::with(|s| {
        s.ready = 30;
        s.alive = 1;
        s.beating.insert("beating".into());
    });
    let machines = [
        ("beating", 3600),
        ("hung", 3600),
        ("never-booted", 301),
        ("booting", 10),
        ("mine", 3600),
    ];
    let cloud = MemCloud::with(Some(&machines));
    let me = Some(Me {
        cell_id: "me",
        machine: Some("mine"),
        idle_secs: None,
        leaving: false,
    });
    // 30 jobs want 3 cells: 1 alive, 1 booting, so one more once the silent are gone.
    assert_eq!(tick(&farm, &cloud, me).await, TickOutcome::Launched(1));
    assert_eq!(*cloud.terminated.lock().unwrap(), ["hung", "never-booted"]);
    let reaped: Vec<_> = farm
        .state()
        .events
        .iter()
        .filter(|(k, _, _)| *k == EventKind::Reap)
        .map(|(_, who, _)| who.clone())
        .collect();
    assert_eq!(reaped, ["hung", "never-booted"]);
}

#[tokio::test]
async fn death_looks_once_more_after_deregistering() {
    // Idle past grace, queues empty, two spare cells: this one takes a death, and says so.
    let farm = MemFarm::with(|s| s.alive = 2);
    let cloud = MemCloud::blind();
    assert!(beat(&farm, &cloud, idle(60)).await);
    assert_eq!(farm.state().deregistered, ["me"]);
    assert_eq!(farm.state().events, [(EventKind::Death, "me".into(), 1)]);
    assert_eq!(
        farm.state().deaths["p"],
        1,
        "one of the two offered is taken"
    );

    // A job published between the offer and the last look keeps the cell.
    let farm = MemFarm::with(|s| {
        s.alive = 2;
        s.ready_after_deregister = Some(1);
    });
    assert!(!beat(&farm, &cloud, idle(60)).await);
    assert!(farm.state().events.is_empty(), "no death recorded");

    // Not before the grace period, and never the busy cell.
    let farm = MemFarm::with(|s| s.alive = 2);
    assert!(!beat(&farm, &cloud, idle(10)).await);
    assert!(!beat(&farm, &cloud, cell("me", None)).await);
    assert!(farm.state().deregistered.is_empty());
    assert_eq!(
        farm.state().deaths["p"],
        2,
        "the offer stands for idle cells"
    );
}

/// Property: one decider a round. Of many cells beating in one round, one observes the
/// pool and decides; the others make no observation and launch nothing, however big
/// the backlog. The deaths the round offers bound how many idle cells go.
#[tokio::test]
async fn one_cell_a_round_decides_and_its_offer_bounds_the_deaths() {
    let cloud = MemCloud::blind();
    let farm = MemFarm::with(|s| {
        s.ready = 40;
        s.alive = 1;
    });
    for id in ["a", "b", "c", "d"] {
        assert!(!beat(&farm, &cloud, cell(id, None)).await);
    }
    assert_eq!(farm.state().observed, 1, "one observation a round");
    assert_eq!(*cloud.launched.lock().unwrap(), 3, "launched once");

    // Three cells, one job's worth of work running: two of three idle cells go.
    let farm = MemFarm::with(|s| {
        s.alive = 3;
        s.running = 5;
    });
    let mut gone = Vec::new();
    for id in ["a", "b", "c"] {
        if beat(&farm, &cloud, cell(id, Some(60))).await {
            gone.push(id);
        }
    }
    assert_eq!(gone, ["a", "b"]);
    assert_eq!(farm.state().observed, 1);
}

/// Property: a cell that is dying (draining, its machine still up) keeps its place under
/// the ceiling, so another cell's tick does not launch past it.
#[tokio::test]
async fn a_draining_machine_still_counts_under_the_ceiling() {
    let farm = MemFarm::with(|s| {
        s.ready = 40;
        s.alive = 3;
        for m in ["a", "b", "c", "dying"] {
            s.beating.insert(m.into());
        }
        s.draining.insert("dying".into());
    });
    let up = [("a", 600), ("b", 600), ("c", 600), ("dying", 600)];
    let cloud = MemCloud::with(Some(&up));
    assert_eq!(tick(&farm, &cloud, None).await, TickOutcome::Stayed);
    assert_eq!(*cloud.launched.lock().unwrap(), 0);
}

/// Property: a cell serving two pools dies only when both would let it go; an idle cell
/// is not taken by one pool's tick while the other pool has work waiting for it.
#[tokio::test]
async fn a_cell_of_two_pools_dies_only_when_neither_needs_it() {
    let config = config();
    let pools = ["p".to_string(), "q".to_string()];
    let cloud = MemCloud::blind();
    let me = idle(60).unwrap();
    let busy_q = MemFarm::with(|s| {
        s.alive = 2;
        s.ready_elsewhere.insert("q".into(), 5);
    });
    let busy_ticker = ticker(&config, &busy_q, &cloud);
    assert!(
        !busy_ticker.tick_cell(&pools, me).await,
        "q has work for it"
    );
    // Pool p alone would let the cell go: that is the hole a per-pool death opened.
    assert_eq!(busy_q.state().deaths["p"], 2, "p's offer is untouched");
    assert!(busy_q.state().deregistered.is_empty());
    assert!(busy_q.state().events.is_empty());

    let quiet = MemFarm::with(|s| s.alive = 2);
    let quiet_ticker = ticker(&config, &quiet, &cloud);
    assert!(
        quiet_ticker.tick_cell(&pools, me).await,
        "neither pool needs it"
    );
    assert_eq!(quiet.state().deregistered, ["me"]);
}

/// Property: jobs the ledger holds as queued count as waiting work even when the broker
/// shows none ready (a cell holds their messages unstarted, or they are lost): an idle
/// cell does not die beside them, neither on the decision nor on the last look, and they
/// call for cells as ready ones do.
#[tokio::test]
async fn queued_jobs_the_broker_does_not_show_are_waiting_work() {
    let cloud = MemCloud::blind();
    // A busy cell runs one long job with another queued behind it; its neighbour idles.
    let farm = MemFarm::with(|s| {
        s.alive = 2;
        s.running = 1;
        s.hidden = 1;
    });
    assert!(!beat(&farm, &cloud, idle(300)).await);
    assert!(farm.state().deregistered.is_empty(), "the neighbour stays");

    // A job queued between the decision and the last look keeps the cell too.
    let farm = MemFarm::with(|s| {
        s.alive = 2;
        s.hidden_after_deregister = Some(1);
    });
    assert!(!beat(&farm, &cloud, idle(60)).await);
    assert!(farm.state().events.is_empty(), "no death recorded");

    // Thirty queued, ten running, one cell: four cells wanted, three launched.
    let farm = MemFarm::with(|s| {
        s.alive = 1;
        s.running = 10;
        s.hidden = 30;
    });
    assert_eq!(tick(&farm, &cloud, None).await, TickOutcome::Launched(3));

    // A ready job is queued in the ledger too: twenty of them want two cells, not four.
    let farm = MemFarm::with(|s| {
        s.alive = 2;
        s.ready = 20;
    });
    assert_eq!(tick(&farm, &cloud, None).await, TickOutcome::Stayed);
}

/// Once the pool's budget for today is spent, the tick launches nothing, zero to one
/// included; under it, it launches as the decision says.
#[tokio::test]
async fn a_spent_budget_stops_launches() {
    let text = CONFIG.replace(
        "cooldown_secs = 30\n",
        "cooldown_secs = 30\n    budget_per_day = 10.0\n    price_per_hour = 0.5\n",
    );
    let config = Config::parse(&text, "budget test").unwrap();
    assert_eq!(config.pools["p"].budget_per_day, Some(10.0));
    let cases = [
        ("under budget", 9.99, TickOutcome::Launched(4)),
        ("budget spent", 10.0, TickOutcome::Stayed),
    ];
    for (why, spent_usd, want) in cases {
        let farm = MemFarm::with(|s| {
            s.ready = 40;
            s.spent_usd = spent_usd;
        });
        let cloud = MemCloud::blind();
        let (outcome, _) = ticker(&config, &farm, &cloud)
            .tick("p", None)
            .await
            .unwrap();
        assert_eq!(outcome, want, "{why}");
        let launched = *cloud.launched.lock().unwrap();
        assert_eq!(launched > 0, spent_usd < 10.0, "{why}");
    }
}

async fn kick(farm: &MemFarm, cloud: &MemCloud) {
    let config = config();
    ticker(&config, farm, cloud).kick(&["p".to_string()]).await;
}

/// Property: after a publish, `kick` observes the pool only when it claims the round or
/// no cell serves the pool. The trigger publishing thousands of jobs a minute does not
/// observe the pool for each, and a farm with no cell still starts itself whatever the
/// round says.
#[tokio::test]
async fn a_kick_ticks_only_for_a_free_round_or_a_pool_with_no_cell() {
    let cloud = MemCloud::blind();
    let kick = |farm| kick(farm, &cloud);
    // A cell serves the pool and has claimed this round: its cells decide.
    let served = MemFarm::with(|s| {
        s.ready = 40;
        s.alive = 1;
        s.rounds.insert("p".into());
    });
    kick(&served).await;
    assert_eq!(served.state().observed, 0, "no observation");
    assert_eq!(*cloud.launched.lock().unwrap(), 0);

    // The round is free: the kick claims it and decides.
    let free = MemFarm::with(|s| {
        s.ready = 40;
        s.alive = 1;
    });
    kick(&free).await;
    assert_eq!(free.state().observed, 1);
    assert_eq!(*cloud.launched.lock().unwrap(), 3);

    // No cell serves the pool: zero to one, though the round was claimed.
    let empty = MemFarm::with(|s| {
        s.ready = 1;
        s.rounds.insert("p".into());
    });
    kick(&empty).await;
    assert_eq!(empty.state().observed, 1);
    assert_eq!(*cloud.launched.lock().unwrap(), 4, "one more: zero to one");
}

/// A farm of at most 4 cells whose pool `s` soaks up what `p` and `q` leave.
fn soak_config() -> Config {
    let text = CONFIG.replace("name = \"t\"", "name = \"t\"\n    max_cells = 4")
        + "\n    [pools.s]\n    soak = true\n    jobs_per_cell = 1\n    ceiling = 10\n    step = 10\n";
    Config::parse(&text, "soak test").unwrap()
}

/// Property: a soak pool grows only into the room the other pools leave under
/// `farm.max_cells`, and when they take it back it offers its surplus even while its
/// own work waits; a busy soak cell then yields (finishes its jobs, takes no more, dies),
/// and a busy cell of an ordinary pool never does.
#[tokio::test]
async fn a_soak_pool_fills_the_spare_room_and_yields_it() {
    let config = soak_config();
    let cloud = MemCloud::blind();
    // p has one cell and one launching, q none: two cells of room for s's ten jobs.
    let farm = MemFarm::with(|s| {
        s.ready = 10;
        s.serving_elsewhere = [("p".into(), 1), ("q".into(), 0)].into();
        s.pending_elsewhere = [("p".into(), 1), ("q".into(), 0)].into();
    });
    let first = ticker(&config, &farm, &cloud);
    let (outcome, _) = first.tick("s", None).await.unwrap();
    assert_eq!(outcome, TickOutcome::Launched(2), "only the room left");

    // p now holds all four places: s's two cells are surplus, work or not.
    let farm = MemFarm::with(|s| {
        s.ready = 8;
        s.alive = 2;
        s.serving_elsewhere = [("p".into(), 4), ("q".into(), 0)].into();
        s.pending_elsewhere = [("p".into(), 0), ("q".into(), 0)].into();
    });
    let later = ticker(&config, &farm, &cloud);
    assert_eq!(later.tick("s", None).await.unwrap().0, TickOutcome::Shed(2));
    let busy = |id| Me {
        cell_id: id,
        machine: None,
        idle_secs: None,
        leaving: false,
    };
    farm.state().rounds.insert("s".into());
    assert!(
        later.tick_cell(&["s".into()], busy("s1")).await,
        "a busy soak cell yields"
    );
    farm.state().deaths.insert("p".into(), 1);
    farm.state().rounds.insert("p".into());
    assert!(
        !later.tick_cell(&["p".into()], busy("p1")).await,
        "a busy cell of an ordinary pool stays"
    );
    let s = farm.state();
    assert_eq!(s.deregistered, ["s1"]);
    assert_eq!(s.deaths["s"], 1, "one death taken of the two offered");
    assert_eq!(s.events, [(EventKind::Death, "s1".into(), 1)]);
}

#[test]
fn a_soak_pool_needs_the_farms_ceiling() {
    let text = CONFIG.to_string() + "\n    [pools.s]\n    soak = true\n";
    let msg = Config::parse(&text, "soak test").unwrap_err().to_string();
    assert!(msg.contains("pools.s.soak: needs farm.max_cells"), "{msg}");
}
