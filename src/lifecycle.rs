//! The daemon's life under a service manager: systemd readiness (`Type=notify`), socket
//! activation (listening sockets handed over by systemd survive a daemon restart, so QEMU
//! reconnects at once), SIGHUP (re-read the config, apply what can change at runtime), and the
//! layout record that catches a restart with different MACs.

use std::collections::HashMap;
use std::os::fd::FromRawFd;
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};

use backend::admin::{Admin, AdminChange};
use backend::switch::Switch;
use sd_notify::NotifyState;
use serde_json::{json, Value};

use crate::config::Config;

/// Listening sockets systemd passed (LISTEN_FDS), by the path each is bound to.
pub fn inherited_listeners() -> HashMap<PathBuf, UnixListener> {
    let mut out = HashMap::new();
    let fds = match sd_notify::listen_fds() {
        Ok(fds) => fds,
        Err(e) => {
            log::warn!("socket activation: {e}; binding every socket myself");
            return out;
        }
    };
    for fd in fds {
        // SAFETY: systemd passed this descriptor to us alone (LISTEN_PID is our pid).
        let l = unsafe { UnixListener::from_raw_fd(fd) };
        match l
            .local_addr()
            .ok()
            .and_then(|a| a.as_pathname().map(Path::to_path_buf))
        {
            Some(p) => {
                out.insert(p, l);
            }
            None => {
                log::warn!("socket activation: fd {fd} is not a Unix socket with a path; ignored")
            }
        }
    }
    if !out.is_empty() {
        log::info!(
            "socket activation: {} listening sockets from systemd",
            out.len()
        );
    }
    out
}

pub fn notify(state: &[NotifyState]) {
    if let Err(e) = sd_notify::notify(state) {
        log::warn!("sd_notify: {e}");
    }
}

/// The record of which MAC each partition's socket served, kept in the socket directory.
pub const LAYOUT_FILE: &str = "layout.json";

/// Compares this daemon's partitions with the layout its sockets last served and says loudly
/// what changed (a guest still using an old MAC gets everything it sends dropped as spoofed),
/// then records the new layout. Returns the partitions whose MAC changed.
pub fn check_layout(dir: &Path, switch: &Switch) -> Vec<String> {
    let path = dir.join(LAYOUT_FILE);
    let now: Vec<(String, String)> = switch
        .partitions()
        .iter()
        .map(|p| (p.name(), p.config.mac.to_string()))
        .collect();
    let mut changed = Vec::new();
    if let Ok(text) = std::fs::read_to_string(&path) {
        let before: HashMap<String, String> = serde_json::from_str::<Value>(&text)
            .ok()
            .and_then(|v| v["partitions"].as_array().cloned())
            .unwrap_or_default()
            .iter()
            .filter_map(|p| {
                Some((
                    p["name"].as_str()?.to_string(),
                    p["mac"].as_str()?.to_string(),
                ))
            })
            .collect();
        for (name, mac) in &now {
            if let Some(old) = before.get(name).filter(|old| *old != mac) {
                changed.push(format!("{name} {old} -> {mac}"));
            }
        }
        let gone: Vec<&String> = before
            .keys()
            .filter(|k| !now.iter().any(|(n, _)| n == *k))
            .collect();
        if !gone.is_empty() {
            log::warn!(
                "layout: partitions {gone:?} served by the last daemon on these sockets do not exist now"
            );
        }
    }
    if !changed.is_empty() {
        log::error!(
            "LAYOUT CHANGED since these sockets were last served: {}. A guest still using an old \
             MAC has everything it sends dropped as spoofed (drop_spoofed_source) until it is \
             restarted with the new layout (qemu-args prints it).",
            changed.join(", ")
        );
    }
    let record = json!({
        "partitions": now.iter().map(|(n, m)| json!({"name": n, "mac": m})).collect::<Vec<_>>()
    });
    let tmp = path.with_extension("tmp");
    let written =
        std::fs::write(&tmp, record.to_string()).and_then(|()| std::fs::rename(&tmp, &path));
    if let Err(e) = written {
        log::warn!("layout: cannot record {}: {e}", path.display());
    }
    changed
}

/// Applies a re-read config (SIGHUP): every partition's admin settings become exactly the
/// file's (runtime `ctl` changes not in the file are undone, as a reload of a declarative
/// setup does); what only a restart can change is named in the log.
pub fn reload(running: &Config, new: &Config, switch: &Switch) {
    let mut restart = Vec::new();
    if new.socket_dir != running.socket_dir {
        restart.push("socket_dir".to_string());
    }
    if new.poll_us != running.poll_us {
        restart.push("poll_us".into());
    }
    if new.linger_us != running.linger_us {
        restart.push("linger_us".into());
    }
    if new.data_access != running.data_access || new.control_access != running.control_access {
        restart.push("socket modes and groups".into());
    }
    if new.partitions.len() != running.partitions.len() {
        restart.push(format!("vfs ({} -> {})", running.vfs(), new.vfs()));
    }
    for ((role, old), (_, cfg)) in running.partitions.iter().zip(&new.partitions) {
        for (key, a, b) in [
            ("queue_pairs", old.queue_pairs, cfg.queue_pairs),
            ("queue_size", old.queue_size, cfg.queue_size),
            ("mtu", old.mtu, cfg.mtu),
        ] {
            if a != b {
                restart.push(format!("{}.{key} {a} -> {b}", role.name()));
            }
        }
    }
    let mut applied = 0;
    for (id, ((role, cfg), change)) in new.partitions.iter().zip(&new.admin).enumerate() {
        if id >= switch.partitions().len() {
            break;
        }
        let target = match Admin::new(cfg.mac).apply(change) {
            Ok(a) => a,
            Err(e) => {
                log::error!("reload: {}: {e}; left as it was", role.name());
                continue;
            }
        };
        if switch.partitions()[id].admin() == target {
            continue;
        }
        match switch.set_admin(id, &exactly(&target)) {
            Ok(_) => applied += 1,
            Err(e) => log::error!("reload: {}: {e}; left as it was", role.name()),
        }
    }
    log::info!("reload: admin settings of {applied} partition(s) changed");
    if !restart.is_empty() {
        log::warn!("reload: only a restart applies: {}", restart.join("; "));
    }
}

/// A change that sets every admin field to `a`'s value.
fn exactly(a: &Admin) -> AdminChange {
    AdminChange {
        mac: Some(a.mac),
        vlan: Some(a.vlan.map_or(0, |v| u32::from(v.id))),
        qos: a.vlan.map(|v| u32::from(v.qos)),
        proto: a.vlan.map(|v| v.proto),
        max_tx_rate: Some(a.max_tx_rate),
        min_tx_rate: Some(a.min_tx_rate),
        spoofchk: Some(a.spoofchk),
        trust: Some(a.trust),
        state: Some(a.state),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use backend::admin::LinkState;
    use backend::partition::Partition;

    fn setup(toml_text: &str) -> (Config, Switch) {
        let c = Config::resolve(toml::from_str(toml_text).unwrap()).unwrap();
        let parts = c
            .partitions
            .iter()
            .enumerate()
            .map(|(i, (r, pc))| std::sync::Arc::new(Partition::new(i, *r, pc.clone())))
            .collect();
        (c, Switch::new(parts).unwrap())
    }

    #[test]
    fn reload_applies_admin_settings_exactly_and_keeps_the_rest() {
        let (running, sw) = setup("vfs = 2\n[vf.0]\nvlan = 5\n");
        sw.set_admin(
            1,
            &AdminChange {
                vlan: Some(5),
                ..AdminChange::default()
            },
        )
        .unwrap();
        // A runtime change the file does not have is undone; the file's new settings apply.
        sw.set_admin(
            2,
            &AdminChange {
                trust: Some(true),
                ..AdminChange::default()
            },
        )
        .unwrap();
        let new = Config::resolve(
            toml::from_str("vfs = 2\nmtu = 9000\n[vf.0]\nstate = \"disable\"\n").unwrap(),
        )
        .unwrap();
        reload(&running, &new, &sw);
        let vf0 = sw.partitions()[1].admin();
        assert_eq!((vf0.vlan, vf0.state), (None, LinkState::Disable));
        assert!(!sw.partitions()[2].admin().trust);
        // The MTU needs a restart: unchanged.
        assert_eq!(sw.partitions()[1].config.mtu, 1500);
    }

    #[test]
    fn layout_changes_are_found_and_recorded() {
        let dir = std::env::temp_dir().join(format!("sriov-layout-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let (_, a) = setup("vfs = 2\n");
        assert!(
            check_layout(&dir, &a).is_empty(),
            "first start: nothing to compare"
        );
        assert!(check_layout(&dir, &a).is_empty(), "same layout");
        let (_, b) = setup("vfs = 2\nbase_mac = \"02:99:00:00:00:00\"\n");
        let changed = check_layout(&dir, &b);
        assert_eq!(changed.len(), 3, "{changed:?}");
        assert!(changed[1].starts_with("vf0 02:53:52:00:00:01 -> 02:99:00:00:00:01"));
        assert!(check_layout(&dir, &b).is_empty(), "recorded");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
