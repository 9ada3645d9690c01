# shellcheck shell=bash
# DPDK testpmd on this machine, shared by scripts/bench.sh, bench-uplinks.sh and dpdk-interop.sh
# (sourced; recipes from shared/reference/perf.md): apt-get install, hugetlbfs on a private mount
# or --no-huge, testpmd driven through a FIFO, and cleaning up after all of it.
#
# The sourcing script defines log and die, sets WORK (scratch directory, removed by the caller),
# LOGDIR (testpmd logs), DPDK_TAG (prefix of DPDK --file-prefix names) and HUGE (auto|1|0), and
# calls dpdk_cleanup from its EXIT trap. Optional: NR_HUGEPAGES (512), NOHUGE_MB (1024).

HUGE_MNT=
HP_SET_BY_US=
HP_ORIG=
PREFIXES=()
EAL_MEM=()
# Children not yet reaped (a reaped child's PID may be reused: it is forgotten at once).
declare -A PIDS TP_FD TP_PID TP_LOG TP_FIFO TP_PREFIX TP_RC

STOP_RC=
stop_pid() { # pid [timeout_s] -> STOP_RC (its exit status; 128+n: signal n)
    local pid=$1 t=${2:-5} i
    if kill -0 "$pid" 2>/dev/null; then
        kill -TERM "$pid" 2>/dev/null || true
        for ((i = 0; i < t * 20; i++)); do
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.05
        done
        if kill -0 "$pid" 2>/dev/null; then
            log "pid $pid did not stop on SIGTERM; SIGKILL"
            kill -KILL "$pid" 2>/dev/null || true
        fi
    fi
    STOP_RC=0
    wait "$pid" 2>/dev/null || STOP_RC=$?
    unset "PIDS[$pid]"
}

# Every process in PIDS, DPDK's runtime directories, the hugetlbfs mount and its files, and the
# hugepage count if dpdk_setup_memory raised it.
dpdk_cleanup() {
    local pid p
    for pid in "${!PIDS[@]}"; do
        stop_pid "$pid" 3
    done
    for p in "${PREFIXES[@]}"; do
        rm -rf "/var/run/dpdk/$p"
    done
    if [[ -n $HUGE_MNT ]] && mountpoint -q "$HUGE_MNT"; then
        rm -f "$HUGE_MNT"/* 2>/dev/null || true
        umount "$HUGE_MNT" 2>/dev/null || umount -l "$HUGE_MNT" 2>/dev/null || true
    fi
    if [[ -n $HP_SET_BY_US && $(cat /proc/sys/vm/nr_hugepages) == "$HP_SET_BY_US" ]]; then
        sysctl -q -w vm.nr_hugepages="$HP_ORIG" || true
    fi
}

dpdk_install_deps() {
    local need=()
    command -v dpdk-testpmd >/dev/null || need+=(dpdk-dev)
    ls /usr/lib/x86_64-linux-gnu/dpdk/pmds-*/librte_net_vhost.so* >/dev/null 2>&1 || need+=(librte-net-vhost23)
    ls /usr/lib/x86_64-linux-gnu/dpdk/pmds-*/librte_net_virtio.so* >/dev/null 2>&1 || need+=(librte-net-virtio23)
    ls /usr/lib/x86_64-linux-gnu/dpdk/pmds-*/librte_mempool_ring.so* >/dev/null 2>&1 || need+=(librte-mempool-ring23)
    command -v python3 >/dev/null || need+=(python3)
    command -v stdbuf >/dev/null || need+=(coreutils)
    command -v taskset >/dev/null || need+=(util-linux)
    command -v mountpoint >/dev/null || need+=(util-linux)
    if ((${#need[@]})); then
        log "installing ${need[*]}"
        export DEBIAN_FRONTEND=noninteractive
        apt-get update -q >/dev/null
        apt-get install -y -q --no-install-recommends "${need[@]}" dpdk-dev librte-net-vhost23 \
            librte-net-virtio23 librte-mempool-ring23 >/dev/null
    fi
}

# HUGE=auto|1|0 -> HUGE=1|0 and EAL_MEM. auto: hugetlbfs if, after raising vm.nr_hugepages to
# NR_HUGEPAGES (restored by dpdk_cleanup), at least 256 2 MiB pages are free.
dpdk_setup_memory() {
    local free=0 ok=0 want=${NR_HUGEPAGES:-512}
    if [[ $HUGE == auto || $HUGE == 1 ]]; then
        HP_ORIG=$(cat /proc/sys/vm/nr_hugepages)
        if ((HP_ORIG < want)); then
            if sysctl -q -w vm.nr_hugepages="$want" 2>/dev/null; then
                HP_SET_BY_US=$(cat /proc/sys/vm/nr_hugepages)
            fi
        fi
        free=$(awk '/HugePages_Free/ {print $2}' /proc/meminfo)
        if ((free >= 256)); then
            HUGE_MNT=$WORK/huge
            mkdir -p "$HUGE_MNT"
            if mount -t hugetlbfs -o pagesize=2M nodev "$HUGE_MNT"; then
                ok=1
            else
                HUGE_MNT=
            fi
        fi
        if ((ok)); then
            HUGE=1
        else
            [[ $HUGE == 1 ]] && die "hugepages requested (HUGE=1) but not available"
            log "hugepages not available ($free free); using --no-huge"
            HUGE=0
        fi
    fi
    if [[ $HUGE == 1 ]]; then
        # The frontend passes its memory to the backend as fds: at most 8, hence one file per
        # memseg list.
        EAL_MEM=(--huge-dir "$HUGE_MNT" --single-file-segments)
    else
        EAL_MEM=(--no-huge -m "${NOHUGE_MB:-1024}")
    fi
}

# ---------------------------------------------------------------------------------------------
# testpmd, driven through a FIFO (interactive mode exits at the end of stdin)

N_TP=0
tp_start() { # name cpu eal-and-app-args...
    local name=$1 cpu=$2 fd pid
    shift 2
    N_TP=$((N_TP + 1))
    local prefix=$DPDK_TAG-$$-$N_TP-$name
    PREFIXES+=("$prefix")
    TP_PREFIX[$name]=$prefix
    TP_FIFO[$name]=$WORK/$name-$N_TP.in
    TP_LOG[$name]=$LOGDIR/$(printf '%03d' "$N_TP")-$name.log
    mkfifo "${TP_FIFO[$name]}"
    exec {fd}<>"${TP_FIFO[$name]}"
    TP_FD[$name]=$fd
    # Both lcores (main: the command line, 1: forwarding) on one CPU; EAL's control threads
    # inherit the taskset mask.
    echo "dpdk-testpmd --lcores 0@$cpu,1@$cpu --file-prefix $prefix $*" >"${TP_LOG[$name]}.cmd"
    stdbuf -oL -eL taskset -c "$cpu" dpdk-testpmd --lcores "0@$cpu,1@$cpu" --no-pci \
        --no-telemetry --file-prefix "$prefix" "${EAL_MEM[@]}" "$@" \
        <"${TP_FIFO[$name]}" >"${TP_LOG[$name]}" 2>&1 &
    pid=$!
    TP_PID[$name]=$pid
    PIDS[$pid]=1
    local i
    for ((i = 0; i < 600; i++)); do
        grep -q 'testpmd> ' "${TP_LOG[$name]}" && return 0
        kill -0 "$pid" 2>/dev/null || {
            stop_pid "$pid"
            tail -20 "${TP_LOG[$name]}" >&2
            # SIGPIPE: virtio_user wrote to a vhost-user socket the backend had closed.
            local how="status $STOP_RC"
            ((STOP_RC > 128)) && how="killed by SIG$(kill -l $((STOP_RC - 128)))"
            die "testpmd ($name) exited during start-up ($how); log ${TP_LOG[$name]}"
        }
        sleep 0.1
    done
    die "testpmd ($name) not ready after 60 s; log ${TP_LOG[$name]}"
}

tp_cmd() { # name command
    kill -0 "${TP_PID[$1]}" 2>/dev/null || die "testpmd ($1) died; log ${TP_LOG[$1]}"
    printf '%s\n' "$2" >&"${TP_FD[$1]}"
}

tp_quit() { # name -> TP_RC[name]: its exit status
    local name=$1 pid=${TP_PID[$1]} i
    if kill -0 "$pid" 2>/dev/null; then
        printf 'quit\n' >&"${TP_FD[$name]}" || true
        for ((i = 0; i < 200; i++)); do
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.05
        done
    fi
    stop_pid "$pid" 3
    # shellcheck disable=SC2034 # read by the sourcing script
    TP_RC[$name]=$STOP_RC
    local fd=${TP_FD[$name]}
    exec {fd}>&-
    rm -f "${TP_FIFO[$name]}"
    # DPDK leaves its hugepage files and runtime directory behind.
    local prefix=${TP_PREFIX[$name]}
    if [[ -n $HUGE_MNT ]]; then
        rm -f "$HUGE_MNT/$prefix"map_* 2>/dev/null || true
    fi
    rm -rf "/var/run/dpdk/$prefix"
}

# Wait until a command that prints a marker has been answered: count lines before, send, wait.
tp_wait_for() { # name regex count timeout_s
    local name=$1 re=$2 want=$3 t=$4 i
    for ((i = 0; i < t * 20; i++)); do
        (($(grep -cE "$re" "${TP_LOG[$name]}") >= want)) && return 0
        kill -0 "${TP_PID[$name]}" 2>/dev/null || die "testpmd ($name) died; log ${TP_LOG[$name]}"
        sleep 0.05
    done
    return 1
}

tp_links_up() { # name nports timeout_s
    local name=$1 n=$2 t=$3 i before
    for ((i = 0; i < t; i++)); do
        before=$(grep -c 'Link status:' "${TP_LOG[$name]}" || true)
        tp_cmd "$name" "show port info all"
        tp_wait_for "$name" 'Link status:' $((before + n)) 10 || die "no port info from testpmd ($name)"
        if (($(grep 'Link status:' "${TP_LOG[$name]}" | tail -n "$n" | grep -c 'up') == n)); then
            return 0
        fi
        sleep 1
    done
    return 1
}
