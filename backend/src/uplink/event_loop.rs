//! One thread for the I/O of every uplink: an epoll loop. Ports register their fds with tokens
//! of their own; frames read from a wire go into the switch ([`Switch::ingress`]) from this
//! thread. Transmit happens on the senders' threads ([`super::Wire`]); a wire that must wait
//! for room (a stream peer) asks this loop for EPOLLOUT.

use std::io;
use std::os::fd::RawFd;
use std::sync::Arc;
use std::thread;
use std::time::Duration;

use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};

use super::{mono_ms, UplinkId};
use crate::switch::{IngressScratch, Switch};

/// How long the loop sleeps at most: ports' ticks and the learned table's clock run at least
/// this often, and an idle loop lets go of receivers' memory after this long.
const TICK: Duration = Duration::from_millis(250);

/// What a port gets when the loop calls it.
pub struct Io<'a> {
    pub switch: &'a Switch,
    pub scratch: &'a mut IngressScratch,
    /// The port's own registrar.
    pub reg: &'a Registrar,
}

/// Registers one port's fds with the loop's epoll, under that port's tokens. Cloneable into a
/// port's transmit half (epoll_ctl is thread-safe).
#[derive(Clone)]
pub struct Registrar {
    epoll: Arc<Epoll>,
    port: usize,
}

impl Registrar {
    fn token(&self, sub: u32) -> u64 {
        (self.port as u64) << 32 | u64::from(sub)
    }

    pub fn add(&self, fd: RawFd, sub: u32, events: EventSet) -> io::Result<()> {
        self.epoll.ctl(
            ControlOperation::Add,
            fd,
            EpollEvent::new(events, self.token(sub)),
        )
    }

    pub fn modify(&self, fd: RawFd, sub: u32, events: EventSet) -> io::Result<()> {
        self.epoll.ctl(
            ControlOperation::Modify,
            fd,
            EpollEvent::new(events, self.token(sub)),
        )
    }

    pub fn delete(&self, fd: RawFd) {
        let _ = self
            .epoll
            .ctl(ControlOperation::Delete, fd, EpollEvent::default());
    }
}

/// One uplink's I/O, driven by the loop.
pub trait Port: Send {
    /// The uplink this port is the wire of.
    fn uplink(&self) -> UplinkId;
    /// Registers the port's fds (sub-tokens are the port's own).
    fn start(&mut self, io: &mut Io<'_>) -> io::Result<()>;
    /// `events` on the fd registered as `sub`.
    fn ready(&mut self, sub: u32, events: EventSet, io: &mut Io<'_>);
    /// Called about every 250 ms, for timers.
    fn tick(&mut self, _io: &mut Io<'_>) {}
}

/// Starts the uplink I/O thread (nothing to do without ports).
pub fn spawn(
    switch: Arc<Switch>,
    mut ports: Vec<Box<dyn Port>>,
) -> io::Result<Option<thread::JoinHandle<()>>> {
    if ports.is_empty() {
        return Ok(None);
    }
    let epoll = Arc::new(Epoll::new()?);
    let regs: Vec<Registrar> = (0..ports.len())
        .map(|port| Registrar {
            epoll: epoll.clone(),
            port,
        })
        .collect();
    let mut scratch = IngressScratch::default();
    for (p, reg) in ports.iter_mut().zip(&regs) {
        let mut io = Io {
            switch: &switch,
            scratch: &mut scratch,
            reg,
        };
        p.start(&mut io)?;
    }
    let h = thread::Builder::new()
        .name("uplinks".into())
        .spawn(move || run(&switch, &epoll, &regs, &mut ports, &mut scratch))?;
    Ok(Some(h))
}

fn run(
    switch: &Switch,
    epoll: &Epoll,
    regs: &[Registrar],
    ports: &mut [Box<dyn Port>],
    s: &mut IngressScratch,
) {
    let mut events = vec![EpollEvent::default(); 64];
    let mut last_tick = mono_ms();
    loop {
        let n = match epoll.wait(TICK.as_millis() as i32, &mut events) {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => {
                log::error!("uplinks: epoll_wait failed: {e}; uplink I/O stops");
                return;
            }
        };
        let now = mono_ms();
        switch.learned().tick(now);
        for ev in &events[..n] {
            let port = (ev.data() >> 32) as usize;
            let sub = ev.data() as u32;
            if let (Some(p), Some(reg)) = (ports.get_mut(port), regs.get(port)) {
                let mut io = Io {
                    switch,
                    scratch: s,
                    reg,
                };
                p.ready(sub, ev.event_set(), &mut io);
            }
        }
        if n == 0 {
            // Idle: no receiver's memory stays mapped for the uplinks' sake.
            s.release();
        }
        if now.saturating_sub(last_tick) >= TICK.as_millis() as u64 {
            last_tick = now;
            switch.learned().sweep();
            for (p, reg) in ports.iter_mut().zip(regs) {
                let mut io = Io {
                    switch,
                    scratch: s,
                    reg,
                };
                p.tick(&mut io);
            }
        }
    }
}
