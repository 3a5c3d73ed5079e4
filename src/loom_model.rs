//! Hidden entry points to the concurrent core for the loom models in `loom-tests/` (built only
//! with `--cfg loom`; not part of the public API).
//!
//! The models drive the real code: the remote-free batches and delayed lists, heap adoption and
//! abandonment, the per-kind large pools with eviction, recycling and trim, the handles' limit
//! accounts and the spin lock. What the global allocator finds through thread-locals (the calling
//! thread's heap and batch) is passed explicitly here, because a model's threads are loom's
//! threads, not the OS threads the thread-locals belong to. Every structure is built fresh per
//! model execution, never taken from the process-wide statics.

use crate::class::large_size;
use crate::pool::large::{LargeHeader, LargePools};
use crate::pool::slab;
use crate::sync::RawSpinLock;
use crate::tcache::{self, Heap, Pending};

pub use crate::pool::large::KindCensus;
pub use crate::tcache::Census;

/// The size class of a small request of `size` bytes (alignment 8).
fn small_class(size: usize) -> usize {
    tcache::class_for(size, 8).expect("a small size")
}

/// A registry of thread heaps, as the allocator's process-wide one. Dropping it unmaps every heap
/// and segment it made, so all blocks must be freed (or forgotten) first.
pub struct Registry(tcache::Registry);

impl Registry {
    /// An empty registry.
    #[allow(clippy::new_without_default)]
    pub fn new() -> Self {
        Self(tcache::Registry::new())
    }

    /// Adopt an abandoned heap or make a new one, as a starting thread does.
    pub fn acquire(&self) -> HeapRef {
        let h = self.0.acquire();
        assert!(!h.is_null(), "the OS refused a heap");
        HeapRef(h)
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        // A failed model's blocks may still be in use, and loom's types cannot be used while it
        // unwinds: leak.
        if std::thread::panicking() {
            return;
        }
        // SAFETY: the model is over: its threads are joined and its blocks freed.
        unsafe { tcache::model_release(&self.0) }
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
    /// Allocate a small block of `size` bytes under `kind` (owner only): the fast pop, else the
    /// slow path, which first takes back the blocks other threads freed.
    ///
    /// # Safety
    /// The calling thread owns the heap.
    pub unsafe fn alloc(self, kind: usize, size: usize) -> *mut u8 {
        // SAFETY: forwarded contract.
        unsafe { tcache::model_alloc(self.0, kind, small_class(size)) }
    }

    /// Free `p` as the thread owning this heap: a local free if the heap owns `p`, else into
    /// `batch`.
    ///
    /// # Safety
    /// The calling thread owns the heap; `p` is a live small block, freed once.
    pub unsafe fn free(self, batch: &mut RemoteBatch, p: *mut u8) {
        // SAFETY: forwarded contract.
        unsafe { tcache::model_free(self.0, &mut batch.0, p) }
    }

    /// Take back the blocks other threads freed (owner only).
    ///
    /// # Safety
    /// The calling thread owns the heap.
    pub unsafe fn collect(self) {
        // SAFETY: forwarded contract.
        unsafe { tcache::model_collect(self.0) }
    }

    /// Leave the heap for adoption, as a thread's exit does.
    ///
    /// # Safety
    /// The calling thread owns the heap and uses it no more.
    pub unsafe fn abandon(self) {
        // SAFETY: forwarded contract.
        unsafe { tcache::abandon(self.0) }
    }

    /// Count and check what the heap holds (panics on a broken invariant).
    ///
    /// # Safety
    /// No thread uses the heap during the call.
    pub unsafe fn census(self) -> Census {
        // SAFETY: forwarded contract.
        unsafe { tcache::model_census(self.0) }
    }

    /// The heap owning small block `p`.
    ///
    /// # Safety
    /// `p` is a live small block.
    pub unsafe fn owner_of(p: *mut u8) -> HeapRef {
        // SAFETY: a live small block's segment header names its owner.
        HeapRef(unsafe { (*slab::segment_of(p)).owner })
    }
}

/// A thread's batch of frees of other heaps' blocks.
pub struct RemoteBatch(Pending);

impl RemoteBatch {
    /// An empty batch.
    #[allow(clippy::new_without_default)]
    pub fn new() -> Self {
        Self(Pending::new())
    }

    /// Free `p`, owned by another heap, into the batch (as a thread with no heap of its own).
    ///
    /// # Safety
    /// `p` is a live small block, freed once.
    pub unsafe fn free(&mut self, p: *mut u8) {
        // SAFETY: forwarded contract (a null heap owns nothing).
        unsafe { tcache::model_free(core::ptr::null_mut(), &mut self.0, p) }
    }

    /// Publish the batch to the blocks' owners.
    pub fn flush(&mut self) {
        self.0.flush();
    }
}

/// A set of per-kind large-block pools, as the allocator's process-wide one.
pub struct LargePool(LargePools);

impl LargePool {
    /// Pools whose kinds all have soft capacity `capacity` bytes.
    pub fn new(capacity: usize) -> Self {
        Self(LargePools::new(capacity))
    }

    /// The class size a request of `size` bytes is served with.
    pub fn class_size(size: usize) -> usize {
        large_size(size).expect("a large size")
    }

    /// Allocate `size` bytes (above the small classes) of `kind`, 64-aligned; null on failure.
    pub fn alloc(&self, kind: usize, size: usize) -> *mut u8 {
        match large_size(size) {
            Some(class_bytes) => self.0.alloc(kind, size, class_bytes, 64),
            None => core::ptr::null_mut(),
        }
    }

    /// Free a block of these pools.
    ///
    /// # Safety
    /// `p` is a live block of these pools, freed once.
    pub unsafe fn free(&self, p: *mut u8) {
        // SAFETY: a large block's header is the segment below its first byte.
        unsafe { self.0.free(slab::segment_of(p).cast::<LargeHeader>()) }
    }

    /// Release every cached block; returns the bytes released.
    pub fn trim(&self) -> usize {
        self.0.trim()
    }

    /// Set one kind's soft capacity.
    pub fn set_capacity(&self, kind: usize, bytes: usize) {
        self.0.set_capacity(kind, bytes);
    }

    /// Check every kind's lists and return their contents and counters (panics on a broken
    /// invariant).
    pub fn census(&self) -> Vec<KindCensus> {
        self.0.census()
    }
}

impl Drop for LargePool {
    fn drop(&mut self) {
        if std::thread::panicking() {
            return;
        }
        self.0.trim();
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
