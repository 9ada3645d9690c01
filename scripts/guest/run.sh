#!/bin/sh
# Runs the guest scenarios (ids a..q and u; h, the power-off, last) in order; started by /init. See scenarios.sh.
# Each new scenario sets up what it needs and leaves the PF on virtio-pci with no VFs or all of them.
# shellcheck source=/dev/null
. /e2e/lib.sh
# shellcheck source=/dev/null
. /e2e/scenarios.sh

sync_open
find_pf || log "no virtio-net PF with SR-IOV found"
log "expecting $E2E_VFS VFs, MACs $E2E_MACS, $E2E_PINGS pings, sync=$E2E_SYNC, scenarios $E2E_ONLY"
snap boot

run_scenario a scen_a_pf_visible
run_scenario b scen_b_enable_vfs
run_scenario c scen_c_ping
run_scenario q scen_q_uplink
run_scenario d scen_d_broadcast
run_scenario e scen_e_cycles
run_scenario f scen_f_ebusy
run_scenario g scen_g_autoprobe
run_scenario i scen_i_admin
run_scenario j scen_j_pf_stub
run_scenario k scen_k_pf_reset
run_scenario m scen_m_groups
run_scenario o scen_o_many_vfs
run_scenario l scen_l_vfio_token
run_scenario u scen_u_user_dma
run_scenario n scen_n_shared_group
run_scenario p scen_p_restart
run_scenario h scen_h_end

if [ "$FAILED" != 0 ]; then
    log "some scenarios failed; last kernel messages:"
    dmesg | tail -n 40 | sed 's/^/E2E: dmesg: /'
fi
exit "$FAILED"
