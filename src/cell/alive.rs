//! A cell's first beat: the `alive` event that starts its machine's bill, naming the
//! machine (instance id, type, AZ and lifecycle from instance metadata on EC2) and its
//! prices from the pool's config (`price_per_hour`, `on_demand_per_hour`).

use super::Cell;
use crate::ledger::Machine;

impl Cell {
    /// Records that the cell is alive on its machine: once, under the first of its
    /// pools with a price (a machine serving several pools is billed once), at that
    /// pool's prices.
    pub(super) async fn record_alive(self: std::sync::Arc<Self>) {
        let machine = self.machine_facts().await;
        let config = self.config();
        let priced = self
            .pools
            .iter()
            .find(|p| {
                config
                    .pools
                    .get(*p)
                    .is_some_and(|p| p.price_per_hour.is_some())
            })
            .or(self.pools.first());
        let Some(pool) = priced else {
            return;
        };
        let prices = config.pools.get(pool);
        let machine = Machine {
            price_per_hour: prices.and_then(|p| p.price_per_hour),
            on_demand_per_hour: prices.and_then(|p| p.on_demand_per_hour),
            ..machine
        };
        let ledger = &self.systems.ledger;
        if let Err(e) = ledger.record_alive(pool, &self.cell_id, &machine).await {
            tracing::warn!(error = %e, pool, "cannot record that the cell is alive");
        }
    }

    /// What instance metadata says of this machine; off EC2, only its launch id.
    async fn machine_facts(&self) -> Machine {
        let mut machine = Machine {
            instance_id: self.machine.clone(),
            ..Machine::default()
        };
        let Some(metadata) = &self.metadata else {
            return machine;
        };
        match metadata.instance().await {
            Ok(i) => {
                machine.instance_id = Some(i.instance_id);
                machine.instance_type = Some(i.instance_type);
                machine.az = Some(i.availability_zone);
            }
            Err(e) => tracing::warn!(error = %e, "cannot read the instance's identity"),
        }
        match metadata.get("instance-life-cycle").await {
            Ok(lifecycle) => machine.lifecycle = lifecycle,
            Err(e) => tracing::warn!(error = %e, "cannot read the instance's lifecycle"),
        }
        machine
    }
}
