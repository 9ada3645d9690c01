//! Entry points for the fuzz targets in `fuzz/` that the public API does not offer. Only built
//! with the `fuzzing` feature; nothing else uses it.

use crate::hostmem::HostMem;
use crate::ring::{Dir, Ring, Seg};

/// [`Ring::flat`]: descriptor `head` as one buffer in one region, with its host address.
pub fn flat(
    ring: &Ring<'_>,
    mem: &HostMem<'_>,
    head: u16,
    dir: Dir,
    max_len: u32,
) -> Option<(Seg, *mut u8)> {
    ring.flat(mem, head, dir, max_len)
        .map(|f| (f.seg, f.host.0))
}
