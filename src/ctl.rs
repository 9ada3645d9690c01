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

pub fn show(socket_dir: &Path, partition: Option<&str>, json_out: bool) -> Result<String, String> {
    let mut req = json!({"version": PROTOCOL_VERSION, "cmd": "show"});
    if let Some(p) = partition {
        req["partition"] = json!(p);
    }
    let v = request(socket_dir, &req)?;
    if json_out {
        return serde_json::to_string_pretty(&v).map_err(|e| e.to_string());
    }
    Ok(table(&v))
}

/// One row per partition; drop reasons with a non-zero count are listed at the end of the row.
pub fn table(v: &Value) -> String {
    let cols = [
        ("rx_packets", "RX_PKTS"),
        ("rx_bytes", "RX_BYTES"),
        ("tx_packets", "TX_PKTS"),
        ("tx_bytes", "TX_BYTES"),
        ("rx_broadcast", "RX_BCAST"),
        ("rx_multicast", "RX_MCAST"),
        ("tx_broadcast", "TX_BCAST"),
        ("tx_multicast", "TX_MCAST"),
    ];
    let mut rows: Vec<Vec<String>> = Vec::new();
    let mut head = vec!["PARTITION", "MAC", "STATE", "QP", "STARTS"];
    head.extend(cols.iter().map(|c| c.1));
    head.push("DROPS");
    rows.push(head.iter().map(|s| s.to_string()).collect());
    for p in v["partitions"]
        .as_array()
        .map(|a| a.as_slice())
        .unwrap_or(&[])
    {
        let c = &p["counters"];
        let mut r = vec![
            p["name"].as_str().unwrap_or("?").to_string(),
            p["mac"].as_str().unwrap_or("?").to_string(),
            p["state"].as_str().unwrap_or("?").to_string(),
            p["queue_pairs"].to_string(),
            p["starts"].to_string(),
        ];
        r.extend(cols.iter().map(|(k, _)| c[*k].to_string()));
        let drops: Vec<String> = c
            .as_object()
            .map(|o| {
                o.iter()
                    .filter(|(k, v)| k.starts_with("drop_") && v.as_u64().unwrap_or(0) > 0)
                    .map(|(k, v)| format!("{}={v}", &k[5..]))
                    .collect()
            })
            .unwrap_or_default();
        r.push(if drops.is_empty() {
            "-".into()
        } else {
            drops.join(",")
        });
        rows.push(r);
    }
    let widths: Vec<usize> = (0..rows[0].len())
        .map(|i| rows.iter().map(|r| r[i].len()).max().unwrap_or(0))
        .collect();
    let mut out = String::new();
    for r in rows {
        let line: Vec<String> = r
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        out.push_str(line.join("  ").trim_end());
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_shows_counters_and_nonzero_drops() {
        let v = json!({"partitions": [{
            "name": "vf0", "mac": "02:53:52:00:00:01", "state": "started", "queue_pairs": 1, "starts": 2,
            "counters": {"rx_packets": 5, "rx_bytes": 300, "tx_packets": 4, "tx_bytes": 240,
                "rx_broadcast": 1, "rx_multicast": 0, "tx_broadcast": 0, "tx_multicast": 0,
                "drop_no_rx_buffer": 0, "drop_spoofed_source": 3}
        }]});
        let t = table(&v);
        let lines: Vec<&str> = t.lines().collect();
        assert!(lines[0].starts_with("PARTITION"));
        assert!(lines[1].contains("02:53:52:00:00:01"));
        assert!(lines[1].contains("started"));
        assert!(lines[1].ends_with("spoofed_source=3"));
        assert!(!lines[1].contains("no_rx_buffer"));
    }
}
