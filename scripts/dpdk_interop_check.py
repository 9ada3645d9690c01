#!/usr/bin/env python3
"""Checks for scripts/dpdk-interop.sh (python3, stdlib only).

Subcommands:
  state --snap FILE --state S NAME... [--verbose]
      Exit 0 if every named partition of the `ctl show -j` snapshot is in state S.
  size --size N --testpmd-log LOG --before F --traffic F --after F --mac0 M --mac1 M
      One queue size's run: testpmd (two virtio_user ports on vf0 and vf1, mac forwarding), the
      daemon's snapshots before testpmd started, after its traffic stopped, and after it quit.
      Prints one table row; exit 1 if any check fails.

Checks of `size` (delta = traffic - before, on the daemon's per-partition counters):
  - testpmd: each port has the MAC of its VF; each forwarded (RX and TX) frames; no RX-errors
    or TX-errors;
  - the daemon: vf0 and vf1 each sent and received frames; no drop_malformed_chain,
    drop_spoofed_source, drop_unknown_destination, drop_hairpin or drop_destination_down on
    either (drop_no_rx_buffer is back-pressure and only reported); no counter of any other
    partition moved;
  - consistency: the daemon took exactly the frames testpmd's ports sent (vfN tx_packets ==
    port N TX-packets), and delivered to each port at least what it received and at most one
    ring (N) more (frames left in the RX ring when forwarding stopped);
  - lifecycle: vf0 and vf1 were `waiting` before, `waiting` after testpmd quit, with exactly one
    more connect and one more disconnect each, and at least one more start.
"""

import argparse
import json
import re
import sys

BAD_DROPS = ("drop_malformed_chain", "drop_spoofed_source", "drop_unknown_destination",
             "drop_hairpin", "drop_destination_down")

NIC_RE = re.compile(r"NIC statistics for port (\d+)")
FWD_RE = re.compile(r"Forward statistics for port (\d+)")
INFO_RE = re.compile(r"Infos for port (\d+)")
MAC_RE = re.compile(r"MAC address: ([0-9A-Fa-f:]{17})")
NUM_FIELDS = ("RX-packets", "RX-missed", "RX-errors", "RX-nombuf", "RX-dropped", "TX-packets",
              "TX-errors", "TX-dropped")
FIELD_RE = re.compile(r"(" + "|".join(NUM_FIELDS) + r"):\s+(\d+)")


def load(path):
    with open(path, encoding="utf-8") as f:
        return {p["name"]: p for p in json.load(f)["partitions"]}


def testpmd_blocks(text):
    """The last block of each kind per port: NIC statistics, forward statistics, port info."""
    nic, fwd, info = {}, {}, {}
    cur = None
    for line in text.splitlines():
        for rx, table in ((NIC_RE, nic), (FWD_RE, fwd), (INFO_RE, info)):
            m = rx.search(line)
            if m:
                cur = table[int(m.group(1))] = {}
                break
        else:
            if cur is None:
                continue
            if "Accumulated forward statistics" in line:
                cur = None
                continue
            for k, v in FIELD_RE.findall(line):
                cur.setdefault(k, int(v))
            m = MAC_RE.search(line)
            if m:
                cur.setdefault("mac", m.group(1).lower())
    return nic, fwd, info


def cmd_state(a):
    parts = load(a.snap)
    states = {n: parts[n]["state"] for n in a.names}
    if a.verbose:
        print(", ".join(f"{n} {s}" for n, s in states.items()))
    return 0 if all(s == a.state for s in states.values()) else 1


def cmd_size(a):
    n = a.size
    with open(a.testpmd_log, errors="replace") as f:
        nic, fwd, info = testpmd_blocks(f.read())
    before, traffic, after = load(a.before), load(a.traffic), load(a.after)
    fails = []

    def check(ok, what):
        if not ok:
            fails.append(what)

    macs = {0: a.mac0.lower(), 1: a.mac1.lower()}
    vfs = {0: "vf0", 1: "vf1"}
    for p in (0, 1):
        if p not in nic or p not in fwd:
            fails.append(f"port {p}: no statistics in the testpmd log")
            continue
        check(info.get(p, {}).get("mac") == macs[p],
              f"port {p} MAC {info.get(p, {}).get('mac')} != {macs[p]}")
        check(fwd[p].get("RX-packets", 0) > 0, f"port {p} forwarded no RX frames")
        check(fwd[p].get("TX-packets", 0) > 0, f"port {p} forwarded no TX frames")
        check(nic[p].get("RX-errors", 0) == 0, f"port {p} RX-errors {nic[p].get('RX-errors')}")
        check(nic[p].get("TX-errors", 0) == 0, f"port {p} TX-errors {nic[p].get('TX-errors')}")

    delta = {}
    for name, part in traffic.items():
        c0 = before[name]["counters"]
        delta[name] = {k: v - c0.get(k, 0) for k, v in part["counters"].items()}
        if name in vfs.values():
            continue
        moved = {k: v for k, v in delta[name].items() if v}
        check(not moved, f"{name} (no frontend) counters moved: {moved}")

    for p, name in vfs.items():
        d = delta[name]
        check(d["tx_packets"] > 0, f"{name} sent nothing")
        check(d["rx_packets"] > 0, f"{name} received nothing")
        for k in BAD_DROPS:
            check(d.get(k, 0) == 0, f"{name} {k} {d.get(k)}")
        if p in nic:
            tp_tx, tp_rx = nic[p].get("TX-packets", -1), nic[p].get("RX-packets", -1)
            check(d["tx_packets"] == tp_tx,
                  f"{name} tx_packets {d['tx_packets']} != port {p} TX-packets {tp_tx}")
            check(0 <= d["rx_packets"] - tp_rx <= n,
                  f"{name} rx_packets {d['rx_packets']} vs port {p} RX-packets {tp_rx}: "
                  f"more than one ring ({n}) apart")
        b, e = before[name], after[name]
        check(b["state"] == "waiting", f"{name} was {b['state']} before testpmd started")
        check(e["state"] == "waiting", f"{name} is {e['state']} after testpmd quit")
        check(e["connects"] - b["connects"] == 1,
              f"{name} connects +{e['connects'] - b['connects']} (want +1)")
        check(e["disconnects"] - b["disconnects"] == 1,
              f"{name} disconnects +{e['disconnects'] - b['disconnects']} (want +1)")
        check(e["starts"] - b["starts"] >= 1, f"{name} never started")

    def port(p):
        return f"port{p} rx/tx {fwd.get(p, {}).get('RX-packets')}/{fwd.get(p, {}).get('TX-packets')}"

    detail = (f"{port(0)}, {port(1)}; daemon vf0 tx {delta['vf0']['tx_packets']} "
              f"vf1 tx {delta['vf1']['tx_packets']}, drop_no_rx_buffer "
              f"{delta['vf0'].get('drop_no_rx_buffer', 0)}/{delta['vf1'].get('drop_no_rx_buffer', 0)}")
    if fails:
        print(f"| {n} | FAIL | " + "; ".join(fails) + f" ({detail})")
        return 1
    print(f"| {n} | PASS | {detail}; back to waiting")
    return 0


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("state")
    p.add_argument("--snap", required=True)
    p.add_argument("--state", required=True)
    p.add_argument("--verbose", action="store_true")
    p.add_argument("names", nargs="+")
    p = sub.add_parser("size")
    p.add_argument("--size", type=int, required=True)
    for k in ("testpmd-log", "before", "traffic", "after", "mac0", "mac1"):
        p.add_argument("--" + k, required=True)
    a = ap.parse_args()
    return cmd_state(a) if a.cmd == "state" else cmd_size(a)


if __name__ == "__main__":
    sys.exit(main())
