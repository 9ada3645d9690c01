//! QEMU's side of the device, over QMP. QEMU owns the guest-visible link status and MAC and
//! handles the control queue itself, telling a vhost-user backend nothing. So the daemon, when
//! QEMU offers a QMP socket in the socket directory (`qemu-args` adds one), connects to it and:
//! - mirrors each partition's admin link (`state disable` -> `set_link` down: the guest sees
//!   carrier loss on that function; up otherwise), again after every reconnect of either side
//!   (QEMU sets the link up whenever a vhost-user socket reconnects);
//! - follows `NIC_RX_FILTER_CHANGED` with `query-rx-filter` to learn each guest's MAC and
//!   receive modes; a trusted partition's switch MAC follows it (see `Switch::set_guest_rx`).
//!
//! Everything else works without QMP: the thread retries quietly while there is no socket.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use backend::admin::GuestRx;
use backend::partition::Role;
use backend::switch::Switch;
use serde_json::{json, Value};

/// The QMP socket's name in the socket directory.
pub const QMP_SOCKET: &str = "qmp.sock";
/// How often a missing QMP socket is tried again, and how often link states are compared.
const TICK: Duration = Duration::from_millis(200);
const RETRY: Duration = Duration::from_secs(1);
/// A reply QEMU does not give within this long ends the connection (then it is retried).
const REPLY_TIMEOUT: Duration = Duration::from_secs(5);
/// QEMU went away (the guest powered off): the normal end of a connection.
const CLOSED: &str = "QEMU closed the connection";

/// The QEMU device id of a partition's NIC, as `qemu-args` names it.
pub fn device_id(role: Role) -> String {
    format!("sriov-{}", role.name())
}

pub fn spawn(dir: &Path, switch: Arc<Switch>) -> std::io::Result<thread::JoinHandle<()>> {
    let path = dir.join(QMP_SOCKET);
    thread::Builder::new()
        .name("qmp".into())
        .spawn(move || run(&path, &switch))
}

fn run(path: &PathBuf, switch: &Switch) {
    let mut logged_absent = false;
    loop {
        match UnixStream::connect(path) {
            Ok(s) => {
                logged_absent = false;
                log::info!("qmp: connected to {}", path.display());
                match Session::open(s).and_then(|mut q| q.serve(switch)) {
                    Ok(()) => {}
                    Err(e) if e == CLOSED => log::info!("qmp: {e}"),
                    Err(e) => log::warn!("qmp: {e}; reconnecting"),
                }
            }
            Err(e) => {
                if !logged_absent {
                    log::debug!("qmp: no QEMU at {} yet ({e}); retrying", path.display());
                    logged_absent = true;
                }
            }
        }
        thread::sleep(RETRY);
    }
}

/// One QMP connection.
struct Session {
    reader: BufReader<UnixStream>,
    writer: UnixStream,
    /// Events read while waiting for a reply, handled next.
    events: Vec<Value>,
}

impl Session {
    fn open(s: UnixStream) -> Result<Session, String> {
        s.set_read_timeout(Some(TICK)).map_err(|e| e.to_string())?;
        let writer = s.try_clone().map_err(|e| e.to_string())?;
        let mut q = Session {
            reader: BufReader::new(s),
            writer,
            events: Vec::new(),
        };
        let greeting = q.read_line(REPLY_TIMEOUT)?.ok_or("no QMP greeting")?;
        if greeting.get("QMP").is_none() {
            return Err(format!("not a QMP greeting: {greeting}"));
        }
        q.execute("qmp_capabilities", json!({}))?;
        Ok(q)
    }

    /// One JSON line, or None when nothing arrived within `wait`.
    fn read_line(&mut self, wait: Duration) -> Result<Option<Value>, String> {
        let start = Instant::now();
        let mut line = String::new();
        loop {
            match self.reader.read_line(&mut line) {
                Ok(0) => return Err(CLOSED.into()),
                Ok(_) if line.ends_with('\n') => {
                    return serde_json::from_str(&line)
                        .map(Some)
                        .map_err(|e| format!("unreadable QMP line: {e}"));
                }
                Ok(_) => {}
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) =>
                {
                    if line.is_empty() && start.elapsed() >= wait {
                        return Ok(None);
                    }
                    if start.elapsed() >= REPLY_TIMEOUT {
                        return Err("QEMU stalled mid-line".into());
                    }
                }
                Err(e) => return Err(e.to_string()),
            }
        }
    }

    fn execute(&mut self, cmd: &str, args: Value) -> Result<Value, String> {
        let req = if args.as_object().is_some_and(|o| o.is_empty()) {
            json!({"execute": cmd})
        } else {
            json!({"execute": cmd, "arguments": args})
        };
        writeln!(self.writer, "{req}").map_err(|e| e.to_string())?;
        let start = Instant::now();
        loop {
            let left = REPLY_TIMEOUT.saturating_sub(start.elapsed());
            let Some(v) = self.read_line(left)? else {
                return Err(format!("no reply to {cmd} within {REPLY_TIMEOUT:?}"));
            };
            if v.get("event").is_some() {
                self.events.push(v);
            } else if let Some(r) = v.get("return") {
                return Ok(r.clone());
            } else if let Some(e) = v.get("error") {
                return Err(format!("{cmd}: {}", e["desc"].as_str().unwrap_or("error")));
            }
        }
    }

    /// Keeps QEMU's view in step with the switch's until the connection ends.
    fn serve(&mut self, switch: &Switch) -> Result<(), String> {
        // What QEMU was last told, per partition, and the connection count it was told at.
        let mut told: HashMap<usize, (bool, u64)> = HashMap::new();
        for p in switch.partitions() {
            self.learn_rx_filter(switch, p.id)?;
        }
        loop {
            for p in switch.partitions() {
                let want = switch.link_up(p.id);
                let connects = p.lifecycle().connects;
                if told.get(&p.id) != Some(&(want, connects)) {
                    // Only a partition QEMU knows: its NIC exists once it connected.
                    if connects > 0 || !want {
                        let name = device_id(p.role);
                        match self.execute("set_link", json!({"name": name, "up": want})) {
                            Ok(_) => {
                                log::info!("qmp: {name} link {}", if want { "up" } else { "down" })
                            }
                            Err(e) => log::debug!("qmp: set_link {name}: {e}"),
                        }
                    }
                    told.insert(p.id, (want, connects));
                }
            }
            for ev in std::mem::take(&mut self.events) {
                self.on_event(switch, &ev)?;
            }
            if let Some(v) = self.read_line(TICK)? {
                if v.get("event").is_some() {
                    self.on_event(switch, &v)?;
                }
            }
        }
    }

    fn on_event(&mut self, switch: &Switch, ev: &Value) -> Result<(), String> {
        if ev["event"] != "NIC_RX_FILTER_CHANGED" {
            return Ok(());
        }
        let name = ev["data"]["name"].as_str().unwrap_or_default();
        if let Some(p) = switch
            .partitions()
            .iter()
            .find(|p| device_id(p.role) == name)
        {
            self.learn_rx_filter(switch, p.id)?;
        }
        Ok(())
    }

    /// Asks QEMU for one NIC's receive filter and hands it to the switch.
    fn learn_rx_filter(&mut self, switch: &Switch, id: usize) -> Result<(), String> {
        let Some(p) = switch.partitions().get(id) else {
            return Ok(());
        };
        let name = device_id(p.role);
        let reply = match self.execute("query-rx-filter", json!({"name": name})) {
            Ok(r) => r,
            // Not a NIC QEMU has (a VF the command line left out): nothing to learn.
            Err(e) => {
                log::debug!("qmp: query-rx-filter {name}: {e}");
                return Ok(());
            }
        };
        let Some(g) = parse_rx_filter(&reply) else {
            return Ok(());
        };
        if p.guest() != Some(g) {
            let applied = switch.set_guest_rx(id, Some(g));
            let trusted = p.admin().trust;
            if g.mac != p.admin().mac && !applied {
                log::warn!(
                    "{}: guest asked for MAC {}{}; the switch keeps {}",
                    p.name(),
                    g.mac,
                    if trusted {
                        " (in use)"
                    } else {
                        " but is not trusted"
                    },
                    p.admin().mac
                );
            }
        }
        Ok(())
    }
}

/// The one NIC in a `query-rx-filter` reply, as the switch needs it.
pub fn parse_rx_filter(reply: &Value) -> Option<GuestRx> {
    let nic = reply.as_array()?.first()?;
    Some(GuestRx {
        mac: nic["main-mac"].as_str()?.parse().ok()?,
        promiscuous: nic["promiscuous"].as_bool().unwrap_or(false),
        allmulticast: nic["multicast"] == "all",
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use backend::admin::{AdminChange, LinkState};
    use backend::partition::{Partition, PartitionConfig};
    use std::os::unix::net::UnixListener;
    use std::sync::mpsc;

    fn switch() -> Arc<Switch> {
        let mk = |id: usize, role| {
            Arc::new(Partition::new(
                id,
                role,
                PartitionConfig {
                    mac: backend::mac::MacAddr([2, 0, 0, 0, 0, id as u8]),
                    queue_pairs: 1,
                    queue_size: 256,
                    mtu: 1500,
                },
            ))
        };
        Arc::new(Switch::new(vec![mk(0, Role::Pf), mk(1, Role::Vf(0))]).unwrap())
    }

    #[test]
    fn rx_filter_replies_parse() {
        let r = json!([{"name": "sriov-vf0", "main-mac": "02:00:00:00:00:42", "promiscuous": true,
                        "multicast": "all", "unicast": "normal"}]);
        let g = parse_rx_filter(&r).unwrap();
        assert_eq!(g.mac.to_string(), "02:00:00:00:00:42");
        assert!(g.promiscuous && g.allmulticast);
        assert!(parse_rx_filter(&json!([])).is_none());
        assert!(parse_rx_filter(&json!([{"main-mac": "nope"}])).is_none());
    }

    /// A scripted QEMU: the daemon's thread says what QEMU must hear, and learns what it says.
    #[test]
    fn link_is_mirrored_and_a_trusted_guests_mac_learned() {
        let dir = std::env::temp_dir().join(format!("sriov-qmp-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let listener = UnixListener::bind(dir.join(QMP_SOCKET)).unwrap();
        let sw = switch();
        sw.set_admin(
            1,
            &AdminChange {
                state: Some(LinkState::Disable),
                trust: Some(true),
                ..AdminChange::default()
            },
        )
        .unwrap();
        let (tx, rx) = mpsc::channel::<Value>();
        let qemu = thread::spawn(move || {
            let (s, _) = listener.accept().unwrap();
            let mut w = s.try_clone().unwrap();
            let mut r = BufReader::new(s);
            writeln!(w, r#"{{"QMP": {{"version": {{}}, "capabilities": []}}}}"#).unwrap();
            let mut mac = "02:00:00:00:00:01".to_string();
            let mut line = String::new();
            let mut sent_event = false;
            while r.read_line(&mut line).unwrap_or(0) > 0 {
                let v: Value = serde_json::from_str(&line).unwrap();
                line.clear();
                let reply = match v["execute"].as_str().unwrap() {
                    "query-rx-filter" => {
                        json!([{"name": v["arguments"]["name"], "main-mac": mac, "promiscuous": false, "multicast": "normal"}])
                    }
                    _ => json!({}),
                };
                writeln!(w, "{}", json!({"return": reply})).unwrap();
                if v["execute"] == "set_link" {
                    tx.send(v["arguments"].clone()).unwrap();
                    if !sent_event {
                        // The guest changes its MAC through the control queue.
                        mac = "02:00:00:00:00:77".into();
                        writeln!(w, r#"{{"event": "NIC_RX_FILTER_CHANGED", "data": {{"name": "sriov-vf0"}}}}"#).unwrap();
                        sent_event = true;
                    }
                }
            }
        });
        spawn(&dir, sw.clone()).unwrap();
        let first = rx.recv_timeout(Duration::from_secs(10)).unwrap();
        assert_eq!(first, json!({"name": "sriov-vf0", "up": false}));
        let t = Instant::now();
        while sw.partitions()[1].guest().map(|g| g.mac.to_string())
            != Some("02:00:00:00:00:77".into())
        {
            assert!(
                t.elapsed() < Duration::from_secs(10),
                "guest MAC never learned"
            );
            thread::sleep(Duration::from_millis(20));
        }
        // Trusted: the switch now delivers the guest's MAC to it.
        assert_eq!(
            sw.current_view().ports[1].mac.to_string(),
            "02:00:00:00:00:77"
        );
        // Enabling the link is mirrored too.
        sw.set_admin(
            1,
            &AdminChange {
                state: Some(LinkState::Enable),
                ..AdminChange::default()
            },
        )
        .unwrap();
        // (vf0 never connected, so only a down state is pushed; enable is sent once it connects.)
        sw.partitions()[1].on_connect();
        let up = rx.recv_timeout(Duration::from_secs(10)).unwrap();
        assert_eq!(up, json!({"name": "sriov-vf0", "up": true}));
        drop(qemu);
    }
}
