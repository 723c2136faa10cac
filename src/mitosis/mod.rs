//! Mitosis and death: how many cells a pool needs, decided by one pure function.
//!
//! [`decide`] turns an [`Observation`] of a pool and its [`Policy`] into a [`Decision`].
//! It has no I/O, so the cell, `submit` (zero to one), the simulator and tests run the
//! very same code; [`tick`] gathers the observation and carries the decision out.
//!
//! One decider a pool a heartbeat: the cell that claims the pool's *round* observes and
//! decides for everybody, and a pool with more cells than its work needs offers that many
//! deaths ([`Decision::Shed`]). Every other cell only asks, in one cheap call, whether it
//! may take one of them ([`may_leave`]), so a farm of 1,000 cells observes each pool
//! once a heartbeat, not 1,000 times, and still drains its idle cells in one round. The cost guardrails
//! follow the decision, as pure: the vCPU quota lowers the [`Policy`]'s ceiling, and
//! [`gate`] holds launches back once the pool's daily budget is spent.

pub mod budget;
pub mod reap;
mod tick;

pub use budget::gate;
pub use tick::{weigh, Cells, Farm, LiveFarm, Me, TickOutcome, Ticker};

/// What a pool looks like now.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Observation {
    /// Ready messages in the pool's queues (the broker's count: in-flight excluded).
    pub ready: u64,
    /// Jobs the ledger holds as queued: ready ones, and any whose message a cell holds
    /// unstarted or the broker lost, which the ready count misses.
    pub queued: u64,
    /// Jobs running now (from the ledger).
    pub in_flight: u64,
    /// Estimated work of queued and running jobs, in seconds of encoding.
    pub work_secs: f64,
    /// Cells with a fresh heartbeat serving the pool.
    pub alive: u32,
    /// Cells launched but not yet alive.
    pub pending: u32,
}

/// How a pool scales: [`crate::config::Pool`] in the form the calculator reads.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Policy {
    /// Work one cell takes on, in jobs.
    pub jobs_per_cell: u32,
    /// Work one cell takes on, in seconds of encoding; when set, it decides instead of
    /// `jobs_per_cell` (a long video is more work than a short one).
    pub work_secs_per_cell: Option<f64>,
    pub floor: u32,
    /// The pool's ceiling, lowered by its vCPU quota if that holds fewer cells.
    pub ceiling: u32,
    /// Most cells launched by one tick.
    pub step: u32,
    /// Idle seconds before a cell above the floor may die.
    pub idle_grace_secs: u64,
}

impl From<&crate::config::Pool> for Policy {
    fn from(pool: &crate::config::Pool) -> Self {
        Policy {
            jobs_per_cell: pool.jobs_per_cell,
            work_secs_per_cell: pool.work_secs_per_cell,
            floor: pool.floor,
            ceiling: pool.effective_ceiling(),
            step: pool.step,
            idle_grace_secs: pool.idle_grace_secs,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    Launch(u32),
    Stay,
    /// The pool has this many cells more than it needs: as many idle cells may leave.
    Shed(u32),
}

/// Cells the pool's work calls for, within floor and ceiling; at least one while there is
/// any work at all.
pub fn wanted(obs: &Observation, policy: &Policy) -> u32 {
    let jobs = waiting(obs) + obs.in_flight;
    let by_work = match policy.work_secs_per_cell {
        Some(per_cell) if per_cell > 0.0 => (obs.work_secs / per_cell).ceil() as u64,
        _ => jobs.div_ceil(u64::from(policy.jobs_per_cell.max(1))),
    };
    let by_work = if jobs > 0 { by_work.max(1) } else { by_work };
    let wanted = u32::try_from(by_work).unwrap_or(u32::MAX);
    wanted.max(policy.floor).min(policy.ceiling)
}

/// Jobs waiting for a cell: the larger of the broker's ready count and the ledger's
/// queued count. Not their sum: a ready job is also queued in the ledger. The broker's
/// count can be the larger one (a message published before its row, a duplicate), the
/// ledger's too (a message a cell holds but has not started, or one the broker lost).
pub fn waiting(obs: &Observation) -> u64 {
    obs.ready.max(obs.queued)
}

pub fn decide(obs: &Observation, policy: &Policy) -> Decision {
    let want = wanted(obs, policy);
    let have = obs.alive + obs.pending;
    if want > have {
        let room = policy.ceiling.saturating_sub(have);
        let n = (want - have).min(policy.step.max(1)).min(room);
        return if n > 0 {
            Decision::Launch(n)
        } else {
            Decision::Stay
        };
    }
    // Death: never while work waits, never below the floor, and only the cells the pool
    // has beyond what it needs. Which cells go is theirs to say: the idle ones.
    let keep = want.max(policy.floor);
    if waiting(obs) == 0 && obs.alive > keep {
        return Decision::Shed(obs.alive - keep);
    }
    // Over its ceiling (a soak pool whose room the other pools took back, a lowered
    // ceiling), a pool offers the surplus even while work waits.
    if obs.alive > policy.ceiling {
        return Decision::Shed(obs.alive - policy.ceiling);
    }
    Decision::Stay
}

/// Whether a cell idle for `idle_secs` (`None`: busy) may take one of the deaths its
/// pool offers: only once idle past the pool's grace.
pub fn may_leave(idle_secs: Option<u64>, policy: &Policy) -> bool {
    idle_secs.is_some_and(|idle| idle >= policy.idle_grace_secs)
}

/// A soak pool's ceiling: its own, and no more than what the farm's `max_cells` leaves
/// once the other pools' cells (alive and pending) are counted.
pub fn soak_ceiling(own: u32, max_cells: u32, others: u64) -> u32 {
    let room = u64::from(max_cells).saturating_sub(others);
    own.min(u32::try_from(room).unwrap_or(u32::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> Policy {
        Policy {
            jobs_per_cell: 10,
            work_secs_per_cell: None,
            floor: 0,
            ceiling: 4,
            step: 4,
            idle_grace_secs: 30,
        }
    }

    fn obs(ready: u64, in_flight: u64, alive: u32, pending: u32) -> Observation {
        Observation {
            ready,
            in_flight,
            alive,
            pending,
            ..Default::default()
        }
    }

    fn queued(o: Observation, queued: u64) -> Observation {
        Observation { queued, ..o }
    }

    #[test]
    fn the_decision_table() {
        use Decision::*;
        let p = policy();
        let cases = [
            ("zero to one when work arrives", obs(1, 0, 0, 0), Launch(1)),
            (
                "40 jobs, factor 10: four cells",
                obs(40, 0, 0, 0),
                Launch(4),
            ),
            ("never past the ceiling", obs(400, 0, 0, 0), Launch(4)),
            (
                "over its ceiling, the surplus goes while work waits",
                obs(400, 6, 6, 0),
                Shed(2),
            ),
            ("pending launches count", obs(40, 0, 1, 3), Stay),
            ("alive cells count", obs(30, 10, 4, 0), Stay),
            (
                "in-flight work keeps cells (the broker's count omits it)",
                obs(0, 40, 4, 0),
                Stay,
            ),
            (
                "one more when the backlog grows",
                obs(25, 10, 3, 0),
                Launch(1),
            ),
            ("nothing to do, nobody to launch", obs(0, 0, 0, 0), Stay),
            (
                "a pool with no work sheds every cell",
                obs(0, 0, 2, 0),
                Shed(2),
            ),
            ("never while messages are ready", obs(1, 0, 2, 0), Stay),
            (
                "not while the pool needs every cell",
                obs(0, 25, 3, 0),
                Stay,
            ),
            ("surplus cells go", obs(0, 5, 3, 0), Shed(2)),
            (
                "never while the ledger has jobs queued (a hidden backlog)",
                queued(obs(0, 1, 2, 0), 1),
                Stay,
            ),
            (
                "pending launches are not shed: they are not alive yet",
                obs(0, 0, 0, 2),
                Stay,
            ),
            (
                "queued jobs are work: they call for cells like ready ones",
                queued(obs(0, 10, 1, 0), 30),
                Launch(3),
            ),
            (
                "a ready job is also queued: not counted twice",
                queued(obs(20, 0, 2, 0), 20),
                Stay,
            ),
        ];
        for (why, o, want) in cases {
            assert_eq!(decide(&o, &p), want, "{why}: {o:?}");
        }
    }

    #[test]
    fn floors_steps_and_work_seconds() {
        let mut p = policy();
        p.floor = 2;
        assert_eq!(
            decide(&obs(0, 0, 0, 0), &p),
            Decision::Launch(2),
            "up to the floor"
        );
        assert_eq!(
            decide(&obs(0, 0, 2, 0), &p),
            Decision::Stay,
            "never below the floor"
        );
        assert_eq!(
            decide(&obs(0, 0, 5, 0), &p),
            Decision::Shed(3),
            "down to the floor"
        );
        p.floor = 0;
        p.step = 1;
        assert_eq!(
            decide(&obs(40, 0, 0, 0), &p),
            Decision::Launch(1),
            "one step a tick"
        );
        // Work-aware: three 50-minute videos are more work than thirty 1-minute clips.
        p.step = 10;
        p.work_secs_per_cell = Some(600.0);
        let long = Observation {
            work_secs: 3.0 * 3000.0,
            ..obs(3, 0, 0, 0)
        };
        assert_eq!(
            decide(&long, &p),
            Decision::Launch(4),
            "ceiling still holds"
        );
        let short = Observation {
            work_secs: 30.0 * 60.0,
            ..obs(30, 0, 0, 0)
        };
        assert_eq!(decide(&short, &p), Decision::Launch(3));
    }

    #[test]
    fn only_a_cell_idle_past_its_grace_may_leave() {
        let p = policy();
        assert!(may_leave(Some(30), &p));
        assert!(!may_leave(Some(29), &p), "not before the grace period");
        assert!(!may_leave(None, &p), "never a busy cell");
    }

    /// Eight decisions in a row on the same backlog, each seeing the launches of the ones
    /// before as pending, launch exactly the missing cells. This is the decision's part
    /// only: that concurrent ticks do decide one after another is the pool lock's, tested
    /// in `tick`'s tests and end to end in `tests/mitosis.rs`.
    #[test]
    fn decisions_that_see_pending_launches_launch_the_missing_cells_once() {
        let p = policy();
        let mut pending = 0;
        let mut launched = 0;
        for _ in 0..8 {
            if let Decision::Launch(n) = decide(&obs(40, 0, 1, pending), &p) {
                pending += n;
                launched += n;
            }
        }
        assert_eq!(launched, 3);
    }

    #[test]
    fn a_soak_pools_ceiling_is_the_room_the_others_leave() {
        assert_eq!(soak_ceiling(10, 8, 3), 5);
        assert_eq!(soak_ceiling(4, 8, 3), 4, "never past its own");
        assert_eq!(soak_ceiling(10, 8, 9), 0, "others over the farm's ceiling");
    }
}
