//! Segments and slab pages: where small blocks live.
//!
//! A segment is a `SEGMENT_SIZE`-aligned extent of the arena, owned by one thread heap and
//! marked in the page map's small-segment bitmap while it is. The heap is opaque here (`Owner`):
//! this module knows pages and blocks, not who allocates from them. The segment's first slab page
//! holds the header (segment fields and the descriptors of all pages, 256 bytes each); the
//! other pages each serve one (kind, size class). The owner of any block is found from its
//! address alone, once the bitmap has said the address is a small block's:
//! `segment = ptr & !(SEGMENT_SIZE - 1)`, `page = (ptr - segment) >> SLAB_SHIFT`.
//!
//! **Two lists per page.** `free` is the owner's: it allocates from it and frees onto it, with no
//! atomic operation. `remote` holds the blocks other threads freed: they push onto it with a CAS
//! (a chain of blocks at a time, adding the chain's length to a count kept in the same word), and
//! the owner takes the whole list with one atomic RMW when it needs blocks from this page
//! (`collect_remote`). The count says how many blocks came back, so a dry page's free list simply
//! becomes the taken list: no walk, no heap-wide list, no lookup per block.
//!
//! **Full pages.** The owner does not look at pages it found full. So that remote frees into such
//! a page are not stranded, the owner *arms* it (`NOTIFY`, in `remote`'s low bits, set only while
//! the remote list is empty). The first remote free that finds `NOTIFY` turns it into `QUEUED` in
//! the same CAS and then puts the page on its owner heap's delayed list; the owner, at its next
//! slow path, takes the page back to the pages it allocates from and clears `QUEUED`. Only full
//! pages pay for this: a free into any other page is one CAS and nothing else.
//!
//! Per page (`Page`), with `|x|` the length of list `x` and `live` the blocks the program holds:
//! - `used + |free| == capacity <= blocks_per_page(class)` (capacity: blocks carved so far);
//! - `used == live + |remote| + blocks in other threads' unpublished batches`;
//! - `remote`'s count `== |remote|` (zero exactly when the list is empty);
//! - `NOTIFY` set only while the page is on its heap's full list; `QUEUED` set from the CAS that
//!   cleared `NOTIFY` until the owner takes the page off its delayed list, and never together
//!   with `NOTIFY`;
//! - a page is given back to its segment only with `used == 0` and no `QUEUED`;
//! - with `free-checks`, every block on `free`, on `remote` or in a batch holds `FREE_MARK` in
//!   its second word, and a block handed out holds 0 there until the program writes it.
//!
//! **Checking a free before anything is written** (`free-checks`, on by default). An address
//! must start a carved block of a page in use, which one compare tells: `off * recip mod 2^32 <
//! limit` for the offset in the page, with the class's `recip` (`class::recip`: the product is
//! `k * step` for the `k`-th block and at least `recip` anywhere else) and `limit = n * step`
//! for the `n` blocks carved (the owner's; another thread checks against the page's whole block
//! area), 0 for a page not in use. A block that holds `FREE_MARK` is a second free. Both tests
//! read only the page descriptor's line the free writes anyway and the block's first 16 bytes;
//! a failure goes to a cold report.

use crate::class::{
    blocks_per_page, check_limit, recip, small_size, NUM_SMALL, SLAB_SHIFT, SLAB_SIZE,
};
use crate::kind::NUM_KINDS;
use crate::stats::SlabCounts;
use crate::sync::{AtomicUsize, Ordering, Owned32, Stat};
use core::ptr;

/// Size and alignment of a segment.
pub(crate) const SEGMENT_SIZE: usize = 4 << 20;
/// Slab pages per segment, the first holding the header.
pub(crate) const PAGES_PER_SEGMENT: usize = SEGMENT_SIZE / SLAB_SIZE;

/// The heap owning a segment, opaque to this module.
pub(crate) type Owner = *mut ();

/// A free block: its first word links to the next.
#[repr(C)]
pub(crate) struct Block {
    pub(crate) next: *mut Block,
}

/// `remote`'s low bits: the owner wants to hear of the next remote free (the page is full).
const NOTIFY: usize = 1;
/// A remote free took the `NOTIFY`: the page is on (or about to be put on) its heap's delayed
/// list.
const QUEUED: usize = 2;
const FLAGS: usize = NOTIFY | QUEUED;
/// `remote`'s top bits: how many blocks the list holds, so that the owner takes a list without
/// walking it (a walk is a cache miss per block: the links were written on the freeing core).
/// User-space addresses fit in the low 47 bits on x86-64 and aarch64 (the arena never asks for
/// higher ones), and a page holds at most `SLAB_SIZE / 8 < 2^16` blocks.
const COUNT_SHIFT: u32 = 48;
const LINK: usize = (1 << COUNT_SHIFT) - 1 - FLAGS;
const _: () = assert!(SLAB_SIZE / 8 < 1 << (usize::BITS - COUNT_SHIFT));

const _: () = assert!(core::mem::align_of::<Block>() > FLAGS);

/// Descriptor of one slab page, kept in the segment header: the owner's line, then `remote` on
/// lines of its own (256 bytes in all; 128-byte padding, since x86 prefetches lines in pairs). On
/// producer/consumer, with one line, the consumer's pushes took the line the producer allocates
/// from: 0.73x the best other allocator against 0.57x padded. See the module documentation for
/// its invariants.
#[repr(C, align(64))]
pub(crate) struct Page {
    /// Owner-only free list (LIFO: the most recently freed, hottest block is reused first).
    pub(crate) free: *mut Block,
    /// Allocations served from this page (statistics; written by the owner only).
    pub(crate) allocs: Stat,
    /// Blocks handed out and not yet seen freed by the owner.
    pub(crate) used: Owned32,
    /// Blocks carved out of the page so far (the rest is untouched memory).
    pub(crate) capacity: Owned32,
    /// `IN_USE | kind << 8 | class` while the page serves a class, 0 while its slot is free:
    /// what a statistics snapshot reads to attribute the page.
    pub(crate) info: Owned32,
    /// Size class index (owner's copy of `info`'s).
    pub(crate) class: u8,
    /// Tensor kind index (owner's copy of `info`'s).
    pub(crate) kind: u8,
    /// Whether the page is on its heap's full list (set through `set_in_full`).
    pub(crate) in_full: bool,
    /// Whether the page is its kind heap's direct page for its class (set through
    /// `set_direct`).
    pub(crate) is_direct: bool,
    /// `class::recip(class)` while in use, 0 while the slot is free: with `carved_limit`, the
    /// owner's check of an address (`starts_block`).
    pub(crate) recip: u32,
    /// `class::check_limit(class, capacity)`: the carved blocks' bound; 0 while the slot is free.
    pub(crate) carved_limit: u32,
    /// The local free's cold test in one compare: a free leaving `used` blocks takes the cold
    /// path iff `used as i32 <= cold_at`, so `cold_at == i32::MAX` on the full list (always),
    /// `-1` for the direct page (never: it stays while empty), `0` otherwise (when it empties).
    pub(crate) cold_at: i32,
    /// The most of the slot carved since its segment was taken or the slot last purged
    /// (the high water of `capacity * size`): what of it is resident.
    pub(crate) touched: u32,
    /// When the slot was last given back to its segment (the arena's clock, ns; free slots
    /// only): `purge_idle` returns it to the OS once it has been free `delay`.
    pub(crate) freed_at: u64,
    /// Links in the heap's queue (or full list) for this page's kind and class (owner only).
    pub(crate) next: *mut Page,
    pub(crate) prev: *mut Page,
    /// Link on the owner heap's delayed list, written by the remote free that took `NOTIFY`.
    pub(crate) delayed_next: *mut Page,
    /// What other threads touch, on cache lines of its own: their pushes and checks must not
    /// take the line the owner allocates from.
    pub(crate) remote: crossbeam_utils::CachePadded<RemoteLine>,
}

/// The page's `RemoteLine`.
///
/// # Safety
/// `page` is a live descriptor (in a segment header the arena holds), for as long as the
/// reference is used.
#[inline(always)]
unsafe fn line<'a>(page: *mut Page) -> &'a RemoteLine {
    // SAFETY: the caller's contract; only atomics are reached through it.
    unsafe { &*ptr::addr_of!((*page).remote) }
}

/// The part of a page descriptor other threads use.
#[repr(C)]
pub(crate) struct RemoteLine {
    /// Blocks freed by other threads (link, count and `NOTIFY` / `QUEUED`).
    pub(crate) word: AtomicUsize,
    /// `class::recip(class)` while the page serves a class, 0 while its slot is free: with
    /// `limit`, what a free by another thread checks an address against.
    pub(crate) recip: Owned32,
    /// The bound of the page's whole block area (`class::check_limit(class,
    /// blocks_per_page)`), 0 while its slot is free: the owner's `carved_limit` counts only
    /// what is carved, which only the owner knows.
    pub(crate) limit: Owned32,
}

/// `Page::info`'s in-use bit.
const IN_USE: u32 = 1 << 16;

/// Segment header, at the segment's first byte.
#[repr(C)]
pub(crate) struct Segment {
    /// The thread heap owning every page (heaps are recycled, never freed, so this stays valid).
    pub(crate) owner: Owner,
    /// Next segment of the same heap (owner only).
    pub(crate) next: *mut Segment,
    /// Bit i set iff page i is free (page 0, the header, is never free).
    pub(crate) free_mask: u64,
    /// Pages in use: `used_pages == 63 - free_mask.count_ones()`.
    pub(crate) used_pages: u32,
    /// Off huge pages: until `touched_bytes` reaches `HUGE_DENSE_SEGMENT` and the heaps hold
    /// enough segments, unless taken huge for a heap that grows densely (owner only; see
    /// `Arena::segment_alloc`, `Arena::segment_dense`). Only such a segment's idle free pages
    /// are purged (`heap::purge`).
    pub(crate) small: bool,
    /// Bytes of slab pages touched: `touched_bytes == Σ pages[i].touched`.
    pub(crate) touched_bytes: u32,
    /// `touched_mask & 1 << i != 0 ⟺ pages[i].touched > 0`: a page is taken from the free slots
    /// that are resident before any that would fault (`take_page`), and idle free ones are
    /// purged (`purge_idle`).
    pub(crate) touched_mask: u64,
    pub(crate) pages: [Page; PAGES_PER_SEGMENT],
}

const _: () = assert!(PAGES_PER_SEGMENT == 64);
#[cfg(not(loom))]
const _: () = assert!(core::mem::size_of::<Page>() == 256);
const _: () = assert!(core::mem::size_of::<Segment>() <= SLAB_SIZE);
const _: () = assert!(NUM_SMALL < 256 && NUM_KINDS < 256);
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
    // SAFETY: `idx < PAGES_PER_SEGMENT` because `p` lies inside the segment (the caller's
    // contract), so the pointer stays in the header's page array.
    unsafe { ptr::addr_of_mut!((*seg).pages).cast::<Page>().add(idx) }
}

/// Index of `page` in its segment's page array, and the segment.
fn locate(page: *const Page) -> (*mut Segment, usize) {
    let seg = (page as usize & !(SEGMENT_SIZE - 1)) as *mut Segment;
    let first = core::mem::offset_of!(Segment, pages);
    let idx = (page as usize - seg as usize - first) / core::mem::size_of::<Page>();
    (seg, idx)
}

/// First byte of the page's block area.
#[inline]
pub(crate) fn page_start(page: *const Page) -> *mut u8 {
    let (seg, idx) = locate(page);
    (seg as usize + idx * SLAB_SIZE) as *mut u8
}

/// Initialise a segment taken from the arena for `owner`. `zeroed`: its bytes are known to read
/// as zero (memory fresh from the OS or purged), so the header need not be cleared: the 16 KiB
/// of page descriptors then become resident one 4 KiB page at a time, as slots are taken,
/// instead of all at once (a process that uses a few slots kept 16 KiB more per segment).
///
/// # Safety
/// `seg` is a `SEGMENT_SIZE`-aligned extent of `SEGMENT_SIZE` bytes that nothing else uses (its
/// bytes may be anything unless `zeroed`: the arena reuses freed memory), and no statistics
/// snapshot reads it before the arena is told it is ready.
pub(crate) unsafe fn init_segment(seg: *mut Segment, owner: Owner, zeroed: bool) {
    // SAFETY: the extent is ours alone (the caller's contract); a zero header makes every page
    // descriptor read as "not in use" (`info == 0`) before the fields are written, and zero is
    // a valid value of every plain field and statistics atomic.
    unsafe {
        if zeroed {
            // (Only the first descriptors: reading the others would map them.)
            debug_assert!((*seg).free_mask == 0 && (*seg).pages[1].info.get() == 0);
        } else {
            ptr::write_bytes(seg.cast::<u8>(), 0, core::mem::size_of::<Segment>());
        }
        (*seg).owner = owner;
        (*seg).next = ptr::null_mut();
        (*seg).free_mask = !1u64;
        (*seg).used_pages = 0;
        (*seg).small = false;
        (*seg).touched_bytes = 0;
        (*seg).touched_mask = 0;
    }
}

/// Take a free page slot of `seg` and initialise it for (kind, class). Null if the segment is full.
///
/// # Safety
/// The calling thread owns `seg` (it is its heap's).
pub(crate) unsafe fn take_page(seg: *mut Segment, kind: u8, class: usize) -> *mut Page {
    // SAFETY: owner-only access to the header. No other thread touches a free slot's `remote`
    // (its page has no blocks), so it can be written as a fresh atomic, which loom requires.
    unsafe {
        let mask = (*seg).free_mask;
        if mask == 0 {
            return ptr::null_mut();
        }
        // A resident slot before one that would fault in: the lowest of either.
        let resident = mask & (*seg).touched_mask;
        let idx = if resident != 0 { resident } else { mask }.trailing_zeros() as usize;
        (*seg).free_mask = mask & !(1u64 << idx);
        (*seg).used_pages += 1;
        let page = ptr::addr_of_mut!((*seg).pages).cast::<Page>().add(idx);
        (*page).free = ptr::null_mut();
        ptr::addr_of_mut!((*page).remote).write(crossbeam_utils::CachePadded::new(RemoteLine {
            word: AtomicUsize::new(0),
            recip: Owned32::new(recip(class)),
            limit: Owned32::new(check_limit(class, blocks_per_page(class))),
        }));
        (*page).recip = recip(class);
        (*page).carved_limit = 0;
        (*page).allocs.set(0);
        (*page).used.set(0);
        (*page).capacity.set(0);
        (*page).class = class as u8;
        (*page).kind = kind;
        (*page).in_full = false;
        (*page).is_direct = false;
        (*page).cold_at = 0;
        (*page).next = ptr::null_mut();
        (*page).prev = ptr::null_mut();
        (*page).delayed_next = ptr::null_mut();
        (*page).info.set(IN_USE | (kind as u32) << 8 | class as u32);
        page
    }
}

/// Put the page on or off its heap's full list (the flag only; the caller moves it).
///
/// # Safety
/// The calling thread owns the page.
#[inline]
pub(crate) unsafe fn set_in_full(page: *mut Page, v: bool) {
    // SAFETY: owner-only fields.
    unsafe {
        (*page).in_full = v;
        set_cold_at(page);
    }
}

/// Make the page its kind heap's direct page, or no longer (the flag only).
///
/// # Safety
/// The calling thread owns the page.
#[inline]
pub(crate) unsafe fn set_direct(page: *mut Page, v: bool) {
    // SAFETY: owner-only fields.
    unsafe {
        (*page).is_direct = v;
        set_cold_at(page);
    }
}

/// `cold_at` from the flags (see `Page::cold_at`).
///
/// # Safety
/// The calling thread owns the page.
#[inline]
unsafe fn set_cold_at(page: *mut Page) {
    // SAFETY: owner-only fields.
    unsafe {
        (*page).cold_at = if (*page).in_full {
            i32::MAX
        } else if (*page).is_direct {
            -1
        } else {
            0
        };
    }
}

/// Return an empty page's slot to its segment at time `now` (see `Page::freed_at`). Returns
/// true if the segment became empty.
///
/// # Safety
/// The calling thread owns the page; it is on no list and `may_release(page)` holds.
pub(crate) unsafe fn release_page(page: *mut Page, now: u64) -> bool {
    // SAFETY: owner-only access to the page and its segment header.
    unsafe {
        debug_assert!(may_release(page));
        let (seg, idx) = locate(page);
        (*page).freed_at = now;
        (*page).info.set(0);
        (*page).recip = 0;
        (*page).carved_limit = 0;
        line(page).recip.set(0);
        line(page).limit.set(0);
        (*seg).free_mask |= 1u64 << idx;
        (*seg).used_pages -= 1;
        debug_assert_eq!((*seg).used_pages, 63 - (*seg).free_mask.count_ones());
        (*seg).used_pages == 0
    }
}

/// Whether an in-use page may go back to its segment: no block live or pending anywhere, and
/// not on its heap's delayed list.
///
/// # Safety
/// The calling thread owns the page.
#[inline]
pub(crate) unsafe fn may_release(page: *mut Page) -> bool {
    // SAFETY: owner-only fields; `remote` is read atomically.
    unsafe { (*page).used.get() == 0 && line(page).word.load(Ordering::Acquire) & QUEUED == 0 }
}

/// Carve more blocks from the untouched part of the page onto its free list: about 4 KiB worth,
/// at least one, so a fresh page is touched gradually rather than all at once.
///
/// # Safety
/// Owner-only; `capacity < blocks_per_page(class)`.
#[cold]
#[link_section = ".text.hot.tensorpool"]
pub(crate) unsafe fn extend(page: *mut Page) {
    // SAFETY: owner-only; every carved block lies inside the page's block area.
    unsafe {
        let class = (*page).class as usize;
        let bs = small_size(class);
        let start = page_start(page);
        let cap = (*page).capacity.get() as usize;
        let reserved = blocks_per_page(class) as usize;
        debug_assert!(cap < reserved);
        let n = (4096 / bs).max(1).min(reserved - cap);
        let first = start.add(cap * bs);
        let mut b = first;
        for _ in 1..n {
            let next = b.add(bs);
            (*(b as *mut Block)).next = next as *mut Block;
            #[cfg(feature = "free-checks")]
            mark_word(b.cast()).write(FREE_MARK);
            b = next;
        }
        (*(b as *mut Block)).next = (*page).free;
        #[cfg(feature = "free-checks")]
        mark_word(b.cast()).write(FREE_MARK);
        (*page).free = first as *mut Block;
        (*page).capacity.set((cap + n) as u32);
        (*page).carved_limit = check_limit((*page).class as usize, (cap + n) as u32);
        let carved_end = ((cap + n) * bs) as u32;
        if carved_end > (*page).touched {
            let (seg, idx) = locate(page);
            (*seg).touched_bytes += carved_end - (*page).touched;
            (*seg).touched_mask |= 1 << idx;
            (*page).touched = carved_end;
        }
    }
}

/// Whether the page has blocks no one has carved yet.
///
/// # Safety
/// The calling thread owns the page.
#[inline]
pub(crate) unsafe fn can_extend(page: *mut Page) -> bool {
    // SAFETY: owner-only fields.
    unsafe { (*page).capacity.get() < blocks_per_page((*page).class as usize) }
}

/// Give back to the OS the free slots of `seg` that have been free at least `delay` at `now`
/// (`purge(start, len)` does it; it answers whether the kernel took them), so that a held
/// segment's idle pages do not stay resident for as long as one of its pages is in use.
/// Returns the bytes purged and the earliest time another free slot becomes due (0: none).
///
/// # Safety
/// The calling thread owns `seg` (its heap's, or its heap's spare).
pub(crate) unsafe fn purge_idle(
    seg: *mut Segment,
    now: u64,
    delay: u64,
    mut purge: impl FnMut(*mut u8, usize) -> bool,
) -> (u64, u64) {
    // SAFETY: owner-only access to the header; a free slot has no block live or pending, so its
    // memory is nobody's.
    unsafe {
        let (mut purged, mut next) = (0u64, 0u64);
        let mut m = (*seg).free_mask & (*seg).touched_mask;
        while m != 0 {
            let idx = m.trailing_zeros() as usize;
            m &= m - 1;
            let page = ptr::addr_of_mut!((*seg).pages).cast::<Page>().add(idx);
            let due = (*page).freed_at.saturating_add(delay);
            if due > now {
                next = if next == 0 { due } else { next.min(due) };
                continue;
            }
            let len = ((*page).touched as usize).next_multiple_of(crate::os::PAGE);
            if !purge(page_start(page), len) {
                continue;
            }
            purged += len as u64;
            debug_assert!((*seg).touched_bytes >= (*page).touched);
            (*seg).touched_bytes -= (*page).touched;
            (*seg).touched_mask &= !(1 << idx);
            (*page).touched = 0;
        }
        (purged, next)
    }
}

// ---------------------------------------------------------------------------------------------
// The remote list
// ---------------------------------------------------------------------------------------------

/// Push the chain `head..=tail` of `n` blocks freed by a thread that does not own the page.
/// Returns true if this push took the owner's `NOTIFY`: the caller must then put the page on its
/// owner heap's delayed list (the page's `delayed_next` is the caller's to write until then).
///
/// # Safety
/// The chain links `n` live blocks of `page`, each freed exactly once, and is the caller's alone.
pub(crate) unsafe fn push_remote(
    page: *mut Page,
    head: *mut Block,
    tail: *mut Block,
    n: u32,
) -> bool {
    debug_assert!(
        head as usize & !LINK == 0,
        "a block address beyond the link bits"
    );
    // SAFETY: the page descriptor lives as long as its blocks, which are live; the chain is ours
    // until the CAS publishes it.
    unsafe {
        let r = &line(page).word;
        let mut old = r.load(Ordering::Relaxed);
        loop {
            (*tail).next = (old & LINK) as *mut Block;
            let count = (old >> COUNT_SHIFT) + n as usize;
            let mut new = head as usize | count << COUNT_SHIFT | (old & FLAGS);
            if old & NOTIFY != 0 {
                new = (new & !NOTIFY) | QUEUED;
            }
            // Release: the blocks' contents and links happen before the owner's Acquire take.
            match r.compare_exchange_weak(old, new, Ordering::Release, Ordering::Relaxed) {
                Ok(_) => return old & NOTIFY != 0,
                Err(actual) => old = actual,
            }
        }
    }
}

/// Move the blocks other threads freed onto the owner's free list; returns how many there were.
/// The list is walked only when the free list is not empty (trim, thread exit): when the page
/// has run dry the taken list simply becomes the free list.
///
/// # Safety
/// The calling thread owns the page.
pub(crate) unsafe fn collect_remote(page: *mut Page) -> u32 {
    // SAFETY: owner-only access to `free` and `used`; the taken list is ours alone and its blocks
    // are blocks of this page (`push_remote`'s contract).
    unsafe {
        let r = &line(page).word;
        if r.load(Ordering::Relaxed) & !FLAGS == 0 {
            return 0;
        }
        // Keep the flags; Acquire pairs with the pushes' Release.
        let w = r.fetch_and(FLAGS, Ordering::Acquire);
        let head = (w & LINK) as *mut Block;
        let n = (w >> COUNT_SHIFT) as u32;
        if (*page).free.is_null() {
            (*page).free = head;
        } else {
            // The count bounds the walk, so a list made circular by a double free that got
            // past the checks cannot hang its owner.
            let mut tail = head;
            for _ in 1..n {
                if (*tail).next.is_null() {
                    break;
                }
                tail = (*tail).next;
            }
            (*tail).next = (*page).free;
            (*page).free = head;
        }
        let used = (*page).used.get();
        debug_assert!(
            n >= 1 && n <= used,
            "remote count {n} with {used} blocks handed out"
        );
        (*page).used.set(used - n);
        n
    }
}

/// Ask to hear of the next remote free into a page found full. False (nothing armed) if remote
/// blocks have arrived: collect them instead.
///
/// # Safety
/// The calling thread owns the page, which is moving to its heap's full list.
pub(crate) unsafe fn arm_notify(page: *mut Page) -> bool {
    // SAFETY: the descriptor is valid while the caller owns the page.
    let r = unsafe { &line(page).word };
    let old = r.load(Ordering::Relaxed);
    if old & !FLAGS != 0 {
        return false;
    }
    if old & QUEUED != 0 {
        // Still on the delayed list from an earlier round: the drain brings it back.
        return true;
    }
    debug_assert_eq!(old, 0);
    r.compare_exchange(old, NOTIFY, Ordering::Relaxed, Ordering::Relaxed)
        .is_ok()
}

/// Withdraw `NOTIFY` from a page leaving the full list by a local free.
///
/// # Safety
/// The calling thread owns the page.
pub(crate) unsafe fn disarm_notify(page: *mut Page) {
    // SAFETY: as in `arm_notify`.
    unsafe { line(page).word.fetch_and(!NOTIFY, Ordering::Relaxed) };
}

/// Clear `QUEUED` once the owner has taken the page off its delayed list.
///
/// # Safety
/// The calling thread owns the page and has just taken it off its heap's delayed list.
pub(crate) unsafe fn clear_queued(page: *mut Page) {
    // SAFETY: as in `arm_notify`.
    unsafe {
        let old = line(page).word.fetch_and(!QUEUED, Ordering::Relaxed);
        debug_assert!(old & QUEUED != 0 && old & NOTIFY == 0);
    }
}

/// The blocks on a quiescent page's remote list, and its flags (checks and models).
///
/// # Safety
/// No thread touches the page during the call.
#[cfg(any(loom, feature = "check"))]
pub(crate) unsafe fn remote_list(page: *mut Page) -> (*mut Block, bool, bool) {
    // SAFETY: the caller's contract.
    let w = unsafe { line(page).word.load(Ordering::Acquire) };
    ((w & LINK) as *mut Block, w & NOTIFY != 0, w & QUEUED != 0)
}

/// The count of blocks a quiescent page's remote word records (checks and models).
///
/// # Safety
/// As for `remote_list`.
#[cfg(any(loom, feature = "check"))]
pub(crate) unsafe fn remote_count(page: *mut Page) -> usize {
    // SAFETY: the caller's contract.
    unsafe { line(page).word.load(Ordering::Acquire) >> COUNT_SHIFT }
}

// ---------------------------------------------------------------------------------------------
// Queries
// ---------------------------------------------------------------------------------------------

/// Add the figures of `seg`'s pages to `out`, per kind, while their owner may be running: each
/// field read is one the owner stored, the sum a moment's view.
///
/// # Safety
/// `seg` is a segment the arena holds, initialised (`init_segment`), and stays so during the call.
pub(crate) unsafe fn count_pages(seg: *const Segment, out: &mut [SlabCounts; NUM_KINDS]) {
    for i in 1..PAGES_PER_SEGMENT {
        // SAFETY: the header is initialised and held (the caller's contract). Only the owner-
        // written atomics are borrowed, never the page, whose other fields the owner may be
        // writing.
        let (info, allocs, used, capacity) = unsafe {
            let page = ptr::addr_of!((*seg).pages[i]);
            (
                &*ptr::addr_of!((*page).info),
                &*ptr::addr_of!((*page).allocs),
                &*ptr::addr_of!((*page).used),
                &*ptr::addr_of!((*page).capacity),
            )
        };
        let info = info.get();
        if info & IN_USE == 0 {
            continue;
        }
        let (kind, class) = (((info >> 8) & 0xff) as usize, (info & 0xff) as usize);
        if kind >= NUM_KINDS || class >= NUM_SMALL {
            continue;
        }
        let bs = small_size(class) as u64;
        let c = &mut out[kind];
        let allocs = allocs.get();
        c.requests += allocs;
        c.granted_bytes += allocs * bs;
        c.live_bytes += used.get() as u64 * bs;
        c.carved_bytes += capacity.get() as u64 * bs;
    }
}

/// Usable size of the small block at `p`, or why `p` is not one.
///
/// # Safety
/// `seg` is `segment_of(p)`, a live small segment.
pub(crate) unsafe fn usable(seg: *mut Segment, p: *mut u8) -> Option<usize> {
    // SAFETY: `seg` is a live small segment, so `p`'s descriptor is valid; once `p` is known to
    // start a block, its page's class is stable.
    unsafe {
        let page = page_of(seg, p);
        starts_block_any(page, p).then(|| small_size((*page).class as usize))
    }
}

// ---------------------------------------------------------------------------------------------
// Checking an address before anything is written
// ---------------------------------------------------------------------------------------------

/// Whether `p` starts a block of `page` that its owner has carved: an address inside a
/// block, in a page not in use, or in the segment's header fails.
///
/// # Safety
/// The calling thread owns the segment `page` is in.
#[cfg(feature = "free-checks")]
#[inline(always)]
pub(crate) unsafe fn starts_block_local(page: *mut Page, p: *mut u8) -> bool {
    // SAFETY: owner-only fields of a descriptor in a live segment header.
    unsafe { starts_block((*page).recip, (*page).carved_limit, p) }
}

/// Whether `p` starts a block of `page`, as any thread may check it: within the page's block
/// area, since only the owner knows how much of it is carved.
///
/// # Safety
/// `page` is a descriptor in a live small segment.
#[inline(always)]
pub(crate) unsafe fn starts_block_any(page: *mut Page, p: *mut u8) -> bool {
    // SAFETY: the caller's contract; the fields are atomics.
    let l = unsafe { line(page) };
    starts_block(l.recip.get(), l.limit.get(), p)
}

/// `p`'s offset in its page starts one of the blocks `limit` covers (`class::check_limit`: one
/// compare for "a multiple of the size" and "below the end"; `class` checks it for every class
/// and offset). A `limit` of 0 (a page not in use, the header's) fails every address.
#[inline(always)]
fn starts_block(recip: u32, limit: u32, p: *mut u8) -> bool {
    let off = (p as usize & (SLAB_SIZE - 1)) as u32;
    ((off as u64 * recip as u64) as u32) < limit
}

/// For a report: the class of the page `p` is in, if the page is in use, and the start of the
/// block `p` falls in.
///
/// # Safety
/// `seg` is `segment_of(p)`, a live small segment.
#[cold]
pub(crate) unsafe fn describe(seg: *mut Segment, p: *mut u8) -> Option<(usize, usize)> {
    // SAFETY: the caller's contract; `info` is an atomic.
    let info = unsafe { (*page_of(seg, p)).info.get() };
    if info & IN_USE == 0 {
        return None;
    }
    let class = (info & 0xff) as usize;
    let off = p as usize & (SLAB_SIZE - 1);
    Some((class, p as usize - off % small_size(class)))
}

/// What a block's second word holds while the block is free, so that a second free is seen
/// at the cost of one load and compare (as glibc's tcache key does). Every block is at least 16
/// bytes, so the word is the block's own; allocation clears it. A live block holds it only if
/// the program wrote this very value there (a random constant, no pointer or small number or
/// text), and its free is then reported as a double free: no search can clear it, since
/// blocks freed by other threads wait in lists only their owners may walk.
#[cfg(feature = "free-checks")]
pub(crate) const FREE_MARK: usize = 0xd3c4_e5a1_9b72_0f6e;

/// The second word of block `b`.
#[cfg(feature = "free-checks")]
#[inline(always)]
pub(crate) fn mark_word(b: *mut Block) -> *mut usize {
    b.cast::<usize>().wrapping_add(1)
}

/// Kind index of a live small block.
///
/// # Safety
/// `p` is a live small block in `seg`.
pub(crate) unsafe fn kind_of(seg: *mut Segment, p: *mut u8) -> usize {
    // SAFETY: as in `usable`.
    unsafe { (*page_of(seg, p)).kind as usize }
}

#[cfg(all(test, not(loom)))]
mod tests;
