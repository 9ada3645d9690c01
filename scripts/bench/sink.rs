//! `vu-sink`: the receiving end of the one-way benchmark (`scripts/bench.sh oneway`).
//!
//! A vhost-user frontend for one virtio-net RX queue, as a guest driver with NAPI would run it:
//! the ring is kept full of buffers, every used buffer is counted and offered again at once, and
//! between batches the sink sleeps on the call eventfd. It costs a receiver's work per frame and
//! nothing while idle, so it can share a CPU with a busy-polling generator (two testpmd
//! processes on one CPU would time-slice, and the receiver's ring would overflow while it is
//! descheduled).
//!
//! Interrupt coalescing: with VIRTIO_RING_F_EVENT_IDX the sink asks for a call only once
//! `--coalesce` buffers are used, and looks at the ring every `--poll-us` anyway (for the tail
//! of a burst). Counters are rewritten to `--stats` (JSON) every 100 ms, stamped with
//! CLOCK_MONOTONIC, and printed at the end.

use std::fs::File;
use std::os::fd::{AsRawFd, FromRawFd};
use std::path::PathBuf;
use std::sync::atomic::{fence, AtomicBool, AtomicU16, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Parser;
use vhost::vhost_user::message::{VhostUserProtocolFeatures, VhostUserVirtioFeatures};
use vhost::vhost_user::{Frontend, VhostUserFrontend};
use vhost::{VhostBackend, VhostUserMemoryRegionInfo, VringConfigData};
use virtio_bindings::bindings::virtio_config::VIRTIO_F_VERSION_1;
use virtio_bindings::bindings::virtio_net::VIRTIO_NET_F_MRG_RXBUF;
use virtio_bindings::bindings::virtio_ring::VIRTIO_RING_F_EVENT_IDX;
use vm_memory::{FileOffset, GuestAddress, GuestMemoryBackend, GuestMemoryMmap, GuestRegionMmap};
use vmm_sys_util::eventfd::EventFd;

#[derive(Parser)]
#[command(about = "Event-driven vhost-user RX sink for the one-way benchmark")]
pub struct Args {
    /// The vhost-user socket of the receiving port.
    #[arg(long)]
    socket: PathBuf,
    /// Ring size (a power of two up to 32768).
    #[arg(long, default_value_t = 256)]
    queue_size: u16,
    /// Bytes per receive buffer (a frame and its 12-byte header; larger frames need
    /// VIRTIO_NET_F_MRG_RXBUF).
    #[arg(long, default_value_t = 2048)]
    buffer: u32,
    /// Ask for a call once this many buffers are used (0: half the ring).
    #[arg(long, default_value_t = 0)]
    coalesce: u16,
    /// Look at the ring at least this often (microseconds) when no call comes.
    #[arg(long, default_value_t = 1000)]
    poll_us: u64,
    /// Rewrite the counters to this file every 100 ms (JSON).
    #[arg(long)]
    stats: Option<PathBuf>,
    /// Stop after this many seconds (default: at SIGTERM or SIGINT).
    #[arg(long)]
    seconds: Option<f64>,
}

const DESC_F_WRITE: u16 = 2;
const USED_F_NO_NOTIFY: u16 = 1;
const NET_HDR_LEN: u32 = 12;
const PAGE: u64 = 4096;

fn round_up(x: u64, to: u64) -> u64 {
    x.div_ceil(to) * to
}

/// One split ring in the sink's memory: descriptor table, avail ring, used ring, then the
/// buffers (descriptor `i` always points at buffer `i`).
#[derive(Clone, Copy)]
struct Layout {
    size: u16,
    desc: u64,
    avail: u64,
    used: u64,
    buffers: u64,
    end: u64,
}

impl Layout {
    fn new(base: u64, size: u16, buffer: u32) -> Layout {
        let n = u64::from(size);
        let desc = base;
        let avail = desc + round_up(16 * n, PAGE);
        let used = avail + round_up(6 + 2 * n, PAGE);
        let buffers = used + round_up(6 + 8 * n, PAGE);
        let end = buffers + round_up(n * u64::from(buffer), PAGE);
        Layout {
            size,
            desc,
            avail,
            used,
            buffers,
            end,
        }
    }
}

#[derive(Default, serde::Serialize)]
pub struct Counters {
    t_ns: u64,
    frames: u64,
    bytes: u64,
    buffers: u64,
    wakeups: u64,
    timeouts: u64,
    kicks: u64,
    /// Used entries naming a descriptor the sink never offered, or a frame shorter than its
    /// header: a backend bug, counted and skipped.
    bad: u64,
}

fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: a valid timespec to write into.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// The RX queue as the driver sees it, through raw pointers into the shared memory.
struct RxRing {
    l: Layout,
    host: *mut u8,
    avail_idx: u16,
    seen: u16,
    event_idx: bool,
    mrg: bool,
    /// Buffers still to come of the frame being received (MRG_RXBUF).
    pending: u16,
}

impl RxRing {
    fn at<T>(&self, gpa: u64) -> *mut T {
        // SAFETY: every address used is inside the one region, which starts at guest address 0
        // and stays mapped for the life of the sink (Layout keeps them below `end`).
        unsafe { self.host.add(gpa as usize).cast() }
    }
    fn u16_at(&self, gpa: u64) -> &AtomicU16 {
        // SAFETY: 2-aligned (ring fields are), inside the region, and only accessed atomically
        // or by the backend's own atomics.
        unsafe { AtomicU16::from_ptr(self.at(gpa)) }
    }
    fn used_idx(&self) -> u16 {
        u16::from_le(self.u16_at(self.l.used + 2).load(Ordering::Acquire))
    }

    fn fill(&mut self, buffer: u32) {
        let n = self.l.size;
        for i in 0..n {
            let d: *mut u8 = self.at(self.l.desc + 16 * u64::from(i));
            let addr = self.l.buffers + u64::from(i) * u64::from(buffer);
            // SAFETY: descriptor `i` of the table, inside the region.
            unsafe {
                d.cast::<[u8; 8]>().write_unaligned(addr.to_le_bytes());
                d.add(8)
                    .cast::<[u8; 4]>()
                    .write_unaligned(buffer.to_le_bytes());
                d.add(12)
                    .cast::<[u8; 2]>()
                    .write_unaligned(DESC_F_WRITE.to_le_bytes());
                d.add(14)
                    .cast::<[u8; 2]>()
                    .write_unaligned(0u16.to_le_bytes());
            }
            self.offer(i);
        }
        self.publish();
    }

    fn offer(&mut self, id: u16) {
        let slot = self.l.avail + 4 + 2 * u64::from(self.avail_idx % self.l.size);
        self.u16_at(slot).store(id.to_le(), Ordering::Relaxed);
        self.avail_idx = self.avail_idx.wrapping_add(1);
    }

    fn publish(&self) {
        self.u16_at(self.l.avail + 2)
            .store(self.avail_idx.to_le(), Ordering::Release);
    }

    /// Whether the backend asked to be kicked for avail entries `old..new`.
    fn needs_kick(&self, old: u16) -> bool {
        fence(Ordering::SeqCst);
        if self.event_idx {
            let at = self.l.used + 4 + 8 * u64::from(self.l.size);
            let event = u16::from_le(self.u16_at(at).load(Ordering::Relaxed));
            self.avail_idx.wrapping_sub(event).wrapping_sub(1) < self.avail_idx.wrapping_sub(old)
        } else {
            u16::from_le(self.u16_at(self.l.used).load(Ordering::Relaxed)) & USED_F_NO_NOTIFY == 0
        }
    }

    /// Asks for a call once `batch` more buffers are used (EVENT_IDX), or at every one.
    fn arm(&self, batch: u16) {
        if self.event_idx {
            let at = self.l.avail + 4 + 2 * u64::from(self.l.size);
            let event = self.seen.wrapping_add(batch.max(1) - 1);
            self.u16_at(at).store(event.to_le(), Ordering::Relaxed);
        }
        fence(Ordering::SeqCst);
    }

    /// Counts and re-offers every used buffer; returns how many there were.
    fn drain(&mut self, c: &mut Counters, buffer: u32) -> u16 {
        let idx = self.used_idx();
        let n = idx.wrapping_sub(self.seen);
        for _ in 0..n {
            let e: *mut u8 = self.at(self.l.used + 4 + 8 * u64::from(self.seen % self.l.size));
            // SAFETY: a used element inside the region; the Acquire load of used.idx above
            // orders it after the backend's write.
            let (id, len) = unsafe {
                (
                    u32::from_le_bytes(e.cast::<[u8; 4]>().read_unaligned()),
                    u32::from_le_bytes(e.add(4).cast::<[u8; 4]>().read_unaligned()),
                )
            };
            self.seen = self.seen.wrapping_add(1);
            if id >= u32::from(self.l.size) || len > buffer {
                c.bad += 1;
                continue;
            }
            let id = id as u16;
            c.buffers += 1;
            if self.pending > 0 {
                self.pending -= 1;
                c.bytes += u64::from(len);
            } else if len < NET_HDR_LEN {
                c.bad += 1;
            } else {
                // A frame's first buffer: its header says how many buffers it spans. The device
                // fills every buffer but a frame's last, so one not filled is the whole frame,
                // and the sink does not touch its bytes (a miss on a line the backend just
                // wrote, for nothing; it would take CPU time from the generator beside it).
                let num = if self.mrg && len == buffer {
                    let b: *mut u8 = self.at(self.l.buffers + u64::from(id) * u64::from(buffer));
                    // SAFETY: the header at the start of buffer `id`, inside the region.
                    u16::from_le_bytes(unsafe { b.add(10).cast::<[u8; 2]>().read_unaligned() })
                } else {
                    1
                };
                self.pending = num.saturating_sub(1);
                c.frames += 1;
                c.bytes += u64::from(len - NET_HDR_LEN);
            }
            self.offer(id);
        }
        n
    }
}

fn write_stats(path: &Option<PathBuf>, c: &mut Counters) {
    c.t_ns = monotonic_ns();
    let Some(path) = path else { return };
    let tmp = path.with_extension("tmp");
    let text = serde_json::to_string(c).unwrap_or_default();
    // Reported, not fatal: the benchmark sees stale counters by their stamp.
    if let Err(e) = std::fs::write(&tmp, text).and_then(|_| std::fs::rename(&tmp, path)) {
        eprintln!("vu-sink: writing {}: {e}", path.display());
    }
}

/// Receives until `stop` is set or `--seconds` have passed; returns the final counters.
pub fn run(a: Args, stop: &AtomicBool) -> Result<Counters, String> {
    let n = a.queue_size;
    if n == 0 || !n.is_power_of_two() {
        return Err(format!("--queue-size {n}: a power of two up to 32768"));
    }
    if a.buffer < NET_HDR_LEN + 14 {
        return Err(format!("--buffer {}: too small for a frame", a.buffer));
    }
    let coalesce = if a.coalesce == 0 {
        n / 2
    } else {
        a.coalesce.min(n)
    };

    // Queue 0 (RX) and queue 1 (TX, set up as a driver does, never used).
    let rx = Layout::new(0, n, a.buffer);
    let tx = Layout::new(rx.end, n, 0);
    let size = tx.end;
    // SAFETY: a NUL-terminated name and no flags; the result is checked.
    let fd = unsafe { libc::memfd_create(c"vu-sink".as_ptr(), 0) };
    if fd < 0 {
        return Err(format!("memfd_create: {}", std::io::Error::last_os_error()));
    }
    // SAFETY: a fresh descriptor owned by nothing else.
    let file = unsafe { File::from_raw_fd(fd) };
    file.set_len(size).map_err(|e| format!("memfd: {e}"))?;
    let region = GuestRegionMmap::<()>::from_range(
        GuestAddress(0),
        size as usize,
        Some(FileOffset::new(file, 0)),
    )
    .map_err(|e| format!("mmap: {e}"))?;
    let mem = GuestMemoryMmap::from_regions(vec![region]).map_err(|e| format!("{e}"))?;
    let r = mem
        .find_region(GuestAddress(0))
        .ok_or("no guest memory region")?;
    let info = VhostUserMemoryRegionInfo::from_guest_region(r).map_err(|e| format!("{e}"))?;
    let host = mem
        .get_host_address(GuestAddress(0))
        .map_err(|e| format!("{e}"))?;

    let sock = std::os::unix::net::UnixStream::connect(&a.socket)
        .map_err(|e| format!("{}: {e}", a.socket.display()))?;
    let vu = |what: &str, e: vhost::Error| format!("{what}: {e}");
    let mut fe = Frontend::from_stream(sock, 2);
    fe.set_owner().map_err(|e| vu("SET_OWNER", e))?;
    let offered = fe.get_features().map_err(|e| vu("GET_FEATURES", e))?;
    let want = (1u64 << VIRTIO_F_VERSION_1)
        | (1 << VIRTIO_RING_F_EVENT_IDX)
        | (1 << VIRTIO_NET_F_MRG_RXBUF)
        | VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits();
    let features = offered & want;
    if features & (1 << VIRTIO_F_VERSION_1) == 0 {
        return Err("the backend does not offer VIRTIO_F_VERSION_1".into());
    }
    fe.set_features(features)
        .map_err(|e| vu("SET_FEATURES", e))?;
    if features & VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits() != 0 {
        let pf = fe
            .get_protocol_features()
            .map_err(|e| vu("GET_PROTOCOL_FEATURES", e))?;
        fe.set_protocol_features(pf & VhostUserProtocolFeatures::MQ)
            .map_err(|e| vu("SET_PROTOCOL_FEATURES", e))?;
    }
    fe.set_mem_table(&[info])
        .map_err(|e| vu("SET_MEM_TABLE", e))?;

    let mut ring = RxRing {
        l: rx,
        host,
        avail_idx: 0,
        seen: 0,
        event_idx: features & (1 << VIRTIO_RING_F_EVENT_IDX) != 0,
        mrg: features & (1 << VIRTIO_NET_F_MRG_RXBUF) != 0,
        pending: 0,
    };
    ring.fill(a.buffer);
    let efd = || EventFd::new(libc::EFD_NONBLOCK).map_err(|e| format!("eventfd: {e}"));
    let (rx_kick, rx_call, tx_kick, tx_call) = (efd()?, efd()?, efd()?, efd()?);
    for (qi, l, kick, call) in [(0, rx, &rx_kick, &rx_call), (1, tx, &tx_kick, &tx_call)] {
        let cfg = VringConfigData {
            queue_max_size: n,
            queue_size: n,
            flags: 0,
            // Ring addresses in the frontend's own address space, as QEMU sends them.
            desc_table_addr: info.userspace_addr + l.desc,
            used_ring_addr: info.userspace_addr + l.used,
            avail_ring_addr: info.userspace_addr + l.avail,
            log_addr: None,
        };
        fe.set_vring_num(qi, n)
            .map_err(|e| vu("SET_VRING_NUM", e))?;
        fe.set_vring_addr(qi, &cfg)
            .map_err(|e| vu("SET_VRING_ADDR", e))?;
        fe.set_vring_base(qi, 0)
            .map_err(|e| vu("SET_VRING_BASE", e))?;
        fe.set_vring_call(qi, call)
            .map_err(|e| vu("SET_VRING_CALL", e))?;
        fe.set_vring_kick(qi, kick)
            .map_err(|e| vu("SET_VRING_KICK", e))?;
        fe.set_vring_enable(qi, true)
            .map_err(|e| vu("SET_VRING_ENABLE", e))?;
    }
    rx_kick.write(1).map_err(|e| format!("kick: {e}"))?;

    let deadline = a
        .seconds
        .map(|s| Instant::now() + Duration::from_secs_f64(s));
    let timeout_ms = a.poll_us.div_ceil(1000).clamp(1, i32::MAX as u64) as i32;
    let mut c = Counters::default();
    let mut next_stats = Instant::now();
    while !stop.load(Ordering::Relaxed) {
        let now = Instant::now();
        if deadline.is_some_and(|d| now >= d) {
            break;
        }
        if now >= next_stats {
            write_stats(&a.stats, &mut c);
            next_stats = now + Duration::from_millis(100);
        }
        let old = ring.avail_idx;
        if ring.drain(&mut c, a.buffer) > 0 {
            ring.publish();
            if ring.needs_kick(old) {
                c.kicks += 1;
                rx_kick.write(1).map_err(|e| format!("kick: {e}"))?;
            }
            continue;
        }
        ring.arm(coalesce);
        if ring.used_idx() != ring.seen {
            continue;
        }
        let mut pfd = libc::pollfd {
            fd: rx_call.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd.
        let r = unsafe { libc::poll(&mut pfd, 1, timeout_ms) };
        if r > 0 {
            c.wakeups += 1;
            let _ = rx_call.read();
        } else if r == 0 {
            c.timeouts += 1;
        }
    }
    // What the backend put in the ring before the stop counts too.
    ring.drain(&mut c, a.buffer);
    write_stats(&a.stats, &mut c);
    drop(fe);
    Ok(c)
}

fn main() {
    let a = Args::parse();
    let stop = Arc::new(AtomicBool::new(false));
    for sig in [libc::SIGTERM, libc::SIGINT] {
        if let Err(e) = signal_hook::flag::register(sig, stop.clone()) {
            eprintln!("vu-sink: signal handler: {e}");
            std::process::exit(1);
        }
    }
    match run(a, &stop) {
        Ok(c) => println!("{}", serde_json::to_string(&c).unwrap_or_default()),
        Err(e) => {
            eprintln!("vu-sink: {e}");
            std::process::exit(1);
        }
    }
}
