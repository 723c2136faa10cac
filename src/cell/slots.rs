//! Job slots: how many jobs a cell runs at once and with how many FFmpeg threads each,
//! decided in one place from the config and the machine's vCPUs, and resized by a live
//! config.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};

use crate::config::Config;

/// The vCPUs this process may use.
pub fn vcpus() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// The slots of a cell.
///
/// A slot is one FFmpeg run at a time (an *encoder* permit). A job holds an encoder only
/// for its FFmpeg steps: its claim, download and source checks run before it takes
/// one, its output checks, upload and commit after it lets it go. So one job's I/O
/// overlaps another's encode, and the CPU the slots are sized for is not left idle
/// while a job waits on S3 or the ledger.
///
/// A job is taken only when an encoder will be free for it (see the session): one is
/// free now and no job taken earlier waits for it, or a running encode is within
/// [`LOOKAHEAD`] of its end. Besides the slots' encodes, a cell holds at most as many
/// jobs again (its [`Slots::acquire`] permits), before or after their encodes.
pub struct Slots {
    /// One permit per job the cell holds: twice its slots.
    jobs: Arc<Semaphore>,
    /// One permit per FFmpeg run at once: the slots proper.
    encoders: Arc<Semaphore>,
    /// Jobs taken that have not yet got an encoder.
    waiting: Arc<AtomicUsize>,
    /// Told whenever an encoder is let go.
    freed: Arc<Notify>,
    count: AtomicUsize,
    threads: AtomicUsize,
}

/// How near its end a running encode must be for the next job to be taken for its slot
/// (and downloaded while it finishes): long enough to hide a download of a few hundred
/// MiB, short enough that a job taken ahead is not backlog a neighbour could have run.
pub const LOOKAHEAD: std::time::Duration = std::time::Duration::from_secs(3);

/// A job's place in line for an encoder, from when it is taken until it gets one.
pub struct Turn {
    waiting: Arc<AtomicUsize>,
    encoders: Arc<Semaphore>,
    freed: Arc<Notify>,
    queued: std::sync::atomic::AtomicBool,
}

/// An encoder held for a job's FFmpeg steps; dropping it frees the slot.
pub struct Encoder {
    _permit: OwnedSemaphorePermit,
    freed: Arc<Notify>,
}

impl Drop for Encoder {
    fn drop(&mut self) {
        self.freed.notify_waiters();
    }
}

impl Turn {
    /// Waits for an encoder; `None` when `cancel` fires first.
    pub async fn encoder(&self, cancel: &tokio_util::sync::CancellationToken) -> Option<Encoder> {
        let permit = tokio::select! {
            p = self.encoders.clone().acquire_owned() => p.expect("the encoder semaphore is never closed"),
            _ = cancel.cancelled() => return None,
        };
        self.leave();
        Some(Encoder {
            _permit: permit,
            freed: self.freed.clone(),
        })
    }

    /// Leaves the line, once.
    fn leave(&self) {
        if self.queued.swap(false, Ordering::SeqCst) {
            self.waiting.fetch_sub(1, Ordering::SeqCst);
            self.freed.notify_waiters();
        }
    }
}

impl Drop for Turn {
    fn drop(&mut self) {
        self.leave();
    }
}

impl Slots {
    pub fn new(config: &Config) -> Slots {
        Slots::with(
            config.cell.slots_for(vcpus()),
            config.cell.threads_for(vcpus()),
        )
    }

    fn with(count: usize, threads: usize) -> Slots {
        Slots {
            jobs: Arc::new(Semaphore::new(2 * count)),
            encoders: Arc::new(Semaphore::new(count)),
            waiting: Arc::new(AtomicUsize::new(0)),
            freed: Arc::new(Notify::new()),
            count: AtomicUsize::new(count),
            threads: AtomicUsize::new(threads),
        }
    }

    pub fn count(&self) -> usize {
        self.count.load(Ordering::SeqCst)
    }

    /// FFmpeg threads per job.
    pub fn threads(&self) -> usize {
        self.threads.load(Ordering::SeqCst)
    }

    /// Waits for room to hold one more job.
    pub async fn acquire(&self) -> OwnedSemaphorePermit {
        self.jobs
            .clone()
            .acquire_owned()
            .await
            .expect("the job semaphore is never closed")
    }

    /// Waits until a job taken now would find an encoder: one is free that no job taken
    /// earlier waits for, or `ending` encodes end within [`LOOKAHEAD`] and fewer jobs
    /// than that wait. `ending` is asked again whenever an encoder is let go, and every
    /// [`AHEAD_POLL`] in between.
    pub async fn startable(&self, ending: impl Fn() -> usize) {
        loop {
            let freed = self.freed.notified();
            let waiting = self.waiting.load(Ordering::SeqCst);
            if waiting < self.encoders.available_permits() + ending() {
                return;
            }
            tokio::select! {
                _ = freed => {}
                _ = tokio::time::sleep(AHEAD_POLL) => {}
            }
        }
    }

    /// Puts a job just taken in line for an encoder.
    pub fn turn(&self) -> Turn {
        self.waiting.fetch_add(1, Ordering::SeqCst);
        Turn {
            waiting: self.waiting.clone(),
            encoders: self.encoders.clone(),
            freed: self.freed.clone(),
            queued: std::sync::atomic::AtomicBool::new(true),
        }
    }

    /// Waits until every job has ended.
    pub async fn wait_idle(&self) {
        let all = u32::try_from(2 * self.count()).unwrap_or(u32::MAX);
        drop(self.jobs.acquire_many(all).await);
    }

    /// Follows a new config: new permits at once, fewer as jobs end. Returns the count.
    pub fn resize(&self, config: &Config) -> usize {
        let slots = config.cell.slots_for(vcpus());
        self.threads
            .store(config.cell.threads_for(vcpus()), Ordering::SeqCst);
        let old = self.count.swap(slots, Ordering::SeqCst);
        for (permits, per_slot) in [(&self.encoders, 1), (&self.jobs, 2)] {
            if slots > old {
                permits.add_permits(per_slot * (slots - old));
            } else if slots < old {
                let permits = permits.clone();
                let surplus = (per_slot * (old - slots)) as u32;
                tokio::spawn(async move {
                    if let Ok(p) = permits.acquire_many_owned(surplus).await {
                        p.forget();
                    }
                });
            }
        }
        slots
    }
}

/// How often a cell whose slots are all encoding asks again whether one nears its end.
const AHEAD_POLL: std::time::Duration = std::time::Duration::from_millis(100);

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;
    use tokio_util::sync::CancellationToken;

    /// True when `startable` returns within a moment with `ending` encodes near their end.
    async fn startable(slots: &Slots, ending: usize) -> bool {
        tokio::time::timeout(Duration::from_millis(300), slots.startable(|| ending))
            .await
            .is_ok()
    }

    /// Property: no more encodes run than there are slots, and a job is taken only for an
    /// encoder that is free and unclaimed, or for an encode about to end, one job each.
    #[tokio::test]
    async fn a_job_is_taken_only_for_an_encoder_it_will_find() {
        let never = CancellationToken::new();
        let slots = Slots::with(2, 1);
        assert!(startable(&slots, 0).await, "two free encoders");
        let (a, b) = (slots.turn(), slots.turn());
        assert!(!startable(&slots, 0).await, "both free encoders spoken for");
        let ea = a.encoder(&never).await.unwrap();
        let eb = b.encoder(&never).await.unwrap();
        assert!(!startable(&slots, 0).await, "both encoding, neither ending");
        assert!(startable(&slots, 1).await, "one encode about to end");
        let c = slots.turn();
        assert!(
            !startable(&slots, 1).await,
            "that encode already has its successor"
        );
        assert!(startable(&slots, 2).await);
        let third = tokio::time::timeout(Duration::from_millis(200), c.encoder(&never)).await;
        assert!(third.is_err(), "a third encode waits for a slot");
        drop(ea);
        let ec = c.encoder(&never).await.expect("a freed encoder is taken");
        let cancel = CancellationToken::new();
        cancel.cancel();
        let d = slots.turn();
        assert!(
            d.encoder(&cancel).await.is_none(),
            "a cancelled wait gives up"
        );
        drop(d);
        assert!(
            !startable(&slots, 0).await,
            "a job that left the line no longer waits"
        );
        drop((eb, ec));
        assert!(startable(&slots, 0).await);
    }

    /// Property: a cell holds at most twice its slots in jobs, and waits for all of them
    /// when it stops.
    #[tokio::test]
    async fn a_cell_holds_at_most_twice_its_slots_in_jobs() {
        let slots = Slots::with(2, 1);
        let held: Vec<_> = futures_util::future::join_all((0..4).map(|_| slots.acquire())).await;
        let fifth = tokio::time::timeout(Duration::from_millis(200), slots.acquire()).await;
        assert!(fifth.is_err());
        let idle = tokio::time::timeout(Duration::from_millis(200), slots.wait_idle()).await;
        assert!(idle.is_err(), "jobs still held");
        drop(held);
        slots.wait_idle().await;
    }
}
