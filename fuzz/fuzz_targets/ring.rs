//! Descriptor chains and virtio-net headers, as a driver can write them: the avail ring and the
//! descriptor table (direct and indirect) are whatever the input says, in guest memories of
//! several shapes. Checks, besides "no panic, no bad access":
//! - the one-buffer fast path (`Ring::flat`) only takes what the general walk takes as one
//!   buffer, with the same address and length, translated to the right host address;
//! - a walked chain stays inside guest memory, inside its length bound, and is gathered
//!   (`frame::read`) into exactly the bytes vm-memory reads at those addresses;
//! - the virtio-net header read from it round-trips;
//! - used entries written and published come out where the driver reads them.
//!
//! - with the vIOMMU on (flag 0x20), descriptor and indirect-table addresses are IOVAs
//!   translated through an IOTLB the input fills; every check above holds for the translated
//!   buffers, which must also lie inside an entry with the right permission.
//!
//! Input: flags (1), ring size (1), ring base (2), direct walk table address (8), size (2),
//! head (2), max_len (4), gather skip (2), gather length (2); with flag 0x20, an entry count
//! (1, up to 7) and per entry IOVA (8), size in 16-byte units (2), guest address (4) and
//! permission (1); then the guest memory image from address 0.
#![no_main]

use backend::hostmem::MemMap;
use backend::net_hdr::{NetHdr, NET_HDR_LEN};
use backend::ring::{self, ChainError, Dir, Ring, Seg, Table};
use libfuzzer_sys::fuzz_target;
use vhost_user_sriov_net_fuzz::{guest_mem, Input, RingLayout};
use virtio_queue::QueueT;
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion};

/// `frame::read` gathers a buffer that runs across two adjacent memory regions short (found by
/// this target; reproducer in fuzz/artifacts-found/). Set to false once fixed.
const KNOWN_BUG_READ_ACROSS_REGIONS: bool = false;

fuzz_target!(|data: &[u8]| {
    let mut inp = Input(data);
    let flags = inp.u8();
    let dir = if flags & 1 != 0 {
        Dir::Writable
    } else {
        Dir::Readable
    };
    let indirect = flags & 2 != 0;
    let layout = usize::from(flags >> 2) & 3;
    let event_idx = flags & 0x10 != 0;
    let size = RingLayout::size_from(inp.u8());
    let base = u64::from(inp.u16() & !15);
    let t_addr = inp.u64();
    let t_size = inp.u16();
    let t_head = inp.u16();
    let max_len = inp.u32();
    let skip = usize::from(inp.u16());
    let glen = usize::from(inp.u16() % 2048);
    // The vIOMMU: QEMU's virtual address of guest address g is VA + g.
    const VA: u64 = 0x7f00_0000_0000;
    let iommu = backend::iommu::Iommu::default();
    let mut entries = Vec::new();
    if flags & 0x20 != 0 {
        for _ in 0..inp.u8() % 8 {
            let (iova, size, gpa, perm) = (
                inp.u64(),
                u64::from(inp.u16()) * 16,
                u64::from(inp.u32()),
                inp.u8() & 3,
            );
            if iommu.write().update(iova, size, VA + gpa, perm).is_ok() {
                entries.push((iova, size, gpa, perm));
            }
        }
    }
    let mem = guest_mem(0, layout, inp.rest());
    if flags & 0x20 != 0 {
        let regions = mem
            .iter()
            .map(|r| backend::iotlb::VaRegion {
                gpa: r.start_addr().0,
                size: r.len(),
                uaddr: VA + r.start_addr().0,
            })
            .collect();
        if iommu.write().set_regions(regions).is_err() {
            return;
        }
    }
    let map = MemMap::new(std::sync::Arc::new(mem.clone()));
    let host = if flags & 0x20 != 0 {
        map.host().with_dma(iommu.dma())
    } else {
        map.host()
    };

    // Any table, any head: the general walk on its own.
    let table = Table {
        addr: t_addr,
        size: t_size,
    };
    let mut segs = Vec::new();
    let walked = ring::walk_chain(&host, table, t_head, dir, indirect, max_len, &mut segs);
    check_walk(&mem, &host, &walked, &segs, dir, max_len, skip, glen);
    check_translated(&walked, &segs, &entries, dir);

    // The chains the avail ring offers, as the data path takes them.
    let lay = RingLayout::new(base, size);
    let mut q = lay.queue(event_idx);
    let Ok(r) = Ring::map(&host, &q) else {
        return;
    };
    let Ok(n) = r.pending(&q) else {
        return;
    };
    let n = n.min(64);
    for k in 0..n {
        let head = r.avail_head(&q, k);
        assert_eq!(head, lay.avail_entry(&mem, k));
        segs.clear();
        let walked = ring::walk_chain(&host, r.table(), head, dir, indirect, max_len, &mut segs);
        check_walk(&mem, &host, &walked, &segs, dir, max_len, skip, glen);
        check_translated(&walked, &segs, &entries, dir);
        if let Some((seg, p)) = backend::fuzzing::flat(&r, &host, head, dir, max_len) {
            assert_eq!(walked, Ok(seg.len), "flat took a chain the walk refuses");
            assert_eq!(segs, vec![seg]);
            assert_eq!(host.ptr(seg.addr, seg.len as usize), Some(p));
        }
        r.warm(k, k);
        r.warm_desc(&host, head, dir);
        r.write_used(&q, k, head, walked.unwrap_or(0));
    }
    r.suppress_kicks();
    r.prefetch_used(&q, n);
    let before = q.next_used();
    r.publish_used(&mut q, n);
    if n == 0 {
        return;
    }
    assert_eq!(lay.used_idx(&mem), before.wrapping_add(n));
    for k in 0..n {
        assert_eq!(
            lay.used_elem(&mem, k).0,
            u32::from(lay.avail_entry(&mem, k))
        );
    }
});

/// With the vIOMMU on, every buffer of a walked chain lies inside the guest ranges of entries
/// the input added that grant the access (a buffer may run across entries contiguous in both
/// address spaces; later entries may have replaced parts of earlier ones, so the added ones are
/// a superset of what the table held).
fn check_translated(
    walked: &Result<u32, ChainError>,
    segs: &[Seg],
    entries: &[(u64, u64, u64, u8)],
    dir: Dir,
) {
    if walked.is_err() || entries.is_empty() {
        return;
    }
    let need = match dir {
        Dir::Readable => 1,
        Dir::Writable => 2,
    };
    for s in segs {
        let end = s.addr + u64::from(s.len);
        let mut at = s.addr;
        while at < end {
            let reach = entries
                .iter()
                .filter(|&&(_, size, gpa, perm)| perm & need != 0 && gpa <= at && at - gpa < size)
                .map(|&(_, size, gpa, _)| gpa + size)
                .max();
            let Some(r) = reach else {
                panic!(
                    "buffer {:#x}+{}: {at:#x} is in no entry that allows it: {entries:x?}",
                    s.addr, s.len
                );
            };
            at = r;
        }
    }
}

#[allow(clippy::too_many_arguments)]
fn check_walk(
    mem: &GuestMemoryMmap<()>,
    host: &backend::hostmem::HostMem<'_>,
    walked: &Result<u32, ChainError>,
    segs: &[Seg],
    dir: Dir,
    max_len: u32,
    skip: usize,
    glen: usize,
) {
    let Ok(total) = *walked else {
        return;
    };
    assert!(total <= max_len);
    let sum: u64 = segs.iter().map(|s| u64::from(s.len)).sum();
    assert_eq!(sum, u64::from(total));
    for s in segs {
        assert!(s.len > 0, "an empty buffer was kept");
        assert!(host.check_range(s.addr, s.len as usize));
    }
    if dir == Dir::Readable {
        assert!(!segs.is_empty(), "a TX chain without buffers");
    }

    // Gather against vm-memory's own reads at the same addresses.
    let total = total as usize;
    let want_len = glen.min(total.saturating_sub(skip));
    let mut want = vec![0u8; want_len];
    let mut at = 0usize;
    let mut left_skip = skip;
    for s in segs {
        let l = s.len as usize;
        if left_skip >= l {
            left_skip -= l;
            continue;
        }
        let n = (l - left_skip).min(want_len - at);
        mem.read_slice(
            &mut want[at..at + n],
            GuestAddress(s.addr + left_skip as u64),
        )
        .unwrap();
        at += n;
        left_skip = 0;
        if at == want_len {
            break;
        }
    }
    let mut got = vec![0u8; glen];
    let n = backend::frame::read(host, segs, skip, &mut got).expect("walked buffers are mapped");
    let straddles = segs
        .iter()
        .any(|s| host.ptr(s.addr, s.len as usize).is_none());
    if KNOWN_BUG_READ_ACROSS_REGIONS && straddles {
        // See fuzz/artifacts-found/README.md: a buffer running across two adjacent regions is
        // gathered short. Only the bounds are checked for such chains until that is fixed.
        assert!(n <= want_len);
    } else {
        assert_eq!(n, want_len);
        assert_eq!(
            &got[..n],
            &want[..],
            "gathered bytes differ from guest memory"
        );
    }

    // The virtio-net header a TX chain starts with.
    if total >= NET_HDR_LEN && !(KNOWN_BUG_READ_ACROSS_REGIONS && straddles) {
        let mut h = [0u8; NET_HDR_LEN];
        assert_eq!(backend::frame::read(host, segs, 0, &mut h), Ok(NET_HDR_LEN));
        let hdr = NetHdr::parse(&h);
        assert_eq!(hdr.to_bytes(), h);
        assert_eq!(hdr.is_gso(), hdr.gso_kind() != 0);
    }
}
