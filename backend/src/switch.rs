//! The embedded switch (VEB): forwards a frame from one partition's TX queue to the partition(s)
//! it is for, by destination MAC. Decisions are a pure function of the frame's MACs and the
//! forwarding table, so they are tested apart from the queues.

use std::sync::Arc;

// SipHash showed in per-packet profiles; the table is small and its keys are not attacker-chosen
// (MACs come from the config), so a fast non-keyed hash is fine.
use rustc_hash::FxHashMap;

use std::ops::Range;

use crate::counters::{Cast, DropReason, Tally};
use crate::frame::{self, Source};
use crate::hostmem::{HostMem, HostPtr};
use crate::mac::MacAddr;
use crate::net_hdr::{NetHdr, FLAG_NEEDS_CSUM, NET_HDR_LEN};
use crate::offload;
use crate::partition::{Partition, PartitionId};
use crate::ring::Seg;
use crate::rx::{Outgoing, RxQueue, RxScratch};
use crate::session::{Held, Warn};

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SwitchError {
    #[error("MAC {mac} is used by both {first} and {second}")]
    DuplicateMac {
        mac: MacAddr,
        first: String,
        second: String,
    },
    #[error("partition {0} has a group (multicast) or all-zero MAC {1}")]
    BadMac(String, MacAddr),
    #[error("partition table must be indexed 0..n (PF at 0); entry {0} has id {1}")]
    BadIndex(usize, PartitionId),
}

/// What the switch does with one frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Decision {
    Drop(DropReason),
    Unicast(PartitionId),
    /// To every other running partition.
    Flood(Cast),
}

/// A frame taken from a TX queue, still in the sender's guest memory.
#[derive(Clone, Debug)]
pub struct TxFrame {
    pub hdr: NetHdr,
    /// The whole chain, starting with the virtio-net header: a range of [`TxBatch::segs`].
    pub segs: Range<usize>,
    /// Bytes after the virtio-net header.
    pub len: usize,
    pub dst: MacAddr,
    pub src: MacAddr,
    /// Host address of the chain when it is one buffer in one region ([`crate::ring::Flat`]).
    pub host: Option<HostPtr>,
    /// The frame carries a VLAN tag (its MTU allowance is 4 bytes more).
    pub tagged: bool,
}

/// The frames of one TX batch of one queue, in ring order.
pub struct TxBatch<'a> {
    pub mem: &'a HostMem<'a>,
    pub segs: &'a [Seg],
    pub frames: &'a [TxFrame],
}

impl TxBatch<'_> {
    fn segs_of(&self, f: &TxFrame) -> &[Seg] {
        self.segs.get(f.segs.clone()).unwrap_or(&[])
    }
}

/// Scratch owned by one TX queue's worker; reused for every batch.
#[derive(Default)]
pub struct FwdScratch {
    decisions: Vec<Decision>,
    runs: RunScratch,
}

impl FwdScratch {
    /// Lets go of every destination's session and memory. Called when the sending queue goes
    /// idle, so a departed receiver's guest memory is never kept mapped by an idle sender.
    pub fn release(&mut self) {
        self.runs.held.clear();
        self.runs.last = None;
    }

    /// Warms the RX ring of the partition the last run went to (see [`Held::warm`]).
    pub fn warm_last(&self) {
        if let Some(h) = self
            .runs
            .last
            .and_then(|id| self.runs.held.get(id)?.as_ref())
        {
            h.warm(crate::ring::Dir::Writable);
        }
    }
}

/// What delivering a run needs besides the frames.
#[derive(Default)]
struct RunScratch {
    linear: Vec<u8>,
    segments: Vec<u8>,
    rx: RxScratch,
    /// Per destination partition (by id): its session and memory, kept across batches.
    held: Vec<Option<Held>>,
    /// Next entry of `held` to look at for staleness.
    sweep: usize,
    /// The partition the last run was delivered to.
    last: Option<PartitionId>,
}

impl RunScratch {
    /// Looks at one held entry and lets it go if its session moved on. Once per batch, so a
    /// departed receiver's memory is released within as many batches as there are partitions,
    /// even while this sender never goes idle.
    fn sweep(&mut self) {
        if self.held.is_empty() {
            return;
        }
        self.sweep = (self.sweep + 1) % self.held.len();
        let slot = &mut self.held[self.sweep];
        if slot.as_ref().is_some_and(|h| !h.current()) {
            *slot = None;
        }
    }
}

pub struct Switch {
    partitions: Vec<Arc<Partition>>,
    /// Partition by MAC ([`MacAddr::key`]).
    fdb: FxHashMap<u64, PartitionId>,
}

impl Switch {
    pub fn new(partitions: Vec<Arc<Partition>>) -> Result<Self, SwitchError> {
        let mut fdb: FxHashMap<u64, PartitionId> = FxHashMap::default();
        for (i, p) in partitions.iter().enumerate() {
            if p.id != i {
                return Err(SwitchError::BadIndex(i, p.id));
            }
            let mac = p.mac();
            if mac.is_group() || mac.is_zero() {
                return Err(SwitchError::BadMac(p.name(), mac));
            }
            if let Some(other) = fdb.insert(mac.key(), p.id) {
                return Err(SwitchError::DuplicateMac {
                    mac,
                    first: partitions[other].name(),
                    second: p.name(),
                });
            }
        }
        Ok(Switch { partitions, fdb })
    }

    pub fn partitions(&self) -> &[Arc<Partition>] {
        &self.partitions
    }

    pub fn decide(&self, from: &Partition, src: MacAddr, dst: MacAddr) -> Decision {
        if from.spoofchk() && src != from.mac() {
            return Decision::Drop(DropReason::SpoofedSource);
        }
        if dst.is_broadcast() {
            return Decision::Flood(Cast::Broadcast);
        }
        if dst.is_multicast() {
            return Decision::Flood(Cast::Multicast);
        }
        match self.fdb.get(&dst.key()) {
            None => Decision::Drop(DropReason::UnknownDestination),
            Some(id) if *id == from.id => Decision::Drop(DropReason::Hairpin),
            Some(id) => Decision::Unicast(*id),
        }
    }

    /// Forwards a batch from `from`'s TX pair `pair`, counting every frame on both ends.
    /// Consecutive frames for the same partition are delivered as one run: the receiver's RX
    /// queue is locked, read and published once per run, not per frame.
    pub fn forward(&self, from: &Partition, pair: usize, batch: &TxBatch<'_>, s: &mut FwdScratch) {
        let FwdScratch { decisions, runs } = s;
        decisions.clear();
        // A batch is mostly one flow: a frame with the previous frame's addresses gets its
        // decision without a table lookup.
        let mut last: Option<(MacAddr, MacAddr, Decision)> = None;
        decisions.extend(batch.frames.iter().map(|f| match last {
            Some((src, dst, d)) if src == f.src && dst == f.dst => d,
            _ => {
                let d = self.decide(from, f.src, f.dst);
                last = Some((f.src, f.dst, d));
                d
            }
        }));
        let mut tx = Tally::default();
        let mut i = 0;
        while i < batch.frames.len() {
            let f = &batch.frames[i];
            match decisions[i] {
                Decision::Drop(r) => {
                    tx.drop(r);
                    i += 1;
                }
                Decision::Flood(cast) => {
                    tx.count(f.len, cast);
                    for dest in self.partitions.iter().filter(|p| p.id != from.id) {
                        let run = std::slice::from_ref(f);
                        // A partition that is not running is not a member of the flood.
                        if let RunResult::Done(t) =
                            self.deliver(from, dest, pair, batch, run, cast, runs)
                        {
                            tx.merge_drops(&t);
                        }
                    }
                    i += 1;
                }
                Decision::Unicast(id) => {
                    let n = decisions[i..]
                        .iter()
                        .take_while(|d| **d == Decision::Unicast(id))
                        .count();
                    let run = &batch.frames[i..i + n];
                    for f in run {
                        tx.count(f.len, Cast::Unicast);
                    }
                    match self.partitions.get(id) {
                        Some(dest) => {
                            let r = self.deliver(from, dest, pair, batch, run, Cast::Unicast, runs);
                            match r {
                                RunResult::Done(t) => tx.merge_drops(&t),
                                RunResult::Down => tx.drop_n(DropReason::DestinationDown, n),
                            }
                        }
                        None => tx.drop_n(DropReason::DestinationDown, n),
                    }
                    i += n;
                }
            }
        }
        from.queue_counters(pair).add_tx(&tx);
        runs.sweep();
    }

    /// Delivers a run of frames to one partition, fixing offloads up in software when its
    /// driver cannot take them. Drops on the receiver's side are counted there; the returned
    /// counts are for the sender's books.
    #[allow(clippy::too_many_arguments)]
    fn deliver(
        &self,
        from: &Partition,
        dest: &Partition,
        pair: usize,
        batch: &TxBatch<'_>,
        run: &[TxFrame],
        cast: Cast,
        runs: &mut RunScratch,
    ) -> RunResult {
        let RunScratch {
            linear,
            segments,
            rx,
            held,
            last,
            ..
        } = runs;
        *last = Some(dest.id);
        if held.len() <= dest.id {
            held.resize_with(dest.id + 1, || None);
        }
        let Some(h) = Held::refresh(&mut held[dest.id], dest) else {
            return RunResult::Down;
        };
        let frames = u16::try_from(run.len()).unwrap_or(u16::MAX);
        let mut q = match RxQueue::open(dest, h, pair, frames, rx) {
            Ok(q) => q,
            Err(_) => return RunResult::Down,
        };
        let mut drops = Tally::default();
        for f in run {
            match Self::put(from, &mut q, batch, f, cast, linear, segments) {
                // NoRxBuffer is the receiver's drop, counted there.
                Ok(()) | Err(DropReason::NoRxBuffer) => {}
                Err(r) => drops.drop(r),
            }
        }
        RunResult::Done(drops)
    }

    fn put(
        from: &Partition,
        q: &mut RxQueue<'_>,
        batch: &TxBatch<'_>,
        f: &TxFrame,
        cast: Cast,
        linear: &mut Vec<u8>,
        segments: &mut Vec<u8>,
    ) -> Result<(), DropReason> {
        let rxo = q.offloads();
        // Only these fields travel; DATA_VALID and num_buffers are the device's to set.
        let hdr = NetHdr {
            flags: f.hdr.flags & FLAG_NEEDS_CSUM,
            num_buffers: 0,
            ..f.hdr
        };
        let segs = batch.segs_of(f);
        let max = offload::max_frame(q.mtu(), f.tagged);
        let bad = |e: &dyn std::fmt::Display| {
            if let Some(own) = from.session() {
                own.warn_once(
                    Warn::BadTxHeader,
                    &format_args!("offload header rejected: {e}"),
                );
            }
            DropReason::MalformedChain
        };
        // The frame as it is, or None when it must go through the software path.
        let as_is = if !offload::passes_as_is(&hdr, rxo) {
            None
        } else if hdr.is_gso() {
            // Validated as segmentation would; the receiver's stack segments it later.
            let mut head = [0u8; offload::GSO_HEAD];
            let n = f.len.min(head.len());
            match frame::read(batch.mem, segs, NET_HDR_LEN, &mut head[..n]) {
                Ok(got) if got == n => {}
                _ => return Err(DropReason::MalformedChain),
            }
            match offload::gso_as_is(&hdr, &head[..n], f.len, max) {
                Ok(fits) => fits,
                Err(e) => return Err(bad(&e)),
            }
        } else if f.len > max {
            return Err(DropReason::Oversize);
        } else {
            Some(f.len)
        };
        if let Some(len) = as_is {
            let src = match f.host {
                Some(ptr) => Source::Host {
                    ptr,
                    len: NET_HDR_LEN + f.len,
                },
                None => Source::Guest {
                    mem: batch.mem,
                    segs,
                },
            };
            return q.put(&Outgoing {
                hdr,
                src,
                skip: NET_HDR_LEN,
                len,
                cast,
            });
        }
        linear.resize(f.len, 0);
        match frame::read(batch.mem, segs, NET_HDR_LEN, linear) {
            Ok(n) if n == f.len => {}
            _ => return Err(DropReason::MalformedChain),
        }
        let mut first_err = Ok(());
        let r = offload::resolve(&hdr, linear, rxo, max, segments, &mut |h, bytes| {
            let seg = Outgoing {
                hdr: *h,
                src: Source::Bytes(bytes),
                skip: 0,
                len: bytes.len(),
                cast,
            };
            let res = q.put(&seg);
            if first_err.is_ok() {
                first_err = res;
            }
        });
        match r {
            Ok(_) => first_err,
            Err(offload::OffloadError::Oversize { .. }) => Err(DropReason::Oversize),
            Err(e) => Err(bad(&e)),
        }
    }
}

/// What became of a run of frames, for the sender's counters.
enum RunResult {
    /// The receiver took the run; these are the sender-side drops among it.
    Done(Tally),
    /// The receiver is not running: none of the run was delivered.
    Down,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::partition::Role;

    fn part(id: usize, mac: &str) -> Arc<Partition> {
        let role = if id == 0 {
            Role::Pf
        } else {
            Role::Vf(id as u16 - 1)
        };
        Arc::new(Partition::new(id, role, crate::testutil::config(mac, 1)))
    }

    fn sw() -> Switch {
        Switch::new(vec![
            part(0, "02:00:00:00:00:00"),
            part(1, "02:00:00:00:00:01"),
            part(2, "02:00:00:00:00:02"),
        ])
        .unwrap()
    }

    fn mac(s: &str) -> MacAddr {
        s.parse().unwrap()
    }

    /// A 60-byte frame with no chain behind it (the switch tests never copy).
    fn frame(src: MacAddr, dst: MacAddr) -> TxFrame {
        TxFrame {
            hdr: NetHdr::default(),
            segs: 0..0,
            len: 60,
            dst,
            src,
            host: None,
            tagged: false,
        }
    }

    #[test]
    fn unicast_goes_to_the_owner_of_the_destination_mac() {
        let s = sw();
        let pf = &s.partitions()[0];
        assert_eq!(
            s.decide(pf, pf.mac(), mac("02:00:00:00:00:02")),
            Decision::Unicast(2)
        );
        let vf0 = &s.partitions()[1];
        assert_eq!(
            s.decide(vf0, vf0.mac(), mac("02:00:00:00:00:00")),
            Decision::Unicast(0)
        );
    }

    #[test]
    fn group_addresses_flood() {
        let s = sw();
        let vf = &s.partitions()[2];
        assert_eq!(
            s.decide(vf, vf.mac(), MacAddr::BROADCAST),
            Decision::Flood(Cast::Broadcast)
        );
        assert_eq!(
            s.decide(vf, vf.mac(), mac("33:33:00:00:00:01")),
            Decision::Flood(Cast::Multicast)
        );
    }

    #[test]
    fn drops_spoofed_unknown_and_hairpin() {
        let s = sw();
        let vf = &s.partitions()[1];
        assert_eq!(
            s.decide(vf, mac("02:00:00:00:00:02"), MacAddr::BROADCAST),
            Decision::Drop(DropReason::SpoofedSource)
        );
        assert_eq!(
            s.decide(vf, vf.mac(), mac("02:00:00:00:99:99")),
            Decision::Drop(DropReason::UnknownDestination)
        );
        assert_eq!(
            s.decide(vf, vf.mac(), vf.mac()),
            Decision::Drop(DropReason::Hairpin)
        );
        vf.set_spoofchk(false);
        assert_eq!(
            s.decide(vf, mac("02:00:00:00:00:02"), mac("02:00:00:00:00:00")),
            Decision::Unicast(0)
        );
    }

    #[test]
    fn a_stale_receiver_hold_is_let_go_by_the_sweep() {
        let (d, _) = crate::testutil::Driver::new(16);
        let (gone, live) = (
            crate::testutil::session_on(&d, 0),
            crate::testutil::session_on(&d, 0),
        );
        let mut r = RunScratch {
            held: vec![None, Some(Held::of(gone.clone())), Some(Held::of(live))],
            ..Default::default()
        };
        gone.stop_worker();
        for _ in 0..3 {
            r.sweep();
        }
        assert!(r.held[1].is_none(), "its session ended");
        assert!(r.held[2].is_some(), "still current");
    }

    #[test]
    fn frames_of_one_batch_are_decided_on_their_own_addresses() {
        let s = sw();
        let vf0 = &s.partitions()[1];
        let m = crate::hostmem::MemMap::of(&vm_memory::GuestMemoryMmap::new());
        let m = m.host();
        let f = frame(vf0.mac(), mac("02:00:00:00:00:02"));
        let spoofed = TxFrame {
            src: mac("02:00:00:00:00:00"),
            ..f.clone()
        };
        let unknown = TxFrame {
            dst: mac("02:00:00:00:00:99"),
            ..f.clone()
        };
        let frames = [f.clone(), spoofed, f.clone(), unknown, f];
        let batch = TxBatch {
            mem: &m,
            segs: &[],
            frames: &frames,
        };
        let mut scratch = FwdScratch::default();
        s.forward(vf0, 0, &batch, &mut scratch);
        assert_eq!(
            scratch.decisions,
            [
                Decision::Unicast(2),
                Decision::Drop(DropReason::SpoofedSource),
                Decision::Unicast(2),
                Decision::Drop(DropReason::UnknownDestination),
                Decision::Unicast(2),
            ]
        );
    }

    #[test]
    fn rejects_duplicate_and_group_macs() {
        let dup = Switch::new(vec![
            part(0, "02:00:00:00:00:00"),
            part(1, "02:00:00:00:00:00"),
        ]);
        assert!(matches!(dup, Err(SwitchError::DuplicateMac { .. })));
        let mc = Switch::new(vec![part(0, "01:00:00:00:00:00")]);
        assert!(matches!(mc, Err(SwitchError::BadMac(..))));
    }

    #[test]
    fn forwarding_to_a_stopped_partition_counts_destination_down() {
        let s = sw();
        let pf = &s.partitions()[0];
        let m = crate::hostmem::MemMap::of(&vm_memory::GuestMemoryMmap::new());
        let m = m.host();
        let f = frame(pf.mac(), mac("02:00:00:00:00:01"));
        // A run of three unicast frames, then a broadcast, then one more unicast.
        let b = TxFrame {
            dst: MacAddr::BROADCAST,
            ..f.clone()
        };
        let frames = [f.clone(), f.clone(), f.clone(), b, f];
        let batch = TxBatch {
            mem: &m,
            segs: &[],
            frames: &frames,
        };
        let mut scratch = FwdScratch::default();
        s.forward(pf, 0, &batch, &mut scratch);
        let t = pf.totals();
        assert_eq!((t.tx_packets, t.tx_broadcast, t.tx_bytes), (5, 1, 300));
        // Broadcast with nobody running: sent, nothing dropped.
        assert_eq!(t.dropped(DropReason::DestinationDown), 4);
        assert_eq!(t.total_drops(), 4);
    }
}
