//! Wiring partitions to sockets and threads: checks and binds every socket before anything is
//! served (nothing half-started), then runs one serve loop per partition. Each loop builds a
//! fresh vhost-user daemon per connection, so a reconnecting frontend always meets a reset
//! device, while the listening socket stays bound (no window where the file is missing).

use std::io;
use std::os::linux::net::SocketAddrExt;
use std::os::unix::fs::FileTypeExt;
use std::os::unix::net::{SocketAddr, UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::Duration;

use backend::device::NetDevice;
use backend::partition::Partition;
use backend::poller::Poller;
use backend::switch::Switch;
use vhost::vhost_user::Listener;
use vhost_user_backend::{VhostUserBackend, VhostUserDaemon};

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
pub fn bind_all(paths: &[PathBuf]) -> Result<Vec<UnixListener>, SetupError> {
    for p in paths {
        claim_path(p)?;
    }
    let mut out = Vec::with_capacity(paths.len());
    for p in paths {
        match UnixListener::bind(p) {
            Ok(l) => out.push(l),
            Err(source) => {
                remove_all(&paths[..out.len()]);
                return Err(SetupError::Bind {
                    path: p.clone(),
                    source,
                });
            }
        }
    }
    Ok(out)
}

/// Removes socket files this daemon bound (on shutdown, or when start-up fails after binding).
pub fn remove_all(paths: &[PathBuf]) {
    for p in paths {
        let _ = std::fs::remove_file(p);
    }
}

/// Serves one partition on `listener` forever: one frontend at a time, any number in turn.
pub fn spawn_partition(
    partition: Arc<Partition>,
    switch: Arc<Switch>,
    poller: Option<Arc<Poller>>,
    listener: UnixListener,
) -> io::Result<thread::JoinHandle<()>> {
    let listener = Listener::from(listener);
    let name = partition.name();
    // The framework accepts from a private abstract-namespace socket (no file on disk); the
    // public socket's connections reach it through the message pump (see shim.rs).
    let addr = SocketAddr::from_abstract_name(format!(
        "vhost-user-sriov-net/{}/{}/{name}",
        std::process::id(),
        SEQ.fetch_add(1, Ordering::Relaxed)
    ))?;
    let mut internal = Listener::from(UnixListener::bind_addr(&addr)?);
    thread::Builder::new()
        .name(format!("serve-{name}"))
        .spawn(move || {
            let device = NetDevice::new(partition, switch, poller);
            loop {
                if let Err(e) = serve_one(&device, &listener, &mut internal, &addr) {
                    log::error!("{name}: {e}; retrying");
                    thread::sleep(Duration::from_millis(200));
                }
            }
        })
}

static SEQ: AtomicUsize = AtomicUsize::new(0);

fn serve_one(
    device: &NetDevice,
    public: &Listener,
    internal: &mut Listener,
    internal_addr: &SocketAddr,
) -> Result<(), String> {
    let part = device.partition();
    let name = part.name();
    let frontend = match public.accept() {
        Ok(Some(s)) => s,
        Ok(None) => return Ok(()),
        Err(e) => return Err(format!("accept failed: {e}")),
    };
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
    let framework_side = match UnixStream::connect_addr(internal_addr) {
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
    if let Err(e) = shim::run(frontend, framework_side, device.num_queues()) {
        log::warn!("{name}: vhost-user stream error: {e}");
    }
    let result = daemon.wait();
    finish(Some(daemon));
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
        assert!(bind_all(&paths).is_err());
        assert!(!d.join("a.sock").exists(), "nothing half-started");
    }
}
