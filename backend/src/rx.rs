//! Delivery into a partition's RX queue: the receiving half of the data path. Runs on the
//! sender's thread under the receiver's RX vring lock, so a receiver with no buffers costs the
//! sender one failed check, never a wait.

use vhost_user_backend::VringT;
use virtio_queue::QueueT;
use vm_memory::GuestAddressSpace;

use crate::counters::{Cast, DropReason};
use crate::frame::{self, Source};
use crate::net_hdr::{NetHdr, NET_HDR_LEN};
use crate::partition::Partition;
use crate::ring::{self, Dir, Seg, Table};
use crate::session::Session;

/// Scratch reused across deliveries so the steady state allocates nothing.
#[derive(Default)]
pub struct RxScratch {
    segs: Vec<Seg>,
    chain: Vec<Seg>,
    chains: Vec<(u16, u32)>,
}

/// Picks the receiver's RX queue: the sender's pair index spread over the receiver's pairs,
/// falling back to pair 0 when that ring is not running (the driver enabled fewer pairs).
fn pick_pair(session: &Session, hint: usize) -> Option<usize> {
    let vrings = session.vrings()?;
    let pairs = vrings.len() / 2;
    if pairs == 0 {
        return None;
    }
    let running = |p: usize| {
        let s = vrings[2 * p].get_ref();
        s.is_enabled() && virtio_queue::QueueT::ready(s.get_queue()) && !session.is_broken(2 * p)
    };
    let p = hint % pairs;
    if running(p) {
        Some(p)
    } else if p != 0 && running(0) {
        Some(0)
    } else {
        None
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
/// several chains published together. Receiver-side drops are counted on `dest` here.
pub fn deliver(
    dest: &Partition,
    session: &Session,
    pair_hint: usize,
    out: &Outgoing<'_>,
    scratch: &mut RxScratch,
) -> Result<(), DropReason> {
    let len = out.len;
    let pair = pick_pair(session, pair_hint).ok_or(DropReason::DestinationDown)?;
    let qidx = 2 * pair;
    let vrings = session.vrings().ok_or(DropReason::DestinationDown)?;
    let vring = &vrings[qidx];
    let mem = session.mem.memory();
    let mergeable = session.mergeable();
    let indirect = session.indirect();
    let need = NET_HDR_LEN + len;

    let mut guard = vring.get_mut();
    let q = guard.get_queue_mut();
    let avail = match ring::pending(&mem, q) {
        Ok(n) => n,
        Err(ring::RingError::NotReady) => return Err(DropReason::DestinationDown),
        Err(e) => {
            session.mark_broken(qidx, &e);
            return Err(DropReason::DestinationDown);
        }
    };
    let table = Table::of(q);
    scratch.segs.clear();
    scratch.chains.clear();
    let mut cap: usize = 0;
    while cap < need {
        let k = scratch.chains.len() as u16;
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
    q.set_next_avail(q.next_avail().wrapping_add(used));
    match ring::publish_used(&mem, q, used) {
        Ok(true) => {
            if let Err(e) = guard.signal_used_queue() {
                log::debug!("{}: RX notify failed: {e}", session.name);
            }
        }
        Ok(false) => {}
        Err(e) => session.mark_broken(qidx, &e),
    }
    dest.queue_counters(pair).rx(len, out.cast);
    Ok(())
}
