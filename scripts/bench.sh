#!/usr/bin/env bash
# Benchmark of the daemon's data path against DPDK's vhost PMD (the anchor), on this machine.
#
#   scripts/bench.sh [throughput]   A/B rounds: our daemon (event-driven and busy-poll) vs DPDK
#                                   testpmd net_vhost in io mode, same virtio_user frontend;
#                                   64 B and 1518 B throughput, CPU per packet, latency
#   scripts/bench.sh oneway         one-way: testpmd txonly on VF0 -> the backend -> vu-sink on
#                                   VF1 (an event-driven receiver, scripts/bench/sink.rs), the
#                                   same A/B rounds and sizes; frames delivered, frames sent,
#                                   loss, CPU per frame. No closed loop: the generator sends as
#                                   fast as its ring takes frames, as users first run it
#   scripts/bench.sh scale          64 and 255 VFs: start-up time, idle RSS and threads; then
#                                   8 VF pairs passing traffic at once; then what guest-scale
#                                   does (a real guest with 64 and 255 VFs; SCALE_GUEST=0 skips it)
#   scripts/bench.sh uplinks        VF -> tap -> a namespace's stack against DPDK net_vhost +
#                                   net_tap, and VF -> VXLAN -> a second daemon; 64 B and
#                                   1518 B Mpps and Gbit/s. It runs scripts/bench-uplinks.sh,
#                                   whose own settings (ROUNDS=3 SECONDS_PER_ROUND=5 ...)
#                                   `scripts/bench.sh uplinks --help` lists
#   scripts/bench.sh guest-scale    a real guest (QEMU, TCG) with 64 and 255 VFs: time to enable
#                                   and bind every VF, the daemon's threads and RSS with every VF
#                                   started, one ping through the last VF
#                                   (scripts/bench-guest-scale.sh; GUEST_SCALE_VFS=...)
#   scripts/bench.sh iotlb          the daemon's CPU time per frame through the vIOMMU's IOTLB
#                                   against guest-physical addresses, same daemon, alternating
#                                   rounds (IOTLB_ROUNDS=6 IOTLB_BURSTS=1000 IOTLB_SIZES="64 1514")
#
# Method (shared/reference/perf.md): backend pinned to BACKEND_CPU, frontend (one testpmd with
# net_virtio_user ports, --forward-mode=mac, paired ports, `start tx_first 32`) pinned to
# FRONTEND_CPU; backends alternate round by round (the order rotates); rounds in which the
# backend (or the frontend) waited on the run queue behind other processes more than MAX_WAIT_PCT %
# of the interval are reported and discarded (WAIT_RULE).
# Run as root on Debian 12; installs DPDK (testpmd) with apt-get when it is missing.
#
# Settings (environment):
#   ROUNDS=8 SECONDS_PER_ROUND=10 WARMUP=2 SIZES="64 1518" POLL_US=50
#   VARIANTS="ours-event ours-poll dpdk"   (ours-poll needs the daemon's --poll-us)
#   POLL_VIA=flag|config   how ours-poll gets POLL_US: the --poll-us flag (default) or a TOML
#                   file with poll_us (--config)
#   LAT_SECONDS=5 LAT_SAMPLE_MS=50         (latency phase after the throughput sizes; 0 skips it)
#   TX_FIRST=32 QUEUE_SIZE=256 MAX_WAIT_PCT=5
#   SINK_QUEUE_SIZE=QUEUE_SIZE SINK_COALESCE=0   (oneway: vu-sink's ring size, and after how many
#                   used buffers it asks for a call; 0: half its ring)
#   WAIT_RULE=others|raw  others (default): a round is discarded when the backend (or frontend)
#                   waited more than MAX_WAIT_PCT % of the interval behind OTHER processes, i.e.
#                   min(run-queue wait summed over its threads from /proc/PID/task/*/schedstat,
#                   CPU time other processes used on its CPU from /proc/stat), or on steal;
#                   raw: the summed run-queue wait alone (this also counts a multi-threaded
#                   backend's threads queueing behind each other on its one CPU)
#   BACKEND_CPU=0 FRONTEND_CPU=1
#   HUGE=auto|1|0   hugetlbfs on a private mount (1), --no-huge memfd memory (0), auto: 1 if,
#                   after raising vm.nr_hugepages to NR_HUGEPAGES=512 (restored on exit), at
#                   least 256 2 MiB pages are free, else 0
#   SCALE_VFS="64 255" SCALE_STARTS=3 SCALE_PAIRS=8 SCALE_SIZE=64 SCALE_SECONDS=SECONDS_PER_ROUND
#   DAEMON=path     use this daemon binary instead of `cargo build --release`
#   DAEMON_B=path   a second daemon build to compare in the same run: adds variant b-event when
#                   ours-event is listed and b-poll when ours-poll is, measured exactly like them
#                   and interleaved with them, so two builds are compared on the same machine state
#   RESULTS=dir     where raw.json, table.txt, events.jsonl and the logs go
#                   (default results/bench-<mode>-<timestamp>)
#   RUST_LOG=info   the daemon's log level (its log is kept in RESULTS/logs)
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
HELPER=$ROOT/scripts/bench/bench.py

MODE=${1:-throughput}
case "$MODE" in
throughput | scale | oneway) ;;
uplinks)
    # One implementation: the uplink benchmark runs in a network namespace of its own, which
    # its script sets up and re-enters itself in; the settings pass in the environment.
    shift
    exec "$ROOT/scripts/bench-uplinks.sh" "$@"
    ;;
guest-scale)
    exec "$ROOT/scripts/bench-guest-scale.sh"
    ;;
iotlb)
    # In-process drivers that speak the vhost-user IOTLB (DPDK's virtio_user has no vIOMMU); the
    # benchmark is an ignored test of tests/iommu.rs, built in release mode.
    cd "$ROOT"
    exec cargo test --release --test iommu -- --ignored --nocapture --test-threads 1 \
        bench_iotlb_cost_per_frame
    ;;
-h | --help | help)
    sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed '$d' | sed 's/^# \{0,1\}//'
    exit 0
    ;;
*)
    echo "usage: $0 [throughput|oneway|scale|uplinks|guest-scale|iotlb]  (see $0 --help)" >&2
    exit 2
    ;;
esac

ROUNDS=${ROUNDS:-8}
SECONDS_PER_ROUND=${SECONDS_PER_ROUND:-10}
WARMUP=${WARMUP:-2}
SIZES=${SIZES:-64 1518}
POLL_US=${POLL_US:-50}
POLL_VIA=${POLL_VIA:-flag}
VARIANTS=${VARIANTS:-ours-event ours-poll dpdk}
LAT_SECONDS=${LAT_SECONDS:-5}
LAT_SAMPLE_MS=${LAT_SAMPLE_MS:-50}
TX_FIRST=${TX_FIRST:-32}
QUEUE_SIZE=${QUEUE_SIZE:-256}
SINK_QUEUE_SIZE=${SINK_QUEUE_SIZE:-$QUEUE_SIZE}
SINK_COALESCE=${SINK_COALESCE:-0}
MAX_WAIT_PCT=${MAX_WAIT_PCT:-5}
WAIT_RULE=${WAIT_RULE:-others}
BACKEND_CPU=${BACKEND_CPU:-0}
FRONTEND_CPU=${FRONTEND_CPU:-1}
HUGE=${HUGE:-auto}
NR_HUGEPAGES=${NR_HUGEPAGES:-512}
SCALE_VFS=${SCALE_VFS:-64 255}
SCALE_STARTS=${SCALE_STARTS:-3}
SCALE_PAIRS=${SCALE_PAIRS:-8}
SCALE_SIZE=${SCALE_SIZE:-64}
SCALE_SECONDS=${SCALE_SECONDS:-$SECONDS_PER_ROUND}
DAEMON=${DAEMON:-}
DAEMON_B=${DAEMON_B:-}
# The daemon drops frames over its MTU (DPDK's vhost PMD checks nothing), so it runs with the MTU
# the largest frame needs: 1518-byte frames (what DPDK calls 1518 B, no FCS on virtio) need 1504.
BENCH_MTU=1500
for _s in $SIZES ${SCALE_SIZE:-}; do
    if ((_s - 14 > BENCH_MTU)); then BENCH_MTU=$((_s - 14)); fi
done
RESULTS=${RESULTS:-$ROOT/results/bench-$MODE-$(date +%Y%m%d-%H%M%S)}
export RUST_LOG=${RUST_LOG:-info}
export PYTHONDONTWRITEBYTECODE=1

log() { printf '[bench %s] %s\n' "$(date +%T)" "$*" >&2; }
die() {
    log "ERROR: $*"
    exit 1
}

[[ $(id -u) == 0 ]] || die "run as root (hugepages, mounts, apt-get)"

# ---------------------------------------------------------------------------------------------
# Cleanup: every process this script started, the hugetlbfs mount and its files, DPDK's runtime
# directories, the sockets (in WORK), and the hugepage count if this script raised it
# (dpdk_cleanup, scripts/lib/dpdk.sh).

WORK=
LOGDIR=$RESULTS/logs
DPDK_TAG=sriovbench
# shellcheck source=lib/dpdk.sh
. "$ROOT/scripts/lib/dpdk.sh"

cleanup() {
    local rc=$?
    trap - EXIT INT TERM
    dpdk_cleanup
    [[ -n $WORK ]] && rm -rf "$WORK"
    if ((rc != 0)); then
        log "failed (exit $rc); logs are in $RESULTS/logs"
    fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# ---------------------------------------------------------------------------------------------
# Setup

build_daemon() {
    if [[ -z $DAEMON ]]; then
        log "cargo build --release"
        (cd "$ROOT" && cargo build --release --quiet)
        DAEMON=$ROOT/target/release/vhost-user-sriov-net
    fi
    [[ -x $DAEMON ]] || die "no daemon binary at $DAEMON"
    if [[ $MODE == oneway ]]; then
        log "cargo build --release --example vu-sink"
        (cd "$ROOT" && cargo build --release --quiet --example vu-sink)
        cp "$ROOT/target/release/examples/vu-sink" "$WORK/vu-sink"
    fi
    # A private copy: a rebuild during the run must not change what is measured.
    cp "$DAEMON" "$WORK/daemon"
    DAEMON_SRC=$DAEMON
    DAEMON=$WORK/daemon
    if [[ -n $DAEMON_B ]]; then
        [[ -x $DAEMON_B ]] || die "no daemon binary at DAEMON_B=$DAEMON_B"
        cp "$DAEMON_B" "$WORK/daemon-b"
        DAEMON_B_SRC=$DAEMON_B
        DAEMON_B=$WORK/daemon-b
        # `if`, not `[[ ]] &&`: a false test as the function's last command would be its
        # status, and set -e would end the run.
        if [[ " $VARIANTS " == *" ours-event "* ]]; then
            VARIANTS="$VARIANTS b-event"
        fi
        if [[ " $VARIANTS " == *" ours-poll "* ]]; then
            VARIANTS="$VARIANTS b-poll"
        fi
    fi
}

# The binary and busy-poll setting of one of our variants.
variant_daemon() { # variant -> BIN, POLL
    case "$1" in
    ours-event) BIN=$DAEMON POLL=0 ;;
    ours-poll) BIN=$DAEMON POLL=$POLL_US ;;
    b-event) BIN=$DAEMON_B POLL=0 ;;
    b-poll) BIN=$DAEMON_B POLL=$POLL_US ;;
    *) die "unknown variant $1" ;;
    esac
}

# ---------------------------------------------------------------------------------------------
# Backends

DAEMON_PID=
N_DAEMON=0
daemon_start() { # vfs poll_us [binary] -> DAEMON_PID, SOCKDIR
    local vfs=$1 poll=$2 bin=${3:-$DAEMON} i args=()
    N_DAEMON=$((N_DAEMON + 1))
    SOCKDIR=$WORK/d$N_DAEMON
    mkdir -p "$SOCKDIR"
    args=(--socket-dir "$SOCKDIR" --vfs "$vfs" --ready-file "$SOCKDIR/ready" --mtu "$BENCH_MTU")
    if [[ $poll != 0 && $POLL_VIA == config ]]; then
        printf 'poll_us = %s\n' "$poll" >"$SOCKDIR/poll.toml"
        args+=(--config "$SOCKDIR/poll.toml")
    elif [[ $poll != 0 ]]; then
        args+=(--poll-us "$poll")
    fi
    DAEMON_LOG=$RESULTS/logs/$(printf 'daemon-%03d' "$N_DAEMON")-vfs$vfs-poll$poll.log
    taskset -c "$BACKEND_CPU" "$bin" "${args[@]}" >"$DAEMON_LOG" 2>&1 &
    DAEMON_PID=$!
    PIDS[$DAEMON_PID]=1
    for ((i = 0; i < 600; i++)); do
        [[ -s $SOCKDIR/ready ]] && return 0
        kill -0 "$DAEMON_PID" 2>/dev/null || {
            tail -20 "$DAEMON_LOG" >&2
            die "daemon exited during start-up; log $DAEMON_LOG"
        }
        sleep 0.05
    done
    die "daemon not ready after 30 s; log $DAEMON_LOG"
}

daemon_alive() {
    kill -0 "$DAEMON_PID" 2>/dev/null && return 0
    tail -20 "$DAEMON_LOG" >&2
    die "the daemon exited during the run; log $DAEMON_LOG"
}

daemon_stop() {
    daemon_alive
    stop_pid "$DAEMON_PID" 10
    DAEMON_PID=
    rm -rf "$SOCKDIR"
}

ctl_json() { # file
    "$DAEMON" ctl --socket-dir "$SOCKDIR" show -j >"$1"
}

# The DPDK anchor: two net_vhost ports (servers), io forwarding between them.
dpdk_backend_start() {
    N_DAEMON=$((N_DAEMON + 1))
    SOCKDIR=$WORK/d$N_DAEMON
    mkdir -p "$SOCKDIR"
    tp_start be "$BACKEND_CPU" \
        --vdev "net_vhost0,iface=$SOCKDIR/vhost0.sock,queues=1" \
        --vdev "net_vhost1,iface=$SOCKDIR/vhost1.sock,queues=1" \
        -- -i --nb-cores=1 --forward-mode=io --disable-link-check --total-num-mbufs=16384
    # Forwarding runs before the frontend connects (perf.md).
    tp_cmd be start
    local i
    for ((i = 0; i < 100; i++)); do
        [[ -S $SOCKDIR/vhost0.sock && -S $SOCKDIR/vhost1.sock ]] && return 0
        sleep 0.1
    done
    die "DPDK backend sockets did not appear; log ${TP_LOG[be]}"
}

# The frontend: one testpmd, virtio_user port i on socket i, mac forwarding to the paired port's
# MAC (anti-spoof: every frame leaves with its own port's MAC as source).
frontend_start() { # mbufs sock1 mac1 sock2 mac2 ...
    local mbufs=$1 i=0 vdevs=() peers=() socks=() macs=()
    shift
    while (($#)); do
        socks+=("$1")
        macs+=("$2")
        shift 2
    done
    local n=${#socks[@]}
    for ((i = 0; i < n; i++)); do
        vdevs+=(--vdev "net_virtio_user$i,path=${socks[$i]},queues=1,queue_size=$QUEUE_SIZE,mac=${macs[$i]}")
        peers+=("--eth-peer=$i,${macs[$((i ^ 1))]}")
    done
    tp_start fe "$FRONTEND_CPU" "${vdevs[@]}" -- -i --nb-cores=1 --forward-mode=mac \
        "${peers[@]}" --total-num-mbufs="$mbufs"
    tp_links_up fe "$n" 20 || die "frontend links not up after 20 s; log ${TP_LOG[fe]}"
}

measure() { # nports seconds extra-args... (tags: --tag k=v)
    local n=$1 secs=$2
    shift 2
    local args=(--out "$EVENTS" --fifo "${TP_FIFO[fe]}" --log "${TP_LOG[fe]}" --nports "$n"
        --fe-pid "${TP_PID[fe]}" --be-pid "$BE_PID" --be-cpu "$BACKEND_CPU"
        --fe-cpu "$FRONTEND_CPU" --seconds "$secs")
    [[ $BE_KIND == ours ]] && args+=(--daemon "$DAEMON" --sockdir "$SOCKDIR")
    python3 "$HELPER" measure "${args[@]}" "$@"
}

# Empty the frontend's rings: a short rxonly run, so the next start begins from a known state.
drain() {
    tp_cmd fe "set fwd rxonly"
    tp_cmd fe start
    sleep 0.3
    tp_cmd fe stop
    tp_cmd fe "set fwd mac"
}

measure_sizes() { # variant round
    local v=$1 r=$2 size res
    for size in $SIZES; do
        drain
        tp_cmd fe "set burst 32"
        tp_cmd fe "set txpkts $size"
        tp_cmd fe "start tx_first $TX_FIRST"
        sleep "$WARMUP"
        res=$(measure 2 "$SECONDS_PER_ROUND" --stop \
            --tag variant="$v" --tag round="$r" --tag size="$size")
        log "  $v round $r ${size} B: $res"
    done
}

measure_latency() { # variant round
    local v=$1 r=$2 res
    ((LAT_SECONDS > 0)) || return 0
    drain
    # One burst of one packet on each port: one packet circulates per direction.
    tp_cmd fe "set burst 1"
    tp_cmd fe "set txpkts 64"
    tp_cmd fe "start tx_first 1"
    sleep 1
    res=$(measure 2 "$LAT_SECONDS" --sample-ms "$LAT_SAMPLE_MS" --stop --phase-prefix lat_ \
        --tag variant="$v" --tag round="$r")
    log "  $v round $r latency: $res"
    tp_cmd fe "set burst 32"
}

# The variant's backend with two ports -> BE_KIND, BE_PID, SOCK_A/MAC_A and SOCK_B/MAC_B (our
# VF0 and VF1; DPDK's two vhost ports take the same MACs).
backend_start() { # variant
    case "$1" in
    ours-event | ours-poll | b-event | b-poll)
        BE_KIND=ours
        variant_daemon "$1"
        daemon_start 2 "$POLL" "$BIN"
        BE_PID=$DAEMON_PID
        ctl_json "$WORK/show.json"
        read -r MAC_A MAC_B < <(python3 "$HELPER" macs "$WORK/show.json" vf0 vf1)
        LAST_MACS="$MAC_A $MAC_B"
        SOCK_A=$SOCKDIR/vf0.sock SOCK_B=$SOCKDIR/vf1.sock
        ;;
    dpdk)
        BE_KIND=dpdk
        dpdk_backend_start
        BE_PID=${TP_PID[be]}
        read -r MAC_A MAC_B <<<"${LAST_MACS:-02:53:52:00:00:01 02:53:52:00:00:02}"
        SOCK_A=$SOCKDIR/vhost0.sock SOCK_B=$SOCKDIR/vhost1.sock
        ;;
    *) die "unknown variant $1" ;;
    esac
}

backend_stop() { # ctl-snapshot-name (ours: the daemon's final counters go to logs/NAME.json)
    if [[ $BE_KIND == ours ]]; then
        ctl_json "$RESULTS/logs/$1.json" || true
        daemon_stop
    else
        tp_quit be
        rm -rf "$SOCKDIR"
    fi
}

run_variant() { # variant round
    local v=$1 r=$2
    backend_start "$v"
    frontend_start 16384 "$SOCK_A" "$MAC_A" "$SOCK_B" "$MAC_B"
    measure_sizes "$v" "$r"
    measure_latency "$v" "$r"
    [[ $BE_KIND == ours ]] && daemon_alive
    tp_quit fe
    backend_stop "ctl-$v-round$r"
}

# One-way: the generator is testpmd in txonly mode on one virtio_user port (its MAC the
# sending partition's, the receiver's MAC as peer); the receiver is vu-sink. Both run on
# FRONTEND_CPU, the sink under SCHED_FIFO: it sleeps on its call eventfd and, once called, drains
# its ring before the generator runs on (an interrupt handler's place). As an ordinary task it
# waited behind the busy-polling generator for whole time slices, and the backend dropped a
# third of the frames for want of RX buffers.
SINK_PID=
sink_start() { # socket
    SINK_STATS=$WORK/sink-$N_DAEMON.json
    SINK_LOG=$RESULTS/logs/$(printf 'sink-%03d' "$N_DAEMON").log
    rm -f "$SINK_STATS"
    taskset -c "$FRONTEND_CPU" chrt -f 1 "$WORK/vu-sink" --socket "$1" \
        --queue-size "$SINK_QUEUE_SIZE" --coalesce "$SINK_COALESCE" --stats "$SINK_STATS" \
        >"$SINK_LOG" 2>&1 &
    SINK_PID=$!
    PIDS[$SINK_PID]=1
    local i
    for ((i = 0; i < 100; i++)); do
        [[ -s $SINK_STATS ]] && return 0
        kill -0 "$SINK_PID" 2>/dev/null || die "vu-sink exited: $(cat "$SINK_LOG")"
        sleep 0.05
    done
    die "vu-sink did not start; log $SINK_LOG"
}

sink_stop() {
    kill -0 "$SINK_PID" 2>/dev/null || die "vu-sink died during the run: $(cat "$SINK_LOG")"
    stop_pid "$SINK_PID" 5
    SINK_PID=
}

generator_start() { # socket mac peer-mac
    tp_start fe "$FRONTEND_CPU" \
        --vdev "net_virtio_user0,path=$1,queues=1,queue_size=$QUEUE_SIZE,mac=$2" \
        -- -i --nb-cores=1 --forward-mode=txonly "--eth-peer=0,$3" --total-num-mbufs=16384
    tp_links_up fe 1 20 || die "generator link not up after 20 s; log ${TP_LOG[fe]}"
}

run_oneway_variant() { # variant round
    local v=$1 r=$2 size res
    backend_start "$v"
    sink_start "$SOCK_B"
    generator_start "$SOCK_A" "$MAC_A" "$MAC_B"
    for size in $SIZES; do
        tp_cmd fe "set txpkts $size"
        tp_cmd fe start
        sleep "$WARMUP"
        res=$(measure 1 "$SECONDS_PER_ROUND" --stop --sink-stats "$SINK_STATS" \
            --sink-pid "$SINK_PID" --tag variant="$v" --tag round="$r" --tag size="$size")
        log "  $v round $r ${size} B: $res"
        # The sink empties its ring before the next size starts.
        sleep 0.2
    done
    [[ $BE_KIND == ours ]] && daemon_alive
    tp_quit fe
    sink_stop
    backend_stop "ctl-oneway-$v-round$r"
}

# ---------------------------------------------------------------------------------------------
# Modes

# ROUNDS rounds of every variant through RUN (variant round), then the report of MODE.
run_rounds() { # run-function report-mode
    local run=$1 r i n v order
    read -ra V <<<"$VARIANTS"
    n=${#V[@]}
    for ((r = 1; r <= ROUNDS; r++)); do
        # Rotate the order every round: each backend runs first, middle and last in turn.
        order=()
        for ((i = 0; i < n; i++)); do order+=("${V[$(((i + r - 1) % n))]}"); done
        log "round $r/$ROUNDS: ${order[*]}"
        for v in "${order[@]}"; do
            "$run" "$v" "$r"
        done
    done
    python3 "$HELPER" report "$2" "$RESULTS" --max-wait "$MAX_WAIT_PCT" \
        --wait-rule "$WAIT_RULE"
}

run_throughput() {
    log "throughput: $ROUNDS rounds x ($VARIANTS) x sizes ($SIZES) x ${SECONDS_PER_ROUND} s" \
        "+ latency ${LAT_SECONDS} s"
    run_rounds run_variant throughput
}

run_oneway() {
    log "oneway: $ROUNDS rounds x ($VARIANTS) x sizes ($SIZES) x ${SECONDS_PER_ROUND} s"
    run_rounds run_oneway_variant oneway
}

run_scale() {
    local vfs s t0 ready_ns waiter i v poll n res socks_macs=() names=()
    BE_KIND=ours
    for vfs in $SCALE_VFS; do
        for ((s = 1; s <= SCALE_STARTS; s++)); do
            N_DAEMON=$((N_DAEMON + 1))
            SOCKDIR=$WORK/d$N_DAEMON
            mkdir -p "$SOCKDIR"
            # The waiter polls for the ready file every 0.1 ms; start it before the daemon.
            python3 "$HELPER" wait-file "$SOCKDIR/ready" >"$WORK/ready_ns" &
            waiter=$!
            PIDS[$waiter]=1
            sleep 0.3
            DAEMON_LOG=$RESULTS/logs/$(printf 'daemon-%03d' "$N_DAEMON")-vfs$vfs-start$s.log
            t0=$(date +%s%N)
            taskset -c "$BACKEND_CPU" "$DAEMON" --socket-dir "$SOCKDIR" --vfs "$vfs" \
                --ready-file "$SOCKDIR/ready" >"$DAEMON_LOG" 2>&1 &
            DAEMON_PID=$!
            PIDS[$DAEMON_PID]=1
            for ((i = 0; i < 600; i++)); do
                kill -0 "$waiter" 2>/dev/null || break
                kill -0 "$DAEMON_PID" 2>/dev/null || die "daemon exited; log $DAEMON_LOG"
                sleep 0.05
            done
            if ! wait "$waiter"; then
                unset "PIDS[$waiter]"
                die "no ready file after 30 s; log $DAEMON_LOG"
            fi
            unset "PIDS[$waiter]"
            ready_ns=$(cat "$WORK/ready_ns")
            sleep 1
            local socks=("$SOCKDIR"/*.sock)
            python3 - "$EVENTS" "$vfs" "$s" "$(((ready_ns - t0) / 1000))" "$DAEMON_PID" \
                "${#socks[@]}" "$HELPER" <<'EOF'
import json, sys
sys.path.insert(0, sys.argv[7].rsplit("/", 1)[0])
import bench
out, vfs, s, us, pid, socks = sys.argv[1:7]
st = bench.read_status(int(pid))
ev = {"type": "scale_start", "vfs": int(vfs), "start": int(s), "ready_ms": int(us) / 1000,
      "rss_kb": st.get("vmrss_kb"), "hwm_kb": st.get("vmhwm_kb"), "threads": st.get("threads"),
      "sockets": int(socks)}
open(out, "a").write(json.dumps(ev) + "\n")
print(f"ready in {ev['ready_ms']:.1f} ms, idle RSS {ev['rss_kb']/1024:.1f} MiB, "
      f"{ev['threads']} threads, {ev['sockets']} sockets", file=sys.stderr)
EOF
            daemon_stop
        done

        read -ra V <<<"$VARIANTS"
        for v in "${V[@]}"; do
            [[ $v == dpdk ]] && continue
            variant_daemon "$v"
            daemon_start "$vfs" "$POLL" "$BIN"
            BE_PID=$DAEMON_PID
            sleep 1
            local idle
            idle=$(python3 "$HELPER" proc "$DAEMON_PID")
            ctl_json "$WORK/show.json"
            n=$((SCALE_PAIRS * 2))
            names=()
            for ((i = 0; i < n; i++)); do names+=("vf$i"); done
            read -ra macs < <(python3 "$HELPER" macs "$WORK/show.json" "${names[@]}")
            socks_macs=()
            for ((i = 0; i < n; i++)); do socks_macs+=("$SOCKDIR/vf$i.sock" "${macs[$i]}"); done
            frontend_start $((n * 2048 + 16384)) "${socks_macs[@]}"
            drain
            tp_cmd fe "set txpkts $SCALE_SIZE"
            tp_cmd fe "start tx_first $TX_FIRST"
            sleep "$WARMUP"
            res=$(measure "$n" "$SCALE_SECONDS" --stop --tag vfs="$vfs" --tag variant="$v" \
                --tag idle="$idle")
            log "  $vfs VFs $v, $SCALE_PAIRS pairs: $res"
            tp_quit fe
            ctl_json "$RESULTS/logs/ctl-scale-vfs$vfs-$v.json" || true
            daemon_stop
        done
    done
    python3 "$HELPER" report scale "$RESULTS"
}

# ---------------------------------------------------------------------------------------------

# Everything this script runs itself (bash, python, ctl) stays off the backend's CPU.
taskset -pc "$FRONTEND_CPU" $$ >/dev/null

dpdk_install_deps
mkdir -p "$RESULTS/logs"
EVENTS=$RESULTS/events.jsonl
: >"$EVENTS"
WORK=$(mktemp -d /tmp/sriov-bench.XXXXXX)
build_daemon
dpdk_setup_memory

# Busy-poll variants only for a build that has --poll-us (an older one compared as DAEMON_B).
has_poll() { "$1" --help 2>&1 | grep -c -- '--poll-us' >/dev/null; }
drop_variant() { VARIANTS=$(tr ' ' '\n' <<<"$VARIANTS" | grep -vx "$1" | tr '\n' ' '); }
HAVE_POLL=yes
if ! has_poll "$DAEMON"; then
    HAVE_POLL="not available (the daemon has no --poll-us)"
    drop_variant ours-poll
    log "busy-poll: $HAVE_POLL"
fi
if [[ -n $DAEMON_B ]] && ! has_poll "$DAEMON_B"; then
    drop_variant b-poll
fi

python3 "$HELPER" env --out "$EVENTS" \
    --tag mode="$MODE" --tag rounds="$ROUNDS" --tag seconds_per_round="$SECONDS_PER_ROUND" \
    --tag warmup_s="$WARMUP" --tag sizes="$SIZES" --tag variants="$VARIANTS" \
    --tag poll_us="$POLL_US" --tag poll_via="$POLL_VIA" --tag busy_poll="$HAVE_POLL" --tag lat_seconds="$LAT_SECONDS" \
    --tag lat_sample_ms="$LAT_SAMPLE_MS" --tag tx_first="$TX_FIRST" --tag queue_size="$QUEUE_SIZE" \
    --tag sink_queue_size="$SINK_QUEUE_SIZE" --tag sink_coalesce="$SINK_COALESCE" \
    --tag backend_cpu="$BACKEND_CPU" --tag frontend_cpu="$FRONTEND_CPU" \
    --tag memory="$([[ $HUGE == 1 ]] && echo "hugetlbfs 2M private mount, --single-file-segments" || echo "--no-huge -m 1024")" \
    --tag eal_mem="${EAL_MEM[*]}" \
    --tag daemon="$DAEMON_SRC" --tag daemon_sha256="$(sha256sum "$DAEMON" | cut -c1-16)" \
    --tag daemon_b="${DAEMON_B_SRC:-}" \
    --tag worktree_git_head="$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo none)" \
    --tag worktree_dirty_files="$(git -C "$ROOT" status --porcelain 2>/dev/null | wc -l)" \
    --tag scale_vfs="$SCALE_VFS" --tag scale_pairs="$SCALE_PAIRS" --tag scale_size="$SCALE_SIZE" \
    --tag scale_starts="$SCALE_STARTS" --tag scale_seconds="$SCALE_SECONDS"
log "results in $RESULTS; memory: ${EAL_MEM[*]}; busy-poll: $HAVE_POLL"

case "$MODE" in
throughput) run_throughput ;;
oneway) run_oneway ;;
scale) run_scale ;;
esac
log "raw figures: $RESULTS/raw.json; tables: $RESULTS/table.txt"
if [[ $MODE == scale && ${SCALE_GUEST:-1} == 1 ]]; then
    log "next: a real guest with ${GUEST_SCALE_VFS:-64 255} VFs (scripts/bench-guest-scale.sh; SCALE_GUEST=0 skips it)"
    "$ROOT/scripts/bench-guest-scale.sh"
fi
