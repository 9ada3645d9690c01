#!/usr/bin/env python3
"""Evaluate an end-to-end run of scripts/e2e.sh (python3, stdlib only).

Subcommands:
  guest-params --snap FILE [--qemu-args FILE]
      From a `ctl show -j` snapshot, print `VFS=<n>` and `MACS=<pf>,<vf0>,..` (one per line) for the
      guest's kernel command line; with --qemu-args, also check that every partition's MAC is on a
      virtio-net-pci -device line of the daemon's qemu-args output (VFs with sriov-pf=).
  all-waiting --snap FILE
      Exit 0 if every partition of the snapshot is in state "waiting".
  report --results DIR --mode daemon|standin --vfs N --pings P --qemu-rc RC
         [--daemon-alive 0|1] [--daemon-exit RC] [--only IDS] [--default-ids IDS]
      Combine the guest's RESULT lines (DIR/console.log) with the host checks evaluated from the
      snapshots (DIR/snap-<name>.json); print a summary table, write DIR/summary.txt and
      DIR/summary.json; exit 1 on any FAIL or missing result.

Host checks (daemon mode), by scenario; P = pings (= ARP requests in d), "delta" = end - start:
  a  snapshot "a": every partition connected at least once; pf "started" (virtio-pci bound it at boot);
     every VF "connected" with starts == 0 (no VF enabled yet).
  b  snapshot "b": every VF "started" with starts == 1 and stops == 0.
  c  c-start -> c-end: pf rx/tx_packets delta >= P, vf0 >= 2P (pinged by pf, pings vf1), vf1 >= P;
     no drop_* counter (the contract's five or any other the daemon reports) rises on any partition. Drops are not expected at all in this window: the
     guest brings every function up (rx buffers posted) in its own namespace before c-start and runs
     with IPv6 off, so the only frames are ARP and ICMP between started partitions.
     drop_destination_down / drop_unknown_destination / drop_no_rx_buffer can legitimately occur
     while VFs are being enabled or disabled (e, g: floods reaching stopped queues), and are not
     checked there.
  d  d-start -> d-end: vf1 tx_broadcast delta >= P, vf1 rx_broadcast delta == 0 (no reflection),
     every other partition rx_broadcast delta >= P (all functions are up in d).
  e  e-start -> e-end: every VF starts delta == 2 and stops delta == 2; pf starts/stops unchanged.
  f  f-start -> f-end: no starts/stops change anywhere (the refused N -> M touches no device).
  g  g-start -> g-end: vf0 starts delta == 1, every other VF starts delta == 0 and not "started".
  h  QEMU exited by itself with status 0 and the console shows the power-down (no panic); then
     snapshot "final" (taken by the runner after QEMU exited): every partition "waiting" with
     connects == 1 and disconnects == 1 (QEMU never had to reconnect); the daemon was still
     running, and exited 0 on SIGTERM. After a restart (p) that is the new daemon; the last
     snapshot of each daemon killed by a restart has every partition at connects == 1 and
     disconnects == 0 (no reconnect before the kill).
  i  i-down: vf0 link down and stopped; i-vlan: VLANs set; i-vlan -> i-end: VLAN 10 traffic, vf2 heard
     nothing.
  j  (unmanaged PF) j-stub: pf not "started"; j-stub -> j-rebound (the whole time the PF is on
     pci-pf-stub or has no driver): pf starts unchanged and every pf counter unchanged (drops are
     counted on the sender, so the VFs' floods toward the stopped PF do not count on it);
     j-stub -> j-traffic: every VF starts +1, vf0 and vf1 rx/tx >= P; j-traffic -> j-orphan (after
     pci-pf-stub left): no VF stopped, vf0 and vf1 rx/tx >= P; j-orphan -> j-rebound: every VF
     stops +1 (numvfs 0); j-end: pf "started", starts +1 over j-rebound (virtio-pci again).
  k  (PF reset) k-start: pf not "started", every VF "started"; k-start -> k-reset: every VF
     stops +1 and starts +0 (QEMU resets the VFs), pf starts/stops unchanged; k-reset -> k-stale
     (a failed ping later): reported, not checked (Debian 6.12 restarts nothing: its virtio_pci
     has no reset handlers); k-stale -> k-end: every VF starts +1 (numvfs 0 -> N) and is
     "started", vf0 and vf1 rx/tx >= P; k-clean: pf "started"; and the daemon answered throughout
     (every snapshot taken).
  l  (vfio-pci) l-start -> l-vfio: no VF started, pf not "started"; l-vfio -> l-vf: the last VF
     starts +1 and is "started" (handed to virtio-pci), every other VF starts +0; l-end: pf
     "started", and over l-start -> l-end every VF but the last starts +0.
  m  (IOMMU groups) snapshot m: pf and every VF "started" (virtio-net bound them all).
  n  (shared group) n-start -> n-end: no VF started (they are only ever bound to vfio-pci);
     n-stub: pf not "started"; n-end: pf "started".
  o  (many VFs) o-start: pf and every VF "started"; o-start -> o-end: the last VF and pf rx/tx >= P.
  u  (userspace driver, vIOMMU) u-start -> u-end: vf0 tx_packets, rx_packets and
     drop_malformed_chain each +1 or more (the ARP request, the PF's reply, the unmapped IOVA),
     vf0's IOTLB misses grew, pf rx/tx moved (intel-iommu's logged fault for the unmapped IOVA
     0x41000000 is reported when qemu.log has it).
  p  (daemon restart under traffic) restart-p-restart.json: scripts/e2e_sync.py killed the daemon
     with SIGKILL and a new one (another PID) got ready; p-start is the old daemon's snapshot and
     p-end the new one's (daemons.json). p-start: vf0, vf1 and pf "started", every partition at
     connects 1 / disconnects 0. p-end (fresh counters): every partition "started" with connects
     == 1 and disconnects == 0 (QEMU reconnected each socket once and the guest's drivers were
     started again). The guest's two pings ("E2E: restart-gap" lines) got replies again after the
     restart: each reply after the ACK crossed the new daemon both ways, so each partition's
     rx/tx_packets >= the sum of those replies over the pings it is in. The longest gap between
     replies: vf0 -> vf1 (arp_evict_nocarrier=0, the restart's own gap) under
     RESTART_GAP_BOUND_MS; pf -> vf1 (the guest's default, which re-resolves ARP after the carrier
     loss) under that plus ARP_RETRANS_MS. Both gaps and the lost replies are in the row.
Snapshots of different daemons (before and after a restart) are never compared: their counters
start from zero in each daemon (a delta across them is a FAIL).
In stand-in mode (no daemon) the host checks are skipped, except h's QEMU/console part.
"""

import argparse
import json
import os
import re
import sys

IDS = "abcdefghijklmnopqu"
DROPS = ("drop_no_rx_buffer", "drop_spoofed_source", "drop_unknown_destination",
         "drop_destination_down", "drop_malformed_chain")
MAC_RE = re.compile(r"^[0-9a-fA-F]{2}(:[0-9a-fA-F]{2}){5}$")
RESULT_RE = re.compile(r"RESULT ([a-z]) (PASS|FAIL)\b ?(.*)$")
GAP_RE = re.compile(r"E2E: restart-gap (\S+) (.*)$")
# The longest gap between ping replies (every 20 ms) that p accepts across a daemon restart, with
# neighbour entries kept over the carrier loss (arp_evict_nocarrier=0). With reconnect-ms=100
# (qemu-args) it measured 129-260 ms in 16 runs under TCG on a busy 2-vCPU machine (event-driven,
# busy-poll and libvirt); the bound leaves about twice that for slower runs and is half the
# 1.02-1.16 s that reconnect-ms=1000 gave.
RESTART_GAP_BOUND_MS = 500
# Linux's ARP retransmit time (retrans_time_ms): what a guest with the default
# arp_evict_nocarrier=1 may add, its first ARP request lost while the carrier is down.
ARP_RETRANS_MS = 1000


class CheckError(Exception):
    """A host check failed; the message is the detail."""


def load_json(path):
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def partitions(snap):
    # Version 2 added fields; everything read here is in both.
    if snap.get("version") not in (1, 2):
        raise CheckError(f"snapshot version {snap.get('version')!r}, expected 1 or 2")
    parts = {p["name"]: p for p in snap.get("partitions", [])}
    if "pf" not in parts:
        raise CheckError("snapshot has no pf partition")
    return parts


def vf_names(parts):
    vfs = sorted((p for p in parts.values() if p.get("role") == "vf"), key=lambda p: p["vf"])
    names = [p["name"] for p in vfs]
    if names != [f"vf{i}" for i in range(len(names))]:
        raise CheckError(f"VF partitions are {names}, expected vf0..vf{len(names) - 1}")
    return names


# ---------------------------------------------------------------- guest-params / all-waiting

def cmd_guest_params(args):
    try:
        parts = partitions(load_json(args.snap))
        vfs = vf_names(parts)
    except (OSError, ValueError, KeyError, CheckError) as err:
        print(f"e2e_check: bad snapshot {args.snap}: {err}", file=sys.stderr)
        return 1
    names = ["pf"] + vfs
    macs = [parts[n].get("mac", "") for n in names]
    for n, m in zip(names, macs):
        if not MAC_RE.match(m or ""):
            print(f"e2e_check: partition {n} has no valid MAC ({m!r})", file=sys.stderr)
            return 1
    if args.qemu_args:
        with open(args.qemu_args, encoding="utf-8") as f:
            qargs = [line.rstrip("\n") for line in f if line.strip()]
        devices = [a for a in qargs if a.startswith("virtio-net-pci")]
        for n, m in zip(names, macs):
            hits = [d for d in devices if f"mac={m.lower()}" in d.lower()]
            if len(hits) != 1:
                print(f"e2e_check: {n}'s MAC {m} is on {len(hits)} virtio-net-pci devices in "
                      f"{args.qemu_args}, expected 1", file=sys.stderr)
                return 1
            has_owner = any(o.startswith("sriov-pf=") for o in hits[0].split(","))
            if (n != "pf") != has_owner:
                print(f"e2e_check: {n}'s device has {'no ' if n != 'pf' else ''}sriov-pf=: {hits[0]}",
                      file=sys.stderr)
                return 1
    print(f"VFS={len(vfs)}")
    print(f"MACS={compact_macs([m.lower() for m in macs])}")
    return 0


def compact_macs(macs):
    """The guest's sriovnet_macs: the list, or FIRST+COUNT when there are more than 16 and each
    is the one before plus 1 in its last three bytes (255 VFs' list would not fit the kernel's
    2048-byte command line). The guest's fn_mac reads both forms."""
    def low(m):
        return int(m.replace(":", "")[6:], 16)
    if (len(macs) > 16 and all(m[:8] == macs[0][:8] for m in macs)
            and all(low(m) == low(macs[0]) + i for i, m in enumerate(macs))):
        return f"{macs[0]}+{len(macs)}"
    return ",".join(macs)


def cmd_all_waiting(args):
    try:
        parts = partitions(load_json(args.snap))
    except (OSError, ValueError, KeyError, CheckError):
        return 2
    return 0 if all(p.get("state") == "waiting" for p in parts.values()) else 1


# ---------------------------------------------------------------- report

class Snap(dict):
    """A snapshot's partitions by name, with the snapshot's name and the daemon that answered it
    (its index in daemons.json: 0 for the first daemon, 1 after the first restart, ...)."""

    def __init__(self, parts, name, daemon):
        super().__init__(parts)
        self.name = name
        self.daemon = daemon


class Run:
    def __init__(self, args):
        self.args = args
        self.dir = args.results
        self.pings = args.pings
        self.vfs = [f"vf{i}" for i in range(args.vfs)]
        # daemons.json (scripts/e2e_sync.py): each daemon's PID and the snapshots it answered.
        # Without it (stand-in mode, or no snapshots yet) there was one daemon throughout.
        try:
            self.daemons = load_json(os.path.join(self.dir, "daemons.json"))["daemons"]
        except (OSError, ValueError, KeyError):
            self.daemons = [{"pid": None, "snapshots": []}]

    def daemon_of(self, name):
        """The daemon that answered snapshot NAME; one that e2e_sync.py did not take (final) is the
        last daemon's."""
        for i, d in enumerate(self.daemons):
            if name in d.get("snapshots", []):
                return i
        return len(self.daemons) - 1

    def snap(self, name):
        path = os.path.join(self.dir, f"snap-{name}.json")
        if not os.path.exists(path):
            raise CheckError(f"snapshot {name} missing (see sync.log)")
        try:
            return Snap(partitions(load_json(path)), name, self.daemon_of(name))
        except (OSError, ValueError) as err:
            raise CheckError(f"snapshot {name} unreadable: {err}") from err

    def uplinks(self, name):
        """The uplink ports of snapshot `name` (version 2's `uplinks`)."""
        path = os.path.join(self.dir, f"snap-{name}.json")
        try:
            return load_json(path).get("uplinks", [])
        except (OSError, ValueError) as err:
            raise CheckError(f"snapshot {name} unreadable: {err}") from err

    def pair(self, name, first=None):
        start, end = self.snap(first or f"{name}-start"), self.snap(f"{name}-end")
        for n in ["pf"] + self.vfs:
            if n not in start or n not in end:
                raise CheckError(f"partition {n} missing from the {name} snapshots")
        return start, end


def delta(start, end, part, key):
    d0, d1 = getattr(start, "daemon", 0), getattr(end, "daemon", 0)
    if d0 != d1:
        raise CheckError(f"{part} {key}: snapshots {getattr(start, 'name', '?')} and "
                         f"{getattr(end, 'name', '?')} come from different daemons (restarted "
                         "in between): their counters cannot be compared")
    if key in ("starts", "stops"):
        return end[part][key] - start[part][key]
    return end[part]["counters"][key] - start[part]["counters"][key]


def need(cond, msg):
    if not cond:
        raise CheckError(msg)


def host_a(run):
    parts = run.snap("a")
    for n in ["pf"] + run.vfs:
        need(n in parts, f"partition {n} missing")
        need(parts[n]["connects"] >= 1, f"{n} never connected")
    need(parts["pf"]["state"] == "started", f"pf state {parts['pf']['state']}, expected started")
    for n in run.vfs:
        need(parts[n]["state"] == "connected" and parts[n]["starts"] == 0,
             f"{n} state {parts[n]['state']} starts {parts[n]['starts']}, expected connected/0")
    return "pf started, all VFs connected and never started"


def host_b(run):
    parts = run.snap("b")
    for n in run.vfs:
        p = parts[n]
        need(p["state"] == "started" and p["starts"] == 1 and p["stops"] == 0,
             f"{n} state {p['state']} starts {p['starts']} stops {p['stops']}, expected started/1/0")
    return f"all {len(run.vfs)} VFs started once"


def host_c(run):
    s, e = run.pair("c")
    p = run.pings
    want = {"pf": p, "vf0": 2 * p, "vf1": p}
    moved = []
    for n, w in want.items():
        for key in ("rx_packets", "tx_packets"):
            d = delta(s, e, n, key)
            need(d >= w, f"{n} {key} +{d}, expected >= {w}")
        moved.append(f"{n} rx+{delta(s, e, n, 'rx_packets')}/tx+{delta(s, e, n, 'tx_packets')}")
    for n in ["pf"] + run.vfs:
        # Every drop_* counter the daemon reports (the contract's five and any it adds).
        keys = sorted(set(DROPS) | {k for k in e[n]["counters"] if k.startswith("drop_")})
        for key in keys:
            d = delta(s, e, n, key)
            need(d == 0, f"{n} {key} +{d} during the pings")
    note = ", no drops"
    if run.args.iommu:
        # iommu_platform=on: the buffers were IOVAs, so entries were asked for (a guest maps each
        # TX buffer anew) and the daemon held some.
        for n in ("pf", "vf0", "vf1"):
            i0, i1 = s[n].get("iommu") or {}, e[n].get("iommu") or {}
            need(i1.get("platform") is True, f"{n} iommu {i1}: ACCESS_PLATFORM not acked")
            asked = i1.get("misses", 0) - i0.get("misses", 0)
            need(asked > 0, f"{n} IOTLB misses +{asked} during the pings: no buffer was an IOVA")
            moved.append(f"{n} IOTLB misses +{asked}")
        note = ", no drops, every buffer through the IOTLB"
    return ", ".join(moved) + note


def host_d(run):
    s, e = run.pair("d")
    p = run.pings
    d = delta(s, e, "vf1", "tx_broadcast")
    need(d >= p, f"vf1 tx_broadcast +{d}, expected >= {p}")
    d = delta(s, e, "vf1", "rx_broadcast")
    need(d == 0, f"vf1 rx_broadcast +{d}: its own broadcast came back")
    got = []
    for n in ["pf"] + run.vfs:
        if n == "vf1":
            continue
        d = delta(s, e, n, "rx_broadcast")
        need(d >= p, f"{n} rx_broadcast +{d}, expected >= {p}")
        got.append(f"{n}+{d}")
    return f"vf1 tx_broadcast +{delta(s, e, 'vf1', 'tx_broadcast')}, rx_broadcast " + " ".join(got) + ", vf1+0"


def host_e(run):
    s, e = run.pair("e")
    for n in run.vfs:
        st, sp = delta(s, e, n, "starts"), delta(s, e, n, "stops")
        need(st == 2 and sp == 2, f"{n} starts +{st} stops +{sp}, expected +2/+2")
    st, sp = delta(s, e, "pf", "starts"), delta(s, e, "pf", "stops")
    need(st == 0 and sp == 0, f"pf starts +{st} stops +{sp}, expected unchanged")
    return "every VF starts +2 stops +2, pf unchanged"


def host_f(run):
    s, e = run.pair("f")
    for n in ["pf"] + run.vfs:
        st, sp = delta(s, e, n, "starts"), delta(s, e, n, "stops")
        need(st == 0 and sp == 0, f"{n} starts +{st} stops +{sp}, expected unchanged")
    return "no partition started or stopped"


def host_g(run):
    s, e = run.pair("g")
    d = delta(s, e, "vf0", "starts")
    need(d == 1, f"vf0 starts +{d}, expected +1")
    for n in run.vfs[1:]:
        d = delta(s, e, n, "starts")
        need(d == 0, f"{n} starts +{d}, expected +0 (not bound)")
        need(e[n]["state"] != "started", f"{n} state started, but it is not bound")
    return "only vf0 started"


def host_i(run):
    down = run.snap("i-down")
    p = down["vf0"]
    need(p.get("link") == "down", f"vf0 link {p.get('link')!r} while disabled, expected down")
    # QEMU stops a NIC's vhost rings when its link goes down (set_link).
    need(p["state"] == "stopped", f"vf0 state {p['state']} while its link is down, expected stopped")
    vl = run.snap("i-vlan")
    for n, want in (("vf0", 10), ("vf1", 10), ("vf2", 20)):
        need(vl[n].get("vlan") == want, f"{n} vlan {vl[n].get('vlan')}, expected {want}")
    s, e = run.pair("i", first="i-vlan")
    for n in ("vf0", "vf1"):
        d = delta(s, e, n, "rx_packets")
        need(d >= run.pings, f"{n} rx_packets +{d} on VLAN 10, expected >= {run.pings}")
    d = delta(s, e, "vf2", "tx_packets")
    need(d >= 1, f"vf2 tx_packets +{d}: it never tried")
    d = delta(s, e, "vf2", "rx_packets")
    need(d == 0, f"vf2 rx_packets +{d}: VLAN 20 heard VLAN 10")
    tr = run.snap("i-trust")
    v1, v0 = tr["vf1"], tr["vf0"]
    need(v1.get("guest_mac") == "02:aa:00:00:00:01" and v1.get("switch_mac") == "02:aa:00:00:00:01",
         f"trusted vf1: guest_mac {v1.get('guest_mac')} switch_mac {v1.get('switch_mac')}, "
         "expected the MAC its guest set (learned over QMP)")
    need(v0.get("guest_mac") == "02:aa:00:00:00:00" and v0.get("switch_mac") == v0["mac"],
         f"untrusted vf0: guest_mac {v0.get('guest_mac')} switch_mac {v0.get('switch_mac')}, "
         "expected its attempt seen and the admin MAC kept")
    d = delta(e, tr, "vf0", "drop_spoofed_source")
    need(d >= 1, f"vf0 drop_spoofed_source +{d} after its MAC change, expected >= 1")
    return ("vf0 stopped and link down while disabled; VLAN 10 traffic, vf2 (VLAN 20) heard nothing; "
            "trusted vf1's own MAC learned over QMP, untrusted vf0's refused")


def counters_moved(s, e, parts, p, what):
    """Each of PARTS sent and received at least P frames between S and E."""
    out = []
    for n in parts:
        for key in ("rx_packets", "tx_packets"):
            d = delta(s, e, n, key)
            need(d >= p, f"{n} {key} +{d} {what}, expected >= {p}")
        out.append(f"{n} rx+{delta(s, e, n, 'rx_packets')}/tx+{delta(s, e, n, 'tx_packets')}")
    return ", ".join(out)


def not_started(parts, n, snap):
    need(parts[n]["state"] != "started", f"{n} state started in snapshot {snap}")


def host_j(run):
    stub, traffic = run.snap("j-stub"), run.snap("j-traffic")
    orphan, rebound, end = run.snap("j-orphan"), run.snap("j-rebound"), run.snap("j-end")
    for name, snap in (("j-stub", stub), ("j-traffic", traffic), ("j-orphan", orphan),
                       ("j-rebound", rebound)):
        not_started(snap, "pf", name)
        for key in ("starts", "stops"):
            need(snap["pf"][key] == stub["pf"][key],
                 f"pf {key} {stub['pf'][key]} -> {snap['pf'][key]} by {name} (PF on pci-pf-stub)")
        moved = {k: v - stub["pf"]["counters"].get(k, 0) for k, v in snap["pf"]["counters"].items()
                 if v != stub["pf"]["counters"].get(k, 0)}
        need(not moved, f"pf counters moved while on pci-pf-stub / without driver, by {name}: {moved}")
    for n in run.vfs:
        d = delta(stub, traffic, n, "starts")
        need(d == 1, f"{n} starts +{d} on pci-pf-stub's numvfs, expected +1")
        d = delta(traffic, orphan, n, "stops")
        need(d == 0, f"{n} stops +{d} when pci-pf-stub was unbound, expected 0 (SR-IOV left enabled)")
        d = delta(orphan, rebound, n, "stops")
        need(d == 1, f"{n} stops +{d} on numvfs 0, expected +1")
    t1 = counters_moved(stub, traffic, ["vf0", "vf1"], run.pings, "under pci-pf-stub")
    t2 = counters_moved(traffic, orphan, ["vf0", "vf1"], run.pings, "with no PF driver")
    need(end["pf"]["state"] == "started", f"pf state {end['pf']['state']} back on virtio-pci")
    d = delta(rebound, end, "pf", "starts")
    need(d == 1, f"pf starts +{d} back on virtio-pci, expected +1")
    return (f"pf {stub['pf']['state']}, starts and all counters still while off virtio-pci; "
            f"pci-pf-stub: {t1}; no PF driver: {t2}, no VF stopped; pf started again")


def host_k(run):
    start, reset, stale = run.snap("k-start"), run.snap("k-reset"), run.snap("k-stale")
    end, clean = run.snap("k-end"), run.snap("k-clean")
    not_started(start, "pf", "k-start")
    by_guest = []
    for n in run.vfs:
        need(start[n]["state"] == "started", f"{n} state {start[n]['state']} before the reset")
        st, sp = delta(start, reset, n, "starts"), delta(start, reset, n, "stops")
        need(sp == 1, f"{n} stops +{sp} across the PF reset, expected +1 (QEMU resets every VF)")
        need(st == 0, f"{n} starts +{st} during the PF reset itself")
        # Debian 6.12 leaves the VFs reset (virtio_pci has no reset_done): only numvfs 0 -> N
        # starts them again. A kernel that restarts them itself is reported, not failed.
        if delta(reset, stale, n, "starts"):
            by_guest.append(n)
        need(end[n]["state"] == "started", f"{n} state {end[n]['state']} after numvfs 0 -> N")
        d = delta(stale, end, n, "starts")
        need(d == 1, f"{n} starts +{d} on numvfs 0 -> N after the reset, expected +1")
    for key in ("starts", "stops"):
        d = delta(start, end, "pf", key)
        need(d == 0, f"pf {key} +{d} (PF on pci-pf-stub)")
    t = counters_moved(stale, end, ["vf0", "vf1"], run.pings, "after the reset")
    need(clean["pf"]["state"] == "started", f"pf state {clean['pf']['state']} back on virtio-pci")
    again = (f"restarted by the guest after the reset: {' '.join(by_guest)}" if by_guest
             else "none restarted until numvfs 0 -> N")
    return (f"reset: every VF stopped (stops +1, state {reset['vf0']['state']}), {again}; "
            f"numvfs 0 -> N: every VF started, {t}; daemon answered throughout")


def host_l(run):
    start, vfio, vf, end = run.snap("l-start"), run.snap("l-vfio"), run.snap("l-vf"), run.snap("l-end")
    last = run.vfs[-1]
    not_started(vfio, "pf", "l-vfio")
    for n in run.vfs:
        d = delta(start, vfio, n, "starts")
        need(d == 0, f"{n} starts +{d} while captured by vfio-pci")
    d = delta(vfio, vf, last, "starts")
    need(d == 1 and vf[last]["state"] == "started",
         f"{last} starts +{d} state {vf[last]['state']} on virtio-pci, expected +1/started")
    for n in run.vfs[:-1]:
        d = delta(start, end, n, "starts")
        need(d == 0, f"{n} starts +{d}, but it was only ever on vfio-pci")
    need(end["pf"]["state"] == "started", f"pf state {end['pf']['state']} back on virtio-pci")
    return f"no VF started while on vfio-pci, {last} started on virtio-pci, pf started again"


def host_u(run):
    s, e = run.pair("u")
    moved = []
    for key in ("tx_packets", "rx_packets", "drop_malformed_chain"):
        d = delta(s, e, "vf0", key)
        need(d >= 1, f"vf0 {key} +{d} from the userspace driver, expected >= 1")
        moved.append(f"{key} +{d}")
    i0, i1 = s["vf0"].get("iommu") or {}, e["vf0"].get("iommu") or {}
    asked = i1.get("misses", 0) - i0.get("misses", 0)
    need(asked > 0, f"vf0 IOTLB misses +{asked}: the userspace driver's IOVAs never reached the daemon")
    for key in ("rx_packets", "tx_packets"):
        d = delta(s, e, "pf", key)
        need(d >= 1, f"pf {key} +{d} (the ARP request and its reply), expected >= 1")
    # The daemon's MISS for the unmapped descriptor went to QEMU's intel-iommu, which found no
    # mapping for the device. It logs the fault only while its fault recording is not full
    # ("compression of faults": an earlier scenario's fault the guest never cleared), so this is
    # reported, not required.
    try:
        with open(os.path.join(run.dir, "qemu.log"), errors="replace") as f:
            qlog = f.read()
    except OSError:
        qlog = ""
    fault = ", the vIOMMU logged the fault" if "iova=0x41000000" in qlog else ""
    return (f"vf0 driven from guest userspace: {', '.join(moved)} (the unmapped IOVA), IOTLB misses "
            f"+{asked}{fault}; pf answered")


def host_m(run):
    parts = run.snap("m")
    for n in ["pf"] + run.vfs:
        need(parts[n]["state"] == "started", f"{n} state {parts[n]['state']}, expected started")
    return f"pf and {len(run.vfs)} VFs started"


def host_n(run):
    start, stub, end = run.snap("n-start"), run.snap("n-stub"), run.snap("n-end")
    for n in run.vfs:
        d = delta(start, end, n, "starts")
        need(d == 0, f"{n} starts +{d}, but it was only ever on vfio-pci")
    not_started(stub, "pf", "n-stub")
    need(end["pf"]["state"] == "started", f"pf state {end['pf']['state']} back on virtio-pci")
    return "no VF started (vfio-pci only), pf stopped on pci-pf-stub and started again"


def host_o(run):
    s, e = run.pair("o")
    for n in ["pf"] + run.vfs:
        need(s[n]["state"] == "started", f"{n} state {s[n]['state']}, expected started")
    t = counters_moved(s, e, [run.vfs[-1], "pf"], run.pings, "during the ping")
    return f"pf and all {len(run.vfs)} VFs started; {t}"


def host_q(run):
    s, e = run.pair("q")
    ups = [run.uplinks("q-start"), run.uplinks("q-end")]
    for name, up in zip(("q-start", "q-end"), ups):
        need(len(up) == 1 and up[0]["kind"] == "stream",
             f"{name}: uplinks {[u.get('spec') for u in up]}, expected the one stream uplink")
        need(up[0]["link"] == "up", f"{name}: stream uplink link {up[0]['link']} (no QEMU peer)")
    start, end = ups[0][0], ups[1][0]
    need(end["connects"] == start["connects"],
         f"the stream peer reconnected during q ({start['connects']} -> {end['connects']})")
    moved = {}
    for key in ("rx_packets", "tx_packets"):
        moved[key] = end["counters"][key] - start["counters"][key]
        need(moved[key] >= 2 * run.pings,
             f"stream uplink {key} +{moved[key]}, expected >= {2 * run.pings} (pings both ways)")
    bad = {k: v - start["counters"].get(k, 0) for k, v in end["counters"].items()
           if k.startswith("drop_") and v != start["counters"].get(k, 0)}
    need(not bad, f"stream uplink drops during q: {bad}")
    t = counters_moved(s, e, ["vf0"], 2 * run.pings, "during the pings")
    return (f"stream uplink up, peer connected once, rx+{moved['rx_packets']}/"
            f"tx+{moved['tx_packets']}, no drops; {t}")


def console_end(run):
    """h's QEMU/console part (also in stand-in mode)."""
    rc = run.args.qemu_rc
    need(rc != 124, "QEMU killed by the timeout")
    need(rc == 0, f"QEMU exited with status {rc}")
    text = read_console(run.dir)
    need("Kernel panic" not in text, "guest kernel panicked")
    need("reboot: Power down" in text, "no power-down message on the console")
    return "guest powered off, QEMU exit 0"


def host_h(run):
    detail = console_end(run)
    parts = run.snap("final")
    for n in ["pf"] + run.vfs:
        p = parts[n]
        need(p["state"] == "waiting", f"{n} state {p['state']} after QEMU exited, expected waiting")
        need(p["connects"] == 1 and p["disconnects"] == 1,
             f"{n} connects {p['connects']} disconnects {p['disconnects']}, expected 1/1 "
             "(a connection was dropped and QEMU reconnected)")
    # Each daemon killed by a restart: no reconnect up to its last snapshot.
    killed = []
    for i, d in enumerate(run.daemons[:-1]):
        if not d.get("snapshots"):
            continue
        last = run.snap(d["snapshots"][-1])
        need(last.daemon == i, f"snapshot {last.name} is not daemon {i}'s")
        for n in ["pf"] + run.vfs:
            p = last[n]
            need(p["connects"] == 1 and p["disconnects"] == 0,
                 f"{n} connects {p['connects']} disconnects {p['disconnects']} in {last.name}, "
                 f"the last snapshot of daemon PID {d.get('pid')} before its restart, expected 1/0")
        killed.append(str(d.get("pid")))
    need(run.args.daemon_alive == 1, "daemon was not running after QEMU exited")
    need(run.args.daemon_exit == "0", f"daemon exit status on SIGTERM: {run.args.daemon_exit}")
    restarts = ""
    if killed:
        restarts = (f"; restarted daemon PID {run.daemons[-1].get('pid')} (after "
                    f"{' '.join(killed)} killed) served through the end")
    return detail + "; all partitions waiting, daemon alive, exited 0 on SIGTERM" + restarts


def restart_record(run, name):
    path = os.path.join(run.dir, f"restart-{name}.json")
    try:
        return load_json(path)
    except (OSError, ValueError) as err:
        raise CheckError(f"no record of restart {name} ({err}; see sync.log)") from err


def guest_gaps(run, name):
    """The guest's "E2E: restart-gap NAME key=value ..." lines, as dicts (numbers as ints)."""
    out = []
    for line in read_console(run.dir).splitlines():
        m = GAP_RE.search(line)
        if not m or m.group(1) != name:
            continue
        g = dict(kv.split("=", 1) for kv in m.group(2).split() if "=" in kv)
        try:
            for k in ("arp_evict_nocarrier", "gap_ms", "lost", "replies", "after"):
                g[k] = int(g[k])
        except (KeyError, ValueError) as err:
            raise CheckError(f"bad restart-gap line from the guest ({err}): {line!r}") from err
        out.append(g)
    return out


def host_p(run):
    rec = restart_record(run, "p-restart")
    start, end = run.snap("p-start"), run.snap("p-end")
    old, new = rec["old_pid"], rec["new_pid"]
    need(old != new, f"restart kept PID {old}")
    need(end.daemon == start.daemon + 1 and run.daemons[end.daemon].get("pid") == new
         and run.daemons[start.daemon].get("pid") == old,
         f"p-start / p-end answered by daemons {start.daemon} / {end.daemon}, expected PID {old} "
         f"then PID {new} (daemons.json)")
    for n in ("pf", "vf0", "vf1"):
        need(start[n]["state"] == "started", f"{n} state {start[n]['state']} before the restart")
    for n in ["pf"] + run.vfs:
        p = start[n]
        need(p["connects"] == 1 and p["disconnects"] == 0,
             f"{n} connects {p['connects']} disconnects {p['disconnects']} before the restart, "
             "expected 1/0")
        p = end[n]
        need(p["state"] == "started", f"{n} state {p['state']} in the new daemon, expected started")
        need(p["connects"] == 1 and p["disconnects"] == 0,
             f"{n} connects {p['connects']} disconnects {p['disconnects']} in the new daemon, "
             "expected 1/0 (QEMU reconnects each socket once)")
    gaps = {g["arp_evict_nocarrier"]: g for g in guest_gaps(run, "p-restart")}
    need(set(gaps) == {0, 1}, "the guest reported no restart-gap with arp_evict_nocarrier=0 "
         f"and =1 (got {sorted(gaps)})")
    # Replies after the ACK crossed the new daemon: a request from -> to and a reply to -> from.
    want = {}
    for g in gaps.values():
        for n in (g.get("from"), g.get("to")):
            need(n in end, f"restart-gap names partition {n!r}")
            want[n] = want.get(n, 0) + g["after"]
    moved = []
    for n, w in sorted(want.items()):
        for key in ("rx_packets", "tx_packets"):
            c = end[n]["counters"][key]
            need(c >= w, f"{n} {key} {c} in the new daemon, expected >= {w} (the guest's replies "
                 "after the restart)")
        moved.append(f"{n} rx {end[n]['counters']['rx_packets']}/tx {end[n]['counters']['tx_packets']}")
    keep, dflt = gaps[0], gaps[1]
    need(keep["gap_ms"] < RESTART_GAP_BOUND_MS,
         f"{keep['from']}->{keep['to']} (arp_evict_nocarrier=0): longest gap {keep['gap_ms']} ms, "
         f"bound {RESTART_GAP_BOUND_MS} ms")
    need(dflt["gap_ms"] < RESTART_GAP_BOUND_MS + ARP_RETRANS_MS,
         f"{dflt['from']}->{dflt['to']} (default ARP): longest gap {dflt['gap_ms']} ms, bound "
         f"{RESTART_GAP_BOUND_MS + ARP_RETRANS_MS} ms")

    def fig(g):
        return f"{g['gap_ms']} ms, {g['lost']} of {g['replies'] + g['lost']} lost"

    return (f"daemon PID {old} killed -9, PID {new} ready {rec['ready_after_ms']:.0f} ms later; "
            f"QEMU reconnected every partition once, all started; new daemon: {', '.join(moved)}; "
            f"guest up, longest gap {keep['from']}->{keep['to']} (ARP kept) {fig(keep)} (bound "
            f"{RESTART_GAP_BOUND_MS}), {dflt['from']}->{dflt['to']} (default ARP) {fig(dflt)} "
            f"(bound {RESTART_GAP_BOUND_MS + ARP_RETRANS_MS})")


HOST_CHECKS = {"a": host_a, "b": host_b, "c": host_c, "d": host_d, "e": host_e, "f": host_f,
               "g": host_g, "h": host_h, "i": host_i, "j": host_j, "k": host_k, "l": host_l,
               "m": host_m, "n": host_n, "o": host_o, "p": host_p, "q": host_q, "u": host_u}


def read_console(d):
    try:
        with open(os.path.join(d, "console.log"), "rb") as f:
            return f.read().decode(errors="replace").replace("\r", "")
    except OSError:
        return ""


def guest_results(d):
    results, dups = {}, set()
    for line in read_console(d).splitlines():
        m = RESULT_RE.search(line)
        if not m:
            continue
        sid, status, detail = m.group(1), m.group(2), m.group(3).strip()
        if sid in results:
            dups.add(sid)
        results[sid] = (status, detail)
    return results, dups


def daemon_log_notes(d):
    """Informational: WARN/ERROR lines of the daemon log (not a check by themselves)."""
    try:
        with open(os.path.join(d, "daemon.log"), encoding="utf-8", errors="replace") as f:
            text = f.read().splitlines()
    except OSError:
        return []
    notes = []
    for level in ("ERROR", "WARN"):
        hits = [line for line in text if re.search(rf"\b{level}\b", line)]
        if hits:
            notes.append(f"note: daemon.log has {len(hits)} {level} line(s), first: {hits[0][:160]}")
    return notes


def cmd_report(args):
    run = Run(args)
    guest, dups = guest_results(args.results)
    rows = []
    for sid in IDS:
        if sid not in args.only:
            continue
        notes = []
        status = "PASS"
        if sid not in guest:
            status = "FAIL"
            notes.append("guest: no RESULT line" + (" (QEMU timed out)" if args.qemu_rc == 124 else ""))
        else:
            gst, gdet = guest[sid]
            if gst != "PASS":
                status = "FAIL"
            if sid in dups:
                status = "FAIL"
                gdet += " (duplicate RESULT lines)"
            notes.append(f"guest: {gdet}")
        if args.mode == "standin":
            if sid == "h":
                try:
                    notes.append("host: " + console_end(run) + "; daemon checks SKIPPED (stand-in)")
                except CheckError as err:
                    status = "FAIL"
                    notes.append(f"host: FAIL {err}")
            else:
                notes.append("host: SKIPPED (stand-in)")
        else:
            try:
                notes.append("host: " + HOST_CHECKS[sid](run))
            except CheckError as err:
                status = "FAIL"
                notes.append(f"host: FAIL {err}")
            except (KeyError, TypeError) as err:
                status = "FAIL"
                notes.append(f"host: FAIL snapshot lacks field {err}")
        rows.append({"scenario": sid, "status": status, "detail": "; ".join(notes)})

    failed = [r["scenario"] for r in rows if r["status"] != "PASS"]
    lines = []
    if args.mode == "standin":
        lines.append("!" * 78)
        lines.append("!! STAND-IN RUN (E2E_STANDIN=hubport): no daemon, host-side checks SKIPPED.")
        lines.append("!! This exercises the guest image and scenarios only; it is NOT a test of the daemon.")
        lines.append("!" * 78)
    if sorted(args.only) != sorted(args.default_ids or IDS):
        lines.append(f"!! PARTIAL RUN: only scenarios {args.only} (E2E_ONLY)")
    # A Markdown table: rows start with "| <id> " (scripts/test.sh counts "^| *[a-z] .*PASS").
    lines.append("| scenario | result | detail |")
    lines.append("|----------|--------|--------|")
    for r in rows:
        lines.append(f"| {r['scenario']:<8} | {r['status']:<6} | {r['detail'].replace('|', '/')} |")
    lines.extend(daemon_log_notes(args.results))
    npass = len(rows) - len(failed)
    lines.append(f"e2e: {npass} passed, {len(failed)} failed")
    text = "\n".join(lines)
    print(text)
    with open(os.path.join(args.results, "summary.txt"), "w", encoding="utf-8") as f:
        f.write(text + "\n")
    with open(os.path.join(args.results, "summary.json"), "w", encoding="utf-8") as f:
        json.dump({"mode": args.mode, "vfs": args.vfs, "pings": args.pings, "qemu_rc": args.qemu_rc,
                   "passed": npass, "failed": len(failed), "scenarios": rows}, f, indent=2)
        f.write("\n")
    return 1 if failed else 0


def main():
    ap = argparse.ArgumentParser(description="Evaluate scripts/e2e.sh runs.")
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("guest-params")
    p.add_argument("--snap", required=True)
    p.add_argument("--qemu-args")
    p = sub.add_parser("all-waiting")
    p.add_argument("--snap", required=True)
    p = sub.add_parser("report")
    p.add_argument("--results", required=True)
    p.add_argument("--mode", choices=("daemon", "standin"), required=True)
    p.add_argument("--vfs", type=int, required=True)
    p.add_argument("--pings", type=int, required=True)
    p.add_argument("--qemu-rc", type=int, required=True)
    p.add_argument("--daemon-alive", type=int, default=0)
    p.add_argument("--iommu", type=int, default=0, help="1: iommu_platform=on (IOVAs through the IOTLB)")
    p.add_argument("--daemon-exit", default="not stopped")
    p.add_argument("--only", default=IDS, help="evaluate only these scenario ids (developer option)")
    p.add_argument("--default-ids", help="the scenarios of this setup (no PARTIAL RUN note if --only is it)")
    args = ap.parse_args()
    return {"guest-params": cmd_guest_params, "all-waiting": cmd_all_waiting,
            "report": cmd_report}[args.cmd](args)


if __name__ == "__main__":
    sys.exit(main())
