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
use crate::session::Held;
use crate::switch::Switch;
use crate::tx::{self, Batch, TxScratch};

/// One TX queue pair of one partition, as the poller sees it.
pub struct Job {
    pub partition: Arc<Partition>,
    pub switch: Arc<Switch>,
    pub pair: usize,
    /// Held by whoever runs a batch (worker or poller); the device's stop_vring waits on it.
    pub scratch: Mutex<TxScratch>,
    /// True while the queue is in the poller's hands (its inbox or its active list). A kick
    /// hands the queue over only when it flips this from false.
    scheduled: AtomicBool,
}

impl Job {
    pub fn new(partition: Arc<Partition>, switch: Arc<Switch>, pair: usize) -> Arc<Self> {
        Arc::new(Job {
            partition,
            switch,
            pair,
            scratch: Mutex::new(TxScratch::default()),
            scheduled: AtomicBool::new(false),
        })
    }

    pub fn lock_scratch(&self) -> MutexGuard<'_, TxScratch> {
        self.scratch.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn batch(&self, held: &mut Option<Held>) -> Batch {
        let Some(h) = Held::refresh(held, &self.partition) else {
            return Batch::Stopped;
        };
        let mut s = self.lock_scratch();
        tx::tx_batch(&self.switch, &self.partition, h, self.pair, &mut s)
    }

    /// Gives the queue back to kicks. True when it must stay with the poller after all: chains
    /// arrived while re-arming and no kick has handed it over again meanwhile.
    fn release(&self) -> bool {
        self.lock_scratch().release();
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

/// A queue in the poller's hands.
struct Entry {
    job: Arc<Job>,
    /// When it was first seen empty in the current idle stretch.
    idle_since: Option<Instant>,
    /// Its partition's session and memory, kept across batches; between batches its
    /// [`Held::still_idle`] is the cheap re-check.
    held: Option<Held>,
}

/// Idle rounds between clock reads: a round of idle probes takes nanoseconds, a clock read
/// tens of them, and the window is tens of microseconds.
const CLOCK_EVERY: u32 = 32;

fn run(shared: &Shared, window: Duration) {
    let mut active: Vec<Entry> = Vec::new();
    let mut round: u32 = 0;
    loop {
        if active.is_empty() || shared.pending.load(Ordering::Acquire) {
            let mut inbox = shared.inbox.lock().unwrap_or_else(|e| e.into_inner());
            while inbox.is_empty() && active.is_empty() {
                inbox = shared.wake.wait(inbox).unwrap_or_else(|e| e.into_inner());
            }
            active.extend(inbox.drain(..).map(|job| Entry {
                job,
                idle_since: None,
                held: None,
            }));
            shared.pending.store(false, Ordering::Release);
        }
        round = round.wrapping_add(1);
        let now = round.is_multiple_of(CLOCK_EVERY).then(Instant::now);
        active.retain_mut(|e| {
            let qidx = 2 * e.job.pair + 1;
            let idle = match &e.held {
                Some(h) if h.still_idle(qidx) => true,
                _ => match e.job.batch(&mut e.held) {
                    // A throttled queue still has chains: it stays, as a busy one.
                    Batch::Sent(_) | Batch::Throttled(_) => {
                        e.idle_since = None;
                        return true;
                    }
                    Batch::Empty => true,
                    // Not running: back to kicks (a restarted ring kicks, or re-arming finds
                    // its work).
                    Batch::Stopped => false,
                },
            };
            if idle {
                let Some(t) = now else { return true };
                if t.duration_since(*e.idle_since.get_or_insert(t)) < window {
                    return true;
                }
            }
            // Stopped, or idle for the whole window: back to kicks.
            e.idle_since = None;
            e.held = None;
            e.job.release()
        });
        std::hint::spin_loop();
    }
}
