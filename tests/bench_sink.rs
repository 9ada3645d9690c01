//! The one-way benchmark's receiver (`scripts/bench/sink.rs`, the `vu-sink` example) against the
//! real daemon: what it counts must be exactly what the daemon delivered, frames that span
//! several receive buffers included, or the benchmark's "delivered" figures mean nothing.

mod common;

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;

/// target/<profile>/deps/<this test> -> target/<profile>/examples/vu-sink (`cargo test` builds
/// the examples before it runs the tests).
fn sink_bin() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let bin = exe.parent().unwrap().parent().unwrap();
    let bin = bin.join("examples").join("vu-sink");
    assert!(
        bin.exists(),
        "{} is not built: `cargo test` builds it, `cargo test --test bench_sink` alone does \
         not (run `cargo build --example vu-sink` first)",
        bin.display()
    );
    bin
}

/// Kills the sink if the test fails before it stops it (it would hold the test's output open).
struct Sink(Option<std::process::Child>);

impl Drop for Sink {
    fn drop(&mut self) {
        if let Some(mut c) = self.0.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

#[test]
fn the_sink_counts_every_frame_and_byte_the_daemon_delivers() {
    let d = Daemon::start(&["--vfs", "2"]);
    let stats = d.dir.join("sink.json");
    let mut sink = Sink(Some(
        Command::new(sink_bin())
            .arg("--socket")
            .arg(d.sock("vf1"))
            .arg("--stats")
            .arg(&stats)
            // 512-byte buffers: a 1514-byte frame and its header take three (mergeable RX).
            .args(["--buffer", "512", "--coalesce", "4"])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    ));
    d.wait_state("vf1", "started");
    let mut vf0 = Driver::start(&d.sock("vf0"), plain(), 1);
    d.wait_state("vf0", "started");
    let (m0, m1) = (d.mac("vf0"), d.mac("vf1"));

    // Whole frames, 60 to 1514 bytes (the MTU, 1500, plus the Ethernet header).
    let sizes = [60usize, 64, 1514, 200, 499, 500, 501, 1000, 1514, 1024];
    let (mut frames, mut bytes, mut buffers) = (0u64, 0u64, 0u64);
    for burst in 0..12u8 {
        let batch: Vec<Vec<u8>> = sizes
            .iter()
            .enumerate()
            .map(|(i, &n)| test_frame(m1, m0, burst.wrapping_mul(16) + i as u8, n - 14))
            .collect();
        vf0.send_burst(0, &batch);
        vf0.wait_tx_done(0, batch.len());
        for f in &batch {
            frames += 1;
            bytes += f.len() as u64;
            buffers += (f.len() as u64 + NET_HDR_LEN as u64).div_ceil(512);
        }
        // One burst at a time: never more buffers in flight than the sink's ring holds.
        wait_for(
            Duration::from_secs(5),
            || d.counter("vf1", "rx_packets") == frames,
            "the daemon delivered the burst",
        );
    }
    assert_eq!(d.counter("vf1", "drop_no_rx_buffer"), 0);
    assert_eq!(d.counter("vf1", "rx_bytes"), bytes);

    let child = sink.0.take().unwrap();
    // SAFETY: kill(2) on our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "vu-sink: {:?}", out.status);
    let c: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(c["frames"], frames, "{c}");
    assert_eq!(c["bytes"], bytes, "{c}");
    assert_eq!(c["buffers"], buffers, "{c}");
    assert_eq!(c["bad"], 0, "{c}");
    // The stats file is the final count too.
    let f: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&stats).unwrap()).unwrap();
    assert_eq!(f["frames"], frames);
}
