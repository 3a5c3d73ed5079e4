//! Frees of blocks another thread's heap owns: the freeing thread's side.
//!
//! A remote free goes onto the block's own page (`pool::slab::push_remote`), never onto a
//! heap-wide list, so the owner takes a page's remote frees in one atomic operation when that page
//! runs dry, without a lookup per block. The freeing thread first gathers its remote frees in a
//! small batch, one chain per destination page, and publishes a chain with one CAS when the batch
//! needs the slot, grows past `BATCH_MAX` blocks, or the thread reaches a slow path or exits: a
//! thread that frees many blocks of one page (a consumer of a producer's buffers) pays a fraction
//! of a CAS per free and pulls the owner's page descriptor into its cache once per chain.
//!
//! When a push takes a full page's `NOTIFY` (see `pool::slab`, "Full pages"), the freeing thread
//! also puts the page on its owner heap's delayed list, which the owner drains at its next slow
//! path. That is the only case in which a remote free touches the owner heap itself.

use super::types::{current_heap, Heap};
use crate::pool::slab::{self, Block, Page};
use crate::sync::Ordering;
use core::ptr;

/// Destination pages a batch gathers at once.
const BATCH_PAGES: usize = 8;
/// Blocks a batch holds before it is published.
const BATCH_MAX: u32 = 64;

crate::tls::fast_thread_local! {
    /// The calling thread's batch of frees of other heaps' blocks (all zero is the empty batch:
    /// null pointers and zero counts).
    mod batch_slot: Batch = zeroed;
}

/// A thread's frees of blocks owned by other heaps, chained per destination page.
///
/// Invariant: slots `0..pages` are in use, each a chain `head[i]..=tail[i]` of `len[i]` blocks
/// of page `page[i]`, distinct pages, oldest slot first; `count == sum(len) < BATCH_MAX`.
pub(crate) struct Batch {
    page: [*mut Page; BATCH_PAGES],
    head: [*mut Block; BATCH_PAGES],
    tail: [*mut Block; BATCH_PAGES],
    len: [u32; BATCH_PAGES],
    pages: usize,
    count: u32,
}

impl Batch {
    /// An empty batch (all zero, as a thread's starts).
    #[cfg(loom)]
    pub(crate) const fn new() -> Self {
        Self {
            page: [ptr::null_mut(); BATCH_PAGES],
            head: [ptr::null_mut(); BATCH_PAGES],
            tail: [ptr::null_mut(); BATCH_PAGES],
            len: [0; BATCH_PAGES],
            pages: 0,
            count: 0,
        }
    }

    /// Add the free of `b`, a block of `page` (owned by another heap), to the batch.
    ///
    /// # Safety
    /// `b` is a live block of `page`, freed exactly once, by this call.
    pub(crate) unsafe fn push(&mut self, page: *mut Page, b: *mut Block) {
        let mut i = 0;
        while i < self.pages && self.page[i] != page {
            i += 1;
        }
        if i == BATCH_PAGES {
            // Every slot holds another page: publish the oldest chain and reuse its slot.
            self.publish_slot(0);
            i = self.pages;
        }
        // SAFETY: `b` is ours until published.
        unsafe {
            (*b).next = if i < self.pages {
                self.head[i]
            } else {
                ptr::null_mut()
            }
        };
        if i == self.pages {
            self.page[i] = page;
            self.tail[i] = b;
            self.len[i] = 0;
            self.pages += 1;
        }
        self.head[i] = b;
        self.len[i] += 1;
        self.count += 1;
        if self.count >= BATCH_MAX {
            self.flush();
        }
    }

    /// Publish chain `i` and close the gap it leaves.
    fn publish_slot(&mut self, i: usize) {
        // SAFETY: the chain holds live blocks of `page[i]`, each freed once (the invariant).
        unsafe { publish(self.page[i], self.head[i], self.tail[i], self.len[i]) };
        self.count -= self.len[i];
        self.pages -= 1;
        for j in i..self.pages {
            self.page[j] = self.page[j + 1];
            self.head[j] = self.head[j + 1];
            self.tail[j] = self.tail[j + 1];
            self.len[j] = self.len[j + 1];
        }
    }

    /// Publish every chain of the batch.
    #[link_section = ".text.hot.tensorpool"]
    pub(crate) fn flush(&mut self) {
        for i in 0..self.pages {
            // SAFETY: as in `publish_slot`.
            unsafe { publish(self.page[i], self.head[i], self.tail[i], self.len[i]) };
        }
        self.pages = 0;
        self.count = 0;
    }
}

/// A free of `b`, a block of `page`, which another heap owns.
/// It is checked first (`check_remote`).
///
/// # Safety
/// `page` is a descriptor of a live small segment and `b` an address in its page (a live block
/// of it, freed once by this call, unless the checks stop the process).
#[cold]
// C ABI: see `heap::alloc_slow`.
#[link_section = ".text.hot.tensorpool"]
pub(crate) unsafe extern "C" fn free_remote(page: *mut Page, b: *mut Block) {
    // SAFETY: the caller's contract.
    unsafe { check_remote(page, b) };
    if current_heap().is_null() {
        // No heap, so no slow path or exit hook to publish a batch: publish at once.
        // SAFETY: the caller's contract.
        unsafe { publish(page, b, b, 1) };
        return;
    }
    // SAFETY: the batch is this thread's alone and no other borrow of it is live; the caller's
    // contract covers `b`.
    unsafe { (*batch_slot::addr()).push(page, b) }
}

/// The checks of a free by a thread that does not own the page (`free-checks`): the address
/// as any thread may check it (`slab::starts_block_any`); then the block gets the free mark
/// (`slab::FREE_MARK`), and one that carries it already is a second free, reported instead,
/// wherever the first free went (this thread's batch, the page's remote list, its owner's free
/// list).
///
/// # Safety
/// `page` is a descriptor of a live small segment and `b` an address in its page.
#[inline]
pub(crate) unsafe fn check_remote(page: *mut Page, b: *mut Block) {
    // SAFETY: the block's words are read only once `b` is known to start one of its blocks.
    #[cfg(feature = "free-checks")]
    unsafe {
        let seg = slab::segment_of(b.cast());
        if !slab::starts_block_any(page, b.cast()) {
            super::report::bad_free(b.cast(), "free", seg, false);
        }
        let w = slab::mark_word(b);
        if *w == slab::FREE_MARK {
            super::report::bad_free(b.cast(), "free", seg, true);
        }
        *w = slab::FREE_MARK;
    }
    #[cfg(not(feature = "free-checks"))]
    let _ = (page, b);
}

/// Publish the calling thread's batch (its slow path, its exit).
pub(crate) fn flush_here() {
    // SAFETY: the batch is this thread's alone.
    let batch = unsafe { &mut *batch_slot::addr() };
    if batch.pages > 0 {
        batch.flush();
    }
}

/// Push the chain `head..=tail` of `n` blocks onto `page`'s remote list, and put the page on its
/// owner's delayed list if this push took the owner's notice request.
///
/// # Safety
/// The chain links `n` live blocks of `page`, each freed exactly once, and is the caller's alone.
pub(crate) unsafe fn publish(page: *mut Page, head: *mut Block, tail: *mut Block, n: u32) {
    // SAFETY: the caller's contract; the page's segment and owner heap outlive its live blocks
    // (heaps are never freed).
    unsafe {
        if slab::push_remote(page, head, tail, n) {
            let owner = (*slab::segment_of(page.cast())).owner.cast::<Heap>();
            notify(owner, page);
        }
    }
}

/// Put `page` on `owner`'s delayed list.
///
/// # Safety
/// The calling thread took the page's `NOTIFY` (so `delayed_next` is its to write).
unsafe fn notify(owner: *mut Heap, page: *mut Page) {
    // SAFETY: heaps are never freed; the page's `delayed_next` is ours until the CAS.
    unsafe {
        let delayed = &(*owner).delayed;
        let mut head = delayed.load(Ordering::Relaxed);
        loop {
            (*page).delayed_next = head;
            match delayed.compare_exchange_weak(head, page, Ordering::Release, Ordering::Relaxed) {
                Ok(_) => return,
                Err(actual) => head = actual,
            }
        }
    }
}
