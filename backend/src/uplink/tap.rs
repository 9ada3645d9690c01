//! `tap:NAME`: a Linux tap (see `tapdev.rs` for how it is opened) as a port of the switch. It
//! takes checksum and TCP segmentation offloads: what the switch takes for any partition,
//! completing it in software for a receiver that did not negotiate it. So checksum and TSO
//! frames cross between a partition and the host's stack unchanged where both sides take them.
//! The host bridges the tap (Linux bridge, OVS) or routes through it.
//!
//! The uplink's link is up while the tap is open. A tap that disappears (`ip link del`) takes
//! the link down (counted as a disconnect, logged once) and is opened again from the uplink
//! loop's ticks, at growing intervals, without touching the partitions or other uplinks:
//! - a tap this daemon created is created again, with the same name and offloads (as fresh as
//!   at start-up: the host's configuration of it, addresses or a bridge, is the host's to
//!   apply again, as for any new interface);
//! - a tap that existed before (a persistent one, `ip tuntap add`) is not created in its place:
//!   whoever made it owns it. The port waits for a tap of that name to exist again and
//!   re-attaches to it.

use std::fs::File;
use std::io::{self, IoSlice, Read, Write};
use std::os::fd::AsRawFd;
use std::sync::{Arc, RwLock};

use vmm_sys_util::epoll::EventSet;

use super::event_loop::{Io, Port};
use super::tapdev::{self, tun_offloads, TapDev};
use super::{mono_ms, Uplink, UplinkId, Wire, WireDrop, WireError, WireWarn};
use crate::net_hdr::{NetHdr, NET_HDR_LEN};

/// Frames read per readiness event before the loop serves other ports.
const READS_PER_EVENT: usize = 64;
/// The virtio-net header, a 64 KiB GSO frame and its Ethernet and VLAN headers.
const READ_BUF: usize = NET_HDR_LEN + 65535 + 14 + 4;
/// While the tap is gone, the first attempt to open it again is on the loop's next tick; the
/// wait then doubles up to this, so a name that stays taken costs little and logs once.
const RETRY_MAX_MS: u64 = 4000;
const RETRY_FIRST_MS: u64 = 250;

/// The tap's fd as every sender sees it: replaced when the tap is opened again, `None` while
/// it is gone.
#[derive(Default)]
struct Shared(RwLock<Option<Arc<File>>>);

impl Shared {
    fn set(&self, f: Option<Arc<File>>) {
        *self.0.write().unwrap_or_else(|e| e.into_inner()) = f;
    }
}

struct TapWire(Arc<Shared>);

impl Wire for TapWire {
    fn send(&self, hdr: &NetHdr, frame: &[u8]) -> Result<(), WireError> {
        let h = NetHdr {
            num_buffers: 0,
            ..*hdr
        }
        .to_bytes();
        let file = self.0 .0.read().unwrap_or_else(|e| e.into_inner());
        let Some(file) = file.as_deref() else {
            return Err(WireError::Down);
        };
        loop {
            return match (&*file).write_vectored(&[IoSlice::new(&h), IoSlice::new(frame)]) {
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

/// Attempts to open the tap again after it went away.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Retry {
    at_ms: u64,
    wait_ms: u64,
    /// The first failure is logged; later ones only at debug level.
    failed: bool,
}

impl Retry {
    fn after_loss(now_ms: u64) -> Self {
        Retry {
            at_ms: now_ms + RETRY_FIRST_MS,
            wait_ms: RETRY_FIRST_MS,
            failed: false,
        }
    }

    /// The next attempt, after one that did not open the tap.
    fn again(self, now_ms: u64) -> Self {
        let wait_ms = (self.wait_ms * 2).min(RETRY_MAX_MS);
        Retry {
            at_ms: now_ms + wait_ms,
            wait_ms,
            failed: true,
        }
    }
}

pub struct TapPort {
    uplink: Arc<Uplink>,
    /// The configured name (what is opened again).
    name: String,
    /// The open tap; `None` while it is gone.
    dev: Option<Arc<File>>,
    ifname: String,
    /// This daemon created the tap it has (or had, while it is gone).
    created: bool,
    shared: Arc<Shared>,
    retry: Option<Retry>,
    buf: Vec<u8>,
}

impl TapPort {
    /// Opens tap `name` for `uplink` (with the uplink's offloads) and attaches its transmit half.
    pub fn open(uplink: Arc<Uplink>, name: &str) -> io::Result<Self> {
        let TapDev {
            file,
            ifname,
            created,
        } = tapdev::open(name, uplink.config.offloads)?;
        let file = Arc::new(file);
        let shared = Arc::new(Shared::default());
        shared.set(Some(file.clone()));
        uplink.attach(Box::new(TapWire(shared.clone())));
        Ok(TapPort {
            uplink,
            name: name.to_string(),
            dev: Some(file),
            ifname,
            created,
            shared,
            retry: None,
            buf: vec![0; READ_BUF],
        })
    }

    pub fn ifname(&self) -> &str {
        &self.ifname
    }

    /// The tap is gone: the link goes down and the port starts trying to open it again.
    fn lost(&mut self, io: &mut Io<'_>, e: &io::Error) {
        let Some(file) = self.dev.take() else {
            return;
        };
        io.reg.delete(file.as_raw_fd());
        self.shared.set(None);
        self.uplink.update_life(|l| l.disconnects += 1);
        log::warn!(
            "{}: tap {} is gone ({e}); {}",
            self.uplink.name(),
            self.ifname,
            if self.created {
                "creating it again"
            } else {
                "it was not created here: waiting for it to exist again"
            }
        );
        io.switch.set_carrier(self.uplink.id, false);
        self.retry = Some(Retry::after_loss(mono_ms()));
    }

    /// One attempt to have the tap again (the loop's tick, while it is gone).
    fn reopen(&mut self, io: &mut Io<'_>, retry: Retry) {
        let attempt = if self.created || tapdev::exists(&self.name) {
            tapdev::open(&self.name, self.uplink.config.offloads)
        } else {
            Err(io::Error::new(io::ErrorKind::NotFound, "no such interface"))
        };
        let dev = attempt.and_then(|d| {
            io.reg.add(d.file.as_raw_fd(), 0, EventSet::IN)?;
            Ok(d)
        });
        let d = match dev {
            Ok(d) => d,
            Err(e) => {
                let next = retry.again(mono_ms());
                if !retry.failed && (self.created || e.kind() != io::ErrorKind::NotFound) {
                    log::warn!(
                        "{}: cannot open tap {} again yet ({e}); retrying every {} s at most",
                        self.uplink.name(),
                        self.name,
                        RETRY_MAX_MS / 1000
                    );
                } else {
                    log::debug!("{}: tap {}: {e}", self.uplink.name(), self.name);
                }
                self.retry = Some(next);
                return;
            }
        };
        let file = Arc::new(d.file);
        self.shared.set(Some(file.clone()));
        self.dev = Some(file);
        self.retry = None;
        let how = if d.created {
            "created again"
        } else {
            "re-opened"
        };
        (self.ifname, self.created) = (d.ifname, d.created);
        self.uplink.update_life(|l| l.connects += 1);
        log::info!("{}: tap {} {how}", self.uplink.name(), self.ifname);
        io.switch.set_carrier(self.uplink.id, true);
    }
}

impl Port for TapPort {
    fn uplink(&self) -> UplinkId {
        self.uplink.id
    }

    fn start(&mut self, io: &mut Io<'_>) -> io::Result<()> {
        if let Some(f) = &self.dev {
            io.reg.add(f.as_raw_fd(), 0, EventSet::IN)?;
        }
        self.uplink.update_life(|l| l.connects += 1);
        io.switch.set_carrier(self.uplink.id, true);
        log::info!(
            "{}: tap {} {} (vnet header, offloads {:#x})",
            self.uplink.name(),
            self.ifname,
            if self.created { "created" } else { "opened" },
            tun_offloads(self.uplink.config.offloads)
        );
        Ok(())
    }

    fn ready(&mut self, _sub: u32, _events: EventSet, io: &mut Io<'_>) {
        for _ in 0..READS_PER_EVENT {
            let Some(file) = self.dev.as_deref() else {
                return;
            };
            let n = match (&*file).read(&mut self.buf) {
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

    fn tick(&mut self, io: &mut Io<'_>) {
        if let Some(r) = self.retry {
            if mono_ms() >= r.at_ms {
                self.reopen(io, r);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retries_start_at_the_next_tick_and_back_off_to_the_cap() {
        let r = Retry::after_loss(1000);
        assert_eq!((r.at_ms, r.failed), (1000 + RETRY_FIRST_MS, false));
        let mut r = r;
        let mut waits = Vec::new();
        for _ in 0..8 {
            r = r.again(10_000);
            waits.push(r.at_ms - 10_000);
        }
        assert_eq!(&waits[..4], &[500, 1000, 2000, 4000]);
        assert!(waits.iter().all(|w| *w <= RETRY_MAX_MS));
        assert!(r.failed);
    }
}
