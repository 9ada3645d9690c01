//! What one frontend connection brings: its guest memory, its vrings and negotiated features.
//! A session lives from accept to disconnect; the next connection gets a fresh one, so nothing a
//! previous frontend left behind (rings, memory, broken flags) can leak into the next.

use std::cell::Cell;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use std::sync::{RwLockReadGuard, RwLockWriteGuard};
use vhost_user_backend::{VringRwLock, VringState, VringStateGuard, VringStateMutGuard, VringT};
use virtio_bindings::bindings::virtio_net::{
    VIRTIO_NET_F_CSUM, VIRTIO_NET_F_GUEST_CSUM, VIRTIO_NET_F_GUEST_TSO4, VIRTIO_NET_F_GUEST_TSO6,
    VIRTIO_NET_F_HOST_TSO4, VIRTIO_NET_F_HOST_TSO6, VIRTIO_NET_F_MRG_RXBUF,
};
use virtio_bindings::bindings::virtio_ring::VIRTIO_RING_F_INDIRECT_DESC;
use virtio_queue::Error as VirtQueError;
use virtio_queue::Queue;
use vm_memory::{GuestMemoryAtomic, GuestMemoryMmap};
use vmm_sys_util::event::{
    new_event_consumer_and_notifier, EventConsumer, EventFlag, EventNotifier,
};

use crate::hostmem::{HostMem, MemMap};
use crate::iommu::{Iommu, VIRTIO_F_ACCESS_PLATFORM};
use crate::offload::{RxOffloads, TxOffloads};
use crate::partition::Partition;
use crate::ring::{Dir, Ring, RingCache, RingError};
use crate::Mem;

pub type GuestMem = GuestMemoryAtomic<Mem>;

/// The framework's vring for one queue: its `VringRwLock`, except for `read_kick`.
/// vhost-user-backend 0.24 ends the vring worker on any error reading the kick eventfd, and an
/// empty read (EAGAIN) happens whenever the frontend drains its own eventfd between our wakeup
/// and our read (QEMU does when it takes a queue back; a hostile frontend can at will). The
/// partition's data path would then be dead until the frontend reconnects. Here it is a wakeup
/// with nothing to do.
#[derive(Clone)]
pub struct Vring(VringRwLock<GuestMem>);

impl<'a> VringStateGuard<'a, GuestMem> for Vring {
    type G = RwLockReadGuard<'a, VringState<GuestMem>>;
}

impl<'a> VringStateMutGuard<'a, GuestMem> for Vring {
    type G = RwLockWriteGuard<'a, VringState<GuestMem>>;
}

impl VringT<GuestMem> for Vring {
    fn new(mem: GuestMem, max_queue_size: u16) -> Result<Self, VirtQueError> {
        VringRwLock::new(mem, max_queue_size).map(Vring)
    }

    fn read_kick(&self) -> io::Result<bool> {
        match self.0.read_kick() {
            // Not "disabled": the worker then skips this wakeup, and the next kick comes.
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(false),
            r => r,
        }
    }

    fn get_ref(&self) -> RwLockReadGuard<'_, VringState<GuestMem>> {
        self.0.get_ref()
    }
    fn get_mut(&self) -> RwLockWriteGuard<'_, VringState<GuestMem>> {
        self.0.get_mut()
    }
    fn add_used(&self, desc_index: u16, len: u32) -> Result<(), VirtQueError> {
        self.0.add_used(desc_index, len)
    }
    fn signal_used_queue(&self) -> io::Result<()> {
        self.0.signal_used_queue()
    }
    fn enable_notification(&self) -> Result<bool, VirtQueError> {
        self.0.enable_notification()
    }
    fn disable_notification(&self) -> Result<(), VirtQueError> {
        self.0.disable_notification()
    }
    fn needs_notification(&self) -> Result<bool, VirtQueError> {
        self.0.needs_notification()
    }
    fn set_enabled(&self, enabled: bool) {
        self.0.set_enabled(enabled)
    }
    fn set_queue_info(&self, desc: u64, avail: u64, used: u64) -> Result<(), VirtQueError> {
        self.0.set_queue_info(desc, avail, used)
    }
    fn queue_next_avail(&self) -> u16 {
        self.0.queue_next_avail()
    }
    fn set_queue_next_avail(&self, base: u16) {
        self.0.set_queue_next_avail(base)
    }
    fn set_queue_next_used(&self, idx: u16) {
        self.0.set_queue_next_used(idx)
    }
    fn queue_used_idx(&self) -> Result<u16, VirtQueError> {
        self.0.queue_used_idx()
    }
    fn set_queue_size(&self, num: u16) {
        self.0.set_queue_size(num)
    }
    fn set_queue_event_idx(&self, enabled: bool) {
        self.0.set_queue_event_idx(enabled)
    }
    fn set_queue_ready(&self, ready: bool) {
        self.0.set_queue_ready(ready)
    }
    fn set_kick(&self, file: Option<std::fs::File>) {
        self.0.set_kick(file)
    }
    fn set_call(&self, file: Option<std::fs::File>) {
        self.0.set_call(file)
    }
    fn set_err(&self, file: Option<std::fs::File>) {
        self.0.set_err(file)
    }
}

/// Things logged once per session rather than per packet.
#[derive(Clone, Copy, Debug)]
pub enum Warn {
    MalformedTxChain = 0,
    BadTxHeader = 1,
    SenderMemory = 2,
    Oversize = 3,
    /// A buffer whose IOVA the IOTLB cannot translate for the access.
    IommuFault = 4,
}

pub struct Session {
    pub name: String,
    pub mem: GuestMem,
    vrings: OnceLock<Vec<Vring>>,
    features: AtomicU64,
    /// The vIOMMU side of the connection (ACCESS_PLATFORM, IOTLB, MISS channel).
    pub iommu: Arc<Iommu>,
    broken: Vec<AtomicBool>,
    warned: AtomicU32,
    /// Bumped whenever rings or memory may have changed under a lock-free observer (memory
    /// table, ring stop, end of the connection); see [`Held`].
    generation: AtomicU64,
    exit_consumer: EventConsumer,
    exit_notifier: EventNotifier,
    /// Raw fds of the consumer clones handed to vring workers (see [`Session::exit_event`]).
    handed_out: Mutex<Vec<RawFd>>,
}

impl Session {
    pub fn new(name: String, num_queues: usize) -> io::Result<Self> {
        let (exit_consumer, exit_notifier) = new_event_consumer_and_notifier(EventFlag::NONBLOCK)?;
        Ok(Session {
            name,
            mem: GuestMemoryAtomic::new(GuestMemoryMmap::new()),
            vrings: OnceLock::new(),
            features: AtomicU64::new(0),
            iommu: Arc::new(Iommu::default()),
            broken: (0..num_queues).map(|_| AtomicBool::new(false)).collect(),
            warned: AtomicU32::new(0),
            generation: AtomicU64::new(0),
            exit_consumer,
            exit_notifier,
            handed_out: Mutex::new(Vec::new()),
        })
    }

    /// The connection's vrings, known once the worker has seen its first ring event.
    pub fn vrings(&self) -> Option<&[Vring]> {
        self.vrings.get().map(|v| v.as_slice())
    }

    pub fn attach_vrings(&self, vrings: &[Vring]) {
        let _ = self.vrings.get_or_init(|| vrings.to_vec());
    }

    /// True when any ring of this session is set up and enabled.
    pub fn any_ring_running(&self) -> bool {
        self.vrings().is_some_and(|v| {
            v.iter().any(|r| {
                let s = r.get_ref();
                s.is_enabled() && virtio_queue::QueueT::ready(s.get_queue())
            })
        })
    }

    pub fn set_features(&self, f: u64) {
        self.features.store(f, Ordering::Release);
        self.iommu
            .set_enabled(f & (1u64 << VIRTIO_F_ACCESS_PLATFORM) != 0);
    }

    pub fn has(&self, bit: u32) -> bool {
        self.features.load(Ordering::Acquire) & (1u64 << bit) != 0
    }

    pub fn mergeable(&self) -> bool {
        self.has(VIRTIO_NET_F_MRG_RXBUF)
    }

    pub fn indirect(&self) -> bool {
        self.has(VIRTIO_RING_F_INDIRECT_DESC)
    }

    pub fn rx_offloads(&self) -> RxOffloads {
        RxOffloads {
            csum: self.has(VIRTIO_NET_F_GUEST_CSUM),
            tso4: self.has(VIRTIO_NET_F_GUEST_TSO4),
            tso6: self.has(VIRTIO_NET_F_GUEST_TSO6),
        }
    }

    /// What the driver may ask of the device when it sends.
    pub fn tx_offloads(&self) -> TxOffloads {
        TxOffloads {
            csum: self.has(VIRTIO_NET_F_CSUM),
            tso4: self.has(VIRTIO_NET_F_HOST_TSO4),
            tso6: self.has(VIRTIO_NET_F_HOST_TSO6),
        }
    }

    pub fn is_broken(&self, queue: usize) -> bool {
        self.broken
            .get(queue)
            .is_some_and(|b| b.load(Ordering::Relaxed))
    }

    /// Stops a queue whose rings are unusable; logs once. It runs again after a restart.
    pub fn mark_broken(&self, queue: usize, why: &dyn std::fmt::Display) {
        if let Some(b) = self.broken.get(queue) {
            if !b.swap(true, Ordering::Relaxed) {
                log::warn!(
                    "{}: queue {queue} broken, isolated until restarted: {why}",
                    self.name
                );
            }
        }
    }

    pub fn clear_broken(&self, queue: usize) {
        if let Some(b) = self.broken.get(queue) {
            b.store(false, Ordering::Relaxed);
        }
    }

    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    pub fn bump_generation(&self) {
        self.generation.fetch_add(1, Ordering::AcqRel);
    }

    /// Logs the first occurrence of `w` in this session; later ones only show in counters.
    pub fn warn_once(&self, w: Warn, why: &dyn std::fmt::Display) {
        let bit = 1u32 << (w as u32);
        if self.warned.fetch_or(bit, Ordering::Relaxed) & bit == 0 {
            log::warn!("{}: {why} (further occurrences only counted)", self.name);
        }
    }

    /// Event pair handed to the vring worker; notifying it ends the worker thread.
    ///
    /// vhost-user-backend 0.24 registers the consumer with `into_raw_fd` and never closes it,
    /// which leaked one eventfd per connection. The raw fd is remembered here and closed by
    /// [`Session::close_exit_fds`] once the worker is gone.
    pub fn exit_event(&self) -> Option<(EventConsumer, EventNotifier)> {
        let notifier = self.exit_notifier.try_clone().ok()?;
        let consumer = self.exit_consumer.try_clone().ok()?;
        self.handed_out
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(consumer.as_raw_fd());
        Some((consumer, notifier))
    }

    /// Closes the consumer fds handed out by [`Session::exit_event`].
    ///
    /// # Safety
    /// Only after the `VhostUserDaemon` built for this session has been dropped: its handler's
    /// drop joins the vring workers, the only users of those fds, and the framework takes each
    /// consumer over with `into_raw_fd` right after asking for it, so nothing else owns or
    /// closes them.
    pub unsafe fn close_exit_fds(&self) {
        let fds = std::mem::take(&mut *self.handed_out.lock().unwrap_or_else(|e| e.into_inner()));
        for fd in fds {
            // SAFETY: per this function's contract the fd is open and owned by nobody else.
            drop(unsafe { OwnedFd::from_raw_fd(fd) });
        }
    }

    /// The connection is over: stop its worker, and tell data-path threads holding the session
    /// (the generation change) to let go of it and its memory.
    pub fn stop_worker(&self) {
        self.bump_generation();
        if let Err(e) = self.exit_notifier.notify() {
            log::error!("{}: cannot stop vring worker: {e}", self.name);
        }
    }
}

/// A session and a snapshot of its memory, held across batches by a data-path thread and
/// refreshed only when the session's generation moves (memory table, ring stop, end of the
/// connection). Loading both per batch cost two atomic swaps, each a full fence, which is most
/// of what one frame costs when frames come one at a time. The hold also keeps what was derived
/// from the snapshot: its region table and the mapping of the ring last used.
pub struct Held {
    pub session: Arc<Session>,
    map: MemMap,
    /// Only ever used with `map` (the contract of `RingCache::ring`).
    rings: RingCache,
    /// next_avail and next_used after the last batch or run on the cached ring, for
    /// [`Held::still_idle`] and [`Held::warm`].
    seen: Cell<(u16, u16)>,
    generation: u64,
    /// Set once the holder (one TX queue's worker or the poller) has asked that queue's driver
    /// to stop kicking, so later batches skip it: looking at the flag costs a miss per batch,
    /// because the driver polls that line. Re-arming the kick clears it.
    kicks_off: Cell<bool>,
}

/// A queue's descriptor table, avail and used ring addresses (guest-physical).
fn ring_addrs(q: &Queue) -> [u64; 3] {
    use virtio_queue::QueueT;
    [q.desc_table(), q.avail_ring(), q.used_ring()]
}

impl Held {
    pub fn of(session: Arc<Session>) -> Self {
        // Generation first: a change after this read is noticed by `current`.
        let generation = session.generation();
        let mem = vm_memory::GuestAddressSpace::memory(&session.mem).into_inner();
        Held {
            session,
            map: MemMap::new(mem),
            rings: RingCache::default(),
            seen: Cell::new((0, 0)),
            generation,
            kicks_off: Cell::new(false),
        }
    }

    /// A translation view of the snapshot for one batch or RX run.
    /// With ACCESS_PLATFORM it holds the session's IOTLB until dropped (waiting out an
    /// invalidation in progress); without, it costs the one check.
    pub fn host(&self) -> HostMem<'_> {
        let h = self.map.host();
        let iommu = &self.session.iommu;
        if iommu.enabled() {
            h.with_dma(iommu.dma())
        } else {
            h
        }
    }

    /// As [`Held::host`] for a sender delivering into this session: None instead of waiting
    /// while its IOTLB is being changed (see [`Iommu::try_dma`]).
    pub fn try_host(&self) -> Option<HostMem<'_>> {
        let h = self.map.host();
        let iommu = &self.session.iommu;
        if iommu.enabled() {
            Some(h.with_dma(iommu.try_dma()?))
        } else {
            Some(h)
        }
    }

    /// Queue `qidx`'s rings (`q` is that queue, under its lock), mapped in the snapshot; reused
    /// from the previous call when it was the same queue with the same addresses.
    pub fn ring(&self, qidx: usize, q: &Queue) -> Result<Ring<'_>, RingError> {
        let iommu = &self.session.iommu;
        if iommu.enabled() && !iommu.ring_ready(qidx, ring_addrs(q)) {
            return Err(RingError::Untranslated);
        }
        self.ring_unchecked(qidx, q)
    }

    /// [`Held::ring`] without the vIOMMU check, for an RX run that only keeps frames while the
    /// ring's entries come back: mapping reads nothing, and such a run touches nothing of it.
    pub fn ring_unchecked(&self, qidx: usize, q: &Queue) -> Result<Ring<'_>, RingError> {
        // SAFETY: this cache is only ever used with `self.map`, which lives as long as `self`.
        unsafe { self.rings.ring(&self.map, qidx, q) }
    }

    /// A batch or run on the cached ring left it at next_avail `avail` and next_used `used`.
    pub fn saw(&self, avail: u16, used: u16) {
        self.seen.set((avail, used));
    }

    /// Starts fetching the lines the next run on the cached ring will touch first, so a sender
    /// can overlap them with its own reads before it knows where its frames go.
    /// `dir` says whether the ring's buffers are read (TX) or written (RX).
    pub fn warm(&self, dir: Dir) {
        let (avail, used) = self.seen.get();
        // SAFETY: `self.map` is alive and is the cache's only map.
        unsafe { self.rings.warm(&self.map, avail, used, dir) }
    }

    /// A cheap re-check, for a poller looking many times a microsecond, that TX queue `qidx` is
    /// still where the last batch left it: one load of avail.idx through the cached mapping.
    /// Only a hint (a real batch re-checks under the ring lock); false when anything moved,
    /// including the session's generation.
    pub fn still_idle(&self, qidx: usize) -> bool {
        // SAFETY: `self.map` is alive and is the cache's only map.
        self.current() && unsafe { self.rings.avail_idx(qidx) } == Some(self.seen.get().0)
    }

    /// True the first time after the hold was taken or [`Held::kicks_rearmed`]: the caller is
    /// to suppress kicks now.
    pub fn suppress_kicks_once(&self) -> bool {
        !self.kicks_off.replace(true)
    }

    /// The driver's kick was re-enabled (the queue ran dry).
    pub fn kicks_rearmed(&self) {
        self.kicks_off.set(false);
    }

    pub fn current(&self) -> bool {
        self.session.generation() == self.generation
    }

    /// `slot` made current for `part`'s session (None when it has none).
    pub fn refresh<'a>(slot: &'a mut Option<Held>, part: &Partition) -> Option<&'a Held> {
        if !slot.as_ref().is_some_and(Held::current) {
            *slot = part.session().map(Held::of);
        }
        slot.as_ref()
    }
}
