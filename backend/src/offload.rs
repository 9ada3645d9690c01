//! Software fallback for transmit offloads the receiving partition did not negotiate.
//!
//! A sending driver may hand the switch a frame with a partial checksum
//! (`VIRTIO_NET_HDR_F_NEEDS_CSUM`) or a TCP super-frame (GSO TCPv4/TCPv6). When the receiving
//! driver did not negotiate the matching `GUEST_*` offload, the switch must finish the work
//! itself: complete the checksum in place, or cut the super-frame into MSS-sized segments with
//! fully computed IPv4 and TCP checksums. Every byte of the frame and of the virtio header is
//! guest controlled, so all parsing is bounds checked and malformed input yields an
//! [`OffloadError`] instead of a panic or a malformed frame.

use std::fmt;

use crate::net_hdr::{
    NetHdr, ETH_HLEN, FLAG_DATA_VALID, FLAG_NEEDS_CSUM, GSO_ECN, GSO_NONE, GSO_TCPV4, GSO_TCPV6,
};

const VLAN_HLEN: usize = 4;
const MAX_VLAN_TAGS: usize = 2;
const ETH_P_IPV4: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86dd;
const ETH_P_8021Q: u16 = 0x8100;
const ETH_P_8021AD: u16 = 0x88a8;
const IPV4_MIN_HLEN: usize = 20;
const IPV6_HLEN: usize = 40;
const TCP_MIN_HLEN: usize = 20;
const IPPROTO_TCP: u8 = 6;
/// IPv4 "more fragments" flag and fragment offset bits of the flags/fragment word.
const IPV4_FRAG_MASK: u16 = 0x3fff;
const TCP_FIN: u8 = 0x01;
const TCP_PSH: u8 = 0x08;
const TCP_CWR: u8 = 0x80;
/// Linux's TCP_MIN_MSS: no stack segments below this.
const MIN_GSO_SIZE: u16 = 88;

/// Offloads the receiving driver negotiated (its GUEST_* features).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RxOffloads {
    /// VIRTIO_NET_F_GUEST_CSUM.
    pub csum: bool,
    /// VIRTIO_NET_F_GUEST_TSO4.
    pub tso4: bool,
    /// VIRTIO_NET_F_GUEST_TSO6.
    pub tso6: bool,
}

/// The protocol header a truncation error refers to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Layer {
    Ethernet,
    Vlan,
    Ipv4,
    Ipv6,
    Tcp,
}

impl fmt::Display for Layer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Layer::Ethernet => "Ethernet",
            Layer::Vlan => "VLAN",
            Layer::Ipv4 => "IPv4",
            Layer::Ipv6 => "IPv6",
            Layer::Tcp => "TCP",
        })
    }
}

/// Why a frame could not be fixed up. The frame must be dropped (and counted as malformed).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum OffloadError {
    #[error(
        "checksum field out of frame: csum_start {csum_start} + csum_offset {csum_offset} + 2 \
         exceeds frame length {frame_len}"
    )]
    CsumOutOfFrame {
        csum_start: u16,
        csum_offset: u16,
        frame_len: usize,
    },
    #[error("frame too short for the {layer} header: need {needed} bytes, frame has {frame_len}")]
    Truncated {
        layer: Layer,
        needed: usize,
        frame_len: usize,
    },
    #[error("more than {MAX_VLAN_TAGS} VLAN tags")]
    TooManyVlanTags,
    #[error("ethertype {0:#06x} is neither IPv4 nor IPv6")]
    NotIp(u16),
    #[error("IP version field is {found}, ethertype says IPv{expected}")]
    IpVersionMismatch { expected: u8, found: u8 },
    #[error("GSO type {gso_type:#04x} does not match the frame's ethertype {ethertype:#06x}")]
    GsoIpMismatch { gso_type: u8, ethertype: u16 },
    #[error("IPv4 header length {0} bytes is below the 20-byte minimum")]
    BadIpv4HeaderLen(usize),
    #[error("IPv4 fragment cannot be segmented")]
    Ipv4Fragment,
    #[error("L4 protocol {0} is not TCP (IPv6 extension headers are not supported)")]
    NotTcp(u8),
    #[error("TCP header length {0} bytes is below the 20-byte minimum")]
    BadTcpHeaderLen(usize),
    #[error("unsupported GSO type {0:#04x} (only TCPv4 and TCPv6 are offered)")]
    UnsupportedGsoType(u8),
    #[error("GSO frame with gso_size 0")]
    ZeroGsoSize,
    #[error("gso_size {0} is below TCP's minimum segment size of {MIN_GSO_SIZE}")]
    GsoSizeTooSmall(u16),
    #[error("segment IP length {0} does not fit the 16-bit IP length field")]
    SegmentTooLarge(usize),
    #[error("ECN bit without a GSO type")]
    EcnWithoutGso,
    #[error("GSO frame without NEEDS_CSUM")]
    GsoWithoutCsum,
    #[error("{0} used but not negotiated")]
    NotNegotiated(&'static str),
    #[error("IP length {ip_len} does not match the frame: headers end at {headers}, frame has {frame_len} bytes")]
    BadIpLength {
        ip_len: usize,
        headers: usize,
        frame_len: usize,
    },
    #[error("{len}-byte frame exceeds the receiver's largest frame of {max} bytes (MTU)")]
    Oversize { len: usize, max: usize },
}

/// Transmit offloads the sending driver negotiated (its HOST_* features and CSUM).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TxOffloads {
    /// VIRTIO_NET_F_CSUM.
    pub csum: bool,
    /// VIRTIO_NET_F_HOST_TSO4.
    pub tso4: bool,
    /// VIRTIO_NET_F_HOST_TSO6.
    pub tso6: bool,
}

/// Longest frame (Ethernet header onward, no FCS) a port with `mtu` takes: one VLAN tag is
/// allowed on top, as Linux's bridge and real NICs allow (a 1500 MTU carries 1518-byte tagged
/// frames).
pub fn max_frame(mtu: u16, tagged: bool) -> usize {
    usize::from(mtu) + ETH_HLEN + if tagged { VLAN_HLEN } else { 0 }
}

/// True when `ethertype` (the one after the MAC addresses) is a VLAN tag.
pub fn is_vlan_tpid(ethertype: u16) -> bool {
    ethertype == ETH_P_8021Q || ethertype == ETH_P_8021AD
}

/// Bytes of a frame's head that hold every header a GSO frame can have (two VLAN tags, IPv4
/// with options, TCP with options).
pub const GSO_HEAD: usize = ETH_HLEN + MAX_VLAN_TAGS * VLAN_HLEN + 60 + 60;

/// What a sending driver may put in the virtio-net header, checked once when the frame is
/// taken (the virtio spec's driver requirements, as Linux's `virtio_net_hdr_to_skb` and the
/// software path below read them). A frame failing this is malformed for every receiver.
pub fn check_tx_header(hdr: &NetHdr, frame_len: usize, tx: TxOffloads) -> Result<(), OffloadError> {
    if hdr.needs_csum() {
        if !tx.csum {
            return Err(OffloadError::NotNegotiated("NEEDS_CSUM (CSUM)"));
        }
        csum_field(hdr, frame_len)?;
    }
    match hdr.gso_kind() {
        GSO_NONE if hdr.gso_type & GSO_ECN != 0 => return Err(OffloadError::EcnWithoutGso),
        GSO_NONE => return Ok(()),
        GSO_TCPV4 if !tx.tso4 => return Err(OffloadError::NotNegotiated("GSO TCPv4 (HOST_TSO4)")),
        GSO_TCPV6 if !tx.tso6 => return Err(OffloadError::NotNegotiated("GSO TCPv6 (HOST_TSO6)")),
        GSO_TCPV4 | GSO_TCPV6 => {}
        other => return Err(OffloadError::UnsupportedGsoType(other)),
    }
    if hdr.gso_size == 0 {
        return Err(OffloadError::ZeroGsoSize);
    }
    if hdr.gso_size < MIN_GSO_SIZE {
        return Err(OffloadError::GsoSizeTooSmall(hdr.gso_size));
    }
    if !hdr.needs_csum() {
        return Err(OffloadError::GsoWithoutCsum);
    }
    Ok(())
}

/// For a GSO frame a receiver could take as it is (see [`passes_as_is`]): validates its headers
/// (`head`, the first [`GSO_HEAD`] bytes or the whole frame if shorter) as segmentation would, and
/// returns the length to deliver (the frame up to the end of its IP packet) when every segment
/// the receiver's stack would make fits `max_frame`, or None when it must be segmented here.
pub fn gso_as_is(
    hdr: &NetHdr,
    head: &[u8],
    frame_len: usize,
    max_frame: usize,
) -> Result<Option<usize>, OffloadError> {
    if hdr.gso_size == 0 {
        return Err(OffloadError::ZeroGsoSize);
    }
    if hdr.gso_size < MIN_GSO_SIZE {
        return Err(OffloadError::GsoSizeTooSmall(hdr.gso_size));
    }
    let lay = parse_tcp(head, hdr.gso_kind())?;
    let end = ip_end(head, &lay, frame_len)?;
    Ok((lay.payload + usize::from(hdr.gso_size) <= max_frame).then_some(end))
}

/// End of the IP packet (its length field), which must cover the headers and lie in the frame;
/// bytes after it are Ethernet padding, never payload.
fn ip_end(frame: &[u8], lay: &TcpLayout, frame_len: usize) -> Result<usize, OffloadError> {
    let ip_len = if lay.ipv6 {
        IPV6_HLEN + usize::from(be16(frame, lay.l3 + 4, Layer::Ipv6)?)
    } else {
        usize::from(be16(frame, lay.l3 + 2, Layer::Ipv4)?)
    };
    let end = lay.l3 + ip_len;
    if end < lay.payload || end > frame_len {
        return Err(OffloadError::BadIpLength {
            ip_len,
            headers: lay.payload,
            frame_len,
        });
    }
    Ok(end)
}

/// True when a receiver with `rx` can take the frame described by `hdr` unchanged.
/// (No NEEDS_CSUM and no GSO -> true; NEEDS_CSUM needs rx.csum; GSO TCPV4 needs rx.tso4 && rx.csum,
/// TCPV6 needs rx.tso6 && rx.csum; a GSO header with the ECN bit is never passed as-is since
/// GUEST_ECN is not offered; any other gso type -> false.)
pub fn passes_as_is(hdr: &NetHdr, rx: RxOffloads) -> bool {
    if hdr.gso_type & GSO_ECN != 0 {
        return false;
    }
    match hdr.gso_type {
        GSO_NONE => !hdr.needs_csum() || rx.csum,
        GSO_TCPV4 => rx.tso4 && rx.csum,
        GSO_TCPV6 => rx.tso6 && rx.csum,
        _ => false,
    }
}

/// Software fallback. `frame` is the whole linear L2 frame (Ethernet header onward, no virtio
/// header), mutable so a checksum can be completed in place. Emits each resulting frame through
/// `emit(&NetHdr, &[u8])` (the NetHdr to put in front of it on the receiver; num_buffers left 0 —
/// the caller sets it). No emitted frame is longer than `max_frame` (the receiver's MTU, see
/// [`max_frame`]) unless it is a GSO frame the receiver takes as such; a TCP super-frame is cut
/// into segments that fit. `scratch` is a caller-owned buffer reused across calls so the steady
/// state allocates nothing. Returns the number of frames emitted.
///
/// On error nothing has been emitted, and `frame` is unchanged.
///
/// A frame that passes as-is is emitted with its header unchanged except that `num_buffers` is
/// zeroed and every flag other than NEEDS_CSUM is cleared (a transmitting driver must not set
/// DATA_VALID; forwarding it would let one guest vouch for a checksum towards another).
/// DATA_VALID is set only on segments this function built, whose checksums it computed over
/// headers it parsed; a checksum completed at the sender's offsets proves nothing about the
/// L4 checksum, so such a frame goes without it and the receiver verifies.
pub fn resolve(
    hdr: &NetHdr,
    frame: &mut [u8],
    rx: RxOffloads,
    max_frame: usize,
    scratch: &mut Vec<u8>,
    emit: &mut dyn FnMut(&NetHdr, &[u8]),
) -> Result<usize, OffloadError> {
    if hdr.gso_kind() == GSO_NONE && hdr.gso_type & GSO_ECN != 0 {
        return Err(OffloadError::EcnWithoutGso);
    }
    if passes_as_is(hdr, rx) {
        let len = if hdr.is_gso() {
            gso_as_is(hdr, frame, frame.len(), max_frame)?
        } else if frame.len() > max_frame {
            return Err(OffloadError::Oversize {
                len: frame.len(),
                max: max_frame,
            });
        } else {
            Some(frame.len())
        };
        if let Some(len) = len {
            if hdr.needs_csum() {
                csum_field(hdr, len)?;
            }
            let out = NetHdr {
                flags: hdr.flags & FLAG_NEEDS_CSUM,
                num_buffers: 0,
                ..*hdr
            };
            emit(&out, &frame[..len]);
            return Ok(1);
        }
    }

    match hdr.gso_kind() {
        GSO_NONE => {
            if frame.len() > max_frame {
                return Err(OffloadError::Oversize {
                    len: frame.len(),
                    max: max_frame,
                });
            }
            if hdr.needs_csum() {
                complete_partial_csum(hdr, frame)?;
            }
            emit(&NetHdr::default(), frame);
            Ok(1)
        }
        kind @ (GSO_TCPV4 | GSO_TCPV6) => {
            let out = NetHdr {
                flags: if rx.csum { FLAG_DATA_VALID } else { 0 },
                ..NetHdr::default()
            };
            segment_tcp(hdr, kind, frame, &out, max_frame, scratch, emit)
        }
        other => Err(OffloadError::UnsupportedGsoType(other)),
    }
}

/// Offset of the 16-bit checksum field named by `hdr`, checked against the frame.
fn csum_field(hdr: &NetHdr, frame_len: usize) -> Result<usize, OffloadError> {
    let field = usize::from(hdr.csum_start) + usize::from(hdr.csum_offset);
    if field + 2 > frame_len {
        return Err(OffloadError::CsumOutOfFrame {
            csum_start: hdr.csum_start,
            csum_offset: hdr.csum_offset,
            frame_len,
        });
    }
    Ok(field)
}

/// Completes a CHECKSUM_PARTIAL frame in place: the field at csum_start+csum_offset already
/// holds the pseudo-header sum, so the ones' complement of the sum from csum_start to the end
/// of the frame is the final checksum.
fn complete_partial_csum(hdr: &NetHdr, frame: &mut [u8]) -> Result<(), OffloadError> {
    let field = csum_field(hdr, frame.len())?;
    let covered = frame
        .get(usize::from(hdr.csum_start)..)
        .ok_or(OffloadError::CsumOutOfFrame {
            csum_start: hdr.csum_start,
            csum_offset: hdr.csum_offset,
            frame_len: frame.len(),
        })?;
    let csum = finish_l4(csum_add(covered, 0));
    put_be16(frame, field, csum, Layer::Ethernet)
}

/// Where the headers of a TCP super-frame are.
struct TcpLayout {
    /// Offset of the IP header.
    l3: usize,
    ipv6: bool,
    /// Offset of the TCP header.
    l4: usize,
    /// Offset of the payload (end of the TCP header).
    payload: usize,
}

fn parse_tcp(frame: &[u8], gso_kind: u8) -> Result<TcpLayout, OffloadError> {
    let mut type_at = ETH_HLEN - 2;
    let mut ethertype = be16(frame, type_at, Layer::Ethernet)?;
    let mut tags = 0;
    while ethertype == ETH_P_8021Q || ethertype == ETH_P_8021AD {
        if tags == MAX_VLAN_TAGS {
            return Err(OffloadError::TooManyVlanTags);
        }
        tags += 1;
        type_at += VLAN_HLEN;
        ethertype = be16(frame, type_at, Layer::Vlan)?;
    }
    let l3 = type_at + 2;
    let (ipv6, l4) = match ethertype {
        ETH_P_IPV4 | ETH_P_IPV6 => {
            let ipv6 = ethertype == ETH_P_IPV6;
            if (gso_kind == GSO_TCPV6) != ipv6 {
                return Err(OffloadError::GsoIpMismatch {
                    gso_type: gso_kind,
                    ethertype,
                });
            }
            if ipv6 {
                (true, parse_ipv6(frame, l3)?)
            } else {
                (false, parse_ipv4(frame, l3)?)
            }
        }
        other => return Err(OffloadError::NotIp(other)),
    };
    ensure_len(frame, l4 + TCP_MIN_HLEN, Layer::Tcp)?;
    let doff = usize::from(byte(frame, l4 + 12, Layer::Tcp)? >> 4) * 4;
    if doff < TCP_MIN_HLEN {
        return Err(OffloadError::BadTcpHeaderLen(doff));
    }
    ensure_len(frame, l4 + doff, Layer::Tcp)?;
    Ok(TcpLayout {
        l3,
        ipv6,
        l4,
        payload: l4 + doff,
    })
}

/// Validates an IPv4 header carrying TCP at `l3`; returns the L4 offset.
fn parse_ipv4(frame: &[u8], l3: usize) -> Result<usize, OffloadError> {
    ensure_len(frame, l3 + IPV4_MIN_HLEN, Layer::Ipv4)?;
    let vihl = byte(frame, l3, Layer::Ipv4)?;
    if vihl >> 4 != 4 {
        return Err(OffloadError::IpVersionMismatch {
            expected: 4,
            found: vihl >> 4,
        });
    }
    let ihl = usize::from(vihl & 0x0f) * 4;
    if ihl < IPV4_MIN_HLEN {
        return Err(OffloadError::BadIpv4HeaderLen(ihl));
    }
    ensure_len(frame, l3 + ihl, Layer::Ipv4)?;
    if be16(frame, l3 + 6, Layer::Ipv4)? & IPV4_FRAG_MASK != 0 {
        return Err(OffloadError::Ipv4Fragment);
    }
    let proto = byte(frame, l3 + 9, Layer::Ipv4)?;
    if proto != IPPROTO_TCP {
        return Err(OffloadError::NotTcp(proto));
    }
    Ok(l3 + ihl)
}

/// Validates an IPv6 header directly followed by TCP at `l3`; returns the L4 offset.
fn parse_ipv6(frame: &[u8], l3: usize) -> Result<usize, OffloadError> {
    ensure_len(frame, l3 + IPV6_HLEN, Layer::Ipv6)?;
    let version = byte(frame, l3, Layer::Ipv6)? >> 4;
    if version != 6 {
        return Err(OffloadError::IpVersionMismatch {
            expected: 6,
            found: version,
        });
    }
    let next = byte(frame, l3 + 6, Layer::Ipv6)?;
    if next != IPPROTO_TCP {
        return Err(OffloadError::NotTcp(next));
    }
    Ok(l3 + IPV6_HLEN)
}

/// Cuts a TCP super-frame into `gso_size` pieces, each emitted as a complete frame with
/// software-computed checksums. Everything is validated before the first emit.
#[allow(clippy::too_many_arguments)]
fn segment_tcp(
    hdr: &NetHdr,
    gso_kind: u8,
    frame: &[u8],
    out: &NetHdr,
    max_frame: usize,
    scratch: &mut Vec<u8>,
    emit: &mut dyn FnMut(&NetHdr, &[u8]),
) -> Result<usize, OffloadError> {
    if hdr.gso_size == 0 {
        return Err(OffloadError::ZeroGsoSize);
    }
    // A tiny MSS would turn one 64 KiB frame into tens of thousands of deliveries.
    if hdr.gso_size < MIN_GSO_SIZE {
        return Err(OffloadError::GsoSizeTooSmall(hdr.gso_size));
    }
    let lay = parse_tcp(frame, gso_kind)?;
    // Segments must fit the receiver: TCP takes a smaller MSS than the sender's as it is.
    let room = max_frame.saturating_sub(lay.payload);
    if room == 0 {
        return Err(OffloadError::Oversize {
            len: lay.payload + 1,
            max: max_frame,
        });
    }
    let mss = usize::from(hdr.gso_size).min(room);
    let end = ip_end(frame, &lay, frame.len())?;
    let (headers, payload) = frame[..end].split_at(lay.payload);
    let tcp_hlen = lay.payload - lay.l4;

    // The first segment is the largest; if its length fits the IP length field all do.
    let largest_ip_len = if lay.ipv6 {
        tcp_hlen + payload.len().min(mss)
    } else {
        lay.payload - lay.l3 + payload.len().min(mss)
    };
    if largest_ip_len > usize::from(u16::MAX) {
        return Err(OffloadError::SegmentTooLarge(largest_ip_len));
    }

    let seq0 = be32(headers, lay.l4 + 4, Layer::Tcp)?;
    let tcp_flags0 = byte(headers, lay.l4 + 13, Layer::Tcp)?;
    let ip_id0 = if lay.ipv6 {
        0
    } else {
        be16(headers, lay.l3 + 4, Layer::Ipv4)?
    };
    // Source and destination addresses, the constant part of the pseudo-header.
    let addrs = if lay.ipv6 {
        headers.get(lay.l3 + 8..lay.l3 + IPV6_HLEN)
    } else {
        headers.get(lay.l3 + 12..lay.l3 + 20)
    };
    let addrs_sum = csum_add(
        addrs.ok_or(OffloadError::Truncated {
            layer: if lay.ipv6 { Layer::Ipv6 } else { Layer::Ipv4 },
            needed: lay.l4,
            frame_len: frame.len(),
        })?,
        u64::from(IPPROTO_TCP),
    );

    let mut count = 0usize;
    let mut pieces = payload.chunks(mss);
    // An empty payload still yields one (header-only) segment.
    let mut next = Some(pieces.next().unwrap_or(&[]));
    let mut sent = 0usize;
    while let Some(piece) = next {
        next = pieces.next();
        let first = count == 0;
        let last = next.is_none();

        scratch.clear();
        scratch.extend_from_slice(headers);
        scratch.extend_from_slice(piece);

        let tcp_len = tcp_hlen + piece.len();
        if lay.ipv6 {
            put_be16(scratch, lay.l3 + 4, len16(tcp_len)?, Layer::Ipv6)?;
        } else {
            let ihl = lay.l4 - lay.l3;
            put_be16(scratch, lay.l3 + 2, len16(ihl + tcp_len)?, Layer::Ipv4)?;
            // Wrapping on purpose: the IP ID is a 16-bit counter.
            let id = ip_id0.wrapping_add(count as u16);
            put_be16(scratch, lay.l3 + 4, id, Layer::Ipv4)?;
            put_be16(scratch, lay.l3 + 10, 0, Layer::Ipv4)?;
            let ip_hdr = scratch.get(lay.l3..lay.l4).ok_or(OffloadError::Truncated {
                layer: Layer::Ipv4,
                needed: lay.l4,
                frame_len: scratch.len(),
            })?;
            let ip_csum = !fold(csum_add(ip_hdr, 0));
            put_be16(scratch, lay.l3 + 10, ip_csum, Layer::Ipv4)?;
        }

        // Sequence numbers are modulo 2^32, so truncating the byte count is intended.
        put_be32(
            scratch,
            lay.l4 + 4,
            seq0.wrapping_add(sent as u32),
            Layer::Tcp,
        )?;
        let mut tcp_flags = tcp_flags0;
        if !first {
            tcp_flags &= !TCP_CWR;
        }
        if !last {
            tcp_flags &= !(TCP_FIN | TCP_PSH);
        }
        put_u8(scratch, lay.l4 + 13, tcp_flags, Layer::Tcp)?;
        put_be16(scratch, lay.l4 + 16, 0, Layer::Tcp)?;
        let segment = scratch.get(lay.l4..).ok_or(OffloadError::Truncated {
            layer: Layer::Tcp,
            needed: lay.l4,
            frame_len: scratch.len(),
        })?;
        let tcp_csum = finish_l4(csum_add(segment, addrs_sum + tcp_len as u64));
        put_be16(scratch, lay.l4 + 16, tcp_csum, Layer::Tcp)?;

        emit(out, scratch);
        count += 1;
        sent += piece.len();
    }
    Ok(count)
}

/// Adds `data` to a ones' complement accumulator as big-endian 16-bit words (an odd trailing
/// byte is padded with zero). `data` must start at an even offset of the checksummed range.
fn csum_add(data: &[u8], mut acc: u64) -> u64 {
    // Summing 32-bit words and folding later is equivalent to summing 16-bit words, since
    // 2^16 == 1 modulo 0xffff. A u64 cannot overflow for any slice that fits in memory
    // practically (2^32 words of at most 2^32 - 1).
    let mut words = data.chunks_exact(4);
    for w in &mut words {
        if let &[a, b, c, d] = w {
            acc += u64::from(u32::from_be_bytes([a, b, c, d]));
        }
    }
    match *words.remainder() {
        [a, b, c] => acc + u64::from(u16::from_be_bytes([a, b])) + (u64::from(c) << 8),
        [a, b] => acc + u64::from(u16::from_be_bytes([a, b])),
        [a] => acc + (u64::from(a) << 8),
        _ => acc,
    }
}

/// Folds a ones' complement accumulator to 16 bits.
fn fold(mut acc: u64) -> u16 {
    while acc > 0xffff {
        acc = (acc & 0xffff) + (acc >> 16);
    }
    acc as u16
}

/// Final TCP/UDP checksum: a computed 0 is sent as 0xffff (equivalent in ones' complement, and
/// required for UDP where 0 means "no checksum").
fn finish_l4(acc: u64) -> u16 {
    match !fold(acc) {
        0 => 0xffff,
        c => c,
    }
}

fn len16(len: usize) -> Result<u16, OffloadError> {
    u16::try_from(len).map_err(|_| OffloadError::SegmentTooLarge(len))
}

fn truncated(layer: Layer, needed: usize, frame_len: usize) -> OffloadError {
    OffloadError::Truncated {
        layer,
        needed,
        frame_len,
    }
}

fn ensure_len(buf: &[u8], needed: usize, layer: Layer) -> Result<(), OffloadError> {
    if buf.len() < needed {
        return Err(truncated(layer, needed, buf.len()));
    }
    Ok(())
}

fn byte(buf: &[u8], at: usize, layer: Layer) -> Result<u8, OffloadError> {
    buf.get(at)
        .copied()
        .ok_or_else(|| truncated(layer, at + 1, buf.len()))
}

fn be16(buf: &[u8], at: usize, layer: Layer) -> Result<u16, OffloadError> {
    match buf.get(at..at + 2) {
        Some(&[a, b]) => Ok(u16::from_be_bytes([a, b])),
        _ => Err(truncated(layer, at + 2, buf.len())),
    }
}

fn be32(buf: &[u8], at: usize, layer: Layer) -> Result<u32, OffloadError> {
    match buf.get(at..at + 4) {
        Some(&[a, b, c, d]) => Ok(u32::from_be_bytes([a, b, c, d])),
        _ => Err(truncated(layer, at + 4, buf.len())),
    }
}

fn put_bytes(buf: &mut [u8], at: usize, bytes: &[u8], layer: Layer) -> Result<(), OffloadError> {
    let len = buf.len();
    match buf.get_mut(at..at + bytes.len()) {
        Some(dst) => {
            dst.copy_from_slice(bytes);
            Ok(())
        }
        None => Err(truncated(layer, at + bytes.len(), len)),
    }
}

fn put_u8(buf: &mut [u8], at: usize, v: u8, layer: Layer) -> Result<(), OffloadError> {
    put_bytes(buf, at, &[v], layer)
}

fn put_be16(buf: &mut [u8], at: usize, v: u16, layer: Layer) -> Result<(), OffloadError> {
    put_bytes(buf, at, &v.to_be_bytes(), layer)
}

fn put_be32(buf: &mut [u8], at: usize, v: u32, layer: Layer) -> Result<(), OffloadError> {
    put_bytes(buf, at, &v.to_be_bytes(), layer)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// No MTU limit in the tests that are not about it.
    const BIG: usize = 70_000;
    use crate::net_hdr::{GSO_UDP, GSO_UDP_L4};

    const TCP_ACK: u8 = 0x10;
    const SRC4: [u8; 4] = [10, 0, 0, 1];
    const DST4: [u8; 4] = [192, 168, 7, 42];
    const SRC6: [u8; 16] = [0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1];
    const DST6: [u8; 16] = [
        0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0xab, 0xcd, 0, 2,
    ];
    /// NOP, NOP, timestamp option: a 12-byte TCP option block (data offset 8).
    const TCP_TS_OPTS: [u8; 12] = [1, 1, 8, 10, 0, 0, 0, 1, 0, 0, 0, 2];

    /// Independent verifier: the byte-wise ones' complement sum of the concatenation of `parts`
    /// (bytes at even positions are high-order), folded to 16 bits. A correct checksum makes the
    /// sum over the covered bytes (pseudo-header included) fold to 0xffff.
    fn ones_sum(parts: &[&[u8]]) -> u16 {
        let mut sum: u32 = 0;
        let mut pos = 0usize;
        for part in parts {
            for &b in *part {
                sum += if pos & 1 == 0 {
                    u32::from(b) << 8
                } else {
                    u32::from(b)
                };
                pos += 1;
                while sum > 0xffff {
                    sum = (sum >> 16) + (sum & 0xffff);
                }
            }
        }
        sum as u16
    }

    enum Ip {
        V4 { id: u16, opts: Vec<u8> },
        V6,
    }

    struct Built {
        frame: Vec<u8>,
        l3: usize,
        l4: usize,
        payload: usize,
        v6: bool,
    }

    fn eth(tags: &[u16], ethertype: u16) -> Vec<u8> {
        let mut f = vec![0x02, 0, 0, 0, 0, 2, 0x02, 0, 0, 0, 0, 1];
        for (i, tpid) in tags.iter().enumerate() {
            f.extend_from_slice(&tpid.to_be_bytes());
            f.extend_from_slice(&(100 + i as u16).to_be_bytes());
        }
        f.extend_from_slice(&ethertype.to_be_bytes());
        f
    }

    fn ipv4_hdr(proto: u8, l4_len: usize, id: u16, opts: &[u8]) -> Vec<u8> {
        let ihl = 20 + opts.len();
        assert_eq!(ihl % 4, 0);
        let mut h = vec![0x40 | (ihl / 4) as u8, 0];
        h.extend_from_slice(&((ihl + l4_len) as u16).to_be_bytes());
        h.extend_from_slice(&id.to_be_bytes());
        h.extend_from_slice(&[0x40, 0, 64, proto, 0, 0]); // DF, TTL 64
        h.extend_from_slice(&SRC4);
        h.extend_from_slice(&DST4);
        h.extend_from_slice(opts);
        let c = !ones_sum(&[&h]);
        h[10..12].copy_from_slice(&c.to_be_bytes());
        h
    }

    fn ipv6_hdr(next: u8, l4_len: usize) -> Vec<u8> {
        let mut h = vec![0x60, 0x01, 0x23, 0x45];
        h.extend_from_slice(&(l4_len as u16).to_be_bytes());
        h.extend_from_slice(&[next, 64]);
        h.extend_from_slice(&SRC6);
        h.extend_from_slice(&DST6);
        h
    }

    fn tcp_hdr(seq: u32, flags: u8, opts: &[u8]) -> Vec<u8> {
        let hl = 20 + opts.len();
        assert_eq!(hl % 4, 0);
        let mut h = Vec::new();
        h.extend_from_slice(&40000u16.to_be_bytes());
        h.extend_from_slice(&5201u16.to_be_bytes());
        h.extend_from_slice(&seq.to_be_bytes());
        h.extend_from_slice(&0x1122_3344u32.to_be_bytes());
        h.extend_from_slice(&[((hl / 4) as u8) << 4, flags, 0xfa, 0xf0, 0, 0, 0, 0]);
        h.extend_from_slice(opts);
        h
    }

    fn udp_hdr(data_len: usize) -> Vec<u8> {
        let mut h = Vec::new();
        h.extend_from_slice(&5353u16.to_be_bytes());
        h.extend_from_slice(&9999u16.to_be_bytes());
        h.extend_from_slice(&((8 + data_len) as u16).to_be_bytes());
        h.extend_from_slice(&[0, 0]);
        h
    }

    fn data(n: usize) -> Vec<u8> {
        (0..n).map(|i| (i * 7 + i / 251 + 3) as u8).collect()
    }

    fn build(tags: &[u16], ip: Ip, proto: u8, l4hdr: &[u8], payload: &[u8]) -> Built {
        let l4_len = l4hdr.len() + payload.len();
        let (ethertype, ip_hdr, v6) = match ip {
            Ip::V4 { id, opts } => (0x0800, ipv4_hdr(proto, l4_len, id, &opts), false),
            Ip::V6 => (0x86dd, ipv6_hdr(proto, l4_len), true),
        };
        let mut frame = eth(tags, ethertype);
        let l3 = frame.len();
        frame.extend_from_slice(&ip_hdr);
        let l4 = frame.len();
        frame.extend_from_slice(l4hdr);
        let payload_off = frame.len();
        frame.extend_from_slice(payload);
        Built {
            frame,
            l3,
            l4,
            payload: payload_off,
            v6,
        }
    }

    fn v4(id: u16) -> Ip {
        Ip::V4 {
            id,
            opts: Vec::new(),
        }
    }

    /// The pseudo-header for the L4 segment running from `l4` to the end of `frame`.
    fn pseudo(frame: &[u8], l3: usize, l4: usize, v6: bool) -> Vec<u8> {
        let l4_len = frame.len() - l4;
        let mut p = Vec::new();
        if v6 {
            p.extend_from_slice(&frame[l3 + 8..l3 + 40]);
            p.extend_from_slice(&(l4_len as u32).to_be_bytes());
            p.extend_from_slice(&[0, 0, 0, frame[l3 + 6]]);
        } else {
            p.extend_from_slice(&frame[l3 + 12..l3 + 20]);
            p.extend_from_slice(&[0, frame[l3 + 9]]);
            p.extend_from_slice(&(l4_len as u16).to_be_bytes());
        }
        p
    }

    fn l4_csum_ok(frame: &[u8], l3: usize, l4: usize, v6: bool) -> bool {
        ones_sum(&[&pseudo(frame, l3, l4, v6), &frame[l4..]]) == 0xffff
    }

    fn ip4_csum_ok(frame: &[u8], l3: usize, l4: usize) -> bool {
        ones_sum(&[&frame[l3..l4]]) == 0xffff
    }

    /// Seeds the checksum field at `l4 + off` with the folded pseudo-header sum, as a Linux
    /// driver does for CHECKSUM_PARTIAL.
    fn seed_partial(b: &mut Built, off: usize) {
        let seed = ones_sum(&[&pseudo(&b.frame, b.l3, b.l4, b.v6)]);
        b.frame[b.l4 + off..b.l4 + off + 2].copy_from_slice(&seed.to_be_bytes());
    }

    fn be16_at(f: &[u8], at: usize) -> u16 {
        u16::from_be_bytes([f[at], f[at + 1]])
    }

    fn be32_at(f: &[u8], at: usize) -> u32 {
        u32::from_be_bytes([f[at], f[at + 1], f[at + 2], f[at + 3]])
    }

    type Emitted = Vec<(NetHdr, Vec<u8>)>;

    fn run(
        hdr: &NetHdr,
        frame: &mut [u8],
        rx: RxOffloads,
    ) -> (Result<usize, OffloadError>, Emitted) {
        let mut scratch = Vec::new();
        let mut out = Vec::new();
        let r = resolve(hdr, frame, rx, BIG, &mut scratch, &mut |h, f| {
            out.push((*h, f.to_vec()))
        });
        (r, out)
    }

    /// Runs `resolve` and asserts it failed with `want`, emitted nothing and left the frame alone.
    fn expect_err(hdr: &NetHdr, frame: &[u8], rx: RxOffloads, want: OffloadError) {
        let mut f = frame.to_vec();
        let (r, out) = run(hdr, &mut f, rx);
        assert_eq!(r, Err(want));
        assert!(out.is_empty());
        assert_eq!(f, frame);
    }

    fn rx(csum: bool, tso4: bool, tso6: bool) -> RxOffloads {
        RxOffloads { csum, tso4, tso6 }
    }

    fn all_rx() -> impl Iterator<Item = RxOffloads> {
        (0..8u8).map(|m| rx(m & 1 != 0, m & 2 != 0, m & 4 != 0))
    }

    fn fixed_hdr(rx: RxOffloads) -> NetHdr {
        NetHdr {
            flags: if rx.csum { FLAG_DATA_VALID } else { 0 },
            ..NetHdr::default()
        }
    }

    fn partial_hdr(b: &Built, csum_offset: u16) -> NetHdr {
        NetHdr {
            flags: FLAG_NEEDS_CSUM,
            csum_start: b.l4 as u16,
            csum_offset,
            ..NetHdr::default()
        }
    }

    fn tso_hdr(b: &Built, gso_type: u8, gso_size: u16) -> NetHdr {
        NetHdr {
            flags: FLAG_NEEDS_CSUM,
            gso_type,
            hdr_len: b.payload as u16,
            gso_size,
            csum_start: b.l4 as u16,
            csum_offset: 16,
            num_buffers: 0,
        }
    }

    /// Checks segments of `orig` against everything `resolve` promises, generically.
    fn check_segments(orig: &Built, segs: &Emitted, mss: usize, rx: RxOffloads) {
        let data = &orig.frame[orig.payload..];
        let (l3, l4, hl) = (orig.l3, orig.l4, orig.payload);
        let tcp_hl = hl - l4;
        assert_eq!(segs.len(), data.len().div_ceil(mss).max(1));
        let seq0 = be32_at(&orig.frame, l4 + 4);
        let flags0 = orig.frame[l4 + 13];
        let mut reassembled = Vec::new();
        for (i, (h, f)) in segs.iter().enumerate() {
            let last = i + 1 == segs.len();
            assert_eq!(*h, fixed_hdr(rx));
            let piece = mss.min(data.len() - i * mss);
            assert_eq!(f.len(), hl + piece);
            assert_eq!(f[..l3], orig.frame[..l3], "L2 header changed");
            if orig.v6 {
                assert_eq!(be16_at(f, l3 + 4) as usize, tcp_hl + piece);
                assert_eq!(f[l3..l3 + 4], orig.frame[l3..l3 + 4]);
                assert_eq!(f[l3 + 6..l4], orig.frame[l3 + 6..l4]);
            } else {
                assert_eq!(be16_at(f, l3 + 2) as usize, l4 - l3 + tcp_hl + piece);
                let id0 = be16_at(&orig.frame, l3 + 4);
                assert_eq!(be16_at(f, l3 + 4), id0.wrapping_add(i as u16));
                assert!(ip4_csum_ok(f, l3, l4), "IPv4 header checksum, segment {i}");
                assert_eq!(f[l3..l3 + 2], orig.frame[l3..l3 + 2]);
                assert_eq!(f[l3 + 6..l3 + 10], orig.frame[l3 + 6..l3 + 10]);
                assert_eq!(f[l3 + 12..l4], orig.frame[l3 + 12..l4]);
            }
            assert_eq!(
                be32_at(f, l4 + 4),
                seq0.wrapping_add((i * mss) as u32),
                "seq, segment {i}"
            );
            let mut want_flags = flags0;
            if i > 0 {
                want_flags &= !TCP_CWR;
            }
            if !last {
                want_flags &= !(TCP_FIN | TCP_PSH);
            }
            assert_eq!(f[l4 + 13], want_flags, "TCP flags, segment {i}");
            assert_eq!(f[l4..l4 + 4], orig.frame[l4..l4 + 4]);
            assert_eq!(f[l4 + 8..l4 + 13], orig.frame[l4 + 8..l4 + 13]);
            assert_eq!(f[l4 + 14..l4 + 16], orig.frame[l4 + 14..l4 + 16]);
            assert_eq!(f[l4 + 18..hl], orig.frame[l4 + 18..hl]);
            assert!(l4_csum_ok(f, l3, l4, orig.v6), "TCP checksum, segment {i}");
            reassembled.extend_from_slice(&f[hl..]);
        }
        assert_eq!(reassembled, data, "payload does not reassemble");
    }

    #[test]
    fn completes_partial_tcp_checksum_over_ipv4() {
        let mut b = build(&[], v4(7), 6, &tcp_hdr(1000, TCP_ACK, &[]), &data(1001));
        seed_partial(&mut b, 16);
        let hdr = partial_hdr(&b, 16);
        for r in [rx(false, false, false), rx(false, true, true)] {
            let mut f = b.frame.clone();
            let (res, out) = run(&hdr, &mut f, r);
            assert_eq!(res, Ok(1));
            assert_eq!(out.len(), 1);
            assert_eq!(out[0].0, fixed_hdr(r));
            assert_eq!(out[0].0.flags, 0);
            let g = &out[0].1;
            assert_eq!(*g, f, "completed in place");
            assert!(l4_csum_ok(g, b.l3, b.l4, false));
            assert_eq!(g[..b.l4 + 16], b.frame[..b.l4 + 16]);
            assert_eq!(g[b.l4 + 18..], b.frame[b.l4 + 18..]);
        }
    }

    #[test]
    fn completes_partial_udp_checksum_over_ipv4() {
        let payload = data(333);
        let mut b = build(&[], v4(9), 17, &udp_hdr(payload.len()), &payload);
        seed_partial(&mut b, 6);
        let hdr = partial_hdr(&b, 6);
        let (res, out) = run(&hdr, &mut b.frame.clone(), RxOffloads::default());
        assert_eq!(res, Ok(1));
        let g = &out[0].1;
        assert!(l4_csum_ok(g, b.l3, b.l4, false));
        assert_ne!(be16_at(g, b.l4 + 6), 0, "UDP checksum 0 means none");
    }

    #[test]
    fn completes_partial_tcp_checksum_over_ipv6_with_vlan() {
        let mut b = build(
            &[0x8100],
            Ip::V6,
            6,
            &tcp_hdr(5, 0x18, &TCP_TS_OPTS),
            &data(500),
        );
        seed_partial(&mut b, 16);
        let hdr = partial_hdr(&b, 16);
        let (res, out) = run(&hdr, &mut b.frame.clone(), rx(false, true, true));
        assert_eq!(res, Ok(1));
        assert_eq!(out[0].0, fixed_hdr(RxOffloads::default()));
        assert!(l4_csum_ok(&out[0].1, b.l3, b.l4, true));
    }

    /// The hole a hostile frontend found: ECN without a GSO type plus NEEDS_CSUM used to be
    /// completed at the sender's offsets and marked DATA_VALID. Linux refuses such a header.
    #[test]
    fn ecn_bit_without_gso_is_malformed_never_completed_or_vouched() {
        let mut b = build(&[], Ip::V6, 6, &tcp_hdr(5, TCP_ACK, &[]), &data(64));
        seed_partial(&mut b, 16);
        let hdr = NetHdr {
            gso_type: GSO_ECN,
            ..partial_hdr(&b, 16)
        };
        for r in all_rx() {
            expect_err(&hdr, &b.frame, r, OffloadError::EcnWithoutGso);
        }
        let tx = TxOffloads {
            csum: true,
            tso4: true,
            tso6: true,
        };
        assert_eq!(
            check_tx_header(&hdr, b.frame.len(), tx),
            Err(OffloadError::EcnWithoutGso)
        );
    }

    /// A checksum completed where the sender said says nothing about the L4 checksum (here the
    /// "field" is UDP payload and the real checksum is 0xdead): never DATA_VALID.
    #[test]
    fn a_completed_partial_checksum_is_never_marked_valid() {
        let payload = data(64);
        let mut b = build(&[], v4(9), 17, &udp_hdr(payload.len()), &payload);
        b.frame[b.l4 + 6..b.l4 + 8].copy_from_slice(&0xdeadu16.to_be_bytes());
        let hdr = NetHdr {
            flags: FLAG_NEEDS_CSUM,
            csum_start: 42,
            csum_offset: 0,
            ..NetHdr::default()
        };
        for r in all_rx().filter(|r| !r.csum) {
            let (res, out) = run(&hdr, &mut b.frame.clone(), r);
            assert_eq!(res, Ok(1));
            assert_eq!(out[0].0.flags, 0, "no DATA_VALID");
            assert_eq!(
                be16_at(&out[0].1, b.l4 + 6),
                0xdead,
                "real checksum untouched"
            );
        }
        // A receiver with GUEST_CSUM gets it as it is: still partial, not vouched for.
        let (res, out) = run(&hdr, &mut b.frame.clone(), rx(true, false, false));
        assert_eq!(res, Ok(1));
        assert_eq!(out[0].0.flags, FLAG_NEEDS_CSUM);
    }

    #[test]
    fn plain_frames_over_the_receivers_mtu_are_refused() {
        let untagged = max_frame(1500, false);
        let tagged = max_frame(1500, true);
        assert_eq!((untagged, tagged), (1514, 1518));
        for len in [1515, 9014, 65014] {
            let mut f = vec![0u8; len];
            f[12..14].copy_from_slice(&ETH_P_IPV4.to_be_bytes());
            let mut scratch = Vec::new();
            for r in all_rx() {
                let mut n = 0;
                let res = resolve(
                    &NetHdr::default(),
                    &mut f,
                    r,
                    untagged,
                    &mut scratch,
                    &mut |_, _| n += 1,
                );
                assert_eq!(res, Err(OffloadError::Oversize { len, max: untagged }));
                assert_eq!(n, 0);
            }
        }
        let mut f = vec![0u8; 1514];
        let (res, _) = {
            let mut scratch = Vec::new();
            let mut out = 0;
            let r = resolve(
                &NetHdr::default(),
                &mut f,
                RxOffloads::default(),
                untagged,
                &mut scratch,
                &mut |_, _| out += 1,
            );
            (r, out)
        };
        assert_eq!(res, Ok(1));
    }

    /// Software segmentation cuts to the receiver's MTU, not to the sender's gso_size.
    #[test]
    fn segmentation_fits_the_receivers_mtu() {
        for ip in [v4(3), Ip::V6] {
            let b = build(
                &[],
                ip,
                6,
                &tcp_hdr(77, TCP_ACK, &TCP_TS_OPTS),
                &data(20_000),
            );
            let kind = if b.v6 { GSO_TCPV6 } else { GSO_TCPV4 };
            let hdr = tso_hdr(&b, kind, 8000);
            let max = max_frame(1500, false);
            let mut scratch = Vec::new();
            let mut out: Emitted = Vec::new();
            let r = rx(false, false, false);
            let res = resolve(
                &hdr,
                &mut b.frame.clone(),
                r,
                max,
                &mut scratch,
                &mut |h, f| out.push((*h, f.to_vec())),
            );
            assert!(res.is_ok());
            assert!(
                out.iter().all(|(_, f)| f.len() <= max),
                "every segment fits"
            );
            check_segments(&b, &out, max - b.payload, r);
            // A TSO receiver takes it as it is only when its stack's segments would fit.
            let head = &b.frame[..GSO_HEAD.min(b.frame.len())];
            assert_eq!(gso_as_is(&hdr, head, b.frame.len(), max), Ok(None));
            let ok = tso_hdr(&b, kind, (max - b.payload) as u16);
            assert_eq!(
                gso_as_is(&ok, head, b.frame.len(), max),
                Ok(Some(b.frame.len()))
            );
        }
    }

    #[test]
    fn gso_as_is_is_validated_like_segmentation() {
        let b = build(&[], v4(3), 6, &tcp_hdr(1, TCP_ACK, &[]), &data(3000));
        let head = &b.frame[..GSO_HEAD];
        let max = max_frame(1500, false);
        let zero = tso_hdr(&b, GSO_TCPV4, 0);
        assert_eq!(
            gso_as_is(&zero, head, b.frame.len(), max),
            Err(OffloadError::ZeroGsoSize)
        );
        let wrong_ip = tso_hdr(&b, GSO_TCPV6, 1448);
        assert!(matches!(
            gso_as_is(&wrong_ip, head, b.frame.len(), max),
            Err(OffloadError::GsoIpMismatch { .. })
        ));
        // The frame is shorter than its IP length says.
        let hdr = tso_hdr(&b, GSO_TCPV4, 1448);
        assert!(matches!(
            gso_as_is(&hdr, head, b.frame.len() - 1, max),
            Err(OffloadError::BadIpLength { .. })
        ));
    }

    #[test]
    fn check_tx_header_enforces_what_the_sender_negotiated() {
        let b = build(&[], v4(3), 6, &tcp_hdr(1, TCP_ACK, &[]), &data(3000));
        let all = TxOffloads {
            csum: true,
            tso4: true,
            tso6: true,
        };
        let len = b.frame.len();
        let tso = tso_hdr(&b, GSO_TCPV4, 1448);
        assert_eq!(check_tx_header(&tso, len, all), Ok(()));
        assert_eq!(
            check_tx_header(&NetHdr::default(), len, TxOffloads::default()),
            Ok(())
        );
        let no_tso = TxOffloads { tso4: false, ..all };
        assert!(matches!(
            check_tx_header(&tso, len, no_tso),
            Err(OffloadError::NotNegotiated(_))
        ));
        let no_csum = TxOffloads { csum: false, ..all };
        assert!(matches!(
            check_tx_header(&tso, len, no_csum),
            Err(OffloadError::NotNegotiated(_))
        ));
        let bare = NetHdr { flags: 0, ..tso };
        assert_eq!(
            check_tx_header(&bare, len, all),
            Err(OffloadError::GsoWithoutCsum)
        );
        let zero = NetHdr { gso_size: 0, ..tso };
        assert_eq!(
            check_tx_header(&zero, len, all),
            Err(OffloadError::ZeroGsoSize)
        );
        let udp = NetHdr {
            gso_type: GSO_UDP,
            ..tso
        };
        assert_eq!(
            check_tx_header(&udp, len, all),
            Err(OffloadError::UnsupportedGsoType(GSO_UDP))
        );
        // The case: csum_start 60000, csum_offset 5000 on a 64-byte frame.
        let far = NetHdr {
            flags: FLAG_NEEDS_CSUM,
            csum_start: 60000,
            csum_offset: 5000,
            ..NetHdr::default()
        };
        assert!(matches!(
            check_tx_header(&far, 64, all),
            Err(OffloadError::CsumOutOfFrame { .. })
        ));
    }

    #[test]
    fn computed_zero_checksum_is_sent_as_ffff() {
        // Covered words: 0xffff then the (zero) field: the sum is 0xffff, its complement 0.
        let mut f = vec![0u8; 20];
        f[10] = 0xff;
        f[11] = 0xff;
        let hdr = NetHdr {
            flags: FLAG_NEEDS_CSUM,
            csum_start: 10,
            csum_offset: 2,
            ..NetHdr::default()
        };
        let (res, out) = run(&hdr, &mut f, RxOffloads::default());
        assert_eq!(res, Ok(1));
        assert_eq!(out[0].1[12..14], [0xff, 0xff]);
        assert_eq!(ones_sum(&[&out[0].1[10..]]), 0xffff);
    }

    #[test]
    fn tso4_splits_4000_bytes_into_three_segments() {
        let payload = data(4000);
        let seq0 = 0xffff_fa00; // wraps during the third segment
        let flags = TCP_ACK | TCP_PSH | TCP_FIN | TCP_CWR;
        let mut b = build(&[], v4(0xfffe), 6, &tcp_hdr(seq0, flags, &[]), &payload);
        // Garbage in both checksums: segmentation must not rely on either.
        b.frame[b.l3 + 10..b.l3 + 12].copy_from_slice(&[0xde, 0xad]);
        b.frame[b.l4 + 16..b.l4 + 18].copy_from_slice(&[0xbe, 0xef]);
        let cases = [
            (GSO_TCPV4 | GSO_ECN, rx(false, false, false)),
            (GSO_TCPV4 | GSO_ECN, rx(true, false, false)),
            (GSO_TCPV4 | GSO_ECN, rx(true, true, true)), // ECN is never passed through
            (GSO_TCPV4, rx(true, false, true)),
            (GSO_TCPV4, rx(false, true, false)),
        ];
        for (gso_type, r) in cases {
            let hdr = tso_hdr(&b, gso_type, 1448);
            assert!(!passes_as_is(&hdr, r));
            let mut f = b.frame.clone();
            let (res, out) = run(&hdr, &mut f, r);
            assert_eq!(res, Ok(3));
            assert_eq!(f, b.frame, "the super-frame is not modified");
            let lens: Vec<usize> = out.iter().map(|(_, f)| f.len()).collect();
            assert_eq!(lens, [54 + 1448, 54 + 1448, 54 + 1104]);
            let tot: Vec<u16> = out.iter().map(|(_, f)| be16_at(f, 16)).collect();
            assert_eq!(tot, [1488, 1488, 1144]);
            let ids: Vec<u16> = out.iter().map(|(_, f)| be16_at(f, 18)).collect();
            assert_eq!(ids, [0xfffe, 0xffff, 0x0000]);
            let seqs: Vec<u32> = out.iter().map(|(_, f)| be32_at(f, 38)).collect();
            assert_eq!(seqs, [0xffff_fa00, 0xffff_ffa8, 0x0000_0550]);
            let fl: Vec<u8> = out.iter().map(|(_, f)| f[47]).collect();
            assert_eq!(
                fl,
                [TCP_ACK | TCP_CWR, TCP_ACK, TCP_ACK | TCP_PSH | TCP_FIN]
            );
            for (h, _) in &out {
                assert_eq!(h.gso_type, GSO_NONE);
                assert_eq!(h.flags, if r.csum { FLAG_DATA_VALID } else { 0 });
            }
            check_segments(&b, &out, 1448, r);
        }
    }

    #[test]
    fn tso6_splits_with_tcp_options() {
        let flags = TCP_ACK | TCP_PSH;
        for (len, mss, want) in [
            (3000, 1000, vec![1000, 1000, 1000]),
            (3001, 1000, vec![1000, 1000, 1000, 1]),
        ] {
            let b = build(
                &[],
                Ip::V6,
                6,
                &tcp_hdr(77, flags, &TCP_TS_OPTS),
                &data(len),
            );
            let hdr = tso_hdr(&b, GSO_TCPV6, mss);
            for r in [rx(false, true, true), rx(true, true, false)] {
                let (res, out) = run(&hdr, &mut b.frame.clone(), r);
                assert_eq!(res, Ok(want.len()));
                let pieces: Vec<usize> = out.iter().map(|(_, f)| f.len() - 86).collect();
                assert_eq!(pieces, want);
                let plen: Vec<u16> = out.iter().map(|(_, f)| be16_at(f, 18)).collect();
                assert_eq!(
                    plen,
                    want.iter().map(|p| 32 + *p as u16).collect::<Vec<_>>()
                );
                check_segments(&b, &out, usize::from(mss), r);
            }
        }
    }

    #[test]
    fn vlan_tagged_tso4_with_ip_options() {
        let opts = vec![1, 1, 1, 0]; // NOP NOP NOP EOL: IHL 6
        for tags in [&[0x8100u16][..], &[0x88a8, 0x8100][..]] {
            let ip = Ip::V4 {
                id: 0x100,
                opts: opts.clone(),
            };
            let b = build(
                tags,
                ip,
                6,
                &tcp_hdr(1, TCP_ACK | TCP_FIN, &[]),
                &data(2000),
            );
            assert_eq!(b.l3, 14 + 4 * tags.len());
            let hdr = tso_hdr(&b, GSO_TCPV4, 1400);
            let r = rx(true, false, true);
            let (res, out) = run(&hdr, &mut b.frame.clone(), r);
            assert_eq!(res, Ok(2));
            assert_eq!(out[0].1.len(), b.payload + 1400);
            assert_eq!(out[1].1.len(), b.payload + 600);
            check_segments(&b, &out, 1400, r);
        }
    }

    #[test]
    fn small_or_empty_gso_payload_yields_one_segment() {
        let flags = TCP_ACK | TCP_PSH | TCP_FIN | TCP_CWR;
        for len in [0, 1, 500, 1448] {
            let b = build(&[], v4(3), 6, &tcp_hdr(9, flags, &[]), &data(len));
            let hdr = tso_hdr(&b, GSO_TCPV4 | GSO_ECN, 1448);
            let (res, out) = run(&hdr, &mut b.frame.clone(), RxOffloads::default());
            assert_eq!(res, Ok(1));
            assert_eq!(out[0].1[b.l4 + 13], flags, "single segment keeps all flags");
            check_segments(&b, &out, 1448, RxOffloads::default());
        }
    }

    #[test]
    fn as_is_frames_are_emitted_unchanged() {
        let b = build(&[], v4(1), 6, &tcp_hdr(1, TCP_ACK, &[]), &data(5000));
        let hdr = NetHdr {
            flags: FLAG_NEEDS_CSUM | FLAG_DATA_VALID,
            num_buffers: 7,
            ..tso_hdr(&b, GSO_TCPV4, 1448)
        };
        let r = rx(true, true, false);
        assert!(passes_as_is(&hdr, r));
        let (res, out) = run(&hdr, &mut b.frame.clone(), r);
        assert_eq!(res, Ok(1));
        let want = NetHdr {
            flags: FLAG_NEEDS_CSUM,
            num_buffers: 0,
            ..hdr
        };
        assert_eq!(out, vec![(want, b.frame.clone())]);

        let plain = NetHdr::default();
        for r in all_rx() {
            let (res, out) = run(&plain, &mut b.frame.clone(), r);
            assert_eq!(res, Ok(1));
            assert_eq!(out, vec![(plain, b.frame.clone())]);
        }
    }

    #[test]
    fn scratch_is_reused_without_reallocation() {
        let b = build(&[], Ip::V6, 6, &tcp_hdr(1, TCP_ACK, &[]), &data(9000));
        let hdr = tso_hdr(&b, GSO_TCPV6, 1440);
        let mut scratch = Vec::new();
        let mut n = 0;
        let mut f = b.frame.clone();
        let r = RxOffloads::default();
        assert_eq!(
            resolve(&hdr, &mut f, r, BIG, &mut scratch, &mut |_, _| n += 1),
            Ok(7)
        );
        let (cap, ptr) = (scratch.capacity(), scratch.as_ptr());
        assert_eq!(
            resolve(&hdr, &mut f, r, BIG, &mut scratch, &mut |_, _| n += 1),
            Ok(7)
        );
        assert_eq!((scratch.capacity(), scratch.as_ptr()), (cap, ptr));
        assert_eq!(n, 14);
    }

    #[test]
    fn rejects_checksum_location_outside_frame() {
        let mut b = build(&[], v4(1), 6, &tcp_hdr(1, TCP_ACK, &[]), &data(10));
        seed_partial(&mut b, 16);
        let len = b.frame.len();
        for (start, off) in [
            (len as u16 + 1, 0),
            (len as u16, 0),
            (b.l4 as u16, 29),
            (0xffff, 0xffff),
        ] {
            let hdr = NetHdr {
                flags: FLAG_NEEDS_CSUM,
                csum_start: start,
                csum_offset: off,
                ..NetHdr::default()
            };
            let want = OffloadError::CsumOutOfFrame {
                csum_start: start,
                csum_offset: off,
                frame_len: len,
            };
            // Both the fix-up path and the pass-through path check it.
            expect_err(&hdr, &b.frame, RxOffloads::default(), want);
            let want = OffloadError::CsumOutOfFrame {
                csum_start: start,
                csum_offset: off,
                frame_len: len,
            };
            expect_err(&hdr, &b.frame, rx(true, false, false), want);
        }
        // The last two bytes are still a valid location.
        let hdr = NetHdr {
            flags: FLAG_NEEDS_CSUM,
            csum_start: b.l4 as u16,
            csum_offset: 28,
            ..NetHdr::default()
        };
        assert_eq!(
            run(&hdr, &mut b.frame.clone(), RxOffloads::default()).0,
            Ok(1)
        );
    }

    #[test]
    fn rejects_truncated_or_bad_tcp_header() {
        let b = build(&[], v4(1), 6, &tcp_hdr(1, TCP_ACK, &[]), &[]);
        let hdr = tso_hdr(&b, GSO_TCPV4, 1448);
        let cut = &b.frame[..b.l4 + 10];
        let want = OffloadError::Truncated {
            layer: Layer::Tcp,
            needed: b.l4 + 20,
            frame_len: b.l4 + 10,
        };
        expect_err(&hdr, cut, RxOffloads::default(), want);

        // Data offset 15 words, but only the 20-byte base header is present.
        let mut f = b.frame.clone();
        f[b.l4 + 12] = 0xf0;
        let want = OffloadError::Truncated {
            layer: Layer::Tcp,
            needed: b.l4 + 60,
            frame_len: b.l4 + 20,
        };
        expect_err(&hdr, &f, RxOffloads::default(), want);

        f[b.l4 + 12] = 0x40;
        expect_err(
            &hdr,
            &f,
            RxOffloads::default(),
            OffloadError::BadTcpHeaderLen(16),
        );
    }

    #[test]
    fn rejects_a_tiny_gso_size() {
        let b = build(&[], v4(1), 6, &tcp_hdr(1, TCP_ACK, &[]), &data(3000));
        let hdr = tso_hdr(&b, GSO_TCPV4, 1);
        expect_err(
            &hdr,
            &b.frame,
            RxOffloads::default(),
            OffloadError::GsoSizeTooSmall(1),
        );
    }

    #[test]
    fn rejects_zero_gso_size() {
        let b = build(&[], v4(1), 6, &tcp_hdr(1, TCP_ACK, &[]), &data(3000));
        let hdr = tso_hdr(&b, GSO_TCPV4, 0);
        expect_err(
            &hdr,
            &b.frame,
            RxOffloads::default(),
            OffloadError::ZeroGsoSize,
        );
        // Even where the frame would otherwise pass through.
        expect_err(
            &hdr,
            &b.frame,
            rx(true, true, true),
            OffloadError::ZeroGsoSize,
        );
    }

    #[test]
    fn rejects_udp_and_unknown_gso_types() {
        let payload = data(3000);
        let b = build(&[], v4(1), 17, &udp_hdr(payload.len()), &payload);
        for (gso_type, kind) in [
            (GSO_UDP, GSO_UDP),
            (GSO_UDP_L4, GSO_UDP_L4),
            (GSO_UDP | GSO_ECN, GSO_UDP),
            (0x42, 0x42),
        ] {
            let hdr = NetHdr {
                gso_type,
                csum_offset: 6,
                ..tso_hdr(&b, gso_type, 1400)
            };
            for r in all_rx() {
                assert!(!passes_as_is(&hdr, r));
                expect_err(&hdr, &b.frame, r, OffloadError::UnsupportedGsoType(kind));
            }
        }
    }

    #[test]
    fn rejects_ipv6_without_tcp_next_header() {
        for next in [0u8, 17, 43, 44, 59, 60] {
            let b = build(&[], Ip::V6, next, &tcp_hdr(1, TCP_ACK, &[]), &data(3000));
            let hdr = tso_hdr(&b, GSO_TCPV6, 1400);
            expect_err(
                &hdr,
                &b.frame,
                RxOffloads::default(),
                OffloadError::NotTcp(next),
            );
        }
        let payload = data(3000);
        let b = build(&[], v4(1), 17, &udp_hdr(payload.len()), &payload);
        let hdr = tso_hdr(&b, GSO_TCPV4, 1400);
        expect_err(
            &hdr,
            &b.frame,
            RxOffloads::default(),
            OffloadError::NotTcp(17),
        );
    }

    #[test]
    fn rejects_malformed_l2_l3() {
        let none = RxOffloads::default();
        let b4 = build(&[], v4(1), 6, &tcp_hdr(1, TCP_ACK, &[]), &data(3000));
        let b6 = build(&[], Ip::V6, 6, &tcp_hdr(1, TCP_ACK, &[]), &data(3000));

        // GSO type vs IP version.
        let want = OffloadError::GsoIpMismatch {
            gso_type: GSO_TCPV4,
            ethertype: 0x86dd,
        };
        expect_err(&tso_hdr(&b6, GSO_TCPV4, 1400), &b6.frame, none, want);
        let want = OffloadError::GsoIpMismatch {
            gso_type: GSO_TCPV6,
            ethertype: 0x0800,
        };
        expect_err(
            &tso_hdr(&b4, GSO_TCPV6 | GSO_ECN, 1400),
            &b4.frame,
            none,
            want,
        );

        let hdr = tso_hdr(&b4, GSO_TCPV4, 1400);
        let want = OffloadError::Truncated {
            layer: Layer::Ethernet,
            needed: 14,
            frame_len: 10,
        };
        expect_err(&hdr, &b4.frame[..10], none, want);
        let want = OffloadError::Truncated {
            layer: Layer::Ipv4,
            needed: 34,
            frame_len: 30,
        };
        expect_err(&hdr, &b4.frame[..30], none, want);
        let want = OffloadError::Truncated {
            layer: Layer::Ipv6,
            needed: 54,
            frame_len: 53,
        };
        expect_err(&tso_hdr(&b6, GSO_TCPV6, 1400), &b6.frame[..53], none, want);

        let mut f = b4.frame.clone();
        f[12..14].copy_from_slice(&0x0806u16.to_be_bytes());
        expect_err(&hdr, &f, none, OffloadError::NotIp(0x0806));

        let mut f = b4.frame.clone();
        f[14] = 0x65;
        let want = OffloadError::IpVersionMismatch {
            expected: 4,
            found: 6,
        };
        expect_err(&hdr, &f, none, want);

        let mut f = b4.frame.clone();
        f[14] = 0x44;
        expect_err(&hdr, &f, none, OffloadError::BadIpv4HeaderLen(16));

        let mut f = b4.frame.clone();
        f[14] = 0x4f; // 60-byte IPv4 header in a 54-byte frame prefix
        let want = OffloadError::Truncated {
            layer: Layer::Ipv4,
            needed: 74,
            frame_len: 54,
        };
        expect_err(&hdr, &f[..54], none, want);

        for frag in [0x2000u16, 0x0001, 0x3fff] {
            let mut f = b4.frame.clone();
            f[20..22].copy_from_slice(&frag.to_be_bytes());
            expect_err(&hdr, &f, none, OffloadError::Ipv4Fragment);
        }

        let b = build(
            &[0x88a8, 0x8100, 0x8100],
            v4(1),
            6,
            &tcp_hdr(1, 0, &[]),
            &data(10),
        );
        expect_err(
            &tso_hdr(&b, GSO_TCPV4, 1400),
            &b.frame,
            none,
            OffloadError::TooManyVlanTags,
        );
        let want = OffloadError::Truncated {
            layer: Layer::Vlan,
            needed: 18,
            frame_len: 17,
        };
        expect_err(&tso_hdr(&b, GSO_TCPV4, 1400), &b.frame[..17], none, want);
    }

    /// Bytes after the IP packet are padding: never payload with fresh checksums.
    #[test]
    fn segmentation_stops_at_the_ip_length() {
        for ip in [v4(1), Ip::V6] {
            let b = build(&[], ip, 6, &tcp_hdr(1, TCP_ACK, &[]), &data(4000));
            let kind = if b.v6 { GSO_TCPV6 } else { GSO_TCPV4 };
            let hdr = tso_hdr(&b, kind, 1448);
            let mut padded = b.frame.clone();
            padded.extend_from_slice(&[0xab; 300]);
            let (res, out) = run(&hdr, &mut padded, RxOffloads::default());
            assert_eq!(res, Ok(3));
            check_segments(&b, &out, 1448, RxOffloads::default());
            // An IP length beyond the frame is malformed.
            let short = &b.frame[..b.frame.len() - 10];
            assert!(matches!(
                run(&hdr, &mut short.to_vec(), RxOffloads::default()).0,
                Err(OffloadError::BadIpLength { .. })
            ));
        }
    }

    #[test]
    fn passes_as_is_truth_table() {
        let hdr = |flags, gso_type| NetHdr {
            flags,
            gso_type,
            gso_size: 1448,
            ..NetHdr::default()
        };
        let n = FLAG_NEEDS_CSUM;
        for r in all_rx() {
            let RxOffloads { csum, tso4, tso6 } = r;
            let table = [
                (hdr(0, GSO_NONE), true),
                (hdr(FLAG_DATA_VALID, GSO_NONE), true),
                (hdr(n, GSO_NONE), csum),
                (hdr(n, GSO_TCPV4), tso4 && csum),
                (hdr(0, GSO_TCPV4), tso4 && csum),
                (hdr(n, GSO_TCPV6), tso6 && csum),
                (hdr(n, GSO_TCPV4 | GSO_ECN), false),
                (hdr(n, GSO_TCPV6 | GSO_ECN), false),
                (hdr(n, GSO_ECN), false),
                (hdr(0, GSO_ECN), false),
                (hdr(n, GSO_UDP), false),
                (hdr(n, GSO_UDP_L4), false),
                (hdr(n, 0x42), false),
            ];
            for (h, want) in table {
                assert_eq!(passes_as_is(&h, r), want, "{h:?} with {r:?}");
            }
        }
        assert!(passes_as_is(&hdr(n, GSO_TCPV4), rx(true, true, false)));
        assert!(!passes_as_is(&hdr(n, GSO_TCPV4), rx(false, true, true)));
        assert!(!passes_as_is(&hdr(n, GSO_TCPV6), rx(true, true, false)));
        assert!(passes_as_is(&hdr(n, GSO_TCPV6), rx(true, false, true)));
    }

    struct Lcg(u64);

    impl Lcg {
        fn next(&mut self) -> u64 {
            self.0 = self
                .0
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            self.0 >> 33
        }

        fn below(&mut self, n: usize) -> usize {
            (self.next() % n as u64) as usize
        }

        fn pick<T: Copy>(&mut self, xs: &[T]) -> T {
            xs[self.below(xs.len())]
        }
    }

    #[test]
    fn never_panics_on_garbage() {
        let mut g = Lcg(0x5eed_1234_abcd_0001);
        let mut scratch = Vec::new();
        for _ in 0..20_000 {
            let mut frame = match g.below(5) {
                0 => (0..g.below(200)).map(|_| g.next() as u8).collect(),
                1 => build(&[], v4(1), 6, &tcp_hdr(1, 0x99, &[]), &data(g.below(3000))).frame,
                2 => {
                    build(
                        &[0x8100],
                        Ip::V6,
                        6,
                        &tcp_hdr(1, 0x19, &TCP_TS_OPTS),
                        &data(g.below(3000)),
                    )
                    .frame
                }
                3 => {
                    let n = g.below(300);
                    build(&[], v4(2), 17, &udp_hdr(n), &data(n)).frame
                }
                _ => {
                    build(
                        &[0x88a8, 0x8100],
                        v4(3),
                        6,
                        &tcp_hdr(1, 0x10, &[]),
                        &data(g.below(100)),
                    )
                    .frame
                }
            };
            for _ in 0..g.below(4) {
                if !frame.is_empty() {
                    let i = g.below(frame.len());
                    frame[i] = g.next() as u8;
                }
            }
            if g.below(4) == 0 {
                frame.truncate(g.below(frame.len() + 1));
            }
            let len = frame.len();
            let (f8, t8, s16, o16) = (g.next() as u8, g.next() as u8, g.next() as u16, g.next());
            let (near_start, any_start) = (g.below(len + 20) as u16, g.next() as u16);
            let small_off = g.below(64) as u16;
            let hdr = NetHdr {
                flags: g.pick(&[0, 1, 2, 3, f8]),
                gso_type: g.pick(&[0, 1, 3, 4, 5, 0x80, 0x81, 0x84, t8]),
                hdr_len: g.next() as u16,
                gso_size: g.pick(&[0, 1, 7, 536, 1448, s16]),
                csum_start: g.pick(&[14, 34, 54, near_start, any_start]),
                csum_offset: g.pick(&[6, 16, small_off, o16 as u16]),
                num_buffers: g.next() as u16,
            };
            let r = rx(g.below(2) == 0, g.below(2) == 0, g.below(2) == 0);
            let orig = frame.clone();
            let mut emitted = 0usize;
            let mut sizes_ok = true;
            let mut sum_ok = true;
            let fixes_csum = !passes_as_is(&hdr, r) && !hdr.is_gso() && hdr.needs_csum();
            // The seed the guest left in the field stands for the pseudo-header, so a completed
            // checksum verifies as seed + covered bytes (field at an even offset).
            let field = usize::from(hdr.csum_start) + usize::from(hdr.csum_offset);
            let seed: Vec<u8> = orig.get(field..field + 2).unwrap_or(&[]).to_vec();
            let res = resolve(&hdr, &mut frame, r, BIG, &mut scratch, &mut |h, f| {
                emitted += 1;
                sizes_ok &= f.len() <= len && h.num_buffers == 0;
                if fixes_csum && hdr.csum_offset & 1 == 0 {
                    let covered = &f[usize::from(hdr.csum_start)..];
                    sum_ok &= ones_sum(&[&seed, covered]) == 0xffff;
                }
            });
            match res {
                Ok(n) => {
                    assert_eq!(n, emitted);
                    assert!(n >= 1);
                }
                Err(_) => {
                    assert_eq!(emitted, 0);
                    assert_eq!(frame, orig);
                }
            }
            assert!(sizes_ok && sum_ok, "{hdr:?} {r:?}");
        }
    }
}
