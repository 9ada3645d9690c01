//! Helpers for the hostile-frontend soak (`tests/hostile.rs`): a seeded PRNG, a findings list,
//! the daemon's resource figures, driver operations that fail (with a timeout) instead of
//! panicking or hanging, raw vhost-user messages, frame builders, and the rules every frame a
//! receiver gets must satisfy for what that receiver negotiated.

use std::collections::BTreeMap;
use std::io::{ErrorKind, Read, Write};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::UnixStream;

use super::*;

// ---------------------------------------------------------------------------------------------
// A small deterministic PRNG (xorshift64*, seeded through splitmix64).

pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        let mut z = seed.wrapping_add(0x9e37_79b9_7f4a_7c15);
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        Rng((z ^ (z >> 31)) | 1)
    }

    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    pub fn u32(&mut self) -> u32 {
        (self.next_u64() >> 32) as u32
    }

    pub fn u16(&mut self) -> u16 {
        (self.next_u64() >> 48) as u16
    }

    pub fn u8(&mut self) -> u8 {
        (self.next_u64() >> 56) as u8
    }

    /// Uniform in 0..n (0 when n is 0).
    pub fn below(&mut self, n: u64) -> u64 {
        if n == 0 {
            0
        } else {
            self.next_u64() % n
        }
    }

    /// Uniform in lo..=hi.
    pub fn range(&mut self, lo: usize, hi: usize) -> usize {
        lo + self.below((hi - lo) as u64 + 1) as usize
    }

    pub fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }

    pub fn pick<T: Copy>(&mut self, xs: &[T]) -> T {
        xs[self.below(xs.len() as u64) as usize]
    }

    pub fn fill(&mut self, b: &mut [u8]) {
        for c in b.chunks_mut(8) {
            let r = self.next_u64().to_le_bytes();
            c.copy_from_slice(&r[..c.len()]);
        }
    }

    pub fn bytes(&mut self, n: usize) -> Vec<u8> {
        let mut v = vec![0u8; n];
        self.fill(&mut v);
        v
    }

    /// lo..=hi random bytes.
    pub fn bytes_in(&mut self, lo: usize, hi: usize) -> Vec<u8> {
        let n = self.range(lo, hi);
        self.bytes(n)
    }

    /// An independent stream for another thread.
    pub fn fork(&mut self) -> Rng {
        Rng::new(self.next_u64())
    }
}

// ---------------------------------------------------------------------------------------------
// Findings: what broke, counted per kind, with the first few details.

#[derive(Default)]
pub struct Findings(BTreeMap<String, (u64, Vec<String>)>);

impl Findings {
    /// Records one occurrence; the first of each kind is printed right away.
    pub fn add(&mut self, kind: &str, detail: String) {
        let e = self.0.entry(kind.to_string()).or_default();
        if e.0 == 0 {
            eprintln!("soak: FAIL {kind}: {detail}");
        }
        e.0 += 1;
        if e.1.len() < 3 {
            e.1.push(detail);
        }
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn report(&self) -> String {
        let mut s = String::new();
        for (kind, (n, details)) in &self.0 {
            s += &format!("  - {kind} ({n}x)\n");
            for d in details {
                s += &format!("      {d}\n");
            }
        }
        s
    }
}

// ---------------------------------------------------------------------------------------------
// The daemon's resources, from /proc.

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Figures {
    pub fds: usize,
    pub threads: usize,
    pub vm_rss_kib: u64,
    /// Shared memory the daemon has touched: the frontends' guest memory (memfd).
    pub rss_shmem_kib: u64,
}

impl Figures {
    pub fn of(pid: u32) -> Option<Figures> {
        let count = |d: &str| std::fs::read_dir(format!("/proc/{pid}/{d}")).map(|r| r.count());
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
        let kib = |key: &str| {
            status
                .lines()
                .find(|l| l.starts_with(key))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap_or(0)
        };
        Some(Figures {
            fds: count("fd").ok()?,
            threads: count("task").ok()?,
            vm_rss_kib: kib("VmRSS:"),
            rss_shmem_kib: kib("RssShmem:"),
        })
    }

    /// The daemon's own memory (anonymous and file-backed RSS), without guest memory: the
    /// drivers' buffers it has touched grow VmRSS legitimately as rings cycle.
    pub fn private_kib(&self) -> u64 {
        self.vm_rss_kib.saturating_sub(self.rss_shmem_kib)
    }
}

pub fn mib(kib: u64) -> String {
    format!("{:.1} MiB", kib as f64 / 1024.0)
}

/// The daemon process still runs (not exited, not a zombie).
pub fn running(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| s.rsplit(") ").next().map(|r| !r.starts_with('Z')))
        .unwrap_or(false)
}

/// `ctl show -j` for one partition, None when the control socket does not answer.
pub fn try_partition(d: &Daemon, name: &str) -> Option<Value> {
    let out = Command::new(env!("CARGO_BIN_EXE_vhost-user-sriov-net"))
        .arg("ctl")
        .arg("--socket-dir")
        .arg(&d.dir)
        .args(["show", "-j"])
        .output()
        .ok()?;
    if !out.status.success() {
        return None;
    }
    let v: Value = serde_json::from_slice(&out.stdout).ok()?;
    v["partitions"]
        .as_array()?
        .iter()
        .find(|p| p["name"] == name)
        .cloned()
}

// ---------------------------------------------------------------------------------------------
// Driver operations that report failure (with socket timeouts) instead of panicking or hanging.

fn err<E: std::fmt::Display>(what: &'static str) -> impl Fn(E) -> String {
    move |e| format!("{what}: {e}")
}

/// Runs `f`, shutting socket `fd` down if `f` takes longer than `timeout`: the vhost crate's
/// frontend retries timed-out socket calls forever, so socket timeouts cannot bound it.
fn guarded<R>(fd: RawFd, timeout: Duration, f: impl FnOnce() -> R) -> R {
    let (tx, rx) = std::sync::mpsc::channel::<()>();
    let dog = std::thread::spawn(move || {
        if rx.recv_timeout(timeout) == Err(std::sync::mpsc::RecvTimeoutError::Timeout) {
            // SAFETY: the caller owns `fd` until after the join below; shutdown only ends the
            // connection, it does not close the descriptor.
            unsafe { libc::shutdown(fd, libc::SHUT_RDWR) };
        }
    });
    let r = f();
    drop(tx);
    let _ = dog.join();
    r
}

impl Driver {
    /// Connects and negotiates; gives up (shutting the connection down) after `timeout`.
    pub fn try_connect(
        path: &Path,
        want: u64,
        pairs: usize,
        timeout: Duration,
    ) -> Result<Driver, String> {
        let s = UnixStream::connect(path).map_err(err("connect"))?;
        Driver::try_on(s, want, pairs, timeout)
    }

    /// Negotiates like [`Driver::connect`] over an already connected stream, within `timeout`.
    pub fn try_on(
        sock: UnixStream,
        want: u64,
        pairs: usize,
        timeout: Duration,
    ) -> Result<Driver, String> {
        let fd = sock.as_raw_fd();
        guarded(fd, timeout, || Driver::negotiate(sock, want, pairs))
            .map_err(|e| format!("{e} (gave up after {timeout:?})"))
    }

    fn negotiate(sock: UnixStream, want: u64, pairs: usize) -> Result<Driver, String> {
        let nq = 2 * pairs;
        let size = QUEUE_SPAN * nq as u64;
        // SAFETY: memfd_create with a valid C string; the fd is owned by the File below.
        let fd = unsafe { libc::memfd_create(c"sriov-net-test".as_ptr(), 0) };
        if fd < 0 {
            return Err(format!("memfd: {}", std::io::Error::last_os_error()));
        }
        // SAFETY: fd is a fresh, valid file descriptor we own.
        let file = unsafe { File::from_raw_fd(fd) };
        file.set_len(size).map_err(err("memfd size"))?;
        let region = GuestRegionMmap::<()>::from_range(
            GuestAddress(0),
            size as usize,
            Some(FileOffset::new(file, 0)),
        )
        .map_err(err("mmap"))?;
        let mem = GuestMemoryMmap::from_regions(vec![region]).map_err(err("memory"))?;
        let r = mem.find_region(GuestAddress(0)).ok_or("no region")?;
        let info = VhostUserMemoryRegionInfo::from_guest_region(r).map_err(err("region"))?;
        let host_base = info.userspace_addr;

        let mut fe = Frontend::from_stream(sock, nq as u64);
        fe.set_owner().map_err(err("SET_OWNER"))?;
        let offered = fe.get_features().map_err(err("GET_FEATURES"))?;
        let features = want & offered;
        fe.set_features(features).map_err(err("SET_FEATURES"))?;
        let pf = fe
            .get_protocol_features()
            .map_err(err("GET_PROTOCOL_FEATURES"))?;
        fe.set_protocol_features(
            pf & (VhostUserProtocolFeatures::MQ
                | VhostUserProtocolFeatures::REPLY_ACK
                | VhostUserProtocolFeatures::CONFIGURE_MEM_SLOTS),
        )
        .map_err(err("SET_PROTOCOL_FEATURES"))?;
        let qn = fe.get_queue_num().map_err(err("GET_QUEUE_NUM"))?;
        if qn < nq as u64 {
            return Err(format!("GET_QUEUE_NUM: {qn} < {nq}"));
        }
        fe.set_mem_table(&[info]).map_err(err("SET_MEM_TABLE"))?;
        let queues = (0..nq)
            .map(|q| {
                Ok(DriverQueue {
                    base: q as u64 * QUEUE_SPAN,
                    kick: EventFd::new(libc::EFD_NONBLOCK).map_err(err("eventfd"))?,
                    call: EventFd::new(libc::EFD_NONBLOCK).map_err(err("eventfd"))?,
                    avail_idx: 0,
                    used_seen: 0,
                    free: (0..QSIZE).rev().collect(),
                    chains: vec![Vec::new(); QSIZE as usize],
                })
            })
            .collect::<Result<Vec<_>, String>>()?;
        Ok(Driver {
            fe,
            mem,
            features,
            pairs,
            queues,
            host_base,
            iova: 0,
            raw: None,
            backend_channel: None,
        })
    }

    pub fn try_start(
        path: &Path,
        want: u64,
        pairs: usize,
        timeout: Duration,
    ) -> Result<Driver, String> {
        let mut d = Driver::try_connect(path, want, pairs, timeout)?;
        d.try_start_rings(timeout)?;
        Ok(d)
    }

    /// [`Driver::start_rings`], reporting errors; gives up after `timeout`.
    pub fn try_start_rings(&mut self, timeout: Duration) -> Result<(), String> {
        let fd = self.fe.as_raw_fd();
        guarded(fd, timeout, || self.start_rings_inner())
    }

    fn start_rings_inner(&mut self) -> Result<(), String> {
        for qi in 0..self.queues.len() {
            let q = &mut self.queues[qi];
            let zero = vec![0u8; RING_AREA as usize];
            self.mem
                .write_slice(&zero, GuestAddress(q.base))
                .map_err(err("ring memory"))?;
            q.avail_idx = 0;
            q.used_seen = 0;
            q.free = (0..QSIZE).rev().collect();
            for c in q.chains.iter_mut() {
                c.clear();
            }
            let cfg = VringConfigData {
                queue_max_size: QSIZE,
                queue_size: QSIZE,
                flags: 0,
                desc_table_addr: self.host_base + q.desc(),
                used_ring_addr: self.host_base + q.used(),
                avail_ring_addr: self.host_base + q.avail(),
                log_addr: None,
            };
            self.fe
                .set_vring_num(qi, QSIZE)
                .map_err(err("SET_VRING_NUM"))?;
            self.fe
                .set_vring_addr(qi, &cfg)
                .map_err(err("SET_VRING_ADDR"))?;
            self.fe
                .set_vring_base(qi, 0)
                .map_err(err("SET_VRING_BASE"))?;
            self.fe
                .set_vring_call(qi, &q.call)
                .map_err(err("SET_VRING_CALL"))?;
            self.fe
                .set_vring_kick(qi, &q.kick)
                .map_err(err("SET_VRING_KICK"))?;
            self.fe
                .set_vring_enable(qi, true)
                .map_err(err("SET_VRING_ENABLE"))?;
        }
        Ok(())
    }

    /// [`Driver::stop_rings`], reporting errors; gives up after `timeout`.
    pub fn try_stop_rings(&mut self, timeout: Duration) -> Result<(), String> {
        let fd = self.fe.as_raw_fd();
        guarded(fd, timeout, || {
            for qi in 0..self.queues.len() {
                self.fe.get_vring_base(qi).map_err(err("GET_VRING_BASE"))?;
            }
            Ok(())
        })
    }

    /// Descriptors of queue `qi` not owned by the device.
    pub fn free_descs(&self, qi: usize) -> usize {
        self.queues[qi].free.len()
    }

    /// The descriptor indices the next allocation of `n` on `qi` returns, in order.
    pub fn peek_free(&self, qi: usize, n: usize) -> Vec<u16> {
        self.queues[qi].free.iter().rev().take(n).copied().collect()
    }

    /// Size of the guest memory (one region at guest address 0).
    pub fn mem_len(&self) -> u64 {
        QUEUE_SPAN * self.queues.len() as u64
    }

    pub fn write_guest(&self, addr: u64, bytes: &[u8]) {
        self.mem.write_slice(bytes, GuestAddress(addr)).unwrap();
    }

    /// Sends header + frame (at most 3 KiB together) on TX pair `pair` as one indirect
    /// descriptor whose table (in the same 4 KiB slot) splits the bytes into `pieces`.
    pub fn send_indirect(
        &mut self,
        pair: usize,
        hdr: &[u8; NET_HDR_LEN],
        frame: &[u8],
        pieces: usize,
    ) {
        let qi = 2 * pair + 1;
        let mut bytes = hdr.to_vec();
        bytes.extend_from_slice(frame);
        assert!(bytes.len() <= 3072 && pieces >= 1);
        let slot = self.slot_addr(qi, self.next_free(qi));
        self.write_guest(slot + 1024, &bytes);
        let step = bytes.len().div_ceil(pieces).max(1);
        let mut table = Vec::new();
        let n = bytes.len().div_ceil(step);
        for k in 0..n {
            let off = k * step;
            let len = step.min(bytes.len() - off);
            let last = k + 1 == n;
            table.extend_from_slice(&(slot + 1024 + off as u64).to_le_bytes());
            table.extend_from_slice(&(len as u32).to_le_bytes());
            table.extend_from_slice(&(if last { 0 } else { F_NEXT }).to_le_bytes());
            table.extend_from_slice(&(if last { 0u16 } else { k as u16 + 1 }).to_le_bytes());
        }
        self.write_guest(slot, &table);
        self.post_raw(
            qi,
            &[RawDesc {
                addr: u64::MAX,
                len: table.len() as u32,
                flags: F_INDIRECT,
                next: 0,
            }],
        );
    }
}

/// One 16-byte descriptor as it sits in a table.
pub fn desc_bytes(d: RawDesc) -> [u8; 16] {
    let mut b = [0u8; 16];
    b[..8].copy_from_slice(&d.addr.to_le_bytes());
    b[8..12].copy_from_slice(&d.len.to_le_bytes());
    b[12..14].copy_from_slice(&d.flags.to_le_bytes());
    b[14..16].copy_from_slice(&d.next.to_le_bytes());
    b
}

// ---------------------------------------------------------------------------------------------
// Raw vhost-user messages: header = u32 request, u32 flags, u32 size, then the payload (LE).

pub const VU_VERSION_1: u32 = 0x1;
pub const VU_NEED_REPLY: u32 = 0x8;
pub const VU_GET_FEATURES: u32 = 1;
pub const VU_SET_FEATURES: u32 = 2;
pub const VU_SET_OWNER: u32 = 3;
pub const VU_GET_PROTOCOL_FEATURES: u32 = 15;
pub const VU_SET_PROTOCOL_FEATURES: u32 = 16;
pub const VU_GET_QUEUE_NUM: u32 = 17;
pub const VU_SET_VRING_ENABLE: u32 = 18;

pub fn vu_header(request: u32, flags: u32, size: u32) -> [u8; 12] {
    let mut h = [0u8; 12];
    h[0..4].copy_from_slice(&request.to_le_bytes());
    h[4..8].copy_from_slice(&flags.to_le_bytes());
    h[8..12].copy_from_slice(&size.to_le_bytes());
    h
}

pub fn vu_msg(request: u32, flags: u32, payload: &[u8]) -> Vec<u8> {
    let mut v = vu_header(request, flags, payload.len() as u32).to_vec();
    v.extend_from_slice(payload);
    v
}

/// Writes everything; false when the daemon closed or the write timed out.
pub fn vu_send(s: &UnixStream, bytes: &[u8]) -> bool {
    let mut w = s;
    w.write_all(bytes).is_ok()
}

/// Reads whatever replies are waiting, without blocking; returns the bytes read.
pub fn vu_drain(s: &UnixStream) -> usize {
    if s.set_nonblocking(true).is_err() {
        return 0;
    }
    let mut total = 0;
    let mut buf = [0u8; 4096];
    let mut r = s;
    while let Ok(n) = r.read(&mut buf) {
        if n == 0 {
            break;
        }
        total += n;
    }
    let _ = s.set_nonblocking(false);
    total
}

/// Reads one reply (within the stream's read timeout): (request, flags, payload).
pub fn vu_reply(s: &UnixStream) -> Option<(u32, u32, Vec<u8>)> {
    let mut r = s;
    let mut h = [0u8; 12];
    r.read_exact(&mut h).ok()?;
    let w = |i: usize| u32::from_le_bytes([h[i], h[i + 1], h[i + 2], h[i + 3]]);
    let size = w(8) as usize;
    if size > 4096 {
        return None;
    }
    let mut p = vec![0u8; size];
    r.read_exact(&mut p).ok()?;
    Some((w(0), w(4), p))
}

/// A u64 from a reply payload.
pub fn vu_u64(p: &[u8]) -> u64 {
    p.get(..8)
        .map(|b| u64::from_le_bytes(b.try_into().unwrap()))
        .unwrap_or(0)
}

/// Writes `buf` (whole messages) over and over for `dur` without reading anything back; a write
/// that times out is retried from where it stopped, so the stream stays message-aligned.
/// Returns the bytes written.
pub fn vu_spam(s: &UnixStream, buf: &[u8], dur: Duration) -> usize {
    let t = Instant::now();
    let mut w = s;
    let mut off = 0;
    let mut total = 0;
    while t.elapsed() < dur {
        match w.write(&buf[off..]) {
            Ok(0) => break,
            Ok(n) => {
                total += n;
                off = (off + n) % buf.len();
            }
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(_) => break,
        }
    }
    total
}

// ---------------------------------------------------------------------------------------------
// Frames.

pub const BROADCAST: [u8; 6] = [0xff; 6];
/// TCP source port of the soak's IP-total-length probes: their payload byte at sequence number
/// `s` is `pat(s)`, and whatever follows the IP total length is 0xff, which `pat` never yields.
pub const PROBE_PORT: u16 = 0x5eed;
/// TCP source port of the soak's super-frames whose gso_size is above what the receivers' MTU
/// can carry: a frame from it over the MTU is a segment cut at the sender's gso_size.
pub const MSS_PROBE_PORT: u16 = 0x6d55;

/// The TCP source port of an untagged IPv4 TCP frame.
fn tcp4_sport(f: &[u8]) -> Option<u16> {
    (f.len() >= 54 && f[12..14] == [0x08, 0x00] && f[14] == 0x45 && f[23] == 6)
        .then(|| u16::from_be_bytes([f[34], f[35]]))
}

pub fn pat(seq: u32) -> u8 {
    (seq % 251) as u8
}

/// Which L4 checksum a built frame carries.
#[derive(Clone, Copy, Debug)]
pub enum L4Csum {
    /// The pseudo-header sum, as a driver leaves it for NEEDS_CSUM or GSO.
    Partial,
    /// Complete and valid.
    Full,
    /// This value.
    Raw(u16),
}

/// A TCP segment (20-byte header) with its checksum field 0.
pub fn tcp_seg(sport: u16, dport: u16, seq: u32, flags: u8, payload: &[u8]) -> Vec<u8> {
    let mut t = vec![0u8; 20];
    t[0..2].copy_from_slice(&sport.to_be_bytes());
    t[2..4].copy_from_slice(&dport.to_be_bytes());
    t[4..8].copy_from_slice(&seq.to_be_bytes());
    t[12] = 5 << 4;
    t[13] = flags;
    t[14..16].copy_from_slice(&65535u16.to_be_bytes());
    t.extend_from_slice(payload);
    t
}

/// A UDP datagram with its checksum field 0.
pub fn udp_dgram(sport: u16, dport: u16, payload: &[u8]) -> Vec<u8> {
    let mut u = vec![0u8; 8];
    u[0..2].copy_from_slice(&sport.to_be_bytes());
    u[2..4].copy_from_slice(&dport.to_be_bytes());
    u[4..6].copy_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
    u.extend_from_slice(payload);
    u
}

/// Offset of the checksum field within a TCP (6) or UDP (17) header.
pub fn l4_csum_offset(proto: u8) -> usize {
    if proto == 17 {
        6
    } else {
        16
    }
}

fn set_l4_csum(l4: &mut [u8], proto: u8, pseudo: u32, mode: L4Csum) {
    let at = l4_csum_offset(proto);
    l4[at..at + 2].copy_from_slice(&[0, 0]);
    let v = match mode {
        L4Csum::Partial => !csum(pseudo, &[]),
        L4Csum::Full => match csum(pseudo, l4) {
            0 => 0xffff,
            c => c,
        },
        L4Csum::Raw(v) => v,
    };
    l4[at..at + 2].copy_from_slice(&v.to_be_bytes());
}

/// Ethernet + IPv4 (10.0.0.1 -> 10.0.0.2, valid header checksum) + `l4`.
pub fn frame_v4(dst: [u8; 6], src: [u8; 6], proto: u8, mut l4: Vec<u8>, mode: L4Csum) -> Vec<u8> {
    let (sip, dip) = ([10, 0, 0, 1], [10, 0, 0, 2]);
    let len = l4.len();
    set_l4_csum(&mut l4, proto, pseudo4(sip, dip, proto, len), mode);
    let mut ip = vec![0x45, 0, 0, 0, 0, 1, 0x40, 0, 64, proto, 0, 0];
    ip[2..4].copy_from_slice(&((20 + l4.len()) as u16).to_be_bytes());
    ip.extend_from_slice(&sip);
    ip.extend_from_slice(&dip);
    let c = csum(0, &ip);
    ip[10..12].copy_from_slice(&c.to_be_bytes());
    ip.extend(l4);
    eth(dst, src, 0x0800, &ip)
}

const SIP6: [u8; 16] = [0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1];
const DIP6: [u8; 16] = [0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2];

/// Sum of the IPv6 pseudo-header (not folded, not complemented).
pub fn pseudo6(src: &[u8], dst: &[u8], next: u8, len: usize) -> u32 {
    let mut s: u32 = 0;
    for c in src.chunks(2).chain(dst.chunks(2)) {
        s += u32::from(u16::from_be_bytes([c[0], c[1]]));
    }
    s + (len as u32 >> 16) + (len as u32 & 0xffff) + u32::from(next)
}

/// Ethernet + IPv6 (fd00::1 -> fd00::2) + `l4`.
pub fn frame_v6(dst: [u8; 6], src: [u8; 6], next: u8, mut l4: Vec<u8>, mode: L4Csum) -> Vec<u8> {
    let len = l4.len();
    set_l4_csum(&mut l4, next, pseudo6(&SIP6, &DIP6, next, len), mode);
    let mut ip = vec![0x60, 0, 0, 0, 0, 0, next, 64];
    ip[4..6].copy_from_slice(&(l4.len() as u16).to_be_bytes());
    ip.extend_from_slice(&SIP6);
    ip.extend_from_slice(&DIP6);
    ip.extend(l4);
    eth(dst, src, 0x86dd, &ip)
}

/// The frame with an 802.1Q tag inserted after the MAC addresses.
pub fn vlan_tag(frame: &[u8], tci: u16) -> Vec<u8> {
    let mut f = frame[..12].to_vec();
    f.extend_from_slice(&0x8100u16.to_be_bytes());
    f.extend_from_slice(&tci.to_be_bytes());
    f.extend_from_slice(&frame[12..]);
    f
}

fn is_vlan(ethertype: u16) -> bool {
    ethertype == 0x8100 || ethertype == 0x88a8
}

/// The frame with up to two VLAN tags removed (and how many there were).
fn untagged(frame: &[u8]) -> (Vec<u8>, usize) {
    let mut f = frame.to_vec();
    let mut tags = 0;
    while tags < 2 && f.len() >= 18 && is_vlan(u16::from_be_bytes([f[12], f[13]])) {
        f.drain(12..16);
        tags += 1;
    }
    (f, tags)
}

/// Whether an Ethernet frame carries TCP or UDP over IPv4 or IPv6 whose checksums verify (the
/// IPv4 case through [`ipv4_l4_valid`], after bounds checks it does not make itself).
pub fn l4_checksum(frame: &[u8]) -> Result<(), String> {
    let (f, _) = untagged(frame);
    if f.len() < 14 {
        return Err("no Ethernet header".into());
    }
    match u16::from_be_bytes([f[12], f[13]]) {
        0x0800 => {
            let ip = &f[14..];
            if ip.len() < 20 || ip[0] >> 4 != 4 {
                return Err("truncated IPv4 header".into());
            }
            let ihl = usize::from(ip[0] & 0xf) * 4;
            let total = usize::from(u16::from_be_bytes([ip[2], ip[3]]));
            if ihl < 20 || ihl > ip.len() || total < ihl + 8 || total > ip.len() {
                return Err(format!(
                    "IPv4 ihl {ihl} / total length {total} do not fit {} bytes",
                    ip.len()
                ));
            }
            if ip[9] != 6 && ip[9] != 17 {
                return Err(format!("IPv4 protocol {} is not TCP or UDP", ip[9]));
            }
            if ipv4_l4_valid(&f) {
                Ok(())
            } else {
                Err("IPv4 header or TCP/UDP checksum does not verify".into())
            }
        }
        0x86dd => {
            let ip = &f[14..];
            if ip.len() < 40 || ip[0] >> 4 != 6 {
                return Err("truncated IPv6 header".into());
            }
            let plen = usize::from(u16::from_be_bytes([ip[4], ip[5]]));
            if ip[6] != 6 && ip[6] != 17 {
                return Err(format!("IPv6 next header {} is not TCP or UDP", ip[6]));
            }
            if plen < 8 || 40 + plen > ip.len() {
                return Err(format!("IPv6 payload length {plen} does not fit"));
            }
            let l4 = &ip[40..40 + plen];
            if csum(pseudo6(&ip[8..24], &ip[24..40], ip[6], plen), l4) == 0 {
                Ok(())
            } else {
                Err("IPv6 TCP/UDP checksum does not verify".into())
            }
        }
        t => Err(format!("ethertype {t:#06x} is not IP")),
    }
}

/// An IPv4 TCP frame from [`PROBE_PORT`] with `n` pattern bytes of payload starting at `seq`,
/// followed by `trailing` 0xff bytes that lie beyond the IP total length.
pub fn probe_tcp4(dst: [u8; 6], src: [u8; 6], seq: u32, n: usize, trailing: usize) -> Vec<u8> {
    let payload: Vec<u8> = (0..n as u32).map(|i| pat(seq.wrapping_add(i))).collect();
    let mut f = frame_v4(
        dst,
        src,
        6,
        tcp_seg(PROBE_PORT, 80, seq, 0x18, &payload),
        L4Csum::Partial,
    );
    f.extend(std::iter::repeat_n(0xff, trailing));
    f
}

/// For a probe frame (IPv4 TCP from [`PROBE_PORT`]): every payload byte within the IP total
/// length is the sender's. Other frames pass.
pub fn probe_payload(frame: &[u8]) -> Result<(), String> {
    let (f, _) = untagged(frame);
    if tcp4_sport(&f) != Some(PROBE_PORT) {
        return Ok(());
    }
    let total = usize::from(u16::from_be_bytes([f[16], f[17]]));
    let doff = usize::from(f[46] >> 4) * 4;
    let seq = u32::from_be_bytes([f[38], f[39], f[40], f[41]]);
    let end = (14 + total).min(f.len());
    let start = 34 + doff;
    for (i, b) in f.get(start..end).unwrap_or(&[]).iter().enumerate() {
        let s = seq.wrapping_add(i as u32);
        if *b != pat(s) {
            return Err(format!(
                "probe segment seq {seq}: byte {i} of its payload (IP total length {total}) is \
                 {b:#04x}, the sender's is {:#04x}; bytes past the sender's IP total length \
                 were delivered as payload",
                pat(s)
            ));
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// What a receiver may get.

pub const FLAG_NEEDS_CSUM: u8 = 1;
pub const FLAG_DATA_VALID: u8 = 2;

/// A receiver's negotiated offloads and MTU.
#[derive(Clone, Debug)]
pub struct RxRules {
    pub name: String,
    pub csum: bool,
    pub tso4: bool,
    pub tso6: bool,
    pub mtu: usize,
}

impl RxRules {
    pub fn of(name: &str, drv: &Driver, mtu: usize) -> RxRules {
        use virtio_bindings::bindings::virtio_net::*;
        RxRules {
            name: name.to_string(),
            csum: drv.has(VIRTIO_NET_F_GUEST_CSUM),
            tso4: drv.has(VIRTIO_NET_F_GUEST_TSO4),
            tso6: drv.has(VIRTIO_NET_F_GUEST_TSO6),
            mtu,
        }
    }

    /// Every rule a received frame breaks: (kind, detail).
    pub fn check(&self, h: &RxHdr, f: &[u8]) -> Vec<(&'static str, String)> {
        let mut bad = Vec::new();
        let who = &self.name;
        let desc = || {
            format!(
                "{who} got {} bytes, hdr flags {:#x} gso_type {:#x} gso_size {} csum {}+{}",
                f.len(),
                h.flags,
                h.gso_type,
                h.gso_size,
                h.csum_start,
                h.csum_offset
            )
        };
        let kind = h.gso_type & 0x7f;
        let gso_ok = match kind {
            0 => true,
            1 => self.tso4,
            4 => self.tso6,
            _ => false,
        } && h.gso_type & 0x80 == 0;
        if h.gso_type != 0 {
            if !gso_ok {
                bad.push((
                    "GSO type the receiver did not negotiate",
                    format!(
                        "{} (GUEST_TSO4 {}, GUEST_TSO6 {}, no GUEST_ECN/UFO)",
                        desc(),
                        self.tso4,
                        self.tso6
                    ),
                ));
            } else if h.gso_size == 0 {
                bad.push(("GSO frame with gso_size 0 delivered", desc()));
            }
        }
        let tagged = f.len() >= 14 && is_vlan(u16::from_be_bytes([f[12], f[13]]));
        let max = self.mtu + 14 + if tagged { 4 } else { 0 };
        if f.len() > max && !(h.gso_type != 0 && gso_ok) {
            let kind = if tcp4_sport(f) == Some(MSS_PROBE_PORT) {
                "segment over the receiver's MTU delivered (cut at the sender's gso_size)"
            } else {
                "frame over the receiver's MTU delivered"
            };
            bad.push((
                kind,
                format!(
                    "{} > MTU {} + {} (not GSO)",
                    desc(),
                    self.mtu,
                    max - self.mtu
                ),
            ));
        }
        if f.len() < 14 {
            bad.push(("frame shorter than an Ethernet header", desc()));
        }
        if h.flags & !(FLAG_NEEDS_CSUM | FLAG_DATA_VALID) != 0 {
            bad.push(("unknown RX header flags", desc()));
        }
        if h.flags & FLAG_NEEDS_CSUM != 0 {
            if !self.csum {
                bad.push(("NEEDS_CSUM to a receiver without GUEST_CSUM", desc()));
            } else if usize::from(h.csum_start) + usize::from(h.csum_offset) + 2 > f.len() {
                bad.push((
                    "NEEDS_CSUM with the checksum field outside the frame",
                    desc(),
                ));
            }
        }
        if h.flags & FLAG_DATA_VALID != 0 {
            if !self.csum {
                bad.push(("DATA_VALID to a receiver without GUEST_CSUM", desc()));
            } else if let Err(e) = l4_checksum(f) {
                bad.push((
                    "DATA_VALID on a frame whose checksum does not verify",
                    format!("{}: {e}", desc()),
                ));
            }
        }
        if let Err(e) = probe_payload(f) {
            bad.push((
                "payload beyond the sender's IP total length delivered",
                format!("{who}: {e}"),
            ));
        }
        bad
    }
}
