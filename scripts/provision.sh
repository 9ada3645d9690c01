#!/usr/bin/env bash
# scripts/provision.sh - prepare everything the end-to-end test (scripts/e2e.sh) needs.
#
# Run as root on Debian 12 (bookworm) x86_64. Idempotent: every step keeps a stamp holding a hash of
# its inputs and is skipped when the stamp matches and its outputs are present; otherwise the step is
# rebuilt from scratch. Everything lives under one cache directory:
#
#   $CACHE/trixie-root/                 Debian trixie chroot (debootstrap minbase) holding
#                                       qemu-system-x86 from trixie-backports (>= 10.1: sriov-pf=)
#   $CACHE/bin/qemu-system-x86_64       wrapper running that QEMU on the host through the chroot's
#                                       own loader (no mounts, no chroot(2) at run time)
#   $CACHE/guest/vmlinuz                Debian 6.12 amd64 kernel (from trixie)
#   $CACHE/guest/modules/*.ko           failover, net_failover, virtio_net (loaded at boot), and
#                                       pci-pf-stub and the vfio-pci chain (loaded by scenarios),
#                                       decompressed (lists in scripts/e2e_env.sh)
#   $CACHE/guest/bin/vfio_token         scripts/guest/vfio_token.c, built static with the host's gcc
#   $CACHE/guest/initramfs.cpio.gz      busybox + iproute2's ip (as "xip") + modules + vfio_token +
#                                       scripts/guest
#   $CACHE/e2e.env                      paths and versions for scripts/e2e.sh (shell, sourced)
#   $CACHE/logs/<step>.log              full output of each step
#
# Environment:
#   SRIOV_NET_CACHE   cache directory (default: <repo>/.cache)
#   DEBIAN_MIRROR     Debian mirror for the chroot (default: the first Debian archive URI this
#                     machine's own apt sources use, so no mirror is hard-coded here)
#   PROVISION_FORCE   1 = ignore all stamps and rebuild every step
set -Eeuo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
CACHE=${SRIOV_NET_CACHE:-$REPO/.cache}
# The host's configured Debian archive (deb822 .sources or one-line sources.list), not -security.
host_mirror() {
    {
        awk '/^URIs:/ { for (i = 2; i <= NF; i++) print $i }' /etc/apt/sources.list.d/*.sources 2>/dev/null
        awk '$1 == "deb" { for (i = 2; i <= NF; i++) if ($i ~ /^(https?|file):/) { print $i; break } }' \
            /etc/apt/sources.list /etc/apt/sources.list.d/*.list 2>/dev/null
    } | grep -v -- '-security' | grep -m1 '/debian/\?$' || true
}
MIRROR=${DEBIAN_MIRROR:-$(host_mirror)}
FORCE=${PROVISION_FORCE:-0}
SUITE=trixie
ROOT=$CACHE/trixie-root
GUEST=$CACHE/guest
STAMPS=$CACHE/stamps
LOGS=$CACHE/logs
QEMU_WRAPPER=$CACHE/bin/qemu-system-x86_64
GUEST_SRC=$REPO/scripts/guest
# shellcheck source=scripts/e2e_env.sh
. "$REPO/scripts/e2e_env.sh"
# Kernel modules needed by the guest: loaded at boot, in this order, then the scenarios' own.
GUEST_MODULES=("${E2E_BOOT_MODULES[@]}")
GUEST_EXTRA_MODULES=("${E2E_EXTRA_MODULES[@]}")
GUEST_ALL_MODULES=("${GUEST_MODULES[@]}" "${GUEST_EXTRA_MODULES[@]}")
# gcc and libc6-dev (static glibc, linux-libc-dev's <linux/vfio.h>) build vfio_token.
HOST_PKGS=(debootstrap busybox-static iproute2 cpio xz-utils gzip python3 util-linux gcc libc6-dev)
VFIO_TOKEN_SRC=$GUEST_SRC/vfio_token.c
CHROOT_PKGS=(qemu-system-x86)

STEP=init
STEP_LOG=
WHY=

say() { printf '[provision] %s\n' "$*"; }
why() { WHY=$*; }
die() {
    trap - ERR
    {
        printf '[provision] FAILED in step "%s": %s\n' "$STEP" "$*"
        if [ -n "$STEP_LOG" ] && [ -s "$STEP_LOG" ]; then
            printf '[provision]   last lines of %s:\n' "$STEP_LOG"
            tail -n 15 "$STEP_LOG" | sed 's/^/[provision]   | /'
        fi
    } >&2
    exit 1
}
on_err() {
    local rc=$? line=$1 cmd=$2
    trap - ERR
    {
        printf '[provision] FAILED in step "%s" (exit %s at line %s: %s)\n' "$STEP" "$rc" "$line" "$cmd"
        [ -n "$WHY" ] && printf '[provision]   while: %s\n' "$WHY"
        if [ -n "$STEP_LOG" ] && [ -s "$STEP_LOG" ]; then
            printf '[provision]   last lines of %s:\n' "$STEP_LOG"
            tail -n 25 "$STEP_LOG" | sed 's/^/[provision]   | /'
        fi
    } >&2
    exit "$rc"
}
trap 'on_err "$LINENO" "$BASH_COMMAND"' ERR

now() { date +%s.%N; }
elapsed() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.1fs", b - a }'; }

# run CMD...: run a command with its output appended to the current step's log.
run() { "$@" >>"$STEP_LOG" 2>&1; }

hash_of() { printf '%s\n' "$@" | sha256sum | cut -c1-32; }
stamp_ok() { [ "$FORCE" != 1 ] && [ -f "$STAMPS/$1" ] && [ "$(cat "$STAMPS/$1")" = "$2" ]; }
stamp_write() { printf '%s\n' "$2" >"$STAMPS/$1"; }
stamp_clear() { rm -f "$STAMPS/$1"; }

# step NAME FUNCTION DESCRIPTION: run FUNCTION as step NAME, with timing; FUNCTION sets OUTCOME
# ("reused ...", "built ...").
step() {
    STEP=$1
    STEP_LOG=$LOGS/$1.log
    WHY=
    OUTCOME="done"
    local t0
    t0=$(now)
    : >"$STEP_LOG"
    say "$1: $3 ..."
    "$2"
    say "$1: $OUTCOME ($(elapsed "$t0"))"
}
outcome() { OUTCOME=$*; }

# Refuse to delete a directory that has anything mounted below it.
safe_rm_tree() {
    local d
    for d in "$@"; do
        [ -e "$d" ] || continue
        if awk -v p="$d" '$2 == p || index($2, p "/") == 1 { found = 1 } END { exit !found }' /proc/mounts; then
            die "$d has mounts below it; unmount them first (see /proc/mounts)"
        fi
        rm -rf --one-file-system "$d"
    done
}

check_mirror() {
    local hostport host port
    [ -n "$MIRROR" ] || die "no Debian archive found in this machine's apt sources (/etc/apt/sources.list*); set DEBIAN_MIRROR"
    hostport=${MIRROR#*://}
    hostport=${hostport%%/*}
    host=${hostport%%:*}
    port=80
    [[ $MIRROR == https://* ]] && port=443
    [[ $hostport == *:* ]] && port=${hostport##*:}
    why "checking that the Debian mirror $MIRROR is reachable"
    # shellcheck disable=SC2016 # expanded by the inner bash
    if ! timeout 15 bash -c 'exec 3<>"/dev/tcp/$1/$2"' _ "$host" "$port" 2>>"$STEP_LOG"; then
        die "Debian mirror $MIRROR unreachable (TCP connect to $host:$port failed); set DEBIAN_MIRROR?"
    fi
}

# ---------------------------------------------------------------- steps

do_host_packages() {
    local p missing=()
    for p in "${HOST_PKGS[@]}"; do
        dpkg-query -W -f='${Status}\n' "$p" 2>/dev/null | grep -q '^install ok installed$' || missing+=("$p")
    done
    if [ ${#missing[@]} -eq 0 ]; then
        outcome "reused (all of ${HOST_PKGS[*]} installed)"
        return
    fi
    check_mirror
    why "apt-get update (is the host's Debian mirror reachable?)"
    run env DEBIAN_FRONTEND=noninteractive apt-get update
    why "apt-get install ${missing[*]}"
    run env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${missing[@]}"
    outcome "built (installed ${missing[*]})"
}

do_chroot() {
    local key
    key=$(hash_of chroot-v1 "$SUITE" "$MIRROR" "${CHROOT_PKGS[@]}")
    if stamp_ok chroot "$key" && [ -x "$ROOT/usr/bin/qemu-system-x86_64" ]; then
        outcome "reused ($ROOT)"
        return
    fi
    stamp_clear chroot
    command -v debootstrap >/dev/null || die "debootstrap is not installed (host-packages step?)"
    [ -e /usr/share/debootstrap/scripts/$SUITE ] || die "this debootstrap does not know $SUITE"
    check_mirror
    safe_rm_tree "$ROOT.tmp" "$ROOT"
    why "debootstrap --variant=minbase $SUITE from $MIRROR (see $ROOT.tmp/debootstrap/debootstrap.log)"
    if ! run debootstrap --variant=minbase "$SUITE" "$ROOT.tmp" "$MIRROR"; then
        [ -f "$ROOT.tmp/debootstrap/debootstrap.log" ] && tail -n 20 "$ROOT.tmp/debootstrap/debootstrap.log" >>"$STEP_LOG"
        die "debootstrap of $SUITE failed (mirror $MIRROR); see $STEP_LOG"
    fi
    printf 'deb %s %s main\ndeb %s %s-backports main\n' "$MIRROR" "$SUITE" "$MIRROR" "$SUITE" \
        >"$ROOT.tmp/etc/apt/sources.list"
    cp -L /etc/resolv.conf "$ROOT.tmp/etc/resolv.conf" 2>/dev/null || true
    why "apt-get update inside the $SUITE chroot"
    run chroot "$ROOT.tmp" apt-get update
    why "installing ${CHROOT_PKGS[*]} from $SUITE-backports inside the chroot"
    run chroot "$ROOT.tmp" env DEBIAN_FRONTEND=noninteractive \
        apt-get install -y --no-install-recommends -t "$SUITE-backports" "${CHROOT_PKGS[@]}"
    run chroot "$ROOT.tmp" apt-get clean
    [ -x "$ROOT.tmp/usr/bin/qemu-system-x86_64" ] || die "qemu-system-x86_64 missing after install"
    mv "$ROOT.tmp" "$ROOT"
    stamp_write chroot "$key"
    outcome "built ($ROOT, $(du -sh "$ROOT" | cut -f1))"
}

do_qemu_wrapper() {
    local ldso libdirs tmp ver
    # Use the real loader file, not the /lib64 symlink (an absolute link would point at the host's).
    ldso=$ROOT/usr/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2
    [ -f "$ldso" ] || die "chroot loader $ldso missing"
    libdirs=$ROOT/usr/lib/x86_64-linux-gnu:$ROOT/usr/lib
    mkdir -p "$CACHE/bin"
    tmp=$(mktemp "$CACHE/bin/.qemu.XXXXXX")
    cat >"$tmp" <<EOF
#!/bin/sh
# Generated by scripts/provision.sh: runs the $SUITE chroot's QEMU on this host via the chroot's loader.
export QEMU_MODULE_DIR='$ROOT/usr/lib/x86_64-linux-gnu/qemu'
exec '$ldso' --library-path '$libdirs' '$ROOT/usr/bin/qemu-system-x86_64' \\
    -L '$ROOT/usr/share/qemu' -L '$ROOT/usr/share/seabios' "\$@"
EOF
    chmod 755 "$tmp"
    mv -f "$tmp" "$QEMU_WRAPPER"
    why "running $QEMU_WRAPPER -version"
    ver=$("$QEMU_WRAPPER" -version 2>>"$STEP_LOG" | sed -n 's/^QEMU emulator version \([0-9][0-9.]*\).*/\1/p')
    [ -n "$ver" ] || die "$QEMU_WRAPPER does not run (see $STEP_LOG)"
    why "checking QEMU $ver for virtio-net-pci sriov-pf="
    "$QEMU_WRAPPER" -device virtio-net-pci,help >"$LOGS/virtio-net-pci-help.txt" 2>&1 ||
        die "'-device virtio-net-pci,help' failed (see $LOGS/virtio-net-pci-help.txt)"
    grep -q 'sriov-pf=' "$LOGS/virtio-net-pci-help.txt" ||
        die "QEMU $ver has no virtio-net-pci sriov-pf= (need >= 10.1)"
    QEMU_VERSION=$ver
    outcome "ok (QEMU $ver, sriov-pf= supported)"
}

do_kernel() {
    local key pkg ver debdir deb x tmp m dep
    key=$(hash_of kernel-v1 "$SUITE" "$MIRROR" linux-image-amd64 "${GUEST_ALL_MODULES[@]}")
    if stamp_ok kernel "$key" && kernel_outputs_present; then
        outcome "reused ($(cat "$GUEST/kernel-version"))"
        return
    fi
    stamp_clear kernel
    why "resolving linux-image-amd64 in the $SUITE chroot"
    pkg=$(chroot "$ROOT" apt-cache depends --no-recommends --no-suggests linux-image-amd64 2>>"$STEP_LOG" |
        sed -n 's/^ *Depends: \(linux-image-6\.[0-9.]*[^ ]*-amd64\)$/\1/p' | head -n1)
    [ -n "$pkg" ] || die "could not resolve linux-image-amd64 to a linux-image-6.* package in $SUITE"
    [[ $pkg == linux-image-6.12.* ]] || die "$SUITE's kernel is $pkg, expected 6.12"
    debdir=$ROOT/var/tmp/e2e-kernel
    safe_rm_tree "$debdir"
    mkdir -p "$debdir"
    why "downloading $pkg (apt-get download in the chroot)"
    if ! run chroot "$ROOT" sh -c "cd /var/tmp/e2e-kernel && apt-get download $pkg"; then
        # The chroot's package lists may be stale; refresh once and retry.
        run chroot "$ROOT" apt-get update
        pkg=$(chroot "$ROOT" apt-cache depends --no-recommends --no-suggests linux-image-amd64 |
            sed -n 's/^ *Depends: \(linux-image-6\.[0-9.]*[^ ]*-amd64\)$/\1/p' | head -n1)
        run chroot "$ROOT" sh -c "cd /var/tmp/e2e-kernel && apt-get download $pkg"
    fi
    deb=$(find "$debdir" -maxdepth 1 -name "${pkg}_*.deb" | head -n1)
    [ -n "$deb" ] || die "apt-get download produced no .deb for $pkg"
    safe_rm_tree "$GUEST/kernel.tmp"
    tmp=$GUEST/kernel.tmp
    mkdir -p "$tmp/x" "$tmp/modules"
    why "extracting vmlinuz and ${GUEST_ALL_MODULES[*]} from $(basename "$deb")"
    local pats=('./boot/vmlinuz-*')
    for m in "${GUEST_ALL_MODULES[@]}"; do pats+=("*/$m.ko" "*/$m.ko.*"); done
    dpkg-deb --fsys-tarfile "$deb" | tar -x -C "$tmp/x" --wildcards "${pats[@]}" 2>>"$STEP_LOG" || true
    x=$(find "$tmp/x/boot" -name 'vmlinuz-*' | head -n1)
    [ -n "$x" ] || die "no /boot/vmlinuz-* in $(basename "$deb")"
    ver=${x##*/vmlinuz-}
    cp "$x" "$tmp/vmlinuz"
    for m in "${GUEST_ALL_MODULES[@]}"; do
        x=$(find "$tmp/x" -path "*/modules/$ver/*" \( -name "$m.ko" -o -name "$m.ko.*" \) | head -n1)
        [ -n "$x" ] || die "module $m not found in $(basename "$deb")"
        case $x in
            *.ko.xz) xz -dc "$x" >"$tmp/modules/$m.ko" ;;
            *.ko.zst) zstd -qdc "$x" >"$tmp/modules/$m.ko" ;;
            *.ko.gz) gzip -dc "$x" >"$tmp/modules/$m.ko" ;;
            *.ko) cp "$x" "$tmp/modules/$m.ko" ;;
            *) die "unknown module compression: $x" ;;
        esac
    done
    # The .deb has no modules.dep: make sure the chains above are complete and in a loadable order.
    local loaded=" "
    for m in "${GUEST_ALL_MODULES[@]}"; do
        dep=$(tr '\0' '\n' <"$tmp/modules/$m.ko" | sed -n 's/^depends=//p' | head -n1)
        for x in ${dep//,/ }; do
            x=${x//_/-}
            [[ ${loaded//_/-} == *" $x "* ]] || die "module $m depends on $x, which is not loaded before it"
        done
        loaded+="$m "
    done
    rm -rf "$tmp/x"
    printf '%s %s\n' "$ver" "$pkg" >"$tmp/kernel-version"
    safe_rm_tree "$GUEST/modules"
    mkdir -p "$GUEST"
    mv "$tmp/modules" "$GUEST/modules"
    mv -f "$tmp/vmlinuz" "$GUEST/vmlinuz"
    mv -f "$tmp/kernel-version" "$GUEST/kernel-version"
    rm -rf "$tmp" "$debdir"
    stamp_write kernel "$key"
    outcome "built ($ver from $pkg)"
}

kernel_outputs_present() {
    local m
    [ -f "$GUEST/vmlinuz" ] && [ -f "$GUEST/kernel-version" ] || return 1
    for m in "${GUEST_ALL_MODULES[@]}"; do [ -f "$GUEST/modules/$m.ko" ] || return 1; done
}

# The guest's static helper for the vfio scenarios (scripts/guest/vfio_token.c).
do_guest_tools() {
    local key out=$GUEST/bin/vfio_token
    [ -f "$VFIO_TOKEN_SRC" ] || die "$VFIO_TOKEN_SRC missing"
    command -v gcc >/dev/null || die "gcc is not installed (host-packages step?)"
    key=$(hash_of guest-tools-v1 "$(sha256sum "$VFIO_TOKEN_SRC")" "$(gcc --version | head -n1)" \
        "$(sha256sum /usr/include/linux/vfio.h 2>/dev/null)")
    if stamp_ok guest-tools "$key" && [ -x "$out" ]; then
        outcome "reused ($out)"
        return
    fi
    stamp_clear guest-tools
    mkdir -p "$GUEST/bin"
    why "compiling $VFIO_TOKEN_SRC (gcc -static)"
    run gcc -static -O2 -Wall -Wextra -Werror -o "$out.tmp" "$VFIO_TOKEN_SRC"
    file_is_static "$out.tmp" || die "$out.tmp is not static"
    mv -f "$out.tmp" "$out"
    stamp_write guest-tools "$key"
    outcome "built ($out)"
}

# Files that go into the initramfs, listed so that their content can be hashed.
initramfs_inputs() {
    local ipbin lib
    ipbin=$(command -v ip)
    printf '%s\n' /bin/busybox "$ipbin"
    ldd "$ipbin" | awk '$2 == "=>" && $3 ~ /^\// { print $3 } $1 ~ /^\// { print $1 }'
    find "$GUEST_SRC" -type f | LC_ALL=C sort
    for lib in "${GUEST_ALL_MODULES[@]}"; do printf '%s\n' "$GUEST/modules/$lib.ko"; done
    printf '%s\n' "$GUEST/bin/vfio_token"
}

do_initramfs() {
    local key out=$GUEST/initramfs.cpio.gz tmp ipbin f a n
    /bin/busybox --list >/dev/null 2>&1 || die "/bin/busybox (busybox-static) missing"
    file_is_static /bin/busybox || die "/bin/busybox is not static (install busybox-static)"
    command -v ip >/dev/null || die "iproute2's ip is missing on the host"
    [ -f "$GUEST_SRC/init" ] || die "$GUEST_SRC/init missing"
    why "hashing the initramfs inputs"
    key=$(hash_of initramfs-v1 "$(initramfs_inputs | while read -r f; do sha256sum "$f"; done)")
    if stamp_ok initramfs "$key" && [ -f "$out" ]; then
        outcome "reused ($out)"
        return
    fi
    stamp_clear initramfs
    tmp=$GUEST/initramfs.tmp
    safe_rm_tree "$tmp"
    mkdir -p "$tmp"/{bin,sbin,usr/bin,usr/sbin,dev,proc,sys,run,tmp,etc,root,e2e,lib/modules/e2e}
    mkdir -p "$tmp/var"
    ln -s ../run "$tmp/var/run"
    why "installing busybox and its applet links"
    cp /bin/busybox "$tmp/bin/busybox"
    /bin/busybox --list-full | while read -r a; do
        [ -e "$tmp/$a" ] || [ -L "$tmp/$a" ] || ln -s /bin/busybox "$tmp/$a"
    done
    why "installing iproute2's ip (as /usr/sbin/xip) and its shared libraries"
    ipbin=$(command -v ip)
    # iproute2 treats an argv0 of "ipX..." as "ip X...": the name must not start with "ip".
    cp -L "$ipbin" "$tmp/usr/sbin/xip"
    ldd "$ipbin" | awk '$2 == "=>" && $3 ~ /^\// { print $3 } $1 ~ /^\// { print $1 }' | while read -r f; do
        mkdir -p "$tmp$(dirname "$f")"
        cp -L "$f" "$tmp$f"
    done
    why "installing modules and guest scripts"
    for n in "${GUEST_ALL_MODULES[@]}"; do cp "$GUEST/modules/$n.ko" "$tmp/lib/modules/e2e/"; done
    printf '%s\n' "${GUEST_MODULES[@]}" >"$tmp/lib/modules/e2e/order"
    printf '%s\n' "${GUEST_EXTRA_MODULES[@]}" >"$tmp/lib/modules/e2e/extra"
    cp -a "$GUEST_SRC"/. "$tmp/e2e/"
    rm -f "$tmp"/e2e/*.c
    cp "$GUEST/bin/vfio_token" "$tmp/usr/bin/vfio_token"
    mv "$tmp/e2e/init" "$tmp/init"
    chmod 755 "$tmp/init" "$tmp"/e2e/*
    cp "$GUEST/kernel-version" "$tmp/e2e/kernel-version"
    mknod -m 600 "$tmp/dev/console" c 5 1
    mknod -m 666 "$tmp/dev/null" c 1 3
    why "running the packaged xip inside the staging tree (missing library?)"
    chroot "$tmp" /usr/sbin/xip -V >>"$STEP_LOG" 2>&1 || die "xip does not run from the initramfs tree (see $STEP_LOG)"
    why "packing the initramfs with cpio"
    (cd "$tmp" && find . -mindepth 1 | LC_ALL=C sort | cpio -o -H newc -R 0:0 --quiet) | gzip -9 >"$out.tmp"
    mv -f "$out.tmp" "$out"
    rm -rf "$tmp"
    stamp_write initramfs "$key"
    outcome "built ($out, $(du -h "$out" | cut -f1))"
}

file_is_static() {
    ! ldd "$1" >/dev/null 2>&1
}

write_env() {
    local kver
    kver=$(cut -d' ' -f1 "$GUEST/kernel-version")
    cat >"$CACHE/e2e.env.tmp" <<EOF
# Generated by scripts/provision.sh; sourced by scripts/e2e.sh.
E2E_QEMU='$QEMU_WRAPPER'
E2E_QEMU_VERSION='$QEMU_VERSION'
E2E_KERNEL='$GUEST/vmlinuz'
E2E_KERNEL_VERSION='$kver'
E2E_INITRD='$GUEST/initramfs.cpio.gz'
EOF
    mv -f "$CACHE/e2e.env.tmp" "$CACHE/e2e.env"
    outcome "ok ($CACHE/e2e.env)"
}

# ---------------------------------------------------------------- main

main() {
    local t0
    t0=$(now)
    [ "$(id -u)" = 0 ] || die "must run as root (debootstrap, chroot, apt-get)"
    [ "$(uname -m)" = x86_64 ] || die "only x86_64 hosts are supported"
    [ -f /etc/debian_version ] || die "not a Debian host"
    mkdir -p "$CACHE" "$STAMPS" "$LOGS" "$GUEST"
    exec 9>"$CACHE/.provision.lock"
    say "cache: $CACHE (waiting for lock)"
    flock -w 1200 9 || die "could not lock $CACHE/.provision.lock within 20 minutes"
    QEMU_VERSION=
    step host-packages do_host_packages "host packages (${HOST_PKGS[*]})"
    step chroot do_chroot "$SUITE chroot with ${CHROOT_PKGS[*]} from $SUITE-backports"
    step qemu do_qemu_wrapper "QEMU wrapper $QEMU_WRAPPER, check for sriov-pf="
    step kernel do_kernel "guest kernel (linux-image-amd64 of $SUITE) and modules ${GUEST_ALL_MODULES[*]}"
    step guest-tools do_guest_tools "guest helper vfio_token (static)"
    step initramfs do_initramfs "guest initramfs (busybox, iproute2 ip, modules, scripts/guest)"
    step env write_env "paths for scripts/e2e.sh"
    STEP="done"
    say "done in $(elapsed "$t0")"
    sed -n 's/^E2E_/  E2E_/p' "$CACHE/e2e.env"
}

main "$@"
