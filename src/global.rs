//! `TensorPool`: the `GlobalAlloc` facade. It routes each request to the small path (thread heaps)
//! or the large path (per-kind pools), and answers `realloc` in place where it can.
//!
//! All allocator state is process-wide (thread heaps are reached through thread-locals, the large
//! pools are one static), so every `TensorPool` value is a view of the same allocator; the
//! configuration of the first value to initialise it is the one applied.

use crate::kind::{TensorKind, NUM_KINDS};
use crate::options::{ExitReport, PoolConfig};
use crate::pool::large::{self, LargeCounters, LargeHeader, LARGE, LARGE_TAG};
use crate::pool::slab;
use crate::sync::{shared_static, AtomicBool, Ordering};
use crate::tcache;
use core::alloc::{GlobalAlloc, Layout};
use core::ptr;

shared_static! {
    /// Whether fork handlers are registered.
    static PROCESS_INIT: AtomicBool = AtomicBool::new(false);
}
shared_static! {
    /// Whether a configuration has been applied.
    static CONFIGURED: AtomicBool = AtomicBool::new(false);
}

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
    /// allocator applies it at its first large allocation). Returns whether this call applied it.
    pub fn init(&self) -> bool {
        if CONFIGURED.load(Ordering::Acquire) {
            return false;
        }
        self.configure()
    }

    /// Apply the configuration: the code's `PoolConfig`, overridden by `TENSORPOOL_*`
    /// environment variables (read here, once, without allocating).
    #[cold]
    fn configure(&self) -> bool {
        ensure_process_init();
        if CONFIGURED.swap(true, Ordering::AcqRel) {
            return false;
        }
        let default = crate::options::default_capacity();
        let env = crate::options::read_env(&self.config, default);
        for (k, &cap) in self.config.capacity.iter().enumerate() {
            let code = if cap == crate::options::DEFAULT_CAPACITY {
                default
            } else {
                cap
            };
            let cap = env.capacity[k].unwrap_or(code);
            LARGE.kinds[k].with(|p| p.capacity = cap);
        }
        LARGE.huge_pages.store(
            env.huge_pages.unwrap_or(self.config.huge_pages),
            Ordering::Relaxed,
        );
        let report = env.exit_report.unwrap_or(self.config.exit_report);
        if report != ExitReport::Off {
            EXIT_REPORT.store(report as u8, core::sync::atomic::Ordering::Relaxed);
            crate::os::at_exit(exit_report);
        }
        let (topology, _) = crate::topology::current();
        crate::budget::set_limit(
            env.thread_cache.unwrap_or(self.config.thread_cache),
            &topology,
        );
        if env.timeline.unwrap_or(self.config.timeline) {
            crate::timeline::start(0);
        }
        true
    }

    /// Start recording the memory timeline (clearing what was recorded). Each large-block
    /// allocation or free then records every kind's live and cached bytes, in a ring of the last
    /// `TIMELINE_CAPACITY` samples.
    pub fn start_timeline(&self) {
        self.start_timeline_every(core::time::Duration::ZERO);
    }

    /// As `start_timeline`, but at most one sample per `interval` (the first event after it
    /// elapses), so the ring covers a longer run.
    pub fn start_timeline_every(&self, interval: core::time::Duration) {
        self.init();
        crate::timeline::start(interval.as_nanos().min(u64::MAX as u128) as u64);
    }

    /// Stop recording the timeline; what was recorded stays until the next start.
    pub fn stop_timeline(&self) {
        crate::timeline::stop();
    }

    /// The recorded timeline, oldest sample first (allocates: call it outside hot paths).
    pub fn timeline(&self) -> crate::timeline::Timeline {
        crate::timeline::snapshot()
    }

    /// Change one kind's soft capacity (live + cached large-block bytes) at run time. Cached blocks
    /// over the new capacity are released at the kind's next allocation or free.
    pub fn set_capacity(&self, kind: TensorKind, bytes: usize) {
        self.init();
        LARGE.kinds[kind.index()].with(|p| p.capacity = bytes);
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

    /// One kind's soft capacity in bytes (after configuration: the code's value or the
    /// environment's).
    pub fn capacity(&self, kind: TensorKind) -> usize {
        self.init();
        LARGE.kinds[kind.index()].with(|p| p.capacity)
    }

    /// Release every cached block of every kind to the OS, the calling thread's hot cache
    /// included. Returns the bytes released. (Other threads' hot caches stay: they are theirs
    /// alone, and bounded by the thread-cache limit; a thread's exit sends its cache back to the
    /// pools.)
    pub fn trim(&self) -> usize {
        tcache::hot_flush();
        LARGE.trim()
    }

    /// The L3 budget as applied: the topology, each core's share of the last-level cache, the
    /// thread-cache limit, and the bytes in thread caches now (see `L3Budget`). Allocates
    /// nothing.
    pub fn budget(&self) -> crate::budget::L3Budget {
        self.init();
        let (topology, _) = crate::topology::current();
        let hot = core::array::from_fn(|k| tcache::small_totals(k).0.hot_bytes);
        crate::budget::L3Budget {
            topology,
            share: topology.l3_share(),
            thread_limit: crate::budget::limit(),
            hot_bytes: hot,
            thread_hot_bytes: tcache::hot_bytes_here() as u64,
        }
    }

    /// Counters of one kind's large-block pool.
    pub fn large_counters(&self, kind: TensorKind) -> LargeCounters {
        LARGE.kinds[kind.index()].with(|p| p.counters)
    }

    /// Counters of all kinds' large-block pools, indexed by `TensorKind::index`.
    pub fn all_large_counters(&self) -> [LargeCounters; NUM_KINDS] {
        core::array::from_fn(|k| LARGE.kinds[k].with(|p| p.counters))
    }

    /// A snapshot of the statistics, per kind and in aggregate (see `Stats`). Takes each kind's
    /// lock briefly and reads every thread heap's counters; allocates nothing.
    pub fn stats(&self) -> crate::stats::Stats {
        let large = self.all_large_counters();
        let mut small = [crate::stats::HeapPart::default(); NUM_KINDS];
        let mut segments = (0, 0);
        for (k, s) in small.iter_mut().enumerate() {
            let (part, maps, unmaps) = tcache::small_totals(k);
            *s = part;
            segments = (maps, unmaps);
        }
        let limits = core::array::from_fn(|k| {
            let kind = TensorKind::ALL[k];
            (
                self.limited_bytes(kind) as u64,
                self.limit_refusals(kind) as u64,
            )
        });
        crate::stats::Stats::assemble(
            &large,
            &small,
            &limits,
            segments,
            crate::os::resident_bytes().map(|r| r as u64),
        )
    }

    /// Usable size of a live block returned by this allocator (at least the requested size).
    ///
    /// # Safety
    /// `p` is a live block allocated by a `TensorPool`.
    pub unsafe fn usable_size(&self, p: *mut u8) -> usize {
        let seg = slab::segment_of(p);
        // SAFETY: `p` is live, so its segment header is readable and tagged.
        unsafe {
            if tcache::is_small(seg) {
                tcache::small_usable(seg, p)
            } else {
                large::info(seg.cast()).0
            }
        }
    }

    /// Kind of the pool that owns a live block.
    ///
    /// # Safety
    /// `p` is a live block allocated by a `TensorPool`.
    pub unsafe fn kind_of(&self, p: *mut u8) -> TensorKind {
        let seg = slab::segment_of(p);
        // SAFETY: `p` is live, so its segment header is readable and tagged.
        let k = unsafe {
            if tcache::is_small(seg) {
                tcache::small_kind(seg, p)
            } else {
                large::kind_of(seg.cast())
            }
        };
        TensorKind::from_index(k).unwrap_or(TensorKind::General)
    }

    /// Allocate under an explicit kind (the handles' entry point). Null on failure.
    #[inline]
    pub(crate) fn alloc_kind(&self, kind: usize, layout: Layout) -> *mut u8 {
        match tcache::class_for(layout.size(), layout.align()) {
            Some(c) => tcache::alloc_small_kind(kind, c),
            None => self.alloc_large(kind, layout.size(), layout.align()),
        }
    }

    #[inline(never)]
    fn alloc_large(&self, kind: usize, size: usize, align: usize) -> *mut u8 {
        if !CONFIGURED.load(Ordering::Relaxed) {
            self.configure();
        }
        let Some(class_bytes) = crate::class::large_size(size) else {
            return ptr::null_mut();
        };
        let p = tcache::hot_take(kind, size, class_bytes, align);
        if !p.is_null() {
            return p;
        }
        LARGE.alloc(kind, size, class_bytes, align)
    }

    /// Free a block of any kind.
    ///
    /// # Safety
    /// `p` is a live block allocated by a `TensorPool`.
    #[inline]
    pub(crate) unsafe fn free(&self, p: *mut u8) {
        let seg = slab::segment_of(p);
        // SAFETY: `p` is live; its header tells small from large.
        unsafe {
            if tcache::is_small(seg) {
                tcache::free_small(seg, p);
            } else {
                debug_assert_eq!(*(seg as *const usize), LARGE_TAG);
                let h = seg.cast::<LargeHeader>();
                if !tcache::hot_put(h) {
                    LARGE.free(h);
                }
            }
        }
    }

    /// Grow or shrink in place if possible; null if the caller must move the block.
    ///
    /// # Safety
    /// `p` is a live block allocated with alignment `align`.
    pub(crate) unsafe fn resize_in_place(
        &self,
        p: *mut u8,
        align: usize,
        new_size: usize,
    ) -> *mut u8 {
        let seg = slab::segment_of(p);
        // SAFETY: `p` is live; its header tells small from large.
        unsafe {
            if tcache::is_small(seg) {
                let usable = tcache::small_usable(seg, p);
                if new_size <= usable && (new_size > usable / 2 || usable <= 64) {
                    return p;
                }
                ptr::null_mut()
            } else {
                LARGE.realloc(seg.cast(), p, new_size, align)
            }
        }
    }

    /// Whether a live block is known to be zero-filled (fresh from the OS).
    ///
    /// # Safety
    /// `p` is a live block allocated by a `TensorPool`.
    unsafe fn is_fresh(&self, p: *mut u8) -> bool {
        let seg = slab::segment_of(p);
        // SAFETY: `p` is live.
        unsafe { !tcache::is_small(seg) && large::info(seg.cast()).1 }
    }
}

/// The raw interface a C ABI needs: sizes and alignments as C passes them, blocks freed by
/// address alone. (Rust code should use `GlobalAlloc` or the handles.)
impl TensorPool {
    /// A block of at least `size` bytes (a minimal block for 0) aligned to `align`, zeroed if
    /// `zeroed`. Null if `align` is not a power of two, the size overflows, or the OS refuses.
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
    pub unsafe fn realloc_raw(&self, p: *mut u8, new_size: usize, align: usize) -> *mut u8 {
        // SAFETY: `p` is live (the caller's contract), and still is when the in-place resize
        // fails; its usable size bounds what is copied.
        unsafe {
            let q = self.resize_in_place(p, align, new_size);
            if !q.is_null() {
                return q;
            }
            let old = self.usable_size(p);
            let q = self.alloc_raw(new_size, align, false);
            if !q.is_null() {
                ptr::copy_nonoverlapping(p, q, old.min(new_size));
                self.free(p);
            }
            q
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
        match tcache::class_for(layout.size(), layout.align()) {
            Some(c) => tcache::alloc_small(c),
            None => self.alloc_large(tcache::current_kind(), layout.size(), layout.align()),
        }
    }

    #[inline]
    unsafe fn dealloc(&self, p: *mut u8, _layout: Layout) {
        // SAFETY: the caller passes a live block of this allocator.
        unsafe { self.free(p) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: forwarded contract.
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
        let q = unsafe { self.resize_in_place(p, align, new_size) };
        if !q.is_null() {
            return q;
        }
        let Ok(new_layout) = Layout::from_size_align(new_size, align) else {
            return ptr::null_mut();
        };
        // SAFETY: a valid non-zero layout (the caller guarantees new_size > 0).
        let q = unsafe { self.alloc(new_layout) };
        if !q.is_null() {
            // SAFETY: both blocks are live and distinct; we copy what both can hold.
            unsafe {
                ptr::copy_nonoverlapping(p, q, layout.size().min(new_size));
                self.free(p);
            }
        }
        q
    }
}

/// The exit report chosen (`ExitReport as u8`); statistics, not synchronisation.
static EXIT_REPORT: core::sync::atomic::AtomicU8 = core::sync::atomic::AtomicU8::new(0);

/// Print the statistics at process exit (registered with `atexit`), allocating nothing.
extern "C" fn exit_report() {
    use core::fmt::Write;
    let mode = EXIT_REPORT.load(core::sync::atomic::Ordering::Relaxed);
    let stats = TensorPool::new().stats();
    let mut w = StderrWriter(crate::stats::StackStr::new());
    if mode == ExitReport::Json as u8 {
        let _ = stats.write_json(&mut w);
        let _ = w.write_char('\n');
    } else {
        let _ = write!(w, "tensorpool: statistics at exit\n{stats}");
        for (k, p) in TensorKind::ALL.iter().zip(&stats.kinds) {
            if p.live_bytes > 0 {
                let _ = writeln!(
                    w,
                    "tensorpool: still live at exit: {} {} ({} bytes)",
                    k.name(),
                    crate::stats::Bytes(p.live_bytes),
                    p.live_bytes
                );
            }
        }
    }
    w.flush();
}

/// Formats into a stack buffer and writes it to stderr as it fills.
struct StderrWriter(crate::stats::StackStr<2048>);

impl StderrWriter {
    fn flush(&mut self) {
        crate::os::write_stderr(self.0.as_bytes());
        self.0.clear();
    }
}

impl core::fmt::Write for StderrWriter {
    fn write_str(&mut self, s: &str) -> core::fmt::Result {
        if self.0.write_str(s).is_ok() {
            return Ok(());
        }
        self.flush();
        if self.0.write_str(s).is_err() {
            crate::os::write_stderr(s.as_bytes());
        }
        Ok(())
    }
}

/// One-time process set-up: fork handlers.
pub(crate) fn ensure_process_init() {
    if PROCESS_INIT.load(Ordering::Acquire) {
        return;
    }
    if !PROCESS_INIT.swap(true, Ordering::AcqRel) {
        crate::os::at_fork(fork_prepare, fork_parent, fork_child);
    }
}

/// Hold every lock across `fork`, so the child never inherits a lock held by a thread that does
/// not exist in it.
unsafe extern "C" fn fork_prepare() {
    tcache::lock_all();
    for k in &LARGE.kinds {
        k.raw_lock();
    }
}

unsafe extern "C" fn fork_parent() {
    for k in LARGE.kinds.iter().rev() {
        k.raw_unlock();
    }
    tcache::unlock_all();
}

unsafe extern "C" fn fork_child() {
    // SAFETY: same as in the parent: we hold every lock and release it.
    unsafe { fork_parent() }
}
