//! The real daemon with vIOMMU frontends: drivers that negotiate VIRTIO_F_ACCESS_PLATFORM, map
//! their memory with IOTLB messages at IOVAs far from their guest addresses, and put IOVAs in
//! rings and descriptors, as a guest behind QEMU's intel-iommu does.

mod common;

use std::time::Duration;

use common::*;

/// IOVAs each partition's memory is mapped at (its guest addresses start at 0).
const PF_IOVA: u64 = 0x40_0000_0000;
const VF_IOVA: u64 = 0x7_0000_0000;
/// A guest address beyond every test driver's memory: its IOVA is never mapped.
const NOWHERE: u64 = 0x1000_0000;

fn two() -> (Daemon, Driver, Driver) {
    let d = Daemon::start(&["--vfs", "1"]);
    let mut pf = Driver::connect_iommu(&d.sock("pf"), plain(), 1, PF_IOVA);
    pf.start_rings();
    let mut vf0 = Driver::connect_iommu(&d.sock("vf0"), plain(), 1, VF_IOVA);
    vf0.start_rings();
    d.wait_state("pf", "started");
    d.wait_state("vf0", "started");
    (d, pf, vf0)
}

fn drops(d: &Daemon, name: &str) -> u64 {
    d.partition(name)["counters"]
        .as_object()
        .unwrap()
        .iter()
        .filter(|(k, _)| k.starts_with("drop_"))
        .map(|(_, v)| v.as_u64().unwrap())
        .sum()
}

fn wait_counter(d: &Daemon, name: &str, key: &str, want: u64) {
    wait_for(
        Duration::from_secs(5),
        || d.counter(name, key) == want,
        &format!("{name} {key} = {want}"),
    );
}

#[test]
fn frames_cross_partitions_through_the_iotlb_byte_exact() {
    let (d, mut pf, mut vf0) = two();
    let (m_pf, m0) = (d.mac("pf"), d.mac("vf0"));
    pf.post_rx(0, 16, 2048);
    vf0.post_rx(0, 16, 2048);
    // A chain of three descriptors, each an IOVA.
    let f1 = test_frame(m0, m_pf, 1, 100);
    pf.send_split(0, &[0; NET_HDR_LEN], &f1, &[NET_HDR_LEN, 5]);
    assert_eq!(vf0.recv_n(0, 1)[0].1, f1);
    let f2 = test_frame(m_pf, m0, 2, 1500);
    vf0.send(0, &f2);
    assert_eq!(pf.recv_n(0, 1)[0].1, f2);
    // Mergeable RX over small buffers, written through the receiver's IOTLB.
    vf0.post_rx(0, 8, 256);
    let f3 = test_frame(m0, m_pf, 3, 1000);
    for _ in 0..15 {
        // Use up the large buffers first.
        pf.send(0, &test_frame(m0, m_pf, 4, 60));
    }
    assert_eq!(vf0.recv_n(0, 15).len(), 15);
    pf.send(0, &f3);
    let got = vf0.recv_n(0, 1);
    assert_eq!(got[0].1, f3);
    assert!(got[0].0.num_buffers > 1, "{:?}", got[0].0);
    assert_eq!((drops(&d, "pf"), drops(&d, "vf0")), (0, 0));
    // Everything was mapped beforehand: nothing was asked for.
    assert_eq!(pf.read_miss(Duration::from_millis(50)), None);
    assert_eq!(vf0.read_miss(Duration::from_millis(50)), None);
}

#[test]
fn an_unmapped_tx_buffer_waits_asked_for_and_is_given_up_on_that_partition_only() {
    let (d, mut pf, mut vf0) = two();
    pf.post_rx(0, 4, 2048);
    vf0.post_rx(0, 4, 2048);
    vf0.post_raw(
        1,
        &[RawDesc {
            addr: NOWHERE,
            len: 100,
            flags: 0,
            next: 0,
        }],
    );
    assert_eq!(
        vf0.read_miss(Duration::from_secs(2)),
        Some((VF_IOVA + NOWHERE, 1)),
        "a read MISS for the buffer's IOVA"
    );
    // The chain waits in the ring for the entry (QEMU is asked again while it waits).
    std::thread::sleep(Duration::from_millis(300));
    assert!(vf0.take_used(1).is_empty(), "not completed while it waits");
    assert_eq!(drops(&d, "vf0"), 0);
    // QEMU never answers (the guest never mapped it): given up on as malformed.
    assert_eq!(vf0.wait_tx_done(0, 1).len(), 1, "completed in the end");
    wait_counter(&d, "vf0", "drop_malformed_chain", 1);
    assert_eq!(drops(&d, "pf"), 0);
    assert_eq!(pf.read_miss(Duration::from_millis(50)), None);
    // The queue goes on: the next frame, mapped, crosses.
    let f = test_frame(d.mac("pf"), d.mac("vf0"), 9, 80);
    vf0.send(0, &f);
    assert_eq!(pf.recv_n(0, 1)[0].1, f);
    assert!(d.log().contains("no IOTLB entry for IOVA"), "{}", d.log());
}

#[test]
fn a_frame_for_an_unmapped_rx_buffer_waits_for_the_entry_and_is_delivered() {
    let (d, mut pf, mut vf0) = two();
    let (m_pf, m0) = (d.mac("pf"), d.mac("vf0"));
    vf0.post_rx(0, 1, 2048);
    let f = test_frame(m0, m_pf, 1, 64);
    pf.send(0, &f);
    assert_eq!(vf0.recv_n(0, 1)[0].1, f);
    // The page of VF0's next RX buffer is unmapped (the guest's lazy flush); two mapped ones
    // are posted after it.
    let gpa = vf0.slot_addr(0, vf0.next_free(0));
    let iova = vf0.iova_of(gpa);
    vf0.iotlb_invalidate(iova, 0x1000);
    vf0.post_rx(0, 3, 2048);
    let frames: Vec<Vec<u8>> = (2..5)
        .map(|i| test_frame(m0, m_pf, i, 100 + i as usize))
        .collect();
    for f in &frames {
        pf.send(0, f);
    }
    pf.wait_tx_done(0, 3);
    assert_eq!(vf0.read_miss(Duration::from_secs(2)), Some((iova, 2)));
    std::thread::sleep(Duration::from_millis(100));
    assert!(vf0.recv(0).is_empty(), "nothing written through no entry");
    // QEMU's answer: the frames that waited (the later ones behind the first, though their
    // buffers were mapped) go out in order, byte-exact; none was lost.
    vf0.iotlb_update(iova, 0x1000, vf0.va_of(gpa), 3);
    let got: Vec<Vec<u8>> = vf0.recv_n(0, 3).into_iter().map(|(_, b)| b).collect();
    assert_eq!(got, frames);
    assert_eq!((drops(&d, "pf"), drops(&d, "vf0")), (0, 0));
    wait_counter(&d, "vf0", "rx_packets", 4);
}

#[test]
fn a_read_only_rx_buffer_is_returned_empty_and_asked_for_with_write_permission() {
    let (d, mut pf, mut vf0) = two();
    let (m_pf, m0) = (d.mac("pf"), d.mac("vf0"));
    // VF0's next RX buffer is mapped read-only for the device.
    let id = vf0.next_free(0);
    let gpa = vf0.slot_addr(0, id);
    let iova = vf0.iova_of(gpa);
    vf0.iotlb_update(iova, 0x1000, vf0.va_of(gpa), 1);
    vf0.post_rx(0, 1, 2048);
    pf.send(0, &test_frame(m0, m_pf, 1, 64));
    pf.wait_tx_done(0, 1);
    wait_counter(&d, "vf0", "drop_malformed_chain", 1);
    assert_eq!(
        vf0.take_used(0),
        vec![(id, 0)],
        "the buffer came back empty"
    );
    assert_eq!(vf0.read_miss(Duration::from_secs(2)), Some((iova, 2)));
    // The sender sees a destination that could not take the frame, as with any receiver-side
    // ring fault; its own chain was fine.
    assert_eq!(d.counter("pf", "drop_malformed_chain"), 0);
    assert_eq!(d.counter("pf", "drop_destination_down"), 1);
    assert_eq!(pf.read_miss(Duration::from_millis(50)), None);
    // Mapped writable again (QEMU's answer), the same buffer works.
    vf0.iotlb_update(iova, 0x1000, vf0.va_of(gpa), 3);
    vf0.post_rx(0, 1, 2048);
    let f = test_frame(m0, m_pf, 2, 64);
    pf.send(0, &f);
    assert_eq!(vf0.recv_n(0, 1)[0].1, f);
}

#[test]
fn after_an_invalidate_the_old_mapping_is_not_used() {
    let (d, mut pf, mut vf0) = two();
    let (m_pf, m0) = (d.mac("pf"), d.mac("vf0"));
    vf0.post_rx(0, 8, 2048);
    let f = test_frame(m0, m_pf, 1, 64);
    pf.send(0, &f);
    assert_eq!(vf0.recv_n(0, 1)[0].1, f);
    pf.wait_tx_done(0, 1);
    // The page of PF's next TX buffer is unmapped; the ack means the daemon is done with it.
    let id = pf.next_free(1);
    let gpa = pf.slot_addr(1, id);
    pf.iotlb_invalidate(pf.iova_of(gpa), 0x1000);
    let f = test_frame(m0, m_pf, 2, 64);
    pf.send(0, &f);
    assert_eq!(
        pf.read_miss(Duration::from_secs(2)),
        Some((pf.iova_of(gpa), 1))
    );
    std::thread::sleep(Duration::from_millis(100));
    assert!(
        vf0.recv(0).is_empty(),
        "nothing arrived from the unmapped buffer"
    );
    assert!(pf.take_used(1).is_empty(), "the chain waits in the ring");
    // Answering the miss (mapped again, now for another guest page with the same bytes would
    // also do): the chain that waited goes out, nothing was lost.
    pf.iotlb_update(pf.iova_of(gpa), 0x1000, pf.va_of(gpa), 3);
    assert_eq!(vf0.recv_n(0, 1)[0].1, f);
    pf.wait_tx_done(0, 1);
    assert_eq!((drops(&d, "pf"), drops(&d, "vf0")), (0, 0));
}

/// The daemon's CPU time so far (every thread, from /proc/PID/task/*/schedstat), in ns.
fn daemon_cpu_ns(pid: u32) -> u64 {
    let tasks = std::fs::read_dir(format!("/proc/{pid}/task")).unwrap();
    tasks
        .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("schedstat")).ok())
        .filter_map(|s| s.split_whitespace().next()?.parse::<u64>().ok())
        .sum()
}

fn env_or<T: std::str::FromStr>(key: &str, default: T) -> T {
    std::env::var(key)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// What the IOTLB costs the daemon per frame. One daemon, two pairs of partitions in event-driven
/// mode: one pair's drivers give guest-physical addresses (the anchor), the other's give IOVAs
/// for rings and buffers, every page mapped beforehand (as a driver with static DMA mappings, a
/// DPDK guest or vfio user, does; a Linux guest's per-buffer mappings add MISS round trips to
/// QEMU on top, not measured here). Each burst: the receiver posts 128 buffers, the sender offers
/// 128 frames and kicks once, both wait for completion. The figure is the daemon's CPU time
/// (all threads) per frame; variants alternate round by round. Prints min / median / max per
/// variant and the ratio of medians. A benchmark, not a test: `scripts/bench.sh iotlb` runs it
/// (IOTLB_ROUNDS, IOTLB_BURSTS, IOTLB_SIZES: frame sizes with the Ethernet header, at most 1514
/// at the default MTU).
#[test]
#[ignore = "benchmark: scripts/bench.sh iotlb"]
fn bench_iotlb_cost_per_frame() {
    const BURST: usize = 128;
    let rounds: usize = env_or("IOTLB_ROUNDS", 6);
    let bursts: usize = env_or("IOTLB_BURSTS", 1000);
    let sizes: Vec<usize> = std::env::var("IOTLB_SIZES")
        .unwrap_or_else(|_| "64 1514".into())
        .split_whitespace()
        .map(|s| s.parse().expect("IOTLB_SIZES: frame sizes in bytes"))
        .collect();
    let d = Daemon::start(&["--vfs", "3"]);
    let mut pairs = [
        (
            Driver::start(&d.sock("pf"), plain(), 1),
            Driver::start(&d.sock("vf0"), plain(), 1),
            d.mac("vf0"),
            d.mac("pf"),
        ),
        {
            let mut a = Driver::connect_iommu(&d.sock("vf1"), plain(), 1, PF_IOVA);
            a.start_rings();
            let mut b = Driver::connect_iommu(&d.sock("vf2"), plain(), 1, VF_IOVA);
            b.start_rings();
            (a, b, d.mac("vf2"), d.mac("vf1"))
        },
    ];
    for n in ["pf", "vf0", "vf1", "vf2"] {
        d.wait_state(n, "started");
    }
    let names = ["guest-physical", "IOVA (IOTLB)"];
    println!("IOTLB cost: daemon CPU ns per frame, {rounds} rounds x {bursts} bursts of {BURST}");
    println!("| size | variant | min | median | max | median / anchor |");
    println!("|---|---|---|---|---|---|");
    for size in sizes {
        let mut ns: [Vec<f64>; 2] = [Vec::new(), Vec::new()];
        for r in 0..rounds {
            for k in 0..2 {
                let v = (r + k) % 2;
                let (tx, rx, dst, src) = &mut pairs[v];
                let frames: Vec<Vec<u8>> = (0..BURST)
                    .map(|i| test_frame(*dst, *src, i as u8, size.saturating_sub(14)))
                    .collect();
                let c0 = daemon_cpu_ns(d.pid());
                for b in 0..bursts {
                    rx.post_rx(0, BURST, 2048);
                    tx.send_burst(0, &frames);
                    tx.wait_tx_done(0, BURST);
                    let got = rx.recv_n(0, BURST);
                    if b == 0 {
                        let bytes: Vec<Vec<u8>> = got.into_iter().map(|(_, f)| f).collect();
                        assert_eq!(bytes, frames, "{} delivered byte-exact", names[v]);
                    }
                }
                let c1 = daemon_cpu_ns(d.pid());
                ns[v].push((c1 - c0) as f64 / (bursts * BURST) as f64);
            }
        }
        let median = |v: &mut Vec<f64>| {
            v.sort_by(|a, b| a.total_cmp(b));
            v[v.len() / 2]
        };
        let anchor = median(&mut ns[0]);
        for (v, name) in names.iter().enumerate() {
            let m = median(&mut ns[v]);
            println!(
                "| {size} | {name} | {:.0} | {m:.0} | {:.0} | {:.2} |",
                ns[v][0],
                ns[v][ns[v].len() - 1],
                m / anchor
            );
        }
    }
    for n in ["pf", "vf0", "vf1", "vf2"] {
        assert_eq!(drops(&d, n), 0, "{n} dropped frames");
    }
    // Everything was mapped beforehand: the IOTLB pair never had to ask.
    assert_eq!(pairs[1].0.read_miss(Duration::from_millis(50)), None);
}

/// An invalidation that covers a running ring's own pages stops that ring: nothing of it is
/// touched through the old entries, its entries are asked for, and once they come back with the
/// same translation it runs again. A TX ring's chains wait in it; frames for an RX ring are
/// kept and delivered in order. Nothing is lost.
#[test]
fn an_invalidated_running_ring_stops_until_its_entries_come_back() {
    let (d, mut pf, mut vf0) = two();
    let (m_pf, m0) = (d.mac("pf"), d.mac("vf0"));
    pf.post_rx(0, 8, 2048);
    vf0.post_rx(0, 8, 2048);
    let f = test_frame(m_pf, m0, 1, 64);
    vf0.send(0, &f);
    assert_eq!(pf.recv_n(0, 1)[0].1, f);
    vf0.wait_tx_done(0, 1);

    // VF0's TX ring: a chain posted while its pages have no entry waits.
    let tx = vf0.ring_gpa(1);
    vf0.iotlb_invalidate(vf0.iova_of(tx), 0x10000);
    assert_eq!(
        vf0.read_miss(Duration::from_secs(2)),
        Some((vf0.iova_of(tx), 1)),
        "the descriptor table asked for"
    );
    let f = test_frame(m_pf, m0, 2, 80);
    vf0.send(0, &f);
    std::thread::sleep(Duration::from_millis(200));
    assert!(vf0.take_used(1).is_empty(), "completed through no entry");
    assert!(pf.recv(0).is_empty(), "sent through no entry");
    vf0.iotlb_update(vf0.iova_of(tx), 0x10000, vf0.va_of(tx), 3);
    assert_eq!(pf.recv_n(0, 1)[0].1, f, "sent once the entries are back");
    vf0.wait_tx_done(0, 1);

    // VF0's RX ring: frames for it are kept meanwhile, then delivered in order.
    let rx = vf0.ring_gpa(0);
    vf0.iotlb_invalidate(vf0.iova_of(rx), 0x10000);
    let frames: Vec<Vec<u8>> = (3..6)
        .map(|i| test_frame(m0, m_pf, i, 90 + i as usize))
        .collect();
    for f in &frames {
        pf.send(0, f);
    }
    pf.wait_tx_done(0, 3);
    assert!(vf0.read_miss(Duration::from_secs(2)).is_some());
    std::thread::sleep(Duration::from_millis(100));
    assert_eq!(vf0.used_idx(0), 0, "written through no entry");
    vf0.iotlb_update(vf0.iova_of(rx), 0x10000, vf0.va_of(rx), 3);
    let got: Vec<Vec<u8>> = vf0.recv_n(0, 3).into_iter().map(|(_, b)| b).collect();
    assert_eq!(got, frames);
    assert_eq!((drops(&d, "pf"), drops(&d, "vf0")), (0, 0));
}

/// A running ring whose IOVAs lead elsewhere after an invalidation (a driver moving a live
/// ring) stays stopped, logged, until its driver sets it up again; the other partition and the
/// other direction go on.
#[test]
fn a_running_ring_remapped_elsewhere_stays_stopped_until_set_up_again() {
    let (d, mut pf, mut vf0) = two();
    let (m_pf, m0) = (d.mac("pf"), d.mac("vf0"));
    pf.post_rx(0, 8, 2048);
    vf0.post_rx(0, 8, 2048);
    let tx = vf0.ring_gpa(1);
    vf0.iotlb_invalidate(vf0.iova_of(tx), 0x10000);
    assert!(vf0.read_miss(Duration::from_secs(2)).is_some());
    // The same IOVAs now lead to other guest memory (queue 1's buffers).
    vf0.iotlb_update(vf0.iova_of(tx), 0x10000, vf0.va_of(tx + 0x10000), 3);
    wait_for(
        Duration::from_secs(5),
        || d.log().contains("ring 1 stopped until it is set up again"),
        "the stop logged",
    );
    vf0.send(0, &test_frame(m_pf, m0, 1, 64));
    std::thread::sleep(Duration::from_millis(200));
    assert!(pf.recv(0).is_empty(), "sent from a moved ring");
    // PF -> VF0 still works.
    let f = test_frame(m0, m_pf, 2, 64);
    pf.send(0, &f);
    assert_eq!(vf0.recv_n(0, 1)[0].1, f);
    // Set up again (as after a driver reset): everything runs.
    vf0.stop_rings();
    vf0.map_all();
    vf0.start_rings();
    d.wait_state("vf0", "started");
    pf.post_rx(0, 1, 2048);
    let f = test_frame(m_pf, m0, 3, 64);
    vf0.send(0, &f);
    assert_eq!(pf.recv_n(0, 1)[0].1, f);
}
