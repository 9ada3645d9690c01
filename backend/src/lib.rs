//! The partitioned virtio-net device model behind `vhost-user-sriov-net`: partitions (PF and VFs
//! are one type), virtio-net queue processing, the embedded switch and counters. No CLI or
//! process concerns live here.

pub mod net_hdr;
pub mod offload;
