//! The switch with uplinks: each decision, learning, VLANs, link state, software offloads and
//! MTU on the way to and from a wire, with recording wires and in-memory partitions.

use std::sync::{Arc, Mutex};

use virtio_bindings::bindings::virtio_net::{
    VIRTIO_NET_F_GUEST_CSUM, VIRTIO_NET_F_GUEST_TSO4, VIRTIO_NET_F_MRG_RXBUF,
};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::*;
use crate::admin::{AdminChange, LinkState};
use crate::counters::{Cast, DropReason};
use crate::hostmem::MemMap;
use crate::net_hdr::{NetHdr, FLAG_NEEDS_CSUM, GSO_TCPV4, NET_HDR_LEN};
use crate::partition::{Partition, Role};
use crate::ring::Seg;
use crate::session::Session;
use crate::switch::{Decision, FwdScratch, IngressScratch, Switch, TxBatch, TxFrame};
use crate::testutil::{self, Driver, DESC, F_WRITE};

type Log = Arc<Mutex<Vec<(NetHdr, Vec<u8>)>>>;

struct Recorder(Log);

impl Wire for Recorder {
    fn send(&self, hdr: &NetHdr, frame: &[u8], _pair: usize) -> Result<(), WireError> {
        self.0.lock().unwrap().push((*hdr, frame.to_vec()));
        Ok(())
    }
}

const TAP: RxOffloads = RxOffloads {
    csum: true,
    tso4: true,
    tso6: true,
};

fn uplink(id: UplinkId, offloads: RxOffloads, mtu: u16) -> (Arc<Uplink>, Log) {
    let log = Log::default();
    let u = uplink_with(id, offloads, mtu, Box::new(Recorder(log.clone())));
    (u, log)
}

fn uplink_with(id: UplinkId, offloads: RxOffloads, mtu: u16, wire: Box<dyn Wire>) -> Arc<Uplink> {
    let u = Arc::new(Uplink::new(
        id,
        UplinkConfig {
            name: format!("uplink{id}"),
            kind: "test",
            spec: "test".into(),
            mtu,
            offloads,
            accepts: TxOffloads {
                csum: offloads.csum,
                tso4: offloads.tso4,
                tso6: offloads.tso6,
            },
        },
    ));
    u.attach(wire);
    u
}

fn part(id: usize) -> Arc<Partition> {
    let role = if id == 0 {
        Role::Pf
    } else {
        Role::Vf(id as u16 - 1)
    };
    let mac = format!("02:00:00:00:00:{id:02x}");
    Arc::new(Partition::new(id, role, testutil::config(&mac, 1)))
}

fn mac(s: &str) -> MacAddr {
    s.parse().unwrap()
}

const PEER: &str = "52:54:00:12:34:56";

/// PF, VF0, VF1 and two uplinks (a tap-like one and a stream-like one), both with their link.
fn sw() -> (Switch, Log, Log) {
    let (u0, l0) = uplink(0, TAP, 1500);
    let (u1, l1) = uplink(1, RxOffloads::default(), 1500);
    let s = Switch::with_uplinks(vec![part(0), part(1), part(2)], vec![u0, u1]).unwrap();
    s.set_carrier(0, true);
    s.set_carrier(1, true);
    (s, l0, l1)
}

fn eth(dst: MacAddr, src: MacAddr, len: usize) -> Vec<u8> {
    let mut f = dst.0.to_vec();
    f.extend_from_slice(&src.0);
    f.extend_from_slice(&[0x88, 0xb5]);
    f.extend((0..len - 14).map(|i| i as u8));
    f
}

fn tagged(dst: MacAddr, src: MacAddr, tpid: u16, vid: u16, len: usize) -> Vec<u8> {
    let mut f = eth(dst, src, len - 4);
    f.splice(
        12..12,
        [(tpid >> 8) as u8, tpid as u8, (vid >> 8) as u8, vid as u8],
    );
    f
}

fn tx_frame(hdr: NetHdr, bytes: &[u8]) -> TxFrame {
    let m = |at: usize| MacAddr(bytes[at..at + 6].try_into().unwrap());
    let et = u16::from_be_bytes([bytes[12], bytes[13]]);
    let (tpid, vid) = if et == 0x8100 || et == 0x88a8 {
        (et, u16::from_be_bytes([bytes[14], bytes[15]]) & 0xfff)
    } else {
        (0, 0)
    };
    TxFrame {
        hdr,
        segs: 0..1,
        len: bytes.len(),
        dst: m(0),
        src: m(6),
        host: None,
        tpid,
        vid,
    }
}

/// Sends one frame from partition `from` through the switch, from real (test) guest memory.
fn send(s: &Switch, from: usize, hdr: NetHdr, bytes: &[u8]) {
    send_on(s, from, 0, hdr, bytes)
}

/// [`send`] from the sender's queue pair `pair`.
fn send_on(s: &Switch, from: usize, pair: usize, hdr: NetHdr, bytes: &[u8]) {
    let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 0x20000)]).unwrap();
    let mut chain = hdr.to_bytes().to_vec();
    chain.extend_from_slice(bytes);
    mem.write_slice(&chain, GuestAddress(0x100)).unwrap();
    let map = MemMap::of(&mem);
    let host = map.host();
    let segs = [Seg {
        addr: 0x100,
        len: chain.len() as u32,
    }];
    let frames = [tx_frame(hdr, bytes)];
    let batch = TxBatch {
        mem: &host,
        segs: &segs,
        frames: &frames,
    };
    s.forward(
        &s.partitions()[from],
        pair,
        &batch,
        &mut FwdScratch::default(),
    );
}

fn decide(s: &Switch, from: usize, bytes: &[u8]) -> Decision {
    s.current_view()
        .decide(from, &tx_frame(NetHdr::default(), bytes))
}

fn decide_in(s: &Switch, u: UplinkId, bytes: &[u8]) -> Decision {
    s.current_view()
        .decide_ingress(u, &tx_frame(NetHdr::default(), bytes))
}

fn ingress(s: &Switch, u: UplinkId, bytes: &[u8]) {
    s.ingress(u, &NetHdr::default(), bytes, &mut IngressScratch::default());
}

/// A started receiving partition: `d`'s ring is its RX queue 0, with 8 buffers of 4 KiB.
fn receiver(s: &Switch, id: usize, features: u64) -> (Driver, Arc<Session>) {
    let (mut d, _) = Driver::new(64);
    let sess = testutil::session_on(&d, 0);
    sess.set_features(features);
    for i in 0..8u16 {
        d.desc(DESC, i, 0x8000 + u64::from(i) * 0x1000, 4096, F_WRITE, 0);
        d.offer(i);
    }
    s.partitions()[id].install_session(sess.clone());
    (d, sess)
}

/// The frames `d` received (header, bytes), single-buffer chains.
fn received(d: &Driver) -> Vec<(NetHdr, Vec<u8>)> {
    (0..d.used_idx())
        .map(|k| {
            let (id, len) = d.used(k);
            let mut b = vec![0u8; len as usize];
            d.mem
                .read_slice(&mut b, GuestAddress(0x8000 + u64::from(id) * 0x1000))
                .unwrap();
            let mut h = NetHdr::parse(b[..NET_HDR_LEN].try_into().unwrap());
            h.num_buffers = 0;
            (h, b[NET_HDR_LEN..].to_vec())
        })
        .collect()
}

fn set(s: &Switch, id: usize, f: impl FnOnce(&mut AdminChange)) {
    let mut c = AdminChange::default();
    f(&mut c);
    s.set_admin(id, &c).unwrap();
}

#[test]
fn unknown_unicast_goes_to_the_uplinks_and_is_dropped_without_them() {
    let (s, l0, l1) = sw();
    let vf0 = mac("02:00:00:00:00:01");
    let f = eth(mac(PEER), vf0, 60);
    assert_eq!(decide(&s, 1, &f), Decision::FloodUplinks);
    send(&s, 1, NetHdr::default(), &f);
    assert_eq!(l0.lock().unwrap().len(), 1);
    assert_eq!(l1.lock().unwrap()[0].1, f, "byte-exact on the wire");
    let t = s.partitions()[1].totals();
    assert_eq!((t.tx_packets, t.total_drops()), (1, 0));
    assert_eq!(s.uplinks()[1].counters().base.tx_packets, 1);
    // No uplinks: as before.
    let plain = Switch::new(vec![part(0), part(1)]).unwrap();
    assert_eq!(
        decide(&plain, 1, &f),
        Decision::Drop(DropReason::UnknownDestination)
    );
    // Partition to partition is unchanged by uplinks.
    assert_eq!(
        decide(&s, 1, &eth(mac("02:00:00:00:00:02"), vf0, 60)),
        Decision::Unicast(2)
    );
}

#[test]
fn broadcast_from_a_partition_reaches_partitions_and_every_uplink() {
    let (s, l0, l1) = sw();
    let vf0 = mac("02:00:00:00:00:01");
    let f = eth(MacAddr::BROADCAST, vf0, 60);
    assert_eq!(decide(&s, 1, &f), Decision::Flood(Cast::Broadcast));
    let (d, _s) = receiver(&s, 2, 0);
    send(&s, 1, NetHdr::default(), &f);
    assert_eq!(received(&d).len(), 1, "the other partition");
    assert_eq!(l0.lock().unwrap().len(), 1);
    assert_eq!(l1.lock().unwrap().len(), 1);
    assert_eq!(s.uplinks()[0].counters().base.tx_broadcast, 1);
}

#[test]
fn frames_from_an_uplink_go_by_mac_flood_only_as_group_and_never_back_to_a_wire() {
    let (s, l0, l1) = sw();
    let (vf0, vf1) = (mac("02:00:00:00:00:01"), mac("02:00:00:00:00:02"));
    let peer = mac(PEER);
    assert_eq!(decide_in(&s, 0, &eth(vf1, peer, 60)), Decision::Unicast(2));
    assert_eq!(
        decide_in(&s, 0, &eth(MacAddr::BROADCAST, peer, 60)),
        Decision::Flood(Cast::Broadcast)
    );
    assert_eq!(
        decide_in(&s, 0, &eth(mac("52:54:00:99:99:99"), peer, 60)),
        Decision::Drop(DropReason::UnknownDestination),
        "unknown unicast is not flooded to partitions"
    );
    assert_eq!(
        decide_in(&s, 0, &eth(vf1, vf0, 60)),
        Decision::Drop(DropReason::SpoofedSource),
        "a partition's own MAC from the wire is a loop"
    );
    assert_eq!(
        decide_in(&s, 0, &eth(vf1, MacAddr::BROADCAST, 60)),
        Decision::Drop(DropReason::SpoofedSource)
    );
    let (d1, _a) = receiver(&s, 2, 0);
    let (d0, _b) = receiver(&s, 1, 0);
    let uni = eth(vf1, peer, 100);
    ingress(&s, 0, &uni);
    let got = received(&d1);
    assert_eq!(got.len(), 1);
    assert_eq!((got[0].0, &got[0].1), (NetHdr::default(), &uni));
    assert!(received(&d0).is_empty(), "unicast reaches one partition");
    ingress(&s, 0, &eth(MacAddr::BROADCAST, peer, 60));
    assert_eq!((received(&d0).len(), received(&d1).len()), (1, 2));
    ingress(&s, 0, &eth(mac("52:54:00:99:99:99"), peer, 60));
    assert!(
        l0.lock().unwrap().is_empty() && l1.lock().unwrap().is_empty(),
        "nothing from a wire goes to a wire"
    );
    let c = s.uplinks()[0].counters().base;
    assert_eq!((c.rx_packets, c.rx_broadcast), (2, 1));
    assert_eq!(c.dropped(DropReason::UnknownDestination), 1);
    assert_eq!(s.partitions()[2].totals().rx_packets, 2);
}

#[test]
fn macs_behind_an_uplink_are_learned_per_vlan_and_age() {
    let (s, l0, l1) = sw();
    let vf0 = mac("02:00:00:00:00:01");
    let peer = mac(PEER);
    s.learned().tick(1_000);
    ingress(&s, 1, &eth(MacAddr::BROADCAST, peer, 60));
    let to_peer = eth(peer, vf0, 60);
    assert_eq!(decide(&s, 1, &to_peer), Decision::Uplink(1));
    assert_eq!(
        decide(&s, 1, &tagged(peer, vf0, 0x8100, 5, 64)),
        Decision::FloodUplinks,
        "learned untagged, sent on VLAN 5"
    );
    send(&s, 1, NetHdr::default(), &to_peer);
    assert!(
        l0.lock().unwrap().is_empty(),
        "known unicast goes to one uplink"
    );
    assert_eq!(l1.lock().unwrap().len(), 1);
    assert_eq!(s.learned().count(1), 1);
    // The MAC moves to the other uplink.
    ingress(&s, 0, &eth(MacAddr::BROADCAST, peer, 60));
    assert_eq!(decide(&s, 1, &to_peer), Decision::Uplink(0));
    // Ages out.
    s.learned()
        .tick(1_000 + DEFAULT_AGING.as_millis() as u64 + 1);
    assert_eq!(decide(&s, 1, &to_peer), Decision::FloodUplinks);
    // A port-VLAN partition's frames are looked up on its VLAN.
    ingress(&s, 0, &tagged(MacAddr::BROADCAST, peer, 0x8100, 7, 64));
    set(&s, 2, |c| c.vlan = Some(7));
    let vf1 = mac("02:00:00:00:00:02");
    assert_eq!(decide(&s, 2, &eth(peer, vf1, 60)), Decision::Uplink(0));
    // A spoofed source is not learned.
    ingress(&s, 1, &eth(MacAddr::BROADCAST, vf1, 60));
    assert_eq!(s.learned().count(1), 0);
}

#[test]
fn port_vlan_frames_leave_tagged_and_arrive_only_tagged_with_their_vlan() {
    let (s, l0, _l1) = sw();
    set(&s, 1, |c| {
        c.vlan = Some(10);
        c.qos = Some(3)
    });
    let (vf0, peer) = (mac("02:00:00:00:00:01"), mac(PEER));
    let f = eth(MacAddr::BROADCAST, vf0, 60);
    send(&s, 1, NetHdr::default(), &f);
    let wire = l0.lock().unwrap()[0].1.clone();
    let mut want = f.clone();
    want.splice(12..12, [0x81, 0x00, 0x60, 0x0a]);
    assert_eq!(wire, want, "802.1Q tag, VLAN 10, priority 3");
    let (d, _s) = receiver(&s, 1, 0);
    ingress(&s, 0, &eth(vf0, peer, 60));
    ingress(&s, 0, &tagged(vf0, peer, 0x8100, 11, 64));
    ingress(&s, 0, &tagged(MacAddr::BROADCAST, peer, 0x8100, 11, 64));
    assert!(received(&d).is_empty(), "untagged or another VLAN");
    assert_eq!(
        s.uplinks()[0].counters().base.dropped(DropReason::Vlan),
        2,
        "unicast to a partition not on the frame's VLAN"
    );
    let t10 = tagged(vf0, peer, 0x8100, 10, 64);
    ingress(&s, 0, &t10);
    let got = received(&d);
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].1, eth(vf0, peer, 60), "untagged there");
    // A trunk partition hears the tagged broadcast as it is.
    let (d2, _t) = receiver(&s, 2, 0);
    let b11 = tagged(MacAddr::BROADCAST, peer, 0x8100, 11, 64);
    ingress(&s, 0, &b11);
    assert_eq!(received(&d2)[0].1, b11);
}

#[test]
fn link_state_auto_follows_the_uplinks_and_a_down_uplink_counts_link_down() {
    let (s, l0, _l1) = sw();
    set(&s, 2, |c| c.state = Some(LinkState::Enable));
    assert!(s.link_up(1) && s.link_up(2));
    s.set_carrier(0, false);
    assert!(s.link_up(1), "one uplink is enough");
    let vf0 = mac("02:00:00:00:00:01");
    send(&s, 1, NetHdr::default(), &eth(MacAddr::BROADCAST, vf0, 60));
    assert!(l0.lock().unwrap().is_empty());
    let c = s.uplinks()[0].counters().base;
    assert_eq!(
        c.dropped(DropReason::LinkDown),
        1,
        "on the uplink that is down"
    );
    s.set_carrier(1, false);
    assert!(
        !s.link_up(0) && !s.link_up(1),
        "auto: down with every uplink"
    );
    assert!(s.link_up(2), "enable: always up");
    send(&s, 1, NetHdr::default(), &eth(MacAddr::BROADCAST, vf0, 60));
    assert_eq!(s.partitions()[1].totals().dropped(DropReason::LinkDown), 1);
    s.set_carrier(1, true);
    assert!(s.link_up(1));
    // A disabled partition hears nothing from the wire either.
    set(&s, 1, |c| c.state = Some(LinkState::Disable));
    let (d, _s) = receiver(&s, 1, 0);
    ingress(&s, 1, &eth(vf0, mac(PEER), 60));
    assert!(received(&d).is_empty());
    assert_eq!(s.partitions()[1].totals().dropped(DropReason::LinkDown), 2);
}

/// Ethernet + IPv4 + TCP with `payload`, the TCP checksum field seeded with the pseudo-header
/// sum (as a driver leaves it for offload).
fn tcp4(dst: MacAddr, src: MacAddr, payload: usize) -> Vec<u8> {
    let tcp_len = 20 + payload;
    let mut f = dst.0.to_vec();
    f.extend_from_slice(&src.0);
    f.extend_from_slice(&[0x08, 0x00]);
    let mut ip = vec![
        0x45, 0, 0, 0, 0, 1, 0x40, 0, 64, 6, 0, 0, 10, 0, 0, 1, 10, 0, 0, 2,
    ];
    ip[2..4].copy_from_slice(&((20 + tcp_len) as u16).to_be_bytes());
    let c = csum(0, &ip);
    ip[10..12].copy_from_slice(&c.to_be_bytes());
    f.extend(ip);
    let mut tcp = vec![0u8; 20];
    tcp[0..2].copy_from_slice(&1234u16.to_be_bytes());
    tcp[2..4].copy_from_slice(&80u16.to_be_bytes());
    tcp[12] = 5 << 4;
    tcp[13] = 0x18;
    let seed = !csum(pseudo(&f[14..34], tcp_len), &[]);
    tcp[16..18].copy_from_slice(&seed.to_be_bytes());
    tcp.extend((0..payload).map(|i| (i * 7) as u8));
    f.extend(tcp);
    f
}

fn pseudo(ip: &[u8], l4_len: usize) -> u32 {
    let w = |i: usize| u32::from(u16::from_be_bytes([ip[i], ip[i + 1]]));
    w(12) + w(14) + w(16) + w(18) + 6 + l4_len as u32
}

fn csum(mut sum: u32, data: &[u8]) -> u16 {
    for c in data.chunks(2) {
        sum += u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)]));
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

fn l4_valid(f: &[u8]) -> bool {
    let ip = &f[14..];
    let total = usize::from(u16::from_be_bytes([ip[2], ip[3]]));
    csum(0, &ip[..20]) == 0 && csum(pseudo(ip, total - 20), &ip[20..total]) == 0
}

#[test]
fn offloads_are_completed_in_software_only_for_wires_that_cannot_take_them() {
    let (s, l0, l1) = sw();
    let vf0 = mac("02:00:00:00:00:01");
    let peer = mac(PEER);
    let partial = NetHdr {
        flags: FLAG_NEEDS_CSUM,
        csum_start: 34,
        csum_offset: 16,
        ..NetHdr::default()
    };
    let small = tcp4(peer, vf0, 100);
    send(&s, 1, partial, &small);
    let (h, b) = l0.lock().unwrap()[0].clone();
    assert_eq!((h, &b), (partial, &small), "the tap takes it as it is");
    let (h, b) = l1.lock().unwrap()[0].clone();
    assert_eq!(h, NetHdr::default());
    assert!(l4_valid(&b), "the stream gets it checksummed");
    assert_eq!(b[..34], small[..34]);
    assert_eq!(b[54..], small[54..]);
    // A 4000-byte TCP super-frame: as it is on the tap, cut to the MTU on the stream.
    l0.lock().unwrap().clear();
    l1.lock().unwrap().clear();
    let gso = NetHdr {
        gso_type: GSO_TCPV4,
        gso_size: 1448,
        hdr_len: 54,
        ..partial
    };
    let big = tcp4(peer, vf0, 4000);
    send(&s, 1, gso, &big);
    assert_eq!(l0.lock().unwrap()[0], (gso, big.clone()));
    let segs = l1.lock().unwrap().clone();
    assert_eq!(segs.len(), 3);
    let mut payload = Vec::new();
    for (h, b) in &segs {
        assert_eq!(*h, NetHdr::default());
        assert!(b.len() <= 1514 && l4_valid(b));
        payload.extend_from_slice(&b[54..]);
    }
    assert_eq!(payload, big[54..]);
    assert_eq!(s.uplinks()[1].counters().base.tx_packets, 1 + 3);
    let t = s.partitions()[1].totals();
    assert_eq!((t.tx_packets, t.total_drops()), (2, 0));
}

#[test]
fn mtu_is_enforced_on_the_way_to_and_from_a_wire() {
    let (u0, l0) = uplink(0, RxOffloads::default(), 1000);
    let s = Switch::with_uplinks(vec![part(0), part(1)], vec![u0]).unwrap();
    s.set_carrier(0, true);
    let (vf0, peer) = (mac("02:00:00:00:00:01"), mac(PEER));
    send(&s, 1, NetHdr::default(), &eth(peer, vf0, 1200));
    assert!(l0.lock().unwrap().is_empty());
    assert_eq!(
        s.partitions()[1].totals().dropped(DropReason::Oversize),
        1,
        "on the sender, as for a partition receiver"
    );
    send(&s, 1, NetHdr::default(), &eth(peer, vf0, 1014));
    assert_eq!(l0.lock().unwrap().len(), 1, "MTU + 14 fits");
    let (d, _s) = receiver(&s, 1, 0);
    ingress(&s, 0, &eth(vf0, peer, 1015));
    assert!(received(&d).is_empty());
    assert_eq!(
        s.uplinks()[0].counters().base.dropped(DropReason::Oversize),
        1
    );
    ingress(&s, 0, &eth(vf0, peer, 14)[..10]);
    assert_eq!(
        s.uplinks()[0].counters().wire_dropped(WireDrop::BadFrame),
        1,
        "a runt"
    );
}

#[test]
fn offload_frames_from_a_tap_are_checked_and_completed_per_receiver() {
    let (s, _l0, _l1) = sw();
    let (vf0, vf1, peer) = (
        mac("02:00:00:00:00:01"),
        mac("02:00:00:00:00:02"),
        mac(PEER),
    );
    let offloading =
        1 << VIRTIO_NET_F_MRG_RXBUF | 1 << VIRTIO_NET_F_GUEST_CSUM | 1 << VIRTIO_NET_F_GUEST_TSO4;
    let (d0, _a) = receiver(&s, 1, offloading);
    let (d1, _b) = receiver(&s, 2, 1 << VIRTIO_NET_F_MRG_RXBUF);
    let gso = NetHdr {
        flags: FLAG_NEEDS_CSUM,
        gso_type: GSO_TCPV4,
        gso_size: 1448,
        hdr_len: 54,
        csum_start: 34,
        csum_offset: 16,
        ..NetHdr::default()
    };
    let mut sc = IngressScratch::default();
    let to0 = tcp4(vf0, peer, 3000);
    s.ingress(0, &gso, &to0, &mut sc);
    assert_eq!(
        received(&d0),
        vec![(gso, to0)],
        "byte-exact with its header"
    );
    s.ingress(0, &gso, &tcp4(vf1, peer, 3000), &mut sc);
    let got = received(&d1);
    assert_eq!(got.len(), 3, "segmented for a receiver without TSO");
    assert!(got.iter().all(|(_, b)| l4_valid(b)));
    // The stream-like uplink may not send offloads at all.
    s.ingress(1, &gso, &tcp4(vf0, peer, 3000), &mut sc);
    assert_eq!(
        s.uplinks()[1].counters().wire_dropped(WireDrop::BadFrame),
        1
    );
    assert_eq!(received(&d0).len(), 1);
}

/// A wire that records which queue pair each frame was sent from.
struct PairRecorder(Arc<Mutex<Vec<usize>>>);

impl Wire for PairRecorder {
    fn send(&self, _: &NetHdr, _: &[u8], pair: usize) -> Result<(), WireError> {
        self.0.lock().unwrap().push(pair);
        Ok(())
    }
}

#[test]
fn a_wire_is_told_the_senders_queue_pair_on_every_path() {
    let pairs = Arc::new(Mutex::new(Vec::new()));
    let u = uplink_with(0, TAP, 1500, Box::new(PairRecorder(pairs.clone())));
    let vf0 = mac("02:00:00:00:00:01");
    let sender = Arc::new(Partition::new(
        1,
        Role::Vf(0),
        testutil::config("02:00:00:00:00:01", 4),
    ));
    let s = Switch::with_uplinks(vec![part(0), sender], vec![u]).unwrap();
    s.set_carrier(0, true);
    // Broadcast (a flood), unknown unicast (to every uplink), then known unicast (learned).
    send_on(
        &s,
        1,
        3,
        NetHdr::default(),
        &eth(MacAddr::BROADCAST, vf0, 60),
    );
    send_on(&s, 1, 2, NetHdr::default(), &eth(mac(PEER), vf0, 60));
    ingress(&s, 0, &eth(vf0, mac(PEER), 60));
    assert_eq!(decide(&s, 1, &eth(mac(PEER), vf0, 60)), Decision::Uplink(0));
    send_on(&s, 1, 1, NetHdr::default(), &eth(mac(PEER), vf0, 60));
    assert_eq!(*pairs.lock().unwrap(), [3, 2, 1]);
}
