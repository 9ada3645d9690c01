//! Split virtqueue access for the data path. `virtio_queue::Queue` keeps the ring state that the
//! vhost-user handler manages (addresses, size, next_avail/next_used, EVENT_IDX); this module reads
//! the avail ring, walks descriptor chains and publishes used entries itself because:
//! - malformed chains must be detected and reported (DescriptorChain's iterator just stops early);
//! - a mergeable RX frame spans several used entries that must become visible with ONE used.idx
//!   store, or the driver can see the head before its continuation buffers.

use std::sync::atomic::{fence, Ordering};

use virtio_queue::{Queue, QueueT};

use crate::hostmem::{HostMem, HostPtr};

pub(crate) const DESC_F_NEXT: u16 = 1;
pub(crate) const DESC_F_WRITE: u16 = 2;
const DESC_F_INDIRECT: u16 = 4;
const DESC_SIZE: u64 = 16;
const AVAIL_F_NO_INTERRUPT: u16 = 1;

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
}

/// A queue whose rings themselves are broken: it stays stopped until the driver restarts it.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RingError {
    #[error("ring is not set up")]
    NotReady,
    #[error("avail index jumped from {next} to {avail} on a queue of {size}")]
    AvailJump { avail: u16, next: u16, size: u16 },
    #[error("ring memory at {0:#x} is not accessible")]
    Memory(u64),
}

fn load_u16(mem: &HostMem<'_>, addr: u64, order: Ordering) -> Result<u16, RingError> {
    mem.load_u16(addr, order).ok_or(RingError::Memory(addr))
}

fn ready(q: &Queue) -> Result<(), RingError> {
    if q.ready() && q.size() > 0 && q.avail_ring() != 0 {
        Ok(())
    } else {
        Err(RingError::NotReady)
    }
}

/// Ring position of free-running index `idx`. Split-ring sizes are powers of two (the queue
/// refuses any other size), so this is a mask, not a division: four per frame showed.
fn slot(q: &Queue, idx: u16) -> u16 {
    debug_assert!(q.size().is_power_of_two());
    idx & q.size().wrapping_sub(1)
}

/// Number of chains the driver has made available beyond `next_avail`.
pub fn pending(mem: &HostMem<'_>, q: &Queue) -> Result<u16, RingError> {
    ready(q)?;
    let avail = load_u16(mem, q.avail_ring() + 2, Ordering::Acquire)?;
    let n = avail.wrapping_sub(q.next_avail());
    if n > q.size() {
        return Err(RingError::AvailJump {
            avail,
            next: q.next_avail(),
            size: q.size(),
        });
    }
    Ok(n)
}

/// Head descriptor index of the chain at ring position `next_avail + k`.
pub fn avail_head(mem: &HostMem<'_>, q: &Queue, k: u16) -> Result<u16, RingError> {
    let pos = slot(q, q.next_avail().wrapping_add(k));
    load_u16(
        mem,
        q.avail_ring() + 4 + 2 * u64::from(pos),
        Ordering::Acquire,
    )
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
    pub seg: Seg,
    pub host: HostPtr,
}

/// The chain at `head` when it is a [`Flat`] one that `walk_chain` would accept as it is (right
/// direction, not empty, at most `max_len` bytes). None means "take the general walk", which
/// also reports whatever is wrong with it.
#[inline]
pub fn flat(mem: &HostMem<'_>, t: Table, head: u16, dir: Dir, max_len: u32) -> Option<Flat> {
    if head >= t.size {
        return None;
    }
    let p = mem.ptr(t.addr + u64::from(head) * DESC_SIZE, DESC_SIZE as usize)?;
    let mut raw = [0u8; DESC_SIZE as usize];
    // SAFETY: `p` has 16 bytes inside a live mapping; a byte copy tolerates the driver
    // changing them (as the general walk does).
    unsafe { std::ptr::copy_nonoverlapping(p, raw.as_mut_ptr(), raw.len()) };
    let d = Desc::parse(&raw);
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
    let host = mem.ptr(d.addr, d.len as usize)?;
    Some(Flat {
        seg: Seg {
            addr: d.addr,
            len: d.len,
        },
        host: HostPtr(host),
    })
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
        let at = table + u64::from(index) * DESC_SIZE;
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
                || len % DESC_SIZE as u32 != 0
                || len / DESC_SIZE as u32 > u32::from(u16::MAX)
            {
                return Err(ChainError::BadIndirectTable(len));
            }
            table = d.addr;
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
            if !mem.check_range(addr, len as usize) {
                return Err(ChainError::OutOfMemory { addr, len });
            }
            total = total
                .checked_add(len)
                .filter(|t| *t <= max_len)
                .ok_or(ChainError::TooLong(max_len))?;
            out.push(Seg { addr, len });
        }
        if flags & DESC_F_NEXT == 0 {
            return Ok(total);
        }
        index = d.next;
    }
}

/// Writes the used element `k` positions after `next_used`, without publishing it.
pub fn write_used(
    mem: &HostMem<'_>,
    q: &Queue,
    k: u16,
    id: u16,
    len: u32,
) -> Result<(), RingError> {
    let pos = slot(q, q.next_used().wrapping_add(k));
    let at = q.used_ring() + 4 + 8 * u64::from(pos);
    let mut elem = [0u8; 8];
    elem[..4].copy_from_slice(&u32::from(id).to_le_bytes());
    elem[4..].copy_from_slice(&len.to_le_bytes());
    mem.write(at, &elem).ok_or(RingError::Memory(at))
}

/// Publishes `count` used elements written with `write_used` in one used.idx store and says
/// whether the driver asked to be notified (EVENT_IDX or VRING_AVAIL_F_NO_INTERRUPT).
pub fn publish_used(mem: &HostMem<'_>, q: &mut Queue, count: u16) -> Result<bool, RingError> {
    if count == 0 {
        return Ok(false);
    }
    let old = q.next_used();
    q.set_next_used(old.wrapping_add(count));
    publish_pending(mem, q, old)
}

/// Stores used.idx = `next_used` for entries written (and counted into `next_used`) since the
/// driver last saw `published`, and says whether the driver asked to be notified.
pub fn publish_pending(mem: &HostMem<'_>, q: &Queue, published: u16) -> Result<bool, RingError> {
    let new = q.next_used();
    if new == published {
        return Ok(false);
    }
    let at = q.used_ring() + 2;
    mem.store_u16(at, new, Ordering::Release)
        .ok_or(RingError::Memory(at))?;
    // The idx store must be visible before we read the driver's suppression state.
    fence(Ordering::SeqCst);
    if q.event_idx_enabled() {
        let used_event = load_u16(
            mem,
            q.avail_ring() + 4 + 2 * u64::from(q.size()),
            Ordering::Relaxed,
        )?;
        Ok(new.wrapping_sub(used_event).wrapping_sub(1) < new.wrapping_sub(published))
    } else {
        let flags = load_u16(mem, q.avail_ring(), Ordering::Relaxed)?;
        Ok(flags & AVAIL_F_NO_INTERRUPT == 0)
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
        assert_eq!(pending(&d.host(), &q).unwrap(), 1);
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
        let h = d.host();
        let t = Table::of(&q);
        let flat = |i: u16, dir: Dir, max: u32| flat(&h, t, i, dir, max).map(|f| f.seg);
        d.desc(DESC, 0, 0x8000, 60, 0, 0);
        assert_eq!(
            flat(0, Dir::Readable, 1000),
            Some(Seg {
                addr: 0x8000,
                len: 60
            })
        );
        let f = super::flat(&h, t, 0, Dir::Readable, 1000).unwrap();
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
            pending(&d.host(), &q),
            Err(RingError::AvailJump { avail: 100, .. })
        ));
    }

    #[test]
    fn publishes_several_used_entries_at_once_and_honours_event_idx() {
        let (d, mut q) = Driver::new(8);
        let m = &d.mem;
        let h = &d.host();
        q.set_event_idx(true);
        let used_idx = || u16::from_le(m.load(GuestAddress(USED + 2), Ordering::Acquire).unwrap());
        write_used(h, &q, 0, 3, 100).unwrap();
        write_used(h, &q, 1, 5, 40).unwrap();
        assert_eq!(used_idx(), 0, "nothing visible before publishing");
        // used_event = 0: the driver wants a notification once entry 0 is used.
        assert!(publish_used(h, &mut q, 2).unwrap());
        assert_eq!(used_idx(), 2);
        let e1: [u8; 8] = m.read_obj(GuestAddress(USED + 4 + 8)).unwrap();
        assert_eq!(e1, [5, 0, 0, 0, 40, 0, 0, 0]);
        // used_event 0 already passed: no new notification.
        write_used(h, &q, 0, 1, 1).unwrap();
        assert!(!publish_used(h, &mut q, 1).unwrap());
        // The driver moves used_event to 3: crossing it notifies.
        m.store(
            3u16.to_le(),
            GuestAddress(AVAIL + 4 + 2 * 8),
            Ordering::Release,
        )
        .unwrap();
        write_used(h, &q, 0, 1, 1).unwrap();
        assert!(publish_used(h, &mut q, 1).unwrap());
        // Without EVENT_IDX, VRING_AVAIL_F_NO_INTERRUPT suppresses.
        q.set_event_idx(false);
        m.store(1u16.to_le(), GuestAddress(AVAIL), Ordering::Release)
            .unwrap();
        write_used(h, &q, 0, 1, 1).unwrap();
        assert!(!publish_used(h, &mut q, 1).unwrap());
        assert!(
            !publish_used(h, &mut q, 0).unwrap(),
            "publishing nothing never notifies"
        );
    }
}
