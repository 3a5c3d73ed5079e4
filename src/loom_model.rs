//! Hidden entry points to the concurrent core for the loom models in `loom-tests/` (built only
//! with `--cfg loom`; not part of the public API): the bridge between the models and the
//! allocator's internals, so that no production file carries model hooks.
//!
//! The models drive the real code: remote frees onto pages (batched per page, with the
//! full-page notice), the owner's refills and collection, heap adoption and abandonment, the
//! extent arena (first fit, coalescing, per-kind shares, capacity purges, decay purges outside
//! the lock, trim), the handles' limit accounts and the spin lock. What the global allocator
//! finds through thread-locals (the calling thread's heap and batch) is passed explicitly here,
//! because a model's threads are loom's threads, not the OS threads the thread-locals belong to.
//! Every structure is built fresh per model execution, never taken from the process-wide
//! statics.

use crate::class::class_for;
use crate::heap::registry::{self, heap_bytes};
use crate::heap::remote::Batch;
use crate::heap::types::Heap;
use crate::heap::{census, pages, pop};
use crate::os;
use crate::pool::large::{Arena, ARENA, AUTO};
use crate::pool::slab::{self, Block};
use crate::stats::{ArenaCounters, LargeCounters};
use crate::sync::{Ordering, RawSpinLock};

pub use crate::heap::census::Census;
pub use crate::pool::large::Census as ArenaCensus;

/// The size class of a small request of `size` bytes (alignment 8).
fn small_class(size: usize) -> usize {
    class_for(size, 8).expect("a small size")
}

/// A registry of thread heaps, as the allocator's process-wide one. Dropping it unmaps every heap
/// and gives every segment it made back to the arena, so all blocks must be freed (or forgotten)
/// first.
pub struct Registry(registry::Registry);

impl Registry {
    /// An empty registry.
    #[allow(clippy::new_without_default)]
    pub fn new() -> Self {
        Self(registry::Registry::new())
    }

    /// Adopt an abandoned heap or make a new one, as a starting thread does.
    pub fn acquire(&self) -> HeapRef {
        let h = self.0.acquire();
        assert!(!h.is_null(), "the OS refused a heap");
        HeapRef(h)
    }

    /// A reclaimer's look at time `now` (ns): every heap's cache of large blocks that no thread
    /// is inside and that has been idle `idle` ns (`None`: every such cache) goes back to the
    /// arena, as a thread whose cache cannot grow, `trim` and a failing request do. The claims
    /// on the caches' shared total it freed (bytes).
    pub fn reclaim(&self, now: u64, idle: Option<u64>) -> usize {
        crate::heap::idle::reclaim(&self.0, now, idle)
    }
}

/// Set the thread caches' limit (bytes each) and the cores sharing the last-level cache (their
/// shared total is the limit times the cores), as configuration does.
pub fn set_thread_cache(limit: usize, cores: usize) {
    crate::heap::hot::set_limit(limit, 0, cores);
}

/// What the thread caches have claimed of their shared total, together.
pub fn thread_caches_claimed() -> usize {
    crate::heap::hot::claimed()
}

/// A large block of `size` bytes of `kind` from the process's arena, 64-aligned.
pub fn large_alloc(kind: usize, size: usize) -> *mut u8 {
    let e = ARENA.alloc(kind, size, 64);
    assert!(!e.is_null(), "the OS refused a block");
    // SAFETY: a live block's descriptor.
    unsafe { crate::pool::large::start(e) }
}

/// Free a block `large_alloc` made (panics if `p` is not a live one).
///
/// # Safety
/// `p` is a live block, freed once.
pub unsafe fn large_free(p: *mut u8) {
    let e = ARENA.lookup(p);
    assert!(!e.is_null(), "{p:p} is not a live block");
    // SAFETY: the caller's contract.
    unsafe { ARENA.free(e) }
}

/// The process's arena checked (panics on a broken invariant): its live bytes.
pub fn large_live() -> usize {
    ARENA.census().live
}

impl Drop for Registry {
    fn drop(&mut self) {
        // A failed model's blocks may still be in use, and loom's types cannot be used while it
        // unwinds: leak.
        if std::thread::panicking() {
            return;
        }
        let mut h = self.0.head.load(Ordering::Acquire);
        // SAFETY: the model is over: its threads are joined and its blocks freed, so no heap or
        // segment is in use.
        unsafe {
            while !h.is_null() {
                let next = (*h).next_heap;
                let mut seg = (*h).segments;
                while !seg.is_null() {
                    let n = (*seg).next;
                    ARENA.segment_free(seg.cast(), false);
                    seg = n;
                }
                if !(*h).spare.is_null() {
                    ARENA.segment_free((*h).spare.cast(), false);
                }
                os::unmap(h.cast(), heap_bytes());
                h = next;
            }
        }
    }
}

/// A thread heap. The methods marked owner-only must be called by the one thread that acquired
/// it (and has not abandoned it).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HeapRef(*mut Heap);

// SAFETY: a heap is never freed while its registry lives, and the owner-only contract of the
// methods below is what makes access exclusive, as in the allocator.
unsafe impl Send for HeapRef {}
// SAFETY: as above.
unsafe impl Sync for HeapRef {}

impl HeapRef {
    /// Allocate a small block of `size` bytes under `kind` (owner only): the fast pop from the
    /// direct page, else the slow path proper (`pages::refill`), which takes back full pages
    /// other threads freed into and collects a dry page's remote frees.
    ///
    /// # Safety
    /// The calling thread owns the heap.
    pub unsafe fn alloc(self, kind: usize, size: usize) -> *mut u8 {
        let class = small_class(size);
        // SAFETY: the calling thread owns the heap, so its direct pages and their free lists.
        unsafe {
            let kh = core::ptr::addr_of_mut!((*self.0).kinds[kind]);
            let b = pop((*kh).direct[class]);
            if !b.is_null() {
                return b;
            }
            let page = pages::refill(kh, class);
            assert!(!page.is_null(), "the OS refused a segment");
            pop(page)
        }
    }

    /// Free `p` as the thread owning this heap: a local free if the heap owns `p`, else into
    /// `batch`, as `heap::free_small` does.
    ///
    /// # Safety
    /// The calling thread owns the heap; `p` is a live small block, freed once.
    pub unsafe fn free(self, batch: &mut RemoteBatch, p: *mut u8) {
        // SAFETY: `p` is live, so its segment and page are; the page is this thread's to touch
        // only if this heap owns it.
        unsafe {
            let seg = slab::segment_of(p);
            let page = slab::page_of(seg, p);
            if (*seg).owner == self.0.cast() {
                crate::heap::free_owned(seg, page, p.cast::<Block>());
            } else {
                crate::heap::remote::check_remote(page, p.cast::<Block>());
                batch.0.push(page, p.cast::<Block>());
            }
        }
    }

    /// Take back every remote free and give empty pages back (owner only), as thread exit and
    /// `trim` do.
    ///
    /// # Safety
    /// The calling thread owns the heap.
    pub unsafe fn collect(self) {
        // SAFETY: the calling thread owns the heap.
        unsafe { pages::collect_all(self.0) }
    }

    /// Leave the heap for adoption, as a thread's exit does.
    ///
    /// # Safety
    /// The calling thread owns the heap and uses it no more.
    pub unsafe fn abandon(self) {
        // SAFETY: the calling thread owns the heap and leaves it.
        unsafe { registry::abandon(self.0) }
    }

    /// Count and check what the heap holds (panics on a broken invariant).
    ///
    /// # Safety
    /// The calling thread owns the heap, or no thread uses it during the call.
    pub unsafe fn census(self) -> Census {
        // SAFETY: the census' own contract, which is the caller's.
        unsafe { census::census(self.0) }
    }

    /// Free the large block `p` into the heap's cache of large blocks, as its owner's free does
    /// (`heap::hot_put`): whether the cache took it (if not, the caller frees it with
    /// `large_free`).
    ///
    /// # Safety
    /// The calling thread owns the heap; `p` is a live block from `large_alloc` it holds, freed
    /// by this call if it returns true.
    pub unsafe fn cache_put(self, p: *mut u8) -> bool {
        let e = ARENA.lookup(p);
        assert!(!e.is_null(), "{p:p} is not a live block");
        // SAFETY: the caller's contract.
        unsafe { crate::heap::put_cached(self.0, e, crate::heap::hot::limit()) }
    }

    /// A block of `kind` for `size` bytes from the heap's cache, as its owner's allocation does
    /// (`heap::hot_take`): null if none fits or a reclaimer is inside the cache.
    ///
    /// # Safety
    /// The calling thread owns the heap.
    pub unsafe fn cache_take(self, kind: usize, size: usize) -> *mut u8 {
        // SAFETY: the caller's contract.
        let e = unsafe { crate::heap::take_cached(self.0, kind, size, 64) };
        if e.is_null() {
            return core::ptr::null_mut();
        }
        // SAFETY: a block taken from the cache is live and the caller's.
        unsafe { crate::pool::large::start(e) }
    }

    /// The bytes in the heap's cache of large blocks and its claim on the shared total, read
    /// through the cache's gate (`None`: another thread is inside), and the cached bytes its
    /// per-kind counters say, read without the gate.
    pub fn cache_bytes(self) -> (Option<(usize, usize)>, u64) {
        // SAFETY: heaps are never freed while their registry lives; the cache is reached
        // through its gate, the counters are atomics.
        let cache = unsafe { &*core::ptr::addr_of!((*self.0).hot) };
        let inside = cache.try_with(|c, _| (c.bytes(), c.claim()));
        (inside, cache.counters.iter().map(|c| c.bytes.get()).sum())
    }

    /// The heap owning small block `p`.
    ///
    /// # Safety
    /// `p` is a live small block.
    pub unsafe fn owner_of(p: *mut u8) -> HeapRef {
        // SAFETY: a live small block's segment header names its owner.
        HeapRef(unsafe { (*slab::segment_of(p)).owner.cast() })
    }
}

/// A thread's batch of frees of other heaps' blocks (one chain per destination page).
pub struct RemoteBatch(Batch);

impl RemoteBatch {
    /// An empty batch.
    #[allow(clippy::new_without_default)]
    pub fn new() -> Self {
        Self(Batch::new())
    }

    /// Free `p`, owned by another heap, into the batch (as a thread with no heap of its own).
    ///
    /// # Safety
    /// `p` is a live small block, freed once.
    pub unsafe fn free(&mut self, p: *mut u8) {
        // SAFETY: `p` is live, so its segment and page descriptor are.
        unsafe {
            let page = slab::page_of(slab::segment_of(p), p);
            crate::heap::remote::check_remote(page, p.cast::<Block>());
            self.0.push(page, p.cast::<Block>());
        }
    }

    /// Publish the batch onto the blocks' pages.
    pub fn flush(&mut self) {
        self.0.flush();
    }
}

/// An extent arena, as the allocator's process-wide one, built fresh for one model execution
/// (its chunks are unmapped when it is dropped). Decay starts off: models drive it with
/// `set_decay_ms` and `tick_at`, since loom does not model time.
pub struct LargePool(Arena);

/// What `LargePool::census` returns.
#[derive(Debug, Clone, Copy)]
pub struct PoolCensus {
    /// The arena's structure, checked (see `ArenaState::census`).
    pub census: ArenaCensus,
    /// Per-kind counters, `cached_bytes` filled in.
    pub kinds: [LargeCounters; crate::kind::NUM_KINDS],
    /// The arena's own counters.
    pub arena: ArenaCounters,
}

impl LargePool {
    /// An arena whose kinds all have soft capacity `capacity` bytes (`usize::MAX`: none).
    pub fn new(capacity: usize) -> Self {
        let a = Arena::new();
        a.with(|s| {
            s.capacity = [if capacity == usize::MAX {
                AUTO
            } else {
                capacity
            }; 6];
            s.decay.set_ms(-1);
        });
        Self(a)
    }

    /// Allocate `size` bytes (above the small classes) of `kind`, 64-aligned; null on failure.
    pub fn alloc(&self, kind: usize, size: usize) -> *mut u8 {
        self.0.alloc_block(kind, size, 64)
    }

    /// Free a block of this arena (panics if `p` is not one: the model's assertion).
    ///
    /// # Safety
    /// `p` is a live block of this arena, freed once.
    pub unsafe fn free(&self, p: *mut u8) {
        let e = self.0.lookup(p);
        assert!(!e.is_null(), "{p:p} is not a live block");
        // SAFETY: `e` is the live block at `p`, freed once (the caller's contract).
        unsafe { self.0.free(e) }
    }

    /// Grow or shrink the block at `p` in place; whether it could.
    ///
    /// # Safety
    /// `p` is a live block of this arena held by the caller.
    pub unsafe fn resize(&self, p: *mut u8, new_size: usize) -> bool {
        let e = self.0.lookup(p);
        assert!(!e.is_null(), "{p:p} is not a live block");
        // SAFETY: the caller's contract.
        unsafe { self.0.resize(e, p, new_size, false) }
    }

    /// Return every dirty page and unmap what is wholly free; the bytes purged.
    pub fn trim(&self) -> usize {
        self.0.trim()
    }

    /// Set one kind's soft capacity.
    pub fn set_capacity(&self, kind: usize, bytes: usize) {
        self.0.with(|s| s.capacity[kind] = bytes);
    }

    /// Set the decay time (milliseconds; negative: never).
    pub fn set_decay_ms(&self, ms: i64) {
        self.0.with(|s| s.decay.set_ms(ms));
    }

    /// Let decay run at time `t_ns` (purging what was idle a whole period, outside the lock).
    pub fn tick_at(&self, t_ns: u64) {
        self.0.tick_at(t_ns);
    }

    /// Check the arena's structure and return it with the counters (panics on a broken
    /// invariant).
    pub fn census(&self) -> PoolCensus {
        PoolCensus {
            census: self.0.census(),
            kinds: self.0.with(|s| s.kind_counters()),
            arena: self.0.with(|s| s.arena_counters()),
        }
    }
}

/// A kind's account of bytes held through limited handles.
pub struct Account(crate::handle::Account);

impl Account {
    /// An empty account.
    #[allow(clippy::new_without_default)]
    pub fn new() -> Self {
        Self(crate::handle::Account::new())
    }

    /// Charge `bytes` if the total stays within `limit`.
    pub fn charge(&self, bytes: usize, limit: usize) -> bool {
        self.0.charge(bytes, limit).is_ok()
    }

    /// Credit `bytes` back.
    pub fn credit(&self, bytes: usize) {
        self.0.credit(bytes);
    }

    /// Bytes held.
    pub fn held(&self) -> usize {
        self.0.held()
    }

    /// Charges refused.
    pub fn refused(&self) -> usize {
        self.0.refused()
    }
}

/// The allocator's spin-lock word (the algorithm `SpinLock` runs outside loom).
pub struct SpinFlag(RawSpinLock);

impl SpinFlag {
    /// An unlocked flag.
    #[allow(clippy::new_without_default)]
    pub fn new() -> Self {
        Self(RawSpinLock::new())
    }

    /// Acquire.
    pub fn lock(&self) {
        self.0.lock();
    }

    /// Release.
    pub fn unlock(&self) {
        self.0.unlock();
    }
}

/// A heap's return list of large blocks (`heap::returns`), over descriptors the model makes
/// (`new_block`): pushes by any thread, takes, closing and opening, as the allocator runs them.
pub struct ReturnList(crate::heap::returns::Returns);

/// What became of a pushed block (`ReturnList::push`).
#[derive(Debug)]
pub enum Pushed {
    /// On the list.
    Sent,
    /// The list was closed: the pusher keeps the block.
    Closed,
    /// The list was at its bound: the pusher took these blocks (the list's and its own) to free.
    Full(Vec<usize>),
}

/// A hot large-block descriptor of `bytes` (page multiple) and `kind`, for a return list; an
/// address of its own, never dereferenced as memory.
pub fn new_block(bytes: usize, kind: usize) -> usize {
    use crate::pool::large::{Extent, State};
    let mut e = Box::new(Extent::EMPTY);
    let base = &*e as *const Extent as usize;
    e.base = base;
    e.size = bytes;
    e.kind = kind as u8;
    e.start.store(base, core::sync::atomic::Ordering::Relaxed);
    e.set_state(State::Hot);
    Box::into_raw(e) as usize
}

/// Free a descriptor `new_block` made.
///
/// # Safety
/// `b` came from `new_block`, is on no list, and is freed once.
pub unsafe fn drop_block(b: usize) {
    // SAFETY: the caller's contract.
    drop(unsafe { Box::from_raw(b as *mut crate::pool::large::Extent) });
}

fn chain_to_vec(mut e: *mut crate::pool::large::Extent) -> Vec<usize> {
    let mut v = Vec::new();
    while !e.is_null() {
        v.push(e as usize);
        // SAFETY: a chain taken whole is the taker's.
        e = unsafe { crate::pool::large::returned_next(e) };
    }
    v
}

impl ReturnList {
    /// An open, empty list.
    #[allow(clippy::new_without_default)]
    pub fn new() -> Self {
        Self(crate::heap::returns::Returns::new())
    }

    /// Send block `b` back, keeping the list within `limit` bytes.
    ///
    /// # Safety
    /// `b` came from `new_block`, is held by the caller and on no list.
    pub unsafe fn push(&self, b: usize, limit: usize) -> Pushed {
        use crate::heap::returns::Push;
        let e = b as *mut crate::pool::large::Extent;
        // SAFETY: the caller's contract.
        let (_, _, bytes, kind) = unsafe { crate::pool::large::block_info(e) };
        // SAFETY: as above.
        match unsafe { self.0.push(e, bytes, kind, limit) } {
            Push::Sent => Pushed::Sent,
            Push::Closed => Pushed::Closed,
            Push::Full(chain) => Pushed::Full(chain_to_vec(chain)),
        }
    }

    /// Take every block on the list.
    pub fn take(&self) -> Vec<usize> {
        chain_to_vec(self.0.take())
    }

    /// Close the list; what was on it.
    pub fn close(&self) -> Vec<usize> {
        chain_to_vec(self.0.close())
    }

    /// Open a closed list.
    pub fn open(&self) {
        self.0.open();
    }

    /// Bytes the list counts as on it, all kinds.
    pub fn bytes(&self) -> u64 {
        (0..crate::kind::NUM_KINDS)
            .map(|k| self.0.kind_bytes(k))
            .sum()
    }
}
