//! Per-queue-pair counters. Writers are data-path threads, adding a batch's tally (relaxed
//! atomics, no locks); readers are the control server, which sums queue pairs into partition
//! totals.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

/// Why a frame was dropped. Each reason is its own counter.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DropReason {
    /// The receiver had no RX buffer posted (or none large enough).
    NoRxBuffer,
    /// Source MAC is not the sender's own (anti-spoof).
    SpoofedSource,
    /// Unicast to a MAC no partition owns (and no uplink yet).
    UnknownDestination,
    /// The owning partition exists but its queues are not running.
    DestinationDown,
    /// Unicast to the sender's own MAC: the switch does not hairpin.
    Hairpin,
    /// A descriptor chain or virtio-net header the device cannot accept.
    MalformedChain,
    /// Longer than the sender's or the receiver's MTU allows (and not a GSO frame the
    /// receiver takes or the switch can segment to fit).
    Oversize,
    /// The port's link is administratively down (`state disable`): counted on that port for
    /// what it sent and for what would have been delivered to it.
    LinkDown,
    /// Port VLAN: the partition sent a tagged frame, or unicast to a port not on the frame's
    /// VLAN.
    Vlan,
}

impl DropReason {
    pub const ALL: [DropReason; 9] = [
        DropReason::NoRxBuffer,
        DropReason::SpoofedSource,
        DropReason::UnknownDestination,
        DropReason::DestinationDown,
        DropReason::Hairpin,
        DropReason::MalformedChain,
        DropReason::Oversize,
        DropReason::LinkDown,
        DropReason::Vlan,
    ];

    pub fn key(self) -> &'static str {
        match self {
            DropReason::NoRxBuffer => "drop_no_rx_buffer",
            DropReason::SpoofedSource => "drop_spoofed_source",
            DropReason::UnknownDestination => "drop_unknown_destination",
            DropReason::DestinationDown => "drop_destination_down",
            DropReason::Hairpin => "drop_hairpin",
            DropReason::MalformedChain => "drop_malformed_chain",
            DropReason::Oversize => "drop_oversize",
            DropReason::LinkDown => "drop_link_down",
            DropReason::Vlan => "drop_vlan",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// Counters of one queue pair. "rx" is toward the partition's driver, "tx" from it.
#[derive(Default, Debug)]
pub struct QueueCounters {
    rx_packets: AtomicU64,
    rx_bytes: AtomicU64,
    rx_broadcast: AtomicU64,
    rx_multicast: AtomicU64,
    tx_packets: AtomicU64,
    tx_bytes: AtomicU64,
    tx_broadcast: AtomicU64,
    tx_multicast: AtomicU64,
    drops: [AtomicU64; DropReason::ALL.len()],
}

/// Destination class of a frame, for the broadcast/multicast counters.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Cast {
    Unicast,
    Multicast,
    Broadcast,
}

impl QueueCounters {
    pub fn drop(&self, reason: DropReason) {
        self.drops[reason.index()].fetch_add(1, Relaxed);
    }

    /// Adds what a batch counted toward this pair's driver (rx) and its drops.
    pub fn add_rx(&self, t: &Tally) {
        Self::add(&self.rx_packets, t.packets);
        Self::add(&self.rx_bytes, t.bytes);
        Self::add(&self.rx_broadcast, t.broadcast);
        Self::add(&self.rx_multicast, t.multicast);
        self.add_drops(t);
    }

    /// Adds what a batch counted from this pair's driver (tx) and its drops.
    pub fn add_tx(&self, t: &Tally) {
        Self::add(&self.tx_packets, t.packets);
        Self::add(&self.tx_bytes, t.bytes);
        Self::add(&self.tx_broadcast, t.broadcast);
        Self::add(&self.tx_multicast, t.multicast);
        self.add_drops(t);
    }

    fn add_drops(&self, t: &Tally) {
        for (a, n) in self.drops.iter().zip(t.drops) {
            Self::add(a, n);
        }
    }

    // Each locked add also waits for the copies still in the store buffer, so zero is skipped.
    fn add(a: &AtomicU64, n: u64) {
        if n != 0 {
            a.fetch_add(n, Relaxed);
        }
    }

    pub fn snapshot(&self) -> CounterSnapshot {
        let mut drops = [0; DropReason::ALL.len()];
        for (d, a) in drops.iter_mut().zip(&self.drops) {
            *d = a.load(Relaxed);
        }
        CounterSnapshot {
            rx_packets: self.rx_packets.load(Relaxed),
            rx_bytes: self.rx_bytes.load(Relaxed),
            rx_broadcast: self.rx_broadcast.load(Relaxed),
            rx_multicast: self.rx_multicast.load(Relaxed),
            tx_packets: self.tx_packets.load(Relaxed),
            tx_bytes: self.tx_bytes.load(Relaxed),
            tx_broadcast: self.tx_broadcast.load(Relaxed),
            tx_multicast: self.tx_multicast.load(Relaxed),
            drops,
        }
    }
}

/// Counts kept in plain integers while a batch is processed and added to the shared counters
/// once per batch: a locked add per frame per counter showed as a fifth of the per-frame cost.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Tally {
    pub packets: u64,
    pub bytes: u64,
    pub broadcast: u64,
    pub multicast: u64,
    pub drops: [u64; DropReason::ALL.len()],
}

impl Tally {
    pub fn count(&mut self, bytes: usize, cast: Cast) {
        self.packets += 1;
        self.bytes += bytes as u64;
        match cast {
            Cast::Broadcast => self.broadcast += 1,
            Cast::Multicast => self.multicast += 1,
            Cast::Unicast => {}
        }
    }

    pub fn drop(&mut self, reason: DropReason) {
        self.drop_n(reason, 1);
    }

    pub fn drop_n(&mut self, reason: DropReason, n: usize) {
        self.drops[reason.index()] += n as u64;
    }

    pub fn merge_drops(&mut self, o: &Tally) {
        for (a, b) in self.drops.iter_mut().zip(o.drops) {
            *a += b;
        }
    }
}

/// A plain copy of counters, for reporting and summing.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CounterSnapshot {
    pub rx_packets: u64,
    pub rx_bytes: u64,
    pub rx_broadcast: u64,
    pub rx_multicast: u64,
    pub tx_packets: u64,
    pub tx_bytes: u64,
    pub tx_broadcast: u64,
    pub tx_multicast: u64,
    pub drops: [u64; DropReason::ALL.len()],
}

impl CounterSnapshot {
    pub fn dropped(&self, reason: DropReason) -> u64 {
        self.drops[reason.index()]
    }

    pub fn total_drops(&self) -> u64 {
        self.drops.iter().sum()
    }

    pub fn add(&mut self, o: &CounterSnapshot) {
        self.rx_packets += o.rx_packets;
        self.rx_bytes += o.rx_bytes;
        self.rx_broadcast += o.rx_broadcast;
        self.rx_multicast += o.rx_multicast;
        self.tx_packets += o.tx_packets;
        self.tx_bytes += o.tx_bytes;
        self.tx_broadcast += o.tx_broadcast;
        self.tx_multicast += o.tx_multicast;
        for (a, b) in self.drops.iter_mut().zip(o.drops) {
            *a += b;
        }
    }

    /// Flat key/value pairs, the order the control protocol prints them in.
    pub fn fields(&self) -> Vec<(&'static str, u64)> {
        let mut v = vec![
            ("rx_packets", self.rx_packets),
            ("rx_bytes", self.rx_bytes),
            ("tx_packets", self.tx_packets),
            ("tx_bytes", self.tx_bytes),
            ("rx_broadcast", self.rx_broadcast),
            ("rx_multicast", self.rx_multicast),
            ("tx_broadcast", self.tx_broadcast),
            ("tx_multicast", self.tx_multicast),
        ];
        v.extend(DropReason::ALL.iter().map(|r| (r.key(), self.dropped(*r))));
        v
    }
}

impl serde::Serialize for CounterSnapshot {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_and_sums() {
        let q = QueueCounters::default();
        let (mut rx, mut tx) = (Tally::default(), Tally::default());
        rx.count(100, Cast::Broadcast);
        rx.count(60, Cast::Unicast);
        tx.count(42, Cast::Multicast);
        q.add_rx(&rx);
        q.add_tx(&tx);
        q.drop(DropReason::SpoofedSource);
        q.drop(DropReason::SpoofedSource);
        let s = q.snapshot();
        assert_eq!((s.rx_packets, s.rx_bytes, s.rx_broadcast), (2, 160, 1));
        assert_eq!((s.tx_packets, s.tx_bytes, s.tx_multicast), (1, 42, 1));
        assert_eq!(s.dropped(DropReason::SpoofedSource), 2);
        assert_eq!(s.total_drops(), 2);
        let mut t = s;
        t.add(&s);
        assert_eq!(t.rx_bytes, 320);
        assert_eq!(t.dropped(DropReason::SpoofedSource), 4);
    }

    #[test]
    fn a_tally_adds_to_the_side_it_is_added_to() {
        let q = QueueCounters::default();
        let mut t = Tally::default();
        t.count(100, Cast::Broadcast);
        t.count(60, Cast::Multicast);
        t.count(40, Cast::Unicast);
        t.drop(DropReason::NoRxBuffer);
        q.add_rx(&t);
        let s = q.snapshot();
        assert_eq!(
            (s.rx_packets, s.rx_bytes, s.rx_broadcast, s.rx_multicast),
            (3, 200, 1, 1)
        );
        assert_eq!((s.tx_packets, s.dropped(DropReason::NoRxBuffer)), (0, 1));
        q.add_tx(&t);
        let s = q.snapshot();
        assert_eq!((s.tx_packets, s.tx_bytes, s.tx_broadcast), (3, 200, 1));
        assert_eq!((s.rx_packets, s.dropped(DropReason::NoRxBuffer)), (3, 2));
    }

    #[test]
    fn every_drop_reason_has_its_own_key() {
        let keys: std::collections::HashSet<_> = DropReason::ALL.iter().map(|r| r.key()).collect();
        assert_eq!(keys.len(), DropReason::ALL.len());
        for (i, r) in DropReason::ALL.iter().enumerate() {
            assert_eq!(r.index(), i);
        }
    }
}
