//! Delivery into a partition's RX queue: the receiving half of the data path. Runs on the
//! sender's thread under the receiver's RX vring lock, so a receiver with no buffers costs the
//! sender one failed check, never a wait.

use vhost_user_backend::{VringState, VringT};
use virtio_queue::QueueT;
use vm_memory::GuestAddressSpace;

use crate::counters::{Cast, DropReason};
use crate::frame::{self, Source};
use crate::net_hdr::{NetHdr, NET_HDR_LEN};
use crate::partition::{Partition, PartitionId};
use crate::ring::{self, Dir, Seg, Table};
use crate::session::{GuestMem, Session};

/// Scratch reused across deliveries so the steady state allocates nothing.
#[derive(Default)]
pub struct RxScratch {
    segs: Vec<Seg>,
    chain: Vec<Seg>,
    chains: Vec<(u16, u32)>,
    /// RX queues written since the last flush: (partition, queue index).
    dirty: Vec<(PartitionId, usize)>,
}

impl RxScratch {
    /// RX queues this sender wrote to and has not published yet.
    pub fn take_dirty(&mut self) -> impl Iterator<Item = (PartitionId, usize)> + '_ {
        self.dirty.drain(..)
    }
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

/// Writes the virtio-net header and the frame into `dest`'s RX buffers, as one or (mergeable)
/// several chains. The used entries become visible to the driver at the next [`flush`] of that
/// queue, which the sender does once per TX batch. Receiver-side drops are counted on `dest`.
pub fn deliver(
    dest: &Partition,
    session: &Session,
    pair_hint: usize,
    out: &Outgoing<'_>,
    scratch: &mut RxScratch,
) -> Result<(), DropReason> {
    let len = out.len;
    let vrings = session.vrings().ok_or(DropReason::DestinationDown)?;
    let pairs = vrings.len() / 2;
    if pairs == 0 {
        return Err(DropReason::DestinationDown);
    }
    // The sender's pair index spread over the receiver's pairs, falling back to pair 0 when that
    // ring is not running (the driver enabled fewer pairs). Checked under the ring's own lock.
    let running = |p: usize, g: &VringState<GuestMem>| {
        g.is_enabled() && g.get_queue().ready() && !session.is_broken(2 * p)
    };
    let mut pair = pair_hint % pairs;
    let mut guard = vrings[2 * pair].get_mut();
    if !running(pair, &guard) {
        drop(guard);
        if pair == 0 {
            return Err(DropReason::DestinationDown);
        }
        pair = 0;
        guard = vrings[0].get_mut();
        if !running(0, &guard) {
            return Err(DropReason::DestinationDown);
        }
    }
    let qidx = 2 * pair;
    let mem = session.mem.memory();
    let mergeable = session.mergeable();
    let indirect = session.indirect();
    let need = NET_HDR_LEN + len;
    let q = guard.get_queue_mut();
    // Buffers the driver had posted when we last looked; avail.idx (a line the driver's core
    // writes) is only read again when those run out.
    let reload = |q: &virtio_queue::Queue| match ring::pending(&mem, q) {
        Ok(n) => {
            session.set_avail_seen(qidx, q.next_avail().wrapping_add(n));
            Ok(n)
        }
        Err(ring::RingError::NotReady) => Err(DropReason::DestinationDown),
        Err(e) => {
            session.mark_broken(qidx, &e);
            Err(DropReason::DestinationDown)
        }
    };
    let mut avail = match session.avail_seen(qidx) {
        Some(seen) if seen.wrapping_sub(q.next_avail()) <= q.size() => {
            seen.wrapping_sub(q.next_avail())
        }
        _ => reload(q)?,
    };
    let table = Table::of(q);
    scratch.segs.clear();
    scratch.chains.clear();
    let mut cap: usize = 0;
    while cap < need {
        let k = scratch.chains.len() as u16;
        if k >= avail && (mergeable || k == 0) {
            avail = reload(q)?;
        }
        if k >= avail || (!mergeable && k == 1) {
            // Nothing consumed: next_avail only moves once the frame is written.
            dest.queue_counters(pair).drop(DropReason::NoRxBuffer);
            return Err(DropReason::NoRxBuffer);
        }
        let head = ring::avail_head(&mem, q, k).map_err(|e| {
            session.mark_broken(qidx, &e);
            DropReason::DestinationDown
        })?;
        let c = match ring::walk_chain(
            &mem,
            table,
            head,
            Dir::Writable,
            indirect,
            u32::MAX,
            &mut scratch.chain,
        ) {
            Ok(c) => c,
            Err(e) => {
                // The receiver's own driver posted garbage: isolate its RX queue.
                dest.queue_counters(pair).drop(DropReason::MalformedChain);
                session.mark_broken(qidx, &e);
                return Err(DropReason::DestinationDown);
            }
        };
        scratch.segs.extend_from_slice(&scratch.chain);
        scratch.chains.push((head, c));
        cap += c as usize;
    }

    let mut h = out.hdr;
    h.num_buffers = scratch.chains.len() as u16;
    let written = frame::copy(
        &Source::Bytes(&h.to_bytes()),
        0,
        &mem,
        &scratch.segs,
        0,
        NET_HDR_LEN,
    )
    .and_then(|_| frame::copy(&out.src, out.skip, &mem, &scratch.segs, NET_HDR_LEN, len));
    if let Err(e) = written {
        // Destination buffers were checked by walk_chain, so the sender's memory went away
        // under us (e.g. its memory table changed). The frame is lost, the buffers are not.
        session.warn_once(crate::session::Warn::SenderMemory, &e);
        return Err(DropReason::MalformedChain);
    }
    let mut left = need;
    for (k, (head, c)) in scratch.chains.iter().enumerate() {
        let n = left.min(*c as usize);
        left -= n;
        if let Err(e) = ring::write_used(&mem, q, k as u16, *head, n as u32) {
            session.mark_broken(qidx, &e);
            return Err(DropReason::DestinationDown);
        }
    }
    let used = scratch.chains.len() as u16;
    // First entries since a (re)start: what the driver has seen is where the ring stands now.
    session.published_or(qidx, q.next_used());
    q.set_next_avail(q.next_avail().wrapping_add(used));
    q.set_next_used(q.next_used().wrapping_add(used));
    if !scratch.dirty.contains(&(dest.id, qidx)) {
        scratch.dirty.push((dest.id, qidx));
    }
    dest.queue_counters(pair).rx(len, out.cast);
    Ok(())
}

/// Shows the driver every used entry written to queue `qidx` so far: one used.idx store, one
/// fence and at most one notification for however many frames senders delivered since.
pub fn flush(session: &Session, qidx: usize) {
    let Some(vring) = session.vrings().and_then(|v| v.get(qidx)) else {
        return;
    };
    let mem = session.mem.memory();
    let guard = vring.get_mut();
    let published = session.published_or(qidx, guard.get_queue().next_used());
    match ring::publish_pending(&mem, guard.get_queue(), published) {
        Ok(notify) => {
            session.set_published(qidx, guard.get_queue().next_used());
            if notify {
                if let Err(e) = guard.signal_used_queue() {
                    log::debug!("{}: notify on queue {qidx} failed: {e}", session.name);
                }
            }
        }
        Err(e) => session.mark_broken(qidx, &e),
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::partition::Role;
    use crate::testutil::{Driver, AVAIL, DESC, F_WRITE, USED};
    use vhost_user_backend::VringRwLock;
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
        let s = Arc::new(Session::new("vf0".into(), 2).unwrap());
        s.mem.lock().unwrap().replace(d.mem.clone());
        let vrings: Vec<VringRwLock<_>> = (0..2)
            .map(|_| VringRwLock::new(s.mem.clone(), 256).unwrap())
            .collect();
        vrings[0].set_queue_size(d.size);
        vrings[0].set_queue_info(DESC, AVAIL, USED).unwrap();
        vrings[0].set_queue_ready(true);
        vrings[0].set_enabled(true);
        s.attach_vrings(&vrings);
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
        deliver(&p, &s, 0, &out(&f), &mut scratch).unwrap();
        assert_eq!(d.used_idx(), 0, "nothing visible before the flush");
        assert_eq!(scratch.take_dirty().collect::<Vec<_>>(), vec![(1, 0)]);
        flush(&s, 0);
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
        let r = deliver(&p, &s, 0, &out(&f), &mut RxScratch::default());
        assert_eq!(r, Err(DropReason::NoRxBuffer));
        assert_eq!(d.used_idx(), 0);
        assert_eq!(p.totals().dropped(DropReason::NoRxBuffer), 1);
        // The buffer posted earlier is still there for the next frame that fits, and more
        // buffers complete the big one.
        post(&mut d, 1, 100);
        post(&mut d, 2, 100);
        deliver(&p, &s, 0, &out(&f), &mut RxScratch::default()).unwrap();
        flush(&s, 0);
        assert_eq!(d.used_idx(), 3);
        assert_eq!(d.used(0).0, 0, "the oldest buffer is used first");
    }

    #[test]
    fn without_mergeable_one_chain_must_hold_the_frame() {
        let (mut d, _) = Driver::new(16);
        let (p, s) = receiver(&d, false);
        post(&mut d, 0, 100);
        post(&mut d, 1, 100);
        let r = deliver(&p, &s, 0, &out(&frame(150)), &mut RxScratch::default());
        assert_eq!(r, Err(DropReason::NoRxBuffer));
        deliver(&p, &s, 0, &out(&frame(80)), &mut RxScratch::default()).unwrap();
        flush(&s, 0);
        let mut hb = [0u8; NET_HDR_LEN];
        d.mem.read_slice(&mut hb, GuestAddress(BUF)).unwrap();
        assert_eq!(NetHdr::parse(&hb).num_buffers, 1);
        assert_eq!(d.used(0), (0, 92));
    }

    #[test]
    fn one_flush_publishes_frames_from_several_deliveries() {
        let (mut d, _) = Driver::new(16);
        let (p, s) = receiver(&d, true);
        for id in 0..4 {
            post(&mut d, id, 200);
        }
        let mut a = RxScratch::default();
        let mut b = RxScratch::default();
        deliver(&p, &s, 0, &out(&frame(60)), &mut a).unwrap();
        deliver(&p, &s, 0, &out(&frame(70)), &mut b).unwrap();
        deliver(&p, &s, 0, &out(&frame(80)), &mut a).unwrap();
        assert_eq!(
            a.take_dirty().count(),
            1,
            "a queue is listed once per batch"
        );
        flush(&s, 0);
        assert_eq!(d.used_idx(), 3);
        assert_eq!(
            [d.used(0), d.used(1), d.used(2)],
            [(0, 72), (1, 82), (2, 92)]
        );
        flush(&s, 0);
        assert_eq!(d.used_idx(), 3, "flushing again changes nothing");
    }

    #[test]
    fn a_malformed_rx_chain_breaks_only_that_queue() {
        let (mut d, _) = Driver::new(16);
        let (p, s) = receiver(&d, true);
        d.desc(DESC, 0, BUF, 100, 0, 0); // readable: not an RX buffer
        d.offer(0);
        let r = deliver(&p, &s, 0, &out(&frame(50)), &mut RxScratch::default());
        assert_eq!(r, Err(DropReason::DestinationDown));
        assert!(s.is_broken(0));
        assert_eq!(p.totals().dropped(DropReason::MalformedChain), 1);
        assert_eq!(d.used_idx(), 0);
        // Isolated until restarted: later frames are refused without touching the ring.
        post(&mut d, 1, 100);
        let r = deliver(&p, &s, 0, &out(&frame(50)), &mut RxScratch::default());
        assert_eq!(r, Err(DropReason::DestinationDown));
        s.clear_broken(0);
    }
}
