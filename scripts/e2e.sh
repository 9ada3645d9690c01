#!/usr/bin/env bash
# scripts/e2e.sh - end-to-end test: the daemon behind a QEMU composable SR-IOV virtio-net device.
#
# Runs scripts/provision.sh (fast when cached), starts vhost-user-sriov-net, boots the test guest
# (scripts/guest/) on QEMU with the device arguments from `vhost-user-sriov-net qemu-args`, lets the
# guest run its scenarios (a..q and u; which ones depends on the setup, see E2E_ONLY) while
# scripts/e2e_sync.py snapshots the daemon's counters at the guest's checkpoints (second serial
# port) and restarts the daemon when the guest asks (scenario p), then evaluates everything with
# scripts/e2e_check.py. Prints a summary table; exits non-zero on any FAIL, missing result or
# timeout.
#
# Results (console.log, daemon.log, qemu.log, sync.log, snap-*.json, summary.txt/json) go to
# E2E_RESULTS (default <repo>/results/e2e-<timestamp>).
#
# Environment:
#   E2E_RESULTS        results directory
#   E2E_BIN            daemon binary (default ${CARGO_TARGET_DIR:-target}/release/vhost-user-sriov-net;
#                      built with `cargo build --release` if missing)
#   E2E_VFS            --vfs for the daemon (default: the daemon's default)
#   E2E_CONFIG         --config FILE for the daemon and qemu-args
#   E2E_MEMORY         guest memory for qemu-args --memory (default 512M)
#   E2E_PINGS          pings per ping check / ARP requests in d (default 4)
#   E2E_TIMEOUT        overall time limit in seconds, provisioning included (default 900)
#   E2E_QEMU_TIMEOUT   time limit of the QEMU run in seconds (default 420)
#   E2E_READY_TIMEOUT  seconds to wait for the daemon's ready file (default 30)
#   E2E_ACCEL          auto (default) | tcg | kvm
#   E2E_ONLY           run only these guest scenarios, e.g. "abc" (developer option). Default: the
#                      setup's set, abcdefghijkopq (without q when there is no uplink); abcmoluh with
#                      E2E_IOMMU=1 (abch with E2E_LIBVIRT=1 too); anh with E2E_IOMMU=1 E2E_DISABLE_ACS_REDIR=1
#   E2E_UPLINK         1 (default, except with E2E_IOMMU=1 or E2E_LIBVIRT=1 or E2E_STANDIN): the
#                      daemon gets a stream uplink (--uplink stream:<run dir>/uplink.sock) and the
#                      guest a plain virtio-net NIC cabled to it by QEMU's own -netdev stream, for
#                      scenario q; 0: neither
#   E2E_IOMMU          1: a vIOMMU in the guest (`qemu-args --iommu`: intel-iommu with interrupt
#                      remapping and device IOTLB, -machine kernel-irqchip=split, intel_iommu=on,
#                      iommu_platform=on,ats=on on every function), for the vfio-pci / VF token
#                      and IOMMU group scenarios l, m; every buffer of the pings (c, o) goes through
#                      the daemon's IOTLB
#   E2E_IOMMU_PLATFORM 0 (with E2E_IOMMU=1): the vIOMMU without iommu_platform on the NIC (the
#                      device then uses guest-physical addresses; vfio's DMA bypasses the vIOMMU)
#   E2E_DISABLE_ACS_REDIR  1 (with E2E_IOMMU=1): pci=disable_acs_redir=<the NIC's root port> on the
#                      guest kernel command line: one IOMMU group for the root port, PF and VFs (n)
#   E2E_APPEND         more guest kernel command line (e.g. dyndbg=..., a patch's parameter)
#   E2E_LIBVIRT        1: start the guest as a transient libvirt domain made from
#                      `qemu-args --libvirt` (installs libvirt's Debian packages if missing, starts
#                      libvirtd and virtlogd for the run if none answers, runs the daemon as QEMU's
#                      user libvirt-qemu). Exits 77 if that user cannot reach QEMU or the guest files.
#   E2E_STANDIN        DEVELOPER OPTION ONLY: "hubport" runs the guest without the daemon, every
#                      function on a QEMU hub; host-side checks are skipped. Never used by CI.
#   E2E_QEMU           QEMU binary (default: the provisioned wrapper, .cache/bin/qemu-system-x86_64)
#   E2E_KERNEL         guest kernel (default: the provisioned Debian 6.12 kernel)
#   E2E_INITRD         guest initramfs (default: the provisioned one, built from scripts/guest/)
#                      These three win over the provisioned paths in $SRIOV_NET_CACHE/e2e.env.
#   E2E_MODULES        the guest's modules for E2E_KERNEL: a directory (INSTALL_MOD_PATH of `make
#                      modules_install`, lib/modules/<release>, or a flat directory of .ko files)
#                      or a tarball of one. The modules the guest needs are taken from it (.ko,
#                      .ko.xz/.zst/.gz; built-in ones are recognised through modules.builtin) and
#                      appended to the initramfs as a second cpio, replacing the Debian ones; their
#                      vermagic must match E2E_KERNEL's release. See README, "Testing your kernel".
#   SRIOV_NET_CACHE    provisioning cache (see scripts/provision.sh)
set -Eeuo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# shellcheck source=scripts/e2e_env.sh
. "$REPO/scripts/e2e_env.sh"
CACHE=${SRIOV_NET_CACHE:-$REPO/.cache}
export SRIOV_NET_CACHE=$CACHE
RESULTS=${E2E_RESULTS:-$REPO/results/e2e-$(date +%Y%m%d-%H%M%S)}
BIN=${E2E_BIN:-${CARGO_TARGET_DIR:-$REPO/target}/release/vhost-user-sriov-net}
VFS_OPT=${E2E_VFS:-}
CONFIG=${E2E_CONFIG:-}
MEMORY=${E2E_MEMORY:-512M}
PINGS=${E2E_PINGS:-4}
TIMEOUT=${E2E_TIMEOUT:-900}
QEMU_TIMEOUT=${E2E_QEMU_TIMEOUT:-420}
READY_TIMEOUT=${E2E_READY_TIMEOUT:-30}
ACCEL=${E2E_ACCEL:-auto}
IOMMU=${E2E_IOMMU:-0}
IOMMU_PLATFORM=${E2E_IOMMU_PLATFORM:-$IOMMU}
ACS_REDIR_OFF=${E2E_DISABLE_ACS_REDIR:-0}
APPEND_EXTRA=${E2E_APPEND:-}
STANDIN=${E2E_STANDIN:-}
LIBVIRT=${E2E_LIBVIRT:-0}
if [ "$IOMMU" = 1 ] || [ "$LIBVIRT" = 1 ] || [ -n "$STANDIN" ]; then
    UPLINK=${E2E_UPLINK:-0}
else
    UPLINK=${E2E_UPLINK:-1}
fi
# Each setup's scenarios (scripts/guest/run.sh runs them in its own order; h last); q needs the
# uplink.
if [ "$ACS_REDIR_OFF" = 1 ]; then
    DEFAULT_IDS=anh
elif [ "$IOMMU" = 1 ] && [ "$LIBVIRT" = 1 ]; then
    DEFAULT_IDS=abch
elif [ "$IOMMU" = 1 ]; then
    DEFAULT_IDS=abcmoluh
elif [ "$UPLINK" = 1 ]; then
    DEFAULT_IDS=abcdefghijkopq
else
    DEFAULT_IDS=abcdefghijkop
fi
ONLY=${E2E_ONLY:-$DEFAULT_IDS}
# The uplink NIC's MAC (QEMU's OUI; no partition's MAC comes from it).
UPLINK_MAC=52:54:00:77:02:01
PY=${PYTHON:-python3}

RUNDIR=
WATCHDOG_PID=
CHILD_PID=
DAEMON_PID=
DAEMON_CHILD=1
SYNC_PID=
QEMU_PID=
TAIL_PID=
DAEMON_EXIT="not stopped"
# libvirt mode (E2E_LIBVIRT=1)
LV_PKGS=(libvirt-daemon-system libvirt-daemon-driver-qemu libvirt-clients libxml2-utils)
LV_USER=libvirt-qemu
LV_NAME=sriov-net-e2e-$$
LV_RUNNING=0
LV_LIBVIRTD_PID=
LV_VIRTLOGD_PID=
VIRSH=(virsh -q -c qemu:///system)
DAEMON_AS=()

say() { printf '[e2e] %s\n' "$*"; }
die() {
    printf '[e2e] ERROR: %s\n' "$*" >&2
    exit 1
}

# alive PID: PID is running. A zombie (a child killed but not reaped yet, like the daemon after a
# RESTART) answers kill -0 but does not count.
alive() {
    local st
    [ -n "$1" ] && kill -0 "$1" 2>/dev/null || return 1
    read -r st 2>/dev/null <"/proc/$1/stat" || return 1
    st=${st##*) }
    [ "${st%% *}" != Z ]
}

# stop_pid PID [GROUP]: SIGTERM, up to 5 s grace, then SIGKILL. GROUP=1: signal the process group
# whose leader is PID (for children started with setsid).
stop_pid() {
    local pid=$1 group=${2:-0} target i
    alive "$pid" || return 0
    target=$pid
    [ "$group" = 1 ] && target=-$pid
    kill -TERM -- "$target" 2>/dev/null || true
    for ((i = 0; i < 50; i++)); do
        alive "$pid" || break
        sleep 0.1
    done
    if alive "$pid"; then
        kill -KILL -- "$target" 2>/dev/null || true
    fi
    wait "$pid" 2>/dev/null || true
}

# shellcheck disable=SC2317 # trap handler
cleanup() {
    local rc=$?
    trap - EXIT INT TERM ALRM ERR
    stop_pid "$QEMU_PID"
    if [ "$LV_RUNNING" = 1 ]; then
        "${VIRSH[@]}" destroy "$LV_NAME" >/dev/null 2>&1 || true
    fi
    stop_pid "$TAIL_PID"
    stop_pid "$SYNC_PID"
    stop_pid "$DAEMON_PID"
    # A daemon scripts/e2e_sync.py started again (RESTART) is named by the ready file only.
    [ -n "$RUNDIR" ] && stop_pid "$(ready_pid)"
    stop_pid "$CHILD_PID" 1
    stop_pid "$LV_LIBVIRTD_PID" 1
    stop_pid "$LV_VIRTLOGD_PID" 1
    stop_pid "$WATCHDOG_PID" 1
    if [ -n "$RUNDIR" ] && [ -d "$RUNDIR" ]; then
        rm -rf --one-file-system "$RUNDIR"
    fi
    exit "$rc"
}
# shellcheck disable=SC2317 # trap handler
on_signal() {
    say "interrupted by SIG$1: cleaning up"
    exit 130
}
# shellcheck disable=SC2317 # trap handler
on_timeout() {
    say "FAIL: overall timeout (E2E_TIMEOUT=${TIMEOUT}s) reached: cleaning up"
    [ -d "$RESULTS" ] && echo "overall timeout after ${TIMEOUT}s" >"$RESULTS/TIMEOUT"
    exit 124
}
trap cleanup EXIT
trap 'on_signal INT' INT
trap 'on_signal TERM' TERM
trap on_timeout ALRM
trap 'say "ERROR: command failed (line $LINENO): $BASH_COMMAND"' ERR

# in_background CMD...: run CMD in its own process group and wait for it, so that signals (Ctrl-C,
# the overall timeout) are handled at once and the whole group is stopped on cleanup.
in_background() {
    local rc=0
    setsid "$@" &
    CHILD_PID=$!
    wait "$CHILD_PID" || rc=$?
    CHILD_PID=
    return "$rc"
}

# wait_file FILE SECONDS PID WHAT: wait for FILE to exist and be non-empty while PID lives.
wait_file() {
    local file=$1 secs=$2 pid=$3 what=$4 i
    for ((i = 0; i < secs * 10; i++)); do
        [ -s "$file" ] && return 0
        alive "$pid" || die "$what exited before creating $file"
        sleep 0.1
    done
    die "$what did not create $file within ${secs}s"
}

choose_accel() {
    case $ACCEL in
        tcg) ACCEL_ARGS=(-accel tcg -cpu max) ;;
        kvm) ACCEL_ARGS=(-accel kvm -cpu host) ;;
        auto)
            # /dev/kvm may be a software KVM (kvm_pvm) on which stock guest kernels die: use KVM only
            # with hardware virtualisation and without kvm_pvm.
            if grep -qwE 'vmx|svm' /proc/cpuinfo && [ ! -e /sys/module/kvm_pvm ] && [ -w /dev/kvm ]; then
                ACCEL_ARGS=(-accel kvm -cpu host)
            else
                ACCEL_ARGS=(-accel tcg -cpu max)
            fi
            ;;
        *) die "E2E_ACCEL must be auto, tcg or kvm" ;;
    esac
}

# Stand-in device arguments: PF + VFS VFs, every function on QEMU hub 0 (a broadcast-everything
# switch), same layout as the daemon's qemu-args (VFs first, PF at function 0 with id=pf0).
standin_args() {
    local i mem=$MEMORY
    # shellcheck disable=SC2054 # commas belong to QEMU option values
    QARGS=(-machine q35,memory-backend=mem -m "$mem" -smp 1
        -object "memory-backend-memfd,id=mem,size=$mem,share=on"
        -device pcie-root-port,id=rp0,chassis=1,slot=0)
    MACS=02:5e:00:00:00:00
    for ((i = VFS - 1; i >= 0; i--)); do
        QARGS+=(-netdev "hubport,id=nvf$i,hubid=0"
            -device "virtio-net-pci,bus=rp0,addr=0x0.$(printf '0x%x' $((i + 1))),netdev=nvf$i,sriov-pf=pf0,mac=02:5e:00:00:01:$(printf '%02x' "$i")")
    done
    for ((i = 0; i < VFS; i++)); do MACS+=,02:5e:00:00:01:$(printf '%02x' "$i"); done
    # shellcheck disable=SC2054
    QARGS+=(-netdev hubport,id=npf,hubid=0
        -device virtio-net-pci,bus=rp0,addr=0x0.0x0,netdev=npf,id=pf0,romfile=,mac=02:5e:00:00:00:00)
}

daemon_common_args() {
    DARGS=(--socket-dir "$RUNDIR/sock")
    [ -n "$VFS_OPT" ] && DARGS+=(--vfs "$VFS_OPT")
    [ -n "$CONFIG" ] && DARGS+=(--config "$CONFIG")
    [ "$UPLINK" = 1 ] && DARGS+=(--uplink "stream:$RUNDIR/uplink.sock")
    return 0
}

start_daemon() {
    local ready=$RUNDIR/daemon.ready i pid_in_file cmd
    daemon_common_args
    mkdir -p "$RUNDIR/sock"
    cmd=(env "RUST_LOG=${RUST_LOG:-info}" "${DAEMON_AS[@]}" "$BIN" "${DARGS[@]}" --ready-file "$ready")
    # The same command, NUL-separated, for scripts/e2e_sync.py to start the daemon again (RESTART).
    printf '%s\0' "${cmd[@]}" >"$RUNDIR/daemon.cmd"
    say "starting daemon: $BIN ${DARGS[*]} --ready-file $ready"
    "${cmd[@]}" >"$RESULTS/daemon.log" 2>&1 &
    DAEMON_PID=$!
    for ((i = 0; i < READY_TIMEOUT * 10; i++)); do
        [ -s "$ready" ] && break
        if ! alive "$DAEMON_PID"; then
            tail -n 20 "$RESULTS/daemon.log" | sed 's/^/[e2e]   daemon: /' >&2
            die "daemon exited before it was ready (see $RESULTS/daemon.log)"
        fi
        sleep 0.1
    done
    [ -s "$ready" ] || die "daemon not ready within ${READY_TIMEOUT}s (no $ready; see $RESULTS/daemon.log)"
    pid_in_file=$(tr -d ' \n' <"$ready")
    [ "$pid_in_file" = "$DAEMON_PID" ] || say "WARNING: ready file holds '$pid_in_file', daemon PID is $DAEMON_PID"
    say "daemon ready (PID $DAEMON_PID) after $((i / 10)).$((i % 10))s"
}

# ready_pid: the PID the daemon's ready file names (none once a daemon has exited cleanly).
ready_pid() { tr -d ' \n' 2>/dev/null <"$RUNDIR/daemon.ready" || true; }

# adopt_restarted_daemon: after a RESTART (scripts/e2e_sync.py killed the daemon with SIGKILL and
# started the same command again), the daemon is the one the ready file names. Reap the killed
# one, our child, and follow the new one; it is not our child, so its exit status comes from the
# file its launcher writes, RUNDIR/daemon-<pid>.exit.
adopt_restarted_daemon() {
    local pid rc=0
    pid=$(ready_pid)
    [ -n "$pid" ] && [ "$pid" != "$DAEMON_PID" ] || return 0
    if [ "$DAEMON_CHILD" = 1 ]; then
        wait "$DAEMON_PID" || rc=$?
        say "daemon PID $DAEMON_PID (killed by a RESTART) exit status: $rc"
    fi
    say "following the restarted daemon, PID $pid"
    DAEMON_PID=$pid
    DAEMON_CHILD=0
}

# daemon_exit_status: the exit status of the daemon that has just stopped.
daemon_exit_status() {
    local i rc=0
    if [ "$DAEMON_CHILD" = 1 ]; then
        wait "$DAEMON_PID" || rc=$?
        echo "$rc"
        return
    fi
    for ((i = 0; i < 50; i++)); do
        if [ -s "$RUNDIR/daemon-$DAEMON_PID.exit" ]; then
            tr -d ' \n' <"$RUNDIR/daemon-$DAEMON_PID.exit"
            return
        fi
        sleep 0.1
    done
    echo "unknown (no $RUNDIR/daemon-$DAEMON_PID.exit)"
}

ctl_show() {
    timeout 30 "$BIN" ctl --socket-dir "$RUNDIR/sock" show -j
}

daemon_setup() {
    local qa=()
    start_daemon
    ctl_show >"$RESULTS/snap-initial.json" || die "ctl show -j failed (see $RESULTS/daemon.log)"
    qa=(qemu-args --socket-dir "$RUNDIR/sock" --memory "$MEMORY")
    [ -n "$VFS_OPT" ] && qa+=(--vfs "$VFS_OPT")
    [ -n "$CONFIG" ] && qa+=(--config "$CONFIG")
    [ "$IOMMU_PLATFORM" = 1 ] && qa+=(--iommu)
    timeout 30 "$BIN" "${qa[@]}" >"$RESULTS/qemu-args.txt" || die "'$BIN ${qa[*]}' failed"
    if [ "$LIBVIRT" = 1 ]; then
        timeout 30 "$BIN" "${qa[@]}" --libvirt >"$RESULTS/domain-generated.xml" ||
            die "'$BIN ${qa[*]} --libvirt' failed"
    fi
    mapfile -t QARGS <"$RESULTS/qemu-args.txt"
    [ ${#QARGS[@]} -gt 0 ] || die "qemu-args printed nothing"
    local params
    params=$("$PY" "$REPO/scripts/e2e_check.py" guest-params --snap "$RESULTS/snap-initial.json" \
        --qemu-args "$RESULTS/qemu-args.txt") || die "daemon's ctl show -j / qemu-args do not agree (above)"
    VFS=$(sed -n 's/^VFS=//p' <<<"$params")
    MACS=$(sed -n 's/^MACS=//p' <<<"$params")
}

final_snapshot() {
    local i
    adopt_restarted_daemon
    # QEMU is gone: give the daemon a moment to notice every disconnect.
    for ((i = 0; i < 50; i++)); do
        alive "$DAEMON_PID" || break
        if ctl_show >"$RESULTS/snap-final.json.tmp" 2>>"$RESULTS/sync.log"; then
            mv -f "$RESULTS/snap-final.json.tmp" "$RESULTS/snap-final.json"
            "$PY" "$REPO/scripts/e2e_check.py" all-waiting --snap "$RESULTS/snap-final.json" && break
        fi
        sleep 0.2
    done
    rm -f "$RESULTS/snap-final.json.tmp"
    DAEMON_ALIVE=0
    alive "$DAEMON_PID" && DAEMON_ALIVE=1
    if [ "$DAEMON_ALIVE" = 1 ]; then
        say "stopping daemon (SIGTERM)"
        kill -TERM "$DAEMON_PID"
        for ((i = 0; i < 100; i++)); do
            alive "$DAEMON_PID" || break
            sleep 0.1
        done
        if alive "$DAEMON_PID"; then
            DAEMON_EXIT="still running 10s after SIGTERM"
            kill -KILL "$DAEMON_PID" 2>/dev/null || true
            wait "$DAEMON_PID" 2>/dev/null || true
        else
            DAEMON_EXIT=$(daemon_exit_status)
        fi
    else
        DAEMON_EXIT="not running after QEMU exited"
        wait "$DAEMON_PID" 2>/dev/null || true
    fi
    DAEMON_PID=
    say "daemon exit status: $DAEMON_EXIT"
}

# prepare_kernel: the guest kernel's release, and with E2E_MODULES the initramfs for this run: the
# provisioned (or E2E_INITRD) one plus a second cpio with the user's modules (the kernel unpacks
# concatenated archives in order, later files replacing earlier ones).
prepare_kernel() {
    local kver mver
    kver=$(e2e_kernel_image_version "$E2E_KERNEL" 2>/dev/null) || kver=
    if [ "$E2E_KERNEL_VERSION" = "of E2E_KERNEL=$E2E_KERNEL" ] && [ -n "$kver" ]; then
        E2E_KERNEL_VERSION="$kver (E2E_KERNEL=$E2E_KERNEL)"
    fi
    if [ -n "$E2E_MODULES" ]; then
        say "E2E_MODULES=$E2E_MODULES: adding the guest's modules to the initramfs"
        mver=$(e2e_modules_overlay "$E2E_MODULES" "$RUNDIR/modules.cpio.gz" 2> >(sed 's/^/[e2e]   /' >&2)) ||
            die "E2E_MODULES=$E2E_MODULES unusable (above)"
        if [ -n "$mver" ] && [ -n "$kver" ] && [ "$mver" != "$kver" ]; then
            die "E2E_MODULES are built for $mver, E2E_KERNEL=$E2E_KERNEL is $kver"
        fi
        cat "$E2E_INITRD" "$RUNDIR/modules.cpio.gz" >"$RUNDIR/initrd.img"
        E2E_INITRD=$RUNDIR/initrd.img
        say "modules for ${mver:-a kernel with them all built in}; initramfs $E2E_INITRD"
    elif [ -n "$kver" ] && [ -n "$E2E_CACHED_KERNEL_VERSION" ] && [ "$kver" != "$E2E_CACHED_KERNEL_VERSION" ]; then
        say "WARNING: E2E_KERNEL is $kver, the initramfs' modules are for $E2E_CACHED_KERNEL_VERSION: set E2E_MODULES (unless all are built in)"
    fi
}

# root_port_bdf: the PCI address of the NIC's root port (qemu-args puts it on pcie.0 at addr=).
root_port_bdf() {
    local line addr slot fn
    line=$(grep -m1 '^pcie-root-port,' "$RESULTS/qemu-args.txt") || return 1
    addr=$(sed -n 's/.*,addr=\(0x[0-9a-fA-F]*\(\.[0-7]\)\?\).*/\1/p' <<<"$line")
    [ -n "$addr" ] && [[ $line == *bus=pcie.0* ]] || return 1
    slot=${addr%%.*}
    fn=0
    [[ $addr == *.* ]] && fn=${addr##*.}
    printf '0000:00:%02x.%x\n' "$((slot))" "$fn"
}

# as_lv_user CMD...: run CMD as the user libvirt runs QEMU as.
as_lv_user() { setpriv --reuid="$LV_USER" --regid="$(id -g "$LV_USER")" --clear-groups "$@"; }

# libvirt_setup: packages, a libvirtd that answers, and QEMU's user able to reach what it needs.
libvirt_setup() {
    local p missing=() i f
    for p in "${LV_PKGS[@]}"; do
        dpkg-query -W -f='${Status}\n' "$p" 2>/dev/null | grep -q '^install ok installed$' || missing+=("$p")
    done
    if [ ${#missing[@]} -gt 0 ]; then
        say "libvirt: installing ${missing[*]}"
        if ! in_background env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
            "${missing[@]}" >>"$RESULTS/apt.log" 2>&1; then
            in_background env DEBIAN_FRONTEND=noninteractive apt-get update >>"$RESULTS/apt.log" 2>&1 || true
            in_background env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
                "${missing[@]}" >>"$RESULTS/apt.log" 2>&1 || die "apt-get install ${missing[*]} failed (see $RESULTS/apt.log)"
        fi
    fi
    id -u "$LV_USER" >/dev/null 2>&1 || die "libvirt: no user $LV_USER (libvirt-daemon-system creates it)"
    # The run directory may hold the initramfs (E2E_MODULES).
    chmod 755 "$RUNDIR"
    for f in "$E2E_QEMU" "$E2E_KERNEL" "$E2E_INITRD"; do
        if ! as_lv_user test -r "$f"; then
            say "SKIP: libvirt runs QEMU as $LV_USER, which cannot read $f (a directory above it not searchable by others?)"
            exit 77
        fi
    done
    if ! timeout 10 "${VIRSH[@]}" uri >/dev/null 2>&1; then
        # No libvirtd answers (no systemd here): run one for this test, and virtlogd, which
        # libvirtd hands QEMU's output to.
        if ! pgrep -x virtlogd >/dev/null; then
            setsid virtlogd >"$RESULTS/virtlogd.log" 2>&1 &
            LV_VIRTLOGD_PID=$!
        fi
        setsid libvirtd >"$RESULTS/libvirtd.log" 2>&1 &
        LV_LIBVIRTD_PID=$!
        for ((i = 0; i < 300; i++)); do
            timeout 10 "${VIRSH[@]}" uri >/dev/null 2>&1 && break
            alive "$LV_LIBVIRTD_PID" || die "libvirtd exited (see $RESULTS/libvirtd.log)"
            sleep 0.1
        done
        timeout 10 "${VIRSH[@]}" uri >/dev/null 2>&1 || die "libvirtd does not answer (see $RESULTS/libvirtd.log)"
        say "libvirt: started libvirtd (PID $LV_LIBVIRTD_PID) for this run"
    fi
    # The daemon runs as QEMU's user, so QEMU may connect to its sockets.
    mkdir -p "$RUNDIR/sock"
    chown "$LV_USER:" "$RUNDIR" "$RUNDIR/sock"
    chmod 755 "$RUNDIR"
    DAEMON_AS=(setpriv --reuid="$LV_USER" --regid="$(id -g "$LV_USER")" --clear-groups)
}

# run_guest_libvirt APPEND: boot the guest as a transient domain; sets qemu_rc (0: powered off).
run_guest_libvirt() {
    local append=$1 lvlog=/var/log/libvirt/qemu/$LV_NAME.log st reason qpid deadline
    local accel=tcg
    [ "${ACCEL_ARGS[1]}" = kvm ] && accel=kvm
    "$PY" "$REPO/scripts/e2e_libvirt.py" --in "$RESULTS/domain-generated.xml" --out "$RESULTS/domain.xml" \
        --name "$LV_NAME" --accel "$accel" --emulator "$E2E_QEMU" --kernel "$E2E_KERNEL" \
        --initrd "$E2E_INITRD" --append "$append" --console "$RESULTS/console.log" \
        --sync "$RUNDIR/sync.sock" || die "scripts/e2e_libvirt.py failed"
    virt-xml-validate "$RESULTS/domain.xml" domain >/dev/null || die "$RESULTS/domain.xml does not validate"
    # QEMU (as $LV_USER) connects to the checkpoint socket.
    chown "$LV_USER:" "$RUNDIR/sync.sock"
    rm -f "$lvlog"
    say "booting the guest as libvirt domain $LV_NAME (timeout ${QEMU_TIMEOUT}s)"
    if ! timeout 120 "${VIRSH[@]}" create "$RESULTS/domain.xml" >"$RESULTS/virsh.log" 2>&1; then
        sed 's/^/[e2e]   virsh: /' "$RESULTS/virsh.log"
        [ -f "$lvlog" ] && cp "$lvlog" "$RESULTS/qemu.log"
        qemu_rc=1
        return
    fi
    LV_RUNNING=1
    qpid=$(cat "/run/libvirt/qemu/$LV_NAME.pid" 2>/dev/null || true)
    if [ -n "$qpid" ]; then
        tail -n +1 -F --pid="$qpid" "$RESULTS/console.log" 2>/dev/null |
            sed -u -n 's/\r$//; /^RESULT /s/^/[guest] /p' &
        TAIL_PID=$!
    fi
    deadline=$((SECONDS + QEMU_TIMEOUT))
    while st=$("${VIRSH[@]}" domstate "$LV_NAME" 2>/dev/null) && [ "$st" != "shut off" ]; do
        if [ "$SECONDS" -ge "$deadline" ]; then
            "${VIRSH[@]}" destroy "$LV_NAME" >/dev/null 2>&1 || true
            qemu_rc=124
            break
        fi
        sleep 0.5
    done
    LV_RUNNING=0
    [ -f "$lvlog" ] && cp "$lvlog" "$RESULTS/qemu.log"
    if [ "$qemu_rc" != 124 ]; then
        reason=$(sed -n 's/.*shutting down, reason=\([a-z]*\).*/\1/p' "$RESULTS/qemu.log" 2>/dev/null | tail -n 1)
        qemu_rc=1
        [ "$reason" = shutdown ] && qemu_rc=0
        say "domain ended (libvirt: reason=${reason:-unknown})"
    fi
}

main() {
    local t0=$SECONDS mode=daemon qemu_rc=0 sync_args=() append
    # shellcheck disable=SC2016 # expanded by the inner bash
    setsid bash -c 'sleep "$1"; kill -ALRM "$2"' _ "$TIMEOUT" $$ &
    WATCHDOG_PID=$!

    if [ -n "$STANDIN" ]; then
        [ "$STANDIN" = hubport ] || die "E2E_STANDIN must be 'hubport' (or unset)"
        mode=standin
        say "################################################################################"
        say "## E2E_STANDIN=hubport: DEVELOPER STAND-IN. No daemon runs; every function is on"
        say "## a QEMU hub. Host-side checks are SKIPPED. This does NOT test the daemon."
        say "################################################################################"
    elif [ ! -x "$BIN" ]; then
        if [ -n "${E2E_BIN:-}" ]; then die "E2E_BIN=$BIN is not executable"; fi
        say "daemon binary $BIN missing: running 'cargo build --release'"
        in_background cargo build --release --manifest-path "$REPO/Cargo.toml" || die "cargo build --release failed"
        [ -x "$BIN" ] || die "cargo build --release did not produce $BIN"
    fi

    say "provisioning (scripts/provision.sh, cache $CACHE)"
    in_background bash "$REPO/scripts/provision.sh" || die "provisioning failed (see above)"
    load_e2e_env "$CACHE/e2e.env"

    mkdir -p "$RESULTS"
    RESULTS=$(cd "$RESULTS" && pwd)
    RUNDIR=$(mktemp -d /tmp/sriov-net-e2e.XXXXXX)
    say "results: $RESULTS"
    choose_accel
    prepare_kernel
    [ "$ACS_REDIR_OFF" != 1 ] || [ "$IOMMU" = 1 ] || die "E2E_DISABLE_ACS_REDIR=1 needs E2E_IOMMU=1"
    if [ "$LIBVIRT" = 1 ]; then
        [ "$mode" = daemon ] || die "E2E_LIBVIRT=1 needs the daemon (not E2E_STANDIN)"
        libvirt_setup
    fi
    say "QEMU $E2E_QEMU_VERSION, guest kernel $E2E_KERNEL_VERSION, accel: ${ACCEL_ARGS[*]}"

    if [ "$mode" = standin ]; then
        VFS=${VFS_OPT:-4}
        standin_args
        printf '%s\n' "${QARGS[@]}" >"$RESULTS/qemu-args.txt"
        sync_args=(--standin)
    else
        daemon_setup
        sync_args=(--ctl "$BIN" --socket-dir "$RUNDIR/sock" --daemon-cmd "$RUNDIR/daemon.cmd"
            --daemon-ready "$RUNDIR/daemon.ready" --daemon-log "$RESULTS/daemon.log"
            --ready-timeout "$READY_TIMEOUT")
    fi
    [ "$VFS" -ge 2 ] || die "the scenarios need at least 2 VFs (have $VFS)"
    say "$VFS VFs, MACs $MACS"

    "$PY" "$REPO/scripts/e2e_sync.py" --listen "$RUNDIR/sync.sock" --ready "$RUNDIR/sync.ready" \
        --results "$RESULTS" "${sync_args[@]}" >"$RESULTS/sync.log" 2>&1 &
    SYNC_PID=$!
    wait_file "$RUNDIR/sync.ready" 10 "$SYNC_PID" "scripts/e2e_sync.py"

    append="console=ttyS0 panic=-1 ipv6.disable=1 loglevel=4 sriovnet_vfs=$VFS sriovnet_macs=$MACS"
    append+=" sriovnet_pings=$PINGS sriovnet_sync=1 sriovnet_only=$ONLY"
    append+=" sriovnet_watchdog=$((QEMU_TIMEOUT > 60 ? QEMU_TIMEOUT - 30 : QEMU_TIMEOUT))"
    local iommu_args=() rp
    if [ "$IOMMU_PLATFORM" = 1 ]; then
        # qemu-args --iommu put the vIOMMU (intel-iommu, intremap, device-iotlb) and the
        # machine's split irqchip in QARGS, and iommu_platform=on,ats=on on every function.
        append+=" intel_iommu=on"
        say "vIOMMU from qemu-args --iommu: every function's DMA through the daemon's IOTLB"
    elif [ "$IOMMU" = 1 ]; then
        # Before every PCI device, so that their MSIs go through interrupt remapping.
        # shellcheck disable=SC2054 # commas belong to QEMU option values
        iommu_args=(-machine q35,kernel-irqchip=split -device intel-iommu,intremap=on)
        append+=" intel_iommu=on"
        say "vIOMMU: ${iommu_args[*]}"
    fi
    if [ "$ACS_REDIR_OFF" = 1 ]; then
        rp=$(root_port_bdf) || die "no pcie-root-port with bus=pcie.0,addr= in $RESULTS/qemu-args.txt"
        append+=" pci=disable_acs_redir=$rp"
        say "ACS redirection off on the root port $rp (one IOMMU group)"
    fi
    [ -n "$APPEND_EXTRA" ] && append+=" $APPEND_EXTRA"
    local uplink_args=()
    if [ "$UPLINK" = 1 ]; then
        # A second VM's ordinary NIC, cabled to the daemon's stream uplink by QEMU's own netdev;
        # reconnect-ms as qemu-args gives the partition sockets: after a daemon restart (p) the
        # partitions' links wait for this peer.
        # shellcheck disable=SC2054 # commas belong to QEMU option values
        uplink_args=(-netdev "stream,id=uplink,server=off,addr.type=unix,addr.path=${RUNDIR//,/,,}/uplink.sock,reconnect-ms=100"
            -device "virtio-net-pci,netdev=uplink,mac=$UPLINK_MAC")
        append+=" sriovnet_uplink_mac=$UPLINK_MAC"
        say "uplink: the daemon's stream:$RUNDIR/uplink.sock, a virtio-net NIC ($UPLINK_MAC) on QEMU's -netdev stream"
    fi
    local qemu_cmd=(timeout -k 10 "$QEMU_TIMEOUT" "$E2E_QEMU" "${iommu_args[@]}" "${QARGS[@]}" "${uplink_args[@]}"
        -nodefaults -display none -no-reboot "${ACCEL_ARGS[@]}"
        -kernel "$E2E_KERNEL" -initrd "$E2E_INITRD" -append "$append"
        -chardev "file,id=con,path=$RESULTS/console.log" -serial chardev:con
        -chardev "socket,id=sync,path=$RUNDIR/sync.sock" -serial chardev:sync)
    : >"$RESULTS/console.log"
    local tq=$SECONDS
    if [ "$LIBVIRT" = 1 ]; then
        run_guest_libvirt "$append"
    else
        printf '%q ' "${qemu_cmd[@]}" >"$RESULTS/qemu-cmdline.txt"
        echo >>"$RESULTS/qemu-cmdline.txt"
        say "booting the guest (QEMU timeout ${QEMU_TIMEOUT}s)"
        "${qemu_cmd[@]}" >"$RESULTS/qemu.log" 2>&1 &
        QEMU_PID=$!
        # Progress: the guest's RESULT lines as they come.
        tail -n +1 -F --pid="$QEMU_PID" "$RESULTS/console.log" 2>/dev/null |
            sed -u -n 's/\r$//; /^RESULT /s/^/[guest] /p' &
        TAIL_PID=$!
        wait "$QEMU_PID" || qemu_rc=$?
        QEMU_PID=
    fi
    say "QEMU exited with status $qemu_rc after $((SECONDS - tq))s"
    [ "$qemu_rc" = 124 ] && say "FAIL: QEMU killed after E2E_QEMU_TIMEOUT=${QEMU_TIMEOUT}s"
    [ -s "$RESULTS/qemu.log" ] && sed 's/^/[e2e]   qemu: /' "$RESULTS/qemu.log" | tail -n 20
    # tail notices QEMU's exit within a second.
    wait "$TAIL_PID" 2>/dev/null || true
    TAIL_PID=
    for ((i = 0; i < 50; i++)); do alive "$SYNC_PID" || break; sleep 0.1; done
    stop_pid "$SYNC_PID"
    SYNC_PID=

    DAEMON_ALIVE=0
    if [ "$mode" = daemon ]; then
        final_snapshot
    fi

    local rc=0
    "$PY" "$REPO/scripts/e2e_check.py" report --results "$RESULTS" --mode "$mode" --vfs "$VFS" \
        --pings "$PINGS" --qemu-rc "$qemu_rc" --daemon-alive "$DAEMON_ALIVE" --iommu "$IOMMU_PLATFORM" \
        --daemon-exit "$DAEMON_EXIT" --only "$ONLY" --default-ids "$DEFAULT_IDS" || rc=$?
    if [ "$rc" != 0 ] && [ -s "$RESULTS/console.log" ]; then
        say "last lines of the guest console ($RESULTS/console.log):"
        tr -d '\r' <"$RESULTS/console.log" | tail -n 30 | sed 's/^/[e2e]   console: /'
    fi
    say "total $((SECONDS - t0))s; results in $RESULTS"
    if [ "$mode" = standin ]; then say "STAND-IN RUN: the daemon was NOT tested."; fi
    exit "$rc"
}

main "$@"
