//! Split virtqueue access for the data path. `virtio_queue::Queue` keeps the ring state that the
//! vhost-user handler manages (addresses, size, next_avail/next_used, EVENT_IDX); this module reads
//! the avail ring, walks descriptor chains and publishes used entries itself because:
//! - malformed chains must be detected and reported (DescriptorChain's iterator just stops early);
//! - a mergeable RX frame spans several used entries that must become visible with ONE used.idx
//!   store, or the driver can see the head before its continuation buffers.
//!
//! A batch (or an RX run) maps the ring once ([`Ring::map`]) and then reaches its entries through
//! host pointers, as QEMU's and DPDK's vhost do.

use std::cell::UnsafeCell;
use std::marker::PhantomData;
use std::sync::atomic::{fence, AtomicU16, Ordering};

use virtio_queue::{Queue, QueueT};

use crate::hostmem::{HostMem, HostPtr, MemMap};
use crate::iotlb::{Access, Fault};
use crate::net_hdr::TX_HEADERS;

pub(crate) const DESC_F_NEXT: u16 = 1;
pub(crate) const DESC_F_WRITE: u16 = 2;
const DESC_F_INDIRECT: u16 = 4;
const DESC_SIZE: u64 = 16;
const AVAIL_F_NO_INTERRUPT: u16 = 1;
const USED_F_NO_NOTIFY: u16 = 1;

/// One guest buffer of a chain, already checked to lie inside guest memory.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Seg {
    pub addr: u64,
    pub len: u32,
}

/// Which descriptors a chain must consist of.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dir {
    /// Device reads (TX): every descriptor readable, none empty.
    Readable,
    /// Device writes (RX): every descriptor write-only; empty ones are skipped.
    Writable,
}

/// A chain the device refuses. The chain is completed with length 0; the queue keeps going.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ChainError {
    #[error("descriptor index {index} out of range (table of {size})")]
    IndexOutOfRange { index: u16, size: u16 },
    #[error("descriptor chain loops or is longer than its table ({0} entries)")]
    TooManyDescriptors(u16),
    #[error("indirect descriptor used but VIRTIO_F_INDIRECT_DESC not negotiated")]
    IndirectNotNegotiated,
    #[error("indirect descriptor inside an indirect table or chained with NEXT")]
    NestedIndirect,
    #[error("indirect table length {0} is not a non-zero multiple of 16")]
    BadIndirectTable(u32),
    #[error("write-only descriptor in a TX chain")]
    WriteOnlyInTx,
    #[error("read-only descriptor in an RX chain")]
    ReadOnlyInRx,
    #[error("zero-length descriptor in a TX chain")]
    ZeroLength,
    #[error("buffer {addr:#x}+{len} is outside guest memory")]
    OutOfMemory { addr: u64, len: u32 },
    #[error("descriptor at {0:#x} cannot be read")]
    Unreadable(u64),
    #[error("chain carries more than {0} bytes")]
    TooLong(u32),
    /// An IOVA with no IOTLB entry, or one without the needed permission (a MISS was sent).
    #[error(transparent)]
    Iommu(#[from] Fault),
}

/// A queue whose rings themselves are broken: it stays stopped until the driver restarts it.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RingError {
    #[error("ring is not set up")]
    NotReady,
    /// Under ACCESS_PLATFORM: the ring's addresses are IOVAs whose entries are still being asked
    /// for, or the framework has not taken their translation yet. Not the driver's fault.
    #[error("ring addresses are IOVAs not translated yet")]
    Untranslated,
    #[error("avail index jumped from {next} to {avail} on a queue of {size}")]
    AvailJump { avail: u16, next: u16, size: u16 },
    #[error("{what} at {addr:#x} is not inside one memory region (or misaligned)")]
    Unmapped { what: &'static str, addr: u64 },
}

fn ready(q: &Queue) -> Result<(), RingError> {
    if q.ready() && q.size() > 0 && q.avail_ring() != 0 {
        Ok(())
    } else {
        Err(RingError::NotReady)
    }
}

/// A split-ring descriptor as the driver wrote it (little-endian, possibly unaligned when it
/// sits in an indirect table).
struct Desc {
    addr: u64,
    len: u32,
    flags: u16,
    next: u16,
}

impl Desc {
    fn parse(b: &[u8; DESC_SIZE as usize]) -> Self {
        let u64_at = |i: usize| {
            u64::from_le_bytes([
                b[i],
                b[i + 1],
                b[i + 2],
                b[i + 3],
                b[i + 4],
                b[i + 5],
                b[i + 6],
                b[i + 7],
            ])
        };
        Desc {
            addr: u64_at(0),
            len: u32::from_le_bytes([b[8], b[9], b[10], b[11]]),
            flags: u16::from_le_bytes([b[12], b[13]]),
            next: u16::from_le_bytes([b[14], b[15]]),
        }
    }
}

/// Where a queue's descriptor table is, copied out so chains can be walked without the ring lock.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Table {
    pub addr: u64,
    pub size: u16,
}

impl Table {
    pub fn of(q: &Queue) -> Self {
        Table {
            addr: q.desc_table(),
            size: q.size(),
        }
    }
}

/// A chain of one descriptor whose buffer lies in one memory region, with its host address.
/// Every frame both frontends measured sends or posts is one; taking it without the general walk
/// saves a call and a translation per chain on each side.
#[derive(Clone, Copy, Debug)]
pub struct Flat {
    pub(crate) seg: Seg,
    pub(crate) host: HostPtr,
}

impl Flat {
    /// Asks for the lines a TX frame's headers are read from.
    pub fn prefetch_headers(&self) {
        self.host
            .prefetch_span(TX_HEADERS.min(self.seg.len as usize));
    }
}

/// Walks the chain starting at `head`, appending its buffers to `out` (so a batch's chains can
/// share one list). Returns the total byte count. On error `out` may end with some of the
/// chain's buffers; callers drop the whole list or refer to chains by range. `max_len` bounds the
/// bytes a chain may carry.
pub fn walk_chain(
    mem: &HostMem<'_>,
    t: Table,
    head: u16,
    dir: Dir,
    indirect_ok: bool,
    max_len: u32,
    out: &mut Vec<Seg>,
) -> Result<u32, ChainError> {
    let mut table = t.addr;
    let mut size = t.size;
    let mut index = head;
    let mut budget = size;
    let mut in_indirect = false;
    let mut total: u32 = 0;
    loop {
        if index >= size {
            return Err(ChainError::IndexOutOfRange { index, size });
        }
        if budget == 0 {
            return Err(ChainError::TooManyDescriptors(size));
        }
        budget -= 1;
        // A table at the top of the address space must not wrap around to address 0.
        let at = table
            .checked_add(u64::from(index) * DESC_SIZE)
            .ok_or(ChainError::Unreadable(table))?;
        let mut raw = [0u8; DESC_SIZE as usize];
        mem.read(at, &mut raw).ok_or(ChainError::Unreadable(at))?;
        let d = Desc::parse(&raw);
        let flags = d.flags;
        if flags & DESC_F_INDIRECT != 0 {
            if !indirect_ok {
                return Err(ChainError::IndirectNotNegotiated);
            }
            if in_indirect || flags & DESC_F_NEXT != 0 {
                return Err(ChainError::NestedIndirect);
            }
            let len = d.len;
            if len == 0
                || !len.is_multiple_of(DESC_SIZE as u32)
                || len / DESC_SIZE as u32 > u32::from(u16::MAX)
            {
                return Err(ChainError::BadIndirectTable(len));
            }
            // An IOVA under ACCESS_PLATFORM: the table must be one guest-physical range.
            table = match mem.dma() {
                None => d.addr,
                Some(dma) => dma.contiguous(d.addr, u64::from(len), Access::Read)?,
            };
            size = (len / DESC_SIZE as u32) as u16;
            budget = size;
            index = 0;
            in_indirect = true;
            continue;
        }
        let writable = flags & DESC_F_WRITE != 0;
        match (dir, writable) {
            (Dir::Readable, true) => return Err(ChainError::WriteOnlyInTx),
            (Dir::Writable, false) => return Err(ChainError::ReadOnlyInRx),
            _ => {}
        }
        let (addr, len) = (d.addr, d.len);
        if len == 0 && dir == Dir::Readable {
            return Err(ChainError::ZeroLength);
        }
        if len > 0 {
            total = total
                .checked_add(len)
                .filter(|t| *t <= max_len)
                .ok_or(ChainError::TooLong(max_len))?;
            match mem.dma() {
                None => {
                    if !mem.check_range(addr, len as usize) {
                        return Err(ChainError::OutOfMemory { addr, len });
                    }
                    out.push(Seg { addr, len });
                }
                Some(dma) => push_translated(mem, dma, addr, len, dir, out)?,
            }
        }
        if flags & DESC_F_NEXT == 0 {
            return Ok(total);
        }
        index = d.next;
    }
}

/// Appends the guest-physical pieces of the buffer at IOVA `iova` (one per discontiguity), each
/// checked to lie in guest memory like an untranslated buffer.
fn push_translated(
    mem: &HostMem<'_>,
    dma: &crate::iommu::Dma<'_>,
    iova: u64,
    len: u32,
    dir: Dir,
    out: &mut Vec<Seg>,
) -> Result<(), ChainError> {
    let access = match dir {
        Dir::Readable => Access::Read,
        Dir::Writable => Access::Write,
    };
    let mut outside = None;
    dma.translate(iova, u64::from(len), access, |gpa, n| {
        // n <= len: the pieces add up to the buffer.
        let n = n as u32;
        if !mem.check_range(gpa, n as usize) {
            outside.get_or_insert(ChainError::OutOfMemory { addr: gpa, len: n });
        }
        out.push(Seg { addr: gpa, len: n });
    })?;
    outside.map_or(Ok(()), Err)
}

/// A split ring mapped for one batch or RX run: host addresses of its descriptor table, avail
/// ring and used ring, translated once instead of per access. Like QEMU's and DPDK's vhost, the
/// device needs each area inside one memory region; a frontend that places one across regions has
/// that queue stopped with an error. Positions (next_avail, next_used) stay in the `Queue`, whose
/// ring lock the caller holds while it uses this.
#[derive(Clone, Copy)]
pub struct Ring<'m> {
    desc: *const u8,
    avail: *const u8,
    used: *mut u8,
    table: Table,
    event_idx: bool,
    /// The pointers are into the snapshot the `HostMem` views.
    _mem: PhantomData<&'m ()>,
}

/// One queue's mapping kept across batches, so a batch or RX run costs a comparison of the
/// queue's addresses instead of three translations. It belongs with one memory snapshot: the
/// holder of that snapshot (`session::Held`) owns the cache and hands out rings only while it
/// holds the snapshot.
#[derive(Default)]
pub(crate) struct RingCache(UnsafeCell<Option<Cached>>);

struct Cached {
    qidx: usize,
    /// With the ring's own table address, size and EVENT_IDX, what the mapping was made from.
    avail: u64,
    used: u64,
    ring: Ring<'static>,
}

// SAFETY: the cached addresses point into the snapshot the owner keeps with the cache; they are
// only dereferenced through a `Ring` borrowed from that owner. (Not Sync: one thread at a time.)
unsafe impl Send for RingCache {}

impl RingCache {
    /// Queue `qidx`'s ring (`q`), mapped in `map` unless the cache already has it.
    ///
    /// # Safety
    /// Every call on one cache passes the same `map` (so cached addresses are into it).
    #[inline]
    pub(crate) unsafe fn ring<'h>(
        &self,
        map: &'h MemMap,
        qidx: usize,
        q: &Queue,
    ) -> Result<Ring<'h>, RingError> {
        ready(q)?;
        // SAFETY: the cache is !Sync and no reference into it outlives this call or `avail_idx`.
        let slot = unsafe { &mut *self.0.get() };
        if let Some(c) = slot {
            let r = &c.ring;
            if c.qidx == qidx
                && r.table == Table::of(q)
                && c.avail == q.avail_ring()
                && c.used == q.used_ring()
                && r.event_idx == q.event_idx_enabled()
            {
                return Ok(unsafe { r.rebind() });
            }
        }
        let host = map.host();
        let ring = unsafe { Ring::map(&host, q)?.rebind() };
        *slot = Some(Cached {
            qidx,
            avail: q.avail_ring(),
            used: q.used_ring(),
            ring,
        });
        Ok(unsafe { ring.rebind() })
    }

    /// Starts fetching, for the cached ring, the lines the next run at positions `avail` and
    /// `used` will touch (see [`Ring::warm`]).
    ///
    /// # Safety
    /// As for [`RingCache::avail_idx`].
    #[inline]
    pub(crate) unsafe fn warm(&self, map: &MemMap, avail: u16, used: u16, dir: Dir) {
        // SAFETY: as in `ring`.
        if let Some(c) = unsafe { &*self.0.get() } {
            c.ring.warm(avail, used);
            // An in-order driver puts descriptor `avail` at ring position `avail`.
            c.ring.warm_desc(&map.host(), avail, dir);
        }
    }

    /// Queue `qidx`'s avail.idx, read through the cached mapping, if it is the cached queue.
    ///
    /// # Safety
    /// As for [`RingCache::ring`], and that map is still alive.
    #[inline]
    pub(crate) unsafe fn avail_idx(&self, qidx: usize) -> Option<u16> {
        // SAFETY: as in `ring`.
        match unsafe { &*self.0.get() } {
            Some(c) if c.qidx == qidx => {
                Some(u16::from_le(c.ring.avail_u16(2).load(Ordering::Acquire)))
            }
            _ => None,
        }
    }
}

impl<'m> Ring<'m> {
    pub fn map(mem: &'m HostMem<'_>, q: &Queue) -> Result<Self, RingError> {
        ready(q)?;
        let n = usize::from(q.size());
        let event_idx = q.event_idx_enabled();
        // used_event / avail_event trail the rings only with EVENT_IDX.
        let ev = if event_idx { 2 } else { 0 };
        let area = |what, addr: u64, len: usize, align: usize| {
            mem.ptr(addr, len)
                .filter(|p| (*p as usize).is_multiple_of(align))
                .ok_or(RingError::Unmapped { what, addr })
        };
        Ok(Ring {
            desc: area("descriptor table", q.desc_table(), 16 * n, 1)?,
            avail: area("avail ring", q.avail_ring(), 4 + 2 * n + ev, 2)?,
            used: area("used ring", q.used_ring(), 4 + 8 * n + ev, 4)?,
            table: Table::of(q),
            event_idx,
            _mem: PhantomData,
        })
    }

    /// The same mapping under another lifetime.
    ///
    /// # Safety
    /// The snapshot the ring was mapped in stays alive for `'n`.
    unsafe fn rebind<'n>(self) -> Ring<'n> {
        Ring {
            desc: self.desc,
            avail: self.avail,
            used: self.used,
            table: self.table,
            event_idx: self.event_idx,
            _mem: PhantomData,
        }
    }

    pub fn table(&self) -> Table {
        self.table
    }

    /// Ring position of free-running index `idx`. Split-ring sizes are powers of two (the queue
    /// refuses any other size), so this is a mask, not a division; it stays in range regardless.
    fn slot(&self, idx: u16) -> usize {
        usize::from(idx & self.table.size.wrapping_sub(1))
    }

    /// The 16-bit avail-ring field `off` bytes in.
    fn avail_u16(&self, off: usize) -> &AtomicU16 {
        debug_assert!(off + 2 <= 6 + 2 * usize::from(self.table.size));
        // SAFETY: every caller's `off` is inside the area `map` translated, and the area is
        // 2-aligned; the driver writes these fields atomically too.
        unsafe { &*(self.avail.add(off) as *const AtomicU16) }
    }

    /// Number of chains the driver has made available beyond `next_avail`.
    pub fn pending(&self, q: &Queue) -> Result<u16, RingError> {
        let avail = u16::from_le(self.avail_u16(2).load(Ordering::Acquire));
        let n = avail.wrapping_sub(q.next_avail());
        if n > self.table.size {
            return Err(RingError::AvailJump {
                avail,
                next: q.next_avail(),
                size: self.table.size,
            });
        }
        Ok(n)
    }

    /// Head descriptor index of the chain at ring position `next_avail + k`. Only meaningful for
    /// `k` below what [`Ring::pending`] returned (its acquire load orders this read).
    pub fn avail_head(&self, q: &Queue, k: u16) -> u16 {
        let pos = self.slot(q.next_avail().wrapping_add(k));
        u16::from_le(self.avail_u16(4 + 2 * pos).load(Ordering::Relaxed))
    }

    /// Descriptor `slot` of the mapped table, copied out byte by byte: the driver may be
    /// changing it, which a byte copy tolerates (as the general walk does).
    ///
    /// # Safety
    /// `slot` is below the table size, so its 16 bytes are inside the mapped table.
    #[inline(always)]
    unsafe fn desc_at(&self, slot: usize) -> Desc {
        let mut raw = [0u8; DESC_SIZE as usize];
        // SAFETY: the caller's promise.
        unsafe {
            let p = self.desc.add(slot * DESC_SIZE as usize);
            std::ptr::copy_nonoverlapping(p, raw.as_mut_ptr(), raw.len());
        }
        Desc::parse(&raw)
    }

    /// The chain at `head` when it is a [`Flat`] one that `walk_chain` would accept as it is
    /// (right direction, not empty, at most `max_len` bytes). None means "take the general
    /// walk", which also reports whatever is wrong with it.
    #[inline]
    pub(crate) fn flat(
        &self,
        mem: &HostMem<'_>,
        head: u16,
        dir: Dir,
        max_len: u32,
    ) -> Option<Flat> {
        if head >= self.table.size {
            return None;
        }
        // SAFETY: head < size.
        let d = unsafe { self.desc_at(usize::from(head)) };
        let want = match dir {
            Dir::Readable => 0,
            Dir::Writable => DESC_F_WRITE,
        };
        if d.flags & (DESC_F_NEXT | DESC_F_INDIRECT | DESC_F_WRITE) != want
            || d.len == 0
            || d.len > max_len
        {
            return None;
        }
        let addr = match mem.dma() {
            None => d.addr,
            Some(dma) => {
                let access = match dir {
                    Dir::Readable => Access::Read,
                    Dir::Writable => Access::Write,
                };
                dma.peek(d.addr, u64::from(d.len), access)?
            }
        };
        let host = mem.ptr(addr, d.len as usize)?;
        Some(Flat {
            seg: Seg { addr, len: d.len },
            host: HostPtr(host),
        })
    }

    /// Asks the driver not to kick while the device is taking chains anyway. With EVENT_IDX the
    /// driver stops kicking by itself once it has kicked (avail_event is left behind); without
    /// it the used ring's flag is set, and only written when it is not set yet: the line is the
    /// one the driver polls for used.idx, so a store per batch would pull it away every time.
    pub fn suppress_kicks(&self) {
        if self.event_idx {
            return;
        }
        // SAFETY: used.flags is the first field of the mapped, 4-aligned used ring.
        let flags = unsafe { &*(self.used as *const AtomicU16) };
        let f = u16::from_le(flags.load(Ordering::Relaxed));
        if f & USED_F_NO_NOTIFY == 0 {
            flags.store((f | USED_F_NO_NOTIFY).to_le(), Ordering::Relaxed);
        }
    }

    /// Starts taking ownership of the used-ring lines the next publication of `n` entries
    /// writes (its elements from next_used on, and used.idx): the driver polls them, so each
    /// store would otherwise wait for its line to come back.
    pub fn prefetch_used(&self, q: &Queue, n: u16) {
        // A line holds eight elements; the first and last element of the span cover the ends.
        let n = n.clamp(1, 64);
        let at = |k: u16| 4 + 8 * self.slot(q.next_used().wrapping_add(k));
        // SAFETY: used.idx and every element (up to its last byte) are inside the mapped ring.
        unsafe {
            crate::hostmem::prefetch_write(self.used.add(2));
            for k in (0..n).step_by(8) {
                crate::hostmem::prefetch_write(self.used.add(at(k)));
            }
            crate::hostmem::prefetch_write(self.used.add(at(n - 1) + 7));
        }
    }

    /// Starts fetching what a run from ring positions `avail` / `used` will touch first, before
    /// the ring lock is taken: avail.idx and the avail entry (read), the descriptor an in-order
    /// driver puts there (read; only a guess), and the used element and used.idx (for writing).
    /// Hints only; a stale position costs a wasted fetch.
    pub fn warm(&self, avail: u16, used: u16) {
        let pos = self.slot(avail);
        // SAFETY: every address is inside a mapped area; prefetches cannot fault.
        unsafe {
            HostPtr(self.avail.add(2) as *mut u8).prefetch();
            HostPtr(self.avail.add(4 + 2 * pos) as *mut u8).prefetch();
            HostPtr(self.desc.add(DESC_SIZE as usize * pos) as *mut u8).prefetch();
            crate::hostmem::prefetch_write(self.used.add(2));
            crate::hostmem::prefetch_write(self.used.add(4 + 8 * self.slot(used)));
        }
    }

    /// Starts fetching the start of descriptor `head`'s buffer (`head` is taken modulo the
    /// table size; the descriptor is read without the ring lock, so it may be stale): its
    /// headers for a TX buffer, for writing the header and frame into for an RX one. The
    /// descriptor read waits for its line, but nothing waits for the prefetch; a wrong guess
    /// costs a wasted fetch.
    pub fn warm_desc(&self, mem: &HostMem<'_>, head: u16, dir: Dir) {
        // SAFETY: a slot is below the size.
        let d = unsafe { self.desc_at(self.slot(head)) };
        // Under ACCESS_PLATFORM the address is an IOVA; a hint is not worth a translation.
        if mem.dma().is_some() {
            return;
        }
        // RX: the header and a small frame, which span two lines.
        let span = match dir {
            Dir::Readable => TX_HEADERS,
            Dir::Writable => 128,
        }
        .min(d.len as usize);
        let Some(p) = mem.ptr(d.addr, span) else {
            return;
        };
        match dir {
            Dir::Readable => HostPtr(p).prefetch_span(span),
            Dir::Writable => HostPtr(p).prefetch_write_span(span),
        }
    }

    /// Writes the used element `k` positions after `next_used`, without publishing it.
    pub fn write_used(&self, q: &Queue, k: u16, id: u16, len: u32) {
        let pos = self.slot(q.next_used().wrapping_add(k));
        let mut elem = [0u8; 8];
        elem[..4].copy_from_slice(&u32::from(id).to_le_bytes());
        elem[4..].copy_from_slice(&len.to_le_bytes());
        // SAFETY: pos < size, so the element is inside the mapped used ring.
        unsafe {
            let p = self.used.add(4 + 8 * pos);
            std::ptr::copy_nonoverlapping(elem.as_ptr(), p, elem.len());
        }
    }

    /// Publishes `count` used elements written with `write_used` in one used.idx store and says
    /// whether the driver asked to be notified (EVENT_IDX or VRING_AVAIL_F_NO_INTERRUPT).
    pub fn publish_used(&self, q: &mut Queue, count: u16) -> bool {
        if count == 0 {
            return false;
        }
        let old = q.next_used();
        q.set_next_used(old.wrapping_add(count));
        self.publish_pending(q, old)
    }

    /// Stores used.idx = `next_used` for entries written (and counted into `next_used`) since
    /// the driver last saw `published`, and says whether the driver asked to be notified.
    pub fn publish_pending(&self, q: &Queue, published: u16) -> bool {
        let new = q.next_used();
        if new == published {
            return false;
        }
        // SAFETY: used.idx is 2 bytes in, inside the mapped and 4-aligned used ring.
        let used_idx = unsafe { &*(self.used.add(2) as *const AtomicU16) };
        used_idx.store(new.to_le(), Ordering::Release);
        // The idx store must be visible before we read the driver's suppression state.
        fence(Ordering::SeqCst);
        if self.event_idx {
            let off = 4 + 2 * usize::from(self.table.size);
            let used_event = u16::from_le(self.avail_u16(off).load(Ordering::Relaxed));
            new.wrapping_sub(used_event).wrapping_sub(1) < new.wrapping_sub(published)
        } else {
            let flags = u16::from_le(self.avail_u16(0).load(Ordering::Relaxed));
            flags & AVAIL_F_NO_INTERRUPT == 0
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::{Bytes, GuestAddress};

    use crate::testutil::{Driver, AVAIL, DESC, USED};

    #[test]
    fn walks_a_readable_chain_and_counts_bytes() {
        let (mut d, q) = Driver::new(16);
        d.desc(DESC, 3, 0x8000, 12, DESC_F_NEXT, 7);
        d.desc(DESC, 7, 0x9000, 100, 0, 0);
        d.offer(3);
        assert_eq!(
            Ring::map(&d.map().host(), &q).unwrap().pending(&q).unwrap(),
            1
        );
        let (total, segs) = d.walk(&q, Dir::Readable, true).unwrap();
        assert_eq!(total, 112);
        assert_eq!(
            segs,
            vec![
                Seg {
                    addr: 0x8000,
                    len: 12
                },
                Seg {
                    addr: 0x9000,
                    len: 100
                }
            ]
        );
    }

    #[test]
    fn rejects_each_kind_of_malformed_chain() {
        type Case = (Vec<(u64, u32, u16)>, Dir, ChainError);
        let cases: Vec<Case> = vec![
            (
                vec![(0x8000, 64, DESC_F_WRITE)],
                Dir::Readable,
                ChainError::WriteOnlyInTx,
            ),
            (
                vec![(0x8000, 64, 0)],
                Dir::Writable,
                ChainError::ReadOnlyInRx,
            ),
            (vec![(0x8000, 0, 0)], Dir::Readable, ChainError::ZeroLength),
            (
                vec![(0x20_0000, 64, 0)],
                Dir::Readable,
                ChainError::OutOfMemory {
                    addr: 0x20_0000,
                    len: 64,
                },
            ),
            (
                vec![(0xf_ff00, 0x200, 0)],
                Dir::Readable,
                ChainError::OutOfMemory {
                    addr: 0xf_ff00,
                    len: 0x200,
                },
            ),
            (
                vec![(0x8000, 64, 0), (0x9000, 70_000, 0)],
                Dir::Readable,
                ChainError::TooLong(65562),
            ),
        ];
        for (chain, dir, want) in cases {
            let (mut d, q) = Driver::new(16);
            let n = chain.len() as u16;
            for (i, (addr, len, flags)) in chain.into_iter().enumerate() {
                let i = i as u16;
                let next = if i + 1 < n { DESC_F_NEXT } else { 0 };
                d.desc(DESC, i, addr, len, flags | next, i + 1);
            }
            d.offer(0);
            assert_eq!(d.walk(&q, dir, true).map(|r| r.0), Err(want));
        }
    }

    #[test]
    fn detects_a_descriptor_loop() {
        let (mut d, q) = Driver::new(4);
        d.desc(DESC, 0, 0x8000, 10, DESC_F_NEXT, 1);
        d.desc(DESC, 1, 0x9000, 10, DESC_F_NEXT, 0);
        d.offer(0);
        assert_eq!(
            d.walk(&q, Dir::Readable, true).map(|r| r.0),
            Err(ChainError::TooManyDescriptors(4))
        );
    }

    #[test]
    fn out_of_range_indices_are_rejected() {
        let (mut d, q) = Driver::new(4);
        d.desc(DESC, 0, 0x8000, 10, DESC_F_NEXT, 9);
        d.offer(0);
        assert_eq!(
            d.walk(&q, Dir::Readable, true).map(|r| r.0),
            Err(ChainError::IndexOutOfRange { index: 9, size: 4 })
        );
        let (mut d, q) = Driver::new(4);
        d.offer(200);
        assert_eq!(
            d.walk(&q, Dir::Readable, true).map(|r| r.0),
            Err(ChainError::IndexOutOfRange {
                index: 200,
                size: 4
            })
        );
    }

    #[test]
    fn follows_an_indirect_table_only_when_negotiated() {
        let (mut d, q) = Driver::new(4);
        let table = 0x4_0000u64;
        d.desc(table, 0, 0x8000, 12, DESC_F_NEXT, 1);
        d.desc(table, 1, 0x9000, 50, 0, 0);
        d.desc(DESC, 0, table, 32, DESC_F_INDIRECT, 0);
        d.offer(0);
        assert_eq!(d.walk(&q, Dir::Readable, true).map(|r| r.0), Ok(62));
        assert_eq!(
            d.walk(&q, Dir::Readable, false).map(|r| r.0),
            Err(ChainError::IndirectNotNegotiated)
        );
        d.desc(table, 0, table, 16, DESC_F_INDIRECT, 0);
        assert_eq!(
            d.walk(&q, Dir::Readable, true).map(|r| r.0),
            Err(ChainError::NestedIndirect)
        );
        d.desc(DESC, 0, table, 20, DESC_F_INDIRECT, 0);
        assert_eq!(
            d.walk(&q, Dir::Readable, true).map(|r| r.0),
            Err(ChainError::BadIndirectTable(20))
        );
    }

    #[test]
    fn flat_takes_only_what_the_general_walk_would_take_as_one_buffer() {
        let (d, q) = Driver::new(8);
        let map = d.map();
        let h = map.host();
        let r = Ring::map(&h, &q).unwrap();
        let flat = |i: u16, dir: Dir, max: u32| r.flat(&h, i, dir, max).map(|f| f.seg);
        d.desc(DESC, 0, 0x8000, 60, 0, 0);
        assert_eq!(
            flat(0, Dir::Readable, 1000),
            Some(Seg {
                addr: 0x8000,
                len: 60
            })
        );
        let f = r.flat(&h, 0, Dir::Readable, 1000).unwrap();
        assert_eq!(Some(f.host.0), h.ptr(0x8000, 60), "translated once, here");
        assert_eq!(flat(0, Dir::Writable, 1000), None, "wrong direction");
        assert_eq!(flat(0, Dir::Readable, 59), None, "longer than allowed");
        assert_eq!(flat(8, Dir::Readable, 1000), None, "index past the table");
        d.desc(DESC, 1, 0x8000, 60, DESC_F_WRITE, 0);
        assert!(flat(1, Dir::Writable, 1000).is_some());
        assert_eq!(flat(1, Dir::Readable, 1000), None);
        // Everything else is left to the general walk.
        d.desc(DESC, 2, 0x8000, 12, DESC_F_NEXT, 3);
        d.desc(DESC, 3, 0x4_0000, 32, DESC_F_INDIRECT, 0);
        d.desc(DESC, 4, 0x8000, 0, 0, 0);
        d.desc(DESC, 5, 0xfff_0000, 60, 0, 0);
        d.desc(DESC, 6, 0xf_f000, 0x2000, 0, 0);
        for i in 2..=6 {
            assert_eq!(flat(i, Dir::Readable, u32::MAX), None, "descriptor {i}");
        }
    }

    #[test]
    fn writable_chains_skip_empty_buffers() {
        let (mut d, q) = Driver::new(4);
        d.desc(DESC, 0, 0x8000, 0, DESC_F_WRITE | DESC_F_NEXT, 1);
        d.desc(DESC, 1, 0x9000, 50, DESC_F_WRITE, 0);
        d.offer(0);
        let (total, segs) = d.walk(&q, Dir::Writable, true).unwrap();
        assert_eq!((total, segs.len()), (50, 1));
    }

    #[test]
    fn avail_index_jump_breaks_the_queue() {
        let (d, q) = Driver::new(8);
        d.mem
            .store(100u16.to_le(), GuestAddress(AVAIL + 2), Ordering::Release)
            .unwrap();
        assert!(matches!(
            Ring::map(&d.map().host(), &q).unwrap().pending(&q),
            Err(RingError::AvailJump { avail: 100, .. })
        ));
    }

    #[test]
    fn publishes_several_used_entries_at_once_and_honours_event_idx() {
        let (d, mut q) = Driver::new(8);
        let m = &d.mem;
        let map = d.map();
        let h = &map.host();
        q.set_event_idx(true);
        let r = Ring::map(h, &q).unwrap();
        let used_idx = || u16::from_le(m.load(GuestAddress(USED + 2), Ordering::Acquire).unwrap());
        r.write_used(&q, 0, 3, 100);
        r.write_used(&q, 1, 5, 40);
        assert_eq!(used_idx(), 0, "nothing visible before publishing");
        // used_event = 0: the driver wants a notification once entry 0 is used.
        assert!(r.publish_used(&mut q, 2));
        assert_eq!(used_idx(), 2);
        let e1: [u8; 8] = m.read_obj(GuestAddress(USED + 4 + 8)).unwrap();
        assert_eq!(e1, [5, 0, 0, 0, 40, 0, 0, 0]);
        // used_event 0 already passed: no new notification.
        r.write_used(&q, 0, 1, 1);
        assert!(!r.publish_used(&mut q, 1));
        // The driver moves used_event to 3: crossing it notifies.
        m.store(
            3u16.to_le(),
            GuestAddress(AVAIL + 4 + 2 * 8),
            Ordering::Release,
        )
        .unwrap();
        r.write_used(&q, 0, 1, 1);
        assert!(r.publish_used(&mut q, 1));
        // Without EVENT_IDX, VRING_AVAIL_F_NO_INTERRUPT suppresses.
        q.set_event_idx(false);
        let r = Ring::map(h, &q).unwrap();
        m.store(1u16.to_le(), GuestAddress(AVAIL), Ordering::Release)
            .unwrap();
        r.write_used(&q, 0, 1, 1);
        assert!(!r.publish_used(&mut q, 1));
        assert!(
            !r.publish_used(&mut q, 0),
            "publishing nothing never notifies"
        );
        // Used entries wrap around the ring.
        let slot = (q.next_used() + 9) % 8;
        r.write_used(&q, 9, 7, 9);
        let e: [u8; 8] = m
            .read_obj(GuestAddress(USED + 4 + 8 * u64::from(slot)))
            .unwrap();
        assert_eq!(e, [7, 0, 0, 0, 9, 0, 0, 0]);
    }

    #[test]
    fn kicks_are_suppressed_with_the_used_flag_only_without_event_idx() {
        let (d, mut q) = Driver::new(8);
        let map = d.map();
        let h = map.host();
        let flags = || u16::from_le(d.mem.load(GuestAddress(USED), Ordering::Acquire).unwrap());
        Ring::map(&h, &q).unwrap().suppress_kicks();
        assert_eq!(flags(), USED_F_NO_NOTIFY);
        // Re-enabled (as virtio-queue's enable_notification does): set again.
        d.mem
            .store(0u16, GuestAddress(USED), Ordering::Release)
            .unwrap();
        Ring::map(&h, &q).unwrap().suppress_kicks();
        assert_eq!(flags(), USED_F_NO_NOTIFY);
        d.mem
            .store(0u16, GuestAddress(USED), Ordering::Release)
            .unwrap();
        q.set_event_idx(true);
        Ring::map(&h, &q).unwrap().suppress_kicks();
        assert_eq!(flags(), 0, "EVENT_IDX: avail_event does it");
    }

    #[test]
    fn a_ring_outside_one_region_is_refused() {
        let (d, mut q) = Driver::new(8);
        let map = d.map();
        let h = map.host();
        // Memory is one 1 MiB region: a used ring starting 16 bytes before its end runs past it.
        q.set_used_ring_address(Some(0xf_fff0), Some(0));
        assert_eq!(
            Ring::map(&h, &q).err(),
            Some(RingError::Unmapped {
                what: "used ring",
                addr: 0xf_fff0
            })
        );
        let (d, mut q) = Driver::new(8);
        assert!(Ring::map(&d.map().host(), &q).is_ok());
        q.set_ready(false);
        assert_eq!(
            Ring::map(&d.map().host(), &q).err(),
            Some(RingError::NotReady)
        );
    }

    #[test]
    fn a_cached_ring_is_remapped_when_its_queue_moves() {
        let (mut d, mut q) = Driver::new(16);
        let map = MemMap::new(std::sync::Arc::new(d.mem.clone()));
        let cache = RingCache::default();
        d.offer(3);
        // SAFETY (all calls below): `map` is the only map used with `cache`, and outlives it.
        let r = unsafe { cache.ring(&map, 1, &q) }.unwrap();
        assert_eq!(r.pending(&q), Ok(1));
        assert_eq!(unsafe { cache.avail_idx(1) }, Some(1));
        assert_eq!(unsafe { cache.avail_idx(0) }, None, "another queue");
        // The driver moves its avail ring (one whose idx is 5): the old mapping must not be used.
        d.mem
            .store(5u16.to_le(), GuestAddress(0x3002), Ordering::Release)
            .unwrap();
        q.set_avail_ring_address(Some(0x3000), Some(0));
        let r = unsafe { cache.ring(&map, 1, &q) }.unwrap();
        assert_eq!(r.pending(&q), Ok(5));
        assert_eq!(unsafe { cache.avail_idx(1) }, Some(5));
        q.set_ready(false);
        assert_eq!(
            unsafe { cache.ring(&map, 1, &q) }.err(),
            Some(RingError::NotReady)
        );
    }

    #[test]
    fn warming_trusts_nothing_the_driver_wrote() {
        // Hints read descriptors without the ring lock: whatever they hold must not fault.
        let (d, q) = Driver::new(8);
        let map = d.map();
        let h = map.host();
        let r = Ring::map(&h, &q).unwrap();
        let cases = [
            (0x8000, 64),             // a real buffer
            (0xf_fff0, 0x200),        // runs past the end of memory
            (0x4000_0000_0000, 64),   // not guest memory at all
            (u64::MAX - 8, u32::MAX), // wraps
            (0x8000, 0),              // empty
        ];
        for (i, (addr, len)) in cases.into_iter().enumerate() {
            d.desc(DESC, i as u16, addr, len, DESC_F_WRITE, 0);
            for dir in [Dir::Readable, Dir::Writable] {
                r.warm(i as u16, i as u16);
                r.warm_desc(&h, i as u16, dir);
            }
        }
        // Nothing was written: the used ring is as the driver left it.
        assert_eq!(d.used_idx(), 0);
        assert_eq!(d.used(0), (0, 0));
    }

    /// An IOMMU whose IOVA 0x4000_0000 + n*0x1000 is guest page `pages[n]` (RW unless `ro`),
    /// guest memory (1 MiB) being QEMU VA 0x7f00_0000_0000.
    fn iommu(pages: &[u64], ro: &[usize]) -> crate::iommu::Iommu {
        use crate::iotlb::{VaRegion, PERM_RO, PERM_RW};
        let i = crate::iommu::Iommu::default();
        let mut t = i.write();
        let va = 0x7f00_0000_0000;
        t.set_regions(vec![VaRegion {
            gpa: 0,
            size: 0x10_0000,
            uaddr: va,
        }])
        .unwrap();
        for (n, g) in pages.iter().enumerate() {
            let perm = if ro.contains(&n) { PERM_RO } else { PERM_RW };
            t.update(IOVA + 0x1000 * n as u64, 0x1000, va + g, perm)
                .unwrap();
        }
        drop(t);
        i.set_enabled(true);
        i
    }

    const IOVA: u64 = 0x4000_0000;

    #[test]
    fn iovas_are_translated_split_and_permission_checked() {
        let (mut d, q) = Driver::new(16);
        // Buffer 0 crosses from IOVA page 0 (guest 0x8000) to page 1 (guest 0xa000); buffer 1
        // sits in page 2 (guest 0x9000, read-only); an indirect table in page 3 (guest 0xb000).
        let io = iommu(&[0x8000, 0xa000, 0x9000, 0xb000], &[2]);
        d.desc(DESC, 0, IOVA + 0xf00, 0x200, DESC_F_NEXT, 1);
        d.desc(DESC, 1, IOVA + 0x2010, 0x10, 0, 0);
        d.offer(0);
        let map = d.map();
        let walk = |h: &HostMem<'_>, head: u16, dir: Dir| {
            let mut segs = Vec::new();
            walk_chain(h, Table::of(&q), head, dir, true, u32::MAX, &mut segs).map(|t| (t, segs))
        };
        let h = map.host().with_dma(io.dma());
        assert_eq!(
            walk(&h, 0, Dir::Readable),
            Ok((
                0x210,
                vec![
                    Seg {
                        addr: 0x8f00,
                        len: 0x100
                    },
                    Seg {
                        addr: 0xa000,
                        len: 0x100
                    },
                    Seg {
                        addr: 0x9010,
                        len: 0x10
                    },
                ]
            ))
        );
        // Written by the device: the read-only page is refused.
        d.desc(DESC, 0, IOVA + 0xf00, 0x200, DESC_F_NEXT | DESC_F_WRITE, 1);
        d.desc(DESC, 1, IOVA + 0x2010, 0x10, DESC_F_WRITE, 0);
        assert_eq!(
            walk(&h, 0, Dir::Writable).map(|r| r.0),
            Err(ChainError::Iommu(Fault::Perm {
                iova: IOVA + 0x2010,
                access: Access::Write
            }))
        );
        // An unmapped IOVA, and the same address without the IOMMU (a guest address, taken as is).
        d.desc(DESC, 2, IOVA + 0x9000, 0x10, 0, 0);
        assert_eq!(
            walk(&h, 2, Dir::Readable).map(|r| r.0),
            Err(ChainError::Iommu(Fault::Miss {
                iova: IOVA + 0x9000,
                access: Access::Read
            }))
        );
        d.desc(DESC, 2, 0x9000, 0x10, 0, 0);
        assert!(walk(&map.host(), 2, Dir::Readable).is_ok());
        assert!(walk(&h, 2, Dir::Readable).is_err(), "0x9000 is no IOVA");
        // An indirect table at an IOVA, holding a buffer at an IOVA.
        let mut raw = [0u8; 16];
        raw[..8].copy_from_slice(&(IOVA + 0x10).to_le_bytes());
        raw[8..12].copy_from_slice(&0x20u32.to_le_bytes());
        d.mem.write_slice(&raw, GuestAddress(0xb000)).unwrap();
        d.desc(DESC, 3, IOVA + 0x3000, 16, DESC_F_INDIRECT, 0);
        assert_eq!(
            walk(&h, 3, Dir::Readable),
            Ok((
                0x20,
                vec![Seg {
                    addr: 0x8010,
                    len: 0x20
                }]
            ))
        );
        // The flat fast path translates a buffer inside one page, and leaves one across pages
        // that are apart in guest memory to the walk.
        let r = Ring::map(&h, &q).unwrap();
        d.desc(DESC, 4, IOVA + 0x1100, 0x40, 0, 0);
        assert_eq!(
            r.flat(&h, 4, Dir::Readable, 1000).map(|f| f.seg),
            Some(Seg {
                addr: 0xa100,
                len: 0x40
            })
        );
        d.desc(DESC, 4, IOVA + 0xff0, 0x20, 0, 0);
        assert!(r.flat(&h, 4, Dir::Readable, 1000).is_none());
        // Every fault above asked for the missing page (no channel here: counted as none sent,
        // so this only checks that nothing blocked).
        assert_eq!(io.misses_sent(), 0);
    }
}
