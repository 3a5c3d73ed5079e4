//! The calling thread's tensor kind (its *tag*): which kind its global allocations go to. Setting
//! it repoints the thread's current kind heap, so the allocation fast path pays nothing for kinds.

use super::types::{cur, current_heap};
use crate::kind::{TensorKind, NUM_KINDS};
use core::ptr;

crate::tls::fast_thread_local! {
    /// The calling thread's current tensor kind (index), read by every large allocation: a
    /// plain `thread_local!` cost the preload library a `__tls_get_addr` call through its PLT
    /// each time (see `tls`). Its paths keep a stack frame anyway, so the descriptor's call
    /// is as cheap as the static offset there (`cur` is the one read without it).
    mod tag_slot: u8 = zeroed;
}

/// The calling thread's current kind index.
#[inline]
pub(crate) fn current() -> usize {
    // SAFETY: the calling thread's own byte, only ever touched by it.
    unsafe { *tag_slot::addr() as usize }
}

/// Set the calling thread's current kind; returns the previous one.
pub(crate) fn set(kind: usize) -> usize {
    debug_assert!(kind < NUM_KINDS);
    // SAFETY: as in `current`.
    let prev = unsafe { tag_slot::addr().replace(kind as u8) };
    let heap = current_heap();
    if !heap.is_null() {
        // A thread in a slow-only mode stays in it: `cur` is then its heap's slow kind heap.
        // SAFETY: a non-null current heap is this thread's own; `kind < NUM_KINDS`.
        unsafe {
            let slow = cur::get() == ptr::addr_of_mut!((*heap).slow);
            point_at(heap, kind, slow);
        }
    }
    prev as usize
}

/// Point `cur` at `heap`'s kind heap for `kind`, or, if `slow` (a slow-only mode, decided when
/// the thread gets its heap or the allocator configures itself), at its slow kind heap, which
/// then carries the kind.
///
/// # Safety
/// `heap` is the calling thread's own; `kind < NUM_KINDS`.
pub(crate) unsafe fn point_at(heap: *mut super::types::Heap, kind: usize, slow: bool) {
    // SAFETY: the caller's contract.
    unsafe {
        if slow {
            (*heap).slow.kind = kind as u8;
            cur::set(ptr::addr_of_mut!((*heap).slow));
        } else {
            cur::set(ptr::addr_of_mut!((*heap).kinds[kind]));
        }
    }
}

/// The calling thread's current tensor kind: global allocations made now go to its pools.
pub fn current_kind() -> TensorKind {
    TensorKind::from_index(current()).unwrap_or_default()
}

/// Set the calling thread's kind and return the previous one (for callers that cannot hold a
/// `KindScope`, such as a C API; restore by setting the returned kind again).
pub fn set_current_kind(kind: TensorKind) -> TensorKind {
    TensorKind::from_index(set(kind.index())).unwrap_or_default()
}

/// Run `f` with the calling thread's kind set to `kind`; the previous kind is restored afterwards,
/// also if `f` panics.
pub fn with_kind<R>(kind: TensorKind, f: impl FnOnce() -> R) -> R {
    let _scope = KindScope::enter(kind);
    f()
}

/// A scope in which the calling thread's global allocations go to one kind's pools. Scopes nest;
/// dropping one (also while unwinding) restores the kind that was current when it was entered.
#[must_use = "the kind is restored when the scope is dropped"]
#[derive(Debug)]
pub struct KindScope {
    prev: TensorKind,
    // The tag is per thread: a scope must end on the thread that entered it.
    _not_send: core::marker::PhantomData<*const ()>,
}

impl KindScope {
    /// Make `kind` the calling thread's current kind until the scope is dropped.
    pub fn enter(kind: TensorKind) -> Self {
        let prev = set(kind.index());
        Self {
            prev: TensorKind::from_index(prev).unwrap_or_default(),
            _not_send: core::marker::PhantomData,
        }
    }
}

impl Drop for KindScope {
    fn drop(&mut self) {
        set(self.prev.index());
    }
}
