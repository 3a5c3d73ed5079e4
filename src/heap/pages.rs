//! The owner's side of its pages: the slow path proper (`refill`), taking back full pages that
//! other threads freed into, carving, retiring empty pages and segments. Everything here runs on
//! the thread that owns the heap, so page lists and free lists are plain memory; the only atomics
//! are each page's remote list and the heap's delayed list (see `pool::slab`).

use super::types::{empty_page, Heap, KindHeap};
use crate::class::small_size;
use crate::kind::NUM_KINDS;
use crate::pool::large::{
    Growth, ARENA, DENSE_GROWTH_LIVE, DENSE_GROWTH_REMOTE, DENSE_GROWTH_SEGMENTS,
    DENSE_GROWTH_TOUCHED, HUGE_DENSE_SEGMENT,
};
use crate::pool::slab::{self, Page, Segment, SEGMENT_SIZE};
use crate::stats::SlabCounts;
use crate::sync::Ordering;
use core::ptr;

/// The owner's slow path proper: take back the full pages other threads freed into, find a page
/// of `class` with a free block and make it the direct page. Returns that page, or null when the
/// OS refuses memory.
///
/// # Safety
/// `kh` belongs to a heap the calling thread owns.
pub(crate) unsafe fn refill(kh: *mut KindHeap, class: usize) -> *mut Page {
    // SAFETY: owner-only access to the heap (the caller's contract).
    unsafe {
        drain_delayed((*kh).heap);
        // The slow path runs regularly: the arena's decay heartbeat and the purge of the heap's
        // idle pages ride on it.
        let now = ARENA.tick();
        super::purge::maybe_purge((*kh).heap, now);
        find_page(kh, class)
    }
}

/// Find a page of `class` with a free block, make it the direct page (at the front of its
/// queue) and return it; null when the OS refuses memory.
///
/// A page whose free list is empty first takes back its remote frees, then carves more blocks;
/// one with neither goes to the full list, armed so that the next remote free brings it back.
///
/// # Safety
/// `kh` belongs to the calling thread's heap.
unsafe fn find_page(kh: *mut KindHeap, class: usize) -> *mut Page {
    // SAFETY: owner-only traversal of this thread's queues.
    unsafe {
        let mut p = (*kh).queue[class].head;
        while !p.is_null() {
            let next = (*p).next;
            if (*p).free.is_null() {
                let n = slab::collect_remote(p) as usize;
                let heap = (*kh).heap;
                (*heap).remote_taken = (*heap).remote_taken.saturating_add(n * small_size(class));
            }
            if (*p).free.is_null() && slab::can_extend(p) {
                slab::extend(p);
                note_touched(p);
            }
            if !(*p).free.is_null() {
                (*kh).queue[class].unlink(p);
                (*kh).queue[class].push_front(p);
                set_direct(kh, class, p);
                return p;
            }
            if slab::arm_notify(p) {
                (*kh).queue[class].unlink(p);
                (*kh).full[class].push_front(p);
                slab::set_in_full(p, true);
                p = next;
            }
            // else: remote frees arrived while it was being armed: look at it again.
        }
        let p = new_page((*kh).heap, (*kh).kind, class);
        if p.is_null() {
            set_direct(kh, class, empty_page());
            return p;
        }
        (*kh).queue[class].push_front(p);
        (*kh).counters.new_pages.add(1);
        slab::extend(p);
        note_touched(p);
        set_direct(kh, class, p);
        p
    }
}

/// `extend` just touched more of `page`'s segment: where the segment is off huge pages and now
/// has `HUGE_DENSE_SEGMENT` touched, it is dense enough for huge pages.
///
/// # Safety
/// The calling thread owns `page`.
#[inline]
unsafe fn note_touched(page: *mut Page) {
    // SAFETY: owner-only fields of the header of the page's segment, which the heap holds.
    unsafe {
        let seg = slab::segment_of(page.cast());
        if (*seg).small
            && (*seg).touched_bytes as usize >= HUGE_DENSE_SEGMENT
            && ARENA.segment_dense(seg.cast(), SEGMENT_SIZE)
        {
            (*seg).small = false;
        }
    }
}

/// Make `p` the kind heap's direct page for `class` (the static empty page for none), keeping
/// the pages' `is_direct` flags, which let a local free skip the cold path when the direct page
/// empties.
///
/// # Safety
/// The calling thread owns `kh`; `p` is one of its pages of `class` or the static empty page.
pub(crate) unsafe fn set_direct(kh: *mut KindHeap, class: usize, p: *mut Page) {
    // SAFETY: owner-only; the static empty page is never written.
    unsafe {
        let old = (*kh).direct[class];
        if old != empty_page() {
            slab::set_direct(old, false);
        }
        if p != empty_page() {
            slab::set_direct(p, true);
        }
        (*kh).direct[class] = p;
    }
}

/// A local free made a page empty or freed into a page on the full list.
///
/// # Safety
/// The calling thread owns the page (which is in use).
#[cold]
#[inline(never)]
// C ABI: see `heap::alloc_slow`.
#[link_section = ".text.hot.tensorpool"]
pub(crate) unsafe extern "C" fn page_freed_cold(page: *mut Page) {
    // SAFETY: owner-only.
    unsafe {
        let heap = (*slab::segment_of(page.cast())).owner.cast::<Heap>();
        let kh = ptr::addr_of_mut!((*heap).kinds[(*page).kind as usize]);
        if (*page).in_full {
            slab::disarm_notify(page);
            leave_full(kh, page);
        }
        retire_if_empty(heap, kh, page);
    }
}

/// Move a page from its kind heap's full list back to its queue.
///
/// # Safety
/// The calling thread owns `kh` and its page `page`, which is on the full list.
unsafe fn leave_full(kh: *mut KindHeap, page: *mut Page) {
    // SAFETY: owner-only.
    unsafe {
        let class = (*page).class as usize;
        slab::set_in_full(page, false);
        (*kh).full[class].unlink(page);
        (*kh).queue[class].push_back(page);
    }
}

/// Take back, as the owner, the full pages other threads freed into: each goes back to its
/// queue, where the next refill of its class collects its remote frees.
///
/// # Safety
/// The calling thread owns `heap`.
#[link_section = ".text.hot.tensorpool"]
pub(crate) unsafe fn drain_delayed(heap: *mut Heap) {
    // SAFETY: owner-only; each page on the taken list is one of this heap's, put there once by
    // the remote free that took its `NOTIFY` (Acquire pairs with that push's Release, so its
    // `delayed_next` is visible).
    unsafe {
        let delayed = &(*heap).delayed;
        if delayed.load(Ordering::Relaxed).is_null() {
            return;
        }
        let mut p = delayed.swap(ptr::null_mut(), Ordering::Acquire);
        while !p.is_null() {
            let next = (*p).delayed_next;
            slab::clear_queued(p);
            let kh = ptr::addr_of_mut!((*heap).kinds[(*p).kind as usize]);
            if (*p).in_full {
                leave_full(kh, p);
            }
            retire_if_empty(heap, kh, p);
            p = next;
        }
    }
}

/// Take back every remote free of every page and give empty pages back (thread exit, `trim`,
/// statistics on an abandoned heap). The direct pages stay.
///
/// # Safety
/// The calling thread owns `heap`.
#[link_section = ".text.hot.tensorpool"]
pub(crate) unsafe fn collect_all(heap: *mut Heap) {
    // SAFETY: owner-only.
    unsafe {
        drain_delayed(heap);
        for kind in 0..(*heap).kinds.len() {
            let kh = ptr::addr_of_mut!((*heap).kinds[kind]);
            for class in 0..(*kh).queue.len() {
                let mut p = (*kh).full[class].head;
                while !p.is_null() {
                    let next = (*p).next;
                    if slab::collect_remote(p) > 0 {
                        slab::disarm_notify(p);
                        leave_full(kh, p);
                    }
                    p = next;
                }
                let mut p = (*kh).queue[class].head;
                while !p.is_null() {
                    let next = (*p).next;
                    slab::collect_remote(p);
                    retire_if_empty(heap, kh, p);
                    p = next;
                }
            }
        }
    }
}

/// Give an empty page back to its segment, and an empty segment back to the heap's spare slot or
/// the arena.
///
/// # Safety
/// The calling thread owns `heap`, `kh` and `page`, which is on `kh`'s queue, not direct, and
/// may be released (`slab::may_release`).
pub(crate) unsafe fn retire_page(heap: *mut Heap, kh: *mut KindHeap, page: *mut Page) {
    // SAFETY: owner-only; the page is empty, so no block of it is live or pending anywhere.
    unsafe {
        debug_assert!(!(*page).is_direct && !(*page).in_full);
        let class = (*page).class as usize;
        (*kh).queue[class].unlink(page);
        let allocs = (*page).allocs.get();
        (*kh).counters.retired_allocs.add(allocs);
        (*kh)
            .counters
            .retired_granted
            .add(allocs * small_size(class) as u64);
        let seg = slab::segment_of(page.cast());
        let now = ARENA.now();
        if !slab::release_page(page, now) {
            (*heap).reuse = seg;
            super::purge::note_released(heap, seg, now);
        } else {
            segment_unlink(heap, seg);
            if (*heap).spare.is_null() {
                // Kept for the next segment the heap needs, and its pages purged once idle
                // like any other's.
                (*heap).spare = seg;
                super::purge::note_released(heap, seg, now);
            } else {
                (*heap).seg_unmaps.add(1);
                ARENA.segment_free(seg.cast(), (*seg).small);
            }
        }
    }
}

/// Retire `page` if nothing of it is live or pending and it is not the direct page.
///
/// # Safety
/// The calling thread owns `heap`, `kh` and `page`, which is on `kh`'s queue.
#[link_section = ".text.hot.tensorpool"]
unsafe fn retire_if_empty(heap: *mut Heap, kh: *mut KindHeap, page: *mut Page) {
    // SAFETY: the caller's contract; `may_release` is the condition `retire_page` requires.
    unsafe {
        if !(*page).is_direct && slab::may_release(page) {
            retire_page(heap, kh, page);
        }
    }
}

/// Give the heap's spare segment back to the arena (thread exit).
///
/// # Safety
/// The calling thread owns `heap`.
pub(crate) unsafe fn release_spare(heap: *mut Heap) {
    // SAFETY: owner-only; the spare segment has no page in use.
    unsafe {
        let spare = core::mem::replace(&mut (*heap).spare, ptr::null_mut());
        if !spare.is_null() {
            (*heap).seg_unmaps.add(1);
            ARENA.segment_free(spare.cast(), (*spare).small);
        }
    }
}

/// Take a page for (kind, class) from the heap's segments, its spare, or the arena.
///
/// # Safety
/// The calling thread owns `heap`.
unsafe fn new_page(heap: *mut Heap, kind: u8, class: usize) -> *mut Page {
    // SAFETY: owner-only access to the heap's segment list; a new segment is ours alone until
    // the arena is told it is ready for statistics snapshots.
    unsafe {
        // The segment a page last went back to, while that slot is resident, then the first
        // with a free slot (`take_page` takes a resident slot first in its segment too): a page
        // that faults in while an idle one stays resident is RSS for nothing. (Not a scan for
        // any resident slot: a heap of 250 segments paid a walk of all of them for every page
        // it took while growing.)
        let r = (*heap).reuse;
        if !r.is_null() && (*r).free_mask & (*r).touched_mask != 0 {
            return slab::take_page(r, kind, class);
        }
        let mut s = (*heap).segments;
        let (mut touched, mut count) = (0, 0);
        while !s.is_null() {
            if (*s).free_mask != 0 {
                return slab::take_page(s, kind, class);
            }
            touched += (*s).touched_bytes as usize;
            count += 1;
            s = (*s).next;
        }
        let seg = if !(*heap).spare.is_null() {
            core::mem::replace(&mut (*heap).spare, ptr::null_mut())
        } else {
            (*heap).seg_maps.add(1);
            let growth = if touched < HUGE_DENSE_SEGMENT {
                Growth::Small
            } else if count >= DENSE_GROWTH_SEGMENTS
                && (*heap).remote_taken.saturating_mul(DENSE_GROWTH_REMOTE.1)
                    <= touched.saturating_mul(DENSE_GROWTH_REMOTE.0)
                && !ARENA.segments_armed()
                && grows_densely(heap, touched, count)
            {
                Growth::Dense
            } else {
                Growth::Past
            };
            let taken = ARENA.segment_alloc(SEGMENT_SIZE, growth);
            let seg = taken.base.cast::<Segment>();
            if seg.is_null() {
                return ptr::null_mut();
            }
            slab::init_segment(seg, heap.cast(), taken.zeroed);
            (*seg).small = taken.small;
            ARENA.segment_ready(seg.cast());
            seg
        };
        (*seg).next = (*heap).segments;
        (*heap).segments = seg;
        slab::take_page(seg, kind, class)
    }
}

/// Whether a heap whose `count` segments are all full of pages, `touched` bytes of them
/// touched, has touched most of them and still holds most of what it touched
/// (`DENSE_GROWTH_LIVE`): a heap building something large, whose next segment may as well be
/// on huge pages from the start. A walk of the page descriptors, only while segments are not
/// armed (a few heaps of a few segments).
///
/// In the hot section (`preload/layout.ld`): most threaded programs run it once or twice.
///
/// # Safety
/// The calling thread owns `heap`.
#[link_section = ".text.hot.tensorpool"]
unsafe fn grows_densely(heap: *mut Heap, touched: usize, count: usize) -> bool {
    let (part, whole) = DENSE_GROWTH_TOUCHED;
    if touched * whole < count * SEGMENT_SIZE * part {
        return false;
    }
    let mut counts = [SlabCounts::default(); NUM_KINDS];
    // SAFETY: the heap's segments are held and initialised, and only this thread writes them.
    unsafe {
        let mut s = (*heap).segments;
        while !s.is_null() {
            slab::count_pages(s, &mut counts);
            s = (*s).next;
        }
    }
    let held: u64 = counts.iter().map(|c| c.live_bytes).sum();
    let (part, whole) = DENSE_GROWTH_LIVE;
    held * whole as u64 >= (touched * part) as u64
}

/// # Safety
/// The calling thread owns `heap`; `seg` is on its segment list.
unsafe fn segment_unlink(heap: *mut Heap, seg: *mut Segment) {
    // SAFETY: owner-only.
    unsafe {
        let mut pp: *mut *mut Segment = &mut (*heap).segments;
        while !(*pp).is_null() {
            if *pp == seg {
                *pp = (*seg).next;
                (*seg).next = ptr::null_mut();
                if (*heap).reuse == seg {
                    (*heap).reuse = ptr::null_mut();
                }
                return;
            }
            pp = &mut (**pp).next;
        }
        debug_assert!(false, "segment not on its heap's list");
    }
}
