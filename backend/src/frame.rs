//! Moving frame bytes between guest buffers: gather reads of headers, and the single copy from a
//! sender's TX buffers (or a software-built frame) straight into a receiver's RX buffers.

use crate::hostmem::{HostMem, HostPtr};
use crate::ring::{Flat, Seg};

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CopyError {
    #[error("guest buffer at {0:#x} is not mapped")]
    Unmapped(u64),
    #[error("buffers hold fewer bytes than the frame")]
    Short,
}

/// Where a frame's bytes come from.
pub enum Source<'a> {
    /// A sender's TX chain, in its own guest memory.
    Guest {
        mem: &'a HostMem<'a>,
        segs: &'a [Seg],
    },
    /// A sender's TX chain that is one buffer in one region, already translated: `len` bytes at
    /// `ptr`, valid while the sender's memory snapshot is held.
    Host { ptr: HostPtr, len: usize },
    /// A frame built by the device (software offload fallback).
    Bytes(&'a [u8]),
}

impl Source<'_> {
    /// Host address of `len` bytes starting `skip` bytes in, when they are in one piece.
    #[inline]
    fn contiguous(&self, skip: usize, len: usize) -> Option<*const u8> {
        let end = skip.checked_add(len)?;
        match self {
            Source::Guest { mem, segs } => contiguous(mem, segs, skip, len).map(|p| p as *const u8),
            // SAFETY: skip + len <= the bytes translated at `ptr`.
            Source::Host { ptr, len: have } => {
                (end <= *have).then(|| unsafe { ptr.0.add(skip) } as *const u8)
            }
            Source::Bytes(b) => b.get(skip..end).map(|s| s.as_ptr()),
        }
    }
}

/// Cursor over a list of guest buffers.
struct Cursor<'a> {
    segs: &'a [Seg],
    idx: usize,
    off: u32,
}

impl<'a> Cursor<'a> {
    fn new(segs: &'a [Seg], mut skip: usize) -> Self {
        let mut idx = 0;
        while idx < segs.len() && skip >= segs[idx].len as usize {
            skip -= segs[idx].len as usize;
            idx += 1;
        }
        Cursor {
            segs,
            idx,
            off: skip as u32,
        }
    }

    /// Next contiguous piece of at most `max` bytes.
    fn next(&mut self, max: usize) -> Option<(u64, usize)> {
        let s = self.segs.get(self.idx)?;
        let n = ((s.len - self.off) as usize).min(max);
        let addr = s.addr + u64::from(self.off);
        self.off += n as u32;
        if self.off == s.len {
            self.idx += 1;
            self.off = 0;
        }
        Some((addr, n))
    }
}

/// Host pointer and length of at most `max` bytes at `addr`, cut at the end of its region.
fn span(mem: &HostMem<'_>, addr: u64, max: usize) -> Result<(*mut u8, usize), CopyError> {
    let (p, room) = mem.span(addr).ok_or(CopyError::Unmapped(addr))?;
    Ok((p, max.min(room)))
}

/// Gathers up to `buf.len()` bytes starting `skip` bytes into the chain. Returns bytes read.
pub fn read(
    mem: &HostMem<'_>,
    segs: &[Seg],
    skip: usize,
    buf: &mut [u8],
) -> Result<usize, CopyError> {
    // Headers nearly always sit in one buffer.
    if let Some(p) = contiguous(mem, segs, skip, buf.len()) {
        // SAFETY: `p` has buf.len() bytes inside the mapping.
        unsafe { std::ptr::copy_nonoverlapping(p, buf.as_mut_ptr(), buf.len()) };
        return Ok(buf.len());
    }
    let mut cur = Cursor::new(segs, skip);
    let mut done = 0;
    // What is left of a buffer that runs on into the next memory region.
    let mut pend: Option<(u64, usize)> = None;
    while done < buf.len() {
        let Some((addr, len)) = pend.take().or_else(|| cur.next(buf.len() - done)) else {
            break;
        };
        let (p, n) = span(mem, addr, len)?;
        // SAFETY: `span` bounds `n` to the mapping; `buf` has room for it.
        unsafe { std::ptr::copy_nonoverlapping(p, buf[done..].as_mut_ptr(), n) };
        if n < len {
            pend = Some((addr + n as u64, len - n));
        }
        done += n;
    }
    Ok(done)
}

/// Copies `len` bytes: from `src` starting `src_skip` bytes in, into `dst` buffers in `dst_mem`
/// starting `dst_skip` bytes in.
pub fn copy(
    src: &Source<'_>,
    src_skip: usize,
    dst_mem: &HostMem<'_>,
    dst: &[Seg],
    dst_skip: usize,
    len: usize,
) -> Result<(), CopyError> {
    let mut out = Cursor::new(dst, dst_skip);
    let mut left = len;
    match src {
        Source::Bytes(_) | Source::Host { .. } => {
            let mut pos = src_skip;
            // What is left of a buffer that runs on into the next memory region.
            let mut pend: Option<(u64, usize)> = None;
            while left > 0 {
                let (addr, len) = match pend.take() {
                    Some(p) => p,
                    None => out.next(left).ok_or(CopyError::Short)?,
                };
                let (d, n) = span(dst_mem, addr, len)?;
                let s = src.contiguous(pos, n).ok_or(CopyError::Short)?;
                // SAFETY: `d` has `n` bytes inside the destination mapping and `s` has `n`
                // bytes; `copy` because a host source is guest memory too (see below).
                unsafe { std::ptr::copy(s, d, n) };
                if n < len {
                    pend = Some((addr + n as u64, len - n));
                }
                pos += n;
                left -= n;
            }
        }
        Source::Guest { mem, segs } => {
            let mut inp = Cursor::new(segs, src_skip);
            // Pieces left over when one side's piece is longer than the other's.
            let mut pend_in: Option<(u64, usize)> = None;
            let mut pend_out: Option<(u64, usize)> = None;
            while left > 0 {
                let (ia, il) = match pend_in.take() {
                    Some(p) => p,
                    None => inp.next(left).ok_or(CopyError::Short)?,
                };
                let (oa, ol) = match pend_out.take() {
                    Some(p) => p,
                    None => out.next(left).ok_or(CopyError::Short)?,
                };
                let (s, n) = span(mem, ia, il.min(ol))?;
                let (d, n) = span(dst_mem, oa, n)?;
                // SAFETY: both pointers have `n` bytes inside their mappings. Sender and
                // receiver memories are separate mappings (even of one file), so `copy` (not
                // `copy_nonoverlapping`) keeps a frontend that aliases them from causing UB.
                unsafe { std::ptr::copy(s, d, n) };
                if n < il {
                    pend_in = Some((ia + n as u64, il - n));
                }
                if n < ol {
                    pend_out = Some((oa + n as u64, ol - n));
                }
                left -= n;
            }
        }
    }
    Ok(())
}

/// Host address of `len` bytes starting `skip` bytes into the chain, when they lie in one buffer
/// inside one memory region.
/// Copies `len` bytes of `src` from `skip` into `out` (a capture's copy of a frame).
pub fn gather(
    src: &Source<'_>,
    skip: usize,
    len: usize,
    out: &mut Vec<u8>,
) -> Result<(), CopyError> {
    out.resize(len, 0);
    match src {
        Source::Guest { mem, segs } => match read(mem, segs, skip, out)? {
            n if n == len => Ok(()),
            _ => Err(CopyError::Short),
        },
        _ => {
            let p = src.contiguous(skip, len).ok_or(CopyError::Short)?;
            // SAFETY: `contiguous` vouches for `len` bytes at `p`; a host source stays mapped
            // while its sender's snapshot is held, which it is for the whole delivery.
            unsafe { std::ptr::copy(p, out.as_mut_ptr(), len) };
            Ok(())
        }
    }
}

fn contiguous(mem: &HostMem<'_>, segs: &[Seg], mut skip: usize, len: usize) -> Option<*mut u8> {
    for s in segs {
        let l = s.len as usize;
        if skip < l {
            return (l - skip >= len)
                .then_some(s.addr + skip as u64)
                .and_then(|a| mem.ptr(a, len));
        }
        skip -= l;
    }
    None
}

/// Writes `hdr` and then `len` frame bytes from `src` (starting `src_skip` bytes in) into the
/// `dst` buffers: the receive side's one copy. The common case, frame and destination each in
/// one buffer, takes one translation per side instead of walking both chains.
pub fn copy_with_header(
    hdr: &[u8],
    src: &Source<'_>,
    src_skip: usize,
    dst_mem: &HostMem<'_>,
    dst: &[Seg],
    len: usize,
) -> Result<(), CopyError> {
    let total = hdr.len() + len;
    let d = contiguous(dst_mem, dst, 0, total);
    if let (Some(d), Some(s)) = (d, src.contiguous(src_skip, len)) {
        // SAFETY: `d` has hdr.len() + len bytes inside the destination mapping, `s` has len.
        unsafe { write_at(d, hdr, s, len) };
        return Ok(());
    }
    copy(&Source::Bytes(hdr), 0, dst_mem, dst, 0, hdr.len())?;
    copy(src, src_skip, dst_mem, dst, hdr.len(), len)
}

/// [`copy_with_header`] into one buffer already translated by
/// [`Ring::flat`](crate::ring::Ring::flat).
#[inline]
pub(crate) fn copy_with_header_flat(
    hdr: &[u8],
    src: &Source<'_>,
    src_skip: usize,
    dst_mem: &HostMem<'_>,
    dst: &Flat,
    len: usize,
) -> Result<(), CopyError> {
    if (dst.seg.len as usize) < hdr.len() + len {
        return Err(CopyError::Short);
    }
    match src.contiguous(src_skip, len) {
        // SAFETY: `dst` was translated for seg.len bytes, checked above; `s` has len bytes.
        Some(s) => unsafe { write_at(dst.host.0, hdr, s, len) },
        None => copy_with_header(
            hdr,
            src,
            src_skip,
            dst_mem,
            std::slice::from_ref(&dst.seg),
            len,
        )?,
    }
    Ok(())
}

/// Writes `hdr` and then `len` bytes from `s` at `d`.
///
/// # Safety
/// `d` must have room for hdr.len() + len bytes and `s` must have `len` readable bytes. They may
/// overlap (sender and receiver memories can be mappings of one file): `copy`, not
/// `copy_nonoverlapping`, keeps a frontend that aliases them from causing UB.
#[inline]
unsafe fn write_at(d: *mut u8, hdr: &[u8], s: *const u8, len: usize) {
    std::ptr::copy_nonoverlapping(hdr.as_ptr(), d, hdr.len());
    std::ptr::copy(s, d.add(hdr.len()), len);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hostmem::MemMap;
    use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

    fn two_region_mem() -> GuestMemoryMmap<()> {
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x1000), (GuestAddress(0x1000), 0x1000)])
            .unwrap()
    }

    #[test]
    fn copies_between_differently_split_buffers() {
        let a = two_region_mem();
        let ma = MemMap::of(&a);
        let b = two_region_mem();
        let mb = MemMap::of(&b);
        let data: Vec<u8> = (0..200u8).collect();
        // Source: 12-byte header then data in pieces of 7, 93, 100 bytes; one straddles regions.
        a.write_slice(&[0xaa; 12], GuestAddress(0x100)).unwrap();
        a.write_slice(&data[..7], GuestAddress(0x200)).unwrap();
        a.write_slice(&data[7..100], GuestAddress(0xfd0)).unwrap();
        a.write_slice(&data[100..], GuestAddress(0x1800)).unwrap();
        let src = [
            Seg {
                addr: 0x100,
                len: 12,
            },
            Seg {
                addr: 0x200,
                len: 7,
            },
            Seg {
                addr: 0xfd0,
                len: 93,
            },
            Seg {
                addr: 0x1800,
                len: 100,
            },
        ];
        let dst = [
            Seg {
                addr: 0x400,
                len: 50,
            },
            Seg {
                addr: 0x1900,
                len: 500,
            },
        ];
        copy(
            &Source::Guest {
                mem: &ma.host(),
                segs: &src,
            },
            12,
            &mb.host(),
            &dst,
            3,
            200,
        )
        .unwrap();
        let mut got = vec![0u8; 200];
        b.read_slice(&mut got[..47], GuestAddress(0x403)).unwrap();
        b.read_slice(&mut got[47..], GuestAddress(0x1900)).unwrap();
        assert_eq!(got, data);
    }

    #[test]
    fn header_and_frame_land_the_same_whether_buffers_are_split_or_not() {
        let a = two_region_mem();
        let ma = MemMap::of(&a);
        let b = two_region_mem();
        let mb = MemMap::of(&b);
        let data: Vec<u8> = (0..100u8).collect();
        a.write_slice(&data, GuestAddress(0x10c)).unwrap();
        let hdr = [0xee; 12];
        let one = [Seg {
            addr: 0x100,
            len: 112,
        }];
        let split = [
            Seg {
                addr: 0x100,
                len: 12,
            },
            Seg {
                addr: 0x10c,
                len: 100,
            },
        ];
        for src in [&one[..], &split[..]] {
            // One destination buffer; then a chain that splits right inside the frame.
            let dsts: [&[Seg]; 2] = [
                &[Seg {
                    addr: 0x800,
                    len: 200,
                }],
                &[
                    Seg {
                        addr: 0x800,
                        len: 50,
                    },
                    Seg {
                        addr: 0x1100,
                        len: 100,
                    },
                ],
            ];
            for dst in dsts {
                b.write_slice(&[0u8; 200], GuestAddress(0x800)).unwrap();
                let (ha, hb) = (ma.host(), mb.host());
                let s = Source::Guest {
                    mem: &ha,
                    segs: src,
                };
                copy_with_header(&hdr, &s, 12, &hb, dst, 100).unwrap();
                let mut got = vec![0u8; 112];
                read(&hb, dst, 0, &mut got).unwrap();
                assert_eq!(got[..12], hdr);
                assert_eq!(got[12..], data[..]);
            }
        }
        let short = [Seg {
            addr: 0x800,
            len: 100,
        }];
        let s = Source::Guest {
            mem: &ma.host(),
            segs: &one,
        };
        assert_eq!(
            copy_with_header(&hdr, &s, 12, &mb.host(), &short, 100),
            Err(CopyError::Short)
        );
    }

    #[test]
    fn a_translated_source_copies_like_a_guest_one_and_is_bounds_checked() {
        let a = two_region_mem();
        let ma = MemMap::of(&a);
        let b = two_region_mem();
        let mb = MemMap::of(&b);
        let data: Vec<u8> = (0..100u8).collect();
        a.write_slice(&data, GuestAddress(0x10c)).unwrap();
        let ha = ma.host();
        let hb = mb.host();
        let ptr = HostPtr(ha.ptr(0x100, 112).unwrap());
        let host = Source::Host { ptr, len: 112 };
        let hdr = [0xee; 12];
        // Into one translated buffer, and into a chain split inside the frame.
        let dst = Flat {
            seg: Seg {
                addr: 0x800,
                len: 112,
            },
            host: HostPtr(hb.ptr(0x800, 112).unwrap()),
        };
        copy_with_header_flat(&hdr, &host, 12, &hb, &dst, 100).unwrap();
        let mut got = vec![0u8; 112];
        read(&hb, &[dst.seg], 0, &mut got).unwrap();
        assert_eq!((&got[..12], &got[12..]), (&hdr[..], &data[..]));
        let split = [
            Seg {
                addr: 0x900,
                len: 50,
            },
            Seg {
                addr: 0x1100,
                len: 62,
            },
        ];
        copy_with_header(&hdr, &host, 12, &hb, &split, 100).unwrap();
        read(&hb, &split, 0, &mut got).unwrap();
        assert_eq!(&got[12..], &data[..]);
        // Never past what was translated, nor past the destination.
        assert_eq!(
            copy_with_header(&hdr, &host, 13, &hb, &split, 100),
            Err(CopyError::Short)
        );
        assert_eq!(
            copy_with_header_flat(&hdr, &host, 12, &hb, &dst, 101),
            Err(CopyError::Short)
        );
    }

    #[test]
    fn gathers_and_reports_short_chains() {
        let a = two_region_mem();
        let ma = MemMap::of(&a);
        a.write_slice(&[1, 2, 3], GuestAddress(0x10)).unwrap();
        a.write_slice(&[4, 5], GuestAddress(0x20)).unwrap();
        let segs = [Seg { addr: 0x10, len: 3 }, Seg { addr: 0x20, len: 2 }];
        let mut buf = [0u8; 8];
        assert_eq!(read(&ma.host(), &segs, 1, &mut buf).unwrap(), 4);
        assert_eq!(buf[..4], [2, 3, 4, 5]);
        let dst = [Seg {
            addr: 0x100,
            len: 3,
        }];
        assert_eq!(
            copy(&Source::Bytes(&[9; 10]), 0, &ma.host(), &dst, 0, 10),
            Err(CopyError::Short)
        );
    }

    #[test]
    fn unmapped_buffer_is_an_error_not_a_panic() {
        let a = two_region_mem();
        let ma = MemMap::of(&a);
        let segs = [Seg {
            addr: 0x9000,
            len: 4,
        }];
        let mut buf = [0u8; 4];
        assert_eq!(
            read(&ma.host(), &segs, 0, &mut buf),
            Err(CopyError::Unmapped(0x9000))
        );
    }
}
