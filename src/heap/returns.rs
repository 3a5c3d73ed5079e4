//! Large blocks on their way back to the thread that took them: a free by another thread is a
//! message to the block's owner, not a trip through the arena's lock.
//!
//! A thread that only frees what another allocates (a consumer of tensors a producer makes)
//! used to put each block into its own cache, which it never asks from, so the cache overflowed
//! into the arena while the producer missed its cache and took from the arena: every block
//! crossed the arena's lock twice, about 1,600 instructions a block (callgrind, `core` bench,
//! "producer/consumer to 64K"). mimalloc sends such frees to the owning page's list, snmalloc to
//! the owner's message queue; here the freeing thread pushes the block onto its owner heap's
//! return list (one compare-and-swap), and the owner takes the whole list in one swap when its
//! cache has no fit, into its cache.
//!
//! The list is a stack of hot descriptors linked through `Extent::returned_next`: pushes by
//! any thread, takes (all at once) by the owner, or by anyone draining a list its owner does not
//! (`trim`, a full list, an exiting owner). A swap that takes everything has no ABA problem.
//!
//! Bounds: a list holds at most the owner's cache limit in bytes; the pusher that would pass it
//! takes the whole list and frees it to the arena, so a thread that stops allocating (asleep,
//! or done) holds no more than its cache's share of the L3 budget in transit. A heap whose
//! thread exits closes its list (`CLOSED`), and pushes to it fail, so nothing waits on a heap
//! no thread will drain; its adopter opens it again.
//!
//! Invariant: `bytes == sum of kind_bytes == the held bytes of the blocks on the list`, except
//! while a push or take is between its two steps (a statistics read may see either side).

use crate::kind::NUM_KINDS;
use crate::pool::large::{self, Extent};
use crate::sync::{AtomicPtr, AtomicUsize, Ordering};
use core::ptr;

/// The head of a closed list: never a descriptor (they are 64-byte aligned).
const CLOSED: *mut Extent = ptr::without_provenance_mut(1);

/// A heap's return list (in a cache line of its own: other threads write it).
#[repr(C)]
pub(crate) struct Returns {
    head: AtomicPtr<Extent>,
    bytes: AtomicUsize,
    kind_bytes: [AtomicUsize; NUM_KINDS],
}

/// What became of a pushed block.
pub(crate) enum Push {
    /// On the owner's list.
    Sent,
    /// The owner's heap is closed: the caller keeps the block.
    Closed,
    /// The list would pass its bound: the caller frees this chain (the list's blocks, and the
    /// pushed one, linked through `returned_next`) to the arena.
    Full(*mut Extent),
}

impl Returns {
    /// An open, empty list (for a heap being made; loom's atomics cannot be zero bytes).
    pub(crate) fn new() -> Self {
        Self {
            head: AtomicPtr::new(ptr::null_mut()),
            bytes: AtomicUsize::new(0),
            kind_bytes: core::array::from_fn(|_| AtomicUsize::new(0)),
        }
    }

    /// Send the hot block `e` (holding `bytes`, of `kind`) back, keeping the list within
    /// `limit` bytes.
    ///
    /// # Safety
    /// `e` is a hot block the caller holds, on no list.
    pub(crate) unsafe fn push(
        &self,
        e: *mut Extent,
        bytes: usize,
        kind: usize,
        limit: usize,
    ) -> Push {
        let mut head = self.head.load(Ordering::Relaxed);
        if head == CLOSED {
            return Push::Closed;
        }
        if self.bytes.load(Ordering::Relaxed) + bytes > limit {
            let chain = self.take();
            // SAFETY: the caller's contract; `chain` is now ours.
            unsafe { large::set_returned_next(e, chain) };
            return Push::Full(e);
        }
        self.bytes.fetch_add(bytes, Ordering::Relaxed);
        self.kind_bytes[kind].fetch_add(bytes, Ordering::Relaxed);
        loop {
            if head == CLOSED {
                self.uncount(bytes, kind);
                return Push::Closed;
            }
            // SAFETY: the caller's contract: the block is ours until the exchange publishes it.
            unsafe { large::set_returned_next(e, head) };
            // Release: the link (and the block's state) happen before the taker's Acquire.
            match self
                .head
                .compare_exchange_weak(head, e, Ordering::Release, Ordering::Relaxed)
            {
                Ok(_) => return Push::Sent,
                Err(h) => head = h,
            }
        }
    }

    /// Take every block on the list (linked through `returned_next`; null if none). Blocks
    /// taken no longer count as on the list.
    pub(crate) fn take(&self) -> *mut Extent {
        let mut head = self.head.load(Ordering::Relaxed);
        loop {
            if head.is_null() || head == CLOSED {
                return ptr::null_mut();
            }
            // An exchange, not a swap: a swap could take `CLOSED` from a list closed meanwhile
            // and open it. (A head that left and came back is harmless: the chain taken is the
            // list as it is now.)
            match self.head.compare_exchange_weak(
                head,
                ptr::null_mut(),
                Ordering::Acquire,
                Ordering::Relaxed,
            ) {
                Ok(_) => break,
                Err(h) => head = h,
            }
        }
        self.uncount_chain(head);
        head
    }

    /// Close the list (the owner is leaving its heap); what was on it, to free.
    pub(crate) fn close(&self) -> *mut Extent {
        let chain = self.head.swap(CLOSED, Ordering::Acquire);
        if chain == CLOSED {
            return ptr::null_mut();
        }
        self.uncount_chain(chain);
        chain
    }

    /// Open a closed list (a thread adopts the heap).
    pub(crate) fn open(&self) {
        let _ = self.head.compare_exchange(
            CLOSED,
            ptr::null_mut(),
            Ordering::Relaxed,
            Ordering::Relaxed,
        );
    }

    /// Bytes on the list, of kind `k`.
    pub(crate) fn kind_bytes(&self, k: usize) -> u64 {
        self.kind_bytes[k].load(Ordering::Relaxed) as u64
    }

    fn uncount(&self, bytes: usize, kind: usize) {
        self.bytes.fetch_sub(bytes, Ordering::Relaxed);
        self.kind_bytes[kind].fetch_sub(bytes, Ordering::Relaxed);
    }

    fn uncount_chain(&self, mut e: *mut Extent) {
        while !e.is_null() {
            // SAFETY: the chain was taken whole by the swap: its blocks are the caller's now.
            unsafe {
                let (_, _, bytes, kind) = large::block_info(e);
                self.uncount(bytes, kind);
                e = large::returned_next(e);
            }
        }
    }
}
