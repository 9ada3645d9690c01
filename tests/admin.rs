//! Per-partition administration through the real `ctl` client, enforced in the data path:
//! link state, anti-spoof, port VLANs (tag, strip, isolation), MAC changes, and bad input.

mod common;

use common::*;
use std::process::Command;

const MAC_BCAST: [u8; 6] = [0xff; 6];

fn ctl_status(d: &Daemon, args: &[&str]) -> (i32, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_vhost-user-sriov-net"))
        .arg("ctl")
        .args(args)
        .arg("--socket-dir")
        .arg(&d.dir)
        .output()
        .unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    (out.status.code().unwrap_or(-1), text)
}

fn set(d: &Daemon, args: &[&str]) {
    let (code, text) = ctl_status(d, args);
    assert_eq!(code, 0, "ctl {args:?}: {text}");
}

fn four() -> (Daemon, Driver, Driver, Driver, Driver) {
    let d = Daemon::start(&["--vfs", "3"]);
    let pf = Driver::start(&d.sock("pf"), plain(), 1);
    let vf0 = Driver::start(&d.sock("vf0"), plain(), 1);
    let vf1 = Driver::start(&d.sock("vf1"), plain(), 1);
    let vf2 = Driver::start(&d.sock("vf2"), plain(), 1);
    for n in ["pf", "vf0", "vf1", "vf2"] {
        d.wait_state(n, "started");
    }
    (d, pf, vf0, vf1, vf2)
}

#[test]
fn state_disable_drops_both_ways_and_enable_restores() {
    let (d, mut pf, mut vf0, _vf1, _vf2) = four();
    vf0.post_rx(0, 16, 2048);
    pf.post_rx(0, 16, 2048);
    set(&d, &["vf", "0", "state", "disable"]);
    pf.send(0, &test_frame(d.mac("vf0"), d.mac("pf"), 1, 60));
    vf0.send(0, &test_frame(d.mac("pf"), d.mac("vf0"), 2, 60));
    vf0.send(0, &test_frame(MAC_BCAST, d.mac("vf0"), 3, 60));
    pf.wait_tx_done(0, 1);
    vf0.wait_tx_done(0, 2);
    assert_eq!(
        d.counter("vf0", "drop_link_down"),
        3,
        "1 towards it, 2 from it"
    );
    assert!(vf0.recv(0).is_empty() && pf.recv(0).is_empty());
    assert_eq!(d.partition("vf0")["link"], "down");
    set(&d, &["vf", "0", "state", "enable"]);
    let f = test_frame(d.mac("vf0"), d.mac("pf"), 4, 60);
    pf.send(0, &f);
    assert_eq!(vf0.recv_n(0, 1)[0].1, f);
    let g = test_frame(d.mac("pf"), d.mac("vf0"), 5, 60);
    vf0.send(0, &g);
    assert_eq!(pf.recv_n(0, 1)[0].1, g);
}

#[test]
fn spoofchk_off_lets_another_source_through_and_on_stops_it() {
    let (d, mut pf, mut vf0, _vf1, _vf2) = four();
    pf.post_rx(0, 16, 2048);
    let other = [0x02, 0xaa, 0, 0, 0, 1];
    let f = test_frame(d.mac("pf"), other, 1, 60);
    vf0.send(0, &f);
    vf0.wait_tx_done(0, 1);
    assert_eq!(d.counter("vf0", "drop_spoofed_source"), 1);
    set(&d, &["vf", "0", "spoofchk", "off"]);
    vf0.send(0, &f);
    assert_eq!(pf.recv_n(0, 1)[0].1, f);
    set(&d, &["vf", "0", "spoofchk", "on"]);
    vf0.send(0, &f);
    vf0.wait_tx_done(0, 2);
    assert_eq!(d.counter("vf0", "drop_spoofed_source"), 2);
}

/// VLAN 10: vf0 and vf1; VLAN 20: vf2; the PF is a trunk. Tags are pushed towards the trunk and
/// stripped into port-VLAN partitions, byte for byte; no VLAN hears another's broadcast.
#[test]
fn port_vlans_tag_strip_and_isolate() {
    let (d, mut pf, mut vf0, mut vf1, mut vf2) = four();
    for drv in [&mut pf, &mut vf0, &mut vf1, &mut vf2] {
        drv.post_rx(0, 32, 2048);
    }
    set(&d, &["vf", "0", "vlan", "10", "qos", "3"]);
    set(&d, &["vf", "1", "vlan", "10"]);
    set(&d, &["vf", "2", "vlan", "20", "proto", "802.1ad"]);
    // Same VLAN: untagged in, untagged out.
    let f = test_frame(d.mac("vf1"), d.mac("vf0"), 1, 100);
    vf0.send(0, &f);
    assert_eq!(vf1.recv_n(0, 1)[0].1, f);
    // Another VLAN's unicast is dropped and counted on the sender.
    vf0.send(0, &test_frame(d.mac("vf2"), d.mac("vf0"), 2, 100));
    // A broadcast reaches its VLAN and the trunk, tagged there with VLAN 10, priority 3.
    let b = test_frame(MAC_BCAST, d.mac("vf0"), 3, 100);
    vf0.send(0, &b);
    assert_eq!(vf1.recv_n(0, 1)[0].1, b);
    let mut tagged = b.clone();
    tagged.splice(12..12, [0x81, 0x00, 0x60, 0x0a]);
    assert_eq!(pf.recv_n(0, 1)[0].1, tagged);
    // The trunk reaches VLAN 20 with an 802.1ad tag, stripped on the way in.
    let mut from_pf = test_frame(d.mac("vf2"), d.mac("pf"), 4, 100);
    let plain = from_pf.clone();
    from_pf.splice(12..12, [0x88, 0xa8, 0x00, 20]);
    pf.send(0, &from_pf);
    assert_eq!(vf2.recv_n(0, 1)[0].1, plain);
    // A port-VLAN partition may not send tagged frames; an untagged trunk frame reaches no
    // port-VLAN partition.
    let mut own_tag = test_frame(d.mac("vf1"), d.mac("vf0"), 5, 100);
    own_tag.splice(12..12, [0x81, 0x00, 0x00, 10]);
    vf0.send(0, &own_tag);
    pf.send(0, &test_frame(d.mac("vf0"), d.mac("pf"), 6, 100));
    vf0.wait_tx_done(0, 4);
    pf.wait_tx_done(0, 2);
    assert_eq!(d.counter("vf0", "drop_vlan"), 2);
    assert_eq!(d.counter("pf", "drop_vlan"), 1);
    std::thread::sleep(std::time::Duration::from_millis(100));
    assert!(vf2.recv(0).is_empty(), "VLAN 20 heard nothing of VLAN 10");
    assert!(vf0.recv(0).is_empty() && vf1.recv(0).is_empty());
    // vlan 0 clears: back to a trunk.
    set(&d, &["vf", "2", "vlan", "0"]);
    let u = test_frame(d.mac("vf2"), d.mac("pf"), 7, 100);
    pf.send(0, &u);
    assert_eq!(vf2.recv_n(0, 1)[0].1, u);
    let show = d.ctl(&["show", "vf0"]);
    assert!(show.contains("vlan 10, qos 3, spoof checking on"), "{show}");
}

#[test]
fn a_runtime_mac_takes_effect_in_the_switch_at_once() {
    let (d, mut pf, mut vf0, _vf1, _vf2) = four();
    pf.post_rx(0, 8, 2048);
    vf0.post_rx(0, 8, 2048);
    let old = d.mac("vf0");
    let new = [0x02, 0x12, 0x34, 0, 0, 9];
    set(&d, &["vf", "0", "mac", "02:12:34:00:00:09"]);
    assert_eq!(d.mac("vf0"), new);
    assert_eq!(d.partition("vf0")["started_mac"], "02:53:52:00:00:01");
    let f = test_frame(new, d.mac("pf"), 1, 60);
    pf.send(0, &f);
    assert_eq!(vf0.recv_n(0, 1)[0].1, f);
    pf.send(0, &test_frame(old, d.mac("pf"), 2, 60));
    pf.wait_tx_done(0, 2);
    assert_eq!(d.counter("pf", "drop_unknown_destination"), 1);
    // The guest still sends with the old MAC: anti-spoof follows the admin MAC.
    vf0.send(0, &test_frame(d.mac("pf"), old, 3, 60));
    vf0.wait_tx_done(0, 1);
    assert_eq!(d.counter("vf0", "drop_spoofed_source"), 1);
}

#[test]
fn bad_admin_input_is_one_error_exit_2_and_changes_nothing() {
    let d = Daemon::start(&["--vfs", "2"]);
    let before = d.show();
    for (args, needle) in [
        (vec!["vf", "2", "vlan", "5"], "no partition named \"vf2\""),
        (vec!["vf", "0", "mac", "01:00:00:00:00:01"], "multicast"),
        (vec!["vf", "0", "mac", "nonsense"], "invalid MAC"),
        (vec!["vf", "0", "mac", "02:53:52:00:00:00"], "already pf's"),
        (vec!["vf", "0", "vlan", "4096"], "out of range"),
        (vec!["vf", "0", "vlan", "5", "qos", "8"], "qos 8"),
        (vec!["vf", "0", "qos", "2"], "needs a VLAN"),
        (vec!["vf", "0", "vlan", "5", "proto", "802.1x"], "802.1x"),
        (
            vec!["vf", "0", "max_tx_rate", "10", "min_tx_rate", "20"],
            "below min_tx_rate",
        ),
        (vec!["vf", "0", "state", "up"], "state"),
        (vec!["vf", "0", "spoofchk", "maybe"], "on or off"),
        (vec!["pf", "colour", "red"], "unknown setting"),
    ] {
        let (code, text) = ctl_status(&d, &args);
        assert_eq!(code, 2, "{args:?}: {text}");
        assert!(text.contains(needle), "{args:?}: {text}");
        assert_eq!(text.trim().lines().count(), 1, "one line: {text}");
    }
    let mut after = d.show();
    // Only the admin view is compared: counters do not move without traffic.
    after["partitions"]
        .as_array_mut()
        .unwrap()
        .iter_mut()
        .zip(before["partitions"].as_array().unwrap())
        .for_each(|(a, b)| assert_eq!(a, b));
    // --socket-dir anywhere on the line, and --config naming the daemon's file.
    let cfg = d.dir.join("ctl.toml");
    std::fs::write(&cfg, format!("socket_dir = {:?}\n", d.dir)).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_vhost-user-sriov-net"))
        .args(["ctl", "--config"])
        .arg(&cfg)
        .args(["vf", "1", "trust", "on"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    assert_eq!(d.partition("vf1")["trust"], true);
}

#[test]
fn config_file_admin_settings_apply_at_start_and_dump_config_reproduces_them() {
    let cfg = std::env::temp_dir().join(format!("sriov-net-admin-{}.toml", std::process::id()));
    std::fs::write(
        &cfg,
        "vfs = 2\n[vf.0]\nvlan = 10\nqos = 2\nspoofchk = false\nmax_tx_rate = 100\n[vf.1]\nstate = \"disable\"\ntrust = true\n",
    )
    .unwrap();
    let d = Daemon::start(&["--config", cfg.to_str().unwrap()]);
    let vf0 = d.partition("vf0");
    assert_eq!(
        (
            vf0["vlan"].as_u64(),
            vf0["qos"].as_u64(),
            vf0["max_tx_rate"].as_u64()
        ),
        (Some(10), Some(2), Some(100))
    );
    assert_eq!(vf0["spoofchk"], false);
    assert_eq!(d.partition("vf1")["link"], "down");
    let dump = d.ctl(&["dump-config"]);
    assert!(
        dump.contains("vlan = 10") && dump.contains("state = \"disable\""),
        "{dump}"
    );
    // Loading the dump gives the same settings.
    let again = d.dir.join("again.toml");
    std::fs::write(&again, &dump).unwrap();
    let d2 = Daemon::start(&["--config", again.to_str().unwrap()]);
    for n in ["pf", "vf0", "vf1"] {
        for k in [
            "mac",
            "vlan",
            "qos",
            "spoofchk",
            "trust",
            "link_state",
            "max_tx_rate",
        ] {
            assert_eq!(d2.partition(n)[k], d.partition(n)[k], "{n}.{k}");
        }
    }
    // A bad admin key in the file is refused at start, naming the field.
    std::fs::write(&cfg, "vfs = 2\n[vf.1]\nvlan = 9999\n").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_vhost-user-sriov-net"))
        .args(["--config", cfg.to_str().unwrap(), "--socket-dir"])
        .arg(d.dir.join("c"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("vf.1: vlan 9999 is out of range"));
    let _ = std::fs::remove_file(&cfg);
}

/// `max_tx_rate` holds frames in the ring and lets them go at the set rate: within 10% over
/// three seconds of 1514-byte frames, none dropped by the sender. Event-driven and busy-poll.
#[test]
fn max_tx_rate_paces_the_sender_within_10_percent() {
    for args in [vec!["--vfs", "1"], vec!["--vfs", "1", "--poll-us", "50"]] {
        let d = Daemon::start(&args);
        let _pf = Driver::start(&d.sock("pf"), plain(), 1);
        let mut vf0 = Driver::start(&d.sock("vf0"), plain(), 1);
        d.wait_state("vf0", "started");
        set(&d, &["vf", "0", "max_tx_rate", "20"]);
        let f = test_frame(d.mac("pf"), d.mac("vf0"), 1, 1500);
        let start_bytes = d.counter("vf0", "tx_bytes");
        let t0 = std::time::Instant::now();
        let mut inflight = 0usize;
        while t0.elapsed() < std::time::Duration::from_secs(3) {
            inflight -= vf0.take_used(1).len();
            while inflight < 200 {
                vf0.send(0, &f);
                inflight += 1;
            }
            std::thread::sleep(std::time::Duration::from_millis(2));
        }
        let secs = t0.elapsed().as_secs_f64();
        let bits = (d.counter("vf0", "tx_bytes") - start_bytes) as f64 * 8.0;
        let mbps = bits / secs / 1e6;
        assert!(
            (18.0..=22.0).contains(&mbps),
            "{args:?}: {mbps:.2} Mbit/s for 20"
        );
        assert!(inflight > 100, "frames were held in the ring, not dropped");
        let p = d.partition("vf0");
        let drops: u64 = p["counters"]
            .as_object()
            .unwrap()
            .iter()
            .filter(|(k, _)| k.starts_with("drop_") && *k != "drop_no_rx_buffer")
            .map(|(_, v)| v.as_u64().unwrap())
            .sum();
        assert_eq!(drops, 0, "{args:?}: {p}");
        // Lifting the limit lets the held frames go at once.
        set(&d, &["vf", "0", "max_tx_rate", "0"]);
        let t = std::time::Instant::now();
        while inflight > 0 {
            inflight -= vf0.take_used(1).len();
            assert!(
                t.elapsed() < std::time::Duration::from_secs(5),
                "{inflight} left"
            );
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
    }
}
