#!/usr/bin/env bash
# Example: the daemon plus a guest with an SR-IOV virtio-net PF and 3 VFs.
# Usage: qemu/pf-3vfs.sh KERNEL INITRD   (QEMU >= 10.1 on PATH or in $QEMU)
set -euo pipefail
kernel=${1:?kernel}; initrd=${2:?initrd}
qemu=${QEMU:-qemu-system-x86_64}
bin=${BIN:-target/release/vhost-user-sriov-net}
dir=$(mktemp -d /tmp/sriov-net.XXXXXX)

"$bin" --socket-dir "$dir" --vfs 3 --ready-file "$dir/ready" &
daemon=$!
trap 'kill $daemon 2>/dev/null; rm -rf "$dir"' EXIT
for _ in $(seq 100); do [[ -e $dir/ready ]] && break; sleep 0.1; done

accel=(-accel tcg -cpu max)
if grep -qE 'vmx|svm' /proc/cpuinfo && [[ ! -d /sys/module/kvm_pvm ]]; then accel=(-accel kvm -cpu host); fi

mapfile -t nic < <("$bin" qemu-args --socket-dir "$dir" --vfs 3 --memory 512M)
"$qemu" "${accel[@]}" -nographic -no-reboot \
    -kernel "$kernel" -initrd "$initrd" -append "console=ttyS0 panic=-1" \
    "${nic[@]}"
