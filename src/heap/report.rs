//! The stop at a bad free of a small block: one line on stderr naming tensorpool, the problem,
//! the address and what is known of the block (size, kind, where it starts), then `abort`. It
//! allocates nothing: the heap may be what is broken.

use crate::class::small_size;
use crate::kind::{TensorKind, NUM_KINDS};
use crate::pool::slab::{self, Segment};

/// Stop the process: `p`, in small segment `seg`, reached `what` (`free`, `realloc`, ...) and is
/// not a live block: a block already free if `twice`, else an address no block starts at.
#[cold]
#[inline(never)]
pub(crate) fn bad_free(p: *mut u8, what: &str, seg: *mut Segment, twice: bool) -> ! {
    use crate::os::fatal;
    // SAFETY: `seg` is a live small segment (the caller's), so `p`'s page descriptor is readable.
    let (found, kind) = unsafe { (slab::describe(seg, p), slab::kind_of(seg, p)) };
    let kind = TensorKind::ALL[kind.min(NUM_KINDS - 1)].name();
    match found {
        Some((class, _)) if twice => fatal(format_args!(
            "{what}({p:p}): double free of a {}-byte block (kind {kind})",
            small_size(class)
        )),
        Some((class, start)) if start == p as usize => fatal(format_args!(
            "{what}({p:p}): not a live block: the {}-byte block there was never handed out \
             (kind {kind})",
            small_size(class)
        )),
        Some((class, start)) => fatal(format_args!(
            "{what}({p:p}): not the start of a block: {} bytes into the {}-byte block at \
             {start:#x} (kind {kind})",
            p as usize - start,
            small_size(class)
        )),
        None => fatal(format_args!(
            "{what}({p:p}): not a live block of this allocator (a small-block segment's header \
             or an unused page)"
        )),
    }
}
