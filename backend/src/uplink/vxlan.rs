//! `vxlan:VNI,local=ADDR[:PORT],remote=ADDR[:PORT]...`: a VXLAN tunnel endpoint (RFC 7348) on a
//! UDP socket. Frames go out with the 8-byte VXLAN header (I flag, the VNI); broadcast,
//! multicast and unknown unicast are copied to every remote (head-end replication), known
//! unicast goes to the VTEP its MAC was learned behind (from the outer source address of what
//! came in, with aging). Frames from the segment never go back into it (the switch never sends
//! a wire's frame to a wire). Linux's `vxlan ... dstport 4789 nolearning` with one all-zeros
//! FDB entry per remote is a peer, as is another daemon. A datagram that is too short, lacks
//! the I flag or carries another VNI is counted (`bad_frame`) and logged once.

use std::io::{self, IoSlice};
use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, RwLock};

use rustc_hash::FxHashMap;
use socket2::{Domain, Protocol, SockAddr, SockRef, Socket, Type};
use vmm_sys_util::epoll::EventSet;

use super::event_loop::{Io, Port};
use super::{mono_ms, Uplink, UplinkId, Wire, WireDrop, WireError, WireWarn, DEFAULT_AGING};
use super::{Learned, MAX_LEARNED};
use crate::mac::MacAddr;
use crate::net_hdr::{NetHdr, ETH_HLEN};

/// The VXLAN header: flags (I), 3 reserved bytes, the VNI and one reserved byte.
pub const VXLAN_HLEN: usize = 8;
const FLAG_I: u8 = 0x08;
/// Datagrams read per readiness event before the loop serves other ports.
const READS_PER_EVENT: usize = 64;
const SOCK_BUF: usize = 4 << 20;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VxlanConfig {
    pub vni: u32,
    pub local: SocketAddr,
    pub remotes: Vec<SocketAddr>,
}

/// The 8-byte header for `vni`.
pub fn header(vni: u32) -> [u8; VXLAN_HLEN] {
    let v = vni.to_be_bytes();
    [FLAG_I, 0, 0, 0, v[1], v[2], v[3], 0]
}

/// The inner frame of a VXLAN datagram for `vni`, or why not.
pub fn decap(d: &[u8], vni: u32) -> Result<&[u8], String> {
    if d.len() < VXLAN_HLEN + ETH_HLEN {
        return Err(format!("{}-byte datagram is too short for VXLAN", d.len()));
    }
    if d[0] & FLAG_I == 0 {
        return Err(format!("VXLAN flags {:#04x} without the I flag", d[0]));
    }
    let got = u32::from_be_bytes([0, d[4], d[5], d[6]]);
    if got != vni {
        return Err(format!("VNI {got}, this segment is {vni}"));
    }
    Ok(&d[VXLAN_HLEN..])
}

struct Vtep {
    sock: UdpSocket,
    hdr: [u8; VXLAN_HLEN],
    remotes: Vec<SockAddr>,
    config: VxlanConfig,
    /// Inner MAC -> the VTEP it was seen behind, and when (ms).
    learned: RwLock<FxHashMap<u64, (SockAddr, AtomicU64)>>,
    clock_ms: AtomicU64,
}

impl Vtep {
    /// Where to send to a VTEP seen at `ip`: a configured remote's port, else ours (as Linux
    /// sends to its one `dstport`; the source port of what came in is a flow hash).
    fn vtep_addr(&self, ip: IpAddr) -> SocketAddr {
        let port = self
            .config
            .remotes
            .iter()
            .find(|r| r.ip() == ip)
            .map_or(self.config.local.port(), |r| r.port());
        SocketAddr::new(ip, port)
    }

    fn fresh(&self, seen: &AtomicU64) -> bool {
        self.clock_ms
            .load(Relaxed)
            .saturating_sub(seen.load(Relaxed))
            < DEFAULT_AGING.as_millis() as u64
    }

    fn learn(&self, mac: MacAddr, ip: IpAddr) {
        if mac.is_group() || mac.is_zero() {
            return;
        }
        let now = self.clock_ms.load(Relaxed);
        let key = Learned::key(mac, 0, 0);
        let to = self.vtep_addr(ip);
        {
            let m = self.learned.read().unwrap_or_else(|e| e.into_inner());
            if let Some((a, seen)) = m.get(&key) {
                if a.as_socket() == Some(to) {
                    seen.store(now, Relaxed);
                    return;
                }
            }
        }
        let mut m = self.learned.write().unwrap_or_else(|e| e.into_inner());
        if m.len() < MAX_LEARNED || m.contains_key(&key) {
            m.insert(key, (SockAddr::from(to), AtomicU64::new(now)));
        }
    }

    fn send_to(&self, frame: &[u8], to: &SockAddr) -> Result<(), WireError> {
        let bufs = [IoSlice::new(&self.hdr), IoSlice::new(frame)];
        loop {
            return match SockRef::from(&self.sock).send_to_vectored(&bufs, to) {
                Ok(_) => Ok(()),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e)
                    if e.kind() == io::ErrorKind::WouldBlock
                        || e.raw_os_error() == Some(libc::ENOBUFS) =>
                {
                    Err(WireError::Busy)
                }
                Err(_) => Err(WireError::Down),
            };
        }
    }
}

struct VxlanWire(Arc<Vtep>);

impl Wire for VxlanWire {
    fn send(&self, _hdr: &NetHdr, frame: &[u8], _pair: usize) -> Result<(), WireError> {
        let v = &self.0;
        let dst = MacAddr(frame[..6].try_into().unwrap_or([0xff; 6]));
        if !dst.is_group() {
            let m = v.learned.read().unwrap_or_else(|e| e.into_inner());
            if let Some((to, seen)) = m.get(&Learned::key(dst, 0, 0)) {
                if v.fresh(seen) {
                    return v.send_to(frame, to);
                }
            }
        }
        // Head-end replication: a copy to every remote. One that takes it is enough to count
        // the frame as sent.
        let mut res = Err(WireError::Down);
        for r in &v.remotes {
            match v.send_to(frame, r) {
                Ok(()) => res = Ok(()),
                Err(e) if res.is_err() => res = Err(e),
                Err(_) => {}
            }
        }
        res
    }
}

pub struct VxlanPort {
    uplink: Arc<Uplink>,
    vtep: Arc<Vtep>,
    buf: Vec<u8>,
}

impl VxlanPort {
    /// Binds the local VTEP address and attaches the transmit half to `uplink`.
    pub fn bind(uplink: Arc<Uplink>, config: VxlanConfig) -> io::Result<Self> {
        let s = Socket::new(
            Domain::for_address(config.local),
            Type::DGRAM,
            Some(Protocol::UDP),
        )?;
        s.bind(&config.local.into())
            .map_err(|e| io::Error::new(e.kind(), format!("bind {}: {e}", config.local)))?;
        s.set_nonblocking(true)?;
        let _ = s.set_send_buffer_size(SOCK_BUF);
        let _ = s.set_recv_buffer_size(SOCK_BUF);
        let vtep = Arc::new(Vtep {
            sock: s.into(),
            hdr: header(config.vni),
            remotes: config.remotes.iter().map(|r| SockAddr::from(*r)).collect(),
            config,
            learned: RwLock::new(FxHashMap::default()),
            clock_ms: AtomicU64::new(mono_ms()),
        });
        uplink.attach(Box::new(VxlanWire(vtep.clone())));
        Ok(VxlanPort {
            uplink,
            vtep,
            buf: vec![0; 65536],
        })
    }

    /// The bound local address (the port, when 0 was asked for).
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.vtep.sock.local_addr()
    }
}

impl Port for VxlanPort {
    fn uplink(&self) -> UplinkId {
        self.uplink.id
    }

    fn start(&mut self, io: &mut Io<'_>) -> io::Result<()> {
        io.reg.add(self.vtep.sock.as_raw_fd(), 0, EventSet::IN)?;
        io.switch.set_carrier(self.uplink.id, true);
        let c = &self.vtep.config;
        log::info!(
            "{}: VXLAN VNI {} on {}, remotes {:?}",
            self.uplink.name(),
            c.vni,
            c.local,
            c.remotes
        );
        Ok(())
    }

    fn ready(&mut self, _sub: u32, _events: EventSet, io: &mut Io<'_>) {
        self.vtep.clock_ms.store(mono_ms(), Relaxed);
        for _ in 0..READS_PER_EVENT {
            let (n, from) = match self.vtep.sock.recv_from(&mut self.buf) {
                Ok(r) => r,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    // ICMP errors for earlier sends (IP_RECVERR is off: rare); not fatal.
                    log::debug!("{}: receive: {e}", self.uplink.name());
                    return;
                }
            };
            let inner = match decap(&self.buf[..n], self.vtep.config.vni) {
                Ok(f) => f,
                Err(why) => {
                    self.uplink.wire_drop(WireDrop::BadFrame);
                    self.uplink
                        .warn_once(WireWarn::BadFrame, &format_args!("from {from}: {why}"));
                    continue;
                }
            };
            let src = MacAddr(inner[6..12].try_into().unwrap_or([0; 6]));
            self.vtep.learn(src, from.ip());
            io.switch
                .ingress(self.uplink.id, &NetHdr::default(), inner, io.scratch);
        }
    }

    fn tick(&mut self, _io: &mut Io<'_>) {
        self.vtep.clock_ms.store(mono_ms(), Relaxed);
        let v = &self.vtep;
        let stale = {
            let m = v.learned.read().unwrap_or_else(|e| e.into_inner());
            m.values().any(|(_, seen)| !v.fresh(seen))
        };
        if stale {
            let mut m = v.learned.write().unwrap_or_else(|e| e.into_inner());
            m.retain(|_, (_, seen)| v.fresh(seen));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_and_decap_follow_rfc_7348() {
        assert_eq!(header(0x123456), [0x08, 0, 0, 0, 0x12, 0x34, 0x56, 0]);
        let mut d = header(42).to_vec();
        d.extend_from_slice(&[0xab; 60]);
        assert_eq!(decap(&d, 42).unwrap(), &[0xab; 60][..]);
        // Reserved bits are ignored on receipt.
        d[1] = 0xff;
        d[7] = 0xff;
        d[0] |= 0x80;
        assert!(decap(&d, 42).is_ok());
        assert!(decap(&d, 43).unwrap_err().contains("VNI 42"));
        d[0] = 0;
        assert!(decap(&d, 42).unwrap_err().contains("without the I flag"));
        assert!(decap(&d[..20], 42).unwrap_err().contains("too short"));
    }
}
