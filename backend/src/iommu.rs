//! One session's vIOMMU state, shared by the message pump (which feeds the IOTLB and owns the
//! protocol side) and the data path (which translates through it):
//! - whether the driver acked VIRTIO_F_ACCESS_PLATFORM (then descriptor addresses are IOVAs);
//! - the IOTLB, behind a read-write lock: a batch or RX run holds the read side for as long as it
//!   uses what it translated, and an INVALIDATE takes the write side before it is acked, so once
//!   QEMU has its reply no access through the old mapping is in flight;
//! - the back-end request channel (SET_BACKEND_REQ_FD), on which IOTLB MISS requests go.

use std::io::{self, Write};
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Mutex, RwLock, RwLockReadGuard, RwLockWriteGuard, TryLockError};
use std::time::{Duration, Instant};

use std::collections::VecDeque;

use crate::counters::Cast;
use crate::iotlb::{Access, Fault, Iotlb};
use crate::net_hdr::NetHdr;

/// VIRTIO_F_ACCESS_PLATFORM (a.k.a. VIRTIO_F_IOMMU_PLATFORM).
pub const VIRTIO_F_ACCESS_PLATFORM: u32 = 33;

/// Back-end request VHOST_USER_BACKEND_IOTLB_MSG and the message type MISS.
const BACKEND_IOTLB_MSG: u32 = 1;
const IOTLB_MISS: u8 = 1;
/// `struct vhost_iotlb_msg` as QEMU sizes it (26 bytes of fields, padded to 8).
pub const IOTLB_MSG_LEN: usize = 32;

/// The data path asks again for the same page only after this long, doubled at each repeat up to
/// [`MISS_REPEAT_MAX`]: a driver that keeps posting one unmapped buffer (or a chain waiting
/// [`STALL_LIMIT`] for an IOVA QEMU cannot translate) must not turn every try into a message.
const MISS_REPEAT: Duration = Duration::from_millis(1);
const MISS_REPEAT_MAX: Duration = Duration::from_millis(256);

/// A TX chain whose buffer has no entry yet stays in the ring and is tried again after this long
/// (QEMU answers a MISS within a round trip of its main loop).
pub const STALL_RETRY: Duration = Duration::from_millis(1);
/// A chain still unmapped after this long is given up on and completed as malformed: QEMU sends
/// nothing for an IOVA the guest never mapped, and the queue must not wait for it for ever.
pub const STALL_LIMIT: Duration = Duration::from_secs(2);

#[derive(Default)]
pub struct Iommu {
    on: AtomicBool,
    tlb: RwLock<Iotlb>,
    channel: Mutex<Option<UnixStream>>,
    /// The last MISS the data path sent: when, for which page, how long until it may be asked
    /// for again, and the UPDATE count then (an UPDATE since restarts the backoff).
    last_miss: Mutex<Option<(Instant, u64, Duration, u64)>>,
    /// IOTLB UPDATEs applied (see [`Iommu::note_update`]).
    updates: AtomicU64,
    misses: AtomicU64,
    /// Rings (bit = ring index) whose SET_VRING_ADDR IOVAs are not translated in the framework's
    /// queue yet: the data path leaves them alone (see [`Iommu::expect_ring`]).
    untranslated: AtomicU64,
    /// The guest-physical ring addresses each such ring is waiting for, once known.
    expected: Mutex<Vec<(usize, [u64; 3])>>,
    /// Rings (bit = ring index) stopped by an invalidation that may run again: see
    /// [`Iommu::ring_restored`].
    restored: AtomicU64,
    /// Rings (bit = ring index) stopped by an invalidation while running, waiting for their
    /// entries: frames for such an RX ring are kept, not dropped (see [`Iommu::stop_ring`]).
    revalidating: AtomicU64,
    /// Per TX ring that stopped at an unmapped chain: its ring position, since when, and when
    /// it was last tried.
    stalls: Mutex<Vec<(usize, u16, Instant, Instant)>>,
    /// Frames for this session that found an RX buffer without an entry, oldest first.
    parked: Mutex<VecDeque<Parked>>,
    any_parked: AtomicBool,
}

/// See [`Iommu::stats`].
#[derive(Clone, Copy, Debug, serde::Serialize)]
pub struct IommuStats {
    pub platform: bool,
    pub misses: u64,
    pub entries: usize,
    pub parked: usize,
}

/// At most this many frames wait for RX buffers' entries, per session; more are dropped.
pub const MAX_PARKED: usize = 64;

/// A frame waiting, for RX pair `pair`, until its buffer's IOTLB entry comes: as a device with
/// ATS holds a write whose translation it is still fetching, instead of dropping it.
pub struct Parked {
    pub pair: usize,
    pub hdr: NetHdr,
    pub cast: Cast,
    pub bytes: Vec<u8>,
}

/// What a TX ring does about a chain whose buffer has no IOTLB entry yet.
#[derive(Debug, PartialEq, Eq)]
pub enum Stall {
    /// Leave it in the ring and try again in [`STALL_RETRY`].
    Retry,
    /// It has waited [`STALL_LIMIT`]: complete it as malformed.
    GiveUp,
}

/// A MISS request for `iova` (back-end request 1, flags: version 1, no reply wanted).
pub fn miss_message(iova: u64, access: Access) -> [u8; 12 + IOTLB_MSG_LEN] {
    let mut m = [0u8; 12 + IOTLB_MSG_LEN];
    m[0..4].copy_from_slice(&BACKEND_IOTLB_MSG.to_le_bytes());
    m[4..8].copy_from_slice(&1u32.to_le_bytes());
    m[8..12].copy_from_slice(&(IOTLB_MSG_LEN as u32).to_le_bytes());
    m[12..20].copy_from_slice(&iova.to_le_bytes());
    m[12 + 24] = access.perm();
    m[12 + 25] = IOTLB_MISS;
    m
}

/// Ring `index`'s bit in the per-ring masks (None past 64 rings: such rings are never gated).
pub fn ring_bit(index: usize) -> Option<u64> {
    1u64.checked_shl(u32::try_from(index).ok()?)
}

impl Iommu {
    /// True when the driver acked ACCESS_PLATFORM: addresses it gives the device are IOVAs.
    #[inline]
    pub fn enabled(&self) -> bool {
        self.on.load(Ordering::Acquire)
    }

    pub fn set_enabled(&self, on: bool) {
        self.on.store(on, Ordering::Release);
    }

    /// The table for a batch, waiting out an INVALIDATE in progress.
    pub fn dma(&self) -> Dma<'_> {
        Dma {
            tlb: self.tlb.read().unwrap_or_else(|e| e.into_inner()),
            iommu: self,
        }
    }

    /// The table without waiting: None while an update or invalidation holds or waits for it.
    /// A sender delivering into this partition while it holds its own partition's table uses
    /// this, so two invalidations waiting on each other's partitions cannot deadlock.
    pub fn try_dma(&self) -> Option<Dma<'_>> {
        let tlb = match self.tlb.try_read() {
            Ok(g) => g,
            Err(TryLockError::Poisoned(e)) => e.into_inner(),
            Err(TryLockError::WouldBlock) => return None,
        };
        Some(Dma { tlb, iommu: self })
    }

    /// The table for an update or invalidation; the caller acks only after dropping it.
    pub fn write(&self) -> RwLockWriteGuard<'_, Iotlb> {
        self.tlb.write().unwrap_or_else(|e| e.into_inner())
    }

    /// The back-end request channel (a duplicate of the SET_BACKEND_REQ_FD socket).
    pub fn set_channel(&self, s: UnixStream) {
        *self.channel.lock().unwrap_or_else(|e| e.into_inner()) = Some(s);
    }

    /// Whether MISS requests can go out. For the data path, so it never waits for the lock: the
    /// pump may hold it for seconds while a stalled frontend does not read its MISS requests,
    /// and a sender of another partition (or the shared poller) must not wait with it. A
    /// channel in use is one that exists.
    pub fn has_channel_now(&self) -> bool {
        match self.channel.try_lock() {
            Ok(g) => g.is_some(),
            Err(TryLockError::WouldBlock) => true,
            Err(TryLockError::Poisoned(e)) => e.into_inner().is_some(),
        }
    }

    /// Ring `index` got new addresses (SET_VRING_ADDR): IOVAs whose guest-physical translation
    /// (descriptor table, avail, used) is `gpas`, or None while their entries are being asked
    /// for. Until the framework's queue holds exactly those addresses the data path leaves the
    /// ring alone: the pump forwards the translated message to the framework's thread, which
    /// takes it some time later.
    pub fn expect_ring(&self, index: u32, gpas: Option<[u64; 3]>) {
        let Some(bit) = ring_bit(index as usize) else {
            return;
        };
        let mut e = self.expected.lock().unwrap_or_else(|e| e.into_inner());
        e.retain(|(i, _)| *i != index as usize);
        if let Some(g) = gpas {
            e.push((index as usize, g));
        }
        self.untranslated.fetch_or(bit, Ordering::AcqRel);
        self.revalidating.fetch_and(!bit, Ordering::AcqRel);
    }

    /// Running ring `index` lost the entries of its own areas (an invalidation): the data path
    /// leaves it alone until [`Iommu::expect_ring`] names its addresses again. Meanwhile frames
    /// for it, if an RX ring, are kept as for an unmapped buffer.
    pub fn stop_ring(&self, index: u32) {
        self.expect_ring(index, None);
        if let Some(bit) = ring_bit(index as usize) {
            self.revalidating.fetch_or(bit, Ordering::AcqRel);
        }
    }

    /// Ring `qidx` is stopped by [`Iommu::stop_ring`] and waiting for its entries.
    pub fn revalidating(&self, qidx: usize) -> bool {
        ring_bit(qidx).is_some_and(|bit| self.revalidating.load(Ordering::Acquire) & bit != 0)
    }

    /// True when ring `qidx`, whose queue holds `addrs` (descriptor table, avail, used), may be
    /// used: nothing is pending for it, or the framework now has the translated addresses.
    #[inline]
    pub fn ring_ready(&self, qidx: usize, addrs: [u64; 3]) -> bool {
        let Some(bit) = ring_bit(qidx) else {
            return true;
        };
        if self.untranslated.load(Ordering::Acquire) & bit == 0 {
            return true;
        }
        let e = self.expected.lock().unwrap_or_else(|e| e.into_inner());
        if e.iter().any(|(i, g)| *i == qidx && *g == addrs) {
            self.untranslated.fetch_and(!bit, Ordering::AcqRel);
            return true;
        }
        false
    }

    /// Ring `index`, stopped because an invalidation covered its own areas, has its entries
    /// back (its addresses are expected again, see [`Iommu::expect_ring`]): a TX ring is to be
    /// kicked, as its driver will not kick for chains it already posted.
    pub fn ring_restored(&self, index: u32) {
        if let Some(bit) = ring_bit(index as usize) {
            self.restored.fetch_or(bit, Ordering::AcqRel);
        }
    }

    /// The rings [`Iommu::ring_restored`] named since the last call.
    pub fn take_restored(&self) -> u64 {
        self.restored.swap(0, Ordering::AcqRel)
    }

    /// TX ring `qidx` stopped at ring position `pos` on a chain with no entry (a MISS went out):
    /// retry, unless that same position has waited [`STALL_LIMIT`] already.
    pub fn stall(&self, qidx: usize, pos: u16, now: Instant) -> Stall {
        // Nobody to answer a MISS: waiting cannot help.
        if !self.has_channel_now() {
            return Stall::GiveUp;
        }
        let mut st = self.stalls.lock().unwrap_or_else(|e| e.into_inner());
        match st.iter_mut().find(|e| e.0 == qidx) {
            // The same wait, tried again (a wait is retried every STALL_RETRY; a record not
            // tried for a while is an old one at a position the ring has come round to again).
            Some((_, p, since, last))
                if *p == pos && now.duration_since(*last) < 50 * STALL_RETRY =>
            {
                *last = now;
                if now.duration_since(*since) >= STALL_LIMIT {
                    *since = now;
                    return Stall::GiveUp;
                }
            }
            Some(e) => *e = (qidx, pos, now, now),
            None => st.push((qidx, pos, now, now)),
        }
        Stall::Retry
    }

    /// Keeps `f` until its buffer's entry comes; false (nothing kept) when [`MAX_PARKED`] wait.
    pub fn park(&self, f: Parked) -> bool {
        let mut q = self.parked.lock().unwrap_or_else(|e| e.into_inner());
        if q.len() >= MAX_PARKED {
            return false;
        }
        q.push_back(f);
        self.any_parked.store(true, Ordering::Release);
        true
    }

    /// Puts `f` back in front (its buffer is still unmapped).
    pub fn unpark_failed(&self, f: Parked) {
        let mut q = self.parked.lock().unwrap_or_else(|e| e.into_inner());
        q.push_front(f);
        self.any_parked.store(true, Ordering::Release);
    }

    /// True when frames wait (a hint, for the paths that would flush them).
    #[inline]
    pub fn any_parked(&self) -> bool {
        self.any_parked.load(Ordering::Acquire)
    }

    /// The oldest frame waiting for RX pair `pair`.
    pub fn take_parked(&self, pair: usize) -> Option<Parked> {
        let mut q = self.parked.lock().unwrap_or_else(|e| e.into_inner());
        let i = q.iter().position(|f| f.pair == pair)?;
        let f = q.remove(i);
        if q.is_empty() {
            self.any_parked.store(false, Ordering::Release);
        }
        f
    }

    /// The RX pairs frames wait for.
    pub fn parked_pairs(&self) -> Vec<usize> {
        let q = self.parked.lock().unwrap_or_else(|e| e.into_inner());
        let mut v: Vec<usize> = q.iter().map(|f| f.pair).collect();
        v.sort_unstable();
        v.dedup();
        v
    }

    /// What `show` reports: whether the driver acked ACCESS_PLATFORM, MISS requests sent,
    /// entries held, and frames waiting for RX buffers' entries.
    pub fn stats(&self) -> IommuStats {
        IommuStats {
            platform: self.enabled(),
            misses: self.misses_sent(),
            entries: self.tlb.try_read().map_or(0, |t| t.len()),
            parked: self.parked.lock().map_or(0, |q| q.len()),
        }
    }

    /// MISS requests sent so far (by the pump and the data path).
    pub fn misses_sent(&self) -> u64 {
        self.misses.load(Ordering::Relaxed)
    }

    /// Sends a MISS and waits (up to the socket's write timeout) until it is written: the pump
    /// holds frontend messages until the answer comes.
    pub fn send_miss(&self, iova: u64, access: Access) -> io::Result<()> {
        let g = self.channel.lock().unwrap_or_else(|e| e.into_inner());
        let Some(s) = g.as_ref() else {
            return Err(io::Error::new(
                io::ErrorKind::NotConnected,
                "no back-end request channel (SET_BACKEND_REQ_FD) for an IOTLB miss",
            ));
        };
        let mut w = s;
        w.write_all(&miss_message(iova, access))?;
        self.misses.fetch_add(1, Ordering::Relaxed);
        log::trace!("ring IOTLB MISS {iova:#x} {access:?}");
        Ok(())
    }

    /// An UPDATE was applied: a page asked for again after it is asked for without delay.
    pub fn note_update(&self) {
        self.updates.fetch_add(1, Ordering::Relaxed);
    }

    /// The data path hit `f`: ask for the entry without ever blocking (a full channel, a
    /// channel in use or a page asked for again too soon (`MISS_REPEAT`, doubling) just skips
    /// the request; the driver's next buffer there faults and asks again).
    pub fn report(&self, f: &Fault) {
        let Some((iova, access)) = f.miss_iova() else {
            return;
        };
        let Ok(g) = self.channel.try_lock() else {
            return;
        };
        let Some(s) = g.as_ref() else {
            return;
        };
        let page = iova >> 12;
        let now = Instant::now();
        {
            let Ok(mut last) = self.last_miss.try_lock() else {
                return;
            };
            let updates = self.updates.load(Ordering::Relaxed);
            let wait = match *last {
                Some((t, p, wait, u)) if p == page && u == updates => {
                    if now.duration_since(t) < wait {
                        return;
                    }
                    (wait * 2).min(MISS_REPEAT_MAX)
                }
                _ => MISS_REPEAT,
            };
            *last = Some((now, page, wait, updates));
        }
        let m = miss_message(iova, access);
        // SAFETY: `m` is a live buffer of m.len() bytes; the fd belongs to `s`, held locked.
        let n = unsafe {
            libc::send(
                s.as_raw_fd(),
                m.as_ptr().cast(),
                m.len(),
                libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL,
            )
        };
        if n <= 0 {
            return;
        }
        // A message half sent would desynchronise the channel: finish it (a few bytes).
        if (n as usize) < m.len() {
            let mut w = s;
            if w.write_all(&m[n as usize..]).is_err() {
                return;
            }
        }
        self.misses.fetch_add(1, Ordering::Relaxed);
        log::trace!("data path IOTLB MISS {iova:#x} {access:?}");
    }
}

/// The IOTLB held for one batch or RX run. Guest-physical addresses translated through it are
/// valid until it is dropped.
pub struct Dma<'a> {
    tlb: RwLockReadGuard<'a, Iotlb>,
    iommu: &'a Iommu,
}

impl Dma<'_> {
    /// [`Iotlb::translate`]; a fault is reported (a MISS is sent).
    pub fn translate(
        &self,
        iova: u64,
        len: u64,
        access: Access,
        out: impl FnMut(u64, u64),
    ) -> Result<(), Fault> {
        self.tlb
            .translate(iova, len, access, out)
            .inspect_err(|f| self.iommu.report(f))
    }

    /// [`Iotlb::translate_contiguous`]; a fault is reported.
    pub fn contiguous(&self, iova: u64, len: u64, access: Access) -> Result<u64, Fault> {
        self.tlb
            .translate_contiguous(iova, len, access)
            .inspect_err(|f| self.iommu.report(f))
    }

    /// [`Iotlb::translate_va`], unreported (the pump asks for what it misses itself).
    pub fn translate_va(&self, iova: u64, len: u64, access: Access) -> Result<u64, Fault> {
        self.tlb.translate_va(iova, len, access)
    }

    /// [`Iotlb::translate_contiguous`] for a fast path that falls back to the general walk (which
    /// reports the fault) when this gives nothing.
    #[inline]
    pub fn peek(&self, iova: u64, len: u64, access: Access) -> Option<u64> {
        self.tlb.translate_contiguous(iova, len, access).ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    #[test]
    fn a_stalled_chain_is_retried_until_the_limit_then_given_up() {
        let i = Iommu::default();
        let t0 = Instant::now();
        assert_eq!(
            i.stall(1, 7, t0),
            Stall::GiveUp,
            "nobody to ask: no waiting"
        );
        let (ours, _theirs) = UnixStream::pair().unwrap();
        i.set_channel(ours);
        let mut t = t0;
        while t < t0 + STALL_LIMIT {
            assert_eq!(i.stall(1, 7, t), Stall::Retry);
            t += STALL_RETRY;
        }
        assert_eq!(i.stall(1, 7, t), Stall::GiveUp);
        assert_eq!(i.stall(1, 7, t + STALL_RETRY), Stall::Retry, "a new wait");
        // Another ring's wait and another position are waits of their own.
        assert_eq!(i.stall(3, 7, t + STALL_LIMIT), Stall::Retry);
        assert_eq!(i.stall(1, 8, t + STALL_LIMIT), Stall::Retry);
        // The ring came round to the same position much later: a new wait, not the old one.
        let later = t + 10 * STALL_LIMIT;
        assert_eq!(i.stall(1, 8, later), Stall::Retry);
        assert_eq!(i.stall(1, 8, later + STALL_RETRY), Stall::Retry);
        // While the pump holds the channel (a MISS write waiting on a full socket) the data
        // path does not wait for it.
        let held = i.channel.lock().unwrap();
        assert!(i.has_channel_now());
        assert_eq!(i.stall(1, 8, later + 2 * STALL_RETRY), Stall::Retry);
        drop(held);
    }

    #[test]
    fn a_ring_waits_until_the_framework_holds_its_translated_addresses() {
        let i = Iommu::default();
        assert!(i.ring_ready(0, [1, 2, 3]), "nothing pending");
        i.expect_ring(0, None);
        assert!(!i.ring_ready(0, [1, 2, 3]), "entries still being asked for");
        assert!(i.ring_ready(1, [0, 0, 0]), "only that ring");
        i.expect_ring(0, Some([0x4000, 0x5000, 0x6000]));
        assert!(
            !i.ring_ready(0, [1, 2, 3]),
            "the framework still has the old ones"
        );
        assert!(i.ring_ready(0, [0x4000, 0x5000, 0x6000]));
        assert!(i.ring_ready(0, [1, 2, 3]), "cleared once seen");
        i.expect_ring(99, None); // beyond any ring: ignored
        assert!(i.ring_ready(99, [0, 0, 0]));
    }

    #[test]
    fn a_miss_is_a_backend_iotlb_msg_of_type_miss() {
        let m = miss_message(0x1234_5000, Access::Write);
        assert_eq!(&m[0..12], &[1, 0, 0, 0, 1, 0, 0, 0, 32, 0, 0, 0]);
        assert_eq!(
            u64::from_le_bytes(m[12..20].try_into().unwrap()),
            0x1234_5000
        );
        assert_eq!((m[36], m[37]), (2, 1));
    }

    #[test]
    fn data_path_misses_go_out_once_per_page_and_never_block() {
        let i = Iommu::default();
        let f = Fault::Miss {
            iova: 0x5000,
            access: Access::Read,
        };
        i.report(&f); // no channel yet: nothing, no error
        assert_eq!(i.misses_sent(), 0);
        let (ours, mut theirs) = UnixStream::pair().unwrap();
        i.set_channel(ours);
        i.report(&f);
        i.report(&Fault::Miss {
            iova: 0x5008,
            access: Access::Read,
        });
        i.report(&Fault::Perm {
            iova: 0x9000,
            access: Access::Write,
        });
        i.report(&Fault::NotContiguous { iova: 0, len: 1 });
        assert_eq!(
            i.misses_sent(),
            2,
            "same page once; only misses and perms ask"
        );
        let mut got = [0u8; 88];
        theirs.read_exact(&mut got).unwrap();
        assert_eq!(got[..44], miss_message(0x5000, Access::Read));
        assert_eq!(got[44..], miss_message(0x9000, Access::Write));
        // One page asked for again and again (a chain waiting for an IOVA QEMU cannot
        // translate): the repeats back off, a handful in 300 ms rather than one per try.
        let before = i.misses_sent();
        let t = Instant::now();
        while t.elapsed() < Duration::from_millis(300) {
            i.report(&Fault::Miss {
                iova: 0x7000,
                access: Access::Read,
            });
            std::thread::sleep(Duration::from_micros(100));
        }
        let repeats = i.misses_sent() - before;
        assert!(
            (2..=10).contains(&repeats),
            "{repeats} MISS for one page in 300 ms"
        );
        // An UPDATE came meanwhile: the page is asked for again at once.
        i.note_update();
        i.report(&Fault::Miss {
            iova: 0x7000,
            access: Access::Read,
        });
        assert_eq!(
            i.misses_sent() - before,
            repeats + 1,
            "asked again after an UPDATE"
        );
        let mut drain = vec![0u8; 44 * (repeats as usize + 1)];
        theirs.read_exact(&mut drain).unwrap();
        // A peer that stops reading: the sends fail quietly instead of blocking.
        for p in 0..100_000u64 {
            i.report(&Fault::Miss {
                iova: p << 12,
                access: Access::Read,
            });
        }
        assert!(i.misses_sent() < 100_000);
    }
}
