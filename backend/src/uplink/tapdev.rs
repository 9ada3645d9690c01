//! Opening a Linux tap: `/dev/net/tun` with `TUNSETIFF` (`IFF_TAP | IFF_NO_PI | IFF_VNET_HDR`),
//! a 12-byte virtio-net header (`TUNSETVNETHDRSZ`) and `TUNSETOFFLOAD` with what the reader
//! takes. The device half of a tap uplink; `tap.rs` is the switch's port.

use std::ffi::CString;
use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;

use crate::net_hdr::NET_HDR_LEN;
use crate::offload::RxOffloads;

/// An open tap.
#[derive(Debug)]
pub struct TapDev {
    pub file: File,
    /// The interface's name, as the kernel has it.
    pub ifname: String,
    /// No interface of that name existed before this open: it created the tap, which goes away
    /// when its last fd closes (it is not persistent).
    pub created: bool,
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

fn check(r: libc::c_int, what: &str) -> io::Result<()> {
    if r < 0 {
        let e = io::Error::last_os_error();
        return Err(io::Error::new(e.kind(), format!("{what}: {e}")));
    }
    Ok(())
}

fn valid_name(name: &str) -> io::Result<()> {
    if name.is_empty() || name.len() >= libc::IFNAMSIZ || name.contains('\0') {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{name:?} is not an interface name"),
        ));
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
/// `offloads`.
pub fn open(name: &str, offloads: RxOffloads) -> io::Result<TapDev> {
    valid_name(name)?;
    // Whether this open creates the tap decides what happens when it goes away (see tap.rs).
    // Another process creating or deleting one of that name in between can only make this
    // answer stale, not the open wrong.
    let created = !exists(name);
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
        .open("/dev/net/tun")
        .map_err(|e| io::Error::new(e.kind(), format!("/dev/net/tun: {e}")))?;
    // SAFETY: ifreq is plain data; all-zero is a valid value.
    let mut ifr: libc::ifreq = unsafe { std::mem::zeroed() };
    for (d, s) in ifr.ifr_name.iter_mut().zip(name.bytes()) {
        *d = s as libc::c_char;
    }
    ifr.ifr_ifru.ifru_flags =
        (libc::IFF_TAP | libc::IFF_NO_PI | libc::IFF_VNET_HDR) as libc::c_short;
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
    Ok(TapDev {
        file,
        ifname: String::from_utf8_lossy(&got).into_owned(),
        created,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_the_kernel_cannot_take_are_refused_before_any_open() {
        for bad in ["", "sixteen-chars-xx", "a\0b"] {
            let e = open(bad, RxOffloads::default()).unwrap_err();
            assert_eq!(e.kind(), io::ErrorKind::InvalidInput, "{bad:?}");
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
}
