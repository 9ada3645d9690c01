//! Uplinks of the real daemon: a `stream:` peer speaking QEMU's `-netdev stream` framing (a
//! small client here), exchanging frames with partitions driven by the in-process driver.

mod common;

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::{Duration, Instant};

use common::*;
use serde_json::Value;

const PEER: [u8; 6] = [0x52, 0x54, 0x00, 0x12, 0x34, 0x56];
const BCAST: [u8; 6] = [0xff; 6];

/// The far end of a `-netdev stream` cable: 4-byte big-endian length, then the frame.
struct StreamPeer {
    s: UnixStream,
}

impl StreamPeer {
    fn connect(path: &Path) -> StreamPeer {
        let s = UnixStream::connect(path).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        StreamPeer { s }
    }

    fn send(&mut self, frame: &[u8]) {
        let mut b = (frame.len() as u32).to_be_bytes().to_vec();
        b.extend_from_slice(frame);
        self.s.write_all(&b).unwrap();
    }

    fn recv(&mut self) -> Vec<u8> {
        let mut len = [0u8; 4];
        self.s.read_exact(&mut len).unwrap();
        let mut f = vec![0u8; u32::from_be_bytes(len) as usize];
        self.s.read_exact(&mut f).unwrap();
        f
    }

    /// True when the daemon closed the connection (within 5 s).
    fn closed(&mut self) -> bool {
        let mut b = [0u8; 64];
        let t = Instant::now();
        loop {
            match self.s.read(&mut b) {
                Ok(0) => return true,
                Ok(_) => {}
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return true,
                Err(_) if t.elapsed() > Duration::from_secs(5) => return false,
                Err(_) => {}
            }
        }
    }
}

fn uplink(d: &Daemon, i: usize) -> Value {
    d.show()["uplinks"][i].clone()
}

fn wait_link(d: &Daemon, i: usize, link: &str) {
    wait_for(
        Duration::from_secs(5),
        || uplink(d, i)["link"] == link,
        &format!("uplink{i} link {link}"),
    );
}

fn stream_daemon(extra: &[&str]) -> (Daemon, std::path::PathBuf) {
    let mut args = vec!["--vfs", "2", "--uplink", "stream:wire0.sock"];
    args.extend_from_slice(extra);
    let d = Daemon::start(&args);
    let path = d.dir.join("wire0.sock");
    (d, path)
}

#[test]
fn a_stream_peer_and_a_partition_exchange_frames() {
    let (d, path) = stream_daemon(&[]);
    let mut vf0 = Driver::start(&d.sock("vf0"), plain(), 1);
    let mut vf1 = Driver::start(&d.sock("vf1"), plain(), 1);
    d.wait_state("vf0", "started");
    d.wait_state("vf1", "started");
    vf0.post_rx(0, 16, 2048);
    vf1.post_rx(0, 16, 2048);
    let u = uplink(&d, 0);
    assert_eq!(
        (&u["kind"], &u["link"], &u["spec"]),
        (
            &Value::from("stream"),
            &Value::from("down"),
            &Value::from(format!("stream:{},mtu=1500", path.display()))
        )
    );
    assert_eq!(
        d.partition("vf0")["link"],
        "down",
        "state auto follows the uplink: no peer yet"
    );
    let mut peer = StreamPeer::connect(&path);
    wait_link(&d, 0, "up");
    assert_eq!(d.partition("vf0")["link"], "up");

    // The peer's broadcast (an ARP request, say) reaches every partition.
    let who_has = test_frame(BCAST, PEER, 1, 46);
    peer.send(&who_has);
    assert_eq!(vf0.recv_n(0, 1)[0].1, who_has);
    assert_eq!(vf1.recv_n(0, 1)[0].1, who_has);
    // The answer goes to the peer only: its MAC was learned behind the uplink.
    let reply = test_frame(PEER, d.mac("vf0"), 2, 46);
    vf0.send(0, &reply);
    assert_eq!(peer.recv(), reply);
    // Unicast from the peer reaches its partition alone, byte-exact.
    let ping = test_frame(d.mac("vf0"), PEER, 3, 1486);
    peer.send(&ping);
    assert_eq!(vf0.recv_n(0, 1)[0].1, ping);
    let pong = test_frame(PEER, d.mac("vf0"), 4, 1486);
    vf0.send(0, &pong);
    assert_eq!(peer.recv(), pong);
    vf0.wait_tx_done(0, 2);
    assert!(vf1.recv(0).is_empty());

    let u = uplink(&d, 0);
    let c = &u["counters"];
    assert_eq!(
        (&c["rx_packets"], &c["rx_broadcast"]),
        (&2.into(), &1.into())
    );
    assert_eq!(c["tx_packets"], 2);
    assert_eq!(
        c["tx_bytes"],
        (reply.len() + pong.len()) as u64,
        "frame bytes, without the length prefix"
    );
    assert_eq!((&u["connects"], &u["learned_macs"]), (&1.into(), &1.into()));
    let drops: u64 = c
        .as_object()
        .unwrap()
        .iter()
        .filter(|(k, _)| k.starts_with("drop_"))
        .map(|(_, v)| v.as_u64().unwrap())
        .sum();
    assert_eq!(drops, 0);
    assert_eq!(d.counter("vf0", "tx_packets"), 2);
    // ctl's text shows the uplink after the partitions.
    let text = d.ctl(&["show", "-s"]);
    assert!(
        text.contains("uplink0  stream:") && text.contains("link up, peers 1"),
        "{text}"
    );
}

#[test]
fn checksum_and_tso_frames_reach_the_stream_complete() {
    let (d, path) = stream_daemon(&[]);
    let mut vf0 = Driver::start(&d.sock("vf0"), full_offloads(), 1);
    d.wait_state("vf0", "started");
    let mut peer = StreamPeer::connect(&path);
    wait_link(&d, 0, "up");
    // A partial checksum: completed.
    let f = tcp4(PEER, d.mac("vf0"), 7, 0x18, &[0x5a; 300]);
    vf0.send_with_hdr(0, &hdr(1, 0, 0, 0, 34, 16), &f);
    let got = peer.recv();
    assert!(ipv4_l4_valid(&got));
    assert_eq!((&got[..50], &got[52..]), (&f[..50], &f[52..]));
    // A 4000-byte TCP super-frame: cut into MTU-sized, checksummed segments.
    let payload: Vec<u8> = (0..4000u32).map(|i| (i * 7) as u8).collect();
    let big = tcp4(PEER, d.mac("vf0"), 1000, 0x18, &payload);
    vf0.send_with_hdr(0, &hdr(1, 1, 54, 1448, 34, 16), &big);
    let mut data = Vec::new();
    let mut seq = 1000u32;
    for i in 0..3 {
        let s = peer.recv();
        assert!(s.len() <= 1514, "segment {i}: {} bytes", s.len());
        assert!(ipv4_l4_valid(&s), "segment {i} checksums");
        assert_eq!(u32::from_be_bytes([s[38], s[39], s[40], s[41]]), seq);
        seq += (s.len() - 54) as u32;
        data.extend_from_slice(&s[54..]);
    }
    assert_eq!(data, payload);
    vf0.wait_tx_done(0, 2);
    assert_eq!(uplink(&d, 0)["counters"]["tx_packets"], 4);
    assert_eq!(d.counter("vf0", "tx_packets"), 2);
}

#[test]
fn a_bad_peer_is_dropped_and_the_next_is_accepted() {
    let (d, path) = stream_daemon(&[]);
    let mut vf0 = Driver::start(&d.sock("vf0"), plain(), 1);
    d.wait_state("vf0", "started");
    vf0.post_rx(0, 16, 2048);
    let mut first = StreamPeer::connect(&path);
    wait_link(&d, 0, "up");
    // One peer at a time: another is closed at once.
    let mut second = StreamPeer::connect(&path);
    assert!(second.closed());
    assert_eq!(uplink(&d, 0)["refused"], 1);
    // A runt length ends the connection.
    first.s.write_all(&[0, 0, 0, 5, 1, 2, 3, 4, 5]).unwrap();
    assert!(first.closed());
    wait_link(&d, 0, "down");
    // And so does an oversized one, from the next peer.
    let mut third = StreamPeer::connect(&path);
    wait_link(&d, 0, "up");
    third.s.write_all(&1519u32.to_be_bytes()).unwrap();
    assert!(third.closed());
    wait_link(&d, 0, "down");
    let u = uplink(&d, 0);
    assert_eq!(u["counters"]["drop_bad_frame"], 2);
    assert_eq!((&u["connects"], &u["disconnects"]), (&2.into(), &2.into()));
    // The next peer works as the first did.
    let mut fourth = StreamPeer::connect(&path);
    wait_link(&d, 0, "up");
    let f = test_frame(d.mac("vf0"), PEER, 9, 100);
    fourth.send(&f);
    assert_eq!(vf0.recv_n(0, 1)[0].1, f);
    let back = test_frame(PEER, d.mac("vf0"), 10, 100);
    vf0.send(0, &back);
    assert_eq!(fourth.recv(), back);
    // A peer that leaves takes the link with it, and the port stays for the next.
    drop(fourth);
    wait_link(&d, 0, "down");
    let mut fifth = StreamPeer::connect(&path);
    wait_link(&d, 0, "up");
    fifth.send(&f);
    assert_eq!(vf0.recv_n(0, 1)[0].1, f);
    assert!(d.log().contains("bad frame length 5"), "logged");
}

#[test]
fn bad_uplink_specs_and_paths_fail_start_up() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_vhost-user-sriov-net"))
        .args(["--socket-dir", "/tmp", "--uplink", "ether:x"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    // A live socket at the stream path is refused, and nothing is left bound.
    let dir = std::env::temp_dir().join(format!("sriov-net-uplink-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let live = dir.join("wire.sock");
    let _l = std::os::unix::net::UnixListener::bind(&live).unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_vhost-user-sriov-net"))
        .arg("--socket-dir")
        .arg(&dir)
        .args(["--vfs", "1", "--uplink", "stream:wire.sock"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("in use"));
    assert!(!dir.join("pf.sock").exists(), "nothing half-started");
    let _ = std::fs::remove_dir_all(&dir);
}

// ---------------------------------------------------------------------------------------------
// tap: a network namespace created here holds the tap (the daemon runs in it, so the tap is
// created there), with an address, and talks to a partition driven by the test driver.

use common::netns::{ping, root_or_skip, NetNs, PacketSock, PktHdr, Responder};

const NS_IP: [u8; 4] = [10, 77, 0, 1];
const VF_IP: [u8; 4] = [10, 77, 0, 2];
const TAP: &str = "sriov0";

/// A namespace with the daemon in it (VF0 and VF1), its tap up at 10.77.0.1/24; VF0 started
/// with `features` and RX buffers posted.
fn tap_setup(features: u64) -> (NetNs, Daemon, Driver) {
    tap_setup_with(features, &[])
}

/// [`tap_setup`] with more daemon arguments (other uplinks after the tap).
fn tap_setup_with(features: u64, extra: &[&str]) -> (NetNs, Daemon, Driver) {
    let ns = NetNs::new("tap");
    let tap = format!("tap:{TAP}");
    let mut args = vec!["--vfs", "2", "--uplink", &tap];
    args.extend_from_slice(extra);
    let d = Daemon::start_with(
        ns.command(env!("CARGO_BIN_EXE_vhost-user-sriov-net")),
        &args,
    );
    configure_tap(&ns);
    let mut vf0 = Driver::start(&d.sock("vf0"), features, 1);
    d.wait_state("vf0", "started");
    vf0.post_rx(0, 128, 4096);
    assert_eq!(uplink(&d, 0)["link"], "up");
    (ns, d, vf0)
}

/// What the host does with a new tap: its address, and up.
fn configure_tap(ns: &NetNs) {
    ns.ip(&["addr", "add", "10.77.0.1/24", "dev", TAP]);
    ns.ip(&["link", "set", TAP, "up"]);
}

/// Receives on VF0, answering ARP and echo requests as VF_IP, until `done` says a frame is what
/// is waited for (which it returns), or `stop` is true. Keeps RX buffers posted.
fn serve(
    vf0: &mut Driver,
    me: &Responder,
    mut done: impl FnMut(&[u8]) -> bool,
    stop: impl Fn() -> bool,
) -> Option<Vec<u8>> {
    let t = Instant::now();
    while t.elapsed() < Duration::from_secs(10) {
        let got = vf0.recv(0);
        if !got.is_empty() {
            vf0.post_rx(0, got.len(), 4096);
        }
        for (_, f) in got {
            if let Some(r) = me.answer(&f) {
                vf0.send(0, &r);
            }
            if done(&f) {
                return Some(f);
            }
        }
        if stop() {
            return None;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    panic!("timed out serving VF0");
}

#[test]
fn a_namespace_behind_the_tap_and_a_partition_ping_each_other() {
    if !root_or_skip("a_namespace_behind_the_tap_and_a_partition_ping_each_other") {
        return;
    }
    let (ns, d, mut vf0) = tap_setup(plain());
    // One queue pair: a single-queue tap, as before.
    assert_eq!(uplink(&d, 0)["queues"], 1);
    let info = ns.ip(&["-d", "link", "show", TAP]);
    assert!(
        info.contains("vnet_hdr on") && !info.contains("multi_queue"),
        "{info}"
    );
    pings_cross_the_tap(&ns, &d, &mut vf0);
    let c = &uplink(&d, 0)["counters"];
    assert!(c["rx_packets"].as_u64().unwrap() >= 5, "{c}");
    assert!(c["tx_packets"].as_u64().unwrap() >= 5, "{c}");
    assert_eq!(c["drop_bad_frame"], 0);
}

/// The namespace pings VF0 three times (ARP first), then VF0 pings the namespace's tap address.
fn pings_cross_the_tap(ns: &NetNs, d: &Daemon, vf0: &mut Driver) {
    let me = Responder {
        mac: d.mac("vf0"),
        ip: VF_IP,
    };
    // The namespace pings the partition (ARP first, from its stack).
    let pinger = ns.spawn(|| {
        (1..=3)
            .map(|seq| ping(VF_IP, 0x77, seq, b"sriov-ping"))
            .collect::<Vec<_>>()
    });
    serve(vf0, &me, |_| false, || pinger.is_finished());
    let replies = pinger.join().unwrap();
    assert!(
        replies
            .iter()
            .all(|r| r.as_deref() == Some(&b"sriov-ping"[..])),
        "{replies:?}"
    );
    // And the partition pings the namespace.
    vf0.send(0, &me.arp_request(NS_IP));
    let arp = serve(
        vf0,
        &me,
        |f| f[12..14] == [8, 6] && f[20..22] == [0, 2] && f[28..32] == NS_IP,
        || false,
    )
    .unwrap();
    let tap_mac: [u8; 6] = arp[22..28].try_into().unwrap();
    assert_eq!(tap_mac, ns.mac(TAP));
    vf0.send(0, &me.echo_request(tap_mac, NS_IP, 9, 1, b"from-vf0"));
    let reply = serve(
        vf0,
        &me,
        |f| f[12..14] == [8, 0] && f[23] == 1 && f[26..30] == NS_IP && f[34] == 0,
        || false,
    )
    .unwrap();
    assert_eq!(&reply[42..], b"from-vf0");
}

#[test]
fn two_queue_pairs_make_a_two_queue_tap_used_both_ways() {
    if !root_or_skip("two_queue_pairs_make_a_two_queue_tap_used_both_ways") {
        return;
    }
    let ns = NetNs::new("mq");
    let d = Daemon::start_with(
        ns.command(env!("CARGO_BIN_EXE_vhost-user-sriov-net")),
        &[
            "--vfs",
            "1",
            "--queue-pairs",
            "2",
            "--uplink",
            &format!("tap:{TAP}"),
        ],
    );
    configure_tap(&ns);
    let info = ns.ip(&["-d", "link", "show", TAP]);
    assert!(info.contains("multi_queue numqueues 2"), "{info}");
    let out = ns
        .command("ls")
        .arg(format!("/sys/class/net/{TAP}/queues"))
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout)
            .split_whitespace()
            .collect::<Vec<_>>(),
        ["rx-0", "rx-1", "tx-0", "tx-1"]
    );
    assert_eq!(uplink(&d, 0)["queues"], 2);
    assert!(d.ctl(&["show"]).contains("queues 2, opened 1"));
    let mut vf0 = Driver::start(&d.sock("vf0"), plain(), 2);
    d.wait_state("vf0", "started");
    vf0.post_rx(0, 128, 4096);
    let vf_mac = d.mac("vf0");
    let tap_mac = ns.mac(TAP);

    // Partition to namespace: each queue pair's frames enter the tap by a queue of their own.
    // Two packet sockets split what arrives by the queue it came in on.
    let socks = ns.run(|| {
        let s = [PacketSock::open(TAP), PacketSock::open(TAP)];
        for p in &s {
            p.fanout_by_queue(0x5171);
        }
        s
    });
    for pair in 0..2u8 {
        for k in 0..4u8 {
            vf0.send(
                usize::from(pair),
                &test_frame(tap_mac, vf_mac, pair * 16 + k, 100),
            );
        }
        vf0.wait_tx_done(usize::from(pair), 4);
    }
    let ours = |f: &[u8]| f[6..12] == vf_mac && f[12..14] == [0x88, 0xb5];
    let seen: Vec<Vec<u8>> = socks
        .iter()
        .map(|s| {
            s.drain_where(ours, Duration::from_millis(500))
                .iter()
                .map(|f| f[14] / 16) // the sending pair
                .collect()
        })
        .collect();
    assert_eq!(seen[0].len() + seen[1].len(), 8, "{seen:?}");
    assert!(
        (seen[0] == [0; 4] && seen[1] == [1; 4]) || (seen[0] == [1; 4] && seen[1] == [0; 4]),
        "each pair on a tap queue of its own: {seen:?}"
    );

    // Namespace to partition: the host's stack spreads flows over the queues by their hash;
    // every flow arrives, so every queue is read.
    ns.ip(&[
        "neigh",
        "add",
        "10.77.0.2",
        "lladdr",
        &fmt_mac(vf_mac),
        "dev",
        TAP,
    ]);
    const FLOWS: u8 = 32;
    ns.run(|| {
        for i in 0..FLOWS {
            let s = UdpSocket::bind("10.77.0.1:0").unwrap();
            s.send_to(&[b'q', i], "10.77.0.2:9999").unwrap();
        }
    });
    let mut got = std::collections::BTreeSet::new();
    let t = Instant::now();
    while got.len() < usize::from(FLOWS) {
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "flows received: {got:?}"
        );
        let frames = vf0.recv(0);
        if !frames.is_empty() {
            vf0.post_rx(0, frames.len(), 4096);
        }
        for (_, f) in frames {
            if f.len() >= 44 && f[12..14] == [8, 0] && f[23] == 17 && f[42] == b'q' {
                got.insert(f[43]);
            }
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    assert!(uplink(&d, 0)["counters"]["rx_packets"].as_u64().unwrap() >= u64::from(FLOWS));

    // Created again after a loss, it has both queues again.
    ns.ip(&["link", "del", TAP]);
    wait_for(
        Duration::from_secs(10),
        || uplink(&d, 0)["connects"] == 2 && uplink(&d, 0)["link"] == "up",
        "the tap created again",
    );
    let info = ns.ip(&["-d", "link", "show", TAP]);
    assert!(info.contains("multi_queue numqueues 2"), "{info}");
    assert_eq!(uplink(&d, 0)["queues"], 2);
}

fn fmt_mac(m: [u8; 6]) -> String {
    m.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

fn is_tcp(f: &[u8]) -> bool {
    f.len() > 54 && f[12..14] == [8, 0] && f[23] == 6
}

#[test]
fn checksum_and_tso_frames_cross_the_tap_byte_exact() {
    if !root_or_skip("checksum_and_tso_frames_cross_the_tap_byte_exact") {
        return;
    }
    let (ns, d, mut vf0) = tap_setup(full_offloads());
    let mut vf1 = Driver::start(&d.sock("vf1"), plain(), 1);
    d.wait_state("vf1", "started");
    vf1.post_rx(0, 16, 4096);
    let ps = ns.run(|| PacketSock::open(TAP));
    let tap_mac = ns.mac(TAP);
    let payload: Vec<u8> = (0..4000u32).map(|i| (i * 7) as u8).collect();

    // Partition to namespace: the super-frame and its header reach the tap's stack unchanged.
    let big = tcp4(tap_mac, d.mac("vf0"), 1000, 0x18, &payload);
    vf0.send_with_hdr(0, &hdr(1, 1, 54, 1448, 34, 16), &big);
    let (h, f) = ps.recv_where(is_tcp);
    assert_eq!(f, big);
    assert_eq!(
        h,
        PktHdr {
            flags: 1,
            gso_type: 1,
            hdr_len: h.hdr_len,
            gso_size: 1448,
            csum_start: 34,
            csum_offset: 16
        }
    );
    let small = tcp4(tap_mac, d.mac("vf0"), 5000, 0x18, &[0x33; 200]);
    vf0.send_with_hdr(0, &hdr(1, 0, 0, 0, 34, 16), &small);
    let (h, f) = ps.recv_where(is_tcp);
    assert_eq!(f, small, "a partial checksum left for the stack");
    assert_eq!(
        (h.flags, h.gso_type, h.csum_start, h.csum_offset),
        (1, 0, 34, 16)
    );

    // Namespace to partition: as it is for a partition with the offloads...
    let gso = PktHdr {
        flags: 1,
        gso_type: 1,
        hdr_len: 54,
        gso_size: 1448,
        csum_start: 34,
        csum_offset: 16,
    };
    let to0 = tcp4(d.mac("vf0"), tap_mac, 7, 0x18, &payload);
    ps.send(gso, &to0);
    let got = serve(
        &mut vf0,
        &Responder {
            mac: d.mac("vf0"),
            ip: VF_IP,
        },
        is_tcp,
        || false,
    )
    .unwrap();
    assert_eq!(got, to0);
    // ... and cut into checksummed segments for one without.
    let to1 = tcp4(d.mac("vf1"), tap_mac, 7, 0x18, &payload);
    ps.send(gso, &to1);
    let mut segs: Vec<Vec<u8>> = Vec::new();
    let t = Instant::now();
    while segs.len() < 3 {
        segs.extend(
            vf1.recv(0)
                .into_iter()
                .map(|(_, f)| f)
                .filter(|f| is_tcp(f)),
        );
        assert!(t.elapsed() < Duration::from_secs(5), "vf1 segments");
        std::thread::sleep(Duration::from_millis(1));
    }
    let mut data = Vec::new();
    for s in &segs {
        assert!(ipv4_l4_valid(s) && s.len() <= 1514);
        data.extend_from_slice(&s[54..]);
    }
    assert_eq!(data, payload);
    assert_eq!(uplink(&d, 0)["counters"]["drop_bad_frame"], 0);
}

/// How many times `what` is in the daemon's log.
fn log_count(d: &Daemon, what: &str) -> usize {
    d.log().matches(what).count()
}

#[test]
fn a_deleted_tap_is_created_again_and_carries_frames_other_uplinks_untouched() {
    if !root_or_skip("a_deleted_tap_is_created_again_and_carries_frames_other_uplinks_untouched") {
        return;
    }
    let (ns, mut d, mut vf0) = tap_setup_with(plain(), &["--uplink", "stream:wire0.sock"]);
    let mut peer = StreamPeer::connect(&d.dir.join("wire0.sock"));
    wait_link(&d, 1, "up");
    assert_eq!(
        (&uplink(&d, 0)["connects"], &uplink(&d, 0)["disconnects"]),
        (&1.into(), &0.into())
    );
    assert!(
        d.log().contains(&format!("tap {TAP} created")),
        "{}",
        d.log()
    );

    ns.ip(&["link", "del", TAP]);
    // The loss is counted and logged once; the link went down (it may be back already).
    wait_for(
        Duration::from_secs(5),
        || uplink(&d, 0)["disconnects"] == 1,
        "the loss counted",
    );
    // The other uplink and the partitions never noticed: frames cross the stream meanwhile.
    assert_eq!(uplink(&d, 1)["link"], "up");
    let f = test_frame(d.mac("vf0"), PEER, 1, 100);
    peer.send(&f);
    let got = serve(
        &mut vf0,
        &Responder {
            mac: d.mac("vf0"),
            ip: VF_IP,
        },
        |g| g == f.as_slice(),
        || false,
    );
    assert_eq!(got.as_deref(), Some(f.as_slice()));
    let back = test_frame(PEER, d.mac("vf0"), 2, 100);
    vf0.send(0, &back);
    assert_eq!(peer.recv(), back);

    // The tap comes back, by its name, a tap with the vnet header and the same offloads.
    wait_for(
        Duration::from_secs(10),
        || uplink(&d, 0)["link"] == "up" && uplink(&d, 0)["connects"] == 2,
        "the tap created again",
    );
    let info = ns.ip(&["-d", "link", "show", TAP]);
    assert!(
        info.contains("tun type tap") && info.contains("vnet_hdr"),
        "{info}"
    );
    let log = d.log();
    assert_eq!(log_count(&d, "is gone"), 1, "{log}");
    assert_eq!(log_count(&d, "uplink0: link down"), 1, "{log}");
    assert!(log.contains(&format!("tap {TAP} created again")), "{log}");
    let text = d.ctl(&["show"]);
    assert!(
        text.contains("link up, queues 1, opened 2 (lost 1)"),
        "{text}"
    );

    // The host sets it up again, as any new interface; pings cross as before.
    configure_tap(&ns);
    pings_cross_the_tap(&ns, &d, &mut vf0);
    assert!(d.alive());
    assert_eq!(d.state("vf0"), "started");
    assert_eq!(uplink(&d, 1)["connects"], 1, "the stream peer stayed");
}

#[test]
fn a_tap_the_daemon_did_not_create_is_waited_for_not_made() {
    if !root_or_skip("a_tap_the_daemon_did_not_create_is_waited_for_not_made") {
        return;
    }
    let ns = NetNs::new("tapx");
    // A persistent tap, the host's.
    ns.ip(&["tuntap", "add", "dev", TAP, "mode", "tap"]);
    let d = Daemon::start_with(
        ns.command(env!("CARGO_BIN_EXE_vhost-user-sriov-net")),
        &["--vfs", "1", "--uplink", &format!("tap:{TAP}")],
    );
    assert_eq!(uplink(&d, 0)["link"], "up");
    assert!(
        d.log().contains(&format!("tap {TAP} opened")),
        "{}",
        d.log()
    );
    ns.ip(&["link", "del", TAP]);
    wait_link(&d, 0, "down");
    assert_eq!(uplink(&d, 0)["disconnects"], 1);
    // Several attempts later, still nothing of that name: the daemon does not make one.
    std::thread::sleep(Duration::from_millis(1500));
    let shown = std::process::Command::new("ip")
        .args(["-n", &ns.name, "link", "show", TAP])
        .output()
        .unwrap();
    assert!(
        !shown.status.success(),
        "the daemon made a tap in the host's place"
    );
    assert_eq!(uplink(&d, 0)["link"], "down");
    // The host makes it again: the port re-attaches, and frames cross.
    ns.ip(&["tuntap", "add", "dev", TAP, "mode", "tap"]);
    wait_for(
        Duration::from_secs(10),
        || uplink(&d, 0)["link"] == "up",
        "the tap re-opened",
    );
    assert_eq!(uplink(&d, 0)["connects"], 2);
    assert!(
        d.log().contains(&format!("tap {TAP} re-opened")),
        "{}",
        d.log()
    );
    let mut vf0 = Driver::start(&d.sock("vf0"), plain(), 1);
    d.wait_state("vf0", "started");
    vf0.post_rx(0, 128, 4096);
    configure_tap(&ns);
    pings_cross_the_tap(&ns, &d, &mut vf0);
}

// ---------------------------------------------------------------------------------------------
// VXLAN: two daemons on 127.0.0.0/8 as one segment; raw UDP sockets as remote VTEPs; Linux's
// vxlan device in a namespace as the peer.

use std::net::UdpSocket;

/// A UDP port for this test binary's VXLAN sockets (`k` apart per test).
fn vx_port(k: u16) -> u16 {
    20000 + (std::process::id() % 4000) as u16 * 8 + k
}

const VXH42: [u8; 8] = [0x08, 0, 0, 0, 0, 0, 42, 0];

#[test]
fn two_daemons_over_vxlan_form_one_segment() {
    let p = vx_port(0);
    let a = Daemon::start(&[
        "--vfs",
        "2",
        "--mtu",
        "1450",
        "--uplink",
        &format!("vxlan:42,local=127.0.0.1:{p},remote=127.0.0.2:{p}"),
    ]);
    let b = Daemon::start(&[
        "--vfs",
        "2",
        "--mtu",
        "1450",
        "--base-mac",
        "02:bb:00:00:00:00",
        "--uplink",
        &format!("vxlan:42,local=127.0.0.2:{p},remote=127.0.0.1:{p}"),
    ]);
    let mut a0 = Driver::start(&a.sock("vf0"), plain(), 1);
    let mut b0 = Driver::start(&b.sock("vf0"), plain(), 1);
    let mut b1 = Driver::start(&b.sock("vf1"), plain(), 1);
    a.wait_state("vf0", "started");
    b.wait_state("vf0", "started");
    b.wait_state("vf1", "started");
    for v in [&mut a0, &mut b0, &mut b1] {
        v.post_rx(0, 16, 2048);
    }
    assert_eq!(uplink(&a, 0)["link"], "up");
    // A broadcast from A's VF0 reaches every partition of B.
    let who = test_frame(BCAST, a.mac("vf0"), 1, 46);
    a0.send(0, &who);
    assert_eq!(b0.recv_n(0, 1)[0].1, who);
    assert_eq!(b1.recv_n(0, 1)[0].1, who);
    // The answer finds its way back: B learned A's VF0 behind its uplink.
    let reply = test_frame(a.mac("vf0"), b.mac("vf0"), 2, 1436);
    b0.send(0, &reply);
    assert_eq!(a0.recv_n(0, 1)[0].1, reply);
    let to_b1 = test_frame(b.mac("vf1"), a.mac("vf0"), 3, 200);
    a0.send(0, &to_b1);
    assert_eq!(b1.recv_n(0, 1)[0].1, to_b1);
    a0.wait_tx_done(0, 2);
    assert!(b0.recv(0).is_empty(), "unicast reached its partition only");
    let ua = uplink(&a, 0);
    assert_eq!(
        (&ua["counters"]["tx_packets"], &ua["counters"]["rx_packets"]),
        (&2.into(), &1.into())
    );
    assert_eq!(ua["learned_macs"], 1);
    let ub = uplink(&b, 0);
    assert_eq!(ub["counters"]["rx_broadcast"], 1);
    assert_eq!(ub["kind"], "vxlan");
}

fn vtep(addr: &str) -> UdpSocket {
    let s = UdpSocket::bind(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    s
}

fn vx_recv(s: &UdpSocket) -> Option<Vec<u8>> {
    let mut b = vec![0u8; 65536];
    s.recv(&mut b).ok().map(|n| b[..n].to_vec())
}

#[test]
fn bum_is_replicated_to_every_remote_and_known_unicast_goes_to_one() {
    let p = vx_port(1);
    let a = Daemon::start(&[
        "--vfs",
        "1",
        "--mtu",
        "1450",
        "--uplink",
        &format!("vxlan:42,local=127.0.0.1:{p},remote=127.0.0.3:{p},remote=127.0.0.4:{p}"),
    ]);
    let (c, e) = (
        vtep(&format!("127.0.0.3:{p}")),
        vtep(&format!("127.0.0.4:{p}")),
    );
    let mut vf0 = Driver::start(&a.sock("vf0"), plain(), 1);
    a.wait_state("vf0", "started");
    vf0.post_rx(0, 16, 2048);
    let b = test_frame(BCAST, a.mac("vf0"), 1, 46);
    vf0.send(0, &b);
    let mut want = VXH42.to_vec();
    want.extend_from_slice(&b);
    assert_eq!(
        vx_recv(&c).unwrap(),
        want,
        "RFC 7348 header, then the frame"
    );
    assert_eq!(vx_recv(&e).unwrap(), want);
    // A station behind C answers; it is learned behind C.
    let mut d = VXH42.to_vec();
    d.extend_from_slice(&test_frame(a.mac("vf0"), PEER, 2, 46));
    c.send_to(&d, format!("127.0.0.1:{p}")).unwrap();
    assert_eq!(vf0.recv_n(0, 1)[0].1, d[8..]);
    let u = test_frame(PEER, a.mac("vf0"), 3, 46);
    vf0.send(0, &u);
    assert_eq!(vx_recv(&c).unwrap()[8..], u);
    assert!(vx_recv(&e).is_none(), "known unicast goes to its VTEP only");
    // Malformed datagrams: no I flag, another VNI, too short. Counted, nothing delivered.
    let bad_flags = [&[0u8, 0, 0, 0, 0, 0, 42, 0][..], &d[8..]].concat();
    let bad_vni = [&[8u8, 0, 0, 0, 0, 0, 43, 0][..], &d[8..]].concat();
    for bad in [&bad_flags[..], &bad_vni[..], &d[..12]] {
        e.send_to(bad, format!("127.0.0.1:{p}")).unwrap();
    }
    wait_for(
        Duration::from_secs(5),
        || uplink(&a, 0)["counters"]["drop_bad_frame"] == 3,
        "three bad datagrams counted",
    );
    e.send_to(&d, format!("127.0.0.1:{p}")).unwrap();
    assert_eq!(vf0.recv_n(0, 1)[0].1, d[8..], "the port still works");
    assert!(a.log().contains("without the I flag"), "logged once");
}

#[test]
fn linux_vxlan_in_a_namespace_is_a_peer() {
    if !root_or_skip("linux_vxlan_in_a_namespace_is_a_peer") {
        return;
    }
    // The daemon's namespace and the Linux VTEP's, cabled by a veth pair (the underlay).
    let (n1, n2) = (NetNs::new("vx1"), NetNs::new("vx2"));
    n1.ip(&[
        "link", "add", "u1", "type", "veth", "peer", "name", "u2", "netns", &n2.name,
    ]);
    n1.ip(&["addr", "add", "10.88.0.1/24", "dev", "u1"]);
    n2.ip(&["addr", "add", "10.88.0.2/24", "dev", "u2"]);
    n1.ip(&["link", "set", "u1", "up"]);
    n2.ip(&["link", "set", "u2", "up"]);
    let d = Daemon::start_with(
        n1.command(env!("CARGO_BIN_EXE_vhost-user-sriov-net")),
        &[
            "--vfs",
            "1",
            "--mtu",
            "1450",
            "--uplink",
            "vxlan:42,local=10.88.0.1,remote=10.88.0.2",
        ],
    );
    n2.ip(&[
        "link",
        "add",
        "vx42",
        "type",
        "vxlan",
        "id",
        "42",
        "dstport",
        "4789",
        "local",
        "10.88.0.2",
        "nolearning",
        "dev",
        "u2",
    ]);
    let out = n2
        .command("bridge")
        .args([
            "fdb",
            "append",
            "00:00:00:00:00:00",
            "dev",
            "vx42",
            "dst",
            "10.88.0.1",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    n2.ip(&["addr", "add", "10.99.0.1/24", "dev", "vx42"]);
    n2.ip(&["link", "set", "vx42", "up"]);
    let mut vf0 = Driver::start(&d.sock("vf0"), plain(), 1);
    d.wait_state("vf0", "started");
    vf0.post_rx(0, 128, 4096);
    let me = Responder {
        mac: d.mac("vf0"),
        ip: [10, 99, 0, 2],
    };
    let pinger = n2.spawn(|| {
        (1..=3)
            .map(|seq| ping([10, 99, 0, 2], 0x42, seq, b"over-vxlan"))
            .collect::<Vec<_>>()
    });
    serve(&mut vf0, &me, |_| false, || pinger.is_finished());
    let replies = pinger.join().unwrap();
    assert!(
        replies
            .iter()
            .all(|r| r.as_deref() == Some(&b"over-vxlan"[..])),
        "{replies:?}"
    );
    vf0.send(0, &me.arp_request([10, 99, 0, 1]));
    let arp = serve(
        &mut vf0,
        &me,
        |f| f[12..14] == [8, 6] && f[20..22] == [0, 2] && f[28..32] == [10, 99, 0, 1],
        || false,
    )
    .unwrap();
    let mac: [u8; 6] = arp[22..28].try_into().unwrap();
    assert_eq!(mac, n2.mac("vx42"));
    vf0.send(0, &me.echo_request(mac, [10, 99, 0, 1], 5, 1, b"to-linux"));
    let reply = serve(
        &mut vf0,
        &me,
        |f| f[12..14] == [8, 0] && f[23] == 1 && f[26..30] == [10, 99, 0, 1] && f[34] == 0,
        || false,
    )
    .unwrap();
    assert_eq!(&reply[42..], b"to-linux");
    let c = &uplink(&d, 0)["counters"];
    assert_eq!(c["drop_bad_frame"], 0, "{c}");
}
