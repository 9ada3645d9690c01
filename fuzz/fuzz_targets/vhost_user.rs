//! The real vhost-user handling: one connection to a partition served as the daemon serves it
//! (`server.rs` serve_one: a fresh session, `vhost_user_backend::VhostUserDaemon` over the
//! `NetDevice`, the message pump in front), fed the input as the frontend's messages. The input
//! is split into messages by their size fields; the messages that carry descriptors in the
//! protocol get real ones (memfds sized to cover the regions they describe, eventfds, a socket),
//! so memory tables and rings can really be set up. Checks that the connection ends (a hang is
//! a libFuzzer timeout), that replies are whole messages with the REPLY flag, and that the
//! partition is reset and reusable afterwards: every execution is one more connection to the
//! same device, as a frontend reconnecting.
#![no_main]

use std::os::fd::{FromRawFd, OwnedFd};
use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr, UnixListener, UnixStream};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use backend::device::{Drive, NetDevice};
use backend::partition::{Partition, PartitionConfig, Role, State};
use backend::switch::Switch;
use libfuzzer_sys::fuzz_target;
use vhost::vhost_user::Listener;
use vhost_user_backend::{VhostUserBackend, VhostUserDaemon};
use vhost_user_sriov_net::shim;
use vhost_user_sriov_net_fuzz::{drain, init, send_all, socket_pair, vu_split, Chunk, MAX_STREAM};

const SET_MEM_TABLE: u32 = 5;
const SET_LOG_BASE: u32 = 6;
const SET_LOG_FD: u32 = 7;
const SET_VRING_KICK: u32 = 12;
const SET_VRING_CALL: u32 = 13;
const SET_VRING_ERR: u32 = 14;
const SET_BACKEND_REQ_FD: u32 = 21;
const SET_INFLIGHT_FD: u32 = 32;
const ADD_MEM_REG: u32 = 37;
const SET_DEVICE_STATE_FD: u32 = 42;
const VRING_NOFD: u64 = 0x100;
const FLAG_REPLY: u32 = 0x4;
/// Descriptors sent per execution at most (descriptors in flight count against RLIMIT_NOFILE).
const MAX_FDS: usize = 128;
/// Largest memfd made for a region; a region claiming more gets a one-page file (and is refused).
const MAX_REGION_FILE: u64 = 4 << 20;

struct Device {
    device: NetDevice,
    part: Arc<Partition>,
    internal: Mutex<Listener>,
    addr: SocketAddr,
}

fn device() -> &'static Device {
    static DEV: OnceLock<Device> = OnceLock::new();
    DEV.get_or_init(|| {
        let part = Arc::new(Partition::new(
            0,
            Role::Pf,
            PartitionConfig {
                mac: backend::mac::MacAddr([2, 0, 0, 0, 0, 1]),
                queue_pairs: 2,
                queue_size: 256,
                mtu: 1500,
            },
        ));
        let sw = Arc::new(Switch::new(vec![part.clone()]).unwrap());
        let addr = SocketAddr::from_abstract_name(format!(
            "vhost-user-sriov-net-fuzz/{}",
            std::process::id()
        ))
        .unwrap();
        let internal = Mutex::new(Listener::from(UnixListener::bind_addr(&addr).unwrap()));
        Device {
            device: NetDevice::new(
                part.clone(),
                sw,
                Drive::Event {
                    linger: Duration::ZERO,
                },
            ),
            part,
            internal,
            addr,
        }
    })
}

fn memfd(len: u64) -> OwnedFd {
    // SAFETY: a NUL-terminated name and no flags; the result is checked before use.
    let fd = unsafe { libc::memfd_create(c"fuzz-guest".as_ptr(), 0) };
    assert!(fd >= 0, "memfd_create failed");
    // SAFETY: fd is a fresh descriptor owned by nothing else.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let len = if len == 0 || len > MAX_REGION_FILE {
        4096
    } else {
        len
    };
    // SAFETY: a valid descriptor and a length.
    assert_eq!(
        unsafe { libc::ftruncate(std::os::fd::AsRawFd::as_raw_fd(&fd), len as i64) },
        0
    );
    fd
}

fn eventfd() -> OwnedFd {
    // SAFETY: no pointers; the result is checked before use.
    let fd = unsafe { libc::eventfd(0, libc::EFD_NONBLOCK) };
    assert!(fd >= 0, "eventfd failed");
    // SAFETY: fd is a fresh descriptor owned by nothing else.
    unsafe { OwnedFd::from_raw_fd(fd) }
}

fn u64_at(p: &[u8], i: usize) -> u64 {
    let mut b = [0u8; 8];
    if let Some(s) = p.get(i..i + 8) {
        b.copy_from_slice(s);
    }
    u64::from_le_bytes(b)
}

/// A memfd that covers a region (memory_size at +8, mmap_offset at +24 of the region's entry).
fn region_fd(region: &[u8]) -> OwnedFd {
    let size = u64_at(region, 8);
    let offset = u64_at(region, 24);
    memfd(offset.checked_add(size).unwrap_or(0))
}

/// The descriptors a frontend sends with `request`.
fn fds_for(request: u32, payload: &[u8]) -> Vec<OwnedFd> {
    match request {
        SET_MEM_TABLE => {
            let n = u32::from_le_bytes([
                payload.first().copied().unwrap_or(0),
                payload.get(1).copied().unwrap_or(0),
                payload.get(2).copied().unwrap_or(0),
                payload.get(3).copied().unwrap_or(0),
            ]) as usize;
            (0..n.min(8))
                .map(|i| region_fd(payload.get(8 + 32 * i..).unwrap_or(&[])))
                .collect()
        }
        ADD_MEM_REG => vec![region_fd(payload.get(8..).unwrap_or(&[]))],
        SET_VRING_KICK | SET_VRING_CALL | SET_VRING_ERR => {
            if u64_at(payload, 0) & VRING_NOFD != 0 {
                Vec::new()
            } else {
                vec![eventfd()]
            }
        }
        SET_BACKEND_REQ_FD => {
            let (a, _b) = UnixStream::pair().unwrap();
            vec![a.into()]
        }
        SET_LOG_BASE | SET_LOG_FD | SET_INFLIGHT_FD | SET_DEVICE_STATE_FD => vec![memfd(4096)],
        _ => Vec::new(),
    }
}

fuzz_target!(|data: &[u8]| {
    init();
    let d = device();
    let data = &data[..data.len().min(MAX_STREAM)];
    let (msgs, _) = vu_split(data);
    let mut fds_left = MAX_FDS;
    let mut chunks = Vec::with_capacity(msgs.len());
    let mut at = 0;
    for (req, _, payload) in &msgs {
        let len = (12 + payload.len()).min(data.len() - at);
        let mut fds = fds_for(*req, payload);
        fds.truncate(fds_left);
        fds_left -= fds.len();
        chunks.push(Chunk {
            bytes: data[at..at + len].to_vec(),
            fds,
        });
        at += len;
    }
    if at < data.len() {
        chunks.push(Chunk {
            bytes: data[at..].to_vec(),
            fds: Vec::new(),
        });
    }

    // As serve_one does for each connection.
    let session = d.device.new_session().unwrap();
    let mut daemon =
        VhostUserDaemon::new("fuzz".into(), d.device.clone(), session.mem.clone()).unwrap();
    let framework_side = UnixStream::connect_addr(&d.addr).unwrap();
    daemon.start(&mut d.internal.lock().unwrap()).unwrap();
    d.part.on_connect();
    let (frontend, front_end) = socket_pair();
    send_all(&frontend, &chunks);
    drop(chunks);
    let _ = shim::run(front_end, framework_side, d.device.num_queues());
    let _ = daemon.wait();
    session.stop_worker();
    d.part.on_disconnect();
    drop(daemon);
    // SAFETY: the daemon built with this session is gone (see `Session::close_exit_fds`).
    unsafe { session.close_exit_fds() };
    let replies = drain(&frontend);

    let (replies, partial) = vu_split(&replies);
    assert!(!partial, "a partial reply reached the frontend");
    for m in replies {
        assert_ne!(
            m.1 & FLAG_REPLY,
            0,
            "a message to the frontend that is not a reply"
        );
    }
    assert!(
        matches!(d.part.state(), State::Waiting),
        "partition not reset after the connection: {:?}",
        d.part.state()
    );
    assert!(
        d.part.session().is_none(),
        "the connection's session outlived it"
    );
});
