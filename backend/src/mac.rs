//! Ethernet MAC addresses: parsing, formatting and the address classes the switch cares about.

use std::fmt;
use std::str::FromStr;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct MacAddr(pub [u8; 6]);

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("invalid MAC address {0:?}: expected six hex octets like 02:00:00:00:00:01")]
pub struct MacParseError(pub String);

impl MacAddr {
    pub const BROADCAST: MacAddr = MacAddr([0xff; 6]);

    pub fn is_broadcast(&self) -> bool {
        *self == Self::BROADCAST
    }

    /// Group (I/G) bit set: multicast or broadcast.
    pub fn is_group(&self) -> bool {
        self.0[0] & 1 != 0
    }

    pub fn is_multicast(&self) -> bool {
        self.is_group() && !self.is_broadcast()
    }

    /// The address as an integer: a table key that hashes with one multiply.
    pub fn key(&self) -> u64 {
        let b = self.0;
        u64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], b[5], 0, 0])
    }

    pub fn is_zero(&self) -> bool {
        self.0 == [0; 6]
    }

    /// The address `n` steps after this one, treating the low three octets as a counter (the
    /// OUI-like high half stays fixed, as NIC vendors allocate VF MACs).
    pub fn offset(&self, n: u32) -> Option<MacAddr> {
        let low = u32::from_be_bytes([0, self.0[3], self.0[4], self.0[5]]);
        let v = low.checked_add(n).filter(|v| *v <= 0x00ff_ffff)?;
        let b = v.to_be_bytes();
        Some(MacAddr([self.0[0], self.0[1], self.0[2], b[1], b[2], b[3]]))
    }
}

impl FromStr for MacAddr {
    type Err = MacParseError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = || MacParseError(s.to_string());
        let mut out = [0u8; 6];
        let mut parts = s.split(':');
        for o in out.iter_mut() {
            let p = parts.next().ok_or_else(err)?;
            if p.len() != 2 {
                return Err(err());
            }
            *o = u8::from_str_radix(p, 16).map_err(|_| err())?;
        }
        if parts.next().is_some() {
            return Err(err());
        }
        Ok(MacAddr(out))
    }
}

impl fmt::Display for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let b = self.0;
        write!(
            f,
            "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
            b[0], b[1], b[2], b[3], b[4], b[5]
        )
    }
}

impl serde::Serialize for MacAddr {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for MacAddr {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_formats() {
        let m: MacAddr = "02:AB:00:00:10:ff".parse().unwrap();
        assert_eq!(m.0, [2, 0xab, 0, 0, 0x10, 0xff]);
        assert_eq!(m.to_string(), "02:ab:00:00:10:ff");
    }

    #[test]
    fn rejects_malformed() {
        for bad in [
            "",
            "02:00:00:00:00",
            "02:00:00:00:00:00:00",
            "2:00:00:00:00:00",
            "zz:00:00:00:00:00",
            "02-00-00-00-00-00",
        ] {
            assert!(bad.parse::<MacAddr>().is_err(), "{bad}");
        }
    }

    #[test]
    fn classes() {
        assert!(MacAddr::BROADCAST.is_broadcast());
        assert!(!MacAddr::BROADCAST.is_multicast());
        let mc: MacAddr = "01:00:5e:00:00:01".parse().unwrap();
        assert!(mc.is_multicast() && mc.is_group());
        let uc: MacAddr = "02:00:00:00:00:01".parse().unwrap();
        assert!(!uc.is_group());
    }

    #[test]
    fn offset_counts_in_low_half_and_stops_at_overflow() {
        let m: MacAddr = "02:00:00:00:00:ff".parse().unwrap();
        assert_eq!(m.offset(1).unwrap().to_string(), "02:00:00:00:01:00");
        let top: MacAddr = "02:00:00:ff:ff:ff".parse().unwrap();
        assert_eq!(top.offset(1), None);
    }
}
