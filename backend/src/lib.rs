//! The partitioned virtio-net device model behind `vhost-user-sriov-net`: partitions (PF and VFs
//! are one type), virtio-net queue processing, the embedded switch and counters. No CLI or
//! process concerns live here.
//!
//! Data path, top to bottom: a TX kick reaches the partition's [`device::NetDevice`], [`tx`]
//! takes chains off the TX ring ([`ring`]), the [`switch`] picks the destination partition(s), and
//! [`rx`] copies the frame once ([`frame`]) into the destination's RX buffers.

pub mod admin;
pub mod capture;
pub mod counters;
pub mod device;
pub mod frame;
#[cfg(feature = "fuzzing")]
pub mod fuzzing;
pub mod hostmem;
pub mod iommu;
pub mod iotlb;
pub mod mac;
pub mod net_hdr;
pub mod offload;
pub mod partition;
pub mod poller;
pub mod ring;
pub mod rx;
pub mod session;
pub mod shaper;
pub mod switch;
pub mod tx;
pub mod uplink;
pub mod vlan;

#[cfg(test)]
mod testutil;

/// Guest memory of one connection, as the vhost-user handler maps it.
pub type Mem = vm_memory::GuestMemoryMmap<()>;
