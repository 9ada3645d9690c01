#!/usr/bin/env python3
"""Helper for scripts/bench.sh (python3 standard library only).

Subcommands:
  macs JSON NAME...        print the MAC of each named partition from `ctl show -j` output
  measure ...              one measured interval: testpmd `show port stats all` + /proc of the
                           backend and the frontend (CPU time, per-thread schedstat, RSS, threads)
                           + the daemon's counters at both ends; with --sample-ms also a `show`
                           every so many ms (latency windows); with --sink-stats also vu-sink's
                           counters and /proc (one-way); appends JSON lines
  wait-file PATH           poll for PATH (every 0.1 ms) and print the wall time (ns) it appeared
  proc PID                 print RSS (kB) and thread count of PID as JSON
  env ...                  environment facts as JSON
  report MODE DIR          turn DIR/events.jsonl into DIR/raw.json and print the tables
"""

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import time

CLK_TCK = os.sysconf("SC_CLK_TCK")

# ---------------------------------------------------------------------------------------------
# /proc readers


def read_proc(pid):
    """CPU time, per-thread schedstat, RSS and thread count of a process (None if it is gone)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            stat = f.read()
    except OSError:
        return None
    rest = stat[stat.rindex(")") + 2 :].split()
    # rest[0] is field 3 (state); utime is field 14, stime field 15.
    out = {"utime_ticks": int(rest[11]), "stime_ticks": int(rest[12]), "clk_tck": CLK_TCK}
    tasks = {}
    vol = invol = 0
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        tids = []
    for tid in tids:
        try:
            with open(f"/proc/{pid}/task/{tid}/schedstat") as f:
                run_ns, wait_ns, _slices = f.read().split()
            with open(f"/proc/{pid}/task/{tid}/comm") as f:
                comm = f.read().strip()
            tasks[tid] = [int(run_ns), int(wait_ns), comm]
            with open(f"/proc/{pid}/task/{tid}/status") as f:
                for line in f:
                    if line.startswith("voluntary_ctxt_switches"):
                        vol += int(line.split()[1])
                    elif line.startswith("nonvoluntary_ctxt_switches"):
                        invol += int(line.split()[1])
        except (OSError, ValueError):
            pass
    out["tasks"] = tasks
    # Context switches summed over the threads present now (exited threads are not counted).
    out["ctxt_voluntary"], out["ctxt_nonvoluntary"] = vol, invol
    out.update(read_status(pid))
    return out


def read_status(pid):
    out = {}
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                k, _, v = line.partition(":")
                if k in ("VmRSS", "VmHWM"):
                    out[k.lower() + "_kb"] = int(v.split()[0])
                elif k == "Threads":
                    out["threads"] = int(v)
    except OSError:
        pass
    return out


def read_cpu(cpu):
    """The /proc/stat line of one CPU, in clock ticks."""
    names = ["user", "nice", "system", "idle", "iowait", "irq", "softirq", "steal"]
    with open("/proc/stat") as f:
        for line in f:
            if line.startswith(f"cpu{cpu} "):
                vals = [int(x) for x in line.split()[1:9]]
                return dict(zip(names, vals))
    return None


# ---------------------------------------------------------------------------------------------
# testpmd output


NUM = r"(\d+)"
PORT_RE = re.compile(r"NIC statistics for port (\d+)")
FIELDS = [
    ("rx_packets", re.compile(r"RX-packets:\s+" + NUM)),
    ("rx_bytes", re.compile(r"RX-bytes:\s+" + NUM)),
    ("tx_packets", re.compile(r"TX-packets:\s+" + NUM)),
    ("tx_bytes", re.compile(r"TX-bytes:\s+" + NUM)),
    ("rx_pps", re.compile(r"Rx-pps:\s+" + NUM)),
    ("rx_bps", re.compile(r"Rx-bps:\s+" + NUM)),
    ("tx_pps", re.compile(r"Tx-pps:\s+" + NUM)),
    ("tx_bps", re.compile(r"Tx-bps:\s+" + NUM)),
]


def parse_port_blocks(text):
    """Every complete `NIC statistics for port N` block, in order (a block ends at Tx-pps)."""
    blocks = []
    cur = None
    for line in text.splitlines():
        m = PORT_RE.search(line)
        if m:
            cur = {"port": int(m.group(1))}
            continue
        if cur is None:
            continue
        for key, rx in FIELDS:
            for mm in rx.finditer(line):
                cur[key] = int(mm.group(1))
        if "tx_pps" in cur:
            blocks.append(cur)
            cur = None
    return blocks


def shows(text, nports):
    """Group port blocks into `show port stats all` replies of nports blocks each."""
    blocks = parse_port_blocks(text)
    n = len(blocks) // nports
    return [blocks[i * nports : (i + 1) * nports] for i in range(n)]


def read_text(path):
    with open(path, errors="replace") as f:
        return f.read()


def count_shows(log, nports):
    return len(parse_port_blocks(read_text(log))) // nports


def send(fifo, cmd):
    # The FIFO has a reader (testpmd) and bench.sh holds it open read-write: this never blocks.
    with open(fifo, "w") as f:
        f.write(cmd + "\n")


def wait_shows(log, nports, want, pid, timeout=20.0):
    deadline = time.monotonic() + timeout
    while True:
        n = count_shows(log, nports)
        if n >= want:
            return n
        if pid and not os.path.exists(f"/proc/{pid}"):
            sys.exit(f"bench.py: testpmd {pid} died (see {log})")
        if time.monotonic() > deadline:
            sys.exit(f"bench.py: no stats reply from testpmd within {timeout} s (see {log})")
        time.sleep(0.002)


# ---------------------------------------------------------------------------------------------
# subcommands


def cmd_macs(a):
    with open(a.json) as f:
        v = json.load(f)
    by = {p["name"]: p["mac"] for p in v["partitions"]}
    print(" ".join(by[n] for n in a.names))


def ctl_show(daemon, sockdir):
    r = subprocess.run(
        [daemon, "ctl", "--socket-dir", sockdir, "show", "-j"],
        capture_output=True,
        text=True,
        timeout=15,
    )
    if r.returncode != 0:
        return {"error": r.stderr.strip()}
    v = json.loads(r.stdout)
    return {
        p["name"]: {
            "state": p["state"],
            "starts": p["starts"],
            "connects": p["connects"],
            "counters": p["counters"],
        }
        for p in v["partitions"]
    }


def parse_tags(tags):
    out = {}
    for t in tags or []:
        k, _, v = t.partition("=")
        try:
            out[k] = json.loads(v) if v.startswith("{") else int(v)
        except ValueError:
            out[k] = v
    return out


def take_snap(a, nports, want):
    """Ask testpmd for `show port stats all` and wait for it to be the `want`-th reply in its log
    (earlier requests may still be pending), then read /proc at once."""
    send(a.fifo, "show port stats all")
    wait_shows(a.log, nports, want, a.fe_pid)
    ev = {"type": "snap", "shows": want}
    ev["t_ns"] = time.monotonic_ns()
    ev["backend"] = read_proc(a.be_pid) if a.be_pid else None
    ev["frontend"] = read_proc(a.fe_pid) if a.fe_pid else None
    ev["cpu_backend"] = read_cpu(a.be_cpu) if a.be_cpu is not None else None
    ev["cpu_frontend"] = read_cpu(a.fe_cpu) if a.fe_cpu is not None else None
    if a.sink_stats:
        ev["sink"] = read_sink(a.sink_stats)
        ev["sink_proc"] = read_proc(a.sink_pid) if a.sink_pid else None
    ev["wall_ns"] = time.time_ns()
    return ev


def read_sink(path):
    """vu-sink's counters: it rewrites the file (rename) every 100 ms, stamped with its
    CLOCK_MONOTONIC time (t_ns), which is the clock of time.monotonic_ns()."""
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def cmd_measure(a):
    """One measured interval, all from this one process so that nothing starts up inside it:
    [daemon counters] show+proc ... (sleep, or a `show` every sample_ms) ... show+proc
    [daemon counters] [stop + forwarding counters]."""
    tags = parse_tags(a.tag)
    ctl = a.daemon and a.sockdir
    ctl_b = ctl_show(a.daemon, a.sockdir) if ctl else None
    sent = count_shows(a.log, a.nports) + 1
    b = take_snap(a, a.nports, sent)
    t_end = time.monotonic() + a.seconds
    if a.sample_ms:
        t = time.monotonic()
        while True:
            t += a.sample_ms / 1000.0
            if t >= t_end - a.sample_ms / 2000.0:
                break
            dt = t - time.monotonic()
            if dt > 0:
                time.sleep(dt)
            send(a.fifo, "show port stats all")
            sent += 1
    dt = t_end - time.monotonic()
    if dt > 0:
        time.sleep(dt)
    e = take_snap(a, a.nports, sent + 1)
    ctl_e = ctl_show(a.daemon, a.sockdir) if ctl else None
    text = read_text(a.log)
    all_shows = shows(text, a.nports)
    b["ports"] = all_shows[b["shows"] - 1]
    e["ports"] = all_shows[e["shows"] - 1]
    b["ctl"], e["ctl"] = ctl_b, ctl_e
    b.update(tags, phase=a.phase_prefix + "begin")
    e.update(tags, phase=a.phase_prefix + "end")
    out = [b, e]
    if a.sample_ms:
        lat = dict(tags, type="lat")
        # Every reply after the begin snap, up to and including the end snap's.
        lat["rx_pps"] = [[p["rx_pps"] for p in show] for show in all_shows[b["shows"] : e["shows"]]]
        out.append(lat)
    if a.stop:
        before = text.count("Accumulated forward statistics")
        send(a.fifo, "stop")
        deadline = time.monotonic() + 10
        while read_text(a.log).count("Accumulated forward statistics") <= before:
            if time.monotonic() > deadline:
                sys.exit("bench.py: testpmd did not answer `stop`")
            time.sleep(0.01)
        time.sleep(0.05)
        fwd = last_forward_stats(read_text(a.log), a.nports)
        e["forward_stats"] = fwd
        if a.sample_ms and len(fwd) == 2:
            # Paired ports: what port 0 sends arrives on port 1 and vice versa. Sent minus
            # received since `start` is what was still in flight (or lost) at `stop`.
            out[-1]["in_flight_or_lost"] = [fwd[0]["tx"] - fwd[1]["rx"], fwd[1]["tx"] - fwd[0]["rx"]]
    with open(a.out, "a") as f:
        for ev in out:
            f.write(json.dumps(ev) + "\n")
    if a.sink_stats:
        iv = interval(b, e)
        print(f"{fmt(iv.get('delivered_mpps'))} Mpps delivered of {fmt(iv.get('gen_mpps'))} Mpps "
              f"sent (loss {fmt(iv.get('loss_pct'), 1)}%)")
        return
    pk = sum(p["rx_packets"] for p in e["ports"]) - sum(p["rx_packets"] for p in b["ports"])
    if a.sample_ms:
        mpps = pk / (e["t_ns"] - b["t_ns"]) * 1e3
    else:
        mpps = sum(p["rx_pps"] for p in e["ports"]) / 1e6
    msg = f"{mpps:.2f} Mpps ({pk} packets)"
    if a.sample_ms and out[-1]["rx_pps"]:
        med = statistics.median(x for show in out[-1]["rx_pps"] for x in show)
        msg += f", median window one-way {1e9 / med:.0f} ns" if med else ", STALLED"
    print(msg)


FWD_PORT_RE = re.compile(r"Forward statistics for port (\d+)")
FWD_RX_RE = re.compile(r"RX-packets:\s+(\d+)\s+RX-dropped:\s+(\d+)")
FWD_TX_RE = re.compile(r"TX-packets:\s+(\d+)\s+TX-dropped:\s+(\d+)")


def last_forward_stats(text, nports):
    """Per-port forwarding counters printed by the last `stop` (since the last `start`)."""
    blocks = []
    cur = None
    for line in text.splitlines():
        m = FWD_PORT_RE.search(line)
        if m:
            cur = {"port": int(m.group(1))}
            continue
        if cur is None:
            continue
        m = FWD_RX_RE.search(line)
        if m:
            cur["rx"], cur["rx_dropped"] = int(m.group(1)), int(m.group(2))
        m = FWD_TX_RE.search(line)
        if m:
            cur["tx"], cur["tx_dropped"] = int(m.group(1)), int(m.group(2))
            blocks.append(cur)
            cur = None
    return blocks[-nports:] if len(blocks) >= nports else []


def cmd_wait_file(a):
    while True:
        try:
            if os.path.getsize(a.path) > 0:
                break
        except OSError:
            pass
        time.sleep(0.0001)
    print(time.time_ns())


def cmd_proc(a):
    print(json.dumps(read_status(a.pid)))


def cmd_env(a):
    def run(cmd):
        try:
            return subprocess.run(cmd, capture_output=True, text=True, timeout=20).stdout.strip()
        except Exception as e:  # noqa: BLE001 - only a report
            return f"unavailable: {e}"

    env = {"type": "env"}
    env.update(parse_tags(a.tag))
    env["kernel"] = os.uname().release
    env["cpus"] = os.cpu_count()
    model = ""
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    env["cpu_model"] = model
    env["testpmd"] = run(["dpkg-query", "-W", "-f=${Version}", "dpdk-dev"])
    env["hugepages"] = {
        k: v
        for k, v in (
            (line.split(":")[0], line.split(":")[1].strip())
            for line in open("/proc/meminfo")
            if line.startswith("Huge")
        )
    }
    env["clk_tck"] = CLK_TCK
    with open(a.out, "a") as f:
        f.write(json.dumps(env) + "\n")


# ---------------------------------------------------------------------------------------------
# report


def pct(vals, q):
    """Nearest-rank percentile (q in 0..100) of a non-empty list."""
    v = sorted(vals)
    k = max(1, -(-len(v) * q // 100))  # ceil(n*q/100), at least 1
    return v[int(min(k, len(v))) - 1]


def mmm(vals):
    vals = [x for x in vals if x is not None]
    if not vals:
        return None
    return {"min": min(vals), "median": statistics.median(vals), "max": max(vals), "n": len(vals)}


def task_delta(b, e):
    """Sum of per-thread run and run-queue wait deltas (threads present at the end)."""
    run = wait = 0
    for tid, (r1, w1, _c) in e["tasks"].items():
        r0, w0, _ = b["tasks"].get(tid, [0, 0, ""])
        run += r1 - r0
        wait += w1 - w0
    return run, wait


def thread_detail(b, e, wall_ns):
    """Per thread name: % of the interval running and % waiting on the run queue."""
    out = {}
    for tid in sorted(e["tasks"], key=int):
        r1, w1, comm = e["tasks"][tid]
        r0, w0, _ = b["tasks"].get(tid, [0, 0, ""])
        run, wait = 100.0 * (r1 - r0) / wall_ns, 100.0 * (w1 - w0) / wall_ns
        if run > 0.01 or wait > 0.01:
            out[f"{comm}/{tid}"] = {"run_pct": round(run, 2), "wait_pct": round(wait, 2)}
    return out


def proc_cpu_ns(b, e):
    ticks = (e["utime_ticks"] + e["stime_ticks"]) - (b["utime_ticks"] + b["stime_ticks"])
    return ticks * 1e9 / e["clk_tck"]


def cpu_busy(c):
    return sum(v for k, v in c.items() if k != "idle" and k != "iowait")


def interval(b, e, nports=None):
    """Figures for the interval between two snaps."""
    out = {}
    wall_ns = e["t_ns"] - b["t_ns"]
    out["wall_s"] = wall_ns / 1e9
    ports_e = e.get("ports") or []
    ports_b = b.get("ports") or []
    if ports_e and ports_b:
        pk = sum(pe["rx_packets"] - pb["rx_packets"] for pe, pb in zip(ports_e, ports_b))
        by = sum(pe["rx_bytes"] - pb["rx_bytes"] for pe, pb in zip(ports_e, ports_b))
        out["fe_rx_packets"] = pk
        out["fe_rx_bytes"] = by
        out["mpps_from_counts"] = pk / wall_ns * 1e3
        out["fe_tx_packets"] = sum(
            pe["tx_packets"] - pb["tx_packets"] for pe, pb in zip(ports_e, ports_b)
        )
        # testpmd's own rate over exactly the interval between the two `show` replies (when no
        # other `show` came in between: not for latency windows, use mpps_from_counts there).
        out["mpps"] = sum(p["rx_pps"] for p in ports_e) / 1e6
        out["gbps"] = sum(p["rx_bps"] for p in ports_e) / 1e9
        out["per_port_rx_mpps"] = [p["rx_pps"] / 1e6 for p in ports_e]
    be_b, be_e = b.get("backend"), e.get("backend")
    if be_b and be_e:
        cpu_ns = proc_cpu_ns(be_b, be_e)
        run_ns, wait_ns = task_delta(be_b, be_e)
        out["be_thread_detail"] = thread_detail(be_b, be_e, wall_ns)
        for k in ("ctxt_voluntary", "ctxt_nonvoluntary"):
            if k in be_e and k in be_b:
                out[f"be_{k}_per_s"] = (be_e[k] - be_b[k]) / out["wall_s"]
        out["be_cpu_s"] = cpu_ns / 1e9
        out["be_cpu_util"] = cpu_ns / wall_ns
        out["be_sched_run_s"] = run_ns / 1e9
        out["be_runq_wait_pct"] = 100.0 * wait_ns / wall_ns
        out["be_rss_kb"] = be_e.get("vmrss_kb")
        out["be_threads"] = be_e.get("threads")
        if out.get("fe_rx_packets"):
            out["be_ns_per_pkt"] = cpu_ns / out["fe_rx_packets"]
            out["be_sched_ns_per_pkt"] = run_ns / out["fe_rx_packets"]
    fe_b, fe_e = b.get("frontend"), e.get("frontend")
    if fe_b and fe_e:
        _run, wait_ns = task_delta(fe_b, fe_e)
        out["fe_runq_wait_pct"] = 100.0 * wait_ns / wall_ns
        out["fe_cpu_s"] = proc_cpu_ns(fe_b, fe_e) / 1e9
    sk_b, sk_e = b.get("sink"), e.get("sink")
    if sk_b and sk_e and sk_e["t_ns"] > sk_b["t_ns"]:
        # One-way: what the sink received over its own stamps (within 100 ms of the snaps), and
        # the generator's send rate from testpmd's Tx-pps over the snaps' interval.
        frames = sk_e["frames"] - sk_b["frames"]
        sink_ns = sk_e["t_ns"] - sk_b["t_ns"]
        out["sink_frames"] = frames
        out["sink_bad"] = sk_e["bad"] - sk_b["bad"]
        out["sink_wakeups_per_s"] = (sk_e["wakeups"] - sk_b["wakeups"]) / sink_ns * 1e9
        out["delivered_mpps"] = frames / sink_ns * 1e3
        out["delivered_gbps"] = (sk_e["bytes"] - sk_b["bytes"]) * 8 / sink_ns
        if ports_e:
            out["gen_mpps"] = sum(p["tx_pps"] for p in ports_e) / 1e6
            if out["gen_mpps"] > 0:
                out["loss_pct"] = 100.0 * max(0.0, 1.0 - out["delivered_mpps"] / out["gen_mpps"])
        if be_b and be_e and frames:
            out["be_ns_per_pkt"] = proc_cpu_ns(be_b, be_e) / frames
        spb, spe = b.get("sink_proc"), e.get("sink_proc")
        if spb and spe:
            out["sink_cpu_util"] = proc_cpu_ns(spb, spe) / wall_ns
            # The sink shares the frontend's CPU by design: not "another process" there.
            if "fe_cpu_s" in out:
                out["fe_cpu_s"] += proc_cpu_ns(spb, spe) / 1e9
    # Time other processes ran on each side's CPU, from /proc/stat (busy - our process), and the
    # hypervisor's steal. The summed run-queue wait of a multi-threaded backend also counts its
    # own threads queueing behind each other on its one CPU; only the part that other processes
    # can account for is interference: min(wait, others' CPU time).
    for side, key, cpu_s in (("be", "cpu_backend", out.get("be_cpu_s")),
                             ("fe", "cpu_frontend", out.get("fe_cpu_s"))):
        cb, ce = b.get(key), e.get(key)
        if cb and ce and cpu_s is not None:
            busy_s = (cpu_busy(ce) - cpu_busy(cb)) / CLK_TCK
            other = max(0.0, 100.0 * (busy_s - cpu_s) / out["wall_s"])
            out[f"{side}_cpu_other_pct"] = other
            out[f"{side}_cpu_steal_pct"] = 100.0 * (ce["steal"] - cb["steal"]) / CLK_TCK / out["wall_s"]
            if f"{side}_runq_wait_pct" in out:
                out[f"{side}_ext_wait_pct"] = min(out[f"{side}_runq_wait_pct"], other)
    ctl_b, ctl_e = b.get("ctl"), e.get("ctl")
    if isinstance(ctl_b, dict) and isinstance(ctl_e, dict) and "error" not in ctl_e:
        parts = {}
        for name, pe in ctl_e.items():
            pb = ctl_b.get(name)
            if not pb:
                continue
            d = {k: pe["counters"][k] - pb["counters"].get(k, 0) for k in pe["counters"]}
            if any(d.values()) or name.startswith("vf") and pe["state"] != "waiting":
                d["state"] = pe["state"]
                parts[name] = d
        out["ctl_delta"] = parts
        out["daemon_tx_packets"] = sum(p["tx_packets"] for p in parts.values())
        if out.get("fe_rx_packets"):
            # ctl is read just outside the frontend's interval, so this is slightly above 1.
            out["daemon_tx_per_frontend_rx"] = out["daemon_tx_packets"] / out["fe_rx_packets"]
        out["daemon_rx_packets"] = sum(p["rx_packets"] for p in parts.values())
        out["daemon_drops"] = {
            k: sum(p[k] for p in parts.values())
            for k in next(iter(ctl_e.values()))["counters"]
            if k.startswith("drop_")
        }
    return out


WAIT_RULE = "others"
LABELS = {"ours-event": "ours event-driven", "ours-poll": "ours busy-poll", "dpdk": "DPDK vhost",
          "b-event": "B (DAEMON_B) event-driven", "b-poll": "B (DAEMON_B) busy-poll"}


def lab(v):
    return LABELS.get(v, v)


def discard_reasons(iv, max_wait):
    r = []
    for side, name in (("be", "backend"), ("fe", "frontend")):
        if WAIT_RULE == "raw":
            w = iv.get(f"{side}_runq_wait_pct")
            if w is not None and w > max_wait:
                r.append(f"{name} run-queue wait (summed over its threads) {w:.1f}%")
            continue
        w = iv.get(f"{side}_ext_wait_pct")
        if w is not None and w > max_wait:
            r.append(f"{name} waited {w:.1f}% behind other processes "
                     f"(run-queue wait {iv[f'{side}_runq_wait_pct']:.1f}%, others on its CPU "
                     f"{iv[f'{side}_cpu_other_pct']:.1f}%)")
        st = iv.get(f"{side}_cpu_steal_pct")
        if st is not None and st > max_wait:
            r.append(f"{name} CPU steal {st:.1f}%")
    return r


def load_events(d):
    evs = []
    with open(os.path.join(d, "events.jsonl")) as f:
        for line in f:
            line = line.strip()
            if line:
                evs.append(json.loads(line))
    return evs


def snap_pairs(evs, begin, end, keys):
    """Match begin/end snaps by the given tag keys."""
    idx = {}
    for e in evs:
        if e.get("type") == "snap" and e.get("phase") in (begin, end):
            which = "begin" if e["phase"] == begin else "end"
            idx.setdefault(tuple(e.get(k) for k in keys), {})[which] = e
    return {k: v for k, v in idx.items() if "begin" in v and "end" in v}


def fmt(x, nd=2):
    if x is None:
        return "-"
    if isinstance(x, float):
        return f"{x:.{nd}f}"
    return str(x)


def f3(m, nd=2, scale=1.0):
    if not m:
        return "-"
    return "/".join(fmt(m[k] * scale, nd) for k in ("min", "median", "max"))


def table(head, rows):
    w = [max(len(str(r[i])) for r in [head] + rows) for i in range(len(head))]
    lines = ["  ".join(str(c).ljust(w[i]) for i, c in enumerate(head)).rstrip()]
    lines.append("  ".join("-" * x for x in w))
    for r in rows:
        lines.append("  ".join(str(c).ljust(w[i]) for i, c in enumerate(r)).rstrip())
    return "\n".join(lines)


def measured_rounds(evs, max_wait, own_reasons):
    """Every measured interval of a run (snaps tagged variant, round, size) with its figures and
    why it is discarded (the common rule plus own_reasons(m), the mode's); and the variants in
    the order they first ran."""
    out = []
    pairs = snap_pairs(evs, "begin", "end", ("variant", "round", "size"))
    for (variant, rnd, size), p in sorted(pairs.items(), key=lambda kv: (kv[0][1], str(kv[0]))):
        m = {"variant": variant, "round": rnd, "size": size}
        m.update(interval(p["begin"], p["end"]))
        m["discarded"] = discard_reasons(m, max_wait) + own_reasons(m)
        out.append(m)
    return out, list(dict.fromkeys(m["variant"] for m in out))


def dpdk_of_round(measurements, m):
    """DPDK's kept measurement of the same round and size as m, or None."""
    return next((x for x in measurements if x["variant"] == "dpdk" and x["size"] == m["size"]
                 and x["round"] == m["round"] and not x["discarded"]), None)


def report_throughput(evs, out, max_wait):
    env = next((e for e in evs if e.get("type") == "env"), {})
    res = {"env": env, "max_runq_wait_pct": max_wait, "wait_rule": WAIT_RULE,
           "measurements": [], "latency": []}
    text = []
    res["measurements"], variants = measured_rounds(
        evs, max_wait, lambda m: [] if m.get("fe_rx_packets") else ["no packets forwarded"])
    sizes = sorted({m["size"] for m in res["measurements"]})
    summary = []
    for size in sizes:
        for v in variants:
            ms = [m for m in res["measurements"] if m["variant"] == v and m["size"] == size]
            kept = [m for m in ms if not m["discarded"]]
            row = {
                "variant": v,
                "size": size,
                "rounds": len(ms),
                "kept": len(kept),
                "mpps": mmm([m.get("mpps") for m in kept]),
                "gbps": mmm([m.get("gbps") for m in kept]),
                "ns_per_pkt": mmm([m.get("be_ns_per_pkt") for m in kept]),
                "sched_ns_per_pkt": mmm([m.get("be_sched_ns_per_pkt") for m in kept]),
                "cpu_util": mmm([m.get("be_cpu_util") for m in kept]),
                "runq_wait_pct": mmm([m.get("be_runq_wait_pct") for m in ms]),
                "ext_wait_pct": mmm([m.get("be_ext_wait_pct") for m in ms]),
                "all_rounds_mpps": mmm([m.get("mpps") for m in ms]),
            }
            if v != "dpdk":
                ratios = []
                cpu_ratios = []
                for m in kept:
                    ref = dpdk_of_round(res["measurements"], m)
                    if ref and ref.get("mpps"):
                        ratios.append(m["mpps"] / ref["mpps"])
                        if ref.get("be_ns_per_pkt") and m.get("be_ns_per_pkt"):
                            cpu_ratios.append(m["be_ns_per_pkt"] / ref["be_ns_per_pkt"])
                row["ratio_vs_dpdk"] = mmm(ratios)
                row["cpu_per_pkt_ratio_vs_dpdk"] = mmm(cpu_ratios)
                drops = {}
                txs = 0
                for m in kept:
                    txs += m.get("daemon_tx_packets", 0)
                    for k, val in (m.get("daemon_drops") or {}).items():
                        drops[k] = drops.get(k, 0) + val
                row["daemon_tx_packets"] = txs
                row["daemon_drops"] = {k: val for k, val in drops.items() if val}
            summary.append(row)
    res["summary"] = summary

    head = [
        "backend",
        "frame",
        "kept",
        "Mpps min/med/max",
        "Gbit/s min/med/max",
        "ours/DPDK Mpps (med)",
        "CPU ns/pkt min/med/max",
        "ours/DPDK ns/pkt (med)",
        "CPU util med",
        "Mpps med (all rounds)",
    ]
    rows = []
    for r in summary:
        ratio = r.get("ratio_vs_dpdk")
        rows.append(
            [
                lab(r["variant"]),
                f"{r['size']} B",
                f"{r['kept']}/{r['rounds']}",
                f3(r["mpps"], 2),
                f3(r["gbps"], 1),
                "-" if r["variant"] == "dpdk" else (fmt(ratio["median"], 2) if ratio else "n/a"),
                f3(r["ns_per_pkt"], 0),
                "-" if r["variant"] == "dpdk" else (
                    fmt(r["cpu_per_pkt_ratio_vs_dpdk"]["median"], 2)
                    if r["cpu_per_pkt_ratio_vs_dpdk"] else "n/a"),
                fmt(r["cpu_util"]["median"] * 100, 0) + "%" if r["cpu_util"] else "-",
                fmt(r["all_rounds_mpps"]["median"], 2) if r["all_rounds_mpps"] else "-",
            ]
        )
    text.append("THROUGHPUT (per backend: min/median/max over kept rounds)")
    text.append(table(head, rows))
    text.append(
        "  Mpps, Gbit/s: testpmd Rx-pps / Rx-bps summed over the frontend's two ports over the\n"
        "    measured interval = frames the backend put into the frontend's RX rings (both\n"
        "    directions; every frame crosses the backend once); bits = frame bytes x 8 (Ethernet\n"
        "    header + payload, no CRC, preamble or gap).\n"
        "  ours/DPDK: per round, ours Mpps / DPDK Mpps of the same round (both kept); median.\n"
        "  CPU ns/pkt: delta utime+stime of the backend process (/proc/PID/stat, all threads) over\n"
        "    the interval / packets forwarded, where packets forwarded = delta RX-packets summed\n"
        "    over the frontend's ports over the same interval (for our daemon cross-checked with\n"
        "    the delta of tx_packets from `ctl show -j`: daemon_tx_per_frontend_rx in raw.json).\n"
        "  CPU util: backend CPU time / wall time (1 CPU = 100%)."
    )

    # Per-round detail.
    head = ["round", "backend", "frame", "Mpps", "Gbit/s", "ns/pkt", "util", "be ctxsw/s vol/invol",
            "be wait% (all/others)", "fe wait% (all/others)", "steal% be/fe", "daemon drops",
            "status"]
    rows = []
    for m in sorted(res["measurements"], key=lambda m: (m["round"], m["size"], m["variant"])):
        drops = m.get("daemon_drops")
        dtxt = "-" if drops is None else (
            ",".join(f"{k[5:]}={v}" for k, v in drops.items() if v) or "0")
        rows.append(
            [
                m["round"],
                lab(m["variant"]),
                m["size"],
                fmt(m.get("mpps"), 2),
                fmt(m.get("gbps"), 1),
                fmt(m.get("be_ns_per_pkt"), 0),
                fmt((m.get("be_cpu_util") or 0) * 100, 0) + "%",
                f"{fmt(m.get('be_ctxt_voluntary_per_s'), 0)}/"
                f"{fmt(m.get('be_ctxt_nonvoluntary_per_s'), 0)}",
                f"{fmt(m.get('be_runq_wait_pct'), 1)}/{fmt(m.get('be_ext_wait_pct'), 1)}",
                f"{fmt(m.get('fe_runq_wait_pct'), 1)}/{fmt(m.get('fe_ext_wait_pct'), 1)}",
                f"{fmt(m.get('be_cpu_steal_pct'), 1)}/{fmt(m.get('fe_cpu_steal_pct'), 1)}",
                dtxt,
                "DISCARDED" if m["discarded"] else "ok",
            ]
        )
    text.append("")
    if WAIT_RULE == "raw":
        text.append(
            f"Per round (discarded: run-queue wait summed over the threads of the backend or of "
            f"the frontend > {max_wait}% of the interval)"
        )
    else:
        text.append(
            f"Per round (discarded: the backend or the frontend waited > {max_wait}% of the "
            "interval behind other processes, i.e. min(run-queue wait summed over its threads, "
            "other processes' CPU time on its CPU), or had > that much steal)"
        )
    text.append(table(head, rows))

    # Daemon sanity: traffic through the switch, drops.
    lines = []
    for r in summary:
        if r["variant"] == "dpdk":
            continue
        lines.append(
            f"  {lab(r['variant'])} {r['size']} B: daemon tx_packets over kept intervals "
            f"{r['daemon_tx_packets']}, drops {r['daemon_drops'] or 'none'}"
        )
    per_vf = {}
    for m in res["measurements"]:
        for name, d in (m.get("ctl_delta") or {}).items():
            per_vf.setdefault((m["variant"], name), 0)
            per_vf[(m["variant"], name)] += d["tx_packets"]
    for (v, name), n in sorted(per_vf.items()):
        lines.append(f"  {lab(v)} {name}: tx_packets over all measured intervals {n}")
    if lines:
        text.append("")
        text.append("Daemon counters (ctl show -j deltas over the measured intervals)")
        text.extend(lines)

    # Latency.
    lat_rows = []
    lat_pairs = snap_pairs(evs, "lat_begin", "lat_end", ("variant", "round"))
    lat_samples = {}
    lat_inflight = {}
    for e in evs:
        if e.get("type") == "lat":
            lat_samples[(e["variant"], e["round"])] = e["rx_pps"]
            lat_inflight[(e["variant"], e["round"])] = e.get("in_flight_or_lost")
    recs = []
    for (variant, rnd), p in sorted(lat_pairs.items(), key=lambda kv: (kv[0][1], str(kv[0]))):
        iv = interval(p["begin"], p["end"])
        samples = lat_samples.get((variant, rnd), [])
        hop_ns = []
        zero = 0
        for show in samples:
            for pps in show:
                if pps > 0:
                    hop_ns.append(1e9 / pps)
                else:
                    zero += 1
        reasons = discard_reasons(iv, max_wait)
        if not hop_ns:
            reasons.append("no samples")
        recs.append({
            "variant": variant,
            "round": rnd,
            "interval": iv,
            "windows": len(samples),
            "zero_rate_windows": zero,
            "in_flight_or_lost": lat_inflight.get((variant, rnd)),
            "hop_ns_p50": pct(hop_ns, 50) if hop_ns else None,
            "hop_ns_p99": pct(hop_ns, 99) if hop_ns else None,
            "hop_ns": hop_ns,
            "discarded": reasons,
        })
    res["latency"] = recs
    lat_summary = []
    for variant in variants:
        mine = [x for x in recs if x["variant"] == variant]
        if not mine:
            continue
        kept = [x for x in mine if not x["discarded"]]
        pooled = [h for x in kept for h in x["hop_ns"]]
        pooled_all = [h for x in mine for h in x["hop_ns"]]
        s = {
            "variant": variant,
            "rounds": len(mine),
            "kept": len(kept),
            "windows": len(pooled),
            "zero_rate_windows": sum(x["zero_rate_windows"] for x in mine),
            "in_flight_or_lost": [x["in_flight_or_lost"] for x in mine],
            "one_way_ns_p50": pct(pooled, 50) if pooled else None,
            "one_way_ns_p99": pct(pooled, 99) if pooled else None,
            "all_rounds_one_way_ns_p50": pct(pooled_all, 50) if pooled_all else None,
            "all_rounds_one_way_ns_p99": pct(pooled_all, 99) if pooled_all else None,
            "one_way_ns_round_medians": mmm([x["hop_ns_p50"] for x in kept]),
            "be_cpu_ns_per_pkt": mmm([x["interval"].get("be_ns_per_pkt") for x in kept]),
            "be_cpu_util": mmm([x["interval"].get("be_cpu_util") for x in kept]),
            "be_ctxt_per_s": mmm([
                (x["interval"].get("be_ctxt_voluntary_per_s") or 0)
                + (x["interval"].get("be_ctxt_nonvoluntary_per_s") or 0) for x in kept]),
        }
        lat_summary.append(s)
        infl = sorted({tuple(x) for x in s["in_flight_or_lost"] if x})
        lat_rows.append(
            [
                lab(variant),
                f"{s['kept']}/{s['rounds']}",
                s["windows"],
                s["zero_rate_windows"],
                fmt(s["one_way_ns_p50"], 0),
                fmt(s["one_way_ns_p99"], 0),
                f"{fmt(s['all_rounds_one_way_ns_p50'], 0)}/{fmt(s['all_rounds_one_way_ns_p99'], 0)}",
                f3(s["be_cpu_ns_per_pkt"], 0),
                fmt(s["be_cpu_util"]["median"] * 100, 0) + "%" if s["be_cpu_util"] else "-",
                fmt(s["be_ctxt_per_s"]["median"], 0) if s["be_ctxt_per_s"] else "-",
                " ".join(f"{a}/{b}" for a, b in infl) or "-",
            ]
        )
    res["latency_summary"] = lat_summary
    if lat_rows:
        text.append("")
        text.append(
            "LATENCY, 64 B, one packet circulating per direction (tx_first with burst 1 on each "
            "port).\nOne-way = the mean time of one hop (frontend TX -> backend -> frontend RX -> "
            "re-sent) in a sampling window = 1 / that port's Rx rate;\npercentiles are over "
            "sampling windows (per port) pooled over kept rounds, not over single packets"
        )
        text.append(
            table(
                ["backend", "kept", "windows", "stalled windows", "one-way p50 ns",
                 "one-way p99 ns", "all rounds p50/p99", "CPU ns/pkt min/med/max", "CPU util",
                 "ctxsw/s", "in flight 0->1/1->0"],
                lat_rows,
            )
        )
    return res, "\n".join(text)


def report_oneway(evs, max_wait):
    env = next((e for e in evs if e.get("type") == "env"), {})
    res = {"env": env, "max_runq_wait_pct": max_wait, "wait_rule": WAIT_RULE}

    def own(m):
        r = [] if m.get("sink_frames") else ["nothing delivered"]
        if m.get("sink_bad"):
            r.append(f"the sink saw {m['sink_bad']} bad used entries")
        return r

    res["measurements"], variants = measured_rounds(evs, max_wait, own)
    summary, rows = [], []
    for size in sorted({m["size"] for m in res["measurements"]}):
        for v in variants:
            ms = [m for m in res["measurements"] if m["variant"] == v and m["size"] == size]
            kept = [m for m in ms if not m["discarded"]]
            ratios = []
            for m in kept:
                ref = dpdk_of_round(res["measurements"], m)
                if v != "dpdk" and ref and ref.get("delivered_mpps"):
                    ratios.append(m["delivered_mpps"] / ref["delivered_mpps"])
            row = {
                "variant": v, "size": size, "rounds": len(ms), "kept": len(kept),
                "delivered_mpps": mmm([m.get("delivered_mpps") for m in kept]),
                "delivered_gbps": mmm([m.get("delivered_gbps") for m in kept]),
                "gen_mpps": mmm([m.get("gen_mpps") for m in kept]),
                "loss_pct": mmm([m.get("loss_pct") for m in kept]),
                "ns_per_pkt": mmm([m.get("be_ns_per_pkt") for m in kept]),
                "cpu_util": mmm([m.get("be_cpu_util") for m in kept]),
                "sink_cpu_util": mmm([m.get("sink_cpu_util") for m in kept]),
                "ratio_vs_dpdk": mmm(ratios),
            }
            summary.append(row)
            rows.append([
                lab(v), f"{size} B", f"{row['kept']}/{row['rounds']}",
                f3(row["delivered_mpps"], 2), f3(row["delivered_gbps"], 1),
                "-" if v == "dpdk" else (fmt(row["ratio_vs_dpdk"]["median"], 2)
                                         if row["ratio_vs_dpdk"] else "n/a"),
                f3(row["gen_mpps"], 2), f3(row["loss_pct"], 1),
                f3(row["ns_per_pkt"], 0),
                fmt(row["cpu_util"]["median"] * 100, 0) + "%" if row["cpu_util"] else "-",
                fmt(row["sink_cpu_util"]["median"] * 100, 0) + "%" if row["sink_cpu_util"] else "-",
            ])
    res["summary"] = summary
    sq = env.get("sink_queue_size", "?")
    sc = env.get("sink_coalesce") or (sq // 2 if isinstance(sq, int) else "?")
    text = ["ONE-WAY (generator -> backend -> sink; per backend: min/median/max over kept rounds)",
            f"  rings: generator {env.get('queue_size', '?')}, sink {sq}; the sink asks for a "
            f"call every {sc} used buffers"]
    text.append(table(["backend", "frame", "kept", "delivered Mpps", "delivered Gbit/s",
                       "ours/DPDK (med)", "sent Mpps", "loss %", "CPU ns/frame", "CPU util",
                       "sink CPU"], rows))
    text.append(
        "  delivered: frames vu-sink received (its counters, over its own timestamps); sent:\n"
        "    the generator's Tx-pps (frames its TX ring accepted; a full ring makes it retry);\n"
        "    loss = 1 - delivered/sent (frames the backend dropped, e.g. the sink's ring full).\n"
        "  ours/DPDK: per round, delivered Mpps over DPDK's of the same round (both kept).\n"
        "  CPU ns/frame: the backend's CPU time (all threads) over the interval / frames delivered.")
    rows = []
    for m in sorted(res["measurements"], key=lambda m: (m["round"], m["size"], m["variant"])):
        drops = m.get("daemon_drops")
        rows.append([
            m["round"], lab(m["variant"]), m["size"], fmt(m.get("delivered_mpps")),
            fmt(m.get("gen_mpps")), fmt(m.get("loss_pct"), 1), fmt(m.get("be_ns_per_pkt"), 0),
            fmt((m.get("be_cpu_util") or 0) * 100, 0) + "%",
            fmt(m.get("sink_wakeups_per_s"), 0),
            f"{fmt(m.get('be_runq_wait_pct'), 1)}/{fmt(m.get('be_ext_wait_pct'), 1)}",
            f"{fmt(m.get('fe_runq_wait_pct'), 1)}/{fmt(m.get('fe_ext_wait_pct'), 1)}",
            "-" if drops is None else (
                ",".join(f"{k[5:]}={v}" for k, v in drops.items() if v) or "0"),
            "DISCARDED: " + "; ".join(m["discarded"]) if m["discarded"] else "ok",
        ])
    text.append("")
    text.append(f"Per round (discarded: backend or frontend waited > {max_wait}% of the interval "
                "behind other processes; the sink counts as the frontend's own)")
    text.append(table(["round", "backend", "frame", "delivered Mpps", "sent Mpps", "loss %",
                       "ns/frame", "util", "sink calls/s", "be wait% all/others",
                       "fe wait% all/others", "daemon drops", "status"], rows))
    return res, "\n".join(text)


def report_scale(evs, out):
    env = next((e for e in evs if e.get("type") == "env"), {})
    res = {"env": env, "starts": [], "traffic": []}
    text = []
    starts = [e for e in evs if e.get("type") == "scale_start"]
    res["starts"] = starts
    rows = []
    for vfs in sorted({e["vfs"] for e in starts}):
        es = [e for e in starts if e["vfs"] == vfs]
        ready = mmm([e["ready_ms"] for e in es])
        rss = mmm([e["rss_kb"] / 1024 for e in es])
        thr = mmm([e["threads"] for e in es])
        socks = sorted({e.get("sockets") for e in es})
        rows.append([vfs, ",".join(map(str, socks)), len(es), f3(ready, 1), f3(rss, 1),
                     f3(thr, 0)])
    text.append(
        "SCALE: start-up and idle footprint, event-driven (min/median/max over starts; start = "
        "just before fork/exec, ready = the ready file appears, i.e. every socket listens)"
    )
    text.append(
        table(["VFs", "sockets (incl. control)", "starts", "start->ready ms", "idle RSS MiB",
               "threads"], rows)
    )
    pairs = snap_pairs(evs, "begin", "end", ("vfs", "variant"))
    rows = []
    for (vfs, variant), p in sorted(pairs.items()):
        iv = interval(p["begin"], p["end"])
        idle = p["begin"].get("idle") or {}
        ports = p["end"].get("ports") or []
        per_pair = []
        for i in range(0, len(ports) - 1, 2):
            per_pair.append((ports[i]["rx_pps"] + ports[i + 1]["rx_pps"]) / 1e6)
        iv["per_pair_mpps"] = per_pair
        quiet = []
        for name, d in (iv.get("ctl_delta") or {}).items():
            if name.startswith("vf") and int(name[2:]) < len(ports) and d["tx_packets"] == 0:
                quiet.append(name)
        iv["vfs_without_tx"] = quiet
        rec = {"vfs": vfs, "variant": variant, "idle_before_traffic": idle}
        rec.update(iv)
        rec["noisy"] = discard_reasons(iv, 5.0)
        res["traffic"].append(rec)
        drops = iv.get("daemon_drops") or {}
        rows.append(
            [
                vfs,
                lab(variant),
                len(ports) // 2,
                fmt(iv.get("mpps"), 2),
                f"{min(per_pair):.2f}/{max(per_pair):.2f}" if per_pair else "-",
                fmt(iv.get("be_ns_per_pkt"), 0),
                fmt((iv.get("be_cpu_util") or 0) * 100, 0) + "%",
                fmt((idle.get("vmrss_kb") or 0) / 1024, 1),
                fmt((iv.get("be_rss_kb") or 0) / 1024, 1),
                f"{idle.get('threads', '-')}->{iv.get('be_threads', '-')}",
                f"{fmt(iv.get('be_runq_wait_pct'), 0)}/{fmt(iv.get('be_ext_wait_pct'), 1)}",
                f"{fmt(iv.get('fe_runq_wait_pct'), 1)}/{fmt(iv.get('fe_ext_wait_pct'), 1)}",
                ",".join(f"{k[5:]}={v}" for k, v in drops.items() if v) or "0",
                ",".join(quiet) or "-",
                "NOISY" if rec["noisy"] else "ok",
            ]
        )
    if rows:
        text.append("")
        text.append(
            "SCALE: VF pairs passing traffic at once (one testpmd, paired 0<->1, 2<->3, ...; "
            "NOISY: > 5% waited behind other processes, not discarded: one run each)"
        )
        text.append(
            table(
                ["VFs", "backend", "pairs", "aggregate Mpps", "per-pair Mpps min/max", "CPU ns/pkt",
                 "CPU util", "RSS idle MiB", "RSS load MiB", "threads idle->load",
                 "be wait% all/others", "fe wait% all/others", "daemon drops", "VFs with no tx",
                 "status"],
                rows,
            )
        )
    return res, "\n".join(text)


def cmd_report(a):
    global WAIT_RULE
    WAIT_RULE = a.wait_rule
    evs = load_events(a.dir)
    env = next((e for e in evs if e.get("type") == "env"), {})
    LABELS["ours-poll"] = f"ours busy-poll {env.get('poll_us', '?')}us" + (
        " (TOML)" if env.get("poll_via") == "config" else "")
    LABELS["b-poll"] = f"B (DAEMON_B) busy-poll {env.get('poll_us', '?')}us"
    if a.mode == "scale":
        res, text = report_scale(evs, a.dir)
    elif a.mode == "oneway":
        res, text = report_oneway(evs, a.max_wait)
    else:
        res, text = report_throughput(evs, a.dir, a.max_wait)
    res["mode"] = a.mode
    with open(os.path.join(a.dir, "raw.json"), "w") as f:
        json.dump(res, f, indent=1)
    with open(os.path.join(a.dir, "table.txt"), "w") as f:
        f.write(text + "\n")
    print(text)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)

    p = sub.add_parser("macs")
    p.add_argument("json")
    p.add_argument("names", nargs="+")
    p.set_defaults(func=cmd_macs)

    p = sub.add_parser("measure")
    p.add_argument("--out", required=True)
    p.add_argument("--fifo", required=True)
    p.add_argument("--log", required=True)
    p.add_argument("--nports", type=int, default=2)
    p.add_argument("--be-pid", type=int)
    p.add_argument("--fe-pid", type=int)
    p.add_argument("--be-cpu", type=int)
    p.add_argument("--fe-cpu", type=int)
    p.add_argument("--daemon")
    p.add_argument("--sockdir")
    p.add_argument("--seconds", type=float, required=True)
    p.add_argument("--sample-ms", type=float, default=0)
    p.add_argument("--phase-prefix", default="")
    p.add_argument("--stop", action="store_true")
    p.add_argument("--tag", action="append")
    p.add_argument("--sink-stats")
    p.add_argument("--sink-pid", type=int)
    p.set_defaults(func=cmd_measure)

    p = sub.add_parser("wait-file")
    p.add_argument("path")
    p.set_defaults(func=cmd_wait_file)

    p = sub.add_parser("proc")
    p.add_argument("pid", type=int)
    p.set_defaults(func=cmd_proc)

    p = sub.add_parser("env")
    p.add_argument("--out", required=True)
    p.add_argument("--tag", action="append")
    p.set_defaults(func=cmd_env)

    p = sub.add_parser("report")
    p.add_argument("mode", choices=["throughput", "scale", "oneway"])
    p.add_argument("dir")
    p.add_argument("--max-wait", type=float, default=5.0)
    p.add_argument("--wait-rule", choices=["others", "raw"], default="others")
    p.set_defaults(func=cmd_report)

    a = ap.parse_args()
    a.func(a)


if __name__ == "__main__":
    main()
