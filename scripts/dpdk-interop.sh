#!/usr/bin/env bash
# scripts/dpdk-interop.sh - interop test with DPDK's virtio_user (testpmd, Debian dpdk-dev 22.11)
# as the frontend, at several ring sizes.
#
# Starts the daemon (4 VFs), then for each queue size: one testpmd with two net_virtio_user ports
# on vf0.sock and vf1.sock (queue_size=N, --rxd/--txd N, each port with its VF's MAC as
# anti-spoof requires), mac forwarding between them (port 0 sends to VF1's MAC, port 1 to VF0's),
# `start tx_first` with about half a ring of frames in flight per port, a few seconds of traffic,
# stop. scripts/dpdk_interop_check.py then checks testpmd's port statistics and the daemon's
# `ctl show -j` counters (frames both ways, counts consistent, no malformed/spoof/unknown drops,
# no other partition touched) and, after testpmd quit, that VF0 and VF1 are back to `waiting`
# with one more connect and disconnect, so the next size starts from a clean partition.
# Prints one row per size; exits non-zero, with the daemon's and testpmd's logs, on any failure.
# Run as root on Debian 12 x86_64; installs DPDK with apt-get when it is missing.
#
# Environment:
#   INTEROP_SIZES    queue sizes (default "256 1024 4096")
#   INTEROP_SECONDS  seconds of traffic per size (default 3)
#   INTEROP_TIMEOUT  time limit of the run in seconds, apt-get excluded (default 110)
#   INTEROP_DAEMON   daemon binary (default ${CARGO_TARGET_DIR:-target}/release/vhost-user-sriov-net,
#                    built by scripts/test.sh)
#   INTEROP_HUGE     auto | 1 | 0 (default 0: --no-huge, memfd memory; see scripts/lib/dpdk.sh)
#   INTEROP_CPU      CPU for testpmd (default: the last one)
#   INTEROP_RESULTS  logs and snapshots (default <repo>/results/dpdk-interop-<timestamp>)
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
CHECK=$ROOT/scripts/dpdk_interop_check.py
SIZES=${INTEROP_SIZES:-256 1024 4096}
TRAFFIC_S=${INTEROP_SECONDS:-3}
TIMEOUT=${INTEROP_TIMEOUT:-110}
DAEMON=${INTEROP_DAEMON:-${CARGO_TARGET_DIR:-$ROOT/target}/release/vhost-user-sriov-net}
HUGE=${INTEROP_HUGE:-0}
CPU=${INTEROP_CPU:-$(($(nproc) - 1))}
RESULTS=${INTEROP_RESULTS:-$ROOT/results/dpdk-interop-$(date +%Y%m%d-%H%M%S)}
export RUST_LOG=${RUST_LOG:-info}
export PYTHONDONTWRITEBYTECODE=1

log() { printf '[interop %s] %s\n' "$(date +%T)" "$*" >&2; }

DAEMON_LOG=
DAEMON_PID=
CUR_TP=
die() {
    log "ERROR: $*"
    if [[ -n $CUR_TP && -n ${TP_LOG[$CUR_TP]:-} && -f ${TP_LOG[$CUR_TP]} ]]; then
        # Without the port-info replies (the link polls), then the last link states.
        log "---- testpmd log (${TP_LOG[$CUR_TP]}), last 30 lines without port info ----"
        awk '/Infos for port/ { skip = 1; next }
            skip { if (/Device error handling mode/) skip = 0; next }
            /^testpmd> (show port info all)?$/ || /^$/ { next }
            { print }' "${TP_LOG[$CUR_TP]}" | tail -n 30 >&2
        grep -h 'Link status' "${TP_LOG[$CUR_TP]}" | tail -n 2 | sed 's/^/last port info: /' >&2 || true
    fi
    if [[ -n $DAEMON_LOG && -f $DAEMON_LOG ]]; then
        log "---- daemon log ($DAEMON_LOG), last 40 lines ----"
        tail -n 40 "$DAEMON_LOG" >&2
    fi
    exit 1
}

[[ $(id -u) == 0 ]] || die "run as root (apt-get, DPDK)"

WORK=
LOGDIR=$RESULTS/logs
DPDK_TAG=sriovinterop
WATCHDOG_PID=
# shellcheck source=lib/dpdk.sh
. "$ROOT/scripts/lib/dpdk.sh"

cleanup() {
    local rc=$?
    trap - EXIT INT TERM ALRM
    disarm
    dpdk_cleanup
    [[ -n $WORK ]] && rm -rf "$WORK"
    if ((rc != 0)); then
        log "FAILED (exit $rc); logs in $RESULTS"
    fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
trap 'die "time limit reached ($WATCHDOG_WHAT)"' ALRM

# A SIGALRM to this shell after secs seconds; the trap above ends the run (cleanup included).
WATCHDOG_WHAT=
arm() { # secs what
    disarm
    WATCHDOG_WHAT=$2
    # shellcheck disable=SC2016 # expanded by the inner bash
    setsid bash -c 'sleep "$1"; kill -ALRM "$2"' _ "$1" $$ &
    WATCHDOG_PID=$!
}
disarm() {
    if [[ -n $WATCHDOG_PID ]]; then
        kill -TERM -- "-$WATCHDOG_PID" 2>/dev/null || true
        wait "$WATCHDOG_PID" 2>/dev/null || true
        WATCHDOG_PID=
    fi
}

ctl_json() { # out-file
    timeout 10 "$DAEMON" ctl --socket-dir "$SOCKDIR" show -j >"$1" ||
        die "ctl show -j failed"
}

# Poll the daemon until VF0 and VF1 are in state $1.
wait_state() { # state timeout_s snapshot-file
    local want=$1 t=$2 out=$3 i
    for ((i = 0; i < t * 10; i++)); do
        ctl_json "$out"
        python3 "$CHECK" state --snap "$out" --state "$want" vf0 vf1 && return 0
        kill -0 "$DAEMON_PID" 2>/dev/null || die "the daemon exited"
        sleep 0.1
    done
    die "vf0/vf1 not '$want' after $t s:" \
        "$(python3 "$CHECK" state --snap "$out" --state "$want" vf0 vf1 --verbose || true)"
}

# Snapshot once the counters stand still (the daemon has finished what the frontend queued).
settled_snapshot() { # out-file
    local i
    ctl_json "$1"
    for ((i = 0; i < 50; i++)); do
        sleep 0.2
        ctl_json "$1.next"
        if cmp -s "$1" "$1.next"; then
            rm -f "$1.next"
            return 0
        fi
        mv "$1.next" "$1"
    done
    die "the daemon's counters still move 10 s after testpmd stopped forwarding"
}

run_size() { # queue size
    local n=$1 name=q$1 mbufs bursts
    local snap=$RESULTS/ctl-q$n
    ctl_json "$snap-before.json"
    # Every RX ring full of mbufs, every TX ring full, half a ring in flight per port, plus slack.
    mbufs=$((8 * n + 4096))
    bursts=$((n / 64))
    tp_start "$name" "$CPU" \
        --vdev "net_virtio_user0,path=$SOCKDIR/vf0.sock,queues=1,queue_size=$n,mac=$MAC0" \
        --vdev "net_virtio_user1,path=$SOCKDIR/vf1.sock,queues=1,queue_size=$n,mac=$MAC1" \
        -- -i --nb-cores=1 --forward-mode=mac --eth-peer="0,$MAC1" --eth-peer="1,$MAC0" \
        --rxd="$n" --txd="$n" --burst=32 --total-num-mbufs="$mbufs"
    # From here on a failure shows this testpmd's log (tp_start shows it for its own failures).
    CUR_TP=$name
    tp_links_up "$name" 2 15 || die "queue size $n: testpmd's links not up after 15 s"
    wait_state started 10 "$snap-started.json"
    tp_cmd "$name" "start tx_first $bursts"
    sleep "$TRAFFIC_S"
    tp_cmd "$name" stop
    tp_wait_for "$name" 'Accumulated forward statistics' 1 10 || die "no forward statistics"
    settled_snapshot "$snap-traffic.json"
    tp_cmd "$name" "show port stats all"
    tp_wait_for "$name" 'NIC statistics for port 1' 1 10 || die "no port statistics"
    kill -0 "$DAEMON_PID" 2>/dev/null || die "the daemon exited"
    tp_quit "$name"
    ((TP_RC[$name] == 0)) ||
        die "queue size $n: testpmd did not quit cleanly (status ${TP_RC[$name]})"
    wait_state waiting 10 "$snap-after.json"
    python3 "$CHECK" size --size "$n" --testpmd-log "${TP_LOG[$name]}" \
        --before "$snap-before.json" --traffic "$snap-traffic.json" --after "$snap-after.json" \
        --mac0 "$MAC0" --mac1 "$MAC1" >>"$RESULTS/summary.txt" || {
        tail -n 1 "$RESULTS/summary.txt" >&2
        die "queue size $n: checks failed"
    }
    tail -n 1 "$RESULTS/summary.txt"
    CUR_TP=
}

main() {
    local t0 n
    mkdir -p "$LOGDIR"
    [[ -x $DAEMON ]] || die "no daemon binary at $DAEMON (cargo build --release first)"
    arm 600 "apt-get"
    dpdk_install_deps
    t0=$SECONDS
    arm "$TIMEOUT" "INTEROP_TIMEOUT=$TIMEOUT s"
    WORK=$(mktemp -d /tmp/sriov-interop.XXXXXX)
    dpdk_setup_memory
    log "sizes: $SIZES; memory: ${EAL_MEM[*]}; testpmd on CPU $CPU; results in $RESULTS"

    SOCKDIR=$WORK/sock
    mkdir -p "$SOCKDIR"
    DAEMON_LOG=$RESULTS/daemon.log
    "$DAEMON" --socket-dir "$SOCKDIR" --ready-file "$WORK/ready" >"$DAEMON_LOG" 2>&1 &
    DAEMON_PID=$!
    PIDS[$DAEMON_PID]=1
    local i
    for ((i = 0; i < 100; i++)); do
        [[ -s $WORK/ready ]] && break
        kill -0 "$DAEMON_PID" 2>/dev/null || die "the daemon exited during start-up"
        sleep 0.1
    done
    [[ -s $WORK/ready ]] || die "the daemon is not ready after 10 s"
    ctl_json "$RESULTS/ctl-start.json"
    MAC0='' MAC1=''
    read -r MAC0 MAC1 < <(python3 "$ROOT/scripts/bench/bench.py" macs "$RESULTS/ctl-start.json" \
        vf0 vf1)
    [[ -n $MAC1 ]] || die "no MACs for vf0 and vf1 in $RESULTS/ctl-start.json"

    : >"$RESULTS/summary.txt"
    printf '| size | result | detail\n'
    for n in $SIZES; do
        run_size "$n"
    done

    stop_pid "$DAEMON_PID" 10
    DAEMON_PID=
    ((STOP_RC == 0)) || die "the daemon exited with status $STOP_RC on SIGTERM"
    if grep -E '\b(ERROR|WARN)\b' "$DAEMON_LOG" >"$RESULTS/daemon-warnings.txt"; then
        cat "$RESULTS/daemon-warnings.txt" >&2
        die "the daemon logged warnings or errors"
    fi
    log "all $(wc -w <<<"$SIZES") sizes passed in $((SECONDS - t0)) s"
}

main "$@"
