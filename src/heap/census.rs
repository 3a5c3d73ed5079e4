//! The expensive check of a thread heap: every page, list and block walked and every invariant of
//! `pool::slab` and `types::KindHeap` checked, with what the heap holds counted. Built for loom
//! models and for debug tests (`--features check`); it allocates nothing, so a test may run it
//! on its own heap under the global allocator.

use super::types::{empty_page, Heap};
use crate::class::{blocks_per_page, small_size, NUM_SMALL};
use crate::kind::NUM_KINDS;
use crate::pool::slab::{self, Page, PAGES_PER_SEGMENT};
use crate::sync::Ordering;

/// What a heap holds, summed over its pages.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Census {
    /// Blocks handed out and not seen freed by the owner (live, on remote lists, or in other
    /// threads' batches).
    pub used: usize,
    /// Blocks on the pages' free lists.
    pub free: usize,
    /// Blocks carved so far.
    pub carved: usize,
    /// Blocks on the pages' remote lists.
    pub remote: usize,
    /// Pages in use.
    pub pages: usize,
    /// Of those, pages on the full lists.
    pub full_pages: usize,
    /// Pages on the heap's delayed list.
    pub delayed_pages: usize,
    /// Segments owned (the spare included).
    pub segments: usize,
    /// Allocations counted by the pages in use and by pages retired since.
    pub allocs: u64,
    /// `used` per tensor kind, indexed by `TensorKind::index`.
    pub used_by_kind: [usize; NUM_KINDS],
    /// `remote` per tensor kind.
    pub remote_by_kind: [usize; NUM_KINDS],
}

/// Bits for one page's blocks (8192 blocks of 8 bytes at most).
const WORDS: usize = crate::class::SLAB_SIZE / 8 / 64;

/// Walk `heap` and check its structure: per page `used + |free| == capacity`,
/// `|remote| <= used`, blocks inside their page, carved and never listed twice; every page in use
/// on exactly one of its kind heap's lists, the one its `in_full` names; the direct pages; the
/// flags; the segments' page counts. Panics (a model's or test's assertion) on a violation.
///
/// # Safety
/// The calling thread owns `heap`, or no thread touches it during the call. Other threads may
/// go on freeing its blocks (they only prepend to remote and delayed lists, which stay intact
/// until the owner takes them).
pub(crate) unsafe fn census(heap: *mut Heap) -> Census {
    let mut c = Census::default();
    // SAFETY: owner-only or quiescent access (the caller's contract); remote and delayed lists
    // are read through their atomics.
    unsafe {
        let mut listed = 0;
        for k in 0..NUM_KINDS {
            let kh = &(*heap).kinds[k];
            assert_eq!(kh.heap, heap, "kind heap of another heap");
            for class in 0..NUM_SMALL {
                for (list, full) in [(kh.queue[class], false), (kh.full[class], true)] {
                    let mut p = list.head;
                    let mut prev: *mut Page = core::ptr::null_mut();
                    while !p.is_null() {
                        assert_eq!((*p).prev, prev, "broken back link");
                        assert_eq!((*p).class as usize, class, "page on another class's list");
                        assert_eq!((*p).kind as usize, k, "page on another kind's list");
                        assert_eq!((*p).in_full, full, "page on the wrong list");
                        assert_eq!(
                            (*slab::segment_of(p.cast())).owner,
                            heap.cast(),
                            "listed page of another heap"
                        );
                        listed += 1;
                        prev = p;
                        p = (*p).next;
                    }
                    assert_eq!(list.tail, prev, "tail is not the last page");
                }
                let d = kh.direct[class];
                if d != empty_page() {
                    assert!(
                        (*d).is_direct && !(*d).in_full,
                        "direct page not on the queue"
                    );
                    assert!(
                        on_list(kh.queue[class].head, d),
                        "direct page not on its queue"
                    );
                }
            }
        }
        let mut seg = (*heap).segments;
        while !seg.is_null() {
            assert_eq!((*seg).owner, heap.cast(), "segment of another heap");
            c.segments += 1;
            let (mut in_use, mut touched) = (0, 0);
            for i in 1..PAGES_PER_SEGMENT {
                let page = core::ptr::addr_of_mut!((*seg).pages[i]);
                let free_slot = (*seg).free_mask & (1 << i) != 0;
                assert_eq!(
                    free_slot,
                    (*page).info.get() == 0,
                    "page {i}: mask and info differ"
                );
                assert_eq!(
                    (*seg).touched_mask & (1 << i) != 0,
                    (*page).touched > 0,
                    "page {i}: touched mask and touched bytes differ"
                );
                touched += (*page).touched;
                if free_slot {
                    continue;
                }
                in_use += 1;
                check_page(page, &mut c);
                let kh = &(*heap).kinds[(*page).kind as usize];
                let class = (*page).class as usize;
                let head = if (*page).in_full {
                    kh.full[class].head
                } else {
                    kh.queue[class].head
                };
                assert!(on_list(head, page), "page {i} in use on no list");
                assert_eq!(
                    (*page).is_direct,
                    kh.direct[class] == page,
                    "is_direct is wrong"
                );
            }
            assert_eq!((*seg).used_pages, in_use, "segment page count");
            assert_eq!((*seg).touched_bytes, touched, "segment touched bytes");
            seg = (*seg).next;
        }
        assert_eq!(
            listed, c.pages,
            "a page listed twice, or a listed page not in use"
        );
        if !(*heap).spare.is_null() {
            c.segments += 1;
        }
        let mut p = (*heap).delayed.load(Ordering::Acquire);
        while !p.is_null() {
            assert_eq!(
                (*slab::segment_of(p.cast())).owner,
                heap.cast(),
                "delayed page of another heap"
            );
            let (_, notify, queued) = slab::remote_list(p);
            assert!(queued && !notify, "a delayed page without QUEUED");
            c.delayed_pages += 1;
            assert!(c.delayed_pages <= c.pages, "the delayed list loops");
            p = (*p).delayed_next;
        }
        for k in 0..NUM_KINDS {
            c.allocs += (*heap).kinds[k].counters.retired_allocs.get();
        }
    }
    c
}

/// Check one page in use and add its figures.
///
/// # Safety
/// As for `census`; `page` is in use.
unsafe fn check_page(page: *mut Page, c: &mut Census) {
    // SAFETY: the caller's contract.
    unsafe {
        let class = (*page).class as usize;
        let bs = small_size(class);
        let start = slab::page_start(page) as usize;
        let capacity = (*page).capacity.get() as usize;
        let used = (*page).used.get() as usize;
        assert!(
            capacity <= blocks_per_page(class) as usize,
            "over-carved page"
        );
        let mut seen = [0u64; WORDS];
        let mut mark = |a: usize, what: &str| {
            assert!(
                a >= start && (a - start) % bs == 0,
                "{what} block {a:#x} is not a block of its page"
            );
            #[cfg(feature = "free-checks")]
            assert_eq!(
                *slab::mark_word(a as *mut slab::Block),
                slab::FREE_MARK,
                "{what} block {a:#x} has lost its free mark"
            );
            let i = (a - start) / bs;
            assert!(i < capacity, "{what} block {a:#x} was never carved");
            assert!(
                seen[i / 64] & (1 << (i % 64)) == 0,
                "block {a:#x} listed twice"
            );
            seen[i / 64] |= 1 << (i % 64);
        };
        let mut free = 0;
        let mut b = (*page).free;
        while !b.is_null() {
            mark(b as usize, "free");
            free += 1;
            b = (*b).next;
        }
        let (mut b, notify, queued) = slab::remote_list(page);
        assert!(!(notify && queued), "NOTIFY and QUEUED together");
        assert!(
            !notify || (*page).in_full,
            "NOTIFY on a page not on the full list"
        );
        let mut remote = 0;
        while !b.is_null() {
            mark(b as usize, "remote");
            remote += 1;
            b = (*b).next;
        }
        assert_eq!(
            remote,
            slab::remote_count(page),
            "the remote word's count is not its list's length"
        );
        assert!(
            !((*page).in_full && remote > 0 && !queued),
            "remote frees stranded on a full page nobody will look at"
        );
        assert_eq!(used + free, capacity, "used + |free| != capacity");
        assert!(remote <= used, "more remote blocks than blocks handed out");
        c.used += used;
        c.free += free;
        c.remote += remote;
        c.used_by_kind[(*page).kind as usize] += used;
        c.remote_by_kind[(*page).kind as usize] += remote;
        c.carved += capacity;
        c.pages += 1;
        c.full_pages += usize::from((*page).in_full);
        c.allocs += (*page).allocs.get();
    }
}

/// Whether `page` is on the list starting at `head`.
///
/// # Safety
/// The list is the calling thread's own or quiescent.
unsafe fn on_list(mut head: *mut Page, page: *mut Page) -> bool {
    while !head.is_null() {
        if head == page {
            return true;
        }
        // SAFETY: the caller's contract.
        head = unsafe { (*head).next };
    }
    false
}
