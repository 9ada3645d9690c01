#!/usr/bin/env python3
"""Turns `vhost-user-sriov-net qemu-args --libvirt` output into the end-to-end test's domain.

The generated domain is kept as it is (memory, vCPUs, memoryBacking, features and the NIC's
<qemu:commandline>); this adds what only the test knows: a unique name, the accelerator (domain
type and CPU), the provisioned QEMU as <emulator>, the guest kernel, initramfs and command line,
the console as a file (serial 0) and the host checkpoint channel as a Unix socket QEMU connects to
(serial 1, served by scripts/e2e_sync.py), and destroy-on-poweroff, so the transient domain ends
with the guest. libvirt's own default devices (USB controller, balloon, their root ports) stay: the
NIC's root port must coexist with them.
"""
import argparse
import sys
import xml.etree.ElementTree as ET

QEMU_NS = "http://libvirt.org/schemas/domain/qemu/1.0"


def sub(parent, tag, text=None, **attrs):
    e = ET.SubElement(parent, tag, attrs)
    if text is not None:
        e.text = text
    return e


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    for a in ("in", "out", "name", "emulator", "kernel", "initrd", "append", "console", "sync"):
        ap.add_argument(f"--{a}", required=True)
    ap.add_argument("--accel", choices=("kvm", "tcg"), required=True)
    args = ap.parse_args()

    ET.register_namespace("qemu", QEMU_NS)
    tree = ET.parse(args.__dict__["in"])
    dom = tree.getroot()
    if dom.tag != "domain" or dom.find(f"{{{QEMU_NS}}}commandline") is None:
        print("e2e_libvirt: input is not a domain with <qemu:commandline>", file=sys.stderr)
        return 1
    dom.set("type", "kvm" if args.accel == "kvm" else "qemu")
    dom.find("name").text = args.name
    os_ = dom.find("os")
    for tag, text in (("kernel", args.kernel), ("initrd", args.initrd), ("cmdline", args.append)):
        sub(os_, tag, text)
    # Element order matters to libvirt's schema: cpu and the lifecycle actions follow features.
    pos = list(dom).index(dom.find("features")) + 1
    new = []
    cpu = ET.Element("cpu", {"mode": "host-passthrough" if args.accel == "kvm" else "maximum"})
    new.append(cpu)
    for ev in ("on_poweroff", "on_reboot", "on_crash"):
        e = ET.Element(ev)
        e.text = "destroy"
        new.append(e)
    # The generated domain's own <devices> (an <iommu> with qemu-args --iommu) is the one to add
    # to: libvirt's schema allows one.
    devices = dom.find("devices")
    if devices is not None:
        dom.remove(devices)
    else:
        devices = ET.Element("devices")
    emulator = ET.Element("emulator")
    emulator.text = args.emulator
    devices.insert(0, emulator)
    con = sub(devices, "serial", type="file")
    sub(con, "source", path=args.console)
    sub(con, "target", port="0")
    sync = sub(devices, "serial", type="unix")
    sub(sync, "source", mode="connect", path=args.sync)
    sub(sync, "target", port="1")
    new.append(devices)
    # No DAC relabelling: libvirt would chown the kernel and initramfs in the cache to QEMU's user
    # and, run without virtlockd, never give them back. QEMU still runs as that user.
    new.append(ET.Element("seclabel", {"type": "none", "model": "dac"}))
    for i, e in enumerate(new):
        dom.insert(pos + i, e)
    ET.indent(tree, space="  ")
    tree.write(args.out, encoding="unicode", xml_declaration=False)
    with open(args.out, "a", encoding="utf-8") as f:
        f.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
