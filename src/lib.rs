//! The daemon's process side as a library: config, the QEMU command line, the control server and
//! client, socket wiring and the vhost-user message pump. `main.rs` is only the CLI over it; the
//! fuzz targets and integration tests reach the same code through here.

pub mod config;
pub mod control;
pub mod ctl;
pub mod lifecycle;
pub mod metrics;
pub mod qemu;
pub mod qmp;
pub mod server;
pub mod shim;
pub mod uplinks;
