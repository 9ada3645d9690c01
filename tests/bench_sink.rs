//! The one-way benchmark's receiver (`scripts/bench/sink.rs`, the `vu-sink` example, compiled
//! into this test) against the real daemon: what it counts must be exactly what the daemon
//! delivered, frames that span several receive buffers included, or the benchmark's "delivered"
//! figures mean nothing.

mod common;

// The example's own code, run on a thread here (`cargo test` builds examples as test harnesses,
// so its binary is not there to start).
#[allow(dead_code)]
#[path = "../scripts/bench/sink.rs"]
mod sink;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use clap::Parser;
use common::*;

/// Stops the sink's thread however the test ends.
struct Stop(Arc<AtomicBool>);

impl Drop for Stop {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

#[test]
fn the_sink_counts_every_frame_and_byte_the_daemon_delivers() {
    let d = Daemon::start(&["--vfs", "2"]);
    let stats = d.dir.join("sink.json");
    // 512-byte buffers: a 1514-byte frame and its header take three (mergeable RX).
    let args = sink::Args::parse_from([
        "vu-sink".as_ref(),
        "--socket".as_ref(),
        d.sock("vf1").as_os_str(),
        "--stats".as_ref(),
        stats.as_os_str(),
        "--buffer".as_ref(),
        "512".as_ref(),
        "--coalesce".as_ref(),
        "4".as_ref(),
    ] as [&std::ffi::OsStr; 9]);
    let stop = Stop(Arc::new(AtomicBool::new(false)));
    let flag = stop.0.clone();
    let sink = std::thread::spawn(move || sink::run(args, &flag));
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

    stop.0.store(true, Ordering::Relaxed);
    let c = sink.join().unwrap().expect("vu-sink ran");
    let c = serde_json::to_value(&c).unwrap();
    assert_eq!(c["frames"], frames, "{c}");
    assert_eq!(c["bytes"], bytes, "{c}");
    assert_eq!(c["buffers"], buffers, "{c}");
    assert_eq!(c["bad"], 0, "{c}");
    // The stats file is the final count too.
    let f: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&stats).unwrap()).unwrap();
    assert_eq!(f["frames"], frames);
}
