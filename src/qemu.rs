//! QEMU arguments for the composed SR-IOV NIC, generated from the same configuration the daemon
//! serves, so MACs, queue counts and socket paths always agree.

use backend::partition::{PartitionConfig, Role};

use crate::config::Config;

/// QEMU ids used for the PF device and the root port; documented in qemu/README.md.
pub const PF_ID: &str = "sriov-pf";
pub const ROOT_PORT_ID: &str = "sriov-rp0";

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

/// The arguments, one per element (suitable for `mapfile -t` or an argv array). Without
/// `memory_mib` the shared-memory and machine arguments are left to the caller (e.g. libvirt's
/// `<memoryBacking>`).
pub fn args(config: &Config, memory_mib: Option<u64>) -> Result<Vec<String>, QemuArgsError> {
    let dir = config.socket_dir.display();
    let mut a: Vec<String> = Vec::new();
    if let Some(m) = memory_mib {
        a.extend([
            "-object".into(),
            format!("memory-backend-memfd,id=sriov-mem,size={m}M,share=on"),
            "-machine".into(),
            "q35,memory-backend=sriov-mem".into(),
            "-m".into(),
            format!("{m}M"),
        ]);
    }
    a.extend([
        // The daemon connects here to mirror link states and learn guest MACs (see qmp.rs).
        "-qmp".into(),
        format!("unix:{dir}/{},server=on,wait=off", crate::qmp::QMP_SOCKET),
        "-device".into(),
        format!("pcie-root-port,id={ROOT_PORT_ID},chassis=1,slot=0"),
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
        a.push("-chardev".into());
        a.push(format!(
            "socket,id=sriov-{name}-chr,path={dir}/{name}.sock,reconnect-ms=1000"
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
        a.push("-device".into());
        a.push(format!(
            "virtio-net-pci,bus={ROOT_PORT_ID},{addr},netdev=sriov-{name}-net,{owner},{}",
            device_opts(cfg)
        ));
    }
    Ok(a)
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
            .any(|s| s.contains("path=/run/x/vf2.sock,reconnect-ms=1000")));
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
}
