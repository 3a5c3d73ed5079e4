//! The extent arena: the address space every large block and every small-block segment is carved
//! from.
//!
//! **Chunks and regions.** Memory comes from the OS in chunks (64 MiB at first for blocks, one
//! segment (4 MiB) for segments, doubling up to 1 GiB, or what one request needs), 2 MiB-aligned
//! so huge pages stay possible, mapped read-write once and never split by `mprotect` or
//! `mremap`. Blocks and segments live in zones of their own. The block zone starts at a
//! randomised hint far from the kernel's own placements (`BLOCK_HINT`) and each new chunk is
//! asked for just above the highest one (a hint, never `MAP_FIXED`), so consecutive chunks
//! usually touch: the kernel then merges them into one mapping, and the arena treats touching
//! chunks as one *region*, in which free extents coalesce across the old chunk boundary. The
//! process's mapping count is therefore the number of regions, not of blocks.
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
//! **Files.** This file holds the types, their invariants and `Arena`, the locked entry points;
//! under the lock, `extents` keeps the tiling, the release order and the free runs, `take`
//! serves and takes back requests, `purge` returns dirty memory (and publishes the decay time
//! the heaps purge their idle pages by), `regions` maps chunks and unmaps address space,
//! `segments` takes and returns small-block segments, `huge` decides which ranges go on huge
//! pages and when, and `census` checks everything below.
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
use crate::sync::plain::{AtomicBool, AtomicU64};
use crate::sync::SpinLock;
use core::ptr;
use core::sync::atomic::Ordering::Relaxed;
use purge::POLICY_NEVER;

#[cfg(any(test, loom, feature = "check"))]
mod census;
#[cfg(any(loom, feature = "check"))]
pub use census::Census;
mod extents;
mod huge;
pub(crate) use huge::{
    Growth, DENSE_GROWTH_LIVE, DENSE_GROWTH_REMOTE, DENSE_GROWTH_SEGMENTS, DENSE_GROWTH_TOUCHED,
    HUGE_DENSE_SEGMENT,
};
mod purge;
mod regions;
mod segments;
mod take;
#[cfg(test)]
mod tests;

/// The attribution of dirty memory that was a small-block segment.
pub(crate) const SLAB: usize = NUM_KINDS;

/// The arena's zones: large blocks, and small-block segments (long-lived, so kept apart, where
/// they cannot pin holes between blocks). Free extents coalesce only within a zone.
pub(crate) const BLOCKS: usize = 0;
pub(crate) const SEGMENTS: usize = 1;
const ZONES: usize = 2;

/// First chunk size of each zone; each new chunk doubles it up to `CHUNK_MAX`. The segment
/// zone's first chunk is one segment. (Loom models keep them small.)
const CHUNK_MIN: [usize; ZONES] = if cfg!(loom) {
    [16 << 20, 8 << 20]
} else {
    [64 << 20, crate::pool::slab::SEGMENT_SIZE]
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
/// Each zone's chunks start on this boundary: blocks' on the huge-page size, segments' on the
/// segment size, so that a chunk holds whole segments from its first byte (on a 2 MiB boundary
/// a segment needed a chunk with 4 MiB of slack, and the first one, 8 MiB off huge pages, put
/// 6 MiB of a program's small blocks on 4 KiB pages: 1,500 faults).
const CHUNK_ALIGN: [usize; ZONES] = [HUGE_PAGE, crate::pool::slab::SEGMENT_SIZE];

/// Blocks below this size start at a rotating cache colour within their first page.
const COLOUR_MAX: usize = 2 << 20;
/// Colours: line offsets within the first page.
const COLOURS: usize = PAGE / 64;
/// The largest colour offset.
const COLOUR_SPAN: usize = (COLOURS - 1) * 64;

/// The first chunk of descriptors and region records: 128 KiB on 4 KiB pages, about 680
/// descriptors; a process with more extents than that holds tens of MiB of blocks and segments,
/// and its later chunks go on huge pages once huge pages are armed and the arena holds
/// `HUGE_META_FROM` (descriptors are packed: a Rust program's 1 MiB of them faulted 239 times on
/// 4 KiB pages).
const META_FIRST: usize = 128 << 10;

/// The page map's first metadata chunk: four nodes (the root's children and leaves, 32 KiB
/// each), on 4 KiB pages. A leaf covers 16 MiB of address space and is touched one 4 KiB page per
/// 2 MiB where blocks start, so a map that needs more than four nodes spans 32 MiB of blocks or
/// more, dense enough for its next nodes to go on huge pages once the arena holds
/// `HUGE_META_FROM` (`ArenaState::advise_meta`; a Rust
/// program with a 1.2 GiB arena faulted about 80 times in its leaves on 4 KiB pages; the tensor
/// trace's requests 2-3 five times, in leaves of blocks placed where none had started before,
/// and so with eight nodes on 4 KiB pages).
const MAP_META_FIRST: usize = 4 * pagemap::NODE_BYTES;

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
    /// The request would take fresh pages, and the caller asked for resident memory only.
    Fresh,
    /// Huge pages were just armed: advise the chunks mapped before, then try again.
    Advise,
}

/// The arena's state, behind its lock.
///
/// It starts as all zero bytes (`ArenaState::new`), and the first `Arena::with` sets the
/// defaults that are not zero (`ready`): so the process-wide arena, page map and all, sits in
/// `.bss`, where only the pages a process writes become resident, instead of 37 KiB of `.data`
/// that every process loads in whole (a C program that mallocs once kept all ten pages of it).
pub(crate) struct ArenaState {
    /// The defaults below are set (`ArenaState::ready`).
    ready: bool,
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
    /// The page map's nodes: four on 4 KiB pages, then whole huge pages, huge once the arena is
    /// large (`MAP_META_FIRST`, `advise_meta`). Descriptors and region records are in `meta`,
    /// likewise past its first chunk (`META_FIRST`).
    map_meta: Meta,
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
    /// Huge pages: advise them on new chunks (blocks are packed, not aligned to them), and
    /// purge whole free huge pages before cutting into one (`take_dirty`).
    pub(crate) huge_pages: bool,
    /// Huge pages on and the arena big enough for them (`HUGE_DENSE_BLOCKS`): chunks are advised
    /// as they are mapped. Never cleared.
    huge_armed: bool,
    /// Block chunks mapped before huge pages were armed (`HUGE_DENSE_BLOCKS`), `(base, len)`:
    /// advised and collapsed by `advise_early_chunks`. When a chunk finds no slot, the arena is
    /// big enough: it arms.
    unadvised: [(usize, usize); 4],
    /// 2 MiB ranges whose collapse into huge pages the kernel answered "try again" (`EAGAIN`),
    /// `(start, tries so far)`, 0 for a free slot: tried again at the next decay tick or growth
    /// (`collapse_owed`).
    recollapse: [(usize, u8); 4],
    /// Metadata just went on huge pages; its later chunks mapped before are owed a collapse
    /// (`advise_meta`, `Arena::advise_early_chunks`).
    meta_owed: bool,
}

// SAFETY: the raw pointers are descriptors and regions owned by the arena, touched only under its
// lock (or, for a live block, by the thread holding it).
unsafe impl Send for ArenaState {}

/// The arena: its state behind a lock, and the page map read without it.
///
/// In this order (`repr(C)`): the process-wide arena is in `.bss` (`ArenaState`), where a page
/// becomes resident when written, and a process writes the state and the atomics, then, of the
/// page map's 32 KiB root, only the entries of the few 32 GiB ranges where its memory is.
#[repr(C)]
pub(crate) struct Arena {
    state: SpinLock<ArenaState>,
    /// When decay is next due, bitwise inverted (`!Decay::due_at`: a copy, so that the
    /// heartbeat needs no lock; inverted, so that "never" is zero bytes, as the static's other
    /// fields start).
    due_not: AtomicU64,
    /// The decay time and purge advice in force, for the heaps' purges of idle slab pages
    /// (`!ArenaState::purge_policy`, copied and inverted like `due_not`).
    policy_not: AtomicU64,
    /// Huge pages on and the heaps holding `HUGE_SEGMENTS_FROM` of segments: dense segments may
    /// go huge (`Arena::advise_taken_segment`, `Arena::segment_dense`). Set under the lock, read
    /// without it, never cleared.
    segments_armed: AtomicBool,
    pub(crate) map: PageMap,
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
    /// All zero bytes: what `ready` completes.
    const fn new() -> Self {
        Self {
            ready: false,
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
            meta: Meta::with_first(0),
            map_meta: Meta::with_first(0),
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
            chunk_next: [0; ZONES],
            capacity: [0; NUM_KINDS],
            decay: Decay::zeroed(),
            lazy_purge: false,
            huge_pages: false,
            huge_armed: false,
            unadvised: [(0, 0); 4],
            recollapse: [(0, 0); 4],
            meta_owed: false,
        }
    }

    /// Set the defaults that are not zero bytes, the first time the state is used.
    #[inline]
    fn ready(&mut self) {
        if !self.ready {
            self.set_defaults();
        }
    }

    #[cold]
    // Every process runs it, at its first large block or segment: see `preload/layout.ld`.
    #[link_section = ".text.hot.tensorpool"]
    fn set_defaults(&mut self) {
        self.ready = true;
        self.meta = Meta::with_first(META_FIRST);
        self.map_meta = Meta::with_first(MAP_META_FIRST);
        self.chunk_next = CHUNK_MIN;
        self.capacity = [AUTO; NUM_KINDS];
        self.decay = Decay::new(super::decay::DEFAULT_MS);
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
            due_not: AtomicU64::new(!u64::MAX),
            policy_not: AtomicU64::new(!POLICY_NEVER),
            segments_armed: AtomicBool::new(false),
        }
    }
    #[cfg(loom)]
    pub(crate) fn new() -> Self {
        Self {
            state: SpinLock::new(ArenaState::new()),
            map: PageMap::new(),
            due_not: AtomicU64::new(!u64::MAX),
            policy_not: AtomicU64::new(!POLICY_NEVER),
            segments_armed: AtomicBool::new(false),
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
            s.ready();
            let r = f(s);
            self.due_not.store(!s.decay.due_at(), Relaxed);
            let policy_not = !s.purge_policy();
            if self.policy_not.load(Relaxed) != policy_not {
                self.policy_not.store(policy_not, Relaxed);
            }
            r
        })
    }

    /// The clock decay runs on (ns; 0 under loom, whose models drive time by hand).
    #[inline]
    pub(crate) fn now(&self) -> u64 {
        now()
    }

    /// Take an extent for `u` of `size` bytes at alignment `align`: dirty memory first, then
    /// clean, then a new chunk; when the OS refuses, release everything free and try once more.
    /// Null when that fails too.
    pub(crate) fn take(&self, u: Use, size: usize, align: usize) -> *mut Extent {
        self.take_in(u, size, align, false)
    }

    /// `take`, or with `resident_only` null where the request would fault fresh pages in.
    #[link_section = ".text.hot.tensorpool"]
    fn take_in(&self, u: Use, size: usize, align: usize, resident_only: bool) -> *mut Extent {
        let t = now();
        let mut recovered = false;
        loop {
            let step = self.with(|s| s.try_take(&self.map, u, size, align, t, resident_only));
            match step {
                Step::Done(e) => return e,
                Step::Purge(chain) => self.purge(chain),
                Step::Fail | Step::Fresh => return ptr::null_mut(),
                Step::Advise => self.advise_early_chunks(),
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

    /// Allocate a large block of `kind`: its descriptor (`large::start` is its first byte),
    /// or null. The caller gets the descriptor so that it need not look it up again (scope,
    /// sampling).
    pub(crate) fn alloc(&self, kind: usize, size: usize, align: usize) -> *mut Extent {
        self.take_in(Use::Block(kind), size, align, false)
    }

    /// `alloc`, answering the block's first byte (or null): for tests and models, which hold
    /// blocks by address as programs do.
    #[cfg(any(test, loom))]
    pub(crate) fn alloc_block(&self, kind: usize, size: usize, align: usize) -> *mut u8 {
        let e = self.alloc(kind, size, align);
        if e.is_null() {
            return ptr::null_mut();
        }
        // SAFETY: `e` is the live block just made, held by the caller.
        unsafe { super::start(e) }
    }

    /// `alloc` from resident (dirty) memory only: null where it would fault fresh pages in.
    pub(crate) fn alloc_resident(&self, kind: usize, size: usize, align: usize) -> *mut Extent {
        self.take_in(Use::Block(kind), size, align, true)
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
    #[link_section = ".text.hot.tensorpool"]
    pub(crate) unsafe fn free(&self, e: *mut Extent) {
        let t = now();
        // SAFETY: the caller's contract.
        let chain = self.with(|s| unsafe { s.release(e, t) });
        self.purge(chain);
    }

    /// Purge a chain of `Busy` extents outside the lock, then return them as clean memory.
    #[link_section = ".text.hot.tensorpool"]
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

    /// The decay heartbeat: cheap when nothing is due (one clock read, one load). Returns the
    /// time it read.
    #[inline]
    pub(crate) fn tick(&self) -> u64 {
        let t = now();
        if t >= !self.due_not.load(Relaxed) {
            self.tick_at(t);
        }
        t
    }

    /// Advance decay to time `t` (ns) and purge what has been idle for a whole period.
    #[link_section = ".text.hot.tensorpool"]
    pub(crate) fn tick_at(&self, t: u64) {
        let chain = self.with(|s| s.advance(t));
        self.purge(chain);
        self.collapse_owed();
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
        let (ok, chain, armed_now) = self.with(|s| {
            // SAFETY: the caller's contract; neighbours are the arena's, under its lock.
            unsafe {
                let start = p as usize;
                let Some(end) = start
                    .checked_add(new_size)
                    .and_then(|x| x.checked_next_multiple_of(PAGE))
                else {
                    return (false, ptr::null_mut(), false);
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
                    return (true, s.advance(t), false);
                }
                let grow = end - cur_end;
                let n = (*e).next;
                // `e` is live, so a free `n` heads its run.
                if !ArenaState::is_free(n) || (*n).span < grow || !s.reserve(3) {
                    return (false, ptr::null_mut(), false);
                }
                let kind = (*e).kind as usize;
                // Growing in place counts towards arming huge pages as a new block would (a
                // vector grown by `realloc` from a few KiB to 20 MiB went on 4 KiB pages).
                let armed_now = s.arms(new_size, grow);
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
                (true, ptr::null_mut(), armed_now)
            }
        });
        if armed_now {
            self.advise_early_chunks();
        }
        self.purge(chain);
        ok
    }
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
            s.map_meta.release_all();
        });
    }
}
