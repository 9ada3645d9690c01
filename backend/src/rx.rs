//! Delivery into a partition's RX queue: the receiving half of the data path. A sender opens the
//! receiver's RX queue once per run of frames for it: one vring lock, one guest-memory snapshot,
//! one read of avail.idx while buffers last. Closing publishes the run with one used.idx store
//! and at most one notification. A receiver with no buffers costs the sender one failed check,
//! never a wait.

use std::sync::{Arc, RwLockWriteGuard};

use vhost_user_backend::{VringState, VringT};
use virtio_queue::QueueT;

use crate::capture::Direction;
use crate::counters::{Cast, DropReason, Tally};
use crate::frame::{self, Source};
use crate::hostmem::HostMem;
use crate::iommu::Parked;
use crate::iotlb::Fault;
use crate::net_hdr::{NetHdr, NET_HDR_LEN};
use crate::offload::RxOffloads;
use crate::partition::Partition;
use crate::ring::{self, Dir, Flat, Ring, Seg};
use crate::session::{GuestMem, Held, Session, Warn};

/// How many frames ahead of the one being written an RX buffer is prefetched (a power of two:
/// it also sizes the table of buffers looked up ahead).
const RX_AHEAD: u16 = 4;
/// Under ACCESS_PLATFORM, how many posted chains ahead IOTLB entries are asked for.
const ASK_AHEAD: u16 = 8;
/// A run shows the driver its frames at least this often (DPDK's burst). A driver that asked
/// for a call at some used entry then gets it within this many frames of it, not only when a
/// sender's batch ends: a receiver with a small ring would otherwise run out of buffers while
/// the call is still to come.
const PUBLISH_EVERY: u16 = 32;

/// Scratch reused across deliveries so the steady state allocates nothing.
#[derive(Default)]
pub struct RxScratch {
    segs: Vec<Seg>,
    chains: Vec<(u16, u32)>,
}

/// One frame on its way into a receiver.
pub struct Outgoing<'a> {
    /// Header for the receiver (num_buffers is filled in here).
    pub hdr: NetHdr,
    pub src: Source<'a>,
    /// Where the frame starts within `src`.
    pub skip: usize,
    /// Frame length, without the virtio-net header.
    pub len: usize,
    pub cast: Cast,
}

/// A receiver's RX queue, held by one sender for a run of frames. Dropping it publishes what was
/// written and adds the receiver-side counts to the receiver's counters.
pub struct RxQueue<'a> {
    dest: &'a Partition,
    held: &'a Held,
    ring: RwLockWriteGuard<'a, VringState<GuestMem>>,
    /// `ring`'s areas, mapped once for the run.
    mapped: Ring<'a>,
    /// A view of `held`'s memory for the run.
    mem: HostMem<'a>,
    scratch: &'a mut RxScratch,
    pair: usize,
    qidx: usize,
    mergeable: bool,
    indirect: bool,
    offloads: RxOffloads,
    /// The receiver's MTU, and whether a capture of it runs, read once per run.
    mtu: u16,
    capturing: bool,
    /// Chains the driver had posted beyond next_avail when avail.idx was last read. avail.idx is
    /// a line the driver's core writes, so it is only read again when these run out.
    avail: u16,
    /// The ring is stopped while its IOTLB entries come back: every frame is parked.
    gated: bool,
    /// Frames may be kept (parked) for this receiver: they go before any new one.
    parked: bool,
    /// The last `put_frame` failed only because a buffer had no IOTLB entry yet.
    unmapped: bool,
    /// next_used at open: what the driver has been shown.
    published: u16,
    /// Frames of the run not yet put (from the hint at open).
    to_come: u16,
    /// Buffers looked up when they were prefetched, by avail position modulo RX_AHEAD, so the
    /// frame that comes to them reads its descriptor and translates its address only once.
    ahead: [Ahead; RX_AHEAD as usize],
    tally: Tally,
}

/// A posted chain looked up ahead of its frame: the avail entry at position `pos` (as u32, so
/// that u32::MAX can mean none) was `head`, a [`Flat`] chain or not. Reading the avail entry and
/// the descriptor once, earlier, is what a device may do with anything already posted; the
/// translation holds for the run's memory snapshot, which is the only one it is used with.
#[derive(Clone, Copy)]
struct Ahead {
    pos: u32,
    head: u16,
    flat: Option<Flat>,
}

const NOT_AHEAD: Ahead = Ahead {
    pos: u32::MAX,
    head: 0,
    flat: None,
};

impl<'a> RxQueue<'a> {
    /// Locks `dest`'s RX queue (`held` is `dest`'s session and memory) for
    /// the sender's pair `pair_hint` spread over the receiver's pairs, falling back to pair 0
    /// when that ring is not running (the driver enabled fewer pairs). `frames` is how many the
    /// run brings (a hint: their used entries are asked for early).
    pub fn open(
        dest: &'a Partition,
        held: &'a Held,
        pair_hint: usize,
        frames: u16,
        scratch: &'a mut RxScratch,
    ) -> Result<Self, DropReason> {
        let session = &*held.session;
        let vrings = session.vrings().ok_or(DropReason::DestinationDown)?;
        let pairs = vrings.len() / 2;
        if pairs == 0 {
            return Err(DropReason::DestinationDown);
        }
        let running = |p: usize, g: &VringState<GuestMem>| {
            g.is_enabled() && g.get_queue().ready() && !session.is_broken(2 * p)
        };
        let mut pair = pair_hint % pairs;
        let mut ring = vrings[2 * pair].get_mut();
        if !running(pair, &ring) {
            drop(ring);
            if pair == 0 {
                return Err(DropReason::DestinationDown);
            }
            pair = 0;
            ring = vrings[0].get_mut();
            if !running(0, &ring) {
                return Err(DropReason::DestinationDown);
            }
        }
        let published = ring.get_queue().next_used();
        // The receiver's IOTLB changing right now: this run's frames find no buffer (see
        // `Iommu::try_dma` for why a sender never waits for it). Taken before the ring is
        // checked, so that an invalidation stopping the ring waits for this run to end.
        let mem = held.try_host().ok_or(DropReason::NoRxBuffer)?;
        let mut gated = false;
        let mapped = match held.ring(2 * pair, ring.get_queue()) {
            Ok(m) => m,
            // The ring's entries were invalidated while it ran and are being asked for: the
            // run keeps its frames (see `put`) and touches nothing of the ring.
            Err(ring::RingError::Untranslated) if session.iommu.revalidating(2 * pair) => {
                gated = true;
                held.ring_unchecked(2 * pair, ring.get_queue())
                    .map_err(|_| DropReason::DestinationDown)?
            }
            // Under ACCESS_PLATFORM, the ring's own entries are still on their way.
            Err(ring::RingError::Untranslated) => return Err(DropReason::DestinationDown),
            Err(e) => {
                session.mark_broken(2 * pair, &e);
                return Err(DropReason::DestinationDown);
            }
        };
        if !gated {
            mapped.prefetch_used(ring.get_queue(), frames);
        }
        Ok(RxQueue {
            dest,
            held,
            ring,
            mapped,
            mem,
            scratch,
            pair,
            qidx: 2 * pair,
            mergeable: session.mergeable(),
            indirect: session.indirect(),
            offloads: session.rx_offloads(),
            mtu: dest.config.mtu,
            capturing: dest.capture.on(),
            avail: 0,
            gated,
            parked: session.iommu.any_parked(),
            unmapped: false,
            published,
            to_come: frames,
            ahead: [NOT_AHEAD; RX_AHEAD as usize],
            tally: Tally::default(),
        })
    }

    /// What the receiver's driver accepts in the virtio-net header.
    pub fn offloads(&self) -> RxOffloads {
        self.offloads
    }

    /// The receiving port's MTU.
    #[inline]
    pub fn mtu(&self) -> u16 {
        self.mtu
    }

    fn reload(&mut self) -> Result<(), DropReason> {
        match self.mapped.pending(self.ring.get_queue()) {
            Ok(n) => {
                self.avail = n;
                Ok(())
            }
            Err(e) => Err(self.isolate(&e)),
        }
    }

    /// The receiver's own driver broke its RX ring: stop using it until it is restarted.
    fn isolate(&self, why: &dyn std::fmt::Display) -> DropReason {
        self.held.session.mark_broken(self.qidx, why);
        DropReason::DestinationDown
    }

    /// Writes the virtio-net header and the frame into the receiver's RX buffers, as one or
    /// (mergeable) several chains. Receiver-side drops are counted on the receiver.
    /// Delivers one frame (a copy goes to the partition's capture, if one runs).
    pub fn put(&mut self, out: &Outgoing<'_>) -> Result<(), DropReason> {
        // Frames kept for unmapped buffers go first, and this one waits behind them.
        let written = if self.gated || (self.parked && !self.flush_parked()) {
            self.park(out)
        } else {
            match self.put_frame(out) {
                Err(_) if std::mem::take(&mut self.unmapped) => self.park(out),
                r => r,
            }
        };
        written?;
        let unshown = self
            .ring
            .get_queue()
            .next_used()
            .wrapping_sub(self.published);
        if unshown >= PUBLISH_EVERY {
            self.publish();
        }
        if self.capturing {
            self.dest.capture.record(Direction::Rx, |buf| {
                if frame::gather(&out.src, out.skip, out.len, buf).is_err() {
                    buf.clear();
                }
            });
        }
        Ok(())
    }

    fn put_frame(&mut self, out: &Outgoing<'_>) -> Result<(), DropReason> {
        if self.held.session.is_broken(self.qidx) {
            return Err(DropReason::DestinationDown);
        }
        let len = out.len;
        let need = NET_HDR_LEN + len;
        if let Some((head, dst)) = self.flat_chain(need)? {
            let mut h = out.hdr;
            h.num_buffers = 1;
            let written = frame::copy_with_header_flat(
                &h.to_bytes(),
                &out.src,
                out.skip,
                &self.mem,
                &dst,
                len,
            );
            if let Err(e) = written {
                return Err(self.sender_gone(&e));
            }
            self.mapped
                .write_used(self.ring.get_queue(), 0, head, need as u32);
            self.consume(1);
            self.tally.count(len, out.cast);
            return Ok(());
        }
        self.scratch.segs.clear();
        self.scratch.chains.clear();
        let mut cap: usize = 0;
        while cap < need {
            let k = self.scratch.chains.len() as u16;
            if k >= self.avail && (self.mergeable || k == 0) {
                self.reload()?;
            }
            if k >= self.avail || (!self.mergeable && k == 1) {
                // Nothing consumed: next_avail only moves once the frame is written.
                self.tally.drop(DropReason::NoRxBuffer);
                return Err(DropReason::NoRxBuffer);
            }
            let head = self.mapped.avail_head(self.ring.get_queue(), k);
            let walked = ring::walk_chain(
                &self.mem,
                self.mapped.table(),
                head,
                Dir::Writable,
                self.indirect,
                u32::MAX,
                &mut self.scratch.segs,
            );
            let c = match walked {
                Ok(c) => c,
                // The driver's buffer has no IOTLB entry yet (a MISS went out): it stays
                // posted, and so do the ones gathered before it. The next few are asked for
                // now.
                Err(ring::ChainError::Iommu(Fault::Miss { .. })) => {
                    self.ask_ahead(0);
                    // With a channel for MISS requests the caller keeps the frame until the
                    // entry comes; without, it is lost as if no buffer were posted.
                    if self.held.session.iommu.has_channel_now() {
                        self.unmapped = true;
                    } else {
                        self.tally.drop(DropReason::NoRxBuffer);
                    }
                    return Err(DropReason::NoRxBuffer);
                }
                // One it may not write (a permission fault): like any chain the device refuses,
                // it is completed empty, with the ones gathered before it, and the queue goes
                // on (it is not isolated); the frame is lost.
                Err(ring::ChainError::Iommu(f)) => {
                    for i in 0..=k {
                        let head = match self.scratch.chains.get(usize::from(i)) {
                            Some((h, _)) => *h,
                            None => head,
                        };
                        self.mapped.write_used(self.ring.get_queue(), i, head, 0);
                    }
                    self.consume(k + 1);
                    self.tally.drop(DropReason::MalformedChain);
                    self.held
                        .session
                        .warn_once(Warn::IommuFault, &format_args!("RX chain {head}: {f}"));
                    // The sender sees what a broken receiver ring shows it.
                    return Err(DropReason::DestinationDown);
                }
                Err(e) => {
                    self.tally.drop(DropReason::MalformedChain);
                    return Err(self.isolate(&e));
                }
            };
            self.scratch.chains.push((head, c));
            cap += c as usize;
        }

        let mut h = out.hdr;
        h.num_buffers = self.scratch.chains.len() as u16;
        let written = frame::copy_with_header(
            &h.to_bytes(),
            &out.src,
            out.skip,
            &self.mem,
            &self.scratch.segs,
            len,
        );
        if let Err(e) = written {
            return Err(self.sender_gone(&e));
        }
        let mut left = need;
        for (k, (head, c)) in self.scratch.chains.iter().enumerate() {
            let n = left.min(*c as usize);
            left -= n;
            self.mapped
                .write_used(self.ring.get_queue(), k as u16, *head, n as u32);
        }
        self.consume(self.scratch.chains.len() as u16);
        self.tally.count(len, out.cast);
        Ok(())
    }

    /// The first posted chain, when it is one buffer in one region with room for `need` bytes:
    /// nearly every frame, taken without the general walk. Nothing is consumed.
    fn flat_chain(&mut self, need: usize) -> Result<Option<(u16, Flat)>, DropReason> {
        if self.avail == 0 {
            self.reload()?;
            if self.avail == 0 {
                return Ok(None);
            }
        }
        let q = self.ring.get_queue();
        let pos = q.next_avail();
        // The slot of `pos` is also the slot of `pos + RX_AHEAD`, refilled below.
        let slot = usize::from(pos & (RX_AHEAD - 1));
        let seen = self.ahead[slot];
        let (head, f) = if seen.pos == u32::from(pos) {
            (seen.head, seen.flat)
        } else {
            let head = self.mapped.avail_head(q, 0);
            (
                head,
                self.mapped.flat(&self.mem, head, Dir::Writable, u32::MAX),
            )
        };
        // The buffer a few frames on is posted already: look it up now and ask for its lines,
        // for writing. Under ACCESS_PLATFORM a hint is not worth a translation.
        if self.to_come > RX_AHEAD && self.avail > RX_AHEAD && self.mem.dma().is_none() {
            let later = self.mapped.avail_head(q, RX_AHEAD);
            let flat = self.mapped.flat(&self.mem, later, Dir::Writable, u32::MAX);
            match flat {
                // The header and a small frame, which span two lines.
                Some(l) => l.host.prefetch_write_span(128.min(l.seg.len as usize)),
                None => self.mapped.warm_desc(&self.mem, later, Dir::Writable),
            }
            self.ahead[slot] = Ahead {
                pos: u32::from(pos.wrapping_add(RX_AHEAD)),
                head: later,
                flat,
            };
        }
        self.to_come = self.to_come.saturating_sub(1);
        Ok(f.filter(|f| f.seg.len as usize >= need).map(|f| (head, f)))
    }

    /// Keeps a copy of `out` (its buffer had no entry) until the entry comes; see
    /// [`flush_parked`]. Dropped when too many wait.
    fn park(&mut self, out: &Outgoing<'_>) -> Result<(), DropReason> {
        let mut bytes = Vec::with_capacity(out.len);
        let kept = frame::gather(&out.src, out.skip, out.len, &mut bytes).is_ok()
            && self.held.session.iommu.park(Parked {
                pair: self.pair,
                hdr: out.hdr,
                cast: out.cast,
                bytes,
            });
        if !kept {
            self.tally.drop(DropReason::NoRxBuffer);
            return Err(DropReason::NoRxBuffer);
        }
        self.parked = true;
        Ok(())
    }

    /// Writes the frames kept for this pair, oldest first; false when one still finds its buffer
    /// unmapped (it stays first in line).
    fn flush_parked(&mut self) -> bool {
        let iommu = self.held.session.iommu.clone();
        while let Some(f) = iommu.take_parked(self.pair) {
            let out = Outgoing {
                hdr: f.hdr,
                src: Source::Bytes(&f.bytes),
                skip: 0,
                len: f.bytes.len(),
                cast: f.cast,
            };
            if self.put_frame(&out).is_err() && std::mem::take(&mut self.unmapped) {
                iommu.unpark_failed(f);
                return false;
            }
        }
        self.parked = false;
        true
    }

    /// Moves past `n` chains whose used entries were written.
    fn consume(&mut self, n: u16) {
        let q = self.ring.get_queue_mut();
        q.set_next_avail(q.next_avail().wrapping_add(n));
        q.set_next_used(q.next_used().wrapping_add(n));
        self.avail -= n;
        // The window moved by n: only the chains new in it are asked for.
        self.ask_ahead(ASK_AHEAD.saturating_sub(n));
    }

    /// Under ACCESS_PLATFORM: walks the next few posted chains so that a MISS goes out now for
    /// any buffer without an IOTLB entry, and the frames that come for them find it in place
    /// instead of being dropped. The driver maps buffers as it posts them, so without this
    /// every first use of a page would cost a frame.
    /// Chains `from..ASK_AHEAD` past next_avail are looked at.
    #[inline]
    fn ask_ahead(&mut self, from: u16) {
        // Inline: without a vIOMMU this check is all a frame pays.
        if self.mem.dma().is_some() {
            self.ask_ahead_walk(from);
        }
    }

    #[inline(never)]
    fn ask_ahead_walk(&mut self, from: u16) {
        for k in from..self.avail.min(ASK_AHEAD) {
            let head = self.mapped.avail_head(self.ring.get_queue(), k);
            if self
                .mapped
                .flat(&self.mem, head, Dir::Writable, u32::MAX)
                .is_some()
            {
                continue;
            }
            // The walk's faults are reported (the MISS is sent); what it gathers is not used.
            self.scratch.segs.clear();
            let _ = ring::walk_chain(
                &self.mem,
                self.mapped.table(),
                head,
                Dir::Writable,
                self.indirect,
                u32::MAX,
                &mut self.scratch.segs,
            );
        }
    }

    /// One used.idx store for the frames written since the last, and a notification if the
    /// driver asked for one among them.
    fn publish(&mut self) {
        if !self.gated
            && self
                .mapped
                .publish_pending(self.ring.get_queue(), self.published)
        {
            if let Err(e) = self.ring.signal_used_queue() {
                log::debug!(
                    "{}: notify on queue {} failed: {e}",
                    self.held.session.name,
                    self.qidx
                );
            }
        }
        self.published = self.ring.get_queue().next_used();
    }

    /// Destination buffers were checked when walked, so a failed copy means the sender's memory
    /// went away under us (e.g. its memory table changed). The frame is lost, the buffers are not.
    fn sender_gone(&self, e: &frame::CopyError) -> DropReason {
        self.held.session.warn_once(Warn::SenderMemory, e);
        DropReason::MalformedChain
    }
}

impl Drop for RxQueue<'_> {
    /// Shows the driver the rest of the run: one used.idx store, one fence and at most one
    /// notification, before the ring lock is released (so a stop never sees unpublished entries).
    fn drop(&mut self) {
        self.publish();
        let q = self.ring.get_queue();
        self.held.saw(q.next_avail(), q.next_used());
        self.dest.queue_counters(self.pair).add_rx(&self.tally);
    }
}

/// Delivers what waits in `part`'s session for RX buffers' IOTLB entries (after an UPDATE came),
/// as far as the entries allow now.
pub fn flush_parked(part: &Partition, session: &Arc<Session>) {
    if !session.iommu.any_parked() {
        return;
    }
    let held = Held::of(session.clone());
    let mut scratch = RxScratch::default();
    for pair in session.iommu.parked_pairs() {
        // Opening writes nothing; the run publishes (and notifies) when dropped.
        if let Ok(mut q) = RxQueue::open(part, &held, pair, 1, &mut scratch) {
            if q.pair == pair {
                q.flush_parked();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::partition::Role;
    use crate::session::Session;
    use crate::testutil::{Driver, DESC, F_WRITE};
    use virtio_bindings::bindings::virtio_net::VIRTIO_NET_F_MRG_RXBUF;
    use vm_memory::{Bytes, GuestAddress};

    const BUF: u64 = 0x8000;

    /// A receiving partition whose RX queue 0 is `d`'s ring (TX queue 1 is never started).
    fn receiver(d: &Driver, mergeable: bool) -> (Partition, Arc<Session>) {
        let p = Partition::new(
            1,
            Role::Vf(0),
            crate::testutil::config("02:00:00:00:00:01", 1),
        );
        let s = crate::testutil::session_on(d, 0);
        if mergeable {
            s.set_features(1 << VIRTIO_NET_F_MRG_RXBUF);
        }
        p.install_session(s.clone());
        (p, s)
    }

    fn post(d: &mut Driver, id: u16, len: u32) {
        d.desc(DESC, id, BUF + u64::from(id) * 0x1000, len, F_WRITE, 0);
        d.offer(id);
    }

    fn frame(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i * 13) as u8).collect()
    }

    /// One frame as a run of its own: opened, put, published.
    fn deliver(p: &Partition, s: &Arc<Session>, o: &Outgoing<'_>) -> Result<(), DropReason> {
        let mut scratch = RxScratch::default();
        let h = Held::of(s.clone());
        let r = RxQueue::open(p, &h, 0, 1, &mut scratch)?.put(o);
        r
    }

    fn out(f: &[u8]) -> Outgoing<'_> {
        Outgoing {
            hdr: NetHdr::default(),
            src: Source::Bytes(f),
            skip: 0,
            len: f.len(),
            cast: Cast::Unicast,
        }
    }

    #[test]
    fn mergeable_frame_spans_chains_and_is_published_at_once() {
        let (mut d, _) = Driver::new(16);
        let (p, s) = receiver(&d, true);
        for id in 0..4 {
            post(&mut d, id, 100);
        }
        let f = frame(250); // 12 + 250 = 262 bytes: 3 chains of 100
        let mut scratch = RxScratch::default();
        let h = Held::of(s.clone());
        let mut q = RxQueue::open(&p, &h, 0, 1, &mut scratch).unwrap();
        q.put(&out(&f)).unwrap();
        assert_eq!(d.used_idx(), 0, "nothing visible before the run ends");
        drop(q);
        assert_eq!(d.used_idx(), 3);
        assert_eq!(
            [d.used(0), d.used(1), d.used(2)],
            [(0, 100), (1, 100), (2, 62)]
        );
        let mut hb = [0u8; NET_HDR_LEN];
        d.mem.read_slice(&mut hb, GuestAddress(BUF)).unwrap();
        assert_eq!(NetHdr::parse(&hb).num_buffers, 3);
        let mut got = vec![0u8; 250];
        d.mem
            .read_slice(&mut got[..88], GuestAddress(BUF + 12))
            .unwrap();
        d.mem
            .read_slice(&mut got[88..188], GuestAddress(BUF + 0x1000))
            .unwrap();
        d.mem
            .read_slice(&mut got[188..], GuestAddress(BUF + 0x2000))
            .unwrap();
        assert_eq!(got, f);
        assert_eq!(p.totals().rx_bytes, 250);
    }

    #[test]
    fn a_frame_that_does_not_fit_consumes_nothing() {
        let (mut d, _) = Driver::new(16);
        let (p, s) = receiver(&d, true);
        post(&mut d, 0, 100);
        let f = frame(200);
        let r = deliver(&p, &s, &out(&f));
        assert_eq!(r, Err(DropReason::NoRxBuffer));
        assert_eq!(d.used_idx(), 0);
        assert_eq!(p.totals().dropped(DropReason::NoRxBuffer), 1);
        // The buffer posted earlier is still there for the next frame that fits, and more
        // buffers complete the big one.
        post(&mut d, 1, 100);
        post(&mut d, 2, 100);
        deliver(&p, &s, &out(&f)).unwrap();
        assert_eq!(d.used_idx(), 3);
        assert_eq!(d.used(0).0, 0, "the oldest buffer is used first");
    }

    #[test]
    fn without_mergeable_one_chain_must_hold_the_frame() {
        let (mut d, _) = Driver::new(16);
        let (p, s) = receiver(&d, false);
        post(&mut d, 0, 100);
        post(&mut d, 1, 100);
        let r = deliver(&p, &s, &out(&frame(150)));
        assert_eq!(r, Err(DropReason::NoRxBuffer));
        deliver(&p, &s, &out(&frame(80))).unwrap();
        let mut hb = [0u8; NET_HDR_LEN];
        d.mem.read_slice(&mut hb, GuestAddress(BUF)).unwrap();
        assert_eq!(NetHdr::parse(&hb).num_buffers, 1);
        assert_eq!(d.used(0), (0, 92));
    }

    #[test]
    fn buffers_looked_up_ahead_take_their_own_frames_in_ring_order() {
        // A run longer than the look-ahead, over heads posted out of order: flat buffers, one
        // too small for its frame (mergeable: the frame takes the next chain too) and a chain
        // of two descriptors, so positions are consumed one and two at a time.
        let (mut d, _) = Driver::new(32);
        let (p, s) = receiver(&d, true);
        let heads: [u16; 12] = [7, 3, 11, 0, 9, 5, 1, 10, 2, 8, 4, 6];
        let small = 9;
        let (chain, chain_next) = (1, 20);
        for &id in &heads {
            let addr = BUF + u64::from(id) * 0x1000;
            match id {
                _ if id == small => d.desc(DESC, id, addr, 40, F_WRITE, 0),
                _ if id == chain => {
                    d.desc(DESC, id, addr, 30, F_WRITE | 1, chain_next);
                    d.desc(DESC, chain_next, addr + 0x800, 200, F_WRITE, 0);
                }
                _ => d.desc(DESC, id, addr, 200, F_WRITE, 0),
            }
            d.offer(id);
        }
        let frames: Vec<Vec<u8>> = (0..11)
            .map(|k| (0..60 + k).map(|i| (i * 7 + k * 31) as u8).collect())
            .collect();
        let mut scratch = RxScratch::default();
        let h = Held::of(s.clone());
        let mut q = RxQueue::open(&p, &h, 0, frames.len() as u16, &mut scratch).unwrap();
        for f in &frames {
            q.put(&out(f)).unwrap();
        }
        drop(q);
        // The small buffer's frame (the fifth) also took the next chain: 12 chains, 11 frames.
        assert_eq!(d.used_idx(), 12);
        let mut k = 0;
        for (pos, f) in frames.iter().enumerate() {
            let need = (NET_HDR_LEN + f.len()) as u32;
            let (id, len) = d.used(k);
            assert_eq!(id, u32::from(heads[usize::from(k)]), "frame {pos}");
            let addr = BUF + u64::from(heads[usize::from(k)]) * 0x1000;
            let mut hb = [0u8; NET_HDR_LEN];
            d.mem.read_slice(&mut hb, GuestAddress(addr)).unwrap();
            let mut got = vec![0u8; f.len()];
            if heads[usize::from(k)] == small {
                assert_eq!(NetHdr::parse(&hb).num_buffers, 2);
                assert_eq!((len, d.used(k + 1).1), (40, need - 40));
                let next = BUF + u64::from(heads[usize::from(k) + 1]) * 0x1000;
                d.mem
                    .read_slice(&mut got[..28], GuestAddress(addr + 12))
                    .unwrap();
                d.mem
                    .read_slice(&mut got[28..], GuestAddress(next))
                    .unwrap();
                k += 2;
            } else if heads[usize::from(k)] == chain {
                assert_eq!((NetHdr::parse(&hb).num_buffers, len), (1, need));
                d.mem
                    .read_slice(&mut got[..18], GuestAddress(addr + 12))
                    .unwrap();
                d.mem
                    .read_slice(&mut got[18..], GuestAddress(addr + 0x800))
                    .unwrap();
                k += 1;
            } else {
                assert_eq!((NetHdr::parse(&hb).num_buffers, len), (1, need));
                d.mem.read_slice(&mut got, GuestAddress(addr + 12)).unwrap();
                k += 1;
            }
            assert_eq!(&got, f, "frame {pos}");
        }
    }

    #[test]
    fn a_run_is_published_once_when_it_ends() {
        let (mut d, _) = Driver::new(16);
        let (p, s) = receiver(&d, true);
        for id in 0..4 {
            post(&mut d, id, 200);
        }
        let mut scratch = RxScratch::default();
        let h = Held::of(s.clone());
        let mut q = RxQueue::open(&p, &h, 0, 1, &mut scratch).unwrap();
        for len in [60, 70, 80] {
            q.put(&out(&frame(len))).unwrap();
        }
        assert_eq!(d.used_idx(), 0);
        assert_eq!(p.totals().rx_packets, 0, "counted when the run ends");
        drop(q);
        assert_eq!(d.used_idx(), 3);
        assert_eq!(
            [d.used(0), d.used(1), d.used(2)],
            [(0, 72), (1, 82), (2, 92)]
        );
        assert_eq!((p.totals().rx_packets, p.totals().rx_bytes), (3, 210));
        // The next run starts where this one ended.
        deliver(&p, &s, &out(&frame(50))).unwrap();
        assert_eq!(d.used_idx(), 4);
        assert_eq!(d.used(3), (3, 62));
    }

    #[test]
    fn a_long_run_shows_the_driver_its_frames_every_32() {
        let (mut d, _) = Driver::new(128);
        let (p, s) = receiver(&d, true);
        for id in 0..80 {
            post(&mut d, id, 200);
        }
        let mut scratch = RxScratch::default();
        let h = Held::of(s.clone());
        let mut q = RxQueue::open(&p, &h, 0, 80, &mut scratch).unwrap();
        for k in 1..=80u16 {
            q.put(&out(&frame(60))).unwrap();
            assert_eq!(
                d.used_idx(),
                k / PUBLISH_EVERY * PUBLISH_EVERY,
                "after frame {k}"
            );
        }
        drop(q);
        assert_eq!(d.used_idx(), 80);
        assert_eq!(p.totals().rx_packets, 80);
    }

    #[test]
    fn a_run_sees_buffers_posted_while_it_is_open() {
        let (mut d, _) = Driver::new(16);
        let (p, s) = receiver(&d, true);
        post(&mut d, 0, 200);
        let mut scratch = RxScratch::default();
        let h = Held::of(s.clone());
        let mut q = RxQueue::open(&p, &h, 0, 1, &mut scratch).unwrap();
        q.put(&out(&frame(60))).unwrap();
        assert_eq!(q.put(&out(&frame(60))), Err(DropReason::NoRxBuffer));
        post(&mut d, 1, 200);
        q.put(&out(&frame(60))).unwrap();
        drop(q);
        assert_eq!(d.used_idx(), 2);
        assert_eq!(p.totals().dropped(DropReason::NoRxBuffer), 1);
    }

    #[test]
    fn a_malformed_rx_chain_breaks_only_that_queue() {
        let (mut d, _) = Driver::new(16);
        let (p, s) = receiver(&d, true);
        d.desc(DESC, 0, BUF, 100, 0, 0); // readable: not an RX buffer
        d.offer(0);
        let r = deliver(&p, &s, &out(&frame(50)));
        assert_eq!(r, Err(DropReason::DestinationDown));
        assert!(s.is_broken(0));
        assert_eq!(p.totals().dropped(DropReason::MalformedChain), 1);
        assert_eq!(d.used_idx(), 0);
        // Isolated until restarted: later frames are refused without touching the ring.
        post(&mut d, 1, 100);
        let r = deliver(&p, &s, &out(&frame(50)));
        assert_eq!(r, Err(DropReason::DestinationDown));
        s.clear_broken(0);
    }
}
