//! The software offload fallback (`offload::resolve`): checksum completion and TCP segmentation
//! of whatever header and frame a sending driver hands over, for every combination of offloads
//! the receiver may have negotiated. Checks:
//! - Ok(n): exactly n frames were emitted, at least one; Err: none, and the frame is unchanged;
//! - every emitted header has num_buffers 0 and never carries DATA_VALID unless the receiver
//!   negotiated GUEST_CSUM; a frame passed as-is keeps its GSO fields;
//! - no emitted frame without GSO is longer than the receiver's largest frame (its MTU);
//! - DATA_VALID only on segments the device built (never on an as-is or checksum-completed
//!   frame);
//! - segmentation: every segment is the input's headers plus at most the MSS (gso_size, cut to
//!   fit the MTU; all but the last exactly that), the payloads are a prefix of the input's (the
//!   IP length may end it early), and each segment's IPv4 header checksum and TCP checksum
//!   verify;
//! - checksum completion: the completed checksum verifies over the covered bytes.
//!
//! Input: receiver offloads and MTU choice (1), the 12-byte virtio-net header, the frame.
#![no_main]

use backend::net_hdr::{NetHdr, FLAG_DATA_VALID, FLAG_NEEDS_CSUM, NET_HDR_LEN};
use backend::offload::{max_frame, passes_as_is, resolve, RxOffloads};
use libfuzzer_sys::fuzz_target;
use vhost_user_sriov_net_fuzz::Input;

fuzz_target!(|data: &[u8]| {
    let mut inp = Input(data);
    let r = inp.u8();
    let rx = RxOffloads {
        csum: r & 1 != 0,
        tso4: r & 2 != 0,
        tso6: r & 4 != 0,
    };
    // The receiver's MTU: none to speak of, the usual 1500 (untagged or tagged), or jumbo.
    let max = [
        70_000,
        max_frame(1500, false),
        max_frame(1500, true),
        max_frame(9000, false),
    ][usize::from(r >> 3) & 3];
    let mut hb = [0u8; NET_HDR_LEN];
    let b = inp.bytes(NET_HDR_LEN);
    hb[..b.len()].copy_from_slice(b);
    let hdr = NetHdr::parse(&hb);
    let orig = inp.rest().to_vec();
    let mut frame = orig.clone();
    let mut scratch = Vec::new();
    let mut out: Vec<(NetHdr, Vec<u8>)> = Vec::new();
    let res = resolve(&hdr, &mut frame, rx, max, &mut scratch, &mut |h, f| {
        out.push((*h, f.to_vec()))
    });
    let n = match res {
        Ok(n) => n,
        Err(_) => {
            assert!(out.is_empty(), "emitted before failing");
            assert_eq!(frame, orig, "frame changed by a failed resolve");
            return;
        }
    };
    assert_eq!(n, out.len());
    assert!(n >= 1);
    for (h, f) in &out {
        assert_eq!(h.num_buffers, 0);
        if !rx.csum {
            assert_eq!(
                h.flags & FLAG_DATA_VALID,
                0,
                "DATA_VALID without GUEST_CSUM"
            );
        }
        if !h.is_gso() {
            assert!(
                f.len() <= max,
                "{}-byte frame for a {max}-byte MTU",
                f.len()
            );
        }
    }
    let as_is = n == 1 && out[0].0.gso_type == hdr.gso_type && out[0].0.gso_size == hdr.gso_size;
    if passes_as_is(&hdr, rx) && as_is && (hdr.is_gso() || out[0].1.len() == orig.len()) {
        let (h, f) = &out[0];
        assert!(
            orig.starts_with(f),
            "an as-is frame is the input (up to its IP length)"
        );
        assert_eq!(
            h.flags,
            hdr.flags & FLAG_NEEDS_CSUM,
            "as-is: only NEEDS_CSUM travels"
        );
        assert_eq!(h.hdr_len, hdr.hdr_len);
        return;
    }
    for (h, _) in &out {
        assert!(
            !h.is_gso() && !h.needs_csum(),
            "fixed-up frame still asks for offloads"
        );
    }
    if hdr.is_gso() {
        check_segments(&out, &orig);
    } else {
        assert_eq!(n, 1);
        assert_eq!(
            out[0].0.flags, 0,
            "a completed checksum is never vouched for"
        );
        if hdr.needs_csum() {
            check_completed(&hdr, &orig, &out[0].1);
        } else {
            assert_eq!(out[0].1, orig);
        }
    }
});

fn check_segments(out: &[(NetHdr, Vec<u8>)], orig: &[u8]) {
    let n = out.len();
    if n == 1 {
        return check_tcp(&out[0].1, None);
    }
    // The first segment tells the header length and the MSS: every segment but the last
    // carries exactly that, the last at most that.
    let lens: Vec<usize> = out.iter().map(|(_, f)| f.len()).collect();
    let hlen = tcp_payload_at(&out[0].1);
    let mss = lens[0] - hlen;
    for (k, len) in lens.iter().enumerate() {
        assert!(*len >= hlen);
        let piece = len - hlen;
        if k + 1 < n {
            assert_eq!(piece, mss, "segment {k} of {n} is not a full MSS");
        } else {
            assert!(piece >= 1 && piece <= mss, "last segment carries {piece}");
        }
    }
    let mut payload = Vec::new();
    for (_, f) in out {
        payload.extend_from_slice(&f[hlen..]);
        check_tcp(f, Some(hlen));
    }
    assert!(orig.len() >= hlen);
    assert!(
        orig[hlen..].starts_with(&payload),
        "payload reordered or changed"
    );
}

/// Where a segment's TCP payload starts.
fn tcp_payload_at(f: &[u8]) -> usize {
    let mut at = 12;
    while matches!(u16::from_be_bytes([f[at], f[at + 1]]), 0x8100 | 0x88a8) {
        at += 4;
    }
    let l3 = at + 2;
    let l4 = if u16::from_be_bytes([f[at], f[at + 1]]) == 0x0800 {
        l3 + usize::from(f[l3] & 0xf) * 4
    } else {
        l3 + 40
    };
    l4 + usize::from(f[l4 + 12] >> 4) * 4
}

fn sum16(bytes: &[u8], mut acc: u64) -> u64 {
    let mut it = bytes.chunks_exact(2);
    for w in &mut it {
        acc += u64::from(u16::from_be_bytes([w[0], w[1]]));
    }
    if let [b] = it.remainder() {
        acc += u64::from(*b) << 8;
    }
    acc
}

fn fold(mut acc: u64) -> u16 {
    while acc > 0xffff {
        acc = (acc & 0xffff) + (acc >> 16);
    }
    acc as u16
}

/// A segment's IPv4 header checksum and TCP checksum verify (a sum of all ones), and its IP
/// length field covers exactly the rest of the frame. `hlen`: where the payload starts.
fn check_tcp(f: &[u8], hlen: Option<usize>) {
    let mut at = 12;
    let mut ethertype = u16::from_be_bytes([f[at], f[at + 1]]);
    while ethertype == 0x8100 || ethertype == 0x88a8 {
        at += 4;
        ethertype = u16::from_be_bytes([f[at], f[at + 1]]);
    }
    let l3 = at + 2;
    let (l4, pseudo) = if ethertype == 0x0800 {
        let ihl = usize::from(f[l3] & 0xf) * 4;
        assert_eq!(
            fold(sum16(&f[l3..l3 + ihl], 0)),
            0xffff,
            "IPv4 header checksum"
        );
        let tot = usize::from(u16::from_be_bytes([f[l3 + 2], f[l3 + 3]]));
        assert_eq!(tot, f.len() - l3, "IPv4 total length");
        (l3 + ihl, sum16(&f[l3 + 12..l3 + 20], 6))
    } else {
        assert_eq!(ethertype, 0x86dd);
        let plen = usize::from(u16::from_be_bytes([f[l3 + 4], f[l3 + 5]]));
        assert_eq!(plen, f.len() - l3 - 40, "IPv6 payload length");
        (l3 + 40, sum16(&f[l3 + 8..l3 + 40], 6))
    };
    let doff = usize::from(f[l4 + 12] >> 4) * 4;
    if let Some(h) = hlen {
        assert_eq!(l4 + doff, h, "headers end where the TCP header does");
    }
    let seg = &f[l4..];
    assert_eq!(
        fold(sum16(seg, pseudo + seg.len() as u64)),
        0xffff,
        "TCP checksum"
    );
}

/// The completed checksum, with the seed the driver left in the field standing for the
/// pseudo-header, sums to all ones over the covered bytes (when the field is at an even offset
/// from csum_start, as every real L4 checksum is).
fn check_completed(hdr: &NetHdr, orig: &[u8], f: &[u8]) {
    let start = usize::from(hdr.csum_start);
    let field = start + usize::from(hdr.csum_offset);
    assert_eq!(f.len(), orig.len());
    assert_eq!(f[..field], orig[..field]);
    assert_eq!(f[field + 2..], orig[field + 2..]);
    if hdr.csum_offset % 2 == 0 {
        let seed = sum16(&orig[field..field + 2], 0);
        assert_eq!(fold(sum16(&f[start..], seed)), 0xffff, "completed checksum");
    }
}
