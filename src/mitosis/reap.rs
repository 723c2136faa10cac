//! Machines nobody works on: a launched instance whose boot failed, or whose cell hung or
//! died without ending it, costs money and holds a ceiling slot until it is ended. One
//! pure rule sorts a pool's machines; the tick ends the silent ones.

use std::collections::HashSet;

use crate::cloud::Machine;

/// A pool's machines, sorted by what their cells say.
#[derive(Debug, Default, PartialEq)]
pub struct Sorted {
    /// Launched longer than the launch timeout ago, and no cell beats on them.
    pub silent: Vec<Machine>,
    /// No cell beats on them yet, within the launch timeout: still starting.
    pub booting: u32,
}

/// Sorts `machines` by the machines cells beat on (`beating`), at `now` (seconds since
/// the Unix epoch). `me` is the deciding cell's own machine, never silent: it is ticking.
pub fn sort(
    machines: &[Machine],
    beating: &HashSet<String>,
    me: Option<&str>,
    now: i64,
    launch_timeout_secs: u64,
) -> Sorted {
    let mut sorted = Sorted::default();
    for m in machines {
        if beating.contains(&m.id) || me == Some(m.id.as_str()) {
            continue;
        }
        let age = now.saturating_sub(m.launched_at);
        if age > i64::try_from(launch_timeout_secs).unwrap_or(i64::MAX) {
            sorted.silent.push(m.clone());
        } else {
            sorted.booting += 1;
        }
    }
    sorted
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(id: &str, launched_at: i64) -> Machine {
        Machine {
            id: id.into(),
            launched_at,
        }
    }

    #[test]
    fn the_silent_are_old_and_beat_on_by_nobody() {
        let machines = [
            m("beating", 0),
            m("booting", 950),
            m("never-booted", 100),
            m("hung", 0),
            m("me", 0),
        ];
        let beating = HashSet::from(["beating".to_string()]);
        let sorted = sort(&machines, &beating, Some("me"), 1000, 300);
        assert_eq!(sorted.silent, [m("never-booted", 100), m("hung", 0)]);
        assert_eq!(sorted.booting, 1);
    }

    #[test]
    fn the_launch_timeout_is_the_grace_of_a_new_machine() {
        let machines = [m("new", 700)];
        let none = HashSet::new();
        assert_eq!(sort(&machines, &none, None, 1000, 300).booting, 1);
        assert_eq!(sort(&machines, &none, None, 1001, 300).silent.len(), 1);
    }
}
