//! Per-kind handles implementing allocator-api2's `Allocator` (the 0.2 line hashbrown uses), so
//! allocator-aware collections can put their storage in one kind's pools explicitly.

use crate::global::TensorPool;
use crate::kind::TensorKind;
use allocator_api2::alloc::{AllocError, Allocator};
use core::alloc::Layout;
use core::ptr::{self, NonNull};

/// A `Copy` handle that allocates from one kind's pools, whatever the thread's current kind.
#[derive(Clone, Copy, Debug)]
pub struct KindHandle {
    pool: &'static TensorPool,
    kind: TensorKind,
}

impl TensorPool {
    /// A handle allocating from `kind`'s pools, for `Vec::new_in`, `HashMap::new_in` and the like.
    pub fn handle(&'static self, kind: TensorKind) -> KindHandle {
        KindHandle { pool: self, kind }
    }
}

impl KindHandle {
    /// The kind this handle allocates from.
    pub fn kind(&self) -> TensorKind {
        self.kind
    }
}

/// A dangling, well-aligned pointer for zero-sized requests.
fn dangling(layout: Layout) -> NonNull<[u8]> {
    let p = ptr::without_provenance_mut::<u8>(layout.align());
    // SAFETY: an alignment is never zero, so the pointer is non-null.
    NonNull::slice_from_raw_parts(unsafe { NonNull::new_unchecked(p) }, 0)
}

// SAFETY: blocks come from the pool (valid until deallocated through any handle or the global
// allocator, since owners are found from addresses); copies of a handle share the same pool;
// zero-sized requests get a dangling pointer that `deallocate` recognises by the zero size.
unsafe impl Allocator for KindHandle {
    fn allocate(&self, layout: Layout) -> Result<NonNull<[u8]>, AllocError> {
        if layout.size() == 0 {
            return Ok(dangling(layout));
        }
        let p = self.pool.alloc_kind(self.kind.index(), layout);
        let p = NonNull::new(p).ok_or(AllocError)?;
        // SAFETY: `p` is a live block of this pool.
        let usable = unsafe { self.pool.usable_size(p.as_ptr()) };
        Ok(NonNull::slice_from_raw_parts(p, usable))
    }

    unsafe fn deallocate(&self, ptr: NonNull<u8>, layout: Layout) {
        if layout.size() != 0 {
            // SAFETY: the caller passes a block this handle (or a copy) allocated.
            unsafe { self.pool.free(ptr.as_ptr()) };
        }
    }

    unsafe fn grow(
        &self,
        ptr: NonNull<u8>,
        old: Layout,
        new: Layout,
    ) -> Result<NonNull<[u8]>, AllocError> {
        if old.size() != 0 && old.align() == new.align() {
            // SAFETY: `ptr` is live with alignment `old.align()`.
            let q = unsafe {
                self.pool
                    .resize_in_place(ptr.as_ptr(), old.align(), new.size())
            };
            if let Some(q) = NonNull::new(q) {
                // SAFETY: `q` is live.
                let usable = unsafe { self.pool.usable_size(q.as_ptr()) };
                return Ok(NonNull::slice_from_raw_parts(q, usable));
            }
        }
        let q = self.allocate(new)?;
        // SAFETY: both blocks are live and distinct; the old one is freed only after the copy.
        unsafe {
            ptr::copy_nonoverlapping(ptr.as_ptr(), q.as_ptr().cast::<u8>(), old.size());
            self.deallocate(ptr, old);
        }
        Ok(q)
    }

    unsafe fn shrink(
        &self,
        ptr: NonNull<u8>,
        old: Layout,
        new: Layout,
    ) -> Result<NonNull<[u8]>, AllocError> {
        if new.size() == 0 {
            // SAFETY: forwarded contract.
            unsafe { self.deallocate(ptr, old) };
            return Ok(dangling(new));
        }
        // SAFETY: the grow path handles any size change the same way.
        unsafe { self.grow(ptr, old, new) }
    }
}
