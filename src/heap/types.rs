//! The thread heap's types, the static empty ones a thread without a heap points at, and the
//! thread-local pointer the fast path starts from.

use super::hot::ThreadCache;
use super::returns::Returns;
use crate::class::NUM_SMALL;
use crate::kind::NUM_KINDS;
use crate::pool::slab::{Page, Segment};
use crate::sync::{AtomicBool, AtomicPtr, AtomicUsize, Stat};
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
    /// Pages that may have free blocks, per class. The direct page and new pages go to the
    /// front; a page leaving the full list goes to the back (`PageList`).
    pub(crate) queue: [PageList; NUM_SMALL],
    /// Pages found full, per class (they rejoin the queue at a local free or a remote notice).
    pub(crate) full: [PageList; NUM_SMALL],
    /// The heap this belongs to (null only in the static empty kind heap).
    pub(crate) heap: *mut Heap,
    pub(crate) kind: u8,
    /// Counters of pages (never written in the static one).
    pub(crate) counters: KindCounters,
}

/// A doubly linked list of one heap's pages (through `Page::next/prev`), owner-only.
///
/// Invariants: `head.is_null() == tail.is_null()`; `head.prev` and `tail.next` are null.
///
/// Why a tail: a page leaving the full list holds the one or two blocks freed into it since it
/// went there. At the front of its queue it would be the next page the slow path takes, and
/// run dry again a few allocations later; at the back it gathers frees while the pages ahead
/// of it are used (mimalloc's page queues do the same). mimalloc-bench's alloc-test, 256 K
/// blocks replaced at random: the slow path ran for one allocation in five with the front.
#[repr(C)]
#[derive(Clone, Copy)]
pub(crate) struct PageList {
    pub(crate) head: *mut Page,
    pub(crate) tail: *mut Page,
}

impl PageList {
    pub(crate) const EMPTY: PageList = PageList {
        head: ptr::null_mut(),
        tail: ptr::null_mut(),
    };

    /// Put `p` first.
    ///
    /// # Safety
    /// The calling thread owns the list and `p`, which is on no list.
    pub(crate) unsafe fn push_front(&mut self, p: *mut Page) {
        // SAFETY: the caller's contract; `head` is null or the first page.
        unsafe { self.link(p, ptr::null_mut(), self.head) }
    }

    /// Put `p` last.
    ///
    /// # Safety
    /// As for `push_front`.
    pub(crate) unsafe fn push_back(&mut self, p: *mut Page) {
        // SAFETY: the caller's contract; `tail` is null or the last page.
        unsafe { self.link(p, self.tail, ptr::null_mut()) }
    }

    /// Put `p` between the neighbours `prev` and `next` (null: the list's end), the mirror of
    /// `unlink`.
    ///
    /// # Safety
    /// As for `push_front`; `prev` and `next` are adjacent on the list, or its ends.
    unsafe fn link(&mut self, p: *mut Page, prev: *mut Page, next: *mut Page) {
        // SAFETY: owner-only list manipulation.
        unsafe {
            (*p).prev = prev;
            (*p).next = next;
            if prev.is_null() {
                self.head = p;
            } else {
                (*prev).next = p;
            }
            if next.is_null() {
                self.tail = p;
            } else {
                (*next).prev = p;
            }
        }
    }

    /// Take `p` off the list.
    ///
    /// # Safety
    /// The calling thread owns the list; `p` is on it.
    pub(crate) unsafe fn unlink(&mut self, p: *mut Page) {
        // SAFETY: owner-only.
        unsafe {
            let (prev, next) = ((*p).prev, (*p).next);
            if prev.is_null() {
                debug_assert_eq!(self.head, p, "page not on this list");
                self.head = next;
            } else {
                (*prev).next = next;
            }
            if next.is_null() {
                debug_assert_eq!(self.tail, p, "page not on this list");
                self.tail = prev;
            } else {
                (*next).prev = prev;
            }
            (*p).next = ptr::null_mut();
            (*p).prev = ptr::null_mut();
        }
    }
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
    /// `tls::thread_id()` of the thread that owns this heap, 0 while none does: what a free
    /// compares to tell its own blocks from other threads' (`heap::free_small`). Written when a
    /// thread takes the heap and when it leaves it (`registry`), read by every free of the
    /// heap's blocks, so on a line of its own.
    ///
    /// Invariant: for a live thread `T`, `thread == T.thread_id()` only on the heap `T`'s
    /// `cur` points into, or, until `T` takes a heap, on one that an exited thread with the same
    /// id left in use, which no live thread owns (`registry::claim_thread_id` clears it then).
    pub(crate) thread: CachePadded<AtomicUsize>,
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
    /// When the first free page of this heap's segments (off huge pages) is due to go back to
    /// the OS, 0 while none is waiting (see `purge`; owner only).
    pub(crate) purge_due: u64,
    /// The segment a page last went back to, while on `segments` (null otherwise): where the
    /// next page is taken if that slot is still resident (`pages::new_page`; owner only).
    pub(crate) reuse: *mut Segment,
    /// Bytes of this heap's blocks that other threads freed and it took back to refill
    /// (`pages::find_page`), over the heap's life (a thread that adopts it inherits them with its
    /// blocks): a heap whose blocks other threads free churns, and does not take segments on huge
    /// pages early (`DENSE_GROWTH_REMOTE`; owner only).
    pub(crate) remote_taken: usize,
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
    /// The thread's cache of freed large blocks (see `hot`), behind its gate (`idle`).
    pub(crate) hot: ThreadCache,
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

#[link_section = ".rodata.hot.tensorpool"]
static EMPTY_PAGE: ReadOnly<EmptyPage> = ReadOnly(EmptyPage([0; core::mem::size_of::<Page>()]));

const _: () = assert!(core::mem::align_of::<EmptyPage>() >= core::mem::align_of::<Page>());
const _: () = assert!(core::mem::offset_of!(Page, free) == 0);

/// The static empty page (compared by address: it is no heap's).
pub(crate) const fn empty_page() -> *mut Page {
    &EMPTY_PAGE as *const ReadOnly<EmptyPage> as *mut Page
}

static EMPTY_KIND_HEAP: ReadOnly<KindHeap> = ReadOnly(KindHeap {
    direct: [empty_page(); NUM_SMALL],
    queue: [PageList::EMPTY; NUM_SMALL],
    full: [PageList::EMPTY; NUM_SMALL],
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

    /// `get()` for the fast paths that must keep no stack frame, or `None` while the
    /// thread-local's place is not known without a call (`tls::fast_thread_local`'s
    /// `static_addr`): their slow paths then read it with `get()`.
    #[inline(always)]
    pub(crate) fn get_fast() -> Option<*mut KindHeap> {
        // SAFETY: as in `get`.
        cur_slot::static_addr().map(|a| unsafe { *a })
    }

    /// Find out once per thread start whether `get_fast` can do without the call (cold).
    pub(crate) fn learn() {
        cur_slot::learn();
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

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    fn order(l: &PageList) -> Vec<*mut Page> {
        let mut v = Vec::new();
        let mut p = l.head;
        // SAFETY: the list links pages of the test's array.
        unsafe {
            while !p.is_null() {
                v.push(p);
                p = (*p).next;
            }
        }
        v
    }

    #[test]
    fn page_list_keeps_front_back_and_tail() {
        // SAFETY: a page is plain integers, pointers and atomics, for which zero is valid.
        let mut pages: [Page; 4] = unsafe { core::mem::zeroed() };
        let [a, b, c, d] = pages.each_mut().map(|p| p as *mut Page);
        let mut l = PageList::EMPTY;
        // SAFETY: each page is on no list when pushed, and on `l` when unlinked.
        unsafe {
            l.push_back(a);
            l.push_front(b);
            l.push_back(c);
            assert_eq!(order(&l), [b, a, c]);
            assert_eq!(l.tail, c);
            l.unlink(c);
            assert_eq!(l.tail, a);
            l.unlink(b);
            assert_eq!((l.head, l.tail), (a, a));
            l.push_back(d);
            l.push_front(c);
            assert_eq!(order(&l), [c, a, d]);
            assert_eq!((*d).prev, a);
            l.unlink(a);
            assert_eq!(order(&l), [c, d]);
            l.unlink(d);
            l.unlink(c);
            assert!(l.head.is_null() && l.tail.is_null());
        }
    }
}
