//! The modelled world as the real tick sees it: [`Farm`] and [`Cloud`] over one
//! [`World`] behind a lock (the tick takes `&self`; nothing else runs meanwhile).

use std::sync::{Mutex, MutexGuard};

use async_trait::async_trait;

use super::scenario::PIPELINE;
use super::world::{ms, CellState, Ms, World};
use crate::cloud::{Cloud, CloudError, Machine};
use crate::ledger::{EventKind, PipelineLoad};
use crate::mitosis::{Cells, Farm};

pub struct Sim {
    world: Mutex<World>,
    /// The pool's lock, held only inside one tick: the simulator runs one decider at a
    /// time, so a held lock here is a bug.
    locked: Mutex<bool>,
    /// The round, as Redis keeps it: claimed until then.
    round_until: Mutex<Ms>,
    /// Deaths offered, and until when.
    deaths: Mutex<(u32, Ms)>,
}

impl Sim {
    pub fn new(world: World) -> Sim {
        Sim {
            world: Mutex::new(world),
            locked: Mutex::new(false),
            round_until: Mutex::new(0),
            deaths: Mutex::new((0, 0)),
        }
    }

    pub fn world(&self) -> MutexGuard<'_, World> {
        self.world
            .lock()
            .expect("never poisoned: the simulator is one thread")
    }

    pub fn into_world(self) -> World {
        self.world.into_inner().expect("never poisoned")
    }
}

fn cell_index(world: &World, id: &str) -> Option<u32> {
    let c: u32 = id.strip_prefix('c')?.parse().ok()?;
    ((c as usize) < world.cells.len()).then_some(c)
}

#[async_trait]
impl Farm for Sim {
    async fn lock(&self, _: &str) -> anyhow::Result<bool> {
        let mut locked = self.locked.lock().expect("never poisoned");
        Ok(!std::mem::replace(&mut *locked, true))
    }

    async fn unlock(&self, _: &str) -> anyhow::Result<()> {
        *self.locked.lock().expect("never poisoned") = false;
        Ok(())
    }

    async fn claim_round(&self, _: &str, ms_: u64) -> anyhow::Result<bool> {
        let now = self.world().now;
        let mut until = self.round_until.lock().expect("never poisoned");
        if now < *until {
            return Ok(false);
        }
        *until = now + ms_;
        Ok(true)
    }

    async fn offer_deaths(&self, _: &str, n: u32, ms_: u64) -> anyhow::Result<()> {
        let now = self.world().now;
        *self.deaths.lock().expect("never poisoned") = (n, now + ms_);
        Ok(())
    }

    async fn take_deaths(&self, _: &[String]) -> anyhow::Result<bool> {
        let now = self.world().now;
        let mut deaths = self.deaths.lock().expect("never poisoned");
        if deaths.0 == 0 || now >= deaths.1 {
            return Ok(false);
        }
        deaths.0 -= 1;
        Ok(true)
    }

    async fn serving(&self, _: &str) -> anyhow::Result<u64> {
        Ok(u64::from(self.world().alive_registered))
    }

    async fn ready(&self, _: &str) -> anyhow::Result<u64> {
        Ok(self.world().queue.len() as u64)
    }

    async fn load(&self, _: &str) -> anyhow::Result<Vec<PipelineLoad>> {
        let (running, estimated_secs, unknown) = self.world().load();
        Ok(vec![PipelineLoad {
            pipeline: PIPELINE.into(),
            running,
            queued: self.world().queue.len() as u64,
            estimated_secs,
            probed_secs: 0.0,
            unknown,
        }])
    }

    async fn cells(&self, _: &str) -> anyhow::Result<Cells> {
        let w = self.world();
        let mut cells = Cells {
            alive: w.alive_registered,
            machines: std::collections::HashSet::with_capacity(w.live.len()),
            ..Cells::default()
        };
        for &c in &w.live {
            let cell = &w.cells[c as usize];
            // Booting cells do not beat yet; a leaving cell beats, but as leaving.
            let dying = match cell.state {
                CellState::Booting | CellState::Gone => continue,
                CellState::Alive => !cell.registered,
                CellState::Draining => true,
                CellState::Leaving => false,
            };
            cells.machines.insert(cell.id.clone());
            if dying {
                cells.draining.insert(cell.id.clone());
            }
        }
        Ok(cells)
    }

    async fn pending(&self, _: &str) -> anyhow::Result<u32> {
        Ok(self.world().pending_count())
    }

    async fn cooling(&self, _: &str) -> anyhow::Result<bool> {
        let w = self.world();
        Ok(w.now < w.cooling_until)
    }

    async fn launch_token(&self, pool: &str) -> anyhow::Result<String> {
        let mut w = self.world();
        w.launch_tokens += 1;
        Ok(format!("simulate-{pool}-{}", w.launch_tokens))
    }

    async fn launched(
        &self,
        _: &str,
        ids: &[String],
        timeout_secs: u64,
        cooldown_secs: u64,
    ) -> anyhow::Result<()> {
        let mut w = self.world();
        let expires = w.now + ms(timeout_secs as f64);
        for id in ids {
            let c = cell_index(&w, id).ok_or_else(|| anyhow::anyhow!("no cell {id}"))?;
            w.pending.push((c, expires));
        }
        w.cooling_until = w.now + ms(cooldown_secs as f64);
        Ok(())
    }

    async fn deregister(&self, cell_id: &str) -> anyhow::Result<()> {
        let mut w = self.world();
        let c = cell_index(&w, cell_id).ok_or_else(|| anyhow::anyhow!("no cell {cell_id}"))?;
        let cell = &mut w.cells[c as usize];
        if cell.state == CellState::Alive && cell.registered {
            cell.registered = false;
            w.alive_registered -= 1;
        }
        Ok(())
    }

    async fn spent_today(&self, _: &str, _: f64, _: u32) -> anyhow::Result<f64> {
        // The world bills each instance at its market's price.
        Ok(self.world().spent_today())
    }

    async fn record(&self, _: &str, _: EventKind, _: &str, _: u32, _: &str) -> anyhow::Result<()> {
        // Launches and deaths are counted where they happen (the cloud, the engine).
        Ok(())
    }

    fn now(&self) -> i64 {
        (self.world().now / 1000) as i64
    }
}

#[async_trait]
impl Cloud for Sim {
    async fn launch(&self, _: &str, n: u32, _: &str) -> Result<Vec<String>, CloudError> {
        Ok(self.world().launch_cells(n))
    }

    async fn machines(&self, _: &str) -> Result<Option<Vec<Machine>>, CloudError> {
        let w = self.world();
        let machines = w.live.iter().map(|&c| {
            let cell = &w.cells[c as usize];
            Machine {
                id: cell.id.clone(),
                // The instance is running from then; before, it is booting.
                launched_at: (cell.running_at / 1000) as i64,
            }
        });
        Ok(Some(machines.collect()))
    }

    async fn terminate(&self, ids: &[String]) -> Result<(), CloudError> {
        let mut w = self.world();
        for id in ids {
            if let Some(c) = cell_index(&w, id) {
                w.terminate(c);
            }
        }
        Ok(())
    }

    async fn terminate_self(&self) -> Result<(), CloudError> {
        // The engine terminates the cell that decided to die: this call has no cell id.
        Ok(())
    }
}
