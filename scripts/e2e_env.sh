# shellcheck shell=bash
# shellcheck disable=SC2034 # the variables set here are used by the scripts that source this
# Sourced by scripts/e2e.sh (and by the script checks of scripts/test.sh).

# load_e2e_env FILE: source FILE (written by scripts/provision.sh), but a non-empty E2E_QEMU,
# E2E_KERNEL or E2E_INITRD the user set beforehand wins over it. The versions the cache reports
# no longer describe such a replacement, so they say so instead.
load_e2e_env() {
    local qemu=${E2E_QEMU-} kernel=${E2E_KERNEL-} initrd=${E2E_INITRD-}
    # shellcheck source=/dev/null
    . "$1"
    if [ -n "$qemu" ]; then
        E2E_QEMU=$qemu
        E2E_QEMU_VERSION="of E2E_QEMU=$qemu"
    fi
    if [ -n "$kernel" ]; then
        E2E_KERNEL=$kernel
        E2E_KERNEL_VERSION="of E2E_KERNEL=$kernel"
    fi
    if [ -n "$initrd" ]; then
        E2E_INITRD=$initrd
    fi
}
