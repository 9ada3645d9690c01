//! The daemon under a service manager: sd_notify readiness, SIGHUP reloads, socket activation
//! across a restart, and the loud warning when a restart changes the MAC layout.

mod common;

use common::*;
use std::os::fd::AsRawFd;
use std::os::unix::net::{UnixDatagram, UnixListener};
use std::os::unix::process::CommandExt;
use std::process::Command;
use std::time::Duration;

fn daemon_cmd(dir: &std::path::Path, extra: &[&str]) -> Command {
    let mut c = Command::new(Daemon::bin());
    c.arg("--socket-dir")
        .arg(dir)
        .arg("--ready-file")
        .arg(dir.join("ready"))
        .args(extra);
    c
}

fn notes(sock: &UnixDatagram, want: &str) -> Vec<String> {
    let mut got = Vec::new();
    let mut buf = [0u8; 512];
    let t = std::time::Instant::now();
    while !got.iter().any(|g: &String| g.contains(want)) {
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "no {want}: got {got:?}"
        );
        if let Ok(n) = sock.recv(&mut buf) {
            got.push(String::from_utf8_lossy(&buf[..n]).to_string());
        }
    }
    got
}

#[test]
fn notify_ready_reload_on_sighup_and_stopping() {
    let dir = Daemon::fresh_dir("notify");
    let nsock = dir.join("notify.sock");
    let n = UnixDatagram::bind(&nsock).unwrap();
    n.set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    let cfg = dir.join("d.toml");
    std::fs::write(&cfg, "vfs = 2\n").unwrap();
    let mut cmd = daemon_cmd(&dir, &["--config", cfg.to_str().unwrap()]);
    cmd.env("NOTIFY_SOCKET", &nsock);
    let mut d = Daemon::start_cmd(dir.clone(), cmd);
    notes(&n, "READY=1");
    // The file changes: admin settings apply at once, the MTU waits for a restart.
    std::fs::write(
        &cfg,
        "vfs = 2\nmtu = 9000\n[vf.1]\nvlan = 7\nstate = \"disable\"\n",
    )
    .unwrap();
    d.signal(libc::SIGHUP);
    let got = notes(&n, "READY=1");
    assert!(got.iter().any(|g| g.contains("RELOADING=1")), "{got:?}");
    let vf1 = d.partition("vf1");
    assert_eq!(
        (vf1["vlan"].as_u64(), vf1["link"].as_str()),
        (Some(7), Some("down"))
    );
    assert_eq!(d.partition("vf1")["mtu"], 1500);
    let log = d.log();
    let line = log
        .lines()
        .find(|l| l.contains("only a restart applies"))
        .unwrap();
    assert!(line.contains("vf0.mtu 1500 -> 9000"), "{line}");
    // A broken file changes nothing and the daemon stays up.
    std::fs::write(&cfg, "vfs = 2\n[vf.1]\nvlan = 99999\n").unwrap();
    d.signal(libc::SIGHUP);
    notes(&n, "READY=1");
    assert_eq!(d.partition("vf1")["vlan"], 7);
    assert!(d.alive());
    d.signal(libc::SIGTERM);
    notes(&n, "STOPPING=1");
    assert_eq!(d.wait_exit(), Some(0));
    assert!(d.log().contains("SIGTERM: shutting down"));
}

/// systemd holds the listening sockets (socket activation): they outlive a daemon restart, a
/// frontend that connects while no daemon runs waits in the backlog and is served by the next.
#[test]
fn socket_activation_keeps_the_sockets_across_a_restart() {
    let dir = Daemon::fresh_dir("activation");
    let names = ["pf.sock", "vf0.sock", "control.sock"];
    let held: Vec<UnixListener> = names
        .iter()
        .map(|n| UnixListener::bind(dir.join(n)).unwrap())
        .collect();
    let start = |held: &[UnixListener]| {
        let fds: Vec<i32> = held.iter().map(|l| l.as_raw_fd()).collect();
        // LISTEN_PID must be the daemon's own pid: a shell sets it and execs the daemon.
        let mut cmd = Command::new("sh");
        cmd.arg("-c")
            .arg(r#"LISTEN_PID=$$ LISTEN_FDS=3 exec "$0" "$@""#)
            .arg(Daemon::bin())
            .args(["--vfs", "1", "--socket-dir"])
            .arg(&dir)
            .arg("--ready-file")
            .arg(dir.join("ready"));
        // SAFETY: only dup2 between fork and exec.
        unsafe {
            cmd.pre_exec(move || {
                // Out of the way first (a held fd may already be 3), then onto 3, 4, 5 without
                // close-on-exec.
                let mut tmp = [0i32; 3];
                for (i, fd) in fds.iter().enumerate() {
                    tmp[i] = libc::fcntl(*fd, libc::F_DUPFD_CLOEXEC, 100);
                    if tmp[i] < 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                }
                for (i, fd) in tmp.iter().enumerate() {
                    if libc::dup2(*fd, 3 + i as i32) < 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                }
                Ok(())
            });
        }
        Daemon::start_cmd(dir.clone(), cmd)
    };
    let mut d = start(&held);
    assert!(d
        .log()
        .contains("socket activation: 3 listening sockets from systemd"));
    let mut pf = Driver::start(&d.sock("pf"), plain(), 1);
    let mut vf0 = Driver::start(&d.sock("vf0"), plain(), 1);
    d.wait_state("vf0", "started");
    vf0.post_rx(0, 4, 2048);
    let f = test_frame(d.mac("vf0"), d.mac("pf"), 1, 64);
    pf.send(0, &f);
    assert_eq!(vf0.recv_n(0, 1)[0].1, f);
    drop((pf, vf0));
    d.signal(libc::SIGTERM);
    assert_eq!(d.wait_exit(), Some(0));
    assert!(
        dir.join("vf0.sock").exists(),
        "systemd's socket is left in place"
    );
    // No daemon now: a frontend's connect still succeeds (the backlog holds it)...
    let early = std::os::unix::net::UnixStream::connect(dir.join("vf0.sock")).unwrap();
    let d2 = start(&held);
    // ...and the next daemon serves it.
    wait_for(
        Duration::from_secs(10),
        || d2.state("vf0") == "connected",
        "the waiting frontend served",
    );
    drop(early);
    d2.wait_state("vf0", "waiting");
    let mut pf = Driver::start(&d2.sock("pf"), plain(), 1);
    let mut vf0 = Driver::start(&d2.sock("vf0"), plain(), 1);
    d2.wait_state("vf0", "started");
    vf0.post_rx(0, 4, 2048);
    pf.send(0, &f);
    assert_eq!(vf0.recv_n(0, 1)[0].1, f);
}

#[test]
fn a_restart_with_another_mac_layout_is_named_loudly() {
    let dir = Daemon::fresh_dir("layout");
    let mut d = Daemon::start_cmd(dir.clone(), daemon_cmd(&dir, &["--vfs", "2"]));
    d.signal(libc::SIGTERM);
    d.wait_exit();
    let d2 = Daemon::start_cmd(
        dir.clone(),
        daemon_cmd(&dir, &["--vfs", "2", "--base-mac", "02:99:00:00:00:00"]),
    );
    let log = d2.log();
    let line = log
        .lines()
        .find(|l| l.contains("LAYOUT CHANGED"))
        .unwrap_or_else(|| panic!("{log}"));
    assert!(
        line.contains("vf1 02:53:52:00:00:02 -> 02:99:00:00:00:02"),
        "{line}"
    );
    assert!(line.contains("ERROR"));
}

/// `--metrics ADDR` serves the counters to a Prometheus scrape, with the traffic just sent.
#[test]
fn metrics_are_served_over_http() {
    use std::io::{Read, Write};
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let addr = format!("127.0.0.1:{port}");
    let d = Daemon::start(&["--vfs", "1", "--metrics", &addr]);
    let mut pf = Driver::start(&d.sock("pf"), plain(), 1);
    let mut vf0 = Driver::start(&d.sock("vf0"), plain(), 1);
    d.wait_state("vf0", "started");
    vf0.post_rx(0, 4, 2048);
    let f = test_frame(d.mac("vf0"), d.mac("pf"), 1, 100);
    pf.send(0, &f);
    vf0.recv_n(0, 1);
    let mut s = std::net::TcpStream::connect(&addr).unwrap();
    write!(s, "GET /metrics HTTP/1.0\r\nHost: x\r\n\r\n").unwrap();
    let mut body = String::new();
    s.read_to_string(&mut body).unwrap();
    assert!(
        body.starts_with("HTTP/1.0 200") || body.starts_with("HTTP/1.1 200"),
        "{body}"
    );
    assert!(body.contains("application/openmetrics-text"));
    let want = format!(
        "vhost_sriov_network_receive_bytes_total{{partition=\"vf0\"}} {}",
        f.len()
    );
    assert!(body.lines().any(|l| l == want), "{want} missing:\n{body}");
    assert!(body
        .lines()
        .any(|l| l == "vhost_sriov_started{partition=\"vf0\"} 1"));
    // A second daemon on the same address fails to start, with the address named.
    let out = Command::new(Daemon::bin())
        .args(["--vfs", "1", "--metrics", &addr, "--socket-dir"])
        .arg(d.dir.join("other"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains(&format!("--metrics {addr}")));
}

/// `ctl capture vf0 -w FILE -c 3`: a pcap (read back with pcap-file, as tcpdump would) of what
/// vf0 sent and received, byte-exact and in order.
#[test]
fn capture_writes_a_pcap_of_what_the_partition_sends_and_receives() {
    let d = Daemon::start(&["--vfs", "1"]);
    let mut pf = Driver::start(&d.sock("pf"), plain(), 1);
    let mut vf0 = Driver::start(&d.sock("vf0"), plain(), 1);
    d.wait_state("vf0", "started");
    vf0.post_rx(0, 8, 2048);
    pf.post_rx(0, 8, 2048);
    let file = d.dir.join("vf0.pcap");
    let mut cap = Command::new(Daemon::bin())
        .args(["ctl", "--socket-dir"])
        .arg(&d.dir)
        .args(["capture", "vf0", "-c", "3", "-w"])
        .arg(&file)
        .spawn()
        .unwrap();
    wait_for(
        Duration::from_secs(5),
        || d.log().contains("vf0: capture started"),
        "capture running",
    );
    let a = test_frame(d.mac("vf0"), d.mac("pf"), 1, 80);
    let b = test_frame(d.mac("pf"), d.mac("vf0"), 2, 90);
    let c = test_frame(d.mac("vf0"), d.mac("pf"), 3, 100);
    pf.send(0, &a);
    vf0.recv_n(0, 1);
    vf0.send(0, &b);
    pf.recv_n(0, 1);
    pf.send(0, &c);
    vf0.recv_n(0, 1);
    assert!(cap.wait().unwrap().success());
    let mut r = pcap_file::pcap::PcapReader::new(std::fs::File::open(&file).unwrap()).unwrap();
    let mut got = Vec::new();
    while let Some(p) = r.next_packet() {
        got.push(p.unwrap().data.into_owned());
    }
    assert_eq!(got, vec![a, b, c]);
    assert!(d
        .log()
        .contains("vf0: capture ended (count reached): 1 sent, 2 received"));
    // Off again: traffic flows with no capture running.
    let e = test_frame(d.mac("vf0"), d.mac("pf"), 4, 60);
    pf.send(0, &e);
    assert_eq!(vf0.recv_n(0, 1)[0].1, e);
}
