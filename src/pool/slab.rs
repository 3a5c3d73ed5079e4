//! Segments and slab pages: where small blocks live.
//!
//! A segment is a `SEGMENT_SIZE`-aligned extent of the arena owned by one thread heap, marked in
//! the page map's small-segment bitmap while it is. Its first slab page holds the header
//! (segment fields and the descriptors of all pages); the other pages each serve one (kind, size
//! class). The owner of any block is found from its address alone, once the bitmap has said the
//! address is a small block's: `segment = ptr & !(SEGMENT_SIZE - 1)`,
//! `page = (ptr - segment) >> SLAB_SHIFT`.
//!
//! Per page invariant: `used + |free| + |remote| + |delayed blocks of this page| +
//! (reserved - capacity) == reserved`, where `capacity` counts blocks carved so far. `used` is the
//! owner's count of blocks handed out minus frees it has seen.

use crate::class::{SLAB_SHIFT, SLAB_SIZE};
use core::ptr;

/// Size and alignment of a segment.
pub(crate) const SEGMENT_SIZE: usize = 4 << 20;
/// Slab pages per segment, the first holding the header.
pub(crate) const PAGES_PER_SEGMENT: usize = SEGMENT_SIZE / SLAB_SIZE;

/// A free block: its first word links to the next.
#[repr(C)]
pub(crate) struct Block {
    pub(crate) next: *mut Block,
}

/// Descriptor of one slab page, kept in the segment header.
#[repr(C)]
pub(crate) struct Page {
    /// Owner-only free list (LIFO: the most recently freed, hottest block is reused first).
    pub(crate) free: *mut Block,
    /// Blocks handed out and not yet seen freed by the owner.
    pub(crate) used: u32,
    /// Blocks carved out of the page so far (the rest is untouched memory).
    pub(crate) capacity: u32,
    /// Blocks the page can hold.
    pub(crate) reserved: u32,
    /// Block size of the class.
    pub(crate) block_size: u32,
    /// Size class index.
    pub(crate) class: u8,
    /// Tensor kind index.
    pub(crate) kind: u8,
    /// Whether the page is on its heap's full list.
    pub(crate) in_full: bool,
    /// Whether the page is its kind heap's direct page for its class.
    pub(crate) is_direct: bool,
    /// Whether the page is in use (false: free slot of the segment).
    pub(crate) in_use: bool,
    /// `kind * NUM_SMALL + class`: where the owner heap counts this page's frees.
    pub(crate) stat_index: u16,
    /// Links in the heap's queue (or full list) for this page's kind and class.
    pub(crate) next: *mut Page,
    pub(crate) prev: *mut Page,
}

/// Segment header, at the segment's first byte.
#[repr(C)]
pub(crate) struct Segment {
    /// The thread heap owning every page (heaps are recycled, never freed, so this stays valid).
    pub(crate) owner: *mut crate::tcache::Heap,
    /// Next segment of the same heap.
    pub(crate) next: *mut Segment,
    /// Bit i set iff page i is free (page 0, the header, is never free).
    pub(crate) free_mask: u64,
    /// Pages in use.
    pub(crate) used_pages: u32,
    pub(crate) pages: [Page; PAGES_PER_SEGMENT],
}

const _: () = assert!(PAGES_PER_SEGMENT == 64);
const _: () = assert!(core::mem::size_of::<Page>() == 48);
const _: () = assert!(crate::kind::NUM_KINDS * crate::class::NUM_SMALL <= u16::MAX as usize);
const _: () = assert!(core::mem::size_of::<Segment>() <= SLAB_SIZE);

const _: () = assert!(SEGMENT_SIZE == 1 << crate::pagemap::GRANULE_SHIFT);

/// The segment holding `p` (any address inside a small block).
#[inline(always)]
pub(crate) fn segment_of(p: *mut u8) -> *mut Segment {
    (p as usize & !(SEGMENT_SIZE - 1)) as *mut Segment
}

/// The page descriptor of the small block at `p`.
///
/// # Safety
/// `seg` is `segment_of(p)` and is a live small segment.
#[inline(always)]
pub(crate) unsafe fn page_of(seg: *mut Segment, p: *mut u8) -> *mut Page {
    let idx = (p as usize - seg as usize) >> SLAB_SHIFT;
    // SAFETY: `idx < PAGES_PER_SEGMENT` because `p` lies inside the segment; the pointer stays in
    // the header's page array.
    unsafe { ptr::addr_of_mut!((*seg).pages).cast::<Page>().add(idx) }
}

/// First byte of the page's block area.
///
/// # Safety
/// `page` points into a live segment's page array.
#[inline]
pub(crate) unsafe fn page_start(page: *mut Page) -> *mut u8 {
    let seg = (page as usize) & !(SEGMENT_SIZE - 1);
    // SAFETY: the page descriptors start at a fixed offset in the header.
    let first = unsafe { ptr::addr_of_mut!((*(seg as *mut Segment)).pages) } as usize;
    let idx = (page as usize - first) / core::mem::size_of::<Page>();
    (seg + idx * SLAB_SIZE) as *mut u8
}

/// Initialise a segment taken from the arena for `owner`.
///
/// # Safety
/// `seg` is a `SEGMENT_SIZE`-aligned extent of `SEGMENT_SIZE` bytes that nothing else uses (its
/// bytes may be anything: the arena reuses freed memory).
pub(crate) unsafe fn init_segment(seg: *mut Segment, owner: *mut crate::tcache::Heap) {
    // SAFETY: the extent is ours; zeroing the header makes every page descriptor read as "not
    // in use" before the fields are written.
    unsafe {
        ptr::write_bytes(seg.cast::<u8>(), 0, core::mem::size_of::<Segment>());
        (*seg).owner = owner;
        (*seg).next = ptr::null_mut();
        (*seg).free_mask = !1u64;
        (*seg).used_pages = 0;
    }
}

/// Take a free page slot of `seg` and initialise it for (kind, class). Null if the segment is full.
///
/// # Safety
/// The caller owns `seg` (it is its heap's).
pub(crate) unsafe fn take_page(seg: *mut Segment, kind: u8, class: usize) -> *mut Page {
    // SAFETY: owner-only access to the header.
    unsafe {
        let mask = (*seg).free_mask;
        if mask == 0 {
            return ptr::null_mut();
        }
        let idx = mask.trailing_zeros() as usize;
        (*seg).free_mask = mask & !(1u64 << idx);
        (*seg).used_pages += 1;
        let page = ptr::addr_of_mut!((*seg).pages).cast::<Page>().add(idx);
        let bs = crate::class::small_size(class);
        (*page).free = ptr::null_mut();
        (*page).used = 0;
        (*page).capacity = 0;
        (*page).reserved = (SLAB_SIZE / bs) as u32;
        (*page).block_size = bs as u32;
        (*page).class = class as u8;
        (*page).kind = kind;
        (*page).in_full = false;
        (*page).is_direct = false;
        (*page).in_use = true;
        (*page).stat_index = (kind as usize * crate::class::NUM_SMALL + class) as u16;
        (*page).next = ptr::null_mut();
        (*page).prev = ptr::null_mut();
        page
    }
}

/// Return an empty page's slot to its segment. Returns true if the segment became empty.
///
/// # Safety
/// The caller owns the page, it has `used == 0`, no remote blocks and is on no list.
pub(crate) unsafe fn release_page(page: *mut Page) -> bool {
    // SAFETY: owner-only access to the page and its segment header.
    unsafe {
        debug_assert_eq!((*page).used, 0);
        let seg = ((page as usize) & !(SEGMENT_SIZE - 1)) as *mut Segment;
        let first = ptr::addr_of_mut!((*seg).pages).cast::<Page>();
        let idx = page.offset_from(first) as usize;
        (*page).in_use = false;
        (*seg).free_mask |= 1u64 << idx;
        (*seg).used_pages -= 1;
        (*seg).used_pages == 0
    }
}

/// Carve more blocks from the untouched part of the page onto its free list: about 4 KiB worth,
/// at least one, so a fresh page is touched gradually rather than all at once.
///
/// # Safety
/// Owner-only; `capacity < reserved`.
#[cold]
pub(crate) unsafe fn extend(page: *mut Page) {
    // SAFETY: owner-only; every carved block lies inside the page's block area.
    unsafe {
        let bs = (*page).block_size as usize;
        let start = page_start(page);
        let cap = (*page).capacity as usize;
        let n = (4096 / bs).max(1).min((*page).reserved as usize - cap);
        let first = start.add(cap * bs);
        let mut b = first;
        for _ in 1..n {
            let next = b.add(bs);
            (*(b as *mut Block)).next = next as *mut Block;
            b = next;
        }
        (*(b as *mut Block)).next = (*page).free;
        (*page).free = first as *mut Block;
        (*page).capacity += n as u32;
    }
}
