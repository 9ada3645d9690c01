//! Network namespaces for uplink tests (created here, deleted on drop), and what runs inside
//! them: raw ICMP echo ("ping" without iputils), AF_PACKET sockets with a virtio-net header,
//! ARP and ICMP answers for a partition driven by the test driver.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// True when the tests that need root (namespaces, taps) can run; prints why not otherwise.
pub fn root_or_skip(test: &str) -> bool {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("SKIPPED {test}: needs root (network namespaces and taps); CI runs it as root");
        return false;
    }
    true
}

pub struct NetNs {
    pub name: String,
}

impl NetNs {
    pub fn new(tag: &str) -> NetNs {
        static N: AtomicUsize = AtomicUsize::new(0);
        let name = format!(
            "svit-{}-{}-{tag}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        );
        let ok = Command::new("ip")
            .args(["netns", "add", &name])
            .status()
            .unwrap()
            .success();
        assert!(ok, "ip netns add {name}");
        let ns = NetNs { name };
        ns.ip(&["link", "set", "lo", "up"]);
        ns
    }

    /// `ip -n NS ARGS`, which must succeed.
    pub fn ip(&self, args: &[&str]) -> String {
        let out = Command::new("ip")
            .arg("-n")
            .arg(&self.name)
            .args(args)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "ip -n {} {args:?}: {}",
            self.name,
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// A command run inside the namespace (`ip netns exec NS PROGRAM`).
    pub fn command(&self, program: &str) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.name, program]);
        c
    }

    /// Runs `f` on a thread that entered the namespace; sockets it opens stay in it.
    pub fn run<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> T {
        self.spawn(f).join().unwrap()
    }

    pub fn spawn<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> std::thread::JoinHandle<T> {
        let path = format!("/var/run/netns/{}", self.name);
        std::thread::spawn(move || {
            let ns = std::fs::File::open(&path).unwrap();
            // SAFETY: a namespace fd; only this thread's network namespace changes.
            let r = unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) };
            assert_eq!(r, 0, "setns: {}", std::io::Error::last_os_error());
            f()
        })
    }

    /// The MAC address of `dev` in the namespace.
    pub fn mac(&self, dev: &str) -> [u8; 6] {
        let out = self.ip(&["-o", "link", "show", dev]);
        let at = out.find("link/ether ").expect("an Ethernet device") + 11;
        super::parse_mac(&out[at..at + 17])
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

/// Internet checksum of `data`.
pub fn inet_csum(data: &[u8]) -> u16 {
    super::csum(0, data)
}

/// Sends an ICMP echo request to `dst` from inside a namespace thread and waits for its reply
/// (a raw socket: no ping binary needed). Returns the reply's payload.
pub fn ping(dst: [u8; 4], id: u16, seq: u16, payload: &[u8]) -> Option<Vec<u8>> {
    // SAFETY: plain socket(2); the fd is owned below.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_RAW, libc::IPPROTO_ICMP) };
    assert!(fd >= 0, "raw socket: {}", std::io::Error::last_os_error());
    // SAFETY: a fresh fd we own.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    set_timeout(&fd, Duration::from_millis(200));
    let mut icmp = vec![8u8, 0, 0, 0];
    icmp.extend_from_slice(&id.to_be_bytes());
    icmp.extend_from_slice(&seq.to_be_bytes());
    icmp.extend_from_slice(payload);
    let c = inet_csum(&icmp);
    icmp[2..4].copy_from_slice(&c.to_be_bytes());
    let to = libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: 0,
        sin_addr: libc::in_addr {
            s_addr: u32::from_ne_bytes(dst),
        },
        sin_zero: [0; 8],
    };
    // SAFETY: valid buffer and address of the sizes given.
    let n = unsafe {
        libc::sendto(
            fd.as_raw_fd(),
            icmp.as_ptr().cast(),
            icmp.len(),
            0,
            (&to as *const libc::sockaddr_in).cast(),
            std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
        )
    };
    assert_eq!(
        n,
        icmp.len() as isize,
        "{}",
        std::io::Error::last_os_error()
    );
    let t = Instant::now();
    let mut buf = [0u8; 2048];
    while t.elapsed() < Duration::from_secs(2) {
        // SAFETY: valid buffer of the size given.
        let n = unsafe { libc::recv(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
        if n <= 0 {
            continue;
        }
        let p = &buf[..n as usize];
        let ihl = usize::from(p[0] & 0xf) * 4;
        let m = &p[ihl..];
        if p[12..16] == dst
            && m[0] == 0
            && m[4..6] == id.to_be_bytes()
            && m[6..8] == seq.to_be_bytes()
        {
            return Some(m[8..].to_vec());
        }
    }
    None
}

fn set_timeout(fd: &OwnedFd, d: Duration) {
    let tv = libc::timeval {
        tv_sec: d.as_secs() as libc::time_t,
        tv_usec: d.subsec_micros() as libc::suseconds_t,
    };
    // SAFETY: a timeval of the size given.
    unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVTIMEO,
            (&tv as *const libc::timeval).cast(),
            std::mem::size_of::<libc::timeval>() as libc::socklen_t,
        );
    }
}

/// `struct virtio_net_hdr` as AF_PACKET carries it (10 bytes, no num_buffers).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PktHdr {
    pub flags: u8,
    pub gso_type: u8,
    pub hdr_len: u16,
    pub gso_size: u16,
    pub csum_start: u16,
    pub csum_offset: u16,
}

impl PktHdr {
    fn bytes(&self) -> [u8; 10] {
        let mut b = [0u8; 10];
        b[0] = self.flags;
        b[1] = self.gso_type;
        b[2..4].copy_from_slice(&self.hdr_len.to_le_bytes());
        b[4..6].copy_from_slice(&self.gso_size.to_le_bytes());
        b[6..8].copy_from_slice(&self.csum_start.to_le_bytes());
        b[8..10].copy_from_slice(&self.csum_offset.to_le_bytes());
        b
    }

    fn parse(b: &[u8]) -> PktHdr {
        let u = |i: usize| u16::from_le_bytes([b[i], b[i + 1]]);
        PktHdr {
            flags: b[0],
            gso_type: b[1],
            hdr_len: u(2),
            gso_size: u(4),
            csum_start: u(6),
            csum_offset: u(8),
        }
    }
}

/// An AF_PACKET socket on one interface with PACKET_VNET_HDR: sees and sends frames with their
/// offload metadata, as the tap's own stack handles them.
pub struct PacketSock(OwnedFd);

impl PacketSock {
    /// Opens on `dev`; call from a namespace thread ([`NetNs::run`]).
    pub fn open(dev: &str) -> PacketSock {
        let proto = (libc::ETH_P_ALL as u16).to_be();
        // SAFETY: plain socket(2); the fd is owned below.
        let fd = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW, libc::c_int::from(proto)) };
        assert!(
            fd >= 0,
            "packet socket: {}",
            std::io::Error::last_os_error()
        );
        // SAFETY: a fresh fd we own.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        let one: libc::c_int = 1;
        // SAFETY: an int option of the size given.
        let r = unsafe {
            libc::setsockopt(
                fd.as_raw_fd(),
                libc::SOL_PACKET,
                15, // PACKET_VNET_HDR
                (&one as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        assert_eq!(r, 0, "PACKET_VNET_HDR: {}", std::io::Error::last_os_error());
        let name = std::ffi::CString::new(dev).unwrap();
        // SAFETY: a NUL-terminated name.
        let ifindex = unsafe { libc::if_nametoindex(name.as_ptr()) };
        assert!(ifindex > 0, "no interface {dev}");
        // SAFETY: sockaddr_ll is plain data.
        let mut sll: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        sll.sll_family = libc::AF_PACKET as u16;
        sll.sll_protocol = proto;
        sll.sll_ifindex = ifindex as i32;
        // SAFETY: a sockaddr_ll of the size given.
        let r = unsafe {
            libc::bind(
                fd.as_raw_fd(),
                (&sll as *const libc::sockaddr_ll).cast(),
                std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t,
            )
        };
        assert_eq!(r, 0, "bind: {}", std::io::Error::last_os_error());
        set_timeout(&fd, Duration::from_millis(200));
        PacketSock(fd)
    }

    /// Joins fanout group `group` in mode PACKET_FANOUT_QM: each frame goes to one socket of
    /// the group, chosen by the device queue it came in on (queue mapping modulo the sockets).
    pub fn fanout_by_queue(&self, group: u16) {
        const PACKET_FANOUT: libc::c_int = 18;
        const PACKET_FANOUT_QM: libc::c_int = 5;
        let arg: libc::c_int = libc::c_int::from(group) | PACKET_FANOUT_QM << 16;
        // SAFETY: an int option of the size given.
        let r = unsafe {
            libc::setsockopt(
                self.0.as_raw_fd(),
                libc::SOL_PACKET,
                PACKET_FANOUT,
                (&arg as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        assert_eq!(r, 0, "PACKET_FANOUT: {}", std::io::Error::last_os_error());
    }

    /// Every frame `keep` accepts that arrives within `wait`.
    pub fn drain_where(&self, keep: impl Fn(&[u8]) -> bool, wait: Duration) -> Vec<Vec<u8>> {
        let mut buf = vec![0u8; 70_000];
        let mut out = Vec::new();
        let t = Instant::now();
        while t.elapsed() < wait {
            // SAFETY: a valid buffer of the size given.
            let n = unsafe {
                libc::recv(
                    self.0.as_raw_fd(),
                    buf.as_mut_ptr().cast(),
                    buf.len(),
                    libc::MSG_DONTWAIT,
                )
            };
            if n < 10 {
                std::thread::sleep(Duration::from_millis(5));
                continue;
            }
            let f = &buf[10..n as usize];
            if keep(f) {
                out.push(f.to_vec());
            }
        }
        out
    }

    pub fn send(&self, hdr: PktHdr, frame: &[u8]) {
        let mut b = hdr.bytes().to_vec();
        b.extend_from_slice(frame);
        // SAFETY: a valid buffer of the size given.
        let n = unsafe { libc::send(self.0.as_raw_fd(), b.as_ptr().cast(), b.len(), 0) };
        assert_eq!(n, b.len() as isize, "{}", std::io::Error::last_os_error());
    }

    /// The next frame `keep` accepts (within 5 s), with its header.
    pub fn recv_where(&self, keep: impl Fn(&[u8]) -> bool) -> (PktHdr, Vec<u8>) {
        let mut buf = vec![0u8; 70_000];
        let t = Instant::now();
        loop {
            assert!(
                t.elapsed() < Duration::from_secs(5),
                "no frame on the packet socket"
            );
            // SAFETY: a valid buffer of the size given.
            let n =
                unsafe { libc::recv(self.0.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
            if n < 10 {
                continue;
            }
            let f = &buf[10..n as usize];
            if keep(f) {
                return (PktHdr::parse(&buf[..10]), f.to_vec());
            }
        }
    }
}

/// A host on the partition's side, answering ARP and ICMP echo for its address: what a guest's
/// stack would do, for frames the test driver receives.
pub struct Responder {
    pub mac: [u8; 6],
    pub ip: [u8; 4],
}

impl Responder {
    /// The answer to `frame`, if it is an ARP request for us or an echo request to us.
    pub fn answer(&self, f: &[u8]) -> Option<Vec<u8>> {
        if f.len() < 42 {
            return None;
        }
        let et = u16::from_be_bytes([f[12], f[13]]);
        if et == 0x0806 && f[20..22] == [0, 1] && f[38..42] == self.ip {
            let mut r = f[6..12].to_vec();
            r.extend_from_slice(&self.mac);
            r.extend_from_slice(&[0x08, 0x06, 0, 1, 8, 0, 6, 4, 0, 2]);
            r.extend_from_slice(&self.mac);
            r.extend_from_slice(&self.ip);
            r.extend_from_slice(&f[22..32]); // the asker's MAC and IP
            return Some(r);
        }
        let ihl = usize::from(f[14] & 0xf) * 4;
        if et == 0x0800 && f[23] == 1 && f[30..34] == self.ip && f.get(14 + ihl) == Some(&8) {
            let total = usize::from(u16::from_be_bytes([f[16], f[17]]));
            let mut r = f[..14 + total].to_vec();
            r[..6].copy_from_slice(&f[6..12]);
            r[6..12].copy_from_slice(&self.mac);
            r[26..30].copy_from_slice(&f[30..34]);
            r[30..34].copy_from_slice(&f[26..30]);
            r[24..26].copy_from_slice(&[0, 0]);
            let c = inet_csum(&r[14..14 + ihl]);
            r[24..26].copy_from_slice(&c.to_be_bytes());
            let icmp = 14 + ihl;
            r[icmp] = 0;
            r[icmp + 2..icmp + 4].copy_from_slice(&[0, 0]);
            let c = inet_csum(&r[icmp..]);
            r[icmp + 2..icmp + 4].copy_from_slice(&c.to_be_bytes());
            return Some(r);
        }
        None
    }

    /// An ARP request for `ip`.
    pub fn arp_request(&self, ip: [u8; 4]) -> Vec<u8> {
        let mut r = vec![0xff; 6];
        r.extend_from_slice(&self.mac);
        r.extend_from_slice(&[0x08, 0x06, 0, 1, 8, 0, 6, 4, 0, 1]);
        r.extend_from_slice(&self.mac);
        r.extend_from_slice(&self.ip);
        r.extend_from_slice(&[0; 6]);
        r.extend_from_slice(&ip);
        r
    }

    /// An ICMP echo request to (`mac`, `ip`).
    pub fn echo_request(
        &self,
        mac: [u8; 6],
        ip: [u8; 4],
        id: u16,
        seq: u16,
        payload: &[u8],
    ) -> Vec<u8> {
        let mut icmp = vec![8u8, 0, 0, 0];
        icmp.extend_from_slice(&id.to_be_bytes());
        icmp.extend_from_slice(&seq.to_be_bytes());
        icmp.extend_from_slice(payload);
        let c = inet_csum(&icmp);
        icmp[2..4].copy_from_slice(&c.to_be_bytes());
        let mut iph = vec![0x45, 0, 0, 0, 0, 1, 0x40, 0, 64, 1, 0, 0];
        iph[2..4].copy_from_slice(&((20 + icmp.len()) as u16).to_be_bytes());
        iph.extend_from_slice(&self.ip);
        iph.extend_from_slice(&ip);
        let c = inet_csum(&iph);
        iph[10..12].copy_from_slice(&c.to_be_bytes());
        iph.extend(icmp);
        super::eth(mac, self.mac, 0x0800, &iph)
    }
}
