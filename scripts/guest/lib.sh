# shellcheck shell=dash disable=SC2034
# Helpers for the guest scenarios (busybox sh; sourced by run.sh). dash-compatible apart from read -t.
#
# Naming: a "function" is pf, vf0, vf1, ... Each function's netdev is moved into a network namespace
# of the same name, renamed net0, and gets its address from fn_ip in 10.77.0.0/16: 10.77.0.1 for
# the PF, 10.77.0.<K+2> for VF K up to VF 248, then 10.77.1.1 on (VF 254: 10.77.1.6).
# iproute2's ip is installed as "xip": busybox ip cannot move links between namespaces.

FAILED=0
DETAIL=
PF=
SNAP_TIMEOUT=180

log() { echo "E2E: $*"; }

# fail MSG: record MSG as the current scenario's detail and return 1, for `cond || fail MSG || return 1`.
fail() {
    DETAIL=$*
    return 1
}

uptime_s() { cut -d' ' -f1 /proc/uptime; }
since() { awk -v t0="$1" '{ printf "%.1f", $1 - t0 }' /proc/uptime; }

# run_scenario ID FUNCTION: run one scenario, print exactly one RESULT line for it.
run_scenario() {
    local _id="$1" _t0 _st
    case $E2E_ONLY in *"$_id"*) ;; *) return 0 ;; esac
    DETAIL=
    _t0=$(uptime_s)
    log "scenario $_id: start"
    if $2; then
        _st=PASS
    else
        _st=FAIL
        FAILED=$((FAILED + 1))
    fi
    echo "RESULT $_id $_st ${DETAIL:-ok} [$(since "$_t0")s]"
    [ "$_st" = PASS ] || pf_restore
}

# pf_restore: after a failed scenario, best effort back to the PF on virtio-pci without VFs, so
# that one failure does not fail the scenarios after it.
pf_restore() {
    local _drv
    [ -n "$PF" ] || return 0
    _drv=$(driver_of "$PF")
    [ "$_drv" = virtio-pci ] && [ "$(numvfs)" = 0 ] && return 0
    log "restoring the PF (driver ${_drv:-none}, $(numvfs) VFs) to virtio-pci without VFs"
    if [ -z "$_drv" ] && [ "$(numvfs)" != 0 ] && [ -d /sys/bus/pci/drivers/pci-pf-stub ]; then
        fn_bind "$PF" pci-pf-stub
    fi
    pf_to_virtio || log "restore failed: $DETAIL"
}

# ------------------------------------------------------------------ host checkpoints (ttyS1)

# The host side (scripts/e2e_sync.py) answers every "SNAP <name>" line with "ACK <name>" once it has
# saved the daemon's counters (or "NAK <name> <why>"). Without sriovnet_sync=1, snap does nothing.
sync_open() {
    SYNC_OK=0
    [ "$E2E_SYNC" = 1 ] || return 0
    if [ ! -c /dev/ttyS1 ]; then
        log "sync: /dev/ttyS1 missing, host checkpoints disabled"
        return 0
    fi
    stty -F /dev/ttyS1 raw -echo -echoe -echok -echoctl -echoke 115200 || log "sync: stty failed"
    exec 3<>/dev/ttyS1
    SYNC_OK=1
}

# snap NAME: let the host snapshot the daemon's state as NAME, wait (SNAP_TIMEOUT s) for its answer.
snap() {
    local _t0 _line
    [ "$SYNC_OK" = 1 ] || return 0
    _t0=$(uptime_s)
    echo "SNAP $1" >&3
    # shellcheck disable=SC3045 # busybox ash has read -t
    while read -r -t "$SNAP_TIMEOUT" _line <&3; do
        case $_line in
            "ACK $1") return 0 ;;
            "NAK $1"*)
                log "snapshot $1 refused by host: $_line"
                return 1
                ;;
        esac
    done
    log "snapshot $1: no answer from host after $(since "$_t0")s; no more checkpoints in this run"
    SYNC_OK=0
    return 1
}

# host_ask KIND NAME [WORDS...]: send "KIND NAME WORDS" to the host, wait for ACK NAME (0) or
# NAK NAME (1). Needs the sync channel.
host_ask() {
    local _kind=$1 _name=$2 _line
    shift 2
    [ "$SYNC_OK" = 1 ] || { log "$_kind $_name: no host channel"; return 1; }
    echo "$_kind $_name${*:+ $*}" >&3
    # shellcheck disable=SC3045 # busybox ash has read -t
    while read -r -t "$SNAP_TIMEOUT" _line <&3; do
        case $_line in
            "ACK $_name") return 0 ;;
            "NAK $_name"*)
                log "$_kind $_name refused: $_line"
                return 1
                ;;
        esac
    done
    log "$_kind $_name: no answer from host"
    return 1
}

# hostctl NAME WORDS...: the host runs `ctl WORDS` on the daemon (the operator's side of an
# admin scenario) and answers ACK NAME once it is done.
hostctl() { host_ask CTL "$@"; }

# host_restart NAME: the host kills the daemon with SIGKILL and starts it again, and answers ACK
# NAME once the new daemon is ready (its sockets listen; QEMU has not reconnected yet).
host_restart() { host_ask RESTART "$1"; }

# ------------------------------------------------------------------ PCI / netdev helpers

# find_pf: set PF to the sysfs dir of the virtio-net PF (1af4:1041 with SR-IOV capability).
find_pf() {
    local _d
    PF=
    for _d in /sys/bus/pci/devices/*; do
        [ "$(cat "$_d/vendor")" = 0x1af4 ] || continue
        [ "$(cat "$_d/device")" = 0x1041 ] || continue
        [ -e "$_d/sriov_totalvfs" ] || continue
        PF=$_d
        return 0
    done
    return 1
}

driver_of() {
    local _l
    [ -e "$1/driver" ] || return 1
    _l=$(readlink "$1/driver")
    echo "${_l##*/}"
}

# netdev_of PCIDIR: name of the netdev of a virtio PCI function (as seen from the initial namespace).
netdev_of() {
    local _n
    for _n in "$1"/virtio*/net/*; do
        [ -e "$_n" ] || continue
        echo "${_n##*/}"
        return 0
    done
    return 1
}

# wait_for SECONDS CMD...: retry CMD every 0.2 s until it succeeds.
wait_for() {
    local _n=$(($1 * 5))
    shift
    while ! "$@" >/dev/null 2>&1; do
        _n=$((_n - 1))
        [ "$_n" -gt 0 ] || return 1
        sleep 0.2
    done
    return 0
}

# vf_dir K: sysfs dir of VF K (through the PF's virtfnK link).
vf_dir() {
    [ -e "$PF/virtfn$1" ] || return 1
    readlink -f "$PF/virtfn$1"
}

fn_dir() {
    case $1 in
        pf) echo "$PF" ;;
        vf*) vf_dir "${1#vf}" ;;
        up) uplink_dir ;;
    esac
}

# uplink_dir: the plain virtio-net NIC that QEMU cables to the daemon's stream uplink
# (-netdev stream; e2e.sh's E2E_UPLINK), found by its MAC while its netdev is in this namespace.
uplink_dir() {
    local _a
    [ -n "$E2E_UPLINK_MAC" ] || return 1
    for _a in /sys/bus/pci/devices/*/virtio*/net/*/address; do
        [ -e "$_a" ] || continue
        [ "$(cat "$_a")" = "$E2E_UPLINK_MAC" ] || continue
        readlink -f "${_a%/virtio*}"
        return 0
    done
    return 1
}

# The functions' subnet, and an address in it that no function has (the ARP target of scenario d).
NET_PREFIX=16
UNUSED_IP=10.77.255.254

# fn_ip FN: function index n (pf 0, vfK K+1) -> 10.77.<n / 250>.<n % 250 + 1>: no octet beyond 250.
fn_ip() {
    local _n
    case $1 in
        pf) _n=0 ;;
        vf*) _n=$((${1#vf} + 1)) ;;
        up)
            # Past the last VF's 10.77.1.6.
            echo 10.77.2.1
            return 0
            ;;
    esac
    echo "10.77.$((_n / 250)).$((_n % 250 + 1))"
}

# fn_mac FN: expected MAC of function FN, from sriovnet_macs (PF first, then VF0..).
fn_mac() {
    local _i
    case $1 in
        pf) _i=1 ;;
        vf*) _i=$((${1#vf} + 2)) ;;
        up)
            echo "$E2E_UPLINK_MAC"
            return 0
            ;;
    esac
    case $E2E_MACS in
        *+*)
            # FIRST+COUNT (e2e_check.py compact_macs): FIRST plus _i-1 in its last three bytes.
            _m=${E2E_MACS%+*}
            _l=$((0x$(echo "${_m#????????}" | tr -d :) + _i - 1))
            printf '%s:%02x:%02x:%02x\n' "${_m%:??:??:??}" $((_l >> 16 & 255)) $((_l >> 8 & 255)) $((_l & 255))
            ;;
        *) echo "$E2E_MACS" | cut -d, -f"$_i" | tr 'A-F' 'a-f' ;;
    esac
}

vf_list() {
    local _k=0
    while [ "$_k" -lt "$E2E_VFS" ]; do
        echo "vf$_k"
        _k=$((_k + 1))
    done
}

numvfs() { cat "$PF/sriov_numvfs"; }

# set_numvfs N: write N to sriov_numvfs; on failure the error text is in SET_ERR.
set_numvfs() {
    SET_ERR=
    if echo "$1" 2>/tmp/numvfs.err >"$PF/sriov_numvfs"; then
        return 0
    fi
    SET_ERR=$(tr '\n' ' ' </tmp/numvfs.err | sed 's/ *$//')
    return 1
}

# check_vfs_bound: every VF exists, points back at the PF, is bound to virtio-pci and has a netdev
# with its expected MAC.
check_vfs_bound() {
    local _f _d _if _mac
    [ "$(numvfs)" = "$E2E_VFS" ] || fail "sriov_numvfs is $(numvfs), not $E2E_VFS" || return 1
    [ ! -e "$PF/virtfn$E2E_VFS" ] || fail "more than $E2E_VFS virtfn links" || return 1
    for _f in $(vf_list); do
        _d=$(fn_dir "$_f") || fail "$_f: no virtfn${_f#vf} link" || return 1
        [ "$(readlink -f "$_d/physfn")" = "$(readlink -f "$PF")" ] || fail "$_f: physfn does not point to the PF" || return 1
        wait_for 10 netdev_of "$_d" || fail "$_f ($(basename "$_d")): no netdev (driver $(driver_of "$_d" || echo none))" || return 1
        [ "$(driver_of "$_d")" = virtio-pci ] || fail "$_f: driver $(driver_of "$_d" || echo none), not virtio-pci" || return 1
        _if=$(netdev_of "$_d")
        _mac=$(cat "/sys/class/net/$_if/address")
        [ "$_mac" = "$(fn_mac "$_f")" ] || fail "$_f: MAC $_mac, expected $(fn_mac "$_f")" || return 1
    done
    return 0
}

# check_vfs_still_there: every VF still exists, bound to virtio-pci, its netdev still in its namespace.
check_vfs_still_there() {
    local _f _d
    for _f in $(vf_list); do
        _d=$(fn_dir "$_f") || fail "$_f: virtfn${_f#vf} link gone" || return 1
        [ "$(driver_of "$_d")" = virtio-pci ] || fail "$_f: driver $(driver_of "$_d" || echo none)" || return 1
        if ns_exists "$_f"; then
            ns_has_dev "$_f" || fail "$_f: netdev gone from netns $_f" || return 1
        else
            netdev_of "$_d" >/dev/null || fail "$_f: no netdev" || return 1
        fi
    done
    return 0
}

# check_no_vfs: no VF devices and no VF netdevs left.
check_no_vfs() {
    local _l _d _slot
    [ "$(numvfs)" = 0 ] || fail "sriov_numvfs is $(numvfs), not 0" || return 1
    for _l in "$PF"/virtfn*; do
        [ -e "$_l" ] && { fail "$(basename "$_l") still present" || return 1; }
    done
    # Nothing but the PF left on the PF's bus slot.
    _slot=$(basename "$PF")
    _slot=${_slot%.*}
    for _d in /sys/bus/pci/devices/"$_slot".*; do
        [ "$_d" = "$PF" ] && continue
        [ -e "$_d" ] && { fail "$(basename "$_d") still present" || return 1; }
    done
    return 0
}

# ------------------------------------------------------------------ namespaces and traffic

ns_exists() { [ -e "/run/netns/$1" ]; }

# into_ns FN: move FN's netdev into namespace FN as net0, with its address, and bring it up.
into_ns() {
    local _d _if
    _d=$(fn_dir "$1") || fail "$1: no device" || return 1
    _if=$(netdev_of "$_d") || fail "$1: no netdev in the initial namespace" || return 1
    ns_exists "$1" || xip netns add "$1" || fail "ip netns add $1 failed" || return 1
    xip link set dev "$_if" netns "$1" || fail "$1: cannot move $_if into netns $1" || return 1
    xip -n "$1" link set dev "$_if" name net0 || fail "$1: rename failed" || return 1
    xip -n "$1" addr add "$(fn_ip "$1")/$NET_PREFIX" dev net0 || fail "$1: addr add failed" || return 1
    xip -n "$1" link set dev net0 up || fail "$1: link up failed" || return 1
    xip -n "$1" link set dev lo up
    return 0
}

# ns_has_dev FN: namespace FN holds net0.
ns_has_dev() { xip -n "$1" link show dev net0 >/dev/null 2>&1; }

# nstat FN NAME: a netdev counter of FN's net0 (from inside its namespace).
nstat() { xip netns exec "$1" cat "/sys/class/net/net0/statistics/$2" 2>/dev/null || echo -1; }

# ping_check FROM TO: ping TO's address from FROM's namespace, E2E_PINGS packets, all answered.
ping_check() {
    local _out _rc _rx
    _out=$(xip netns exec "$1" ping -q -c "$E2E_PINGS" -i 0.2 -W 3 -w 20 "$(fn_ip "$2")" 2>&1)
    _rc=$?
    _rx=$(echo "$_out" | sed -n 's/.* \([0-9]*\) packets received.*/\1/p')
    PING_DETAIL="$1->$2 ${_rx:-0}/$E2E_PINGS"
    [ "$_rc" = 0 ] && [ "${_rx:-0}" = "$E2E_PINGS" ] && return 0
    log "ping $1 -> $2 failed (rc $_rc): $(echo "$_out" | tr '\n' ' ')"
    fail "ping $PING_DETAIL" || return 1
}

# ------------------------------------------------------------------ modules, drivers, kernel log

# load_module NAME [PARAM=VALUE...]: load a module the initramfs lists in /lib/modules/e2e/extra
# (scripts/e2e_env.sh; the caller loads its dependencies first). If it is already loaded, or built
# in (E2E_MODULES found no file for it), set the parameters through sysfs instead.
load_module() {
    local _n=$1 _sys _p
    shift
    _sys=/sys/module/$(echo "$_n" | tr - _)
    if [ ! -d "$_sys" ] && grep -qx "$_n" /lib/modules/e2e/extra 2>/dev/null; then
        insmod "/lib/modules/e2e/$_n.ko" "$@" 2>/tmp/insmod.err ||
            fail "insmod $_n $*: $(tr '\n' ' ' </tmp/insmod.err)" || return 1
        return 0
    fi
    [ -d "$_sys" ] || fail "module $_n: not in the initramfs and not built in" || return 1
    for _p in "$@"; do
        echo "${_p#*=}" >"$_sys/parameters/${_p%%=*}" 2>/dev/null ||
            fail "$_n already loaded and its parameter ${_p%%=*} cannot be set" || return 1
    done
    return 0
}

# load_vfio [PARAM=VALUE...]: the vfio-pci chain in dependency order (busybox insmod ignores
# softdeps: vfio's "post: vfio_iommu_type1" is explicit here); the parameters are vfio-pci's.
load_vfio() {
    load_module irqbypass && load_module vfio && load_module vfio_iommu_type1 &&
        load_module vfio-pci-core && load_module vfio-pci "$@"
}

# sysfs_write FILE VALUE: write VALUE to FILE; on failure the errno text is in WRITE_ERR.
sysfs_write() {
    WRITE_ERR=
    if echo "$2" 2>/tmp/sysfs.err >"$1"; then
        return 0
    fi
    WRITE_ERR=$(tr '\n' ' ' </tmp/sysfs.err | sed 's/^.*: //; s/ *$//')
    return 1
}

# fn_unbind DIR: unbind the PCI function DIR from its driver (if any).
fn_unbind() {
    local _drv
    _drv=$(driver_of "$1") || return 0
    sysfs_write "/sys/bus/pci/drivers/$_drv/unbind" "$(basename "$1")"
}

# fn_bind DIR DRIVER: bind the unbound PCI function DIR to DRIVER, as an administrator does:
# driver_override, then the driver's bind file (which returns the probe's error).
fn_bind() {
    sysfs_write "$1/driver_override" "$2" || { WRITE_ERR="driver_override: $WRITE_ERR"; return 1; }
    sysfs_write "/sys/bus/pci/drivers/$2/bind" "$(basename "$1")"
}

# vfs_off: no VFs, sriov_drivers_autoprobe back on.
vfs_off() {
    if [ "$(numvfs)" != 0 ]; then
        set_numvfs 0 || fail "echo 0 > sriov_numvfs (PF on $(driver_of "$PF" || echo no driver)): $SET_ERR" || return 1
    fi
    wait_for 10 check_no_vfs || fail "VFs left after numvfs=0" || return 1
    echo 1 >"$PF/sriov_drivers_autoprobe"
}

# pf_rebind DRIVER: no VFs, then the PF moves from its driver to DRIVER (driver_override + bind).
pf_rebind() {
    vfs_off || return 1
    fn_unbind "$PF" || fail "unbind PF from $(driver_of "$PF"): $WRITE_ERR" || return 1
    fn_bind "$PF" "$1" || fail "bind PF to $1: $WRITE_ERR" || return 1
    [ "$(driver_of "$PF")" = "$1" ] || fail "PF driver $(driver_of "$PF" || echo none), expected $1" || return 1
    ! netdev_of "$PF" >/dev/null || fail "PF still has a netdev on $1" || return 1
}

# pf_to_virtio: no VFs, then the PF back on virtio-pci (driver_override cleared, drivers_probe),
# with its netdev and MAC.
pf_to_virtio() {
    local _if
    if [ -e "$PF/driver" ]; then
        vfs_off || return 1
        [ "$(driver_of "$PF")" = virtio-pci ] && return 0
        fn_unbind "$PF" || fail "unbind PF from $(driver_of "$PF"): $WRITE_ERR" || return 1
    fi
    sysfs_write "$PF/driver_override" "" || fail "clear PF driver_override: $WRITE_ERR" || return 1
    sysfs_write /sys/bus/pci/drivers_probe "$(basename "$PF")" || fail "drivers_probe PF: $WRITE_ERR" || return 1
    [ "$(driver_of "$PF")" = virtio-pci ] || fail "PF driver $(driver_of "$PF" || echo none) after drivers_probe, expected virtio-pci" || return 1
    wait_for 10 netdev_of "$PF" || fail "PF has no netdev back on virtio-pci" || return 1
    _if=$(netdev_of "$PF")
    [ "$(cat "/sys/class/net/$_if/address")" = "$(fn_mac pf)" ] || fail "PF MAC wrong back on virtio-pci" || return 1
}

# setup_vf_ns: every VF's netdev in its own namespace (the PF's may have none).
setup_vf_ns() {
    local _f
    for _f in $(vf_list); do
        ns_has_dev "$_f" && continue
        into_ns "$_f" || return 1
    done
}

# dmesg_mark NAME / dmesg_since: the kernel log from a marker line on (robust to ring wrap-around).
dmesg_mark() {
    DMESG_TAG="E2E-mark-$1-$(uptime_s)"
    echo "<6>$DMESG_TAG" >/dev/kmsg
}
dmesg_since() { dmesg | sed -n "/$DMESG_TAG/,\$p" | sed 1d; }

# dmesg_has REGEX: the kernel logged REGEX since the last dmesg_mark.
dmesg_has() { dmesg_since | grep -qE "$1"; }

# dmesg_show PREFIX: echo the kernel log since the mark to the console, for the record.
dmesg_show() { dmesg_since | sed "s/^/E2E: dmesg $1: /"; }

# group_of DIR: the IOMMU group number of a PCI function (fails without an IOMMU).
group_of() {
    local _g
    [ -e "$1/iommu_group" ] || return 1
    _g=$(readlink "$1/iommu_group")
    echo "${_g##*/}"
}

# group_size G: how many devices IOMMU group G holds.
group_size() {
    set -- "/sys/kernel/iommu_groups/$1/devices"/*
    echo $#
}

# cfg_read DIR OFFSET BYTES: a config space register (2 or 4 bytes, little endian, as a number).
cfg_read() {
    local _v
    _v=$(od -An -t"x$3" -j "$2" -N "$3" "$1/config" 2>/dev/null | tr -d ' \n')
    [ -n "$_v" ] || return 1
    echo $((0x$_v))
}

# acs_ctrl DIR: the ACS Control register of a PCIe function (extended capability 0x000d), or fail.
acs_ctrl() {
    local _off=256 _h _n=0
    while [ "$_off" -ge 256 ] && [ "$_n" -lt 64 ]; do
        _h=$(cfg_read "$1" "$_off" 4) || return 1
        [ "$_h" != 0 ] || return 1
        if [ $((_h & 0xffff)) = 13 ]; then
            cfg_read "$1" $((_off + 6)) 2
            return
        fi
        _off=$(((_h >> 20) & 0xffc))
        _n=$((_n + 1))
    done
    return 1
}
