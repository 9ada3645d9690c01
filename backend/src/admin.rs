//! Per-partition administration, the "firmware" settings an operator sets from the PF side
//! (`ip link set PF vf N ...` on a real NIC): MAC, port VLAN, rate limits, anti-spoof, trust and
//! link state. This module holds the settings and their validation, in the kernel's and the
//! drivers' terms (netdevsim, `rtnl_set_vf_rate`, ixgbe/mlx5); the switch enforces them.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::mac::MacAddr;

/// `state auto|enable|disable` (IFLA_VF_LINK_STATE_*).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LinkState {
    /// Follows the uplink's link; up while there is no uplink.
    #[default]
    Auto,
    /// Always up.
    Enable,
    /// Always down: nothing sent is forwarded, nothing is delivered.
    Disable,
}

impl LinkState {
    pub fn as_str(&self) -> &'static str {
        match self {
            LinkState::Auto => "auto",
            LinkState::Enable => "enable",
            LinkState::Disable => "disable",
        }
    }
}

impl FromStr for LinkState {
    type Err = AdminError;
    fn from_str(s: &str) -> Result<Self, AdminError> {
        match s {
            "auto" => Ok(LinkState::Auto),
            "enable" => Ok(LinkState::Enable),
            "disable" => Ok(LinkState::Disable),
            _ => Err(AdminError::State(s.to_string())),
        }
    }
}

impl<'de> Deserialize<'de> for LinkState {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// `proto 802.1Q|802.1ad`: the TPID of the port VLAN's tag.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum VlanProto {
    #[default]
    Dot1Q,
    Dot1Ad,
}

impl VlanProto {
    pub fn tpid(&self) -> u16 {
        match self {
            VlanProto::Dot1Q => 0x8100,
            VlanProto::Dot1Ad => 0x88a8,
        }
    }

    pub fn as_str(&self) -> &'static str {
        match self {
            VlanProto::Dot1Q => "802.1Q",
            VlanProto::Dot1Ad => "802.1ad",
        }
    }
}

impl FromStr for VlanProto {
    type Err = AdminError;
    fn from_str(s: &str) -> Result<Self, AdminError> {
        // iproute2 accepts either spelling's case.
        match s.to_ascii_lowercase().as_str() {
            "802.1q" => Ok(VlanProto::Dot1Q),
            "802.1ad" => Ok(VlanProto::Dot1Ad),
            _ => Err(AdminError::Proto(s.to_string())),
        }
    }
}

impl fmt::Display for VlanProto {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Serialize for VlanProto {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for VlanProto {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// A port VLAN: the partition's frames are tagged on the way in and untagged on the way out.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PortVlan {
    /// 1..=4095.
    pub id: u16,
    /// 802.1p priority, 0..=7.
    pub qos: u8,
    pub proto: VlanProto,
}

impl PortVlan {
    /// The tag control information: priority in the top three bits, VLAN id below.
    pub fn tci(&self) -> u16 {
        (u16::from(self.qos) << 13) | self.id
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum AdminError {
    #[error("mac {0}: a multicast address cannot be a port's address")]
    MulticastMac(MacAddr),
    #[error("mac {0}: the all-zero address cannot be a port's address")]
    ZeroMac(MacAddr),
    #[error("mac {mac} is already {owner}'s")]
    MacInUse { mac: MacAddr, owner: String },
    #[error("vlan {0} is out of range (0..=4095; 0 clears the port VLAN)")]
    Vlan(u32),
    #[error("qos {0} is out of range (0..=7)")]
    Qos(u32),
    #[error("qos {0} needs a VLAN (vlan 0 clears the port VLAN)")]
    QosWithoutVlan(u8),
    #[error("proto {0:?}: only 802.1Q and 802.1ad are supported")]
    Proto(String),
    #[error("proto needs a VLAN (vlan 0 clears the port VLAN)")]
    ProtoWithoutVlan,
    #[error("max_tx_rate {max} Mbit/s is below min_tx_rate {min} Mbit/s (max_tx_rate 0 means unlimited)")]
    RateOrder { max: u32, min: u32 },
    #[error("state {0:?}: expected auto, enable or disable")]
    State(String),
}

/// Everything an operator sets on one partition. Defaults match a real NIC's fresh VF: no port
/// VLAN, no rate limit, anti-spoof on, untrusted, link `auto`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Admin {
    pub mac: MacAddr,
    pub vlan: Option<PortVlan>,
    /// Mbit/s of the partition's TX; 0 = unlimited.
    pub max_tx_rate: u32,
    /// Mbit/s guaranteed when partitions contend for one forwarding thread; 0 = none.
    pub min_tx_rate: u32,
    pub spoofchk: bool,
    pub trust: bool,
    pub state: LinkState,
}

impl Admin {
    pub fn new(mac: MacAddr) -> Admin {
        Admin {
            mac,
            vlan: None,
            max_tx_rate: 0,
            min_tx_rate: 0,
            spoofchk: true,
            trust: false,
            state: LinkState::Auto,
        }
    }

    /// Whether the link is up, given the uplink's (`true` while there is none).
    pub fn link_up(&self, uplink_up: bool) -> bool {
        match self.state {
            LinkState::Auto => uplink_up,
            LinkState::Enable => true,
            LinkState::Disable => false,
        }
    }

    /// These settings with `c` applied, or why not: validation happens before anything
    /// changes, so a refused change changes nothing.
    pub fn apply(&self, c: &AdminChange) -> Result<Admin, AdminError> {
        let mut a = *self;
        if let Some(mac) = c.mac {
            check_mac(mac)?;
            a.mac = mac;
        }
        if let Some(id) = c.vlan {
            if id > 4095 {
                return Err(AdminError::Vlan(id));
            }
            let qos = c.qos.unwrap_or(0);
            if qos > 7 {
                return Err(AdminError::Qos(qos));
            }
            let qos = qos as u8;
            if id == 0 {
                if qos != 0 {
                    return Err(AdminError::QosWithoutVlan(qos));
                }
                if c.proto.is_some_and(|p| p != VlanProto::Dot1Q) {
                    return Err(AdminError::ProtoWithoutVlan);
                }
                a.vlan = None;
            } else {
                a.vlan = Some(PortVlan {
                    id: id as u16,
                    qos,
                    proto: c.proto.unwrap_or_default(),
                });
            }
        } else if let Some(q) = c.qos {
            return Err(if q > 7 {
                AdminError::Qos(q)
            } else {
                AdminError::QosWithoutVlan(q as u8)
            });
        } else if c.proto.is_some() {
            return Err(AdminError::ProtoWithoutVlan);
        }
        if let Some(m) = c.max_tx_rate {
            a.max_tx_rate = m;
        }
        if let Some(m) = c.min_tx_rate {
            a.min_tx_rate = m;
        }
        // rtnl_set_vf_rate: max 0 is unlimited, otherwise it may not be below min.
        if a.max_tx_rate != 0 && a.max_tx_rate < a.min_tx_rate {
            return Err(AdminError::RateOrder {
                max: a.max_tx_rate,
                min: a.min_tx_rate,
            });
        }
        if let Some(s) = c.spoofchk {
            a.spoofchk = s;
        }
        if let Some(t) = c.trust {
            a.trust = t;
        }
        if let Some(s) = c.state {
            a.state = s;
        }
        Ok(a)
    }
}

/// What the guest's driver asked of its NIC through the control queue, as QEMU reports it
/// (QMP `query-rx-filter`): QEMU handles the control queue and never tells a vhost-user backend.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct GuestRx {
    pub mac: MacAddr,
    pub promiscuous: bool,
    pub allmulticast: bool,
}

/// A port's own address must be a unicast, non-zero one.
pub fn check_mac(mac: MacAddr) -> Result<(), AdminError> {
    if mac.is_group() {
        return Err(AdminError::MulticastMac(mac));
    }
    if mac.is_zero() {
        return Err(AdminError::ZeroMac(mac));
    }
    Ok(())
}

/// One `ip link set ... vf N` worth of changes; what is None stays as it is. `vlan`, `qos` and
/// `max_tx_rate`/`min_tx_rate` are wide so out-of-range values reach validation and get its
/// error rather than a parse error.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdminChange {
    #[serde(default)]
    pub mac: Option<MacAddr>,
    #[serde(default)]
    pub vlan: Option<u32>,
    #[serde(default)]
    pub qos: Option<u32>,
    #[serde(default)]
    pub proto: Option<VlanProto>,
    #[serde(default)]
    pub max_tx_rate: Option<u32>,
    #[serde(default)]
    pub min_tx_rate: Option<u32>,
    #[serde(default)]
    pub spoofchk: Option<bool>,
    #[serde(default)]
    pub trust: Option<bool>,
    #[serde(default)]
    pub state: Option<LinkState>,
}

impl AdminChange {
    pub fn is_empty(&self) -> bool {
        *self == AdminChange::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn base() -> Admin {
        Admin::new("02:00:00:00:00:01".parse().unwrap())
    }

    fn change(f: impl FnOnce(&mut AdminChange)) -> AdminChange {
        let mut c = AdminChange::default();
        f(&mut c);
        c
    }

    #[test]
    fn defaults_are_a_fresh_vfs() {
        let a = base();
        assert!(a.spoofchk && !a.trust && a.vlan.is_none());
        assert_eq!(
            (a.max_tx_rate, a.min_tx_rate, a.state),
            (0, 0, LinkState::Auto)
        );
        assert!(a.link_up(true) && !a.link_up(false));
    }

    #[test]
    fn every_rule_refuses_and_changes_nothing() {
        let a = base();
        let cases: Vec<(AdminChange, AdminError)> = vec![
            (
                change(|c| c.mac = Some("01:00:5e:00:00:01".parse().unwrap())),
                AdminError::MulticastMac("01:00:5e:00:00:01".parse().unwrap()),
            ),
            (
                change(|c| c.mac = Some("00:00:00:00:00:00".parse().unwrap())),
                AdminError::ZeroMac("00:00:00:00:00:00".parse().unwrap()),
            ),
            (change(|c| c.vlan = Some(4096)), AdminError::Vlan(4096)),
            (
                change(|c| {
                    c.vlan = Some(5);
                    c.qos = Some(8)
                }),
                AdminError::Qos(8),
            ),
            (change(|c| c.qos = Some(3)), AdminError::QosWithoutVlan(3)),
            (
                change(|c| {
                    c.vlan = Some(0);
                    c.qos = Some(1)
                }),
                AdminError::QosWithoutVlan(1),
            ),
            (
                change(|c| c.proto = Some(VlanProto::Dot1Ad)),
                AdminError::ProtoWithoutVlan,
            ),
            (
                change(|c| {
                    c.max_tx_rate = Some(100);
                    c.min_tx_rate = Some(200)
                }),
                AdminError::RateOrder { max: 100, min: 200 },
            ),
        ];
        for (c, want) in cases {
            assert_eq!(a.apply(&c), Err(want), "{c:?}");
        }
        assert_eq!(
            "up".parse::<LinkState>(),
            Err(AdminError::State("up".into()))
        );
        assert_eq!(
            "802.1x".parse::<VlanProto>(),
            Err(AdminError::Proto("802.1x".into()))
        );
    }

    #[test]
    fn accepted_changes_apply_and_vlan_0_clears() {
        let a = base()
            .apply(&change(|c| {
                c.vlan = Some(5);
                c.qos = Some(1);
                c.proto = Some("802.1AD".parse().unwrap());
                c.max_tx_rate = Some(100);
                c.spoofchk = Some(false);
                c.trust = Some(true);
                c.state = Some(LinkState::Disable);
            }))
            .unwrap();
        assert_eq!(
            a.vlan,
            Some(PortVlan {
                id: 5,
                qos: 1,
                proto: VlanProto::Dot1Ad
            })
        );
        assert_eq!(a.vlan.unwrap().tci(), (1 << 13) | 5);
        assert_eq!((a.max_tx_rate, a.spoofchk, a.trust), (100, false, true));
        assert!(!a.link_up(true));
        // max 0 (unlimited) with a min is fine, as in rtnl_set_vf_rate.
        let b = a
            .apply(&change(|c| {
                c.max_tx_rate = Some(0);
                c.min_tx_rate = Some(50);
                c.vlan = Some(0);
            }))
            .unwrap();
        assert_eq!((b.vlan, b.max_tx_rate, b.min_tx_rate), (None, 0, 50));
        // Setting min later is checked against the max in force.
        let c = base().apply(&change(|c| c.max_tx_rate = Some(10))).unwrap();
        assert!(c.apply(&change(|c| c.min_tx_rate = Some(11))).is_err());
    }

    #[test]
    fn json_change_is_strict() {
        let c: AdminChange =
            serde_json::from_str(r#"{"vlan":5,"proto":"802.1ad","state":"enable"}"#).unwrap();
        assert_eq!(c.proto, Some(VlanProto::Dot1Ad));
        assert!(serde_json::from_str::<AdminChange>(r#"{"colour":1}"#).is_err());
        assert!(serde_json::from_str::<AdminChange>(r#"{"state":"up"}"#).is_err());
    }
}
