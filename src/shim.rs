//! A vhost-user message pump between a frontend and the vhost-user-backend framework.
//!
//! Why it exists: QEMU sends SET_VRING_ENABLE while it creates the device (virtio-net's
//! queue-pair attach), before any SET_FEATURES, whenever the backend offers PROTOCOL_FEATURES.
//! The vhost 0.18 dispatcher refuses that message until PROTOCOL_FEATURES has been acked and
//! drops the connection, so QEMU could never start against it. The pump forwards every message
//! (with its file descriptors) unchanged, except such an early SET_VRING_ENABLE: it acks that one
//! itself and replays the last requested state per ring right after the first SET_FEATURES.
//!
//! Every frontend is treated as hostile: what the pump keeps per connection is bounded (one
//! message, one early state per ring), a write to the frontend that cannot finish within
//! [`IO_TIMEOUT`] ends the connection (a peer that stops reading never blocks a thread for
//! good), so does a message that stalls half-sent, and when either direction ends both sockets
//! are shut down so that no thread is left blocked on the other.

use std::collections::BTreeMap;
use std::io::{self, Read, Write};
use std::net::Shutdown;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

use vmm_sys_util::sock_ctrl_msg::ScmSocket;

const HDR_LEN: usize = 12;
/// Larger than any message this device accepts (SET_MEM_TABLE with 8 regions is 264 bytes).
const MAX_PAYLOAD: usize = 4096;
const MAX_FDS: usize = 32;
/// How long a frontend may take to accept a reply or to finish a message it started. QEMU and
/// DPDK answer within milliseconds; a peer this slow is stalled or hostile.
pub const IO_TIMEOUT: Duration = Duration::from_secs(5);

const SET_FEATURES: u32 = 2;
const SET_VRING_ENABLE: u32 = 18;
const FLAG_VERSION_1: u32 = 0x1;
const FLAG_REPLY: u32 = 0x4;
const FLAG_NEED_REPLY: u32 = 0x8;

/// One vhost-user message with the descriptors that came with it.
struct Msg {
    request: u32,
    flags: u32,
    payload: Vec<u8>,
    fds: Vec<OwnedFd>,
}

impl Msg {
    fn new(request: u32, flags: u32, payload: Vec<u8>) -> Msg {
        Msg {
            request,
            flags,
            payload,
            fds: Vec::new(),
        }
    }

    fn header(&self) -> [u8; HDR_LEN] {
        let mut h = [0u8; HDR_LEN];
        h[0..4].copy_from_slice(&self.request.to_le_bytes());
        h[4..8].copy_from_slice(&self.flags.to_le_bytes());
        h[8..12].copy_from_slice(&(self.payload.len() as u32).to_le_bytes());
        h
    }
}

/// True for the error a socket timeout (SO_RCVTIMEO / SO_SNDTIMEO) gives.
fn timed_out(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
    )
}

/// Reads one message; `Ok(None)` on a clean end of stream between messages. With a read
/// timeout on `s`, waiting between messages goes on for ever, but a message that has begun must
/// be complete within the timeout.
fn read_msg(s: &UnixStream) -> io::Result<Option<Msg>> {
    let mut hdr = [0u8; HDR_LEN];
    let mut raw_fds = [-1 as RawFd; MAX_FDS];
    let (got, fds) = loop {
        let mut iov = [libc::iovec {
            iov_base: hdr.as_mut_ptr().cast(),
            iov_len: HDR_LEN,
        }];
        // SAFETY: the iovec points at `hdr`, which outlives the call and is HDR_LEN bytes long.
        match unsafe { s.recv_with_fds(&mut iov, &mut raw_fds) }.map_err(io::Error::from) {
            Ok((got, nfds)) => {
                // SAFETY: recvmsg handed us these `nfds` descriptors; nothing else owns them.
                let fds: Vec<OwnedFd> = raw_fds[..nfds]
                    .iter()
                    .map(|fd| unsafe { OwnedFd::from_raw_fd(*fd) })
                    .collect();
                break (got, fds);
            }
            Err(e) if timed_out(&e) => continue,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
    };
    if got == 0 {
        return Ok(None);
    }
    let mut r = s;
    r.read_exact(&mut hdr[got..]).map_err(stalled)?;
    let word = |i: usize| u32::from_le_bytes([hdr[i], hdr[i + 1], hdr[i + 2], hdr[i + 3]]);
    let size = word(8) as usize;
    if size > MAX_PAYLOAD {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("message {} claims {size} payload bytes", word(0)),
        ));
    }
    let mut payload = vec![0u8; size];
    r.read_exact(&mut payload).map_err(stalled)?;
    Ok(Some(Msg {
        request: word(0),
        flags: word(4),
        payload,
        fds,
    }))
}

/// Names a timeout for what it is: a peer that stopped mid-message or stopped reading.
fn stalled(e: io::Error) -> io::Error {
    if timed_out(&e) {
        io::Error::new(
            io::ErrorKind::TimedOut,
            format!("peer stalled for more than {IO_TIMEOUT:?}"),
        )
    } else {
        e
    }
}

fn write_msg(s: &UnixStream, m: &Msg) -> io::Result<()> {
    let hdr = m.header();
    let fds: Vec<RawFd> = m.fds.iter().map(|f| f.as_raw_fd()).collect();
    let bufs: [&[u8]; 2] = [&hdr, &m.payload];
    let total = HDR_LEN + m.payload.len();
    let sent = s
        .send_with_fds(&bufs, &fds)
        .map_err(|e| stalled(io::Error::from(e)))?;
    if sent < total {
        // The descriptors went with the first bytes; the rest is plain data.
        let mut rest = Vec::with_capacity(total);
        rest.extend_from_slice(&hdr);
        rest.extend_from_slice(&m.payload);
        let mut w = s;
        w.write_all(&rest[sent..]).map_err(stalled)?;
    }
    Ok(())
}

/// Pumps messages between `frontend` and `framework` until either side closes, fails or stalls.
/// `num_queues` is the device's ring count: an early SET_VRING_ENABLE for any other ring is a
/// protocol error, so the state kept for them stays bounded.
pub fn run(frontend: UnixStream, framework: UnixStream, num_queues: usize) -> io::Result<()> {
    for s in [&frontend, &framework] {
        s.set_read_timeout(Some(IO_TIMEOUT))?;
        s.set_write_timeout(Some(IO_TIMEOUT))?;
    }
    let to_frontend = Arc::new(Mutex::new(frontend.try_clone()?));
    let down = {
        let framework = framework.try_clone()?;
        let to_frontend = to_frontend.clone();
        let frontend = frontend.try_clone()?;
        thread::Builder::new()
            .name("vhost-user-pump".into())
            .spawn(move || {
                let result = pump_down(&framework, &to_frontend);
                close_both(&frontend, &framework);
                result
            })?
    };
    let up = pump_up(&frontend, &framework, &to_frontend, num_queues);
    close_both(&frontend, &framework);
    let down = down
        .join()
        .unwrap_or_else(|_| Err(io::Error::other("pump thread panicked")));
    // Report the cause, not the broken pipe the other direction saw after the shutdown.
    let after_shutdown = |r: &io::Result<()>| {
        r.as_ref().is_err_and(|e| {
            matches!(
                e.kind(),
                io::ErrorKind::BrokenPipe | io::ErrorKind::ConnectionReset
            )
        })
    };
    match (up, down) {
        (Ok(()), r) | (r, Ok(())) => r,
        (up, down) if after_shutdown(&up) && !after_shutdown(&down) => down,
        (up, _) => up,
    }
}

/// Ends both directions of both sockets: every thread blocked on either wakes up.
fn close_both(frontend: &UnixStream, framework: &UnixStream) {
    let _ = frontend.shutdown(Shutdown::Both);
    let _ = framework.shutdown(Shutdown::Both);
}

/// Replies from the framework to the frontend.
fn pump_down(framework: &UnixStream, to_frontend: &Mutex<UnixStream>) -> io::Result<()> {
    while let Some(m) = read_msg(framework)? {
        let out = to_frontend.lock().unwrap_or_else(|e| e.into_inner());
        write_msg(&out, &m)?;
    }
    Ok(())
}

fn pump_up(
    frontend: &UnixStream,
    framework: &UnixStream,
    to_frontend: &Mutex<UnixStream>,
    num_queues: usize,
) -> io::Result<()> {
    let mut features_seen = false;
    let mut early_enable: BTreeMap<u32, u32> = BTreeMap::new();
    while let Some(m) = read_msg(frontend)? {
        if m.request == SET_VRING_ENABLE && !features_seen {
            if m.payload.len() == 8 {
                let index =
                    u32::from_le_bytes([m.payload[0], m.payload[1], m.payload[2], m.payload[3]]);
                let num =
                    u32::from_le_bytes([m.payload[4], m.payload[5], m.payload[6], m.payload[7]]);
                if index as usize >= num_queues {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        format!("SET_VRING_ENABLE for ring {index}; the device has {num_queues}"),
                    ));
                }
                early_enable.insert(index, num);
            }
            if m.flags & FLAG_NEED_REPLY != 0 {
                let ack = Msg::new(
                    SET_VRING_ENABLE,
                    FLAG_VERSION_1 | FLAG_REPLY,
                    0u64.to_le_bytes().to_vec(),
                );
                write_msg(&to_frontend.lock().unwrap_or_else(|e| e.into_inner()), &ack)?;
            }
            continue;
        }
        write_msg(framework, &m)?;
        if m.request == SET_FEATURES && !features_seen {
            features_seen = true;
            // No NEED_REPLY: the framework answers nothing, so no reply reaches the frontend.
            for (index, num) in std::mem::take(&mut early_enable) {
                let mut p = index.to_le_bytes().to_vec();
                p.extend_from_slice(&num.to_le_bytes());
                write_msg(framework, &Msg::new(SET_VRING_ENABLE, FLAG_VERSION_1, p))?;
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg_bytes(request: u32, flags: u32, payload: &[u8]) -> Vec<u8> {
        let mut v = Msg::new(request, flags, payload.to_vec()).header().to_vec();
        v.extend_from_slice(payload);
        v
    }

    fn read_all(s: &UnixStream) -> Vec<(u32, u32, Vec<u8>)> {
        let mut out = Vec::new();
        while let Ok(Some(m)) = read_msg(s) {
            out.push((m.request, m.flags, m.payload));
        }
        out
    }

    #[test]
    fn early_vring_enable_is_acked_and_replayed_after_set_features() {
        let (qemu, front_end) = UnixStream::pair().unwrap();
        let (back_end, fw) = UnixStream::pair().unwrap();
        let pump = thread::spawn(move || run(front_end, back_end, 4));
        let mut q = &qemu;
        let enable = |i: u32, n: u32| [i.to_le_bytes(), n.to_le_bytes()].concat();
        q.write_all(&msg_bytes(1, FLAG_VERSION_1, &[])).unwrap(); // GET_FEATURES
        q.write_all(&msg_bytes(
            SET_VRING_ENABLE,
            FLAG_VERSION_1 | FLAG_NEED_REPLY,
            &enable(0, 1),
        ))
        .unwrap();
        q.write_all(&msg_bytes(SET_VRING_ENABLE, FLAG_VERSION_1, &enable(1, 0)))
            .unwrap();
        q.write_all(&msg_bytes(SET_VRING_ENABLE, FLAG_VERSION_1, &enable(1, 1)))
            .unwrap();
        // The ack for the early enable comes straight back.
        let ack = read_msg(&qemu).unwrap().unwrap();
        assert_eq!(
            (ack.request, ack.flags, ack.payload),
            (SET_VRING_ENABLE, 5, vec![0; 8])
        );
        q.write_all(&msg_bytes(
            SET_FEATURES,
            FLAG_VERSION_1,
            &[1, 2, 3, 4, 5, 6, 7, 8],
        ))
        .unwrap();
        q.write_all(&msg_bytes(SET_VRING_ENABLE, FLAG_VERSION_1, &enable(0, 0)))
            .unwrap();
        qemu.shutdown(Shutdown::Write).unwrap();
        let seen = read_all(&fw);
        let reqs: Vec<(u32, Vec<u8>)> = seen.iter().map(|(r, _, p)| (*r, p.clone())).collect();
        assert_eq!(
            reqs,
            vec![
                (1, vec![]),
                (SET_FEATURES, vec![1, 2, 3, 4, 5, 6, 7, 8]),
                (SET_VRING_ENABLE, enable(0, 1)),
                (SET_VRING_ENABLE, enable(1, 1)),
                (SET_VRING_ENABLE, enable(0, 0)),
            ]
        );
        drop(fw);
        pump.join().unwrap().unwrap();
    }

    #[test]
    fn descriptors_travel_with_their_message_both_ways() {
        let (qemu, front_end) = UnixStream::pair().unwrap();
        let (back_end, fw) = UnixStream::pair().unwrap();
        let pump = thread::spawn(move || run(front_end, back_end, 4));
        let f = std::fs::File::open("/proc/self/exe").unwrap();
        let hdr = Msg::new(5, FLAG_VERSION_1, vec![9; 16]).header();
        qemu.send_with_fds(&[&hdr[..], &[9u8; 16][..]], &[f.as_raw_fd()])
            .unwrap();
        let m = read_msg(&fw).unwrap().unwrap();
        assert_eq!((m.request, m.payload.len(), m.fds.len()), (5, 16, 1));
        // A reply from the framework reaches the frontend.
        write_msg(&fw, &Msg::new(5, FLAG_VERSION_1 | FLAG_REPLY, vec![7; 8])).unwrap();
        let r = read_msg(&qemu).unwrap().unwrap();
        assert_eq!(r.payload, vec![7; 8]);
        // The framework closing ends the pump and the frontend sees end of stream.
        drop(fw);
        assert!(read_msg(&qemu).unwrap().is_none());
        pump.join().unwrap().unwrap();
    }

    #[test]
    fn oversized_payload_is_an_error_not_an_allocation() {
        let (qemu, front_end) = UnixStream::pair().unwrap();
        let (back_end, _fw) = UnixStream::pair().unwrap();
        let pump = thread::spawn(move || run(front_end, back_end, 4));
        let mut h = Msg::new(1, FLAG_VERSION_1, vec![]).header();
        h[8..12].copy_from_slice(&u32::MAX.to_le_bytes());
        (&qemu).write_all(&h).unwrap();
        assert!(pump.join().unwrap().is_err());
    }
}
