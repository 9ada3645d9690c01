//! The embedded switch (VEB): forwards a frame from one partition's TX queue to the partition(s)
//! it is for, by destination MAC. Decisions are a pure function of the frame's MACs and the
//! forwarding table, so they are tested apart from the queues.

use std::sync::Arc;

// SipHash showed in per-packet profiles; the table is small and its keys are not attacker-chosen
// (MACs come from the config), so a fast non-keyed hash is fine.
use rustc_hash::FxHashMap;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use arc_swap::ArcSwap;

use crate::admin::{Admin, AdminChange, AdminError, GuestRx, PortVlan};
use crate::vlan;

use std::ops::Range;

use crate::capture::Direction;
use crate::counters::{Cast, DropReason, Tally};
use crate::frame::{self, Source};
use crate::hostmem::{HostMem, HostPtr};
use crate::mac::MacAddr;
use crate::net_hdr::{NetHdr, ETH_HLEN, FLAG_NEEDS_CSUM, NET_HDR_LEN};
use crate::offload;
use crate::partition::{Partition, PartitionId};
use crate::ring::Seg;
use crate::rx::{Outgoing, RxQueue, RxScratch};
use crate::session::{Held, Warn};
use crate::uplink::{Learned, Uplink, UplinkId, WireDrop, WireError, WireWarn};

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
    #[error("uplink table must be indexed 0..n; entry {0} has id {1}")]
    BadUplinkIndex(usize, UplinkId),
}

/// What the switch does with one frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Decision {
    Drop(DropReason),
    Unicast(PartitionId),
    /// To every other running partition, and to every uplink when from a partition.
    Flood(Cast),
    /// Unicast to a MAC learned behind this uplink.
    Uplink(UplinkId),
    /// Unicast to a MAC nobody here owns and nothing learned: to every uplink.
    FloodUplinks,
}

/// A frame taken from a TX queue, still in the sender's guest memory. repr(C) keeps dst, src,
/// tpid and vid next to each other: [`TxFrame::route_key`] reads them as one value.
#[derive(Clone, Debug)]
#[repr(C)]
pub struct TxFrame {
    pub hdr: NetHdr,
    pub dst: MacAddr,
    pub src: MacAddr,
    /// The outer VLAN tag's TPID (0x8100 or 0x88a8), 0 when the frame is untagged.
    pub tpid: u16,
    /// The outer VLAN tag's VLAN id (0 when untagged).
    pub vid: u16,
    /// Bytes after the virtio-net header.
    pub len: usize,
    /// The whole chain, starting with the virtio-net header: a range of [`TxBatch::segs`].
    pub segs: Range<usize>,
    /// Host address of the chain when it is one buffer in one region ([`crate::ring::Flat`]).
    pub host: Option<HostPtr>,
}

impl TxFrame {
    /// Tagged frames have 4 bytes more MTU allowance.
    pub fn tagged(&self) -> bool {
        self.tpid != 0
    }

    /// What a forwarding decision depends on (dst, src, tpid, vid) as one value: comparing it
    /// with the previous frame's is two compares instead of a dozen.
    #[inline]
    pub fn route_key(&self) -> u128 {
        // SAFETY: repr(C) puts dst, src, tpid and vid in 16 contiguous bytes without padding
        // (checked at compile time below), all initialized; the pointer is derived from the
        // whole frame and the read is unaligned.
        unsafe {
            let p = (self as *const Self).cast::<u8>().add(ROUTE_KEY_AT);
            u128::from_ne_bytes(std::ptr::read_unaligned(p.cast::<[u8; 16]>()))
        }
    }
}

const ROUTE_KEY_AT: usize = std::mem::offset_of!(TxFrame, dst);
const _: () = {
    use std::mem::offset_of;
    assert!(offset_of!(TxFrame, src) == ROUTE_KEY_AT + 6);
    assert!(offset_of!(TxFrame, tpid) == ROUTE_KEY_AT + 12);
    assert!(offset_of!(TxFrame, vid) == ROUTE_KEY_AT + 14);
};

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
    /// The switch's view as of `version` (see [`Switch::view`]).
    view: Option<(u64, Arc<View>)>,
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

/// `dest`'s session and memory, from `held` (kept across batches) or taken now; `dest` becomes
/// the last receiver. None when `dest` has no session.
fn hold<'a>(
    held: &'a mut Vec<Option<Held>>,
    last: &mut Option<PartitionId>,
    dest: &Partition,
) -> Option<&'a Held> {
    *last = Some(dest.id);
    if held.len() <= dest.id {
        held.resize_with(dest.id + 1, || None);
    }
    Held::refresh(&mut held[dest.id], dest)
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

/// What the data path needs of one port, copied from its [`Admin`] settings.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PortView {
    pub mac: MacAddr,
    pub vlan: Option<PortVlan>,
    pub spoofchk: bool,
    /// Link up (state `enable`, or `auto` while no uplink says otherwise).
    pub up: bool,
    /// Trusted and in promiscuous mode: hears unicast no port owns.
    pub promisc: bool,
}

/// The data path's copy of every port's settings and the forwarding table. An admin change
/// builds a new one; senders pick it up at their next batch (see `Switch::view`).
#[derive(Debug)]
pub struct View {
    pub ports: Vec<PortView>,
    /// Partition by MAC ([`MacAddr::key`]). MACs are unique across ports, so forwarding by
    /// (VLAN, MAC) is this lookup plus the destination's VLAN membership.
    fdb: FxHashMap<u64, PartitionId>,
    /// Partitions are ports 0..parts; uplink u is port parts + u (a trunk: no port VLAN).
    parts: usize,
    /// MACs learned behind uplinks; None without uplinks (unknown unicast is then dropped).
    learned: Option<Arc<Learned>>,
}

impl View {
    fn build(
        partitions: &[Arc<Partition>],
        admins: &[Admin],
        uplinks: &[Arc<Uplink>],
        learned: &Arc<Learned>,
    ) -> Result<View, SwitchError> {
        let mut fdb: FxHashMap<u64, PartitionId> = FxHashMap::default();
        let mut ports = Vec::with_capacity(admins.len() + uplinks.len());
        // `state auto` follows the uplinks: up while any has its link, or when there is none.
        let uplink_up = uplinks.is_empty() || uplinks.iter().any(|u| u.carrier());
        for (p, a) in partitions.iter().zip(admins) {
            if a.mac.is_group() || a.mac.is_zero() {
                return Err(SwitchError::BadMac(p.name(), a.mac));
            }
            if let Some(other) = fdb.insert(a.mac.key(), p.id) {
                return Err(SwitchError::DuplicateMac {
                    mac: a.mac,
                    first: partitions[other].name(),
                    second: p.name(),
                });
            }
            let guest = p.guest().filter(|_| a.trust);
            ports.push(PortView {
                mac: a.mac,
                vlan: a.vlan,
                spoofchk: a.spoofchk,
                up: a.link_up(uplink_up),
                promisc: guest.is_some_and(|g| g.promiscuous),
            });
        }
        // A trusted guest's own MAC replaces its admin MAC, unless another port has it.
        for (p, a) in partitions.iter().zip(admins) {
            let mac = p.effective_mac(a);
            if mac != a.mac && !fdb.contains_key(&mac.key()) {
                fdb.remove(&a.mac.key());
                fdb.insert(mac.key(), p.id);
                ports[p.id].mac = mac;
            }
        }
        let parts = ports.len();
        ports.extend(uplinks.iter().map(|u| PortView {
            mac: MacAddr([0; 6]),
            vlan: None,
            spoofchk: false,
            up: u.carrier(),
            promisc: false,
        }));
        Ok(View {
            ports,
            fdb,
            parts,
            learned: (!uplinks.is_empty()).then(|| learned.clone()),
        })
    }

    /// The port number of uplink `u` (for [`View::vlan_path`] and `ports`).
    pub fn uplink_port(&self, u: UplinkId) -> usize {
        self.parts + u
    }

    /// Whether any port hears unknown unicast.
    fn any_promisc(&self) -> bool {
        self.ports.iter().any(|p| p.promisc)
    }

    /// What the switch does with a frame from port `from`, by its addresses and tag.
    pub fn decide(&self, from: PartitionId, f: &TxFrame) -> Decision {
        let Some(me) = self.ports.get(from) else {
            return Decision::Drop(DropReason::DestinationDown);
        };
        if me.spoofchk && f.src != me.mac {
            return Decision::Drop(DropReason::SpoofedSource);
        }
        // A port-VLAN partition may not pick its own VLAN (ixgbe, mlx5 drop such frames).
        if me.vlan.is_some() && f.tagged() {
            return Decision::Drop(DropReason::Vlan);
        }
        if f.dst.is_broadcast() {
            return Decision::Flood(Cast::Broadcast);
        }
        if f.dst.is_multicast() {
            return Decision::Flood(Cast::Multicast);
        }
        match self.fdb.get(&f.dst.key()) {
            // Unknown unicast: behind an uplink, and to the promiscuous (trusted) ports.
            None => match self.beyond(me, f) {
                Decision::Drop(_) | Decision::FloodUplinks if self.any_promisc() => {
                    Decision::Flood(Cast::Unicast)
                }
                d => d,
            },
            Some(id) if *id == from => Decision::Drop(DropReason::Hairpin),
            Some(id) => Decision::Unicast(*id),
        }
    }

    /// Unicast from a partition to a MAC no partition owns: the uplink it was learned behind
    /// (on the VLAN the frame has on the wire), else every uplink; dropped without uplinks.
    fn beyond(&self, me: &PortView, f: &TxFrame) -> Decision {
        let Some(l) = &self.learned else {
            return Decision::Drop(DropReason::UnknownDestination);
        };
        let (tpid, vid) = match me.vlan {
            Some(v) => (v.proto.tpid(), v.id),
            None => (f.tpid, f.vid),
        };
        match l.lookup(Learned::key(f.dst, tpid, vid)) {
            Some(u) => Decision::Uplink(u),
            None => Decision::FloodUplinks,
        }
    }

    /// What the switch does with a frame that came in on uplink `u`: to the partition by
    /// (VLAN, MAC), flooded to the partitions when broadcast/multicast, never to an uplink. A
    /// source that cannot be a station behind the wire (a group or zero address, or a
    /// partition's own MAC: a loop) is dropped as `spoofed_source`.
    pub fn decide_ingress(&self, u: UplinkId, f: &TxFrame) -> Decision {
        if self.ports.get(self.uplink_port(u)).is_none() {
            return Decision::Drop(DropReason::DestinationDown);
        }
        if f.src.is_group() || f.src.is_zero() || self.fdb.contains_key(&f.src.key()) {
            return Decision::Drop(DropReason::SpoofedSource);
        }
        if f.dst.is_broadcast() {
            return Decision::Flood(Cast::Broadcast);
        }
        if f.dst.is_multicast() {
            return Decision::Flood(Cast::Multicast);
        }
        match self.fdb.get(&f.dst.key()) {
            Some(id) => Decision::Unicast(*id),
            None => Decision::Drop(DropReason::UnknownDestination),
        }
    }

    /// How a frame from `from` reaches `to`, or None when `to` is not on the frame's VLAN.
    pub fn vlan_path(&self, from: PartitionId, to: PartitionId, f: &TxFrame) -> Option<Retag> {
        let (me, dest) = (self.ports.get(from)?, self.ports.get(to)?);
        match (me.vlan, dest.vlan) {
            (None, None) => Some(Retag::Keep),
            // A trunk hears every VLAN, tagged.
            (Some(v), None) => Some(Retag::Push(v)),
            (Some(v), Some(d)) => (v.id == d.id && v.proto == d.proto).then_some(Retag::Keep),
            (None, Some(d)) => {
                (f.tagged() && f.vid == d.id && f.tpid == d.proto.tpid()).then_some(Retag::Pop)
            }
        }
    }
}

/// What a frame's VLAN tag becomes on the way to one port.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Retag {
    Keep,
    /// Insert this port VLAN's tag after the MAC addresses.
    Push(PortVlan),
    /// Remove the outer tag (the receiver's port VLAN).
    Pop,
}

pub struct Switch {
    partitions: Vec<Arc<Partition>>,
    uplinks: Vec<Arc<Uplink>>,
    learned: Arc<Learned>,
    view: ArcSwap<View>,
    /// Bumped after every new view: a sender compares one integer per batch.
    version: AtomicU64,
    /// Serialises admin changes (validation against every port, then the new view).
    admin: Mutex<()>,
}

impl Switch {
    pub fn new(partitions: Vec<Arc<Partition>>) -> Result<Self, SwitchError> {
        Self::with_uplinks(partitions, Vec::new())
    }

    /// A switch with uplink ports besides the partitions (see [`crate::uplink`]).
    pub fn with_uplinks(
        partitions: Vec<Arc<Partition>>,
        uplinks: Vec<Arc<Uplink>>,
    ) -> Result<Self, SwitchError> {
        crate::hostmem::detect_cpu();
        for (i, p) in partitions.iter().enumerate() {
            if p.id != i {
                return Err(SwitchError::BadIndex(i, p.id));
            }
        }
        for (i, u) in uplinks.iter().enumerate() {
            if u.id != i {
                return Err(SwitchError::BadUplinkIndex(i, u.id));
            }
        }
        let learned = Arc::new(Learned::default());
        let admins: Vec<Admin> = partitions.iter().map(|p| p.admin()).collect();
        let view = View::build(&partitions, &admins, &uplinks, &learned)?;
        Ok(Switch {
            partitions,
            uplinks,
            learned,
            view: ArcSwap::from_pointee(view),
            version: AtomicU64::new(0),
            admin: Mutex::new(()),
        })
    }

    pub fn partitions(&self) -> &[Arc<Partition>] {
        &self.partitions
    }

    pub fn uplinks(&self) -> &[Arc<Uplink>] {
        &self.uplinks
    }

    /// MACs learned behind the uplinks.
    pub fn learned(&self) -> &Learned {
        &self.learned
    }

    /// The effective link of partition `id`: its `state`, with `auto` following the uplinks.
    pub fn link_up(&self, id: PartitionId) -> bool {
        self.view.load().ports.get(id).is_some_and(|p| p.up)
    }

    /// Uplink `u`'s wire came up or went down (a peer attached or left, the tap went away).
    /// Partitions with `state auto` follow; what was learned behind it is forgotten.
    pub fn set_carrier(&self, u: UplinkId, up: bool) {
        let _serial = self.admin.lock().unwrap_or_else(|e| e.into_inner());
        let Some(uplink) = self.uplinks.get(u) else {
            return;
        };
        if uplink.store_carrier(up) == up {
            return;
        }
        log::info!("{}: link {}", uplink.name(), if up { "up" } else { "down" });
        if !up {
            self.learned.flush(u);
        }
        let admins: Vec<Admin> = self.partitions.iter().map(|p| p.admin()).collect();
        match View::build(&self.partitions, &admins, &self.uplinks, &self.learned) {
            Ok(view) => {
                self.view.store(Arc::new(view));
                self.version.fetch_add(1, Ordering::Release);
            }
            Err(e) => log::error!("cannot rebuild the switch view: {e}"),
        }
    }

    /// The current view (control plane and tests; the data path caches it per sender).
    pub fn current_view(&self) -> Arc<View> {
        self.view.load_full()
    }

    /// Applies an admin change to partition `id`: validated against every other port first
    /// (MACs are unique), so a refused change changes nothing. Takes effect in the data path
    /// at each sender's next batch.
    pub fn set_admin(&self, id: PartitionId, change: &AdminChange) -> Result<Admin, AdminError> {
        let _serial = self.admin.lock().unwrap_or_else(|e| e.into_inner());
        let Some(part) = self.partitions.get(id) else {
            return Err(AdminError::State(format!("no partition {id}")));
        };
        let new = part.admin().apply(change)?;
        if let Some(owner) = self
            .partitions
            .iter()
            .find(|p| p.id != id && p.admin().mac == new.mac)
        {
            return Err(AdminError::MacInUse {
                mac: new.mac,
                owner: owner.name(),
            });
        }
        let mut admins: Vec<Admin> = self.partitions.iter().map(|p| p.admin()).collect();
        admins[id] = new;
        // Cannot fail: the MAC was checked above and by `apply`.
        let view = View::build(&self.partitions, &admins, &self.uplinks, &self.learned)
            .map_err(|e| AdminError::State(e.to_string()))?;
        part.store_admin(new);
        self.view.store(Arc::new(view));
        self.version.fetch_add(1, Ordering::Release);
        Ok(new)
    }

    /// Records what QEMU reports of partition `id`'s guest (its MAC and receive modes). A trusted
    /// partition's switch MAC and promiscuous mode follow it; an untrusted one keeps its admin
    /// MAC and the attempt is only reported. Returns whether the guest's MAC is in use.
    pub fn set_guest_rx(&self, id: PartitionId, g: Option<GuestRx>) -> bool {
        let _serial = self.admin.lock().unwrap_or_else(|e| e.into_inner());
        let Some(part) = self.partitions.get(id) else {
            return false;
        };
        part.store_guest(g);
        let admins: Vec<Admin> = self.partitions.iter().map(|p| p.admin()).collect();
        if let Ok(view) = View::build(&self.partitions, &admins, &self.uplinks, &self.learned) {
            let applied = g.is_some_and(|g| view.ports[id].mac == g.mac);
            self.view.store(Arc::new(view));
            self.version.fetch_add(1, Ordering::Release);
            return applied;
        }
        false
    }

    /// `slot`'s view, refreshed when an admin change made a newer one.
    fn view<'a>(&self, slot: &'a mut Option<(u64, Arc<View>)>) -> &'a View {
        let v = self.version.load(Ordering::Acquire);
        if slot.as_ref().is_none_or(|(seen, _)| *seen != v) {
            *slot = Some((v, self.view.load_full()));
        }
        match slot {
            Some((_, view)) => view,
            None => unreachable!("just filled"),
        }
    }

    /// Forwards a batch from `from`'s TX pair `pair`, counting every frame on both ends.
    /// Consecutive frames for the same partition are delivered as one run: the receiver's RX
    /// queue is locked, read and published once per run, not per frame.
    pub fn forward(&self, from: &Partition, pair: usize, batch: &TxBatch<'_>, s: &mut FwdScratch) {
        let FwdScratch {
            decisions,
            runs,
            view,
        } = s;
        let view = self.view(view);
        if from.capture.on() {
            for f in batch.frames {
                from.capture.record(Direction::Tx, |buf| {
                    buf.resize(f.len, 0);
                    let n = frame::read(batch.mem, batch.segs_of(f), NET_HDR_LEN, buf).unwrap_or(0);
                    buf.truncate(n);
                });
            }
        }
        let mut tx = Tally::default();
        if !view.ports.get(from.id).is_some_and(|p| p.up) {
            tx.drop_n(DropReason::LinkDown, batch.frames.len());
            from.queue_counters(pair).add_tx(&tx);
            return;
        }
        decisions.clear();
        // A batch is mostly one flow: a frame with the previous frame's addresses and tag gets
        // its decision without a table lookup.
        let mut last: Option<(u128, Decision)> = None;
        decisions.extend(batch.frames.iter().map(|f| {
            let key = f.route_key();
            match last {
                Some((k, d)) if k == key => d,
                _ => {
                    let d = view.decide(from.id, f);
                    last = Some((key, d));
                    d
                }
            }
        }));
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
                        // Other VLANs never hear it; unknown unicast only promiscuous ports.
                        if view.vlan_path(from.id, dest.id, f).is_none()
                            || (cast == Cast::Unicast && !view.ports[dest.id].promisc)
                        {
                            continue;
                        }
                        let run = std::slice::from_ref(f);
                        if let RunResult::Done(t) =
                            self.deliver(view, from, dest, pair, batch, run, cast, runs)
                        {
                            tx.merge_drops(&t);
                        }
                    }
                    self.flood_uplinks(view, from, pair, batch, f, cast, runs, &mut tx);
                    i += 1;
                }
                Decision::FloodUplinks => {
                    tx.count(f.len, Cast::Unicast);
                    self.flood_uplinks(view, from, pair, batch, f, Cast::Unicast, runs, &mut tx);
                    i += 1;
                }
                Decision::Uplink(u) => {
                    let n = decisions[i..]
                        .iter()
                        .take_while(|d| **d == Decision::Uplink(u))
                        .count();
                    let run = &batch.frames[i..i + n];
                    for f in run {
                        tx.count(f.len, Cast::Unicast);
                    }
                    let t = self.to_wire(view, from, pair, u, batch, run, Cast::Unicast, runs);
                    tx.merge_drops(&t);
                    i += n;
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
                            let r = self.deliver(
                                view,
                                from,
                                dest,
                                pair,
                                batch,
                                run,
                                Cast::Unicast,
                                runs,
                            );
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

    #[allow(clippy::too_many_arguments)]
    fn deliver(
        &self,
        view: &View,
        from: &Partition,
        dest: &Partition,
        pair: usize,
        batch: &TxBatch<'_>,
        run: &[TxFrame],
        cast: Cast,
        runs: &mut RunScratch,
    ) -> RunResult {
        if !view.ports.get(dest.id).is_some_and(|p| p.up) {
            // Counted on the port that is down, as a NIC counts a vport-down discard.
            let mut t = Tally::default();
            t.drop_n(DropReason::LinkDown, run.len());
            dest.queue_counters(pair).add_rx(&t);
            return RunResult::Done(Tally::default());
        }
        let RunScratch {
            linear,
            segments,
            rx,
            held,
            last,
            ..
        } = runs;
        let Some(h) = hold(held, last, dest) else {
            return RunResult::Down;
        };
        let frames = u16::try_from(run.len()).unwrap_or(u16::MAX);
        let mut q = match RxQueue::open(dest, h, pair, frames, rx) {
            Ok(q) => q,
            Err(_) => return RunResult::Down,
        };
        let mut drops = Tally::default();
        // Between two trunks (no port VLANs: the default) every frame keeps its tag; only
        // otherwise does the path depend on each frame's tag.
        let trunks = view.ports.get(from.id).is_some_and(|p| p.vlan.is_none())
            && view.ports.get(dest.id).is_some_and(|p| p.vlan.is_none());
        for f in run {
            let path = if trunks {
                Some(Retag::Keep)
            } else {
                view.vlan_path(from.id, dest.id, f)
            };
            let res = match path {
                Some(retag) => Self::put(from, &mut q, batch, f, retag, cast, linear, segments),
                None => Err(DropReason::Vlan),
            };
            match res {
                // NoRxBuffer is the receiver's drop, counted there.
                Ok(()) | Err(DropReason::NoRxBuffer) => {}
                Err(r) => drops.drop(r),
            }
        }
        RunResult::Done(drops)
    }

    #[allow(clippy::too_many_arguments)]
    fn put(
        from: &Partition,
        q: &mut RxQueue<'_>,
        batch: &TxBatch<'_>,
        f: &TxFrame,
        retag: Retag,
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
        let bad = |e: &dyn std::fmt::Display| {
            if let Some(own) = from.session() {
                own.warn_once(
                    Warn::BadTxHeader,
                    &format_args!("offload header rejected: {e}"),
                );
            }
            DropReason::MalformedChain
        };
        if retag == Retag::Keep {
            let max = offload::max_frame(q.mtu(), f.tagged());
            // The frame as it is, or None when it must go through the software path.
            let as_is = if !offload::passes_as_is(&hdr, rxo) {
                None
            } else if hdr.is_gso() {
                // Validated as segmentation would; the receiver's stack segments it later.
                let mut head = [0u8; offload::GSO_HEAD];
                let n = f.len.min(head.len());
                match frame::read(batch.mem, batch.segs_of(f), NET_HDR_LEN, &mut head[..n]) {
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
                        segs: batch.segs_of(f),
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
        }
        linear.resize(f.len, 0);
        match frame::read(batch.mem, batch.segs_of(f), NET_HDR_LEN, linear) {
            Ok(n) if n == f.len => {}
            _ => return Err(DropReason::MalformedChain),
        }
        Self::put_linear(q, hdr, linear, f.tagged(), retag, cast, segments, &bad)
    }

    /// The software path of [`Switch::put`]: `linear` is the whole frame (tag `tagged`), retagged
    /// and then checksummed/segmented for the receiver.
    #[allow(clippy::too_many_arguments)]
    fn put_linear(
        q: &mut RxQueue<'_>,
        mut hdr: NetHdr,
        linear: &mut Vec<u8>,
        tagged: bool,
        retag: Retag,
        cast: Cast,
        segments: &mut Vec<u8>,
        bad: &dyn Fn(&dyn std::fmt::Display) -> DropReason,
    ) -> Result<(), DropReason> {
        let rxo = q.offloads();
        let tagged = match Self::retag(linear, &mut hdr, tagged, retag) {
            Ok(t) => t,
            Err(e) => return Err(bad(&e)),
        };
        let max = offload::max_frame(q.mtu(), tagged);
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

    /// Applies `retag` to a linear frame; returns whether it is tagged now.
    fn retag(
        linear: &mut Vec<u8>,
        hdr: &mut NetHdr,
        tagged: bool,
        retag: Retag,
    ) -> Result<bool, vlan::VlanError> {
        Ok(match retag {
            Retag::Keep => tagged,
            Retag::Push(v) => {
                vlan::push(linear, hdr, v.proto.tpid(), v.tci());
                true
            }
            Retag::Pop => {
                vlan::pop(linear, hdr)?;
                false
            }
        })
    }

    /// A flooded frame from partition `from` to every uplink on its VLAN.
    #[allow(clippy::too_many_arguments)]
    fn flood_uplinks(
        &self,
        view: &View,
        from: &Partition,
        pair: usize,
        batch: &TxBatch<'_>,
        f: &TxFrame,
        cast: Cast,
        runs: &mut RunScratch,
        tx: &mut Tally,
    ) {
        for u in 0..self.uplinks.len() {
            if view.vlan_path(from.id, view.uplink_port(u), f).is_none() {
                continue;
            }
            let run = std::slice::from_ref(f);
            let t = self.to_wire(view, from, pair, u, batch, run, cast, runs);
            tx.merge_drops(&t);
        }
    }

    /// Puts a run of frames from partition `from`'s queue pair `pair` on uplink `u`'s wire: each
    /// is read once, tagged for a port-VLAN sender, and checksummed/segmented in software for
    /// what the wire cannot take. Returns the sender-side drops; the wire's own are counted on
    /// the uplink.
    #[allow(clippy::too_many_arguments)]
    fn to_wire(
        &self,
        view: &View,
        from: &Partition,
        pair: usize,
        u: UplinkId,
        batch: &TxBatch<'_>,
        run: &[TxFrame],
        cast: Cast,
        runs: &mut RunScratch,
    ) -> Tally {
        let mut drops = Tally::default();
        let Some(up) = self.uplinks.get(u) else {
            drops.drop_n(DropReason::DestinationDown, run.len());
            return drops;
        };
        let port = view.uplink_port(u);
        if !view.ports.get(port).is_some_and(|p| p.up) {
            let mut t = Tally::default();
            t.drop_n(DropReason::LinkDown, run.len());
            up.add_tx(&t);
            return drops;
        }
        let bad = |e: &dyn std::fmt::Display| {
            if let Some(own) = from.session() {
                own.warn_once(
                    Warn::BadTxHeader,
                    &format_args!("offload header rejected: {e}"),
                );
            }
            DropReason::MalformedChain
        };
        let mut out = Tally::default();
        for f in run {
            let Some(retag) = view.vlan_path(from.id, port, f) else {
                drops.drop(DropReason::Vlan);
                continue;
            };
            let linear = &mut runs.linear;
            linear.resize(f.len, 0);
            match frame::read(batch.mem, batch.segs_of(f), NET_HDR_LEN, linear) {
                Ok(n) if n == f.len => {}
                _ => {
                    drops.drop(DropReason::MalformedChain);
                    continue;
                }
            }
            let mut hdr = NetHdr {
                flags: f.hdr.flags & FLAG_NEEDS_CSUM,
                num_buffers: 0,
                ..f.hdr
            };
            let tagged = match Self::retag(linear, &mut hdr, f.tagged(), retag) {
                Ok(t) => t,
                Err(e) => {
                    drops.drop(bad(&e));
                    continue;
                }
            };
            if let Err(r) = Self::emit(
                up,
                pair,
                &hdr,
                linear,
                tagged,
                cast,
                &mut runs.segments,
                &mut out,
            ) {
                drops.drop(match r {
                    offload::OffloadError::Oversize { .. } => DropReason::Oversize,
                    e => bad(&e),
                });
            }
        }
        up.add_tx(&out);
        drops
    }

    /// One linear frame onto `up`'s wire (from the sender's queue pair `pair`), completed in
    /// software as the wire needs.
    #[allow(clippy::too_many_arguments)]
    fn emit(
        up: &Uplink,
        pair: usize,
        hdr: &NetHdr,
        linear: &mut [u8],
        tagged: bool,
        cast: Cast,
        segments: &mut Vec<u8>,
        out: &mut Tally,
    ) -> Result<usize, offload::OffloadError> {
        let max = offload::max_frame(up.config.mtu, tagged);
        offload::resolve(
            hdr,
            linear,
            up.config.offloads,
            max,
            segments,
            &mut |h, bytes| match up.send(h, bytes, pair) {
                Ok(()) => out.count(bytes.len(), cast),
                Err(WireError::Down) => out.drop(DropReason::LinkDown),
                Err(WireError::Busy) => {
                    up.wire_drop(WireDrop::TxBusy);
                    up.warn_once(WireWarn::TxBusy, &"the wire is full; frames dropped");
                }
            },
        )
    }

    /// One frame from uplink `u`'s wire (`hdr`: its virtio-net header, default for wires that
    /// carry none), to the partition(s) it is for. Counted on the uplink (`rx`) and on the
    /// receivers. Called by the uplink I/O thread.
    pub fn ingress(&self, u: UplinkId, hdr: &NetHdr, frame: &[u8], s: &mut IngressScratch) {
        let Some(up) = self.uplinks.get(u) else {
            return;
        };
        let IngressScratch { runs, view } = s;
        let view = self.view(view);
        let mut t = Tally::default();
        self.ingress_one(view, up, hdr, frame, runs, &mut t);
        up.add_rx(&t);
        runs.sweep();
    }

    fn ingress_one(
        &self,
        view: &View,
        up: &Uplink,
        hdr: &NetHdr,
        frame: &[u8],
        runs: &mut RunScratch,
        t: &mut Tally,
    ) {
        let len = frame.len();
        let bad = |w: WireWarn, e: &dyn std::fmt::Display| {
            up.wire_drop(WireDrop::BadFrame);
            up.warn_once(w, e);
        };
        if len < ETH_HLEN {
            return bad(
                WireWarn::BadFrame,
                &format_args!("{len}-byte runt frame from the wire"),
            );
        }
        if let Err(e) = offload::check_tx_header(hdr, len, up.config.accepts) {
            return bad(
                WireWarn::BadOffload,
                &format_args!("virtio-net header from the wire rejected: {e}"),
            );
        }
        let ethertype = u16::from_be_bytes([frame[12], frame[13]]);
        let (tpid, vid) = if offload::is_vlan_tpid(ethertype) {
            match frame.get(14..16) {
                Some(tci) => (ethertype, u16::from_be_bytes([tci[0], tci[1]]) & 0x0fff),
                None => {
                    return bad(
                        WireWarn::BadFrame,
                        &format_args!("{len}-byte frame cut in its VLAN tag"),
                    )
                }
            }
        } else {
            (0, 0)
        };
        if !hdr.is_gso() && len > offload::max_frame(up.config.mtu, tpid != 0) {
            t.drop(DropReason::Oversize);
            up.warn_once(
                WireWarn::Oversize,
                &format_args!(
                    "{len}-byte frame from the wire exceeds MTU {}",
                    up.config.mtu
                ),
            );
            return;
        }
        let mac = |at: usize| {
            let mut m = [0u8; 6];
            m.copy_from_slice(&frame[at..at + 6]);
            MacAddr(m)
        };
        let f = TxFrame {
            hdr: *hdr,
            segs: 0..0,
            len,
            dst: mac(0),
            src: mac(6),
            host: None,
            tpid,
            vid,
        };
        let port = view.uplink_port(up.id);
        if !view.ports.get(port).is_some_and(|p| p.up) {
            t.drop(DropReason::LinkDown);
            return;
        }
        let d = view.decide_ingress(up.id, &f);
        if d != Decision::Drop(DropReason::SpoofedSource) {
            if let Some(l) = &view.learned {
                l.learn(Learned::key(f.src, tpid, vid), up.id);
            }
        }
        let result = |r: Result<(), DropReason>, t: &mut Tally| match r {
            Ok(()) => {}
            Err(DropReason::MalformedChain) => up.wire_drop(WireDrop::BadFrame),
            Err(r) => t.drop(r),
        };
        match d {
            Decision::Drop(r) => t.drop(r),
            Decision::Unicast(id) => {
                t.count(len, Cast::Unicast);
                match self.partitions.get(id) {
                    Some(dest) => {
                        let r = Self::deliver_wire(view, up, dest, &f, frame, Cast::Unicast, runs);
                        result(r, t);
                    }
                    None => t.drop(DropReason::DestinationDown),
                }
            }
            Decision::Flood(cast) => {
                t.count(len, cast);
                for dest in &self.partitions {
                    if view.vlan_path(port, dest.id, &f).is_none() {
                        continue;
                    }
                    match Self::deliver_wire(view, up, dest, &f, frame, cast, runs) {
                        // A flood skips partitions that are not running.
                        Err(DropReason::DestinationDown) => {}
                        r => result(r, t),
                    }
                }
            }
            Decision::Uplink(_) | Decision::FloodUplinks => t.drop(DropReason::UnknownDestination),
        }
    }

    /// A frame from uplink `up` into partition `dest`.
    fn deliver_wire(
        view: &View,
        up: &Uplink,
        dest: &Partition,
        f: &TxFrame,
        frame: &[u8],
        cast: Cast,
        runs: &mut RunScratch,
    ) -> Result<(), DropReason> {
        if !view.ports.get(dest.id).is_some_and(|p| p.up) {
            let mut t = Tally::default();
            t.drop(DropReason::LinkDown);
            dest.queue_counters(0).add_rx(&t);
            return Ok(());
        }
        let retag = view
            .vlan_path(view.uplink_port(up.id), dest.id, f)
            .ok_or(DropReason::Vlan)?;
        let RunScratch {
            linear,
            segments,
            rx,
            held,
            last,
            ..
        } = runs;
        let h = hold(held, last, dest).ok_or(DropReason::DestinationDown)?;
        let mut q = RxQueue::open(dest, h, 0, 1, rx).map_err(|_| DropReason::DestinationDown)?;
        let bad = |e: &dyn std::fmt::Display| {
            up.warn_once(
                WireWarn::BadOffload,
                &format_args!("frame from the wire rejected: {e}"),
            );
            DropReason::MalformedChain
        };
        let hdr = NetHdr {
            flags: f.hdr.flags & FLAG_NEEDS_CSUM,
            num_buffers: 0,
            ..f.hdr
        };
        let res = if retag == Retag::Keep && offload::passes_as_is(&hdr, q.offloads()) {
            let max = offload::max_frame(q.mtu(), f.tagged());
            let as_is = if hdr.is_gso() {
                let head = &frame[..frame.len().min(offload::GSO_HEAD)];
                offload::gso_as_is(&hdr, head, frame.len(), max).map_err(|e| bad(&e))?
            } else if frame.len() > max {
                return Err(DropReason::Oversize);
            } else {
                Some(frame.len())
            };
            match as_is {
                Some(len) => q.put(&Outgoing {
                    hdr,
                    src: Source::Bytes(&frame[..len]),
                    skip: 0,
                    len,
                    cast,
                }),
                None => {
                    linear.clear();
                    linear.extend_from_slice(frame);
                    Self::put_linear(&mut q, hdr, linear, f.tagged(), retag, cast, segments, &bad)
                }
            }
        } else {
            linear.clear();
            linear.extend_from_slice(frame);
            Self::put_linear(&mut q, hdr, linear, f.tagged(), retag, cast, segments, &bad)
        };
        match res {
            // The receiver's drop, counted there.
            Err(DropReason::NoRxBuffer) => Ok(()),
            r => r,
        }
    }
}

/// What the uplink I/O thread keeps across frames: receivers' sessions and memory, scratch.
#[derive(Default)]
pub struct IngressScratch {
    runs: RunScratch,
    view: Option<(u64, Arc<View>)>,
}

impl IngressScratch {
    /// Lets go of every receiver's session and memory (the I/O thread is idle).
    pub fn release(&mut self) {
        self.runs.held.clear();
        self.runs.last = None;
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

    fn decide(s: &Switch, from: &Partition, src: MacAddr, dst: MacAddr) -> Decision {
        s.current_view().decide(from.id, &frame(src, dst))
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
            tpid: 0,
            vid: 0,
        }
    }

    #[test]
    fn unicast_goes_to_the_owner_of_the_destination_mac() {
        let s = sw();
        let pf = &s.partitions()[0];
        assert_eq!(
            decide(&s, pf, pf.mac(), mac("02:00:00:00:00:02")),
            Decision::Unicast(2)
        );
        let vf0 = &s.partitions()[1];
        assert_eq!(
            decide(&s, vf0, vf0.mac(), mac("02:00:00:00:00:00")),
            Decision::Unicast(0)
        );
    }

    #[test]
    fn group_addresses_flood() {
        let s = sw();
        let vf = &s.partitions()[2];
        assert_eq!(
            decide(&s, vf, vf.mac(), MacAddr::BROADCAST),
            Decision::Flood(Cast::Broadcast)
        );
        assert_eq!(
            decide(&s, vf, vf.mac(), mac("33:33:00:00:00:01")),
            Decision::Flood(Cast::Multicast)
        );
    }

    #[test]
    fn drops_spoofed_unknown_and_hairpin() {
        let s = sw();
        let vf = &s.partitions()[1];
        assert_eq!(
            decide(&s, vf, mac("02:00:00:00:00:02"), MacAddr::BROADCAST),
            Decision::Drop(DropReason::SpoofedSource)
        );
        assert_eq!(
            decide(&s, vf, vf.mac(), mac("02:00:00:00:99:99")),
            Decision::Drop(DropReason::UnknownDestination)
        );
        assert_eq!(
            decide(&s, vf, vf.mac(), vf.mac()),
            Decision::Drop(DropReason::Hairpin)
        );
        s.set_admin(
            vf.id,
            &AdminChange {
                spoofchk: Some(false),
                ..AdminChange::default()
            },
        )
        .unwrap();
        assert_eq!(
            decide(&s, vf, mac("02:00:00:00:00:02"), mac("02:00:00:00:00:00")),
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

    fn admin(f: impl FnOnce(&mut AdminChange)) -> AdminChange {
        let mut c = AdminChange::default();
        f(&mut c);
        c
    }

    fn tagged(src: MacAddr, dst: MacAddr, tpid: u16, vid: u16) -> TxFrame {
        TxFrame {
            tpid,
            vid,
            ..frame(src, dst)
        }
    }

    #[test]
    fn the_route_key_is_exactly_the_fields_a_decision_depends_on() {
        let (a, b) = (mac("02:00:00:00:00:01"), mac("02:00:00:00:00:02"));
        let base = tagged(a, b, 0x8100, 10);
        let key = base.route_key();
        let mut same = base.clone();
        same.len = 1500;
        same.hdr.flags = 1;
        same.segs = 3..4;
        assert_eq!(
            same.route_key(),
            key,
            "length, header and chain do not route"
        );
        for other in [
            tagged(b, b, 0x8100, 10),
            tagged(a, a, 0x8100, 10),
            tagged(a, mac("02:00:00:00:01:02"), 0x8100, 10),
            tagged(a, b, 0x88a8, 10),
            tagged(a, b, 0x8100, 11),
            tagged(a, b, 0x8100, 10 | 0x100),
            frame(a, b),
        ] {
            assert_ne!(other.route_key(), key, "{other:?}");
        }
    }

    #[test]
    fn vlan_paths_push_pop_keep_or_refuse() {
        use crate::admin::VlanProto;
        let s = sw();
        s.set_admin(1, &admin(|c| c.vlan = Some(10))).unwrap();
        s.set_admin(
            2,
            &admin(|c| {
                c.vlan = Some(10);
                c.qos = Some(5);
                c.proto = Some(VlanProto::Dot1Ad)
            }),
        )
        .unwrap();
        let v = s.current_view();
        let (pf, vf0, vf1) = (
            mac("02:00:00:00:00:00"),
            mac("02:00:00:00:00:01"),
            mac("02:00:00:00:00:02"),
        );
        let plain = frame(vf0, pf);
        let p10 = v.ports[1].vlan.unwrap();
        assert_eq!(
            v.vlan_path(1, 0, &plain),
            Some(Retag::Push(p10)),
            "to the trunk, tagged"
        );
        assert_eq!(
            v.vlan_path(1, 2, &plain),
            None,
            "same id, other TPID: another VLAN"
        );
        let from_trunk = tagged(pf, vf0, 0x8100, 10);
        assert_eq!(v.vlan_path(0, 1, &from_trunk), Some(Retag::Pop));
        assert_eq!(
            v.vlan_path(0, 2, &from_trunk),
            None,
            "802.1Q tag, 802.1ad port"
        );
        assert_eq!(
            v.vlan_path(0, 1, &frame(pf, vf0)),
            None,
            "untagged never reaches a port VLAN"
        );
        assert_eq!(v.vlan_path(0, 0, &frame(pf, vf0)), Some(Retag::Keep));
        assert_eq!(
            v.decide(1, &tagged(vf0, vf1, 0x8100, 10)),
            Decision::Drop(DropReason::Vlan),
            "a port-VLAN partition may not tag"
        );
        assert_eq!(v.decide(1, &frame(vf0, vf1)), Decision::Unicast(2));
    }

    #[test]
    fn admin_changes_reach_senders_through_the_view_version() {
        let s = sw();
        let mut slot = None;
        assert!(s.view(&mut slot).ports[1].up);
        s.set_admin(
            1,
            &admin(|c| c.state = Some(crate::admin::LinkState::Disable)),
        )
        .unwrap();
        assert!(
            !s.view(&mut slot).ports[1].up,
            "refreshed on the version bump"
        );
        // A refused change leaves the view (and the version) alone.
        let before = s.version.load(Ordering::Acquire);
        let dup = admin(|c| c.mac = Some(mac("02:00:00:00:00:00")));
        assert!(matches!(
            s.set_admin(1, &dup),
            Err(AdminError::MacInUse { .. })
        ));
        assert_eq!(s.version.load(Ordering::Acquire), before);
        s.set_admin(1, &admin(|c| c.mac = Some(mac("02:00:00:00:00:09"))))
            .unwrap();
        let v = s.view(&mut slot);
        assert_eq!(
            v.decide(
                0,
                &frame(mac("02:00:00:00:00:00"), mac("02:00:00:00:00:09"))
            ),
            Decision::Unicast(1)
        );
        assert_eq!(
            v.decide(
                0,
                &frame(mac("02:00:00:00:00:00"), mac("02:00:00:00:00:01"))
            ),
            Decision::Drop(DropReason::UnknownDestination)
        );
    }

    #[test]
    fn a_trusted_guests_own_mac_and_promiscuous_mode_are_followed() {
        let s = sw();
        let (pf, vf0) = (mac("02:00:00:00:00:00"), mac("02:00:00:00:00:01"));
        let theirs = mac("02:00:00:00:00:55");
        let g = GuestRx {
            mac: theirs,
            promiscuous: true,
            allmulticast: false,
        };
        // Untrusted: reported, not applied.
        assert!(!s.set_guest_rx(1, Some(g)));
        let v = s.current_view();
        assert_eq!(
            v.decide(0, &frame(pf, theirs)),
            Decision::Drop(DropReason::UnknownDestination)
        );
        assert_eq!(
            v.decide(1, &frame(theirs, pf)),
            Decision::Drop(DropReason::SpoofedSource)
        );
        // Trusted: the guest's MAC is the port's, and it hears unknown unicast.
        s.set_admin(1, &admin(|c| c.trust = Some(true))).unwrap();
        let v = s.current_view();
        assert_eq!(v.decide(0, &frame(pf, theirs)), Decision::Unicast(1));
        assert_eq!(v.decide(1, &frame(theirs, pf)), Decision::Unicast(0));
        assert_eq!(
            v.decide(1, &frame(vf0, pf)),
            Decision::Drop(DropReason::SpoofedSource)
        );
        assert_eq!(
            v.decide(0, &frame(pf, mac("02:00:00:00:99:99"))),
            Decision::Flood(Cast::Unicast)
        );
        // A guest MAC another port owns is not taken.
        let clash = GuestRx { mac: pf, ..g };
        assert!(!s.set_guest_rx(1, Some(clash)));
        assert_eq!(
            s.current_view().decide(0, &frame(pf, vf0)),
            Decision::Unicast(1)
        );
    }
}
