//! Guest-physical to host-virtual translation for the data path. Built once per batch (or per RX
//! run) from a guest-memory snapshot, it keeps the few regions a frontend maps in a small inline
//! table: vm-memory's per-access region lookup and slice checks were a fifth of the per-frame
//! cost. Every access is bounds-checked against one region; nothing here trusts a guest address.

use std::cell::Cell;
use std::sync::Arc;

use vm_memory::{GuestAddress, GuestMemoryBackend, GuestMemoryRegion, MemoryRegionAddress};

use crate::iommu::Dma;
use crate::Mem;

/// A host address inside a guest-memory snapshot, kept in per-queue scratch lists. It is only
/// dereferenced while the snapshot it was translated from is held (the batch that made it), and
/// lists are cleared before reuse, so a stale one is never read. That makes it safe to send with
/// the scratch it sits in, which a poller thread may take over between batches. Only this crate
/// makes one (from a translation), so code outside cannot hand the data path a made-up address.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HostPtr(pub(crate) *mut u8);

// SAFETY: a plain address; see above for when it is dereferenced.
unsafe impl Send for HostPtr {}

impl HostPtr {
    /// Asks the CPU to start fetching the cache line at this address. Never faults, so a wrong
    /// address costs nothing but the hint.
    #[inline(always)]
    pub fn prefetch(self) {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: PREFETCHT0 has no architectural effect and cannot fault.
        unsafe {
            use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};
            _mm_prefetch::<_MM_HINT_T0>(self.0 as *const i8);
        }
    }

    /// Prefetches the first and the last line of the `len` bytes here: headers that straddle a
    /// line boundary (a virtio-net header at the end of one line, the frame in the next) need
    /// both.
    #[inline(always)]
    pub fn prefetch_span(self, len: usize) {
        self.prefetch();
        HostPtr(self.0.wrapping_add(len.saturating_sub(1))).prefetch();
    }

    /// As [`HostPtr::prefetch_span`], for writing (PREFETCHW, see `prefetch_write`).
    #[inline(always)]
    pub fn prefetch_write_span(self, len: usize) {
        prefetch_write(self.0);
        prefetch_write(self.0.wrapping_add(len.saturating_sub(1)));
    }
}

/// Asks the CPU to fetch the cache line at `p` for writing (PREFETCHW), so a store to a line
/// another core holds finds it already owned. Never faults; a no-op where the CPU lacks it, or
/// before [`detect_cpu`] ran.
#[inline(always)]
pub(crate) fn prefetch_write(p: *const u8) {
    #[cfg(target_arch = "x86_64")]
    if PREFETCHW.load(std::sync::atomic::Ordering::Relaxed) {
        // SAFETY: PREFETCHW has no architectural effect and cannot fault; the CPU has it.
        unsafe {
            std::arch::asm!("prefetchw [{0}]", in(reg) p, options(nostack, preserves_flags, readonly));
        }
    }
}

/// CPUID.80000001H:ECX.PRFCHW, set by [`detect_cpu`]. A plain flag rather than a lazy one:
/// the data path checks it a few times per frame.
#[cfg(target_arch = "x86_64")]
static PREFETCHW: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Reads the CPU features the data path's hints use; the switch does it when it is built.
pub(crate) fn detect_cpu() {
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::x86_64::__cpuid;
        let has =
            __cpuid(0x8000_0000).eax >= 0x8000_0001 && __cpuid(0x8000_0001).ecx & (1 << 8) != 0;
        PREFETCHW.store(has, std::sync::atomic::Ordering::Relaxed);
    }
}

/// Regions kept inline; QEMU maps 1-3, DPDK one per memory segment file. More fall back to
/// vm-memory's lookup.
const INLINE: usize = 8;

#[derive(Clone, Copy)]
struct Region {
    start: u64,
    len: u64,
    host: *mut u8,
}

/// The inline region table of one guest-memory snapshot.
struct Regions {
    regions: [Region; INLINE],
    n: usize,
    /// More regions than fit inline: every lookup goes to the snapshot itself.
    overflow: bool,
}

impl Regions {
    fn of(mem: &Mem) -> Self {
        let empty = Region {
            start: 0,
            len: 0,
            host: std::ptr::null_mut(),
        };
        let mut t = Regions {
            regions: [empty; INLINE],
            n: 0,
            overflow: false,
        };
        // With too many regions the inline table is not used at all, so the fast path in `span`
        // must never match: it looks at an empty region (len 0) then.
        for r in mem.iter() {
            let Ok(host) = r.get_host_address(MemoryRegionAddress(0)) else {
                continue;
            };
            if t.n == INLINE {
                t.overflow = true;
                break;
            }
            t.regions[t.n] = Region {
                start: r.start_addr().0,
                len: r.len(),
                host,
            };
            t.n += 1;
        }
        if t.overflow {
            t.regions[0].len = 0;
        }
        t
    }
}

/// A guest-memory snapshot with its region table built once, for a holder that keeps the
/// snapshot across batches (`session::Held`): a batch's [`HostMem`] then borrows the table
/// instead of walking vm-memory's regions.
pub struct MemMap {
    mem: Arc<Mem>,
    t: Regions,
}

// SAFETY: the table's host addresses point into `mem`'s mappings, which this owns (and which are
// themselves Send); nothing here is shared between threads without a borrow.
unsafe impl Send for MemMap {}

impl MemMap {
    pub fn new(mem: Arc<Mem>) -> Self {
        let t = Regions::of(&mem);
        MemMap { mem, t }
    }

    /// A map of a copy of `mem`'s handle (the regions are shared, not copied).
    #[cfg(test)]
    pub fn of(mem: &Mem) -> Self {
        Self::new(Arc::new(mem.clone()))
    }

    /// A translation view for one batch or RX run.
    #[inline]
    pub fn host(&self) -> HostMem<'_> {
        HostMem::new(self)
    }
}

/// A translation view of one guest memory. Its pointers are valid while the snapshot is
/// borrowed: the mappings belong to it and are only unmapped when the last reference goes.
pub struct HostMem<'a> {
    map: &'a MemMap,
    /// Index of the region the last lookup hit (an empty one when there is none).
    last: Cell<usize>,
    /// With VIRTIO_F_ACCESS_PLATFORM: the session's IOTLB, held for as long as this view lives,
    /// through which descriptor addresses (IOVAs) become guest-physical ones.
    dma: Option<Dma<'a>>,
}

impl<'a> HostMem<'a> {
    #[inline]
    pub fn new(map: &'a MemMap) -> Self {
        HostMem {
            map,
            last: Cell::new(0),
            dma: None,
        }
    }

    /// This view, translating descriptor addresses through `dma`.
    pub fn with_dma(mut self, dma: Dma<'a>) -> Self {
        self.dma = Some(dma);
        self
    }

    /// The IOTLB descriptor addresses go through, when the driver uses IOVAs.
    #[inline]
    pub fn dma(&self) -> Option<&Dma<'a>> {
        self.dma.as_ref()
    }

    /// Host pointer to `addr` and the bytes from there to the end of its region.
    #[inline]
    pub fn span(&self, addr: u64) -> Option<(*mut u8, usize)> {
        // Nearly every access of a batch falls in the region the previous one did.
        let r = &self.map.t.regions[self.last.get()];
        let off = addr.wrapping_sub(r.start);
        if off < r.len {
            // SAFETY: off < len, so the pointer stays inside the region's mapping.
            return Some((unsafe { r.host.add(off as usize) }, (r.len - off) as usize));
        }
        self.span_slow(addr)
    }

    #[cold]
    fn span_slow(&self, addr: u64) -> Option<(*mut u8, usize)> {
        if !self.map.t.overflow {
            for (i, r) in self.map.t.regions[..self.map.t.n].iter().enumerate() {
                let off = addr.wrapping_sub(r.start);
                if off < r.len {
                    self.last.set(i);
                    // SAFETY: as in `span`.
                    return Some((unsafe { r.host.add(off as usize) }, (r.len - off) as usize));
                }
            }
            return None;
        }
        let r = self.map.mem.find_region(GuestAddress(addr))?;
        let off = addr - r.start_addr().0;
        let p = r.get_host_address(MemoryRegionAddress(off)).ok()?;
        Some((p, (r.len() - off) as usize))
    }

    /// Host pointer to `len` bytes at `addr`, all within one region.
    #[inline]
    pub fn ptr(&self, addr: u64, len: usize) -> Option<*mut u8> {
        match self.span(addr) {
            Some((p, room)) if room >= len => Some(p),
            _ => None,
        }
    }

    /// True when `len` bytes at `addr` are guest memory (possibly across adjacent regions).
    #[inline]
    pub fn check_range(&self, addr: u64, len: usize) -> bool {
        self.ptr(addr, len).is_some() || self.check_range_slow(addr, len)
    }

    #[cold]
    fn check_range_slow(&self, addr: u64, len: usize) -> bool {
        GuestMemoryBackend::check_range(&*self.map.mem, GuestAddress(addr), len)
    }

    /// Copies `buf.len()` bytes out of one region.
    #[inline]
    pub fn read(&self, addr: u64, buf: &mut [u8]) -> Option<()> {
        let p = self.ptr(addr, buf.len())?;
        // SAFETY: `p` has `buf.len()` bytes inside a live mapping; guest memory may change under
        // us (the driver's own problem), which a byte copy tolerates.
        unsafe { std::ptr::copy_nonoverlapping(p, buf.as_mut_ptr(), buf.len()) };
        Some(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::{Bytes, GuestMemoryMmap};

    #[test]
    fn translates_within_regions_only() {
        let m: Mem = GuestMemoryMmap::from_ranges(&[
            (GuestAddress(0), 0x1000),
            (GuestAddress(0x4000), 0x1000),
        ])
        .unwrap();
        m.write_slice(&[1, 2, 3], GuestAddress(0x4ffd)).unwrap();
        let h = MemMap::of(&m);
        let h = h.host();
        let mut b = [0u8; 3];
        h.read(0x4ffd, &mut b).unwrap();
        assert_eq!(b, [1, 2, 3]);
        assert!(h.read(0x4ffe, &mut b).is_none(), "runs past the region");
        assert!(h.ptr(0x2000, 1).is_none(), "hole");
        assert_eq!(h.span(0xfff).map(|s| s.1), Some(1));
        // Adjacent regions: one access may not span both, a range check may.
        let adj: Mem = GuestMemoryMmap::from_ranges(&[
            (GuestAddress(0), 0x1000),
            (GuestAddress(0x1000), 0x1000),
        ])
        .unwrap();
        let h = MemMap::of(&adj);
        let h = h.host();
        assert!(h.ptr(0xff0, 0x20).is_none());
        assert!(h.check_range(0xff0, 0x20));
        assert!(!h.check_range(0x1ff0, 0x20));
    }

    #[test]
    fn many_regions_fall_back_to_the_memory_lookup() {
        let ranges: Vec<_> = (0..12u64)
            .map(|i| (GuestAddress(i * 0x2000), 0x1000))
            .collect();
        let m: Mem = GuestMemoryMmap::from_ranges(&ranges).unwrap();
        m.write_slice(&[9], GuestAddress(11 * 0x2000 + 5)).unwrap();
        let h = MemMap::of(&m);
        let h = h.host();
        let mut b = [0u8];
        h.read(11 * 0x2000 + 5, &mut b).unwrap();
        assert_eq!(b, [9]);
        assert!(h.ptr(0x1000, 1).is_none());
    }
}
