//! Glue shared by the fuzz targets: a byte cursor over the fuzzer's input, guest memories of a
//! few shapes, the driver side of a split ring laid out compactly in guest memory, and a session
//! wired to such rings as the vhost-user handler would leave it. `unwrap` is fine here: a failure
//! is a harness bug, not a finding.

use std::sync::Arc;

use backend::session::Session;
use vhost_user_backend::VringT;
use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion};

pub mod seeds;

/// Reads fixed-size fields off the front of the input; past the end every field is zero.
pub struct Input<'a>(pub &'a [u8]);

impl<'a> Input<'a> {
    pub fn bytes(&mut self, n: usize) -> &'a [u8] {
        let n = n.min(self.0.len());
        let (head, tail) = self.0.split_at(n);
        self.0 = tail;
        head
    }

    fn array<const N: usize>(&mut self) -> [u8; N] {
        let mut a = [0u8; N];
        let b = self.bytes(N);
        a[..b.len()].copy_from_slice(b);
        a
    }

    pub fn u8(&mut self) -> u8 {
        self.array::<1>()[0]
    }

    pub fn u16(&mut self) -> u16 {
        u16::from_le_bytes(self.array())
    }

    pub fn u32(&mut self) -> u32 {
        u32::from_le_bytes(self.array())
    }

    pub fn u64(&mut self) -> u64 {
        u64::from_le_bytes(self.array())
    }

    pub fn rest(&mut self) -> &'a [u8] {
        self.bytes(self.0.len())
    }
}

/// Guest memory shapes, picked by two bits of input. Every shape maps guest addresses from 0, so
/// a ring laid out by [`RingLayout`] for up to 256 entries sits inside one region in all of them.
pub const LAYOUTS: usize = 4;

fn ranges(layout: usize) -> Vec<(GuestAddress, usize)> {
    // Boundaries sit low (8 KiB) so that short inputs reach them.
    match layout % LAYOUTS {
        // One region, as a small QEMU guest.
        0 => vec![(GuestAddress(0), 0x1_0000)],
        // Two adjacent regions: a buffer may run across the boundary.
        1 => vec![(GuestAddress(0), 0x2000), (GuestAddress(0x2000), 0xe000)],
        // A hole between two regions.
        2 => vec![(GuestAddress(0), 0x2000), (GuestAddress(0x3000), 0xd000)],
        // More regions than the inline translation table holds (8): the slow lookup.
        _ => (0..10u64)
            .map(|i| (GuestAddress(i * 0x1000), 0x1000))
            .collect(),
    }
}

/// How many guest memories one run may use at once (`slot` of [`guest_mem`]).
pub const SLOTS: usize = 2;

/// Guest memory `slot` (each a separate mapping: a sender's and a receiver's) of shape `layout`,
/// holding `image` from guest address 0 on (bytes that fall into a hole are skipped) and zeros
/// elsewhere. The mappings are made once and wiped for each run (mapping and unmapping ten
/// regions per run cost more than the code under test); nothing a run wrote survives into the
/// next.
pub fn guest_mem(slot: usize, layout: usize, image: &[u8]) -> GuestMemoryMmap<()> {
    thread_local! {
        static MEMS: Vec<GuestMemoryMmap<()>> = (0..SLOTS * LAYOUTS)
            .map(|i| GuestMemoryMmap::from_ranges(&ranges(i % LAYOUTS)).unwrap())
            .collect();
    }
    let mem = MEMS.with(|m| m[(slot % SLOTS) * LAYOUTS + layout % LAYOUTS].clone());
    for r in mem.iter() {
        let start = r.start_addr().0 as usize;
        let len = r.len() as usize;
        let host = r
            .get_host_address(vm_memory::MemoryRegionAddress(0))
            .unwrap();
        // SAFETY: the region maps `len` bytes at `host`; no other thread uses it.
        let dst = unsafe { std::slice::from_raw_parts_mut(host, len) };
        let from = image.get(start..).unwrap_or(&[]);
        let n = from.len().min(len);
        dst[..n].copy_from_slice(&from[..n]);
        dst[n..].fill(0);
    }
    mem
}

/// Where a split ring of `size` entries sits when the driver packs it from `base` on: the
/// descriptor table, then the avail ring (with used_event), then the used ring (with
/// avail_event), each aligned as the spec requires. Buffers follow at [`RingLayout::end`]. Packed
/// so the fuzzer reaches every part of the ring with short inputs.
#[derive(Clone, Copy, Debug)]
pub struct RingLayout {
    pub size: u16,
    pub desc: u64,
    pub avail: u64,
    pub used: u64,
    pub end: u64,
}

impl RingLayout {
    pub fn new(base: u64, size: u16) -> Self {
        let n = u64::from(size);
        let desc = base;
        let avail = desc + 16 * n;
        let used = (avail + 4 + 2 * n + 2 + 3) & !3;
        let end = (used + 4 + 8 * n + 2 + 15) & !15;
        RingLayout {
            size,
            desc,
            avail,
            used,
            end,
        }
    }

    /// Queue size from one input byte: a power of two from 1 to 256.
    pub fn size_from(b: u8) -> u16 {
        1 << (b % 9)
    }

    /// The device-side queue over this ring, as SET_VRING_NUM/ADDR leave it.
    pub fn queue(&self, event_idx: bool) -> Queue {
        let mut q = Queue::new(256).unwrap();
        q.set_size(self.size);
        q.set_desc_table_address(Some(self.desc as u32), Some((self.desc >> 32) as u32));
        q.set_avail_ring_address(Some(self.avail as u32), Some((self.avail >> 32) as u32));
        q.set_used_ring_address(Some(self.used as u32), Some((self.used >> 32) as u32));
        q.set_event_idx(event_idx);
        q.set_ready(true);
        q
    }

    /// used.idx as the driver reads it.
    pub fn used_idx(&self, mem: &GuestMemoryMmap<()>) -> u16 {
        mem.read_obj::<u16>(GuestAddress(self.used + 2))
            .map(u16::from_le)
            .unwrap()
    }

    /// Used element `k` (modulo the size): (id, len).
    pub fn used_elem(&self, mem: &GuestMemoryMmap<()>, k: u16) -> (u32, u32) {
        let at = self.used + 4 + 8 * u64::from(k % self.size);
        let e: [u8; 8] = mem.read_obj(GuestAddress(at)).unwrap();
        (
            u32::from_le_bytes([e[0], e[1], e[2], e[3]]),
            u32::from_le_bytes([e[4], e[5], e[6], e[7]]),
        )
    }

    /// Avail ring entry `k` (modulo the size).
    pub fn avail_entry(&self, mem: &GuestMemoryMmap<()>, k: u16) -> u16 {
        let at = self.avail + 4 + 2 * u64::from(k % self.size);
        mem.read_obj::<u16>(GuestAddress(at))
            .map(u16::from_le)
            .unwrap()
    }
}

/// A session of one queue pair over `mem`, with queue `qidx` on `ring` set up and enabled as the
/// vhost-user handler leaves a started ring, and `features` negotiated. The other queue of the
/// pair is never started.
pub fn session_on(
    name: &str,
    mem: GuestMemoryMmap<()>,
    qidx: usize,
    ring: &RingLayout,
    event_idx: bool,
    features: u64,
) -> Arc<Session> {
    let s = Arc::new(Session::new(name.into(), 2).unwrap());
    s.mem.lock().unwrap().replace(mem);
    s.set_features(features);
    let vrings: Vec<backend::session::Vring> = (0..2)
        .map(|_| backend::session::Vring::new(s.mem.clone(), 256).unwrap())
        .collect();
    let v = &vrings[qidx];
    v.set_queue_size(ring.size);
    v.set_queue_info(ring.desc, ring.avail, ring.used).unwrap();
    v.set_queue_event_idx(event_idx);
    v.set_queue_ready(true);
    v.set_enabled(true);
    s.attach_vrings(&vrings);
    s
}

/// One vhost-user message: the 12-byte header and its payload.
pub fn vu_msg(request: u32, flags: u32, payload: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(12 + payload.len());
    v.extend_from_slice(&request.to_le_bytes());
    v.extend_from_slice(&flags.to_le_bytes());
    v.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    v.extend_from_slice(payload);
    v
}

/// Splits a byte stream into vhost-user messages the way a reader of the protocol would: a
/// 12-byte header, then as many payload bytes as it claims (fewer at the end of the stream).
/// Returns (request, flags, payload) and whether the stream ended inside a message.
pub fn vu_split(mut s: &[u8]) -> (Vec<(u32, u32, &[u8])>, bool) {
    let mut out = Vec::new();
    while !s.is_empty() {
        if s.len() < 12 {
            return (out, true);
        }
        let w = |i: usize| u32::from_le_bytes([s[i], s[i + 1], s[i + 2], s[i + 3]]);
        let (req, flags, size) = (w(0), w(4), w(8) as usize);
        let body = &s[12..];
        if body.len() < size {
            out.push((req, flags, body));
            return (out, true);
        }
        out.push((req, flags, &body[..size]));
        s = &body[size..];
    }
    (out, false)
}

/// Process-wide set-up for targets that use sockets: SIGPIPE ignored, as the daemon's Rust
/// `main` has it (libFuzzer's C++ `main` does not). (No logger is installed: the code under test
/// logs into nothing.)
pub fn init() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        // SAFETY: setting a signal disposition to SIG_IGN has no handler to be unsafe in.
        unsafe { libc::signal(libc::SIGPIPE, libc::SIG_IGN) };
    });
}

/// One piece of what the frontend sends: bytes, and descriptors that go with their first byte.
pub struct Chunk {
    pub bytes: Vec<u8>,
    pub fds: Vec<std::os::fd::OwnedFd>,
}

/// Socket buffers this large hold everything one execution sends either way (at most
/// [`MAX_STREAM`] bytes of input; each message costs its size plus under 1 KiB of kernel
/// bookkeeping), so the harness can write the whole input up front and read everything back
/// afterwards without a thread of its own: a pump never blocks on a socket the harness is not
/// reading. Raising a buffer past the system maximum needs root (SO_SNDBUFFORCE).
const BIG_BUFFER: libc::c_int = 32 << 20;

/// Longest input the socket targets send; the rest is ignored.
pub const MAX_STREAM: usize = 16 << 10;

/// A connected socket pair with buffers of [`BIG_BUFFER`].
pub fn socket_pair() -> (
    std::os::unix::net::UnixStream,
    std::os::unix::net::UnixStream,
) {
    use std::os::fd::AsRawFd;
    let (a, b) = std::os::unix::net::UnixStream::pair().unwrap();
    for s in [&a, &b] {
        for opt in [libc::SO_SNDBUFFORCE, libc::SO_RCVBUFFORCE] {
            // SAFETY: a valid socket and a c_int option value of the right size.
            let r = unsafe {
                libc::setsockopt(
                    s.as_raw_fd(),
                    libc::SOL_SOCKET,
                    opt,
                    (&BIG_BUFFER as *const libc::c_int).cast(),
                    std::mem::size_of::<libc::c_int>() as libc::socklen_t,
                )
            };
            assert_eq!(
                r, 0,
                "SO_SNDBUFFORCE/SO_RCVBUFFORCE need root (CAP_NET_ADMIN)"
            );
        }
    }
    (a, b)
}

/// Sends `chunks` on `s` (each chunk's descriptors with its first byte), then shuts down the
/// sending side. Stops early if the other end is gone.
pub fn send_all(s: &std::os::unix::net::UnixStream, chunks: &[Chunk]) {
    use std::io::Write;
    use std::os::fd::AsRawFd;
    use vmm_sys_util::sock_ctrl_msg::ScmSocket;
    for c in chunks {
        let sent = if c.fds.is_empty() {
            0
        } else {
            let raw: Vec<i32> = c.fds.iter().map(|f| f.as_raw_fd()).collect();
            match s.send_with_fds(&[&c.bytes[..]], &raw) {
                Ok(n) => n,
                Err(_) => break,
            }
        };
        if (&*s).write_all(&c.bytes[sent..]).is_err() {
            break;
        }
    }
    let _ = s.shutdown(std::net::Shutdown::Write);
}

/// Everything `s` still has to read, up to end of stream (or an error).
pub fn drain(s: &std::os::unix::net::UnixStream) -> Vec<u8> {
    use std::io::Read;
    let mut out = Vec::new();
    let _ = (&*s).read_to_end(&mut out);
    out
}
