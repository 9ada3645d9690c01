//! A partition: one complete virtio-net function (the PF or a VF; one type, one code path) with
//! its own configuration, policy, lifecycle, counters and, while a frontend is attached, its
//! session (guest memory and vrings of that connection).

use std::sync::{Arc, Mutex};

use arc_swap::ArcSwapOption;

use crate::admin::{Admin, GuestRx};
use crate::capture::Capture;
use crate::counters::{CounterSnapshot, QueueCounters};
use crate::mac::MacAddr;
use crate::session::Session;
use crate::shaper::Shaper;

/// Index into the switch's partition table: 0 is the PF, VF n is n + 1.
pub type PartitionId = usize;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    Pf,
    Vf(u16),
}

impl Role {
    pub fn name(&self) -> String {
        match self {
            Role::Pf => "pf".to_string(),
            Role::Vf(n) => format!("vf{n}"),
        }
    }
}

/// Static shape of a partition, fixed when the daemon starts.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PartitionConfig {
    pub mac: MacAddr,
    pub queue_pairs: u16,
    pub queue_size: u16,
    pub mtu: u16,
}

/// Where the partition's frontend is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum State {
    /// No frontend connected to the socket.
    Waiting,
    /// Connected; the driver has not started the device on this connection.
    Connected,
    /// Rings running.
    Started,
    /// Was started, stopped by the frontend (GET_VRING_BASE); connection still open.
    Stopped,
}

impl State {
    pub fn as_str(&self) -> &'static str {
        match self {
            State::Waiting => "waiting",
            State::Connected => "connected",
            State::Started => "started",
            State::Stopped => "stopped",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Lifecycle {
    pub state: State,
    pub connects: u64,
    pub disconnects: u64,
    pub starts: u64,
    pub stops: u64,
}

pub struct Partition {
    pub id: PartitionId,
    pub role: Role,
    pub config: PartitionConfig,
    /// The operator's settings (see [`crate::admin`]); the switch keeps the data path's copy.
    admin: Mutex<Admin>,
    /// `max_tx_rate`, applied to what the partition sends.
    pub shaper: Shaper,
    /// `min_tx_rate`: credit at that rate, which the busy poller serves first (see
    /// [`crate::poller`]); charged like the shaper, never holding anything back.
    pub guarantee: Shaper,
    /// The guest's MAC and receive modes, when QEMU has told them (QMP).
    guest: Mutex<Option<GuestRx>>,
    /// `ctl capture`: copies of what the partition sends and receives, while someone asks.
    pub capture: Capture,
    life: Mutex<Lifecycle>,
    counters: Vec<QueueCounters>,
    session: ArcSwapOption<Session>,
}

impl Partition {
    pub fn new(id: PartitionId, role: Role, config: PartitionConfig) -> Self {
        let counters = (0..config.queue_pairs)
            .map(|_| QueueCounters::default())
            .collect();
        Partition {
            id,
            role,
            admin: Mutex::new(Admin::new(config.mac)),
            shaper: Shaper::default(),
            guarantee: Shaper::default(),
            guest: Mutex::new(None),
            capture: Capture::default(),
            config,
            life: Mutex::new(Lifecycle {
                state: State::Waiting,
                connects: 0,
                disconnects: 0,
                starts: 0,
                stops: 0,
            }),
            counters,
            session: ArcSwapOption::empty(),
        }
    }

    pub fn name(&self) -> String {
        self.role.name()
    }

    /// The port's MAC as administered now (`config.mac` until changed at runtime).
    pub fn mac(&self) -> MacAddr {
        self.admin().mac
    }

    pub fn admin(&self) -> Admin {
        *self.admin.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn guest(&self) -> Option<GuestRx> {
        *self.guest.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Only the switch calls this, so its forwarding view follows (`Switch::set_guest_rx`).
    pub(crate) fn store_guest(&self, g: Option<GuestRx>) {
        *self.guest.lock().unwrap_or_else(|e| e.into_inner()) = g;
    }

    /// The MAC the switch uses for this port: the guest's own when it is trusted and QEMU
    /// reported a usable one, the admin MAC otherwise.
    pub fn effective_mac(&self, admin: &Admin) -> MacAddr {
        match self.guest() {
            Some(g) if admin.trust && crate::admin::check_mac(g.mac).is_ok() => g.mac,
            _ => admin.mac,
        }
    }

    /// Only the switch calls this, so its forwarding view follows (see `Switch::set_admin`).
    pub(crate) fn store_admin(&self, a: Admin) {
        let mut cur = self.admin.lock().unwrap_or_else(|e| e.into_inner());
        if cur.max_tx_rate != a.max_tx_rate {
            self.shaper.set_mbps(a.max_tx_rate);
        }
        if cur.min_tx_rate != a.min_tx_rate {
            self.guarantee.set_mbps(a.min_tx_rate);
        }
        *cur = a;
    }

    /// Counters of queue pair `pair` (clamped, so a bad index cannot panic).
    pub fn queue_counters(&self, pair: usize) -> &QueueCounters {
        &self.counters[pair.min(self.counters.len() - 1)]
    }

    pub fn counter_snapshots(&self) -> Vec<CounterSnapshot> {
        self.counters.iter().map(|c| c.snapshot()).collect()
    }

    pub fn totals(&self) -> CounterSnapshot {
        let mut t = CounterSnapshot::default();
        for c in &self.counters {
            t.add(&c.snapshot());
        }
        t
    }

    pub fn session(&self) -> Option<Arc<Session>> {
        self.session.load_full()
    }

    pub fn lifecycle(&self) -> Lifecycle {
        *self.lock_life()
    }

    pub fn state(&self) -> State {
        self.lock_life().state
    }

    fn lock_life(&self) -> std::sync::MutexGuard<'_, Lifecycle> {
        // A poisoned lock only means a panic elsewhere; the plain-data state is still usable.
        self.life.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Installs the session of the next connection (before it is accepted).
    pub fn install_session(&self, s: Arc<Session>) {
        self.session.store(Some(s));
    }

    pub fn on_connect(&self) {
        let mut l = self.lock_life();
        l.state = State::Connected;
        l.connects += 1;
    }

    /// The frontend is gone: forget its memory and rings so no sender touches them again.
    pub fn on_disconnect(&self) {
        self.session.store(None);
        let mut l = self.lock_life();
        if l.state == State::Started {
            l.stops += 1;
        }
        l.state = State::Waiting;
        l.disconnects += 1;
    }

    pub fn on_rings_started(&self) {
        let mut l = self.lock_life();
        if matches!(l.state, State::Connected | State::Stopped) {
            l.state = State::Started;
            l.starts += 1;
        }
    }

    pub fn on_rings_stopped(&self) {
        let mut l = self.lock_life();
        if l.state == State::Started {
            l.state = State::Stopped;
            l.stops += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn part() -> Partition {
        Partition::new(
            1,
            Role::Vf(0),
            crate::testutil::config("02:00:00:00:00:01", 2),
        )
    }

    #[test]
    fn the_rates_follow_the_admin_settings() {
        let p = part();
        assert!(!p.shaper.limited() && !p.guarantee.limited());
        let mut a = p.admin();
        a.max_tx_rate = 100;
        a.min_tx_rate = 40;
        p.store_admin(a);
        assert!(p.shaper.limited() && p.guarantee.limited());
        a.min_tx_rate = 0;
        p.store_admin(a);
        assert!(p.shaper.limited() && !p.guarantee.limited());
    }

    #[test]
    fn lifecycle_counts_each_transition_once() {
        let p = part();
        assert_eq!(p.state(), State::Waiting);
        p.on_rings_started(); // not connected: ignored
        assert_eq!(p.lifecycle().starts, 0);
        p.on_connect();
        p.on_rings_started();
        p.on_rings_started();
        p.on_rings_stopped();
        p.on_rings_stopped();
        p.on_rings_started();
        p.on_disconnect();
        let l = p.lifecycle();
        assert_eq!(
            (l.state, l.connects, l.starts, l.stops, l.disconnects),
            (State::Waiting, 1, 2, 2, 1)
        );
    }

    #[test]
    fn names_and_counter_clamping() {
        let p = part();
        assert_eq!(p.name(), "vf0");
        assert_eq!(Role::Pf.name(), "pf");
        let mut t = crate::counters::Tally::default();
        t.count(10, crate::counters::Cast::Unicast);
        p.queue_counters(7).add_tx(&t);
        assert_eq!(p.counter_snapshots()[1].tx_packets, 1);
        assert_eq!(p.totals().tx_bytes, 10);
    }
}
