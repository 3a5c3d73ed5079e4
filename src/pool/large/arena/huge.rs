//! Which ranges go on transparent huge pages, and when: a 2 MiB range goes huge once enough of
//! it is in use, and what was touched before is collapsed into a huge page then. Blocks arm the
//! whole block zone at once (`arms`, `advise_block_chunk`, `advise_early_chunks`); segments go
//! one by one (`advise_taken_segment`, `segment_dense`, `advise_freed_segment`). The arena's
//! other files give no advice of their own; they call these.

use super::*;

/// A 2 MiB range goes on huge pages once enough of it is in use; before, 4 KiB pages (a huge
/// page holds 2 MiB resident for the few KiB a small process uses: mimalloc-bench's small
/// programs peak at 2-15 MiB under the other allocators, and at 5-46 MiB under tensorpool with
/// every range huge). The part touched before is collapsed into a huge page when the range
/// goes huge (`os::collapse_huge`), so the wait costs its 4 KiB faults once. Block chunks go
/// huge ("armed") once the arena holds this many bytes of blocks (live and cached), or at a
/// block of `HUGE_FROM_BLOCK`: 128 faults at most, where a 2 MiB threshold cost a Rust program
/// 600 (BPE training and a 49 MB JSON round trip: 987 faults with every range huge, 1,714
/// with blocks armed at 2 MiB, 777 at 512 KiB with segments as below).
const HUGE_DENSE_BLOCKS: usize = 512 << 10;
/// Once segments are armed (`HUGE_SEGMENTS_FROM`), a segment taken by a heap that has touched
/// less than this in all goes huge once it has this much touched itself
/// (`Arena::segment_alloc`, `Arena::segment_dense`): 256 faults at most. At
/// 512 KiB, espresso and cfrac peaked 1.3-1.6 MiB higher (a range a quarter used is resident
/// whole); at 1 MiB they peak as with their first segment on 4 KiB pages.
pub(crate) const HUGE_DENSE_SEGMENT: usize = 1 << 20;
/// Segments go on huge pages only once the heaps hold this many bytes of them ("armed"), or
/// for a heap that grows densely (`DENSE_GROWTH_SEGMENTS`): a segment is 4 MiB of 64 KiB
/// pages, each carved 4 KiB at a time, and on huge pages every touched half of it is resident
/// whole, with the pages emptied in it (which are purged on 4 KiB pages: `heap::purge`).
/// mimalloc-bench, with segments huge from a heap's first MiB: peak RSS 1.30 of the lowest
/// other's (geometric mean of 12 programs of 2-60 MiB), 1.20 with huge pages off, and no
/// program faster for them; rptest peaked at 46-50 MiB where mimalloc peaks at 10-19. The
/// price is the 4 KiB faults of the first 64 MiB, 16 K at most, which the dense-growth rule
/// takes down to a heap's first segment: the Rust program of 990 MiB (BPE training, a 49 MB
/// JSON round trip) faulted 15,182 times with this rule alone, 2,504 with both at two segments
/// (788 with every segment huge from a heap's first MiB; mimalloc 540-906).
pub(crate) const HUGE_SEGMENTS_FROM: u64 = 64 << 20;
/// A heap that has filled this many segments with pages, touched most of them
/// (`DENSE_GROWTH_TOUCHED`) and still holds most of what it touched (`DENSE_GROWTH_LIVE`),
/// takes its next segments on huge pages before segments are armed (`Growth::Dense`): a
/// program that builds one large structure (the Rust program above: one heap, 223 segments,
/// 98-99 % of what it touched live at every take) faulted its first 64 MiB on 4 KiB pages
/// otherwise. Every program grows densely at first (mimalloc-bench's larson, alloc-test,
/// xmalloc-test and rptest had freed no page when they took their second segment), so the
/// rule waited for size: at 1 segment the Rust program faulted 1,493 times, but larson peaked
/// 10 % higher and alloc-test 4 %; at 2, 2,504 faults, and of the suite only xmalloc-test,
/// whose heaps grow to five segments, peaked higher (43.5 -> 49.4 MiB, median of five; its
/// faults 9,200 -> 4,450). Since producers' heaps are told apart by the frees other threads
/// make of their blocks (`DENSE_GROWTH_REMOTE`), larson and xmalloc-test no longer grow
/// densely, and one segment is enough: the Rust program (now a 96 MB document) 2,972 -> 1,960
/// faults (mimalloc 1,171-1,460 in the same runs), alloc-test1 15.2-15.4 -> 15.8-16.0 MiB (three
/// alternated runs; alloc-testN, larson and mstress as before).
pub(crate) const DENSE_GROWTH_SEGMENTS: usize = 1;
/// `touched * DENSE_GROWTH_TOUCHED.1 >= segment bytes * DENSE_GROWTH_TOUCHED.0`: the share of
/// its segments a growing heap must have touched (rptest, 71 % at its second segment, stays
/// on 4 KiB pages; the Rust program had touched 80 % of its first).
pub(crate) const DENSE_GROWTH_TOUCHED: (usize, usize) = (3, 4);
/// `live * DENSE_GROWTH_LIVE.1 >= touched * DENSE_GROWTH_LIVE.0`: the share of what it touched
/// a growing heap's live blocks must hold.
pub(crate) const DENSE_GROWTH_LIVE: (usize, usize) = (7, 8);

/// `remote * DENSE_GROWTH_REMOTE.1 <= touched * DENSE_GROWTH_REMOTE.0`: a growing heap has taken
/// back at most this share of what it touched from frees by other threads
/// (`Heap::remote_taken`). Live blocks count those freed but not yet taken back, so a heap
/// whose blocks other threads free looked dense while it churned: xmalloc-test (producers and
/// consumers) peaked at 43-55 MiB with its heaps' later segments huge, 42-46 MiB with them on
/// 4 KiB pages (four alternated runs each, both at two segments of dense growth), its faults
/// 4,500 -> 9,500; a program building one structure frees its own blocks.
pub(crate) const DENSE_GROWTH_REMOTE: (usize, usize) = (1, 8);

/// What a heap taking a segment knows of itself (`Arena::segment_alloc`).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum Growth {
    /// It has touched less than `HUGE_DENSE_SEGMENT` of slab pages in all.
    Small,
    /// It has touched more.
    Past,
    /// It grows densely (`DENSE_GROWTH_SEGMENTS`), and other threads free few of its blocks
    /// (`DENSE_GROWTH_REMOTE`).
    Dense,
}

/// A block this large fills half a huge page on its own (see `HUGE_DENSE_BLOCKS`).
const HUGE_FROM_BLOCK: usize = 1 << 20;
/// Metadata chunks after the first go on huge pages once huge pages are armed and the arena
/// holds this much, live and cached (`ArenaState::advise_meta`): a 2 MiB huge page holding a
/// 32 KiB page-map node was a ninth of alloc-test's peak (mimalloc-bench: 18.0 -> 16.2 MiB,
/// mstress 18.4 -> 16.8); past this, 2 MiB is at most 3 % of what the process holds. The chunks
/// mapped before are collapsed then: left on 4 KiB pages, the tensor trace's first request
/// faulted 580 times instead of 446 (its first leaves are its most used), with them collapsed
/// 453.
pub(super) const HUGE_META_FROM: u64 = 64 << 20;
/// Tries of a collapse the kernel keeps answering `EAGAIN` (`Arena::collapse`).
const COLLAPSE_TRIES: u8 = 4;

impl ArenaState {
    /// Whether a block request of `size` bytes, taking an extent of `need`, arms huge pages
    /// (and marks them armed): the arena's blocks, live and cached, reach `HUGE_DENSE_BLOCKS`
    /// with it, or the block alone is `HUGE_FROM_BLOCK`. The caller then advises the chunks
    /// mapped before (`Arena::advise_early_chunks`) before it touches anything.
    #[link_section = ".text.hot.tensorpool"]
    pub(super) fn arms(&mut self, size: usize, need: usize) -> bool {
        if !self.huge_pages || self.huge_armed {
            return false;
        }
        let held = self.live - self.totals.segment_bytes + self.dirty_bytes - self.attr_bytes[SLAB];
        if size >= HUGE_FROM_BLOCK || held + need as u64 >= HUGE_DENSE_BLOCKS as u64 {
            self.arm();
        }
        self.huge_armed
    }

    /// Metadata chunks after the first on huge pages from now on, where huge pages are armed and
    /// the arena holds `HUGE_META_FROM` (checked before a request maps anything: `try_take`).
    /// True when it just turned them on: the later chunks mapped before are owed a collapse
    /// (`meta_owed`; `Arena::advise_early_chunks`).
    #[link_section = ".text.hot.tensorpool"]
    pub(super) fn advise_meta(&mut self) -> bool {
        if self.huge_pages
            && self.huge_armed
            && !self.meta.is_huge()
            && self.live + self.dirty_bytes >= HUGE_META_FROM
        {
            self.meta_owed = self.meta.set_huge(true) + self.map_meta.set_huge(true) > 0;
            return true;
        }
        false
    }

    /// Arm huge pages and advise the block chunks mapped before, now, under the lock: from here
    /// on another thread may place a block in them, and its pages must fault huge (advised by
    /// the arming thread once the lock was dropped, another thread could write a block into
    /// them in between, on 4 KiB pages). Collapsing what they hold already is the caller's
    /// business, outside the lock (`Arena::advise_early_chunks`).
    fn arm(&mut self) {
        self.huge_armed = true;
        for &(p, len) in &self.unadvised {
            if len != 0 {
                os::advise_huge(p as *mut u8, len);
            }
        }
    }

    /// A block chunk `[p, p + len)` was just mapped: advise it where huge pages are armed, else
    /// owe it the advice (`unadvised`). True when it armed them (a fifth chunk before the bytes
    /// said so: big enough anyway), so that the caller pays what is owed.
    pub(super) fn advise_block_chunk(&mut self, p: *mut u8, len: usize) -> bool {
        if self.huge_pages && self.huge_armed {
            os::advise_huge(p, len);
        } else if let Some(slot) = self.unadvised.iter_mut().find(|u| u.1 == 0) {
            *slot = (p as usize, len);
        } else if self.huge_pages {
            self.arm();
            os::advise_huge(p, len);
            return true;
        }
        false
    }
}

impl Arena {
    /// The options were just read, or huge pages were just armed (`HUGE_DENSE_BLOCKS`; `arm`
    /// advised the block chunks mapped before): where they are armed, collapse what those
    /// chunks hold into huge pages, and let the page map's later metadata chunks be huge pages.
    ///
    /// Advice alone is for pages to come: a 2 MiB range with one 4 KiB page resident gets no
    /// huge page at a later fault (the kernel maps one only where the range's page table is
    /// empty), so the blocks placed before arming would fault 4 KiB pages for good, each time
    /// they are purged and taken again (a Rust program: 2,116 faults against 984 with blocks
    /// advised from the start).
    #[link_section = ".text.hot.tensorpool"]
    pub(crate) fn advise_early_chunks(&self) {
        let (due, meta_owed) = self.with(|s| {
            let due = if s.huge_pages && s.huge_armed {
                s.advise_meta();
                core::mem::take(&mut s.unadvised)
            } else {
                s.meta.set_huge(false);
                s.map_meta.set_huge(false);
                [(0, 0); 4]
            };
            (due, core::mem::take(&mut s.meta_owed))
        });
        for (p, len) in due {
            if len != 0 {
                self.collapse(p as *mut u8, len, 1);
            }
        }
        if meta_owed {
            self.collapse_meta();
        }
    }

    /// Collapse the metadata chunks mapped on 4 KiB pages before metadata went huge
    /// (`advise_meta`): the page map's leaves of the ranges a process used first are its most
    /// used (the tensor trace's first request faulted 580 times instead of 446 with them left
    /// on 4 KiB pages, its requests 2-3 five times instead of once). Chunks are never unmapped
    /// while the arena lives, so reading their bounds and collapsing them outside the lock is
    /// safe; a chunk the kernel refuses stays on 4 KiB pages.
    fn collapse_meta(&self) {
        for i in 0.. {
            let (a, b) = self.with(|s| (s.meta.later_chunk(i), s.map_meta.later_chunk(i)));
            if a.is_none() && b.is_none() {
                break;
            }
            for (p, len) in [a, b].into_iter().flatten() {
                self.collapse(p as *mut u8, len, 1);
            }
        }
    }

    /// Collapse the 2 MiB ranges of `[p, p + len)` (huge-page aligned) into huge pages, one
    /// call each (`os::collapse_huge`), try `tries` of `COLLAPSE_TRIES`. One call over the
    /// whole chunk answers `EINVAL` at its first range with nothing resident and leaves the
    /// ranges after it alone (Linux 6.18: of a 64 MiB chunk with 300 KiB written at each end,
    /// only the first range went huge), so a soak whose first blocks sat at the top of the
    /// chunk faulted that range's 512 pages one by one, for good. A range the kernel answers
    /// `EAGAIN` for (a page busy) is owed another try at the next decay tick or growth.
    #[link_section = ".text.hot.tensorpool"]
    fn collapse(&self, p: *mut u8, len: usize, tries: u8) {
        for r in (p as usize..p as usize + len).step_by(HUGE_PAGE) {
            if os::collapse_huge(r as *mut u8) && tries < COLLAPSE_TRIES {
                self.with(|s| {
                    if let Some(slot) = s.recollapse.iter_mut().find(|x| x.0 == 0) {
                        *slot = (r, tries + 1);
                    }
                });
            }
        }
    }

    /// Try again the collapses owed (`recollapse`).
    #[link_section = ".text.hot.tensorpool"]
    pub(super) fn collapse_owed(&self) {
        let owed = self.with(|s| core::mem::take(&mut s.recollapse));
        for (r, tries) in owed {
            if r != 0 {
                self.collapse(r as *mut u8, HUGE_PAGE, tries);
            }
        }
    }

    /// Advise a segment a heap just took (`segment_alloc`), as `growth` says of the heap.
    /// `Growth::Small`: a huge page would hold 2 MiB resident for the few KiB it uses
    /// (mimalloc-bench's glibc-thread: 12.9 MiB peak against 3.1 MiB, three heaps; glibc-simple,
    /// one heap with a page for each of many size classes, fills a segment by page count and
    /// takes a second): the segment is advised off huge pages until it has `HUGE_DENSE_SEGMENT`
    /// touched (`segment_dense`). `Growth::Past` takes it huge from the start once segments are
    /// armed (the heaps hold `HUGE_SEGMENTS_FROM` of them; this take may arm them), and
    /// `Growth::Dense` at once. Returns whether the segment is taken small.
    pub(super) fn advise_taken_segment(&self, base: *mut u8, size: usize, growth: Growth) -> bool {
        let (huge_pages, armed) = self.with(|s| {
            let mut armed = self.segments_armed.load(Relaxed);
            if !armed && s.huge_pages && s.totals.segment_bytes >= HUGE_SEGMENTS_FROM {
                self.segments_armed.store(true, Relaxed);
                armed = true;
            }
            (s.huge_pages, armed)
        });
        // Off huge pages altogether, every segment counts as small: its idle pages are purged.
        let small = !huge_pages
            || match growth {
                Growth::Small => true,
                Growth::Past => !armed,
                Growth::Dense => false,
            };
        if huge_pages {
            if small {
                os::advise_small(base, size);
            } else {
                os::advise_huge(base, size);
            }
        }
        small
    }

    /// Whether segments are armed (`HUGE_SEGMENTS_FROM`): a heap need not ask whether it grows
    /// densely (`Growth::Dense`) once they are.
    pub(crate) fn segments_armed(&self) -> bool {
        self.segments_armed.load(Relaxed)
    }

    /// A segment taken small (`segment_alloc`) now has `HUGE_DENSE_SEGMENT` touched: where
    /// segments are armed, advise it huge, collapse the part already resident into huge pages
    /// and answer true; false where it stays on 4 KiB pages for now.
    #[link_section = ".text.hot.tensorpool"]
    pub(crate) fn segment_dense(&self, seg: *mut u8, size: usize) -> bool {
        if !self.segments_armed() {
            return false;
        }
        os::advise_huge(seg, size);
        self.collapse(seg, size, 1);
        true
    }

    /// A segment is coming back (`segment_free`): free segment space stays off huge pages, since
    /// khugepaged collapses an advised range that holds a single resident page (glibc-simple
    /// peaked at 4.7 MiB instead of 2.8 in a third of its runs, a freed segment collapsed
    /// whole). `small`: it is off them already.
    pub(super) fn advise_freed_segment(&self, seg: *mut u8, size: usize, small: bool) {
        if !small && self.with(|s| s.huge_pages) {
            os::advise_small(seg, size);
        }
    }
}
