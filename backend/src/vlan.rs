//! 802.1Q/802.1ad tags on a linear frame: pushed for a port VLAN's frames on their way to a
//! trunk, popped on their way into a port-VLAN partition. The virtio-net header's offsets move
//! with the bytes after the MAC addresses.

use crate::net_hdr::NetHdr;

/// Where a tag sits: right after the destination and source MAC addresses.
const TAG_AT: usize = 12;
pub const TAG_LEN: usize = 4;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum VlanError {
    #[error("frame of {0} bytes has no room for a VLAN tag")]
    Short(usize),
    #[error("csum_start {0} lies inside the VLAN tag being removed")]
    CsumInTag(u16),
}

/// Inserts a tag (`tpid`, `tci`) after the MAC addresses of `frame` (at least 12 bytes long).
pub fn push(frame: &mut Vec<u8>, hdr: &mut NetHdr, tpid: u16, tci: u16) {
    let mut tag = [0u8; TAG_LEN];
    tag[..2].copy_from_slice(&tpid.to_be_bytes());
    tag[2..].copy_from_slice(&tci.to_be_bytes());
    let at = TAG_AT.min(frame.len());
    frame.splice(at..at, tag);
    shift(hdr, TAG_LEN as i32);
}

/// Removes the outer tag of `frame`.
pub fn pop(frame: &mut Vec<u8>, hdr: &mut NetHdr) -> Result<(), VlanError> {
    if frame.len() < TAG_AT + TAG_LEN {
        return Err(VlanError::Short(frame.len()));
    }
    if hdr.needs_csum() && usize::from(hdr.csum_start) < TAG_AT + TAG_LEN {
        return Err(VlanError::CsumInTag(hdr.csum_start));
    }
    frame.drain(TAG_AT..TAG_AT + TAG_LEN);
    shift(hdr, -(TAG_LEN as i32));
    Ok(())
}

/// Moves the header's frame offsets by `by` bytes (they count from the frame's start).
fn shift(hdr: &mut NetHdr, by: i32) {
    let mv = |v: u16| (i32::from(v) + by).clamp(0, i32::from(u16::MAX)) as u16;
    if hdr.needs_csum() {
        hdr.csum_start = mv(hdr.csum_start);
    }
    if hdr.is_gso() {
        hdr.hdr_len = mv(hdr.hdr_len);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::net_hdr::{FLAG_NEEDS_CSUM, GSO_TCPV4};

    fn frame() -> Vec<u8> {
        let mut f = vec![0xd; 6];
        f.extend_from_slice(&[0x5; 6]);
        f.extend_from_slice(&[0x08, 0x00]);
        f.extend_from_slice(&[1, 2, 3, 4, 5]);
        f
    }

    #[test]
    fn push_then_pop_is_byte_exact_and_moves_offsets_back() {
        let orig = frame();
        let mut f = orig.clone();
        let mut h = NetHdr {
            flags: FLAG_NEEDS_CSUM,
            gso_type: GSO_TCPV4,
            hdr_len: 54,
            csum_start: 34,
            csum_offset: 16,
            ..NetHdr::default()
        };
        push(&mut f, &mut h, 0x88a8, (3 << 13) | 10);
        assert_eq!(&f[12..16], &[0x88, 0xa8, 0x60, 0x0a]);
        assert_eq!(&f[16..], &orig[12..]);
        assert_eq!((h.csum_start, h.hdr_len, h.csum_offset), (38, 58, 16));
        pop(&mut f, &mut h).unwrap();
        assert_eq!(f, orig);
        assert_eq!((h.csum_start, h.hdr_len), (34, 54));
    }

    #[test]
    fn pop_refuses_what_it_cannot_remove() {
        let mut short = vec![0u8; 15];
        assert_eq!(
            pop(&mut short, &mut NetHdr::default()),
            Err(VlanError::Short(15))
        );
        let mut f = frame();
        f.extend_from_slice(&[0; 8]);
        let mut h = NetHdr {
            flags: FLAG_NEEDS_CSUM,
            csum_start: 14,
            ..NetHdr::default()
        };
        assert_eq!(pop(&mut f, &mut h), Err(VlanError::CsumInTag(14)));
        // Offsets of a header without NEEDS_CSUM or GSO are left alone.
        let mut plain = NetHdr::default();
        pop(&mut f, &mut plain).unwrap();
        assert_eq!(plain, NetHdr::default());
    }
}
