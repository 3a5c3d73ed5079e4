//! The owner's purge of idle slab pages. An empty page goes back to its segment and stays
//! resident there, so that the next page the heap takes needs no fault (`slab::take_page` takes
//! resident slots first); it goes back to the OS once it has been free for `SLOT_DECAY_NS` (or
//! the arena's decay time where that is shorter; never where decay never runs), at the owner's
//! next slow path. Without it a held segment kept every page it ever used resident for as long
//! as one of its pages was in use: mimalloc-bench's rptest peaked with 20-25 MiB of free pages
//! in held segments against 7-10 MiB of pages in use. mimalloc purges a free page after 10 ms
//! (`purge_delay`), jemalloc a dirty page after 10 s (`dirty_decay_ms`); here 10 ms faulted
//! espresso's pages back in 1,470 more times (516 -> 1,987 faults) and rptest peaked higher
//! (23-29 MiB) than at 100 ms or 1 s (11-13 MiB; two runs each), and 100 ms doubled
//! espresso's faults, which 1 s leaves as they were.
//!
//! Only segments on 4 KiB pages: purging part of a huge page splits it, and a segment goes
//! huge only where it is dense and the heaps hold many, or its heap grows densely
//! (`pool::large`'s `HUGE_SEGMENTS_FROM`, `DENSE_GROWTH_SEGMENTS`).

use super::types::Heap;
use crate::pool::large::ARENA;
use crate::pool::slab::{self, Segment};

/// How long an empty page stays resident in its segment at most.
pub(crate) const SLOT_DECAY_NS: u64 = 1_000_000_000;

/// The delay in force and the purge advice; `None` where memory never decays.
#[inline]
fn policy() -> Option<(u64, bool)> {
    ARENA
        .purge_policy()
        .map(|(decay, lazy)| (decay.min(SLOT_DECAY_NS), lazy))
}

/// A page of `seg` just went back to it at `now`: schedule its purge (at once where the delay
/// is 0).
///
/// # Safety
/// The calling thread owns `heap` and its segment `seg`.
#[link_section = ".text.hot.tensorpool"]
pub(crate) unsafe fn note_released(heap: *mut Heap, seg: *mut Segment, now: u64) {
    // SAFETY: owner-only fields.
    unsafe {
        if !(*seg).small {
            return;
        }
        let Some((delay, _)) = policy() else { return };
        let due = now.saturating_add(delay);
        if (*heap).purge_due == 0 || due < (*heap).purge_due {
            (*heap).purge_due = due;
        }
        if delay == 0 {
            purge_due(heap, now);
        }
    }
}

/// Purge the heap's pages that have been free long enough at `now`, if any is due.
///
/// # Safety
/// The calling thread owns `heap`.
#[inline]
pub(crate) unsafe fn maybe_purge(heap: *mut Heap, now: u64) {
    // SAFETY: owner-only field.
    unsafe {
        let due = (*heap).purge_due;
        if due != 0 && now >= due {
            purge_due(heap, now);
        }
    }
}

/// Purge every page of the heap's segments (off huge pages) and its spare that has been free
/// for the delay at `now`, and note when the next one is due.
///
/// # Safety
/// The calling thread owns `heap`.
#[cold]
#[inline(never)]
#[link_section = ".text.hot.tensorpool"]
pub(crate) unsafe fn purge_due(heap: *mut Heap, now: u64) {
    // SAFETY: owner-only access to the heap's segments and spare, which it holds.
    unsafe {
        (*heap).purge_due = 0;
        let Some((delay, lazy)) = policy() else {
            return;
        };
        let mut next = 0u64;
        let mut visit = |seg: *mut Segment| {
            if !(*seg).small {
                return;
            }
            let (_, due) =
                slab::purge_idle(seg, now, delay, |p, len| crate::os::purge(p, len, lazy));
            if due != 0 && (next == 0 || due < next) {
                next = due;
            }
        };
        let mut s = (*heap).segments;
        while !s.is_null() {
            visit(s);
            s = (*s).next;
        }
        if !(*heap).spare.is_null() {
            visit((*heap).spare);
        }
        // At most eight scans a delay: a heap that empties pages all the time would otherwise
        // walk its segments at every slow path.
        (*heap).purge_due = if next == 0 {
            0
        } else {
            next.max(now.saturating_add(delay / 8))
        };
    }
}
