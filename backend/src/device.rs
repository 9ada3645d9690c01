//! One partition as a vhost-user virtio-net device: the `VhostUserBackend` the vhost-user
//! handler drives. Every partition, PF or VF, is served by this same type.

use std::io;
use std::sync::Arc;
use std::time::Duration;

use vhost::vhost_user::message::{VhostUserProtocolFeatures, VhostUserVirtioFeatures};
use vhost_user_backend::{VhostUserBackend, VringT};
use virtio_bindings::bindings::virtio_config::{VIRTIO_F_IN_ORDER, VIRTIO_F_VERSION_1};
use virtio_bindings::bindings::virtio_net::{
    VIRTIO_NET_F_CSUM, VIRTIO_NET_F_GUEST_CSUM, VIRTIO_NET_F_GUEST_TSO4, VIRTIO_NET_F_GUEST_TSO6,
    VIRTIO_NET_F_HOST_TSO4, VIRTIO_NET_F_HOST_TSO6, VIRTIO_NET_F_MQ, VIRTIO_NET_F_MRG_RXBUF,
    VIRTIO_NET_F_MTU,
};
use virtio_bindings::bindings::virtio_ring::{
    VIRTIO_RING_F_EVENT_IDX, VIRTIO_RING_F_INDIRECT_DESC,
};
use virtio_queue::QueueT;
use vm_memory::GuestAddressSpace;
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::event::{EventConsumer, EventNotifier};

use crate::partition::{Partition, PartitionConfig};
use crate::poller::{Job, Poller};
use crate::session::{GuestMem, Session, Vring};
use crate::switch::Switch;
use crate::tx;

/// Virtio features a partition offers its driver. IN_ORDER costs nothing: every queue takes and
/// completes chains in ring order already (a dropped TX chain is completed in its place, a frame
/// without RX room consumes nothing). DPDK's virtio PMD switches to its faster in-order paths.
pub fn offered_features(cfg: &PartitionConfig) -> u64 {
    let bits = [
        VIRTIO_F_VERSION_1,
        VIRTIO_F_IN_ORDER,
        VIRTIO_RING_F_INDIRECT_DESC,
        VIRTIO_RING_F_EVENT_IDX,
        VIRTIO_NET_F_MRG_RXBUF,
        VIRTIO_NET_F_MTU,
        VIRTIO_NET_F_CSUM,
        VIRTIO_NET_F_GUEST_CSUM,
        VIRTIO_NET_F_HOST_TSO4,
        VIRTIO_NET_F_HOST_TSO6,
        VIRTIO_NET_F_GUEST_TSO4,
        VIRTIO_NET_F_GUEST_TSO6,
    ];
    let mut f = bits.iter().fold(0u64, |f, b| f | (1u64 << b));
    if cfg.queue_pairs > 1 {
        f |= 1 << VIRTIO_NET_F_MQ;
    }
    // A vIOMMU in the guest (`iommu_platform=on`): IOTLB messages are handled by the pump and
    // descriptor addresses translated in the data path (`iommu`). Frontends without a vIOMMU
    // do not ack it (QEMU masks it off unless the device has iommu_platform=on).
    f |= 1 << crate::iommu::VIRTIO_F_ACCESS_PLATFORM;
    f | VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits()
}

/// vhost-user protocol features. STATUS is not offered: vhost 0.18's backend handler has no
/// SET_STATUS/GET_STATUS, and frontends (QEMU, DPDK virtio_user) work without it. BACKEND_REQ
/// carries IOTLB MISS requests; QEMU offers a vIOMMU only with it and REPLY_ACK.
pub fn offered_protocol_features() -> VhostUserProtocolFeatures {
    VhostUserProtocolFeatures::MQ
        | VhostUserProtocolFeatures::REPLY_ACK
        | VhostUserProtocolFeatures::CONFIGURE_MEM_SLOTS
        | VhostUserProtocolFeatures::BACKEND_REQ
}

/// Largest split ring the virtio spec allows (Queue Size is at most 32768).
pub const MAX_QUEUE_SIZE: usize = 32768;

/// Every file-backed region must lie within its file.
fn check_regions(mem: &crate::Mem) -> io::Result<()> {
    use vm_memory::{GuestMemoryBackend, GuestMemoryRegion};
    for r in mem.iter() {
        if let Some(fo) = r.file_offset() {
            let file_len = fo.file().metadata()?.len();
            let end = fo.start().checked_add(r.len());
            if end.is_none_or(|e| e > file_len) {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!(
                        "region at guest {:#x} maps {} bytes from file offset {} but the file has {file_len}",
                        r.start_addr().0,
                        r.len(),
                        fo.start()
                    ),
                ));
            }
        }
    }
    Ok(())
}

#[derive(Clone)]
pub struct NetDevice {
    inner: Arc<Inner>,
}

/// How a partition's TX queues are served.
#[derive(Clone)]
pub enum Drive {
    /// A kick wakes the partition's worker, which drains the queue and keeps looking at it for
    /// `linger` before it re-enables kicks and sleeps (see `tx::process_tx`).
    Event { linger: Duration },
    /// A kick hands the queue to this busy-polling thread.
    Poll(Arc<Poller>),
}

struct Inner {
    partition: Arc<Partition>,
    switch: Arc<Switch>,
    drive: Drive,
    /// One per TX queue pair.
    jobs: Vec<Arc<Job>>,
}

impl NetDevice {
    pub fn new(partition: Arc<Partition>, switch: Arc<Switch>, drive: Drive) -> Self {
        let jobs = (0..usize::from(partition.config.queue_pairs))
            .map(|pair| Job::new(partition.clone(), switch.clone(), pair))
            .collect();
        NetDevice {
            inner: Arc::new(Inner {
                partition,
                switch,
                drive,
                jobs,
            }),
        }
    }

    pub fn partition(&self) -> &Arc<Partition> {
        &self.inner.partition
    }

    /// Prepares the session for the next frontend connection and returns it; its `mem` is the
    /// memory the vhost-user daemon for that connection must be built with.
    pub fn new_session(&self) -> io::Result<Arc<Session>> {
        let p = &self.inner.partition;
        let s = Arc::new(Session::new(p.name(), self.num_queues())?);
        p.install_session(s.clone());
        Ok(s)
    }
}

impl VhostUserBackend for NetDevice {
    type Bitmap = ();
    type Vring = Vring;

    fn num_queues(&self) -> usize {
        2 * usize::from(self.inner.partition.config.queue_pairs)
    }

    /// Any valid split-ring size: the configured size is only what `qemu-args` proposes, and
    /// frontends pick their own (DPDK's `queue_size=`, QEMU's `rx_queue_size=`).
    fn max_queue_size(&self) -> usize {
        MAX_QUEUE_SIZE
    }

    fn features(&self) -> u64 {
        offered_features(&self.inner.partition.config)
    }

    fn acked_features(&self, features: u64) {
        if let Some(s) = self.inner.partition.session() {
            s.set_features(features);
        }
    }

    fn protocol_features(&self) -> VhostUserProtocolFeatures {
        offered_protocol_features()
    }

    fn reset_device(&self) {
        self.inner.partition.on_rings_stopped();
    }

    fn set_event_idx(&self, _enabled: bool) {
        // Kept in each queue's state by the handler; the data path reads it from there.
    }

    fn update_memory(&self, mem: GuestMem) -> io::Result<()> {
        // The handler has already installed the new table. A region reaching past the end of
        // its file would SIGBUS the whole daemon on first touch, so such a table is replaced by
        // an empty one (every access then fails cleanly) and refused.
        let bad = check_regions(&mem.memory());
        if let Err(e) = &bad {
            if let Ok(guard) = mem.lock() {
                guard.replace(crate::Mem::new());
            }
            log::warn!("{}: memory table refused: {e}", self.inner.partition.name());
        }
        // Only now, with the table final: a data-path thread that took a snapshot of the refused
        // table before its replacement must see a generation change and drop it.
        if let Some(s) = self.inner.partition.session() {
            s.bump_generation();
        }
        bad
    }

    fn queues_per_thread(&self) -> Vec<u64> {
        vec![(1u64 << self.num_queues()) - 1]
    }

    fn exit_event(&self, _thread_index: usize) -> Option<(EventConsumer, EventNotifier)> {
        self.inner.partition.session()?.exit_event()
    }

    fn stop_vring(&self, queue_index: u32) -> io::Result<()> {
        // A TX batch in flight has advanced next_avail but not yet written its used entries;
        // the frontend is about to read the ring state, so wait for that batch to complete.
        // (Whoever runs a batch, worker or poller, holds that queue's scratch throughout.)
        let idx = queue_index as usize;
        let _tx_idle = (idx % 2 == 1)
            .then(|| self.inner.jobs.get(idx / 2))
            .flatten()
            .map(|j| j.lock_scratch());
        self.inner.partition.on_rings_stopped();
        // RX runs publish before they release the ring lock, so nothing is left unpublished.
        if let Some(s) = self.inner.partition.session() {
            s.clear_broken(queue_index as usize);
            s.bump_generation();
        }
        Ok(())
    }

    fn handle_event(
        &self,
        device_event: u16,
        _evset: EventSet,
        vrings: &[Vring],
        _thread_id: usize,
    ) -> io::Result<()> {
        let p = &self.inner.partition;
        let Some(session) = p.session() else {
            return Ok(());
        };
        let ev = usize::from(device_event);
        if ev >= vrings.len() {
            return Ok(());
        }
        session.attach_vrings(vrings);
        if session.any_ring_running() {
            p.on_rings_started();
        }
        if ev % 2 == 0 {
            // Delivery never waits for RX buffers (a frame with none is dropped), so RX kicks
            // are never needed: ask the driver to stop sending them. Each one costs a wakeup
            // here and a notification (a VM exit, for a guest) there.
            let mem = session.mem.memory();
            let mut g = vrings[ev].get_mut();
            let _ = g.get_queue_mut().disable_notification(&*mem);
        } else {
            let Some(job) = self.inner.jobs.get(ev / 2) else {
                return Ok(());
            };
            match &self.inner.drive {
                Drive::Poll(poller) => poller.kick(job),
                Drive::Event { linger } => {
                    let mut scratch = job.lock_scratch();
                    tx::process_tx(
                        &self.inner.switch,
                        p,
                        session.clone(),
                        job.pair,
                        &mut scratch,
                        *linger,
                    );
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offers_mq_only_with_several_pairs() {
        let mut cfg = crate::testutil::config("02:00:00:00:00:01", 1);
        let f = offered_features(&cfg);
        assert_eq!(f & (1 << VIRTIO_NET_F_MQ), 0);
        for b in [
            VIRTIO_F_VERSION_1,
            VIRTIO_F_IN_ORDER,
            VIRTIO_NET_F_MRG_RXBUF,
            VIRTIO_RING_F_EVENT_IDX,
            VIRTIO_NET_F_HOST_TSO4,
        ] {
            assert_ne!(f & (1 << b), 0, "bit {b}");
        }
        assert_ne!(f & VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits(), 0);
        assert_ne!(f & (1 << crate::iommu::VIRTIO_F_ACCESS_PLATFORM), 0);
        let p = offered_protocol_features();
        assert!(p.contains(
            VhostUserProtocolFeatures::BACKEND_REQ | VhostUserProtocolFeatures::REPLY_ACK
        ));
        cfg.queue_pairs = 2;
        assert_ne!(offered_features(&cfg) & (1 << VIRTIO_NET_F_MQ), 0);
    }
}
