//! `TensorPool`: the `GlobalAlloc` facade. It routes each request to the small path (thread heaps)
//! or the large path (the thread's cache of large blocks, then the arena), answers `realloc` in
//! place where it can, and stops the process at a free of an address that is not a live block.
//! `observe.rs` holds what a program asks about where its memory went (timeline, profiles,
//! scopes, the HTML report); `exit.rs` the reports written at exit.
//!
//! All allocator state is process-wide (thread heaps are reached through thread-locals, the arena
//! is one static), so every `TensorPool` value is a view of the same allocator; the configuration
//! of the first value to initialise it is the one applied.

use crate::class::class_for;
use crate::heap;
use crate::kind::{TensorKind, NUM_KINDS};
use crate::options::{ExitReport, PoolConfig};
use crate::pagemap;
use crate::pool::large::{self, ARENA};
use crate::pool::slab;
use crate::stats::{ArenaCounters, LargeCounters};
use core::alloc::{GlobalAlloc, Layout};
use core::ptr;

mod exit;
mod observe;

/// The allocator. Declare it as the global allocator of an inference binary:
///
/// ```no_run
/// #[global_allocator]
/// static ALLOC: tensorpool::TensorPool = tensorpool::TensorPool::new();
/// # fn main() {}
/// ```
#[derive(Debug)]
pub struct TensorPool {
    config: PoolConfig,
}

impl TensorPool {
    /// An allocator with the default configuration.
    pub const fn new() -> Self {
        Self {
            config: PoolConfig::new(),
        }
    }

    /// An allocator with an explicit configuration.
    pub const fn with_config(config: PoolConfig) -> Self {
        Self { config }
    }

    /// Apply this value's configuration now if no configuration has been applied yet (otherwise the
    /// allocator applies it at its first large allocation, or the first small one through
    /// `GlobalAlloc` that misses the thread's cached blocks). Returns whether this call applied
    /// it.
    #[link_section = ".text.hot.tensorpool"]
    pub fn init(&self) -> bool {
        if crate::options::configured() {
            return false;
        }
        self.configure()
    }

    /// Apply the configuration: the code's `PoolConfig`, overridden by `TENSORPOOL_*`
    /// environment variables (read here, once, without allocating).
    #[cold]
    #[link_section = ".text.hot.tensorpool"]
    fn configure(&self) -> bool {
        if !crate::options::begin_configure() {
            return false;
        }
        self.apply_config();
        crate::options::end_configure();
        true
    }

    fn apply_config(&self) {
        let env = crate::options::read_env(&self.config);
        ARENA.with(|s| {
            for (k, &cap) in self.config.capacity.iter().enumerate() {
                let code = if cap == crate::options::DEFAULT_CAPACITY {
                    large::AUTO
                } else {
                    cap
                };
                s.capacity[k] = env.capacity[k].unwrap_or(code);
            }
            s.huge_pages = env
                .huge_pages
                .unwrap_or(self.config.huge_pages)
                .resolve(crate::os::thp_mode());
            s.lazy_purge = env.lazy_purge.unwrap_or(self.config.lazy_purge);
            s.decay.set_ms(env.decay_ms.unwrap_or(self.config.decay_ms));
        });
        ARENA.advise_early_chunks();
        crate::profile::configure(self.config.profile);
        // The configuring thread's heap may exist already.
        heap::follow_mode_here();
        let background = env.background.unwrap_or(self.config.background);
        crate::background::configure(background);
        let report = env.exit_report.unwrap_or(self.config.exit_report);
        if report != ExitReport::Off {
            // Registered once (a forked child applies the configuration again when its
            // parent was applying it at the fork).
            let before =
                exit::EXIT_REPORT.swap(report as u8, core::sync::atomic::Ordering::Relaxed);
            if before == ExitReport::Off as u8 {
                crate::os::at_exit(exit::exit_report);
            }
        }
        let (topology, _) = crate::topology::current();
        heap::hot::set_limit(
            env.thread_cache.unwrap_or(self.config.thread_cache),
            topology.l3_share(),
            topology.cores,
        );
        let report = crate::os::getenv(c"TENSORPOOL_REPORT").is_some();
        if env.timeline.unwrap_or(self.config.timeline) || report {
            crate::timeline::start(0);
        }
        #[cfg_attr(not(loom), link_section = ".bss.hot.tensorpool")]
        static HTML_AT_EXIT: core::sync::atomic::AtomicBool =
            core::sync::atomic::AtomicBool::new(false);
        if report && !HTML_AT_EXIT.swap(true, core::sync::atomic::Ordering::Relaxed) {
            crate::os::at_exit(exit::html_report_at_exit);
        }
    }

    /// Change one kind's soft capacity (live + cached large-block bytes) at run time:
    /// `DEFAULT_CAPACITY` lets the kind follow the workload again. Cached memory over the new
    /// capacity is returned to the OS at the kind's next free.
    pub fn set_capacity(&self, kind: TensorKind, bytes: usize) {
        self.init();
        let cap = if bytes == crate::options::DEFAULT_CAPACITY {
            large::AUTO
        } else {
            bytes
        };
        ARENA.with(|s| s.capacity[kind.index()] = cap);
    }

    /// Change the decay time at run time: freed memory idle for `ms` milliseconds goes back to
    /// the OS (`0`: at every free; negative: never). Returns the previous value.
    pub fn set_decay_ms(&self, ms: i64) -> i64 {
        self.init();
        let ms = ms.max(large::DECAY_NEVER);
        ARENA.with(|s| {
            let old = s.decay.ms();
            s.decay.set_ms(ms);
            old
        })
    }

    /// Whether the background decay thread is running (see `PoolConfig::with_background`).
    pub fn background_running(&self) -> bool {
        crate::background::running()
    }

    /// The decay time in force (milliseconds; negative: never).
    pub fn decay_ms(&self) -> i64 {
        self.init();
        ARENA.with(|s| s.decay.ms())
    }

    /// The cache topology the allocator budgets for, and where it came from: Linux sysfs with
    /// any `TENSORPOOL_L1D` / `_L2` / `_L3` / `_LINE` / `_CORES` / `_THREADS` overrides, or the
    /// i5-10210U preset where sysfs says nothing. Worked out once, without allocating.
    pub fn topology(
        &self,
    ) -> (
        crate::topology::CacheTopology,
        crate::topology::TopologySource,
    ) {
        crate::topology::current()
    }

    /// One kind's configured soft capacity in bytes (the code's value or the environment's), or
    /// `usize::MAX` while the kind follows the workload (the default: see `PoolConfig`).
    pub fn capacity(&self, kind: TensorKind) -> usize {
        self.init();
        ARENA.with(|s| s.capacity[kind.index()])
    }

    /// Return every cached page of every kind to the OS, the thread caches of large blocks
    /// included, and unmap the address space left wholly free. Returns the bytes released.
    /// Before that, every thread's cache of large blocks that its owner is not using at that
    /// moment goes back to the arena (since 0.3.9; before, only the calling thread's), and the
    /// calling thread's heap and every abandoned heap take back the blocks other threads freed
    /// into them and give their empty pages and segments back. (Other threads' small-block
    /// pages stay: they are theirs alone; a thread's exit gives them back.)
    pub fn trim(&self) -> usize {
        heap::collect();
        ARENA.trim()
    }

    /// Let decay catch up now (what the background thread does, and every allocator call that
    /// runs a slow path): memory idle for a whole decay period goes back to the OS. Like the
    /// background thread, it also sends back to the arena every thread's cache of large blocks
    /// that has not been used for 100 ms (since 0.3.9), where later ticks return it.
    pub fn collect(&self) {
        ARENA.tick();
        heap::idle::reclaim_for_decay();
    }

    /// The L3 budget as applied: the topology, each core's share of the last-level cache, the
    /// thread-cache limit, and the bytes in thread caches now (see `L3Budget`). Allocates
    /// nothing.
    pub fn budget(&self) -> crate::budget::L3Budget {
        self.init();
        let (topology, _) = crate::topology::current();
        let hot = heap::hot_totals();
        crate::budget::L3Budget {
            topology,
            share: topology.l3_share(),
            thread_limit: heap::hot::limit(),
            hot_bytes: hot,
            thread_hot_bytes: heap::hot_bytes_here() as u64,
        }
    }

    /// Counters of one kind's large blocks.
    pub fn large_counters(&self, kind: TensorKind) -> LargeCounters {
        self.all_large_counters()[kind.index()]
    }

    /// Counters of all kinds' large blocks, indexed by `TensorKind::index`.
    pub fn all_large_counters(&self) -> [LargeCounters; NUM_KINDS] {
        ARENA.with(|s| s.kind_counters())
    }

    /// Check every invariant of the arena (extents tiling their regions, runs in the tree, the
    /// release order, shares and byte equations) and return what it holds. Expensive (a walk of
    /// all extents under the lock): built only with the `check` feature, for debug tests. Panics
    /// on a violation.
    #[cfg(feature = "check")]
    pub fn check_arena(&self) -> crate::pool::large::Census {
        ARENA.census()
    }

    /// Check every invariant of the calling thread's heap (each page's block counts and lists,
    /// the page lists, the flags of the remote-free handshake, the segments) and return what it
    /// holds. Expensive (a walk of every block on its pages): built only with the `check`
    /// feature, for debug tests. Allocates nothing; panics on a violation. `None` if the thread
    /// has no heap yet.
    #[cfg(feature = "check")]
    pub fn check_heap(&self) -> Option<crate::heap::census::Census> {
        let h = crate::heap::types::current_heap();
        // SAFETY: the calling thread owns its heap; other threads only prepend to its remote and
        // delayed lists, which the census reads through their atomics.
        (!h.is_null()).then(|| unsafe { crate::heap::census::census(h) })
    }

    /// Counters of the arena all large blocks and segments come from: mapped, dirty and clean
    /// bytes, regions (mappings), purges, recoveries.
    pub fn arena_counters(&self) -> ArenaCounters {
        ARENA.with(|s| s.arena_counters())
    }

    /// A snapshot of the statistics, per kind and in aggregate (see `Stats`). Takes the arena's
    /// lock briefly (counters, and a walk of the slab segments' page descriptors) and reads every
    /// thread heap's counters; allocates nothing.
    pub fn stats(&self) -> crate::stats::Stats {
        let large = self.all_large_counters();
        let (small, maps, unmaps) = heap::totals();
        let segments = (maps, unmaps);
        let limits = core::array::from_fn(|k| {
            let kind = TensorKind::ALL[k];
            (
                self.limited_bytes(kind) as u64,
                self.limit_refusals(kind) as u64,
            )
        });
        let mut s = crate::stats::Stats::assemble(
            &large,
            &small,
            &limits,
            segments,
            self.arena_counters(),
            crate::os::resident_bytes().map(|r| r as u64),
        );
        s.huge_pages = self.huge_page_coverage();
        s
    }

    /// The arena's resident bytes and how many of them are on transparent huge pages, from
    /// `/proc/self/smaps` (read through a stack buffer, outside every lock; `None` where it
    /// cannot be read). A report-time figure: the kernel walks the page tables to answer.
    pub fn huge_page_coverage(&self) -> Option<crate::stats::HugePageCoverage> {
        let mut bounds = [(0usize, 0usize); 256];
        let n = ARENA.with(|s| s.region_bounds(&mut bounds));
        let (resident_bytes, huge_bytes) = crate::os::smaps_huge(&bounds[..n.min(bounds.len())])?;
        Some(crate::stats::HugePageCoverage {
            resident_bytes,
            huge_bytes,
        })
    }

    /// Usable size of a live block returned by this allocator (at least the requested size).
    ///
    /// # Safety
    /// `p` is a live block allocated by a `TensorPool`.
    #[link_section = ".text.hot.tensorpool"]
    pub unsafe fn usable_size(&self, p: *mut u8) -> usize {
        if pagemap::is_small(p) {
            let seg = slab::segment_of(p);
            // SAFETY: `seg` is a live small segment (the bitmap says so).
            return unsafe { slab::usable(seg, p) }
                .unwrap_or_else(|| heap::report::bad_free(p, "malloc_usable_size", seg, false));
        }
        let e = ARENA.lookup(p);
        if e.is_null() {
            if crate::checked::owns(p) {
                // SAFETY: as in `free_large`.
                return unsafe { crate::checked::usable(p, "malloc_usable_size") };
            }
            invalid_free(p, "malloc_usable_size");
        }
        // SAFETY: `e` is the live block at `p`.
        unsafe { large::usable(e, p) }
    }

    /// Kind of the pool that owns a live block.
    ///
    /// # Safety
    /// `p` is a live block allocated by a `TensorPool`.
    #[link_section = ".text.hot.tensorpool"]
    pub unsafe fn kind_of(&self, p: *mut u8) -> TensorKind {
        let k = if pagemap::is_small(p) {
            // SAFETY: `p` is a live small block.
            unsafe { slab::kind_of(slab::segment_of(p), p) }
        } else {
            let e = ARENA.lookup(p);
            if e.is_null() {
                if crate::checked::owns(p) {
                    // SAFETY: as in `free_large`.
                    return TensorKind::from_index(unsafe { crate::checked::kind_of(p) })
                        .unwrap_or_default();
                }
                return TensorKind::General;
            }
            // SAFETY: `e` is the live block at `p`.
            unsafe { large::kind_of(e) }
        };
        TensorKind::from_index(k).unwrap_or(TensorKind::General)
    }

    /// Allocate under an explicit kind (the handles' entry point). Null on failure.
    #[inline]
    pub(crate) fn alloc_kind(&self, kind: usize, layout: Layout) -> *mut u8 {
        match class_for(layout.size(), layout.align()) {
            Some(c) => heap::alloc_small_kind(kind, c, layout.size()),
            None => self.alloc_large(kind, layout.size(), layout.align()),
        }
    }

    /// A small request the thread's direct page could not serve: the configuration is applied
    /// here too if it has not been, so that a program that only ever asks for small blocks
    /// runs with its `PoolConfig` and `TENSORPOOL_*` (its decay, huge pages, exit report)
    /// rather than the defaults; then the heap's slow path.
    #[cold]
    #[inline(never)]
    #[link_section = ".text.hot.tensorpool"]
    fn alloc_small_missed(&self, class: usize, size: usize) -> *mut u8 {
        if !crate::options::configured() {
            self.configure();
        }
        heap::alloc_small(class, size)
    }

    #[inline(never)]
    // C ABI: see `heap::alloc_slow`.
    #[link_section = ".text.hot.tensorpool"]
    extern "C" fn alloc_large(&self, kind: usize, size: usize, align: usize) -> *mut u8 {
        if !crate::options::configured() {
            self.configure();
        }
        if crate::checked::full() {
            return crate::checked::alloc(size, align, kind);
        }
        let e = self.take_large(kind, size, align);
        if e.is_null() {
            return ptr::null_mut();
        }
        // SAFETY: `e` is the block just handed to this thread.
        unsafe { heap::claim_large(e) };
        // SAFETY: `e` is the block just handed to this thread, held by it.
        let p = unsafe { large::start(e) };
        let scope = crate::scope::current();
        if scope != 0 {
            // SAFETY: as above.
            unsafe { large::set_scope(e, scope) };
        }
        if crate::profile::should_sample(size) {
            // SAFETY: as above.
            unsafe { heap::note_sampled(e, size, kind) };
        }
        if crate::profile::on() {
            crate::profile::note_live(crate::stats::held_total() as usize);
        }
        p
    }

    /// A large block from the thread's cache or the arena: its descriptor, or null.
    #[inline]
    fn take_large(&self, kind: usize, size: usize, align: usize) -> *mut large::Extent {
        let e = heap::hot_take(kind, size, align);
        if !e.is_null() {
            return e;
        }
        // The thread's cache holds at least this many bytes, none of them a fit: before the
        // arena faults fresh pages in for this request, they go back, where they coalesce with
        // their neighbours and may serve it (kept, they were 8 MiB of the inference example's
        // peak RSS). A cache holding less stays: flushing it could not make the request
        // resident, and only added to the dirty memory the bound then purged (the tensor
        // trace's requests 2-3 faulted 2,351 times instead of 0).
        if heap::hot_bytes_here() >= size {
            let e = ARENA.alloc_resident(kind, size, align);
            if !e.is_null() {
                return e;
            }
            heap::hot_flush();
        }
        let e = ARENA.alloc(kind, size, align);
        if !e.is_null() {
            return e;
        }
        // The arena released everything free and still failed: give back the thread caches too
        // (this thread's, and every other that its owner is not using now) and try a last
        // time.
        heap::reclaim_caches();
        ARENA.alloc(kind, size, align)
    }

    /// Free a block of any kind.
    ///
    /// # Safety
    /// `p` is a live block allocated by a `TensorPool`.
    #[inline(always)]
    pub(crate) unsafe fn free(&self, p: *mut u8) {
        if pagemap::is_small(p) {
            let seg = slab::segment_of(p);
            // SAFETY: `seg` is a live small segment (the bitmap says so); `free_small` checks
            // the address before it writes anything.
            unsafe { heap::free_small(seg, p) };
        } else {
            // SAFETY: the caller's contract.
            unsafe { self.free_large(p) };
        }
    }

    /// # Safety
    /// As for `free`.
    #[inline(never)]
    // C ABI: see `heap::alloc_slow`.
    #[link_section = ".text.hot.tensorpool"]
    unsafe extern "C" fn free_large(&self, p: *mut u8) {
        let e = ARENA.lookup(p);
        if e.is_null() {
            if crate::checked::owns(p) {
                // SAFETY: `p` is in the checking allocator's memory, which checks the rest.
                return unsafe { crate::checked::free(p, "free") };
            }
            invalid_free(p, "free");
        }
        // SAFETY: `e` is the live block at `p`, freed once by this call.
        unsafe {
            if large::take_sampled(e) {
                crate::profile::remove(p);
            }
            large::take_scope(e);
            if !heap::hot_put(e) {
                ARENA.free(e);
            }
        }
        crate::background::poke();
    }

    /// Grow or shrink in place if possible; null if the caller must move the block. `old` is
    /// the size the caller last asked for, where it knows it (C's `realloc` does not): a large
    /// block gives its tail back only when it really shrinks, below `old` (or, unknown, below
    /// half its usable size), so that room left for growth is not returned at the next growth.
    ///
    /// # Safety
    /// `p` is a live block of this allocator.
    #[link_section = ".text.hot.tensorpool"]
    pub(crate) unsafe fn resize_in_place(
        &self,
        p: *mut u8,
        old: Option<usize>,
        new_size: usize,
    ) -> *mut u8 {
        if pagemap::is_small(p) {
            let seg = slab::segment_of(p);
            // SAFETY: `seg` is a live small segment (the bitmap says so).
            let usable = unsafe { slab::usable(seg, p) }
                .unwrap_or_else(|| heap::report::bad_free(p, "realloc", seg, false));
            if new_size <= usable && (new_size > usable / 2 || usable <= 64) {
                return p;
            }
            return ptr::null_mut();
        }
        let e = ARENA.lookup(p);
        if e.is_null() {
            if crate::checked::owns(p) {
                // The checking allocator's blocks always move (its free checks the old one).
                // SAFETY: as in `free_large`.
                unsafe { crate::checked::usable(p, "realloc") };
                return ptr::null_mut();
            }
            invalid_free(p, "realloc");
        }
        // SAFETY: `e` is the live block at `p`, held by the caller.
        let usable = unsafe { large::usable(e, p) };
        let shrink = match old {
            Some(o) => new_size < o,
            None => new_size <= usable / 2,
        };
        // SAFETY: as above.
        let before = unsafe { large::block_info(e) }.2;
        // A large block shrinking into the small classes moves (a few KiB copied).
        // SAFETY: as above.
        if new_size > crate::class::SMALL_MAX && unsafe { ARENA.resize(e, p, new_size, shrink) } {
            // SAFETY: as above.
            unsafe { large::rescope(e, before) };
            p
        } else {
            ptr::null_mut()
        }
    }

    /// Move a live block to a new one of `new_size` bytes of the same kind, copying `keep`
    /// bytes; null (with `p` untouched) on failure.
    ///
    /// # Safety
    /// `p` is a live block of at least `keep` bytes; `align` is a valid alignment.
    #[link_section = ".text.hot.tensorpool"]
    unsafe fn realloc_move(
        &self,
        p: *mut u8,
        keep: usize,
        new_size: usize,
        align: usize,
    ) -> *mut u8 {
        let Ok(layout) = Layout::from_size_align(new_size, align) else {
            return ptr::null_mut();
        };
        // A block keeps its kind when it grows, whatever the thread's tag is now: a KV cache
        // grown outside its scope stays a KV cache.
        // SAFETY: `p` is live.
        let kind = unsafe { self.kind_of(p) }.index();
        // A large block that must move to grow gets room to grow again in place: half its new
        // size, which costs address space only until it is written. A cache grown a few tokens
        // at a time (`reserve_exact`) then moves O(log n) times instead of at every step.
        let room = if new_size > keep && new_size >= GROW_ROOM_MIN {
            new_size / 2
        } else {
            0
        };
        let q = match Layout::from_size_align(new_size.saturating_add(room), align) {
            Ok(roomy) if room > 0 => {
                let q = self.alloc_kind(kind, roomy);
                if q.is_null() {
                    self.alloc_kind(kind, layout)
                } else {
                    q
                }
            }
            _ => self.alloc_kind(kind, layout),
        };
        if !q.is_null() {
            // SAFETY: both blocks are live and distinct; `keep` fits both.
            unsafe {
                ptr::copy_nonoverlapping(p, q, keep.min(new_size));
                self.free(p);
            }
        }
        q
    }

    /// Whether a live block is known to be zero-filled (fresh from the OS).
    ///
    /// # Safety
    /// `p` is a live block allocated by a `TensorPool`.
    unsafe fn is_fresh(&self, p: *mut u8) -> bool {
        if pagemap::is_small(p) {
            return false;
        }
        let e = ARENA.lookup(p);
        // SAFETY: a non-null `e` is the live block at `p`.
        !e.is_null() && unsafe { large::is_zero(e) }
    }
}

/// Blocks from this size on get room to grow when `realloc` must move them.
const GROW_ROOM_MIN: usize = 256 << 10;

/// An address that is not a live large block of ours reached `free`, `realloc` or a size query:
/// stop the process before the allocator's state is corrupted. Writes one line to stderr, saying
/// what the arena knows of the address (inside a live block, a block already freed, free
/// memory, or none of ours), and aborts. Allocates nothing.
#[cold]
#[inline(never)]
pub(crate) fn invalid_free(p: *mut u8, what: &str) -> ! {
    use crate::os::fatal;
    use crate::pool::large::State;
    let kind = |k: usize| TensorKind::from_index(k).map_or("segment", |k| k.name());
    let size = |n: usize| crate::text::Bytes(n as u64);
    match ARENA.describe(p) {
        Some((start, n, k, State::Live)) => fatal(format_args!(
            "{what}({p:p}): not the start of a block: {} bytes into the {} block at {start:#x} \
             (kind {})",
            p as usize - start,
            size(n),
            kind(k)
        )),
        Some((start, n, k, State::Hot)) if start == p as usize => fatal(format_args!(
            "{what}({p:p}): double free of a {} block (kind {})",
            size(n),
            kind(k)
        )),
        Some((_, _, _, s)) if s.is_free() => fatal(format_args!(
            "{what}({p:p}): not a live block: the memory there is free (a double free, or an \
             address never handed out)"
        )),
        _ => fatal(format_args!(
            "{what}({p:p}): not a live block of this allocator (never handed out, or freed and \
             returned to the OS)"
        )),
    }
}

/// The raw interface a C ABI needs: sizes and alignments as C passes them, blocks freed by
/// address alone. (Rust code should use `GlobalAlloc` or the handles.)
impl TensorPool {
    /// `malloc`'s fast path: a block of at least `size` bytes (a minimal block for 0), 16-byte
    /// aligned, from the calling thread's cached small blocks of its current kind, or null where
    /// none is at hand: then `alloc_raw(size, 16, false)` serves the request (and says whether
    /// it fails). It takes no lock and calls nothing, so that a C `malloc` built on it keeps no
    /// stack frame and reaches its slow path by a tail call.
    #[inline(always)]
    pub fn alloc_cached(&self, size: usize) -> *mut u8 {
        if size > crate::class::SMALL_MAX {
            return ptr::null_mut();
        }
        heap::pop_direct(crate::class::small_class_16(size))
    }

    /// A block of at least `size` bytes (a minimal block for 0) aligned to `align`, zeroed if
    /// `zeroed`. Null if `align` is not a power of two, the size overflows, or the OS refuses.
    #[inline]
    pub fn alloc_raw(&self, size: usize, align: usize, zeroed: bool) -> *mut u8 {
        let Ok(layout) = Layout::from_size_align(size.max(1), align) else {
            return ptr::null_mut();
        };
        // SAFETY: a valid layout of non-zero size.
        unsafe {
            if zeroed {
                self.alloc_zeroed(layout)
            } else {
                self.alloc(layout)
            }
        }
    }

    /// Free a block by address; null is ignored.
    ///
    /// # Safety
    /// `p` is null or a live block of this allocator, freed once.
    #[inline(always)]
    pub unsafe fn free_raw(&self, p: *mut u8) {
        if !p.is_null() {
            // SAFETY: the caller's contract.
            unsafe { self.free(p) }
        }
    }

    /// Resize a block to at least `new_size` bytes (non-zero), keeping its contents up to the
    /// smaller size; a moved block is aligned to `align`. Null on failure, with `p` untouched.
    ///
    /// # Safety
    /// `p` is a live block of this allocator.
    #[link_section = ".text.hot.tensorpool"]
    pub unsafe fn realloc_raw(&self, p: *mut u8, new_size: usize, align: usize) -> *mut u8 {
        // SAFETY: `p` is live (the caller's contract), and still is when the in-place resize
        // fails; its usable size bounds what is copied.
        unsafe {
            let q = self.resize_in_place(p, None, new_size);
            if !q.is_null() {
                return q;
            }
            let old = self.usable_size(p);
            self.realloc_move(p, old, new_size, align)
        }
    }
}

impl Default for TensorPool {
    fn default() -> Self {
        Self::new()
    }
}

// SAFETY: every method returns null rather than unwinding; blocks are at least `layout.size()`
// bytes, aligned to `layout.align()` (class sizes are multiples of the alignment, large blocks are
// placed at an aligned offset), never handed out twice, and freed to the pool that owns them as
// found from the address.
unsafe impl GlobalAlloc for TensorPool {
    #[inline]
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        match class_for(layout.size(), layout.align()) {
            Some(c) => {
                let b = heap::pop_direct(c);
                if !b.is_null() {
                    return b;
                }
                self.alloc_small_missed(c, layout.size())
            }
            None => self.alloc_large(heap::tag::current(), layout.size(), layout.align()),
        }
    }

    #[inline]
    unsafe fn dealloc(&self, p: *mut u8, _layout: Layout) {
        // SAFETY: the caller passes a live block of this allocator.
        unsafe { self.free(p) }
    }

    #[link_section = ".text.hot.tensorpool"]
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: `layout` has a non-zero size (`alloc_zeroed`'s contract is `alloc`'s).
        let p = unsafe { self.alloc(layout) };
        // SAFETY: `p` is a fresh block of at least `layout.size()` bytes.
        if !p.is_null() && !unsafe { self.is_fresh(p) } {
            // SAFETY: as above.
            unsafe { ptr::write_bytes(p, 0, layout.size()) };
        }
        p
    }

    unsafe fn realloc(&self, p: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let align = layout.align();
        // SAFETY: `p` is live with alignment `align` (the caller's contract).
        let q = unsafe { self.resize_in_place(p, Some(layout.size()), new_size) };
        if !q.is_null() {
            return q;
        }
        // SAFETY: `p` is live with `layout.size()` bytes (the caller's contract).
        unsafe { self.realloc_move(p, layout.size(), new_size, align) }
    }
}
