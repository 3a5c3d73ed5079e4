//! Small-block segments as the arena sees them: taking one for a heap (advised as `huge`
//! says), taking one back, readying it for statistics snapshots and listing the held ones.

use super::*;

/// A segment `Arena::segment_alloc` took.
pub(crate) struct TakenSegment {
    pub(crate) base: *mut u8,
    /// Advised off huge pages.
    pub(crate) small: bool,
    /// All of it reads as zero (fresh from the OS or purged).
    pub(crate) zeroed: bool,
}

impl Arena {
    /// A small-block segment (`size` bytes aligned to `size`), advised as the heap's `growth`
    /// and the arena's arming say (see `huge`). Null `base` on failure.
    pub(crate) fn segment_alloc(&self, size: usize, growth: Growth) -> TakenSegment {
        let e = self.take(Use::Segment, size, size);
        if e.is_null() {
            return TakenSegment {
                base: ptr::null_mut(),
                small: true,
                zeroed: false,
            };
        }
        // SAFETY: `e` is a segment extent we just made, ours until it comes back.
        let (base, zeroed) = unsafe { ((*e).base as *mut u8, (*e).zero) };
        TakenSegment {
            base,
            small: self.advise_taken_segment(base, size, growth),
            zeroed,
        }
    }

    /// Return a segment taken with `segment_alloc` (no block of it live or pending anywhere);
    /// `small`: it is still advised off huge pages.
    ///
    /// # Safety
    /// `seg` came from `segment_alloc` and is not used after this call.
    #[link_section = ".text.hot.tensorpool"]
    pub(crate) unsafe fn segment_free(&self, seg: *mut u8, small: bool) {
        let e = self.map.get(seg as usize).cast::<Extent>();
        // SAFETY: the page map records every segment's descriptor at its base.
        debug_assert!(!e.is_null() && unsafe { (*e).state() } == State::Segment);
        // SAFETY: as above.
        unsafe {
            self.advise_freed_segment(seg, (*e).size, small);
            self.free(e)
        }
    }

    /// A segment taken with `segment_alloc` is initialised: statistics snapshots may read its
    /// header from now on (`for_each_segment`).
    ///
    /// # Safety
    /// `seg` came from `segment_alloc`, is held, and its header is initialised.
    pub(crate) unsafe fn segment_ready(&self, seg: *mut u8) {
        let e = self.map.get(seg as usize).cast::<Extent>();
        // SAFETY: the page map records every segment's descriptor at its base; Release pairs with
        // the Acquire in `for_each_segment`, so the header's initialisation happens before any
        // snapshot reads it. The arena resets `start` when the segment comes back.
        unsafe {
            debug_assert!(!e.is_null() && (*e).state() == State::Segment);
            (*e).start
                .store(seg as usize, core::sync::atomic::Ordering::Release);
        }
    }

    /// Run `f` on the base of every segment held by a heap and initialised (`segment_ready`),
    /// under the lock, so none comes back to the arena meanwhile.
    pub(crate) fn for_each_segment(&self, mut f: impl FnMut(*mut u8)) {
        // (No `ready`: a state not yet ready has no regions.)
        self.state.with(|s| {
            let mut r = s.regions;
            while !r.is_null() {
                // SAFETY: regions and their extents are the arena's, read under its lock.
                unsafe {
                    if (*r).zone as usize == SEGMENTS {
                        let mut e = (*r).first;
                        while !e.is_null() {
                            if (*e).state() == State::Segment
                                && (*e).start.load(core::sync::atomic::Ordering::Acquire)
                                    == (*e).base
                            {
                                f((*e).base as *mut u8);
                            }
                            e = (*e).next;
                        }
                    }
                    r = (*r).next;
                }
            }
        });
    }
}
