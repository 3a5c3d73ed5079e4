//! Thread heaps: the small-block fast path, read top to bottom.
//!
//! Each thread owns a `Heap` with one `KindHeap` per tensor kind; a kind heap has, per size class,
//! a *direct* page (the page the fast path pops from), a queue of pages that may have free blocks
//! and a list of full pages. The thread-local `CUR` points at the kind heap of the thread's current
//! tag, so routing by kind costs the fast path nothing: allocation is one thread-local load, one
//! table load and a free-list pop; a new thread's `CUR` points at a static empty kind heap whose
//! direct pages are a static empty page, so the fast path never tests for "no heap yet".
//!
//! Frees find the block's page from its address. A free by the owning thread pushes onto the page's
//! free list. A free by any other thread goes into that thread's small batch of remote frees,
//! grouped by owner heap; a full batch is published to each owner's delayed list with one CAS per
//! owner (so a cross-thread free costs a fraction of an atomic operation), and the owner drains its
//! delayed list at the start of every slow path. Heaps are never freed: a thread's exit (seen by a
//! `pthread` key destructor, never a Rust TLS destructor, which could allocate) returns its empty
//! pages and marks the heap free for the next new thread to adopt, live blocks and all.

use crate::budget::HotCache;
use crate::class::{small_class, NUM_SMALL};
use crate::kind::NUM_KINDS;
use crate::os;
use crate::pool::large::{Extent, ARENA};
use crate::pool::slab::{self, Block, Page, Segment, SEGMENT_SIZE};
use crate::stats::HeapPart;
use crate::sync::{shared_static, AtomicBool, AtomicPtr, AtomicUsize, Ordering, SpinLock, Stat};
use core::cell::{Cell, UnsafeCell};
use core::ptr;
use crossbeam_utils::CachePadded;

/// Per-kind part of a thread heap. Aligned (so sized) to a power of two, so that a free finds its
/// kind heap's counters with a shift rather than a multiply.
#[repr(C, align(2048))]
pub(crate) struct KindHeap {
    /// Page the fast path pops from, per class; `EMPTY_PAGE` when there is none.
    direct: [*mut Page; NUM_SMALL],
    /// Pages that may have free blocks, per class (doubly linked through `Page::next/prev`).
    queue: [*mut Page; NUM_SMALL],
    /// Pages found full, per class (they rejoin the queue when a block of theirs is freed).
    full: [*mut Page; NUM_SMALL],
    /// The heap this belongs to (null only in the static empty kind heap).
    heap: *mut Heap,
    kind: u8,
    /// This thread's small-block counters for the kind (never written in the static one).
    stats: SmallCounters,
}

/// Per thread and kind: small-block counters, written by the owner only (see `Stat`). The fast
/// paths count one event per allocation and per free, by class, and nothing else: bytes are class
/// sizes times counts, worked out when a snapshot is taken. (Counting requested bytes and totals
/// too cost the malloc/free loop a third of its speed.) Remote frees are counted when the owner
/// takes them back, so a block is live until then.
#[repr(C)]
pub(crate) struct SmallCounters {
    /// Allocations served, per class. (Frees are counted per heap, in `Heap::frees`.)
    allocs: [Stat; NUM_SMALL],
    /// Bytes carved into blocks on this kind's pages (free, live or pending), less retired pages.
    carved: Stat,
    /// Requests that needed a page new to this kind heap (the "misses": new memory).
    new_pages: Stat,
}

/// A thread's heap.
#[repr(C)]
pub(crate) struct Heap {
    kinds: [KindHeap; NUM_KINDS],
    /// Segments owned by this heap (linked through `Segment::next`).
    segments: *mut Segment,
    /// One empty segment kept back, so a thread cycling through a segment's worth of memory does
    /// not map and fault it each time.
    spare: *mut Segment,
    /// Blocks of this heap freed by other threads, not yet seen by the owner.
    delayed: CachePadded<AtomicPtr<Block>>,
    /// Whether a live thread owns this heap.
    in_use: AtomicBool,
    /// Next heap in the registry (set before publication, never changed).
    next_heap: *mut Heap,
    /// Segments this heap took from the arena, and gave back (written by the owner only).
    /// Segments hold pages of every kind, so they are counted per heap, not per kind.
    seg_maps: Stat,
    seg_unmaps: Stat,
    /// Frees seen by the owner, per (kind, class), at each page's `stat_index`: a free finds its
    /// counter with one load from the page it already has in hand. (Indexing per kind heap took
    /// two loads and a shift first, and the late store address cost a malloc/free loop 25 %.)
    frees: [Stat; NUM_KINDS * NUM_SMALL],
    /// The thread's cache of freed large blocks (see `budget`).
    hot: HotCache,
}

/// A wrapper making the static empty structures `Sync`: they are only ever read.
#[repr(transparent)]
struct ReadOnly<T>(T);
// SAFETY: the wrapped statics are never written (the fast path only reads a null free list from
// them before falling to the slow path).
unsafe impl<T> Sync for ReadOnly<T> {}

static EMPTY_PAGE: ReadOnly<Page> = ReadOnly(Page {
    free: ptr::null_mut(),
    used: 0,
    capacity: 0,
    reserved: 0,
    block_size: 0,
    class: 0,
    kind: 0,
    in_full: false,
    is_direct: false,
    in_use: false,
    stat_index: 0,
    next: ptr::null_mut(),
    prev: ptr::null_mut(),
});

const fn empty_page() -> *mut Page {
    &EMPTY_PAGE as *const ReadOnly<Page> as *mut Page
}

static EMPTY_KIND_HEAP: ReadOnly<KindHeap> = ReadOnly(KindHeap {
    direct: [empty_page(); NUM_SMALL],
    queue: [ptr::null_mut(); NUM_SMALL],
    full: [ptr::null_mut(); NUM_SMALL],
    heap: ptr::null_mut(),
    kind: 0,
    stats: SmallCounters {
        allocs: [Stat::ZERO; NUM_SMALL],
        carved: Stat::ZERO,
        new_pages: Stat::ZERO,
    },
});

thread_local! {
    /// The kind heap of the calling thread's current tag.
    static CUR: Cell<*mut KindHeap> =
        const { Cell::new(&EMPTY_KIND_HEAP as *const ReadOnly<KindHeap> as *mut KindHeap) };
    /// The calling thread's current tensor kind (index).
    static TAG: Cell<u8> = const { Cell::new(0) };
    /// The calling thread's batch of frees of other heaps' blocks.
    static PENDING: UnsafeCell<Pending> = const { UnsafeCell::new(Pending::new()) };
}

/// Owner heaps a batch can group at once.
const PENDING_OWNERS: usize = 4;
/// Blocks a batch holds before it is published.
const PENDING_MAX: u32 = 64;

/// A thread's frees of blocks owned by other heaps, chained per owner.
pub(crate) struct Pending {
    owner: [*mut Heap; PENDING_OWNERS],
    head: [*mut Block; PENDING_OWNERS],
    tail: [*mut Block; PENDING_OWNERS],
    count: u32,
}

impl Pending {
    pub(crate) const fn new() -> Self {
        Self {
            owner: [ptr::null_mut(); PENDING_OWNERS],
            head: [ptr::null_mut(); PENDING_OWNERS],
            tail: [ptr::null_mut(); PENDING_OWNERS],
            count: 0,
        }
    }

    /// Add the free of `b`, a block of `owner`, to the batch; publish the batch when it is full
    /// or when it already groups as many owners as it can.
    ///
    /// # Safety
    /// `b` is a live block of `owner`'s pages, freed exactly once, by this call.
    pub(crate) unsafe fn push(&mut self, owner: *mut Heap, b: *mut Block) {
        let mut slot = PENDING_OWNERS;
        for i in 0..PENDING_OWNERS {
            if self.owner[i] == owner || self.owner[i].is_null() {
                slot = i;
                break;
            }
        }
        if slot == PENDING_OWNERS {
            self.flush();
            slot = 0;
        }
        // SAFETY: `b` is ours until published.
        unsafe { (*b).next = self.head[slot] };
        if self.head[slot].is_null() {
            self.owner[slot] = owner;
            self.tail[slot] = b;
        }
        self.head[slot] = b;
        self.count += 1;
        if self.count >= PENDING_MAX {
            self.flush();
        }
    }

    /// Publish every chain of the batch to its owner.
    pub(crate) fn flush(&mut self) {
        for i in 0..PENDING_OWNERS {
            if !self.owner[i].is_null() {
                // SAFETY: the chain holds live blocks of `owner[i]`, each freed once.
                unsafe { publish(self.owner[i], self.head[i], self.tail[i]) };
                self.owner[i] = ptr::null_mut();
                self.head[i] = ptr::null_mut();
                self.tail[i] = ptr::null_mut();
            }
        }
        self.count = 0;
    }
}

// ---------------------------------------------------------------------------------------------
// Fast paths
// ---------------------------------------------------------------------------------------------

/// Allocate a block of small class `class` under the calling thread's current kind.
#[inline(always)]
pub(crate) fn alloc_small(class: usize) -> *mut u8 {
    let kh = CUR.get();
    // SAFETY: `CUR` always points at a valid kind heap (the static empty one or the thread's own),
    // `class < NUM_SMALL` by the caller's lookup, and a direct page is the static empty page or a
    // page owned by this thread, whose free list only this thread touches.
    unsafe { pop_or_slow(kh, class) }
}

/// Pop a block from the kind heap's direct page for `class`, or take the slow path.
///
/// # Safety
/// `kh` is the static empty kind heap or one of the calling thread's; `class < NUM_SMALL`.
#[inline(always)]
unsafe fn pop_or_slow(kh: *mut KindHeap, class: usize) -> *mut u8 {
    // SAFETY: the caller's contract is `pop_direct`'s and `alloc_slow`'s.
    unsafe {
        let b = pop_direct(kh, class);
        if !b.is_null() {
            return b;
        }
        alloc_slow(kh, class)
    }
}

/// Pop a block from the kind heap's direct page for `class`; null when that page has none.
///
/// # Safety
/// As for `pop_or_slow`.
#[inline(always)]
unsafe fn pop_direct(kh: *mut KindHeap, class: usize) -> *mut u8 {
    // SAFETY: a direct page is the static empty page (free list null) or a page owned by this
    // thread, whose free list only this thread touches.
    unsafe {
        let page = *(*kh).direct.get_unchecked(class);
        let b = (*page).free;
        if b.is_null() {
            return ptr::null_mut();
        }
        (*page).free = (*b).next;
        (*page).used += 1;
        count_alloc(kh, class);
        b.cast()
    }
}

/// Count an allocation in the kind heap's counters (a real kind heap: the static empty one has no
/// block to hand out).
#[inline(always)]
unsafe fn count_alloc(kh: *mut KindHeap, class: usize) {
    #[cfg(feature = "stats")]
    // SAFETY: `kh` is the calling thread's own kind heap; `class < NUM_SMALL`.
    unsafe {
        (*kh).stats.allocs.get_unchecked(class).add(1);
    }
    #[cfg(not(feature = "stats"))]
    let _ = (kh, class);
}

/// Allocate a small block of an explicit kind (allocator handles), whatever the thread's tag.
#[inline]
pub(crate) fn alloc_small_kind(kind: usize, class: usize) -> *mut u8 {
    let cur = CUR.get();
    // SAFETY: as in `alloc_small`; `kind < NUM_KINDS`.
    unsafe {
        let heap = (*cur).heap;
        if heap.is_null() {
            let heap = init_thread();
            if heap.is_null() {
                return ptr::null_mut();
            }
            return alloc_small_kind(kind, class);
        }
        pop_or_slow(ptr::addr_of_mut!((*heap).kinds[kind]), class)
    }
}

// ---------------------------------------------------------------------------------------------
// Large blocks through the thread's hot cache (see `budget`)
// ---------------------------------------------------------------------------------------------

/// A large block of `kind` for a request of `size` bytes from the calling thread's hot cache, or
/// null (the size bypasses the cache, or no match).
#[inline]
pub(crate) fn hot_take(kind: usize, size: usize, align: usize) -> *mut u8 {
    if size > crate::budget::limit() {
        return ptr::null_mut();
    }
    // SAFETY: `CUR` always points at a valid kind heap; a non-null heap is this thread's own.
    unsafe {
        let mut heap = (*CUR.get()).heap;
        if heap.is_null() {
            // A thread making only large requests still gets a hot cache to free into.
            heap = init_thread();
            if heap.is_null() {
                return ptr::null_mut();
            }
        }
        (*heap).hot.take(kind, size, align)
    }
}

/// Free a large block into the calling thread's hot cache; false if it bypasses the cache (the
/// caller frees it to the arena).
///
/// # Safety
/// `e` is the descriptor of a live large block, freed by this call if it returns true.
#[inline]
pub(crate) unsafe fn hot_put(e: *mut Extent) -> bool {
    let limit = crate::budget::limit();
    // SAFETY: as in `hot_take`; the caller's contract covers `e`.
    unsafe {
        let heap = (*CUR.get()).heap;
        !heap.is_null() && limit > 0 && (*heap).hot.put(e, limit)
    }
}

/// Send the calling thread's hot cache back to the pools (`trim`).
pub(crate) fn hot_flush() {
    // SAFETY: as in `hot_take`.
    unsafe {
        let heap = (*CUR.get()).heap;
        if !heap.is_null() {
            (*heap).hot.flush();
        }
    }
}

/// Bytes in the calling thread's hot cache.
pub(crate) fn hot_bytes_here() -> usize {
    // SAFETY: as in `hot_take`.
    unsafe {
        let heap = (*CUR.get()).heap;
        if heap.is_null() {
            0
        } else {
            (*heap).hot.bytes()
        }
    }
}

/// Free a small block.
///
/// # Safety
/// `p` is a live small block of segment `seg` (`pagemap::is_small(p)`).
#[inline(always)]
pub(crate) unsafe fn free_small(seg: *mut Segment, p: *mut u8) {
    // SAFETY: `p` is live, so its segment and page descriptor are valid; the page's owner-only
    // fields are touched only when this thread is the owner.
    unsafe {
        let b = p.cast::<Block>();
        let owner = (*seg).owner;
        if owner == (*CUR.get()).heap {
            free_to_page(owner, slab::page_of(seg, p), b);
        } else {
            free_remote(owner, b);
        }
    }
}

/// Free a block as its page's owner: push it, and hand the rare cases (page now empty, or on the
/// full list) to the cold path.
///
/// # Safety
/// The calling thread owns `heap` and its `page`, and `b` is a live block of the page.
#[inline(always)]
unsafe fn free_to_page(heap: *mut Heap, page: *mut Page, b: *mut Block) {
    // SAFETY: owner-only access to the page's free list and counters.
    unsafe {
        #[cfg(feature = "stats")]
        (*heap)
            .frees
            .get_unchecked((*page).stat_index as usize)
            .add(1);
        #[cfg(not(feature = "stats"))]
        let _ = heap;
        (*b).next = (*page).free;
        (*page).free = b;
        (*page).used -= 1;
        // The direct page emptying is the common case of a malloc/free loop: nothing to do.
        if (((*page).used == 0) & !(*page).is_direct) | (*page).in_full {
            page_freed_cold(page);
        }
    }
}

/// The calling thread's current kind index.
#[inline]
pub(crate) fn current_kind() -> usize {
    TAG.get() as usize
}

/// Set the calling thread's current kind; returns the previous one.
pub(crate) fn set_kind(kind: usize) -> usize {
    debug_assert!(kind < NUM_KINDS);
    let prev = TAG.replace(kind as u8);
    let cur = CUR.get();
    // SAFETY: `CUR` is valid; a non-null heap is this thread's own.
    unsafe {
        let heap = (*cur).heap;
        if !heap.is_null() {
            CUR.set(ptr::addr_of_mut!((*heap).kinds[kind]));
        }
    }
    prev as usize
}

// ---------------------------------------------------------------------------------------------
// Slow paths
// ---------------------------------------------------------------------------------------------

#[cold]
#[inline(never)]
unsafe fn alloc_slow(kh: *mut KindHeap, class: usize) -> *mut u8 {
    // SAFETY: `kh` is the static empty kind heap (heap null) or one of this thread's.
    unsafe {
        let kh = if (*kh).heap.is_null() {
            let heap = init_thread();
            if heap.is_null() {
                return ptr::null_mut();
            }
            CUR.get()
        } else {
            kh
        };
        flush_pending();
        refill(kh, class)
    }
}

/// The owner's slow path proper: take back the blocks other threads freed, find a page with a
/// free block and pop one. Null when the OS refuses memory.
///
/// # Safety
/// `kh` belongs to a heap the calling thread owns.
pub(crate) unsafe fn refill(kh: *mut KindHeap, class: usize) -> *mut u8 {
    // SAFETY: owner-only access to the heap (the caller's contract).
    unsafe {
        drain_delayed((*kh).heap);
        // The slow path runs regularly: the arena's decay heartbeat rides on it.
        ARENA.tick();
        let page = find_page(kh, class);
        if page.is_null() {
            return ptr::null_mut();
        }
        let b = (*page).free;
        (*page).free = (*b).next;
        (*page).used += 1;
        count_alloc(kh, class);
        b.cast()
    }
}

/// Find a page of `class` with a free block, make it the direct page and return it (null when the
/// OS refuses memory).
///
/// # Safety
/// `kh` belongs to the calling thread's heap.
unsafe fn find_page(kh: *mut KindHeap, class: usize) -> *mut Page {
    // SAFETY: owner-only traversal of this thread's queues.
    unsafe {
        let mut p = (*kh).queue[class];
        while !p.is_null() {
            let next = (*p).next;
            if (*p).free.is_null() && (*p).capacity < (*p).reserved {
                carve(kh, p);
            }
            if !(*p).free.is_null() {
                set_direct(kh, class, p);
                return p;
            }
            queue_unlink(&mut (*kh).queue[class], p);
            queue_push(&mut (*kh).full[class], p);
            (*p).in_full = true;
            p = next;
        }
        let p = new_page((*kh).heap, (*kh).kind, class);
        if p.is_null() {
            set_direct(kh, class, empty_page());
            return p;
        }
        queue_push(&mut (*kh).queue[class], p);
        (*kh).stats.new_pages.add(1);
        carve(kh, p);
        set_direct(kh, class, p);
        p
    }
}

/// Make `p` the kind heap's direct page for `class` (the static empty page for none), keeping
/// the pages' `is_direct` flags, which let a local free skip the cold path when the direct page
/// empties.
///
/// # Safety
/// The calling thread owns `kh`; `p` is one of its pages of `class` or the static empty page.
unsafe fn set_direct(kh: *mut KindHeap, class: usize, p: *mut Page) {
    // SAFETY: owner-only; the static empty page is never written.
    unsafe {
        let old = (*kh).direct[class];
        if old != empty_page() {
            (*old).is_direct = false;
        }
        if p != empty_page() {
            (*p).is_direct = true;
        }
        (*kh).direct[class] = p;
    }
}

/// Carve more blocks on `p` and count them in the kind's counters.
///
/// # Safety
/// The calling thread owns `kh` and its page `p`, which has uncarved blocks.
unsafe fn carve(kh: *mut KindHeap, p: *mut Page) {
    // SAFETY: owner-only.
    unsafe {
        let before = (*p).capacity;
        slab::extend(p);
        let n = ((*p).capacity - before) as u64;
        (*kh).stats.carved.add(n * (*p).block_size as u64);
    }
}

/// A local free made the page empty or hit a page on the full list.
#[cold]
#[inline(never)]
unsafe fn page_freed_cold(page: *mut Page) {
    // SAFETY: the caller is the page's owner.
    unsafe {
        let seg = slab::segment_of(page.cast());
        let heap = (*seg).owner;
        let kh = ptr::addr_of_mut!((*heap).kinds[(*page).kind as usize]);
        let class = (*page).class as usize;
        if (*page).in_full {
            (*page).in_full = false;
            queue_unlink(&mut (*kh).full[class], page);
            queue_push(&mut (*kh).queue[class], page);
        }
        if (*page).used == 0 && (*kh).direct[class] != page {
            retire_page(heap, kh, page);
        }
    }
}

/// Give an empty page back to its segment, and an empty segment back to the heap's spare slot or
/// the global cache.
unsafe fn retire_page(heap: *mut Heap, kh: *mut KindHeap, page: *mut Page) {
    // SAFETY: owner-only; the page is empty, so no block of it is live or pending anywhere.
    unsafe {
        let class = (*page).class as usize;
        queue_unlink(&mut (*kh).queue[class], page);
        if (*kh).direct[class] == page {
            set_direct(kh, class, empty_page());
        }
        (*kh)
            .stats
            .carved
            .sub((*page).capacity as u64 * (*page).block_size as u64);
        if slab::release_page(page) {
            let seg = slab::segment_of(page.cast());
            segment_unlink(heap, seg);
            if (*heap).spare.is_null() {
                (*heap).spare = seg;
            } else {
                (*heap).seg_unmaps.add(1);
                ARENA.segment_free(seg.cast());
            }
        }
    }
}

/// A free of a block owned by another heap: add it to this thread's batch.
#[cold]
unsafe fn free_remote(owner: *mut Heap, b: *mut Block) {
    // SAFETY: `CUR` always points at a valid kind heap.
    if unsafe { (*CUR.get()).heap.is_null() } {
        // No heap, so no exit hook to flush a batch: publish at once.
        // SAFETY: `b` is a live block of `owner`, freed once.
        unsafe { publish(owner, b, b) };
        return;
    }
    PENDING.with(|p| {
        // SAFETY: the batch is this thread's alone and no other borrow of it is live; `b` is a
        // live block of `owner`, freed once.
        unsafe { (*p.get()).push(owner, b) }
    });
}

/// Publish this thread's batch of remote frees (slow path, thread exit).
fn flush_pending() {
    PENDING.with(|p| {
        // SAFETY: the batch is this thread's alone.
        let p = unsafe { &mut *p.get() };
        if p.count > 0 {
            p.flush();
        }
    });
}

/// Push the chain `head..=tail` onto `owner`'s delayed list with one CAS.
///
/// # Safety
/// The chain links live blocks of `owner`'s pages, each freed exactly once.
unsafe fn publish(owner: *mut Heap, head: *mut Block, tail: *mut Block) {
    // SAFETY: heaps are never freed, so `owner` stays valid; the chain is ours until the CAS.
    unsafe {
        let delayed = &(*owner).delayed;
        let mut cur = delayed.load(Ordering::Relaxed);
        loop {
            (*tail).next = cur;
            match delayed.compare_exchange_weak(cur, head, Ordering::Release, Ordering::Relaxed) {
                Ok(_) => break,
                Err(actual) => cur = actual,
            }
        }
    }
}

/// Free, as the owner, the blocks other threads freed.
unsafe fn drain_delayed(heap: *mut Heap) {
    // SAFETY: owner-only; the swapped-out list is exclusively ours and its blocks are live blocks
    // of this heap's pages.
    unsafe {
        let delayed = &(*heap).delayed;
        if delayed.load(Ordering::Relaxed).is_null() {
            return;
        }
        let mut b = delayed.swap(ptr::null_mut(), Ordering::Acquire);
        while !b.is_null() {
            let next = (*b).next;
            let seg = slab::segment_of(b.cast());
            free_to_page(heap, slab::page_of(seg, b.cast()), b);
            b = next;
        }
    }
}

/// Take a page for (kind, class) from the heap's segments, its spare, the global cache or the OS.
unsafe fn new_page(heap: *mut Heap, kind: u8, class: usize) -> *mut Page {
    // SAFETY: owner-only access to the heap's segment list.
    unsafe {
        let mut s = (*heap).segments;
        while !s.is_null() {
            if (*s).free_mask != 0 {
                return slab::take_page(s, kind, class);
            }
            s = (*s).next;
        }
        let seg = if !(*heap).spare.is_null() {
            core::mem::replace(&mut (*heap).spare, ptr::null_mut())
        } else {
            (*heap).seg_maps.add(1);
            ARENA.segment_alloc(SEGMENT_SIZE).cast::<Segment>()
        };
        if seg.is_null() {
            return ptr::null_mut();
        }
        slab::init_segment(seg, heap);
        (*seg).next = (*heap).segments;
        (*heap).segments = seg;
        slab::take_page(seg, kind, class)
    }
}

unsafe fn segment_unlink(heap: *mut Heap, seg: *mut Segment) {
    // SAFETY: owner-only; `seg` is on the heap's list.
    unsafe {
        let mut pp: *mut *mut Segment = &mut (*heap).segments;
        while !(*pp).is_null() {
            if *pp == seg {
                *pp = (*seg).next;
                (*seg).next = ptr::null_mut();
                return;
            }
            pp = &mut (**pp).next;
        }
    }
}

unsafe fn queue_push(head: &mut *mut Page, p: *mut Page) {
    // SAFETY: owner-only list manipulation.
    unsafe {
        (*p).prev = ptr::null_mut();
        (*p).next = *head;
        if !(*head).is_null() {
            (**head).prev = p;
        }
        *head = p;
    }
}

unsafe fn queue_unlink(head: &mut *mut Page, p: *mut Page) {
    // SAFETY: owner-only; `p` is on the list headed by `head`.
    unsafe {
        let (prev, next) = ((*p).prev, (*p).next);
        if prev.is_null() {
            *head = next;
        } else {
            (*prev).next = next;
        }
        if !next.is_null() {
            (*next).prev = prev;
        }
        (*p).next = ptr::null_mut();
        (*p).prev = ptr::null_mut();
    }
}

// ---------------------------------------------------------------------------------------------
// Thread start and exit, heap registry, fork
// ---------------------------------------------------------------------------------------------

/// Every heap ever created: a push-only list. Heaps are never freed, so a pointer read from it
/// stays valid; a heap whose thread exited is adopted by the next new thread, live blocks, pending
/// remote frees and all.
pub(crate) struct Registry {
    head: AtomicPtr<Heap>,
}

impl Registry {
    #[cfg(not(loom))]
    const fn new() -> Self {
        Self {
            head: AtomicPtr::new(ptr::null_mut()),
        }
    }
    #[cfg(loom)]
    pub(crate) fn new() -> Self {
        Self {
            head: AtomicPtr::new(ptr::null_mut()),
        }
    }

    /// Adopt an abandoned heap, or map and register a new one. Null when the OS refuses memory.
    pub(crate) fn acquire(&self) -> *mut Heap {
        let mut h = self.head.load(Ordering::Acquire);
        while !h.is_null() {
            // SAFETY: heaps on the registry are never freed.
            let heap = unsafe { &*h };
            // The Acquire on success pairs with the Release in `abandon`: the previous owner's
            // writes to the heap happen before ours.
            if !heap.in_use.load(Ordering::Relaxed)
                && heap
                    .in_use
                    .compare_exchange(false, true, Ordering::Acquire, Ordering::Relaxed)
                    .is_ok()
            {
                return h;
            }
            h = heap.next_heap;
        }
        let len = core::mem::size_of::<Heap>().div_ceil(os::PAGE) * os::PAGE;
        let h = os::map(len).cast::<Heap>();
        if h.is_null() {
            return h;
        }
        // SAFETY: a fresh, zeroed mapping large enough for a heap; zero is a valid starting state
        // for every plain field. The direct pages, back pointers and atomics are written here,
        // before publication (atomics with `write`: loom's are not valid as zero bytes).
        unsafe {
            for k in 0..NUM_KINDS {
                let kh = ptr::addr_of_mut!((*h).kinds[k]);
                (*kh).direct = [empty_page(); NUM_SMALL];
                (*kh).heap = h;
                (*kh).kind = k as u8;
            }
            ptr::addr_of_mut!((*h).delayed)
                .write(CachePadded::new(AtomicPtr::new(ptr::null_mut())));
            ptr::addr_of_mut!((*h).in_use).write(AtomicBool::new(true));
            let mut head = self.head.load(Ordering::Relaxed);
            loop {
                (*h).next_heap = head;
                match self
                    .head
                    .compare_exchange_weak(head, h, Ordering::Release, Ordering::Relaxed)
                {
                    Ok(_) => break,
                    Err(actual) => head = actual,
                }
            }
        }
        h
    }
}

shared_static! {
    static HEAPS: Registry = Registry::new();
}

shared_static! {
    /// The thread-exit key (0 until created; `usize::MAX` if none could be created).
    static EXIT_KEY: AtomicUsize = AtomicUsize::new(0);
}
shared_static! {
    static EXIT_KEY_LOCK: SpinLock<()> = SpinLock::new(());
}

/// Give the calling thread a heap: adopt an abandoned one or map a new one. Returns null when the
/// OS refuses memory.
#[cold]
unsafe fn init_thread() -> *mut Heap {
    crate::global::ensure_process_init();
    let heap = HEAPS.acquire();
    if heap.is_null() {
        return heap;
    }
    let key = exit_key();
    if key != usize::MAX {
        os::thread_key_set(key as u32, heap.cast());
    }
    // SAFETY: the heap is ours now.
    CUR.set(unsafe { ptr::addr_of_mut!((*heap).kinds[TAG.get() as usize]) });
    heap
}

fn exit_key() -> usize {
    let mut k = EXIT_KEY.load(Ordering::Acquire);
    if k == 0 {
        k = EXIT_KEY_LOCK.with(|_| {
            let k = EXIT_KEY.load(Ordering::Acquire);
            if k != 0 {
                return k;
            }
            // Key 0 is a valid pthread key; store keys shifted by one so 0 means "not yet".
            let k = match os::thread_key_create(on_thread_exit) {
                Some(k) => k as usize + 1,
                None => usize::MAX,
            };
            EXIT_KEY.store(k, Ordering::Release);
            k
        });
    }
    if k == usize::MAX {
        k
    } else {
        k - 1
    }
}

/// Thread-exit destructor: publish the thread's batch of remote frees, then abandon its heap.
unsafe extern "C" fn on_thread_exit(arg: *mut libc::c_void) {
    flush_pending();
    CUR.set(&EMPTY_KIND_HEAP as *const ReadOnly<KindHeap> as *mut KindHeap);
    // SAFETY: the heap was this thread's; from now on this thread allocates through a new heap
    // (acquired again if a later destructor allocates), so nothing else touches this one.
    unsafe { abandon(arg.cast::<Heap>()) }
}

/// Leave a heap for another thread to adopt: take back its remote frees, return its empty pages
/// and spare segment, then mark it free. Other threads may go on freeing its blocks meanwhile;
/// those frees wait on its delayed list for the adopter.
///
/// # Safety
/// The calling thread owns `heap` and touches it no more after this call.
pub(crate) unsafe fn abandon(heap: *mut Heap) {
    // SAFETY: owner-only access until the final store hands the heap over.
    unsafe {
        drain_delayed(heap);
        (*heap).hot.flush();
        for k in 0..NUM_KINDS {
            let kh = ptr::addr_of_mut!((*heap).kinds[k]);
            for class in 0..NUM_SMALL {
                set_direct(kh, class, empty_page());
                let mut p = (*kh).queue[class];
                while !p.is_null() {
                    let next = (*p).next;
                    if (*p).used == 0 {
                        retire_page(heap, kh, p);
                    }
                    p = next;
                }
            }
        }
        let spare = core::mem::replace(&mut (*heap).spare, ptr::null_mut());
        if !spare.is_null() {
            (*heap).seg_unmaps.add(1);
            ARENA.segment_free(spare.cast());
        }
        // Release: everything above happens before the adopter's Acquire in `acquire`.
        (*heap).in_use.store(false, Ordering::Release);
    }
}

/// Take every lock of the small path (fork preparation).
pub(crate) fn lock_all() {
    EXIT_KEY_LOCK.raw_lock();
}

/// Release what `lock_all` took.
pub(crate) fn unlock_all() {
    EXIT_KEY_LOCK.raw_unlock();
}

// ---------------------------------------------------------------------------------------------
// Model-checking hooks (loom builds only): the owner and remote paths above, with the heap and
// the batch passed explicitly instead of found through thread-locals.
// ---------------------------------------------------------------------------------------------

/// Allocate as the owner of `heap`: the fast pop, else the slow path proper.
///
/// # Safety
/// The calling thread owns `heap`; `kind < NUM_KINDS`, `class < NUM_SMALL`.
#[cfg(loom)]
pub(crate) unsafe fn model_alloc(heap: *mut Heap, kind: usize, class: usize) -> *mut u8 {
    // SAFETY: the caller owns the heap.
    unsafe {
        let kh = ptr::addr_of_mut!((*heap).kinds[kind]);
        let b = pop_direct(kh, class);
        if !b.is_null() {
            return b;
        }
        refill(kh, class)
    }
}

/// Free as a thread owning `me` (or no heap), batching remote frees in `batch`: the branch of
/// `free_small` with the thread-locals made explicit.
///
/// # Safety
/// `p` is a live small block; the calling thread owns `me` if it is not null.
#[cfg(loom)]
pub(crate) unsafe fn model_free(me: *mut Heap, batch: &mut Pending, p: *mut u8) {
    // SAFETY: as in `free_small`.
    unsafe {
        let seg = slab::segment_of(p);
        let b = p.cast::<Block>();
        if !me.is_null() && (*seg).owner == me {
            free_to_page(me, slab::page_of(seg, p), b);
        } else {
            batch.push((*seg).owner, b);
        }
    }
}

/// Take back the remote frees waiting for `heap` (the start of every slow path).
///
/// # Safety
/// The calling thread owns `heap`.
#[cfg(loom)]
pub(crate) unsafe fn model_collect(heap: *mut Heap) {
    // SAFETY: the caller owns the heap.
    unsafe { drain_delayed(heap) }
}

/// What a quiescent heap holds, summed over its pages.
#[cfg(loom)]
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Census {
    /// Blocks handed out and not seen freed by the owner (live, or waiting on the delayed list).
    pub used: usize,
    /// Blocks on the pages' free lists.
    pub free: usize,
    /// Blocks carved so far.
    pub carved: usize,
    /// Blocks on the heap's delayed list.
    pub delayed: usize,
    /// Pages in use.
    pub pages: usize,
    /// Segments owned (the spare included).
    pub segments: usize,
    /// Allocations and owner-seen frees counted by the statistics (all kinds and classes).
    pub allocs: u64,
    /// See `allocs`.
    pub frees: u64,
}

/// Count what `heap` holds and check its structure: each page's `used + |free| == carved`, free
/// and delayed blocks inside their pages and never listed twice, every page in use on exactly one
/// of its kind heap's lists. Panics (it is a model's assertion) on a violation.
///
/// # Safety
/// No thread touches `heap` during the call.
#[cfg(loom)]
pub(crate) unsafe fn model_census(heap: *mut Heap) -> Census {
    use std::collections::HashSet;
    let mut c = Census::default();
    let mut seen: HashSet<usize> = HashSet::new();
    let mut listed: HashSet<usize> = HashSet::new();
    // SAFETY: the heap is quiescent (the caller's contract), so every list is stable.
    unsafe {
        for kh in &(*heap).kinds {
            for class in 0..NUM_SMALL {
                for head in [kh.queue[class], kh.full[class]] {
                    let mut p = head;
                    while !p.is_null() {
                        assert!(listed.insert(p as usize), "page {p:p} listed twice");
                        assert_eq!((*p).class as usize, class, "page on another class's list");
                        p = (*p).next;
                    }
                }
            }
        }
        let mut seg = (*heap).segments;
        while !seg.is_null() {
            c.segments += 1;
            for (i, page) in (*seg).pages.iter_mut().enumerate().skip(1) {
                let page = page as *mut Page;
                if !(*page).in_use {
                    continue;
                }
                assert!(
                    (*seg).free_mask & (1 << i) == 0,
                    "page {i} in use but marked free"
                );
                assert!(listed.remove(&(page as usize)), "page in use on no list");
                c.pages += 1;
                let start = slab::page_start(page) as usize;
                let bs = (*page).block_size as usize;
                let mut free = 0;
                let mut b = (*page).free;
                while !b.is_null() {
                    let a = b as usize;
                    assert!(seen.insert(a), "block {a:#x} on a free list twice");
                    assert!(a >= start && (a - start) % bs == 0, "foreign block {a:#x}");
                    assert!(
                        (a - start) / bs < (*page).capacity as usize,
                        "uncarved block"
                    );
                    free += 1;
                    b = (*b).next;
                }
                assert_eq!(
                    (*page).used as usize + free,
                    (*page).capacity as usize,
                    "page {i}: used + free != carved"
                );
                c.used += (*page).used as usize;
                c.free += free;
                c.carved += (*page).capacity as usize;
            }
            seg = (*seg).next;
        }
        assert!(listed.is_empty(), "a listed page is not in use");
        for kh in &(*heap).kinds {
            c.allocs += kh.stats.allocs.iter().map(Stat::get).sum::<u64>();
        }
        c.frees = (*heap).frees.iter().map(Stat::get).sum::<u64>();
        if !(*heap).spare.is_null() {
            c.segments += 1;
        }
        let mut b = (*heap).delayed.load(Ordering::Acquire);
        while !b.is_null() {
            assert!(
                seen.insert(b as usize),
                "delayed block {b:p} also free or listed twice"
            );
            assert_eq!(
                (*slab::segment_of(b.cast())).owner,
                heap,
                "delayed block of another heap"
            );
            c.delayed += 1;
            b = (*b).next;
        }
    }
    c
}

/// Unmap every heap of `reg` and return their segments to the arena (end of a model; the
/// arena itself goes with the model's execution).
///
/// # Safety
/// No block of these heaps is in use and no thread touches them any more.
#[cfg(loom)]
pub(crate) unsafe fn model_release(reg: &Registry) {
    let len = core::mem::size_of::<Heap>().div_ceil(os::PAGE) * os::PAGE;
    let mut h = reg.head.load(Ordering::Acquire);
    // SAFETY: the heaps and their segments are unused (the caller's contract).
    unsafe {
        while !h.is_null() {
            let next = (*h).next_heap;
            let mut seg = (*h).segments;
            while !seg.is_null() {
                let n = (*seg).next;
                ARENA.segment_free(seg.cast());
                seg = n;
            }
            if !(*h).spare.is_null() {
                ARENA.segment_free((*h).spare.cast());
            }
            os::unmap(h.cast(), len);
            h = next;
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Queries
// ---------------------------------------------------------------------------------------------

/// Small-block counters of `kind` summed over every thread heap (live and abandoned), and the
/// segments mapped and unmapped by all heaps. Reads other threads' counters with relaxed loads:
/// each value is one the owner wrote, the sum a moment's view.
pub(crate) fn small_totals(kind: usize) -> (HeapPart, u64, u64) {
    let mut t = HeapPart::default();
    let (mut maps, mut unmaps) = (0, 0);
    let mut h = HEAPS.head.load(Ordering::Acquire);
    while !h.is_null() {
        // SAFETY: heaps on the registry are never freed. Only the counters (atomics) are
        // borrowed, never the heap, whose other fields its owner may be writing; `next_heap` was
        // set before publication and never changes.
        unsafe {
            let st = &*ptr::addr_of!((*h).kinds[kind].stats);
            let frees = &*ptr::addr_of!((*h).frees);
            for c in 0..NUM_SMALL {
                let (a, f) = (st.allocs[c].get(), frees[kind * NUM_SMALL + c].get());
                let size = crate::class::small_size(c) as u64;
                t.requests += a;
                t.granted += a * size;
                t.freed += f * size;
            }
            let hot = &*ptr::addr_of!((*h).hot.counters[kind]);
            t.hot_bytes += hot.bytes.get();
            t.hot_hits += hot.hits.get();
            t.hot_requested += hot.requested.get();
            t.hot_granted += hot.granted.get();
            t.carved += st.carved.get();
            t.new_pages += st.new_pages.get();
            maps += (*ptr::addr_of!((*h).seg_maps)).get();
            unmaps += (*ptr::addr_of!((*h).seg_unmaps)).get();
            h = ptr::addr_of!((*h).next_heap).read();
        }
    }
    (t, maps, unmaps)
}

/// Usable size of a live small block.
///
/// # Safety
/// `p` is a live small block in `seg`.
pub(crate) unsafe fn small_usable(seg: *mut Segment, p: *mut u8) -> usize {
    // SAFETY: the caller guarantees `p` is live.
    unsafe { (*slab::page_of(seg, p)).block_size as usize }
}

/// Kind index of a live small block.
///
/// # Safety
/// `p` is a live small block in `seg`.
pub(crate) unsafe fn small_kind(seg: *mut Segment, p: *mut u8) -> usize {
    // SAFETY: the caller guarantees `p` is live.
    unsafe { (*slab::page_of(seg, p)).kind as usize }
}

/// The small class for a request, or `None` if it takes the large path.
#[inline(always)]
pub(crate) fn class_for(size: usize, align: usize) -> Option<usize> {
    // `size + align - 1` cannot overflow for a valid Layout (size <= isize::MAX - (align - 1)).
    let rounded = (size + align - 1) & !(align - 1);
    if rounded <= crate::class::SMALL_MAX {
        Some(small_class(rounded))
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::class::small_size;

    #[test]
    fn class_for_respects_alignment_and_limits() {
        assert_eq!(class_for(1, 1).map(small_size), Some(8));
        assert_eq!(class_for(65, 8).map(small_size), Some(128));
        assert_eq!(class_for(1, 4096).map(small_size), Some(4096));
        assert_eq!(class_for(16384, 8).map(small_size), Some(16384));
        assert_eq!(class_for(16385, 8), None);
        assert_eq!(class_for(8, 32768), None);
    }
}
