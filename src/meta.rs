//! Metadata memory: extent descriptors, page-map nodes and region records, carved from mappings
//! of their own, never from the memory they describe.
//!
//! Keeping metadata out of band means a free extent's pages are never touched by the allocator:
//! once purged they stay non-resident until a block is placed there (an in-band header would
//! fault a zero page back in on every look at a purged extent), and no user write past a
//! block's end can reach the allocator's own records.
//!
//! A `Meta` is a bump allocator over zeroed mappings: a first chunk of the size its owner
//! chooses, on 4 KiB pages (a small process touches a few of them), then chunks of whole huge
//! pages, huge-page aligned: on 4 KiB pages until the owner says metadata is dense enough
//! (`set_huge`; its owner decides by what the arena holds), advised before any touch after
//! that, and the earlier ones advised then, for the owner to collapse.
//! Its owner serialises access (it lives inside the arena's lock) and recycles what it no
//! longer needs on its own free lists; nothing is ever returned to the OS while the arena
//! lives. Invariant: `cur <= end` and `[cur, end)` is zeroed, unused memory of the newest chunk.

use crate::os;

/// Bytes mapped at a time.
const CHUNK: usize = 1 << 20;

/// Chunks recorded for release when the owner is dropped (loom models build one arena per
/// execution); more chunks than this are leaked, which only a test could notice.
const MAX_CHUNKS: usize = 64;

pub(crate) struct Meta {
    /// Bytes of the first chunk (`CHUNK` unless made with `with_first`).
    first: usize,
    /// Map later chunks as whole huge pages, advised (`set_huge`).
    huge: bool,
    /// Next free byte of the newest chunk.
    cur: usize,
    /// End of the newest chunk.
    end: usize,
    /// Bytes mapped for metadata so far.
    pub(crate) mapped: usize,
    /// Every chunk mapped (the first `MAX_CHUNKS`), for `release_all`.
    chunks: [(usize, usize); MAX_CHUNKS],
    nchunks: usize,
}

impl Meta {
    #[cfg(test)]
    pub(crate) const fn new() -> Self {
        Self::with_first(CHUNK)
    }

    /// A metadata source whose first chunk is `first` bytes (a multiple of the page).
    pub(crate) const fn with_first(first: usize) -> Self {
        Self {
            first,
            huge: false,
            cur: 0,
            end: 0,
            mapped: 0,
            chunks: [(0, 0); MAX_CHUNKS],
            nchunks: 0,
        }
    }

    /// `size` bytes aligned to `align` (a power of two at most `os::PAGE`), zeroed; null when the
    /// OS refuses memory.
    #[link_section = ".text.hot.tensorpool"]
    pub(crate) fn alloc(&mut self, size: usize, align: usize) -> *mut u8 {
        debug_assert!(align.is_power_of_two() && align <= os::PAGE);
        let start = (self.cur + align - 1) & !(align - 1);
        if self.cur != 0 && start + size <= self.end {
            self.cur = start + size;
            return start as *mut u8;
        }
        let later = self.nchunks > 0;
        let p;
        let len;
        if later {
            // Whole huge pages, so that they can be huge pages: advised before any touch where
            // metadata is dense enough (`set_huge`; a page map's leaves over a 1.2 GiB arena
            // faulted 320 times on 4 KiB pages), else on 4 KiB pages until it is.
            len = size.max(CHUNK).next_multiple_of(os::HUGE_PAGE);
            p = os::map_aligned(len, os::HUGE_PAGE);
            if !p.is_null() && self.huge {
                os::advise_huge(p, len);
            }
        } else {
            len = size.next_multiple_of(os::PAGE).max(self.first);
            p = os::map(len);
        }
        if p.is_null() {
            return p;
        }
        self.mapped += len;
        if self.nchunks < MAX_CHUNKS {
            self.chunks[self.nchunks] = (p as usize, len);
            self.nchunks += 1;
        }
        self.cur = p as usize + size;
        self.end = p as usize + len;
        debug_assert!(self.cur <= self.end);
        p
    }

    /// Whether the chunks after the first are whole huge pages (`set_huge`).
    pub(crate) fn is_huge(&self) -> bool {
        self.huge
    }

    /// Map the chunks after the first as whole huge pages (`on`), or not. Turning it on advises
    /// the later chunks mapped before, and returns how many there are (`later_chunk`): what they
    /// hold already goes huge only once collapsed, which is the caller's business (outside its
    /// lock).
    pub(crate) fn set_huge(&mut self, on: bool) -> usize {
        let was = core::mem::replace(&mut self.huge, on);
        if !on || was {
            return 0;
        }
        let later = &self.chunks[1.min(self.nchunks)..self.nchunks];
        for &(p, len) in later {
            os::advise_huge(p as *mut u8, len);
        }
        later.len()
    }

    /// The `i`th chunk after the first (huge-page aligned, a multiple of the huge page).
    pub(crate) fn later_chunk(&self, i: usize) -> Option<(usize, usize)> {
        self.chunks[..self.nchunks].get(i + 1).copied()
    }

    /// Unmap every chunk (the owner's end of life; nothing allocated here may be used after).
    #[cfg(loom)]
    pub(crate) fn release_all(&mut self) {
        for &(p, len) in &self.chunks[..self.nchunks] {
            os::unmap(p as *mut u8, len);
        }
        self.nchunks = 0;
        self.cur = 0;
        self.end = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn later_chunks_are_whole_huge_pages_advised_when_turned_on() {
        let mut m = Meta::with_first(os::PAGE);
        assert!(!m.alloc(os::PAGE, 64).is_null(), "the first chunk");
        assert!(!m.alloc(100, 64).is_null(), "a later chunk, on 4 KiB pages");
        let (p, len) = m.later_chunk(0).unwrap();
        assert_eq!((p % os::HUGE_PAGE, len % os::HUGE_PAGE), (0, 0));
        assert!(m.later_chunk(1).is_none());
        assert_eq!(m.set_huge(true), 1, "one chunk to collapse");
        assert_eq!(m.set_huge(true), 0, "already on");
        assert!(!m.alloc(3 * os::HUGE_PAGE, 64).is_null());
        let (p, len) = m.later_chunk(1).unwrap();
        assert_eq!((p % os::HUGE_PAGE, len), (0, 3 * os::HUGE_PAGE));
    }

    #[test]
    fn allocations_are_aligned_zeroed_and_disjoint() {
        let mut m = Meta::new();
        for i in 0..20_000 {
            let size = 8 + (i * 37) % 500;
            let p = m.alloc(size, 64);
            assert!(!p.is_null());
            assert_eq!(p as usize % 64, 0);
            // SAFETY: a fresh block of `size` bytes.
            let s = unsafe { core::slice::from_raw_parts_mut(p, size) };
            assert!(s.iter().all(|&b| b == 0));
            s.fill(0xAB);
        }
        assert!(m.mapped >= CHUNK);
        let big = m.alloc(3 * CHUNK, 64);
        assert!(!big.is_null());
        assert!(m.mapped >= 4 * CHUNK);
    }
}
