#!/usr/bin/env bash
# Many VFs in a real guest: boots the e2e guest (QEMU 11.1, TCG here) with 64 and with 255 VFs
# against the daemon and reports, per VF count:
#   - the time the guest takes to enable and bind every VF (scenario b: `echo N > sriov_numvfs`,
#     every VF bound to virtio-pci, every MAC checked);
#   - the daemon's threads and RSS when it starts (no frontend yet) and their peak while the guest
#     runs with every VF started (samples every 0.5 s), and QEMU's peak RSS;
#   - one ping through the last VF to the PF (scenario o);
#   - the whole guest run's wall time.
# Run by `scripts/bench.sh guest-scale`. Settings (environment):
#   GUEST_SCALE_VFS="64 255"  GUEST_SCALE_MEMORY=2G  GUEST_SCALE_TIMEOUT=1500 (QEMU, seconds)
#   RESULTS=dir (default results/bench-guest-scale-<timestamp>)
# Needs a quiet machine for its timings; provisions like scripts/e2e.sh.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
VFS_LIST=${GUEST_SCALE_VFS:-64 255}
MEMORY=${GUEST_SCALE_MEMORY:-2G}
QTIMEOUT=${GUEST_SCALE_TIMEOUT:-1500}
RESULTS=${RESULTS:-$ROOT/results/bench-guest-scale-$(date +%Y%m%d-%H%M%S)}
mkdir -p "$RESULTS"
RESULTS=$(cd "$RESULTS" && pwd)

log() { printf '[guest-scale] %s\n' "$*"; }

# sample OUT: every 0.5 s, one line "t threads rss_kb qemu_rss_kb started" for the daemon the
# e2e run started (the only vhost-user-sriov-net process with --ready-file), until killed.
sample() {
    local out=$1 pid qpid t0=$SECONDS
    while :; do
        pid=$(pgrep -n -f -- 'vhost-user-sriov-net .*--ready-file' || true)
        qpid=$(pgrep -n -f -- 'qemu-system-x86_64.*sriov-pf' || true)
        if [ -n "$pid" ] && [ -r "/proc/$pid/status" ]; then
            awk -v t=$((SECONDS - t0)) -v q="$( [ -n "$qpid" ] && awk '/^VmRSS/ {print $2}' "/proc/$qpid/status" 2>/dev/null || echo 0)" \
                '/^Threads/ {th = $2} /^VmRSS/ {rss = $2} END {print t, th, rss, q}' "/proc/$pid/status" >>"$out" 2>/dev/null || true
        fi
        sleep 0.5
    done
}

: >"$RESULTS/table.txt"
for n in $VFS_LIST; do
    run=$RESULTS/vfs$n
    log "$n VFs: booting the guest (E2E_ONLY=abo, memory $MEMORY, TCG: this takes minutes)"
    sample "$run.samples" &
    sampler=$!
    t0=$SECONDS
    rc=0
    E2E_VFS=$n E2E_ONLY=abo E2E_UPLINK=0 E2E_MEMORY=$MEMORY E2E_QEMU_TIMEOUT=$QTIMEOUT \
        E2E_TIMEOUT=$((QTIMEOUT + 300)) E2E_RESULTS=$run "$ROOT/scripts/e2e.sh" >"$run.log" 2>&1 || rc=$?
    wall=$((SECONDS - t0))
    kill "$sampler" 2>/dev/null || true
    wait "$sampler" 2>/dev/null || true
    python3 - "$run" "$n" "$wall" "$rc" <<'EOF' | tee -a "$RESULTS/table.txt"
import json, re, sys
run, n, wall, rc = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
try:
    summary = json.load(open(f"{run}/summary.json"))
    res = {s["scenario"]: s for s in summary["scenarios"]}
except (OSError, ValueError, KeyError):
    res = {}
def guest_time(sid):
    m = re.search(r"\[([0-9.]+)s\]", res.get(sid, {}).get("detail", ""))
    return float(m.group(1)) if m else None
def snap(name):
    try:
        parts = json.load(open(f"{run}/snap-{name}.json"))["partitions"]
        return sum(p["state"] == "started" for p in parts)
    except (OSError, ValueError, KeyError):
        return None
rows = []
for line in open(f"{run}.samples"):
    f = line.split()
    if len(f) == 4 and all(x.isdigit() for x in f):
        rows.append(tuple(map(int, f)))
first = rows[0] if rows else (0, 0, 0, 0)
peak_thr = max((r[1] for r in rows), default=0)
peak_rss = max((r[2] for r in rows), default=0)
peak_q = max((r[3] for r in rows), default=0)
b, o = res.get("b", {}).get("status", "missing"), res.get("o", {}).get("status", "missing")
print(f"{n} VFs: e2e exit {rc}, wall {wall} s; scenario b {b} in {guest_time('b')} s (numvfs {n}, all bound, MACs checked); "
      f"o {o} ({res.get('o', {}).get('detail', '')[:80]}); started after b: {snap('b')} of {n + 1}; "
      f"daemon threads {first[1]} at first sample -> {peak_thr} peak, RSS {first[2] / 1024:.1f} -> {peak_rss / 1024:.1f} MiB; "
      f"QEMU RSS peak {peak_q / 1024:.0f} MiB")
EOF
done
log "results in $RESULTS (table.txt; each run's e2e results in vfs<N>/)"
