//! `max_tx_rate`: a token bucket per partition, applied the way a NIC's transmit scheduler
//! applies it. Frames over the rate are not dropped: they stay in the TX ring until tokens
//! accrue, so the driver sees back-pressure (a full ring) as it would on hardware.
//!
//! An event-driven worker that runs out of tokens returns and asks [`Alarm`] to kick its queue
//! again once tokens are back, so no thread sleeps on a throttled partition's behalf.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Condvar, Mutex, OnceLock};
use std::thread;
use std::time::{Duration, Instant};

use std::os::fd::{FromRawFd, IntoRawFd};

use vmm_sys_util::event::EventConsumer;
use vmm_sys_util::eventfd::EventFd;

/// A token bucket in bytes. `rate` is bytes per second; 0 means unlimited.
#[derive(Debug)]
pub struct Bucket {
    rate: u64,
    burst: u64,
    /// May go below zero: a batch is charged what it really sent, and the debt is paid back
    /// before the next one.
    tokens: i64,
    last: Option<Instant>,
}

/// The depth of the bucket: what may go at line speed after an idle spell. One 64 KiB GSO
/// frame must fit, and 20 ms worth: a forwarding thread that lost its CPU for that long (these
/// are shared machines) catches up instead of losing the rate.
fn burst_for(rate: u64) -> u64 {
    (rate / 50).max(64 * 1024)
}

impl Bucket {
    pub fn new(rate: u64) -> Bucket {
        let burst = burst_for(rate);
        Bucket {
            rate,
            burst,
            tokens: burst as i64,
            last: None,
        }
    }

    fn refill(&mut self, now: Instant) {
        let Some(last) = self.last else {
            self.last = Some(now);
            return;
        };
        let dt = now.saturating_duration_since(last).as_nanos();
        let rate = u128::from(self.rate);
        let add = dt.saturating_mul(rate) / 1_000_000_000;
        let room = (self.burst as i64).saturating_sub(self.tokens).max(0) as u128;
        if add >= room {
            // Full: time beyond it earns nothing.
            self.tokens = self.burst as i64;
            self.last = Some(now);
        } else if add > 0 {
            // Only the time that earned whole bytes is used up: a poller asking every
            // microsecond would otherwise lose the fractions (20% at 20 Mbit/s).
            self.tokens += add as i64;
            let used = (add * 1_000_000_000).div_ceil(rate).min(dt);
            self.last = Some(last + Duration::from_nanos(used as u64));
        }
    }

    /// Bytes that may go now, or how long until some may.
    pub fn budget(&mut self, now: Instant) -> Result<u64, Duration> {
        if self.rate == 0 {
            return Ok(u64::MAX);
        }
        self.refill(now);
        if self.tokens > 0 {
            return Ok(self.tokens as u64);
        }
        // Wait until the bucket holds a full frame again, so wakeups come per batch, not per byte.
        let need = (1 - self.tokens) as u128 + 1514;
        let nanos = need * 1_000_000_000 / u128::from(self.rate);
        Err(Duration::from_nanos(nanos.min(u128::from(u64::MAX)) as u64))
    }

    pub fn charge(&mut self, bytes: u64) {
        if self.rate != 0 {
            self.tokens = self
                .tokens
                .saturating_sub(bytes.min(i64::MAX as u64) as i64);
        }
    }
}

/// A partition's shaper: the rate in force (read per batch without a lock) and its bucket.
#[derive(Debug, Default)]
pub struct Shaper {
    /// Bytes per second; 0: unlimited (the default, which costs one load per batch).
    rate: AtomicU64,
    bucket: Mutex<Option<Bucket>>,
}

impl Shaper {
    /// `mbps` Mbit/s (0: unlimited), as `ip link set ... max_tx_rate` counts them.
    pub fn set_mbps(&self, mbps: u32) {
        let rate = u64::from(mbps) * 125_000;
        let mut b = self.bucket.lock().unwrap_or_else(|e| e.into_inner());
        *b = (rate != 0).then(|| Bucket::new(rate));
        self.rate.store(rate, Ordering::Release);
    }

    pub fn limited(&self) -> bool {
        self.rate.load(Ordering::Acquire) != 0
    }

    pub fn budget(&self, now: Instant) -> Result<u64, Duration> {
        match &mut *self.bucket.lock().unwrap_or_else(|e| e.into_inner()) {
            Some(b) => b.budget(now),
            None => Ok(u64::MAX),
        }
    }

    pub fn charge(&self, bytes: u64) {
        if let Some(b) = &mut *self.bucket.lock().unwrap_or_else(|e| e.into_inner()) {
            b.charge(bytes);
        }
    }
}

/// One thread for the whole daemon that kicks throttled queues when their tokens are back:
/// writing the queue's kick eventfd wakes its worker exactly as the driver's kick would.
pub struct Alarm {
    due: Mutex<BinaryHeap<Reverse<(Instant, u64, KickFd)>>>,
    wake: Condvar,
    seq: AtomicU64,
}

/// An eventfd held only to be written; ordered by nothing (the heap orders by time, sequence).
struct KickFd(EventFd);

impl PartialEq for KickFd {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}
impl Eq for KickFd {}
impl PartialOrd for KickFd {
    fn partial_cmp(&self, o: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(o))
    }
}
impl Ord for KickFd {
    fn cmp(&self, _: &Self) -> std::cmp::Ordering {
        std::cmp::Ordering::Equal
    }
}

impl Alarm {
    /// The daemon's alarm thread, started on first use.
    pub fn get() -> &'static Alarm {
        static ALARM: OnceLock<&'static Alarm> = OnceLock::new();
        ALARM.get_or_init(|| {
            let a: &'static Alarm = Box::leak(Box::new(Alarm {
                due: Mutex::new(BinaryHeap::new()),
                wake: Condvar::new(),
                seq: AtomicU64::new(0),
            }));
            if let Err(e) = thread::Builder::new()
                .name("shaper-alarm".into())
                .spawn(move || a.run())
            {
                log::error!("cannot start the rate limiter's alarm thread: {e}");
            }
            a
        })
    }

    /// Signals the queue's kick eventfd (`kick`, the worker's end of it) after `after`.
    pub fn kick_after(&self, kick: &EventConsumer, after: Duration) {
        let Ok(dup) = kick.try_clone() else {
            log::warn!("rate limiter: cannot hold a kick fd; the queue waits for the driver");
            return;
        };
        // SAFETY: `dup` is a fresh descriptor of an eventfd that this EventFd now owns alone.
        let fd = unsafe { EventFd::from_raw_fd(dup.into_raw_fd()) };
        let at = Instant::now() + after;
        let seq = self.seq.fetch_add(1, Ordering::Relaxed);
        self.due
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(Reverse((at, seq, KickFd(fd))));
        self.wake.notify_one();
    }

    fn run(&self) {
        let mut due = self.due.lock().unwrap_or_else(|e| e.into_inner());
        loop {
            let now = Instant::now();
            while due.peek().is_some_and(|Reverse((at, _, _))| *at <= now) {
                if let Some(Reverse((_, _, KickFd(fd)))) = due.pop() {
                    let _ = fd.write(1);
                }
            }
            due = match due.peek() {
                Some(Reverse((at, _, _))) => {
                    let wait = at.saturating_duration_since(now);
                    self.wake
                        .wait_timeout(due, wait)
                        .unwrap_or_else(|e| e.into_inner())
                        .0
                }
                None => self.wake.wait(due).unwrap_or_else(|e| e.into_inner()),
            };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bucket_passes_its_rate_over_time_with_a_fake_clock() {
        // 100 Mbit/s = 12.5 MB/s; 1514-byte frames, sent whenever the bucket allows.
        let rate = 100 * 125_000;
        let mut b = Bucket::new(rate);
        let t0 = Instant::now();
        let mut now = t0;
        let mut sent = 0u64;
        let end = t0 + Duration::from_secs(3);
        while now < end {
            match b.budget(now) {
                Ok(n) => {
                    // A batch of frames up to the budget, at least one.
                    let frames = (n / 1514).clamp(1, 64);
                    b.charge(frames * 1514);
                    sent += frames * 1514;
                }
                Err(wait) => now += wait,
            }
        }
        let secs = (now - t0).as_secs_f64();
        let got = sent as f64 / secs;
        let err = (got - rate as f64).abs() / rate as f64;
        // The initial burst (64 KiB) is the only excess: well within 1% over 3 s.
        assert!(err < 0.01, "{got} B/s vs {rate} B/s");
    }

    /// Asked every microsecond (a busy poller), the bucket still earns its whole rate.
    #[test]
    fn frequent_reads_lose_no_fractions() {
        let rate = 20 * 125_000;
        let mut b = Bucket::new(rate);
        let t0 = Instant::now();
        b.budget(t0).unwrap();
        // Deep in debt, so the second's earnings all show (none capped by the burst).
        b.charge(b.burst + 2 * rate);
        let mut now = t0;
        for _ in 0..1_000_000 {
            now += Duration::from_micros(1);
            let _ = b.budget(now);
        }
        // One second earned the rate's worth of tokens, less at most a byte of rounding.
        let earned = b.tokens + 2 * rate as i64;
        assert!((rate as i64 - earned).abs() <= 1, "{earned} of {rate}");
    }

    #[test]
    fn unlimited_and_idle_buckets() {
        let mut free = Bucket::new(0);
        assert_eq!(free.budget(Instant::now()), Ok(u64::MAX));
        let mut b = Bucket::new(125_000); // 1 Mbit/s
        let t = Instant::now();
        assert_eq!(b.budget(t), Ok(64 * 1024), "starts with a full burst");
        b.charge(64 * 1024 + 10_000);
        let wait = b.budget(t).unwrap_err();
        // 10,001 + 1514 bytes at 125,000 B/s.
        assert_eq!(wait.as_micros(), 92_120);
        // A long idle spell refills only up to the burst.
        assert_eq!(b.budget(t + Duration::from_secs(60)), Ok(64 * 1024));
    }

    #[test]
    fn shaper_follows_the_admin_rate() {
        let s = Shaper::default();
        assert!(!s.limited());
        s.set_mbps(10);
        assert!(s.limited());
        s.charge(1 << 20);
        assert!(s.budget(Instant::now()).is_err());
        s.set_mbps(0);
        assert!(!s.limited());
        assert_eq!(s.budget(Instant::now()), Ok(u64::MAX));
    }

    #[test]
    fn the_alarm_writes_the_kick_fd_when_due() {
        use vmm_sys_util::event::{new_event_consumer_and_notifier, EventFlag};
        let (consumer, _notifier) = new_event_consumer_and_notifier(EventFlag::NONBLOCK).unwrap();
        Alarm::get().kick_after(&consumer, Duration::from_millis(20));
        assert!(consumer.consume().is_err(), "not yet");
        let t = Instant::now();
        while consumer.consume().is_err() {
            assert!(t.elapsed() < Duration::from_secs(5), "alarm never fired");
            thread::sleep(Duration::from_millis(5));
        }
    }
}
