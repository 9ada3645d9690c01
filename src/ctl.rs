//! `vhost-user-sriov-net ctl`: a client of the control socket.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

use serde_json::{json, Value};

use crate::control::PROTOCOL_VERSION;

pub fn request(socket_dir: &Path, req: &Value) -> Result<Value, String> {
    let path = socket_dir.join("control.sock");
    let mut s = UnixStream::connect(&path)
        .map_err(|e| format!("cannot connect to {}: {e}", path.display()))?;
    let _ = s.set_read_timeout(Some(Duration::from_secs(10)));
    writeln!(s, "{req}").map_err(|e| format!("cannot send request: {e}"))?;
    let mut line = String::new();
    BufReader::new(&s)
        .read_line(&mut line)
        .map_err(|e| format!("no reply: {e}"))?;
    let v: Value = serde_json::from_str(&line).map_err(|e| format!("unreadable reply: {e}"))?;
    if v["ok"] == true {
        Ok(v["result"].clone())
    } else {
        Err(v["error"].as_str().unwrap_or("unknown error").to_string())
    }
}

/// Why a `ctl` command failed: the operator's input (exit status 2), or reaching the daemon.
#[derive(Debug, thiserror::Error)]
pub enum CtlError {
    #[error("{0}")]
    BadInput(String),
    #[error("{0}")]
    Daemon(String),
}

fn call(socket_dir: &Path, req: &Value) -> Result<Value, CtlError> {
    match request(socket_dir, req) {
        Ok(v) => Ok(v),
        Err(e) if e.starts_with("cannot connect") || e.starts_with("no reply") => {
            Err(CtlError::Daemon(e))
        }
        // The daemon answered: it refused what was asked.
        Err(e) => Err(CtlError::BadInput(e)),
    }
}

pub fn show(
    socket_dir: &Path,
    partition: Option<&str>,
    json_out: bool,
    stats: bool,
) -> Result<String, CtlError> {
    let mut req = json!({"version": PROTOCOL_VERSION, "cmd": "show"});
    if let Some(p) = partition {
        req["partition"] = json!(p);
    }
    let v = match call(socket_dir, &req) {
        // A daemon from before version 2 answers `show` in version 1.
        Err(CtlError::BadInput(e)) if e.starts_with("unsupported protocol version") => {
            req["version"] = json!(1);
            call(socket_dir, &req)?
        }
        r => r?,
    };
    if json_out {
        return serde_json::to_string_pretty(&v).map_err(|e| CtlError::Daemon(e.to_string()));
    }
    Ok(link_lines(&v, stats) + &uplink_lines(&v, stats))
}

/// One line per uplink after the partitions: its kind, spec, link and peer events; with
/// `stats`, its counters as `ip -s link` prints a port's (RX from the wire, TX onto it).
pub fn uplink_lines(v: &Value, stats: bool) -> String {
    let mut out = String::new();
    for u in v["uplinks"].as_array().map(|a| a.as_slice()).unwrap_or(&[]) {
        let n = |k: &str| u[k].as_u64().unwrap_or(0);
        out += &format!(
            "    {:<8} {} mtu {}, link {}",
            u["name"].as_str().unwrap_or("?"),
            u["spec"].as_str().unwrap_or("?"),
            n("mtu"),
            u["link"].as_str().unwrap_or("?"),
        );
        if u["kind"] == "stream" {
            out += &format!(", peers {} (refused {})", n("connects"), n("refused"));
        } else if u["kind"] == "tap" {
            out += &format!(
                ", queues {}, opened {} (lost {})",
                n("queues"),
                n("connects"),
                n("disconnects")
            );
        }
        out += &format!(", learned {}\n", n("learned_macs"));
        if stats {
            let c = &u["counters"];
            let n = |k: &str| c[k].as_u64().unwrap_or(0);
            let drops = |keys: &[&str]| keys.iter().map(|k| n(k)).sum::<u64>();
            out += "    RX: bytes  packets  mcast   bcast   dropped\n";
            out += &format!(
                "    {:<10} {:<8} {:<7} {:<7} {}\n",
                n("rx_bytes"),
                n("rx_packets"),
                n("rx_multicast"),
                n("rx_broadcast"),
                drops(&[
                    "drop_bad_frame",
                    "drop_oversize",
                    "drop_unknown_destination",
                    "drop_spoofed_source",
                    "drop_vlan",
                    "drop_destination_down",
                ])
            );
            out += "    TX: bytes  packets  dropped\n";
            out += &format!(
                "    {:<10} {:<8} {}\n",
                n("tx_bytes"),
                n("tx_packets"),
                drops(&["drop_tx_busy", "drop_link_down"])
            );
        }
    }
    out
}

/// `ctl vf N ...` / `ctl pf ...`: `words` in `ip link set ... vf N` syntax.
pub fn set(socket_dir: &Path, partition: &str, words: &[String]) -> Result<String, CtlError> {
    let mut req = parse_settings(words).map_err(CtlError::BadInput)?;
    req.insert("version".into(), json!(PROTOCOL_VERSION));
    req.insert("cmd".into(), json!("set"));
    req.insert("partition".into(), json!(partition));
    let v = call(socket_dir, &Value::Object(req))?;
    Ok(link_lines(&json!({"partitions": [v]}), false))
}

/// `ctl capture PARTITION -w FILE [-c COUNT]`: the daemon's pcap stream into FILE ("-":
/// stdout), until COUNT frames (0: until interrupted). Returns a summary line.
pub fn capture(
    socket_dir: &Path,
    partition: &str,
    file: &Path,
    count: u64,
) -> Result<String, CtlError> {
    let path = socket_dir.join("control.sock");
    let mut s = UnixStream::connect(&path)
        .map_err(|e| CtlError::Daemon(format!("cannot connect to {}: {e}", path.display())))?;
    let req = json!({"version": PROTOCOL_VERSION, "cmd": "capture", "partition": partition, "count": count});
    writeln!(s, "{req}").map_err(|e| CtlError::Daemon(format!("cannot send request: {e}")))?;
    let mut r = BufReader::new(s);
    let mut line = String::new();
    r.read_line(&mut line)
        .map_err(|e| CtlError::Daemon(format!("no reply: {e}")))?;
    let v: Value = serde_json::from_str(&line)
        .map_err(|e| CtlError::Daemon(format!("unreadable reply: {e}")))?;
    if v["ok"] != true {
        return Err(CtlError::BadInput(
            v["error"].as_str().unwrap_or("unknown error").to_string(),
        ));
    }
    let mut out: Box<dyn Write> = if file == Path::new("-") {
        Box::new(std::io::stdout())
    } else {
        Box::new(
            std::fs::File::create(file)
                .map_err(|e| CtlError::BadInput(format!("{}: {e}", file.display())))?,
        )
    };
    let bytes = std::io::copy(&mut r, &mut out)
        .map_err(|e| CtlError::Daemon(format!("capture interrupted: {e}")))?;
    out.flush()
        .map_err(|e| CtlError::Daemon(format!("cannot write the capture: {e}")))?;
    Ok(format!(
        "{partition}: {bytes} bytes of pcap written to {}\n",
        file.display()
    ))
}

pub fn dump_config(socket_dir: &Path) -> Result<String, CtlError> {
    let v = call(
        socket_dir,
        &json!({"version": PROTOCOL_VERSION, "cmd": "dump-config"}),
    )?;
    Ok(v["toml"].as_str().unwrap_or_default().to_string())
}

/// iproute2's VF settings as the control protocol's fields. Values are checked by the daemon
/// (one set of rules for every client); here only the grammar.
pub fn parse_settings(words: &[String]) -> Result<serde_json::Map<String, Value>, String> {
    let mut out = serde_json::Map::new();
    let mut it = words.iter();
    while let Some(key) = it.next() {
        let mut value = || {
            it.next()
                .ok_or_else(|| format!("{key} needs a value"))
                .map(String::as_str)
        };
        let number = |v: &str| {
            v.parse::<u32>()
                .map_err(|_| format!("{key} {v:?}: expected a non-negative integer"))
        };
        let on_off = |v: &str| match v {
            "on" => Ok(true),
            "off" => Ok(false),
            _ => Err(format!("{key} {v:?}: expected on or off")),
        };
        let (field, v) = match key.as_str() {
            "mac" => ("mac", json!(value()?)),
            "vlan" => ("vlan", json!(number(value()?)?)),
            "qos" => ("qos", json!(number(value()?)?)),
            "proto" => ("proto", json!(value()?)),
            // `rate` is iproute2's older name for max_tx_rate.
            "max_tx_rate" | "rate" => ("max_tx_rate", json!(number(value()?)?)),
            "min_tx_rate" => ("min_tx_rate", json!(number(value()?)?)),
            "spoofchk" => ("spoofchk", json!(on_off(value()?)?)),
            "trust" => ("trust", json!(on_off(value()?)?)),
            "state" => ("state", json!(value()?)),
            other => {
                return Err(format!(
                    "unknown setting {other:?} (mac, vlan, qos, proto, max_tx_rate, min_tx_rate, spoofchk, trust, state)"
                ))
            }
        };
        if out.insert(field.into(), v).is_some() {
            return Err(format!("{key} given twice"));
        }
    }
    if out.is_empty() {
        return Err("nothing to set".into());
    }
    Ok(out)
}

/// One line per partition in the shape of `ip link show PF`'s VF lines; with `stats`, the
/// counters below each as `ip -s link` prints them.
pub fn link_lines(v: &Value, stats: bool) -> String {
    let mut out = String::new();
    for p in v["partitions"]
        .as_array()
        .map(|a| a.as_slice())
        .unwrap_or(&[])
    {
        let who = match p["vf"].as_u64() {
            Some(n) => format!("vf {n}"),
            None => "pf".to_string(),
        };
        let mut line = format!(
            "    {who:<8} link/ether {} brd ff:ff:ff:ff:ff:ff",
            p["mac"].as_str().unwrap_or("?")
        );
        let vlan = p["vlan"].as_u64().unwrap_or(0);
        if vlan != 0 {
            line += &format!(", vlan {vlan}");
            let qos = p["qos"].as_u64().unwrap_or(0);
            if qos != 0 {
                line += &format!(", qos {qos}");
            }
            if p["vlan_protocol"] == "802.1ad" {
                line += ", vlan protocol 802.1ad";
            }
        }
        let on = |k: &str| if p[k] == true { "on" } else { "off" };
        line += &format!(
            ", spoof checking {}, link-state {}, trust {}",
            on("spoofchk"),
            p["link_state"].as_str().unwrap_or("auto"),
            on("trust")
        );
        for k in ["max_tx_rate", "min_tx_rate"] {
            let r = p[k].as_u64().unwrap_or(0);
            if r != 0 {
                line += &format!(", {k} {r}Mbps");
            }
        }
        if let (Some(g), Some(s)) = (p["guest_mac"].as_str(), p["switch_mac"].as_str()) {
            if g != s {
                line += &format!(", guest still uses {g}");
            }
        }
        line += &format!(", {}", p["state"].as_str().unwrap_or("?"));
        out += &line;
        out.push('\n');
        if stats {
            let c = &p["counters"];
            let n = |k: &str| c[k].as_u64().unwrap_or(0);
            let drops = |dir: &str| -> u64 {
                c.as_object()
                    .map(|o| {
                        o.iter()
                            .filter(|(k, _)| rx_or_tx_drop(k) == Some(dir))
                            .map(|(_, v)| v.as_u64().unwrap_or(0))
                            .sum()
                    })
                    .unwrap_or(0)
            };
            out += "    RX: bytes  packets  mcast   bcast   dropped\n";
            out += &format!(
                "    {:<10} {:<8} {:<7} {:<7} {}\n",
                n("rx_bytes"),
                n("rx_packets"),
                n("rx_multicast"),
                n("rx_broadcast"),
                drops("rx")
            );
            out += "    TX: bytes  packets  dropped\n";
            out += &format!(
                "    {:<10} {:<8} {}\n",
                n("tx_bytes"),
                n("tx_packets"),
                drops("tx")
            );
        }
    }
    out
}

/// Which side a drop counter belongs to in `ip -s link`'s terms: what the partition would have
/// received (no buffer, its link down) or what it sent.
fn rx_or_tx_drop(key: &str) -> Option<&'static str> {
    match key {
        "drop_no_rx_buffer" | "drop_link_down" => Some("rx"),
        k if k.starts_with("drop_") => Some("tx"),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn words(s: &str) -> Vec<String> {
        s.split_whitespace().map(String::from).collect()
    }

    #[test]
    fn settings_in_iproute2_words() {
        let m = parse_settings(&words(
            "mac 02:00:00:00:00:09 vlan 5 qos 1 proto 802.1ad rate 100 min_tx_rate 10 spoofchk off trust on state disable",
        ))
        .unwrap();
        assert_eq!(
            Value::Object(m),
            json!({"mac": "02:00:00:00:00:09", "vlan": 5, "qos": 1, "proto": "802.1ad",
                   "max_tx_rate": 100, "min_tx_rate": 10, "spoofchk": false, "trust": true,
                   "state": "disable"})
        );
        for (bad, needle) in [
            ("vlan", "vlan needs a value"),
            ("vlan five", "expected a non-negative integer"),
            ("spoofchk yes", "expected on or off"),
            ("colour red", "unknown setting"),
            ("vlan 1 vlan 2", "given twice"),
            ("", "nothing to set"),
        ] {
            let e = parse_settings(&words(bad)).unwrap_err();
            assert!(e.contains(needle), "{bad}: {e}");
        }
    }

    #[test]
    fn lines_look_like_ip_link_show() {
        let v = json!({"partitions": [{
            "name": "vf0", "vf": 0, "mac": "02:53:52:00:00:01", "state": "started",
            "vlan": 5, "qos": 1, "vlan_protocol": "802.1ad", "spoofchk": true,
            "link_state": "enable", "trust": false, "max_tx_rate": 100, "min_tx_rate": 0,
            "counters": {"rx_packets": 5, "rx_bytes": 300, "tx_packets": 4, "tx_bytes": 240,
                "rx_broadcast": 1, "rx_multicast": 0, "drop_no_rx_buffer": 2,
                "drop_spoofed_source": 3}
        }, {"name": "pf", "vf": null, "mac": "02:53:52:00:00:00", "state": "waiting",
            "vlan": 0, "spoofchk": false, "link_state": "auto", "trust": true, "counters": {}}]});
        let t = link_lines(&v, false);
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(
            lines[0],
            "    vf 0     link/ether 02:53:52:00:00:01 brd ff:ff:ff:ff:ff:ff, vlan 5, qos 1, \
             vlan protocol 802.1ad, spoof checking on, link-state enable, trust off, \
             max_tx_rate 100Mbps, started"
        );
        assert_eq!(
            lines[1],
            "    pf       link/ether 02:53:52:00:00:00 brd ff:ff:ff:ff:ff:ff, spoof checking off, \
             link-state auto, trust on, waiting"
        );
        let s = link_lines(&v, true);
        let l: Vec<&str> = s.lines().collect();
        assert_eq!(l[1].trim(), "RX: bytes  packets  mcast   bcast   dropped");
        assert_eq!(
            l[2].split_whitespace().collect::<Vec<_>>(),
            ["300", "5", "0", "1", "2"]
        );
        assert_eq!(
            l[4].split_whitespace().collect::<Vec<_>>(),
            ["240", "4", "3"]
        );
    }
}
