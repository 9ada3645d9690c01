//! Daemon configuration: built-in defaults, an optional TOML file and CLI flags (which win),
//! resolved into one validated partition table. Every error names the field it is about.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use backend::admin::{Admin, AdminChange, LinkState, VlanProto};
use backend::mac::MacAddr;
use backend::partition::{PartitionConfig, Role};
use serde::Deserialize;

pub const DEFAULT_SOCKET_DIR: &str = "/run/vhost-user-sriov-net";
pub const DEFAULT_VFS: u16 = 4;
pub const MAX_VFS: u16 = 255;
pub const DEFAULT_BASE_MAC: MacAddr = MacAddr([0x02, 0x53, 0x52, 0x00, 0x00, 0x00]);
pub const DEFAULT_QUEUE_PAIRS: u16 = 1;
pub const MAX_QUEUE_PAIRS: u16 = 16;
pub const DEFAULT_QUEUE_SIZE: u16 = 256;
pub const DEFAULT_MTU: u16 = 1500;
/// Upper bound of the busy-poll window: polling is a bounded trade, not a spinning core.
pub const MAX_POLL_US: u32 = 10_000;
/// Frontends (QEMU) run as the owner or in the group; nobody else.
pub const DEFAULT_SOCKET_MODE: u32 = 0o660;
/// Only the daemon's own user administers it.
pub const DEFAULT_CONTROL_MODE: u32 = 0o600;

/// A socket's permissions, applied after it is bound whatever the umask.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Access {
    pub mode: u32,
    /// None: the daemon's own group.
    pub gid: Option<u32>,
}

fn parse_mode(field: &str, s: &str) -> Result<u32, ConfigError> {
    let m = u32::from_str_radix(s.trim_start_matches("0o"), 8)
        .map_err(|_| invalid(field, format!("{s:?} is not an octal mode like 0660")))?;
    if m > 0o777 {
        return Err(invalid(field, format!("{s} has bits beyond 0777")));
    }
    Ok(m)
}

/// A group by name (getgrnam) or number.
fn parse_group(field: &str, s: &str) -> Result<u32, ConfigError> {
    if let Ok(n) = s.parse::<u32>() {
        return Ok(n);
    }
    let name = std::ffi::CString::new(s).map_err(|_| invalid(field, "group name has a NUL"))?;
    // SAFETY: a valid C string; the result is read at once, before any other getgr* call in
    // this thread (config is resolved before threads start).
    let g = unsafe { libc::getgrnam(name.as_ptr()) };
    if g.is_null() {
        return Err(invalid(field, format!("no group named {s:?}")));
    }
    // SAFETY: non-null, as checked.
    Ok(unsafe { (*g).gr_gid })
}

fn access(
    mode_field: &str,
    mode: Option<&str>,
    default: u32,
    group_field: &str,
    group: Option<&str>,
) -> Result<Access, ConfigError> {
    Ok(Access {
        mode: mode.map_or(Ok(default), |m| parse_mode(mode_field, m))?,
        gid: group.map(|g| parse_group(group_field, g)).transpose()?,
    })
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config file {path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("{field}: {message}")]
    Invalid { field: String, message: String },
}

fn invalid(field: impl Into<String>, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        field: field.into(),
        message: message.into(),
    }
}

/// Per-partition settings; every key optional, unset ones inherit the global value.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PartitionOverride {
    pub mac: Option<MacAddr>,
    pub queue_pairs: Option<u16>,
    pub queue_size: Option<u16>,
    pub mtu: Option<u16>,
    // The operator's settings, in `ip link set ... vf N` words (see backend::admin).
    pub vlan: Option<u32>,
    pub qos: Option<u32>,
    pub proto: Option<VlanProto>,
    pub max_tx_rate: Option<u32>,
    pub min_tx_rate: Option<u32>,
    pub spoofchk: Option<bool>,
    pub trust: Option<bool>,
    pub state: Option<LinkState>,
}

impl PartitionOverride {
    /// The admin settings this override carries (the MAC is the partition's own).
    fn admin_change(&self) -> AdminChange {
        AdminChange {
            mac: None,
            vlan: self.vlan,
            qos: self.qos,
            proto: self.proto,
            max_tx_rate: self.max_tx_rate,
            min_tx_rate: self.min_tx_rate,
            spoofchk: self.spoofchk,
            trust: self.trust,
            state: self.state,
        }
    }
}

/// The TOML file, and equally the CLI flags (same names).
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    pub socket_dir: Option<PathBuf>,
    pub vfs: Option<u16>,
    pub base_mac: Option<MacAddr>,
    pub queue_pairs: Option<u16>,
    pub queue_size: Option<u16>,
    pub mtu: Option<u16>,
    /// Busy-poll window in microseconds after a TX queue runs dry; 0 = event-driven.
    pub poll_us: Option<u32>,
    /// Mode of the PF and VF sockets, octal ("0660"); the control socket has its own.
    pub socket_mode: Option<String>,
    /// Group (name or number) given the PF and VF sockets, e.g. the one QEMU runs as.
    pub socket_group: Option<String>,
    /// Mode of control.sock: administering VFs is a different right from being a frontend.
    pub control_mode: Option<String>,
    pub control_group: Option<String>,
    pub pf: Option<PartitionOverride>,
    /// Keyed by VF index as a string: `[vf.0]`, `[vf.1]`, ...
    pub vf: Option<BTreeMap<String, PartitionOverride>>,
}

impl Settings {
    pub fn from_file(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        toml::from_str(&text).map_err(|e| ConfigError::Parse {
            path: path.to_path_buf(),
            message: e.to_string().trim_end().replace('\n', " "),
        })
    }

    /// `other`'s values win where set. Destructured without `..`, so a new setting cannot be
    /// forgotten here (it was once: `--poll-us` never reached the daemon).
    pub fn overlay(self, other: Settings) -> Settings {
        let Settings {
            socket_dir,
            vfs,
            base_mac,
            queue_pairs,
            queue_size,
            mtu,
            poll_us,
            socket_mode,
            socket_group,
            control_mode,
            control_group,
            pf,
            vf,
        } = other;
        Settings {
            socket_dir: socket_dir.or(self.socket_dir),
            vfs: vfs.or(self.vfs),
            base_mac: base_mac.or(self.base_mac),
            queue_pairs: queue_pairs.or(self.queue_pairs),
            queue_size: queue_size.or(self.queue_size),
            mtu: mtu.or(self.mtu),
            poll_us: poll_us.or(self.poll_us),
            socket_mode: socket_mode.or(self.socket_mode),
            socket_group: socket_group.or(self.socket_group),
            control_mode: control_mode.or(self.control_mode),
            control_group: control_group.or(self.control_group),
            pf: pf.or(self.pf),
            vf: vf.or(self.vf),
        }
    }
}

/// A resolved, valid configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    pub socket_dir: PathBuf,
    pub poll_us: u32,
    /// Who may connect to the PF and VF sockets, and to control.sock.
    pub data_access: Access,
    pub control_access: Access,
    /// Index 0 is the PF, then VF 0..n.
    pub partitions: Vec<(Role, PartitionConfig)>,
    /// Each partition's admin settings at start (same index), already validated.
    pub admin: Vec<AdminChange>,
}

impl Config {
    pub fn vfs(&self) -> usize {
        self.partitions.len() - 1
    }

    pub fn resolve(s: Settings) -> Result<Config, ConfigError> {
        let vfs = s.vfs.unwrap_or(DEFAULT_VFS);
        if vfs == 0 || vfs > MAX_VFS {
            return Err(invalid(
                "vfs",
                format!("{vfs} is out of range 1..={MAX_VFS}"),
            ));
        }
        let poll_us = s.poll_us.unwrap_or(0);
        if poll_us > MAX_POLL_US {
            return Err(invalid(
                "poll_us",
                format!("{poll_us} is above the maximum of {MAX_POLL_US}"),
            ));
        }
        let data_access = access(
            "socket_mode",
            s.socket_mode.as_deref(),
            DEFAULT_SOCKET_MODE,
            "socket_group",
            s.socket_group.as_deref(),
        )?;
        let control_access = access(
            "control_mode",
            s.control_mode.as_deref(),
            DEFAULT_CONTROL_MODE,
            "control_group",
            s.control_group.as_deref(),
        )?;
        let base = s.base_mac.unwrap_or(DEFAULT_BASE_MAC);
        check_unicast("base_mac", base)?;
        let global = PartitionOverride {
            mac: None,
            queue_pairs: s.queue_pairs,
            queue_size: s.queue_size,
            mtu: s.mtu,
            ..PartitionOverride::default()
        };
        let vf_over = s.vf.unwrap_or_default();
        let mut by_index: BTreeMap<u16, PartitionOverride> = BTreeMap::new();
        for (key, o) in vf_over {
            let idx: u16 = key
                .parse()
                .map_err(|_| invalid(format!("vf.{key}"), "VF keys are indices like [vf.0]"))?;
            if idx >= vfs {
                return Err(invalid(
                    format!("vf.{key}"),
                    format!("no such VF: vfs = {vfs} (indices 0..{vfs})"),
                ));
            }
            by_index.insert(idx, o);
        }

        let mut partitions = Vec::with_capacity(usize::from(vfs) + 1);
        let mut admin = Vec::with_capacity(usize::from(vfs) + 1);
        let roles = std::iter::once(Role::Pf).chain((0..vfs).map(Role::Vf));
        for (i, role) in roles.enumerate() {
            let (field, o) = match role {
                Role::Pf => ("pf".to_string(), s.pf.clone().unwrap_or_default()),
                Role::Vf(n) => (
                    format!("vf.{n}"),
                    by_index.get(&n).cloned().unwrap_or_default(),
                ),
            };
            let derived = base.offset(i as u32).ok_or_else(|| {
                invalid(
                    "base_mac",
                    format!("{base} leaves no room for {vfs} VF MACs"),
                )
            })?;
            let mac = o.mac.unwrap_or(derived);
            check_unicast(&format!("{field}.mac"), mac)?;
            let cfg = PartitionConfig {
                mac,
                queue_pairs: pick(
                    &field,
                    "queue_pairs",
                    o.queue_pairs,
                    global.queue_pairs,
                    DEFAULT_QUEUE_PAIRS,
                )?,
                queue_size: pick(
                    &field,
                    "queue_size",
                    o.queue_size,
                    global.queue_size,
                    DEFAULT_QUEUE_SIZE,
                )?,
                mtu: pick(&field, "mtu", o.mtu, global.mtu, DEFAULT_MTU)?,
            };
            check_partition(&field, &o, &global, &cfg)?;
            let change = o.admin_change();
            Admin::new(mac)
                .apply(&change)
                .map_err(|e| invalid(field.clone(), e.to_string()))?;
            admin.push(change);
            partitions.push((role, cfg));
        }
        for (i, (ri, a)) in partitions.iter().enumerate() {
            for (rj, b) in &partitions[..i] {
                if a.mac == b.mac {
                    return Err(invalid(
                        format!("{}.mac", field_name(*ri)),
                        format!("{} is already used by {}", a.mac, field_name(*rj)),
                    ));
                }
            }
        }
        Ok(Config {
            poll_us,
            data_access,
            control_access,
            socket_dir: s
                .socket_dir
                .unwrap_or_else(|| PathBuf::from(DEFAULT_SOCKET_DIR)),
            partitions,
            admin,
        })
    }
}

fn field_name(r: Role) -> String {
    match r {
        Role::Pf => "pf".into(),
        Role::Vf(n) => format!("vf.{n}"),
    }
}

fn pick(
    _field: &str,
    _key: &str,
    own: Option<u16>,
    global: Option<u16>,
    default: u16,
) -> Result<u16, ConfigError> {
    Ok(own.or(global).unwrap_or(default))
}

/// Names the most specific place a bad value came from.
fn check_partition(
    field: &str,
    own: &PartitionOverride,
    global: &PartitionOverride,
    cfg: &PartitionConfig,
) -> Result<(), ConfigError> {
    let origin = |key: &str, set: bool| {
        if set {
            format!("{field}.{key}")
        } else {
            key.to_string()
        }
    };
    if cfg.queue_pairs == 0 || cfg.queue_pairs > MAX_QUEUE_PAIRS {
        return Err(invalid(
            origin(
                "queue_pairs",
                own.queue_pairs.is_some() || global.queue_pairs.is_none(),
            ),
            format!("{} is out of range 1..={MAX_QUEUE_PAIRS}", cfg.queue_pairs),
        ));
    }
    if !cfg.queue_size.is_power_of_two() || !(64..=1024).contains(&cfg.queue_size) {
        return Err(invalid(
            origin(
                "queue_size",
                own.queue_size.is_some() || global.queue_size.is_none(),
            ),
            format!("{} must be a power of two in 64..=1024", cfg.queue_size),
        ));
    }
    if cfg.mtu < 68 {
        return Err(invalid(
            origin("mtu", own.mtu.is_some() || global.mtu.is_none()),
            format!("{} is below the IPv4 minimum of 68", cfg.mtu),
        ));
    }
    Ok(())
}

fn check_unicast(field: &str, mac: MacAddr) -> Result<(), ConfigError> {
    if mac.is_group() {
        return Err(invalid(
            field,
            format!("{mac} is a multicast/broadcast address"),
        ));
    }
    if mac.is_zero() {
        return Err(invalid(field, "00:00:00:00:00:00 is not a usable address"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(t: &str) -> Result<Config, ConfigError> {
        let s: Settings = toml::from_str(t).map_err(|e| ConfigError::Parse {
            path: "t.toml".into(),
            message: e.to_string(),
        })?;
        Config::resolve(s)
    }

    fn err(t: &str) -> String {
        parse(t).unwrap_err().to_string()
    }

    #[test]
    fn defaults_are_four_vfs_with_derived_macs() {
        let c = Config::resolve(Settings::default()).unwrap();
        assert_eq!(c.vfs(), 4);
        assert_eq!(c.partitions[0].0, Role::Pf);
        assert_eq!(c.partitions[0].1.mac.to_string(), "02:53:52:00:00:00");
        assert_eq!(c.partitions[4].0, Role::Vf(3));
        assert_eq!(c.partitions[4].1.mac.to_string(), "02:53:52:00:00:04");
        let p = &c.partitions[2].1;
        assert_eq!((p.queue_pairs, p.queue_size, p.mtu), (1, 256, 1500));
        assert_eq!(c.socket_dir, PathBuf::from(DEFAULT_SOCKET_DIR));
    }

    #[test]
    fn overrides_apply_per_partition() {
        let c = parse(
            r#"
            vfs = 2
            queue_pairs = 2
            mtu = 9000
            [pf]
            mac = "02:aa:00:00:00:01"
            [vf.1]
            queue_size = 1024
            queue_pairs = 1
            "#,
        )
        .unwrap();
        assert_eq!(c.partitions.len(), 3);
        assert_eq!(c.partitions[0].1.mac.to_string(), "02:aa:00:00:00:01");
        assert_eq!(c.partitions[1].1.queue_pairs, 2);
        assert_eq!(c.partitions[2].1.queue_pairs, 1);
        assert_eq!(c.partitions[2].1.queue_size, 1024);
        assert_eq!(c.partitions[2].1.mtu, 9000);
    }

    #[test]
    fn socket_access_is_parsed_and_checked() {
        let c = Config::resolve(Settings::default()).unwrap();
        assert_eq!((c.data_access.mode, c.control_access.mode), (0o660, 0o600));
        let s: Settings = toml::from_str(
            "socket_mode = \"0666\"\nsocket_group = \"root\"\ncontrol_group = \"0\"",
        )
        .unwrap();
        let c = Config::resolve(s).unwrap();
        assert_eq!(
            c.data_access,
            Access {
                mode: 0o666,
                gid: Some(0)
            }
        );
        assert_eq!(c.control_access.gid, Some(0));
        for (bad, needle) in [
            (
                "socket_mode = \"rw\"",
                "socket_mode: \"rw\" is not an octal mode",
            ),
            (
                "control_mode = \"1777\"",
                "control_mode: 1777 has bits beyond 0777",
            ),
            (
                "socket_group = \"no-such-group-here\"",
                "socket_group: no group named",
            ),
        ] {
            let s: Settings = toml::from_str(bad).unwrap();
            let e = Config::resolve(s).unwrap_err().to_string();
            assert!(e.starts_with(needle), "{bad}: {e}");
        }
    }

    #[test]
    fn cli_overlay_wins() {
        let file: Settings = toml::from_str("vfs = 2\nmtu = 9000").unwrap();
        let cli = Settings {
            vfs: Some(7),
            poll_us: Some(50),
            ..Default::default()
        };
        let c = Config::resolve(file.overlay(cli)).unwrap();
        assert_eq!(c.vfs(), 7);
        assert_eq!(c.poll_us, 50, "every flag reaches the config");
        assert_eq!(c.partitions[1].1.mtu, 9000);
    }

    #[test]
    fn each_bad_input_names_its_field() {
        assert_eq!(err("vfs = 0"), "vfs: 0 is out of range 1..=255");
        assert_eq!(err("vfs = 256"), "vfs: 256 is out of range 1..=255");
        assert!(err("[vf.0]\nmac = \"02:00:00:00:00\"").contains("invalid MAC address"));
        assert_eq!(
            err("[vf.1]\nmac = \"02:53:52:00:00:00\""),
            "vf.1.mac: 02:53:52:00:00:00 is already used by pf"
        );
        assert!(err("[vf.0]\nmac = \"01:00:5e:00:00:01\"").starts_with("vf.0.mac: "));
        assert!(err("bogus = 1").contains("unknown field `bogus`"));
        assert!(err("[pf]\nspeed = 1").contains("unknown field `speed`"));
        assert!(err("vfs = 2\n[vf.2]\nmtu = 1500").starts_with("vf.2: no such VF"));
        assert!(err("[vf.x]\nmtu = 1500").starts_with("vf.x: "));
        assert!(err("queue_size = 100").starts_with("queue_size: 100 must be a power of two"));
        assert!(err("[vf.3]\nqueue_pairs = 0").starts_with("vf.3.queue_pairs: 0 is out of range"));
        assert!(err("mtu = 20").starts_with("mtu: 20 is below"));
        assert!(err("base_mac = \"02:00:00:ff:ff:fe\"").starts_with("base_mac: "));
        assert!(err("poll_us = 10001").starts_with("poll_us: 10001 is above"));
    }
}
