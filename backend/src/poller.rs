//! Bounded busy-polling: one thread serves every TX queue that has work, round-robin, one batch
//! per queue per turn (DPDK's lcore loop), so partitions sharing a core never wait on each other
//! through the scheduler and a frame is picked up without a wakeup. A kick hands its queue to
//! the poller; a queue that stays empty for the poll window goes back to kicks, and with nothing
//! to poll the thread sleeps. Idle partitions cost nothing, as in the event-driven mode.
//!
//! `min_tx_rate` is honoured here, where partitions contend for one thread: a queue whose
//! partition is below its guaranteed rate takes more batches in its turn (see `turn`), so it
//! gets its rate first and an equal turn at what is left, as a NIC's scheduler gives a VF its
//! minimum bandwidth and shares the rest.

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

    /// The queue's turn in a round: one batch, more while its partition is under its
    /// `min_tx_rate` (one lock-free load when it has none).
    fn turn(&self, held: &mut Option<Held>) -> Batch {
        let min = &self.partition.guarantee;
        if !min.limited() {
            return self.batch(held);
        }
        turn(|| self.batch(held), || min.budget(Instant::now()).is_ok())
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

/// Batches a queue may take in one turn beyond its first while its partition is below its
/// `min_tx_rate`: enough to catch up with a round of many busy queues, few enough that one
/// turn stays short for the others.
const MAX_EXTRA: u32 = 16;

/// One queue's turn: a batch and, while it sent something and `under_min` says the partition
/// is still below its guaranteed rate, up to [`MAX_EXTRA`] more. What the first batch found
/// decides what becomes of the queue; the extra ones only add to a busy queue's share.
fn turn(mut batch: impl FnMut() -> Batch, mut under_min: impl FnMut() -> bool) -> Batch {
    let first = batch();
    if matches!(first, Batch::Sent(_)) {
        for _ in 0..MAX_EXTRA {
            if !under_min() || !matches!(batch(), Batch::Sent(_)) {
                break;
            }
        }
    }
    first
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
                _ => match e.job.turn(&mut e.held) {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::shaper::Bucket;
    use std::cell::Cell;

    /// Queues that always have chains share one thread, on a fake clock where every batch
    /// takes `cost` and carries `bytes`. Returns each queue's rate in Mbit/s over `secs`.
    fn contend(min_mbps: &[u32], cost: Duration, bytes: u64, secs: u64) -> Vec<f64> {
        let t0 = Instant::now();
        let now = Cell::new(t0);
        let mut buckets: Vec<Option<Bucket>> = min_mbps
            .iter()
            .map(|&m| (m != 0).then(|| Bucket::new(u64::from(m) * 125_000)))
            .collect();
        let mut sent = vec![0u64; min_mbps.len()];
        let end = t0 + Duration::from_secs(secs);
        while now.get() < end {
            for (q, bucket) in buckets.iter_mut().enumerate() {
                let bucket = std::cell::RefCell::new(bucket.as_mut());
                let batch = || {
                    now.set(now.get() + cost);
                    sent[q] += bytes;
                    if let Some(b) = bucket.borrow_mut().as_mut() {
                        b.charge(bytes);
                    }
                    Batch::Sent(32)
                };
                let under_min = || match bucket.borrow_mut().as_mut() {
                    Some(b) => b.budget(now.get()).is_ok(),
                    None => false,
                };
                let first = turn(batch, under_min);
                assert!(matches!(first, Batch::Sent(32)));
            }
        }
        let secs = (now.get() - t0).as_secs_f64();
        sent.iter().map(|&b| b as f64 * 8.0 / secs / 1e6).collect()
    }

    // 32 frames of 1514 bytes per batch, 400 us each: the thread moves about 969 Mbit/s.
    const BYTES: u64 = 32 * 1514;
    const COST: Duration = Duration::from_micros(400);

    #[test]
    fn without_min_rates_busy_queues_share_the_thread_equally() {
        let r = contend(&[0, 0, 0, 0], COST, BYTES, 2);
        let total: f64 = r.iter().sum();
        assert!((900.0..1000.0).contains(&total), "{r:?}");
        for x in &r {
            assert!((x - total / 4.0).abs() < 1.0, "{r:?}");
        }
    }

    #[test]
    fn a_min_rate_above_the_equal_share_is_met_and_the_rest_is_shared() {
        let r = contend(&[600, 0, 0, 0], COST, BYTES, 2);
        let total: f64 = r.iter().sum();
        assert!(r[0] >= 600.0 * 0.98, "guaranteed 600: {r:?}");
        // Not much more than its guarantee: the rest goes to the others, equally.
        assert!(r[0] <= 600.0 * 1.05, "{r:?}");
        let rest = (total - r[0]) / 3.0;
        for x in &r[1..] {
            assert!((x - rest).abs() < 0.05 * rest, "{r:?}");
        }
    }

    #[test]
    fn a_min_rate_below_the_equal_share_changes_nothing() {
        let r = contend(&[100, 0, 0, 0], COST, BYTES, 2);
        let total: f64 = r.iter().sum();
        for x in &r {
            assert!((x - total / 4.0).abs() < 0.05 * total / 4.0, "{r:?}");
        }
    }

    #[test]
    fn two_guarantees_that_fit_are_both_met() {
        let r = contend(&[400, 300, 0, 0, 0, 0], COST, BYTES, 2);
        assert!(r[0] >= 400.0 * 0.98 && r[1] >= 300.0 * 0.98, "{r:?}");
    }

    #[test]
    fn extra_batches_stop_when_the_queue_runs_dry() {
        let mut left = 3;
        let mut batches = 0;
        let first = turn(
            || {
                batches += 1;
                if left == 0 {
                    return Batch::Empty;
                }
                left -= 1;
                Batch::Sent(1)
            },
            || true,
        );
        assert!(matches!(first, Batch::Sent(1)));
        // Three that sent, one that found the ring empty, none after.
        assert_eq!(batches, 4);
        let mut batches = 0;
        let first = turn(
            || {
                batches += 1;
                Batch::Empty
            },
            || true,
        );
        assert!(matches!(first, Batch::Empty));
        assert_eq!(batches, 1, "an empty queue gets no extra batches");
    }
}
