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
