//! The virtio-net header (`struct virtio_net_hdr_v1`, 12 bytes with VERSION_1) that precedes
//! every frame on the TX and RX queues.

/// Length of the header on the wire: VERSION_1 always carries `num_buffers`.
pub const NET_HDR_LEN: usize = 12;
/// An Ethernet header without a VLAN tag.
pub const ETH_HLEN: usize = 14;
/// What the switch reads of every TX frame: the virtio-net header and the Ethernet header.
pub const TX_HEADERS: usize = NET_HDR_LEN + ETH_HLEN;

/// `flags`: the checksum from `csum_start` to the end must be completed by the receiver.
pub const FLAG_NEEDS_CSUM: u8 = 1;
/// `flags`: the checksum was verified (RX only, needs GUEST_CSUM).
pub const FLAG_DATA_VALID: u8 = 2;

pub const GSO_NONE: u8 = 0;
pub const GSO_TCPV4: u8 = 1;
pub const GSO_UDP: u8 = 3;
pub const GSO_TCPV6: u8 = 4;
pub const GSO_UDP_L4: u8 = 5;
/// Bit or-ed into `gso_type` when the TCP stream uses ECN (CWR must only be on the first segment).
pub const GSO_ECN: u8 = 0x80;

/// Decoded `virtio_net_hdr_v1`. All multi-byte fields are little endian on the wire. Laid out
/// as on the wire, so that on a little-endian host parsing and writing it are plain copies.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[repr(C)]
pub struct NetHdr {
    pub flags: u8,
    pub gso_type: u8,
    pub hdr_len: u16,
    pub gso_size: u16,
    pub csum_start: u16,
    pub csum_offset: u16,
    pub num_buffers: u16,
}

// The layout `parse` and `to_bytes` rely on: the wire's, with no padding.
const _: () = {
    use std::mem::{offset_of, size_of};
    assert!(size_of::<NetHdr>() == NET_HDR_LEN);
    assert!(offset_of!(NetHdr, gso_type) == 1);
    assert!(offset_of!(NetHdr, hdr_len) == 2);
    assert!(offset_of!(NetHdr, gso_size) == 4);
    assert!(offset_of!(NetHdr, csum_start) == 6);
    assert!(offset_of!(NetHdr, csum_offset) == 8);
    assert!(offset_of!(NetHdr, num_buffers) == 10);
};

impl NetHdr {
    pub fn parse(b: &[u8; NET_HDR_LEN]) -> Self {
        // SAFETY: NetHdr is repr(C), NET_HDR_LEN bytes without padding (checked above), and any
        // bytes are a valid value; the read is unaligned. One copy instead of seven loads.
        let h: NetHdr = unsafe { std::ptr::read_unaligned(b.as_ptr().cast()) };
        NetHdr {
            hdr_len: u16::from_le(h.hdr_len),
            gso_size: u16::from_le(h.gso_size),
            csum_start: u16::from_le(h.csum_start),
            csum_offset: u16::from_le(h.csum_offset),
            num_buffers: u16::from_le(h.num_buffers),
            ..h
        }
    }

    pub fn to_bytes(&self) -> [u8; NET_HDR_LEN] {
        let le = NetHdr {
            hdr_len: self.hdr_len.to_le(),
            gso_size: self.gso_size.to_le(),
            csum_start: self.csum_start.to_le(),
            csum_offset: self.csum_offset.to_le(),
            num_buffers: self.num_buffers.to_le(),
            ..*self
        };
        // SAFETY: as in `parse`: the same size, no padding, so every byte is initialized.
        unsafe { std::mem::transmute::<NetHdr, [u8; NET_HDR_LEN]>(le) }
    }

    pub fn needs_csum(&self) -> bool {
        self.flags & FLAG_NEEDS_CSUM != 0
    }

    /// The GSO type without the ECN bit.
    pub fn gso_kind(&self) -> u8 {
        self.gso_type & !GSO_ECN
    }

    pub fn is_gso(&self) -> bool {
        self.gso_kind() != GSO_NONE
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_every_field_little_endian() {
        let h = NetHdr {
            flags: FLAG_NEEDS_CSUM,
            gso_type: GSO_TCPV4 | GSO_ECN,
            hdr_len: 0x0102,
            gso_size: 1448,
            csum_start: 34,
            csum_offset: 16,
            num_buffers: 3,
        };
        let b = h.to_bytes();
        assert_eq!(b[2..4], [0x02, 0x01]);
        assert_eq!(b[10..12], [3, 0]);
        assert_eq!(NetHdr::parse(&b), h);
        assert!(h.needs_csum());
        assert!(h.is_gso());
        assert_eq!(h.gso_kind(), GSO_TCPV4);
    }

    #[test]
    fn default_header_is_plain_frame() {
        let h = NetHdr::parse(&[0; NET_HDR_LEN]);
        assert!(!h.needs_csum());
        assert!(!h.is_gso());
    }
}
