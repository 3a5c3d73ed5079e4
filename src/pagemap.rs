//! Who owns an address: a bitmap of small-block segments and a radix tree of large blocks.
//!
//! `free` is told nothing but the address, and the address may be bad (a C program's wild
//! `free`), so ownership is decided from tables the allocator wrote, never by reading memory at
//! the address:
//! - **Small segments** are `SEGMENT_SIZE`-aligned, so one bit per segment-sized granule of the
//!   address space says whether a granule is a live small segment: `is_small(p)` is one load
//!   from a static table and a bit test, on the fast path of every free. The table covers
//!   `ADDR_BITS` of address space (8 MiB of zero-initialised static memory, of which only the
//!   words for granules in use are ever touched: one 4 KiB page covers 128 GiB).
//! - **Large blocks** start in the first page of their extent. `PageMap` maps a page number to
//!   the descriptor of the extent whose block starts in that page: a three-level radix tree
//!   (12 bits a level) whose nodes come from the arena's metadata and are never freed. Only the
//!   first page of each extent that is handed out is recorded; entries of pages that no longer
//!   start a block go stale, which is harmless because a lookup is confirmed against the
//!   descriptor itself (`Extent::start == p` and the state is live: no two live blocks overlap,
//!   so a stale entry can never confirm an address inside another block).
//!
//! Invariants: bit `g` of the bitmap is set iff granule `g` is a segment held by a thread heap;
//! for every live large block at `p`, `PageMap::get(p)` is its descriptor.

use crate::meta::Meta;
use crate::sync::plain::{AtomicPtr, AtomicU64};
use core::ptr;
use core::sync::atomic::Ordering::{Acquire, Relaxed, Release};

/// Address bits the tables cover (x86-64 and AArch64 user space with 4-level page tables; the
/// kernel hands out higher addresses only to mappings that ask for them, which ours never do).
pub(crate) const ADDR_BITS: u32 = 48;

/// log2 of the small-segment granule (`pool::slab::SEGMENT_SIZE`).
pub(crate) const GRANULE_SHIFT: u32 = 22;

const GRANULES: usize = 1 << (ADDR_BITS - GRANULE_SHIFT);

#[allow(clippy::declare_interior_mutable_const)] // a template for the static array below
const ZERO_WORD: AtomicU64 = AtomicU64::new(0);

/// One bit per granule: set while the granule is a small segment.
static SMALL: [AtomicU64; GRANULES / 64] = [ZERO_WORD; GRANULES / 64];

/// Whether `p` lies in a live small segment. Relaxed is enough: a segment's bit is set before
/// any of its blocks is handed out, and cleared only when none is live, so a valid free always
/// sees it set through the handoff that gave it the block.
#[inline(always)]
pub(crate) fn is_small(p: *const u8) -> bool {
    let g = p as usize >> GRANULE_SHIFT;
    match SMALL.get(g >> 6) {
        Some(w) => (w.load(Relaxed) >> (g & 63)) & 1 != 0,
        None => false,
    }
}

/// Mark the granule of segment `seg` as a small segment or not.
pub(crate) fn set_small(seg: *const u8, on: bool) {
    let g = seg as usize >> GRANULE_SHIFT;
    debug_assert_eq!(seg as usize & ((1 << GRANULE_SHIFT) - 1), 0);
    if let Some(w) = SMALL.get(g >> 6) {
        let bit = 1u64 << (g & 63);
        if on {
            w.fetch_or(bit, Release);
        } else {
            w.fetch_and(!bit, Release);
        }
        debug_assert_eq!(is_small(seg), on);
    }
}

/// Bits of the page number each level indexes.
const LEVEL_BITS: u32 = 12;
const FANOUT: usize = 1 << LEVEL_BITS;
const _: () = assert!(3 * LEVEL_BITS + crate::os::PAGE.trailing_zeros() == ADDR_BITS);

/// Bytes of one node of the tree (what `prepare` takes from its metadata source per node).
pub(crate) const NODE_BYTES: usize = core::mem::size_of::<Node>();

/// A node of the tree: 4,096 pointers (32 KiB), to nodes of the next level or, at the last
/// level, to extent descriptors (type-erased here; the arena knows what it stores).
#[repr(C)]
struct Node {
    slots: [AtomicPtr<u8>; FANOUT],
}

/// Page number to descriptor. The root level is inline (32 KiB in the arena's static), the two
/// levels below are allocated from the arena's metadata on first use. Written under the arena's
/// lock; read without it (see the module docs for why a lookup needs no lock).
pub(crate) struct PageMap {
    #[cfg(not(loom))]
    root: [AtomicPtr<Node>; FANOUT],
    /// Models build an arena per execution on loom's small coroutine stacks: the root lives on
    /// the heap there.
    #[cfg(loom)]
    root: Box<[AtomicPtr<Node>]>,
}

impl PageMap {
    #[cfg(not(loom))]
    pub(crate) const fn new() -> Self {
        Self {
            root: [const { AtomicPtr::new(ptr::null_mut()) }; FANOUT],
        }
    }

    #[cfg(loom)]
    pub(crate) fn new() -> Self {
        let v: Vec<AtomicPtr<Node>> = (0..FANOUT)
            .map(|_| AtomicPtr::new(ptr::null_mut()))
            .collect();
        Self {
            root: v.into_boxed_slice(),
        }
    }

    fn indices(addr: usize) -> Option<[usize; 3]> {
        if addr >> ADDR_BITS != 0 {
            return None;
        }
        let page = addr >> crate::os::PAGE.trailing_zeros();
        let m = FANOUT - 1;
        Some([page >> (2 * LEVEL_BITS), (page >> LEVEL_BITS) & m, page & m])
    }

    /// The value recorded for the page holding `addr`, or null.
    #[inline]
    pub(crate) fn get(&self, addr: usize) -> *mut u8 {
        let Some([a, b, c]) = Self::indices(addr) else {
            return ptr::null_mut();
        };
        let mid = self.root[a].load(Acquire);
        if mid.is_null() {
            return ptr::null_mut();
        }
        // SAFETY: nodes are never freed while the map lives, and a published node is fully
        // initialised (zeroed memory, published with Release).
        let leaf = unsafe { (*mid).slots[b].load(Acquire) };
        if leaf.is_null() {
            return ptr::null_mut();
        }
        // SAFETY: as above.
        unsafe { (*leaf.cast::<Node>()).slots[c].load(Acquire) }
    }

    /// Make sure the nodes for the page holding `addr` exist, allocating them from `meta`.
    /// False when a node cannot be allocated or the address is out of range. The caller
    /// serialises writers.
    #[link_section = ".text.hot.tensorpool"]
    pub(crate) fn prepare(&self, addr: usize, meta: &mut Meta) -> bool {
        let Some([a, b, _]) = Self::indices(addr) else {
            return false;
        };
        let mid = Self::child(&self.root[a], meta);
        if mid.is_null() {
            return false;
        }
        // SAFETY: `mid` is a live node (see `get`).
        !Self::child(unsafe { &(*mid).slots[b] }, meta).is_null()
    }

    /// Record `value` for the page holding `addr`, whose nodes `prepare` made. The caller
    /// serialises writers.
    pub(crate) fn set(&self, addr: usize, value: *mut u8) {
        let Some([a, b, c]) = Self::indices(addr) else {
            return;
        };
        let mid = self.root[a].load(Relaxed);
        debug_assert!(!mid.is_null(), "page map not prepared");
        if mid.is_null() {
            return;
        }
        // SAFETY: `mid` is a live node (see `get`).
        let leaf = unsafe { (*mid).slots[b].load(Relaxed) };
        debug_assert!(!leaf.is_null(), "page map not prepared");
        if leaf.is_null() {
            return;
        }
        // SAFETY: as above.
        unsafe { (*leaf.cast::<Node>()).slots[c].store(value, Release) };
    }

    /// The node `slot` points to, allocated (zeroed) and published if it is not there yet.
    #[link_section = ".text.hot.tensorpool"]
    fn child<T>(slot: &AtomicPtr<T>, meta: &mut Meta) -> *mut Node {
        let cur = slot.load(Acquire);
        if !cur.is_null() {
            return cur.cast();
        }
        let n = meta.alloc(core::mem::size_of::<Node>(), crate::os::PAGE);
        if !n.is_null() {
            slot.store(n.cast(), Release);
        }
        n.cast()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_bits_follow_set_and_clear() {
        // A granule-aligned address no real mapping uses in this test process's range checks.
        let g = (0x5555usize << GRANULE_SHIFT) as *const u8;
        assert!(!is_small(g));
        set_small(g, true);
        assert!(is_small(g));
        assert!(is_small(g.wrapping_add((1 << GRANULE_SHIFT) - 1)));
        assert!(!is_small(g.wrapping_add(1 << GRANULE_SHIFT)));
        set_small(g, false);
        assert!(!is_small(g));
        assert!(!is_small(usize::MAX as *const u8));
        assert!(!is_small(core::ptr::null()));
    }

    #[test]
    fn pages_map_to_their_values() {
        let mut meta = Meta::new();
        let map = Box::new(PageMap::new());
        let addrs = [
            0x1000usize,
            0x7f12_3456_7000,
            0x7f12_3456_8000,
            0xffff_ffff_f000,
        ];
        for (i, &a) in addrs.iter().enumerate() {
            assert!(map.get(a).is_null());
            assert!(map.prepare(a, &mut meta));
            map.set(a, (i + 1) as *mut u8);
        }
        for (i, &a) in addrs.iter().enumerate() {
            assert_eq!(map.get(a) as usize, i + 1);
            assert_eq!(map.get(a + 4095) as usize, i + 1, "same page");
        }
        assert!(map.get(0x7f12_3456_9000).is_null());
        assert!(!map.prepare(1 << ADDR_BITS, &mut meta));
        assert!(map.get(usize::MAX).is_null());
    }
}
