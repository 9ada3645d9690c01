//! A vhost-user message pump between a frontend and the vhost-user-backend framework.
//!
//! Why it exists: QEMU sends SET_VRING_ENABLE while it creates the device (virtio-net's
//! queue-pair attach), before any SET_FEATURES, whenever the backend offers PROTOCOL_FEATURES.
//! The vhost 0.18 dispatcher refuses that message until PROTOCOL_FEATURES has been acked and
//! drops the connection, so QEMU could never start against it. The pump forwards every message
//! (with its file descriptors) unchanged, except such an early SET_VRING_ENABLE: it acks that one
//! itself and replays the last requested state per ring right after the first SET_FEATURES.
//!
//! With VIRTIO_F_ACCESS_PLATFORM (a vIOMMU in the guest) the pump also does what the framework
//! cannot (vhost 0.18 refuses IOTLB_MSG and takes ring addresses for QEMU VAs):
//! - IOTLB_MSG (front-end request 22) updates or invalidates the partition's IOTLB, is acked here
//!   and never forwarded; an INVALIDATE is acked only once no batch uses the old entries;
//! - SET_VRING_ADDR's three IOVAs are rewritten into QEMU VAs before the framework sees them.
//!   QEMU pushes entries only when asked (the used rings' only after starting them) and answers
//!   a MISS only from its main loop, which is blocked while it waits for any reply from us, so
//!   nothing may wait for a MISS here. A ring whose entries are missing is asked for (MISS on
//!   the back-end channel), acked to the frontend if it wanted a reply, and forwarded once the
//!   entries have come; the data path leaves that ring alone until the framework has it (see
//!   `Iommu::expect_ring`). At most one such message per ring is kept;
//! - the memory table (SET_MEM_TABLE, ADD/REM_MEM_REG) and the back-end channel
//!   (SET_BACKEND_REQ_FD) are noted on the way through, for translation and for MISS requests.
//!
//! Ring descriptors (SET_VRING_KICK, CALL, ERR) must be eventfds and are made non-blocking on the
//! way through: the frontend holds the other end, and a call eventfd it filled would otherwise
//! block whichever partition's sender signals it next.
//!
//! Every frontend is treated as hostile: what the pump keeps per connection is bounded (one
//! message, one early state per ring), a write to the frontend that cannot finish within
//! [`IO_TIMEOUT`] ends the connection (a peer that stops reading never blocks a thread for
//! good), so does a message that stalls half-sent, and when either side ends both sockets are
//! shut down so that the framework's handler is not left blocked on its end. One thread pumps
//! both directions (`pump` below).

use std::collections::BTreeMap;
use std::io::{self, Read, Write};
use std::net::Shutdown;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::sync::Arc;
use std::time::Duration;

use backend::iommu::{Iommu, VIRTIO_F_ACCESS_PLATFORM};
use backend::iotlb::{Access, Fault, VaRegion};
use vmm_sys_util::sock_ctrl_msg::ScmSocket;

const HDR_LEN: usize = 12;
/// Larger than any message this device accepts (SET_MEM_TABLE with 8 regions is 264 bytes).
const MAX_PAYLOAD: usize = 4096;
const MAX_FDS: usize = 32;
/// How long a frontend may take to accept a reply or to finish a message it started. QEMU and
/// DPDK answer within milliseconds; a peer this slow is stalled or hostile.
pub const IO_TIMEOUT: Duration = Duration::from_secs(5);

const SET_FEATURES: u32 = 2;
const SET_MEM_TABLE: u32 = 5;
const SET_VRING_NUM: u32 = 8;
const SET_VRING_ADDR: u32 = 9;
const GET_VRING_BASE: u32 = 11;
const SET_VRING_KICK: u32 = 12;
const SET_VRING_CALL: u32 = 13;
const SET_VRING_ERR: u32 = 14;
const SET_VRING_ENABLE: u32 = 18;
const SET_BACKEND_REQ_FD: u32 = 21;
const IOTLB_MSG: u32 = 22;
const ADD_MEM_REG: u32 = 37;
const REM_MEM_REG: u32 = 38;
const IOTLB_UPDATE: u8 = 2;
const IOTLB_INVALIDATE: u8 = 3;

const FLAG_VERSION_1: u32 = 0x1;
const FLAG_REPLY: u32 = 0x4;
const FLAG_NEED_REPLY: u32 = 0x8;

/// One vhost-user message with the descriptors that came with it.
struct Msg {
    request: u32,
    flags: u32,
    payload: Vec<u8>,
    fds: Vec<OwnedFd>,
}

impl Msg {
    fn new(request: u32, flags: u32, payload: Vec<u8>) -> Msg {
        Msg {
            request,
            flags,
            payload,
            fds: Vec::new(),
        }
    }

    fn header(&self) -> [u8; HDR_LEN] {
        let mut h = [0u8; HDR_LEN];
        h[0..4].copy_from_slice(&self.request.to_le_bytes());
        h[4..8].copy_from_slice(&self.flags.to_le_bytes());
        h[8..12].copy_from_slice(&(self.payload.len() as u32).to_le_bytes());
        h
    }
}

/// True for the error a socket timeout (SO_RCVTIMEO / SO_SNDTIMEO) gives.
fn timed_out(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
    )
}

/// Reads one message; `Ok(None)` on a clean end of stream between messages. With a read
/// timeout on `s`, waiting between messages goes on for ever, but a message that has begun must
/// be complete within the timeout.
fn read_msg(s: &UnixStream) -> io::Result<Option<Msg>> {
    let mut hdr = [0u8; HDR_LEN];
    let mut raw_fds = [-1 as RawFd; MAX_FDS];
    let (got, fds) = loop {
        let mut iov = [libc::iovec {
            iov_base: hdr.as_mut_ptr().cast(),
            iov_len: HDR_LEN,
        }];
        // SAFETY: the iovec points at `hdr`, which outlives the call and is HDR_LEN bytes long.
        match unsafe { s.recv_with_fds(&mut iov, &mut raw_fds) }.map_err(io::Error::from) {
            Ok((got, nfds)) => {
                // SAFETY: recvmsg handed us these `nfds` descriptors; nothing else owns them.
                let fds: Vec<OwnedFd> = raw_fds[..nfds]
                    .iter()
                    .map(|fd| unsafe { OwnedFd::from_raw_fd(*fd) })
                    .collect();
                break (got, fds);
            }
            Err(e) if timed_out(&e) => continue,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
    };
    if got == 0 {
        return Ok(None);
    }
    let mut r = s;
    r.read_exact(&mut hdr[got..]).map_err(stalled)?;
    let word = |i: usize| u32::from_le_bytes([hdr[i], hdr[i + 1], hdr[i + 2], hdr[i + 3]]);
    let size = word(8) as usize;
    if size > MAX_PAYLOAD {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("message {} claims {size} payload bytes", word(0)),
        ));
    }
    let mut payload = vec![0u8; size];
    r.read_exact(&mut payload).map_err(stalled)?;
    Ok(Some(Msg {
        request: word(0),
        flags: word(4),
        payload,
        fds,
    }))
}

/// Names a timeout for what it is: a peer that stopped mid-message or stopped reading.
fn stalled(e: io::Error) -> io::Error {
    if timed_out(&e) {
        io::Error::new(
            io::ErrorKind::TimedOut,
            format!("peer stalled for more than {IO_TIMEOUT:?}"),
        )
    } else {
        e
    }
}

fn write_msg(s: &UnixStream, m: &Msg) -> io::Result<()> {
    let hdr = m.header();
    let fds: Vec<RawFd> = m.fds.iter().map(|f| f.as_raw_fd()).collect();
    let bufs: [&[u8]; 2] = [&hdr, &m.payload];
    let total = HDR_LEN + m.payload.len();
    let sent = s
        .send_with_fds(&bufs, &fds)
        .map_err(|e| stalled(io::Error::from(e)))?;
    if sent < total {
        // The descriptors went with the first bytes; the rest is plain data.
        let mut rest = Vec::with_capacity(total);
        rest.extend_from_slice(&hdr);
        rest.extend_from_slice(&m.payload);
        let mut w = s;
        w.write_all(&rest[sent..]).map_err(stalled)?;
    }
    Ok(())
}

/// Pumps messages between `frontend` and `framework` until either side closes, fails or stalls.
/// `num_queues` is the device's ring count: an early SET_VRING_ENABLE for any other ring is a
/// protocol error, so the state kept for them stays bounded.
pub fn run(frontend: UnixStream, framework: UnixStream, num_queues: usize) -> io::Result<()> {
    run_with(
        frontend,
        framework,
        num_queues,
        Arc::new(Iommu::default()),
        &|| {},
    )
}

/// [`run`] for a partition whose session's vIOMMU state is `iommu`.
pub fn run_with(
    frontend: UnixStream,
    framework: UnixStream,
    num_queues: usize,
    iommu: Arc<Iommu>,
    on_update: &dyn Fn(),
) -> io::Result<()> {
    for s in [&frontend, &framework] {
        s.set_read_timeout(Some(IO_TIMEOUT))?;
        s.set_write_timeout(Some(IO_TIMEOUT))?;
    }
    let mut up = Up::new(&framework, &frontend, num_queues, iommu, on_update);
    let result = pump(&frontend, &framework, &mut up);
    close_both(&frontend, &framework);
    result
}

/// Which of the two sockets have something to read (a message, or the end of the stream).
/// Waits for ever: an idle connection costs nothing but this thread's stack.
fn readable(frontend: &UnixStream, framework: &UnixStream) -> io::Result<(bool, bool)> {
    let ev = libc::POLLIN | libc::POLLHUP | libc::POLLERR;
    let mut fds = [frontend.as_raw_fd(), framework.as_raw_fd()].map(|fd| libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    });
    loop {
        // SAFETY: `fds` is a valid array of two pollfds for the duration of the call.
        let n = unsafe { libc::poll(fds.as_mut_ptr(), 2, -1) };
        if n >= 0 {
            break;
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
    if fds.iter().any(|f| f.revents & libc::POLLNVAL != 0) {
        return Err(io::Error::other("pump: socket closed under the poll"));
    }
    Ok((fds[0].revents & ev != 0, fds[1].revents & ev != 0))
}

/// Both directions on this one thread. Each round forwards at most one message each way, so
/// replies are drained while requests go in: the framework answers each request before it reads
/// the next, and neither socket fills up behind a write the other side waits on. A frontend
/// that does not take its replies stalls the write to it, which times out and ends the
/// connection.
fn pump(frontend: &UnixStream, framework: &UnixStream, up: &mut Up) -> io::Result<()> {
    loop {
        let (from_frontend, from_framework) = readable(frontend, framework)?;
        if from_framework {
            match read_msg(framework)? {
                Some(m) => write_msg(frontend, &m)?,
                None => return Ok(()),
            }
        }
        if from_frontend {
            match read_msg(frontend)? {
                Some(m) => up.message(m)?,
                None => return Ok(()),
            }
        }
    }
}

/// Ends both directions of both sockets: the framework's handler, blocked on its end, wakes up.
fn close_both(frontend: &UnixStream, framework: &UnixStream) {
    let _ = frontend.shutdown(Shutdown::Both);
    let _ = framework.shutdown(Shutdown::Both);
}

/// The frontend-to-framework direction and what it keeps per connection.
struct Up<'a> {
    framework: &'a UnixStream,
    to_frontend: &'a UnixStream,
    num_queues: usize,
    iommu: Arc<Iommu>,
    features_seen: bool,
    early_enable: BTreeMap<u32, u32>,
    /// The driver acked ACCESS_PLATFORM: ring addresses are IOVAs.
    platform: bool,
    /// SET_VRING_NUM per ring (ring areas' lengths for translation).
    vring_num: BTreeMap<u32, u32>,
    /// Per ring, a SET_VRING_ADDR whose entries are being asked for, and the IOVA last asked.
    pending: BTreeMap<u32, (Msg, u64)>,
    /// Per ring the framework runs with translated addresses: its SET_VRING_ADDR payload as the
    /// frontend sent it (IOVAs) and as forwarded (QEMU VAs), to follow invalidations.
    active: BTreeMap<u32, (Vec<u8>, Vec<u8>)>,
    /// Rings of `active` stopped because an invalidation covered their own areas, and the IOVA
    /// last asked for each (None: not asked yet).
    stale: BTreeMap<u32, Option<u64>>,
    /// Called after each applied IOTLB message: frames kept for unmapped RX buffers go out, and
    /// TX rings that run again are kicked.
    on_update: &'a dyn Fn(),
}

/// A ring's kick, call or error descriptor must be an eventfd, and the daemon must never block
/// on it: the frontend holds the same file and can fill its counter (then signalling the guest,
/// which another partition's sender does, would block that sender for ever) or drain it between
/// the wakeup and the read. O_NONBLOCK is a property of the shared file, so it is set here for
/// both ends; QEMU and DPDK create their eventfds non-blocking already.
fn ring_eventfds(m: &Msg) -> io::Result<()> {
    let what = match m.request {
        SET_VRING_KICK => "SET_VRING_KICK",
        SET_VRING_CALL => "SET_VRING_CALL",
        _ => "SET_VRING_ERR",
    };
    let ring = u32_at(&m.payload, 0).unwrap_or(u32::MAX) & 0xff;
    for fd in &m.fds {
        let raw = fd.as_raw_fd();
        let kind = std::fs::read_link(format!("/proc/self/fd/{raw}"))
            .map(|p| p.to_string_lossy().into_owned())
            .unwrap_or_else(|e| format!("unknown: {e}"));
        if kind != "anon_inode:[eventfd]" {
            return Err(invalid(format!(
                "{what} for ring {ring}: the descriptor is not an eventfd ({kind})"
            )));
        }
        // SAFETY: F_GETFL/F_SETFL on a descriptor this message owns.
        let ok = unsafe {
            let fl = libc::fcntl(raw, libc::F_GETFL);
            fl >= 0 && libc::fcntl(raw, libc::F_SETFL, fl | libc::O_NONBLOCK) == 0
        };
        if !ok {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

/// A SET_VRING_ADDR payload's areas for a ring of `n` entries: (address, length, access) of the
/// descriptor table, the used ring and the avail ring, in that order.
fn ring_areas(p: &[u8], n: u64) -> Option<[(u64, u64, Access); 3]> {
    Some([
        (u64_at(p, 8)?, 16 * n, Access::Read),
        (u64_at(p, 16)?, 6 + 8 * n, Access::Write),
        (u64_at(p, 24)?, 6 + 2 * n, Access::Read),
    ])
}

fn u32_at(p: &[u8], i: usize) -> Option<u32> {
    Some(u32::from_le_bytes(p.get(i..i + 4)?.try_into().ok()?))
}

fn u64_at(p: &[u8], i: usize) -> Option<u64> {
    Some(u64::from_le_bytes(p.get(i..i + 8)?.try_into().ok()?))
}

fn invalid(what: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what)
}

/// The (gpa, size, uaddr) of a vhost-user memory region at `p[i..]`.
fn region_at(p: &[u8], i: usize) -> Option<VaRegion> {
    Some(VaRegion {
        gpa: u64_at(p, i)?,
        size: u64_at(p, i + 8)?,
        uaddr: u64_at(p, i + 16)?,
    })
}

impl<'a> Up<'a> {
    fn new(
        framework: &'a UnixStream,
        to_frontend: &'a UnixStream,
        num_queues: usize,
        iommu: Arc<Iommu>,
        on_update: &'a dyn Fn(),
    ) -> Self {
        Up {
            framework,
            to_frontend,
            num_queues,
            iommu,
            features_seen: false,
            early_enable: BTreeMap::new(),
            platform: false,
            vring_num: BTreeMap::new(),
            pending: BTreeMap::new(),
            active: BTreeMap::new(),
            stale: BTreeMap::new(),
            on_update,
        }
    }

    /// One message from the frontend.
    fn message(&mut self, m: Msg) -> io::Result<()> {
        if m.request == IOTLB_MSG {
            if self.iotlb_msg(&m)?.is_some() {
                self.retry_pending()?;
                self.revalidate()?;
                (self.on_update)();
            }
            Ok(())
        } else {
            self.handle(m)
        }
    }

    fn reply(&self, m: &Msg, value: u64) -> io::Result<()> {
        let r = Msg::new(
            m.request,
            FLAG_VERSION_1 | FLAG_REPLY,
            value.to_le_bytes().to_vec(),
        );
        write_msg(self.to_frontend, &r)
    }

    /// Applies an IOTLB_MSG and acks it (0 done, 1 refused); returns the type of an applied one.
    /// A refused one leaves the table as it was and the connection up: only that mapping is
    /// missing.
    fn iotlb_msg(&mut self, m: &Msg) -> io::Result<Option<u8>> {
        let p = &m.payload;
        let parsed = (|| {
            Some((
                u64_at(p, 0)?,
                u64_at(p, 8)?,
                u64_at(p, 16)?,
                *p.get(24)?,
                *p.get(25)?,
            ))
        })();
        let result = match parsed {
            None => Err(format!("IOTLB_MSG of {} bytes", p.len())),
            Some((iova, size, uaddr, perm, IOTLB_UPDATE)) => {
                let r = self.iommu.write().update(iova, size, uaddr, perm);
                self.iommu.note_update();
                r.map_err(|e| e.to_string())
            }
            Some((iova, size, _, _, IOTLB_INVALIDATE)) => {
                // Running rings whose own areas lose their entries stop first: the framework
                // holds their translations, and the data path checks the ring before use.
                self.stop_rings_in(iova, size);
                // The write side waits for every batch using the table: after this reply no
                // access through the old entries is in flight.
                self.iommu.write().invalidate(iova, size);
                Ok(())
            }
            Some((_, _, _, _, t)) => Err(format!("IOTLB_MSG of type {t}")),
        };
        if let Err(e) = &result {
            log::warn!("IOTLB message refused: {e}");
        }
        if log::log_enabled!(log::Level::Trace) {
            log::trace!("IOTLB_MSG {parsed:x?}: {result:?}");
        }
        if m.flags & FLAG_NEED_REPLY != 0 {
            self.reply(m, u64::from(result.is_err()))?;
        }
        Ok(result.ok().and(p.get(25).copied()))
    }

    /// Stops every running ring with an area in `iova`, `size` bytes (0: to the end), until
    /// [`Up::revalidate`] finds its entries back.
    fn stop_rings_in(&mut self, iova: u64, size: u64) {
        let last = backend::iotlb::range_last(iova, size);
        for (&index, (iovas, _)) in &self.active {
            if self.stale.contains_key(&index) {
                continue;
            }
            let n = u64::from(self.vring_num.get(&index).copied().unwrap_or(1));
            let hit = ring_areas(iovas, n).is_some_and(|areas| {
                areas.iter().any(|&(a, len, _)| {
                    a <= last && iova <= a.saturating_add(len.saturating_sub(1))
                })
            });
            if hit {
                self.iommu.stop_ring(index);
                self.stale.insert(index, None);
            }
        }
    }

    /// Rings stopped by an invalidation: each one whose areas translate again to what the
    /// framework holds runs again; the others have their next missing entry asked for. A ring
    /// whose IOVAs now lead elsewhere, or can no longer be translated, stays stopped until it is
    /// set up again (moving a running ring is not something a driver may do).
    fn revalidate(&mut self) -> io::Result<()> {
        let rings: Vec<u32> = self.stale.keys().copied().collect();
        for index in rings {
            let Some((iovas, forwarded)) = self.active.get(&index).cloned() else {
                self.stale.remove(&index);
                continue;
            };
            let why = match self.translate_vring_addr(&iovas) {
                Ok(Ok((va, gpas))) if va == forwarded => {
                    self.stale.remove(&index);
                    self.iommu.expect_ring(index, Some(gpas));
                    self.iommu.ring_restored(index);
                    continue;
                }
                Ok(Ok(_)) => "its IOVAs now lead to other memory".to_string(),
                Ok(Err((iova, access))) => {
                    if self.stale.get(&index) != Some(&Some(iova)) {
                        self.iommu.send_miss(iova, access)?;
                        self.stale.insert(index, Some(iova));
                    }
                    continue;
                }
                Err(e) => e.to_string(),
            };
            log::warn!("ring {index} stopped until it is set up again: {why}");
            // Still stopped, and no longer waiting: frames for it are dropped from now on.
            self.iommu.expect_ring(index, None);
            self.stale.remove(&index);
            self.active.remove(&index);
        }
        Ok(())
    }

    /// After an UPDATE: forwards each waiting SET_VRING_ADDR that now translates, and asks for
    /// the next missing entry of the others.
    fn retry_pending(&mut self) -> io::Result<()> {
        let rings: Vec<u32> = self.pending.keys().copied().collect();
        for index in rings {
            let Some((payload, asked)) = self
                .pending
                .get(&index)
                .map(|(m, a)| (m.payload.clone(), *a))
            else {
                continue;
            };
            match self.translate_vring_addr(&payload)? {
                Ok((va, gpas)) => {
                    if let Some((m, _)) = self.pending.remove(&index) {
                        self.forward_translated(index, m, va, gpas)?;
                    }
                }
                Err((iova, access)) => {
                    if iova != asked {
                        self.iommu.send_miss(iova, access)?;
                        if let Some(p) = self.pending.get_mut(&index) {
                            p.1 = iova;
                        }
                    }
                }
            }
        }
        Ok(())
    }

    /// Forwards ring `index`'s SET_VRING_ADDR `m` with its QEMU VAs `va` (guest-physical `gpas`),
    /// kept in `active` to follow later invalidations.
    fn forward_translated(
        &mut self,
        index: u32,
        mut m: Msg,
        va: Vec<u8>,
        gpas: [u64; 3],
    ) -> io::Result<()> {
        self.active.insert(index, (m.payload.clone(), va.clone()));
        m.payload = va;
        self.iommu.expect_ring(index, Some(gpas));
        write_msg(self.framework, &m)
    }

    /// SET_VRING_ADDR under ACCESS_PLATFORM: forwarded with QEMU VAs when every entry is there;
    /// otherwise the first missing one is asked for, the frontend gets its ack, and the message
    /// waits in `pending` (replacing an older one for the ring) until an UPDATE completes it.
    fn vring_addr(&mut self, mut m: Msg) -> io::Result<()> {
        let Some(index) = u32_at(&m.payload, 0).filter(|i| (*i as usize) < self.num_queues) else {
            // The framework refuses it with a clear error.
            return write_msg(self.framework, &m);
        };
        self.pending.remove(&index);
        self.active.remove(&index);
        self.stale.remove(&index);
        match self.translate_vring_addr(&m.payload)? {
            Ok((va, gpas)) => self.forward_translated(index, m, va, gpas),
            Err((iova, access)) => {
                self.iommu.expect_ring(index, None);
                self.iommu.send_miss(iova, access)?;
                if m.flags & FLAG_NEED_REPLY != 0 {
                    self.reply(&m, 0)?;
                    m.flags &= !FLAG_NEED_REPLY;
                }
                self.pending.insert(index, (m, iova));
                Ok(())
            }
        }
    }

    /// Notes what the pump needs from `m` and forwards it.
    fn handle(&mut self, m: Msg) -> io::Result<()> {
        if m.request == SET_VRING_ENABLE && !self.features_seen {
            return self.early_vring_enable(&m);
        }
        match m.request {
            SET_FEATURES => {
                if let Some(f) = u64_at(&m.payload, 0) {
                    self.platform = f & (1u64 << VIRTIO_F_ACCESS_PLATFORM) != 0;
                    if !self.platform {
                        self.pending.clear();
                        self.active.clear();
                        self.stale.clear();
                    }
                }
            }
            // A stopped ring gets new addresses before it starts again. And QEMU stops
            // forwarding the vIOMMU's invalidations when it stops the device, so every entry
            // may go stale from here on (a guest that re-creates the VF reuses its IOVAs for new
            // rings): all are dropped, and asked for again after the start.
            GET_VRING_BASE => {
                if let Some(i) = u32_at(&m.payload, 0) {
                    self.pending.remove(&i);
                    self.active.remove(&i);
                    self.stale.remove(&i);
                }
                if self.platform {
                    // The other rings lose their entries too: they stop (QEMU is stopping
                    // them all) and are asked for again after the next UPDATE if still running.
                    self.stop_rings_in(0, 0);
                    self.iommu.write().clear();
                }
            }
            SET_MEM_TABLE | ADD_MEM_REG | REM_MEM_REG => self.note_memory(&m),
            SET_VRING_NUM => {
                if let (Some(i), Some(n)) = (u32_at(&m.payload, 0), u32_at(&m.payload, 4)) {
                    if (i as usize) < self.num_queues {
                        self.vring_num.insert(i, n);
                    }
                }
            }
            SET_BACKEND_REQ_FD => {
                // The framework gets the descriptor too (and ignores it); MISS requests go on
                // this duplicate.
                if let Some(fd) = m.fds.first() {
                    let s = UnixStream::from(fd.try_clone()?);
                    s.set_write_timeout(Some(IO_TIMEOUT))?;
                    self.iommu.set_channel(s);
                }
            }
            SET_VRING_ADDR if self.platform => return self.vring_addr(m),
            SET_VRING_KICK | SET_VRING_CALL | SET_VRING_ERR => ring_eventfds(&m)?,
            _ => {}
        }
        write_msg(self.framework, &m)?;
        if m.request == SET_FEATURES && !self.features_seen {
            self.features_seen = true;
            // No NEED_REPLY: the framework answers nothing, so no reply reaches the frontend.
            for (index, num) in std::mem::take(&mut self.early_enable) {
                let mut p = index.to_le_bytes().to_vec();
                p.extend_from_slice(&num.to_le_bytes());
                write_msg(
                    self.framework,
                    &Msg::new(SET_VRING_ENABLE, FLAG_VERSION_1, p),
                )?;
            }
        }
        Ok(())
    }

    fn early_vring_enable(&mut self, m: &Msg) -> io::Result<()> {
        if let (Some(index), Some(num)) = (u32_at(&m.payload, 0), u32_at(&m.payload, 4)) {
            if m.payload.len() == 8 {
                if index as usize >= self.num_queues {
                    return Err(invalid(format!(
                        "SET_VRING_ENABLE for ring {index}; the device has {}",
                        self.num_queues
                    )));
                }
                self.early_enable.insert(index, num);
            }
        }
        if m.flags & FLAG_NEED_REPLY != 0 {
            self.reply(m, 0)?;
        }
        Ok(())
    }

    /// Keeps the IOTLB's view of the memory table (QEMU VA -> guest-physical) in step with the
    /// framework's. A table the framework will refuse anyway is only logged here.
    fn note_memory(&self, m: &Msg) {
        let p = &m.payload;
        let result = match m.request {
            SET_MEM_TABLE => {
                let n = u32_at(p, 0).unwrap_or(0) as usize;
                let regions: Option<Vec<VaRegion>> =
                    (0..n).map(|i| region_at(p, 8 + 32 * i)).collect();
                match regions {
                    Some(r) => self.iommu.write().set_regions(r).map_err(|e| e.to_string()),
                    None => Err(format!("SET_MEM_TABLE of {n} regions in {} bytes", p.len())),
                }
            }
            ADD_MEM_REG => match region_at(p, 8) {
                Some(r) => self.iommu.write().add_region(r).map_err(|e| e.to_string()),
                None => Err(format!("ADD_MEM_REG of {} bytes", p.len())),
            },
            _ => {
                if let Some(r) = region_at(p, 8) {
                    self.iommu.write().remove_region(r.gpa, r.size);
                }
                Ok(())
            }
        };
        if let Err(e) = result {
            log::debug!("memory table not noted for the IOTLB: {e}");
        }
    }

    /// SET_VRING_ADDR's payload with its descriptor, used and avail IOVAs replaced by QEMU VAs,
    /// and the guest-physical addresses (descriptor table, avail, used) the framework will make
    /// of them; `Err((iova, access))` names the first one with no entry yet. A translation that
    /// can never succeed (no permission, not contiguous, not guest memory) ends the connection.
    #[allow(clippy::type_complexity)]
    fn translate_vring_addr(
        &self,
        p: &[u8],
    ) -> io::Result<Result<(Vec<u8>, [u64; 3]), (u64, Access)>> {
        let bad = || invalid(format!("SET_VRING_ADDR of {} bytes", p.len()));
        let index = u32_at(p, 0).ok_or_else(bad)?;
        let n = u64::from(self.vring_num.get(&index).copied().unwrap_or(1));
        let [(desc, dl, _), (used, ul, _), (avail, al, _)] = ring_areas(p, n).ok_or_else(bad)?;
        // (payload offset, IOVA, length, access, index in the GPA triple)
        let areas = [
            (8, desc, dl, Access::Read, 0),
            (16, used, ul, Access::Write, 2),
            (24, avail, al, Access::Read, 1),
        ];
        let mut out = p.to_vec();
        let mut gpas = [0u64; 3];
        let tlb = self.iommu.dma();
        for (at, iova, len, access, g) in areas {
            match tlb.translate_va(iova, len, access) {
                Ok(va) => out[at..at + 8].copy_from_slice(&va.to_le_bytes()),
                Err(Fault::Miss { iova, access }) => return Ok(Err((iova, access))),
                Err(e) => return Err(invalid(format!("ring {index}: {e}"))),
            }
            gpas[g] = tlb.peek(iova, len, access).ok_or_else(|| {
                invalid(format!(
                    "ring {index}: IOVA {iova:#x} is not in guest memory"
                ))
            })?;
        }
        Ok(Ok((out, gpas)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use backend::iommu::IOTLB_MSG_LEN;
    use std::thread;

    fn msg_bytes(request: u32, flags: u32, payload: &[u8]) -> Vec<u8> {
        let mut v = Msg::new(request, flags, payload.to_vec()).header().to_vec();
        v.extend_from_slice(payload);
        v
    }

    /// The frontend acks `features` (SET_FEATURES).
    fn set_features(mut q: &UnixStream, features: u64) {
        q.write_all(&msg_bytes(
            SET_FEATURES,
            FLAG_VERSION_1,
            &features.to_le_bytes(),
        ))
        .unwrap();
    }

    /// The frontend hands over `channel` as the back-end request channel.
    fn set_backend_req_fd(q: &UnixStream, channel: &UnixStream) {
        let hdr = Msg::new(SET_BACKEND_REQ_FD, FLAG_VERSION_1, vec![]).header();
        q.send_with_fds(&[&hdr[..]], &[channel.as_raw_fd()])
            .unwrap();
    }

    fn read_all(s: &UnixStream) -> Vec<(u32, u32, Vec<u8>)> {
        let mut out = Vec::new();
        while let Ok(Some(m)) = read_msg(s) {
            out.push((m.request, m.flags, m.payload));
        }
        out
    }

    #[test]
    fn early_vring_enable_is_acked_and_replayed_after_set_features() {
        let (qemu, front_end) = UnixStream::pair().unwrap();
        let (back_end, fw) = UnixStream::pair().unwrap();
        let pump = thread::spawn(move || run(front_end, back_end, 4));
        let mut q = &qemu;
        let enable = |i: u32, n: u32| [i.to_le_bytes(), n.to_le_bytes()].concat();
        q.write_all(&msg_bytes(1, FLAG_VERSION_1, &[])).unwrap(); // GET_FEATURES
        q.write_all(&msg_bytes(
            SET_VRING_ENABLE,
            FLAG_VERSION_1 | FLAG_NEED_REPLY,
            &enable(0, 1),
        ))
        .unwrap();
        q.write_all(&msg_bytes(SET_VRING_ENABLE, FLAG_VERSION_1, &enable(1, 0)))
            .unwrap();
        q.write_all(&msg_bytes(SET_VRING_ENABLE, FLAG_VERSION_1, &enable(1, 1)))
            .unwrap();
        // The ack for the early enable comes straight back.
        let ack = read_msg(&qemu).unwrap().unwrap();
        assert_eq!(
            (ack.request, ack.flags, ack.payload),
            (SET_VRING_ENABLE, 5, vec![0; 8])
        );
        q.write_all(&msg_bytes(
            SET_FEATURES,
            FLAG_VERSION_1,
            &[1, 2, 3, 4, 5, 6, 7, 8],
        ))
        .unwrap();
        q.write_all(&msg_bytes(SET_VRING_ENABLE, FLAG_VERSION_1, &enable(0, 0)))
            .unwrap();
        qemu.shutdown(Shutdown::Write).unwrap();
        let seen = read_all(&fw);
        let reqs: Vec<(u32, Vec<u8>)> = seen.iter().map(|(r, _, p)| (*r, p.clone())).collect();
        assert_eq!(
            reqs,
            vec![
                (1, vec![]),
                (SET_FEATURES, vec![1, 2, 3, 4, 5, 6, 7, 8]),
                (SET_VRING_ENABLE, enable(0, 1)),
                (SET_VRING_ENABLE, enable(1, 1)),
                (SET_VRING_ENABLE, enable(0, 0)),
            ]
        );
        drop(fw);
        pump.join().unwrap().unwrap();
    }

    #[test]
    fn descriptors_travel_with_their_message_both_ways() {
        let (qemu, front_end) = UnixStream::pair().unwrap();
        let (back_end, fw) = UnixStream::pair().unwrap();
        let pump = thread::spawn(move || run(front_end, back_end, 4));
        let f = std::fs::File::open("/proc/self/exe").unwrap();
        let hdr = Msg::new(5, FLAG_VERSION_1, vec![9; 16]).header();
        qemu.send_with_fds(&[&hdr[..], &[9u8; 16][..]], &[f.as_raw_fd()])
            .unwrap();
        let m = read_msg(&fw).unwrap().unwrap();
        assert_eq!((m.request, m.payload.len(), m.fds.len()), (5, 16, 1));
        // A reply from the framework reaches the frontend.
        write_msg(&fw, &Msg::new(5, FLAG_VERSION_1 | FLAG_REPLY, vec![7; 8])).unwrap();
        let r = read_msg(&qemu).unwrap().unwrap();
        assert_eq!(r.payload, vec![7; 8]);
        // The framework closing ends the pump and the frontend sees end of stream.
        drop(fw);
        assert!(read_msg(&qemu).unwrap().is_none());
        pump.join().unwrap().unwrap();
    }

    #[test]
    fn oversized_payload_is_an_error_not_an_allocation() {
        let (qemu, front_end) = UnixStream::pair().unwrap();
        let (back_end, _fw) = UnixStream::pair().unwrap();
        let pump = thread::spawn(move || run(front_end, back_end, 4));
        let mut h = Msg::new(1, FLAG_VERSION_1, vec![]).header();
        h[8..12].copy_from_slice(&u32::MAX.to_le_bytes());
        (&qemu).write_all(&h).unwrap();
        assert!(pump.join().unwrap().is_err());
    }

    fn iotlb(iova: u64, size: u64, uaddr: u64, perm: u8, kind: u8) -> Vec<u8> {
        let mut p = [iova.to_le_bytes(), size.to_le_bytes(), uaddr.to_le_bytes()].concat();
        p.extend_from_slice(&[perm, kind, 0, 0, 0, 0, 0, 0]);
        p
    }

    fn ack(s: &UnixStream) -> (u32, u64) {
        let r = read_msg(s).unwrap().unwrap();
        assert_eq!(r.flags, FLAG_VERSION_1 | FLAG_REPLY);
        (
            r.request,
            u64::from_le_bytes(r.payload[..8].try_into().unwrap()),
        )
    }

    const NR: u32 = FLAG_VERSION_1 | FLAG_NEED_REPLY;

    #[test]
    fn iotlb_messages_are_applied_and_acked_never_forwarded() {
        let (qemu, front_end) = UnixStream::pair().unwrap();
        let (back_end, fw) = UnixStream::pair().unwrap();
        let iommu = Arc::new(Iommu::default());
        let i2 = iommu.clone();
        let pump = thread::spawn(move || run_with(front_end, back_end, 4, i2, &|| {}));
        let mut q = &qemu;
        q.write_all(&msg_bytes(
            IOTLB_MSG,
            NR,
            &iotlb(0x1000, 0x2000, 0x7000, 3, 2),
        ))
        .unwrap();
        assert_eq!(ack(&qemu), (IOTLB_MSG, 0));
        assert_eq!(
            iommu.dma().translate_va(0x1010, 8, Access::Write),
            Ok(0x7010)
        );
        // Refused: bad type, bad permission, short; the connection stays up.
        for bad in [
            iotlb(0, 0x1000, 0, 3, 7),
            iotlb(0, 0x1000, 0, 9, 2),
            vec![0; 20],
        ] {
            q.write_all(&msg_bytes(IOTLB_MSG, NR, &bad)).unwrap();
            assert_eq!(ack(&qemu), (IOTLB_MSG, 1));
        }
        q.write_all(&msg_bytes(IOTLB_MSG, NR, &iotlb(0x2000, 0x1000, 0, 0, 3)))
            .unwrap();
        assert_eq!(ack(&qemu), (IOTLB_MSG, 0));
        assert!(iommu.dma().translate_va(0x2000, 1, Access::Read).is_err());
        assert!(iommu.dma().translate_va(0x1fff, 1, Access::Read).is_ok());
        q.write_all(&msg_bytes(1, FLAG_VERSION_1, &[])).unwrap();
        qemu.shutdown(Shutdown::Write).unwrap();
        let seen: Vec<u32> = read_all(&fw).iter().map(|m| m.0).collect();
        assert_eq!(seen, vec![1], "only the GET_FEATURES reached the framework");
        drop(fw);
        pump.join().unwrap().unwrap();
    }

    #[test]
    fn vring_addresses_wait_for_their_translation_while_everything_else_goes_on() {
        let (qemu, front_end) = UnixStream::pair().unwrap();
        let (back_end, fw) = UnixStream::pair().unwrap();
        let (channel, qemu_channel) = UnixStream::pair().unwrap();
        let iommu = Arc::new(Iommu::default());
        let updates = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let pump = thread::spawn({
            let iommu = iommu.clone();
            let updates = updates.clone();
            move || {
                let count = || {
                    updates.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                };
                run_with(front_end, back_end, 4, iommu, &count)
            }
        });
        let mut q = &qemu;
        let va = 0x7f00_0000_0000u64;
        // One region: guest 0..1 MiB at QEMU VA `va`.
        let mut table = [1u32.to_le_bytes(), [0; 4]].concat();
        for v in [0, 0x10_0000, va, 0] {
            table.extend_from_slice(&u64::to_le_bytes(v));
        }
        q.write_all(&msg_bytes(SET_MEM_TABLE, FLAG_VERSION_1, &table))
            .unwrap();
        set_features(&qemu, (1u64 << VIRTIO_F_ACCESS_PLATFORM) | 1);
        set_backend_req_fd(&qemu, &channel);
        drop(channel);
        q.write_all(&msg_bytes(
            SET_VRING_NUM,
            FLAG_VERSION_1,
            &[[0; 4], 512u32.to_le_bytes()].concat(),
        ))
        .unwrap();
        // desc at IOVA 0x10000 (8 KiB: two pages), avail 0x20000, used 0x30000.
        let addr: Vec<u8> = [0u32.to_le_bytes(), [0; 4]]
            .concat()
            .into_iter()
            .chain(
                [0x10000u64, 0x30000, 0x20000, 0]
                    .iter()
                    .flat_map(|v| v.to_le_bytes()),
            )
            .collect();
        // QEMU waits for this ack (and for other replies) before its main loop reads the MISS:
        // nothing may wait for the entries.
        q.write_all(&msg_bytes(SET_VRING_ADDR, NR, &addr)).unwrap();
        assert_eq!(ack(&qemu), (SET_VRING_ADDR, 0));
        q.write_all(&msg_bytes(12, FLAG_VERSION_1, &[0; 8]))
            .unwrap(); // SET_VRING_KICK-like
        iommu.set_enabled(true);
        assert!(!iommu.ring_ready(0, [0, 0, 0]), "the ring waits");
        assert!(iommu.ring_ready(1, [0, 0, 0]), "other rings do not");
        // The pump asks for the descriptor table's first page.
        let miss = |s: &UnixStream| {
            let m = read_msg(s).unwrap().unwrap();
            assert_eq!((m.request, m.flags, m.payload.len()), (1, 1, 32));
            (u64_at(&m.payload, 0).unwrap(), m.payload[24], m.payload[25])
        };
        assert_eq!(miss(&qemu_channel), (0x10000, 1, 1));
        let update = |iova: u64, gpa: u64, size: u64| {
            let mut q = &qemu;
            q.write_all(&msg_bytes(
                IOTLB_MSG,
                NR,
                &iotlb(iova, size, va + gpa, 3, 2),
            ))
            .unwrap();
            assert_eq!(ack(&qemu), (IOTLB_MSG, 0));
        };
        update(0x10000, 0x4000, 0x1000);
        assert_eq!(
            miss(&qemu_channel),
            (0x11000, 1, 1),
            "the table's second page"
        );
        update(0x11000, 0x5000, 0x1000);
        assert_eq!(
            miss(&qemu_channel),
            (0x30000, 2, 1),
            "used ring, for writing"
        );
        // The used ring of 512 entries runs 6 bytes into its second page: one entry for both.
        update(0x30000, 0x8000, 0x2000);
        assert_eq!(miss(&qemu_channel), (0x20000, 1, 1));
        assert!(!iommu.ring_ready(0, [0, 0, 0]));
        update(0x20000, 0xa000, 0x1000);
        qemu.shutdown(Shutdown::Write).unwrap();
        let seen = read_all(&fw);
        let reqs: Vec<(u32, u32)> = seen.iter().map(|m| (m.0, m.1)).collect();
        let v = FLAG_VERSION_1;
        assert_eq!(
            reqs,
            vec![
                (SET_MEM_TABLE, v),
                (SET_FEATURES, v),
                (SET_BACKEND_REQ_FD, v),
                (SET_VRING_NUM, v),
                (12, v),
                // Translated, once every entry came; acked already, so no reply is asked for.
                (SET_VRING_ADDR, v),
            ]
        );
        assert_eq!(updates.load(std::sync::atomic::Ordering::Relaxed), 4);
        // The data path takes the ring once the framework's queue holds the translation.
        assert!(!iommu.ring_ready(0, [0x4000, 0x8000, 0xa000]));
        assert!(iommu.ring_ready(0, [0x4000, 0xa000, 0x8000]));
        assert!(iommu.ring_ready(0, [0, 0, 0]), "and keeps it");
        let p = &seen[5].2;
        assert_eq!(
            (u64_at(p, 8), u64_at(p, 16), u64_at(p, 24), u64_at(p, 32)),
            (
                Some(va + 0x4000),
                Some(va + 0x8000),
                Some(va + 0xa000),
                Some(0)
            )
        );
        assert_eq!(iommu.misses_sent(), 4);
        drop(fw);
        pump.join().unwrap().unwrap();
    }

    #[test]
    fn a_frontend_that_never_answers_a_miss_keeps_one_message_per_ring() {
        let (qemu, front_end) = UnixStream::pair().unwrap();
        let (back_end, fw) = UnixStream::pair().unwrap();
        let (channel, qemu_channel) = UnixStream::pair().unwrap();
        let iommu = Arc::new(Iommu::default());
        let pump = thread::spawn({
            let iommu = iommu.clone();
            move || run_with(front_end, back_end, 4, iommu, &|| {})
        });
        let mut q = &qemu;
        set_features(&qemu, 1u64 << VIRTIO_F_ACCESS_PLATFORM);
        set_backend_req_fd(&qemu, &channel);
        drop(channel);
        // QEMU reads its MISS requests but never answers them.
        let asked = thread::spawn(move || {
            let mut all = Vec::new();
            (&qemu_channel).read_to_end(&mut all).unwrap();
            all.len() / (HDR_LEN + IOTLB_MSG_LEN)
        });
        for i in 0..1000u32 {
            let mut p = (i % 2).to_le_bytes().to_vec();
            p.extend_from_slice(&[0; 36]);
            q.write_all(&msg_bytes(SET_VRING_ADDR, FLAG_VERSION_1, &p))
                .unwrap();
            if i % 100 == 0 {
                q.write_all(&msg_bytes(12, FLAG_VERSION_1, &[0; 8]))
                    .unwrap();
            }
        }
        // The ring stopped (GET_VRING_BASE): what waited for it is dropped with it.
        q.write_all(&msg_bytes(GET_VRING_BASE, FLAG_VERSION_1, &[0; 8]))
            .unwrap();
        qemu.shutdown(Shutdown::Write).unwrap();
        let reqs: Vec<u32> = read_all(&fw).iter().map(|m| m.0).collect();
        assert_eq!(reqs.iter().filter(|r| **r == 12).count(), 10);
        assert!(!reqs.contains(&SET_VRING_ADDR));
        assert_eq!(*reqs.last().unwrap(), GET_VRING_BASE);
        drop(fw);
        pump.join().unwrap().unwrap();
        iommu.set_enabled(true);
        assert!(!iommu.ring_ready(0, [0, 0, 0]) && !iommu.ring_ready(1, [0, 0, 0]));
        // Every one asked for its ring's IOVA 0.
        drop(iommu);
        assert_eq!(asked.join().unwrap(), 1000);
    }

    #[test]
    fn stopping_a_ring_drops_every_entry_qemu_stops_invalidating() {
        let (qemu, front_end) = UnixStream::pair().unwrap();
        let (back_end, fw) = UnixStream::pair().unwrap();
        let iommu = Arc::new(Iommu::default());
        let pump = thread::spawn({
            let iommu = iommu.clone();
            move || run_with(front_end, back_end, 4, iommu, &|| {})
        });
        let mut q = &qemu;
        set_features(&qemu, 1u64 << VIRTIO_F_ACCESS_PLATFORM);
        q.write_all(&msg_bytes(
            IOTLB_MSG,
            NR,
            &iotlb(0x1000, 0x1000, 0x7000, 3, 2),
        ))
        .unwrap();
        assert_eq!(ack(&qemu), (IOTLB_MSG, 0));
        assert!(iommu.dma().translate_va(0x1000, 8, Access::Read).is_ok());
        q.write_all(&msg_bytes(GET_VRING_BASE, FLAG_VERSION_1, &[0; 8]))
            .unwrap();
        let m = read_msg(&fw).unwrap().unwrap();
        assert_eq!(m.request, SET_FEATURES);
        let m = read_msg(&fw).unwrap().unwrap();
        assert_eq!(m.request, GET_VRING_BASE, "forwarded");
        assert!(
            iommu.dma().translate_va(0x1000, 8, Access::Read).is_err(),
            "the entry went with the stop"
        );
        drop(qemu);
        drop(fw);
        pump.join().unwrap().unwrap();
    }

    #[test]
    fn a_miss_without_a_backend_channel_ends_the_connection() {
        let (qemu, front_end) = UnixStream::pair().unwrap();
        let (back_end, _fw) = UnixStream::pair().unwrap();
        let pump = thread::spawn(move || run(front_end, back_end, 4));
        let mut q = &qemu;
        set_features(&qemu, 1u64 << VIRTIO_F_ACCESS_PLATFORM);
        q.write_all(&msg_bytes(SET_VRING_ADDR, FLAG_VERSION_1, &[0; 40]))
            .unwrap();
        assert!(pump.join().unwrap().is_err());
    }
}
