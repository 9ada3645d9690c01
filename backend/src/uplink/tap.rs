//! `tap:NAME`: a Linux tap (see `tapdev.rs` for how it is opened) as a port of the switch. It
//! takes checksum and TCP segmentation offloads: what the switch takes for any partition,
//! completing it in software for a receiver that did not negotiate it. So checksum and TSO
//! frames cross between a partition and the host's stack unchanged where both sides take them.
//! The host bridges the tap (Linux bridge, OVS) or routes through it.
//!
//! With several queues (partitions with several queue pairs), a frame from a sender's queue
//! pair `p` goes into tap queue `p % queues`, as vhost-net maps a device's queue pairs, so a
//! flow the guest keeps on one pair stays on one tap queue (and the kernel's flow table sends
//! its replies back on that queue). The uplink loop reads every queue.
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
use super::tapdev::{self, tun_offloads, TapDev, TapError};
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

/// The tap's queues as every sender sees them: replaced when the tap is opened again, empty
/// while it is gone.
#[derive(Default)]
struct Shared(RwLock<Vec<Arc<File>>>);

impl Shared {
    fn set(&self, files: Vec<Arc<File>>) {
        *self.0.write().unwrap_or_else(|e| e.into_inner()) = files;
    }
}

struct TapWire(Arc<Shared>);

impl Wire for TapWire {
    fn send(&self, hdr: &NetHdr, frame: &[u8], pair: usize) -> Result<(), WireError> {
        let h = NetHdr {
            num_buffers: 0,
            ..*hdr
        }
        .to_bytes();
        let queues = self.0 .0.read().unwrap_or_else(|e| e.into_inner());
        let Some(file) = queues.get(pair % queues.len().max(1)) else {
            return Err(WireError::Down);
        };
        loop {
            return match (&**file).write_vectored(&[IoSlice::new(&h), IoSlice::new(frame)]) {
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
    /// Queues asked for (those of the partition with the most queue pairs).
    want_queues: usize,
    /// The open tap's queues, the epoll sub-token being the index; empty while it is gone.
    queues: Vec<Arc<File>>,
    ifname: String,
    /// This daemon created the tap it has (or had, while it is gone).
    created: bool,
    shared: Arc<Shared>,
    retry: Option<Retry>,
    buf: Vec<u8>,
}

impl TapPort {
    /// Opens tap `name` for `uplink` (with the uplink's offloads) with `queues` queues (see
    /// [`tapdev::open`]) and attaches its transmit half.
    pub fn open(uplink: Arc<Uplink>, name: &str, queues: usize) -> Result<Self, TapError> {
        let dev = tapdev::open(name, uplink.config.offloads, queues)?;
        let mut port = TapPort {
            uplink,
            name: name.to_string(),
            want_queues: queues,
            queues: Vec::new(),
            ifname: String::new(),
            created: false,
            shared: Arc::new(Shared::default()),
            retry: None,
            buf: vec![0; READ_BUF],
        };
        port.take(dev);
        port.uplink.attach(Box::new(TapWire(port.shared.clone())));
        Ok(port)
    }

    pub fn ifname(&self) -> &str {
        &self.ifname
    }

    /// Makes `dev` the port's tap, for senders too (its fds are registered by the caller).
    fn take(&mut self, dev: TapDev) {
        let TapDev {
            files,
            ifname,
            created,
        } = dev;
        self.queues = files.into_iter().map(Arc::new).collect();
        self.shared.set(self.queues.clone());
        self.uplink.set_queues(self.queues.len());
        if self.queues.len() < self.want_queues {
            log::info!(
                "{}: tap {ifname} was made single-queue; its one queue serves every queue pair",
                self.uplink.name()
            );
        }
        (self.ifname, self.created) = (ifname, created);
    }

    fn register(&self, io: &mut Io<'_>) -> io::Result<()> {
        for (sub, f) in self.queues.iter().enumerate() {
            if let Err(e) = io.reg.add(f.as_raw_fd(), sub as u32, EventSet::IN) {
                self.deregister(io);
                return Err(e);
            }
        }
        Ok(())
    }

    fn deregister(&self, io: &mut Io<'_>) {
        for f in &self.queues {
            io.reg.delete(f.as_raw_fd());
        }
    }

    /// The tap is gone: the link goes down and the port starts trying to open it again.
    fn lost(&mut self, io: &mut Io<'_>, e: &io::Error) {
        if self.queues.is_empty() {
            return;
        }
        self.deregister(io);
        self.queues.clear();
        self.shared.set(Vec::new());
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
        if !self.created && !tapdev::exists(&self.name) {
            // Still the host's to make again; nothing to log.
            self.retry = Some(retry.again(mono_ms()));
            return;
        }
        let opened = tapdev::open(&self.name, self.uplink.config.offloads, self.want_queues)
            .map_err(|e| e.to_string())
            .and_then(|d| {
                self.take(d);
                self.register(io).map_err(|e| format!("epoll: {e}"))
            });
        if let Err(e) = opened {
            // Closes a tap half set up (one created here goes away again).
            self.queues.clear();
            self.shared.set(Vec::new());
            if retry.failed {
                log::debug!("{}: tap {}: {e}", self.uplink.name(), self.name);
            } else {
                log::warn!(
                    "{}: cannot open tap {} again yet ({e}); retrying every {} s at most",
                    self.uplink.name(),
                    self.name,
                    RETRY_MAX_MS / 1000
                );
            }
            self.retry = Some(retry.again(mono_ms()));
            return;
        }
        self.retry = None;
        let how = if self.created {
            "created again"
        } else {
            "re-opened"
        };
        self.uplink.update_life(|l| l.connects += 1);
        log::info!(
            "{}: tap {} {how} (queues {})",
            self.uplink.name(),
            self.ifname,
            self.queues.len()
        );
        io.switch.set_carrier(self.uplink.id, true);
    }
}

impl Port for TapPort {
    fn uplink(&self) -> UplinkId {
        self.uplink.id
    }

    fn start(&mut self, io: &mut Io<'_>) -> io::Result<()> {
        self.register(io)?;
        self.uplink.update_life(|l| l.connects += 1);
        io.switch.set_carrier(self.uplink.id, true);
        log::info!(
            "{}: tap {} {} (vnet header, offloads {:#x}, queues {})",
            self.uplink.name(),
            self.ifname,
            if self.created { "created" } else { "opened" },
            tun_offloads(self.uplink.config.offloads),
            self.queues.len()
        );
        Ok(())
    }

    fn ready(&mut self, sub: u32, _events: EventSet, io: &mut Io<'_>) {
        for _ in 0..READS_PER_EVENT {
            // None once the tap is gone (an error on one queue takes them all).
            let Some(file) = self.queues.get(sub as usize) else {
                return;
            };
            let n = match (&**file).read(&mut self.buf) {
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
