# shellcheck shell=bash
# shellcheck disable=SC2034 # the variables set here are used by the scripts that source this
# Sourced by scripts/e2e.sh, scripts/provision.sh (and by the script checks of scripts/test.sh).

# Guest kernel modules. The boot ones are loaded by the guest's /init in this order; the extra ones
# (listed in dependency order) by the scenarios that need them (lib.sh load_module): pci-pf-stub
# for the unmanaged PF, the vfio chain for the vfio-pci scenarios. busybox insmod ignores softdeps
# and modules.dep, hence the explicit order.
E2E_BOOT_MODULES=(failover net_failover virtio_net)
E2E_EXTRA_MODULES=(pci-pf-stub irqbypass vfio vfio_iommu_type1 vfio-pci-core vfio-pci)

# load_e2e_env FILE: source FILE (written by scripts/provision.sh), but a non-empty E2E_QEMU,
# E2E_KERNEL or E2E_INITRD the user set beforehand wins over it (E2E_MODULES is never in FILE).
# The versions the cache reports no longer describe such a replacement, so they say so instead;
# E2E_CACHED_KERNEL_VERSION keeps the version of the provisioned kernel (and its modules).
load_e2e_env() {
    local qemu=${E2E_QEMU-} kernel=${E2E_KERNEL-} initrd=${E2E_INITRD-} modules=${E2E_MODULES-}
    # shellcheck source=/dev/null
    . "$1"
    E2E_CACHED_KERNEL_VERSION=${E2E_KERNEL_VERSION-}
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
    E2E_MODULES=$modules
}

# e2e_kernel_image_version FILE: the release (uname -r) of an x86 bzImage, from its setup header
# ("HdrS" at 0x202; kernel_version at 0x20e points to the version string, 0x200 bytes before it).
e2e_kernel_image_version() {
    local f=$1 off v
    [ "$(dd if="$f" bs=1 skip=514 count=4 2>/dev/null)" = HdrS ] || return 1
    off=$(od -An -tu2 -j 526 -N 2 "$f" | tr -d ' ')
    [ -n "$off" ] && [ "$off" -gt 0 ] || return 1
    v=$(dd if="$f" bs=1 skip=$((off + 512)) count=256 2>/dev/null | tr '\0' '\n' | head -n1 | cut -d' ' -f1)
    [ -n "$v" ] || return 1
    echo "$v"
}

# e2e_ko_vermagic FILE: the release a (decompressed) module was built for (first word of vermagic).
e2e_ko_vermagic() {
    tr '\0' '\n' <"$1" | sed -n 's/^vermagic=//p' | head -n1 | cut -d' ' -f1
}

# e2e_modules_overlay SRC OUT: build OUT, a gzipped newc cpio to append to the guest initramfs, from
# SRC, a directory (e.g. INSTALL_MOD_PATH of `make modules_install`, lib/modules/<release>, or just
# a directory of .ko files) or a tarball of one (any compression GNU tar detects). Every module of
# E2E_BOOT_MODULES and E2E_EXTRA_MODULES found below SRC (NAME.ko, .ko.xz, .ko.zst or .ko.gz, "-"
# and "_" alike) goes in decompressed as /lib/modules/e2e/NAME.ko, with the lists the guest loads
# from (/lib/modules/e2e/order, /lib/modules/e2e/extra): the initramfs' own modules are then never
# loaded. A module not found is taken as built in when a modules.builtin below SRC names it, or
# when SRC has no modules.builtin at all (with a warning); a boot module that a modules.builtin
# does not list is an error. Prints the release the modules were built for (vermagic); every
# module must agree.
e2e_modules_overlay() {
    local src=$1 out=$2 tmp tree n f alt rel ver='' builtin kind rc=0
    tmp=$(mktemp -d /tmp/sriov-net-modules.XXXXXX)
    if [ -d "$src" ]; then
        tree=$src
    elif [ -f "$src" ]; then
        mkdir "$tmp/x"
        tar -xf "$src" -C "$tmp/x" || { echo "E2E_MODULES: cannot unpack $src" >&2; rm -rf "$tmp"; return 1; }
        tree=$tmp/x
    else
        echo "E2E_MODULES: $src is neither a directory nor a file" >&2
        rm -rf "$tmp"
        return 1
    fi
    mkdir -p "$tmp/root/lib/modules/e2e" "$tmp/root/e2e"
    : >"$tmp/root/lib/modules/e2e/order"
    : >"$tmp/root/lib/modules/e2e/extra"
    builtin=$(find "$tree" -name modules.builtin -type f -print0 | xargs -0 -r cat)
    for n in "${E2E_BOOT_MODULES[@]}" "${E2E_EXTRA_MODULES[@]}"; do
        kind=extra
        [[ " ${E2E_BOOT_MODULES[*]} " == *" $n "* ]] && kind=order
        alt=${n//-/_}
        [ "$alt" = "$n" ] && alt=${n//_/-}
        f=$(find "$tree" \( -name "$n.ko" -o -name "$n.ko.*" -o -name "$alt.ko" -o -name "$alt.ko.*" \) \
            \( -type f -o -type l \) | LC_ALL=C sort | head -n1)
        if [ -z "$f" ]; then
            if grep -qE "/($n|$alt)\.ko$" <<<"$builtin"; then
                echo "E2E_MODULES: $n is built in (modules.builtin)" >&2
            elif [ -z "$builtin" ]; then
                echo "E2E_MODULES: WARNING: $n not found and no modules.builtin: assuming it is built in" >&2
            elif [ "$kind" = order ]; then
                echo "E2E_MODULES: $n is neither below $src nor in its modules.builtin" >&2
                rc=1
            else
                echo "E2E_MODULES: WARNING: $n not found (the scenarios that need it will fail)" >&2
            fi
            continue
        fi
        case $f in
            *.ko.xz) xz -dc "$f" ;;
            *.ko.zst) zstd -qdc "$f" ;;
            *.ko.gz) gzip -dc "$f" ;;
            *.ko) cat "$f" ;;
            *) false ;;
        esac >"$tmp/root/lib/modules/e2e/$n.ko" || {
            echo "E2E_MODULES: cannot decompress $f" >&2
            rc=1
            continue
        }
        rel=$(e2e_ko_vermagic "$tmp/root/lib/modules/e2e/$n.ko")
        if [ -z "$rel" ]; then
            echo "E2E_MODULES: $f has no vermagic (not a kernel module?)" >&2
            rc=1
        elif [ -n "$ver" ] && [ "$rel" != "$ver" ]; then
            echo "E2E_MODULES: $f is for $rel, other modules for $ver" >&2
            rc=1
        fi
        ver=${ver:-$rel}
        echo "$n" >>"$tmp/root/lib/modules/e2e/$kind"
    done
    printf 'E2E_MODULES=%s (%s)\n' "$src" "${ver:-all built in}" >"$tmp/root/e2e/modules-source"
    if [ "$rc" = 0 ]; then
        (cd "$tmp/root" && find . -mindepth 1 | LC_ALL=C sort | cpio -o -H newc -R 0:0 --quiet) | gzip -1 >"$out" || rc=1
    fi
    rm -rf "$tmp"
    [ "$rc" = 0 ] && echo "${ver:-}"
    return "$rc"
}
