//! Daemon configuration: built-in defaults, an optional TOML file and CLI flags (which win),
//! resolved into one validated partition table. Every error names the field it is about.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use backend::admin::{Admin, AdminChange, LinkState, VlanProto};
use backend::mac::MacAddr;
use backend::partition::{PartitionConfig, Role};
use serde::{Deserialize, Serialize};

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
/// Event-driven mode: how long a worker keeps looking at a TX queue that ran dry. 20 us covers
/// the gap between a sender's bursts at line rate (one-way benchmark: 0.96x -> 1.05x DPDK at
/// 64 B); a trickle of frames pays it after each one, in CPU yielded to any other thread.
pub const DEFAULT_LINGER_US: u32 = 20;
pub const MAX_LINGER_US: u32 = 1_000;
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
    /// Event-driven mode: microseconds a worker keeps looking at a TX queue that ran dry.
    pub linger_us: Option<u32>,
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
    /// `[[uplink]]` entries; `--uplink` flags replace them.
    pub uplink: Option<Vec<UplinkSettings>>,
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
            linger_us,
            socket_mode,
            socket_group,
            control_mode,
            control_group,
            pf,
            vf,
            uplink,
        } = other;
        Settings {
            socket_dir: socket_dir.or(self.socket_dir),
            vfs: vfs.or(self.vfs),
            base_mac: base_mac.or(self.base_mac),
            queue_pairs: queue_pairs.or(self.queue_pairs),
            queue_size: queue_size.or(self.queue_size),
            mtu: mtu.or(self.mtu),
            poll_us: poll_us.or(self.poll_us),
            linger_us: linger_us.or(self.linger_us),
            socket_mode: socket_mode.or(self.socket_mode),
            socket_group: socket_group.or(self.socket_group),
            control_mode: control_mode.or(self.control_mode),
            control_group: control_group.or(self.control_group),
            pf: pf.or(self.pf),
            vf: vf.or(self.vf),
            uplink: uplink.or(self.uplink),
        }
    }
}

/// A resolved, valid configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    pub socket_dir: PathBuf,
    pub poll_us: u32,
    /// Used when `poll_us` is 0 (see [`DEFAULT_LINGER_US`]).
    pub linger_us: u32,
    /// Who may connect to the PF and VF sockets, and to control.sock.
    pub data_access: Access,
    pub control_access: Access,
    /// Index 0 is the PF, then VF 0..n.
    pub partitions: Vec<(Role, PartitionConfig)>,
    /// Each partition's admin settings at start (same index), already validated.
    pub admin: Vec<AdminChange>,
    /// Uplink ports, in order (`uplink0`, `uplink1`, ...).
    pub uplinks: Vec<UplinkPlan>,
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
        let poll_us = at_most("poll_us", s.poll_us.unwrap_or(0), MAX_POLL_US)?;
        let linger_us = at_most(
            "linger_us",
            s.linger_us.unwrap_or(DEFAULT_LINGER_US),
            MAX_LINGER_US,
        )?;
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
        let socket_dir = s
            .socket_dir
            .unwrap_or_else(|| PathBuf::from(DEFAULT_SOCKET_DIR));
        let uplinks = resolve_uplinks(
            s.uplink.as_deref().unwrap_or_default(),
            &socket_dir,
            s.mtu.unwrap_or(DEFAULT_MTU),
            &partitions,
        )?;
        Ok(Config {
            poll_us,
            linger_us,
            data_access,
            control_access,
            socket_dir,
            partitions,
            admin,
            uplinks,
        })
    }
}

/// `value` of setting `field`, refused above `max`.
fn at_most(field: &str, value: u32, max: u32) -> Result<u32, ConfigError> {
    if value > max {
        return Err(invalid(
            field,
            format!("{value} is above the maximum of {max}"),
        ));
    }
    Ok(value)
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

/// One `[[uplink]]` entry, or one `--uplink` flag (its `FromStr` reads the flag).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(tag = "kind", rename_all = "lowercase", deny_unknown_fields)]
pub enum UplinkSettings {
    /// A Linux tap (opened, or created if missing) with a virtio-net header.
    Tap {
        name: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        mtu: Option<u16>,
    },
    /// A Unix socket speaking QEMU's `-netdev stream` framing; relative to `socket_dir`.
    Stream {
        path: PathBuf,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        mtu: Option<u16>,
    },
    /// A VXLAN segment (RFC 7348) over UDP: local `ADDR[:PORT]`, remotes `ADDR[:PORT]`, port
    /// 4789 by default.
    Vxlan {
        vni: u32,
        local: String,
        remote: Vec<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        mtu: Option<u16>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        underlay_mtu: Option<u16>,
    },
}

impl std::str::FromStr for UplinkSettings {
    type Err = String;

    /// `tap:NAME[,mtu=N]`, `stream:PATH[,mtu=N]` or
    /// `vxlan:VNI,local=ADDR[:PORT],remote=ADDR[:PORT][,remote=...][,mtu=N][,underlay_mtu=N]`.
    fn from_str(spec: &str) -> Result<Self, String> {
        let usage =
            "expected tap:NAME, stream:PATH or vxlan:VNI,local=ADDR[:PORT],remote=ADDR[:PORT]";
        let (kind, rest) = spec
            .split_once(':')
            .ok_or_else(|| format!("{spec:?}: {usage}"))?;
        let mut parts = rest.split(',');
        let first = parts.next().unwrap_or_default().to_string();
        let (mut mtu, mut underlay_mtu, mut local, mut remote) = (None, None, None, Vec::new());
        for kv in parts {
            let (k, v) = kv
                .split_once('=')
                .ok_or_else(|| format!("{spec:?}: {kv:?} is not KEY=VALUE"))?;
            let num = |v: &str| {
                v.parse::<u16>()
                    .map_err(|_| format!("{spec:?}: {k}={v} is not a number up to 65535"))
            };
            match (kind, k) {
                (_, "mtu") => mtu = Some(num(v)?),
                ("vxlan", "underlay_mtu") => underlay_mtu = Some(num(v)?),
                ("vxlan", "local") => local = Some(v.to_string()),
                ("vxlan", "remote") => remote.push(v.to_string()),
                _ => return Err(format!("{spec:?}: unknown option {k:?} for {kind}")),
            }
        }
        Ok(match kind {
            "tap" => UplinkSettings::Tap { name: first, mtu },
            "stream" => UplinkSettings::Stream {
                path: PathBuf::from(first),
                mtu,
            },
            "vxlan" => UplinkSettings::Vxlan {
                vni: first
                    .parse()
                    .map_err(|_| format!("{spec:?}: VNI {first:?} is not a number"))?,
                local: local.ok_or_else(|| format!("{spec:?}: vxlan needs local=ADDR[:PORT]"))?,
                remote,
                mtu,
                underlay_mtu,
            },
            other => return Err(format!("{spec:?}: unknown uplink kind {other:?}; {usage}")),
        })
    }
}

/// The IANA port for VXLAN (Linux's default is 8472: give `dstport 4789` to its vxlan devices).
pub const VXLAN_PORT: u16 = 4789;
/// Bytes VXLAN adds to each frame on the underlay: outer IPv4 (20) + UDP (8) + VXLAN (8) +
/// the inner Ethernet header (14), which the inner MTU does not count. 70 over IPv6.
pub const VXLAN_OVERHEAD_V4: u16 = 50;
pub const VXLAN_OVERHEAD_V6: u16 = 70;

/// A validated uplink.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UplinkPlan {
    pub kind: UplinkKind,
    pub mtu: u16,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UplinkKind {
    Tap {
        name: String,
    },
    Stream {
        path: PathBuf,
    },
    Vxlan {
        vni: u32,
        local: SocketAddr,
        remotes: Vec<SocketAddr>,
        underlay_mtu: u16,
    },
}

impl UplinkPlan {
    pub fn kind_name(&self) -> &'static str {
        match self.kind {
            UplinkKind::Tap { .. } => "tap",
            UplinkKind::Stream { .. } => "stream",
            UplinkKind::Vxlan { .. } => "vxlan",
        }
    }

    /// The canonical spec (what `--uplink` takes; `show` prints it; `dump-config` reads it).
    pub fn spec(&self) -> String {
        match &self.kind {
            UplinkKind::Tap { name } => format!("tap:{name},mtu={}", self.mtu),
            UplinkKind::Stream { path } => format!("stream:{},mtu={}", path.display(), self.mtu),
            UplinkKind::Vxlan {
                vni,
                local,
                remotes,
                underlay_mtu,
            } => {
                let mut s = format!("vxlan:{vni},local={local}");
                for r in remotes {
                    s += &format!(",remote={r}");
                }
                s + &format!(",mtu={},underlay_mtu={underlay_mtu}", self.mtu)
            }
        }
    }
}

/// `ADDR[:PORT]` (IPv6 with a port as `[ADDR]:PORT`), port 4789 by default.
pub fn parse_vtep(s: &str) -> Result<SocketAddr, String> {
    if let Ok(a) = s.parse::<SocketAddr>() {
        return Ok(a);
    }
    let ip = s.trim_start_matches('[').trim_end_matches(']');
    ip.parse::<std::net::IpAddr>()
        .map(|ip| SocketAddr::new(ip, VXLAN_PORT))
        .map_err(|_| format!("{s:?} is not ADDR or ADDR:PORT"))
}

fn resolve_uplinks(
    list: &[UplinkSettings],
    socket_dir: &Path,
    global_mtu: u16,
    partitions: &[(Role, PartitionConfig)],
) -> Result<Vec<UplinkPlan>, ConfigError> {
    let mut out: Vec<UplinkPlan> = Vec::with_capacity(list.len());
    for (i, u) in list.iter().enumerate() {
        let field = |k: &str| format!("uplink.{i}.{k}");
        let (kind, mtu) = match u {
            UplinkSettings::Tap { name, mtu } => {
                let ok = !name.is_empty()
                    && name.len() < 16
                    && !name.contains(['/', ':', ',', '%'])
                    && !name.chars().any(char::is_whitespace)
                    && name != "."
                    && name != "..";
                if !ok {
                    return Err(invalid(
                        field("name"),
                        format!("{name:?} is not an interface name (1..=15 characters, no '/', ':' or spaces)"),
                    ));
                }
                (UplinkKind::Tap { name: name.clone() }, *mtu)
            }
            UplinkSettings::Stream { path, mtu } => {
                if path.as_os_str().is_empty() {
                    return Err(invalid(field("path"), "a socket path is needed"));
                }
                let path = socket_dir.join(path);
                let taken = path.parent() == Some(socket_dir)
                    && path.file_name().is_some_and(|f| {
                        let f = f.to_string_lossy();
                        f == "control.sock"
                            || f == "pf.sock"
                            || (f.starts_with("vf") && f.ends_with(".sock"))
                    });
                if taken {
                    return Err(invalid(
                        field("path"),
                        format!("{} is a partition's or the control socket", path.display()),
                    ));
                }
                (UplinkKind::Stream { path }, *mtu)
            }
            UplinkSettings::Vxlan {
                vni,
                local,
                remote,
                mtu,
                underlay_mtu,
            } => {
                if *vni > 0x00ff_ffff {
                    return Err(invalid(
                        field("vni"),
                        format!("{vni} does not fit 24 bits (0..=16777215)"),
                    ));
                }
                let local = parse_vtep(local).map_err(|e| invalid(field("local"), e))?;
                if remote.is_empty() {
                    return Err(invalid(
                        field("remote"),
                        "at least one remote VTEP is needed (head-end replication)",
                    ));
                }
                let mut remotes = Vec::with_capacity(remote.len());
                for r in remote {
                    let a = parse_vtep(r).map_err(|e| invalid(field("remote"), e))?;
                    if a.is_ipv4() != local.is_ipv4() {
                        return Err(invalid(
                            field("remote"),
                            format!("{a} is not of the local address's family ({local})"),
                        ));
                    }
                    if a == local {
                        return Err(invalid(field("remote"), format!("{a} is the local VTEP")));
                    }
                    if !remotes.contains(&a) {
                        remotes.push(a);
                    }
                }
                let underlay = underlay_mtu.unwrap_or(DEFAULT_MTU);
                let overhead = if local.is_ipv4() {
                    VXLAN_OVERHEAD_V4
                } else {
                    VXLAN_OVERHEAD_V6
                };
                let inner = mtu.unwrap_or(global_mtu);
                if u32::from(inner) + u32::from(overhead) > u32::from(underlay) {
                    return Err(invalid(
                        if mtu.is_some() { field("mtu") } else { format!("uplink.{i}") },
                        format!(
                            "MTU {inner} + {overhead} bytes of VXLAN overhead exceeds underlay_mtu {underlay}: set mtu = {} here and on the partitions, or raise underlay_mtu",
                            underlay.saturating_sub(overhead)
                        ),
                    ));
                }
                for (role, pc) in partitions {
                    if pc.mtu > inner {
                        return Err(invalid(
                            format!("uplink.{i}"),
                            format!(
                                "{} has MTU {} above this VXLAN segment's {inner}: its larger frames would be dropped",
                                role.name(),
                                pc.mtu
                            ),
                        ));
                    }
                }
                (
                    UplinkKind::Vxlan {
                        vni: *vni,
                        local,
                        remotes,
                        underlay_mtu: underlay,
                    },
                    Some(inner),
                )
            }
        };
        let mtu = mtu.unwrap_or(global_mtu);
        if mtu < 68 {
            return Err(invalid(
                field("mtu"),
                format!("{mtu} is below the IPv4 minimum of 68"),
            ));
        }
        let plan = UplinkPlan { kind, mtu };
        if let Some(j) = out.iter().position(|o| same_endpoint(&o.kind, &plan.kind)) {
            return Err(invalid(
                format!("uplink.{i}"),
                format!("{} is also uplink.{j}", plan.spec()),
            ));
        }
        out.push(plan);
    }
    Ok(out)
}

fn same_endpoint(a: &UplinkKind, b: &UplinkKind) -> bool {
    match (a, b) {
        (UplinkKind::Tap { name: x }, UplinkKind::Tap { name: y }) => x == y,
        (UplinkKind::Stream { path: x }, UplinkKind::Stream { path: y }) => x == y,
        (UplinkKind::Vxlan { local: x, .. }, UplinkKind::Vxlan { local: y, .. }) => x == y,
        _ => false,
    }
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
        assert_eq!(
            (c.poll_us, c.linger_us),
            (0, 20),
            "event-driven, lingering 20 us"
        );
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
            linger_us: Some(0),
            ..Default::default()
        };
        let c = Config::resolve(file.overlay(cli)).unwrap();
        assert_eq!(c.vfs(), 7);
        assert_eq!(c.poll_us, 50, "every flag reaches the config");
        assert_eq!(c.linger_us, 0);
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
        assert!(err("linger_us = 1001").starts_with("linger_us: 1001 is above"));
    }

    #[test]
    fn uplinks_from_the_file_and_from_specs() {
        let c = parse(
            r#"
            socket_dir = "/run/x"
            mtu = 1450
            [[uplink]]
            kind = "stream"
            path = "wire0.sock"
            [[uplink]]
            kind = "tap"
            name = "sriov0"
            mtu = 9000
            [[uplink]]
            kind = "vxlan"
            vni = 42
            local = "127.0.0.1"
            remote = ["127.0.0.2", "127.0.0.3:5000"]
            "#,
        )
        .unwrap();
        assert_eq!(c.uplinks.len(), 3);
        assert_eq!(
            c.uplinks[0].kind,
            UplinkKind::Stream {
                path: "/run/x/wire0.sock".into()
            },
            "relative to the socket directory"
        );
        assert_eq!(c.uplinks[0].mtu, 1450, "the global MTU by default");
        assert_eq!(c.uplinks[1].spec(), "tap:sriov0,mtu=9000");
        assert_eq!(
            c.uplinks[2].spec(),
            "vxlan:42,local=127.0.0.1:4789,remote=127.0.0.2:4789,remote=127.0.0.3:5000,mtu=1450,underlay_mtu=1500"
        );
        // Every canonical spec parses back to the same plan.
        for u in &c.uplinks {
            let again: UplinkSettings = u.spec().parse().unwrap();
            let s = Settings {
                socket_dir: Some("/run/x".into()),
                mtu: Some(1450),
                uplink: Some(vec![again]),
                ..Default::default()
            };
            assert_eq!(&Config::resolve(s).unwrap().uplinks[0], u);
        }
        let spec: UplinkSettings = "vxlan:7,local=[::1]:4790,remote=::2,underlay_mtu=9000"
            .parse()
            .unwrap();
        assert_eq!(
            spec,
            UplinkSettings::Vxlan {
                vni: 7,
                local: "[::1]:4790".into(),
                remote: vec!["::2".into()],
                mtu: None,
                underlay_mtu: Some(9000)
            }
        );
    }

    #[test]
    fn bad_uplinks_name_their_field() {
        let bad_spec = |s: &str| s.parse::<UplinkSettings>().unwrap_err();
        assert!(bad_spec("wire0.sock").contains("expected tap:NAME"));
        assert!(bad_spec("ether:x").contains("unknown uplink kind"));
        assert!(bad_spec("tap:t0,speed=1").contains("unknown option \"speed\""));
        assert!(bad_spec("vxlan:x,local=1.2.3.4").contains("VNI"));
        assert!(bad_spec("vxlan:1,remote=1.2.3.4").contains("needs local="));
        assert!(err("[[uplink]]\nkind = \"tap\"\nname = \"t0\"\ncolour = 1")
            .contains("unknown field `colour`"));
        assert!(err("[[uplink]]\nkind = \"wire\"").contains("unknown variant `wire`"));
        assert!(err("[[uplink]]\nkind = \"tap\"\nname = \"a/b\"").starts_with("uplink.0.name: "));
        assert!(err("[[uplink]]\nkind = \"stream\"\npath = \"vf0.sock\"")
            .starts_with("uplink.0.path: "));
        let vx = |extra: &str| {
            err(&format!(
                "mtu = 1450\n[[uplink]]\nkind = \"vxlan\"\nvni = 5\nlocal = \"127.0.0.1\"\n{extra}"
            ))
        };
        assert!(vx("remote = []").starts_with("uplink.0.remote: at least one"));
        assert!(vx("remote = [\"::1\"]").contains("family"));
        assert!(vx("remote = [\"127.0.0.1\"]").contains("is the local VTEP"));
        assert!(err(
            "mtu = 1450\n[[uplink]]\nkind = \"vxlan\"\nvni = 16777216\nlocal = \"127.0.0.1\"\nremote = [\"127.0.0.2\"]"
        )
        .starts_with("uplink.0.vni: 16777216 does not fit"));
        assert_eq!(
            vx("remote = [\"127.0.0.2\"]\nmtu = 1460"),
            "uplink.0.mtu: MTU 1460 + 50 bytes of VXLAN overhead exceeds underlay_mtu 1500: set mtu = 1450 here and on the partitions, or raise underlay_mtu"
        );
        // The partitions' MTU is checked too: the default 1500 does not fit.
        assert_eq!(
            err("[[uplink]]\nkind = \"vxlan\"\nvni = 5\nlocal = \"127.0.0.1\"\nremote = [\"127.0.0.2\"]\nmtu = 1450"),
            "uplink.0: pf has MTU 1500 above this VXLAN segment's 1450: its larger frames would be dropped"
        );
        assert!(err("mtu = 1500\n[[uplink]]\nkind = \"vxlan\"\nvni = 5\nlocal = \"127.0.0.1\"\nremote = [\"127.0.0.2\"]")
            .starts_with("uplink.0: MTU 1500 + 50 bytes"));
        assert!(vx("remote = [\"127.0.0.2\"]\nunderlay_mtu = 1400")
            .contains("exceeds underlay_mtu 1400"));
        let two =
            "[[uplink]]\nkind = \"tap\"\nname = \"t0\"\n[[uplink]]\nkind = \"tap\"\nname = \"t0\"";
        assert!(err(two).starts_with("uplink.1: tap:t0,mtu=1500 is also uplink.0"));
    }
}
