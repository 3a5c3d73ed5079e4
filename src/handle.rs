//! Per-kind handles implementing allocator-api2's `Allocator` (the 0.2 line hashbrown uses), so
//! allocator-aware collections can put their storage in one kind's pools explicitly.
//!
//! A handle may carry a hard limit. Limited handles of a kind share one account of the bytes they
//! hold (requested sizes: a limited handle reports exactly the requested length, so the layout
//! passed back at `deallocate` or `grow` is the one charged, and the account stays exact). A request
//! that would take the account above the handle's limit gets `AllocError` and changes nothing: the
//! collection keeps its old block and contents. Unlimited handles keep no account, so they cost no
//! shared write.

use crate::global::TensorPool;
use crate::kind::{TensorKind, NUM_KINDS};
use crate::sync::{shared_static, AtomicUsize, Ordering};
use allocator_api2::alloc::{AllocError, Allocator};
use core::alloc::Layout;
use core::ptr::{self, NonNull};
use crossbeam_utils::CachePadded;

/// Limit value meaning "no limit".
const UNLIMITED: usize = usize::MAX;

/// Per kind: bytes held through limited handles, and requests refused by a limit.
pub(crate) struct Account {
    held: AtomicUsize,
    refused: AtomicUsize,
}

impl Account {
    #[cfg(not(loom))]
    const fn new() -> Self {
        Self {
            held: AtomicUsize::new(0),
            refused: AtomicUsize::new(0),
        }
    }
    #[cfg(loom)]
    pub(crate) fn new() -> Self {
        Self {
            held: AtomicUsize::new(0),
            refused: AtomicUsize::new(0),
        }
    }

    /// Add `bytes` to the account if the total stays within `limit`; count a refusal otherwise.
    /// One read-modify-write, so racing charges can never pass the limit together.
    pub(crate) fn charge(&self, bytes: usize, limit: usize) -> Result<(), AllocError> {
        let r = self
            .held
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |held| {
                held.checked_add(bytes).filter(|&t| t <= limit)
            });
        if r.is_err() {
            self.refused.fetch_add(1, Ordering::Relaxed);
            return Err(AllocError);
        }
        Ok(())
    }

    pub(crate) fn credit(&self, bytes: usize) {
        self.held.fetch_sub(bytes, Ordering::Relaxed);
    }

    pub(crate) fn held(&self) -> usize {
        self.held.load(Ordering::Relaxed)
    }

    pub(crate) fn refused(&self) -> usize {
        self.refused.load(Ordering::Relaxed)
    }
}

shared_static! {
    #[cfg_attr(not(loom), link_section = ".bss.hot.tensorpool")]
    static ACCOUNTS: [CachePadded<Account>; NUM_KINDS] = [
        CachePadded::new(Account::new()),
        CachePadded::new(Account::new()),
        CachePadded::new(Account::new()),
        CachePadded::new(Account::new()),
        CachePadded::new(Account::new()),
        CachePadded::new(Account::new()),
    ];
}

/// A `Copy` handle that allocates from one kind's pools, whatever the thread's current kind.
#[derive(Clone, Copy, Debug)]
pub struct KindHandle {
    pool: &'static TensorPool,
    kind: TensorKind,
    limit: usize,
}

impl TensorPool {
    /// A handle allocating from `kind`'s pools, for `Vec::new_in`, `HashMap::new_in` and the like.
    pub fn handle(&'static self, kind: TensorKind) -> KindHandle {
        KindHandle {
            pool: self,
            kind,
            limit: UNLIMITED,
        }
    }

    /// Bytes currently held through limited handles of `kind` (requested sizes).
    pub fn limited_bytes(&self, kind: TensorKind) -> usize {
        ACCOUNTS[kind.index()].held()
    }

    /// Requests through handles of `kind` refused by a hard limit, since the process started.
    pub fn limit_refusals(&self, kind: TensorKind) -> usize {
        ACCOUNTS[kind.index()].refused()
    }
}

impl KindHandle {
    /// The kind this handle allocates from.
    pub fn kind(&self) -> TensorKind {
        self.kind
    }

    /// This handle with a hard limit: an allocation or growth that would take the bytes held
    /// through limited handles of this kind above `bytes` fails with `AllocError`.
    ///
    /// Blocks must go back through a handle with a limit (this one or a copy), as the `Allocator`
    /// contract requires, so that the account is credited.
    pub const fn with_limit(mut self, bytes: usize) -> Self {
        self.limit = if bytes == UNLIMITED { bytes - 1 } else { bytes };
        self
    }

    /// The hard limit, if any.
    pub const fn limit(&self) -> Option<usize> {
        if self.limit == UNLIMITED {
            None
        } else {
            Some(self.limit)
        }
    }

    fn limited(&self) -> bool {
        self.limit != UNLIMITED
    }

    /// Charge `bytes` to this kind's account if it stays within the limit.
    fn charge(&self, bytes: usize) -> Result<(), AllocError> {
        ACCOUNTS[self.kind.index()].charge(bytes, self.limit)
    }

    fn credit(&self, bytes: usize) {
        ACCOUNTS[self.kind.index()].credit(bytes);
    }

    /// The slice to hand out: the whole usable block, or exactly the request when limited.
    fn granted(&self, p: NonNull<u8>, size: usize) -> NonNull<[u8]> {
        let len = if self.limited() {
            size
        } else {
            // SAFETY: `p` is a live block of this pool.
            unsafe { self.pool.usable_size(p.as_ptr()) }
        };
        NonNull::slice_from_raw_parts(p, len)
    }

    /// Grow or shrink `ptr` from `old` to `new` (sizes both non-zero or `old` zero), in place where
    /// the pool can; the account is already charged for any growth.
    ///
    /// # Safety
    /// `ptr` is live with layout `old` (or dangling when `old.size()` is zero).
    unsafe fn resize(
        &self,
        ptr: NonNull<u8>,
        old: Layout,
        new: Layout,
    ) -> Result<NonNull<[u8]>, AllocError> {
        if old.size() != 0 && old.align() == new.align() {
            // SAFETY: `ptr` is live with alignment `old.align()`.
            let q = unsafe {
                self.pool
                    .resize_in_place(ptr.as_ptr(), Some(old.size()), new.size())
            };
            if let Some(q) = NonNull::new(q) {
                return Ok(self.granted(q, new.size()));
            }
        }
        let q = self.raw_allocate(new)?;
        // SAFETY: both blocks are live and distinct; the old one is freed only after the copy.
        unsafe {
            ptr::copy_nonoverlapping(
                ptr.as_ptr(),
                q.as_ptr().cast::<u8>(),
                old.size().min(new.size()),
            );
            self.raw_deallocate(ptr, old);
        }
        Ok(q)
    }

    fn raw_allocate(&self, layout: Layout) -> Result<NonNull<[u8]>, AllocError> {
        if layout.size() == 0 {
            return Ok(dangling(layout));
        }
        let p = self.pool.alloc_kind(self.kind.index(), layout);
        let p = NonNull::new(p).ok_or(AllocError)?;
        Ok(self.granted(p, layout.size()))
    }

    /// # Safety
    /// `ptr` is live with layout `layout` (or dangling when the size is zero).
    unsafe fn raw_deallocate(&self, ptr: NonNull<u8>, layout: Layout) {
        if layout.size() != 0 {
            // SAFETY: the caller passes a block this handle (or a copy) allocated.
            unsafe { self.pool.free(ptr.as_ptr()) };
        }
    }
}

/// A dangling, well-aligned pointer for zero-sized requests.
fn dangling(layout: Layout) -> NonNull<[u8]> {
    let p = ptr::without_provenance_mut::<u8>(layout.align());
    // SAFETY: an alignment is never zero, so the pointer is non-null.
    NonNull::slice_from_raw_parts(unsafe { NonNull::new_unchecked(p) }, 0)
}

// SAFETY: blocks come from the pool (valid until deallocated through any handle or the global
// allocator, since owners are found from addresses); copies of a handle share the same pool and
// account; zero-sized requests get a dangling pointer that `deallocate` recognises by the zero
// size. A limited handle charges before it allocates and credits after it frees, and returns
// slices of exactly the requested length, so the caller's layout always equals the charge.
unsafe impl Allocator for KindHandle {
    fn allocate(&self, layout: Layout) -> Result<NonNull<[u8]>, AllocError> {
        if !self.limited() {
            return self.raw_allocate(layout);
        }
        self.charge(layout.size())?;
        self.raw_allocate(layout)
            .inspect_err(|_| self.credit(layout.size()))
    }

    unsafe fn deallocate(&self, ptr: NonNull<u8>, layout: Layout) {
        // SAFETY: `Allocator::deallocate`'s contract: `ptr` is a live block of this handle with
        // `layout`, which is what `raw_deallocate` requires.
        unsafe { self.raw_deallocate(ptr, layout) };
        if self.limited() {
            self.credit(layout.size());
        }
    }

    unsafe fn grow(
        &self,
        ptr: NonNull<u8>,
        old: Layout,
        new: Layout,
    ) -> Result<NonNull<[u8]>, AllocError> {
        let extra = new.size() - old.size();
        if self.limited() {
            self.charge(extra)?;
        }
        // SAFETY: `Allocator::grow`'s contract: `ptr` is live with `old`, and `new` is at least
        // as large, which is what `resize` requires.
        let r = unsafe { self.resize(ptr, old, new) };
        if r.is_err() && self.limited() {
            self.credit(extra);
        }
        r
    }

    /// `grow`, then the new bytes zeroed: a limited handle charges only the growth, as `grow`
    /// does (the default would allocate the new block before freeing the old one, and be
    /// refused where `grow` succeeds).
    unsafe fn grow_zeroed(
        &self,
        ptr: NonNull<u8>,
        old: Layout,
        new: Layout,
    ) -> Result<NonNull<[u8]>, AllocError> {
        // SAFETY: `Allocator::grow_zeroed`'s contract is `grow`'s.
        let q = unsafe { self.grow(ptr, old, new) }?;
        // SAFETY: `q` is a live block of `q.len() >= new.size() >= old.size()` bytes.
        unsafe {
            q.as_ptr()
                .cast::<u8>()
                .add(old.size())
                .write_bytes(0, q.len() - old.size())
        };
        Ok(q)
    }

    unsafe fn shrink(
        &self,
        ptr: NonNull<u8>,
        old: Layout,
        new: Layout,
    ) -> Result<NonNull<[u8]>, AllocError> {
        if new.size() == 0 {
            // SAFETY: `Allocator::shrink`'s contract: `ptr` is live with `old`; it is not used
            // after this free.
            unsafe { self.deallocate(ptr, old) };
            return Ok(dangling(new));
        }
        // SAFETY: `Allocator::shrink`'s contract: `ptr` is live with `old` and `new` is no
        // larger, which is what `resize` requires; shrinking never needs a charge.
        let r = unsafe { self.resize(ptr, old, new) };
        if r.is_ok() && self.limited() {
            self.credit(old.size() - new.size());
        }
        r
    }
}
