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
"$bin" qemu-args --libvirt --socket-dir "/tmp/a,b'&<c>\"d" >"$lv_tmp"
virt-xml-validate "$lv_tmp" domain
grep -q "path=/tmp/a,,b&apos;&amp;&lt;c&gt;&quot;d/pf.sock," "$lv_tmp"
rm -f "$lv_tmp"

step "script checks (guest addressing, e2e settings)"
# Every function of 255 VFs gets its own valid address in one /16, none of them the ARP target.
# shellcheck disable=SC2016 # expanded by the inner sh
sh -c '. scripts/guest/lib.sh; E2E_VFS=255; for f in pf $(vf_list); do fn_ip "$f"; done; echo "$UNUSED_IP"' |
    awk -F. 'NF != 4 || $1 != 10 || $2 != 77 || $3 > 255 || $4 < 1 || $4 > 254 || seen[$0]++ { bad = 1; print "bad or repeated address: " $0 }
        END { if (NR != 257) { bad = 1; print NR " addresses, expected 257" } exit bad }'
# A user's E2E_KERNEL / E2E_INITRD / E2E_QEMU win over the provisioned ones in e2e.env.
env_tmp=$(mktemp /tmp/sriov-net-e2e-env.XXXXXX)
printf "E2E_QEMU='/c/qemu'\nE2E_KERNEL='/c/vmlinuz'\nE2E_INITRD='/c/initrd'\n" >"$env_tmp"
# shellcheck disable=SC2016 # expanded by the inner bash
got=$(E2E_KERNEL=/u/bzImage E2E_INITRD=/u/initrd bash -c \
    '. scripts/e2e_env.sh; load_e2e_env "$1"; echo "$E2E_QEMU $E2E_KERNEL $E2E_INITRD"' _ "$env_tmp")
[ "$got" = "/c/qemu /u/bzImage /u/initrd" ] || { echo "e2e.env overrode the user's settings: $got"; exit 1; }
# shellcheck disable=SC2016
got=$(env -u E2E_KERNEL -u E2E_INITRD -u E2E_QEMU bash -c \
    '. scripts/e2e_env.sh; load_e2e_env "$1"; echo "$E2E_QEMU $E2E_KERNEL $E2E_INITRD"' _ "$env_tmp")
[ "$got" = "/c/qemu /c/vmlinuz /c/initrd" ] || { echo "e2e.env not applied: $got"; exit 1; }
rm -f "$env_tmp"
bash -n scripts/e2e.sh
python3 -m py_compile scripts/e2e_libvirt.py
echo "script checks passed"

unit_passed=$(grep -Eo 'test result: ok\. [0-9]+ passed' /tmp/sriov-net-cargo-test.log | awk '{s+=$4} END {print s+0}')

if [[ "${SKIP_E2E:-0}" == 1 ]]; then
    echo "SKIP_E2E=1: guest end-to-end skipped"
    e2e_passed=0
else
    step "guest end-to-end (QEMU composable SR-IOV over the daemon), event-driven"
    scripts/e2e.sh | tee /tmp/sriov-net-e2e.log
    e2e_passed=$(grep -c '^| *[a-i] .*PASS' /tmp/sriov-net-e2e.log || true)
    # Again with the busy-poll thread: a Linux guest negotiates EVENT_IDX, so this covers queues
    # going back to kicks (avail_event re-armed) and being handed to the poller again.
    step "guest end-to-end, busy-poll (poll_us = 50)"
    poll_cfg=$(mktemp /tmp/sriov-net-poll.XXXXXX.toml)
    printf 'poll_us = 50\n' >"$poll_cfg"
    E2E_CONFIG=$poll_cfg scripts/e2e.sh | tee /tmp/sriov-net-e2e-poll.log
    rm -f "$poll_cfg"
    e2e_passed=$((e2e_passed + $(grep -c '^| *[a-i] .*PASS' /tmp/sriov-net-e2e-poll.log || true)))
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
            e2e_passed=$((e2e_passed + $(grep -c '^| *[a-i] .*PASS' /tmp/sriov-net-e2e-libvirt.log || true)))
        fi
    fi
fi

echo
echo "all checks done in $((SECONDS - t0)) s"
echo "$((unit_passed + dpdk_passed + e2e_passed)) passed, 0 failed"
