//! Bounded busy-polling: one thread serves every TX queue that has work, round-robin, one batch
//! per queue per turn (DPDK's lcore loop), so partitions sharing a core never wait on each other
//! through the scheduler and a frame is picked up without a wakeup. A kick hands its queue to
//! the poller; a queue that stays empty for the poll window goes back to kicks, and with nothing
//! to poll the thread sleeps. Idle partitions cost nothing, as in the event-driven mode.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread;
use std::time::{Duration, Instant};

use crate::partition::Partition;
use crate::switch::Switch;
use crate::tx::{self, Batch, TxScratch};

/// One TX queue pair of one partition, as the poller sees it.
pub struct Job {
    pub partition: Arc<Partition>,
    pub switch: Arc<Switch>,
    pub pair: usize,
    /// Shared with the device, whose stop_vring waits on it for a batch in flight.
    pub scratch: Arc<Mutex<TxScratch>>,
    /// True while the queue is in the poller's hands (its inbox or its active list). A kick
    /// hands the queue over only when it flips this from false.
    scheduled: AtomicBool,
}

impl Job {
    pub fn new(
        partition: Arc<Partition>,
        switch: Arc<Switch>,
        pair: usize,
        scratch: Arc<Mutex<TxScratch>>,
    ) -> Arc<Self> {
        Arc::new(Job {
            partition,
            switch,
            pair,
            scratch,
            scheduled: AtomicBool::new(false),
        })
    }

    fn lock_scratch(&self) -> MutexGuard<'_, TxScratch> {
        self.scratch.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn batch(&self) -> Batch {
        let Some(session) = self.partition.session() else {
            return Batch::Stopped;
        };
        let mut s = self.lock_scratch();
        tx::tx_batch(&self.switch, &self.partition, &session, self.pair, &mut s)
    }

    /// Gives the queue back to kicks. True when it must stay with the poller after all: chains
    /// arrived while re-arming and no kick has handed it over again meanwhile.
    fn release(&self) -> bool {
        self.scheduled.store(false, Ordering::SeqCst);
        let arrived = self
            .partition
            .session()
            .and_then(|s| tx::rearm(&s, self.pair))
            == Some(true);
        // A kick that came after the store has already queued it again; keep one copy only.
        arrived && !self.scheduled.swap(true, Ordering::SeqCst)
    }
}

struct Shared {
    inbox: Mutex<Vec<Arc<Job>>>,
    wake: Condvar,
    /// Set when the inbox is non-empty, so the hot loop checks it without taking the lock.
    pending: AtomicBool,
}

/// Handle to the polling thread.
pub struct Poller {
    shared: Arc<Shared>,
}

impl Poller {
    /// Starts the polling thread. `window` is how long a queue is polled after it runs dry.
    pub fn spawn(window: Duration) -> std::io::Result<Arc<Self>> {
        let shared = Arc::new(Shared {
            inbox: Mutex::new(Vec::new()),
            wake: Condvar::new(),
            pending: AtomicBool::new(false),
        });
        let s = shared.clone();
        thread::Builder::new()
            .name("poller".into())
            .spawn(move || run(&s, window))?;
        Ok(Arc::new(Poller { shared }))
    }

    /// A kick on `job`'s queue: hand it to the poller unless it already has it.
    pub fn kick(&self, job: &Arc<Job>) {
        if job.scheduled.swap(true, Ordering::SeqCst) {
            return;
        }
        let mut inbox = self.shared.inbox.lock().unwrap_or_else(|e| e.into_inner());
        inbox.push(job.clone());
        self.shared.pending.store(true, Ordering::Release);
        self.shared.wake.notify_one();
    }
}

fn run(shared: &Shared, window: Duration) {
    // (job, when it was first seen empty in the current idle stretch)
    let mut active: Vec<(Arc<Job>, Option<Instant>)> = Vec::new();
    loop {
        if active.is_empty() || shared.pending.load(Ordering::Acquire) {
            let mut inbox = shared.inbox.lock().unwrap_or_else(|e| e.into_inner());
            while inbox.is_empty() && active.is_empty() {
                inbox = shared.wake.wait(inbox).unwrap_or_else(|e| e.into_inner());
            }
            active.extend(inbox.drain(..).map(|j| (j, None)));
            shared.pending.store(false, Ordering::Release);
        }
        let mut now: Option<Instant> = None;
        active.retain_mut(|(job, idle_since)| match job.batch() {
            Batch::Sent(_) => {
                *idle_since = None;
                true
            }
            Batch::Empty => {
                let t = *now.get_or_insert_with(Instant::now);
                let since = *idle_since.get_or_insert(t);
                if t.duration_since(since) < window {
                    return true;
                }
                *idle_since = None;
                job.release()
            }
            // Not running: back to kicks (a restarted ring kicks, or re-arming finds its work).
            Batch::Stopped => {
                *idle_since = None;
                job.release()
            }
        });
        std::hint::spin_loop();
    }
}
