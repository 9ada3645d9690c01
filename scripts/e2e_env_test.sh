#!/usr/bin/env bash
# scripts/e2e_env_test.sh - cheap checks (no guest, no kernel build) of how scripts/e2e.sh takes a
# user's kernel: E2E_QEMU / E2E_KERNEL / E2E_INITRD / E2E_MODULES win over the provisioned e2e.env,
# the release is read from a bzImage header, and E2E_MODULES (a tree or a tarball) becomes the
# initramfs overlay the guest loads its modules from. Run by scripts/test.sh; prints one line.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/e2e_env.sh
. scripts/e2e_env.sh

tmp=$(mktemp -d /tmp/sriov-net-e2e-env.XXXXXX)
trap 'rm -rf "$tmp"' EXIT
bad() {
    echo "e2e_env_test: $*" >&2
    exit 1
}

# --- the settings win over the provisioned e2e.env (each in a fresh shell, as e2e.sh sees them)
printf "E2E_QEMU='/c/qemu'\nE2E_KERNEL='/c/vmlinuz'\nE2E_KERNEL_VERSION='6.1-c'\nE2E_INITRD='/c/initrd'\n" >"$tmp/e2e.env"
# shellcheck disable=SC2016 # expanded by the inner bash
show='. scripts/e2e_env.sh; load_e2e_env "$1"; echo "$E2E_QEMU $E2E_KERNEL $E2E_INITRD ${E2E_MODULES:--} $E2E_CACHED_KERNEL_VERSION"'
got=$(E2E_QEMU=/u/qemu E2E_KERNEL=/u/bzImage E2E_INITRD=/u/initrd E2E_MODULES=/u/mods bash -c "$show" _ "$tmp/e2e.env")
[ "$got" = "/u/qemu /u/bzImage /u/initrd /u/mods 6.1-c" ] || bad "e2e.env overrode the user's settings: $got"
got=$(env -u E2E_QEMU -u E2E_KERNEL -u E2E_INITRD -u E2E_MODULES bash -c "$show" _ "$tmp/e2e.env")
[ "$got" = "/c/qemu /c/vmlinuz /c/initrd - 6.1-c" ] || bad "e2e.env not applied: $got"
# shellcheck disable=SC2016 # literal code
# e2e.sh itself reads them through load_e2e_env and builds the overlay from E2E_MODULES.
grep -q 'load_e2e_env "$CACHE/e2e.env"' scripts/e2e.sh || bad "e2e.sh does not use load_e2e_env"
# shellcheck disable=SC2016 # literal code
grep -q 'e2e_modules_overlay "$E2E_MODULES"' scripts/e2e.sh || bad "e2e.sh does not use E2E_MODULES"

# --- the release of a bzImage: "HdrS" at 0x202, kernel_version (+0x200) at 0x20e
head -c 4096 /dev/zero >"$tmp/bzImage"
printf 'HdrS' | dd of="$tmp/bzImage" bs=1 seek=514 conv=notrunc status=none
printf '\x00\x08' | dd of="$tmp/bzImage" bs=1 seek=526 conv=notrunc status=none # 0x800
printf '6.99.0-test+ (ci@example) #1 SMP\0' | dd of="$tmp/bzImage" bs=1 seek=$((0x800 + 512)) conv=notrunc status=none
[ "$(e2e_kernel_image_version "$tmp/bzImage")" = 6.99.0-test+ ] || bad "bzImage release not read"
! e2e_kernel_image_version "$tmp/e2e.env" >/dev/null 2>&1 || bad "a non-bzImage gave a release"

# --- E2E_MODULES: a `make modules_install` tree (fake modules: only .modinfo matters here)
ko() { printf 'name=%s\0vermagic=%s SMP preempt mod_unload modversions\0' "$1" "$2"; }
rel=6.99.0-test+
t=$tmp/tree/lib/modules/$rel
mkdir -p "$t/kernel/drivers/net" "$t/kernel/drivers/pci" "$t/kernel/drivers/vfio/pci" "$t/kernel/virt/lib"
ko failover "$rel" | xz >"$t/kernel/drivers/net/failover.ko.xz"
ko net_failover "$rel" | gzip >"$t/kernel/drivers/net/net_failover.ko.gz"
ko pci_pf_stub "$rel" >"$t/kernel/drivers/pci/pci-pf-stub.ko"
ko vfio "$rel" | xz >"$t/kernel/drivers/vfio/vfio.ko.xz"
ko vfio_pci_core "$rel" | xz >"$t/kernel/drivers/vfio/pci/vfio-pci-core.ko.xz"
ko vfio_pci "$rel" | xz >"$t/kernel/drivers/vfio/pci/vfio-pci.ko.xz"
# virtio_net, irqbypass and vfio_iommu_type1 built in
printf 'kernel/drivers/net/virtio_net.ko\nkernel/virt/lib/irqbypass.ko\nkernel/drivers/vfio/vfio_iommu_type1.ko\n' >"$t/modules.builtin"

# overlay SRC: build the overlay from SRC into $tmp/x; sets OV_REL.
overlay() {
    rm -rf "$tmp/x" "$tmp/ov.cpio.gz"
    OV_REL=$(e2e_modules_overlay "$1" "$tmp/ov.cpio.gz" 2>"$tmp/err") || return 1
    mkdir "$tmp/x"
    (cd "$tmp/x" && gzip -dc ../ov.cpio.gz | cpio -id --quiet)
}
check_overlay() {
    local what=$1
    [ "$OV_REL" = "$rel" ] || bad "$what: release '$OV_REL', expected $rel"
    [ "$(tr '\n' ' ' <"$tmp/x/lib/modules/e2e/order")" = "failover net_failover " ] ||
        bad "$what: boot list $(tr '\n' ' ' <"$tmp/x/lib/modules/e2e/order")"
    [ "$(tr '\n' ' ' <"$tmp/x/lib/modules/e2e/extra")" = "pci-pf-stub vfio vfio-pci-core vfio-pci " ] ||
        bad "$what: extra list $(tr '\n' ' ' <"$tmp/x/lib/modules/e2e/extra")"
    cmp -s "$tmp/x/lib/modules/e2e/failover.ko" <(ko failover "$rel") || bad "$what: failover.ko not decompressed"
    cmp -s "$tmp/x/lib/modules/e2e/net_failover.ko" <(ko net_failover "$rel") || bad "$what: net_failover.ko not decompressed"
    [ ! -e "$tmp/x/lib/modules/e2e/virtio_net.ko" ] || bad "$what: a built-in module in the overlay"
    grep -q "^E2E_MODULES=.* ($rel)$" "$tmp/x/e2e/modules-source" || bad "$what: no modules-source"
}
overlay "$tmp/tree" || bad "tree: $(cat "$tmp/err")"
check_overlay "INSTALL_MOD_PATH tree"
overlay "$t" || bad "lib/modules/<release>: $(cat "$tmp/err")"
check_overlay "lib/modules/<release>"
tar -C "$tmp/tree" -cJf "$tmp/mods.tar.xz" lib
overlay "$tmp/mods.tar.xz" || bad "tarball: $(cat "$tmp/err")"
check_overlay "tarball"
# A boot module that is neither there nor built in, and modules of two releases, are refused.
sed -i '/virtio_net/d' "$t/modules.builtin"
! overlay "$tmp/tree" || bad "virtio_net missing and not built in, but accepted"
grep -q 'virtio_net is neither' "$tmp/err" || bad "missing virtio_net: $(cat "$tmp/err")"
ko virtio_net 6.98.0 >"$t/kernel/drivers/net/virtio_net.ko"
! overlay "$tmp/tree" || bad "modules of two releases accepted"
grep -q 'is for 6.98.0' "$tmp/err" || bad "two releases: $(cat "$tmp/err")"
! overlay "$tmp/nonexistent" || bad "a missing E2E_MODULES accepted"

echo "e2e settings: E2E_QEMU/KERNEL/INITRD/MODULES win over e2e.env; bzImage release; E2E_MODULES tree, lib/modules/<release> and tarball overlays; bad modules refused"
