#!/usr/bin/env bash
# Uplink throughput (issue 13 point 6) on this machine, in a network namespace created for the
# run (and deleted after):
#   tap    VF0 -> tap -> the namespace's stack (ours), against DPDK testpmd with net_vhost and
#          net_tap in io forwarding (the anchor), same frontend, rounds alternating;
#   vxlan  VF0 -> VXLAN over 127.0.0.1 -> 127.0.0.2 -> a second daemon (ours only).
# The frontend is one testpmd with one net_virtio_user port carrying VF0's MAC, in txonly mode
# (UDP/IPv4 frames of SIZE bytes, without FCS) to a MAC behind the uplink, pinned to
# FRONTEND_CPU; backends (both daemons for vxlan) are pinned to BACKEND_CPU. Frames are counted
# where they arrive: the tap's rx_packets in the namespace, the second daemon's uplink rx.
# Prints one row per variant and size: median Mpps and Gbit/s (frame bytes) with min-max.
# The daemons, the taps and the VXLAN segment get the MTU the largest frame needs (1518-byte
# frames: 1504), as scripts/bench.sh gives its daemon; loopback carries VXLAN at any of these.
#
#   scripts/bench.sh uplinks        (or scripts/bench-uplinks.sh: this script)
#
# Settings (environment): ROUNDS=3 SECONDS_PER_ROUND=5 WARMUP=1 SIZES="64 1518"
#   VXLAN_SIZES=SIZES VARIANTS="ours-tap dpdk-tap ours-vxlan" BACKEND_CPU=0 FRONTEND_CPU=1
#   QUEUE_SIZE=256 HUGE=auto DAEMON=path RESULTS=dir (default results/bench-uplinks-<timestamp>)
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
ROUNDS=${ROUNDS:-3}
SECONDS_PER_ROUND=${SECONDS_PER_ROUND:-5}
WARMUP=${WARMUP:-1}
SIZES=${SIZES:-64 1518}
VXLAN_SIZES=${VXLAN_SIZES:-$SIZES}
VARIANTS=${VARIANTS:-ours-tap dpdk-tap ours-vxlan}
BACKEND_CPU=${BACKEND_CPU:-0}
FRONTEND_CPU=${FRONTEND_CPU:-1}
QUEUE_SIZE=${QUEUE_SIZE:-256}
HUGE=${HUGE:-auto}
DAEMON=${DAEMON:-}
RESULTS=${RESULTS:-$ROOT/results/bench-uplinks-$(date +%Y%m%d-%H%M%S)}
export RUST_LOG=${RUST_LOG:-info}
# The daemon drops frames over a port's MTU: every port gets the one the largest frame needs.
MTU=1500
for _s in $SIZES $VXLAN_SIZES; do
    if ((_s - 14 > MTU)); then MTU=$((_s - 14)); fi
done

log() { printf '[bench-uplinks %s] %s\n' "$(date +%T)" "$*" >&2; }
die() {
    log "ERROR: $*"
    exit 1
}

case "${1:-}" in
-h | --help | help)
    sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed '$d' | sed 's/^# \{0,1\}//'
    exit 0
    ;;
esac
[[ $(id -u) == 0 ]] || die "run as root (namespaces, taps, hugepages)"

# The run happens inside a namespace of its own: its taps, its loopback and its sysfs.
if [[ -z ${BENCH_UPLINKS_NS:-} ]]; then
    mkdir -p "$RESULTS"
    RESULTS=$(cd "$RESULTS" && pwd)
    if [[ -z $DAEMON ]]; then
        log "cargo build --release"
        (cd "$ROOT" && cargo build --release --quiet)
        DAEMON=${CARGO_TARGET_DIR:-$ROOT/target}/release/vhost-user-sriov-net
    fi
    ns=sriov-bench-$$
    ip netns add "$ns"
    rc=0
    BENCH_UPLINKS_NS=$ns DAEMON=$DAEMON RESULTS=$RESULTS \
        ip netns exec "$ns" "${BASH_SOURCE[0]}" "$@" || rc=$?
    ip netns del "$ns"
    exit "$rc"
fi

WORK=$(mktemp -d /tmp/sriov-bench-uplinks.XXXXXX)
LOGDIR=$RESULTS/logs
mkdir -p "$LOGDIR"
DPDK_TAG=sriovbu
# shellcheck source=lib/dpdk.sh
. "$ROOT/scripts/lib/dpdk.sh"

cleanup() {
    local rc=$?
    trap - EXIT INT TERM
    dpdk_cleanup
    rm -rf "$WORK"
    ((rc == 0)) || log "failed (exit $rc); logs are in $LOGDIR"
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

dpdk_install_deps
dpdk_setup_memory
ip link set lo up
cp "$DAEMON" "$WORK/daemon"
DAEMON=$WORK/daemon
PEER_MAC=02:00:00:00:00:99
B_BASE=02:bb:00:00:00:00

N=0
PID_a='' PID_b='' DIR_a='' DIR_b=''
daemon_start() { # name args... -> PID_<name>, DIR_<name>
    local name=$1 i dir
    shift
    N=$((N + 1))
    dir=$WORK/$name-$N
    mkdir -p "$dir"
    taskset -c "$BACKEND_CPU" "$DAEMON" --socket-dir "$dir" --ready-file "$dir/ready" "$@" \
        >"$LOGDIR/$(printf '%03d' "$N")-$name.log" 2>&1 &
    PIDS[$!]=1
    printf -v "PID_$name" '%s' "$!"
    printf -v "DIR_$name" '%s' "$dir"
    for ((i = 0; i < 200; i++)); do
        [[ -s $dir/ready ]] && return 0
        sleep 0.05
    done
    die "daemon $name not ready; log $LOGDIR"
}

frontend_start() { # sock mac peer
    tp_start fe "$FRONTEND_CPU" \
        --vdev "net_virtio_user0,path=$1,queues=1,queue_size=$QUEUE_SIZE,mac=$2" \
        -- -i --nb-cores=1 --forward-mode=txonly "--eth-peer=0,$3" --total-num-mbufs=16384
    tp_links_up fe 1 20 || die "frontend link not up; log ${TP_LOG[fe]}"
}

rx_tap() { cat "/sys/class/net/$1/statistics/rx_packets"; }
rx_uplink() { # sockdir
    "$DAEMON" ctl --socket-dir "$1" show -j |
        python3 -c 'import json,sys; print(json.load(sys.stdin)["uplinks"][0]["counters"]["rx_packets"])'
}

# Frames per second arriving at the counter `$@`, while the frontend sends SIZE-byte frames.
measure() { # size counter-command...
    local size=$1 c0 c1 t0 t1
    shift
    tp_cmd fe "set txpkts $size"
    tp_cmd fe "set burst 32"
    tp_cmd fe start
    sleep "$WARMUP"
    c0=$("$@")
    t0=$(date +%s.%N)
    sleep "$SECONDS_PER_ROUND"
    c1=$("$@")
    t1=$(date +%s.%N)
    tp_cmd fe stop
    sleep 0.3
    awk -v a="$c0" -v b="$c1" -v t0="$t0" -v t1="$t1" 'BEGIN { printf "%.0f\n", (b - a) / (t1 - t0) }'
}

RAW=$RESULTS/raw.txt
: >"$RAW"

# Measures each size of `sizes` (a word list) at `counter...`, one raw line per size.
measure_sizes() { # variant round sizes counter-command...
    local v=$1 r=$2 sizes=$3 size pps
    shift 3
    for size in $sizes; do
        pps=$(measure "$size" "$@")
        echo "$v $size $r $pps" >>"$RAW"
        log "  $v round $r $size B: $pps frames/s"
    done
}

run_ours_tap() { # round
    daemon_start a --vfs 1 --mtu "$MTU" --uplink tap:bu0
    ip link set bu0 mtu "$MTU" up
    frontend_start "$DIR_a/vf0.sock" 02:53:52:00:00:01 "$PEER_MAC"
    measure_sizes ours-tap "$1" "$SIZES" rx_tap bu0
    tp_quit fe
    stop_pid "$PID_a" 5
}

run_dpdk_tap() { # round
    tp_start be "$BACKEND_CPU" --vdev "net_vhost0,iface=$WORK/dpdk-vhost.sock,queues=1" \
        --vdev "net_tap0,iface=dt0" \
        -- -i --nb-cores=1 --forward-mode=io --disable-link-check --total-num-mbufs=16384
    tp_cmd be start
    for ((i = 0; i < 100; i++)); do
        [[ -S $WORK/dpdk-vhost.sock ]] && break
        sleep 0.1
    done
    ip link set dt0 mtu "$MTU" up
    frontend_start "$WORK/dpdk-vhost.sock" 02:53:52:00:00:01 "$PEER_MAC"
    measure_sizes dpdk-tap "$1" "$SIZES" rx_tap dt0
    tp_quit fe
    tp_quit be
}

run_ours_vxlan() { # round
    local seg="mtu=$MTU,underlay_mtu=$((MTU + 50))"
    daemon_start a --vfs 1 --mtu "$MTU" --uplink "vxlan:42,local=127.0.0.1,remote=127.0.0.2,$seg"
    daemon_start b --vfs 1 --mtu "$MTU" --base-mac "$B_BASE" \
        --uplink "vxlan:42,local=127.0.0.2,remote=127.0.0.1,$seg"
    frontend_start "$DIR_a/vf0.sock" 02:53:52:00:00:01 02:bb:00:00:00:01
    measure_sizes ours-vxlan "$1" "$VXLAN_SIZES" rx_uplink "$DIR_b"
    tp_quit fe
    stop_pid "$PID_a" 5
    stop_pid "$PID_b" 5
}

log "results in $RESULTS"
for ((r = 1; r <= ROUNDS; r++)); do
    for v in $VARIANTS; do
        "run_${v//-/_}" "$r"
    done
done

{
    printf '| variant | size | Mpps median (min-max) | Gbit/s median |\n|---|---|---|---|\n'
    sort -k1,1 -k2,2n -k4,4n "$RAW" | awk '
        { key = $1 " " $2; v[key] = v[key] " " $4; n[key]++ }
        END {
            for (k in v) {
                split(substr(v[k], 2), a, " "); m = n[k]
                med = a[int((m + 1) / 2)]; split(k, kk, " ")
                printf "| %s | %d B | %.3f (%.3f-%.3f) | %.2f |\n", kk[1], kk[2], med / 1e6,
                    a[1] / 1e6, a[m] / 1e6, med * kk[2] * 8 / 1e9
            }
        }' | sort
} | tee "$RESULTS/table.md"
