//! Thread heaps: the small-block fast path, read top to bottom, and the entry points the facade
//! calls.
//!
//! Each thread owns a `Heap` with one `KindHeap` per tensor kind; a kind heap has, per size class,
//! a *direct* page (the page the fast path pops from), a queue of pages that may have free blocks
//! and a list of full pages. The thread-local `types::cur` points at the kind heap of the thread's current
//! tag, so routing by kind costs the fast path nothing: allocation is one thread-local load, one
//! table load and a free-list pop; a new thread's `cur` is a static empty kind heap whose
//! direct pages are a static empty page, so the fast path never tests for "no heap yet".
//!
//! Frees find the block's page from its address. A free by the owning thread pushes onto the
//! page's free list; a free by any other thread goes onto the page's remote list (`remote`), which
//! the owner takes in one swap when that page runs dry (`pages`). Statistics cost the free path
//! nothing and the allocation path one add in the page descriptor it already writes (`stats`
//! explains what is derived from the pages when a snapshot is taken).
//!
//! - `types`: the heap structures and the static empty ones; `pages`: the owner's slow path and
//!   page lists; `purge`: emptied pages back to the OS once idle; `remote`: frees of other
//!   heaps' blocks; `registry`: heaps, thread start and exit, fork; `hot`: the thread cache of
//!   large blocks; `idle`: the caches of sleeping threads taken back; `returns`: large blocks
//!   freed by other threads on their way back to the thread that took them; `tag`: the
//!   thread's kind; `census` (checks and models only): the structure checked block by block.

#[cfg(any(loom, feature = "check"))]
pub(crate) mod census;
pub(crate) mod hot;
pub(crate) mod idle;
pub(crate) mod pages;
pub(crate) mod purge;
pub(crate) mod registry;
pub(crate) mod remote;
pub(crate) mod report;
pub(crate) mod returns;
pub(crate) mod tag;
pub(crate) mod types;

use crate::kind::NUM_KINDS;
use crate::pool::large::{Extent, ARENA};
use crate::pool::slab::{self, Block, Page, Segment};
use crate::stats::{HeapPart, SlabCounts};
use crate::sync::Ordering;
use registry::{init_thread, HEAPS};
use types::{cur, current_heap, KindHeap};

// ---------------------------------------------------------------------------------------------
// Allocation
// ---------------------------------------------------------------------------------------------

/// Allocate a block of small class `class` (for a request of `size` bytes) under the calling
/// thread's current kind.
#[inline(always)]
pub(crate) fn alloc_small(class: usize, size: usize) -> *mut u8 {
    let kh = cur::get();
    // SAFETY: `cur` always points at a valid kind heap (the static empty one or the thread's own)
    // and `class < NUM_SMALL` by the caller's lookup.
    unsafe { pop_or_slow(kh, class, size) }
}

/// A small block of `class` from the calling thread's direct page for its current kind, or
/// null where that page is empty (or the thread has no heap yet, or a slow-only mode is on, or
/// the library's TLS is not in the static block: see `cur::get_fast`): the caller then takes
/// the whole path. No call and no lock: the C library's `malloc` runs this inline and reaches
/// its slow path by a tail call.
#[inline(always)]
pub(crate) fn pop_direct(class: usize) -> *mut u8 {
    let Some(kh) = cur::get_fast() else {
        return core::ptr::null_mut();
    };
    // SAFETY: as in `alloc_small`.
    unsafe { pop(*(*kh).direct.get_unchecked(class)) }
}

/// Allocate a small block of an explicit kind (allocator handles), whatever the thread's tag.
#[inline]
pub(crate) fn alloc_small_kind(kind: usize, class: usize, size: usize) -> *mut u8 {
    let heap = heap_or_init();
    if heap.is_null() {
        return core::ptr::null_mut();
    }
    // SAFETY: the heap is the calling thread's own; `kind < NUM_KINDS`, `class < NUM_SMALL`.
    unsafe { pop_or_slow(core::ptr::addr_of_mut!((*heap).kinds[kind]), class, size) }
}

/// Pop a block from the kind heap's direct page for `class`, or take the slow path.
///
/// # Safety
/// `kh` is the static empty kind heap or one of the calling thread's; `class < NUM_SMALL`.
#[inline(always)]
unsafe fn pop_or_slow(kh: *mut KindHeap, class: usize, size: usize) -> *mut u8 {
    // SAFETY: a direct page is the static empty page (free list null) or a page of this thread's
    // heap, whose free list only this thread touches.
    unsafe {
        let page = *(*kh).direct.get_unchecked(class);
        let b = pop(page);
        if !b.is_null() {
            return b;
        }
        alloc_slow(kh, class, size)
    }
}

/// Pop a block from `page`'s free list; null if it is empty.
///
/// # Safety
/// `page` is the static empty page or a page the calling thread owns.
#[inline(always)]
pub(crate) unsafe fn pop(page: *mut Page) -> *mut u8 {
    // SAFETY: the caller's contract; the empty page's free list is null, so nothing of it is
    // written.
    unsafe {
        let b = (*page).free;
        if b.is_null() {
            return b.cast();
        }
        (*page).free = (*b).next;
        // A block handed out carries no free mark (see `slab::FREE_MARK`).
        #[cfg(feature = "free-checks")]
        slab::mark_word(b).write(0);
        (*page).used.set((*page).used.get() + 1);
        #[cfg(feature = "stats")]
        (*page).allocs.add(1);
        b.cast()
    }
}

/// The slow path: give a thread its heap, publish its batch of remote frees, refill.
///
/// In the slow-only modes (`slow_only`) every small allocation of the global path comes here,
/// since the thread's current kind heap stays the static empty one: under
/// `TENSORPOOL_CHECK=full` it is served by `checked`; with profiling on, it counts towards the
/// thread's next sample and is popped from the thread's own kind heap.
///
/// # Safety
/// As for `pop_or_slow`.
#[cold]
#[inline(never)]
// C ABI: known not to unwind, so that an `extern "C"` caller (the preload library's entry
// points) tail-calls it instead of keeping a frame for an abort-on-unwind guard; a panic here
// aborts, as one out of `GlobalAlloc` must not unwind anyway.
#[link_section = ".text.hot.tensorpool"]
unsafe extern "C" fn alloc_slow(kh: *mut KindHeap, class: usize, size: usize) -> *mut u8 {
    // SAFETY: `kh` is the static empty kind heap (heap null) or one of this thread's.
    unsafe {
        if crate::checked::full() {
            let kind = if (*kh).heap.is_null() {
                tag::current()
            } else {
                (*kh).kind as usize
            };
            return crate::checked::alloc(size, crate::class::block_align(class), kind);
        }
        let heap = (*kh).heap;
        let kh = if heap.is_null() {
            let heap = heap_or_init();
            if heap.is_null() {
                return core::ptr::null_mut();
            }
            core::ptr::addr_of_mut!((*heap).kinds[tag::current()])
        } else if kh == core::ptr::addr_of_mut!((*heap).slow) {
            core::ptr::addr_of_mut!((*heap).kinds[(*kh).kind as usize])
        } else {
            kh
        };
        if crate::profile::on() {
            let kind = (*kh).kind as usize;
            if crate::profile::should_sample(size) {
                // A sampled small request is served as a large block, whose descriptor carries
                // the flag its free looks for.
                let large = size.max(crate::class::SMALL_MAX + 1);
                let e = ARENA.alloc(kind, large, crate::class::block_align(class));
                if !e.is_null() {
                    note_sampled(e, size, kind);
                    return crate::pool::large::start(e);
                }
            }
            let b = pop((*kh).direct[class]);
            if !b.is_null() {
                return b;
            }
        }
        remote::flush_here();
        let page = pages::refill(kh, class);
        if page.is_null() {
            return page.cast();
        }
        pop(page)
    }
}

// ---------------------------------------------------------------------------------------------
// Free
// ---------------------------------------------------------------------------------------------

/// Free the small block at `p`, after checking, before anything is written, that it is one: an
/// address inside a block or in a page not in use, or a block already free (as far as a cheap
/// test can tell: see `slab::FREE_MARK`), stops the process with a message (`report`).
///
/// # Safety
/// `seg` is `segment_of(p)` and a live small segment (`pagemap::is_small(p)`).
#[inline(always)]
pub(crate) unsafe fn free_small(seg: *mut Segment, p: *mut u8) {
    // SAFETY: the segment is live, so its page descriptors are valid; the page's owner-only
    // fields are touched only when this thread is the owner, and a block's words only once the
    // address is known to start a block of the page.
    unsafe {
        let b = p.cast::<Block>();
        let page = slab::page_of(seg, p);
        let owner = (*seg).owner.cast::<types::Heap>();
        // Relaxed: only this thread stores its own id (see `Heap::thread`).
        if (*owner).thread.load(Ordering::Relaxed) == crate::tls::thread_id() {
            free_owned(seg, page, b);
        } else {
            remote::free_remote(page, b);
        }
    }
}

/// Free a block as its page's owner, checked first (`free-checks`).
///
/// # Safety
/// As for `free_small`; the calling thread owns `seg`, and `page` is `page_of(seg, b)`.
#[inline(always)]
pub(crate) unsafe fn free_owned(seg: *mut Segment, page: *mut Page, b: *mut Block) {
    // SAFETY: owner-only fields of a live segment; the block's words are read only once `b` is
    // known to start a carved block of the page.
    unsafe {
        // Checks in straight-line code, and anything that fails them to a cold function in
        // tail position (one that returns, as far as the compiler knows), so that the fast
        // path keeps no stack frame.
        #[cfg(feature = "free-checks")]
        {
            let p = b.cast::<u8>();
            if !slab::starts_block_local(page, p) || *slab::mark_word(b) == slab::FREE_MARK {
                return free_suspect(seg, page, p);
            }
            *slab::mark_word(b) = slab::FREE_MARK;
        }
        #[cfg(not(feature = "free-checks"))]
        let _ = seg;
        free_local(page, b);
    }
}

/// A local free that failed the fast checks: an address no block starts at, or a block that
/// holds the free mark.
///
/// # Safety
/// As for `free_small`, and the calling thread owns `seg`.
#[cfg(feature = "free-checks")]
#[cold]
#[inline(never)]
// C ABI: see `alloc_slow`.
unsafe extern "C" fn free_suspect(seg: *mut Segment, page: *mut Page, p: *mut u8) {
    // SAFETY: the caller's contract.
    let starts = unsafe { slab::starts_block_local(page, p) };
    report::bad_free(p, "free", seg, starts)
}

/// Free a block as its page's owner: push it, and hand the rare cases (page now empty, or on the
/// full list) to the cold path. Counts nothing: statistics read `used`.
///
/// # Safety
/// The calling thread owns `page`, and `b` is a live block of it.
#[inline(always)]
pub(crate) unsafe fn free_local(page: *mut Page, b: *mut Block) {
    // SAFETY: owner-only access to the page's free list and `used`.
    unsafe {
        (*b).next = (*page).free;
        (*page).free = b;
        let used = (*page).used.get() - 1;
        (*page).used.set(used);
        // The direct page emptying is the common case of a malloc/free loop: nothing to do
        // (`cold_at` folds the page's flags into one compare).
        if used as i32 <= (*page).cold_at {
            pages::page_freed_cold(page);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Large blocks through the calling thread's cache (see `hot`)
// ---------------------------------------------------------------------------------------------

/// A large block of `kind` for a request of `size` bytes from the calling thread's cache, or
/// null (the size bypasses the cache, or no match).
#[inline]
pub(crate) fn hot_take(kind: usize, size: usize, align: usize) -> *mut Extent {
    if size > hot::limit() {
        return core::ptr::null_mut();
    }
    // A thread making only large requests still gets a cache to free into.
    let heap = heap_or_init();
    if heap.is_null() {
        return core::ptr::null_mut();
    }
    // SAFETY: the heap is the calling thread's own.
    unsafe { take_cached(heap, kind, size, align) }
}

/// `hot_take`'s part once the heap is known: a block from `heap`'s cache, or from the blocks
/// other threads sent back to it; null if none fits or a reclaimer is inside the cache.
///
/// # Safety
/// The calling thread owns `heap`.
#[inline]
pub(crate) unsafe fn take_cached(
    heap: *mut types::Heap,
    kind: usize,
    size: usize,
    align: usize,
) -> *mut Extent {
    // SAFETY: heaps are never freed; the cache is reached through its gate.
    let cache = unsafe { &*core::ptr::addr_of!((*heap).hot) };
    let taken = cache.try_with(|c, counters| {
        let e = c.take(counters, kind, size, align);
        if !e.is_null() {
            return e;
        }
        // No fit: take the blocks other threads sent back into the cache, and look again.
        // SAFETY: as above; the return list is atomic, and a chain taken whole is ours.
        let mut r = unsafe { (*heap).returns.take() };
        if r.is_null() {
            return r;
        }
        let limit = hot::limit();
        while !r.is_null() {
            // SAFETY: the chain's blocks are hot blocks of this heap's, ours to cache or free.
            unsafe {
                let next = crate::pool::large::returned_next(r);
                if !c.put_returned(counters, r, limit, idle::reclaim_idle) {
                    ARENA.free(r);
                }
                r = next;
            }
        }
        c.take(counters, kind, size, align)
    });
    taken.unwrap_or(core::ptr::null_mut())
}

/// Make the calling thread the owner of the large block `e` it was just given, so a free by
/// another thread sends the block back to it.
///
/// # Safety
/// `e` is a live large block the calling thread holds.
#[inline]
pub(crate) unsafe fn claim_large(e: *mut Extent) {
    // SAFETY: the caller's contract.
    unsafe { crate::pool::large::set_owner(e, current_heap() as usize) }
}

/// Flag the large block `e` (of `size` bytes asked, kind `kind`) as sampled and record it.
///
/// # Safety
/// `e` is the descriptor of a live block the caller holds.
pub(crate) unsafe fn note_sampled(e: *mut Extent, size: usize, kind: usize) {
    // SAFETY: the caller's contract.
    unsafe {
        crate::pool::large::set_sampled(e);
        crate::profile::record(crate::pool::large::start(e), size, kind);
    }
}

/// Whether every small allocation of the global path must take the slow path: full checks or
/// profiling are on, so a thread's current kind heap is its slow one (or the static empty one).
#[inline]
pub(crate) fn slow_only() -> bool {
    crate::checked::full() || crate::profile::on()
}

/// Put the calling thread in the mode `slow_only` says now (the allocator has just configured
/// itself, and the thread may have its heap already).
pub(crate) fn follow_mode_here() {
    let heap = current_heap();
    if !heap.is_null() {
        // SAFETY: the calling thread's own heap; its tag is below `NUM_KINDS`.
        unsafe { tag::point_at(heap, tag::current(), slow_only()) };
    }
}

/// The calling thread's heap, made (or adopted) now if it has none; null when the OS refuses
/// memory.
#[inline]
fn heap_or_init() -> *mut types::Heap {
    let heap = current_heap();
    if !heap.is_null() {
        return heap;
    }
    // SAFETY: the calling thread has no heap.
    unsafe { init_thread() }
}

/// Free a large block into the calling thread's cache; false if it bypasses the cache (the
/// caller frees it to the arena).
///
/// # Safety
/// `e` is the descriptor of a live large block, freed by this call if it returns true.
#[inline]
pub(crate) unsafe fn hot_put(e: *mut Extent) -> bool {
    let limit = hot::limit();
    let heap = current_heap();
    if limit == 0 {
        return false;
    }
    // SAFETY: the caller's contract: `e` is a live block it holds.
    let owner = unsafe { crate::pool::large::owner(e) } as *mut types::Heap;
    if !owner.is_null() && owner != heap {
        // Another thread's block: back to it (see `returns`), unless its heap is closed.
        // SAFETY: as above; owners are heaps, never freed, and their lists are atomic.
        unsafe {
            let (_, _, bytes, kind) = crate::pool::large::block_info(e);
            if bytes > limit {
                return false;
            }
            crate::pool::large::prepare_hot(e);
            hot::note_held(kind, false, bytes as u64);
            match (*owner).returns.push(e, bytes, kind, limit) {
                returns::Push::Sent => return true,
                returns::Push::Full(chain) => {
                    free_chain(chain);
                    return true;
                }
                returns::Push::Closed => {
                    // Kept here instead, as a block of this thread's.
                    hot::note_held(kind, true, bytes as u64);
                }
            }
        }
    }
    // SAFETY: a non-null current heap is the calling thread's own; the caller's contract
    // covers `e`.
    !heap.is_null() && unsafe { put_cached(heap, e, limit) }
}

/// Free the large block `e` into `heap`'s cache of at most `limit` bytes; false if it does not
/// go there (a reclaimer is inside the cache, or the cache cannot hold it): the caller frees it
/// to the arena.
///
/// # Safety
/// The calling thread owns `heap`; `e` is the descriptor of a live large block, freed by this
/// call if it returns true.
#[inline]
pub(crate) unsafe fn put_cached(heap: *mut types::Heap, e: *mut Extent, limit: usize) -> bool {
    // SAFETY: heaps are never freed; the cache is reached through its gate.
    let cache = unsafe { &*core::ptr::addr_of!((*heap).hot) };
    let put = cache.try_with(|c, counters| {
        // SAFETY: the caller's contract covers `e`.
        unsafe { c.put(counters, e, limit, idle::reclaim_idle) }
    });
    put.unwrap_or(false)
}

/// Send the calling thread's cache of large blocks back to the arena.
pub(crate) fn hot_flush() {
    let heap = current_heap();
    if !heap.is_null() {
        // SAFETY: the calling thread's own heap (a reclaimer inside its cache is sending it back
        // already).
        unsafe { (*heap).hot.try_with(|c, counters| c.flush(counters)) };
    }
}

/// Bytes in the calling thread's cache of large blocks.
pub(crate) fn hot_bytes_here() -> usize {
    let heap = current_heap();
    if heap.is_null() {
        0
    } else {
        // SAFETY: the calling thread's own heap (a reclaimer inside its cache is emptying it).
        unsafe { (*heap).hot.try_with(|c, _| c.bytes()) }.unwrap_or(0)
    }
}

/// Bytes in every thread's cache of large blocks, per kind (`budget`).
pub(crate) fn hot_totals() -> [u64; NUM_KINDS] {
    let mut t = [0; NUM_KINDS];
    HEAPS.for_each(|h| {
        for (k, b) in t.iter_mut().enumerate() {
            // SAFETY: heaps are never freed; only atomics are borrowed.
            let cached = unsafe { &*core::ptr::addr_of!((*h).hot.counters[k].bytes) }.get();
            // SAFETY: as above; the return list's counters are atomics.
            let returning = unsafe { (*h).returns.kind_bytes(k) };
            *b += cached + returning;
        }
    });
    t
}

// ---------------------------------------------------------------------------------------------
// Collection and queries
// ---------------------------------------------------------------------------------------------

/// `trim`'s part: send the calling thread's batch of remote frees back, every thread's cache of
/// large blocks that its owner is not using at this moment (the calling thread's included),
/// take back the remote frees of its pages and of abandoned heaps, and give every empty page and
/// segment back; the large blocks on their way back to any thread go to the arena (a thread
/// that sleeps keeps no memory in transit or in its cache past a `trim`).
pub(crate) fn collect() {
    remote::flush_here();
    reclaim_caches();
    let heap = current_heap();
    if !heap.is_null() {
        // SAFETY: the calling thread's own heap.
        unsafe { pages::collect_all(heap) };
    }
    // SAFETY: heaps are never freed; their return lists are atomic, and a chain taken whole is
    // ours.
    HEAPS.for_each(|h| unsafe { free_chain((*h).returns.take()) });
    registry::collect_abandoned();
}

/// Send every thread's cache of large blocks that its owner is not using now back to the arena
/// (`trim`, and a request the arena could not serve). Returns the claims freed (bytes).
pub(crate) fn reclaim_caches() -> usize {
    idle::reclaim(&HEAPS, 0, None)
}

/// Free a chain of hot blocks (linked through `returned_next`) to the arena.
///
/// # Safety
/// The caller took the chain whole from a return list (or built it of blocks it holds).
pub(crate) unsafe fn free_chain(mut e: *mut Extent) {
    while !e.is_null() {
        // SAFETY: the chain's blocks are the caller's; each is read before it is freed.
        unsafe {
            let next = crate::pool::large::returned_next(e);
            ARENA.free(e);
            e = next;
        }
    }
}

/// The thread heaps' figures per kind, and the segments taken from the arena and given back, for
/// a statistics snapshot. Takes back the remote frees of abandoned heaps first (so their blocks
/// count as freed), then reads every heap's counters and every segment's pages while their owners
/// run: each figure is one its owner stored, the sum a moment's view.
pub(crate) fn totals() -> ([HeapPart; NUM_KINDS], u64, u64) {
    registry::collect_abandoned();
    let mut parts = [HeapPart::default(); NUM_KINDS];
    let (mut maps, mut unmaps) = (0, 0);
    HEAPS.for_each(|h| {
        // SAFETY: heaps are never freed; only atomics are borrowed, never the heap, whose other
        // fields its owner may be writing.
        unsafe {
            for (k, t) in parts.iter_mut().enumerate() {
                let c = &*core::ptr::addr_of!((*h).kinds[k].counters);
                t.requests += c.retired_allocs.get();
                t.granted += c.retired_granted.get();
                t.new_pages += c.new_pages.get();
                let hot = &*core::ptr::addr_of!((*h).hot.counters[k]);
                t.hot_bytes += hot.bytes.get() + (*h).returns.kind_bytes(k);
                t.hot_hits += hot.hits.get();
                t.hot_requested += hot.requested.get();
                t.hot_granted += hot.granted.get();
            }
            maps += (*core::ptr::addr_of!((*h).seg_maps)).get();
            unmaps += (*core::ptr::addr_of!((*h).seg_unmaps)).get();
        }
    });
    let mut slabs = [SlabCounts::default(); NUM_KINDS];
    ARENA.for_each_segment(|seg| {
        // SAFETY: the arena holds the segment, initialised, for the duration of the callback.
        unsafe { slab::count_pages(seg.cast(), &mut slabs) }
    });
    for (t, s) in parts.iter_mut().zip(&slabs) {
        t.requests += s.requests;
        t.granted += s.granted_bytes;
        t.live += s.live_bytes;
        t.carved += s.carved_bytes;
    }
    (parts, maps, unmaps)
}
