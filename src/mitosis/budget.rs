//! The daily budget: what a pool's cells cost today, and the gate that stops launches
//! once it is spent. Pure, like [`super::decide`]: the tick, `status` and the simulator
//! run this very code.

use std::fmt;

use super::Decision;
use crate::ledger::CellChange;

/// EC2 bills a Linux instance per second, with a minimum of a minute.
pub const BILLING_MINIMUM_SECS: i64 = 60;
const DAY_SECS: i64 = 86_400;

/// The UTC midnight that began the day of `now` (seconds since the Unix epoch).
pub fn day_start(now: i64) -> i64 {
    now - now.rem_euclid(DAY_SECS)
}

/// Cell-seconds billed from `day_start` to `now`, from the cells the events count as
/// running at `day_start` (`carried`) and the changes since, in time order.
///
/// Each cell is billed from its launch (or from midnight, for a carried cell) to its
/// end, or to `now` while it runs, with [`BILLING_MINIMUM_SECS`] for a cell launched
/// today. The events do not say which cell ended: an end is paired with the most recent
/// launch still running, which bills short lives (boots that failed) their minimum.
/// Cells the events still count beyond `running_now` (what the farm has now) ended
/// without a record; the oldest of them are dropped, billed only their minimum.
pub fn billed_secs(
    carried: u32,
    changes: &[CellChange],
    day_start: i64,
    now: i64,
    running_now: u32,
) -> f64 {
    // Running cells' start, and whether the minimum applies (launched today).
    let mut running: Vec<(i64, bool)> = vec![(day_start, false); carried as usize];
    let bill = |(start, minimum): (i64, bool), end: i64| {
        let secs = (end - start).max(0);
        if minimum {
            secs.max(BILLING_MINIMUM_SECS)
        } else {
            secs
        }
    };
    let mut secs = 0;
    for change in changes {
        let at = change.at.clamp(day_start, now);
        if change.cells >= 0 {
            running.extend(std::iter::repeat((at, true)).take(change.cells as usize));
        }
        for _ in change.cells..0 {
            if let Some(cell) = running.pop() {
                secs += bill(cell, at);
            }
        }
    }
    let unrecorded = running.len().saturating_sub(running_now as usize);
    for (i, cell) in running.into_iter().enumerate() {
        secs += if i < unrecorded {
            bill(cell, cell.0)
        } else {
            bill(cell, now)
        };
    }
    secs as f64
}

/// A pool's budget for today and what it has spent.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Spend {
    pub spent_usd: f64,
    pub budget_usd: f64,
}

impl Spend {
    /// The budget is spent: no more launches today.
    pub fn spent(&self) -> bool {
        self.spent_usd >= self.budget_usd
    }
}

/// Why the gate held a launch back.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Hold {
    /// Today's budget is spent: no new launches until UTC midnight.
    BudgetSpent(Spend),
}

impl fmt::Display for Hold {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Hold::BudgetSpent(s) => write!(
                f,
                "launches stopped: budget spent (${:.2} of ${:.2} today)",
                s.spent_usd, s.budget_usd
            ),
        }
    }
}

/// The cost guardrails after [`super::decide`]: a launch becomes a stay, with the
/// reason, once today's budget is spent. Cells already running go on (they finish their
/// work and die as usual); death is never held back. `spend` is `None` for a pool
/// without a budget.
pub fn gate(decision: Decision, spend: Option<Spend>) -> (Decision, Option<Hold>) {
    match (decision, spend) {
        (Decision::Launch(_), Some(s)) if s.spent() => (Decision::Stay, Some(Hold::BudgetSpent(s))),
        _ => (decision, None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DAY: i64 = 20_000 * DAY_SECS;

    fn at(secs: i64, cells: i32) -> CellChange {
        CellChange {
            at: DAY + secs,
            cells,
        }
    }

    #[test]
    fn days_begin_at_utc_midnight() {
        assert_eq!(day_start(DAY), DAY);
        assert_eq!(day_start(DAY + 86_399), DAY);
        assert_eq!(day_start(DAY + 86_400), DAY + 86_400);
    }

    #[test]
    fn billing_from_the_events() {
        let now = DAY + 3600;
        let cases: [(&str, u32, Vec<CellChange>, u32, f64); 8] = [
            ("nothing ran", 0, vec![], 0, 0.0),
            (
                "two cells for ten minutes",
                0,
                vec![at(0, 2), at(600, -1), at(600, -1)],
                0,
                1200.0,
            ),
            (
                "a cell still running bills to now",
                0,
                vec![at(1800, 1)],
                1,
                1800.0,
            ),
            (
                "a short life bills the minute",
                0,
                vec![at(100, 1), at(110, -1)],
                0,
                60.0,
            ),
            (
                "an end pairs with the latest launch",
                0,
                vec![at(0, 1), at(1000, 1), at(1010, -1)],
                1,
                3600.0 + 60.0,
            ),
            (
                "a cell from yesterday bills from midnight, no minimum",
                1,
                vec![at(30, -1)],
                0,
                30.0,
            ),
            (
                "an end with nothing running counts nothing",
                0,
                vec![at(30, -1)],
                0,
                0.0,
            ),
            (
                "a cell the farm no longer has ended unrecorded",
                2,
                vec![at(0, 1)],
                1,
                3600.0,
            ),
        ];
        for (why, carried, changes, running_now, want) in cases {
            let got = billed_secs(carried, &changes, DAY, now, running_now);
            assert_eq!(got, want, "{why}");
        }
    }

    #[test]
    fn the_gate_stops_launches_only_when_the_budget_is_spent() {
        let spend = |spent_usd| Spend {
            spent_usd,
            budget_usd: 10.0,
        };
        let (under, spent) = (spend(9.99), spend(10.0));
        let cases = [
            ("no budget", Decision::Launch(3), None, Decision::Launch(3)),
            (
                "under",
                Decision::Launch(3),
                Some(under),
                Decision::Launch(3),
            ),
            ("spent", Decision::Launch(3), Some(spent), Decision::Stay),
            (
                "cells still go",
                Decision::Shed(2),
                Some(spent),
                Decision::Shed(2),
            ),
            ("staying stays", Decision::Stay, Some(spent), Decision::Stay),
        ];
        for (why, decision, spend, want) in cases {
            let (got, hold) = gate(decision, spend);
            assert_eq!(got, want, "{why}");
            assert_eq!(hold.is_some(), why == "spent", "{why}");
        }
        let (_, hold) = gate(Decision::Launch(1), Some(spent));
        assert_eq!(
            hold.unwrap().to_string(),
            "launches stopped: budget spent ($10.00 of $10.00 today)"
        );
    }
}
