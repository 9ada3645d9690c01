//! Driver side of split rings for unit tests: a queue at fixed, non-overlapping addresses.
//! (virtio-queue's MockSplitQueue overlaps the used ring with the avail ring's used_event.)

use std::sync::atomic::Ordering;

use virtio_queue::desc::split::Descriptor;
use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use crate::hostmem::MemMap;
use crate::partition::PartitionConfig;
use crate::ring::{self, ChainError, Dir, Ring, Seg};

/// A session of two queues (one pair) whose queue `qidx` is `d`'s ring, set up and enabled as a
/// frontend would leave it; the other queue is never started.
pub fn session_on(d: &Driver, qidx: usize) -> std::sync::Arc<crate::session::Session> {
    use vhost_user_backend::VringT;
    let s = std::sync::Arc::new(crate::session::Session::new("vf0".into(), 2).unwrap());
    s.mem.lock().unwrap().replace(d.mem.clone());
    let vrings: Vec<crate::session::Vring> = (0..2)
        .map(|_| crate::session::Vring::new(s.mem.clone(), 256).unwrap())
        .collect();
    vrings[qidx].set_queue_size(d.size);
    vrings[qidx].set_queue_info(DESC, AVAIL, USED).unwrap();
    vrings[qidx].set_queue_ready(true);
    vrings[qidx].set_enabled(true);
    s.attach_vrings(&vrings);
    s
}

/// A partition shape for tests: `mac`, `queue_pairs`, queue size 256, MTU 1500.
pub fn config(mac: &str, queue_pairs: u16) -> PartitionConfig {
    PartitionConfig {
        mac: mac.parse().unwrap(),
        queue_pairs,
        queue_size: 256,
        mtu: 1500,
    }
}

pub const DESC: u64 = 0x0;
pub const AVAIL: u64 = 0x1000;
pub const USED: u64 = 0x2000;
pub const F_WRITE: u16 = 2;

pub struct Driver {
    pub mem: GuestMemoryMmap<()>,
    pub size: u16,
    pub avail_idx: u16,
}

impl Driver {
    pub fn new(size: u16) -> (Driver, Queue) {
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x10_0000)]).unwrap();
        let d = Driver {
            mem,
            size,
            avail_idx: 0,
        };
        let q = d.queue();
        (d, q)
    }

    /// A device-side queue over this driver's rings.
    pub fn queue(&self) -> Queue {
        let mut q = Queue::new(self.size).unwrap();
        q.set_size(self.size);
        q.set_desc_table_address(Some(DESC as u32), Some(0));
        q.set_avail_ring_address(Some(AVAIL as u32), Some(0));
        q.set_used_ring_address(Some(USED as u32), Some(0));
        q.set_ready(true);
        q
    }

    pub fn desc(&self, table: u64, i: u16, addr: u64, len: u32, flags: u16, next: u16) {
        let d = Descriptor::new(addr, len, flags, next);
        self.mem
            .write_obj(d, GuestAddress(table + 16 * u64::from(i)))
            .unwrap();
    }

    pub fn offer(&mut self, head: u16) {
        let slot = AVAIL + 4 + 2 * u64::from(self.avail_idx % self.size);
        self.mem
            .write_obj(head.to_le(), GuestAddress(slot))
            .unwrap();
        self.avail_idx = self.avail_idx.wrapping_add(1);
        self.mem
            .store(
                self.avail_idx.to_le(),
                GuestAddress(AVAIL + 2),
                Ordering::Release,
            )
            .unwrap();
    }

    /// A map of the driver's memory (call once per test step: it is built each time).
    pub fn map(&self) -> MemMap {
        MemMap::of(&self.mem)
    }

    pub fn walk(&self, q: &Queue, dir: Dir, indirect: bool) -> Result<(u32, Vec<Seg>), ChainError> {
        let map = self.map();
        let host = map.host();
        let r = Ring::map(&host, q).unwrap();
        let head = r.avail_head(q, 0);
        let mut segs = Vec::new();
        ring::walk_chain(&host, r.table(), head, dir, indirect, 65562, &mut segs).map(|t| (t, segs))
    }

    pub fn used_idx(&self) -> u16 {
        u16::from_le(
            self.mem
                .load(GuestAddress(USED + 2), Ordering::Acquire)
                .unwrap(),
        )
    }

    /// Used element `k`: (id, len).
    pub fn used(&self, k: u16) -> (u32, u32) {
        let e: [u8; 8] = self
            .mem
            .read_obj(GuestAddress(USED + 4 + 8 * u64::from(k)))
            .unwrap();
        (
            u32::from_le_bytes([e[0], e[1], e[2], e[3]]),
            u32::from_le_bytes([e[4], e[5], e[6], e[7]]),
        )
    }
}
