//! The control socket: newline-delimited JSON requests and replies over `DIR/control.sock`.
//! Protocol version 1 (documented in README). A bad request gets an error reply; the
//! connection and the daemon carry on.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::sync::Arc;
use std::thread;
use std::time::Duration;

use backend::partition::{Partition, Role};
use backend::switch::Switch;
use serde::Deserialize;
use serde_json::{json, Value};

pub const PROTOCOL_VERSION: u32 = 1;
/// Longest request line accepted; anything longer is refused without buffering it all.
const MAX_REQUEST: u64 = 64 * 1024;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Request {
    version: u32,
    cmd: String,
    #[serde(default)]
    partition: Option<String>,
}

pub fn spawn(
    listener: UnixListener,
    switch: Arc<Switch>,
) -> std::io::Result<thread::JoinHandle<()>> {
    thread::Builder::new()
        .name("control".into())
        .spawn(move || {
            for conn in listener.incoming() {
                match conn {
                    Ok(stream) => {
                        let sw = switch.clone();
                        let spawned = thread::Builder::new()
                            .name("control-conn".into())
                            .spawn(move || serve_conn(stream, &sw));
                        if let Err(e) = spawned {
                            log::warn!("control: cannot start connection thread: {e}");
                        }
                    }
                    Err(e) => log::warn!("control: accept failed: {e}"),
                }
            }
        })
}

fn serve_conn(stream: UnixStream, switch: &Switch) {
    // A silent client must not pin a thread forever.
    let _ = stream.set_read_timeout(Some(Duration::from_secs(30)));
    let Ok(mut writer) = stream.try_clone() else {
        return;
    };
    let mut reader = BufReader::new(stream);
    loop {
        let mut line = String::new();
        let n = match (&mut reader).take(MAX_REQUEST + 1).read_line(&mut line) {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        let reply = if n as u64 > MAX_REQUEST {
            error_reply(&format!("request longer than {MAX_REQUEST} bytes"))
        } else {
            handle(line.trim(), switch)
        };
        if writeln!(writer, "{reply}").is_err() {
            return;
        }
        if n as u64 > MAX_REQUEST {
            return;
        }
    }
}

fn error_reply(msg: &str) -> Value {
    json!({"version": PROTOCOL_VERSION, "ok": false, "error": msg})
}

/// Answers one request line.
pub fn handle(line: &str, switch: &Switch) -> Value {
    let req: Request = match serde_json::from_str(line) {
        Ok(r) => r,
        Err(e) => return error_reply(&format!("malformed request: {e}")),
    };
    if req.version != PROTOCOL_VERSION {
        return error_reply(&format!(
            "unsupported protocol version {} (this daemon speaks {PROTOCOL_VERSION})",
            req.version
        ));
    }
    let result = match req.cmd.as_str() {
        "show" => show(switch, req.partition.as_deref()),
        "version" => Ok(json!({"version": PROTOCOL_VERSION, "daemon": env!("CARGO_PKG_VERSION")})),
        other => Err(format!("unknown command {other:?} (known: show, version)")),
    };
    match result {
        Ok(v) => json!({"version": PROTOCOL_VERSION, "ok": true, "result": v}),
        Err(e) => error_reply(&e),
    }
}

fn show(switch: &Switch, only: Option<&str>) -> Result<Value, String> {
    let parts: Vec<Value> = switch
        .partitions()
        .iter()
        .filter(|p| only.is_none_or(|n| p.name() == n))
        .map(|p| partition_json(p))
        .collect();
    if let (Some(n), true) = (only, parts.is_empty()) {
        return Err(format!("no partition named {n:?}"));
    }
    Ok(json!({"version": PROTOCOL_VERSION, "partitions": parts}))
}

fn partition_json(p: &Partition) -> Value {
    let life = p.lifecycle();
    let queues: Vec<Value> = p
        .counter_snapshots()
        .iter()
        .enumerate()
        .map(|(i, c)| json!({"pair": i, "counters": c}))
        .collect();
    json!({
        "name": p.name(),
        "role": match p.role { Role::Pf => "pf", Role::Vf(_) => "vf" },
        "vf": match p.role { Role::Pf => None, Role::Vf(n) => Some(n) },
        "mac": p.mac(),
        "state": life.state.as_str(),
        "connects": life.connects,
        "disconnects": life.disconnects,
        "starts": life.starts,
        "stops": life.stops,
        "queue_pairs": p.config.queue_pairs,
        "queue_size": p.config.queue_size,
        "mtu": p.config.mtu,
        "spoofchk": p.spoofchk(),
        "counters": p.totals(),
        "queues": queues,
    })
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
        let v = handle(r#"{"version":1,"cmd":"show"}"#, &switch());
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
                r#"{"version":2,"cmd":"show"}"#,
                "unsupported protocol version 2",
            ),
            (r#"{"version":1,"cmd":"frobnicate"}"#, "unknown command"),
            (r#"{"version":1,"cmd":"show","extra":1}"#, "unknown field"),
            (
                r#"{"version":1,"cmd":"show","partition":"vf9"}"#,
                "no partition named",
            ),
            (r#"{"cmd":"show"}"#, "missing field `version`"),
        ] {
            let v = handle(req, &sw);
            assert_eq!(v["ok"], false, "{req}");
            assert!(v["error"].as_str().unwrap().contains(needle), "{req}: {v}");
        }
        let one = handle(r#"{"version":1,"cmd":"show","partition":"pf"}"#, &sw);
        assert_eq!(one["result"]["partitions"].as_array().unwrap().len(), 1);
    }
}
