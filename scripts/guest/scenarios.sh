# shellcheck shell=dash
# Guest scenarios a..q and u (busybox sh; sourced by run.sh). Each returns 0 (PASS) or 1 (FAIL) and sets
# DETAIL. "snap NAME" marks a host checkpoint: the runner saves the daemon's state as
# results/snap-NAME.json while the guest waits; scripts/e2e_check.py compares the snapshots:
#
#   boot, a      before any VF is enabled      (a: VF partitions connected, never started)
#   b            after numvfs 0 -> N           (b: every VF partition started once)
#   c-start/end  around the pings              (c: rx/tx counters moved, no drops)
#   d-start/end  around VF1's ARP broadcast    (d: rx_broadcast everywhere but on VF1)
#   e-start/end  around two N -> 0 -> N cycles (e: each VF starts +2, stops +2)
#   f-start/end  around the refused N -> M     (f: no start/stop anywhere)
#   g-start/end  around autoprobe=0 + bind VF0 (g: only VF0 started)
#   i-start/down/vlan/end  around ctl state disable/enable and port VLANs (i: VF0 stopped while
#                down, VF2 on VLAN 20 heard nothing)
#   j-stub/traffic/orphan/rebound/end  the unmanaged PF (pci-pf-stub; PF not started, its
#                counters still; VFs keep working once pci-pf-stub is gone)
#   k-start/reset/end/clean  PF reset with live VFs (every VF stopped by the reset, started again
#                by numvfs 0 -> N)
#   l-start/vfio/vf/end  vfio-pci on the PF, VFs captured (no VF started; the one handed to
#                virtio-pci started)
#   m            IOMMU groups with ACS (every function started, for the record)
#   n-start/stub/end  shared group (no VF ever started; PF not started while on pci-pf-stub)
#   o-start/end  all VFs, the last one pings the PF
#   p-start/end  around a daemon restart (kill -9, start again) under vf0 -> vf1 and pf -> vf1
#                pings; p-end is the new daemon's (fresh counters)
#   q-start/end  around pings between the uplink NIC (QEMU -netdev stream) and VF0 (q: the stream
#                uplink's rx/tx and VF0's counters moved, the uplink's link up)
#   (after QEMU exits the runner takes "final": every partition waiting, daemon alive)

# a: the PF is there, bound to virtio-pci, with the expected MAC, sriov_totalvfs = N and no VFs yet.
scen_a_pf_visible() {
    local total pfif mac
    find_pf || fail "no 1af4:1041 PCI function with sriov_totalvfs" || return 1
    [ "$(driver_of "$PF")" = virtio-pci ] || fail "PF $(basename "$PF") driver: $(driver_of "$PF" || echo none)" || return 1
    total=$(cat "$PF/sriov_totalvfs")
    [ -n "$E2E_VFS" ] || fail "no sriovnet_vfs= on the kernel command line" || return 1
    [ "$total" = "$E2E_VFS" ] || fail "sriov_totalvfs $total, expected $E2E_VFS" || return 1
    [ "$(numvfs)" = 0 ] || fail "sriov_numvfs already $(numvfs)" || return 1
    check_no_vfs || return 1
    [ ! -s /tmp/insmod-failed ] || fail "boot modules not loaded: $(tr '\n' ' ' </tmp/insmod-failed)" || return 1
    pfif=$(netdev_of "$PF") || fail "PF has no netdev" || return 1
    mac=$(cat "/sys/class/net/$pfif/address")
    [ "$mac" = "$(fn_mac pf)" ] || fail "PF MAC $mac, expected $(fn_mac pf)" || return 1
    snap a
    DETAIL="PF $(basename "$PF") $pfif $mac totalvfs=$total numvfs=0"
    [ -f /e2e/modules-source ] && DETAIL="$DETAIL; modules $(cat /e2e/modules-source)"
    return 0
}

# b: numvfs 0 -> N: N VFs bound to virtio-pci, physfn links, netdevs with the expected MACs.
scen_b_enable_vfs() {
    [ -n "$PF" ] || fail "no PF" || return 1
    set_numvfs "$E2E_VFS" || fail "echo $E2E_VFS > sriov_numvfs: $SET_ERR" || return 1
    check_vfs_bound || return 1
    snap b
    DETAIL="$E2E_VFS VFs bound to virtio-pci with expected MACs"
}

# Move every function (PF and all VFs) into its own namespace: all are up, so floods find rx buffers.
setup_all_ns() {
    local f
    for f in pf $(vf_list); do
        ns_has_dev "$f" && continue
        into_ns "$f" || return 1
    done
}

# c: IPv4 ping PF <-> VF0 and VF0 <-> VF1, each function in its own network namespace.
scen_c_ping() {
    local d
    [ -n "$PF" ] || fail "no PF" || return 1
    setup_all_ns || return 1
    snap c-start
    ping_check pf vf0 || return 1
    d=$PING_DETAIL
    ping_check vf0 vf1 || return 1
    snap c-end
    DETAIL="$d, $PING_DETAIL"
}

# q: the daemon's stream uplink, as a second VM with an ordinary NIC sees it: this guest's plain
# virtio-net NIC, cabled to the uplink by QEMU's own -netdev stream, pings VF0 and VF0 pings it
# back (ARP flooded from and to the uplink, unicast learned), each in its own namespace.
scen_q_uplink() {
    local d
    [ -n "$E2E_UPLINK_MAC" ] || fail "no uplink NIC (sriovnet_uplink_mac=; E2E_UPLINK=0)" || return 1
    [ -n "$PF" ] || fail "no PF" || return 1
    setup_all_ns || return 1
    ns_has_dev up || into_ns up || return 1
    snap q-start
    ping_check up vf0 || return 1
    d=$PING_DETAIL
    ping_check vf0 up || return 1
    snap q-end
    DETAIL="uplink NIC $E2E_UPLINK_MAC: $d, $PING_DETAIL"
}

# d: broadcast: ARP requests from VF1 for an unused address reach every other function, not VF1.
scen_d_broadcast() {
    local f before rx0 rx1 tx0 tx1 n
    [ -n "$PF" ] || fail "no PF" || return 1
    setup_all_ns || return 1
    # Forget all neighbours: no ARP probe of an entry from c may land in the window below.
    for f in pf $(vf_list); do xip -n "$f" neigh flush all >/dev/null 2>&1; done
    before=
    for f in pf $(vf_list); do before="$before $(nstat "$f" rx_packets)"; done
    tx0=$(nstat vf1 tx_packets)
    snap d-start
    # No reply is expected: arping's exit status is meaningless here.
    xip netns exec vf1 arping -c "$E2E_PINGS" -w $((E2E_PINGS + 5)) -I net0 "$UNUSED_IP" >/dev/null 2>&1
    snap d-end
    tx1=$(nstat vf1 tx_packets)
    [ $((tx1 - tx0)) -ge "$E2E_PINGS" ] || fail "vf1 sent $((tx1 - tx0)) packets, expected >= $E2E_PINGS" || return 1
    n=1
    for f in pf $(vf_list); do
        rx0=$(echo "$before" | cut -d' ' -f$((n + 1)))
        rx1=$(nstat "$f" rx_packets)
        n=$((n + 1))
        if [ "$f" = vf1 ]; then
            [ "$rx1" = "$rx0" ] || fail "vf1 received $((rx1 - rx0)) packets (its own broadcast?)" || return 1
        else
            [ $((rx1 - rx0)) -ge "$E2E_PINGS" ] || fail "$f received $((rx1 - rx0)) packets, expected >= $E2E_PINGS" || return 1
        fi
    done
    DETAIL="$E2E_PINGS ARP broadcasts from vf1 seen by pf and all other VFs, not by vf1"
}

# e: N -> 0 -> N twice: VFs and netdevs disappear and come back, pings work after each re-enable.
scen_e_cycles() {
    local cycle
    [ -n "$PF" ] || fail "no PF" || return 1
    snap e-start
    for cycle in 1 2; do
        set_numvfs 0 || fail "cycle $cycle: echo 0 > sriov_numvfs: $SET_ERR" || return 1
        wait_for 10 check_no_vfs || { check_no_vfs || fail "cycle $cycle: VFs left after numvfs=0: $DETAIL" || return 1; }
        ! ns_has_dev vf0 || fail "cycle $cycle: vf0's netdev survived numvfs=0" || return 1
        set_numvfs "$E2E_VFS" || fail "cycle $cycle: echo $E2E_VFS > sriov_numvfs: $SET_ERR" || return 1
        check_vfs_bound || { DETAIL="cycle $cycle: $DETAIL" && return 1; }
        setup_all_ns || { DETAIL="cycle $cycle: $DETAIL" && return 1; }
        ping_check pf vf0 || { DETAIL="cycle $cycle: $DETAIL" && return 1; }
        ping_check vf0 vf1 || { DETAIL="cycle $cycle: $DETAIL" && return 1; }
    done
    snap e-end
    DETAIL="2 cycles N->0->N, VFs gone and back, pings ok"
}

# f: N -> M (M != N, both > 0) without going through 0 fails with EBUSY.
scen_f_ebusy() {
    local m
    [ -n "$PF" ] || fail "no PF" || return 1
    [ "$E2E_VFS" -ge 2 ] || fail "needs at least 2 VFs" || return 1
    [ "$(numvfs)" = "$E2E_VFS" ] || set_numvfs "$E2E_VFS" || fail "cannot set numvfs $E2E_VFS: $SET_ERR" || return 1
    m=$((E2E_VFS - 1))
    snap f-start
    if set_numvfs "$m"; then
        fail "echo $m > sriov_numvfs with $E2E_VFS VFs enabled succeeded"
        return 1
    fi
    snap f-end
    echo "$SET_ERR" | grep -qi 'busy' || fail "echo $m failed, but not with EBUSY: $SET_ERR" || return 1
    [ "$(numvfs)" = "$E2E_VFS" ] || fail "numvfs changed to $(numvfs)" || return 1
    check_vfs_still_there || return 1
    DETAIL="$E2E_VFS -> $m refused: $(echo "$SET_ERR" | sed 's/^.*: //')"
}

# g: sriov_drivers_autoprobe=0: VFs appear unbound; bind VF0 alone via driver_override+drivers_probe.
scen_g_autoprobe() {
    local f d vf0
    [ -n "$PF" ] || fail "no PF" || return 1
    set_numvfs 0 || fail "echo 0 > sriov_numvfs: $SET_ERR" || return 1
    wait_for 10 check_no_vfs || fail "VFs left after numvfs=0" || return 1
    echo 0 >"$PF/sriov_drivers_autoprobe" || fail "cannot write sriov_drivers_autoprobe" || return 1
    snap g-start
    set_numvfs "$E2E_VFS" || fail "echo $E2E_VFS > sriov_numvfs: $SET_ERR" || return 1
    for f in $(vf_list); do
        d=$(fn_dir "$f") || fail "$f: no virtfn link" || return 1
        [ ! -e "$d/driver" ] || fail "$f bound to $(driver_of "$d") with autoprobe=0" || return 1
        ! netdev_of "$d" >/dev/null || fail "$f has a netdev with autoprobe=0" || return 1
    done
    vf0=$(fn_dir vf0)
    echo virtio-pci >"$vf0/driver_override" || fail "cannot write vf0 driver_override" || return 1
    basename "$vf0" >/sys/bus/pci/drivers_probe || fail "drivers_probe of vf0 failed" || return 1
    wait_for 10 netdev_of "$vf0" || fail "vf0 has no netdev after drivers_probe" || return 1
    [ "$(driver_of "$vf0")" = virtio-pci ] || fail "vf0 driver $(driver_of "$vf0" || echo none)" || return 1
    [ "$(cat "/sys/class/net/$(netdev_of "$vf0")/address")" = "$(fn_mac vf0)" ] || fail "vf0 MAC wrong" || return 1
    for f in $(vf_list); do
        [ "$f" = vf0 ] && continue
        d=$(fn_dir "$f")
        [ ! -e "$d/driver" ] || fail "$f got bound too ($(driver_of "$d"))" || return 1
    done
    into_ns vf0 || return 1
    ping_check pf vf0 || return 1
    snap g-end
    DETAIL="VFs unbound with autoprobe=0, only vf0 bound via driver_override, $PING_DETAIL"
}

# carrier_is FN 0|1: FN's net0 reports that carrier.
carrier_is() { [ "$(xip netns exec "$1" cat /sys/class/net/net0/carrier 2>/dev/null)" = "$2" ]; }

# i: per-VF administration from the host (the runner runs `ctl` for the guest over the sync
# channel): state disable -> the guest's VF0 loses carrier (QMP set_link), enable -> back and
# traffic again; VF0 and VF1 on port VLAN 10 ping each other while VF2 on VLAN 20 cannot.
scen_i_admin() {
    local d d2 k
    [ -n "$PF" ] || fail "no PF" || return 1
    [ "$E2E_VFS" -ge 3 ] || fail "needs at least 3 VFs" || return 1
    [ "$SYNC_OK" = 1 ] || fail "needs the host channel (sync)" || return 1
    # Every VF bound again (g left autoprobe off and only VF0 bound).
    set_numvfs 0 || fail "echo 0 > sriov_numvfs: $SET_ERR" || return 1
    wait_for 10 check_no_vfs || fail "VFs left after numvfs=0" || return 1
    echo 1 >"$PF/sriov_drivers_autoprobe" || fail "cannot write sriov_drivers_autoprobe" || return 1
    set_numvfs "$E2E_VFS" || fail "echo $E2E_VFS > sriov_numvfs: $SET_ERR" || return 1
    check_vfs_bound || return 1
    setup_all_ns || return 1
    wait_for 10 carrier_is vf0 1 || fail "vf0 has no carrier to begin with" || return 1
    snap i-start
    hostctl i-down vf 0 state disable || fail "ctl vf 0 state disable failed" || return 1
    wait_for 10 carrier_is vf0 0 || fail "vf0 kept its carrier after state disable" || return 1
    snap i-down
    hostctl i-up vf 0 state enable || fail "ctl vf 0 state enable failed" || return 1
    wait_for 10 carrier_is vf0 1 || fail "vf0 carrier not back after state enable" || return 1
    ping_check pf vf0 || return 1
    hostctl i-vlan0 vf 0 vlan 10 || fail "ctl vf 0 vlan 10 failed" || return 1
    hostctl i-vlan1 vf 1 vlan 10 || fail "ctl vf 1 vlan 10 failed" || return 1
    hostctl i-vlan2 vf 2 vlan 20 || fail "ctl vf 2 vlan 20 failed" || return 1
    snap i-vlan
    ping_check vf0 vf1 || return 1
    d=$PING_DETAIL
    if xip netns exec vf2 ping -q -c 2 -i 0.2 -W 1 -w 3 "$(fn_ip vf0)" >/dev/null 2>&1; then
        fail "vf2 (VLAN 20) reached vf0 (VLAN 10)"
        return 1
    fi
    snap i-end
    for k in 0 1 2; do
        hostctl "i-clear$k" vf "$k" vlan 0 || fail "ctl vf $k vlan 0 failed" || return 1
    done
    # trust: the guest changes its VF's MAC (the driver tells QEMU through the control queue;
    # the daemon learns it over QMP). A trusted VF1 keeps talking with its new MAC; an untrusted
    # VF0's frames with its new MAC are dropped as spoofed.
    hostctl i-trust vf 1 trust on || fail "ctl vf 1 trust on failed" || return 1
    xip -n vf1 link set dev net0 address 02:aa:00:00:00:01 || fail "vf1: cannot set its MAC" || return 1
    xip -n vf0 neigh flush all
    xip -n pf neigh flush all
    ping_check vf1 vf0 || { DETAIL="trusted vf1 with its own MAC: $DETAIL" && return 1; }
    d2=$PING_DETAIL
    xip -n vf0 link set dev net0 address 02:aa:00:00:00:00 || fail "vf0: cannot set its MAC" || return 1
    xip -n pf neigh flush all
    if xip netns exec vf0 ping -q -c 2 -i 0.2 -W 1 -w 3 "$(fn_ip pf)" >/dev/null 2>&1; then
        fail "untrusted vf0 reached pf with a MAC it chose"
        return 1
    fi
    snap i-trust
    xip -n vf0 link set dev net0 address "$(fn_mac vf0)"
    xip -n vf1 link set dev net0 address "$(fn_mac vf1)"
    hostctl i-untrust vf 1 trust off || fail "ctl vf 1 trust off failed" || return 1
    DETAIL="vf0 carrier lost on state disable and back on enable, pf->vf0 ok; VLAN 10: $d, VLAN 20 vf2->vf0 refused; trusted vf1 with its own MAC: $d2, untrusted vf0 refused"
}

# j: the unmanaged PF. pci-pf-stub (driver_override) owns the PF and enables the VFs with
# pci_sriov_configure_simple: the VFs work without the PF's virtio driver, whose partition is
# stopped. Unbinding pci-pf-stub leaves SR-IOV enabled (the kernel warns) and the VFs working;
# with no driver, sriov_numvfs refuses changes (ENOENT) and vfio-pci refuses the PF because
# VFs exist (EBUSY). Then back: pci-pf-stub, 0 VFs, virtio-pci.
scen_j_pf_stub() {
    local pfb d1 err
    [ -n "$PF" ] || fail "no PF" || return 1
    pfb=$(basename "$PF")
    load_module pci-pf-stub || return 1
    pf_rebind pci-pf-stub || return 1
    snap j-stub
    set_numvfs "$E2E_VFS" || fail "PF on pci-pf-stub: echo $E2E_VFS > sriov_numvfs: $SET_ERR" || return 1
    check_vfs_bound || return 1
    setup_vf_ns || return 1
    ping_check vf0 vf1 || return 1
    d1=$PING_DETAIL
    snap j-traffic
    dmesg_mark j-unbind
    fn_unbind "$PF" || fail "unbind pci-pf-stub: $WRITE_ERR" || return 1
    dmesg_show j-unbind
    dmesg_has "$pfb: driver left SR-IOV enabled after remove" ||
        fail "no 'driver left SR-IOV enabled after remove' warning from the kernel" || return 1
    [ "$(numvfs)" = "$E2E_VFS" ] || fail "numvfs $(numvfs) after pci-pf-stub left, expected $E2E_VFS" || return 1
    check_vfs_still_there || return 1
    ping_check vf1 vf0 || { DETAIL="PF without a driver: $DETAIL" && return 1; }
    snap j-orphan
    # No driver: the same count is a no-op (the kernel checks that first), any change is ENOENT.
    set_numvfs "$E2E_VFS" || fail "no driver: echo $E2E_VFS (unchanged) > sriov_numvfs: $SET_ERR" || return 1
    dmesg_mark j-enoent
    ! set_numvfs 0 || fail "no driver: echo 0 > sriov_numvfs succeeded" || return 1
    dmesg_show j-enoent
    case $SET_ERR in *"No such file or directory") ;; *) fail "no driver: echo 0 > sriov_numvfs: '$SET_ERR', expected ENOENT" || return 1 ;; esac
    dmesg_has "no driver bound to device; cannot configure SR-IOV" ||
        fail "no 'no driver bound to device' message from the kernel" || return 1
    [ "$(numvfs)" = "$E2E_VFS" ] || fail "numvfs changed to $(numvfs)" || return 1
    load_vfio || return 1
    dmesg_mark j-vfio
    ! fn_bind "$PF" vfio-pci || fail "vfio-pci bound a PF with $E2E_VFS VFs enabled" || return 1
    err=$WRITE_ERR
    dmesg_show j-vfio
    case $err in *"Device or resource busy") ;; *) fail "bind vfio-pci: '$err', expected EBUSY" || return 1 ;; esac
    dmesg_has "Cannot bind to PF with SR-IOV enabled" || fail "no 'Cannot bind to PF with SR-IOV enabled' from vfio-pci" || return 1
    [ ! -e "$PF/driver" ] || fail "PF bound to $(driver_of "$PF") after the refused vfio-pci bind" || return 1
    check_vfs_still_there || return 1
    fn_bind "$PF" pci-pf-stub || fail "rebind pci-pf-stub (VFs enabled): $WRITE_ERR" || return 1
    set_numvfs 0 || fail "pci-pf-stub again: echo 0 > sriov_numvfs: $SET_ERR" || return 1
    wait_for 10 check_no_vfs || fail "VFs left after numvfs=0" || return 1
    snap j-rebound
    pf_to_virtio || return 1
    snap j-end
    DETAIL="pci-pf-stub: $E2E_VFS VFs, $d1; unbound: SR-IOV left enabled, $PING_DETAIL, numvfs 0 ENOENT, vfio-pci EBUSY; back to virtio-pci"
}

# k: PF reset (FLR through sysfs) with live VFs, the PF on pci-pf-stub (virtio_pci has no reset
# handlers). QEMU clears VF Enable and resets every VF; Linux restores NumVFs/VF Enable from the
# PF's saved state but leaves the VF drivers alone: what becomes of their netdevs is recorded.
# numvfs 0 -> N brings working VFs back.
scen_k_pf_reset() {
    local f d before after rc stale
    [ -n "$PF" ] || fail "no PF" || return 1
    load_module pci-pf-stub || return 1
    pf_rebind pci-pf-stub || return 1
    set_numvfs "$E2E_VFS" || fail "PF on pci-pf-stub: echo $E2E_VFS > sriov_numvfs: $SET_ERR" || return 1
    check_vfs_bound || return 1
    setup_vf_ns || return 1
    ping_check vf0 vf1 || return 1
    before=
    for f in $(vf_list); do before="$before $f:$(xip netns exec "$f" cat /sys/class/net/net0/operstate)"; done
    snap k-start
    dmesg_mark k-reset
    sysfs_write "$PF/reset" 1 || fail "echo 1 > PF/reset: $WRITE_ERR" || return 1
    dmesg_show k-reset
    [ "$(numvfs)" = "$E2E_VFS" ] || fail "numvfs $(numvfs) after the reset, expected $E2E_VFS (restored)" || return 1
    check_vfs_still_there || { DETAIL="after the reset: $DETAIL" && return 1; }
    after=
    for f in $(vf_list); do
        d=$(fn_dir "$f")
        after="$after $f:$(xip netns exec "$f" cat /sys/class/net/net0/operstate)/carrier=$(xip netns exec "$f" cat /sys/class/net/net0/carrier)/cmd=$(printf '%04x' "$(cfg_read "$d" 4 2)")/virtio-status=$(cat "$d"/virtio*/status)"
    done
    log "VF netdevs before the reset:$before; after:$after"
    snap k-reset
    xip netns exec vf0 ping -q -c 2 -i 0.2 -W 1 -w 3 "$(fn_ip vf1)" >/tmp/k-ping 2>&1
    rc=$?
    stale="vf0->vf1 after the reset: $(sed -n 's/.* \([0-9]*\) packets received.*/\1/p' /tmp/k-ping)/2 (rc $rc)"
    log "$stale"
    snap k-stale
    set_numvfs 0 || fail "echo 0 > sriov_numvfs after the reset: $SET_ERR" || return 1
    wait_for 10 check_no_vfs || fail "VFs left after numvfs=0" || return 1
    set_numvfs "$E2E_VFS" || fail "echo $E2E_VFS > sriov_numvfs after the reset: $SET_ERR" || return 1
    check_vfs_bound || return 1
    setup_vf_ns || return 1
    ping_check vf0 vf1 || { DETAIL="after reset and numvfs 0 -> $E2E_VFS: $DETAIL" && return 1; }
    snap k-end
    pf_to_virtio || return 1
    snap k-clean
    DETAIL="reset with $E2E_VFS VFs: numvfs kept, VF devices and netdevs kept ($stale); numvfs 0 -> $E2E_VFS: $PING_DETAIL"
}

# vfio_run NAME ARGS...: run vfio_token, its output on the console; VFIO_OUT holds it, VFIO_SUMMARY
# its last line ("vfio_token: N passed, M failed").
vfio_run() {
    local _name=$1 _rc
    shift
    VFIO_OUT=$(vfio_token "$@" 2>&1)
    _rc=$?
    echo "$VFIO_OUT" | sed "s/^/E2E: vfio_token $_name: /"
    VFIO_SUMMARY=$(echo "$VFIO_OUT" | tail -n 1)
    [ "$_rc" = 0 ] || fail "vfio_token $*: $(echo "$VFIO_OUT" | grep '^FAIL' | head -n 2 | tr '\n' ';') ($VFIO_SUMMARY)" || return 1
}

# vfio_expect LINE...: each "PASS LINE" is in VFIO_OUT.
vfio_expect() {
    local _l
    for _l in "$@"; do
        echo "$VFIO_OUT" | grep -qxF "PASS $_l" || fail "vfio_token did not report PASS $_l" || return 1
    done
}

# l: vfio-pci on the PF (needs the vIOMMU: E2E_IOMMU=1) with enable_sriov=1: the VFs it creates are
# captured by vfio-pci (driver_override); vfio_token shows the VF token at work. A VF handed to
# virtio-pci meanwhile works, and the kernel warns about it.
scen_l_vfio_token() {
    local pfb vf0 vlast last f d n
    [ -n "$PF" ] || fail "no PF" || return 1
    group_of "$PF" >/dev/null || fail "the PF has no IOMMU group (needs a vIOMMU: E2E_IOMMU=1)" || return 1
    pfb=$(basename "$PF")
    vfs_off || return 1
    load_vfio enable_sriov=1 || return 1
    [ "$(cat /sys/module/vfio_pci/parameters/enable_sriov)" = Y ] || fail "vfio-pci enable_sriov is not Y" || return 1
    snap l-start
    pf_rebind vfio-pci || return 1
    [ -c "/dev/vfio/$(group_of "$PF")" ] || fail "no /dev/vfio/$(group_of "$PF") for the PF" || return 1
    dmesg_mark l-numvfs
    set_numvfs "$E2E_VFS" || fail "PF on vfio-pci: echo $E2E_VFS > sriov_numvfs: $SET_ERR" || return 1
    for f in $(vf_list); do
        d=$(fn_dir "$f") || fail "$f: no virtfn link" || return 1
        wait_for 10 test -e "$d/driver" || fail "$f not bound" || return 1
        [ "$(driver_of "$d")" = vfio-pci ] || fail "$f bound to $(driver_of "$d"), not vfio-pci" || return 1
        [ "$(cat "$d/driver_override")" = vfio-pci ] || fail "$f driver_override '$(cat "$d/driver_override")'" || return 1
        ! netdev_of "$d" >/dev/null || fail "$f has a netdev" || return 1
    done
    n=$(dmesg_since | grep -c 'Captured SR-IOV VF .* driver_override')
    [ "$n" = "$E2E_VFS" ] || fail "$n 'Captured SR-IOV VF' messages, expected $E2E_VFS" || return 1
    snap l-vfio
    vf0=$(basename "$(fn_dir vf0)")
    dmesg_mark l-token
    vfio_run token token "$pfb" "$vf0" || return 1
    vfio_expect "VF without a token -> EACCES" "VF with a wrong token -> EACCES" \
        "VF with a malformed token -> EINVAL" "VF with the right token -> success" \
        "PF without a token while a VF is open -> EACCES" "PF with a wrong token while a VF is open -> EACCES" \
        "PF with the right token while a VF is open -> success" "PF without a token once the VF is closed -> success" || return 1
    dmesg_show l-token
    dmesg_has "VF token required to access device" || fail "no 'VF token required' message from vfio-pci" || return 1
    dmesg_has "Incorrect VF token provided for device" || fail "no 'Incorrect VF token' message from vfio-pci" || return 1
    last=vf$((E2E_VFS - 1))
    d=$(fn_dir "$last")
    vlast=$(basename "$d")
    dmesg_mark l-vf
    fn_unbind "$d" || fail "unbind $last from vfio-pci: $WRITE_ERR" || return 1
    fn_bind "$d" virtio-pci || fail "bind $last to virtio-pci: $WRITE_ERR" || return 1
    wait_for 10 netdev_of "$d" || fail "$last has no netdev on virtio-pci" || return 1
    [ "$(cat "/sys/class/net/$(netdev_of "$d")/address")" = "$(fn_mac "$last")" ] || fail "$last MAC wrong" || return 1
    dmesg_show l-vf
    dmesg_has "VF $vlast bound to driver virtio-pci while PF bound to driver vfio-pci" ||
        fail "no 'VF bound to driver virtio-pci while PF bound to driver vfio-pci' warning" || return 1
    snap l-vf
    set_numvfs 0 || fail "PF on vfio-pci: echo 0 > sriov_numvfs: $SET_ERR" || return 1
    wait_for 10 check_no_vfs || fail "VFs left after numvfs=0" || return 1
    pf_to_virtio || return 1
    snap l-end
    DETAIL="vfio-pci enable_sriov=1: $E2E_VFS VFs captured; vfio_token $pfb/$vf0: $VFIO_SUMMARY; $last on virtio-pci warned about; PF back on virtio-pci"
}

# u: a userspace driver in the guest (E2E_IOMMU=1): VF0 on vfio-pci, the PF on virtio-pci in its
# namespace. vfio_token's userspace virtio-net driver maps its own memory for DMA, sends an ARP
# request for the PF's address and takes the PF's reply, every access through the vIOMMU; a
# descriptor at an IOVA it never mapped is completed unread.
scen_u_user_dma() {
    local d vf
    [ -n "$PF" ] || fail "no PF" || return 1
    group_of "$PF" >/dev/null || fail "the PF has no IOMMU group (needs a vIOMMU: E2E_IOMMU=1)" || return 1
    vfs_off || return 1
    load_vfio || return 1
    echo 0 >"$PF/sriov_drivers_autoprobe"
    set_numvfs 1 || fail "echo 1 > sriov_numvfs: $SET_ERR" || return 1
    d=$(fn_dir vf0) || fail "vf0: no virtfn link" || return 1
    vf=$(basename "$d")
    fn_bind "$d" vfio-pci || fail "bind vf0 to vfio-pci: $WRITE_ERR" || return 1
    [ -c "/dev/vfio/$(group_of "$d")" ] || fail "no /dev/vfio/$(group_of "$d") for vf0" || return 1
    ns_has_dev pf || into_ns pf || return 1
    snap u-start
    vfio_run dma dma "$vf" "$(fn_mac pf)" "$(fn_ip pf)" "$(fn_ip vf0)" || return 1
    vfio_expect "VIRTIO_F_ACCESS_PLATFORM offered (the device's DMA goes through the vIOMMU)" \
        "TX: an ARP request from this process's memory, completed" \
        "RX: the PF's ARP reply to this VF" \
        "TX: a descriptor at an unmapped IOVA, completed unread" || return 1
    snap u-end
    fn_unbind "$d" || fail "unbind vf0 from vfio-pci: $WRITE_ERR" || return 1
    sysfs_write "$d/driver_override" "" || fail "clear vf0 driver_override: $WRITE_ERR" || return 1
    vfs_off || return 1
    DETAIL="vf0 $vf on vfio-pci, userspace virtio-net driver: $VFIO_SUMMARY"
}

# m: IOMMU groups with ACS (E2E_IOMMU=1): QEMU's root port has ACS and Linux enables it
# (SV|RR|CR|UF), so the root port, the PF and every VF each get a group of their own.
scen_m_groups() {
    local rp acs f d g groups="" n=0
    [ -n "$PF" ] || fail "no PF" || return 1
    group_of "$PF" >/dev/null || fail "the PF has no IOMMU group (needs a vIOMMU: E2E_IOMMU=1)" || return 1
    vfs_off || return 1
    set_numvfs "$E2E_VFS" || fail "echo $E2E_VFS > sriov_numvfs: $SET_ERR" || return 1
    check_vfs_bound || return 1
    rp=$(dirname "$(readlink -f "$PF")")
    acs=$(acs_ctrl "$rp") || fail "root port $(basename "$rp") has no ACS capability" || return 1
    [ $((acs & 0x1d)) = $((0x1d)) ] || fail "root port ACS ctrl $(printf 0x%04x "$acs"), expected SV|RR|CR|UF (0x1d) set" || return 1
    for d in "$rp" "$PF" $(for f in $(vf_list); do fn_dir "$f"; done); do
        g=$(group_of "$d") || fail "$(basename "$d") has no IOMMU group" || return 1
        case " $groups " in *" $g "*) fail "$(basename "$d") shares group $g" || return 1 ;; esac
        [ "$(group_size "$g")" = 1 ] || fail "group $g of $(basename "$d") holds $(group_size "$g") devices" || return 1
        groups="$groups $g"
        n=$((n + 1))
    done
    snap m
    DETAIL="root port $(basename "$rp") ACS ctrl $(printf 0x%04x "$acs"); root port, PF and $E2E_VFS VFs in $n groups of one device each"
}

# n_vfs_to_vfio ROOTPORT: N VFs, none probed (autoprobe 0), each bound to vfio-pci; the root
# port, the PF and every VF in one group, whose number goes to G.
n_vfs_to_vfio() {
    local _f _d _n
    echo 0 >"$PF/sriov_drivers_autoprobe"
    set_numvfs "$E2E_VFS" || fail "PF on $(driver_of "$PF"): echo $E2E_VFS > sriov_numvfs: $SET_ERR" || return 1
    G=$(group_of "$PF")
    for _f in $(vf_list); do
        _d=$(fn_dir "$_f")
        fn_bind "$_d" vfio-pci || fail "bind $_f to vfio-pci: $WRITE_ERR" || return 1
        [ "$(group_of "$_d")" = "$G" ] || fail "$_f in group $(group_of "$_d"), the PF in $G" || return 1
    done
    [ "$(group_of "$1")" = "$G" ] || fail "root port in group $(group_of "$1"), the PF in $G" || return 1
    _n=$(group_size "$G")
    [ "$_n" = $((E2E_VFS + 2)) ] || fail "group $G holds $_n devices, expected $((E2E_VFS + 2))" || return 1
}

# n: one shared group (E2E_IOMMU=1 E2E_DISABLE_ACS_REDIR=1: pci=disable_acs_redir=<root port>):
# the root port, the PF and the VFs share a group. The VFs are bound to vfio-pci; the group can
# only go to a vfio container (VFIO_GROUP_SET_CONTAINER) once no member has a DMA-API driver:
# EPERM with the PF on virtio-pci, EPERM with it on pci-pf-stub, success with no PF driver; and
# while vfio owns the group, pci-pf-stub cannot bind the PF (EBUSY).
scen_n_shared_group() {
    local rp rpb acs pfb
    [ -n "$PF" ] || fail "no PF" || return 1
    group_of "$PF" >/dev/null || fail "the PF has no IOMMU group (needs a vIOMMU: E2E_IOMMU=1)" || return 1
    pfb=$(basename "$PF")
    rp=$(dirname "$(readlink -f "$PF")")
    rpb=$(basename "$rp")
    grep -qE "(^| )pci=([^ ]*[,;])?disable_acs_redir=([^ ]*;)?$rpb" /proc/cmdline ||
        fail "kernel command line lacks pci=disable_acs_redir=$rpb (E2E_DISABLE_ACS_REDIR=1)" || return 1
    acs=$(acs_ctrl "$rp") || fail "root port $rpb has no ACS capability" || return 1
    [ $((acs & 0x0c)) = 0 ] || fail "root port ACS ctrl $(printf 0x%04x "$acs"): RR/CR still set" || return 1
    load_module pci-pf-stub || return 1
    load_vfio || return 1
    vfs_off || return 1
    snap n-start
    n_vfs_to_vfio "$rp" || return 1
    vfio_run virtio container "$pfb" eperm || { DETAIL="PF on virtio-pci: $DETAIL" && return 1; }
    vfio_expect "VFIO_GROUP_SET_CONTAINER on the group of $pfb -> EPERM" || return 1
    pf_rebind pci-pf-stub || return 1
    snap n-stub
    n_vfs_to_vfio "$rp" || return 1
    vfio_run stub container "$pfb" eperm || { DETAIL="PF on pci-pf-stub: $DETAIL" && return 1; }
    vfio_expect "VFIO_GROUP_SET_CONTAINER on the group of $pfb -> EPERM" || return 1
    fn_unbind "$PF" || fail "unbind pci-pf-stub: $WRITE_ERR" || return 1
    [ "$(numvfs)" = "$E2E_VFS" ] || fail "numvfs $(numvfs) once pci-pf-stub left" || return 1
    dmesg_mark n-owned
    vfio_run nodriver container "$pfb" ok pci-pf-stub || { DETAIL="PF without a driver: $DETAIL" && return 1; }
    vfio_expect "VFIO_GROUP_SET_CONTAINER on the group of $pfb -> success" \
        "bind $pfb to pci-pf-stub while the group is owned by vfio -> EBUSY" || return 1
    dmesg_show n-owned
    fn_bind "$PF" pci-pf-stub || fail "bind pci-pf-stub once vfio let go: $WRITE_ERR" || return 1
    vfs_off || return 1
    pf_to_virtio || return 1
    snap n-end
    DETAIL="root port $rpb ACS ctrl $(printf 0x%04x "$acs"), root port + PF + $E2E_VFS VFs in group $G; SET_CONTAINER: EPERM with the PF on virtio-pci and on pci-pf-stub, success with no PF driver (then pci-pf-stub bind EBUSY)"
}

# o: many VFs: all of sriov_totalvfs enabled, every MAC as the daemon says, the last VF pings the PF.
scen_o_many_vfs() {
    local total last
    [ -n "$PF" ] || fail "no PF" || return 1
    total=$(cat "$PF/sriov_totalvfs")
    [ "$total" = "$E2E_VFS" ] || fail "sriov_totalvfs $total, expected $E2E_VFS" || return 1
    vfs_off || return 1
    set_numvfs "$total" || fail "echo $total > sriov_numvfs: $SET_ERR" || return 1
    check_vfs_bound || return 1
    last=vf$((total - 1))
    ns_has_dev pf || into_ns pf || return 1
    ns_has_dev "$last" || into_ns "$last" || return 1
    snap o-start
    ping_check "$last" pf || return 1
    snap o-end
    DETAIL="$total VFs bound with the daemon's MACs, $PING_DETAIL"
}

# Scenario p's pings, every P_INTERVAL s. `ts` stamps each line of ping's output as it reads it;
# it buffers what it writes, so a log is complete only once its ping has stopped.
P_INTERVAL=0.02

# now_s: the time, in seconds with microseconds, as `ts` stamps lines.
now_s() { echo | ts '%.s' | tr -d ' '; }

# p_ping_start FROM TO: FROM pings TO in the background; the stamped replies go to
# /tmp/p-FROM.log, ping's PID to /tmp/p-FROM.pid and the pipeline's to P_JOBS.
p_ping_start() {
    # shellcheck disable=SC2016 # expanded by the inner sh
    xip netns exec "$1" sh -c 'echo $$ >"$1"; exec ping -i "$2" -w 60 "$3" 2>&1' _ \
        "/tmp/p-$1.pid" "$P_INTERVAL" "$(fn_ip "$2")" | ts '%.s' >"/tmp/p-$1.log" &
    P_JOBS="$P_JOBS $!"
    wait_for 5 test -s "/tmp/p-$1.pid" || fail "ping $1 -> $2 did not start" || return 1
}

# p_ping_stop FROM: stop FROM's ping (SIGINT); fails if it had died on its own.
p_ping_stop() {
    local _pid
    _pid=$(cat "/tmp/p-$1.pid")
    kill -0 "$_pid" 2>/dev/null || fail "ping from $1 died: $(tail -n 2 "/tmp/p-$1.log" | tr '\n' ' ')" || return 1
    kill -INT "$_pid"
}

# p_abort: after a failure, stop the pings that were started; returns 1.
p_abort() {
    local _f
    for _f in vf0 pf; do
        [ -s "/tmp/p-$_f.pid" ] && kill -INT "$(cat "/tmp/p-$_f.pid")" 2>/dev/null
    done
    return 1
}

# p_stats LOG REQ ACK END: from a ping log, "GAP_MS GAP_AT_MS LOST REPLIES BEFORE AFTER DUPS
# TAIL_MS": the longest gap between successive replies and where it began (ms after REQ), the
# replies lost (sequence numbers below the last answered one that never got a reply), the replies
# (before REQ, after ACK), duplicates, and the time from the last reply to END (negative: replies
# came after END, before the ping stopped; 999999: no reply at all).
p_stats() {
    awk -v req="$2" -v ack="$3" -v end="$4" '
        / bytes from .* seq=/ {
            t = $1 + 0
            s = $0
            sub(/.* seq=/, "", s)
            sub(/[^0-9].*/, "", s)
            s += 0
            if (s in seen) { dups++; next }
            seen[s] = 1
            n++
            if (n > 1 && t - prev > gap) { gap = t - prev; at = prev - req }
            prev = t
            if (s > last) last = s
            if (t < req) before++
            if (t > ack) after++
        }
        END {
            printf "%d %d %d %d %d %d %d %d\n", gap * 1000 + 0.5, at * 1000, (n ? last + 1 - n : 0),
                n, before, after, dups, (n ? (end - prev) * 1000 : 999999)
        }' "$1"
}

# p_report FROM TO EVICT REQ ACK END: one ping's figures as an "E2E: restart-gap" line (read by
# the host) and in P_DETAIL; fails unless there was traffic before the restart and it resumed.
p_report() {
    local gap at lost n before after dups tail
    read -r gap at lost n before after dups tail <<EOF
$(p_stats "/tmp/p-$1.log" "$4" "$5" "$6")
EOF
    log "restart-gap p-restart from=$1 to=$2 arp_evict_nocarrier=$3 gap_ms=$gap gap_at_ms=$at lost=$lost replies=$n before=$before after=$after dups=$dups tail_ms=$tail"
    P_DETAIL="$1->$2 (arp_evict_nocarrier=$3): longest gap $gap ms (from $at ms after the request), $lost lost of $((n + lost))"
    [ "$before" -ge 10 ] || fail "$P_DETAIL: $before replies before the restart, expected >= 10" || return 1
    [ "$after" -ge 25 ] || fail "$P_DETAIL: traffic did not resume ($after replies after the ACK, expected >= 25)" || return 1
    [ "$tail" -lt 1000 ] || fail "$P_DETAIL: no reply in the last second" || return 1
}

# p: a daemon restart under traffic. The host kills the daemon with SIGKILL and starts it again
# (RESTART over the sync channel) while two pings run every 20 ms, and they go on 4 s after the
# host's ACK. Every function loses its carrier until QEMU has reconnected. vf0 -> vf1 run with
# arp_evict_nocarrier=0, so their neighbour entries survive the carrier loss: their gap is the
# restart's own (QEMU's reconnect-ms, the new daemon, the link coming back), which the host
# bounds. pf -> vf1 keep the default (1): the kernel flushes pf's neighbour entries, the first
# ARP request goes out while the carrier is still down and is lost, and the next one comes 1 s
# later (retrans_time_ms): that gap is reported as a guest would see it by default. (vf1, the
# target of both, learns pf's MAC from pf's ARP request, so its own setting does not matter for
# pf's pings.) Reports each ping's longest gap between replies and the replies lost, and checks
# that traffic resumed.
scen_p_restart() {
    local f t_req t_ack t_end d1 j
    [ -n "$PF" ] || fail "no PF" || return 1
    [ "$SYNC_OK" = 1 ] || fail "needs the host channel (sync)" || return 1
    # All VFs, as o leaves them (some netdevs already in their namespaces).
    if [ "$(numvfs)" != "$E2E_VFS" ]; then
        vfs_off || return 1
        set_numvfs "$E2E_VFS" || fail "echo $E2E_VFS > sriov_numvfs: $SET_ERR" || return 1
        check_vfs_bound || return 1
    fi
    for f in pf vf0 vf1; do
        ns_has_dev "$f" || into_ns "$f" || return 1
    done
    # With an uplink, every partition's link (state auto) follows its carrier, so after the restart
    # they come up once QEMU's -netdev stream is back; that NIC must be up for QEMU to read the
    # stream and notice the close.
    if [ -n "$E2E_UPLINK_MAC" ]; then
        ns_has_dev up || into_ns up || return 1
    fi
    for f in vf0 vf1; do
        xip netns exec "$f" sh -c 'echo 0 >/proc/sys/net/ipv4/conf/net0/arp_evict_nocarrier' ||
            fail "$f: cannot set arp_evict_nocarrier" || return 1
    done
    ping_check vf0 vf1 || return 1
    ping_check pf vf1 || return 1
    snap p-start
    P_JOBS=
    rm -f /tmp/p-vf0.pid /tmp/p-pf.pid
    p_ping_start vf0 vf1 || p_abort || return 1
    p_ping_start pf vf1 || p_abort || return 1
    # Steady traffic through the first daemon.
    sleep 1
    t_req=$(now_s)
    host_restart p-restart || fail "the host did not restart the daemon (see sync.log)" || p_abort || return 1
    t_ack=$(now_s)
    sleep 4
    t_end=$(now_s)
    p_ping_stop vf0 || p_abort || return 1
    p_ping_stop pf || p_abort || return 1
    for j in $P_JOBS; do wait "$j"; done
    snap p-end
    p_report vf0 vf1 0 "$t_req" "$t_ack" "$t_end" || return 1
    d1=$P_DETAIL
    p_report pf vf1 1 "$t_req" "$t_ack" "$t_end" || return 1
    DETAIL="restart (kill -9) under pings every ${P_INTERVAL}s: $d1; $P_DETAIL"
}

# h: the end: report, then /init powers off (the host checks the daemon afterwards).
scen_h_end() {
    DETAIL="guest done, $FAILED earlier scenario(s) failed, powering off"
    return 0
}
