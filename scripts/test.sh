#!/usr/bin/env bash
# The project's test command (README, .ci/run): lint, unit + integration tests, the DPDK
# virtio_user interop (which installs dpdk-dev itself), then the guest end-to-end (which provisions
# QEMU, the guest kernel and initramfs itself). Run as root on Debian 12 x86_64; needs network
# access to the Debian mirrors the first time.
set -euo pipefail
cd "$(dirname "$0")/.."

step() { printf '\n==> %s\n' "$*"; }
t0=$SECONDS
bin=${CARGO_TARGET_DIR:-target}/release/vhost-user-sriov-net

# need_pkgs PKG...: install the Debian packages that are missing (a fresh machine has none).
need_pkgs() {
    local p missing=()
    for p in "$@"; do
        dpkg-query -W -f='${Status}\n' "$p" 2>/dev/null | grep -q '^install ok installed$' || missing+=("$p")
    done
    [ ${#missing[@]} -eq 0 ] && return 0
    echo "installing ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y --no-install-recommends "${missing[@]}" >/tmp/sriov-net-apt.log 2>&1 || {
        apt-get update >>/tmp/sriov-net-apt.log 2>&1
        apt-get install -y --no-install-recommends "${missing[@]}" >>/tmp/sriov-net-apt.log 2>&1
    } || { tail -n 20 /tmp/sriov-net-apt.log; return 1; }
}

step "cargo fmt --check"
cargo fmt --all -- --check
step "cargo clippy (all targets, warnings are errors)"
cargo clippy --workspace --all-targets -- -D warnings
step "cargo doc (warnings are errors)"
RUSTDOCFLAGS="-D warnings" cargo doc --no-deps --workspace
step "MSRV: every locked dependency's rust-version <= ours (scripts/msrv.py)"
python3 scripts/msrv.py
step "unit and integration tests"
cargo test --workspace --all-targets 2>&1 | tee /tmp/sriov-net-cargo-test.log
step "release build (daemon and benchmarks)"
cargo build --release --workspace --all-targets
# The benchmark itself needs a quiet machine and is not part of the tests; it must still parse.
bash -n scripts/bench.sh
bash -n scripts/profile.sh
bash -n scripts/bench-guest-scale.sh
bash -n scripts/lib/dpdk.sh
# The systemd units as shipped, with ExecStart pointed at the binary just built.
if command -v systemd-analyze >/dev/null; then
    units=$(mktemp -d /tmp/sriov-net-units.XXXXXX)
    cp systemd/*.service systemd/*.socket "$units/"
    sed -i "s|/usr/local/bin/vhost-user-sriov-net|${CARGO_TARGET_DIR:-$PWD/target}/release/vhost-user-sriov-net|" "$units"/*.service
    (cd "$units" && systemd-analyze verify --man=no ./*.service ./*.socket)
    rm -rf "$units"
fi
python3 -m py_compile scripts/bench/bench.py scripts/dpdk_interop_check.py

if [[ "${SKIP_DPDK:-0}" == 1 ]]; then
    echo "SKIP_DPDK=1: DPDK interop skipped"
    dpdk_passed=0
else
    step "DPDK interop (testpmd, virtio_user frontend, queue sizes 256, 1024, 4096)"
    scripts/dpdk-interop.sh | tee /tmp/sriov-net-dpdk-interop.log
    dpdk_passed=$(grep -c '^| [0-9]* | PASS' /tmp/sriov-net-dpdk-interop.log || true)

    # The one-way benchmark end to end (daemon and DPDK anchor, generator, vu-sink, report),
    # one round of 1 s: it must deliver frames and see no bad ones; the figures mean nothing here.
    step "one-way benchmark smoke (scripts/bench.sh oneway, 1 round of 1 s)"
    smoke=$(mktemp -d /tmp/sriov-net-oneway.XXXXXX)
    if ! ROUNDS=1 SECONDS_PER_ROUND=1 WARMUP=1 SIZES=64 VARIANTS="ours-event dpdk" \
        RESULTS=$smoke scripts/bench.sh oneway >"$smoke/out.log" 2>&1; then
        tail -30 "$smoke/out.log"
        exit 1
    fi
    python3 - "$smoke/raw.json" <<'EOF'
import json, sys
got = {m["variant"]: m for m in json.load(open(sys.argv[1]))["measurements"]}
for v in ("ours-event", "dpdk"):
    m = got.get(v) or {}
    assert m.get("sink_frames", 0) > 0, f"{v}: nothing reached vu-sink"
    assert m.get("sink_bad") == 0, f"{v}: vu-sink saw bad used entries"
print("oneway smoke: " + ", ".join(f"{v} {m['delivered_mpps']:.2f} Mpps" for v, m in got.items()))
EOF
    rm -rf "$smoke"
fi

step "libvirt: qemu-args --libvirt validated with virt-xml-validate"
need_pkgs libvirt-clients libxml2-utils
"$bin" qemu-args --libvirt | diff -u qemu/libvirt-snippet.xml - ||
    { echo "qemu/libvirt-snippet.xml is stale: regenerate it with 'qemu-args --libvirt'"; exit 1; }
virt-xml-validate qemu/libvirt-snippet.xml domain
lv_tmp=$(mktemp /tmp/sriov-net-domain.XXXXXX.xml)
for a in "--vfs 255 --queue-pairs 2 --memory 2G" "--vfs 1 --mtu 9000"; do
    # shellcheck disable=SC2086 # word splitting intended
    "$bin" qemu-args --libvirt $a >"$lv_tmp"
    virt-xml-validate "$lv_tmp" domain
done
"$bin" qemu-args --libvirt --iommu --vfs 8 >"$lv_tmp"
virt-xml-validate "$lv_tmp" domain
"$bin" qemu-args --libvirt --socket-dir "/tmp/a,b'&<c>\"d" >"$lv_tmp"
virt-xml-validate "$lv_tmp" domain
grep -q "path=/tmp/a,,b&apos;&amp;&lt;c&gt;&quot;d/pf.sock," "$lv_tmp"
rm -f "$lv_tmp"

step "script checks (guest addressing, e2e settings)"
# Every function of 255 VFs and the uplink NIC get their own valid address in one /16, none of
# them the ARP target.
# shellcheck disable=SC2016 # expanded by the inner sh
sh -c '. scripts/guest/lib.sh; E2E_VFS=255; for f in pf $(vf_list) up; do fn_ip "$f"; done; echo "$UNUSED_IP"' |
    awk -F. 'NF != 4 || $1 != 10 || $2 != 77 || $3 > 255 || $4 < 1 || $4 > 254 || seen[$0]++ { bad = 1; print "bad or repeated address: " $0 }
        END { if (NR != 258) { bad = 1; print NR " addresses, expected 258" } exit bad }'
# 255 VFs' MACs go to the guest as FIRST+COUNT (the list would not fit its command line): the
# guest's fn_mac expands it to what e2e_check.py compacted.
# shellcheck disable=SC2016 # expanded by the inner sh
sh -c '. scripts/guest/lib.sh; E2E_VFS=255; E2E_MACS=$1; for f in pf $(vf_list); do fn_mac "$f"; done' _ \
    "$(python3 -c 'import sys; sys.path.insert(0, "scripts"); import e2e_check as e; print(e.compact_macs(["02:53:52:00:%02x:%02x" % (i >> 8, i & 255) for i in range(256)]))')" |
    python3 -c 'import sys; got = sys.stdin.read().split(); sys.exit(got != ["02:53:52:00:%02x:%02x" % (i >> 8, i & 255) for i in range(256)])' ||
    { echo "fn_mac does not expand compacted MACs"; exit 1; }
# A user's E2E_KERNEL / E2E_INITRD / E2E_QEMU / E2E_MODULES win over the provisioned ones in
# e2e.env, and E2E_MODULES trees and tarballs become the guest's modules (no guest, no kernel build).
scripts/e2e_env_test.sh
bash -n scripts/e2e.sh
bash -n scripts/provision.sh
python3 -m py_compile scripts/e2e_libvirt.py scripts/e2e_check.py scripts/e2e_sync.py
echo "script checks passed"

# Coverage-guided fuzzing, briefly: builds the fuzz targets (libFuzzer, ASan) and runs each for
# FUZZ_SMOKE_SECONDS (default 15); a crash fails the run. SKIP_FUZZ=1 leaves it out. The
# instrumented build (~600 MB) and the working corpora are kept outside the clone, in
# FUZZ_CACHE_DIR: a later run on the same machine rebuilds only our crates (under a minute instead
# of about 5 CPU-minutes) and goes on from the corpora earlier runs grew.
if [[ "${SKIP_FUZZ:-0}" == 1 ]]; then
    echo "SKIP_FUZZ=1: fuzz smoke skipped"
else
    step "fuzz smoke (scripts/fuzz.sh smoke)"
    CARGO_TARGET_DIR=${FUZZ_CACHE_DIR:-/var/tmp/vhost-user-sriov-net-fuzz} scripts/fuzz.sh smoke
fi

unit_passed=$(grep -Eo 'test result: ok\. [0-9]+ passed' /tmp/sriov-net-cargo-test.log | awk '{s+=$4} END {print s+0}')

if [[ "${SKIP_E2E:-0}" == 1 ]]; then
    echo "SKIP_E2E=1: guest end-to-end skipped"
    e2e_passed=0
else
    step "guest end-to-end (QEMU composable SR-IOV over the daemon), event-driven"
    scripts/e2e.sh | tee /tmp/sriov-net-e2e.log
    e2e_passed=$(grep -c '^| *[a-z] .*PASS' /tmp/sriov-net-e2e.log || true)
    # Again with the busy-poll thread: a Linux guest negotiates EVENT_IDX, so this covers queues
    # going back to kicks (avail_event re-armed) and being handed to the poller again.
    step "guest end-to-end, busy-poll (poll_us = 50)"
    poll_cfg=$(mktemp /tmp/sriov-net-poll.XXXXXX.toml)
    printf 'poll_us = 50\n' >"$poll_cfg"
    E2E_CONFIG=$poll_cfg scripts/e2e.sh | tee /tmp/sriov-net-e2e-poll.log
    rm -f "$poll_cfg"
    e2e_passed=$((e2e_passed + $(grep -c '^| *[a-z] .*PASS' /tmp/sriov-net-e2e-poll.log || true)))
    # The guest kernel's SR-IOV paths that need a vIOMMU (intel-iommu, intremap=on): vfio-pci with
    # enable_sriov and the VF token, one IOMMU group per function, and 16 VFs; iommu_platform is on
    # for every function (qemu-args --iommu), so the pings go through the daemon's IOTLB. Its kernel and
    # modules come in as a user's would (E2E_KERNEL, E2E_MODULES: the provisioned Debian ones,
    # packaged as a `make modules_install` tarball), so that path boots in CI too. Then the
    # shared IOMMU group (pci=disable_acs_redir on the root port), which needs its own boot.
    if [[ "${SKIP_IOMMU:-0}" == 1 ]]; then
        echo "SKIP_IOMMU=1: guest end-to-end with a vIOMMU skipped"
    else
        step "guest end-to-end with a vIOMMU, 16 VFs, kernel and modules as E2E_KERNEL / E2E_MODULES"
        cache=${SRIOV_NET_CACHE:-$PWD/.cache}
        kver=$(cut -d' ' -f1 "$cache/guest/kernel-version")
        modtree=$(mktemp -d /tmp/sriov-net-modtree.XXXXXX)
        mkdir -p "$modtree/lib/modules/$kver/kernel"
        for ko in "$cache"/guest/modules/*.ko; do xz -c "$ko" >"$modtree/lib/modules/$kver/kernel/${ko##*/}.xz"; done
        echo kernel/drivers/virtio/virtio_pci.ko >"$modtree/lib/modules/$kver/modules.builtin"
        tar -C "$modtree" -cJf "$modtree.tar.xz" lib
        E2E_IOMMU=1 E2E_VFS=16 E2E_KERNEL="$cache/guest/vmlinuz" E2E_MODULES="$modtree.tar.xz" \
            scripts/e2e.sh | tee /tmp/sriov-net-e2e-iommu.log
        grep -q '^| a .*modules E2E_MODULES=' /tmp/sriov-net-e2e-iommu.log ||
            { echo "the guest did not load its modules from E2E_MODULES"; exit 1; }
        rm -rf "$modtree" "$modtree.tar.xz"
        e2e_passed=$((e2e_passed + $(grep -c '^| *[a-z] .*PASS' /tmp/sriov-net-e2e-iommu.log || true)))
        step "guest end-to-end with a vIOMMU, one IOMMU group (pci=disable_acs_redir=<root port>)"
        E2E_IOMMU=1 E2E_DISABLE_ACS_REDIR=1 scripts/e2e.sh | tee /tmp/sriov-net-e2e-acs.log
        e2e_passed=$((e2e_passed + $(grep -c '^| *[a-z] .*PASS' /tmp/sriov-net-e2e-acs.log || true)))
    fi
    # The same guest as a libvirt domain made from `qemu-args --libvirt` (libvirt's own root
    # ports and default devices next to the NIC's).
    if [[ "${SKIP_LIBVIRT:-0}" == 1 ]]; then
        echo "SKIP_LIBVIRT=1: guest end-to-end under libvirt skipped"
    else
        step "guest end-to-end under libvirt (qemu-args --libvirt)"
        lv_rc=0
        E2E_LIBVIRT=1 scripts/e2e.sh | tee /tmp/sriov-net-e2e-libvirt.log || lv_rc=$?
        if [[ $lv_rc == 77 ]]; then
            echo "guest end-to-end under libvirt SKIPPED (reason above)"
        elif [[ $lv_rc != 0 ]]; then
            exit "$lv_rc"
        else
            e2e_passed=$((e2e_passed + $(grep -c '^| *[a-z] .*PASS' /tmp/sriov-net-e2e-libvirt.log || true)))
            # And the domain `qemu-args --libvirt --iommu` makes (libvirt's <iommu>, the ioapic
            # in QEMU, iommu_platform on every function): VFs up, pings through the IOTLB.
            step "guest end-to-end under libvirt with a vIOMMU"
            E2E_LIBVIRT=1 E2E_IOMMU=1 scripts/e2e.sh | tee /tmp/sriov-net-e2e-libvirt-iommu.log
            e2e_passed=$((e2e_passed + $(grep -c '^| *[a-z] .*PASS' /tmp/sriov-net-e2e-libvirt-iommu.log || true)))
        fi
    fi
fi

echo
echo "all checks done in $((SECONDS - t0)) s"
echo "$((unit_passed + dpdk_passed + e2e_passed)) passed, 0 failed"
