//! QEMU arguments for the composed SR-IOV NIC, generated from the same configuration the daemon
//! serves, so MACs, queue counts and socket paths always agree. The same arguments also come as a
//! libvirt domain ([`libvirt_domain`]), for libvirt's `<qemu:commandline>` passthrough.

use backend::partition::{PartitionConfig, Role};

use crate::config::Config;

/// QEMU ids used for the PF device and the root port; documented in qemu/README.md.
pub const PF_ID: &str = "sriov-pf";
pub const ROOT_PORT_ID: &str = "sriov-rp0";
/// The root port's place on q35's `pcie.0` and its PCIe (chassis, slot) pair. libvirt numbers
/// the root ports it adds chassis 1, 2, ... (the controller index), leaves their slot at 0, and
/// gives them addresses from `pcie.0` slot 1 upwards; it realizes them after plain `-device`
/// arguments such as these, so a root port left to QEMU's automatic addressing takes slot 1 from
/// under libvirt's first one. Slot 0x1c is one that libvirt's q35 layout never claims for itself
/// (it keeps 0x1f for the ICH9 functions, 0x1e, 0x1d and 0x1a for bridges and USB), and the
/// nonzero PCIe slot number keeps the (chassis, slot) pair unique against every libvirt port.
pub const ROOT_PORT_ADDR: &str = "bus=pcie.0,addr=0x1c,chassis=28,slot=1";
/// Interrupt vectors one x86 guest vCPU is counted on for this NIC. Linux has about 190 vectors
/// per CPU for devices: with 1 vCPU, 64 functions of 3 vectors each (PF + 63 VFs) bind and the
/// 65th fails with -ENOSPC. The rest is left to the guest's other devices.
pub const VECTORS_PER_VCPU: u32 = 160;
/// `reconnect-ms` of every partition socket: QEMU connects again this long after the daemon
/// closed it, then every this long while nobody listens, so it is the floor of the guest's outage
/// when the daemon restarts (measured in the guest, README "Lifecycle": 1.0-1.2 s at 1000,
/// 0.13-0.26 s at 100). The daemon listens again within 40 ms even with 255 VFs. The price is
/// QEMU's retries while the daemon stays down: with PF + 255 VFs about a quarter of a core at 100
/// (4% at 1000, 13% at 250, 40% at 50), next to nothing with a few VFs.
pub const RECONNECT_MS: u32 = 100;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum QemuArgsError {
    #[error("--memory {0:?}: expected a size like 512M or 2G")]
    Memory(String),
    #[error("{0}.queue_size: QEMU's virtio-net needs 256..=1024, config has {1}")]
    QueueSize(String, u16),
}

/// Parses "512M", "2G" or a plain MiB count into MiB.
pub fn parse_mib(s: &str) -> Result<u64, QemuArgsError> {
    let err = || QemuArgsError::Memory(s.to_string());
    let (num, mult) = match s.char_indices().last() {
        Some((i, 'M' | 'm')) => (&s[..i], 1),
        Some((i, 'G' | 'g')) => (&s[..i], 1024),
        _ => (s, 1),
    };
    let n: u64 = num.parse().map_err(|_| err())?;
    n.checked_mul(mult).filter(|v| *v >= 64).ok_or_else(err)
}

/// A value inside a QEMU `key=value,...` option: QEMU reads a comma as the end of the value
/// unless it is doubled.
pub fn opt_value(s: &str) -> String {
    s.replace(',', ",,")
}

/// The guest vCPUs the NIC needs once every VF is enabled and bound: the Linux driver takes one
/// vector for config changes and one per RX or TX queue, on each function.
pub fn min_vcpus(config: &Config) -> u32 {
    let vectors: u32 = config
        .partitions
        .iter()
        .map(|(_, p)| 1 + 2 * u32::from(p.queue_pairs))
        .sum();
    vectors.div_ceil(VECTORS_PER_VCPU).max(1)
}

fn device_opts(cfg: &PartitionConfig) -> String {
    let mut o = format!(
        "mac={},host_mtu={},rx_queue_size={},tx_queue_size={}",
        cfg.mac, cfg.mtu, cfg.queue_size, cfg.queue_size
    );
    if cfg.queue_pairs > 1 {
        // One vector per queue plus config and control.
        o += &format!(",mq=on,vectors={}", 2 * cfg.queue_pairs + 2);
    }
    o
}

/// The arguments, one per element (suitable for `mapfile -t` or an argv array). With
/// `memory_mib`, they start with the shared guest memory, the q35 machine and `-smp`
/// ([`min_vcpus`]); without it, those are left to the caller (e.g. libvirt's `<memoryBacking>`
/// and `<vcpu>`).
pub fn args(config: &Config, memory_mib: Option<u64>) -> Result<Vec<String>, QemuArgsError> {
    args_with(config, memory_mib, false)
}

/// The intel-iommu device `--iommu` adds. intremap needs KVM's irqchip split (the machine line
/// gets it). device-iotlb lets the guest enable ATS on the NIC's functions (`ats=on`); QEMU then
/// sends the daemon the device-IOTLB invalidations, as vhost-kernel setups do. Without ATS QEMU
/// would still forward the IOMMU's own unmaps (hw/virtio/vhost.c picks the notifier by
/// `device_iotlb_enabled`), so either works; this is the documented vhost configuration.
pub const INTEL_IOMMU: &str = "intel-iommu,intremap=on,device-iotlb=on";

/// [`args`], with `iommu`: a vIOMMU in the guest ([`INTEL_IOMMU`], before any PCI device) and
/// `iommu_platform=on,ats=on` on the PF and every VF, so the guest's DMA API (and vfio in the
/// guest) gives the NIC IOVAs that the daemon translates through its IOTLB.
pub fn args_with(
    config: &Config,
    memory_mib: Option<u64>,
    iommu: bool,
) -> Result<Vec<String>, QemuArgsError> {
    let mut a: Vec<String> = Vec::new();
    if let Some(m) = memory_mib {
        let machine = if iommu {
            "q35,memory-backend=sriov-mem,kernel-irqchip=split"
        } else {
            "q35,memory-backend=sriov-mem"
        };
        a.extend([
            "-object".into(),
            format!("memory-backend-memfd,id=sriov-mem,size={m}M,share=on"),
            "-machine".into(),
            machine.into(),
            "-m".into(),
            format!("{m}M"),
            "-smp".into(),
            min_vcpus(config).to_string(),
        ]);
    }
    if iommu {
        a.extend(["-device".into(), INTEL_IOMMU.into()]);
    }
    let qmp = config.socket_dir.join(crate::qmp::QMP_SOCKET);
    a.extend([
        // The daemon connects here to mirror link states and learn guest MACs (see qmp.rs).
        "-qmp".into(),
        format!(
            "unix:{},server=on,wait=off",
            opt_value(&qmp.to_string_lossy())
        ),
        "-device".into(),
        format!("pcie-root-port,id={ROOT_PORT_ID},{ROOT_PORT_ADDR}"),
    ]);
    // QEMU requires the VFs to exist before the PF that claims them is realized.
    let vfs = config
        .partitions
        .iter()
        .filter(|(r, _)| matches!(r, Role::Vf(_)));
    let pf = config
        .partitions
        .iter()
        .filter(|(r, _)| matches!(r, Role::Pf));
    for (role, cfg) in vfs.chain(pf) {
        let name = role.name();
        if !(256..=1024).contains(&cfg.queue_size) {
            return Err(QemuArgsError::QueueSize(name, cfg.queue_size));
        }
        // PF is function 0; VF n is function n + 1 (offset 1, stride 1; ARI beyond 7).
        let devfn = match role {
            Role::Pf => 0,
            Role::Vf(n) => u32::from(*n) + 1,
        };
        let queues = if cfg.queue_pairs > 1 {
            format!(",queues={}", cfg.queue_pairs)
        } else {
            String::new()
        };
        let path = config.socket_dir.join(format!("{name}.sock"));
        a.push("-chardev".into());
        a.push(format!(
            "socket,id=sriov-{name}-chr,path={},reconnect-ms={RECONNECT_MS}",
            opt_value(&path.to_string_lossy())
        ));
        a.push("-netdev".into());
        a.push(format!(
            "vhost-user,id=sriov-{name}-net,chardev=sriov-{name}-chr{queues}"
        ));
        let addr = format!("addr=0x{:x}.0x{:x}", devfn >> 3, devfn & 7);
        let owner = match role {
            Role::Pf => format!("id={PF_ID},romfile="),
            Role::Vf(_) => format!("id={},sriov-pf={PF_ID}", crate::qmp::device_id(*role)),
        };
        let dma = if iommu {
            ",iommu_platform=on,ats=on"
        } else {
            ""
        };
        a.push("-device".into());
        a.push(format!(
            "virtio-net-pci,bus={ROOT_PORT_ID},{addr},netdev=sriov-{name}-net,{owner},{}{dma}",
            device_opts(cfg)
        ));
    }
    Ok(a)
}

/// The libvirt XML namespace of `<qemu:commandline>`.
pub const LIBVIRT_QEMU_NS: &str = "http://libvirt.org/schemas/domain/qemu/1.0";

/// Escapes text for an XML attribute value in single quotes or for element content.
fn xml_escape(s: &str) -> String {
    let mut o = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => o.push_str("&amp;"),
            '<' => o.push_str("&lt;"),
            '>' => o.push_str("&gt;"),
            '\'' => o.push_str("&apos;"),
            '"' => o.push_str("&quot;"),
            c => o.push(c),
        }
    }
    o
}

/// Makes text safe inside an XML comment, which must not contain `--` nor end with `-`.
fn xml_comment(s: &str) -> String {
    let mut o = s.to_string();
    while o.contains("--") {
        o = o.replace("--", "- -");
    }
    if o.ends_with('-') {
        o.push(' ');
    }
    o
}

/// A minimal libvirt q35 domain for the NIC: shared memfd memory (vhost-user needs it), the vCPUs
/// of [`min_vcpus`], ACPI (without `<acpi/>` libvirt 9 passes `-no-acpi`, which QEMU >= 9
/// rejects), and the NIC's arguments ([`args`] without memory and machine) in
/// `<qemu:commandline>`. libvirt has no element for composable SR-IOV (`sriov-pf=`). Add disks,
/// a kernel or firmware and consoles, or copy these elements into an existing q35 domain.
pub fn libvirt_domain(
    config: &Config,
    memory_mib: u64,
    iommu: bool,
) -> Result<String, QemuArgsError> {
    // libvirt's own <iommu> element creates the vIOMMU: it must come before every PCI device,
    // libvirt's root ports included, which <qemu:commandline> arguments never do.
    let mut nic = args_with(config, None, iommu)?;
    if let Some(i) = nic.iter().position(|a| a == INTEL_IOMMU) {
        nic.drain(i - 1..=i);
    }
    let dir = config.socket_dir.to_string_lossy();
    let mut x = String::new();
    x += &format!(
        "<!-- Generated by vhost-user-sriov-net qemu-args (libvirt output) from the daemon's\n     \
         configuration: sockets in {}, PF + {} VFs.\n",
        xml_comment(&dir),
        config.vfs()
    );
    x += "     Regenerate it when the daemon's settings change, and start the daemon before the\n     \
          domain: QEMU (user libvirt-qemu on Debian) connects to every socket at start-up and\n     \
          needs write access to them. The domain is minimal: add disks, a kernel or firmware\n     \
          and consoles, or copy memoryBacking, vcpu, features and qemu:commandline into your\n     \
          own q35 domain. See qemu/README.md. -->\n";
    x += &format!("<domain type='kvm' xmlns:qemu='{LIBVIRT_QEMU_NS}'>\n");
    x += "  <name>sriov-net</name>\n";
    x += &format!("  <memory unit='MiB'>{memory_mib}</memory>\n");
    x += &format!("  <vcpu>{}</vcpu>\n", min_vcpus(config));
    x += "  <memoryBacking>\n    <source type='memfd'/>\n    <access mode='shared'/>\n  </memoryBacking>\n";
    x += "  <os>\n    <type arch='x86_64' machine='q35'>hvm</type>\n  </os>\n";
    if iommu {
        // Interrupt remapping needs the split irqchip (libvirt: the ioapic in QEMU).
        x += "  <features>\n    <acpi/>\n    <apic/>\n    <ioapic driver='qemu'/>\n  </features>\n";
        x += "  <devices>\n    <iommu model='intel'>\n      \
              <driver intremap='on' iotlb='on'/>\n    </iommu>\n  </devices>\n";
    } else {
        x += "  <features>\n    <acpi/>\n    <apic/>\n  </features>\n";
    }
    x += "  <qemu:commandline>\n";
    for a in &nic {
        x += &format!("    <qemu:arg value='{}'/>\n", xml_escape(a));
    }
    x += "  </qemu:commandline>\n</domain>\n";
    Ok(x)
}

/// Shell-quotes one argument if it needs it.
pub fn shell_quote(s: &str) -> String {
    let safe = |c: char| c.is_ascii_alphanumeric() || "-_=,./:@%+".contains(c);
    if !s.is_empty() && s.chars().all(safe) {
        s.to_string()
    } else {
        format!("'{}'", s.replace('\'', "'\\''"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Settings;

    fn cfg(t: &str) -> Config {
        let mut s: Settings = toml::from_str(t).unwrap();
        s.socket_dir = Some("/run/x".into());
        Config::resolve(s).unwrap()
    }

    #[test]
    fn vfs_come_before_the_pf_with_matching_macs_and_functions() {
        let c = cfg("vfs = 3");
        let a = args(&c, Some(512)).unwrap();
        let devs: Vec<&String> = a
            .iter()
            .filter(|s| s.starts_with("virtio-net-pci"))
            .collect();
        assert_eq!(devs.len(), 4);
        assert!(devs[0].contains("addr=0x0.0x1") && devs[0].contains("sriov-pf=sriov-pf"));
        assert!(devs[0].contains(&format!("mac={}", c.partitions[1].1.mac)));
        assert!(devs[2].contains("addr=0x0.0x3"));
        assert!(devs[3].contains("addr=0x0.0x0") && devs[3].contains("id=sriov-pf,romfile="));
        assert!(devs[3].contains(&format!("mac={}", c.partitions[0].1.mac)));
        assert!(a.contains(&"memory-backend-memfd,id=sriov-mem,size=512M,share=on".to_string()));
        assert!(a
            .iter()
            .any(|s| s.contains("path=/run/x/vf2.sock,reconnect-ms=100")));
    }

    #[test]
    fn ari_functions_and_multiqueue() {
        let c = cfg("vfs = 10\nqueue_pairs = 2");
        let a = args(&c, Some(1024)).unwrap();
        assert!(!args(&c, None)
            .unwrap()
            .iter()
            .any(|s| s.contains("memory-backend")));
        assert!(a
            .iter()
            .any(|s| s.contains("netdev=sriov-vf9-net") && s.contains("addr=0x1.0x2")));
        assert!(a
            .iter()
            .any(|s| s.contains("chardev=sriov-vf9-chr,queues=2")));
        assert!(a.iter().any(|s| s.contains("mq=on,vectors=6")));
    }

    #[test]
    fn commas_in_the_socket_dir_are_doubled() {
        let c = Config::resolve(Settings {
            socket_dir: Some("/x/a,b".into()),
            ..Settings::default()
        })
        .unwrap();
        let a = args(&c, Some(512)).unwrap();
        assert!(
            a.contains(&"socket,id=sriov-pf-chr,path=/x/a,,b/pf.sock,reconnect-ms=100".to_string())
        );
        assert!(a.contains(&"unix:/x/a,,b/qmp.sock,server=on,wait=off".to_string()));
        assert!(!a.iter().any(|s| s.contains("a,b/")));
        assert_eq!(opt_value("a,,b,"), "a,,,,b,,");
    }

    #[test]
    fn root_port_is_clear_of_libvirts_ports() {
        let a = args(&cfg("vfs = 2"), None).unwrap();
        let ports: Vec<&String> = a
            .iter()
            .filter(|s| s.starts_with("pcie-root-port"))
            .collect();
        assert_eq!(
            ports,
            ["pcie-root-port,id=sriov-rp0,bus=pcie.0,addr=0x1c,chassis=28,slot=1"]
        );
    }

    #[test]
    fn vcpus_follow_the_interrupt_vectors() {
        let smp = |t: &str| {
            let a = args(&cfg(t), Some(512)).unwrap();
            let i = a.iter().position(|s| s == "-smp").unwrap();
            a[i + 1].parse::<u32>().unwrap()
        };
        assert_eq!(smp("vfs = 4"), 1);
        // 53 functions of 3 vectors fit in one vCPU's share; 64 VFs (195 vectors) need two.
        assert_eq!(smp("vfs = 52"), 1);
        assert_eq!(smp("vfs = 53"), 2);
        assert_eq!(smp("vfs = 64"), 2);
        assert_eq!(smp("vfs = 255"), 5);
        assert_eq!(smp("vfs = 64\nqueue_pairs = 4"), 4);
        assert_eq!(smp("vfs = 2\n[vf.1]\nqueue_pairs = 16"), 1);
        assert!(!args(&cfg("vfs = 64"), None)
            .unwrap()
            .contains(&"-smp".to_string()));
    }

    #[test]
    fn libvirt_domain_with_a_viommu_uses_libvirts_own_iommu_device() {
        let c = cfg("vfs = 2");
        let x = libvirt_domain(&c, 512, true).unwrap();
        assert!(x.contains("<iommu model='intel'>") && x.contains("intremap='on' iotlb='on'"));
        assert!(
            x.contains("<ioapic driver='qemu'/>"),
            "split irqchip for intremap"
        );
        assert!(
            !x.contains("intel-iommu"),
            "not also on QEMU's command line"
        );
        let devs = x.lines().filter(|l| l.contains("virtio-net-pci")).count();
        let dma = x
            .lines()
            .filter(|l| l.contains("iommu_platform=on,ats=on"))
            .count();
        assert_eq!((devs, dma), (3, 3));
        let plain = libvirt_domain(&c, 512, false).unwrap();
        assert!(!plain.contains("iommu") && !plain.contains("ioapic"));
    }

    #[test]
    fn libvirt_domain_carries_the_nic_arguments_escaped() {
        let mut s: Settings = toml::from_str("vfs = 64").unwrap();
        s.socket_dir = Some("/run/a'b&c,d--e-".into());
        let c = Config::resolve(s).unwrap();
        let x = libvirt_domain(&c, 1024, false).unwrap();
        assert!(x.contains("<memory unit='MiB'>1024</memory>"));
        assert!(x.contains("<vcpu>2</vcpu>"));
        assert!(x.contains("<source type='memfd'/>") && x.contains("<access mode='shared'/>"));
        assert!(x.contains("machine='q35'") && x.contains("<acpi/>"));
        let vals: Vec<&str> = x
            .lines()
            .filter_map(|l| l.trim().strip_prefix("<qemu:arg value='"))
            .map(|l| l.strip_suffix("'/>").unwrap())
            .collect();
        let nic: Vec<String> = args(&c, None)
            .unwrap()
            .iter()
            .map(|a| xml_escape(a))
            .collect();
        assert_eq!(vals, nic);
        assert!(x.contains("path=/run/a&apos;b&amp;c,,d--e-/vf63.sock,reconnect-ms=100"));
        // Comments must not contain "--" (the old hand-written snippet was not well-formed).
        let mut rest = x.as_str();
        let mut comments = 0;
        while let Some(i) = rest.find("<!--") {
            let body = &rest[i + 4..];
            let end = body.find("-->").unwrap();
            assert!(!body[..end].contains("--") && !body[..end].ends_with('-'));
            rest = &body[end + 3..];
            comments += 1;
        }
        assert_eq!(comments, 1);
    }

    #[test]
    fn memory_sizes_and_errors() {
        assert_eq!(parse_mib("512M"), Ok(512));
        assert_eq!(parse_mib("2G"), Ok(2048));
        assert_eq!(parse_mib("768"), Ok(768));
        assert!(parse_mib("lots").is_err());
        assert!(parse_mib("1M").is_err());
        assert_eq!(
            args(&cfg("queue_size = 128"), Some(512)),
            Err(QemuArgsError::QueueSize("vf0".into(), 128))
        );
        assert_eq!(shell_quote("romfile="), "romfile=");
        assert_eq!(shell_quote("a b"), "'a b'");
    }

    #[test]
    fn iommu_adds_the_vtd_first_and_dma_translation_on_every_function() {
        let c = cfg("vfs = 2");
        let a = args_with(&c, Some(512), true).unwrap();
        let iommu = a.iter().position(|s| s == INTEL_IOMMU).unwrap();
        assert_eq!(a[iommu - 1], "-device");
        let first_pci = a
            .iter()
            .position(|s| s.starts_with("pcie-root-port"))
            .unwrap();
        assert!(iommu < first_pci, "intel-iommu before every PCI device");
        assert!(a.contains(&"q35,memory-backend=sriov-mem,kernel-irqchip=split".to_string()));
        let devs: Vec<&String> = a
            .iter()
            .filter(|s| s.starts_with("virtio-net-pci"))
            .collect();
        assert_eq!(devs.len(), 3);
        for d in devs {
            assert!(d.ends_with(",iommu_platform=on,ats=on"), "{d}");
        }
        // Without it, nothing of the kind; the NIC-only form still carries the vIOMMU.
        let plain = args(&c, Some(512)).unwrap();
        assert!(!plain
            .iter()
            .any(|s| s.contains("iommu") || s.contains("irqchip")));
        let nic = args_with(&c, None, true).unwrap();
        assert!(nic.contains(&INTEL_IOMMU.to_string()));
        assert!(!nic.iter().any(|s| s.starts_with("q35")));
    }
}
