//! Large blocks (above the small classes) and the segments small blocks live in, carved from one
//! shared extent arena (`arena`), with per-kind accounting.
//!
//! Layers, from the top: a freed block first goes to its thread's hot cache (`budget`), then
//! back to the arena as a *dirty* extent attributed to its kind, where it coalesces with free
//! neighbours; decay, the workload bound and capacities turn dirty extents *clean* (their pages
//! given back with `madvise`, the address space kept); and only when the OS refuses memory is
//! address space unmapped. Why one shared arena rather than one per kind: a kind's freed pages
//! must serve another kind's next request without moving a page (the old design moved pages with
//! `mremap` and split the process into thousands of mappings); per-kind accounting keeps the
//! statistics and capacities per kind.
//!
//! - `extent`: the descriptor; `tree`: address-ordered first fit; `decay`: when dirty memory
//!   goes back; `arena`: chunks, regions, taking, releasing, purging, recovery.

mod arena;
mod decay;
mod extent;
mod tree;

pub use arena::ArenaCounters;
#[cfg(any(loom, feature = "check"))]
pub use arena::Census;
pub(crate) use arena::{Arena, AUTO};
pub(crate) use decay::{DEFAULT_MS as DEFAULT_DECAY_MS, NEVER as DECAY_NEVER};
pub(crate) use extent::{Extent, State};

use crate::sync::shared_static;
use core::sync::atomic::Ordering::Relaxed;

/// Counters of one kind's large blocks (exact: kept under the arena's lock).
#[derive(Clone, Copy, Default, Debug, PartialEq, Eq)]
pub struct LargeCounters {
    /// Allocation requests served by the arena (thread-cache hits are counted by the caches).
    pub requests: u64,
    /// Requests served from dirty (resident) memory: no page fault.
    pub hits: u64,
    /// Requests that took clean pages (never touched, or purged): they fault on first touch.
    pub misses: u64,
    /// Bytes of clean pages handed out (what faults in when touched), blocks grown in place
    /// included.
    pub fresh_bytes: u64,
    /// Bytes of blocks handed out and not freed (extent sizes), thread caches included.
    pub live_bytes: u64,
    /// Bytes of dirty free memory this kind released and no request has taken since.
    pub cached_bytes: u64,
    /// Highest `live_bytes` seen.
    pub peak_live_bytes: u64,
    /// Bytes asked for.
    pub requested_bytes: u64,
    /// Bytes handed out for them (whole pages, a cache colour included): `granted - requested`
    /// is rounding overhead.
    pub granted_bytes: u64,
    /// Purges of this kind's cached memory (decay, bound, capacity, `trim`).
    pub evictions: u64,
    /// Bytes they returned to the OS.
    pub evicted_bytes: u64,
    /// Allocations that left live + cached bytes above a configured capacity.
    pub over_capacity: u64,
    /// Hits served from memory another kind (or a returned segment) released.
    pub recycled: u64,
    /// Bytes of those hits.
    pub recycled_bytes: u64,
    /// Bytes of this kind's cached memory that other kinds' requests (or new slab segments)
    /// took.
    pub donated_bytes: u64,
}

impl LargeCounters {
    /// All zero (a template for const initialisers).
    pub(crate) const ZERO: LargeCounters = LargeCounters {
        requests: 0,
        hits: 0,
        misses: 0,
        fresh_bytes: 0,
        live_bytes: 0,
        cached_bytes: 0,
        peak_live_bytes: 0,
        requested_bytes: 0,
        granted_bytes: 0,
        evictions: 0,
        evicted_bytes: 0,
        over_capacity: 0,
        recycled: 0,
        recycled_bytes: 0,
        donated_bytes: 0,
    };
}

shared_static! {
    /// The process-wide arena.
    pub(crate) static ARENA: Arena = Arena::new();
}

/// Usable bytes of the live block `e` starting at `p` (at least what was asked for).
///
/// # Safety
/// `e` is the descriptor of a live block at `p`.
#[inline]
pub(crate) unsafe fn usable(e: *mut Extent, p: *mut u8) -> usize {
    // SAFETY: the caller's contract.
    unsafe { (*e).end() - p as usize }
}

/// Kind index of the live block `e`.
///
/// # Safety
/// `e` is the descriptor of a live block.
#[inline]
pub(crate) unsafe fn kind_of(e: *mut Extent) -> usize {
    // SAFETY: the caller's contract.
    unsafe { (*e).kind as usize }
}

/// Whether the live block `e` is known to read as zero (taken from fresh pages).
///
/// # Safety
/// `e` is the descriptor of a live block.
#[inline]
pub(crate) unsafe fn is_zero(e: *mut Extent) -> bool {
    // SAFETY: the caller's contract.
    unsafe { (*e).zero }
}

/// A live block's start, usable bytes, bytes held (whole pages: what the arena counts live) and
/// kind.
///
/// # Safety
/// `e` is the descriptor of a live block held by the caller.
pub(crate) unsafe fn block_info(e: *mut Extent) -> (*mut u8, usize, usize, usize) {
    // SAFETY: the caller holds the block, so its descriptor is not changed by anyone else.
    unsafe {
        let start = (*e).start.load(Relaxed);
        (
            start as *mut u8,
            (*e).end() - start,
            (*e).size,
            (*e).kind as usize,
        )
    }
}

/// A live block entering its thread's hot cache: marked hot (so a second free is caught) and
/// no longer known zero.
///
/// # Safety
/// `e` is the descriptor of a live block the calling thread is freeing.
pub(crate) unsafe fn prepare_hot(e: *mut Extent) {
    // SAFETY: the caller holds the block, so its descriptor is not changed by anyone else.
    unsafe {
        (*e).zero = false;
        (*e).set_state(State::Hot);
    }
}

/// A block from a hot cache handed out again.
///
/// # Safety
/// `e` is a block in the calling thread's hot cache.
pub(crate) unsafe fn reuse(e: *mut Extent) {
    // SAFETY: the caller's contract.
    unsafe { (*e).set_state(State::Live) }
}
