//! Uplinks: the switch's ports to the world outside the daemon (a tap, a QEMU `-netdev stream`
//! peer, a VXLAN segment). An uplink is a port like a partition: its own counters, its link
//! (carrier), its MTU and what offloads its wire takes. What moves frames on the wire is a
//! [`Wire`]; the switch decides, learns and segments (see `switch.rs`).
//!
//! Counters of an uplink are the wire's view, as `ip -s link` shows a NIC's port: `rx` is what
//! came in from the wire (into the switch), `tx` what the switch put on the wire.

pub mod event_loop;
pub mod stream;
pub mod tap;
pub mod tapdev;
pub mod vxlan;

use std::collections::hash_map::Entry;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering::Relaxed};
use std::sync::{Mutex, OnceLock, RwLock};
use std::time::{Duration, Instant};

use rustc_hash::FxHashMap;

use crate::counters::{CounterSnapshot, DropReason, QueueCounters, Tally};
use crate::mac::MacAddr;
use crate::net_hdr::NetHdr;
use crate::offload::{RxOffloads, TxOffloads};

/// Index into the switch's uplink table.
pub type UplinkId = usize;

/// Drops only an uplink has (partitions' counters keep their keys unchanged).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WireDrop {
    /// From the wire: a runt, an oversized or garbled frame, a bad length prefix, a malformed
    /// VXLAN header, a virtio-net header the wire may not send.
    BadFrame = 0,
    /// To the wire: the socket or the peer could not take the frame now (buffers full).
    TxBusy = 1,
}

impl WireDrop {
    pub const ALL: [WireDrop; 2] = [WireDrop::BadFrame, WireDrop::TxBusy];

    pub fn key(self) -> &'static str {
        match self {
            WireDrop::BadFrame => "drop_bad_frame",
            WireDrop::TxBusy => "drop_tx_busy",
        }
    }
}

/// Why a wire did not take a frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WireError {
    /// No peer, or the wire is gone: counted as `link_down`.
    Down,
    /// The wire is full: counted as `tx_busy`.
    Busy,
}

/// The transmit half of an uplink, called from any data-path thread.
pub trait Wire: Send + Sync {
    /// Puts one frame on the wire. `hdr` is the virtio-net header for wires that carry one
    /// (a tap); it only asks for what the uplink's `offloads` allow. `pair` is the sender's
    /// queue pair: a wire with several queues (a multi-queue tap) puts the frame on queue
    /// `pair % queues`, as vhost-net maps a device's queue pairs onto a tap's queues; others
    /// ignore it.
    fn send(&self, hdr: &NetHdr, frame: &[u8], pair: usize) -> Result<(), WireError>;
}

/// A wire that takes nothing (a port whose I/O is not attached, and tests).
pub struct NoWire;

impl Wire for NoWire {
    fn send(&self, _: &NetHdr, _: &[u8], _: usize) -> Result<(), WireError> {
        Err(WireError::Down)
    }
}

/// Things logged once per uplink rather than per frame.
#[derive(Clone, Copy, Debug)]
pub enum WireWarn {
    BadFrame = 0,
    BadOffload = 1,
    TxBusy = 2,
    Oversize = 3,
}

/// Static shape of an uplink.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UplinkConfig {
    /// `uplink0`, `uplink1`, ... in configuration order.
    pub name: String,
    /// `tap`, `stream` or `vxlan`.
    pub kind: &'static str,
    /// The spec as given (`stream:/run/x.sock`), for `show`.
    pub spec: String,
    /// The largest frame on the wire is MTU + 14 (+ 4 with a VLAN tag).
    pub mtu: u16,
    /// What the wire takes in the virtio-net header on transmit (none for stream and VXLAN:
    /// frames are checksummed and segmented in software on the way out).
    pub offloads: RxOffloads,
    /// What the wire may hand the switch in the header on receive.
    pub accepts: TxOffloads,
}

/// The wire's comings and goings, for `show`: a stream's peers, a tap's opens (re-opens
/// included) and losses.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PeerLife {
    pub connects: u64,
    pub disconnects: u64,
    /// Connections refused because a peer was already attached.
    pub refused: u64,
}

pub struct Uplink {
    pub id: UplinkId,
    pub config: UplinkConfig,
    /// Link of the wire: a peer attached (stream), the tap open, the socket bound (VXLAN).
    /// Changed only through `Switch::set_carrier`, so the forwarding view follows.
    carrier: AtomicBool,
    counters: QueueCounters,
    wire_drops: [AtomicU64; WireDrop::ALL.len()],
    warned: AtomicU32,
    life: Mutex<PeerLife>,
    /// Queues of the wire (a multi-queue tap has several), for `show`.
    queues: AtomicU32,
    wire: OnceLock<Box<dyn Wire>>,
}

impl Uplink {
    /// A port with no wire attached yet ([`Uplink::attach`]) and its carrier down.
    pub fn new(id: UplinkId, config: UplinkConfig) -> Self {
        Uplink {
            id,
            config,
            carrier: AtomicBool::new(false),
            counters: QueueCounters::default(),
            wire_drops: Default::default(),
            warned: AtomicU32::new(0),
            life: Mutex::new(PeerLife::default()),
            queues: AtomicU32::new(1),
            wire: OnceLock::new(),
        }
    }

    pub fn name(&self) -> &str {
        &self.config.name
    }

    /// Gives the port its transmit half (once).
    pub fn attach(&self, wire: Box<dyn Wire>) {
        let _ = self.wire.set(wire);
    }

    pub fn send(&self, hdr: &NetHdr, frame: &[u8], pair: usize) -> Result<(), WireError> {
        match self.wire.get() {
            Some(w) => w.send(hdr, frame, pair),
            None => Err(WireError::Down),
        }
    }

    pub fn carrier(&self) -> bool {
        self.carrier.load(Relaxed)
    }

    pub(crate) fn store_carrier(&self, up: bool) -> bool {
        self.carrier.swap(up, Relaxed)
    }

    /// Adds what came in from the wire (accepted frames and their drops).
    pub fn add_rx(&self, t: &Tally) {
        self.counters.add_rx(t);
    }

    /// Adds what went onto the wire (and drops on the way out).
    pub fn add_tx(&self, t: &Tally) {
        self.counters.add_tx(t);
    }

    pub fn drop(&self, r: DropReason) {
        self.counters.drop(r);
    }

    pub fn wire_drop(&self, d: WireDrop) {
        self.wire_drops[d as usize].fetch_add(1, Relaxed);
    }

    pub fn counters(&self) -> UplinkSnapshot {
        let mut wire = [0; WireDrop::ALL.len()];
        for (w, a) in wire.iter_mut().zip(&self.wire_drops) {
            *w = a.load(Relaxed);
        }
        UplinkSnapshot {
            base: self.counters.snapshot(),
            wire,
        }
    }

    pub fn queues(&self) -> usize {
        self.queues.load(Relaxed) as usize
    }

    pub fn set_queues(&self, n: usize) {
        self.queues
            .store(u32::try_from(n).unwrap_or(u32::MAX), Relaxed);
    }

    pub fn life(&self) -> PeerLife {
        *self.life.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn update_life(&self, f: impl FnOnce(&mut PeerLife)) {
        f(&mut self.life.lock().unwrap_or_else(|e| e.into_inner()));
    }

    /// Logs the first occurrence of `w` on this uplink; later ones only show in counters.
    pub fn warn_once(&self, w: WireWarn, why: &dyn std::fmt::Display) {
        let bit = 1u32 << (w as u32);
        if self.warned.fetch_or(bit, Relaxed) & bit == 0 {
            log::warn!(
                "{}: {why} (further occurrences only counted)",
                self.config.name
            );
        }
    }
}

/// An uplink's counters: the partition keys plus the wire's own drops.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct UplinkSnapshot {
    pub base: CounterSnapshot,
    pub wire: [u64; WireDrop::ALL.len()],
}

impl UplinkSnapshot {
    pub fn wire_dropped(&self, d: WireDrop) -> u64 {
        self.wire[d as usize]
    }

    pub fn fields(&self) -> Vec<(&'static str, u64)> {
        let mut v = self.base.fields();
        v.extend(
            WireDrop::ALL
                .iter()
                .map(|d| (d.key(), self.wire_dropped(*d))),
        );
        v
    }
}

impl serde::Serialize for UplinkSnapshot {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let fields = self.fields();
        let mut m = s.serialize_map(Some(fields.len()))?;
        for (k, v) in fields {
            m.serialize_entry(k, &v)?;
        }
        m.end()
    }
}

/// Linux bridge's default ageing time.
pub const DEFAULT_AGING: Duration = Duration::from_secs(300);
/// Entries learned behind uplinks at most; beyond, unknown sources are not learned (their
/// frames still pass, and unicast to them is flooded to the uplinks), so a peer sending from
/// random addresses cannot grow the daemon.
pub const MAX_LEARNED: usize = 16384;

/// Milliseconds on a process-wide monotonic clock.
pub fn mono_ms() -> u64 {
    static START: OnceLock<Instant> = OnceLock::new();
    START.get_or_init(Instant::now).elapsed().as_millis() as u64
}

struct Learnt {
    uplink: u32,
    seen_ms: AtomicU64,
}

/// MACs learned behind uplinks: (VLAN, MAC) -> uplink, with aging. Learned by the uplink I/O
/// thread, looked up by senders for unicast to a MAC no partition owns. The clock is a shared
/// integer the I/O thread moves forward, so a lookup costs no clock read.
pub struct Learned {
    map: RwLock<FxHashMap<u64, Learnt>>,
    clock_ms: AtomicU64,
    aging_ms: AtomicU64,
}

/// A learned entry, for display.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LearnedEntry {
    pub mac: MacAddr,
    /// 0 when untagged.
    pub vid: u16,
    /// 0 when untagged.
    pub tpid: u16,
    pub uplink: UplinkId,
    pub age_ms: u64,
}

impl std::fmt::Debug for Learned {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Learned")
            .field("clock_ms", &self.clock_ms.load(Relaxed))
            .finish_non_exhaustive()
    }
}

impl Default for Learned {
    fn default() -> Self {
        Learned {
            map: RwLock::new(FxHashMap::default()),
            clock_ms: AtomicU64::new(mono_ms()),
            aging_ms: AtomicU64::new(DEFAULT_AGING.as_millis() as u64),
        }
    }
}

impl Learned {
    /// The table key of `mac` on the VLAN of tag (`tpid`, `vid`) (0, 0 when untagged).
    pub fn key(mac: MacAddr, tpid: u16, vid: u16) -> u64 {
        let class = match tpid {
            0 => 0u64,
            0x8100 => 1,
            _ => 2,
        };
        mac.key() | u64::from(vid & 0x0fff) << 48 | class << 60
    }

    fn unkey(k: u64) -> (MacAddr, u16, u16) {
        let b = k.to_le_bytes();
        let mac = MacAddr([b[0], b[1], b[2], b[3], b[4], b[5]]);
        let vid = ((k >> 48) & 0x0fff) as u16;
        let tpid = match k >> 60 {
            0 => 0,
            1 => 0x8100,
            _ => 0x88a8,
        };
        (mac, vid, tpid)
    }

    pub fn set_aging(&self, d: Duration) {
        self.aging_ms.store(d.as_millis() as u64, Relaxed);
    }

    /// Moves the clock to `now_ms` (the I/O thread, at every wake-up; tests).
    pub fn tick(&self, now_ms: u64) {
        self.clock_ms.fetch_max(now_ms, Relaxed);
    }

    fn fresh(&self, e: &Learnt) -> bool {
        let now = self.clock_ms.load(Relaxed);
        now.saturating_sub(e.seen_ms.load(Relaxed)) < self.aging_ms.load(Relaxed)
    }

    /// The uplink `key` was last seen behind, unless that has aged out.
    pub fn lookup(&self, key: u64) -> Option<UplinkId> {
        let m = self.map.read().unwrap_or_else(|e| e.into_inner());
        m.get(&key)
            .filter(|e| self.fresh(e))
            .map(|e| e.uplink as UplinkId)
    }

    /// `key` was seen as a source on `uplink`.
    pub fn learn(&self, key: u64, uplink: UplinkId) {
        let now = self.clock_ms.load(Relaxed);
        {
            let m = self.map.read().unwrap_or_else(|e| e.into_inner());
            if let Some(e) = m.get(&key) {
                if e.uplink as usize == uplink {
                    if e.seen_ms.load(Relaxed) != now {
                        e.seen_ms.store(now, Relaxed);
                    }
                    return;
                }
            }
        }
        let mut m = self.map.write().unwrap_or_else(|e| e.into_inner());
        let full = m.len() >= MAX_LEARNED;
        match m.entry(key) {
            // Moved to another uplink.
            Entry::Occupied(mut o) => {
                o.insert(Learnt {
                    uplink: uplink as u32,
                    seen_ms: AtomicU64::new(now),
                });
            }
            Entry::Vacant(v) if !full => {
                v.insert(Learnt {
                    uplink: uplink as u32,
                    seen_ms: AtomicU64::new(now),
                });
            }
            Entry::Vacant(_) => {}
        }
    }

    /// Removes aged entries (the I/O thread, now and then).
    pub fn sweep(&self) {
        let stale = {
            let m = self.map.read().unwrap_or_else(|e| e.into_inner());
            m.values().any(|e| !self.fresh(e))
        };
        if stale {
            let mut m = self.map.write().unwrap_or_else(|e| e.into_inner());
            m.retain(|_, e| self.fresh(e));
        }
    }

    /// Forgets what was learned behind `uplink` (its link went down, as a bridge flushes a
    /// port's entries).
    pub fn flush(&self, uplink: UplinkId) {
        let mut m = self.map.write().unwrap_or_else(|e| e.into_inner());
        m.retain(|_, e| e.uplink as usize != uplink);
    }

    /// Live entries behind `uplink`.
    pub fn count(&self, uplink: UplinkId) -> usize {
        let m = self.map.read().unwrap_or_else(|e| e.into_inner());
        m.values()
            .filter(|e| e.uplink as usize == uplink && self.fresh(e))
            .count()
    }

    pub fn entries(&self) -> Vec<LearnedEntry> {
        let now = self.clock_ms.load(Relaxed);
        let m = self.map.read().unwrap_or_else(|e| e.into_inner());
        let mut v: Vec<LearnedEntry> = m
            .iter()
            .filter(|(_, e)| self.fresh(e))
            .map(|(k, e)| {
                let (mac, vid, tpid) = Self::unkey(*k);
                LearnedEntry {
                    mac,
                    vid,
                    tpid,
                    uplink: e.uplink as UplinkId,
                    age_ms: now.saturating_sub(e.seen_ms.load(Relaxed)),
                }
            })
            .collect();
        v.sort_by_key(|e| (e.uplink, e.vid, e.mac));
        v
    }
}

#[cfg(test)]
mod switch_tests;

#[cfg(test)]
mod tests {
    use super::*;

    fn mac(s: &str) -> MacAddr {
        s.parse().unwrap()
    }

    #[test]
    fn learned_entries_age_move_and_flush() {
        let l = Learned::default();
        l.tick(1_000);
        l.set_aging(Duration::from_secs(10));
        let a = Learned::key(mac("52:54:00:00:00:01"), 0, 0);
        let a10 = Learned::key(mac("52:54:00:00:00:01"), 0x8100, 10);
        assert_ne!(a, a10, "per VLAN");
        assert_eq!(l.lookup(a), None);
        l.learn(a, 1);
        assert_eq!(l.lookup(a), Some(1));
        assert_eq!(l.lookup(a10), None);
        l.tick(8_000);
        l.learn(a, 1); // refreshed
        l.tick(15_000);
        assert_eq!(l.lookup(a), Some(1), "seen at 8 s, ages at 18 s");
        l.learn(a, 0);
        assert_eq!(l.lookup(a), Some(0), "moved");
        l.tick(30_000);
        assert_eq!(l.lookup(a), None, "aged");
        assert_eq!(l.count(0), 0);
        l.sweep();
        assert!(l.entries().is_empty());
        l.learn(a10, 2);
        let e = l.entries();
        assert_eq!(
            (e[0].mac, e[0].vid, e[0].tpid, e[0].uplink),
            (mac("52:54:00:00:00:01"), 10, 0x8100, 2)
        );
        l.flush(2);
        assert_eq!(l.lookup(a10), None);
    }

    #[test]
    fn the_table_is_bounded() {
        let l = Learned::default();
        for i in 0..MAX_LEARNED as u64 + 10 {
            l.learn(i + 1, 0);
        }
        assert_eq!(l.count(0), MAX_LEARNED);
        assert_eq!(l.lookup(MAX_LEARNED as u64 + 5), None);
        // A known entry still moves.
        l.learn(1, 1);
        assert_eq!(l.lookup(1), Some(1));
    }

    #[test]
    fn uplink_counters_keep_wire_drops_apart() {
        let u = Uplink::new(
            0,
            UplinkConfig {
                name: "uplink0".into(),
                kind: "stream",
                spec: "stream:/x".into(),
                mtu: 1500,
                offloads: RxOffloads::default(),
                accepts: TxOffloads::default(),
            },
        );
        u.wire_drop(WireDrop::BadFrame);
        u.drop(DropReason::LinkDown);
        let s = u.counters();
        assert_eq!(s.wire_dropped(WireDrop::BadFrame), 1);
        assert_eq!(s.base.dropped(DropReason::LinkDown), 1);
        let keys: Vec<&str> = s.fields().iter().map(|(k, _)| *k).collect();
        assert!(keys.contains(&"drop_bad_frame") && keys.contains(&"drop_tx_busy"));
        assert_eq!(
            u.send(&NetHdr::default(), &[0; 60], 0),
            Err(WireError::Down)
        );
    }
}
