//! A partition's device IOTLB: what the frontend (QEMU's vIOMMU) told the device about I/O
//! virtual addresses, for VIRTIO_F_ACCESS_PLATFORM. With that feature the driver puts IOVAs in
//! descriptors; QEMU pushes `IOVA range -> (QEMU virtual address, permission)` entries with
//! IOTLB_MSG UPDATE and takes them back with INVALIDATE. Translation goes IOVA -> QEMU VA (these
//! entries) -> guest-physical (the memory table's regions), so the data path can keep its
//! guest-physical view and its bounds checks.
//!
//! Everything here comes from the frontend and is treated as hostile: arithmetic is checked at
//! the edges of the address space and the table is bounded ([`MAX_ENTRIES`], [`MAX_REGIONS`]).

use std::collections::BTreeMap;

/// Entries one partition may hold. QEMU pushes one entry per page it translates; a driver's rings
/// and posted buffers need a few hundred to a few thousand. A frontend going past this gets an
/// error reply instead of growing the daemon's memory.
pub const MAX_ENTRIES: usize = 16384;

/// Memory-table regions kept for the QEMU VA -> guest-physical step (vhost-user allows 509 slots).
pub const MAX_REGIONS: usize = 512;

/// Access rights of an entry, as in `struct vhost_iotlb_msg`'s `perm`.
pub const PERM_RO: u8 = 1;
pub const PERM_WO: u8 = 2;
pub const PERM_RW: u8 = 3;

/// What the device is about to do with the bytes it translates.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    /// The device reads (TX buffers, descriptor tables, the avail ring).
    Read,
    /// The device writes (RX buffers, the used ring).
    Write,
}

impl Access {
    fn allowed_by(self, perm: u8) -> bool {
        match self {
            Access::Read => perm & PERM_RO != 0,
            Access::Write => perm & PERM_WO != 0,
        }
    }

    /// The `perm` to put in an IOTLB MISS for this access.
    pub fn perm(self) -> u8 {
        match self {
            Access::Read => PERM_RO,
            Access::Write => PERM_WO,
        }
    }
}

/// An IOTLB_MSG the table refuses (the frontend gets a non-zero REPLY_ACK).
#[derive(Debug, thiserror::Error, PartialEq, Eq, Clone)]
pub enum UpdateError {
    #[error("IOTLB update of 0 bytes at {0:#x}")]
    Empty(u64),
    #[error("IOTLB update {iova:#x}+{size:#x} (QEMU VA {uaddr:#x}) wraps the address space")]
    Wraps { iova: u64, size: u64, uaddr: u64 },
    #[error("IOTLB update with permission {0} (1 RO, 2 WO, 3 RW)")]
    BadPerm(u8),
    #[error("IOTLB full ({MAX_ENTRIES} entries)")]
    Full,
    #[error("memory table of more than {MAX_REGIONS} regions")]
    TooManyRegions,
    #[error("memory region {gpa:#x}+{size:#x} (QEMU VA {uaddr:#x}) wraps the address space")]
    BadRegion { gpa: u64, size: u64, uaddr: u64 },
}

/// Why an access cannot be translated. The chain (or ring) is refused; a MISS for `iova` asks
/// the frontend for the entry.
#[derive(Debug, thiserror::Error, PartialEq, Eq, Clone, Copy)]
pub enum Fault {
    #[error("no IOTLB entry for IOVA {iova:#x}")]
    Miss { iova: u64, access: Access },
    #[error("IOVA {iova:#x} is mapped without {access:?} permission")]
    Perm { iova: u64, access: Access },
    #[error("IOVA {iova:#x}+{len} wraps the address space")]
    Wraps { iova: u64, len: u64 },
    #[error("IOVA {iova:#x} maps QEMU VA {uaddr:#x}, which no memory region holds")]
    NoRegion { iova: u64, uaddr: u64 },
    #[error("IOVA {iova:#x}+{len} is not one contiguous range")]
    NotContiguous { iova: u64, len: u64 },
}

impl Fault {
    /// The IOVA a MISS should ask for, when asking can help.
    pub fn miss_iova(&self) -> Option<(u64, Access)> {
        match *self {
            Fault::Miss { iova, access } | Fault::Perm { iova, access } => Some((iova, access)),
            _ => None,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Entry {
    /// Last IOVA covered (inclusive, so a range may end at u64::MAX).
    last: u64,
    uaddr: u64,
    perm: u8,
}

/// One memory-table region: guest-physical `gpa..gpa+size` is QEMU's `uaddr..uaddr+size`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VaRegion {
    pub gpa: u64,
    pub size: u64,
    pub uaddr: u64,
}

impl VaRegion {
    fn check(&self) -> Result<(), UpdateError> {
        let bad = UpdateError::BadRegion {
            gpa: self.gpa,
            size: self.size,
            uaddr: self.uaddr,
        };
        if self.size == 0
            || self.gpa.checked_add(self.size - 1).is_none()
            || self.uaddr.checked_add(self.size - 1).is_none()
        {
            return Err(bad);
        }
        Ok(())
    }
}

/// The table: non-overlapping IOVA ranges keyed by their first IOVA, plus the memory regions.
#[derive(Default, Debug)]
pub struct Iotlb {
    entries: BTreeMap<u64, Entry>,
    regions: Vec<VaRegion>,
}

/// The last IOVA of an IOTLB message's range: `size` bytes from `iova`, 0 meaning to the end.
pub fn range_last(iova: u64, size: u64) -> u64 {
    match size {
        0 => u64::MAX,
        n => iova.saturating_add(n - 1),
    }
}

impl Iotlb {
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// IOTLB_MSG UPDATE: `iova..iova+size` is `uaddr..` with `perm`. It replaces whatever
    /// overlapped it (a remap is an update over the old range).
    pub fn update(
        &mut self,
        iova: u64,
        size: u64,
        uaddr: u64,
        perm: u8,
    ) -> Result<(), UpdateError> {
        if size == 0 {
            return Err(UpdateError::Empty(iova));
        }
        let wraps = UpdateError::Wraps { iova, size, uaddr };
        let last = iova.checked_add(size - 1).ok_or(wraps.clone())?;
        uaddr.checked_add(size - 1).ok_or(wraps)?;
        if !(PERM_RO..=PERM_RW).contains(&perm) {
            return Err(UpdateError::BadPerm(perm));
        }
        // Removing the overlap splits at most one entry in two, then the new one comes in.
        if self.entries.len() + 2 > MAX_ENTRIES {
            return Err(UpdateError::Full);
        }
        self.remove(iova, last, false);
        self.entries.insert(iova, Entry { last, uaddr, perm });
        Ok(())
    }

    /// IOTLB_MSG INVALIDATE of `iova..iova+size`. Never fails: size 0 or a range past the top of
    /// the address space means "to the end" (QEMU's addr_mask + 1 wraps to 0 for everything),
    /// and at the entry cap a split is avoided by dropping the whole entry. Forgetting more than
    /// asked only costs a later miss.
    pub fn invalidate(&mut self, iova: u64, size: u64) {
        let last = range_last(iova, size);
        let whole = self.entries.len() + 1 > MAX_ENTRIES;
        self.remove(iova, last, whole);
    }

    /// Drops every entry (a new connection, a reset).
    pub fn clear(&mut self) {
        self.entries.clear();
    }

    /// Removes `first..=last` from every entry. Entries reaching out of the range keep their
    /// outside parts, unless `whole`, when they go entirely.
    fn remove(&mut self, first: u64, last: u64, whole: bool) {
        // An entry starting before `first` may reach into the range.
        let mut hit: Vec<u64> = self
            .entries
            .range(..first)
            .next_back()
            .filter(|(_, e)| e.last >= first)
            .map(|(k, _)| *k)
            .into_iter()
            .collect();
        hit.extend(self.entries.range(first..=last).map(|(k, _)| *k));
        for start in hit {
            let Some(e) = self.entries.remove(&start) else {
                continue;
            };
            if whole {
                continue;
            }
            if start < first {
                self.entries.insert(
                    start,
                    Entry {
                        last: first - 1,
                        ..e
                    },
                );
            }
            if e.last > last {
                let cut = last + 1;
                self.entries.insert(
                    cut,
                    Entry {
                        last: e.last,
                        uaddr: e.uaddr + (cut - start),
                        perm: e.perm,
                    },
                );
            }
        }
    }

    /// SET_MEM_TABLE: the regions QEMU VAs resolve in.
    pub fn set_regions(&mut self, regions: Vec<VaRegion>) -> Result<(), UpdateError> {
        if regions.len() > MAX_REGIONS {
            return Err(UpdateError::TooManyRegions);
        }
        for r in &regions {
            r.check()?;
        }
        self.regions = regions;
        Ok(())
    }

    /// ADD_MEM_REG.
    pub fn add_region(&mut self, r: VaRegion) -> Result<(), UpdateError> {
        r.check()?;
        if self.regions.len() >= MAX_REGIONS {
            return Err(UpdateError::TooManyRegions);
        }
        self.regions.push(r);
        Ok(())
    }

    /// REM_MEM_REG: the region at that guest address with that size.
    pub fn remove_region(&mut self, gpa: u64, size: u64) {
        self.regions.retain(|r| !(r.gpa == gpa && r.size == size));
    }

    /// Translates `len` bytes at `iova` for `access`, calling `out(uaddr, len)` for each piece of
    /// QEMU VA (one per entry the range crosses, in order).
    fn each_va(
        &self,
        iova: u64,
        len: u64,
        access: Access,
        mut out: impl FnMut(u64, u64) -> Result<(), Fault>,
    ) -> Result<(), Fault> {
        if len == 0 {
            return Ok(());
        }
        let last = iova
            .checked_add(len - 1)
            .ok_or(Fault::Wraps { iova, len })?;
        let mut cur = iova;
        loop {
            let (start, e) = self
                .entries
                .range(..=cur)
                .next_back()
                .filter(|(_, e)| e.last >= cur)
                .ok_or(Fault::Miss { iova: cur, access })?;
            if !access.allowed_by(e.perm) {
                return Err(Fault::Perm { iova: cur, access });
            }
            let end = e.last.min(last);
            // No overflow: update() checked uaddr + size - 1, and cur - start <= e.last - start.
            out(e.uaddr + (cur - start), end - cur + 1)?;
            if end == last {
                return Ok(());
            }
            cur = end + 1;
        }
    }

    /// QEMU VA `uaddr..uaddr+len` as guest-physical pieces (one per region it crosses).
    fn each_gpa(
        &self,
        iova: u64,
        uaddr: u64,
        len: u64,
        out: &mut impl FnMut(u64, u64),
    ) -> Result<(), Fault> {
        let (mut va, mut left) = (uaddr, len);
        while left > 0 {
            let r = self
                .regions
                .iter()
                .find(|r| va.wrapping_sub(r.uaddr) < r.size)
                .ok_or(Fault::NoRegion { iova, uaddr: va })?;
            let off = va - r.uaddr;
            let n = left.min(r.size - off);
            out(r.gpa + off, n);
            left -= n;
            va = va.wrapping_add(n);
        }
        Ok(())
    }

    /// Translates `len` bytes at `iova` for `access` into guest-physical ranges, calling
    /// `out(gpa, len)` for each; pieces that are adjacent in guest-physical space are merged, so
    /// a buffer the driver mapped page by page from contiguous memory comes out as one.
    pub fn translate(
        &self,
        iova: u64,
        len: u64,
        access: Access,
        mut out: impl FnMut(u64, u64),
    ) -> Result<(), Fault> {
        let mut run: Option<(u64, u64)> = None;
        let mut emit = |gpa: u64, n: u64| match &mut run {
            Some((g, l)) if g.wrapping_add(*l) == gpa => *l += n,
            _ => {
                if let Some((g, l)) = run.replace((gpa, n)) {
                    out(g, l);
                }
            }
        };
        self.each_va(iova, len, access, |va, n| {
            self.each_gpa(iova, va, n, &mut emit)
        })?;
        if let Some((g, l)) = run {
            out(g, l);
        }
        Ok(())
    }

    /// The guest-physical address of `len` bytes at `iova`, which must come out as one range
    /// (rings, indirect tables, the flat fast path).
    pub fn translate_contiguous(&self, iova: u64, len: u64, access: Access) -> Result<u64, Fault> {
        let mut first: Option<(u64, u64)> = None;
        let mut pieces = 0;
        self.translate(iova, len, access, |g, l| {
            pieces += 1;
            first.get_or_insert((g, l));
        })?;
        match first {
            Some((g, _)) if pieces == 1 => Ok(g),
            None => Ok(0),
            _ => Err(Fault::NotContiguous { iova, len }),
        }
    }

    /// The QEMU virtual address of `len` bytes at `iova`, which must be one contiguous VA range
    /// (SET_VRING_ADDR carries VAs to the framework).
    pub fn translate_va(&self, iova: u64, len: u64, access: Access) -> Result<u64, Fault> {
        let mut start: Option<u64> = None;
        let mut next: u64 = 0;
        self.each_va(iova, len.max(1), access, |va, n| {
            match start {
                None => start = Some(va),
                Some(_) if va == next => {}
                Some(_) => return Err(Fault::NotContiguous { iova, len }),
            }
            next = va.wrapping_add(n);
            Ok(())
        })?;
        Ok(start.unwrap_or(0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One region: guest-physical 0..1 MiB is QEMU VA 0x7f00_0000_0000.
    const VA: u64 = 0x7f00_0000_0000;

    fn tlb() -> Iotlb {
        let mut t = Iotlb::default();
        t.set_regions(vec![VaRegion {
            gpa: 0,
            size: 0x10_0000,
            uaddr: VA,
        }])
        .unwrap();
        t
    }

    fn pieces(t: &Iotlb, iova: u64, len: u64, a: Access) -> Result<Vec<(u64, u64)>, Fault> {
        let mut v = Vec::new();
        t.translate(iova, len, a, |g, l| v.push((g, l)))?;
        Ok(v)
    }

    #[test]
    fn translates_within_an_entry_and_checks_permissions() {
        let mut t = tlb();
        t.update(0x1_0000_0000, 0x1000, VA + 0x5000, PERM_RO)
            .unwrap();
        assert_eq!(
            pieces(&t, 0x1_0000_0010, 0x20, Access::Read),
            Ok(vec![(0x5010, 0x20)])
        );
        assert_eq!(
            pieces(&t, 0x1_0000_0010, 0x20, Access::Write),
            Err(Fault::Perm {
                iova: 0x1_0000_0010,
                access: Access::Write
            })
        );
        t.update(0x2000, 0x1000, VA + 0x9000, PERM_WO).unwrap();
        assert!(pieces(&t, 0x2000, 1, Access::Read).is_err());
        assert_eq!(pieces(&t, 0x2fff, 1, Access::Write), Ok(vec![(0x9fff, 1)]));
        // One byte past the entry is a miss at that byte.
        assert_eq!(
            pieces(&t, 0x2ff0, 0x20, Access::Write),
            Err(Fault::Miss {
                iova: 0x3000,
                access: Access::Write
            })
        );
    }

    #[test]
    fn a_buffer_across_entries_splits_or_merges() {
        let mut t = tlb();
        // Two IOVA pages on guest pages 0x7000 and 0x8000 (adjacent): one range.
        t.update(0x10000, 0x1000, VA + 0x7000, PERM_RW).unwrap();
        t.update(0x11000, 0x1000, VA + 0x8000, PERM_RW).unwrap();
        assert_eq!(
            pieces(&t, 0x10f00, 0x200, Access::Read),
            Ok(vec![(0x7f00, 0x200)])
        );
        assert_eq!(
            t.translate_contiguous(0x10f00, 0x200, Access::Read),
            Ok(0x7f00)
        );
        // Remapped to a page elsewhere: two ranges, and not contiguous.
        t.update(0x11000, 0x1000, VA + 0x3000, PERM_RW).unwrap();
        assert_eq!(
            pieces(&t, 0x10f00, 0x200, Access::Read),
            Ok(vec![(0x7f00, 0x100), (0x3000, 0x100)])
        );
        assert!(matches!(
            t.translate_contiguous(0x10f00, 0x200, Access::Read),
            Err(Fault::NotContiguous { .. })
        ));
        assert!(t.translate_va(0x10f00, 0x200, Access::Read).is_err());
        assert_eq!(t.translate_va(0x11010, 0x10, Access::Read), Ok(VA + 0x3010));
    }

    #[test]
    fn updates_replace_what_they_overlap() {
        let mut t = tlb();
        t.update(0x1000, 0x3000, VA, PERM_RW).unwrap();
        // Over the middle page: the old entry keeps its outer pages.
        t.update(0x2000, 0x1000, VA + 0x8000, PERM_RO).unwrap();
        assert_eq!(t.len(), 3);
        assert_eq!(pieces(&t, 0x1000, 1, Access::Write), Ok(vec![(0, 1)]));
        assert_eq!(pieces(&t, 0x2000, 1, Access::Read), Ok(vec![(0x8000, 1)]));
        assert!(pieces(&t, 0x2000, 1, Access::Write).is_err());
        assert_eq!(pieces(&t, 0x3004, 1, Access::Write), Ok(vec![(0x2004, 1)]));
        // Over everything: one entry.
        t.update(0, 0x10000, VA + 0x10000, PERM_RW).unwrap();
        assert_eq!(t.len(), 1);
        assert_eq!(pieces(&t, 0x3004, 1, Access::Read), Ok(vec![(0x13004, 1)]));
    }

    #[test]
    fn invalidate_removes_exactly_the_range() {
        let mut t = tlb();
        t.update(0x1000, 0x3000, VA, PERM_RW).unwrap();
        t.invalidate(0x2000, 0x1000);
        assert_eq!(t.len(), 2);
        assert!(pieces(&t, 0x1fff, 1, Access::Read).is_ok());
        assert_eq!(
            pieces(&t, 0x2000, 1, Access::Read),
            Err(Fault::Miss {
                iova: 0x2000,
                access: Access::Read
            })
        );
        assert!(pieces(&t, 0x2fff, 1, Access::Read).is_err());
        assert_eq!(pieces(&t, 0x3000, 1, Access::Read), Ok(vec![(0x2000, 1)]));
        // Size 0 (QEMU's whole-space mask + 1) invalidates to the end.
        t.invalidate(0, 0);
        assert!(t.is_empty());
    }

    #[test]
    fn bad_updates_are_refused_without_changing_anything() {
        let mut t = tlb();
        assert_eq!(t.update(0, 0, VA, PERM_RW), Err(UpdateError::Empty(0)));
        assert!(matches!(
            t.update(u64::MAX, 2, VA, PERM_RW),
            Err(UpdateError::Wraps { .. })
        ));
        assert!(matches!(
            t.update(0, 2, u64::MAX, PERM_RW),
            Err(UpdateError::Wraps { .. })
        ));
        assert_eq!(t.update(0, 1, VA, 0), Err(UpdateError::BadPerm(0)));
        assert_eq!(t.update(0, 1, VA, 4), Err(UpdateError::BadPerm(4)));
        assert!(t.is_empty());
    }

    #[test]
    fn the_top_of_the_address_space_works_without_overflow() {
        let mut t = tlb();
        // The last page of the IOVA space, and a one-byte entry at u64::MAX.
        t.update(u64::MAX - 0xfff, 0x1000, VA, PERM_RW).unwrap();
        assert_eq!(
            pieces(&t, u64::MAX - 0xf, 0x10, Access::Read),
            Ok(vec![(0xff0, 0x10)])
        );
        assert_eq!(
            pieces(&t, u64::MAX, 2, Access::Read),
            Err(Fault::Wraps {
                iova: u64::MAX,
                len: 2
            })
        );
        t.invalidate(u64::MAX, 5);
        assert!(pieces(&t, u64::MAX, 1, Access::Read).is_err());
        assert!(pieces(&t, u64::MAX - 1, 1, Access::Read).is_ok());
        // An entry of the whole address space.
        t.update(0, u64::MAX, 0, PERM_RO).unwrap();
        assert_eq!(t.len(), 1, "it replaced the last page's entry");
        assert_eq!(
            t.translate_va(u64::MAX - 1, 1, Access::Read),
            Ok(u64::MAX - 1)
        );
        t.invalidate(0, 0);
        assert!(t.is_empty());
    }

    #[test]
    fn the_table_is_bounded() {
        let mut t = tlb();
        for i in 0..(MAX_ENTRIES as u64 - 3) {
            t.update(i * 0x1000, 0x1000, VA, PERM_RW).unwrap();
        }
        let big = 1u64 << 40;
        t.update(big, 0x3000, VA, PERM_RW).unwrap();
        // Splitting the big entry around its middle page fills the table exactly.
        t.update(big + 0x1000, 0x1000, VA, PERM_RO).unwrap();
        assert_eq!(t.len(), MAX_ENTRIES);
        assert_eq!(
            t.update(1 << 50, 0x1000, VA, PERM_RW),
            Err(UpdateError::Full)
        );
        // At the cap, an invalidate that would split drops the whole entry instead.
        t.invalidate(0x800, 0x10);
        assert_eq!(t.len(), MAX_ENTRIES - 1);
        assert!(pieces(&t, 0x900, 1, Access::Read).is_err());
        assert!(pieces(&t, 0x1000, 1, Access::Read).is_ok());
        let regions = vec![
            VaRegion {
                gpa: 0,
                size: 1,
                uaddr: 0
            };
            MAX_REGIONS + 1
        ];
        assert_eq!(t.set_regions(regions), Err(UpdateError::TooManyRegions));
    }

    #[test]
    fn virtual_addresses_resolve_through_the_memory_table() {
        let mut t = Iotlb::default();
        // Two regions, adjacent in guest-physical space but not in QEMU's.
        t.set_regions(vec![
            VaRegion {
                gpa: 0,
                size: 0x1000,
                uaddr: 0x5000_0000,
            },
            VaRegion {
                gpa: 0x1000,
                size: 0x1000,
                uaddr: 0x9000_0000,
            },
        ])
        .unwrap();
        t.update(0x4000, 0x1000, 0x5000_0000, PERM_RW).unwrap();
        t.update(0x5000, 0x1000, 0x9000_0000, PERM_RW).unwrap();
        assert_eq!(
            pieces(&t, 0x4ff0, 0x20, Access::Write),
            Ok(vec![(0xff0, 0x20)])
        );
        // A VA outside every region.
        t.update(0x6000, 0x1000, 0x1234_0000, PERM_RW).unwrap();
        assert_eq!(
            pieces(&t, 0x6000, 1, Access::Read),
            Err(Fault::NoRegion {
                iova: 0x6000,
                uaddr: 0x1234_0000
            })
        );
        // An entry reaching past its region runs on only into a region that follows in VA.
        t.update(0x7000, 0x2000, 0x5000_0800, PERM_RW).unwrap();
        assert!(matches!(
            pieces(&t, 0x7700, 0x200, Access::Read),
            Err(Fault::NoRegion { .. })
        ));
        t.remove_region(0x1000, 0x1000);
        assert!(pieces(&t, 0x5000, 1, Access::Read).is_err());
        assert!(t
            .set_regions(vec![VaRegion {
                gpa: u64::MAX,
                size: 2,
                uaddr: 0
            }])
            .is_err());
    }
}
