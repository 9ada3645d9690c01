//! The sending half of the data path: takes chains from a partition's TX queue in batches, reads
//! each frame's virtio-net and Ethernet headers, hands the batch to the switch and completes the
//! chains. TX used length is always 0 (the device writes nothing into TX buffers).

use std::sync::Arc;
use std::time::{Duration, Instant};

use vhost_user_backend::VringT;
use virtio_queue::QueueT;
use vm_memory::GuestAddressSpace;

use crate::counters::DropReason;
use crate::frame;
use crate::hostmem::HostMem;
use crate::iommu::{Stall, STALL_RETRY};
use crate::iotlb::Fault;
use crate::mac::MacAddr;
use crate::net_hdr::{NetHdr, ETH_HLEN, NET_HDR_LEN, TX_HEADERS};
use crate::offload;
use crate::partition::Partition;
use crate::ring::{self, Dir, Flat, Ring, RingError, Seg};
use crate::session::{Held, Session, Warn};
use crate::shaper;
use crate::switch::{FwdScratch, Switch, TxBatch, TxFrame};

/// Chains taken per ring lock; bounds the time a TX ring's used entries wait.
const TX_BATCH: u16 = 64;
/// How many frames ahead a frame's header lines are prefetched.
const PREFETCH_AHEAD: usize = 4;
/// Largest chain a driver may send: header + 64 KiB GSO frame + Ethernet and VLAN headers.
pub const MAX_TX_CHAIN: u32 = (NET_HDR_LEN + 65535 + ETH_HLEN + 4) as u32;

/// Per-TX-queue scratch, owned by that queue's worker.
#[derive(Default)]
pub struct TxScratch {
    /// Buffers of every frame in the batch; frames refer to ranges of it.
    segs: Vec<Seg>,
    /// The batch's heads, each with its chain when that is one buffer (see [`Ring::flat`]).
    chains: Vec<(u16, Option<Flat>)>,
    frames: Vec<TxFrame>,
    fwd: FwdScratch,
}

/// What one call of [`tx_batch`] found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Batch {
    /// This many chains were taken, forwarded and completed.
    Sent(u16),
    /// The ring is running but the driver has nothing more to send.
    Empty,
    /// The ring is not running (not set up, disabled, or broken).
    Stopped,
    /// Chains wait in the ring: for `max_tx_rate` tokens, or for the IOTLB entries of a chain
    /// or of the ring itself (asked for with a MISS). Try again after this long.
    Throttled(Duration),
}

impl TxScratch {
    /// The queue went idle: drop what was kept across batches (receivers' sessions and memory).
    pub fn release(&mut self) {
        self.fwd.release();
    }
}

/// Drains TX queue pair `pair` of `part` until the driver has nothing more to send and nothing
/// more came for `linger`, then re-arms the driver's kick. The event-driven path: a kick calls
/// this on the partition's worker.
pub fn process_tx(
    sw: &Switch,
    part: &Partition,
    session: Arc<Session>,
    pair: usize,
    s: &mut TxScratch,
    linger: Duration,
) {
    let mut held = Some(Held::of(session));
    while let Some(h) = Held::refresh(&mut held, part) {
        match tx_batch(sw, part, h, pair, s) {
            Batch::Sent(_) => {}
            Batch::Stopped => break,
            Batch::Throttled(wait) => {
                // Kicks stay suppressed: the alarm kicks the queue when tokens are back.
                if let Some(v) = h.session.vrings().and_then(|v| v.get(2 * pair + 1)) {
                    if let Some(k) = v.get_ref().get_kick() {
                        shaper::Alarm::get().kick_after(k, wait);
                    }
                }
                break;
            }
            // If the driver added chains meanwhile, keep going.
            Batch::Empty => {
                if lingered_into_work(h, pair, linger) {
                    continue;
                }
                h.kicks_rearmed();
                if rearm(&h.session, pair) != Some(true) {
                    break;
                }
            }
        }
    }
    s.release();
}

/// Keeps looking at TX pair `pair`'s ring, now empty, for up to `linger`; true as soon as the
/// driver adds chains (or the session changed). While the worker looks, kicks stay suppressed,
/// so a driver sending steadily never has to kick (an eventfd write, or a VM exit for a guest,
/// every time it finds the device asleep: that was most of the gap to a polling backend in the
/// one-way benchmark). The worker yields every few microseconds, so a lingering partition never
/// keeps another thread from the CPU for long; it costs CPU only after traffic, never when idle.
fn lingered_into_work(h: &Held, pair: usize, linger: Duration) -> bool {
    if linger.is_zero() {
        return false;
    }
    let qidx = 2 * pair + 1;
    let start = Instant::now();
    let mut looks: u32 = 0;
    while h.still_idle(qidx) {
        looks = looks.wrapping_add(1);
        if looks.is_multiple_of(LOOKS_PER_YIELD) {
            if start.elapsed() >= linger {
                return false;
            }
            std::thread::yield_now();
        } else {
            std::hint::spin_loop();
        }
    }
    true
}

/// Looks between clock reads and yields while lingering: a look is one load, a yield a system
/// call; 64 looks take a few microseconds, so another thread waits at most that long for the CPU.
const LOOKS_PER_YIELD: u32 = 64;

/// Kicks the TX rings of `session` that run again after an IOTLB invalidation stopped them
/// (see `Iommu::ring_restored`); their chains would otherwise wait for the retry timer.
pub fn kick_restored(session: &Session) {
    let mask = session.iommu.take_restored();
    if mask == 0 {
        return;
    }
    let Some(vrings) = session.vrings() else {
        return;
    };
    for (qidx, v) in vrings.iter().enumerate().filter(|(q, _)| q % 2 == 1) {
        if crate::iommu::ring_bit(qidx).is_some_and(|bit| mask & bit != 0) {
            if let Some(k) = v.get_ref().get_kick() {
                shaper::Alarm::get().kick_after(k, Duration::ZERO);
            }
        }
    }
}

/// Re-enables the driver's kick on TX pair `pair` now that its ring is empty. Returns whether
/// chains arrived meanwhile (notifications are then suppressed again: the caller goes on), or
/// None when the ring is not running.
pub fn rearm(session: &Session, pair: usize) -> Option<bool> {
    let qidx = 2 * pair + 1;
    let vring = session.vrings()?.get(qidx)?;
    let mem = session.mem.memory();
    let mut g = vring.get_mut();
    if !g.is_enabled() || !g.get_queue().ready() || session.is_broken(qidx) {
        return None;
    }
    let q = g.get_queue_mut();
    match q.enable_notification(&*mem) {
        Ok(true) => {
            let _ = q.disable_notification(&*mem);
            Some(true)
        }
        Ok(false) => Some(false),
        Err(e) => {
            session.mark_broken(qidx, &e);
            None
        }
    }
}

/// How often a TX ring whose own addresses are still being translated is looked at again.
const UNTRANSLATED_RETRY: Duration = Duration::from_millis(10);

/// Takes at most one batch of chains from TX pair `pair`, forwards them and completes them.
pub fn tx_batch(
    sw: &Switch,
    part: &Partition,
    held: &Held,
    pair: usize,
    s: &mut TxScratch,
) -> Batch {
    let session = &*held.session;
    let qidx = 2 * pair + 1;
    let Some(vring) = session.vrings().and_then(|v| v.get(qidx)) else {
        return Batch::Stopped;
    };
    if session.is_broken(qidx) {
        return Batch::Stopped;
    }
    let broken = |e: &dyn std::fmt::Display| {
        session.mark_broken(qidx, e);
        Batch::Stopped
    };
    let mem = held.host();
    // The ring's next lines start coming while the locks are taken.
    held.warm(Dir::Readable);
    // Held for the whole batch: a stop (GET_VRING_BASE) then reads a ring state from before or
    // after the batch, never one with chains taken but not completed. Taking RX ring locks
    // inside is deadlock-free: no thread holds an RX ring lock while taking another lock.
    let mut g = vring.get_mut();
    if !g.is_enabled() {
        return Batch::Stopped;
    }
    let q = g.get_queue_mut();
    let r = match held.ring(qidx, q) {
        Ok(r) => r,
        Err(RingError::NotReady) => return Batch::Stopped,
        Err(RingError::Untranslated) => return Batch::Throttled(UNTRANSLATED_RETRY),
        Err(e) => return broken(&e),
    };
    held.saw(q.next_avail(), q.next_used());
    let n = match r.pending(q) {
        Ok(0) => return Batch::Empty,
        Ok(n) => n,
        Err(e) => return broken(&e),
    };
    // max_tx_rate: as many chains as the tokens allow (at least one; the bucket may go into
    // debt by one batch, paid back before the next).
    let mut n = n.min(TX_BATCH);
    if part.shaper.limited() {
        match part.shaper.budget(Instant::now()) {
            Ok(bytes) => n = n.min(u16::try_from(1 + bytes / 1514).unwrap_or(TX_BATCH)),
            Err(wait) => return Batch::Throttled(wait),
        }
    }
    if held.suppress_kicks_once() {
        r.suppress_kicks();
    }
    r.prefetch_used(q, n);
    // Most batches go where the previous one went: that receiver's lines are fetched while
    // this batch reads its own.
    s.fwd.warm_last();
    let start = q.next_avail();

    let view = TxQueue {
        mem: &mem,
        ring: r,
        indirect: session.indirect(),
        offloads: session.tx_offloads(),
        pair,
    };
    s.segs.clear();
    s.frames.clear();
    // Descriptors first, then frames: the descriptor reads of a batch do not depend on each
    // other, so their misses overlap, and each frame's first line is asked for a few frames
    // before its headers are read. The sender's buffers are lines the driver's core just wrote.
    s.chains.clear();
    s.chains.extend((0..n).map(|k| {
        let head = r.avail_head(q, k);
        (head, r.flat(&mem, head, Dir::Readable, MAX_TX_CHAIN))
    }));
    for f in s
        .chains
        .iter()
        .take(PREFETCH_AHEAD)
        .filter_map(|c| c.1.as_ref())
    {
        f.prefetch_headers();
    }
    let mut unmapped = false;
    for i in 0..s.chains.len() {
        if let Some((_, Some(f))) = s.chains.get(i + PREFETCH_AHEAD) {
            f.prefetch_headers();
        }
        let (head, flat) = s.chains[i];
        let pos = start.wrapping_add(i as u16);
        match take_frame(part, session, &view, head, flat, pos, &mut s.segs) {
            Ok(Some(f)) => s.frames.push(f),
            Ok(None) => {}
            // The chain and those after it stay in the ring until the entry comes.
            Err(Unmapped) => {
                s.chains.truncate(i);
                unmapped = true;
                break;
            }
        }
    }
    q.set_next_avail(start.wrapping_add(s.chains.len() as u16));
    held.saw(q.next_avail(), q.next_used());
    let batch = TxBatch {
        mem: &mem,
        segs: &s.segs,
        frames: &s.frames,
    };
    sw.forward(part, pair, &batch, &mut s.fwd);
    let (max, min) = (part.shaper.limited(), part.guarantee.limited());
    if max || min {
        let bytes = s.frames.iter().map(|f| f.len as u64).sum();
        if max {
            part.shaper.charge(bytes);
        }
        if min {
            part.guarantee.charge(bytes);
        }
    }

    let q = g.get_queue_mut();
    for (k, (head, _)) in s.chains.iter().enumerate() {
        r.write_used(q, k as u16, *head, 0);
    }
    if r.publish_used(q, s.chains.len() as u16) {
        if let Err(e) = g.signal_used_queue() {
            log::debug!("{}: TX notify failed: {e}", session.name);
        }
    }
    match s.chains.len() {
        0 if unmapped => Batch::Throttled(STALL_RETRY),
        n => Batch::Sent(n as u16),
    }
}

/// A TX chain's buffer has no IOTLB entry yet; a MISS went out and the chain waits in the ring.
struct Unmapped;

/// What a batch needs to know about the TX queue, read once under the ring lock.
struct TxQueue<'a> {
    mem: &'a HostMem<'a>,
    ring: Ring<'a>,
    indirect: bool,
    offloads: offload::TxOffloads,
    pair: usize,
}

/// Why a TX chain carries nothing. It is completed like any other.
#[derive(Debug, thiserror::Error)]
enum BadTx {
    #[error(transparent)]
    Chain(#[from] ring::ChainError),
    #[error("{0} bytes is shorter than the virtio-net and Ethernet headers")]
    Short(usize),
    #[error(transparent)]
    Copy(#[from] frame::CopyError),
}

/// Walks one chain (already resolved as `flat` when it is one buffer) and reads its headers. A
/// malformed chain is counted and warned about (once per connection) here.
fn take_frame(
    part: &Partition,
    session: &Session,
    q: &TxQueue<'_>,
    head: u16,
    flat: Option<Flat>,
    pos: u16,
    segs: &mut Vec<Seg>,
) -> Result<Option<TxFrame>, Unmapped> {
    let start = segs.len();
    let mut h = [0u8; TX_HEADERS];
    let taken = match flat {
        Some(f) if f.seg.len as usize >= h.len() => {
            segs.push(f.seg);
            // SAFETY: the buffer has at least h.len() bytes at `f.host`.
            unsafe { std::ptr::copy_nonoverlapping(f.host.0, h.as_mut_ptr(), h.len()) };
            Ok((f.seg.len as usize, Some(f.host)))
        }
        _ => take_chain(q, head, segs, &mut h).map(|total| (total, None)),
    };
    let (total, host) = match taken {
        Ok(t) => t,
        Err(BadTx::Chain(ring::ChainError::Iommu(Fault::Miss { .. })))
            if session.iommu.stall(2 * q.pair + 1, pos, Instant::now()) == Stall::Retry =>
        {
            segs.truncate(start);
            return Err(Unmapped);
        }
        Err(why) => {
            let pair = q.pair;
            part.queue_counters(pair).drop(DropReason::MalformedChain);
            session.warn_once(
                Warn::MalformedTxChain,
                &format_args!("TX chain {head} on pair {pair}: {why}"),
            );
            return Ok(None);
        }
    };
    let mut hb = [0u8; NET_HDR_LEN];
    hb.copy_from_slice(&h[..NET_HDR_LEN]);
    let hdr = NetHdr::parse(&hb);
    let len = total - NET_HDR_LEN;
    let pair = q.pair;
    if let Err(why) = offload::check_tx_header(&hdr, len, q.offloads) {
        part.queue_counters(pair).drop(DropReason::MalformedChain);
        session.warn_once(
            Warn::BadTxHeader,
            &format_args!("TX chain {head} on pair {pair}: {why}"),
        );
        return Ok(None);
    }
    let ethertype = u16::from_be_bytes([h[NET_HDR_LEN + 12], h[NET_HDR_LEN + 13]]);
    let tagged = offload::is_vlan_tpid(ethertype);
    // The tag's VLAN id follows the TPID, just past the headers read for every frame.
    let (tpid, vid) = if tagged {
        let mut tci = [0u8; 2];
        match frame::read(q.mem, &segs[start..], TX_HEADERS, &mut tci) {
            Ok(2) => (ethertype, u16::from_be_bytes(tci) & 0x0fff),
            _ => {
                part.queue_counters(pair).drop(DropReason::MalformedChain);
                return Ok(None);
            }
        }
    } else {
        (0, 0)
    };
    // The port's own MTU, as a NIC enforces its VF's maximum frame size on transmit.
    if !hdr.is_gso() && len > offload::max_frame(part.config.mtu, tagged) {
        part.queue_counters(pair).drop(DropReason::Oversize);
        session.warn_once(
            Warn::Oversize,
            &format_args!(
                "TX chain {head} on pair {pair}: {len}-byte frame exceeds MTU {}",
                part.config.mtu
            ),
        );
        return Ok(None);
    }
    let mut dst = [0u8; 6];
    dst.copy_from_slice(&h[NET_HDR_LEN..NET_HDR_LEN + 6]);
    let mut src = [0u8; 6];
    src.copy_from_slice(&h[NET_HDR_LEN + 6..NET_HDR_LEN + 12]);
    Ok(Some(TxFrame {
        hdr,
        segs: start..segs.len(),
        len,
        tpid,
        vid,
        dst: MacAddr(dst),
        src: MacAddr(src),
        host,
    }))
}

/// The general case of [`take_frame`]: walks any chain into `segs` and gathers its headers into
/// `h`. Returns the chain's length. A malformed chain's buffers may stay in `segs`: frames refer
/// to their chains by range.
fn take_chain(
    q: &TxQueue<'_>,
    head: u16,
    segs: &mut Vec<Seg>,
    h: &mut [u8; TX_HEADERS],
) -> Result<usize, BadTx> {
    let start = segs.len();
    let total = ring::walk_chain(
        q.mem,
        q.ring.table(),
        head,
        Dir::Readable,
        q.indirect,
        MAX_TX_CHAIN,
        segs,
    )? as usize;
    if total < h.len() {
        return Err(BadTx::Short(total));
    }
    match frame::read(q.mem, &segs[start..], 0, h)? {
        n if n == h.len() => Ok(total),
        _ => Err(BadTx::Short(total)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::partition::Role;
    use crate::testutil::{config, session_on, Driver, DESC, F_WRITE, USED};
    use std::sync::atomic::Ordering;
    use vm_memory::{Bytes, GuestAddress};

    /// The PF of a one-partition switch, sending on `d`'s ring (its TX queue, 1).
    fn sender(d: &Driver) -> (Arc<Session>, Arc<Partition>, Switch) {
        let s = session_on(d, 1);
        let p = Arc::new(Partition::new(0, Role::Pf, config("02:00:00:00:00:00", 1)));
        p.install_session(s.clone());
        let sw = Switch::new(vec![p.clone()]).unwrap();
        (s, p, sw)
    }

    /// IN_ORDER is offered because of this: chains are completed in the order the driver made
    /// them available, the ones that carry nothing included.
    #[test]
    fn chains_complete_in_ring_order_even_when_dropped() {
        let (mut d, _) = Driver::new(16);
        let (s, p, sw) = sender(&d);
        let mut frame = vec![0u8; NET_HDR_LEN + 60];
        frame[NET_HDR_LEN..NET_HDR_LEN + 6].copy_from_slice(&[2, 0, 0, 0, 0, 9]);
        frame[NET_HDR_LEN + 6..NET_HDR_LEN + 12].copy_from_slice(&p.mac().0);
        d.mem.write_slice(&frame, GuestAddress(0x8000)).unwrap();
        // To a MAC nobody owns; write-only; shorter than the headers; to nobody again.
        for (head, len, flags) in [(5, 72, 0), (2, 72, F_WRITE), (9, 20, 0), (1, 72, 0)] {
            d.desc(DESC, head, 0x8000, len, flags, 0);
            d.offer(head);
        }
        let mut scratch = TxScratch::default();
        let r = tx_batch(&sw, &p, &Held::of(s.clone()), 0, &mut scratch);
        assert_eq!(r, Batch::Sent(4));
        assert_eq!(d.used_idx(), 4);
        assert_eq!(
            [d.used(0), d.used(1), d.used(2), d.used(3)],
            [(5, 0), (2, 0), (9, 0), (1, 0)]
        );
        let t = p.totals();
        assert_eq!(t.dropped(DropReason::MalformedChain), 2);
        assert_eq!(t.dropped(DropReason::UnknownDestination), 2);
        assert_eq!(
            tx_batch(&sw, &p, &Held::of(s), 0, &mut scratch),
            Batch::Empty
        );
    }

    #[test]
    fn kicks_are_suppressed_once_per_hold_and_again_after_rearming() {
        let (mut d, _) = Driver::new(16);
        let (s, p, sw) = sender(&d);
        let m = d.mem.clone();
        let flags = || u16::from_le(m.load(GuestAddress(USED), Ordering::Acquire).unwrap());
        let clear = || {
            m.store(0u16, GuestAddress(USED), Ordering::Release)
                .unwrap()
        };
        let mut scratch = TxScratch::default();
        let held = Held::of(s.clone());
        let mut send = |d: &mut Driver, held: &Held| {
            d.desc(DESC, 0, 0x8000, 72, 0, 0);
            d.offer(0);
            tx_batch(&sw, &p, held, 0, &mut scratch)
        };
        assert_eq!(send(&mut d, &held), Batch::Sent(1));
        assert_eq!(flags(), 1, "VRING_USED_F_NO_NOTIFY");
        clear();
        assert_eq!(send(&mut d, &held), Batch::Sent(1));
        assert_eq!(flags(), 0, "not looked at again under the same hold");
        held.kicks_rearmed();
        assert_eq!(send(&mut d, &held), Batch::Sent(1));
        assert_eq!(flags(), 1);
        clear();
        assert_eq!(send(&mut d, &Held::of(s)), Batch::Sent(1));
        assert_eq!(flags(), 1, "a new hold suppresses again");
    }

    #[test]
    fn a_hold_is_still_idle_until_chains_arrive_or_the_session_moves() {
        let (mut d, _) = Driver::new(16);
        let (s, p, sw) = sender(&d);
        let mut scratch = TxScratch::default();
        let held = Held::of(s.clone());
        assert!(!held.still_idle(1), "nothing known before the first batch");
        assert_eq!(tx_batch(&sw, &p, &held, 0, &mut scratch), Batch::Empty);
        assert!(held.still_idle(1));
        assert!(!held.still_idle(0), "only the queue the batch ran on");
        d.desc(DESC, 0, 0x8000, 60, 0, 0);
        d.offer(0);
        assert!(!held.still_idle(1), "a chain was added");
        assert_eq!(tx_batch(&sw, &p, &held, 0, &mut scratch), Batch::Sent(1));
        assert!(held.still_idle(1), "the batch took it");
        s.bump_generation();
        assert!(!held.still_idle(1), "memory or rings may have changed");
    }

    /// A worker that lingers takes a chain the driver adds meanwhile with kicks still
    /// suppressed (the driver need not kick); without lingering it re-arms the kick as soon as
    /// the ring is empty and returns, and the next chain waits for that kick.
    #[test]
    fn a_lingering_worker_takes_what_comes_meanwhile_without_a_kick() {
        for linger in [Duration::from_secs(1), Duration::ZERO] {
            let (mut d, _) = Driver::new(16);
            let (s, p, sw) = sender(&d);
            let m = d.mem.clone();
            let flags = || u16::from_le(m.load(GuestAddress(USED), Ordering::Acquire).unwrap());
            d.desc(DESC, 0, 0x8000, 72, 0, 0);
            d.offer(0);
            let worker = std::thread::spawn(move || {
                let t = Instant::now();
                process_tx(&sw, &p, s, 0, &mut TxScratch::default(), linger);
                t.elapsed()
            });
            if linger.is_zero() {
                worker.join().unwrap();
                assert_eq!(d.used_idx(), 1);
                assert_eq!(flags(), 0, "kicks re-armed before it returned");
                d.desc(DESC, 1, 0x8000, 72, 0, 0);
                d.offer(1);
                std::thread::sleep(Duration::from_millis(50));
                assert_eq!(d.used_idx(), 1, "the next chain waits for its kick");
                continue;
            }
            let t = Instant::now();
            while d.used_idx() == 0 {
                assert!(
                    t.elapsed() < Duration::from_secs(10),
                    "first chain not taken"
                );
                std::thread::sleep(Duration::from_millis(1));
            }
            // Well inside the second it lingers, even on a loaded machine.
            std::thread::sleep(Duration::from_millis(50));
            assert_eq!(flags(), 1, "kicks stay off while it lingers");
            d.desc(DESC, 1, 0x8000, 72, 0, 0);
            d.offer(1);
            let took = worker.join().unwrap();
            assert_eq!(d.used_idx(), 2, "taken without a kick");
            assert_eq!(flags(), 0, "kicks re-armed when it sleeps");
            assert!(took >= linger + Duration::from_millis(50), "{took:?}");
        }
    }
}
