//! Large blocks (above the small classes) and the segments small blocks live in, carved from one
//! shared extent arena (`arena`), with per-kind accounting.
//!
//! Layers, from the top: a freed block first goes to its thread's hot cache (`heap::hot`), then
//! back to the arena as a *dirty* extent attributed to its kind, where it coalesces with free
//! neighbours; decay, the workload bound and capacities turn dirty extents *clean* (their pages
//! given back with `madvise`, the address space kept); and only when the OS refuses memory is
//! address space unmapped. Why one shared arena rather than one per kind: a kind's freed pages
//! must serve another kind's next request without moving a page (the old design moved pages with
//! `mremap` and split the process into thousands of mappings); per-kind accounting keeps the
//! statistics and capacities per kind.
//!
//! - `extent`: the descriptor; `tree`: address-ordered first fit; `decay`: when dirty memory
//!   goes back; `arena/`: the arena, in files of one job each (see its module docs).

mod arena;
mod decay;
mod extent;
mod tree;

#[cfg(any(loom, feature = "check"))]
pub use arena::Census;
pub(crate) use arena::{
    Arena, Growth, AUTO, DENSE_GROWTH_LIVE, DENSE_GROWTH_REMOTE, DENSE_GROWTH_SEGMENTS,
    DENSE_GROWTH_TOUCHED, HUGE_DENSE_SEGMENT,
};
pub(crate) use decay::NEVER as DECAY_NEVER;
pub(crate) use extent::{Extent, State};

use crate::sync::shared_static;
use core::sync::atomic::Ordering::Relaxed;

shared_static! {
    /// The process-wide arena.
    pub(crate) static ARENA: Arena = Arena::new();
}

/// Whether the fork handler holding `ARENA`'s lock is registered.
#[cfg(not(loom))]
#[cfg_attr(not(loom), link_section = ".bss.hot.tensorpool")]
static FORK_HANDLER: core::sync::atomic::AtomicBool = core::sync::atomic::AtomicBool::new(false);

/// Register, once, a fork handler that holds the arena's lock across `fork`, so a child never
/// inherits it held by a thread that does not exist there. Called before the lock is first
/// taken (with no lock held: registering may allocate). Loom models do not fork.
#[inline]
pub(crate) fn hold_lock_across_fork() {
    #[cfg(not(loom))]
    {
        use core::sync::atomic::Ordering::{AcqRel, Acquire};
        if !FORK_HANDLER.load(Acquire) && !FORK_HANDLER.swap(true, AcqRel) {
            crate::os::at_fork(fork_prepare, fork_release, fork_release);
        }
    }
}

#[cfg(not(loom))]
unsafe extern "C" fn fork_prepare() {
    ARENA.raw_lock();
}

#[cfg(not(loom))]
unsafe extern "C" fn fork_release() {
    ARENA.raw_unlock();
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

/// The first byte of the live block `e` (what the program was handed).
///
/// # Safety
/// `e` is the descriptor of a live block held by the caller.
#[inline]
pub(crate) unsafe fn start(e: *mut Extent) -> *mut u8 {
    // SAFETY: the caller holds the block, so its descriptor is not changed by anyone else.
    unsafe { (*e).start.load(Relaxed) as *mut u8 }
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

/// Flag the live block `e` as sampled by the profiler.
///
/// # Safety
/// The caller holds the block.
pub(crate) unsafe fn set_sampled(e: *mut Extent) {
    // SAFETY: the caller's contract: nobody else changes a held block's descriptor.
    unsafe { (*e).sampled = true }
}

/// Whether the live block `e` was sampled; clears the flag.
///
/// # Safety
/// The caller holds the block.
pub(crate) unsafe fn take_sampled(e: *mut Extent) -> bool {
    // SAFETY: as in `set_sampled`. Read first: the common answer writes nothing.
    unsafe {
        if !(*e).sampled {
            return false;
        }
        (*e).sampled = false;
        true
    }
}

/// Attribute the live block `e` to scope `scope` (non-zero): its bytes are added to the
/// scope's, and subtracted again at its free (`take_scope`).
///
/// # Safety
/// The caller holds the block, which has no scope yet.
pub(crate) unsafe fn set_scope(e: *mut Extent, scope: u16) {
    // SAFETY: the caller's contract: nobody else changes a held block's descriptor.
    unsafe {
        debug_assert_eq!((*e).scope, 0);
        (*e).scope = scope;
        crate::scope::add(scope, (*e).kind as usize, (*e).size as u64);
    }
}

/// The live block `e` leaves its scope (if it has one): its bytes are subtracted from the
/// scope's. Called at its free, before the descriptor changes hands.
///
/// # Safety
/// The caller holds the block.
#[inline]
pub(crate) unsafe fn take_scope(e: *mut Extent) {
    // SAFETY: as in `set_scope`. Read first: the common answer writes nothing.
    unsafe {
        let s = (*e).scope;
        if s != 0 {
            (*e).scope = 0;
            crate::scope::sub(s, (*e).kind as usize, (*e).size as u64);
        }
    }
}

/// The live block `e` changed size in place from `before` bytes: its scope's bytes follow.
///
/// # Safety
/// The caller holds the block.
pub(crate) unsafe fn rescope(e: *mut Extent, before: usize) {
    // SAFETY: as in `set_scope`.
    unsafe {
        let (s, k, now) = ((*e).scope, (*e).kind as usize, (*e).size);
        if s != 0 && now > before {
            crate::scope::add(s, k, (now - before) as u64);
        } else if s != 0 && now < before {
            crate::scope::sub(s, k, (before - now) as u64);
        }
    }
}

/// The thread heap that took the live block `e` (0: none recorded).
///
/// # Safety
/// The caller holds the block.
#[inline]
pub(crate) unsafe fn owner(e: *mut Extent) -> usize {
    // SAFETY: the caller's contract: nobody else changes a held block's descriptor.
    unsafe { (*e).owner }
}

/// Record the heap taking the live block `e`.
///
/// # Safety
/// The caller holds the block.
#[inline]
pub(crate) unsafe fn set_owner(e: *mut Extent, heap: usize) {
    // SAFETY: as in `owner`.
    unsafe { (*e).owner = heap }
}

/// The link of a hot block on a return list (see `heap::returns`).
///
/// # Safety
/// `e` is a hot block on its way back, held by the list's pusher or taker.
#[inline]
pub(crate) unsafe fn returned_next(e: *mut Extent) -> *mut Extent {
    // SAFETY: the caller's contract.
    unsafe { (*e).returned_next }
}

/// Set the link of a hot block being pushed onto a return list.
///
/// # Safety
/// As in `returned_next`.
#[inline]
pub(crate) unsafe fn set_returned_next(e: *mut Extent, next: *mut Extent) {
    // SAFETY: the caller's contract.
    unsafe { (*e).returned_next = next }
}

/// A block from a hot cache handed out again.
///
/// # Safety
/// `e` is a block in the calling thread's hot cache.
pub(crate) unsafe fn reuse(e: *mut Extent) {
    // SAFETY: the caller's contract.
    unsafe { (*e).set_state(State::Live) }
}
