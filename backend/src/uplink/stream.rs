//! `stream:PATH`: the server end of QEMU's `-netdev stream` (and passt's QEMU mode) on a Unix
//! socket. Each frame is a 4-byte big-endian length and the Ethernet frame, both ways, with no
//! virtio-net header, so the peer takes no offloads. One peer at a time: a second connection is
//! accepted and closed at once (as passt does); the socket keeps listening, so a peer that
//! reconnects (`reconnect-ms`) or a restarted VM is cabled again. The uplink's link is up while a
//! peer is attached. A peer sending a bad length (a runt, or longer than the uplink's MTU
//! allows) is counted, logged and dropped; the next one is accepted.

use std::io::{self, IoSlice, Read, Write};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};

use vmm_sys_util::epoll::EventSet;

use super::event_loop::{Io, Port, Registrar};
use super::{Uplink, UplinkId, Wire, WireDrop, WireError};
use crate::net_hdr::NetHdr;
use crate::offload;

const SUB_LISTEN: u32 = 0;
const SUB_PEER: u32 = 1;
/// Frame bytes queued for a peer that is slow to read, at most; beyond, frames are dropped
/// (`tx_busy`). A partly written frame is always finished first: frames never interleave.
const MAX_PENDING: usize = 1 << 20;
/// Socket buffer asked for each peer connection (the kernel caps it at wmem_max/rmem_max).
const SOCK_BUF: libc::c_int = 4 << 20;
/// Reads per readiness event before the loop serves other ports.
const READS_PER_EVENT: usize = 16;

/// The stream's transmit half, shared by every sender.
struct Tx {
    state: Mutex<TxState>,
    reg: OnceLock<Registrar>,
}

#[derive(Default)]
struct TxState {
    peer: Option<UnixStream>,
    /// The fd registered with the loop for the peer (the reading half's; `peer` is a dup).
    fd: RawFd,
    /// Bytes waiting for room in the socket; `sent` of them are written.
    pending: Vec<u8>,
    sent: usize,
}

impl Tx {
    fn lock(&self) -> MutexGuard<'_, TxState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn want_out(&self, fd: RawFd, out: bool) {
        if let Some(reg) = self.reg.get() {
            let mut ev = EventSet::IN | EventSet::READ_HANG_UP;
            if out {
                ev |= EventSet::OUT;
            }
            if let Err(e) = reg.modify(fd, SUB_PEER, ev) {
                log::warn!("stream: cannot ask for room to write: {e}");
            }
        }
    }

    /// Writes what is pending (the loop, on EPOLLOUT).
    fn flush(&self) {
        let mut st = self.lock();
        let TxState {
            peer,
            fd,
            pending,
            sent,
        } = &mut *st;
        let Some(sock) = peer else {
            return;
        };
        while *sent < pending.len() {
            match (&*sock).write(&pending[*sent..]) {
                Ok(0) => return,
                Ok(n) => *sent += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                // WouldBlock: the next EPOLLOUT; an error: the read side sees the hangup.
                Err(_) => return,
            }
        }
        pending.clear();
        *sent = 0;
        self.want_out(*fd, false);
    }
}

struct StreamWire(Arc<Tx>);

impl Wire for StreamWire {
    fn send(&self, _hdr: &NetHdr, frame: &[u8], _pair: usize) -> Result<(), WireError> {
        let mut st = self.0.lock();
        let TxState {
            peer,
            fd,
            pending,
            sent,
        } = &mut *st;
        let Some(sock) = peer else {
            return Err(WireError::Down);
        };
        let len = (frame.len() as u32).to_be_bytes();
        if *sent < pending.len() {
            // Behind what is queued, in order.
            if pending.len() - *sent + len.len() + frame.len() > MAX_PENDING {
                return Err(WireError::Busy);
            }
            pending.extend_from_slice(&len);
            pending.extend_from_slice(frame);
            return Ok(());
        }
        pending.clear();
        *sent = 0;
        let total = len.len() + frame.len();
        let n = loop {
            match (&*sock).write_vectored(&[IoSlice::new(&len), IoSlice::new(frame)]) {
                Ok(n) => break n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break 0,
                // The peer is going away; the loop sees the hangup and drops it.
                Err(_) => return Err(WireError::Down),
            }
        };
        if n == total {
            return Ok(());
        }
        // The rest goes when there is room.
        if n < len.len() {
            pending.extend_from_slice(&len[n..]);
            pending.extend_from_slice(frame);
        } else {
            pending.extend_from_slice(&frame[n - len.len()..]);
        }
        self.0.want_out(*fd, true);
        Ok(())
    }
}

struct Peer {
    sock: UnixStream,
    buf: Vec<u8>,
    /// Unparsed bytes are buf[start..end].
    start: usize,
    end: usize,
}

pub struct StreamPort {
    uplink: Arc<Uplink>,
    listener: UnixListener,
    peer: Option<Peer>,
    tx: Arc<Tx>,
}

impl StreamPort {
    /// The port on a bound `listener`; attaches its transmit half to `uplink`.
    pub fn new(uplink: Arc<Uplink>, listener: UnixListener) -> io::Result<Self> {
        listener.set_nonblocking(true)?;
        let tx = Arc::new(Tx {
            state: Mutex::new(TxState::default()),
            reg: OnceLock::new(),
        });
        uplink.attach(Box::new(StreamWire(tx.clone())));
        Ok(StreamPort {
            uplink,
            listener,
            peer: None,
            tx,
        })
    }

    /// Longest frame a peer may send: the uplink's MTU with one VLAN tag.
    fn max_frame(&self) -> usize {
        offload::max_frame(self.uplink.config.mtu, true)
    }

    fn accept(&mut self, io: &mut Io<'_>) {
        loop {
            let sock = match self.listener.accept() {
                Ok((s, _)) => s,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    log::warn!("{}: accept failed: {e}", self.uplink.name());
                    return;
                }
            };
            if self.peer.is_some() {
                self.uplink.update_life(|l| l.refused += 1);
                log::info!(
                    "{}: another peer is attached; connection closed",
                    self.uplink.name()
                );
                continue;
            }
            if let Err(e) = self.attach(sock, io) {
                log::warn!("{}: cannot take the peer: {e}", self.uplink.name());
            }
        }
    }

    fn attach(&mut self, sock: UnixStream, io: &mut Io<'_>) -> io::Result<()> {
        sock.set_nonblocking(true)?;
        for opt in [libc::SO_SNDBUF, libc::SO_RCVBUF] {
            // SAFETY: a valid socket fd and a c_int option value of the size given.
            unsafe {
                libc::setsockopt(
                    sock.as_raw_fd(),
                    libc::SOL_SOCKET,
                    opt,
                    (&SOCK_BUF as *const libc::c_int).cast(),
                    std::mem::size_of::<libc::c_int>() as libc::socklen_t,
                );
            }
        }
        let writer = sock.try_clone()?;
        io.reg.add(
            sock.as_raw_fd(),
            SUB_PEER,
            EventSet::IN | EventSet::READ_HANG_UP,
        )?;
        *self.tx.lock() = TxState {
            peer: Some(writer),
            fd: sock.as_raw_fd(),
            ..TxState::default()
        };
        let size = (256 << 10).max(4 + self.max_frame() + 1);
        self.peer = Some(Peer {
            sock,
            buf: vec![0; size],
            start: 0,
            end: 0,
        });
        self.uplink.update_life(|l| l.connects += 1);
        log::info!("{}: peer attached", self.uplink.name());
        io.switch.set_carrier(self.uplink.id, true);
        Ok(())
    }

    fn detach(&mut self, io: &mut Io<'_>, why: &str) {
        let Some(p) = self.peer.take() else {
            return;
        };
        io.reg.delete(p.sock.as_raw_fd());
        *self.tx.lock() = TxState::default();
        drop(p);
        self.uplink.update_life(|l| l.disconnects += 1);
        log::info!(
            "{}: peer detached ({why}); waiting for the next",
            self.uplink.name()
        );
        io.switch.set_carrier(self.uplink.id, false);
    }

    /// Reads and forwards what the peer sent. Err: drop the peer, for this reason.
    fn read(&mut self, io: &mut Io<'_>) -> Result<(), String> {
        let max = self.max_frame();
        let u = self.uplink.id;
        let Some(p) = self.peer.as_mut() else {
            return Ok(());
        };
        for _ in 0..READS_PER_EVENT {
            match p.sock.read(&mut p.buf[p.end..]) {
                Ok(0) => return Err("end of stream".into()),
                Ok(n) => p.end += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e.to_string()),
            }
            while p.end - p.start >= 4 {
                let b = &p.buf[p.start..p.start + 4];
                let len = u32::from_be_bytes([b[0], b[1], b[2], b[3]]) as usize;
                if !(crate::net_hdr::ETH_HLEN..=max).contains(&len) {
                    self.uplink.wire_drop(WireDrop::BadFrame);
                    return Err(format!(
                        "bad frame length {len} (a frame is 14..={max} bytes at MTU {})",
                        self.uplink.config.mtu
                    ));
                }
                if p.end - p.start < 4 + len {
                    break;
                }
                let frame = &p.buf[p.start + 4..p.start + 4 + len];
                io.switch.ingress(u, &NetHdr::default(), frame, io.scratch);
                p.start += 4 + len;
            }
            if p.start == p.end {
                p.start = 0;
                p.end = 0;
            } else if p.start > 0 {
                p.buf.copy_within(p.start..p.end, 0);
                p.end -= p.start;
                p.start = 0;
            }
        }
        Ok(())
    }
}

impl Port for StreamPort {
    fn uplink(&self) -> UplinkId {
        self.uplink.id
    }

    fn start(&mut self, io: &mut Io<'_>) -> io::Result<()> {
        let _ = self.tx.reg.set(io.reg.clone());
        io.reg
            .add(self.listener.as_raw_fd(), SUB_LISTEN, EventSet::IN)
    }

    fn ready(&mut self, sub: u32, events: EventSet, io: &mut Io<'_>) {
        match sub {
            SUB_LISTEN => self.accept(io),
            SUB_PEER => {
                if events.contains(EventSet::OUT) {
                    self.tx.flush();
                }
                if events.intersects(
                    EventSet::IN | EventSet::READ_HANG_UP | EventSet::HANG_UP | EventSet::ERROR,
                ) {
                    if let Err(why) = self.read(io) {
                        if why.starts_with("bad frame length") {
                            log::warn!("{}: peer sent a {why}; dropped", self.uplink.name());
                        }
                        self.detach(io, &why);
                    }
                }
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::offload::{RxOffloads, TxOffloads};
    use crate::partition::{Partition, Role};
    use crate::switch::Switch;
    use crate::uplink::{event_loop, UplinkConfig};
    use std::time::{Duration, Instant};

    fn wait(mut f: impl FnMut() -> bool) {
        let t = Instant::now();
        while !f() {
            assert!(t.elapsed() < Duration::from_secs(5), "timed out");
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    #[test]
    fn a_slow_peer_gets_whole_frames_in_order_and_overflow_is_refused() {
        let dir = std::env::temp_dir().join(format!("sriov-stream-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("w.sock");
        let up = Arc::new(Uplink::new(
            0,
            UplinkConfig {
                name: "uplink0".into(),
                kind: "stream",
                spec: "stream:w.sock".into(),
                mtu: 1500,
                offloads: RxOffloads::default(),
                accepts: TxOffloads::default(),
            },
        ));
        let port = StreamPort::new(up.clone(), UnixListener::bind(&path).unwrap()).unwrap();
        let tx = port.tx.clone();
        let part = Arc::new(Partition::new(
            0,
            Role::Pf,
            crate::testutil::config("02:00:00:00:00:01", 1),
        ));
        let sw = Arc::new(Switch::with_uplinks(vec![part], vec![up.clone()]).unwrap());
        event_loop::spawn(sw, vec![Box::new(port)]).unwrap();
        assert_eq!(
            up.send(&NetHdr::default(), &[0; 60], 0),
            Err(WireError::Down)
        );
        let mut c = UnixStream::connect(&path).unwrap();
        wait(|| up.carrier());
        let frame = |i: u32| -> Vec<u8> { (0..1000u32).map(|k| (i + k) as u8).collect() };
        let mut sent = 0u32;
        loop {
            match up.send(&NetHdr::default(), &frame(sent), 0) {
                Ok(()) => sent += 1,
                Err(WireError::Busy) => break,
                Err(WireError::Down) => panic!("peer lost"),
            }
            assert!(sent < 100_000, "never full");
        }
        assert!(sent as usize * 1004 > MAX_PENDING, "queued up to the bound");
        c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        for i in 0..sent {
            let mut len = [0u8; 4];
            c.read_exact(&mut len)
                .unwrap_or_else(|e| panic!("frame {i} of {sent}: {e}"));
            assert_eq!(u32::from_be_bytes(len), 1000, "frame {i}");
            let mut f = vec![0u8; 1000];
            c.read_exact(&mut f).unwrap();
            assert_eq!(f, frame(i), "frame {i} whole and in order");
        }
        // Drained: the queue is empty again and frames go straight out.
        wait(|| tx.lock().pending.is_empty());
        up.send(&NetHdr::default(), &frame(7), 0).unwrap();
        let mut b = vec![0u8; 1004];
        c.read_exact(&mut b).unwrap();
        assert_eq!(b[4..], frame(7));
        drop(c);
        wait(|| !up.carrier());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
