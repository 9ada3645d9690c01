# shellcheck shell=dash
# Guest scenarios a..i (busybox sh; sourced by run.sh). Each returns 0 (PASS) or 1 (FAIL) and sets
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
    pfif=$(netdev_of "$PF") || fail "PF has no netdev" || return 1
    mac=$(cat "/sys/class/net/$pfif/address")
    [ "$mac" = "$(fn_mac pf)" ] || fail "PF MAC $mac, expected $(fn_mac pf)" || return 1
    snap a
    DETAIL="PF $(basename "$PF") $pfif $mac totalvfs=$total numvfs=0"
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

# h: the end: report, then /init powers off (the host checks the daemon afterwards).
scen_h_end() {
    DETAIL="guest done, $FAILED earlier scenario(s) failed, powering off"
    return 0
}
