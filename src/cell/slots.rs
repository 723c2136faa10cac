//! Job slots: how many jobs a cell runs at once and with how many FFmpeg threads each,
//! decided in one place from the config and the machine's vCPUs, and resized by a live
//! config.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::config::Config;

/// The vCPUs this process may use.
pub fn vcpus() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// The slots of a cell: one semaphore permit per free slot. A slot takes a message only
/// once it holds a permit, so the cell never holds a message it cannot start (see the
/// session).
pub struct Slots {
    permits: Arc<Semaphore>,
    count: AtomicUsize,
    threads: AtomicUsize,
}

impl Slots {
    pub fn new(config: &Config) -> Slots {
        let count = config.cell.slots_for(vcpus());
        Slots {
            permits: Arc::new(Semaphore::new(count)),
            count: AtomicUsize::new(count),
            threads: AtomicUsize::new(config.cell.threads_for(vcpus())),
        }
    }

    pub fn count(&self) -> usize {
        self.count.load(Ordering::SeqCst)
    }

    /// FFmpeg threads per job.
    pub fn threads(&self) -> usize {
        self.threads.load(Ordering::SeqCst)
    }

    /// Waits for a free slot.
    pub async fn acquire(&self) -> OwnedSemaphorePermit {
        self.permits
            .clone()
            .acquire_owned()
            .await
            .expect("the slot semaphore is never closed")
    }

    /// Waits until every slot is free: every job has ended.
    pub async fn wait_idle(&self) {
        let all = u32::try_from(self.count()).unwrap_or(u32::MAX);
        drop(self.permits.acquire_many(all).await);
    }

    /// Follows a new config: new permits at once, fewer as jobs end. Returns the count.
    pub fn resize(&self, config: &Config) -> usize {
        let slots = config.cell.slots_for(vcpus());
        self.threads
            .store(config.cell.threads_for(vcpus()), Ordering::SeqCst);
        let old = self.count.swap(slots, Ordering::SeqCst);
        if slots > old {
            self.permits.add_permits(slots - old);
        } else if slots < old {
            let permits = self.permits.clone();
            let surplus = (old - slots) as u32;
            tokio::spawn(async move {
                if let Ok(p) = permits.acquire_many_owned(surplus).await {
                    p.forget();
                }
            });
        }
        slots
    }
}
