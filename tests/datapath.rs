//! The real daemon, driven over its vhost-user sockets by in-process virtio-net drivers:
//! switching, anti-spoof, mergeable RX, starvation, software offloads and counters.

mod common;

use common::*;
use virtio_bindings::bindings::virtio_net::*;

/// PF, VF0 and VF1 started with plain features; returns the daemon and drivers.
fn three() -> (Daemon, Driver, Driver, Driver) {
    let d = Daemon::start(&["--vfs", "3"]);
    let pf = Driver::start(&d.sock("pf"), plain(), 1);
    let vf0 = Driver::start(&d.sock("vf0"), plain(), 1);
    let vf1 = Driver::start(&d.sock("vf1"), plain(), 1);
    for n in ["pf", "vf0", "vf1"] {
        d.wait_state(n, "started");
    }
    (d, pf, vf0, vf1)
}

#[test]
fn unicast_pf_to_vf_and_vf_to_vf_arrives_exactly() {
    let (d, mut pf, mut vf0, mut vf1) = three();
    let (m_pf, m0, m1) = (d.mac("pf"), d.mac("vf0"), d.mac("vf1"));
    for v in [&mut pf, &mut vf0, &mut vf1] {
        v.post_rx(0, 16, 2048);
    }

    let f1 = test_frame(m0, m_pf, 1, 100);
    // Split the TX chain oddly: header alone, then 5 bytes, then the rest.
    pf.send_split(0, &[0; NET_HDR_LEN], &f1, &[NET_HDR_LEN, 5]);
    let got = vf0.recv_n(0, 1);
    assert_eq!(got[0].1, f1);
    assert_eq!(
        got[0].0,
        RxHdr {
            num_buffers: 1,
            ..RxHdr::parse(&[0; 12])
        }
    );
    assert_eq!(
        pf.wait_tx_done(0, 1),
        vec![(0, 0)],
        "TX used length must be 0"
    );

    let f2 = test_frame(m_pf, m0, 2, 60);
    vf0.send(0, &f2);
    assert_eq!(pf.recv_n(0, 1)[0].1, f2);

    let f3 = test_frame(m1, m0, 3, 1500);
    vf0.send(0, &f3);
    assert_eq!(vf1.recv_n(0, 1)[0].1, f3);
    vf0.wait_tx_done(0, 2);

    // Nobody else saw anything.
    assert!(pf.recv(0).is_empty() && vf0.recv(0).is_empty() && vf1.recv(0).is_empty());
    let c = |n: &str, k: &str| d.counter(n, k);
    assert_eq!(
        (c("pf", "tx_packets"), c("pf", "tx_bytes")),
        (1, f1.len() as u64)
    );
    assert_eq!(
        (c("pf", "rx_packets"), c("pf", "rx_bytes")),
        (1, f2.len() as u64)
    );
    assert_eq!(
        (c("vf0", "tx_packets"), c("vf0", "tx_bytes")),
        (2, (f2.len() + f3.len()) as u64)
    );
    assert_eq!((c("vf0", "rx_packets"), c("vf1", "rx_packets")), (1, 1));
    assert_eq!(c("vf1", "rx_bytes"), f3.len() as u64);
    for n in ["pf", "vf0", "vf1"] {
        let p = d.partition(n);
        let drops: u64 = p["counters"]
            .as_object()
            .unwrap()
            .iter()
            .filter(|(k, _)| k.starts_with("drop_"))
            .map(|(_, v)| v.as_u64().unwrap())
            .sum();
        assert_eq!(drops, 0, "{n}: {p}");
        // Per-queue counters add up to the partition totals (one pair here).
        assert_eq!(p["queues"][0]["counters"], p["counters"]);
    }
    // `ctl show -s`, as `ip -s link` prints it, carries the same figures.
    let text = d.ctl(&["show", "-s", "vf0"]);
    let lines: Vec<&str> = text.lines().collect();
    assert!(
        lines[0].trim_start().starts_with("vf 0     link/ether"),
        "{text}"
    );
    let rx: Vec<&str> = lines[2].split_whitespace().collect();
    let tx: Vec<&str> = lines[4].split_whitespace().collect();
    assert_eq!(rx[..2], [f1.len().to_string(), "1".to_string()]);
    assert_eq!(
        tx[..2],
        [(f2.len() + f3.len()).to_string(), "2".to_string()]
    );
}

#[test]
fn broadcast_reaches_every_other_started_partition_only() {
    let d = Daemon::start(&["--vfs", "4"]);
    let mut pf = Driver::start(&d.sock("pf"), plain(), 1);
    let mut vf0 = Driver::start(&d.sock("vf0"), plain(), 1);
    let mut vf1 = Driver::start(&d.sock("vf1"), plain(), 1);
    // vf2: connected but never started. vf3: started, then stopped.
    let _vf2 = Driver::connect(&d.sock("vf2"), plain(), 1);
    let mut vf3 = Driver::start(&d.sock("vf3"), plain(), 1);
    d.wait_state("vf3", "started");
    vf3.post_rx(0, 8, 2048);
    vf3.stop_rings();
    d.wait_state("vf3", "stopped");
    d.wait_state("vf2", "connected");
    for v in [&mut pf, &mut vf0, &mut vf1] {
        v.post_rx(0, 8, 2048);
    }
    d.wait_state("vf1", "started");

    let b = test_frame([0xff; 6], d.mac("vf1"), 7, 50);
    vf1.send(0, &b);
    assert_eq!(pf.recv_n(0, 1)[0].1, b);
    assert_eq!(vf0.recv_n(0, 1)[0].1, b);
    let m = test_frame([0x33, 0x33, 0, 0, 0, 1], d.mac("vf1"), 8, 50);
    vf1.send(0, &m);
    assert_eq!(pf.recv_n(0, 1)[0].1, m);
    assert_eq!(vf0.recv_n(0, 1)[0].1, m);
    vf1.wait_tx_done(0, 2);
    assert!(vf1.recv(0).is_empty(), "never back to the sender");
    assert_eq!(vf3.used_idx(0), 0, "stopped partition got nothing");

    assert_eq!(d.counter("vf1", "tx_broadcast"), 1);
    assert_eq!(d.counter("vf1", "tx_multicast"), 1);
    for n in ["pf", "vf0"] {
        assert_eq!(d.counter(n, "rx_broadcast"), 1, "{n}");
        assert_eq!(d.counter(n, "rx_multicast"), 1, "{n}");
    }
    for n in ["vf1", "vf2", "vf3"] {
        assert_eq!(d.counter(n, "rx_packets"), 0, "{n}");
    }
    assert_eq!(
        d.counter("vf1", "drop_destination_down"),
        0,
        "idle ports are not flood drops"
    );
}

#[test]
fn spoofed_source_unknown_destination_and_hairpin_are_dropped_and_counted() {
    let (d, mut pf, mut vf0, mut vf1) = three();
    for v in [&mut pf, &mut vf0, &mut vf1] {
        v.post_rx(0, 8, 2048);
    }
    // VF0 pretends to be VF1.
    vf0.send(0, &test_frame(d.mac("pf"), d.mac("vf1"), 1, 60));
    vf0.send(0, &test_frame([0xff; 6], d.mac("vf1"), 1, 60));
    // Unknown unicast.
    vf0.send(
        0,
        &test_frame([0x02, 0x99, 0, 0, 0, 1], d.mac("vf0"), 2, 60),
    );
    // To itself.
    vf0.send(0, &test_frame(d.mac("vf0"), d.mac("vf0"), 3, 60));
    vf0.wait_tx_done(0, 4);
    std::thread::sleep(std::time::Duration::from_millis(50));
    assert!(pf.recv(0).is_empty() && vf1.recv(0).is_empty() && vf0.recv(0).is_empty());
    assert_eq!(d.counter("vf0", "drop_spoofed_source"), 2);
    assert_eq!(d.counter("vf0", "drop_unknown_destination"), 1);
    assert_eq!(d.counter("vf0", "drop_hairpin"), 1);
    assert_eq!(
        d.counter("vf0", "tx_packets"),
        0,
        "dropped at the sender, never sent"
    );
}

#[test]
fn mergeable_rx_spreads_a_frame_over_small_buffers() {
    let (d, mut pf, mut vf0, _vf1) = three();
    vf0.post_rx(0, 8, 256);
    let f = test_frame(d.mac("vf0"), d.mac("pf"), 9, 986); // 1000 bytes + 12 header = 4 buffers
    pf.send(0, &f);
    let got = vf0.recv_n(0, 1);
    assert_eq!(got[0].0.num_buffers, 4);
    assert_eq!(got[0].1, f);
    assert_eq!(d.counter("vf0", "rx_bytes"), 1000);
}

#[test]
fn without_mergeable_a_frame_needs_one_large_enough_chain() {
    let d = Daemon::start(&["--vfs", "1"]);
    let mut pf = Driver::start(&d.sock("pf"), plain(), 1);
    let mut vf0 = Driver::start(&d.sock("vf0"), no_mrg(), 1);
    d.wait_state("vf0", "started");
    vf0.post_rx(0, 1, 256);
    let big = test_frame(d.mac("vf0"), d.mac("pf"), 1, 500);
    pf.send(0, &big);
    pf.wait_tx_done(0, 1);
    common::wait_for(
        std::time::Duration::from_secs(5),
        || d.counter("vf0", "drop_no_rx_buffer") == 1,
        "drop",
    );
    assert!(vf0.recv(0).is_empty(), "a too-small buffer is not consumed");
    let small = test_frame(d.mac("vf0"), d.mac("pf"), 2, 100);
    pf.send(0, &small);
    let got = vf0.recv_n(0, 1);
    assert_eq!((got[0].0.num_buffers, &got[0].1), (1, &small));
}

#[test]
fn starved_receiver_drops_without_stalling_the_sender() {
    let (d, mut pf, mut vf0, mut vf1) = three();
    // VF0 posts no RX buffers at all; PF also talks to VF1 meanwhile.
    vf1.post_rx(0, 64, 2048);
    for i in 0..100u8 {
        pf.send(0, &test_frame(d.mac("vf0"), d.mac("pf"), i, 64));
        if i % 10 == 0 {
            pf.send(0, &test_frame(d.mac("vf1"), d.mac("pf"), i, 64));
        }
        if i % 50 == 49 {
            pf.wait_tx_done(0, 55); // 50 to VF0 + 5 to VF1 per half
        }
    }
    assert_eq!(vf1.recv_n(0, 10).len(), 10);
    assert_eq!(d.counter("vf0", "drop_no_rx_buffer"), 100);
    assert_eq!(
        d.counter("pf", "tx_packets"),
        110,
        "every frame left the sender"
    );
    // Once VF0 posts buffers, traffic flows again without any RX kick being needed for it.
    vf0.post_rx(0, 4, 2048);
    let f = test_frame(d.mac("vf0"), d.mac("pf"), 200, 64);
    pf.send(0, &f);
    assert_eq!(vf0.recv_n(0, 1)[0].1, f);
}

#[test]
fn gso_frame_is_segmented_for_a_receiver_without_tso() {
    let d = Daemon::start(&["--vfs", "2"]);
    let mut pf = Driver::start(&d.sock("pf"), full_offloads(), 1);
    let mut vf0 = Driver::start(&d.sock("vf0"), plain(), 1);
    let mut vf1 = Driver::start(&d.sock("vf1"), full_offloads(), 1);
    for n in ["pf", "vf0", "vf1"] {
        d.wait_state(n, "started");
    }
    assert!(pf.has(VIRTIO_NET_F_HOST_TSO4) && !vf0.has(VIRTIO_NET_F_GUEST_TSO4));
    vf0.post_rx(0, 16, 2048);
    vf1.post_rx(0, 16, 4096);
    let payload: Vec<u8> = (0..4000u32).map(|i| (i * 7) as u8).collect();
    let f = tcp4(d.mac("vf0"), d.mac("pf"), 1000, 0x18, &payload);
    // NEEDS_CSUM, TCPV4, hdr_len 54, mss 1448, csum at 34 + 16.
    let h = hdr(1, 1, 54, 1448, 34, 16);
    pf.send_with_hdr(0, &h, &f);
    let segs = vf0.recv_n(0, 3);
    let mut seq = 1000u32;
    let mut data = Vec::new();
    for (i, (rh, s)) in segs.iter().enumerate() {
        assert_eq!(
            (rh.flags, rh.gso_type),
            (0, 0),
            "plain frames for a plain receiver"
        );
        assert!(ipv4_l4_valid(s), "segment {i} checksums");
        assert_eq!(u32::from_be_bytes([s[38], s[39], s[40], s[41]]), seq);
        let body = &s[54..];
        assert!(body.len() <= 1448);
        seq += body.len() as u32;
        data.extend_from_slice(body);
    }
    assert_eq!(data, payload);
    // A receiver with TSO gets the super-frame as-is, header included.
    let f2 = tcp4(d.mac("vf1"), d.mac("pf"), 1, 0x18, &payload);
    pf.send_with_hdr(0, &h, &f2);
    let got = vf1.recv_n(0, 1);
    assert_eq!(
        (got[0].0.gso_type, got[0].0.gso_size, got[0].0.flags),
        (1, 1448, 1)
    );
    assert_eq!(got[0].1, f2);
    assert_eq!(d.counter("vf0", "rx_packets"), 3);
}

#[test]
fn partial_checksum_is_completed_for_a_receiver_without_guest_csum() {
    let d = Daemon::start(&["--vfs", "1"]);
    let mut pf = Driver::start(&d.sock("pf"), full_offloads(), 1);
    let mut vf0 = Driver::start(&d.sock("vf0"), plain(), 1);
    d.wait_state("vf0", "started");
    vf0.post_rx(0, 4, 2048);
    // UDP over IPv4 with the checksum seeded with the pseudo-header sum.
    let (sip, dip) = ([10, 0, 0, 1], [10, 0, 0, 2]);
    let body = b"checksum me, please: an odd-length payload!";
    let udp_len = 8 + body.len();
    let mut ip = vec![0x45, 0, 0, 0, 0, 1, 0x40, 0, 64, 17, 0, 0];
    ip[2..4].copy_from_slice(&((20 + udp_len) as u16).to_be_bytes());
    ip.extend_from_slice(&sip);
    ip.extend_from_slice(&dip);
    let c = csum(0, &ip);
    ip[10..12].copy_from_slice(&c.to_be_bytes());
    let mut udp = vec![0x30, 0x39, 0x00, 0x35, 0, 0, 0, 0];
    udp[4..6].copy_from_slice(&(udp_len as u16).to_be_bytes());
    let seed = !csum(pseudo4(sip, dip, 17, udp_len), &[]);
    udp[6..8].copy_from_slice(&seed.to_be_bytes());
    udp.extend_from_slice(body);
    ip.extend(udp);
    let f = eth(d.mac("vf0"), d.mac("pf"), 0x0800, &ip);
    assert!(!ipv4_l4_valid(&f), "seeded checksum is not yet valid");
    pf.send_with_hdr(0, &hdr(1, 0, 0, 0, 34, 6), &f);
    let got = vf0.recv_n(0, 1);
    assert_eq!(got[0].0.flags, 0);
    assert!(ipv4_l4_valid(&got[0].1));
    assert_eq!(got[0].1[..40], f[..40]);
    assert_eq!(got[0].1[42..], f[42..]);
}

#[test]
fn two_queue_pairs_keep_flows_on_their_pair() {
    let d = Daemon::start(&["--vfs", "1", "--queue-pairs", "2"]);
    let mut pf = Driver::start(&d.sock("pf"), plain(), 2);
    let mut vf0 = Driver::start(&d.sock("vf0"), plain(), 2);
    d.wait_state("vf0", "started");
    vf0.post_rx(0, 4, 2048);
    vf0.post_rx(1, 4, 2048);
    let a = test_frame(d.mac("vf0"), d.mac("pf"), 1, 80);
    let b = test_frame(d.mac("vf0"), d.mac("pf"), 2, 90);
    pf.send(0, &a);
    pf.send(1, &b);
    assert_eq!(vf0.recv_n(0, 1)[0].1, a);
    assert_eq!(vf0.recv_n(1, 1)[0].1, b);
    let p = d.partition("pf");
    assert_eq!(p["queues"][0]["counters"]["tx_packets"], 1);
    assert_eq!(p["queues"][1]["counters"]["tx_packets"], 1);
    assert_eq!(p["counters"]["tx_packets"], 2);
    let v = d.partition("vf0");
    assert_eq!(v["queues"][1]["counters"]["rx_bytes"], 104);
}

#[test]
fn busy_poll_mode_forwards_like_event_mode() {
    let d = Daemon::start(&["--vfs", "1", "--poll-us", "500"]);
    let mut pf = Driver::start(&d.sock("pf"), plain(), 1);
    let mut vf0 = Driver::start(&d.sock("vf0"), plain(), 1);
    d.wait_state("vf0", "started");
    vf0.post_rx(0, 64, 2048);
    let frames: Vec<Vec<u8>> = (0..50u8)
        .map(|i| test_frame(d.mac("vf0"), d.mac("pf"), i, 60 + usize::from(i)))
        .collect();
    for f in &frames {
        pf.send(0, f);
    }
    let got: Vec<Vec<u8>> = vf0.recv_n(0, 50).into_iter().map(|(_, f)| f).collect();
    assert_eq!(got, frames, "in order, intact");
    pf.wait_tx_done(0, 50);
    assert_eq!(d.counter("pf", "tx_packets"), 50);

    // Well past the poll window the queues are back on kicks and the poller sleeps; a kick
    // must hand them over again, for both senders at once.
    std::thread::sleep(std::time::Duration::from_millis(50));
    pf.post_rx(0, 16, 2048);
    let to_vf0: Vec<Vec<u8>> = (0..8u8)
        .map(|i| test_frame(d.mac("vf0"), d.mac("pf"), 100 + i, 70))
        .collect();
    let to_pf: Vec<Vec<u8>> = (0..8u8)
        .map(|i| test_frame(d.mac("pf"), d.mac("vf0"), 200 + i, 80))
        .collect();
    for (a, b) in to_vf0.iter().zip(&to_pf) {
        pf.send(0, a);
        vf0.send(0, b);
    }
    let got: Vec<Vec<u8>> = vf0.recv_n(0, 8).into_iter().map(|(_, f)| f).collect();
    assert_eq!(got, to_vf0);
    let got: Vec<Vec<u8>> = pf.recv_n(0, 8).into_iter().map(|(_, f)| f).collect();
    assert_eq!(got, to_pf);
    assert_eq!(d.counter("vf0", "tx_packets"), 8);
    let threads = std::fs::read_dir(format!("/proc/{}/task", d.pid()))
        .unwrap()
        .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("comm")).ok())
        .filter(|c| c.trim() == "poller")
        .count();
    assert_eq!(threads, 1, "one polling thread serves every partition");
}

/// A daemon whose vf0 has MTU 9000 while everything else keeps 1500.
fn jumbo_vf0() -> (Daemon, Driver, Driver, Driver) {
    let cfg = std::env::temp_dir().join(format!("sriov-net-mtu-{}.toml", std::process::id()));
    std::fs::write(&cfg, "vfs = 2\n[vf.0]\nmtu = 9000\n").unwrap();
    let d = Daemon::start(&["--config", cfg.to_str().unwrap()]);
    let pf = Driver::start(&d.sock("pf"), full_offloads(), 1);
    let vf0 = Driver::start(&d.sock("vf0"), full_offloads(), 1);
    let vf1 = Driver::start(&d.sock("vf1"), plain(), 1);
    for n in ["pf", "vf0", "vf1"] {
        d.wait_state(n, "started");
    }
    (d, pf, vf0, vf1)
}

/// The MTU holds both ways: a port sends nothing longer than its own MTU allows and receives
/// nothing longer than its own; a real VEB drops such frames, and so does this one, counting them.
#[test]
fn mtu_is_enforced_on_send_and_on_delivery() {
    let (d, mut pf, mut vf0, mut vf1) = jumbo_vf0();
    vf1.post_rx(0, 64, 4096);
    pf.post_rx(0, 64, 4096);
    // Over the receiver's MTU (vf0 may send 9014, vf1 may not receive it).
    for len in [9014 - 14, 1501] {
        vf0.send(0, &test_frame(d.mac("vf1"), d.mac("vf0"), 1, len));
    }
    vf0.wait_tx_done(0, 2);
    // Over the sender's own MTU.
    for len in [9000 - 14 + 1, 65014 - 14] {
        vf0.send(0, &test_frame(d.mac("vf1"), d.mac("vf0"), 2, len));
    }
    pf.send(0, &test_frame(d.mac("vf1"), d.mac("pf"), 3, 1501));
    // The largest frames that fit, untagged and tagged, pass.
    let fits = test_frame(d.mac("vf1"), d.mac("vf0"), 4, 1500);
    vf0.send(0, &fits);
    let mut tagged = fits.clone();
    tagged.splice(12..12, [0x81, 0x00, 0x00, 0x05]);
    assert_eq!(tagged.len(), 1518);
    vf0.send(0, &tagged);
    let got = vf1.recv_n(0, 2);
    assert_eq!((got[0].1.clone(), got[1].1.clone()), (fits, tagged));
    assert_eq!(d.counter("vf0", "drop_oversize"), 4);
    assert_eq!(d.counter("pf", "drop_oversize"), 1);
    assert_eq!(d.counter("vf1", "rx_packets"), 2);
    assert!(vf1.recv(0).is_empty(), "nothing oversize arrived");
}

/// A super-frame from a jumbo port to a 1500 port without TSO is cut to the receiver's MTU,
/// whatever the sender's gso_size, and its trailing padding never becomes payload.
#[test]
fn software_segmentation_fits_the_receivers_mtu() {
    let (d, _pf, mut vf0, mut vf1) = jumbo_vf0();
    vf1.post_rx(0, 64, 4096);
    let payload: Vec<u8> = (0..20_000u32).map(|i| (i * 13) as u8).collect();
    let mut f = tcp4(d.mac("vf1"), d.mac("vf0"), 7, 0x18, &payload);
    f.extend_from_slice(&[0xee; 40]); // Ethernet padding after the IP packet
    vf0.send_with_hdr(0, &hdr(1, 1, 54, 8000, 34, 16), &f);
    // 1514-byte frames carry 1460 bytes after 54 bytes of headers.
    let segs = vf1.recv_n(0, payload.len().div_ceil(1460));
    let mut data = Vec::new();
    for (rh, s) in &segs {
        assert!(s.len() <= 1514, "{}-byte segment for a 1500 MTU", s.len());
        assert_eq!((rh.gso_type, rh.flags), (0, 0));
        assert!(ipv4_l4_valid(s));
        data.extend_from_slice(&s[54..]);
    }
    assert_eq!(data, payload);
    assert!(vf1.recv(0).is_empty());
}

/// Headers a hostile driver made up are dropped and counted on the sender, never forwarded
/// and never vouched for.
#[test]
fn invalid_offload_headers_are_dropped_not_forwarded() {
    let (d, mut pf, mut vf0, _vf1) = jumbo_vf0();
    vf0.post_rx(0, 16, 4096);
    // UDP with checksum 0xdead; ECN bit without a GSO type, NEEDS_CSUM at 42 + 0.
    let mut udp = vec![
        0x45, 0, 0, 36, 0, 1, 0x40, 0, 64, 17, 0, 0, 10, 0, 0, 1, 10, 0, 0, 2,
    ];
    let c = csum(0, &udp);
    udp[10..12].copy_from_slice(&c.to_be_bytes());
    udp.extend_from_slice(&[0x30, 0x39, 0, 0x35, 0, 16, 0xde, 0xad]);
    udp.extend_from_slice(&[7; 8]);
    let f = eth(d.mac("vf0"), d.mac("pf"), 0x0800, &udp);
    pf.send_with_hdr(0, &hdr(1, 0x80, 0, 0, 42, 0), &f);
    // A checksum field far outside the frame.
    let small = test_frame(d.mac("vf0"), d.mac("pf"), 9, 50);
    pf.send_with_hdr(0, &hdr(1, 0, 0, 0, 60000, 5000), &small);
    // GSO with gso_size 0 towards a TSO receiver.
    let t = tcp4(d.mac("vf0"), d.mac("pf"), 1, 0x18, &[5; 3000]);
    pf.send_with_hdr(0, &hdr(1, 1, 54, 0, 34, 16), &t);
    pf.wait_tx_done(0, 3);
    assert_eq!(d.counter("pf", "drop_malformed_chain"), 3);
    // Then a good frame: it is the only thing that arrives.
    let good = test_frame(d.mac("vf0"), d.mac("pf"), 10, 100);
    pf.send(0, &good);
    let got = vf0.recv_n(0, 1);
    assert_eq!(got[0].1, good);
    assert_eq!(d.counter("vf0", "rx_packets"), 1);
}
