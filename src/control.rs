//! The control socket: newline-delimited JSON requests and replies over `DIR/control.sock`.
//! Protocol version 1 (documented in README). A bad request gets an error reply; the
//! connection and the daemon carry on.

use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::net::{UnixListener, UnixStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use backend::admin::{AdminChange, VlanProto};
use backend::partition::{Partition, Role};
use backend::switch::Switch;
use serde::Deserialize;
use serde_json::{json, Value};

/// The newest protocol version: 2 added `set` and `dump-config`. Version 1 requests (`show`,
/// `version`) are still answered, in version 1.
pub const PROTOCOL_VERSION: u32 = 2;
const OLDEST_VERSION: u32 = 1;
/// Longest request line accepted; anything longer is refused without buffering it all.
const MAX_REQUEST: u64 = 64 * 1024;

/// The envelope every request has; `set` carries its settings beside these keys.
#[derive(Debug, Deserialize)]
struct Envelope {
    version: u32,
    cmd: String,
    #[serde(default)]
    partition: Option<String>,
}

/// What `dump-config` needs besides the partitions: the daemon-wide settings it runs with.
#[derive(Clone, Debug, Default)]
pub struct DaemonInfo {
    pub socket_dir: std::path::PathBuf,
    pub poll_us: u32,
    pub linger_us: u32,
}

/// Connections served at once; more are refused with an error line (each costs a thread).
pub const MAX_CONNECTIONS: usize = 16;
/// A whole request line must arrive within this long of its first byte.
pub const REQUEST_DEADLINE: Duration = Duration::from_secs(10);
/// A connection with no request for this long is closed.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(30);

pub fn spawn(
    listener: UnixListener,
    switch: Arc<Switch>,
    info: DaemonInfo,
) -> std::io::Result<thread::JoinHandle<()>> {
    let info = Arc::new(info);
    let open = Arc::new(AtomicUsize::new(0));
    thread::Builder::new()
        .name("control".into())
        .spawn(move || {
            for conn in listener.incoming() {
                match conn {
                    Ok(mut stream) => {
                        if open.fetch_add(1, Ordering::AcqRel) >= MAX_CONNECTIONS {
                            open.fetch_sub(1, Ordering::AcqRel);
                            log::warn!(
                                "control: refused a connection: {MAX_CONNECTIONS} already open"
                            );
                            let _ = stream.set_write_timeout(Some(Duration::from_secs(1)));
                            let msg = format!("too many control connections ({MAX_CONNECTIONS})");
                            let _ = writeln!(stream, "{}", error_reply(PROTOCOL_VERSION, &msg));
                            continue;
                        }
                        let (sw, info, open2) = (switch.clone(), info.clone(), open.clone());
                        let spawned =
                            thread::Builder::new()
                                .name("control-conn".into())
                                .spawn(move || {
                                    serve_conn(stream, &sw, &info);
                                    open2.fetch_sub(1, Ordering::AcqRel);
                                });
                        if let Err(e) = spawned {
                            open.fetch_sub(1, Ordering::AcqRel);
                            log::warn!("control: cannot start connection thread: {e}");
                        }
                    }
                    Err(e) => log::warn!("control: accept failed: {e}"),
                }
            }
        })
}

/// Why a request line could not be read.
enum LineError {
    /// The peer closed, or stayed silent past [`IDLE_TIMEOUT`]: just close.
    Gone,
    /// Longer than [`MAX_REQUEST`], or not complete within [`REQUEST_DEADLINE`]: say so, close.
    Refused(String),
}

/// Reads one request line. Waiting for a request is bounded by [`IDLE_TIMEOUT`]; once its first
/// byte came, the whole line by [`REQUEST_DEADLINE`], however the bytes trickle in.
fn read_request(stream: &mut UnixStream, pending: &mut Vec<u8>) -> Result<Vec<u8>, LineError> {
    let mut started: Option<Instant> = (!pending.is_empty()).then(Instant::now);
    let idle_since = Instant::now();
    loop {
        if let Some(i) = pending.iter().position(|b| *b == b'\n') {
            let rest = pending.split_off(i + 1);
            let line = std::mem::replace(pending, rest);
            return Ok(line);
        }
        if pending.len() as u64 > MAX_REQUEST {
            return Err(LineError::Refused(format!(
                "request longer than {MAX_REQUEST} bytes"
            )));
        }
        let left = match started {
            Some(t) => REQUEST_DEADLINE.checked_sub(t.elapsed()),
            None => IDLE_TIMEOUT.checked_sub(idle_since.elapsed()),
        };
        let Some(left) = left.filter(|d| !d.is_zero()) else {
            return match started {
                Some(_) => Err(LineError::Refused(format!(
                    "request not complete within {REQUEST_DEADLINE:?}"
                ))),
                None => Err(LineError::Gone),
            };
        };
        let _ = stream.set_read_timeout(Some(left));
        let mut buf = [0u8; 4096];
        match stream.read(&mut buf) {
            Ok(0) => return Err(LineError::Gone),
            Ok(n) => {
                started.get_or_insert_with(Instant::now);
                pending.extend_from_slice(&buf[..n]);
            }
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock
                        | std::io::ErrorKind::TimedOut
                        | std::io::ErrorKind::Interrupted
                ) => {}
            Err(_) => return Err(LineError::Gone),
        }
    }
}

fn serve_conn(mut stream: UnixStream, switch: &Switch, info: &DaemonInfo) {
    // A reader that never reads its replies must not pin the thread either.
    let _ = stream.set_write_timeout(Some(REQUEST_DEADLINE));
    let mut pending = Vec::new();
    loop {
        let reply = match read_request(&mut stream, &mut pending) {
            Ok(line) => {
                let line = String::from_utf8_lossy(&line);
                if let Some((name, count)) = capture_request(line.trim()) {
                    // The connection carries the capture from here on.
                    return stream_capture(stream, switch, &name, count);
                }
                handle(line.trim(), switch, info)
            }
            Err(LineError::Gone) => return,
            Err(LineError::Refused(why)) => {
                let _ = writeln!(stream, "{}", error_reply(PROTOCOL_VERSION, &why));
                return;
            }
        };
        if writeln!(stream, "{reply}").is_err() {
            return;
        }
    }
}

/// A well-formed version 2 `capture` request: the partition and how many frames (0: until the
/// client leaves). Anything else goes through [`handle`], which explains what is wrong.
fn capture_request(line: &str) -> Option<(String, u64)> {
    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Req {
        version: u32,
        cmd: String,
        partition: String,
        #[serde(default)]
        count: u64,
    }
    let r: Req = serde_json::from_str(line).ok()?;
    (r.cmd == "capture" && r.version == PROTOCOL_VERSION).then_some((r.partition, r.count))
}

/// `capture`: one reply line, then a pcap stream (Ethernet) of what the partition sends and
/// receives, until `count` frames went out, the client closes, or another capture of the same
/// partition starts.
fn stream_capture(mut stream: UnixStream, switch: &Switch, name: &str, count: u64) {
    use backend::capture::Direction;
    use pcap_file::pcap::{PcapPacket, PcapWriter};
    use std::sync::mpsc::RecvTimeoutError;
    let Some(p) = switch.partitions().iter().find(|p| p.name() == name) else {
        let _ = writeln!(
            stream,
            "{}",
            error_reply(PROTOCOL_VERSION, &format!("no partition named {name:?}"))
        );
        return;
    };
    let ok = json!({"version": PROTOCOL_VERSION, "ok": true,
                    "result": {"format": "pcap", "partition": name, "count": count}});
    if writeln!(stream, "{ok}").is_err() {
        return;
    }
    let rx = p.capture.start();
    log::info!(
        "{name}: capture started ({} frames)",
        if count == 0 {
            "unlimited".to_string()
        } else {
            count.to_string()
        }
    );
    let Ok(mut w) = stream
        .try_clone()
        .map_err(|_| ())
        .and_then(|s| PcapWriter::new(s).map_err(|_| ()))
    else {
        p.capture.stop();
        return;
    };
    let mut written = 0u64;
    let mut tx_rx = [0u64; 2];
    let end = loop {
        match rx.recv_timeout(Duration::from_millis(200)) {
            Ok(c) => {
                let ts =
                    c.at.duration_since(std::time::UNIX_EPOCH)
                        .unwrap_or_default();
                let pkt = PcapPacket::new(ts, c.frame.len() as u32, &c.frame);
                if w.write_packet(&pkt).is_err() {
                    break "client gone";
                }
                tx_rx[usize::from(c.dir == Direction::Rx)] += 1;
                written += 1;
                if count != 0 && written >= count {
                    break "count reached";
                }
            }
            Err(RecvTimeoutError::Timeout) => {
                // A client that left while nothing passed: a peek sees the end of stream.
                let mut b = [0u8; 1];
                // SAFETY: a valid buffer of one byte; MSG_PEEK leaves any data in place.
                let n = unsafe {
                    libc::recv(
                        stream.as_raw_fd(),
                        b.as_mut_ptr().cast(),
                        1,
                        libc::MSG_PEEK | libc::MSG_DONTWAIT,
                    )
                };
                if n == 0 {
                    break "client gone";
                }
            }
            Err(RecvTimeoutError::Disconnected) => break "another capture started",
        }
    };
    if !matches!(end, "another capture started") {
        p.capture.stop();
    }
    log::info!(
        "{name}: capture ended ({end}): {} sent, {} received, {} lost to a slow reader",
        tx_rx[0],
        tx_rx[1],
        p.capture.dropped()
    );
}

fn error_reply(version: u32, msg: &str) -> Value {
    json!({"version": version, "ok": false, "error": msg})
}

/// Answers one request line, in the request's protocol version.
pub fn handle(line: &str, switch: &Switch, info: &DaemonInfo) -> Value {
    let mut fields: serde_json::Map<String, Value> = match serde_json::from_str(line) {
        Ok(Value::Object(m)) => m,
        Ok(_) => return error_reply(PROTOCOL_VERSION, "malformed request: not a JSON object"),
        Err(e) => return error_reply(PROTOCOL_VERSION, &format!("malformed request: {e}")),
    };
    let mut envelope = serde_json::Map::new();
    for k in ["version", "cmd", "partition"] {
        if let Some(v) = fields.remove(k) {
            envelope.insert(k.to_string(), v);
        }
    }
    let req: Envelope = match serde_json::from_value(Value::Object(envelope)) {
        Ok(r) => r,
        Err(e) => return error_reply(PROTOCOL_VERSION, &format!("malformed request: {e}")),
    };
    let v = req.version;
    if !(OLDEST_VERSION..=PROTOCOL_VERSION).contains(&v) {
        return error_reply(
            PROTOCOL_VERSION,
            &format!(
                "unsupported protocol version {v} (this daemon speaks {OLDEST_VERSION}..={PROTOCOL_VERSION})"
            ),
        );
    }
    let result = match (req.cmd.as_str(), v) {
        ("set", 2..) => set(switch, req.partition.as_deref(), fields),
        ("dump-config", 2..) if fields.is_empty() => Ok(json!({"toml": dump_config(switch, info)})),
        ("capture", 2..) => Err("capture needs \"partition\" and an optional \"count\"".into()),
        ("set" | "dump-config" | "capture", _) => {
            Err(format!("{:?} needs protocol version 2", req.cmd))
        }
        (_, _) if !fields.is_empty() => Err(format!(
            "malformed request: unknown field `{}`",
            fields.keys().next().map(String::as_str).unwrap_or("?")
        )),
        ("show", _) => show(switch, req.partition.as_deref(), v),
        ("version", _) => Ok(json!({"version": v, "daemon": env!("CARGO_PKG_VERSION")})),
        (other, _) => Err(format!(
            "unknown command {other:?} (known: show, version{})",
            if v >= 2 { ", set, dump-config" } else { "" }
        )),
    };
    match result {
        Ok(r) => json!({"version": v, "ok": true, "result": r}),
        Err(e) => error_reply(v, &e),
    }
}

fn find<'a>(switch: &'a Switch, name: &str) -> Result<&'a Arc<Partition>, String> {
    switch
        .partitions()
        .iter()
        .find(|p| p.name() == name)
        .ok_or_else(|| {
            let vfs = switch.partitions().len() - 1;
            format!("no partition named {name:?} (pf, or vf0..vf{})", vfs - 1)
        })
}

/// `set`: the iproute2 settings of one partition; all or nothing.
fn set(
    switch: &Switch,
    name: Option<&str>,
    fields: serde_json::Map<String, Value>,
) -> Result<Value, String> {
    let name = name.ok_or("set needs \"partition\"")?;
    let p = find(switch, name)?;
    let change: AdminChange = serde_json::from_value(Value::Object(fields))
        .map_err(|e| format!("malformed request: {e}"))?;
    if change.is_empty() {
        return Err("set needs at least one setting".into());
    }
    switch
        .set_admin(p.id, &change)
        .map_err(|e| format!("{name}: {e}"))?;
    log::info!(
        "{name}: admin change {}",
        serde_json::to_string(&change).unwrap_or_default()
    );
    Ok(with_link(switch, p, partition_json(p, PROTOCOL_VERSION)))
}

fn show(switch: &Switch, only: Option<&str>, version: u32) -> Result<Value, String> {
    if let Some(n) = only {
        find(switch, n)?;
    }
    let parts: Vec<Value> = switch
        .partitions()
        .iter()
        .filter(|p| only.is_none_or(|n| p.name() == n))
        .map(|p| with_link(switch, p, partition_json(p, version)))
        .collect();
    let mut out = json!({"version": version, "partitions": parts});
    if version >= 2 {
        out["uplinks"] = uplinks_json(switch);
    }
    Ok(out)
}

/// Version 2's `link` is the effective one: `state auto` follows the uplinks.
fn with_link(switch: &Switch, p: &Partition, mut v: Value) -> Value {
    if v.get("link").is_some() {
        v["link"] = json!(if switch.link_up(p.id) { "up" } else { "down" });
    }
    v
}

/// Version 2's `uplinks`: each uplink port with its link, peer events and counters (`rx` is
/// what came in from the wire, `tx` what went onto it).
pub fn uplinks_json(switch: &Switch) -> Value {
    let ups: Vec<Value> = switch
        .uplinks()
        .iter()
        .map(|u| {
            let c = &u.config;
            let life = u.life();
            json!({
                "name": c.name,
                "kind": c.kind,
                "spec": c.spec,
                "mtu": c.mtu,
                "link": if u.carrier() { "up" } else { "down" },
                "queues": u.queues(),
                "offloads": {"csum": c.offloads.csum, "tso4": c.offloads.tso4, "tso6": c.offloads.tso6},
                "connects": life.connects,
                "disconnects": life.disconnects,
                "refused": life.refused,
                "learned_macs": switch.learned().count(u.id),
                "counters": u.counters(),
            })
        })
        .collect();
    Value::Array(ups)
}

fn partition_json(p: &Partition, version: u32) -> Value {
    let life = p.lifecycle();
    let admin = p.admin();
    let queues: Vec<Value> = p
        .counter_snapshots()
        .iter()
        .enumerate()
        .map(|(i, c)| json!({"pair": i, "counters": c}))
        .collect();
    let mut v = json!({
        "name": p.name(),
        "role": match p.role { Role::Pf => "pf", Role::Vf(_) => "vf" },
        "vf": match p.role { Role::Pf => None, Role::Vf(n) => Some(n) },
        "mac": admin.mac,
        "state": life.state.as_str(),
        "connects": life.connects,
        "disconnects": life.disconnects,
        "starts": life.starts,
        "stops": life.stops,
        "queue_pairs": p.config.queue_pairs,
        "queue_size": p.config.queue_size,
        "mtu": p.config.mtu,
        "spoofchk": admin.spoofchk,
        "counters": p.totals(),
        "queues": queues,
    });
    if version >= 2 {
        let vlan = admin.vlan;
        let extra = json!({
            "vlan": vlan.map_or(0, |v| v.id),
            "qos": vlan.map_or(0, |v| v.qos),
            "vlan_protocol": vlan.map_or(VlanProto::Dot1Q, |v| v.proto),
            "max_tx_rate": admin.max_tx_rate,
            "min_tx_rate": admin.min_tx_rate,
            "trust": admin.trust,
            "link_state": admin.state,
            "link": if admin.link_up(true) { "up" } else { "down" },
            "started_mac": p.config.mac,
            // What QEMU reports of the guest (QMP), else the MAC QEMU was started with.
            "guest_mac": p.guest().map_or(p.config.mac, |g| g.mac),
            "guest_rx": p.guest(),
            "switch_mac": p.effective_mac(&admin),
            // The connection's vIOMMU state (ACCESS_PLATFORM), while a frontend is connected.
            "iommu": p.session().map(|s| s.iommu.stats()),
        });
        if let (Some(o), Value::Object(e)) = (v.as_object_mut(), extra) {
            o.extend(e);
        }
    }
    v
}

/// The running state as a config file: loading it gives a daemon set up the same way.
pub fn dump_config(switch: &Switch, info: &DaemonInfo) -> String {
    use toml::{Table, Value as T};
    let mut root = Table::new();
    root.insert(
        "socket_dir".into(),
        T::String(info.socket_dir.display().to_string()),
    );
    root.insert(
        "vfs".into(),
        T::Integer(switch.partitions().len() as i64 - 1),
    );
    root.insert("poll_us".into(), T::Integer(i64::from(info.poll_us)));
    root.insert("linger_us".into(), T::Integer(i64::from(info.linger_us)));
    let mut vfs = Table::new();
    let mut pf = Table::new();
    for p in switch.partitions() {
        let a = p.admin();
        let mut t = Table::new();
        t.insert("mac".into(), T::String(a.mac.to_string()));
        t.insert(
            "queue_pairs".into(),
            T::Integer(p.config.queue_pairs.into()),
        );
        t.insert("queue_size".into(), T::Integer(p.config.queue_size.into()));
        t.insert("mtu".into(), T::Integer(p.config.mtu.into()));
        if let Some(v) = a.vlan {
            t.insert("vlan".into(), T::Integer(v.id.into()));
            t.insert("qos".into(), T::Integer(v.qos.into()));
            t.insert("proto".into(), T::String(v.proto.as_str().into()));
        }
        t.insert("max_tx_rate".into(), T::Integer(a.max_tx_rate.into()));
        t.insert("min_tx_rate".into(), T::Integer(a.min_tx_rate.into()));
        t.insert("spoofchk".into(), T::Boolean(a.spoofchk));
        t.insert("trust".into(), T::Boolean(a.trust));
        t.insert("state".into(), T::String(a.state.as_str().into()));
        match p.role {
            Role::Pf => pf = t,
            Role::Vf(n) => {
                vfs.insert(n.to_string(), T::Table(t));
            }
        }
    }
    root.insert("pf".into(), T::Table(pf));
    root.insert("vf".into(), T::Table(vfs));
    let uplinks: Vec<T> = switch
        .uplinks()
        .iter()
        .filter_map(|u| u.config.spec.parse::<crate::config::UplinkSettings>().ok())
        .filter_map(|u| T::try_from(u).ok())
        .collect();
    if !uplinks.is_empty() {
        root.insert("uplink".into(), T::Array(uplinks));
    }
    toml::to_string(&root).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use backend::partition::PartitionConfig;

    fn switch() -> Switch {
        let mk = |id: usize, role| {
            Arc::new(Partition::new(
                id,
                role,
                PartitionConfig {
                    mac: backend::mac::MacAddr([2, 0, 0, 0, 0, id as u8 + 1]),
                    queue_pairs: 2,
                    queue_size: 256,
                    mtu: 1500,
                },
            ))
        };
        Switch::new(vec![mk(0, Role::Pf), mk(1, Role::Vf(0))]).unwrap()
    }

    #[test]
    fn show_lists_every_partition_with_counters() {
        let v = handle(
            r#"{"version":1,"cmd":"show"}"#,
            &switch(),
            &DaemonInfo::default(),
        );
        assert_eq!(v["ok"], true);
        let parts = v["result"]["partitions"].as_array().unwrap();
        assert_eq!(parts.len(), 2);
        assert_eq!(parts[1]["name"], "vf0");
        assert_eq!(parts[1]["vf"], 0);
        assert_eq!(parts[0]["vf"], Value::Null);
        assert_eq!(parts[0]["state"], "waiting");
        assert_eq!(parts[0]["queues"].as_array().unwrap().len(), 2);
        assert_eq!(parts[0]["counters"]["drop_spoofed_source"], 0);
        assert_eq!(parts[0]["mac"], "02:00:00:00:00:01");
    }

    #[test]
    fn bad_requests_get_error_replies() {
        let sw = switch();
        for (req, needle) in [
            ("not json", "malformed request"),
            (
                r#"{"version":3,"cmd":"show"}"#,
                "unsupported protocol version 3",
            ),
            (
                r#"{"version":1,"cmd":"set","partition":"vf0","vlan":5}"#,
                "needs protocol version 2",
            ),
            (r#"{"version":1,"cmd":"frobnicate"}"#, "unknown command"),
            (r#"{"version":1,"cmd":"show","extra":1}"#, "unknown field"),
            (
                r#"{"version":1,"cmd":"show","partition":"vf9"}"#,
                "no partition named",
            ),
            (r#"{"cmd":"show"}"#, "missing field `version`"),
        ] {
            let v = handle(req, &sw, &DaemonInfo::default());
            assert_eq!(v["ok"], false, "{req}");
            assert!(v["error"].as_str().unwrap().contains(needle), "{req}: {v}");
        }
        let one = handle(
            r#"{"version":1,"cmd":"show","partition":"pf"}"#,
            &sw,
            &DaemonInfo::default(),
        );
        assert_eq!(one["result"]["partitions"].as_array().unwrap().len(), 1);
    }

    fn req(sw: &Switch, line: &str) -> Value {
        handle(line, sw, &DaemonInfo::default())
    }

    #[test]
    fn version_1_clients_get_version_1_replies() {
        let sw = switch();
        let v = req(&sw, r#"{"version":1,"cmd":"show","partition":"vf0"}"#);
        assert_eq!(v["version"], 1);
        let p = &v["result"]["partitions"][0];
        assert_eq!(p["spoofchk"], true);
        assert!(p.get("vlan").is_none(), "no version 2 fields: {p}");
        assert_eq!(
            req(&sw, r#"{"version":1,"cmd":"version"}"#)["result"]["version"],
            1
        );
    }

    #[test]
    fn set_applies_all_or_nothing_and_show_reports_it() {
        let sw = switch();
        let ok = req(
            &sw,
            r#"{"version":2,"cmd":"set","partition":"vf0","vlan":5,"qos":1,"proto":"802.1ad","max_tx_rate":100,"state":"disable","trust":true}"#,
        );
        assert_eq!(ok["ok"], true, "{ok}");
        let p = &ok["result"];
        assert_eq!(
            (
                &p["vlan"],
                &p["qos"],
                &p["vlan_protocol"],
                &p["max_tx_rate"]
            ),
            (&json!(5), &json!(1), &json!("802.1ad"), &json!(100))
        );
        assert_eq!(
            (&p["link_state"], &p["link"], &p["trust"]),
            (&json!("disable"), &json!("down"), &json!(true))
        );
        // Each rule refuses, and nothing changes.
        for (bad, needle) in [
            (r#""vlan":4096"#, "vlan 4096 is out of range"),
            (r#""vlan":5,"qos":8"#, "qos 8 is out of range"),
            (r#""vlan":0,"qos":1"#, "needs a VLAN"),
            (r#""vlan":5,"proto":"802.1x""#, "802.1x"),
            (r#""max_tx_rate":10,"min_tx_rate":20"#, "below min_tx_rate"),
            (r#""state":"up""#, "expected auto, enable or disable"),
            (r#""mac":"01:00:5e:00:00:01""#, "multicast"),
            (r#""mac":"02:00:00:00:00:01""#, "already pf's"),
            (r#""mac":"zz""#, "invalid MAC"),
            (r#""colour":"red""#, "unknown field"),
        ] {
            let v = req(
                &sw,
                &format!(r#"{{"version":2,"cmd":"set","partition":"vf0",{bad}}}"#),
            );
            assert_eq!(v["ok"], false, "{bad}");
            assert!(v["error"].as_str().unwrap().contains(needle), "{bad}: {v}");
        }
        let now = req(&sw, r#"{"version":2,"cmd":"show","partition":"vf0"}"#);
        assert_eq!(now["result"]["partitions"][0]["vlan"], 5, "unchanged");
        let none = req(
            &sw,
            r#"{"version":2,"cmd":"set","partition":"vf7","vlan":1}"#,
        );
        assert!(none["error"]
            .as_str()
            .unwrap()
            .contains("no partition named \"vf7\""));
    }

    #[test]
    fn version_2_shows_uplinks_and_the_effective_link() {
        use backend::offload::{RxOffloads, TxOffloads};
        use backend::uplink::{Uplink, UplinkConfig};
        let mk = |id: usize, role| {
            Arc::new(Partition::new(
                id,
                role,
                PartitionConfig {
                    mac: backend::mac::MacAddr([2, 0, 0, 0, 0, id as u8 + 1]),
                    queue_pairs: 1,
                    queue_size: 256,
                    mtu: 1500,
                },
            ))
        };
        let up = Arc::new(Uplink::new(
            0,
            UplinkConfig {
                name: "uplink0".into(),
                kind: "stream",
                spec: "stream:/tmp/w.sock".into(),
                mtu: 1500,
                offloads: RxOffloads::default(),
                accepts: TxOffloads::default(),
            },
        ));
        let sw = Switch::with_uplinks(vec![mk(0, Role::Pf), mk(1, Role::Vf(0))], vec![up]).unwrap();
        let v = req(&sw, r#"{"version":2,"cmd":"show"}"#)["result"].clone();
        let u = &v["uplinks"][0];
        assert_eq!(
            (&u["name"], &u["kind"], &u["link"], &u["mtu"]),
            (
                &json!("uplink0"),
                &json!("stream"),
                &json!("down"),
                &json!(1500)
            )
        );
        assert_eq!(u["counters"]["drop_bad_frame"], 0);
        assert_eq!(u["counters"]["rx_packets"], 0);
        assert_eq!(
            v["partitions"][1]["link"], "down",
            "auto follows the uplink, which has no peer"
        );
        sw.set_carrier(0, true);
        let v = req(&sw, r#"{"version":2,"cmd":"show"}"#)["result"].clone();
        assert_eq!(v["uplinks"][0]["link"], "up");
        assert_eq!(v["partitions"][1]["link"], "up");
        let v1 = req(&sw, r#"{"version":1,"cmd":"show"}"#)["result"].clone();
        assert!(v1.get("uplinks").is_none(), "{v1}");
        let dump = req(&sw, r#"{"version":2,"cmd":"dump-config"}"#)["result"]["toml"]
            .as_str()
            .unwrap()
            .to_string();
        let back: crate::config::Settings = toml::from_str(&dump).unwrap();
        assert_eq!(
            back.uplink,
            Some(vec![crate::config::UplinkSettings::Stream {
                path: "/tmp/w.sock".into(),
                mtu: None
            }]),
            "{dump}"
        );
        let text = crate::ctl::uplink_lines(&v, true);
        assert!(
            text.starts_with("    uplink0  stream:/tmp/w.sock mtu 1500, link up, peers 0"),
            "{text}"
        );
    }

    #[test]
    fn dump_config_round_trips_through_the_config_loader() {
        let sw = switch();
        req(
            &sw,
            r#"{"version":2,"cmd":"set","partition":"vf0","vlan":7,"spoofchk":false,"mac":"02:00:00:00:00:77"}"#,
        );
        let info = DaemonInfo {
            socket_dir: "/tmp/x".into(),
            poll_us: 50,
            linger_us: 7,
        };
        let text = handle(r#"{"version":2,"cmd":"dump-config"}"#, &sw, &info)["result"]["toml"]
            .as_str()
            .unwrap()
            .to_string();
        let s: crate::config::Settings = toml::from_str(&text).unwrap();
        let c = crate::config::Config::resolve(s).unwrap();
        assert_eq!(c.poll_us, 50);
        assert_eq!(c.linger_us, 7);
        assert_eq!(c.partitions[1].1.mac.to_string(), "02:00:00:00:00:77");
        assert_eq!(c.admin[1].vlan, Some(7));
        assert_eq!(c.admin[1].spoofchk, Some(false));
        assert_eq!(c.partitions[0].1.queue_pairs, 2);
    }
}
