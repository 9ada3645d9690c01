//! Test harness: the real daemon binary in a temp dir, and an in-process virtio-net driver model
//! (split rings in memfd guest memory) speaking vhost-user to it through the vhost crate's
//! frontend, the way QEMU would.

#![allow(dead_code)]

use std::fs::File;
use std::os::fd::FromRawFd;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{fence, Ordering};
use std::time::{Duration, Instant};

use serde_json::Value;
use vhost::vhost_user::message::{VhostUserProtocolFeatures, VhostUserVirtioFeatures};
use vhost::vhost_user::{Frontend, VhostUserFrontend};
use vhost::{VhostBackend, VhostUserMemoryRegionInfo, VringConfigData};
use virtio_bindings::bindings::virtio_config::VIRTIO_F_VERSION_1;
use virtio_bindings::bindings::virtio_net::*;
use virtio_bindings::bindings::virtio_ring::{
    VIRTIO_RING_F_EVENT_IDX, VIRTIO_RING_F_INDIRECT_DESC,
};
use vm_memory::{
    Bytes, FileOffset, GuestAddress, GuestMemoryBackend, GuestMemoryMmap, GuestRegionMmap,
};
use vmm_sys_util::eventfd::EventFd;

pub mod netns;

pub const NET_HDR_LEN: usize = 12;
pub const F_NEXT: u16 = 1;
pub const F_WRITE: u16 = 2;
pub const F_INDIRECT: u16 = 4;

// ---------------------------------------------------------------------------------------------
// The daemon process.

pub struct Daemon {
    child: Child,
    pub dir: PathBuf,
}

impl Daemon {
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Distinct test-driver memfds the daemon has mapped (guest memory it holds on to).
    pub fn mapped_guest_memories(&self) -> usize {
        let maps = std::fs::read_to_string(format!("/proc/{}/maps", self.pid())).unwrap();
        let inodes: std::collections::HashSet<&str> = maps
            .lines()
            .filter(|l| l.contains("memfd:sriov-net-test"))
            .filter_map(|l| l.split_whitespace().nth(4))
            .collect();
        inodes.len()
    }

    pub fn start(args: &[&str]) -> Daemon {
        Self::start_with(
            Command::new(env!("CARGO_BIN_EXE_vhost-user-sriov-net")),
            args,
        )
    }

    /// Starts the daemon through `cmd` (the binary, or e.g. `ip netns exec NS` and the binary):
    /// the socket directory, ready file and log are added here.
    pub fn start_with(mut cmd: Command, args: &[&str]) -> Daemon {
        static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let dir = std::env::temp_dir().join(format!(
            "sriov-net-it-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let ready = dir.join("ready");
        let log = File::create(dir.join("daemon.log")).unwrap();
        let child = cmd
            .arg("--socket-dir")
            .arg(&dir)
            .arg("--ready-file")
            .arg(&ready)
            .args(args)
            .env("RUST_LOG", "debug")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        let d = Daemon { child, dir };
        wait_for(
            Duration::from_secs(10),
            || ready.exists(),
            "daemon ready file",
        );
        d
    }

    /// A fresh, empty directory for a daemon started by [`Daemon::start_cmd`].
    pub fn fresh_dir(tag: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("sriov-net-it-{}-{tag}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    /// Starts `cmd` (which must run the daemon with `--socket-dir DIR --ready-file DIR/ready`),
    /// logging to DIR/daemon.log, and waits until it is ready.
    pub fn start_cmd(dir: PathBuf, mut cmd: Command) -> Daemon {
        let ready = dir.join("ready");
        let _ = std::fs::remove_file(&ready);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join("daemon.log"))
            .unwrap();
        let child = cmd
            .env("RUST_LOG", "debug")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        let d = Daemon { child, dir };
        wait_for(
            Duration::from_secs(10),
            || ready.exists(),
            "daemon ready file",
        );
        d
    }

    /// Sends `sig` to the daemon.
    pub fn signal(&self, sig: i32) {
        // SAFETY: kill(2) on our own child.
        unsafe { libc::kill(self.pid() as i32, sig) };
    }

    /// Waits for the daemon to exit; its status code.
    pub fn wait_exit(&mut self) -> Option<i32> {
        let t = Instant::now();
        loop {
            if let Some(st) = self.child.try_wait().unwrap() {
                return st.code();
            }
            assert!(t.elapsed() < Duration::from_secs(10), "daemon did not exit");
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// The daemon binary.
    pub fn bin() -> &'static str {
        env!("CARGO_BIN_EXE_vhost-user-sriov-net")
    }

    pub fn sock(&self, name: &str) -> PathBuf {
        self.dir.join(format!("{name}.sock"))
    }

    /// `ctl show -j`, through the real client.
    pub fn show(&self) -> Value {
        let out = self.ctl(&["show", "-j"]);
        serde_json::from_str(&out).unwrap()
    }

    pub fn ctl(&self, args: &[&str]) -> String {
        let out = Command::new(env!("CARGO_BIN_EXE_vhost-user-sriov-net"))
            .arg("ctl")
            .arg("--socket-dir")
            .arg(&self.dir)
            .args(args)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "ctl failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    pub fn partition(&self, name: &str) -> Value {
        let v = self.show();
        v["partitions"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["name"] == name)
            .cloned()
            .unwrap_or_else(|| panic!("no partition {name}"))
    }

    pub fn counter(&self, name: &str, key: &str) -> u64 {
        self.partition(name)["counters"][key].as_u64().unwrap()
    }

    pub fn state(&self, name: &str) -> String {
        self.partition(name)["state"].as_str().unwrap().to_string()
    }

    pub fn wait_state(&self, name: &str, state: &str) {
        wait_for(
            Duration::from_secs(5),
            || self.state(name) == state,
            &format!("{name} {state}"),
        );
    }

    pub fn mac(&self, name: &str) -> [u8; 6] {
        parse_mac(self.partition(name)["mac"].as_str().unwrap())
    }

    pub fn alive(&mut self) -> bool {
        self.child.try_wait().unwrap().is_none()
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("daemon.log")).unwrap_or_default()
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if !std::thread::panicking() {
            let _ = std::fs::remove_dir_all(&self.dir);
        } else {
            eprintln!("daemon log kept in {}:\n{}", self.dir.display(), self.log());
        }
    }
}

pub fn wait_for(timeout: Duration, mut f: impl FnMut() -> bool, what: &str) {
    let t = Instant::now();
    while !f() {
        assert!(t.elapsed() < timeout, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

pub fn parse_mac(s: &str) -> [u8; 6] {
    let mut m = [0u8; 6];
    for (o, p) in m.iter_mut().zip(s.split(':')) {
        *o = u8::from_str_radix(p, 16).unwrap();
    }
    m
}

// ---------------------------------------------------------------------------------------------
// The driver model.

/// Features a test driver asks for (always with VERSION_1 and PROTOCOL_FEATURES).
pub fn features(bits: &[u32]) -> u64 {
    bits.iter()
        .fold(1u64 << VIRTIO_F_VERSION_1, |f, b| f | (1 << b))
        | VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits()
}

/// What a Linux guest typically negotiates: mergeable RX, event idx, indirect, no offloads.
pub fn plain() -> u64 {
    features(&[
        VIRTIO_NET_F_MRG_RXBUF,
        VIRTIO_RING_F_EVENT_IDX,
        VIRTIO_RING_F_INDIRECT_DESC,
    ])
}

/// No mergeable RX buffers: each frame must fit one chain.
pub fn no_mrg() -> u64 {
    features(&[VIRTIO_RING_F_EVENT_IDX])
}

pub fn full_offloads() -> u64 {
    plain()
        | features(&[
            VIRTIO_NET_F_CSUM,
            VIRTIO_NET_F_GUEST_CSUM,
            VIRTIO_NET_F_HOST_TSO4,
            VIRTIO_NET_F_HOST_TSO6,
            VIRTIO_NET_F_GUEST_TSO4,
            VIRTIO_NET_F_GUEST_TSO6,
        ])
}

pub const QSIZE: u16 = 256;
/// Each descriptor slot owns a fixed 4 KiB buffer.
pub const SLOT: u64 = 4096;
const RING_AREA: u64 = 0x10000;
const QUEUE_SPAN: u64 = RING_AREA + QSIZE as u64 * SLOT;

struct DriverQueue {
    base: u64,
    kick: EventFd,
    call: EventFd,
    avail_idx: u16,
    used_seen: u16,
    free: Vec<u16>,
    /// For each head: the descriptor indices of its chain.
    chains: Vec<Vec<u16>>,
}

impl DriverQueue {
    fn desc(&self) -> u64 {
        self.base
    }
    fn avail(&self) -> u64 {
        self.base + 0x1000
    }
    fn used(&self) -> u64 {
        self.base + 0x2000
    }
    fn slot(&self, i: u16) -> u64 {
        self.base + RING_AREA + u64::from(i) * SLOT
    }
}

pub struct Driver {
    pub fe: Frontend,
    pub mem: GuestMemoryMmap<()>,
    pub features: u64,
    pub pairs: usize,
    queues: Vec<DriverQueue>,
    host_base: u64,
    /// With a vIOMMU (ACCESS_PLATFORM): what the device is given for guest address g is the
    /// IOVA g + iova (0 without).
    iova: u64,
    /// With a vIOMMU: a second handle on the vhost-user socket, for the IOTLB messages the
    /// vhost crate's frontend cannot send, and our end of the back-end request channel.
    raw: Option<std::os::unix::net::UnixStream>,
    pub backend_channel: Option<std::os::unix::net::UnixStream>,
}

/// A raw descriptor for hand-made (possibly malformed) chains. `next` is absolute.
#[derive(Clone, Copy)]
pub struct RawDesc {
    pub addr: u64,
    pub len: u32,
    pub flags: u16,
    pub next: u16,
}

impl Driver {
    /// Connects and negotiates, without starting rings (like QEMU at start-up).
    pub fn connect(path: &Path, want: u64, pairs: usize) -> Driver {
        Self::connect_with(path, want, pairs, None)
    }

    /// Connects with a vIOMMU: negotiates ACCESS_PLATFORM and BACKEND_REQ, and maps all of guest
    /// memory at IOVA `iova` (read-write, in 64 KiB entries) before any ring is set up.
    pub fn connect_iommu(path: &Path, want: u64, pairs: usize, iova: u64) -> Driver {
        let d = Self::connect_with(path, want | (1u64 << 33), pairs, Some(iova));
        assert!(d.has(33), "the daemon offers ACCESS_PLATFORM");
        d.map_all();
        d
    }

    /// Maps all of guest memory at the driver's IOVAs (read-write, in 64 KiB entries).
    pub fn map_all(&self) {
        let size = self.mem.last_addr().0 + 1;
        for off in (0..size).step_by(0x10000) {
            self.iotlb_update(self.iova + off, 0x10000, self.host_base + off, 3);
        }
    }

    /// The guest address of queue `qi`'s rings: descriptor table, then avail at +0x1000 and
    /// used at +0x2000, in one 64 KiB-aligned block.
    pub fn ring_gpa(&self, qi: usize) -> u64 {
        self.queues[qi].desc()
    }

    fn connect_with(path: &Path, want: u64, pairs: usize, iova: Option<u64>) -> Driver {
        let nq = 2 * pairs;
        let size = QUEUE_SPAN * nq as u64;
        // SAFETY: memfd_create with a valid C string; the fd is owned by the File below.
        let fd = unsafe { libc::memfd_create(c"sriov-net-test".as_ptr(), 0) };
        assert!(fd >= 0);
        // SAFETY: fd is a fresh, valid file descriptor we own.
        let file = unsafe { File::from_raw_fd(fd) };
        file.set_len(size).unwrap();
        let region = GuestRegionMmap::<()>::from_range(
            GuestAddress(0),
            size as usize,
            Some(FileOffset::new(file, 0)),
        )
        .unwrap();
        let mem = GuestMemoryMmap::from_regions(vec![region]).unwrap();
        let r = mem.find_region(GuestAddress(0)).unwrap();
        let info = VhostUserMemoryRegionInfo::from_guest_region(r).unwrap();
        let host_base = info.userspace_addr;

        let sock = std::os::unix::net::UnixStream::connect(path).unwrap();
        let raw = iova.map(|_| sock.try_clone().unwrap());
        let mut fe = Frontend::from_stream(sock, nq as u64);
        fe.set_owner().unwrap();
        let offered = fe.get_features().unwrap();
        let features = want & offered;
        fe.set_features(features).unwrap();
        let pf = fe.get_protocol_features().unwrap();
        let mut proto = VhostUserProtocolFeatures::MQ
            | VhostUserProtocolFeatures::REPLY_ACK
            | VhostUserProtocolFeatures::CONFIGURE_MEM_SLOTS;
        if iova.is_some() {
            proto |= VhostUserProtocolFeatures::BACKEND_REQ;
        }
        fe.set_protocol_features(pf & proto).unwrap();
        let backend_channel = iova.map(|_| {
            let (ours, theirs) = std::os::unix::net::UnixStream::pair().unwrap();
            fe.set_backend_request_fd(&theirs).unwrap();
            ours
        });
        assert!(fe.get_queue_num().unwrap() >= nq as u64);
        fe.set_mem_table(&[info]).unwrap();
        let queues = (0..nq)
            .map(|q| DriverQueue {
                base: q as u64 * QUEUE_SPAN,
                kick: EventFd::new(libc::EFD_NONBLOCK).unwrap(),
                call: EventFd::new(libc::EFD_NONBLOCK).unwrap(),
                avail_idx: 0,
                used_seen: 0,
                free: (0..QSIZE).rev().collect(),
                chains: vec![Vec::new(); QSIZE as usize],
            })
            .collect();
        Driver {
            fe,
            mem,
            features,
            pairs,
            queues,
            host_base,
            iova: iova.unwrap_or(0),
            raw,
            backend_channel,
        }
    }

    /// Sends one IOTLB_MSG (front-end request 22, NEED_REPLY) and returns the daemon's ack.
    fn iotlb_msg(&self, iova: u64, size: u64, uaddr: u64, perm: u8, kind: u8) -> u64 {
        use std::io::{Read, Write};
        let mut m = Vec::new();
        for v in [22u32, 1 | 8, 32] {
            m.extend_from_slice(&v.to_le_bytes());
        }
        for v in [iova, size, uaddr] {
            m.extend_from_slice(&v.to_le_bytes());
        }
        m.extend_from_slice(&[perm, kind, 0, 0, 0, 0, 0, 0]);
        let mut s = self.raw.as_ref().expect("a vIOMMU driver");
        s.write_all(&m).unwrap();
        let mut r = [0u8; 20];
        s.read_exact(&mut r).unwrap();
        assert_eq!(&r[..12], &[22, 0, 0, 0, 5, 0, 0, 0, 8, 0, 0, 0]);
        u64::from_le_bytes(r[12..].try_into().unwrap())
    }

    /// IOTLB UPDATE: `size` bytes at `iova` are QEMU VA `uaddr` with `perm` (1 RO, 2 WO, 3 RW).
    pub fn iotlb_update(&self, iova: u64, size: u64, uaddr: u64, perm: u8) {
        assert_eq!(
            self.iotlb_msg(iova, size, uaddr, perm, 2),
            0,
            "update acked"
        );
    }

    /// IOTLB INVALIDATE, acked only once the daemon no longer uses the range.
    pub fn iotlb_invalidate(&self, iova: u64, size: u64) {
        assert_eq!(self.iotlb_msg(iova, size, 0, 0, 3), 0, "invalidate acked");
    }

    /// The IOVA the device is given for guest address `gpa`.
    pub fn iova_of(&self, gpa: u64) -> u64 {
        gpa.wrapping_add(self.iova)
    }

    /// QEMU's (our) virtual address of guest address `gpa`.
    pub fn va_of(&self, gpa: u64) -> u64 {
        self.host_base + gpa
    }

    /// The next IOTLB MISS on the back-end channel within `timeout`: (iova, perm).
    pub fn read_miss(&self, timeout: Duration) -> Option<(u64, u8)> {
        use std::io::Read;
        let mut s = self.backend_channel.as_ref().expect("a vIOMMU driver");
        s.set_read_timeout(Some(timeout)).unwrap();
        let mut m = [0u8; 44];
        s.read_exact(&mut m).ok()?;
        assert_eq!(&m[..12], &[1, 0, 0, 0, 1, 0, 0, 0, 32, 0, 0, 0]);
        assert_eq!(m[37], 1, "type MISS");
        Some((u64::from_le_bytes(m[12..20].try_into().unwrap()), m[36]))
    }

    /// Connects and starts every ring: what virtio_net's probe causes.
    pub fn start(path: &Path, want: u64, pairs: usize) -> Driver {
        let mut d = Driver::connect(path, want, pairs);
        d.start_rings();
        d
    }

    pub fn has(&self, bit: u32) -> bool {
        self.features & (1 << bit) != 0
    }

    /// Fresh rings (as after a driver reset) and the vhost-user ring start sequence.
    pub fn start_rings(&mut self) {
        let (iova, host_base) = (self.iova, self.host_base);
        let ring_addr = |gpa: u64| {
            if self.raw.is_some() {
                gpa + iova
            } else {
                host_base + gpa
            }
        };
        for qi in 0..self.queues.len() {
            let q = &mut self.queues[qi];
            let zero = vec![0u8; RING_AREA as usize];
            self.mem.write_slice(&zero, GuestAddress(q.base)).unwrap();
            q.avail_idx = 0;
            q.used_seen = 0;
            q.free = (0..QSIZE).rev().collect();
            let cfg = VringConfigData {
                queue_max_size: QSIZE,
                queue_size: QSIZE,
                flags: 0,
                // QEMU's VAs, or with a vIOMMU the rings' IOVAs.
                desc_table_addr: ring_addr(q.desc()),
                used_ring_addr: ring_addr(q.used()),
                avail_ring_addr: ring_addr(q.avail()),
                log_addr: None,
            };
            self.fe.set_vring_num(qi, QSIZE).unwrap();
            self.fe.set_vring_addr(qi, &cfg).unwrap();
            self.fe.set_vring_base(qi, 0).unwrap();
            self.fe.set_vring_call(qi, &q.call).unwrap();
            self.fe.set_vring_kick(qi, &q.kick).unwrap();
            self.fe.set_vring_enable(qi, true).unwrap();
        }
    }

    /// QEMU's stop: GET_VRING_BASE on every ring, connection stays open.
    pub fn stop_rings(&mut self) {
        for qi in 0..self.queues.len() {
            self.fe.get_vring_base(qi).unwrap();
        }
    }

    fn alloc(&mut self, qi: usize, n: usize) -> Vec<u16> {
        let q = &mut self.queues[qi];
        assert!(q.free.len() >= n, "test driver out of descriptors");
        (0..n).map(|_| q.free.pop().unwrap()).collect()
    }

    fn write_desc(&self, qi: usize, i: u16, d: RawDesc) {
        let q = &self.queues[qi];
        let mut b = [0u8; 16];
        b[..8].copy_from_slice(&self.iova_of(d.addr).to_le_bytes());
        b[8..12].copy_from_slice(&d.len.to_le_bytes());
        b[12..14].copy_from_slice(&d.flags.to_le_bytes());
        b[14..16].copy_from_slice(&d.next.to_le_bytes());
        self.mem
            .write_slice(&b, GuestAddress(q.desc() + 16 * u64::from(i)))
            .unwrap();
    }

    fn offer(&mut self, qi: usize, head: u16) {
        let q = &mut self.queues[qi];
        let slot = q.avail() + 4 + 2 * u64::from(q.avail_idx % QSIZE);
        self.mem
            .write_obj(head.to_le(), GuestAddress(slot))
            .unwrap();
        q.avail_idx = q.avail_idx.wrapping_add(1);
        fence(Ordering::SeqCst);
        self.mem
            .store(
                q.avail_idx.to_le(),
                GuestAddress(q.avail() + 2),
                Ordering::Release,
            )
            .unwrap();
    }

    /// Kicks queue `qi` and reads the kick back after `spin`, racing the daemon for it.
    pub fn kick_and_drain(&self, qi: usize, spin: Duration) {
        self.kick(qi);
        let t = Instant::now();
        while t.elapsed() < spin {
            std::hint::spin_loop();
        }
        let _ = self.queues[qi].kick.read();
    }

    fn kick(&self, qi: usize) {
        self.queues[qi].kick.write(1).unwrap();
    }

    /// Offers header + frame on TX pair `pair` without kicking (see [`Driver::send_split`]).
    fn offer_split(&mut self, pair: usize, hdr: &[u8; NET_HDR_LEN], frame: &[u8], split: &[usize]) {
        let qi = 2 * pair + 1;
        let mut bytes = hdr.to_vec();
        bytes.extend_from_slice(frame);
        let mut pieces = Vec::new();
        let mut off = 0;
        for s in split {
            pieces.push(&bytes[off..off + s]);
            off += s;
        }
        while off < bytes.len() {
            let n = (bytes.len() - off).min(SLOT as usize);
            pieces.push(&bytes[off..off + n]);
            off += n;
        }
        let ids = self.alloc(qi, pieces.len());
        for (k, piece) in pieces.iter().enumerate() {
            let addr = self.queues[qi].slot(ids[k]);
            self.mem.write_slice(piece, GuestAddress(addr)).unwrap();
            let last = k + 1 == pieces.len();
            let d = RawDesc {
                addr,
                len: piece.len() as u32,
                flags: if last { 0 } else { F_NEXT },
                next: if last { 0 } else { ids[k + 1] },
            };
            self.write_desc(qi, ids[k], d);
        }
        self.queues[qi].chains[ids[0] as usize] = ids.clone();
        self.offer(qi, ids[0]);
    }

    /// Sends header + frame on TX pair `pair`, split into descriptors of the given sizes
    /// (the rest goes in a final descriptor). Each piece must fit a 4 KiB slot.
    pub fn send_split(
        &mut self,
        pair: usize,
        hdr: &[u8; NET_HDR_LEN],
        frame: &[u8],
        split: &[usize],
    ) {
        self.offer_split(pair, hdr, frame, split);
        self.kick(2 * pair + 1);
    }

    /// Offers every frame (zero header, one descriptor each) on TX pair `pair`, then kicks once:
    /// what a driver sending a burst does.
    pub fn send_burst(&mut self, pair: usize, frames: &[Vec<u8>]) {
        for f in frames {
            self.offer_split(pair, &[0; NET_HDR_LEN], f, &[]);
        }
        self.kick(2 * pair + 1);
    }

    pub fn send(&mut self, pair: usize, frame: &[u8]) {
        self.send_split(pair, &[0; NET_HDR_LEN], frame, &[]);
    }

    pub fn send_with_hdr(&mut self, pair: usize, hdr: &[u8; NET_HDR_LEN], frame: &[u8]) {
        self.send_split(pair, hdr, frame, &[]);
    }

    /// Posts a hand-made chain on queue `qi` using descriptor indices `ids` (descs[k] goes to
    /// ids[k]); `addr == u64::MAX` means "this descriptor's own slot".
    pub fn post_raw(&mut self, qi: usize, descs: &[RawDesc]) -> u16 {
        let ids = self.alloc(qi, descs.len());
        for (k, d) in descs.iter().enumerate() {
            let mut d = *d;
            if d.addr == u64::MAX {
                d.addr = self.queues[qi].slot(ids[k]);
            }
            self.write_desc(qi, ids[k], d);
        }
        self.queues[qi].chains[ids[0] as usize] = ids.clone();
        self.offer(qi, ids[0]);
        self.kick(qi);
        ids[0]
    }

    pub fn slot_addr(&self, qi: usize, id: u16) -> u64 {
        self.queues[qi].slot(id)
    }

    /// The descriptor index the next allocation on `qi` will return.
    pub fn next_free(&self, qi: usize) -> u16 {
        *self.queues[qi].free.last().unwrap()
    }

    /// Posts `n` RX chains of one writable `len`-byte buffer each on RX pair `pair`.
    pub fn post_rx(&mut self, pair: usize, n: usize, len: u32) {
        let qi = 2 * pair;
        for _ in 0..n {
            let ids = self.alloc(qi, 1);
            let d = RawDesc {
                addr: self.queues[qi].slot(ids[0]),
                len,
                flags: F_WRITE,
                next: 0,
            };
            self.write_desc(qi, ids[0], d);
            self.queues[qi].chains[ids[0] as usize] = ids.clone();
            self.offer(qi, ids[0]);
        }
        self.kick(qi);
    }

    /// New used entries on queue `qi` (id, len); their descriptors are freed.
    pub fn take_used(&mut self, qi: usize) -> Vec<(u16, u32)> {
        let q = &mut self.queues[qi];
        let idx = u16::from_le(
            self.mem
                .load(GuestAddress(q.used() + 2), Ordering::Acquire)
                .unwrap(),
        );
        let mut out = Vec::new();
        while q.used_seen != idx {
            let at = q.used() + 4 + 8 * u64::from(q.used_seen % QSIZE);
            let e: [u8; 8] = self.mem.read_obj(GuestAddress(at)).unwrap();
            let id = u32::from_le_bytes([e[0], e[1], e[2], e[3]]) as u16;
            let len = u32::from_le_bytes([e[4], e[5], e[6], e[7]]);
            let chain = std::mem::take(&mut q.chains[id as usize]);
            q.free.extend(chain);
            out.push((id, len));
            q.used_seen = q.used_seen.wrapping_add(1);
        }
        out
    }

    pub fn used_idx(&self, qi: usize) -> u16 {
        u16::from_le(
            self.mem
                .load(GuestAddress(self.queues[qi].used() + 2), Ordering::Acquire)
                .unwrap(),
        )
    }

    /// Waits until every chain sent on TX pair `pair` so far is completed; returns the
    /// completions (all must have length 0).
    pub fn wait_tx_done(&mut self, pair: usize, expect: usize) -> Vec<(u16, u32)> {
        let qi = 2 * pair + 1;
        let mut got = Vec::new();
        let t = Instant::now();
        while got.len() < expect {
            got.extend(self.take_used(qi));
            assert!(
                t.elapsed() < Duration::from_secs(5),
                "TX completions: {} of {expect}",
                got.len()
            );
            std::thread::sleep(Duration::from_millis(1));
        }
        got
    }

    /// Reads received frames from RX pair `pair`: (header, frame bytes, used entries spanned).
    pub fn recv(&mut self, pair: usize) -> Vec<(RxHdr, Vec<u8>)> {
        let qi = 2 * pair;
        let used = self.take_used(qi);
        let mut out = Vec::new();
        let mut i = 0;
        while i < used.len() {
            let (id, len) = used[i];
            let addr = self.queues[qi].slot(id);
            let mut hb = [0u8; NET_HDR_LEN];
            self.mem.read_slice(&mut hb, GuestAddress(addr)).unwrap();
            let hdr = RxHdr::parse(&hb);
            let n = usize::from(hdr.num_buffers.max(1));
            let mut data = vec![0u8; len as usize - NET_HDR_LEN];
            self.mem
                .read_slice(&mut data, GuestAddress(addr + NET_HDR_LEN as u64))
                .unwrap();
            for k in 1..n {
                let (id2, len2) = *used.get(i + k).expect("num_buffers exceeds used entries");
                let mut more = vec![0u8; len2 as usize];
                self.mem
                    .read_slice(&mut more, GuestAddress(self.queues[qi].slot(id2)))
                    .unwrap();
                data.extend(more);
            }
            out.push((hdr, data));
            i += n;
        }
        out
    }

    /// Waits until `n` frames arrived on RX pair `pair` (fails on more within a short grace).
    pub fn recv_n(&mut self, pair: usize, n: usize) -> Vec<(RxHdr, Vec<u8>)> {
        let mut got = Vec::new();
        let t = Instant::now();
        while got.len() < n {
            got.extend(self.recv(pair));
            assert!(
                t.elapsed() < Duration::from_secs(5),
                "RX frames: {} of {n}",
                got.len()
            );
            std::thread::sleep(Duration::from_millis(1));
        }
        got
    }

    pub fn call_fired(&self, qi: usize) -> bool {
        self.queues[qi].call.read().is_ok()
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RxHdr {
    pub flags: u8,
    pub gso_type: u8,
    pub hdr_len: u16,
    pub gso_size: u16,
    pub csum_start: u16,
    pub csum_offset: u16,
    pub num_buffers: u16,
}

impl RxHdr {
    pub fn parse(b: &[u8; NET_HDR_LEN]) -> Self {
        let u = |i: usize| u16::from_le_bytes([b[i], b[i + 1]]);
        RxHdr {
            flags: b[0],
            gso_type: b[1],
            hdr_len: u(2),
            gso_size: u(4),
            csum_start: u(6),
            csum_offset: u(8),
            num_buffers: u(10),
        }
    }
}

pub fn hdr(
    flags: u8,
    gso_type: u8,
    hdr_len: u16,
    gso_size: u16,
    csum_start: u16,
    csum_offset: u16,
) -> [u8; NET_HDR_LEN] {
    let mut b = [0u8; NET_HDR_LEN];
    b[0] = flags;
    b[1] = gso_type;
    b[2..4].copy_from_slice(&hdr_len.to_le_bytes());
    b[4..6].copy_from_slice(&gso_size.to_le_bytes());
    b[6..8].copy_from_slice(&csum_start.to_le_bytes());
    b[8..10].copy_from_slice(&csum_offset.to_le_bytes());
    b
}

// ---------------------------------------------------------------------------------------------
// Frames.

pub fn eth(dst: [u8; 6], src: [u8; 6], ethertype: u16, payload: &[u8]) -> Vec<u8> {
    let mut f = Vec::with_capacity(14 + payload.len());
    f.extend_from_slice(&dst);
    f.extend_from_slice(&src);
    f.extend_from_slice(&ethertype.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

/// A frame with a recognisable payload: `tag` repeated, `len` bytes after the Ethernet header.
pub fn test_frame(dst: [u8; 6], src: [u8; 6], tag: u8, len: usize) -> Vec<u8> {
    let payload: Vec<u8> = (0..len).map(|i| tag.wrapping_add(i as u8)).collect();
    eth(dst, src, 0x88b5, &payload)
}

/// Internet checksum over `data` with an initial sum.
pub fn csum(mut sum: u32, data: &[u8]) -> u16 {
    for c in data.chunks(2) {
        sum += u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)]));
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// Sum of the IPv4 pseudo-header (not folded, not complemented).
pub fn pseudo4(src: [u8; 4], dst: [u8; 4], proto: u8, len: usize) -> u32 {
    let w = |b: [u8; 2]| u32::from(u16::from_be_bytes(b));
    w([src[0], src[1]])
        + w([src[2], src[3]])
        + w([dst[0], dst[1]])
        + w([dst[2], dst[3]])
        + u32::from(proto)
        + len as u32
}

/// Ethernet + IPv4 + TCP with `payload`; checksums left as the driver would for offload:
/// IP header checksum valid, TCP checksum field seeded with the folded pseudo-header sum.
pub fn tcp4(dst: [u8; 6], src: [u8; 6], seq: u32, flags: u8, payload: &[u8]) -> Vec<u8> {
    let (sip, dip) = ([10, 0, 0, 1], [10, 0, 0, 2]);
    let tcp_len = 20 + payload.len();
    let mut ip = vec![0x45, 0, 0, 0, 0, 1, 0x40, 0, 64, 6, 0, 0];
    ip[2..4].copy_from_slice(&((20 + tcp_len) as u16).to_be_bytes());
    ip.extend_from_slice(&sip);
    ip.extend_from_slice(&dip);
    let c = csum(0, &ip);
    ip[10..12].copy_from_slice(&c.to_be_bytes());
    let mut tcp = vec![0u8; 20];
    tcp[0..2].copy_from_slice(&1234u16.to_be_bytes());
    tcp[2..4].copy_from_slice(&80u16.to_be_bytes());
    tcp[4..8].copy_from_slice(&seq.to_be_bytes());
    tcp[12] = 5 << 4;
    tcp[13] = flags;
    tcp[14..16].copy_from_slice(&65535u16.to_be_bytes());
    let seed = !csum(pseudo4(sip, dip, 6, tcp_len), &[]);
    tcp[16..18].copy_from_slice(&seed.to_be_bytes());
    tcp.extend_from_slice(payload);
    ip.extend(tcp);
    eth(dst, src, 0x0800, &ip)
}

/// True when the IPv4 header and TCP/UDP checksums of an Ethernet+IPv4 frame verify.
pub fn ipv4_l4_valid(frame: &[u8]) -> bool {
    let ip = &frame[14..];
    let ihl = usize::from(ip[0] & 0xf) * 4;
    let total = usize::from(u16::from_be_bytes([ip[2], ip[3]]));
    if csum(0, &ip[..ihl]) != 0 || total > ip.len() {
        return false;
    }
    let l4 = &ip[ihl..total];
    let ps = pseudo4(
        [ip[12], ip[13], ip[14], ip[15]],
        [ip[16], ip[17], ip[18], ip[19]],
        ip[9],
        l4.len(),
    );
    csum(ps, l4) == 0
}

impl Driver {
    /// The memory table entry this driver registered.
    pub fn region_info(&self) -> VhostUserMemoryRegionInfo {
        VhostUserMemoryRegionInfo::from_guest_region(self.mem.find_region(GuestAddress(0)).unwrap())
            .unwrap()
    }

    /// Publishes a bogus avail index on queue `qi` and kicks.
    pub fn corrupt_avail_idx(&mut self, qi: usize, idx: u16) {
        let avail = self.queues[qi].avail();
        self.mem
            .store(idx.to_le(), GuestAddress(avail + 2), Ordering::Release)
            .unwrap();
        self.kick(qi);
    }
}

// The hostile-frontend soak's helpers (tests/hostile.rs).
pub mod soak;
