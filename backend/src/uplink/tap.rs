//! `tap:NAME`: a Linux tap opened (or created, if there is none by that name) with
//! `IFF_TAP | IFF_NO_PI | IFF_VNET_HDR`, a 12-byte virtio-net header (`TUNSETVNETHDRSZ`) and
//! `TUNSETOFFLOAD` with checksum and TCP segmentation: what the switch takes for any partition,
//! completing it in software for a receiver that did not negotiate it. So checksum and TSO
//! frames cross between a partition and the host's stack unchanged where both sides take them.
//! The host bridges the tap (Linux bridge, OVS) or routes through it. The tap's link is up while
//! its fd works; a tap that disappears (`ip link del`) is logged once and its link stays down.

use std::fs::{File, OpenOptions};
use std::io::{self, IoSlice, Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::sync::Arc;

use vmm_sys_util::epoll::EventSet;

use super::event_loop::{Io, Port};
use super::{Uplink, UplinkId, Wire, WireDrop, WireError, WireWarn};
use crate::net_hdr::{NetHdr, NET_HDR_LEN};
use crate::offload::RxOffloads;

/// Frames read per readiness event before the loop serves other ports.
const READS_PER_EVENT: usize = 64;
/// The virtio-net header, a 64 KiB GSO frame and its Ethernet and VLAN headers.
const READ_BUF: usize = NET_HDR_LEN + 65535 + 14 + 4;

/// `TUNSETOFFLOAD` bits for what the switch takes from the tap (and gives it).
fn tun_offloads(o: RxOffloads) -> libc::c_uint {
    let mut f = 0;
    if o.csum {
        f |= libc::TUN_F_CSUM;
        if o.tso4 {
            f |= libc::TUN_F_TSO4;
        }
        if o.tso6 {
            f |= libc::TUN_F_TSO6;
        }
    }
    f
}

fn check(r: libc::c_int, what: &str) -> io::Result<()> {
    if r < 0 {
        let e = io::Error::last_os_error();
        return Err(io::Error::new(e.kind(), format!("{what}: {e}")));
    }
    Ok(())
}

/// Opens tap `name` (created if missing), non-blocking, with a 12-byte virtio-net header and
/// `offloads`. Returns the fd and the interface's name.
pub fn open(name: &str, offloads: RxOffloads) -> io::Result<(File, String)> {
    if name.is_empty() || name.len() >= libc::IFNAMSIZ {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{name:?} is not an interface name"),
        ));
    }
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
        .open("/dev/net/tun")
        .map_err(|e| io::Error::new(e.kind(), format!("/dev/net/tun: {e}")))?;
    // SAFETY: ifreq is plain data; all-zero is a valid value.
    let mut ifr: libc::ifreq = unsafe { std::mem::zeroed() };
    for (d, s) in ifr.ifr_name.iter_mut().zip(name.bytes()) {
        *d = s as libc::c_char;
    }
    ifr.ifr_ifru.ifru_flags =
        (libc::IFF_TAP | libc::IFF_NO_PI | libc::IFF_VNET_HDR) as libc::c_short;
    // SAFETY: TUNSETIFF reads and writes an ifreq, which `ifr` is.
    check(
        unsafe { libc::ioctl(f.as_raw_fd(), libc::TUNSETIFF, &mut ifr) },
        "TUNSETIFF",
    )?;
    let hdr_len = NET_HDR_LEN as libc::c_int;
    // SAFETY: TUNSETVNETHDRSZ reads one int from the pointer.
    check(
        unsafe { libc::ioctl(f.as_raw_fd(), libc::TUNSETVNETHDRSZ, &hdr_len) },
        "TUNSETVNETHDRSZ",
    )?;
    // SAFETY: TUNSETOFFLOAD takes the flags as the argument's value.
    check(
        unsafe {
            libc::ioctl(
                f.as_raw_fd(),
                libc::TUNSETOFFLOAD,
                libc::c_ulong::from(tun_offloads(offloads)),
            )
        },
        "TUNSETOFFLOAD",
    )?;
    let got: Vec<u8> = ifr
        .ifr_name
        .iter()
        .take_while(|c| **c != 0)
        .map(|c| *c as u8)
        .collect();
    Ok((f, String::from_utf8_lossy(&got).into_owned()))
}

struct TapWire(Arc<File>);

impl Wire for TapWire {
    fn send(&self, hdr: &NetHdr, frame: &[u8]) -> Result<(), WireError> {
        let h = NetHdr {
            num_buffers: 0,
            ..*hdr
        }
        .to_bytes();
        loop {
            return match (&*self.0).write_vectored(&[IoSlice::new(&h), IoSlice::new(frame)]) {
                Ok(_) => Ok(()),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e)
                    if e.kind() == io::ErrorKind::WouldBlock
                        || e.raw_os_error() == Some(libc::ENOBUFS) =>
                {
                    Err(WireError::Busy)
                }
                // EBADFD: the interface is gone; EIO: it is down.
                Err(_) => Err(WireError::Down),
            };
        }
    }
}

pub struct TapPort {
    uplink: Arc<Uplink>,
    file: Arc<File>,
    ifname: String,
    buf: Vec<u8>,
    gone: bool,
}

impl TapPort {
    /// Opens tap `name` for `uplink` (with the uplink's offloads) and attaches its transmit half.
    pub fn open(uplink: Arc<Uplink>, name: &str) -> io::Result<Self> {
        let (file, ifname) = open(name, uplink.config.offloads)?;
        let file = Arc::new(file);
        uplink.attach(Box::new(TapWire(file.clone())));
        Ok(TapPort {
            uplink,
            file,
            ifname,
            buf: vec![0; READ_BUF],
            gone: false,
        })
    }

    pub fn ifname(&self) -> &str {
        &self.ifname
    }

    fn lost(&mut self, io: &mut Io<'_>, e: &io::Error) {
        self.gone = true;
        io.reg.delete(self.file.as_raw_fd());
        log::warn!(
            "{}: tap {} is gone ({e}); its link stays down until the daemon restarts",
            self.uplink.name(),
            self.ifname
        );
        io.switch.set_carrier(self.uplink.id, false);
    }
}

impl Port for TapPort {
    fn uplink(&self) -> UplinkId {
        self.uplink.id
    }

    fn start(&mut self, io: &mut Io<'_>) -> io::Result<()> {
        io.reg.add(self.file.as_raw_fd(), 0, EventSet::IN)?;
        io.switch.set_carrier(self.uplink.id, true);
        log::info!(
            "{}: tap {} attached (vnet header, offloads {:#x})",
            self.uplink.name(),
            self.ifname,
            tun_offloads(self.uplink.config.offloads)
        );
        Ok(())
    }

    fn ready(&mut self, _sub: u32, _events: EventSet, io: &mut Io<'_>) {
        if self.gone {
            return;
        }
        for _ in 0..READS_PER_EVENT {
            let n = match (&*self.file).read(&mut self.buf) {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return self.lost(io, &e),
            };
            if n < NET_HDR_LEN {
                self.uplink.wire_drop(WireDrop::BadFrame);
                self.uplink.warn_once(
                    WireWarn::BadFrame,
                    &format_args!("{n}-byte read from the tap, shorter than its header"),
                );
                continue;
            }
            let mut h = [0u8; NET_HDR_LEN];
            h.copy_from_slice(&self.buf[..NET_HDR_LEN]);
            let hdr = NetHdr::parse(&h);
            io.switch
                .ingress(self.uplink.id, &hdr, &self.buf[NET_HDR_LEN..n], io.scratch);
        }
    }
}
