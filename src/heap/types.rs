//! The thread heap's types, the static empty ones a thread without a heap points at, and the
//! thread-local pointer the fast path starts from.

use super::hot::HotCache;
use super::returns::Returns;
use crate::class::NUM_SMALL;
use crate::kind::NUM_KINDS;
use crate::pool::slab::{Page, Segment};
use crate::sync::{AtomicBool, AtomicPtr, Stat};
use core::ptr;
use crossbeam_utils::CachePadded;

/// Per-kind part of a thread heap: per size class, the *direct* page (the one the fast path pops
/// from), a queue of pages that may have free blocks, and a list of pages found full.
///
/// Invariants (checked by `census`): every page in use of this kind is on exactly one of
/// `queue[c]` and `full[c]` for its class `c`, with `in_full` saying which; `direct[c]` is on
/// `queue[c]` (or is the static empty page) and is the only page with `is_direct`.
#[repr(C, align(64))]
pub(crate) struct KindHeap {
    /// Page the fast path pops from, per class; the static empty page when there is none.
    pub(crate) direct: [*mut Page; NUM_SMALL],
    /// Pages that may have free blocks, per class (doubly linked through `Page::next/prev`).
    pub(crate) queue: [*mut Page; NUM_SMALL],
    /// Pages found full, per class (they rejoin the queue at a local free or a remote notice).
    pub(crate) full: [*mut Page; NUM_SMALL],
    /// The heap this belongs to (null only in the static empty kind heap).
    pub(crate) heap: *mut Heap,
    pub(crate) kind: u8,
    /// Counters of pages (never written in the static one).
    pub(crate) counters: KindCounters,
}

/// Per thread and kind, written by the owner only (see `Stat`).
#[repr(C)]
pub(crate) struct KindCounters {
    /// Requests that needed a page new to this kind heap (the small path's misses).
    pub(crate) new_pages: Stat,
    /// Allocations served by pages since given back, and their class sizes: a page's own
    /// counts fold in here when it goes (see `pool::slab::count_pages` for pages in use).
    pub(crate) retired_allocs: Stat,
    pub(crate) retired_granted: Stat,
}

/// A thread's heap. Heaps are never freed: a thread's exit leaves its heap for the next new
/// thread to adopt, live blocks and all.
#[repr(C)]
pub(crate) struct Heap {
    pub(crate) kinds: [KindHeap; NUM_KINDS],
    /// What `cur` points at in the slow-only modes (`heap::slow_only`): no direct page, so every
    /// allocation takes the slow path, `kind` the thread's tag and `heap` this heap, so the free
    /// path still finds its heap. It owns no page.
    pub(crate) slow: KindHeap,
    /// Segments owned by this heap (linked through `Segment::next`).
    pub(crate) segments: *mut Segment,
    /// One empty segment kept back, so a thread cycling through a segment's worth of memory does
    /// not take it from the arena and fault it in each time.
    pub(crate) spare: *mut Segment,
    /// Full pages that other threads freed blocks into (linked through `Page::delayed_next`),
    /// not yet taken back to their queues by the owner (see `pool::slab`, "Full pages").
    pub(crate) delayed: CachePadded<AtomicPtr<Page>>,
    /// Whether a live thread owns this heap.
    pub(crate) in_use: AtomicBool,
    /// Next heap in the registry (set before publication, never changed).
    pub(crate) next_heap: *mut Heap,
    /// Segments this heap took from the arena, and gave back (written by the owner only).
    /// Segments hold pages of every kind, so they are counted per heap, not per kind.
    pub(crate) seg_maps: Stat,
    pub(crate) seg_unmaps: Stat,
    /// The thread's cache of freed large blocks (see `hot`).
    pub(crate) hot: HotCache,
    /// Large blocks this heap took that other threads freed, on their way back (see `returns`).
    pub(crate) returns: CachePadded<Returns>,
}

/// A wrapper making the static empty structures `Sync`: they are only ever read.
#[repr(transparent)]
struct ReadOnly<T>(T);
// SAFETY: the wrapped statics are never written (the fast path only reads a null free list from
// them before falling to the slow path).
unsafe impl<T> Sync for ReadOnly<T> {}

/// The static empty page: bytes of zeros shaped like a `Page`, so that its `free` list reads as
/// null. (A byte array rather than a `Page` value: under loom a page's atomics are loom's, which
/// cannot be built in a const context.) Only `free` is ever read from it, and nothing written.
#[repr(C, align(128))]
struct EmptyPage([u8; core::mem::size_of::<Page>()]);

static EMPTY_PAGE: ReadOnly<EmptyPage> = ReadOnly(EmptyPage([0; core::mem::size_of::<Page>()]));

const _: () = assert!(core::mem::align_of::<EmptyPage>() >= core::mem::align_of::<Page>());
const _: () = assert!(core::mem::offset_of!(Page, free) == 0);

/// The static empty page (compared by address: it is no heap's).
pub(crate) const fn empty_page() -> *mut Page {
    &EMPTY_PAGE as *const ReadOnly<EmptyPage> as *mut Page
}

static EMPTY_KIND_HEAP: ReadOnly<KindHeap> = ReadOnly(KindHeap {
    direct: [empty_page(); NUM_SMALL],
    queue: [ptr::null_mut(); NUM_SMALL],
    full: [ptr::null_mut(); NUM_SMALL],
    heap: ptr::null_mut(),
    kind: 0,
    counters: KindCounters {
        new_pages: Stat::ZERO,
        retired_allocs: Stat::ZERO,
        retired_granted: Stat::ZERO,
    },
});

/// The static empty kind heap: a thread without a heap points at it, so the fast path never
/// tests for "no heap yet" (its direct pages are the empty page, whose pop fails).
pub(crate) fn empty_kind_heap() -> *mut KindHeap {
    &EMPTY_KIND_HEAP as *const ReadOnly<KindHeap> as *mut KindHeap
}

crate::tls::fast_thread_local! {
    /// The kind heap of the calling thread's current tag (the static empty one without a heap):
    /// the one thread-local the small-block fast path reads (see `tls`).
    mod cur_slot: *mut KindHeap = ptr EMPTY_KIND_HEAP;
}

/// The calling thread's current kind heap.
pub(crate) mod cur {
    use super::{cur_slot, KindHeap};

    /// The calling thread's current kind heap.
    #[inline(always)]
    pub(crate) fn get() -> *mut KindHeap {
        // SAFETY: the calling thread's own slot, only ever touched by it.
        unsafe { *cur_slot::addr() }
    }

    /// Point the calling thread at kind heap `kh`.
    #[inline(always)]
    pub(crate) fn set(kh: *mut KindHeap) {
        // SAFETY: as in `get`.
        unsafe { *cur_slot::addr() = kh }
    }
}

/// The calling thread's heap, or null if it has none yet.
#[inline]
pub(crate) fn current_heap() -> *mut Heap {
    // SAFETY: the current kind heap is always valid (the static empty one or the thread's own).
    unsafe { (*cur::get()).heap }
}
