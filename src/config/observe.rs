//! The `[dashboard]` and `[alerts]` tables: how the farm is watched.

use serde::Deserialize;

/// `[dashboard]`: `cellfarm dashboard`'s own settings.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DashboardConfig {
    /// A token every request must carry (`Authorization: Bearer <token>`, or
    /// `?token=<token>` for a browser); none: the page is open to whoever reaches it,
    /// which by default is only this machine (it binds to loopback).
    pub token: Option<String>,
}

/// `[alerts]`: when [`crate::alerts::evaluate`] raises each alert. Defaults in
/// [`AlertsConfig::default`], each with its reason.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AlertsConfig {
    /// Failed and dead jobs over finished jobs in the last hour above this (0 to 1).
    pub failure_rate: f64,
    /// Finished jobs in the last hour below which no failure rate is judged.
    pub failure_min_jobs: u64,
    /// A running job is slow when its pace (work done per second, by its estimate) is
    /// below this share of its pipeline's usual one.
    pub slow_ratio: f64,
    /// Seconds a job runs before its pace is judged (the first seconds are download
    /// and probe).
    pub slow_after_secs: f64,
    /// Share of a pool's `budget_per_day` spent today that raises an alert (0 to 1).
    pub budget_share: f64,
    /// Spot interruptions in the last hour above which an alert is raised.
    pub interruptions_per_hour: u64,
    /// Seconds a pool's backlog may grow while its cells stay as they are before the
    /// pool counts as not scaling.
    pub not_scaling_secs: u64,
}

impl Default for AlertsConfig {
    fn default() -> AlertsConfig {
        AlertsConfig {
            // One job in five failing is beyond bad uploads: a pipeline or a cell is broken.
            failure_rate: 0.2,
            // A handful of jobs says nothing about a rate.
            failure_min_jobs: 10,
            // Half the usual pace: a cell far slower than its siblings (a noisy
            // neighbour, a throttled burstable instance) or media far costlier than
            // its pipeline's cost_factor.
            slow_ratio: 0.5,
            slow_after_secs: 30.0,
            // Warn before launches stop at the budget, not when they do.
            budget_share: 0.9,
            // A few an hour is spot's normal churn; more says a market is being reclaimed.
            interruptions_per_hour: 5,
            // Three minutes: longer than a launch takes to show up as pending.
            not_scaling_secs: 180,
        }
    }
}
