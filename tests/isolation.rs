//! Hard partitions: malformed chains, bad vhost-user input, stop/restart and disconnect/reconnect
//! of one partition never disturb the others, and the daemon stays up.

mod common;

use std::io::Write;
use std::os::unix::net::UnixStream;
use std::time::Duration;

use common::*;
use vhost::{VhostBackend, VhostUserMemoryRegionInfo};

/// Sends one frame PF -> VF0 and checks it arrives: the "other pair keeps passing traffic".
fn ping(d: &Daemon, pf: &mut Driver, vf0: &mut Driver, tag: u8) {
    vf0.post_rx(0, 1, 2048);
    let f = test_frame(d.mac("vf0"), d.mac("pf"), tag, 64);
    pf.send(0, &f);
    assert_eq!(vf0.recv_n(0, 1)[0].1, f, "PF -> VF0 traffic, round {tag}");
}

#[test]
fn malformed_tx_chains_are_completed_and_isolated_to_their_partition() {
    let d = Daemon::start(&["--vfs", "2"]);
    let mut pf = Driver::start(&d.sock("pf"), plain(), 1);
    let mut vf0 = Driver::start(&d.sock("vf0"), plain(), 1);
    let mut vf1 = Driver::start(&d.sock("vf1"), plain(), 1);
    d.wait_state("vf1", "started");
    ping(&d, &mut pf, &mut vf0, 1);

    let own = u64::MAX; // "the descriptor's own slot"
    let tx = 1;
    let bad: Vec<Vec<RawDesc>> = vec![
        // Address outside the memory table.
        vec![RawDesc {
            addr: 0x7fff_0000_0000,
            len: 100,
            flags: 0,
            next: 0,
        }],
        // Write-only descriptor in a TX chain.
        vec![RawDesc {
            addr: own,
            len: 100,
            flags: F_WRITE,
            next: 0,
        }],
        // Zero-length descriptor.
        vec![RawDesc {
            addr: own,
            len: 0,
            flags: 0,
            next: 0,
        }],
        // Indirect table with a bogus length.
        vec![RawDesc {
            addr: own,
            len: 7,
            flags: F_INDIRECT,
            next: 0,
        }],
        // Shorter than the virtio-net + Ethernet headers.
        vec![RawDesc {
            addr: own,
            len: 20,
            flags: 0,
            next: 0,
        }],
    ];
    let n_bad = bad.len() as u64 + 1;
    for chain in &bad {
        vf1.post_raw(tx, chain);
        ping(&d, &mut pf, &mut vf0, 2);
    }
    // A loop: two descriptors pointing at each other.
    let a = vf1.next_free(tx);
    let loop_chain = [
        RawDesc {
            addr: own,
            len: 64,
            flags: F_NEXT,
            next: a + 1,
        },
        RawDesc {
            addr: own,
            len: 64,
            flags: F_NEXT,
            next: a,
        },
    ];
    vf1.post_raw(tx, &loop_chain);
    let done = vf1.wait_tx_done(0, n_bad as usize);
    assert!(
        done.iter().all(|(_, len)| *len == 0),
        "malformed chains are completed with length 0"
    );
    assert_eq!(d.counter("vf1", "drop_malformed_chain"), n_bad);
    assert_eq!(d.counter("vf1", "tx_packets"), 0);
    // VF1's queue still works, and so does everyone else.
    vf0.post_rx(0, 1, 2048);
    let good = test_frame(d.mac("vf0"), d.mac("vf1"), 9, 64);
    vf1.send(0, &good);
    assert_eq!(vf0.recv_n(0, 1)[0].1, good);
    ping(&d, &mut pf, &mut vf0, 3);
    let log = d.log();
    assert_eq!(
        log.matches("vf1: TX chain").count(),
        1,
        "warned once, not per packet:\n{log}"
    );
}

#[test]
fn broken_avail_index_isolates_only_that_queue() {
    let d = Daemon::start(&["--vfs", "2"]);
    let mut pf = Driver::start(&d.sock("pf"), plain(), 1);
    let mut vf0 = Driver::start(&d.sock("vf0"), plain(), 1);
    let mut vf1 = Driver::start(&d.sock("vf1"), plain(), 1);
    d.wait_state("vf1", "started");
    // VF1's driver claims 1000 new chains on a 256-entry ring.
    vf1.corrupt_avail_idx(1, 1000);
    std::thread::sleep(Duration::from_millis(50));
    ping(&d, &mut pf, &mut vf0, 1);
    assert!(d.log().contains("vf1: queue 1 broken"));
    // A restart of VF1 (fresh rings) brings its queue back.
    vf1.stop_rings();
    vf1.start_rings();
    vf0.post_rx(0, 1, 2048);
    let f = test_frame(d.mac("vf0"), d.mac("vf1"), 4, 64);
    vf1.send(0, &f);
    assert_eq!(vf0.recv_n(0, 1)[0].1, f);
}

#[test]
fn stop_and_restart_on_one_connection_any_number_of_times() {
    let d = Daemon::start(&["--vfs", "2"]);
    let mut pf = Driver::start(&d.sock("pf"), plain(), 1);
    let mut vf0 = Driver::start(&d.sock("vf0"), plain(), 1);
    d.wait_state("vf0", "started");
    for round in 1..=3u8 {
        ping(&d, &mut pf, &mut vf0, round);
        vf0.stop_rings();
        d.wait_state("vf0", "stopped");
        // Frames to a stopped VF are dropped at the switch, the PF is not held up.
        pf.send(0, &test_frame(d.mac("vf0"), d.mac("pf"), 0, 64));
        pf.wait_tx_done(0, 2);
        vf0.start_rings();
        d.wait_state("vf0", "started");
    }
    ping(&d, &mut pf, &mut vf0, 9);
    let p = d.partition("vf0");
    assert_eq!(
        (
            p["starts"].as_u64(),
            p["stops"].as_u64(),
            p["connects"].as_u64()
        ),
        (Some(4), Some(3), Some(1))
    );
    assert_eq!(d.counter("pf", "drop_destination_down"), 3);
}

#[test]
fn disconnect_resets_the_partition_and_the_socket_takes_the_next_frontend() {
    let d = Daemon::start(&["--vfs", "2"]);
    let mut pf = Driver::start(&d.sock("pf"), plain(), 1);
    let mut vf0 = Driver::start(&d.sock("vf0"), plain(), 1);
    d.wait_state("vf0", "started");
    assert_eq!(d.mapped_guest_memories(), 2);
    for round in 1..=3u8 {
        let mut vf1 = Driver::start(&d.sock("vf1"), plain(), 1);
        d.wait_state("vf1", "started");
        assert_eq!(d.mapped_guest_memories(), 3);
        vf1.post_rx(0, 1, 2048);
        let f = test_frame(d.mac("vf1"), d.mac("pf"), round, 64);
        pf.send(0, &f);
        assert_eq!(vf1.recv_n(0, 1)[0].1, f);
        drop(vf1);
        d.wait_state("vf1", "waiting");
        ping(&d, &mut pf, &mut vf0, round);
        // The departed frontend's memory is unmapped, though the PF sent into it last round.
        wait_for(
            Duration::from_secs(5),
            || d.mapped_guest_memories() == 2,
            "vf1 memory unmapped",
        );
    }
    let p = d.partition("vf1");
    assert_eq!(
        (p["connects"].as_u64(), p["disconnects"].as_u64()),
        (Some(3), Some(3))
    );
    assert!(d.sock("vf1").exists(), "socket file never re-created");
}

#[test]
fn bad_vhost_user_input_drops_only_that_connection() {
    let mut d = Daemon::start(&["--vfs", "3"]);
    let mut pf = Driver::start(&d.sock("pf"), plain(), 1);
    let mut vf0 = Driver::start(&d.sock("vf0"), plain(), 1);
    d.wait_state("vf0", "started");

    // Garbage bytes instead of vhost-user messages.
    let mut s = UnixStream::connect(d.sock("vf1")).unwrap();
    s.write_all(&[0xde; 100]).unwrap();
    drop(s);

    // A memory table that points past the end of its file.
    let bad = Driver::connect(&d.sock("vf2"), plain(), 1);
    let r = bad.region_info();
    let lying = VhostUserMemoryRegionInfo {
        memory_size: r.memory_size * 64,
        ..r
    };
    // The frontend may not wait for the reply; the daemon's refusal shows in its log and state.
    let _ = bad.fe.set_mem_table(&[lying]);
    wait_for(
        Duration::from_secs(5),
        || d.log().contains("vf2: memory table refused"),
        "refusal",
    );
    d.wait_state("vf2", "waiting");
    drop(bad);

    // Ring size beyond the split ring's maximum of 32768.
    let big = Driver::connect(&d.sock("vf2"), plain(), 1);
    let _ = big.fe.set_vring_num(0, 65535);
    let dropped = || d.log().matches("vf2: connection dropped").count() == 2;
    wait_for(
        Duration::from_secs(5),
        dropped,
        "second vf2 connection dropped",
    );
    drop(big);

    ping(&d, &mut pf, &mut vf0, 1);
    d.wait_state("vf1", "waiting");
    d.wait_state("vf2", "waiting");
    // The victims' sockets serve a proper frontend right after.
    let mut vf2 = Driver::start(&d.sock("vf2"), plain(), 1);
    d.wait_state("vf2", "started");
    vf2.post_rx(0, 1, 2048);
    let f = test_frame(d.mac("vf2"), d.mac("pf"), 5, 64);
    pf.send(0, &f);
    assert_eq!(vf2.recv_n(0, 1)[0].1, f);
    assert!(d.alive());
    bad_control_requests(&d);
}

/// Malformed control requests get error replies; the daemon and the connection carry on.
fn bad_control_requests(d: &Daemon) {
    use std::io::{BufRead, BufReader};
    let s = UnixStream::connect(d.dir.join("control.sock")).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut w = s.try_clone().unwrap();
    let mut r = BufReader::new(s);
    for req in [
        "{nope",
        r#"{"version":9,"cmd":"show"}"#,
        r#"{"version":1,"cmd":"reboot"}"#,
    ] {
        writeln!(w, "{req}").unwrap();
        let mut line = String::new();
        r.read_line(&mut line).unwrap();
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert_eq!(v["ok"], false, "{req}");
    }
    writeln!(w, r#"{{"version":1,"cmd":"show"}}"#).unwrap();
    let mut line = String::new();
    r.read_line(&mut line).unwrap();
    let v: serde_json::Value = serde_json::from_str(&line).unwrap();
    assert_eq!(v["ok"], true);
}

#[test]
fn control_socket_survives_malformed_requests() {
    let d = Daemon::start(&["--vfs", "1"]);
    bad_control_requests(&d);
    // Oversized request line: error, then the connection is closed; the daemon answers others.
    let mut s = UnixStream::connect(d.dir.join("control.sock")).unwrap();
    let _ = s.write_all(&vec![b'x'; 200_000]);
    drop(s);
    assert_eq!(d.show()["partitions"].as_array().unwrap().len(), 2);
}

/// QEMU's device creation sends SET_VRING_ENABLE before SET_FEATURES; the connection must
/// survive it (the vhost 0.18 dispatcher alone would drop it).
#[test]
fn early_vring_enable_from_qemu_keeps_the_connection() {
    use std::io::Read;
    let d = Daemon::start(&["--vfs", "1"]);
    let mut s = UnixStream::connect(d.sock("vf0")).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let msg = |req: u32, flags: u32, payload: &[u8]| {
        let mut v = req.to_le_bytes().to_vec();
        v.extend_from_slice(&flags.to_le_bytes());
        v.extend_from_slice(&(payload.len() as u32).to_le_bytes());
        v.extend_from_slice(payload);
        v
    };
    let get_features = |s: &mut UnixStream| {
        s.write_all(&msg(1, 1, &[])).unwrap();
        let mut reply = [0u8; 20];
        s.read_exact(&mut reply).unwrap();
        u64::from_le_bytes(reply[12..20].try_into().unwrap())
    };
    let offered = get_features(&mut s);
    assert_ne!(offered & (1 << 30), 0, "PROTOCOL_FEATURES offered");
    // SET_OWNER, then SET_VRING_ENABLE(ring 0, 1) with NEED_REPLY before any SET_FEATURES.
    s.write_all(&msg(3, 1, &[])).unwrap();
    s.write_all(&msg(18, 1 | 8, &[0, 0, 0, 0, 1, 0, 0, 0]))
        .unwrap();
    let mut ack = [0u8; 20];
    s.read_exact(&mut ack).unwrap();
    assert_eq!(u32::from_le_bytes(ack[0..4].try_into().unwrap()), 18);
    assert_eq!(
        u64::from_le_bytes(ack[12..20].try_into().unwrap()),
        0,
        "success"
    );
    assert_eq!(get_features(&mut s), offered, "connection still served");
    assert_eq!(d.state("vf0"), "connected");
    assert!(!d.log().contains("connection dropped"));
}

fn vu_msg(req: u32, flags: u32, payload: &[u8]) -> Vec<u8> {
    let mut v = req.to_le_bytes().to_vec();
    v.extend_from_slice(&flags.to_le_bytes());
    v.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    v.extend_from_slice(payload);
    v
}

fn open_fds(d: &Daemon) -> usize {
    std::fs::read_dir(format!("/proc/{}/fd", d.pid()))
        .unwrap()
        .count()
}

fn threads(d: &Daemon) -> usize {
    std::fs::read_dir(format!("/proc/{}/task", d.pid()))
        .unwrap()
        .count()
}

/// A CI restarting its guest hundreds of times against one daemon: connection setup and
/// teardown leave the daemon's fds and threads where they were (one eventfd used to leak per
/// connection, even a bare connect and close).
#[test]
fn connect_close_cycles_leave_fds_and_threads_where_they_were() {
    let d = Daemon::start(&["--vfs", "1"]);
    // A full negotiation first, so anything created lazily on the first connection exists.
    drop(Driver::start(&d.sock("vf0"), plain(), 1));
    d.wait_state("vf0", "waiting");
    // The baseline at rest: the control-connection thread of wait_state's `show` may still be
    // finishing.
    let (mut fds, mut thr) = (open_fds(&d), threads(&d));
    for _ in 0..10 {
        std::thread::sleep(Duration::from_millis(50));
        fds = fds.min(open_fds(&d));
        thr = thr.min(threads(&d));
    }
    let refused = || {
        d.log()
            .matches("refused: the partition already has a frontend")
            .count() as u64
    };
    // Every connection so far served (connects) or refused, and the partition free again. The
    // state alone cannot tell: it reads "waiting" before a bare connection is even accepted.
    let settled = |n: u64| {
        wait_for(
            Duration::from_secs(10),
            || {
                let p = d.partition("vf0");
                p["connects"].as_u64().unwrap() + refused() == n && p["state"] == "waiting"
            },
            "vf0 done with every earlier connection",
        )
    };
    let mut made = 1;
    for i in 0..300 {
        let s = UnixStream::connect(d.sock("vf0")).unwrap();
        drop(s);
        made += 1;
        if i % 50 == 0 {
            // While an earlier bare connection is still being torn down a new frontend would
            // be refused (one frontend per partition), so wait for the partition first.
            settled(made);
            drop(Driver::start(&d.sock("vf0"), plain(), 1));
            made += 1;
        }
    }
    settled(made);
    let t = std::time::Instant::now();
    while (open_fds(&d) > fds || threads(&d) > thr) && t.elapsed() < Duration::from_secs(10) {
        std::thread::sleep(Duration::from_millis(50));
    }
    let now = (open_fds(&d), threads(&d));
    assert!(
        now.0 <= fds && now.1 <= thr,
        "fds and threads back to where they were: {now:?}, before {:?}",
        (fds, thr)
    );
    // Every connection was served or, arriving while one was, refused and logged.
    assert_eq!(made, 307);
    assert_eq!(
        d.partition("vf0")["connects"].as_u64().unwrap() + refused(),
        307
    );
    drop(Driver::start(&d.sock("vf0"), plain(), 1));
}

/// The daemon's threads at rest: the least of a few samples (a `ctl` call of the test has a
/// thread of its own for a moment).
fn threads_at_rest(d: &Daemon) -> usize {
    (0..10)
        .map(|_| {
            std::thread::sleep(Duration::from_millis(30));
            threads(d)
        })
        .min()
        .unwrap_or(0)
}

/// Threads are a cost at 255 VFs: an idle partition holds none (64 VFs at rest have the threads
/// of one), a connection's threads are few, and they end with it.
#[test]
fn idle_partitions_hold_no_threads_and_a_connections_threads_end_with_it() {
    let one = Daemon::start(&["--vfs", "1"]);
    let many = Daemon::start(&["--vfs", "64"]);
    let rest = threads_at_rest(&many);
    assert_eq!(threads_at_rest(&one), rest, "64 idle VFs cost threads");
    let drv = Driver::start(&many.sock("vf63"), plain(), 1);
    many.wait_state("vf63", "started");
    let connected = threads_at_rest(&many);
    assert!(
        connected > rest && connected - rest <= PER_CONNECTION,
        "one connection: {rest} -> {connected} threads"
    );
    drop(drv);
    many.wait_state("vf63", "waiting");
    wait_for(
        Duration::from_secs(10),
        || threads(&many) <= rest,
        "the connection's threads gone",
    );
}

/// Threads a connection costs: the vhost-user framework's message handler and vring worker,
/// and the pump.
const PER_CONNECTION: usize = 3;

/// A frontend that stops reading replies is dropped within the pump's timeout, whether it
/// keeps the connection open or closes it, and the partition takes the next frontend.
#[test]
fn a_frontend_that_stops_reading_is_dropped_and_the_partition_serves_the_next() {
    let d = Daemon::start(&["--vfs", "2"]);
    let mut pf = Driver::start(&d.sock("pf"), plain(), 1);
    for close_after in [true, false] {
        let s = UnixStream::connect(d.sock("vf0")).unwrap();
        s.set_nonblocking(true).unwrap();
        let get_features = vu_msg(1, 1, &[]);
        let t = std::time::Instant::now();
        let mut sent = 0;
        while t.elapsed() < Duration::from_secs(2) {
            match (&s).write(&get_features) {
                Ok(n) if n == get_features.len() => sent += 1,
                // A partial message: the buffers are full, which is all this needs.
                Ok(_) => break,
                Err(_) => std::thread::sleep(Duration::from_millis(5)),
            }
        }
        assert!(sent > 100, "the socket buffers filled ({sent} sent)");
        if close_after {
            drop(s);
            d.wait_state("vf0", "waiting");
        } else {
            // Still open, never read: the daemon gives up on it by itself.
            wait_for(
                Duration::from_secs(15),
                || d.state("vf0") == "waiting",
                "stalled frontend dropped",
            );
            drop(s);
        }
        let mut vf0 = Driver::start(&d.sock("vf0"), plain(), 1);
        d.wait_state("vf0", "started");
        ping(&d, &mut pf, &mut vf0, 1);
        drop(vf0);
        d.wait_state("vf0", "waiting");
    }
    assert!(d.log().contains("stalled"), "the stall is named in the log");
}

/// Half a message, then silence: the connection is dropped, not waited on for ever.
#[test]
fn a_message_stalled_halfway_is_dropped() {
    let d = Daemon::start(&["--vfs", "1"]);
    let mut s = UnixStream::connect(d.sock("vf0")).unwrap();
    s.write_all(&vu_msg(1, 1, &[])[..6]).unwrap();
    d.wait_state("vf0", "connected");
    wait_for(
        Duration::from_secs(15),
        || d.state("vf0") == "waiting",
        "half-sent message dropped",
    );
    drop(s);
    drop(Driver::start(&d.sock("vf0"), plain(), 1));
}

/// What the pump keeps for early SET_VRING_ENABLEs is bounded by the device's rings: an early
/// enable for a ring the device does not have ends the connection; a flood for real rings
/// keeps one entry each.
#[test]
fn early_enables_are_bounded_by_the_rings_the_device_has() {
    use std::io::Read;
    let mut d = Daemon::start(&["--vfs", "1"]);
    let mut s = UnixStream::connect(d.sock("vf0")).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let enable =
        |ring: u32, on: u32| vu_msg(18, 1, &[ring.to_le_bytes(), on.to_le_bytes()].concat());
    let mut flood = Vec::new();
    for i in 0..20_000u32 {
        flood.extend_from_slice(&enable(i % 2, i & 1));
    }
    s.write_all(&flood).unwrap();
    s.write_all(&vu_msg(1, 1, &[])).unwrap();
    let mut reply = [0u8; 20];
    s.read_exact(&mut reply).unwrap();
    assert_eq!(
        u32::from_le_bytes(reply[0..4].try_into().unwrap()),
        1,
        "still served"
    );
    s.write_all(&enable(1000, 1)).unwrap();
    let mut rest = Vec::new();
    let _ = s.read_to_end(&mut rest);
    assert!(rest.is_empty(), "connection closed without a reply");
    d.wait_state("vf0", "waiting");
    assert!(d
        .log()
        .contains("SET_VRING_ENABLE for ring 1000; the device has 2"));
    assert!(d.alive());
}

/// Frontends choose their ring size (DPDK `queue_size=`, QEMU `rx_queue_size=`): any valid split
/// ring size up to 32768 is accepted, whatever the configured default.
#[test]
fn ring_sizes_beyond_the_configured_default_are_accepted() {
    let d = Daemon::start(&["--vfs", "1"]);
    for size in [1024u16, 4096, 32768] {
        let drv = Driver::connect(&d.sock("vf0"), plain(), 1);
        drv.fe.set_vring_num(0, size).unwrap();
        drv.fe.set_vring_num(1, size).unwrap();
        // The connection is still served after the sizes were set.
        assert!(drv.fe.get_features().is_ok(), "size {size}");
        assert_eq!(d.state("vf0"), "connected", "size {size}");
        drop(drv);
        d.wait_state("vf0", "waiting");
    }
    assert!(!d.log().contains("connection dropped"));
}

/// The control server is bounded: at most 16 connections at once (the rest get an error line),
/// and a request must be complete within 10 s of its first byte, however slowly it trickles.
#[test]
fn control_connections_are_capped_and_requests_have_a_deadline() {
    use std::io::{BufRead, BufReader, Read};
    let d = Daemon::start(&["--vfs", "1"]);
    let base = threads(&d);
    let ctl = d.dir.join("control.sock");
    let mut held = Vec::new();
    let mut refused = 0;
    for _ in 0..40 {
        let s = UnixStream::connect(&ctl).unwrap();
        s.set_read_timeout(Some(Duration::from_millis(300)))
            .unwrap();
        let mut line = String::new();
        match BufReader::new(&s).read_line(&mut line) {
            Ok(n) if n > 0 => {
                assert!(line.contains("too many control connections"), "{line}");
                refused += 1;
            }
            _ => held.push(s),
        }
    }
    assert_eq!((held.len(), refused), (16, 24));
    assert!(
        threads(&d) <= base + 16,
        "{} threads for 16 clients",
        threads(&d)
    );
    drop(held);
    wait_for(
        Duration::from_secs(5),
        || d.ctl(&["show", "-j"]).contains("\"partitions\""),
        "control answers again",
    );
    // A byte every 2 s: cut off at the deadline, with a reason.
    let mut slow = UnixStream::connect(&ctl).unwrap();
    let t = std::time::Instant::now();
    let mut reply = String::new();
    slow.set_read_timeout(Some(Duration::from_millis(10)))
        .unwrap();
    for b in br#"{"version":2,"cmd":"show"}"#.iter() {
        if slow.write_all(&[*b]).is_err() {
            break;
        }
        std::thread::sleep(Duration::from_millis(2000));
        let mut buf = [0u8; 256];
        if let Ok(n) = slow.read(&mut buf) {
            reply.push_str(&String::from_utf8_lossy(&buf[..n]));
            break;
        }
    }
    assert!(reply.contains("not complete within"), "{reply:?}");
    assert!(t.elapsed() < Duration::from_secs(15));
}

/// One frontend per partition: a second one is refused at once and logged with its
/// credentials, the first keeps working, and once it leaves the next is taken.
#[test]
fn a_second_frontend_is_refused_and_the_first_keeps_the_partition() {
    use std::io::Read;
    let d = Daemon::start(&["--vfs", "1"]);
    let mut pf = Driver::start(&d.sock("pf"), plain(), 1);
    let mut vf0 = Driver::start(&d.sock("vf0"), plain(), 1);
    d.wait_state("vf0", "started");
    let mut second = UnixStream::connect(d.sock("vf0")).unwrap();
    second
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let mut buf = [0u8; 16];
    assert_eq!(
        second.read(&mut buf).unwrap(),
        0,
        "closed at once, not queued"
    );
    let log = d.log();
    let me = format!("uid {}", unsafe { libc::getuid() });
    assert!(
        log.lines()
            .any(|l| l.contains("vf0: frontend pid") && l.contains(&me) && l.contains("refused")),
        "{log}"
    );
    ping(&d, &mut pf, &mut vf0, 1);
    assert_eq!(d.partition("vf0")["connects"], 1);
    drop(vf0);
    d.wait_state("vf0", "waiting");
    let mut again = Driver::start(&d.sock("vf0"), plain(), 1);
    d.wait_state("vf0", "started");
    ping(&d, &mut pf, &mut again, 2);
}

/// Sockets get their modes whatever the umask: data sockets 0660 and control.sock 0600 by
/// default, or as configured; the framework's private sockets are in an owner-only directory.
#[test]
fn socket_modes_are_set_whatever_the_umask() {
    use std::os::unix::fs::PermissionsExt;
    let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    let d = Daemon::start(&["--vfs", "1"]);
    assert_eq!(mode(&d.sock("vf0")), 0o660);
    assert_eq!(mode(&d.sock("pf")), 0o660);
    assert_eq!(mode(&d.dir.join("control.sock")), 0o600);
    assert_eq!(mode(&d.dir.join(".internal")), 0o700);
    let d2 = Daemon::start(&[
        "--vfs",
        "1",
        "--socket-mode",
        "0666",
        "--control-mode",
        "0640",
        "--socket-group",
        "0",
    ]);
    assert_eq!(mode(&d2.sock("vf0")), 0o666);
    assert_eq!(mode(&d2.dir.join("control.sock")), 0o640);
}

/// A frontend owns the other end of its rings' eventfds. One that fills its RX call eventfd to
/// one short of the maximum (a blocking eventfd) would make the next signal block the writer for
/// ever, and that writer is the sending partition's thread. The daemon never blocks on a
/// frontend's eventfd: VF0 keeps sending after delivering to such a VF1.
#[test]
fn a_saturated_call_eventfd_never_blocks_another_partitions_sender() {
    use vmm_sys_util::eventfd::EventFd;
    let d = Daemon::start(&["--vfs", "2"]);
    let mut pf = Driver::start(&d.sock("pf"), plain(), 1);
    let mut vf0 = Driver::start(&d.sock("vf0"), plain(), 1);
    let mut vf1 = Driver::start(&d.sock("vf1"), plain(), 1);
    d.wait_state("vf1", "started");
    let call = EventFd::new(0).unwrap();
    call.write(0xffff_ffff_ffff_fffe).unwrap();
    vf1.fe.set_vring_call(0, &call).unwrap();
    vf1.post_rx(0, 4, 2048);
    for tag in 1..=3 {
        let f = test_frame(d.mac("vf1"), d.mac("vf0"), tag, 64);
        vf0.send(0, &f);
        assert_eq!(vf1.recv_n(0, 1)[0].1, f, "VF0 -> VF1, frame {tag}");
        vf0.wait_tx_done(0, 1);
    }
    pf.post_rx(0, 1, 2048);
    let f = test_frame(d.mac("pf"), d.mac("vf0"), 9, 64);
    vf0.send(0, &f);
    assert_eq!(
        pf.recv_n(0, 1)[0].1,
        f,
        "VF0 -> PF after the saturated call"
    );
    // The blocking flag was taken off the shared file description.
    // SAFETY: F_GETFL on an fd we own.
    let fl = unsafe { libc::fcntl(std::os::fd::AsRawFd::as_raw_fd(&call), libc::F_GETFL) };
    assert_ne!(fl & libc::O_NONBLOCK, 0, "call eventfd left blocking");
}

/// A ring descriptor that is not an eventfd (here a pipe) ends that connection with a clear
/// error; the partition takes the next frontend and the others never notice.
#[test]
fn a_vring_fd_that_is_not_an_eventfd_drops_only_that_connection() {
    let d = Daemon::start(&["--vfs", "1"]);
    let mut pf = Driver::start(&d.sock("pf"), plain(), 1);
    let vf0 = Driver::start(&d.sock("vf0"), plain(), 1);
    d.wait_state("vf0", "started");
    let mut fds = [0; 2];
    // SAFETY: pipe with a valid two-int array.
    assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0);
    // SAFETY: the pipe's fds are ours and wrapped once each (the frontend API takes an
    // EventFd; the type is only a holder of the descriptor here).
    let (rd, _wr) = unsafe {
        use std::os::fd::FromRawFd;
        (
            vmm_sys_util::eventfd::EventFd::from_raw_fd(fds[0]),
            std::fs::File::from_raw_fd(fds[1]),
        )
    };
    let _ = vf0.fe.set_vring_kick(1, &rd);
    wait_for(
        Duration::from_secs(5),
        || d.state("vf0") == "waiting",
        "vf0 dropped",
    );
    assert!(
        d.log().contains("not an eventfd"),
        "no clear error in the log:\n{}",
        d.log()
    );
    drop(vf0);
    let mut again = Driver::start(&d.sock("vf0"), plain(), 1);
    d.wait_state("vf0", "started");
    ping(&d, &mut pf, &mut again, 1);
}

/// A frontend that drains its own kick eventfd (as QEMU may when it takes a queue back, or a
/// hostile one on purpose) races the daemon's read of it. Losing that race used to end the vring
/// worker (vhost-user-backend treats the empty read as an error), leaving the partition's data
/// path dead until the frontend reconnected: now it is a kick with nothing in it.
#[test]
fn a_frontend_draining_its_own_kicks_never_stops_its_queue() {
    let d = Daemon::start(&["--vfs", "1"]);
    let mut pf = Driver::start(&d.sock("pf"), plain(), 1);
    let mut vf0 = Driver::start(&d.sock("vf0"), plain(), 1);
    d.wait_state("vf0", "started");
    // Reads at every delay from 0 to 60 us after the kick: some land between the daemon's
    // wakeup and its read.
    for i in 0..3000u64 {
        vf0.kick_and_drain(1, Duration::from_nanos(i % 61 * 1000));
    }
    pf.post_rx(0, 1, 2048);
    let f = test_frame(d.mac("pf"), d.mac("vf0"), 1, 64);
    vf0.send(0, &f);
    assert_eq!(pf.recv_n(0, 1)[0].1, f, "VF0's TX queue still served");
}
