//! What the farm's machines cost, and what on-demand machines would have cost for the
//! same seconds: per-second billing with a 60-second minimum, as EC2 bills Linux
//! instances.
//!
//! A machine's stay runs from its cell's `alive` event (which carries its instance id,
//! type, AZ, lifecycle and prices, [`crate::ledger::Ledger::stays`]) to the first event
//! that ends that cell (death, interruption, rebalance, reap), or to now while it has
//! none. Billing is a pure function of the stays, so tests can check it to the cent.

use serde::Serialize;

/// EC2's minimum charge for a Linux instance, in seconds.
pub const MIN_BILLED_SECS: i64 = 60;

/// One machine's time on the farm.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Stay {
    pub pool: String,
    pub cell_id: String,
    pub instance_id: Option<String>,
    pub instance_type: Option<String>,
    pub az: Option<String>,
    /// `spot` or `on-demand`, where known.
    pub lifecycle: Option<String>,
    /// Seconds since the Unix epoch.
    pub start: i64,
    /// Seconds since the Unix epoch; `None` while the machine is still there.
    pub end: Option<i64>,
    /// Dollars an hour, where known.
    pub price_per_hour: Option<f64>,
    /// Dollars an hour the same machine costs on demand, where known.
    pub on_demand_per_hour: Option<f64>,
}

/// Dollars spent, and what on-demand would have cost for the same seconds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct Bill {
    /// Billed seconds of the machines with a price.
    pub instance_secs: i64,
    pub spend_usd: f64,
    /// The same seconds at on-demand prices (a machine without one at its own price).
    pub on_demand_usd: f64,
    /// `on_demand_usd - spend_usd`.
    pub savings_usd: f64,
}

/// Seconds of `stay` billed within `[since, now]`: whole seconds, and at least
/// [`MIN_BILLED_SECS`] for a stay that began in the window (the minimum is charged at
/// the start).
pub fn billed_secs(stay: &Stay, since: i64, now: i64) -> i64 {
    let end = stay.end.unwrap_or(now).min(now);
    if end < since {
        return 0;
    }
    if stay.start >= since {
        (end - stay.start).max(MIN_BILLED_SECS)
    } else {
        end - since
    }
}

/// What `stays` cost within `[since, now]`; a stay without a price is not billed.
pub fn bill(stays: &[Stay], since: i64, now: i64) -> Bill {
    let mut bill = Bill::default();
    for stay in stays {
        let Some(price) = stay.price_per_hour else {
            continue;
        };
        let secs = billed_secs(stay, since, now);
        let hours = secs as f64 / 3600.0;
        bill.instance_secs += secs;
        bill.spend_usd += hours * price;
        bill.on_demand_usd += hours * stay.on_demand_per_hour.unwrap_or(price);
    }
    bill.savings_usd = bill.on_demand_usd - bill.spend_usd;
    bill
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stay(start: i64, end: Option<i64>, price: Option<f64>, od: Option<f64>) -> Stay {
        Stay {
            pool: "p".into(),
            cell_id: "c".into(),
            instance_id: Some("i-1".into()),
            instance_type: Some("c5.large".into()),
            az: Some("us-east-1a".into()),
            lifecycle: Some("spot".into()),
            start,
            end,
            price_per_hour: price,
            on_demand_per_hour: od,
        }
    }

    #[test]
    fn per_second_billing_with_a_minute_minimum() {
        assert_eq!(
            billed_secs(&stay(1000, Some(1010), None, None), 0, 5000),
            60
        );
        assert_eq!(
            billed_secs(&stay(1000, Some(1100), None, None), 0, 5000),
            100
        );
        assert_eq!(
            billed_secs(&stay(1000, None, None, None), 0, 1500),
            500,
            "running"
        );
        // Began before the window: only its seconds within, and no minimum again.
        assert_eq!(
            billed_secs(&stay(1000, Some(2010), None, None), 2000, 5000),
            10
        );
        assert_eq!(
            billed_secs(&stay(1000, Some(1500), None, None), 2000, 5000),
            0
        );
    }

    #[test]
    fn spend_and_savings_are_exact() {
        let stays = [
            // One hour of spot at $0.036 against $0.085 on demand.
            stay(0, Some(3600), Some(0.036), Some(0.085)),
            // Ten seconds, billed as sixty, on demand: saves nothing.
            stay(100, Some(110), Some(0.36), None),
            // No price: not billed.
            stay(0, Some(3600), None, Some(1.0)),
        ];
        let b = bill(&stays, 0, 10_000);
        assert_eq!(b.instance_secs, 3660);
        assert!((b.spend_usd - 0.042).abs() < 1e-12, "{b:?}");
        assert!((b.on_demand_usd - 0.091).abs() < 1e-12, "{b:?}");
        assert!((b.savings_usd - 0.049).abs() < 1e-12, "{b:?}");
    }
}
