//! Hostile-frontend soak (issue 11 point 9). VF0 is driven by a hostile frontend with a seeded
//! PRNG: malformed TX chains, random virtio-net headers, oversize frames, and raw vhost-user
//! abuse on fresh connections (random requests, truncated and oversized payloads, early
//! SET_VRING_ENABLE floods, connect-and-close, GET_FEATURES spam without reading replies,
//! abrupt disconnects). Meanwhile PF <-> VF1 exchange traffic without pause, and every frame any
//! receiver gets is checked against what that receiver negotiated. At the end the daemon must
//! be alive, PF <-> VF1 must still work, VF0 must take a fresh frontend and pass traffic, and the
//! daemon's fds, threads and RSS must be back near their post-warm-up figures.
//!
//! `SOAK_SECS` (default 15) sets the hostile phase's length, `SOAK_SEED` replays a run (the
//! seed is printed). `scripts/soak.sh SECONDS` runs this for long in release mode.
//!
//! The well-behaved pair talks on queue pair 1 of 2; VF0's hostile frontend uses pair 0, so its
//! floods land on the receivers' pair-0 rings and can never legitimately take the RX buffers the
//! pair's traffic needs: any loss on pair 1 is the daemon's.

mod common;

use std::collections::VecDeque;
use std::net::Shutdown;
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use common::soak::*;
use common::*;
use virtio_bindings::bindings::virtio_net::*;
use virtio_bindings::bindings::virtio_ring::{
    VIRTIO_RING_F_EVENT_IDX, VIRTIO_RING_F_INDIRECT_DESC,
};

/// How long anything that should be immediate may take.
const T: Duration = Duration::from_secs(5);
/// How long after a frontend closes its connection the partition must be free again (whatever
/// the frontend left unread or half-sent).
const RELEASE: Duration = Duration::from_secs(10);
/// Open fds after the soak may differ from the warm-up figure by this much: the same frontends
/// are connected then as at the baseline, so only transient descriptors (a ctl connection being
/// served, a connection being torn down) may differ.
const FD_SLACK: usize = 2;
/// RSS without guest memory may grow this much over the soak: allocator arenas and caches
/// settle, but nothing may grow with the number of connections, messages or frames.
const RSS_SLACK_KIB: u64 = 8 * 1024;
/// RSS growth allowed while one connection floods SET_VRING_ENABLE before SET_FEATURES (with
/// random ring indexes): the pump may keep a bounded amount, never anything per message. A
/// per-message entry of even 16 bytes passes this after ~260 000 messages.
const FLOOD_SLACK_KIB: u64 = 4 * 1024;
/// Early enables in the flood: `SOAK_FLOOD`, else 2 million in long runs (>= 120 s) and 500 000
/// in short ones (the daemon takes them in at roughly 100 000 a second on the CI machines).
fn flood_size(secs: u64) -> usize {
    env_u64("SOAK_FLOOD").map_or(if secs >= 120 { 2_000_000 } else { 500_000 }, |n| {
        n as usize
    })
}
const RXBUF: u32 = 4096;
/// The well-behaved pair's queue pair.
const GOOD: usize = 1;

fn env_u64(name: &str) -> Option<u64> {
    let v = std::env::var(name).ok()?;
    let v = v.trim();
    match v.strip_prefix("0x") {
        Some(h) => u64::from_str_radix(h, 16).ok(),
        None => v.parse().ok(),
    }
}

fn add(f: &Mutex<Findings>, kind: &str, detail: String) {
    f.lock()
        .unwrap_or_else(|e| e.into_inner())
        .add(kind, detail);
}

/// Descriptors `send_split` uses for these bytes and split.
fn tx_descs(total: usize, split: &[usize]) -> usize {
    let rest = total - split.iter().sum::<usize>();
    split.len() + rest.div_ceil(SLOT as usize)
}

fn first_diff(a: &[u8], b: &[u8]) -> String {
    match a.iter().zip(b).position(|(x, y)| x != y) {
        Some(i) => format!(
            "first difference at byte {i} ({:#04x} vs {:#04x})",
            a[i], b[i]
        ),
        None => format!("length {} vs {}", a.len(), b.len()),
    }
}

/// Polls TX queue `qi` until `n` completions arrived.
fn wait_tx(drv: &mut Driver, qi: usize, n: usize) -> Result<(), usize> {
    let t = Instant::now();
    let mut got = 0;
    while got < n {
        got += drv.take_used(qi).len();
        if got >= n {
            break;
        }
        if t.elapsed() > T {
            return Err(got);
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// The well-behaved pair.

/// What the next frame on a good receiver's pair-1 ring must be.
enum Expect {
    /// These bytes and this header (num_buffers aside).
    Exact { hdr: RxHdr, frame: Vec<u8> },
    /// These bytes with the checksum field at `field` completed (no offload flags).
    Completed { frame: Vec<u8>, field: usize },
    /// Segment `index` of a TCP/IPv4 super-frame cut at `mss`.
    Segment {
        orig: Rc<Vec<u8>>,
        mss: usize,
        index: usize,
    },
}

impl Expect {
    fn check(&self, h: &RxHdr, got: &[u8]) -> Result<(), String> {
        match self {
            Expect::Exact { hdr, frame } => {
                let gh = RxHdr {
                    num_buffers: 0,
                    ..*h
                };
                if gh != *hdr {
                    return Err(format!("header {gh:?}, sent {hdr:?}"));
                }
                if got != &frame[..] {
                    return Err(format!(
                        "{}-byte frame corrupted: {}",
                        frame.len(),
                        first_diff(got, frame)
                    ));
                }
                Ok(())
            }
            Expect::Completed { frame, field } => {
                if h.flags != 0 || h.gso_type != 0 {
                    return Err(format!("header {h:?} for a completed checksum"));
                }
                let f = *field;
                if got.len() != frame.len()
                    || got[..f] != frame[..f]
                    || got[f + 2..] != frame[f + 2..]
                {
                    return Err(format!(
                        "NEEDS_CSUM frame changed beyond its checksum field: {}",
                        first_diff(got, frame)
                    ));
                }
                if !ipv4_l4_valid(got) {
                    return Err("checksum not completed".into());
                }
                Ok(())
            }
            Expect::Segment { orig, mss, index } => {
                let payload = &orig[54..];
                let start = index * mss;
                let chunk = &payload[start..(start + mss).min(payload.len())];
                let what = format!("segment {index} (mss {mss}) of a {}-byte frame", orig.len());
                if h.flags & FLAG_NEEDS_CSUM != 0 || h.gso_type != 0 {
                    return Err(format!("{what}: header {h:?}"));
                }
                if got.len() != 54 + chunk.len() {
                    return Err(format!(
                        "{what}: {} bytes, want {}",
                        got.len(),
                        54 + chunk.len()
                    ));
                }
                let seq0 = u32::from_be_bytes([orig[38], orig[39], orig[40], orig[41]]);
                let seq = u32::from_be_bytes([got[38], got[39], got[40], got[41]]);
                let tot = usize::from(u16::from_be_bytes([got[16], got[17]]));
                if got[..14] != orig[..14]
                    || got[14] != 0x45
                    || got[23] != 6
                    || got[26..38] != orig[26..38]
                    || tot != got.len() - 14
                    || seq != seq0.wrapping_add(start as u32)
                {
                    return Err(format!(
                        "{what}: headers {}",
                        first_diff(&got[..54], &orig[..54])
                    ));
                }
                if got[54..] != *chunk {
                    return Err(format!("{what}: payload {}", first_diff(&got[54..], chunk)));
                }
                if !ipv4_l4_valid(got) {
                    return Err(format!("{what}: checksums do not verify"));
                }
                Ok(())
            }
        }
    }
}

struct Side {
    name: &'static str,
    drv: Driver,
    mac: [u8; 6],
    rules: RxRules,
    expect: VecDeque<Expect>,
}

#[derive(Default)]
struct GoodStats {
    rounds: u64,
    sent: [u64; 2],
    offloaded: u64,
    verified_good: u64,
    verified_other: u64,
    lost: u64,
}

struct Good {
    pf: Side,
    vf1: Side,
    rng: Rng,
    st: GoodStats,
}

/// One generated frame: header, bytes, what the receiver must get, RX buffers it takes there.
type Gen = ([u8; NET_HDR_LEN], Vec<u8>, Vec<Expect>, usize);

impl Good {
    fn sides(&mut self) -> [&mut Side; 2] {
        [&mut self.pf, &mut self.vf1]
    }

    /// Keeps every RX ring of both receivers full.
    fn refill(&mut self) {
        for s in self.sides() {
            for pair in 0..2 {
                let n = s.drv.free_descs(2 * pair);
                if n > 0 {
                    s.drv.post_rx(pair, n, RXBUF);
                }
            }
        }
    }

    /// Checks every frame waiting on `pair` against the receiver's rules, expecting nothing in
    /// particular (pair 0: VF0's traffic; or warm-up).
    fn drain(&mut self, pair: usize, f: &Mutex<Findings>) {
        let mut n = 0;
        for s in self.sides() {
            for (h, frame) in s.drv.recv(pair) {
                for (kind, detail) in s.rules.check(&h, &frame) {
                    add(f, kind, detail);
                }
                n += 1;
            }
        }
        self.st.verified_other += n;
    }

    fn tcp_frame(&mut self, dst: [u8; 6], src: [u8; 6], len: usize, mode: L4Csum) -> Vec<u8> {
        let seq = self.rng.u32();
        let p = self.rng.bytes(len);
        let mut sport = self.rng.u16();
        if sport == PROBE_PORT || sport == MSS_PROBE_PORT {
            sport += 1;
        }
        frame_v4(dst, src, 6, tcp_seg(sport, 80, seq, 0x18, &p), mode)
    }

    /// Plain frames of 60..=max bytes, some VLAN-tagged or broadcast (`bcast`).
    fn plain(&mut self, dst: [u8; 6], src: [u8; 6], bcast: bool) -> Gen {
        let tag = self.rng.u8();
        let dst = if bcast && self.rng.chance(15) {
            BROADCAST
        } else {
            dst
        };
        let len = self.rng.range(60, 1514);
        let mut frame = test_frame(dst, src, tag, len - 14);
        if self.rng.chance(12) {
            frame = vlan_tag(&frame, self.rng.u16() & 0x0fff);
        }
        let hdr = RxHdr::parse(&[0; NET_HDR_LEN]);
        let e = Expect::Exact {
            hdr,
            frame: frame.clone(),
        };
        ([0; NET_HDR_LEN], frame, vec![e], 1)
    }

    /// PF -> VF1. VF1 negotiated no GUEST_* offload: partial checksums are completed for it and
    /// super-frames segmented.
    fn gen_to_vf1(&mut self) -> Gen {
        let (dst, src) = (self.vf1.mac, self.pf.mac);
        match self.rng.below(100) {
            0..=59 => self.plain(dst, src, true),
            60..=77 => {
                self.st.offloaded += 1;
                let udp = self.rng.chance(40);
                let (proto, max) = if udp { (17, 1514 - 42) } else { (6, 1514 - 54) };
                let len = self.rng.range(0, max);
                let frame = if udp {
                    let p = self.rng.bytes(len);
                    frame_v4(dst, src, 17, udp_dgram(4000, 53, &p), L4Csum::Partial)
                } else {
                    self.tcp_frame(dst, src, len, L4Csum::Partial)
                };
                let off = l4_csum_offset(proto);
                let e = Expect::Completed {
                    frame: frame.clone(),
                    field: 34 + off,
                };
                (hdr(1, 0, 0, 0, 34, off as u16), frame, vec![e], 1)
            }
            _ => {
                self.st.offloaded += 1;
                let len = self.rng.range(1, 20000);
                let mss = self.rng.range(536, 1460);
                let frame = Rc::new(self.tcp_frame(dst, src, len, L4Csum::Partial));
                let n = len.div_ceil(mss);
                let exp = (0..n)
                    .map(|index| Expect::Segment {
                        orig: frame.clone(),
                        mss,
                        index,
                    })
                    .collect();
                (hdr(1, 1, 54, mss as u16, 34, 16), (*frame).clone(), exp, n)
            }
        }
    }

    /// VF1 -> PF. PF negotiated GUEST_CSUM and GUEST_TSO4/6: offloaded frames arrive as sent.
    fn gen_to_pf(&mut self) -> Gen {
        let (dst, src) = (self.pf.mac, self.vf1.mac);
        let (h, frame) = match self.rng.below(100) {
            0..=59 => return self.plain(dst, src, false),
            60..=77 => {
                let len = self.rng.range(0, 1514 - 54);
                (
                    hdr(1, 0, 0, 0, 34, 16),
                    self.tcp_frame(dst, src, len, L4Csum::Partial),
                )
            }
            78..=91 => {
                let len = self.rng.range(1, 30000);
                let mss = self.rng.range(536, 1460) as u16;
                (
                    hdr(1, 1, 54, mss, 34, 16),
                    self.tcp_frame(dst, src, len, L4Csum::Partial),
                )
            }
            _ => {
                let len = self.rng.range(1, 30000);
                let mss = self.rng.range(536, 1440) as u16;
                let p = self.rng.bytes(len);
                let seg = tcp_seg(1234, 80, self.rng.u32(), 0x18, &p);
                (
                    hdr(1, 4, 74, mss, 54, 16),
                    frame_v6(dst, src, 6, seg, L4Csum::Partial),
                )
            }
        };
        self.st.offloaded += 1;
        let e = Expect::Exact {
            hdr: RxHdr::parse(&h),
            frame: frame.clone(),
        };
        let bufs = (NET_HDR_LEN + frame.len()).div_ceil(RXBUF as usize);
        (h, frame, vec![e], bufs)
    }

    /// One exchange: a burst each way on pair 1, every chain completed, every frame delivered
    /// as expected. False when the pair stalled (then nothing more can be checked).
    fn round(&mut self, f: &Mutex<Findings>) -> bool {
        self.drain(0, f);
        self.refill();
        let mut sent = [0usize; 2];
        for (dir, sent) in sent.iter_mut().enumerate() {
            let k = self.rng.range(1, 12);
            let (mut rx_budget, mut tx_budget) = (200usize, 200usize);
            for _ in 0..k {
                let (h, frame, exp, bufs) = if dir == 0 {
                    self.gen_to_vf1()
                } else {
                    self.gen_to_pf()
                };
                let split = match self.rng.below(3) {
                    0 => vec![],
                    1 => vec![NET_HDR_LEN],
                    _ => vec![NET_HDR_LEN, 5],
                };
                let descs = tx_descs(NET_HDR_LEN + frame.len(), &split);
                if bufs > rx_budget || descs > tx_budget {
                    break;
                }
                rx_budget -= bufs;
                tx_budget -= descs;
                let (tx, rx) = if dir == 0 {
                    (&mut self.pf, &mut self.vf1)
                } else {
                    (&mut self.vf1, &mut self.pf)
                };
                rx.expect.extend(exp);
                tx.drv.send_split(GOOD, &h, &frame, &split);
                *sent += 1;
                self.st.sent[dir] += 1;
            }
        }
        for (dir, n) in sent.into_iter().enumerate() {
            let tx = if dir == 0 {
                &mut self.pf
            } else {
                &mut self.vf1
            };
            if let Err(got) = wait_tx(&mut tx.drv, 2 * GOOD + 1, n) {
                add(
                    f,
                    "well-behaved pair stalled",
                    format!(
                        "{} TX pair {GOOD}: {got} of {n} chains completed in {T:?}",
                        tx.name
                    ),
                );
                return false;
            }
        }
        // Delivery happens before the sender's chains are completed, so everything is there.
        let (mut checked, mut lost) = (0u64, 0u64);
        for s in self.sides() {
            let t = Instant::now();
            while !s.expect.is_empty() && t.elapsed() < T {
                let got = s.drv.recv(GOOD);
                if got.is_empty() {
                    std::thread::sleep(Duration::from_millis(1));
                }
                for (h, frame) in got {
                    for (kind, detail) in s.rules.check(&h, &frame) {
                        add(f, kind, detail);
                    }
                    match s.expect.pop_front() {
                        None => add(
                            f,
                            "well-behaved pair: unexpected frame",
                            format!("{} pair {GOOD}: {} bytes nobody sent", s.name, frame.len()),
                        ),
                        Some(e) => {
                            if let Err(why) = e.check(&h, &frame) {
                                add(
                                    f,
                                    "well-behaved pair: frame not delivered byte-exact",
                                    format!("to {}: {why}", s.name),
                                );
                            }
                            checked += 1;
                        }
                    }
                }
            }
            if !s.expect.is_empty() {
                add(
                    f,
                    "well-behaved pair: frames lost",
                    format!("{}: {} expected frames missing", s.name, s.expect.len()),
                );
                lost += s.expect.len() as u64;
                s.expect.clear();
            }
        }
        self.st.verified_good += checked;
        self.st.lost += lost;
        self.st.rounds += 1;
        true
    }
}

// ---------------------------------------------------------------------------------------------
// The hostile frontend on VF0.

#[derive(Default)]
struct HostileStats {
    connections: u64,
    ring_sessions: u64,
    raw_episodes: u64,
    chains_good: u64,
    chains_bad: u64,
    probes: u64,
    oversize: u64,
    messages: u64,
    flood_msgs: u64,
    flood_secs: f64,
    flood_growth_kib: i64,
    spam_msgs: u64,
    corruptions: u64,
    restarts: u64,
}

/// TX chains posted and completed since the rings were (re)started.
#[derive(Default)]
struct Epoch {
    posted: usize,
    done: usize,
    broken: bool,
}

struct Hostile<'a> {
    d: &'a Daemon,
    findings: &'a Mutex<Findings>,
    stop: &'a AtomicBool,
    rng: Rng,
    sock: PathBuf,
    me: [u8; 6],
    pf: [u8; 6],
    vf1: [u8; 6],
    deadline: Instant,
    flood: usize,
    flooded: bool,
    next_flood: Instant,
    next_spam: Instant,
    spammed: bool,
    wedged: bool,
    conns: u64,
    base_disc: u64,
    probe_rr: u64,
    st: HostileStats,
}

const TXQ: usize = 1;
const OWN: u64 = u64::MAX;

fn rd(addr: u64, len: u32, flags: u16, next: u16) -> RawDesc {
    RawDesc {
        addr,
        len,
        flags,
        next,
    }
}

impl Hostile<'_> {
    fn finding(&self, kind: &str, detail: String) {
        add(self.findings, kind, detail);
    }

    fn over(&self) -> bool {
        self.wedged || self.stop.load(Ordering::Relaxed) || Instant::now() >= self.deadline
    }

    /// Episodes until the deadline; the scheduled flood and long spam run at least once even
    /// when the machine is slow enough to push them past it.
    fn run(&mut self) {
        while !self.wedged && !self.stop.load(Ordering::Relaxed) {
            let now = Instant::now();
            if now >= self.deadline && self.flooded && self.spammed {
                break;
            }
            if now >= self.next_flood || (now >= self.deadline && !self.flooded) {
                self.next_flood = now + Duration::from_secs(150);
                self.flooded = true;
                self.enable_flood(self.flood, true);
            } else if now >= self.next_spam || (now >= self.deadline && !self.spammed) {
                self.next_spam = now + Duration::from_secs(150);
                self.spammed = true;
                self.spam(Duration::from_millis(3200));
            } else {
                match self.rng.below(100) {
                    0..=39 => self.ring_session(),
                    40..=59 => self.random_messages(),
                    60..=69 => {
                        let n = self.rng.range(1000, 50_000);
                        self.enable_flood(n, false)
                    }
                    70..=79 => self.connect_close(),
                    // Unread replies pile up fast; short spams only once the long one has run,
                    // so a partition they wedge is found at a known point of the run.
                    80..=87 if self.spammed => {
                        let ms = self.rng.range(100, 1000) as u64;
                        self.spam(Duration::from_millis(ms))
                    }
                    80..=87 => self.random_messages(),
                    _ => self.abrupt(),
                }
            }
        }
    }

    fn connect(&mut self) -> Option<UnixStream> {
        match UnixStream::connect(&self.sock) {
            Ok(s) => {
                self.conns += 1;
                self.st.connections += 1;
                let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
                let _ = s.set_write_timeout(Some(Duration::from_secs(2)));
                Some(s)
            }
            Err(e) => {
                self.finding("vf0 socket refuses connections", format!("{e}"));
                self.wedged = true;
                None
            }
        }
    }

    /// After the hostile side closed its connection: the daemon must let go of it (and be
    /// ready for the next frontend) promptly.
    fn released(&mut self, what: &str) {
        let want = self.base_disc + self.conns;
        let t = Instant::now();
        loop {
            let p = try_partition(self.d, "vf0");
            let disc = p.as_ref().and_then(|p| p["disconnects"].as_u64());
            if disc.is_some_and(|n| n >= want) {
                return;
            }
            if disc.is_none() && !running(self.d.pid()) {
                self.finding("daemon died", format!("after: {what}"));
                self.wedged = true;
                return;
            }
            if t.elapsed() > RELEASE {
                let state = p
                    .as_ref()
                    .and_then(|p| p["state"].as_str())
                    .unwrap_or("?")
                    .to_string();
                self.finding(
                    "vf0 wedged: a connection the frontend closed is never released",
                    format!(
                        "connection #{} ({what}): {RELEASE:?} after the close vf0 is still \
                         '{state}', disconnects {disc:?} of {want}",
                        self.conns
                    ),
                );
                self.wedged = true;
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn random_features(&mut self) -> u64 {
        let all = [
            VIRTIO_NET_F_MRG_RXBUF,
            VIRTIO_RING_F_EVENT_IDX,
            VIRTIO_RING_F_INDIRECT_DESC,
            VIRTIO_NET_F_CSUM,
            VIRTIO_NET_F_GUEST_CSUM,
            VIRTIO_NET_F_HOST_TSO4,
            VIRTIO_NET_F_HOST_TSO6,
            VIRTIO_NET_F_GUEST_TSO4,
            VIRTIO_NET_F_GUEST_TSO6,
            VIRTIO_NET_F_MTU,
            35, // IN_ORDER
        ];
        let bits: Vec<u32> = all.into_iter().filter(|_| self.rng.chance(50)).collect();
        features(&bits)
    }

    // --- Ring-level abuse -------------------------------------------------------------------

    fn ring_session(&mut self) {
        let want = if self.rng.chance(75) {
            full_offloads()
        } else {
            self.random_features()
        };
        let pairs = self.rng.range(1, 2);
        let Some(s) = self.connect() else { return };
        self.st.ring_sessions += 1;
        let started =
            Driver::try_on(s, want, pairs, T).and_then(|mut d| d.try_start_rings(T).map(|()| d));
        let mut drv = match started {
            Ok(d) => d,
            Err(e) => {
                self.finding(
                    "a well-formed frontend cannot start on vf0",
                    format!("connection #{}: {e}", self.conns),
                );
                self.released("failed start");
                return;
            }
        };
        let mut ep = Epoch::default();
        self.rx_upkeep(&mut drv);
        let actions = self.rng.range(10, 400);
        let mut abrupt = false;
        for _ in 0..actions {
            if self.over() {
                break;
            }
            if drv.free_descs(TXQ) < 40 && !self.reclaim(&mut drv, &mut ep, 40) {
                abrupt = true;
                break;
            }
            if self.rng.chance(20) {
                self.rx_upkeep(&mut drv);
            }
            match self.rng.below(100) {
                0..=34 => self.malformed(&mut drv),
                35..=66 => self.random_frame(&mut drv),
                67..=80 => self.probe(&mut drv),
                81..=87 => self.oversize(&mut drv),
                88..=91 => self.indirect_frame(&mut drv),
                92..=94 => {
                    if !self.restart(&mut drv, &mut ep) {
                        abrupt = true;
                        break;
                    }
                    continue;
                }
                95..=96 => {
                    // A bogus avail index: only this queue breaks, until the rings restart.
                    let idx = self.rng.u16();
                    drv.corrupt_avail_idx(TXQ, idx);
                    self.st.corruptions += 1;
                    ep.broken = true;
                    std::thread::sleep(Duration::from_millis(2));
                    if self.rng.chance(50) && self.restart(&mut drv, &mut ep) {
                        continue;
                    }
                    abrupt = true;
                    break;
                }
                _ => {
                    abrupt = true;
                    break;
                }
            }
            ep.posted += 1;
        }
        if !abrupt && !ep.broken {
            let n = ep.posted;
            self.reclaim(&mut drv, &mut ep, n);
        }
        drop(drv);
        self.released("ring session");
    }

    /// Takes completions until `need` free descriptors (or, when `need` is the posted count,
    /// every chain) are back. A chain never completed on a queue with no broken-ring cause is a
    /// finding: malformed chains are completed with length 0.
    fn reclaim(&mut self, drv: &mut Driver, ep: &mut Epoch, need: usize) -> bool {
        let all = need == ep.posted;
        let t = Instant::now();
        loop {
            ep.done += drv.take_used(TXQ).len();
            if (all && ep.done >= ep.posted) || (!all && drv.free_descs(TXQ) >= need) {
                return true;
            }
            if ep.broken {
                return false;
            }
            if t.elapsed() > T {
                self.finding(
                    "vf0 TX chains never completed",
                    format!(
                        "{} of {} chains posted since the rings started are still pending \
                         after {T:?} (no bogus avail index this time)",
                        ep.posted - ep.done,
                        ep.posted
                    ),
                );
                return false;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    /// QEMU's stop and start on the same connection.
    fn restart(&mut self, drv: &mut Driver, ep: &mut Epoch) -> bool {
        self.st.restarts += 1;
        match drv.try_stop_rings(T).and_then(|()| drv.try_start_rings(T)) {
            Ok(()) => {
                *ep = Epoch::default();
                self.rx_upkeep(drv);
                true
            }
            Err(e) => {
                self.finding("vf0 stop/restart on one connection failed", e);
                false
            }
        }
    }

    /// Takes what VF0 received (it is not checked: VF0 may post nonsense) and posts more
    /// buffers, now and then a malformed one (which breaks only VF0's RX queue).
    fn rx_upkeep(&mut self, drv: &mut Driver) {
        let _ = drv.take_used(0);
        let free = drv.free_descs(0);
        if free == 0 {
            return;
        }
        if self.rng.chance(3) {
            let bad = if self.rng.chance(50) {
                rd(OWN, RXBUF, 0, 0)
            } else {
                rd(drv.mem_len() + self.rng.below(1 << 20), RXBUF, F_WRITE, 0)
            };
            drv.post_raw(0, &[bad]);
        } else {
            let n = self.rng.range(1, 64).min(free);
            drv.post_rx(0, n, RXBUF);
        }
    }

    fn malformed(&mut self, drv: &mut Driver) {
        self.st.chains_bad += 1;
        let ml = drv.mem_len();
        let ids = drv.peek_free(TXQ, 18);
        let slot = drv.slot_addr(TXQ, ids[0]);
        let r = &mut self.rng;
        let chain: Vec<RawDesc> = match r.below(17) {
            // Addresses outside the memory table, or wrapping around.
            0 => vec![rd(ml + r.below(1 << 30), r.range(26, 2000) as u32, 0, 0)],
            1 => vec![rd(
                r.pick(&[0x7fff_0000_0000, u64::MAX - 40, 1 << 63]),
                100,
                0,
                0,
            )],
            2 => vec![rd(ml - r.range(1, 60) as u64, 100, 0, 0)],
            // Write-only descriptors in a TX chain.
            3 => vec![rd(OWN, 100, F_WRITE, 0)],
            4 => vec![rd(OWN, 64, F_NEXT, ids[1]), rd(OWN, 64, F_WRITE, 0)],
            // Zero length.
            5 => vec![rd(OWN, 0, 0, 0)],
            6 => vec![rd(OWN, 40, F_NEXT, ids[1]), rd(OWN, 0, 0, 0)],
            // Loops.
            7 => vec![rd(OWN, 64, F_NEXT, ids[1]), rd(OWN, 64, F_NEXT, ids[0])],
            8 => vec![
                rd(OWN, 64, F_NEXT, ids[1]),
                rd(OWN, 64, F_NEXT, ids[2]),
                rd(OWN, 64, F_NEXT, ids[1]),
            ],
            // A next index beyond the ring.
            9 => vec![rd(OWN, 64, F_NEXT, r.range(QSIZE as usize, 65535) as u16)],
            // Bad indirect tables: length, place, combined with NEXT, flawed entries.
            10 => vec![rd(OWN, r.pick(&[0, 7, 15, 17, 24]), F_INDIRECT, 0)],
            11 => vec![rd(ml + r.below(1 << 20), 32, F_INDIRECT, 0)],
            12 => vec![rd(OWN, 32, F_INDIRECT | F_NEXT, ids[1]), rd(OWN, 64, 0, 0)],
            13 => {
                let n = r.range(2, 8);
                let mut t: Vec<RawDesc> = (0..n)
                    .map(|k| {
                        let last = k + 1 == n;
                        rd(
                            slot + 2048 + 64 * k as u64,
                            64,
                            if last { 0 } else { F_NEXT },
                            if last { 0 } else { k as u16 + 1 },
                        )
                    })
                    .collect();
                let k = r.range(0, n - 1);
                match r.below(6) {
                    0 => t[n - 1] = rd(t[n - 1].addr, 64, F_NEXT, 0),
                    1 => t[k] = rd(t[k].addr, 64, F_NEXT, (n + r.range(0, 100)) as u16),
                    2 => t[k].flags |= F_WRITE,
                    3 => t[k].len = 0,
                    4 => t[k].flags = F_INDIRECT,
                    _ => t[k].addr = ml + r.below(1 << 20),
                }
                let table: Vec<u8> = t.iter().flat_map(|d| desc_bytes(*d)).collect();
                drv.write_guest(slot, &table);
                vec![rd(OWN, table.len() as u32, F_INDIRECT, 0)]
            }
            // Too long: one huge descriptor, or 17 full slots.
            14 => vec![rd(OWN, r.range(65_566, 300_000) as u32, 0, 0)],
            15 => (0..17)
                .map(|k| {
                    let last = k == 16;
                    rd(
                        OWN,
                        SLOT as u32,
                        if last { 0 } else { F_NEXT },
                        if last { 0 } else { ids[k + 1] },
                    )
                })
                .collect(),
            // Shorter than the virtio-net and Ethernet headers.
            _ => {
                if r.chance(50) {
                    vec![rd(OWN, r.range(1, 25) as u32, 0, 0)]
                } else {
                    vec![rd(OWN, 10, F_NEXT, ids[1]), rd(OWN, 10, 0, 0)]
                }
            }
        };
        drv.post_raw(TXQ, &chain);
    }

    fn pick_dst(&mut self) -> [u8; 6] {
        let unknown = [0x02, 0x99, 0, 0, 0, self.rng.u8()];
        let mcast = [0x33, 0x33, 0, 0, 0, self.rng.u8()];
        let opts = [
            BROADCAST, BROADCAST, self.pf, self.vf1, mcast, self.me, unknown,
        ];
        self.rng.pick(&opts)
    }

    fn random_hdr(&mut self, len: usize) -> [u8; NET_HDR_LEN] {
        let r = &mut self.rng;
        let l = len.min(65535) as u16;
        let (any8, any16) = (r.u8(), r.u16());
        let flags = r.pick(&[0, 0, 1, 1, 1, 2, 3, any8]);
        let gso = r.pick(&[0, 0, 0, 1, 1, 4, 3, 5, 0x80, 0x81, 0x84, any8]);
        let hdr_len = r.pick(&[0, 54, 74, any16]);
        let gso_size = r.pick(&[
            0,
            1,
            87,
            88,
            536,
            1448,
            1460,
            1461,
            4000,
            8000,
            9000,
            65535,
            any16.rotate_left(3),
        ]);
        let start = r.pick(&[
            0,
            14,
            34,
            38,
            54,
            l.saturating_sub(2),
            l.saturating_sub(1),
            l,
            l.saturating_add(1),
            any16.rotate_left(7),
        ]);
        let off = r.pick(&[0, 6, 16, 1, 2, 100, any16.rotate_left(11)]);
        hdr(flags, gso, hdr_len, gso_size, start, off)
    }

    /// Sends with a random descriptor layout (or through an indirect table).
    fn send_any(&mut self, drv: &mut Driver, h: &[u8; NET_HDR_LEN], frame: &[u8]) {
        let total = NET_HDR_LEN + frame.len();
        if drv.has(VIRTIO_RING_F_INDIRECT_DESC) && total <= 3072 && self.rng.chance(15) {
            let pieces = self.rng.range(1, 6);
            drv.send_indirect(0, h, frame, pieces);
            return;
        }
        let split = match self.rng.below(4) {
            0 => vec![],
            1 => vec![NET_HDR_LEN],
            2 => vec![self.rng.range(1, total.min(4096))],
            _ => {
                let mut v = Vec::new();
                let mut sum = 0;
                for _ in 0..self.rng.range(1, 8) {
                    let s = self.rng.range(1, 64);
                    if sum + s > total {
                        break;
                    }
                    sum += s;
                    v.push(s);
                }
                v
            }
        };
        drv.send_split(0, h, frame, &split);
    }

    fn random_frame(&mut self, drv: &mut Driver) {
        self.st.chains_good += 1;
        let dst = self.pick_dst();
        let src = if self.rng.chance(92) {
            self.me
        } else {
            self.rng.pick(&[self.pf, self.vf1, [2, 0x42, 0, 0, 0, 1]])
        };
        let r = &mut self.rng;
        let big = r.chance(15);
        let len = if big {
            r.range(0, 60_000)
        } else {
            r.range(0, 1460)
        };
        let raw = L4Csum::Raw(r.u16());
        let mode = r.pick(&[L4Csum::Partial, L4Csum::Full, raw]);
        let mut sport = r.u16();
        if sport == PROBE_PORT || sport == MSS_PROBE_PORT {
            sport += 1;
        }
        let mut frame = match r.below(8) {
            0 | 1 => frame_v4(
                dst,
                src,
                6,
                tcp_seg(sport, 80, r.u32(), r.u8(), &r.bytes(len)),
                mode,
            ),
            2 => frame_v4(dst, src, 17, udp_dgram(sport, 53, &r.bytes(len)), mode),
            3 => frame_v6(
                dst,
                src,
                6,
                tcp_seg(sport, 80, r.u32(), r.u8(), &r.bytes(len)),
                mode,
            ),
            4 => {
                let f = frame_v4(
                    dst,
                    src,
                    6,
                    tcp_seg(sport, 80, r.u32(), 0x18, &r.bytes(len.min(1446))),
                    mode,
                );
                vlan_tag(&f, r.u16())
            }
            5 => eth(dst, src, 0x0806, &r.bytes_in(28, 100)),
            6 => eth(dst, src, r.u16(), &r.bytes_in(0, 1500)),
            _ => {
                // An IP header with a broken field.
                let mut f = frame_v4(
                    dst,
                    src,
                    6,
                    tcp_seg(sport, 80, r.u32(), 0x18, &r.bytes(len.min(1460))),
                    mode,
                );
                let at = r.range(14, 53);
                f[at] = r.u8();
                f
            }
        };
        // A vlan-tagged frame stays within MTU + 18 unless it is meant to be oversize.
        frame.truncate(65_535 + 14);
        let h = self.random_hdr(frame.len());
        self.send_any(drv, &h, &frame);
    }

    fn indirect_frame(&mut self, drv: &mut Driver) {
        if !drv.has(VIRTIO_RING_F_INDIRECT_DESC) {
            return self.random_frame(drv);
        }
        self.st.chains_good += 1;
        let dst = self.pick_dst();
        let len = self.rng.range(60, 3000 - NET_HDR_LEN);
        let frame = test_frame(dst, self.me, self.rng.u8(), len - 14);
        let pieces = self.rng.range(1, 6);
        drv.send_indirect(0, &[0; NET_HDR_LEN], &frame, pieces);
    }

    /// Plain frames over the MTU: 9014 or 65014 bytes (jumbo and 64 KiB without GSO), or just
    /// over the limit.
    fn oversize(&mut self, drv: &mut Driver) {
        self.st.chains_good += 1;
        self.st.oversize += 1;
        let dst = self.rng.pick(&[BROADCAST, self.pf, self.vf1]);
        let total = self.rng.pick(&[9014, 9014, 65014, 65014, 1515, 4000]);
        let mut frame = test_frame(dst, self.me, self.rng.u8(), total - 14);
        if self.rng.chance(20) {
            frame = vlan_tag(&frame[..total - 4], 1);
            frame.push(0);
        }
        let h = if self.rng.chance(70) {
            [0; NET_HDR_LEN]
        } else {
            hdr(0, 0, 0, self.rng.u16(), 0, 0)
        };
        self.send_any(drv, &h, &frame);
    }

    /// Frames aimed at one known weak spot each, in turn, so a short run covers them all.
    fn probe(&mut self, drv: &mut Driver) {
        self.st.chains_good += 1;
        self.st.probes += 1;
        let k = self.probe_rr % 8;
        self.probe_rr += 1;
        let (me, pf, vf1) = (self.me, self.pf, self.vf1);
        let r = &mut self.rng;
        let (h, frame) = match k {
            0 => {
                // ECN bit alone with NEEDS_CSUM on a UDP datagram whose checksum is not a
                // partial one: nothing may vouch for it (DATA_VALID) to a GUEST_CSUM receiver.
                let dst = r.pick(&[pf, BROADCAST]);
                let p = r.bytes_in(20, 200);
                let f = frame_v4(dst, me, 17, udp_dgram(4000, 53, &p), L4Csum::Raw(0xdead));
                (hdr(1, 0x80, 0, 0, 42, 0), f)
            }
            1 => {
                // NEEDS_CSUM whose checksum field lies outside the frame.
                let dst = r.pick(&[pf, BROADCAST]);
                let len = r.range(40, 600);
                let f = frame_v4(
                    dst,
                    me,
                    6,
                    tcp_seg(1, 2, 0, 0x18, &r.bytes(len)),
                    L4Csum::Partial,
                );
                let l = f.len() as u16;
                let start = r.pick(&[l - 1, l, l + 100, 65535, 34]);
                let off = if start == 34 { l } else { r.pick(&[0, 6, 16]) };
                (hdr(1, 0, 0, 0, start, off), f)
            }
            2 => {
                // GSO with gso_size 0.
                let dst = r.pick(&[pf, BROADCAST]);
                let len = r.range(100, 20000);
                let f = frame_v4(
                    dst,
                    me,
                    6,
                    tcp_seg(1, 2, 0, 0x18, &r.bytes(len)),
                    L4Csum::Partial,
                );
                (hdr(1, r.pick(&[1, 1, 0x81]), 54, 0, 34, 16), f)
            }
            3 => {
                // GSO whose gso_size is above what the receivers' MTU can carry.
                let dst = r.pick(&[vf1, BROADCAST]);
                let len = r.range(3000, 60000);
                let mss = r.range(1461, 9000) as u16;
                let f = frame_v4(
                    dst,
                    me,
                    6,
                    tcp_seg(MSS_PROBE_PORT, 2, 0, 0x18, &r.bytes(len)),
                    L4Csum::Partial,
                );
                (hdr(1, 1, 54, mss, 34, 16), f)
            }
            4 => {
                // A super-frame with bytes past its IP total length.
                let dst = r.pick(&[vf1, BROADCAST]);
                let n = r.range(1000, 20000);
                let f = probe_tcp4(dst, me, r.u32(), n, r.range(1, 3000));
                (hdr(1, 1, 54, 1448, 34, 16), f)
            }
            5 => {
                // ECN | TCPV4 with a sane MSS: segmented (GUEST_ECN is not offered).
                let dst = r.pick(&[pf, BROADCAST]);
                let len = r.range(1000, 20000);
                let f = frame_v4(
                    dst,
                    me,
                    6,
                    tcp_seg(1, 2, 0, 0x18 | 0x80, &r.bytes(len)),
                    L4Csum::Partial,
                );
                (hdr(1, 0x81, 54, 1448, 34, 16), f)
            }
            6 => {
                // TCPv6 super-frames.
                let dst = r.pick(&[pf, vf1, BROADCAST]);
                let len = r.range(1000, 30000);
                let mss = r.pick(&[1200, 1440, 1441, 4000]);
                let f = frame_v6(
                    dst,
                    me,
                    6,
                    tcp_seg(1, 2, 0, 0x18, &r.bytes(len)),
                    L4Csum::Partial,
                );
                (hdr(1, 4, 74, mss, 54, 16), f)
            }
            _ => {
                // UDP GSO types (not offered): dropped, never delivered as GSO.
                let dst = r.pick(&[pf, BROADCAST]);
                let p = r.bytes_in(2000, 20000);
                let f = frame_v4(dst, me, 17, udp_dgram(4000, 53, &p), L4Csum::Partial);
                (hdr(1, r.pick(&[3, 5]), 42, 1400, 34, 6), f)
            }
        };
        self.send_any(drv, &h, &frame);
    }

    // --- Message-level abuse ----------------------------------------------------------------

    /// The start of QEMU's sequence, `upto` messages of it; the features offered.
    fn handshake(&mut self, s: &UnixStream, upto: usize) -> Option<u64> {
        let mut offered = 0u64;
        for step in 0..upto {
            self.st.messages += 1;
            let ok = match step {
                0 => {
                    vu_send(s, &vu_msg(VU_GET_FEATURES, VU_VERSION_1, &[])) && {
                        offered = vu_u64(&vu_reply(s)?.2);
                        true
                    }
                }
                1 => vu_send(s, &vu_msg(VU_SET_OWNER, VU_VERSION_1, &[])),
                2 => {
                    let f = (offered & self.rng.next_u64()) | (1 << 30) | (1 << 32);
                    vu_send(s, &vu_msg(VU_SET_FEATURES, VU_VERSION_1, &f.to_le_bytes()))
                }
                3 => {
                    vu_send(s, &vu_msg(VU_GET_PROTOCOL_FEATURES, VU_VERSION_1, &[]))
                        && vu_reply(s).is_some()
                }
                4 => {
                    let p = self.rng.next_u64() & 0x3ff;
                    vu_send(
                        s,
                        &vu_msg(VU_SET_PROTOCOL_FEATURES, VU_VERSION_1, &p.to_le_bytes()),
                    )
                }
                _ => {
                    vu_send(s, &vu_msg(VU_GET_QUEUE_NUM, VU_VERSION_1, &[]))
                        && vu_reply(s).is_some()
                }
            };
            if !ok {
                return None;
            }
        }
        Some(offered)
    }

    fn random_messages(&mut self) {
        let Some(s) = self.connect() else { return };
        self.st.raw_episodes += 1;
        if self.rng.chance(50) {
            let upto = self.rng.range(1, 6);
            self.handshake(&s, upto);
        }
        for _ in 0..self.rng.range(1, 40) {
            let r = &mut self.rng;
            let req = match r.below(10) {
                0..=6 => r.below(46) as u32,
                7 | 8 => r.pick(&[
                    1, 2, 3, 4, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 24, 36, 38,
                ]),
                _ => r.u32(),
            };
            let mut flags = VU_VERSION_1;
            if r.chance(30) {
                flags |= VU_NEED_REPLY;
            }
            if r.chance(5) {
                flags = r.u32();
            }
            let len = match r.below(3) {
                0 => r.pick(&[0, 8, 8, 12, 24, 40]),
                1 => r.range(0, 64),
                _ => r.range(0, 300),
            };
            let mut payload = r.bytes(len);
            if len >= 4 && ((8..=14).contains(&req) || req == 18) {
                payload[..4].copy_from_slice(&(r.below(5) as u32).to_le_bytes());
            }
            let mode = r.below(100);
            self.st.messages += 1;
            if mode < 9 {
                // The header claims more than follows (truncated), or far more than any
                // message may have (oversized); then the frontend goes away.
                let claim = if mode < 5 {
                    (len + r.range(1, 200)) as u32
                } else {
                    r.pick(&[4097, 65536, 1 << 24, u32::MAX])
                };
                let _ = vu_send(&s, &vu_header(req, flags, claim)) && vu_send(&s, &payload);
                break;
            }
            if !vu_send(&s, &vu_msg(req, flags, &payload)) {
                break;
            }
            vu_drain(&s);
        }
        if self.rng.chance(30) {
            let _ = s.shutdown(Shutdown::Write);
        }
        drop(s);
        self.released("random vhost-user messages");
    }

    /// SET_VRING_ENABLE before SET_FEATURES, `n` times, random ring indexes. The big one checks
    /// the daemon's memory right after the flood is consumed.
    fn enable_flood(&mut self, n: usize, big: bool) {
        let Some(s) = self.connect() else { return };
        self.st.raw_episodes += 1;
        if big {
            let _ = s.set_write_timeout(Some(Duration::from_secs(10)));
        }
        if self.handshake(&s, 2).is_none() {
            drop(s);
            return self.released("flood: GET_FEATURES unanswered");
        }
        let pid = self.d.pid();
        let before = Figures::of(pid);
        let t = Instant::now();
        let cap = Duration::from_secs(if big { 20 } else { 3 });
        let mut sent = 0usize;
        for i in 0..3 {
            let p = [i as u32, 1].map(u32::to_le_bytes).concat();
            let flags = VU_VERSION_1 | VU_NEED_REPLY;
            if !(vu_send(&s, &vu_msg(VU_SET_VRING_ENABLE, flags, &p)) && vu_reply(&s).is_some()) {
                break;
            }
            sent += 1;
        }
        // QEMU's early enables name the device's rings; the big flood's random indexes make
        // every one a new entry for a pump that keeps them.
        let random_index = big || self.rng.chance(50);
        let mut chunk = Vec::with_capacity(20 * 4096);
        while sent < n && t.elapsed() < cap {
            chunk.clear();
            let m = (n - sent).min(4096);
            for _ in 0..m {
                let index = if random_index {
                    self.rng.u32()
                } else {
                    self.rng.below(4) as u32
                };
                let num = if self.rng.chance(90) {
                    1
                } else {
                    self.rng.u32()
                };
                chunk.extend_from_slice(&vu_header(VU_SET_VRING_ENABLE, VU_VERSION_1, 8));
                chunk.extend_from_slice(&index.to_le_bytes());
                chunk.extend_from_slice(&num.to_le_bytes());
            }
            if !vu_send(&s, &chunk) {
                break;
            }
            sent += m;
        }
        self.st.messages += sent as u64;
        if big {
            // GET_FEATURES is answered once every enable before it has been taken in.
            let _ = s.set_read_timeout(Some(Duration::from_secs(30)));
            let synced =
                vu_send(&s, &vu_msg(VU_GET_FEATURES, VU_VERSION_1, &[])) && vu_reply(&s).is_some();
            self.st.flood_msgs += sent as u64;
            self.st.flood_secs = t.elapsed().as_secs_f64();
            if let (Some(b), Some(a)) = (before, Figures::of(pid)) {
                let growth = a.private_kib() as i64 - b.private_kib() as i64;
                self.st.flood_growth_kib = self.st.flood_growth_kib.max(growth);
                println!(
                    "soak: flood of {sent} SET_VRING_ENABLE before SET_FEATURES in {:.1} s \
                     ({}): daemon RSS excl. guest memory {} -> {}",
                    self.st.flood_secs,
                    if synced {
                        "all consumed"
                    } else {
                        "connection closed by the daemon"
                    },
                    mib(b.private_kib()),
                    mib(a.private_kib())
                );
                if growth > FLOOD_SLACK_KIB as i64 {
                    self.finding(
                        "daemon memory grows with early SET_VRING_ENABLE",
                        format!(
                            "RSS excl. guest memory {} -> {} (+{}, bound +{}) after {sent} \
                             SET_VRING_ENABLE with random ring indexes before SET_FEATURES on \
                             one connection",
                            mib(b.private_kib()),
                            mib(a.private_kib()),
                            mib(growth as u64),
                            mib(FLOOD_SLACK_KIB)
                        ),
                    );
                }
            }
        } else if self.rng.chance(50) {
            let f = 1u64 << 32 | 1 << 30;
            let _ = vu_send(&s, &vu_msg(VU_SET_FEATURES, VU_VERSION_1, &f.to_le_bytes()));
            self.st.messages += 1;
            vu_drain(&s);
        }
        drop(s);
        self.released(&format!("{sent} SET_VRING_ENABLE before SET_FEATURES"));
    }

    fn connect_close(&mut self) {
        let Some(s) = self.connect() else { return };
        self.st.raw_episodes += 1;
        match self.rng.below(4) {
            0 => {}
            1 => {
                let n = self.rng.range(1, 30);
                let flags = self.rng.pick(&[VU_VERSION_1, VU_VERSION_1 | VU_NEED_REPLY]);
                for _ in 0..n {
                    let _ = vu_send(&s, &vu_msg(VU_GET_FEATURES, flags, &[]));
                }
                self.st.messages += n as u64;
            }
            2 => {
                let h = vu_header(VU_GET_FEATURES, VU_VERSION_1, 0);
                let k = self.rng.range(1, 11);
                let _ = vu_send(&s, &h[..k]);
            }
            _ => {
                let _ = vu_send(&s, &vu_header(VU_SET_FEATURES, VU_VERSION_1, 8))
                    && vu_send(&s, &[1, 2, 3]);
                self.st.messages += 1;
            }
        }
        drop(s);
        self.released("connect and close without reading a reply");
    }

    /// GET_FEATURES for `dur` without ever reading a reply, then close.
    fn spam(&mut self, dur: Duration) {
        let Some(s) = self.connect() else { return };
        self.st.raw_episodes += 1;
        let _ = s.set_write_timeout(Some(Duration::from_millis(50)));
        let buf: Vec<u8> = (0..512)
            .flat_map(|_| vu_header(VU_GET_FEATURES, VU_VERSION_1, 0))
            .collect();
        let n = (vu_spam(&s, &buf, dur) / 12) as u64;
        self.st.messages += n;
        self.st.spam_msgs += n;
        drop(s);
        self.released(&format!(
            "GET_FEATURES for {:.1} s ({n} messages) without reading a reply, then close",
            dur.as_secs_f64()
        ));
    }

    /// A frontend that goes away in the middle of things.
    fn abrupt(&mut self) {
        let Some(s) = self.connect() else { return };
        self.st.raw_episodes += 1;
        match self.rng.below(3) {
            0 => {
                let upto = self.rng.range(1, 6);
                if self.handshake(&s, upto).is_some() {
                    // Half of the next message.
                    let h = vu_header(self.rng.below(40) as u32, VU_VERSION_1, 40);
                    let k = self.rng.range(1, 30);
                    let bytes = [&h[..], &[0u8; 40][..]].concat();
                    let _ = vu_send(&s, &bytes[..k]);
                }
                drop(s);
            }
            1 => {
                // Memory table set, rings never started.
                let _ = Driver::try_on(s, full_offloads(), 1, T);
            }
            _ => {
                // Started, frames in flight, gone.
                let started = Driver::try_on(s, full_offloads(), 1, T)
                    .and_then(|mut d| d.try_start_rings(T).map(|()| d));
                if let Ok(mut d) = started {
                    d.post_rx(0, 16, RXBUF);
                    for _ in 0..self.rng.range(1, 20) {
                        let dst = self.rng.pick(&[self.pf, self.vf1, BROADCAST]);
                        let f = test_frame(dst, self.me, 1, self.rng.range(60, 1400));
                        d.send(0, &f);
                        self.st.chains_good += 1;
                    }
                }
            }
        }
        self.released("abrupt disconnect mid-sequence");
    }
}

// ---------------------------------------------------------------------------------------------

#[test]
fn hostile_frontend_soak() {
    let secs = env_u64("SOAK_SECS").unwrap_or(15).max(1);
    let seed = env_u64("SOAK_SEED").unwrap_or_else(|| {
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap();
        t.as_nanos() as u64 ^ u64::from(std::process::id()) << 32
    });
    println!("soak: seed {seed:#x} (SOAK_SEED={seed:#x} replays it), hostile phase {secs} s");
    let mut rng = Rng::new(seed);
    let findings = Mutex::new(Findings::default());
    let f = &findings;

    let d = Daemon::start(&["--vfs", "2", "--queue-pairs", "2"]);
    let pid = d.pid();
    let good_pf = full_offloads();
    let good_vf1 = features(&[
        VIRTIO_NET_F_MRG_RXBUF,
        VIRTIO_RING_F_EVENT_IDX,
        VIRTIO_RING_F_INDIRECT_DESC,
        VIRTIO_NET_F_CSUM,
        VIRTIO_NET_F_HOST_TSO4,
        VIRTIO_NET_F_HOST_TSO6,
    ]);
    let side = |name: &'static str, want: u64| {
        let drv = Driver::start(&d.sock(name), want, 2);
        let mtu = d.partition(name)["mtu"].as_u64().unwrap() as usize;
        Side {
            name,
            rules: RxRules::of(name, &drv, mtu),
            mac: d.mac(name),
            drv,
            expect: VecDeque::new(),
        }
    };
    let mut good = Good {
        pf: side("pf", good_pf),
        vf1: side("vf1", good_vf1),
        rng: rng.fork(),
        st: GoodStats::default(),
    };
    let (m_pf, m_vf0, m_vf1) = (d.mac("pf"), d.mac("vf0"), d.mac("vf1"));

    // Warm-up: everything the soak will use once, with a well-behaved VF0, then the baseline.
    let mut vf0 = Driver::start(&d.sock("vf0"), plain(), 2);
    for n in ["pf", "vf0", "vf1"] {
        d.wait_state(n, "started");
    }
    good.refill();
    for _ in 0..30 {
        assert!(good.round(f), "warm-up stalled");
    }
    vf0.post_rx(0, 64, RXBUF);
    vf0.post_rx(1, 64, RXBUF);
    for pair in 0..2 {
        for dst in [m_pf, m_vf1] {
            let big = frame_v4(
                dst,
                m_vf0,
                6,
                tcp_seg(1, 2, 0, 0x18, &[7; 60_000]),
                L4Csum::Partial,
            );
            vf0.send_with_hdr(pair, &hdr(1, 1, 54, 1448, 34, 16), &big);
            vf0.send(pair, &test_frame(BROADCAST, m_vf0, 3, 1000));
        }
        vf0.wait_tx_done(pair, 4);
        good.pf.drv.send(pair, &test_frame(m_vf0, m_pf, 4, 500));
        good.pf.drv.wait_tx_done(pair, 1);
        assert_eq!(vf0.recv_n(pair, 1).len(), 1);
    }
    good.drain(0, f);
    good.drain(1, f);
    good.refill();
    for _ in 0..10 {
        assert!(good.round(f), "warm-up stalled");
    }
    std::thread::sleep(Duration::from_millis(300));
    let base = Figures::of(pid).unwrap();
    println!(
        "soak: baseline after warm-up: {} fds, {} threads, RSS {} excl. guest memory (VmRSS {})",
        base.fds,
        base.threads,
        mib(base.private_kib()),
        mib(base.vm_rss_kib)
    );
    drop(vf0);
    d.wait_state("vf0", "waiting");
    let base_disc = d.partition("vf0")["disconnects"].as_u64().unwrap();

    // The soak.
    let t0 = Instant::now();
    let dur = Duration::from_secs(secs);
    let stop = AtomicBool::new(false);
    let done = AtomicBool::new(false);
    let mut hostile = Hostile {
        d: &d,
        findings: f,
        stop: &stop,
        rng: rng.fork(),
        sock: d.sock("vf0"),
        me: m_vf0,
        pf: m_pf,
        vf1: m_vf1,
        deadline: t0 + dur,
        flood: flood_size(secs),
        flooded: false,
        next_flood: t0 + dur / 8,
        next_spam: t0 + dur / 2,
        spammed: false,
        wedged: false,
        conns: 0,
        base_disc,
        probe_rr: 0,
        st: HostileStats::default(),
    };
    std::thread::scope(|sc| {
        let h = sc.spawn(|| {
            hostile.run();
            done.store(true, Ordering::Release);
        });
        // The hostile side ends at the deadline, give or take one episode.
        let hard = t0 + dur + Duration::from_secs(90);
        while (!done.load(Ordering::Acquire) || Instant::now() < t0 + dur) && Instant::now() < hard
        {
            if !good.round(f) {
                stop.store(true, Ordering::Relaxed);
                break;
            }
            // Continuous, but leaving the two cores some room for the hostile side.
            std::thread::sleep(Duration::from_millis(5));
        }
        stop.store(true, Ordering::Relaxed);
        h.join().unwrap();
    });
    let hs = &hostile.st;
    let soak_secs = t0.elapsed().as_secs_f64();

    // Afterwards: the daemon is up, the pair still works, VF0 takes a fresh frontend.
    let alive = running(pid);
    if !alive {
        add(f, "daemon died", "not running after the soak".into());
    }
    let mut fresh = None;
    if alive {
        for _ in 0..20 {
            if !good.round(f) {
                break;
            }
        }
        match Driver::try_start(&d.sock("vf0"), plain(), 2, T) {
            Ok(mut v) => {
                v.post_rx(GOOD, 16, RXBUF);
                let t = Instant::now();
                while t.elapsed() < T
                    && try_partition(&d, "vf0").and_then(|p| p["state"].as_str().map(String::from))
                        != Some("started".into())
                {
                    std::thread::sleep(Duration::from_millis(10));
                }
                let a = test_frame(m_vf0, m_pf, 0xa5, 500);
                good.pf.drv.send(GOOD, &a);
                let ok = wait_tx(&mut good.pf.drv, 2 * GOOD + 1, 1).is_ok() && {
                    let t = Instant::now();
                    let mut got = Vec::new();
                    while got.is_empty() && t.elapsed() < T {
                        got = v.recv(GOOD);
                        std::thread::sleep(Duration::from_millis(1));
                    }
                    got.len() == 1 && got[0].1 == a
                };
                let b = test_frame(m_vf1, m_vf0, 0x5a, 700);
                good.vf1.expect.push_back(Expect::Exact {
                    hdr: RxHdr::parse(&[0; NET_HDR_LEN]),
                    frame: b.clone(),
                });
                v.send(GOOD, &b);
                let ok = ok && wait_tx(&mut v, 2 * GOOD + 1, 1).is_ok() && good.round(f);
                if !ok {
                    add(
                        f,
                        "vf0 does not pass traffic for a fresh frontend after the soak",
                        "PF -> VF0 or VF0 -> VF1 frame missing".into(),
                    );
                }
                fresh = Some(v);
            }
            Err(e) => add(
                f,
                "vf0 refuses a fresh well-behaved frontend after the soak",
                e,
            ),
        }
    }
    for (name, pair) in [("pf", GOOD), ("vf1", GOOD)] {
        let drops = try_partition(&d, name)
            .and_then(|p| p["queues"][pair]["counters"]["drop_no_rx_buffer"].as_u64());
        if drops.is_some_and(|n| n > 0) {
            add(
                f,
                "well-behaved pair: RX drops on its queue pair",
                format!("{name} pair {pair}: drop_no_rx_buffer {drops:?}"),
            );
        }
    }

    // Resources: the same frontends are connected as at the baseline (PF, VF1, a VF0).
    let mut end = Figures::of(pid);
    let t = Instant::now();
    while alive && t.elapsed() < Duration::from_secs(10) {
        end = Figures::of(pid);
        if end.is_some_and(|e| e.fds.abs_diff(base.fds) <= FD_SLACK && e.threads == base.threads) {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    if let Some(e) = end {
        if e.fds.abs_diff(base.fds) > FD_SLACK {
            add(
                f,
                "daemon fd count not back to baseline",
                format!(
                    "{} open fds after the soak, {} after warm-up ({:+}, bound +-{FD_SLACK}) \
                     after {} VF0 connections",
                    e.fds,
                    base.fds,
                    e.fds as i64 - base.fds as i64,
                    hs.connections
                ),
            );
        }
        if e.threads != base.threads {
            add(
                f,
                "daemon thread count not back to baseline",
                format!(
                    "{} threads after the soak, {} after warm-up",
                    e.threads, base.threads
                ),
            );
        }
        if e.private_kib() > base.private_kib() + RSS_SLACK_KIB {
            add(
                f,
                "daemon RSS not back near baseline",
                format!(
                    "RSS excl. guest memory {} after the soak, {} after warm-up (bound +{})",
                    mib(e.private_kib()),
                    mib(base.private_kib()),
                    mib(RSS_SLACK_KIB)
                ),
            );
        }
    }
    let malformed = try_partition(&d, "vf0")
        .and_then(|p| p["counters"]["drop_malformed_chain"].as_u64())
        .unwrap_or(0);

    let gs = &good.st;
    println!(
        "soak: {soak_secs:.1} s; vf0 hostile: {} connections ({} ring sessions, {} raw), TX \
         chains {} well-formed / {} malformed ({} probes, {} oversize; daemon counted {} \
         malformed), {} avail-index corruptions, {} ring restarts",
        hs.connections,
        hs.ring_sessions,
        hs.raw_episodes,
        hs.chains_good,
        hs.chains_bad,
        hs.probes,
        hs.oversize,
        malformed,
        hs.corruptions,
        hs.restarts
    );
    println!(
        "soak: vhost-user messages sent raw: {} ({} in the early-enable flood, {:.1} s, RSS {:+} \
         KiB; {} GET_FEATURES unread)",
        hs.messages, hs.flood_msgs, hs.flood_secs, hs.flood_growth_kib, hs.spam_msgs
    );
    println!(
        "soak: well-behaved pair: {} rounds, pf->vf1 {} frames, vf1->pf {} frames ({} \
         offloaded), {} frames/segments verified byte-exact, {} lost; {} other frames verified \
         valid at pf/vf1",
        gs.rounds,
        gs.sent[0],
        gs.sent[1],
        gs.offloaded,
        gs.verified_good,
        gs.lost,
        gs.verified_other
    );
    if let Some(e) = end {
        println!(
            "soak: fds {} -> {} (bound +-{FD_SLACK}), threads {} -> {} (bound =), RSS excl. \
             guest memory {} -> {} (bound +{}), VmRSS {} -> {}",
            base.fds,
            e.fds,
            base.threads,
            e.threads,
            mib(base.private_kib()),
            mib(e.private_kib()),
            mib(RSS_SLACK_KIB),
            mib(base.vm_rss_kib),
            mib(e.vm_rss_kib)
        );
    }
    drop(fresh);
    let findings = findings.into_inner().unwrap();
    if !findings.is_empty() {
        // Keep the daemon's log, but do not let the harness dump all of it.
        let kept = std::env::temp_dir().join(format!("sriov-net-soak-{seed:#x}.log"));
        let _ = std::fs::copy(d.dir.join("daemon.log"), &kept);
        drop(d);
        panic!(
            "hostile soak (seed {seed:#x}; replay with SOAK_SEED={seed:#x}) found:\n{}daemon \
             log: {}",
            findings.report(),
            kept.display()
        );
    }
}
