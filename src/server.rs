//! Wiring partitions to sockets and threads: checks and binds every socket before anything is
//! served (nothing half-started), then one acceptor thread serves them all and starts a thread
//! per connection (an idle partition has none). Each connection gets a fresh vhost-user daemon,
//! so a reconnecting frontend always meets a reset device, while the listening socket stays
//! bound (no window where the file is missing).

use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileTypeExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

use backend::device::{Drive, NetDevice};
use backend::partition::Partition;
use backend::switch::Switch;
use vhost::vhost_user::Listener;
use vhost_user_backend::{VhostUserBackend, VhostUserDaemon};
use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};

use crate::shim;

#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    #[error("socket directory {path}: {source}")]
    Dir { path: PathBuf, source: io::Error },
    #[error("{0} is in use by a live process (another daemon?)")]
    InUse(PathBuf),
    #[error("{0} exists and is not a socket; refusing to replace it")]
    NotSocket(PathBuf),
    #[error("cannot remove stale socket {path}: {source}")]
    Stale { path: PathBuf, source: io::Error },
    #[error("cannot listen on {path}: {source}")]
    Bind { path: PathBuf, source: io::Error },
    #[error("cannot set the mode or group of {path}: {source}")]
    Access { path: PathBuf, source: io::Error },
}

/// Gives a bound socket its configured mode and group.
pub fn apply_access(path: &Path, access: crate::config::Access) -> Result<(), SetupError> {
    use std::os::unix::fs::PermissionsExt;
    let err = |source| SetupError::Access {
        path: path.to_path_buf(),
        source,
    };
    if let Some(gid) = access.gid {
        std::os::unix::fs::chown(path, None, Some(gid)).map_err(err)?;
    }
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(access.mode)).map_err(err)
}

/// Makes sure `dir` exists and is writable by us.
pub fn prepare_dir(dir: &Path) -> Result<(), SetupError> {
    let err = |source| SetupError::Dir {
        path: dir.to_path_buf(),
        source,
    };
    std::fs::create_dir_all(dir).map_err(err)?;
    let probe = dir.join(format!(".probe-{}", std::process::id()));
    std::fs::write(&probe, b"").map_err(err)?;
    let _ = std::fs::remove_file(probe);
    Ok(())
}

/// A socket path may be reused only if nothing answers on it: a stale file from a dead daemon is
/// removed, a live one is an error.
pub fn claim_path(path: &Path) -> Result<(), SetupError> {
    let meta = match std::fs::symlink_metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(source) => {
            return Err(SetupError::Dir {
                path: path.to_path_buf(),
                source,
            })
        }
    };
    if !meta.file_type().is_socket() {
        return Err(SetupError::NotSocket(path.to_path_buf()));
    }
    if UnixStream::connect(path).is_ok() {
        return Err(SetupError::InUse(path.to_path_buf()));
    }
    std::fs::remove_file(path).map_err(|source| SetupError::Stale {
        path: path.to_path_buf(),
        source,
    })
}

/// Claims every path first, then binds them all; on any failure removes what it bound.
/// Sockets systemd holds (socket activation) are taken as they are; the rest are claimed, then
/// bound. Returns the listeners in `paths`' order and the paths this daemon bound itself (its
/// to remove). On any failure removes what it bound.
pub fn bind_all(
    paths: &[PathBuf],
    mut inherited: std::collections::HashMap<PathBuf, UnixListener>,
) -> Result<(Vec<UnixListener>, Vec<PathBuf>), SetupError> {
    for p in paths.iter().filter(|p| !inherited.contains_key(*p)) {
        claim_path(p)?;
    }
    let mut out = Vec::with_capacity(paths.len());
    let mut bound = Vec::new();
    for p in paths {
        if let Some(l) = inherited.remove(p) {
            out.push(l);
            continue;
        }
        match UnixListener::bind(p) {
            Ok(l) => {
                out.push(l);
                bound.push(p.clone());
            }
            Err(source) => {
                remove_all(&bound);
                return Err(SetupError::Bind {
                    path: p.clone(),
                    source,
                });
            }
        }
    }
    for p in inherited.keys() {
        log::warn!(
            "socket activation: {} is not a socket of this config; ignored",
            p.display()
        );
    }
    Ok((out, bound))
}

/// Removes socket files this daemon bound (on shutdown, or when start-up fails after binding).
pub fn remove_all(paths: &[PathBuf]) {
    for p in paths {
        let _ = std::fs::remove_file(p);
    }
}

/// Where the framework's private sockets live: `DIR/.internal`, mode 0700, so only the daemon's
/// user can reach the vhost-user handler directly (an abstract socket would let any local user
/// queue a connection the handler then takes for the frontend's).
pub fn internal_dir(socket_dir: &Path) -> PathBuf {
    socket_dir.join(".internal")
}

/// Creates [`internal_dir`] afresh, owner-only.
pub fn prepare_internal_dir(socket_dir: &Path) -> Result<PathBuf, SetupError> {
    use std::os::unix::fs::DirBuilderExt;
    let d = internal_dir(socket_dir);
    let err = |source| SetupError::Dir {
        path: d.clone(),
        source,
    };
    match std::fs::remove_dir_all(&d) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(err(e)),
    }
    std::fs::DirBuilder::new()
        .mode(0o700)
        .create(&d)
        .map_err(err)?;
    Ok(d)
}

/// What the acceptor keeps per partition. A partition has a thread only while a frontend is
/// connected: at 255 VFs, idle partitions would otherwise hold 256 parked threads.
struct Port {
    name: String,
    listener: UnixListener,
    device: NetDevice,
    /// The framework's private socket for this partition (see [`internal_dir`]); only the
    /// connection in progress uses it.
    internal: Arc<Mutex<Listener>>,
    internal_path: PathBuf,
    /// A frontend is being served: another one is refused.
    busy: Arc<AtomicBool>,
    /// The thread of the last connection; the next one waits for it to finish its teardown.
    last: Option<thread::JoinHandle<()>>,
}

/// Lets the next frontend in when the connection's thread ends, however it ends.
struct Busy(Arc<AtomicBool>);

impl Drop for Busy {
    fn drop(&mut self) {
        self.0.store(false, Ordering::Release);
    }
}

/// One thread that accepts on every partition's socket and starts a thread per connection. A
/// partition takes one frontend at a time; a second one is refused at once and logged (it would
/// otherwise wait in the backlog and take the VF over when the first one leaves). Every peer's
/// credentials are logged.
pub struct Acceptor {
    epoll: Epoll,
    ports: Vec<Port>,
}

impl Acceptor {
    pub fn new() -> io::Result<Acceptor> {
        Ok(Acceptor {
            epoll: Epoll::new()?,
            ports: Vec::new(),
        })
    }

    /// Serves `partition` on `listener` (one frontend at a time, any number in turn), with its
    /// framework socket in `internal` (see [`internal_dir`]).
    pub fn add_partition(
        &mut self,
        partition: Arc<Partition>,
        switch: Arc<Switch>,
        drive: Drive,
        listener: UnixListener,
        internal: &Path,
    ) -> io::Result<()> {
        let name = partition.name();
        listener.set_nonblocking(true)?;
        let internal_path = internal.join(format!("{name}.sock"));
        let internal = Listener::from(UnixListener::bind(&internal_path)?);
        self.epoll.ctl(
            ControlOperation::Add,
            listener.as_raw_fd(),
            EpollEvent::new(EventSet::IN, self.ports.len() as u64),
        )?;
        self.ports.push(Port {
            name,
            listener,
            device: NetDevice::new(partition, switch, drive),
            internal: Arc::new(Mutex::new(internal)),
            internal_path,
            busy: Arc::new(AtomicBool::new(false)),
            last: None,
        });
        Ok(())
    }

    pub fn spawn(self) -> io::Result<thread::JoinHandle<()>> {
        thread::Builder::new()
            .name("acceptor".into())
            .spawn(move || self.run())
    }

    fn run(mut self) {
        let mut events = vec![EpollEvent::default(); self.ports.len().max(1)];
        loop {
            let n = match self.epoll.wait(-1, &mut events) {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    log::error!("acceptor: epoll failed: {e}");
                    thread::sleep(Duration::from_millis(200));
                    continue;
                }
            };
            for ev in &events[..n] {
                if let Some(port) = self.ports.get_mut(ev.data() as usize) {
                    accept_all(port);
                }
            }
        }
    }
}

fn accept_all(port: &mut Port) {
    let name = port.name.as_str();
    loop {
        let stream = match port.listener.accept() {
            Ok((s, _)) => s,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => {
                // EMFILE and the like: logged, and the next event tries again.
                log::warn!("{name}: accept failed: {e}");
                return;
            }
        };
        let who = peer(&stream);
        if let Err(e) = stream.set_nonblocking(false) {
            log::warn!("{name}: frontend {who}: {e}; closed");
            continue;
        }
        if port.busy.swap(true, Ordering::AcqRel) {
            log::warn!("{name}: frontend {who} refused: the partition already has a frontend");
            continue;
        }
        let busy = Busy(port.busy.clone());
        let previous = port.last.take();
        let device = port.device.clone();
        let internal = port.internal.clone();
        let path = port.internal_path.clone();
        let spawned = thread::Builder::new()
            .name(format!("serve-{name}"))
            .spawn(move || {
                // The last connection may still be tearing down after letting this one in.
                if let Some(t) = previous {
                    let _ = t.join();
                }
                let mut internal = internal.lock().unwrap_or_else(|e| e.into_inner());
                if let Err(e) = serve_one(&device, stream, busy, &mut internal, &path) {
                    log::error!("{}: {e}; frontend closed", device.partition().name());
                }
            });
        match spawned {
            Ok(t) => {
                port.last = Some(t);
                log::info!("{name}: frontend {who} accepted");
            }
            // The closure, with the stream and the busy guard, is gone: the frontend is closed
            // and the partition takes the next one.
            Err(e) => log::error!("{name}: frontend {who} refused: cannot start its thread: {e}"),
        }
    }
}

/// "pid P uid U gid G" of a connected peer (SO_PEERCRED).
pub fn peer(s: &UnixStream) -> String {
    let mut cred = libc::ucred {
        pid: 0,
        uid: 0,
        gid: 0,
    };
    let mut len = std::mem::size_of::<libc::ucred>() as libc::socklen_t;
    // SAFETY: `cred` and `len` are valid for writes and sized for SO_PEERCRED.
    let r = unsafe {
        libc::getsockopt(
            s.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_PEERCRED,
            (&mut cred as *mut libc::ucred).cast(),
            &mut len,
        )
    };
    if r == 0 {
        format!("pid {} uid {} gid {}", cred.pid, cred.uid, cred.gid)
    } else {
        format!("(credentials unknown: {})", io::Error::last_os_error())
    }
}

fn serve_one(
    device: &NetDevice,
    frontend: UnixStream,
    busy: Busy,
    internal: &mut Listener,
    internal_path: &Path,
) -> Result<(), String> {
    let part = device.partition();
    let name = part.name();
    let session = device
        .new_session()
        .map_err(|e| format!("cannot create session: {e}"))?;
    // Ends the connection's worker and releases what the framework took from the session.
    let finish = |daemon: Option<VhostUserDaemon<NetDevice>>| {
        session.stop_worker();
        // Dropping the daemon joins its vring worker; only then may its exit fd be closed.
        drop(daemon);
        // SAFETY: the daemon built with this session is gone (see `Session::close_exit_fds`).
        unsafe { session.close_exit_fds() };
    };
    let mut daemon = match VhostUserDaemon::new(name.clone(), device.clone(), session.mem.clone()) {
        Ok(d) => d,
        Err(e) => {
            finish(None);
            return Err(format!("cannot create vhost-user daemon: {e}"));
        }
    };
    let framework_side = match UnixStream::connect(internal_path) {
        Ok(s) => s,
        Err(e) => {
            finish(Some(daemon));
            return Err(format!("cannot reach the internal socket: {e}"));
        }
    };
    if let Err(e) = daemon.start(internal) {
        finish(Some(daemon));
        return Err(format!("internal accept failed: {e}"));
    }
    part.on_connect();
    log::info!("{name}: frontend connected");
    // This thread pumps the connection itself until either side closes it.
    if let Err(e) = shim::run_with(
        frontend,
        framework_side,
        device.num_queues(),
        session.iommu.clone(),
        &|| {
            backend::rx::flush_parked(part, &session);
            backend::tx::kick_restored(&session);
        },
    ) {
        log::warn!("{name}: vhost-user stream error: {e}");
    }
    let result = daemon.wait();
    finish(Some(daemon));
    // The next frontend may come now (its thread waits for this one to end); `waiting` below
    // then means it will be taken.
    drop(busy);
    part.on_disconnect();
    use vhost::vhost_user::Error as Proto;
    use vhost_user_backend::Error::HandleRequest;
    match result {
        Ok(()) | Err(HandleRequest(Proto::Disconnected | Proto::PartialMessage)) => {
            log::info!("{name}: frontend disconnected; partition reset, waiting for the next")
        }
        Err(e) => {
            log::warn!("{name}: connection dropped: {e}; partition reset, waiting for the next")
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::net::UnixListener;

    fn tmp(name: &str) -> PathBuf {
        let d =
            std::env::temp_dir().join(format!("sriov-net-server-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn stale_socket_is_replaced_live_one_refused() {
        let d = tmp("claim");
        let stale = d.join("stale.sock");
        drop(UnixListener::bind(&stale).unwrap());
        assert!(stale.exists());
        claim_path(&stale).unwrap();
        assert!(!stale.exists());

        let live = d.join("live.sock");
        let _l = UnixListener::bind(&live).unwrap();
        assert!(matches!(claim_path(&live), Err(SetupError::InUse(_))));

        let file = d.join("file.sock");
        std::fs::write(&file, b"x").unwrap();
        assert!(matches!(claim_path(&file), Err(SetupError::NotSocket(_))));
    }

    #[test]
    fn bind_all_leaves_nothing_behind_on_failure() {
        let d = tmp("bindall");
        let live = d.join("b.sock");
        let _l = UnixListener::bind(&live).unwrap();
        let paths = vec![d.join("a.sock"), live.clone()];
        assert!(bind_all(&paths, Default::default()).is_err());
        assert!(!d.join("a.sock").exists(), "nothing half-started");
    }
}
