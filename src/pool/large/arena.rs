//! The extent arena: the address space every large block and every small-block segment is carved
//! from.
//!
//! **Chunks and regions.** Memory comes from the OS in chunks (64 MiB at first for blocks,
//! 16 MiB for segments, doubling up to 1 GiB, or what one request needs), 2 MiB-aligned so huge
//! pages stay possible, mapped read-write once and never split by `mprotect` or `mremap`. Blocks
//! and segments live in zones of their own. The block zone starts at a randomised hint far from
//! the kernel's own placements (`BLOCK_HINT`) and each new chunk is asked for just above the
//! highest one (a hint, never `MAP_FIXED`), so consecutive chunks usually touch: the kernel then
//! merges them into one mapping, and the arena treats touching chunks as one *region*, in which
//! free extents coalesce across the old chunk boundary. The process's mapping count is
//! therefore the number of regions, not of blocks.
//!
//! **Extents.** A region is tiled by extents (see `extent`): live blocks, segments, and free
//! extents, which are *dirty* (resident, kept for reuse) or *clean* (never touched, or purged).
//! Free extents of one state coalesce with their free neighbours of the same state at every
//! free, so the free space is a few large extents, whichever kinds released them. A request
//! takes the lowest-addressed free *run* (neighbouring dirty and clean extents together, `tree`)
//! that fits, splitting off what it does not need; only its clean pages fault. Lowest address
//! first keeps old chunks' free space ahead of new pages and leaves a block room above it to
//! grow in place. Blocks of every kind share the arena: a KV cache's freed pages serve the next
//! activation without moving a page. Accounting stays per kind and exact: each dirty extent
//! records how many of its bytes each kind released (`shares`), merges add them, and a request
//! or a purge takes its own kind's share first.
//!
//! **Returning memory.** Dirty pages go back to the OS with `MADV_DONTNEED` (`MADV_FREE` as an
//! option), which splits no mapping: by decay, when they were idle for a whole period; by the
//! bound (see `decay`), when dirty bytes would exceed the recent live peak plus a sixteenth, or
//! `live + dirty` stays above that for a second; by a kind's configured capacity; and at `trim`.
//! Purging happens outside the lock: the extents are marked `Busy`, the lock is dropped for the
//! system call, and they come back clean. When the OS refuses a chunk, `recover` unmaps every
//! free extent of every kind (dirty and clean, address space included) and the request is tried
//! once more before it fails.
//!
//! Invariants (checked by `census`): per region, extents tile `[base, end)` in address order;
//! every free extent is in the tree of its state, every dirty one on the release-order list,
//! sorted by `released`; no two free neighbours share a state; a dirty extent's shares sum to
//! its size and `attr_bytes[a]` is the sum of share `a`; `live + dirty.bytes + clean.bytes +
//! busy == mapped`.

use super::decay::Decay;
use super::extent::{Extent, Prefer, State, ATTRS};
use super::tree::Tree;
use crate::kind::NUM_KINDS;
use crate::meta::Meta;
use crate::os::{self, HUGE_PAGE, PAGE};
use crate::pagemap::{self, PageMap};
use crate::stats::{ArenaCounters, LargeCounters};
use crate::sync::plain::AtomicU64;
use crate::sync::SpinLock;
use core::ptr;
use core::sync::atomic::Ordering::Relaxed;

/// The attribution of dirty memory that was a small-block segment.
pub(crate) const SLAB: usize = NUM_KINDS;

/// The arena's zones: large blocks, and small-block segments (long-lived, so kept apart, where
/// they cannot pin holes between blocks). Free extents coalesce only within a zone.
pub(crate) const BLOCKS: usize = 0;
pub(crate) const SEGMENTS: usize = 1;
const ZONES: usize = 2;

/// First chunk size of each zone; each new chunk doubles it up to `CHUNK_MAX`. (Loom models
/// keep them small.)
const CHUNK_MIN: [usize; ZONES] = if cfg!(loom) {
    [16 << 20, 8 << 20]
} else {
    [64 << 20, 16 << 20]
};
const CHUNK_MAX: usize = 1 << 30;

/// Where the block zone's first chunk is asked for: somewhere in this range (randomised per
/// process), far below where the kernel puts mappings on its own (top-down from just below the
/// stack) and above where it puts the program and its heap, so that the zone can grow upwards,
/// each chunk just above the last. Blocks are placed lowest address first, so growing upwards
/// keeps the free space of old chunks preferred to new pages, and leaves a block room to grow
/// in place into the space above it. Where the range is not free (or the address space is
/// smaller), the kernel places the chunk and the zone grows wherever it can.
const BLOCK_HINT: (usize, usize) = (0x2000_0000_0000, 0x1000_0000_0000);
/// Chunks start on this boundary (the huge-page size).
const CHUNK_ALIGN: usize = HUGE_PAGE;

/// Blocks below this size start at a rotating cache colour within their first page.
const COLOUR_MAX: usize = 2 << 20;
/// Colours: line offsets within the first page.
const COLOURS: usize = PAGE / 64;
/// The largest colour offset.
const COLOUR_SPAN: usize = (COLOURS - 1) * 64;

/// A shrink in place gives back the tail once it is at least this large.
const SHRINK_MIN: usize = 64 << 10;

/// Capacity value meaning "follow the workload" (no configured number).
pub(crate) const AUTO: usize = usize::MAX;

/// A contiguous mapped range tiled by extents.
struct Region {
    zone: u8,
    base: usize,
    end: usize,
    first: *mut Extent,
    last: *mut Extent,
    next: *mut Region,
}

/// A release-order list: `head` most recently released, `tail` least.
#[derive(Clone, Copy)]
struct Lru {
    head: *mut Extent,
    tail: *mut Extent,
}

/// What an extent is taken for.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum Use {
    /// A large block of a kind.
    Block(usize),
    /// A small-block segment (aligned to its size).
    Segment,
}

impl Use {
    /// The zone it is carved from.
    fn zone(self) -> usize {
        match self {
            Use::Block(_) => BLOCKS,
            Use::Segment => SEGMENTS,
        }
    }

    /// The attribution whose dirty share it takes first.
    fn attr(self) -> usize {
        match self {
            Use::Block(k) => k,
            Use::Segment => SLAB,
        }
    }
}

/// Why dirty memory was purged (for the counters).
#[derive(Clone, Copy, PartialEq, Eq)]
enum Cause {
    Decay,
    Bound,
    Capacity,
    Trim,
}

/// What a step under the lock asks the caller to do once the lock is dropped.
enum Step {
    Done(*mut Extent),
    /// Purge this chain of `Busy` extents, then try again.
    Purge(*mut Extent),
    /// Map a chunk of at least this many bytes for a zone, then try again.
    Grow(usize, usize),
    /// No descriptor or page-map node could be had.
    NoMeta,
    /// The request can never be served (its size overflows).
    Fail,
}

/// The arena's state, behind its lock.
pub(crate) struct ArenaState {
    /// Free runs of each zone, by address.
    runs: [Tree; ZONES],
    /// Bytes of dirty and of clean extents.
    dirty_bytes: u64,
    clean_bytes: u64,
    /// Dirty extents in release order.
    lru: Lru,
    /// Dirty bytes per attribution (the kinds' `cached_bytes`, and returned segments).
    attr_bytes: [u64; ATTRS],
    /// Unused descriptors, linked through `next`.
    spare: *mut Extent,
    spares: usize,
    regions: *mut Region,
    spare_regions: *mut Region,
    meta: Meta,
    /// Per-kind counters (`cached_bytes` is filled from `attr_bytes` when read).
    pub(crate) kinds: [LargeCounters; NUM_KINDS],
    pub(crate) totals: ArenaCounters,
    /// Live block and segment bytes (what the bound compares with its peak).
    live: u64,
    /// Bytes of extents out for purging or unmapping.
    busy: u64,
    clock: u64,
    colour: usize,
    chunk_next: [usize; ZONES],
    /// Per kind: a configured soft capacity on live + cached bytes, or `AUTO`.
    pub(crate) capacity: [usize; NUM_KINDS],
    pub(crate) decay: Decay,
    /// Purge with `MADV_FREE` rather than `MADV_DONTNEED`.
    pub(crate) lazy_purge: bool,
    /// Huge pages: advise them on new chunks, align blocks of 2 MiB or more to 2 MiB, and
    /// purge whole free huge pages before cutting into one (`take_dirty`).
    pub(crate) huge_pages: bool,
}

// SAFETY: the raw pointers are descriptors and regions owned by the arena, touched only under its
// lock (or, for a live block, by the thread holding it).
unsafe impl Send for ArenaState {}

/// The arena: its state behind a lock, and the page map read without it.
pub(crate) struct Arena {
    state: SpinLock<ArenaState>,
    pub(crate) map: PageMap,
    /// When decay is next due (a copy of `Decay::due_at`, so the heartbeat needs no lock).
    due: AtomicU64,
}

#[cfg(not(loom))]
#[inline]
fn now() -> u64 {
    os::coarse_now_ns()
}
/// Loom models do not model time: decay is driven by `Arena::tick_at`.
#[cfg(loom)]
#[inline]
fn now() -> u64 {
    0
}

impl ArenaState {
    const fn new() -> Self {
        Self {
            runs: [Tree::new(), Tree::new()],
            dirty_bytes: 0,
            clean_bytes: 0,
            lru: Lru {
                head: ptr::null_mut(),
                tail: ptr::null_mut(),
            },
            attr_bytes: [0; ATTRS],
            spare: ptr::null_mut(),
            spares: 0,
            regions: ptr::null_mut(),
            spare_regions: ptr::null_mut(),
            meta: Meta::new(),
            kinds: [LargeCounters::ZERO; NUM_KINDS],
            totals: ArenaCounters {
                mapped_bytes: 0,
                regions: 0,
                chunk_maps: 0,
                unmaps: 0,
                dirty_bytes: 0,
                clean_bytes: 0,
                segment_bytes: 0,
                live_bytes: 0,
                purges: 0,
                purged_bytes: 0,
                decay_purged_bytes: 0,
                bound_purged_bytes: 0,
                capacity_purged_bytes: 0,
                recoveries: 0,
                extents: 0,
                meta_bytes: 0,
                recent_peak_bytes: 0,
                bound_bytes: 0,
                grown_in_place: 0,
                shrunk_in_place: 0,
                huge_pages: false,
                huge_page_cuts: 0,
            },
            live: 0,
            busy: 0,
            clock: 0,
            colour: 0,
            chunk_next: CHUNK_MIN,
            capacity: [AUTO; NUM_KINDS],
            decay: Decay::new(super::decay::DEFAULT_MS),
            lazy_purge: false,
            huge_pages: false,
        }
    }

    // -----------------------------------------------------------------------------------------
    // Descriptors and regions
    // -----------------------------------------------------------------------------------------

    /// Make sure `n` spare descriptors and two spare region records exist (so that a step
    /// never fails half-way). False when metadata cannot be mapped.
    fn reserve(&mut self, n: usize) -> bool {
        while self.spares < n {
            let e = self
                .meta
                .alloc(core::mem::size_of::<Extent>(), 64)
                .cast::<Extent>();
            if e.is_null() {
                return false;
            }
            // SAFETY: fresh, zeroed, aligned metadata memory of the descriptor's size.
            unsafe {
                e.write(Extent::EMPTY);
                (*e).next = self.spare;
            }
            self.spare = e;
            self.spares += 1;
        }
        for _ in 0..2 {
            if self.spare_regions.is_null() {
                let r = self
                    .meta
                    .alloc(core::mem::size_of::<Region>(), 8)
                    .cast::<Region>();
                if r.is_null() {
                    return false;
                }
                // SAFETY: fresh metadata memory of the record's size.
                unsafe {
                    r.write(Region {
                        zone: 0,
                        base: 0,
                        end: 0,
                        first: ptr::null_mut(),
                        last: ptr::null_mut(),
                        next: ptr::null_mut(),
                    })
                };
                self.spare_regions = r;
            } else {
                break;
            }
        }
        self.totals.meta_bytes = self.meta.mapped as u64;
        true
    }

    /// A descriptor from the spares (`reserve` made sure there is one).
    fn new_desc(&mut self) -> *mut Extent {
        let e = self.spare;
        debug_assert!(!e.is_null(), "descriptor reserve exhausted");
        // SAFETY: spares are unused descriptors owned by the arena.
        unsafe {
            self.spare = (*e).next;
            e.write(Extent::EMPTY);
        }
        self.spares -= 1;
        self.totals.extents += 1;
        e
    }

    fn free_desc(&mut self, e: *mut Extent) {
        // SAFETY: `e` is off every tree, list and region; it is ours to recycle.
        unsafe {
            e.write(Extent::EMPTY);
            (*e).next = self.spare;
        }
        self.spare = e;
        self.spares += 1;
        self.totals.extents -= 1;
    }

    fn new_region(
        &mut self,
        zone: u8,
        base: usize,
        end: usize,
        first: *mut Extent,
        last: *mut Extent,
    ) {
        let r = if self.spare_regions.is_null() {
            self.meta
                .alloc(core::mem::size_of::<Region>(), 8)
                .cast::<Region>()
        } else {
            let r = self.spare_regions;
            // SAFETY: spare records are ours.
            self.spare_regions = unsafe { (*r).next };
            r
        };
        debug_assert!(!r.is_null(), "region reserve exhausted");
        // SAFETY: a record owned by the arena.
        unsafe {
            r.write(Region {
                zone,
                base,
                end,
                first,
                last,
                next: self.regions,
            });
        }
        self.regions = r;
        self.totals.regions += 1;
    }

    /// The region holding address `a`.
    fn region_of(&self, a: usize) -> *mut Region {
        let mut r = self.regions;
        // SAFETY: region records are ours.
        unsafe {
            while !(r.is_null() || ((*r).base <= a && a < (*r).end)) {
                r = (*r).next;
            }
        }
        debug_assert!(!r.is_null(), "address {a:#x} in no region");
        r
    }

    fn drop_region(&mut self, dead: *mut Region) {
        let mut pp: *mut *mut Region = &mut self.regions;
        // SAFETY: region records are ours; `dead` is on the list.
        unsafe {
            while *pp != dead {
                pp = &mut (**pp).next;
            }
            *pp = (*dead).next;
            (*dead).next = self.spare_regions;
        }
        self.spare_regions = dead;
        self.totals.regions -= 1;
    }

    /// Link `n` just after `x` in address order (`n` covers what follows `x`).
    ///
    /// # Safety
    /// Both are our descriptors; `n` is on no list; `n.base == x.end()`.
    unsafe fn link_after(&mut self, x: *mut Extent, n: *mut Extent) {
        // SAFETY: the caller's contract.
        unsafe {
            debug_assert_eq!((*n).base, (*x).end());
            let next = (*x).next;
            (*n).prev = x;
            (*n).next = next;
            (*x).next = n;
            if next.is_null() {
                (*self.region_of((*x).base)).last = n;
            } else {
                (*next).prev = n;
            }
        }
    }

    /// `keep` absorbs its next neighbour `gone`, which leaves the address list (its descriptor
    /// is recycled by the caller).
    ///
    /// # Safety
    /// `gone == keep.next`; neither is in a tree or on a list the caller has not dealt with.
    unsafe fn absorb_next(&mut self, keep: *mut Extent, gone: *mut Extent) {
        // SAFETY: the caller's contract.
        unsafe {
            debug_assert_eq!((*keep).next, gone);
            let next = (*gone).next;
            (*keep).size += (*gone).size;
            (*keep).next = next;
            if next.is_null() {
                (*self.region_of((*keep).base)).last = keep;
            } else {
                (*next).prev = keep;
            }
        }
    }

    // -----------------------------------------------------------------------------------------
    // Release-order lists
    // -----------------------------------------------------------------------------------------

    /// Make `e` the most recently released dirty extent.
    ///
    /// # Safety
    /// `e` is a live descriptor of a dirty extent on no release-order list; the lock is held.
    unsafe fn lru_push(&mut self, e: *mut Extent) {
        // SAFETY: `e` is a dirty extent on no list.
        unsafe {
            let l = &mut self.lru;
            (*e).lru_prev = ptr::null_mut();
            (*e).lru_next = l.head;
            if l.head.is_null() {
                l.tail = e;
            } else {
                (*l.head).lru_prev = e;
            }
            l.head = e;
        }
    }

    /// Take `e` off the release-order list.
    ///
    /// # Safety
    /// `e` is a live descriptor on this state's list; the lock is held.
    unsafe fn lru_unlink(&mut self, e: *mut Extent) {
        // SAFETY: `e` is on the list.
        unsafe {
            let l = &mut self.lru;
            let (p, n) = ((*e).lru_prev, (*e).lru_next);
            if p.is_null() {
                l.head = n;
            } else {
                (*p).lru_next = n;
            }
            if n.is_null() {
                l.tail = p;
            } else {
                (*n).lru_prev = p;
            }
            (*e).lru_prev = ptr::null_mut();
            (*e).lru_next = ptr::null_mut();
        }
    }

    /// Put `t` on the list right after `e` (towards older), with `e`'s release clock.
    ///
    /// # Safety
    /// `e` is on this state's list, `t` a live dirty descriptor on none; the lock is held.
    unsafe fn lru_insert_after(&mut self, e: *mut Extent, t: *mut Extent) {
        // SAFETY: `e` is on the list, `t` on none.
        unsafe {
            let n = (*e).lru_next;
            (*t).lru_prev = e;
            (*t).lru_next = n;
            (*e).lru_next = t;
            if n.is_null() {
                self.lru.tail = t;
            } else {
                (*n).lru_prev = t;
            }
        }
    }

    /// The least recently released dirty extent holding bytes of `attr` (any, for `None`).
    fn oldest(&self, attr: Option<usize>) -> *mut Extent {
        // SAFETY: the tail is null or on the list.
        unsafe { Self::holding(self.lru.tail, attr) }
    }

    /// `e`, or the first extent released after it, that holds bytes of `attr` (any, for
    /// `None`); null if none does.
    ///
    /// # Safety
    /// `e` is null or on the release-order list; the lock is held.
    unsafe fn holding(mut e: *mut Extent, attr: Option<usize>) -> *mut Extent {
        if let Some(a) = attr {
            // SAFETY: list members are our dirty extents.
            unsafe {
                while !e.is_null() && (*e).shares[a] == 0 {
                    e = (*e).lru_prev;
                }
            }
        }
        e
    }

    // -----------------------------------------------------------------------------------------
    // Free extents and runs
    // -----------------------------------------------------------------------------------------

    /// Whether `e` is a free extent (null is not).
    ///
    /// # Safety
    /// `e` is null or our descriptor.
    #[inline]
    unsafe fn is_free(e: *mut Extent) -> bool {
        // SAFETY: the caller's contract.
        !e.is_null() && unsafe { (*e).state() }.is_free()
    }

    /// The first extent of the run holding free extent `e`.
    ///
    /// # Safety
    /// `e` is our free extent.
    unsafe fn run_head(mut e: *mut Extent) -> *mut Extent {
        // SAFETY: neighbours are our extents.
        unsafe {
            while Self::is_free((*e).prev) {
                e = (*e).prev;
            }
        }
        e
    }

    /// Take the run holding free extent `e` out of the tree (before the run changes).
    ///
    /// # Safety
    /// `e` is our free extent, its run in the tree.
    unsafe fn detach_run(&mut self, e: *mut Extent) {
        // SAFETY: the caller's contract.
        unsafe {
            let h = Self::run_head(e);
            self.runs[(*h).zone as usize].remove(h);
            (*h).span = 0;
        }
    }

    /// Put the run holding `e` (if `e` is free) into the tree, its length measured.
    ///
    /// # Safety
    /// `e` is null or our extent; if free, its run is not in the tree.
    unsafe fn attach_run(&mut self, e: *mut Extent) {
        // SAFETY: the caller's contract; run members are our extents.
        unsafe {
            if !Self::is_free(e) {
                return;
            }
            let h = Self::run_head(e);
            let mut span = 0;
            let mut x = h;
            while Self::is_free(x) {
                span += (*x).size;
                x = (*x).next;
            }
            (*h).span = span;
            self.runs[(*h).zone as usize].insert(h);
        }
    }

    /// Shares `c` leave the dirty set.
    fn unattribute(&mut self, c: &[u64; ATTRS]) {
        for (t, &b) in self.attr_bytes.iter_mut().zip(c) {
            *t -= b;
        }
    }

    /// Add a freed extent to the dirty set as released by `attr`, coalescing with dirty
    /// neighbours (their shares add up; the merged extent is the most recently released) and
    /// joining the run of any free neighbour.
    ///
    /// # Safety
    /// `e` is our extent, not free, in no list, in its region's address list.
    unsafe fn put_dirty(&mut self, e: *mut Extent, attr: usize) {
        // SAFETY: the caller's contract; neighbours are our extents.
        unsafe {
            let (l, r) = ((*e).prev, (*e).next);
            if Self::is_free(l) {
                self.detach_run(l);
            }
            if Self::is_free(r) {
                self.detach_run(r);
            }
            self.clock += 1;
            (*e).set_state(State::Dirty);
            (*e).zero = false;
            (*e).released = self.clock;
            (*e).shares = [0; ATTRS];
            (*e).shares[attr] = (*e).size as u64;
            self.attr_bytes[attr] += (*e).size as u64;
            self.dirty_bytes += (*e).size as u64;
            let mut e = e;
            if !l.is_null() && (*l).state() == State::Dirty {
                self.lru_unlink(l);
                add_shares(&mut (*l).shares, &(*e).shares);
                self.absorb_next(l, e);
                self.free_desc(e);
                (*l).released = self.clock;
                e = l;
            }
            self.lru_push(e);
            if !r.is_null() && (*r).state() == State::Dirty {
                self.lru_unlink(r);
                add_shares(&mut (*e).shares, &(*r).shares);
                self.absorb_next(e, r);
                self.free_desc(r);
            }
            self.attach_run(e);
        }
    }

    /// Add an extent to the clean set, coalescing with clean neighbours and joining the run of
    /// any free neighbour.
    ///
    /// # Safety
    /// As for `put_dirty`; `zero` says whether its bytes read as zero.
    unsafe fn put_clean(&mut self, e: *mut Extent, zero: bool) {
        // SAFETY: the caller's contract; neighbours are our extents.
        unsafe {
            let (l, r) = ((*e).prev, (*e).next);
            if Self::is_free(l) {
                self.detach_run(l);
            }
            if Self::is_free(r) {
                self.detach_run(r);
            }
            (*e).set_state(State::Clean);
            (*e).zero = zero;
            (*e).shares = [0; ATTRS];
            self.clean_bytes += (*e).size as u64;
            let mut e = e;
            if !l.is_null() && (*l).state() == State::Clean {
                (*l).zero &= zero;
                self.absorb_next(l, e);
                self.free_desc(e);
                e = l;
            }
            if !r.is_null() && (*r).state() == State::Clean {
                (*e).zero &= (*r).zero;
                self.absorb_next(e, r);
                self.free_desc(r);
            }
            self.attach_run(e);
        }
    }

    /// Split free extent `x` at `at` (page-aligned, inside it): `x` keeps the low part, and the
    /// returned extent, of the same state, the high part (a dirty one with the shares `high`
    /// says, and `x`'s place in release order). The run is unchanged.
    ///
    /// # Safety
    /// `x` is our free extent with `x.base < at < x.end()`; a spare descriptor exists.
    unsafe fn split(&mut self, x: *mut Extent, at: usize, high: Prefer) -> *mut Extent {
        // SAFETY: the caller's contract.
        unsafe {
            debug_assert!((*x).base < at && at < (*x).end());
            let st = (*x).state();
            let y = self.new_desc();
            (*y).base = at;
            (*y).size = (*x).end() - at;
            (*x).size = at - (*x).base;
            (*y).zero = (*x).zero;
            (*y).zone = (*x).zone;
            (*y).released = (*x).released;
            (*y).set_state(st);
            if st == State::Dirty {
                (*y).shares = (*x).take_shares((*y).size as u64, high);
                self.lru_insert_after(x, y);
            }
            self.link_after(x, y);
            y
        }
    }

    /// Take free extent `x` out of the free set: off the release-order list, its shares and
    /// bytes uncounted, `Busy`. Its run must already be out of the tree.
    ///
    /// # Safety
    /// `x` is our free extent.
    unsafe fn unfree(&mut self, x: *mut Extent) -> [u64; ATTRS] {
        // SAFETY: the caller's contract.
        unsafe {
            let c = (*x).shares;
            if (*x).state() == State::Dirty {
                self.lru_unlink(x);
                self.unattribute(&c);
                self.dirty_bytes -= (*x).size as u64;
            } else {
                self.clean_bytes -= (*x).size as u64;
            }
            (*x).shares = [0; ATTRS];
            (*x).set_state(State::Busy);
            c
        }
    }

    /// Cut `[a, a + need)` out of the run starting at `h` and return it as one `Busy` extent,
    /// off every tree and list, with what it took: the dirty bytes by the kind that released
    /// them (`first`'s share first), the clean (fresh) bytes, and whether all of it reads as
    /// zero. What is left of the run stays free in place.
    ///
    /// # Safety
    /// `h` is the first extent of a run in the tree holding `[a, a + need)`; three spare
    /// descriptors exist.
    unsafe fn carve(
        &mut self,
        h: *mut Extent,
        a: usize,
        need: usize,
        first: usize,
    ) -> (*mut Extent, [u64; ATTRS], u64, bool) {
        // SAFETY: the caller's contract; run members are our extents.
        unsafe {
            debug_assert!((*h).base <= a && a + need <= (*h).base + (*h).span);
            self.runs[(*h).zone as usize].remove(h);
            (*h).span = 0;
            let end = a + need;
            let mut x = h;
            while (*x).end() <= a {
                x = (*x).next;
            }
            // The range takes its own kind's share of a split extent first, what stays free the
            // others' (attribution inside one dirty extent is a convention; residency is exact).
            if (*x).base < a {
                x = self.split(x, a, Prefer::Own(first));
            }
            let start = x;
            let mut taken = [0; ATTRS];
            let mut fresh = 0u64;
            let mut zero = true;
            loop {
                if (*x).end() > end {
                    self.split(x, end, Prefer::Others(first));
                }
                if (*x).state() == State::Clean {
                    fresh += (*x).size as u64;
                    zero &= (*x).zero;
                } else {
                    zero = false;
                }
                let last = (*x).end() == end;
                let c = self.unfree(x);
                add_shares(&mut taken, &c);
                if last {
                    break;
                }
                x = (*x).next;
            }
            // One extent for the whole range.
            while (*start).end() < end {
                let n = (*start).next;
                self.absorb_next(start, n);
                self.free_desc(n);
            }
            self.attach_run((*start).prev);
            self.attach_run((*start).next);
            (start, taken, fresh, zero)
        }
    }

    // -----------------------------------------------------------------------------------------
    // Taking and releasing
    // -----------------------------------------------------------------------------------------

    /// Where a block of `size` bytes aligned to `align` starts in its extent, the extent's size,
    /// and the alignment the extent needs.
    fn placement(&mut self, u: Use, size: usize, align: usize) -> Option<(usize, usize, usize)> {
        let (off, ealign): (usize, usize) = match u {
            Use::Segment => (0, size),
            Use::Block(_) if align >= PAGE => (0, align),
            Use::Block(_) => {
                let ealign = if self.huge_pages && size >= CHUNK_ALIGN {
                    CHUNK_ALIGN
                } else {
                    PAGE
                };
                if size < COLOUR_MAX {
                    self.colour = self.colour.wrapping_add(1);
                    let off = ((self.colour % COLOURS) * 64).next_multiple_of(align) % PAGE;
                    // Room for the largest colour whatever this one is: blocks of one size
                    // always take extents of one size, so a freed block's extent fits the next
                    // block of its size (with colours of their own, they would not, and every
                    // free would leave a hole one page short).
                    let need = size
                        .checked_add(COLOUR_SPAN)?
                        .checked_next_multiple_of(PAGE)?;
                    return Some((off, need, ealign));
                }
                (0, ealign)
            }
        };
        let need = off.checked_add(size)?.checked_next_multiple_of(PAGE)?;
        Some((off, need, ealign))
    }

    /// One attempt at a request, under the lock.
    fn try_take(&mut self, map: &PageMap, u: Use, size: usize, align: usize, now: u64) -> Step {
        if !self.reserve(4) {
            return Step::NoMeta;
        }
        let chain = self.advance(now);
        if !chain.is_null() {
            return Step::Purge(chain);
        }
        let Some((off, need, ealign)) = self.placement(u, size, align) else {
            return Step::Fail;
        };
        // The lowest-addressed fit, at its low end (see `BLOCK_HINT` for why).
        let zone = u.zone();
        let (mut h, mut a) = self.runs[zone].first_fit(need, ealign);
        // A huge-page alignment is a preference, not the caller's: where the aligned fit would
        // fault pages in and an unaligned one is resident already, reuse wins (a repeated
        // request must not fault because its old extent starts off a 2 MiB boundary).
        let preferred = align < PAGE && ealign > PAGE;
        // SAFETY: a non-null `h` heads a run holding `[a, a + need)`.
        if preferred && (h.is_null() || unsafe { Self::clean_in(h, a, need) } > 0) {
            let (h2, a2) = self.runs[zone].first_fit(need, PAGE);
            // SAFETY: as above.
            if !h2.is_null() && unsafe { Self::clean_in(h2, a2, need) } == 0 {
                (h, a) = (h2, a2);
            }
        }
        if h.is_null() {
            return match need.checked_add(ealign - PAGE) {
                Some(b) => Step::Grow(zone, b),
                None => Step::Fail,
            };
        }
        // SAFETY: `h` is the first extent of a run holding `[a, a + need)`.
        let fresh = unsafe { Self::clean_in(h, a, need) };
        if fresh > 0 {
            // Fresh pages: first keep the kind within its configured capacity, and
            // `live + dirty` within the bound that follows the workload.
            if let Use::Block(k) = u {
                let cap = self.capacity[k];
                let held = self.kinds[k].live_bytes + self.attr_bytes[k] + fresh;
                if cap != AUTO && held > cap as u64 && self.attr_bytes[k] > 0 {
                    let chain = self.take_dirty(held - cap as u64, Some(k), Cause::Capacity);
                    if !chain.is_null() {
                        return Step::Purge(chain);
                    }
                }
            }
            // What stays cached once this takes its dirty part: within the bound?
            let kept = self.dirty_bytes - (need as u64 - fresh);
            let excess = kept.saturating_sub(self.decay.cache_bound(None));
            if excess > 0 {
                let chain = self.take_dirty(excess, None, Cause::Bound);
                if !chain.is_null() {
                    return Step::Purge(chain);
                }
            }
        }
        // Make sure the page map can record the block before anything is cut.
        if !map.prepare(a, &mut self.meta) {
            return Step::NoMeta;
        }
        // SAFETY: `h` heads a run holding `[a, a + need)`; spares are reserved.
        let (e, taken, fresh, zero) = unsafe { self.carve(h, a, need, u.attr()) };
        self.decay.note(self.dirty_bytes, self.live);
        // SAFETY: `e` is ours, off every list.
        Step::Done(unsafe { self.hand_out(map, e, u, off, size, &taken, fresh, zero) })
    }

    /// Bytes of clean extents within `[a, a + need)` of the run starting at `h` (the pages a
    /// block placed there would fault in).
    ///
    /// # Safety
    /// `h` heads a run holding the range.
    unsafe fn clean_in(h: *mut Extent, a: usize, need: usize) -> u64 {
        let (mut x, end, mut n) = (h, a + need, 0);
        // SAFETY: run members are our extents.
        unsafe {
            while !x.is_null() && (*x).base < end {
                if (*x).state() == State::Clean {
                    let lo = (*x).base.max(a);
                    let hi = (*x).end().min(end);
                    n += hi.saturating_sub(lo) as u64;
                }
                x = (*x).next;
            }
        }
        n
    }

    /// Turn a carved extent into a live block or segment and count it; `taken` is the dirty
    /// memory it took, by the kind that released it, `fresh` the clean bytes, `zero` whether it
    /// all reads as zero.
    ///
    /// # Safety
    /// `e` is ours, `Busy` off every tree and list; `map.prepare` succeeded for its base.
    #[allow(clippy::too_many_arguments)]
    unsafe fn hand_out(
        &mut self,
        map: &PageMap,
        e: *mut Extent,
        u: Use,
        off: usize,
        size: usize,
        taken: &[u64; ATTRS],
        fresh_bytes: u64,
        zero: bool,
    ) -> *mut Extent {
        // SAFETY: the caller's contract.
        unsafe {
            let fresh = fresh_bytes > 0;
            (*e).zero = zero;
            let bytes = (*e).size;
            self.live += bytes as u64;
            for (from, &b) in taken.iter().enumerate().take(NUM_KINDS) {
                if Use::Block(from) != u {
                    self.kinds[from].donated_bytes += b;
                }
            }
            match u {
                Use::Segment => {
                    (*e).set_state(State::Segment);
                    (*e).kind = SLAB as u8;
                    self.totals.segment_bytes += bytes as u64;
                    self.decay.note_live(self.live, None);
                    map.set((*e).base, e.cast());
                    pagemap::set_small((*e).base as *const u8, true);
                }
                Use::Block(kind) => {
                    (*e).kind = kind as u8;
                    (*e).sampled = false;
                    (*e).start.store((*e).base + off, Relaxed);
                    (*e).set_state(State::Live);
                    map.set((*e).base, e.cast());
                    self.totals.live_bytes += bytes as u64;
                    let cap = self.capacity[kind];
                    let cached = self.attr_bytes[kind];
                    let c = &mut self.kinds[kind];
                    c.requests += 1;
                    c.requested_bytes += size as u64;
                    c.granted_bytes += bytes as u64;
                    c.live_bytes += bytes as u64;
                    crate::stats::held_add(kind, bytes as u64);
                    let kl = c.live_bytes;
                    self.decay.note_live(self.live, Some((kind, kl)));
                    c.fresh_bytes += fresh_bytes;
                    if fresh {
                        c.misses += 1;
                    } else {
                        c.hits += 1;
                        let foreign: u64 = bytes as u64 - taken[kind];
                        if foreign > 0 {
                            c.recycled += 1;
                            c.recycled_bytes += foreign;
                        }
                    }
                    if cap != AUTO && self.kinds[kind].live_bytes + cached > cap as u64 {
                        self.kinds[kind].over_capacity += 1;
                    }
                    self.sample(kind);
                }
            }
            e
        }
    }

    /// A live block or segment comes back. Returns a chain of extents to purge.
    ///
    /// # Safety
    /// `e` is our live (or hot) block or segment.
    unsafe fn release(&mut self, e: *mut Extent, now: u64) -> *mut Extent {
        // SAFETY: the caller's contract.
        unsafe {
            let bytes = (*e).size as u64;
            let attr = match (*e).state() {
                State::Segment => {
                    pagemap::set_small((*e).base as *const u8, false);
                    (*e).start.store(0, Relaxed);
                    self.totals.segment_bytes -= bytes;
                    SLAB
                }
                st => {
                    let k = (*e).kind as usize;
                    (*e).start.store(0, Relaxed);
                    // A block from a thread cache was subtracted when it entered it.
                    if st == State::Live {
                        crate::stats::held_sub(k, bytes);
                    }
                    self.kinds[k].live_bytes -= bytes;
                    self.totals.live_bytes -= bytes;
                    k
                }
            };
            self.live -= bytes;
            let mut chain = ptr::null_mut();
            if self.decay.immediate() {
                (*e).set_state(State::Busy);
                (*e).lru_next = ptr::null_mut();
                self.busy += bytes;
                let mut c = [0; ATTRS];
                c[attr] = bytes;
                self.count_purge(&c, Cause::Decay);
                chain = e;
            } else {
                self.put_dirty(e, attr);
                if attr < NUM_KINDS && self.capacity[attr] != AUTO {
                    let held = self.kinds[attr].live_bytes + self.attr_bytes[attr];
                    let over = held.saturating_sub(self.capacity[attr] as u64);
                    if over > 0 {
                        chain = self.take_dirty(over, Some(attr), Cause::Capacity);
                    }
                }
            }
            if attr < NUM_KINDS {
                self.sample(attr);
            }
            let more = self.advance(now);
            concat(chain, more)
        }
    }

    /// Take at least `bytes` (page-rounded) of the least recently released dirty memory (holding
    /// bytes of `attr`, or any) out of the dirty set, as a chain of `Busy` extents to purge.
    ///
    /// With huge pages on, a first pass takes only whole huge pages of the block zone (the
    /// aligned inside of each dirty extent, oldest first): `MADV_DONTNEED` on part of a huge
    /// page splits it into 512 small ones, and the rest of it stays resident. A second pass, as
    /// with huge pages off, takes what is still wanted from any dirty extent, each one's high
    /// end (blocks are placed low first), and counts the huge pages it cuts into.
    fn take_dirty(&mut self, bytes: u64, attr: Option<usize>, cause: Cause) -> *mut Extent {
        let mut chain: *mut Extent = ptr::null_mut();
        let mut taken = 0u64;
        let first = attr.unwrap_or(0);
        if self.huge_pages {
            let mut x = self.oldest(attr);
            while taken < bytes && !x.is_null() && self.reserve(2) {
                // SAFETY: `x` is our dirty extent on the release-order list.
                let newer = unsafe { (*x).lru_prev };
                // SAFETY: as above; spares are reserved.
                if let Some(y) = unsafe { self.take_whole_huge(x, bytes - taken, first) } {
                    // SAFETY: `y` is ours and off every tree and list.
                    taken += unsafe { self.chain_purge(&mut chain, y, cause) };
                }
                // SAFETY: `newer` is null or on the list (the cut pieces went in older).
                x = unsafe { Self::holding(newer, attr) };
            }
        }
        while taken < bytes {
            let x = self.oldest(attr);
            if x.is_null() || !self.reserve(2) {
                break;
            }
            let want = (bytes - taken).min(usize::MAX as u64) as usize;
            let want = want.checked_next_multiple_of(PAGE).unwrap_or(usize::MAX);
            // SAFETY: `x` is our dirty extent; spares are reserved.
            let y = unsafe {
                self.detach_run(x);
                let y = if (*x).size > want {
                    self.split(x, (*x).end() - want, Prefer::Own(first))
                } else {
                    x
                };
                if self.huge_pages && (*y).zone as usize == BLOCKS {
                    let cuts = usize::from((*y).base % HUGE_PAGE != 0)
                        + usize::from((*y).end() % HUGE_PAGE != 0);
                    self.totals.huge_page_cuts += cuts as u64;
                }
                y
            };
            // SAFETY: `y` is our free extent, its run out of the tree.
            taken += unsafe { self.chain_purge(&mut chain, y, cause) };
        }
        self.decay.note(self.dirty_bytes, self.live);
        if matches!(cause, Cause::Decay | Cause::Bound) {
            self.decay.purged(taken);
        }
        chain
    }

    /// Cut the whole huge pages of dirty extent `x` (its 2 MiB-aligned inside; the highest
    /// ones first, at most `want` bytes rounded up to whole huge pages) out of the dirty set,
    /// leaving the ends dirty in place. `None`, with nothing changed, when `x` holds no whole
    /// huge page or is not in the block zone. The returned extent is free, its run detached.
    ///
    /// # Safety
    /// `x` is our dirty extent on the release-order list; two spare descriptors exist.
    unsafe fn take_whole_huge(
        &mut self,
        x: *mut Extent,
        want: u64,
        first: usize,
    ) -> Option<*mut Extent> {
        // SAFETY: the caller's contract.
        unsafe {
            if (*x).zone as usize != BLOCKS {
                return None;
            }
            let lo = (*x).base.next_multiple_of(HUGE_PAGE);
            let hi = (*x).end() & !(HUGE_PAGE - 1);
            if hi <= lo {
                return None;
            }
            let want = want.min((hi - lo) as u64) as usize;
            let start = hi - want.next_multiple_of(HUGE_PAGE).min(hi - lo);
            self.detach_run(x);
            if hi < (*x).end() {
                self.split(x, hi, Prefer::Others(first));
            }
            let y = if start > (*x).base {
                self.split(x, start, Prefer::Own(first))
            } else {
                x
            };
            Some(y)
        }
    }

    /// Take free extent `y` (its run detached) out of the free set, re-attach its neighbours'
    /// runs and put it on the purge `chain`; its size.
    ///
    /// # Safety
    /// `y` is our free extent whose run is out of the tree.
    unsafe fn chain_purge(&mut self, chain: &mut *mut Extent, y: *mut Extent, cause: Cause) -> u64 {
        // SAFETY: the caller's contract.
        unsafe {
            let c = self.unfree(y);
            self.attach_run((*y).prev);
            self.attach_run((*y).next);
            (*y).lru_next = *chain;
            let n = (*y).size as u64;
            self.busy += n;
            self.count_purge(&c, cause);
            *chain = y;
            n
        }
    }

    /// Count a purge of memory released by the kinds in `c`.
    fn count_purge(&mut self, c: &[u64; ATTRS], cause: Cause) {
        let bytes: u64 = c.iter().sum();
        let t = &mut self.totals;
        t.purges += 1;
        t.purged_bytes += bytes;
        match cause {
            Cause::Decay => t.decay_purged_bytes += bytes,
            Cause::Bound => t.bound_purged_bytes += bytes,
            Cause::Capacity => t.capacity_purged_bytes += bytes,
            Cause::Trim => {}
        }
        for (k, &b) in c.iter().enumerate().take(NUM_KINDS) {
            if b > 0 {
                self.kinds[k].evictions += 1;
                self.kinds[k].evicted_bytes += b;
            }
        }
    }

    /// Move the decay clocks; a chain of dirty memory to purge (idle for a whole period, or
    /// over the bound now that the recent peak has moved), or null.
    fn advance(&mut self, now: u64) -> *mut Extent {
        let mut live = [0; NUM_KINDS + 1];
        for (l, k) in live.iter_mut().zip(&self.kinds) {
            *l = k.live_bytes;
        }
        live[NUM_KINDS] = self.live;
        let (idle, over) = self.decay.advance(now, self.dirty_bytes, &live);
        let mut chain = if idle > 0 {
            self.take_dirty(idle, None, Cause::Decay)
        } else {
            ptr::null_mut()
        };
        if over > 0 {
            chain = concat(chain, self.take_dirty(over, None, Cause::Bound));
        }
        let over = self
            .dirty_bytes
            .saturating_sub(self.decay.cache_bound(None));
        if over > 0 {
            chain = concat(chain, self.take_dirty(over, None, Cause::Bound));
        }
        chain
    }

    /// Purged extents come back clean.
    ///
    /// # Safety
    /// `chain` links `Busy` extents of ours through `lru_next`.
    unsafe fn finish_purge(&mut self, mut chain: *mut Extent) {
        let zero = !self.lazy_purge;
        // SAFETY: the caller's contract.
        unsafe {
            while !chain.is_null() {
                let next = (*chain).lru_next;
                (*chain).lru_next = ptr::null_mut();
                self.busy -= (*chain).size as u64;
                self.put_clean(chain, zero);
                chain = next;
            }
        }
    }

    /// Timeline sample of one kind (under the lock, so a kind's samples are in event order).
    #[inline]
    fn sample(&self, kind: usize) {
        if crate::timeline::enabled() {
            let held = crate::stats::HELD[kind].get();
            crate::timeline::record(kind, held, self.attr_bytes[kind]);
        }
    }

    // -----------------------------------------------------------------------------------------
    // Chunks
    // -----------------------------------------------------------------------------------------

    /// Where to ask for the next chunk of `len` bytes of `zone`: blocks just above their
    /// highest region (or, for the first, in `BLOCK_HINT`'s range, at `seed`'s offset);
    /// segments just below their lowest (the way the kernel itself places mappings), or
    /// wherever the kernel likes for the first.
    fn hint(&self, zone: usize, len: usize, seed: u64) -> usize {
        let (mut low, mut high) = (usize::MAX, 0usize);
        let mut r = self.regions;
        // SAFETY: region records are ours.
        unsafe {
            while !r.is_null() {
                if (*r).zone as usize == zone {
                    low = low.min((*r).base);
                    high = high.max((*r).end);
                }
                r = (*r).next;
            }
        }
        if zone == BLOCKS {
            if high == 0 {
                let (base, span) = BLOCK_HINT;
                let off = (seed as usize % span) & !(CHUNK_MAX - 1);
                return base + off;
            }
            return high;
        }
        if low == usize::MAX || low < len {
            0
        } else {
            (low - len) & !(CHUNK_ALIGN - 1)
        }
    }

    /// Add a freshly mapped chunk of `zone` as clean memory, merging it with a region of the
    /// zone it touches.
    fn add_chunk(&mut self, zone: usize, p: usize, len: usize) {
        let e = self.new_desc();
        // SAFETY: `e` is a fresh descriptor; region records and extents are ours.
        unsafe {
            (*e).base = p;
            (*e).size = len;
            (*e).zone = zone as u8;
            let end = p + len;
            let mut below: *mut Region = ptr::null_mut(); // ends where the chunk starts
            let mut above: *mut Region = ptr::null_mut(); // starts where the chunk ends
            let mut r = self.regions;
            while !r.is_null() {
                if (*r).zone as usize == zone && (*r).end == p {
                    below = r;
                }
                if (*r).zone as usize == zone && (*r).base == end {
                    above = r;
                }
                r = (*r).next;
            }
            match (below.is_null(), above.is_null()) {
                (true, true) => self.new_region(zone as u8, p, end, e, e),
                (false, true) => {
                    let last = (*below).last;
                    (*last).next = e;
                    (*e).prev = last;
                    (*below).last = e;
                    (*below).end = end;
                }
                (true, false) => {
                    let first = (*above).first;
                    (*first).prev = e;
                    (*e).next = first;
                    (*above).first = e;
                    (*above).base = p;
                }
                (false, false) => {
                    let (last, first) = ((*below).last, (*above).first);
                    (*last).next = e;
                    (*e).prev = last;
                    (*first).prev = e;
                    (*e).next = first;
                    (*below).last = (*above).last;
                    (*below).end = (*above).end;
                    self.drop_region(above);
                }
            }
            self.put_clean(e, true);
        }
        self.totals.mapped_bytes += len as u64;
        self.totals.chunk_maps += 1;
        self.chunk_next[zone] = (self.chunk_next[zone] * 2).min(CHUNK_MAX);
    }

    /// Take free extents out of their region for unmapping: every free extent when `all`,
    /// else the clean ones that fill a region alone. Returns a `Busy` chain.
    fn take_for_unmap(&mut self, all: bool) -> *mut Extent {
        let mut chain: *mut Extent = ptr::null_mut();
        let mut r = self.regions;
        // SAFETY: regions and extents are ours; each region is split or dropped around what is
        // taken, so the tiling holds for what stays.
        unsafe {
            while !r.is_null() {
                let next_r = (*r).next;
                let mut e = (*r).first;
                while !e.is_null() {
                    let next = (*e).next;
                    let st = (*e).state();
                    let whole = (*e).prev.is_null() && next.is_null();
                    if (all && st.is_free()) || (st == State::Clean && whole) {
                        if !self.reserve(0) {
                            return chain;
                        }
                        self.detach_run(e);
                        self.unfree(e);
                        let (p, n) = ((*e).prev, (*e).next);
                        self.cut_out(e);
                        self.attach_run(p);
                        self.attach_run(n);
                        self.busy += (*e).size as u64;
                        (*e).lru_next = chain;
                        chain = e;
                    }
                    e = next;
                }
                r = next_r;
            }
        }
        self.decay.note(self.dirty_bytes, self.live);
        chain
    }

    /// Remove `e` from its region's address list, splitting or dropping the region.
    ///
    /// # Safety
    /// `e` is ours and in its region's list.
    unsafe fn cut_out(&mut self, e: *mut Extent) {
        // SAFETY: the caller's contract.
        unsafe {
            let r = self.region_of((*e).base);
            let (p, n) = ((*e).prev, (*e).next);
            match (p.is_null(), n.is_null()) {
                (true, true) => self.drop_region(r),
                (true, false) => {
                    (*n).prev = ptr::null_mut();
                    (*r).first = n;
                    (*r).base = (*e).end();
                }
                (false, true) => {
                    (*p).next = ptr::null_mut();
                    (*r).last = p;
                    (*r).end = (*e).base;
                }
                (false, false) => {
                    (*p).next = ptr::null_mut();
                    (*n).prev = ptr::null_mut();
                    let (old_end, old_last) = ((*r).end, (*r).last);
                    (*r).end = (*e).base;
                    (*r).last = p;
                    self.new_region((*r).zone, (*e).end(), old_end, n, old_last);
                }
            }
            (*e).prev = ptr::null_mut();
            (*e).next = ptr::null_mut();
        }
    }

    /// Unmapped extents are forgotten.
    ///
    /// # Safety
    /// `chain` links `Busy` extents of ours, cut out of their regions, through `lru_next`.
    unsafe fn finish_unmap(&mut self, mut chain: *mut Extent) {
        // SAFETY: the caller's contract.
        unsafe {
            while !chain.is_null() {
                let next = (*chain).lru_next;
                let n = (*chain).size as u64;
                self.busy -= n;
                self.totals.mapped_bytes -= n;
                self.totals.unmaps += 1;
                self.free_desc(chain);
                chain = next;
            }
        }
    }

    /// Counters of every kind, with `cached_bytes` filled in.
    pub(crate) fn kind_counters(&self) -> [LargeCounters; NUM_KINDS] {
        core::array::from_fn(|k| {
            let mut c = self.kinds[k];
            c.cached_bytes = self.attr_bytes[k];
            c.peak_live_bytes = crate::stats::HELD_PEAK[k].get();
            c
        })
    }

    /// The arena's regions as `[base, end)` pairs, sorted by base, into `out`; how many there
    /// are (more than `out` holds: the first `out.len()` by address are written).
    pub(crate) fn region_bounds(&self, out: &mut [(usize, usize)]) -> usize {
        let (mut n, mut r) = (0, self.regions);
        // SAFETY: region records are ours, read under the lock.
        unsafe {
            while !r.is_null() {
                if n < out.len() {
                    out[n] = ((*r).base, (*r).end);
                }
                n += 1;
                r = (*r).next;
            }
        }
        let m = n.min(out.len());
        out[..m].sort_unstable();
        n
    }

    /// The arena's own counters, with the derived ones filled in.
    pub(crate) fn arena_counters(&self) -> ArenaCounters {
        let mut t = self.totals;
        t.dirty_bytes = self.dirty_bytes;
        t.clean_bytes = self.clean_bytes;
        t.recent_peak_bytes = self.decay.peak(None).max(self.live);
        t.bound_bytes = self.decay.cache_bound(None);
        t.huge_pages = self.huge_pages;
        t
    }
}

fn add_shares(to: &mut [u64; ATTRS], from: &[u64; ATTRS]) {
    for (t, &f) in to.iter_mut().zip(from) {
        *t += f;
    }
}

/// Append chain `b` to chain `a` (both through `lru_next`).
fn concat(a: *mut Extent, b: *mut Extent) -> *mut Extent {
    if a.is_null() {
        return b;
    }
    let mut t = a;
    // SAFETY: chain members are `Busy` extents owned by the caller.
    unsafe {
        while !(*t).lru_next.is_null() {
            t = (*t).lru_next;
        }
        (*t).lru_next = b;
    }
    a
}

impl Arena {
    #[cfg(not(loom))]
    pub(crate) const fn new() -> Self {
        Self {
            state: SpinLock::new(ArenaState::new()),
            map: PageMap::new(),
            due: AtomicU64::new(u64::MAX),
        }
    }
    #[cfg(loom)]
    pub(crate) fn new() -> Self {
        Self {
            state: SpinLock::new(ArenaState::new()),
            map: PageMap::new(),
            due: AtomicU64::new(u64::MAX),
        }
    }

    /// Take the lock without a guard (fork preparation); pairs with `raw_unlock`.
    #[cfg(not(loom))]
    pub(crate) fn raw_lock(&self) {
        self.state.raw_lock();
    }

    #[cfg(not(loom))]
    pub(crate) fn raw_unlock(&self) {
        self.state.raw_unlock();
    }

    /// Run `f` on the state under the lock (configuration, counters).
    pub(crate) fn with<R>(&self, f: impl FnOnce(&mut ArenaState) -> R) -> R {
        super::hold_lock_across_fork();
        self.state.with(|s| {
            let r = f(s);
            self.due.store(s.decay.due_at(), Relaxed);
            r
        })
    }

    /// Take an extent for `u` of `size` bytes at alignment `align`: dirty memory first, then
    /// clean, then a new chunk; when the OS refuses, release everything free and try once more.
    /// Null when that fails too.
    pub(crate) fn take(&self, u: Use, size: usize, align: usize) -> *mut Extent {
        let t = now();
        let mut recovered = false;
        loop {
            let step = self.with(|s| s.try_take(&self.map, u, size, align, t));
            match step {
                Step::Done(e) => return e,
                Step::Purge(chain) => self.purge(chain),
                Step::Fail => return ptr::null_mut(),
                Step::Grow(zone, bytes) if self.grow(zone, bytes) => {}
                Step::Grow(..) | Step::NoMeta => {
                    if recovered {
                        return ptr::null_mut();
                    }
                    self.recover();
                    recovered = true;
                }
            }
        }
    }

    /// Allocate a large block of `kind`: its first byte, or null.
    pub(crate) fn alloc(&self, kind: usize, size: usize, align: usize) -> *mut u8 {
        let e = self.take(Use::Block(kind), size, align);
        if e.is_null() {
            return ptr::null_mut();
        }
        // SAFETY: `e` is a live block we just made.
        unsafe { (*e).start.load(Relaxed) as *mut u8 }
    }

    /// A small-block segment (`size` bytes aligned to `size`), or null.
    pub(crate) fn segment_alloc(&self, size: usize) -> *mut u8 {
        let e = self.take(Use::Segment, size, size);
        if e.is_null() {
            return ptr::null_mut();
        }
        // SAFETY: `e` is a segment extent we just made.
        unsafe { (*e).base as *mut u8 }
    }

    /// Return a segment taken with `segment_alloc` (no block of it live or pending anywhere).
    ///
    /// # Safety
    /// `seg` came from `segment_alloc` and is not used after this call.
    pub(crate) unsafe fn segment_free(&self, seg: *mut u8) {
        let e = self.map.get(seg as usize).cast::<Extent>();
        // SAFETY: the page map records every segment's descriptor at its base.
        debug_assert!(!e.is_null() && unsafe { (*e).state() } == State::Segment);
        // SAFETY: as above.
        unsafe { self.free(e) }
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

    /// The descriptor of the live large block starting at `p`, or null if `p` is not the start
    /// of one (never dereferences `p`).
    #[inline]
    pub(crate) fn lookup(&self, p: *mut u8) -> *mut Extent {
        let e = self.map.get(p as usize).cast::<Extent>();
        if e.is_null() {
            return e;
        }
        // SAFETY: page-map values are descriptors, which are never unmapped; the fields read
        // are atomics, so a racing update (a bad pointer's) is not a data race.
        unsafe {
            if (*e).start.load(Relaxed) == p as usize && (*e).state() == State::Live {
                e
            } else {
                ptr::null_mut()
            }
        }
    }

    /// For a bad free's report (cold): the extent whose pages hold `p`, found under the lock by
    /// looking back page by page from `p` for a recorded base (at most the largest chunk): its
    /// block's first byte (its base unless live or hot), size from there, kind and state.
    #[cold]
    pub(crate) fn describe(&self, p: *mut u8) -> Option<(usize, usize, usize, State)> {
        let page = crate::os::PAGE;
        let top = p as usize & !(page - 1);
        self.with(|_| {
            let mut a = top;
            while top - a <= CHUNK_MAX {
                let e = self.map.get(a).cast::<Extent>();
                if !e.is_null() {
                    // SAFETY: page-map values are descriptors, never unmapped; the lock keeps
                    // them still.
                    let (base, end, kind, state, start) = unsafe {
                        let e = &*e;
                        (
                            e.base,
                            e.end(),
                            e.kind as usize,
                            e.state(),
                            e.start.load(Relaxed),
                        )
                    };
                    if (base..end).contains(&(p as usize)) {
                        let first = if start != 0 { start } else { base };
                        return Some((first, end - first, kind, state));
                    }
                    return None;
                }
                a = a.checked_sub(page)?;
            }
            None
        })
    }

    /// Free a live (or hot) block, or a segment.
    ///
    /// # Safety
    /// `e` is a live block's or segment's descriptor, freed once.
    pub(crate) unsafe fn free(&self, e: *mut Extent) {
        let t = now();
        // SAFETY: the caller's contract.
        let chain = self.with(|s| unsafe { s.release(e, t) });
        self.purge(chain);
    }

    /// Purge a chain of `Busy` extents outside the lock, then return them as clean memory.
    fn purge(&self, chain: *mut Extent) {
        if chain.is_null() {
            return;
        }
        let lazy = self.with(|s| s.lazy_purge);
        let mut e = chain;
        while !e.is_null() {
            // SAFETY: `Busy` extents are ours alone until `finish_purge`.
            unsafe {
                os::purge((*e).base as *mut u8, (*e).size, lazy);
                e = (*e).lru_next;
            }
        }
        // SAFETY: the chain is the one taken under the lock.
        self.with(|s| unsafe { s.finish_purge(chain) });
    }

    /// Map a chunk of at least `bytes` for `zone` (outside the lock) and add it. False if the
    /// OS refuses.
    fn grow(&self, zone: usize, bytes: usize) -> bool {
        let Some(min) = bytes.checked_next_multiple_of(CHUNK_ALIGN) else {
            return false;
        };
        let want = self.with(|s| s.chunk_next[zone]).max(min);
        // A seed for the first block chunk's place: the clock and this stack's address.
        let seed =
            (os::now_ns() ^ (&min as *const usize as u64)).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        for len in [want, min] {
            let hint = self.with(|s| s.hint(zone, len, seed));
            let p = map_chunk(hint, len);
            if !p.is_null() {
                return self.with(|s| {
                    // Blocks always; segments once the zone outgrew its first chunk (a
                    // process with more than 16 MiB of small blocks fills its huge pages,
                    // where one with a few KiB would hold a resident 2 MiB page for them).
                    if s.huge_pages && (zone == BLOCKS || s.chunk_next[zone] > CHUNK_MIN[zone]) {
                        os::advise_huge(p, len);
                    }
                    if s.reserve(1) {
                        s.add_chunk(zone, p as usize, len);
                        true
                    } else {
                        os::unmap(p, len);
                        false
                    }
                });
            }
            if len == min {
                break;
            }
        }
        false
    }

    /// The OS refused memory: unmap every free extent (dirty and clean, so that both memory
    /// and address space go back), to try once more.
    pub(crate) fn recover(&self) {
        let chain = self.with(|s| {
            s.totals.recoveries += 1;
            s.take_for_unmap(true)
        });
        self.unmap_chain(chain);
    }

    fn unmap_chain(&self, chain: *mut Extent) {
        if chain.is_null() {
            return;
        }
        let mut e = chain;
        while !e.is_null() {
            // SAFETY: `Busy` extents cut out of their regions are ours alone.
            unsafe {
                os::unmap((*e).base as *mut u8, (*e).size);
                e = (*e).lru_next;
            }
        }
        // SAFETY: the chain is the one taken under the lock.
        self.with(|s| unsafe { s.finish_unmap(chain) });
    }

    /// Return every dirty page to the OS and unmap the regions left wholly free. Returns the
    /// dirty bytes purged.
    pub(crate) fn trim(&self) -> usize {
        let (chain, bytes) = self.with(|s| {
            let b = s.dirty_bytes as usize;
            (s.take_dirty(u64::MAX, None, Cause::Trim), b)
        });
        self.purge(chain);
        let chain = self.with(|s| s.take_for_unmap(false));
        self.unmap_chain(chain);
        bytes
    }

    /// The decay heartbeat: cheap when nothing is due (one clock read, one load).
    #[inline]
    pub(crate) fn tick(&self) {
        let t = now();
        if t >= self.due.load(Relaxed) {
            self.tick_at(t);
        }
    }

    /// Advance decay to time `t` (ns) and purge what has been idle for a whole period.
    pub(crate) fn tick_at(&self, t: u64) {
        let chain = self.with(|s| s.advance(t));
        self.purge(chain);
    }

    /// Resize the live block `e` (starting at `p`) in place to `new_size` bytes: grow into a
    /// free neighbour, or fit as it is, giving back its tail when `shrink` (the caller really
    /// shrinks the block). Returns whether it did.
    ///
    /// # Safety
    /// `e` is the descriptor of the live block at `p`, held by the caller.
    pub(crate) unsafe fn resize(
        &self,
        e: *mut Extent,
        p: *mut u8,
        new_size: usize,
        shrink: bool,
    ) -> bool {
        let t = now();
        let (ok, chain) = self.with(|s| {
            // SAFETY: the caller's contract; neighbours are the arena's, under its lock.
            unsafe {
                let start = p as usize;
                let Some(end) = start
                    .checked_add(new_size)
                    .and_then(|x| x.checked_next_multiple_of(PAGE))
                else {
                    return (false, ptr::null_mut());
                };
                let cur_end = (*e).end();
                if end <= cur_end {
                    if shrink && cur_end - end >= SHRINK_MIN && s.reserve(2) {
                        let kind = (*e).kind as usize;
                        let tail = s.new_desc();
                        (*tail).base = end;
                        (*tail).size = cur_end - end;
                        (*e).size = end - (*e).base;
                        s.link_after(e, tail);
                        let n = (*tail).size as u64;
                        s.kinds[kind].live_bytes -= n;
                        crate::stats::held_sub(kind, n);
                        s.totals.live_bytes -= n;
                        s.live -= n;
                        s.totals.shrunk_in_place += 1;
                        s.put_dirty(tail, kind);
                        s.sample(kind);
                    }
                    return (true, s.advance(t));
                }
                let grow = end - cur_end;
                let n = (*e).next;
                // `e` is live, so a free `n` heads its run.
                if !ArenaState::is_free(n) || (*n).span < grow || !s.reserve(3) {
                    return (false, ptr::null_mut());
                }
                let kind = (*e).kind as usize;
                let (piece, taken, fresh, _) = s.carve(n, (*n).base, grow, kind);
                s.absorb_next(e, piece);
                s.free_desc(piece);
                (*e).zero = false;
                for (from, &b) in taken.iter().enumerate().take(NUM_KINDS) {
                    if from != kind {
                        s.kinds[from].donated_bytes += b;
                        s.kinds[kind].recycled_bytes += b;
                    }
                }
                s.kinds[kind].fresh_bytes += fresh;
                s.live += grow as u64;
                let kl = s.kinds[kind].live_bytes + grow as u64;
                s.decay.note_live(s.live, Some((kind, kl)));
                s.decay.note(s.dirty_bytes, s.live);
                s.totals.live_bytes += grow as u64;
                s.totals.grown_in_place += 1;
                let c = &mut s.kinds[kind];
                c.live_bytes += grow as u64;
                crate::stats::held_add(kind, grow as u64);
                c.granted_bytes += grow as u64;
                s.sample(kind);
                (true, ptr::null_mut())
            }
        });
        self.purge(chain);
        ok
    }
}

/// Map a chunk of `len` bytes aligned to `CHUNK_ALIGN`, at `hint` if possible. Null on refusal.
fn map_chunk(hint: usize, len: usize) -> *mut u8 {
    if hint != 0 {
        let p = os::map_near(hint as *mut u8, len);
        if p.is_null() {
            return p;
        }
        if p as usize % CHUNK_ALIGN == 0 && (p as usize + len) >> pagemap::ADDR_BITS == 0 {
            return p;
        }
        os::unmap(p, len);
    }
    let p = os::map_aligned(len, CHUNK_ALIGN);
    if !p.is_null() && (p as usize + len) >> pagemap::ADDR_BITS != 0 {
        os::unmap(p, len);
        return ptr::null_mut();
    }
    p
}

#[cfg(loom)]
impl Drop for Arena {
    fn drop(&mut self) {
        // A model's arena goes away with its execution: unmap its regions and metadata.
        self.state.with(|s| {
            let mut r = s.regions;
            // SAFETY: region records are ours; nothing uses the arena any more.
            unsafe {
                while !r.is_null() {
                    os::unmap((*r).base as *mut u8, (*r).end - (*r).base);
                    r = (*r).next;
                }
            }
            s.meta.release_all();
        });
    }
}

/// What a census of the arena found (see `ArenaState::census`).
#[cfg(any(test, loom, feature = "check"))]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Census {
    /// Regions and the extents tiling them.
    pub regions: usize,
    /// Free runs (maximal sequences of free neighbours).
    pub runs: usize,
    /// Extents by state.
    pub live: usize,
    /// See `live`.
    pub segments: usize,
    /// See `live`.
    pub dirty: usize,
    /// See `live`.
    pub clean: usize,
    /// Bytes of live blocks (hot ones included) and segments.
    pub live_bytes: u64,
    /// Bytes of dirty and clean extents.
    pub dirty_bytes: u64,
    /// See `dirty_bytes`.
    pub clean_bytes: u64,
    /// Bytes mapped.
    pub mapped_bytes: u64,
}

#[cfg(any(test, loom, feature = "check"))]
impl ArenaState {
    /// Check every invariant in the module docs and return what the arena holds. Panics (a
    /// test's or model's assertion) on a violation; call with nothing `Busy`.
    pub(crate) fn census(&self, map: &PageMap) -> Census {
        let mut c = Census::default();
        let mut shares = [0u64; ATTRS];
        let mut lru_count = 0usize;
        // SAFETY: regions and extents are ours; the caller holds the lock.
        unsafe {
            let mut r = self.regions;
            while !r.is_null() {
                c.regions += 1;
                c.mapped_bytes += ((*r).end - (*r).base) as u64;
                let mut e = (*r).first;
                let mut prev: *mut Extent = ptr::null_mut();
                let mut at = (*r).base;
                // The run being walked: its first extent and the bytes seen so far.
                let mut run: (*mut Extent, usize) = (ptr::null_mut(), 0);
                while !e.is_null() {
                    assert_eq!((*e).zone, (*r).zone, "an extent outside its region's zone");
                    assert_eq!((*e).prev, prev, "broken address back link");
                    assert_eq!((*e).base, at, "extents do not tile the region");
                    assert!((*e).size > 0 && (*e).size % PAGE == 0);
                    let st = (*e).state();
                    if !prev.is_null() && st.is_free() {
                        assert_ne!((*prev).state(), st, "two free neighbours of one state");
                    }
                    if st.is_free() {
                        if run.0.is_null() {
                            run = (e, 0);
                            c.runs += 1;
                        } else {
                            assert_eq!((*e).span, 0, "a run's later extent has a span");
                        }
                        run.1 += (*e).size;
                    }
                    if !run.0.is_null() && (!st.is_free() || (*e).next.is_null()) {
                        assert_eq!((*run.0).span, run.1, "a run's span is not its length");
                        run = (ptr::null_mut(), 0);
                    }
                    match st {
                        State::Live | State::Hot => {
                            c.live += 1;
                            c.live_bytes += (*e).size as u64;
                            let start = (*e).start.load(Relaxed);
                            assert!(start >= (*e).base && start < (*e).base + PAGE);
                            assert_eq!(map.get(start).cast::<Extent>(), e, "page map entry");
                        }
                        State::Segment => {
                            c.segments += 1;
                            c.live_bytes += (*e).size as u64;
                            assert!(pagemap::is_small((*e).base as *const u8));
                        }
                        State::Dirty => {
                            c.dirty += 1;
                            c.dirty_bytes += (*e).size as u64;
                            assert_eq!((*e).shares.iter().sum::<u64>(), (*e).size as u64);
                            add_shares(&mut shares, &(*e).shares);
                        }
                        State::Clean => {
                            c.clean += 1;
                            c.clean_bytes += (*e).size as u64;
                        }
                        State::Busy | State::Unused => panic!("census with an extent {st:?}"),
                    }
                    at = (*e).end();
                    prev = e;
                    e = (*e).next;
                }
                assert_eq!(at, (*r).end, "extents stop short of the region's end");
                assert_eq!(prev, (*r).last, "region's last extent");
                r = (*r).next;
            }
            let mut e = self.lru.head;
            let mut newer = u64::MAX;
            let mut p: *mut Extent = ptr::null_mut();
            while !e.is_null() {
                assert_eq!((*e).lru_prev, p, "broken release-order back link");
                assert_eq!((*e).state(), State::Dirty, "a non-dirty extent on the list");
                assert!((*e).released <= newer, "release order broken");
                newer = (*e).released;
                lru_count += 1;
                p = e;
                e = (*e).lru_next;
            }
            assert_eq!(p, self.lru.tail, "list tail");
        }
        for t in &self.runs {
            t.check();
        }
        assert_eq!(lru_count, c.dirty, "dirty extents off the list");
        let (count, bytes) = self
            .runs
            .iter()
            .fold((0, 0), |(c, b), t| (c + t.count, b + t.bytes));
        assert_eq!(count, c.runs, "runs out of the trees");
        assert_eq!(bytes as u64, c.dirty_bytes + c.clean_bytes, "run spans");
        assert_eq!(
            (self.dirty_bytes, self.clean_bytes),
            (c.dirty_bytes, c.clean_bytes)
        );
        assert_eq!(shares, self.attr_bytes, "attribution sums");
        assert_eq!(self.busy, 0);
        assert_eq!(c.live_bytes, self.live, "live bytes");
        assert_eq!(c.mapped_bytes, self.totals.mapped_bytes, "mapped bytes");
        assert_eq!(
            c.live_bytes + c.dirty_bytes + c.clean_bytes,
            c.mapped_bytes,
            "live + dirty + clean != mapped"
        );
        assert_eq!(c.regions as u64, self.totals.regions);
        let kinds_live: u64 = self.kinds.iter().map(|k| k.live_bytes).sum();
        assert_eq!(
            kinds_live + self.totals.segment_bytes,
            self.live,
            "kinds' live bytes"
        );
        c
    }
}

#[cfg(any(test, loom, feature = "check"))]
impl Arena {
    /// See `ArenaState::census`.
    pub(crate) fn census(&self) -> Census {
        self.with(|s| s.census(&self.map))
    }
}

#[cfg(test)]
mod tests {
    use super::super::usable;
    use super::*;

    const MIB: usize = 1 << 20;

    /// The arena tests run one at a time: they read the address-space layout (chunks placed
    /// together), which other arenas mapping at the same moment would disturb.
    static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

    fn arena() -> (&'static Arena, std::sync::MutexGuard<'static, ()>) {
        let g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
        // Each test's arena lives (and keeps its chunks) until the test binary exits.
        (Box::leak(Box::new(Arena::new())), g)
    }

    fn fill(p: *mut u8, n: usize, v: u8) {
        // SAFETY: `p` is a live block of at least `n` bytes.
        unsafe { p.write_bytes(v, n) };
    }

    fn check(p: *mut u8, n: usize, v: u8) {
        // SAFETY: `p` is a live block of at least `n` bytes.
        let s = unsafe { core::slice::from_raw_parts(p, n) };
        assert!(s.iter().all(|&b| b == v), "block contents changed");
    }

    /// Random allocations, frees, resizes, purges and trims with a pattern in every block;
    /// the census after each step checks the structure.
    #[test]
    fn random_operations_keep_every_invariant() {
        let (a, _serial) = arena();
        a.with(|s| s.decay.set_ms(-1));
        let mut x = 0x1234_5678_9abc_def1u64;
        let mut rnd = |n: u64| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x % n) as usize
        };
        let mut live: Vec<(*mut u8, usize, u8)> = Vec::new();
        for step in 0..4000 {
            match rnd(10) {
                0..=4 => {
                    let size = if rnd(8) == 0 {
                        (rnd(24) + 1) * MIB
                    } else {
                        16 * 1024 + rnd(900 * 1024)
                    };
                    let align = [64, 64, 4096, 1 << 16, 2 * MIB][rnd(5)];
                    let kind = rnd(NUM_KINDS as u64);
                    let p = a.alloc(kind, size, align);
                    assert!(!p.is_null());
                    assert_eq!(p as usize % align, 0);
                    let v = step as u8;
                    fill(p, size, v);
                    live.push((p, size, v));
                }
                5..=7 if !live.is_empty() => {
                    let (p, n, v) = live.swap_remove(rnd(live.len() as u64));
                    check(p, n, v);
                    let e = a.lookup(p);
                    assert!(!e.is_null());
                    // SAFETY: `e` is the live block at `p`, freed once.
                    unsafe { a.free(e) };
                    assert!(a.lookup(p).is_null(), "a freed block still looks live");
                }
                8 if !live.is_empty() => {
                    let i = rnd(live.len() as u64);
                    let (p, n, v) = live[i];
                    let m = 16 * 1024 + rnd(2 * MIB as u64);
                    let e = a.lookup(p);
                    // SAFETY: `e` is the live block at `p`.
                    if unsafe { a.resize(e, p, m, m < n) } {
                        check(p, n.min(m), v);
                        fill(p, m, v);
                        live[i].1 = m;
                        // SAFETY: as above.
                        assert!(unsafe { usable(e, p) } >= m);
                    }
                }
                _ => match rnd(3) {
                    0 => {
                        a.trim();
                    }
                    1 => {
                        let chain =
                            a.with(|s| s.take_dirty((rnd(8) * MIB) as u64, None, Cause::Decay));
                        a.purge(chain);
                    }
                    _ => a.recover(),
                },
            }
            let c = a.census();
            assert_eq!(c.live, live.len(), "step {step}");
        }
        for (p, n, v) in live.drain(..) {
            check(p, n, v);
            // SAFETY: live, freed once.
            unsafe { a.free(a.lookup(p)) };
        }
        a.trim();
        let c = a.census();
        assert_eq!((c.live, c.dirty, c.live_bytes), (0, 0, 0));
        assert_eq!(c.regions, 0, "trim unmaps regions left wholly free: {c:?}");
    }

    /// Freed blocks of several kinds coalesce into one dirty extent that serves a larger
    /// request of another kind without fresh pages; the shares say who released what.
    #[test]
    fn coalesced_memory_of_any_kind_serves_any_kind() {
        let (a, _serial) = arena();
        a.with(|s| s.decay.set_ms(-1));
        let blocks: Vec<_> = (0..3).map(|k| a.alloc(k, 3 * MIB, 64)).collect();
        let base = a.census();
        for &p in &blocks {
            // SAFETY: live, freed once.
            unsafe { a.free(a.lookup(p)) };
        }
        let after = a.census();
        assert_eq!(after.live, base.live - 3);
        let cached = a.with(|s| s.kind_counters());
        for c in cached.iter().take(3) {
            assert!(c.cached_bytes >= 3 * MIB as u64, "{c:?}");
        }
        let misses = a.with(|s| s.kinds[5].misses);
        let q = a.alloc(5, 8 * MIB, 64);
        assert!(!q.is_null());
        let k5 = a.with(|s| s.kinds[5]);
        assert_eq!(k5.misses, misses, "served from coalesced dirty memory");
        assert!(k5.recycled_bytes >= 8 * MIB as u64);
        let donated: u64 = a
            .with(|s| s.kind_counters())
            .iter()
            .take(3)
            .map(|c| c.donated_bytes)
            .sum();
        assert!(donated >= 8 * MIB as u64);
        // SAFETY: live, freed once.
        unsafe { a.free(a.lookup(q)) };
        a.census();
    }

    /// A block grows in place into its free neighbour and shrinks by giving its tail back.
    #[test]
    fn blocks_grow_and_shrink_in_place() {
        let (a, _serial) = arena();
        a.with(|s| s.decay.set_ms(-1));
        let p = a.alloc(2, 4 * MIB, 64);
        let q = a.alloc(2, 4 * MIB, 64);
        fill(p, 4 * MIB, 7);
        // SAFETY: live, freed once.
        unsafe { a.free(a.lookup(q)) };
        let e = a.lookup(p);
        // SAFETY: `e` is the live block at `p`.
        let grew = unsafe { a.resize(e, p, 7 * MIB, false) };
        assert!(grew, "grows into the freed neighbour");
        check(p, 4 * MIB, 7);
        fill(p, 7 * MIB, 8);
        assert_eq!(a.with(|s| s.totals.grown_in_place), 1);
        // SAFETY: as above.
        assert!(unsafe { a.resize(e, p, MIB, true) });
        assert_eq!(a.with(|s| s.totals.shrunk_in_place), 1);
        // SAFETY: as above.
        assert!(unsafe { usable(e, p) } < 2 * MIB);
        check(p, MIB, 8);
        a.census();
        // SAFETY: live, freed once.
        unsafe { a.free(e) };
        a.census();
    }

    /// Touching chunks become one region; a request larger than the first chunk gets its own.
    #[test]
    fn chunks_that_touch_form_one_region() {
        let (a, _serial) = arena();
        a.with(|s| s.decay.set_ms(-1));
        let ps: Vec<_> = (0..6)
            .map(|i| a.alloc(i % NUM_KINDS, 30 * MIB, 64))
            .collect();
        let c = a.census();
        let maps = a.with(|s| s.totals.chunk_maps);
        assert!(maps >= 2, "{maps} chunks");
        assert!(
            (c.regions as u64) < maps,
            "{} regions for {maps} chunks: the hint did not place them together",
            c.regions
        );
        for p in ps {
            // SAFETY: live, freed once.
            unsafe { a.free(a.lookup(p)) };
        }
        let c = a.census();
        // Freed blocks coalesce; only the clean tails of chunks separate dirty extents.
        assert_eq!(c.regions, 1, "{c:?}");
        assert!(c.dirty <= 2, "{c:?}");
    }

    /// Decay: memory idle for a whole period goes back; memory in use does not.
    #[test]
    fn decay_returns_idle_memory_only() {
        let (a, _serial) = arena();
        a.with(|s| s.decay.set_ms(800));
        const MS: u64 = 1_000_000;
        // Far ahead of the real clock, which the allocations themselves read.
        let t0 = os::coarse_now_ns() + 3_600_000 * MS;
        a.tick_at(t0);
        let p = a.alloc(1, 20 * MIB, 64);
        fill(p, 20 * MIB, 1);
        let q = a.alloc(1, 20 * MIB, 64);
        // SAFETY: live, freed once.
        unsafe { a.free(a.lookup(p)) };
        a.tick_at(t0 + 500 * MS);
        assert!(
            a.with(|s| s.dirty_bytes) >= 20 * MIB as u64,
            "kept for reuse"
        );
        a.tick_at(t0 + 1_100 * MS);
        let c = a.with(|s| s.arena_counters());
        assert!(
            c.dirty_bytes < MIB as u64,
            "idle for a period: purged ({c:?})"
        );
        assert!(c.decay_purged_bytes >= 20 * MIB as u64);
        a.census();
        // SAFETY: live, freed once.
        unsafe { a.free(a.lookup(q)) };
    }

    /// With huge pages on, a purge takes whole huge pages from inside a dirty extent and leaves
    /// its unaligned ends dirty; off, it takes the extent's high end, cutting into a huge page.
    #[test]
    fn purges_take_whole_huge_pages_first() {
        for huge in [true, false] {
            let (a, _serial) = arena();
            a.with(|s| {
                s.decay.set_ms(-1);
                s.huge_pages = huge;
            });
            let size = 5 * MIB + 12 * 1024;
            let x = a.alloc(1, size, 64);
            let y = a.alloc(1, MIB, 64);
            // SAFETY: live, freed once.
            unsafe { a.free(a.lookup(x)) };
            let (base, len, cuts) = a.with(|s| {
                let chain = s.take_dirty(2 * MIB as u64, None, Cause::Bound);
                assert!(!chain.is_null());
                // SAFETY: the chain is one `Busy` extent of ours, put back clean at once.
                unsafe {
                    assert!((*chain).lru_next.is_null(), "one extent");
                    let r = ((*chain).base, (*chain).size, s.totals.huge_page_cuts);
                    s.finish_purge(chain);
                    r
                }
            });
            if huge {
                assert_eq!(base % HUGE_PAGE, 0, "starts on a huge page");
                assert_eq!(len, 2 * MIB, "whole huge pages");
                assert!(base + len <= x as usize + size);
                assert_eq!(cuts, 0);
            } else {
                assert_eq!(base + len, (x as usize + size).next_multiple_of(PAGE));
                assert_ne!(base % HUGE_PAGE, 0, "the old policy cuts into a huge page");
            }
            a.census();
            // SAFETY: live, freed once.
            unsafe { a.free(a.lookup(y)) };
        }
    }
}
