//! Opening a Linux tap: `/dev/net/tun` with `TUNSETIFF` (`IFF_TAP | IFF_NO_PI | IFF_VNET_HDR`,
//! and `IFF_MULTI_QUEUE` with one fd per queue when asked for several), a 12-byte virtio-net
//! header (`TUNSETVNETHDRSZ`) and `TUNSETOFFLOAD` with what the reader takes, on every queue.
//! The device half of a tap uplink; `tap.rs` is the switch's port.

use std::ffi::CString;
use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;

use crate::net_hdr::NET_HDR_LEN;
use crate::offload::RxOffloads;

/// Queues of one tap at most (the kernel's MAX_TAP_QUEUES).
pub const MAX_QUEUES: usize = 256;

/// An open tap.
#[derive(Debug)]
pub struct TapDev {
    /// One fd per queue: several only for a multi-queue tap.
    pub files: Vec<File>,
    /// The interface's name, as the kernel has it.
    pub ifname: String,
    /// No interface of that name existed before this open: it created the tap, which goes away
    /// when its last fd closes (it is not persistent).
    pub created: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum TapError {
    #[error("{0:?} is not an interface name")]
    Name(String),
    #[error("/dev/net/tun: {0}")]
    Tun(io::Error),
    #[error("{what}: {err}")]
    Ioctl { what: &'static str, err: io::Error },
}

impl TapError {
    /// The kernel refused `TUNSETIFF` with EINVAL: for an existing interface, it is not a tap,
    /// or a tap made in the other queue mode (single- or multi-queue).
    fn other_mode(&self) -> bool {
        matches!(self, TapError::Ioctl { what: "TUNSETIFF", err } if err.raw_os_error() == Some(libc::EINVAL))
    }
}

/// `TUNSETOFFLOAD` bits for what the switch takes from the tap (and gives it).
pub fn tun_offloads(o: RxOffloads) -> libc::c_uint {
    let mut f = 0;
    if o.csum {
        f |= libc::TUN_F_CSUM;
        if o.tso4 {
            f |= libc::TUN_F_TSO4;
        }
        if o.tso6 {
            f |= libc::TUN_F_TSO6;
        }
    }
    f
}

fn check(r: libc::c_int, what: &'static str) -> Result<(), TapError> {
    if r < 0 {
        let err = io::Error::last_os_error();
        return Err(TapError::Ioctl { what, err });
    }
    Ok(())
}

fn valid_name(name: &str) -> Result<(), TapError> {
    if name.is_empty() || name.len() >= libc::IFNAMSIZ || name.contains('\0') {
        return Err(TapError::Name(name.to_string()));
    }
    Ok(())
}

/// True when an interface `name` exists in this network namespace (of any kind).
pub fn exists(name: &str) -> bool {
    let Ok(c) = CString::new(name) else {
        return false;
    };
    // SAFETY: a NUL-terminated string; if_nametoindex only reads it.
    unsafe { libc::if_nametoindex(c.as_ptr()) != 0 }
}

/// Opens tap `name` (created if missing), non-blocking, with a 12-byte virtio-net header and
/// `offloads`, with `queues` queues (1..=[`MAX_QUEUES`]): `IFF_MULTI_QUEUE` and one fd each when
/// more than one. An existing tap keeps the mode it was made with, as the kernel requires: a
/// single-queue one is opened with its one queue, a multi-queue one as multi-queue with one.
pub fn open(name: &str, offloads: RxOffloads, queues: usize) -> Result<TapDev, TapError> {
    valid_name(name)?;
    let queues = queues.clamp(1, MAX_QUEUES);
    // Whether this open creates the tap decides what happens when it goes away (see tap.rs).
    // Another process creating or deleting one of that name in between can only make this
    // answer stale, not the open wrong.
    let created = !exists(name);
    let (files, ifname) = match open_queues(name, offloads, queues > 1, queues) {
        Err(e) if !created && e.other_mode() => {
            open_queues(name, offloads, queues == 1, 1).map_err(|_| e)?
        }
        r => r?,
    };
    Ok(TapDev {
        files,
        ifname,
        created,
    })
}

/// `n` fds on tap `name`, multi-queue or not; all or none (a tap created here goes away with
/// the fds already opened when a later one fails).
fn open_queues(
    name: &str,
    offloads: RxOffloads,
    multi: bool,
    n: usize,
) -> Result<(Vec<File>, String), TapError> {
    let mut files = Vec::with_capacity(n);
    let mut ifname = String::new();
    for _ in 0..n {
        let (f, got) = open_queue(name, offloads, multi)?;
        files.push(f);
        ifname = got;
    }
    Ok((files, ifname))
}

fn open_queue(name: &str, offloads: RxOffloads, multi: bool) -> Result<(File, String), TapError> {
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
        .open("/dev/net/tun")
        .map_err(TapError::Tun)?;
    // SAFETY: ifreq is plain data; all-zero is a valid value.
    let mut ifr: libc::ifreq = unsafe { std::mem::zeroed() };
    for (d, s) in ifr.ifr_name.iter_mut().zip(name.bytes()) {
        *d = s as libc::c_char;
    }
    let mut flags = libc::IFF_TAP | libc::IFF_NO_PI | libc::IFF_VNET_HDR;
    if multi {
        flags |= libc::IFF_MULTI_QUEUE;
    }
    ifr.ifr_ifru.ifru_flags = flags as libc::c_short;
    // SAFETY: TUNSETIFF reads and writes an ifreq, which `ifr` is.
    check(
        unsafe { libc::ioctl(file.as_raw_fd(), libc::TUNSETIFF, &mut ifr) },
        "TUNSETIFF",
    )?;
    let hdr_len = NET_HDR_LEN as libc::c_int;
    // SAFETY: TUNSETVNETHDRSZ reads one int from the pointer.
    check(
        unsafe { libc::ioctl(file.as_raw_fd(), libc::TUNSETVNETHDRSZ, &hdr_len) },
        "TUNSETVNETHDRSZ",
    )?;
    // SAFETY: TUNSETOFFLOAD takes the flags as the argument's value.
    check(
        unsafe {
            libc::ioctl(
                file.as_raw_fd(),
                libc::TUNSETOFFLOAD,
                libc::c_ulong::from(tun_offloads(offloads)),
            )
        },
        "TUNSETOFFLOAD",
    )?;
    let got: Vec<u8> = ifr
        .ifr_name
        .iter()
        .take_while(|c| **c != 0)
        .map(|c| *c as u8)
        .collect();
    Ok((file, String::from_utf8_lossy(&got).into_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_the_kernel_cannot_take_are_refused_before_any_open() {
        for bad in ["", "sixteen-chars-xx", "a\0b"] {
            let e = open(bad, RxOffloads::default(), 1).unwrap_err();
            assert!(matches!(e, TapError::Name(_)), "{bad:?}: {e}");
        }
        assert!(!exists("a\0b"));
        assert!(exists("lo"));
        assert!(!exists("no-such-if-x"));
    }

    #[test]
    fn offload_bits_need_checksum_first() {
        let all = RxOffloads {
            csum: true,
            tso4: true,
            tso6: true,
        };
        assert_eq!(
            tun_offloads(all),
            libc::TUN_F_CSUM | libc::TUN_F_TSO4 | libc::TUN_F_TSO6
        );
        let no_csum = RxOffloads { csum: false, ..all };
        assert_eq!(tun_offloads(no_csum), 0, "TSO without checksum is refused");
    }

    /// Runs `f` on a thread of its own in a new, empty network namespace (it and its taps go
    /// away with the thread), when root; otherwise says why it is skipped.
    fn in_own_netns(test: &str, f: impl FnOnce() + Send + 'static) {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            eprintln!("SKIPPED {test}: needs root (a network namespace and taps)");
            return;
        }
        std::thread::spawn(move || {
            // SAFETY: unshare(CLONE_NEWNET) only changes this thread's network namespace.
            let r = unsafe { libc::unshare(libc::CLONE_NEWNET) };
            assert_eq!(r, 0, "unshare: {}", io::Error::last_os_error());
            f()
        })
        .join()
        .unwrap();
    }

    /// The tap flags of the tap `f` is attached to (TUNGETIFF).
    fn flags(f: &File) -> libc::c_int {
        // SAFETY: ifreq is plain data; TUNGETIFF fills one.
        let mut ifr: libc::ifreq = unsafe { std::mem::zeroed() };
        // SAFETY: as above.
        let r = unsafe { libc::ioctl(f.as_raw_fd(), libc::TUNGETIFF, &mut ifr) };
        assert_eq!(r, 0, "TUNGETIFF: {}", io::Error::last_os_error());
        // SAFETY: TUNGETIFF set the flags member.
        libc::c_int::from(unsafe { ifr.ifr_ifru.ifru_flags })
    }

    /// A persistent tap `name` made as `ip tuntap add` makes one (then closed).
    fn persistent(name: &str, multi: bool) {
        let (f, _) = open_queue(name, RxOffloads::default(), multi).unwrap();
        // SAFETY: TUNSETPERSIST takes its flag as the argument's value.
        let r = unsafe { libc::ioctl(f.as_raw_fd(), libc::TUNSETPERSIST, 1 as libc::c_ulong) };
        assert_eq!(r, 0, "TUNSETPERSIST: {}", io::Error::last_os_error());
    }

    #[test]
    fn several_queues_are_one_multi_queue_tap_with_an_fd_each() {
        in_own_netns("several_queues_are_one_multi_queue_tap", || {
            let d = open("mq0", RxOffloads::default(), 3).unwrap();
            assert_eq!(
                (d.files.len(), d.ifname.as_str(), d.created),
                (3, "mq0", true)
            );
            let want = libc::IFF_TAP | libc::IFF_NO_PI | libc::IFF_VNET_HDR | libc::IFF_MULTI_QUEUE;
            for f in &d.files {
                assert_eq!(flags(f) & want, want, "{:#x}", flags(f));
            }
            let one = open("sq0", RxOffloads::default(), 1).unwrap();
            assert_eq!(one.files.len(), 1);
            assert_eq!(flags(&one.files[0]) & libc::IFF_MULTI_QUEUE, 0);
            drop(d);
            assert!(!exists("mq0"), "a tap made here goes with its fds");
        });
    }

    #[test]
    fn an_existing_tap_is_opened_in_the_mode_it_was_made_with() {
        in_own_netns(
            "an_existing_tap_is_opened_in_the_mode_it_was_made_with",
            || {
                persistent("single0", false);
                let d = open("single0", RxOffloads::default(), 2).unwrap();
                assert_eq!((d.files.len(), d.created), (1, false));
                assert_eq!(flags(&d.files[0]) & libc::IFF_MULTI_QUEUE, 0);
                persistent("multi0", true);
                let d = open("multi0", RxOffloads::default(), 1).unwrap();
                assert_eq!((d.files.len(), d.created), (1, false));
                assert_ne!(flags(&d.files[0]) & libc::IFF_MULTI_QUEUE, 0);
                // Not a tap at all: the first refusal is what is reported.
                let e = open("lo", RxOffloads::default(), 2).unwrap_err();
                assert!(e.other_mode(), "{e}");
            },
        );
    }
}
