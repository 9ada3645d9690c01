//! The embedded switch (VEB): forwards a frame from one partition's TX queue to the partition(s)
//! it is for, by destination MAC. Decisions are a pure function of the frame's MACs and the
//! forwarding table, so they are tested apart from the queues.

use std::sync::Arc;

// SipHash showed in per-packet profiles; the table is small and its keys are not attacker-chosen
// (MACs come from the config), so a fast non-keyed hash is fine.
use rustc_hash::FxHashMap;

use crate::counters::{Cast, DropReason};
use crate::frame::{self, Source};
use crate::mac::MacAddr;
use crate::net_hdr::{NetHdr, FLAG_NEEDS_CSUM, NET_HDR_LEN};
use crate::offload;
use crate::partition::{Partition, PartitionId};
use crate::ring::Seg;
use crate::rx::{self, Outgoing, RxScratch};
use crate::session::Warn;
use crate::Mem;

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
pub struct TxFrame<'a> {
    pub hdr: NetHdr,
    pub mem: &'a Mem,
    /// The whole chain, starting with the virtio-net header.
    pub segs: &'a [Seg],
    /// Bytes after the virtio-net header.
    pub len: usize,
    pub dst: MacAddr,
    pub src: MacAddr,
}

/// Scratch owned by one TX queue's worker; reused for every frame.
#[derive(Default)]
pub struct FwdScratch {
    linear: Vec<u8>,
    segments: Vec<u8>,
    rx: RxScratch,
}

pub struct Switch {
    partitions: Vec<Arc<Partition>>,
    fdb: FxHashMap<MacAddr, PartitionId>,
}

impl Switch {
    pub fn new(partitions: Vec<Arc<Partition>>) -> Result<Self, SwitchError> {
        let mut fdb: FxHashMap<MacAddr, PartitionId> = FxHashMap::default();
        for (i, p) in partitions.iter().enumerate() {
            if p.id != i {
                return Err(SwitchError::BadIndex(i, p.id));
            }
            let mac = p.mac();
            if mac.is_group() || mac.is_zero() {
                return Err(SwitchError::BadMac(p.name(), mac));
            }
            if let Some(other) = fdb.insert(mac, p.id) {
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
        match self.fdb.get(&dst) {
            None => Decision::Drop(DropReason::UnknownDestination),
            Some(id) if *id == from.id => Decision::Drop(DropReason::Hairpin),
            Some(id) => Decision::Unicast(*id),
        }
    }

    /// Forwards one frame from `from`'s TX pair `pair`, counting it on both ends.
    pub fn forward(&self, from: &Partition, pair: usize, f: &TxFrame<'_>, s: &mut FwdScratch) {
        let counters = from.queue_counters(pair);
        match self.decide(from, f.src, f.dst) {
            Decision::Drop(r) => counters.drop(r),
            Decision::Unicast(id) => {
                counters.tx(f.len, Cast::Unicast);
                if let Some(dest) = self.partitions.get(id) {
                    if let Err(r) = self.deliver(from, dest, pair, f, Cast::Unicast, s) {
                        counters.drop(r);
                    }
                }
            }
            Decision::Flood(cast) => {
                counters.tx(f.len, cast);
                for dest in self.partitions.iter().filter(|p| p.id != from.id) {
                    match self.deliver(from, dest, pair, f, cast, s) {
                        // A partition that is not running is not a member of the flood.
                        Ok(()) | Err(DropReason::DestinationDown) => {}
                        Err(r) => counters.drop(r),
                    }
                }
            }
        }
    }

    /// Publishes every RX queue this sender delivered to since the last flush.
    pub fn flush(&self, s: &mut FwdScratch) {
        for (id, qidx) in s.rx.take_dirty() {
            if let Some(dest) = self.partitions.get(id) {
                if let Some(session) = dest.session_guard().as_ref() {
                    rx::flush(session, qidx);
                }
            }
        }
    }

    /// Delivers to one partition, fixing offloads up in software when its driver cannot take
    /// them. Drops on the receiver's side are counted there; the returned reason is for the
    /// sender's books (NoRxBuffer is never returned to be counted twice).
    fn deliver(
        &self,
        from: &Partition,
        dest: &Partition,
        pair: usize,
        f: &TxFrame<'_>,
        cast: Cast,
        s: &mut FwdScratch,
    ) -> Result<(), DropReason> {
        let guard = dest.session_guard();
        let session = guard.as_ref().ok_or(DropReason::DestinationDown)?;
        if session.vrings().is_none() {
            return Err(DropReason::DestinationDown);
        }
        // Only these fields travel; DATA_VALID and num_buffers are the device's to set.
        let hdr = NetHdr {
            flags: f.hdr.flags & FLAG_NEEDS_CSUM,
            num_buffers: 0,
            ..f.hdr
        };
        let rxo = session.rx_offloads();
        let result = if offload::passes_as_is(&hdr, rxo) {
            let out = Outgoing {
                hdr,
                src: Source::Guest {
                    mem: f.mem,
                    segs: f.segs,
                },
                skip: NET_HDR_LEN,
                len: f.len,
                cast,
            };
            rx::deliver(dest, session, pair, &out, &mut s.rx)
        } else {
            let FwdScratch {
                linear,
                segments,
                rx: rxs,
            } = s;
            linear.resize(f.len, 0);
            match frame::read(f.mem, f.segs, NET_HDR_LEN, linear) {
                Ok(n) if n == f.len => {}
                _ => return Err(DropReason::MalformedChain),
            }
            let mut first_err = Ok(());
            let r = offload::resolve(&hdr, linear, rxo, segments, &mut |h, bytes| {
                let seg = Outgoing {
                    hdr: *h,
                    src: Source::Bytes(bytes),
                    skip: 0,
                    len: bytes.len(),
                    cast,
                };
                let res = rx::deliver(dest, session, pair, &seg, rxs);
                if first_err.is_ok() {
                    first_err = res;
                }
            });
            if let Err(e) = r {
                if let Some(own) = from.session() {
                    own.warn_once(
                        Warn::BadTxHeader,
                        &format_args!("offload header rejected: {e}"),
                    );
                }
                return Err(DropReason::MalformedChain);
            }
            first_err
        };
        match result {
            Err(DropReason::NoRxBuffer) => Ok(()),
            r => r,
        }
    }
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
        let m: Mem = vm_memory::GuestMemoryMmap::new();
        let f = TxFrame {
            hdr: NetHdr::default(),
            mem: &m,
            segs: &[],
            len: 60,
            dst: mac("02:00:00:00:00:01"),
            src: pf.mac(),
        };
        let mut scratch = FwdScratch::default();
        s.forward(pf, 0, &f, &mut scratch);
        let t = pf.totals();
        assert_eq!(t.tx_packets, 1);
        assert_eq!(t.dropped(DropReason::DestinationDown), 1);
        // Broadcast with nobody running: sent, nothing dropped.
        let b = TxFrame {
            dst: MacAddr::BROADCAST,
            ..f
        };
        s.forward(pf, 0, &b, &mut scratch);
        let t = pf.totals();
        assert_eq!((t.tx_broadcast, t.total_drops()), (1, 1));
    }
}
