//! Configuration: `PoolConfig` for code (const-constructible, so it can configure a
//! `#[global_allocator]` static).

use crate::env::{read_var, Kept};
use crate::kind::{TensorKind, NUM_KINDS};
use crate::sync::{shared_static, AtomicUsize, Ordering};
use crate::text::{is_one_of, parse_size, parse_uint, trim};

/// Capacity value meaning "the default": the kind keeps no fixed number and the arena's memory
/// follows the workload (cached memory is bounded by the recent peak of live bytes).
pub const DEFAULT_CAPACITY: usize = 0;

/// Largest default thread-cache limit: above any real per-core L3 share we know of (12 MiB on
/// the biggest cache-stacked server parts is the exception, and can be configured).
pub const THREAD_CACHE_MAX: usize = 8 << 20;

/// Thread-cache limit meaning "the per-core L3 share, at most `THREAD_CACHE_MAX`".
pub const THREAD_CACHE_AUTO: usize = usize::MAX;

/// The largest thread-cache limit there is: a thread cache records its blocks' sizes in 32 bits,
/// so larger limits are cut to this (a variable asking for more gets a warning).
pub const THREAD_CACHE_LIMIT_MAX: usize = u32::MAX as usize;

/// `TENSORPOOL_THREAD_CACHE`: a size the cache can hold (so not `THREAD_CACHE_AUTO`'s value,
/// nor 4 GiB or more, which would be cut without a word).
fn parse_thread_cache(s: &[u8]) -> Option<usize> {
    parse_size(s).filter(|&b| b < THREAD_CACHE_LIMIT_MAX)
}

/// The default decay time: jemalloc's `dirty_decay_ms` default too, and long enough that an
/// inference request of a few seconds finds the previous one's pages still resident (measured:
/// see README, "Returning memory").
pub(crate) const DEFAULT_DECAY_MS: i64 = 10_000;

/// Process-wide allocator configuration, applied when the allocator first serves a large block
/// (or at `TensorPool::init`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PoolConfig {
    /// Soft capacity per kind on live + cached large-block bytes; over it, the kind's least
    /// recently released cached memory goes back to the OS (a request is never refused for it).
    /// `DEFAULT_CAPACITY`: no fixed number; cached memory follows the workload.
    pub capacity: [usize; NUM_KINDS],
    /// Transparent huge pages for the block zone (see `HugePages`); `Auto` by default.
    pub huge_pages: HugePages,
    /// Print the statistics to stderr at process exit.
    pub exit_report: ExitReport,
    /// Record the memory timeline (per-kind live and cached bytes at each large-block event).
    pub timeline: bool,
    /// Bytes each thread's cache of freed large blocks may hold (0: no thread cache);
    /// `THREAD_CACHE_AUTO` takes each core's share of L3, at most `THREAD_CACHE_MAX`.
    pub thread_cache: usize,
    /// Milliseconds freed memory stays resident for reuse before it goes back to the OS
    /// (`0`: at every free; negative: never).
    pub decay_ms: i64,
    /// Run a background thread that lets decay return an idle process's memory.
    pub background: bool,
    /// Return memory with `MADV_FREE` (taken by the kernel only under pressure, and counted as
    /// resident until then) instead of `MADV_DONTNEED`.
    pub lazy_purge: bool,
    /// Sample allocations for the live-memory profile, one per this many bytes on average
    /// (0: off; see `TensorPool::profile`).
    pub profile: usize,
}

impl PoolConfig {
    /// Defaults: every kind at the default capacity, huge pages where the kernel allows them.
    pub const fn new() -> Self {
        Self {
            capacity: [DEFAULT_CAPACITY; NUM_KINDS],
            huge_pages: HugePages::Auto,
            exit_report: ExitReport::Off,
            timeline: false,
            thread_cache: THREAD_CACHE_AUTO,
            decay_ms: DEFAULT_DECAY_MS,
            background: false,
            lazy_purge: false,
            profile: 0,
        }
    }

    /// Sample one allocation per `mean_bytes` allocated, on average, for the profile of live
    /// memory by call site (`TENSORPOOL_PROFILE` overrides it; 0: off). Takes effect for the
    /// threads whose first allocation comes after the allocator configures itself (call
    /// `TensorPool::init` first thing in `main`).
    pub const fn with_profile(mut self, mean_bytes: usize) -> Self {
        self.profile = mean_bytes;
        self
    }

    /// Set the decay time in milliseconds (`TENSORPOOL_DECAY_MS` overrides it).
    pub const fn with_decay_ms(mut self, ms: i64) -> Self {
        self.decay_ms = if ms < 0 { -1 } else { ms };
        self
    }

    /// Run the background decay thread (`TENSORPOOL_BACKGROUND` overrides it).
    pub const fn with_background(mut self, on: bool) -> Self {
        self.background = on;
        self
    }

    /// Purge with `MADV_FREE` instead of `MADV_DONTNEED` (`TENSORPOOL_PURGE` overrides it).
    pub const fn with_lazy_purge(mut self, on: bool) -> Self {
        self.lazy_purge = on;
        self
    }

    /// Set the thread-cache limit in bytes (0 turns thread caching of large blocks off;
    /// `TENSORPOOL_THREAD_CACHE` overrides it).
    pub const fn with_thread_cache(mut self, bytes: usize) -> Self {
        self.thread_cache = bytes;
        self
    }

    /// Print the statistics at exit (`TENSORPOOL_STATS` overrides it).
    pub const fn with_exit_report(mut self, report: ExitReport) -> Self {
        self.exit_report = report;
        self
    }

    /// Record the memory timeline from the start (`TENSORPOOL_TIMELINE` overrides it).
    pub const fn with_timeline(mut self, on: bool) -> Self {
        self.timeline = on;
        self
    }

    /// Set one kind's capacity in bytes.
    pub const fn with_capacity(mut self, kind: TensorKind, bytes: usize) -> Self {
        self.capacity[kind.index()] = bytes;
        self
    }

    /// Turn huge pages on (`HugePages::Always`) or off (`HugePages::Never`);
    /// `TENSORPOOL_HUGE_PAGES` overrides it.
    pub const fn with_huge_pages(mut self, on: bool) -> Self {
        self.huge_pages = if on {
            HugePages::Always
        } else {
            HugePages::Never
        };
        self
    }

    /// Set the huge-page policy (`TENSORPOOL_HUGE_PAGES` overrides it).
    pub const fn with_huge_page_mode(mut self, mode: HugePages) -> Self {
        self.huge_pages = mode;
        self
    }
}

/// Whether large blocks live on transparent huge pages (2 MiB: one TLB entry instead of 512,
/// and one page fault instead of 512).
///
/// On, the block zone's chunks are advised `MADV_HUGEPAGE` when they are mapped (before any
/// page of them is touched), blocks are packed against each other (no 2 MiB start, which
/// would leave resident space before a block), and purges return whole free huge pages before
/// they cut into one. Off, pages are 4 KiB and purges
/// round to them, as before version 0.2.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum HugePages {
    /// On where the kernel allows it: `/sys/kernel/mm/transparent_hugepage/enabled` reads
    /// `always` or `madvise`; off where it reads `never` or cannot be read.
    #[default]
    Auto,
    /// On, whatever that file says (a kernel in `never` mode still gives 4 KiB pages).
    Always,
    /// Off.
    Never,
}

impl HugePages {
    /// Whether huge pages are used under a kernel whose THP mode is `kernel`.
    pub(crate) const fn resolve(self, kernel: crate::os::Thp) -> bool {
        match self {
            HugePages::Never => false,
            HugePages::Always => true,
            HugePages::Auto => matches!(kernel, crate::os::Thp::Always | crate::os::Thp::Madvise),
        }
    }

    /// The option's spelling in `TENSORPOOL_HUGE_PAGES`.
    pub const fn name(self) -> &'static str {
        match self {
            HugePages::Auto => "auto",
            HugePages::Always => "always",
            HugePages::Never => "never",
        }
    }
}

impl Default for PoolConfig {
    fn default() -> Self {
        Self::new()
    }
}

/// What to print to stderr at process exit.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum ExitReport {
    /// Nothing.
    #[default]
    Off,
    /// The statistics table and a leak line per kind with bytes still live.
    Table,
    /// The statistics as one JSON line.
    Json,
}

/// Options from `TENSORPOOL_*` environment variables (read once, without allocating). `None`:
/// not set, or set to a bad value (a warning was printed and the code's value is kept).
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct EnvOptions {
    pub(crate) capacity: [Option<usize>; NUM_KINDS],
    pub(crate) huge_pages: Option<HugePages>,
    pub(crate) exit_report: Option<ExitReport>,
    pub(crate) timeline: Option<bool>,
    pub(crate) thread_cache: Option<usize>,
    pub(crate) decay_ms: Option<i64>,
    pub(crate) background: Option<bool>,
    pub(crate) lazy_purge: Option<bool>,
}

/// Environment variable names for the per-kind capacities, in kind index order.
const CAPACITY_VARS: [&core::ffi::CStr; NUM_KINDS] = [
    c"TENSORPOOL_CAPACITY_GENERAL",
    c"TENSORPOOL_CAPACITY_ATTENTION",
    c"TENSORPOOL_CAPACITY_KV_CACHE",
    c"TENSORPOOL_CAPACITY_IMAGE_EMBEDDING",
    c"TENSORPOOL_CAPACITY_TEXT_EMBEDDING",
    c"TENSORPOOL_CAPACITY_ACTIVATION",
];

/// Read every `TENSORPOOL_*` option; a bad value is warned about and the code's value kept.
pub(crate) fn read_env(config: &PoolConfig) -> EnvOptions {
    let mut o = EnvOptions::default();
    let all = read_var(
        c"TENSORPOOL_CAPACITY",
        parse_size,
        "a size such as 512M or 8G",
        || Kept::Text("the default (following the workload)"),
    );
    for (k, var) in CAPACITY_VARS.iter().enumerate() {
        let kept = match all.unwrap_or(config.capacity[k]) {
            DEFAULT_CAPACITY => Kept::Text("the default (following the workload)"),
            c => Kept::Bytes(c),
        };
        o.capacity[k] = read_var(var, parse_size, "a size such as 512M or 8G", || kept).or(all);
    }
    o.decay_ms = read_var(
        c"TENSORPOOL_DECAY_MS",
        parse_decay,
        "milliseconds, 0 (at once) or -1 (never)",
        || Kept::Millis(config.decay_ms),
    );
    o.background = read_var(c"TENSORPOOL_BACKGROUND", parse_bool, "0 or 1", || {
        Kept::Bool(config.background)
    });
    o.lazy_purge = read_var(c"TENSORPOOL_PURGE", parse_purge, "dontneed or free", || {
        Kept::Text(if config.lazy_purge {
            "free"
        } else {
            "dontneed"
        })
    });
    o.huge_pages = read_var(
        c"TENSORPOOL_HUGE_PAGES",
        parse_huge,
        "auto, always (or 1) or never (or 0)",
        || Kept::Text(config.huge_pages.name()),
    );
    o.exit_report = read_var(
        c"TENSORPOOL_STATS",
        parse_report,
        "0, 1 (a table) or json",
        || Kept::Text("no report"),
    );
    o.timeline = read_var(c"TENSORPOOL_TIMELINE", parse_bool, "0 or 1", || {
        Kept::Bool(config.timeline)
    });
    o.thread_cache = read_var(
        c"TENSORPOOL_THREAD_CACHE",
        parse_thread_cache,
        "a size below 4G, such as 1536K, or 0",
        || match config.thread_cache {
            THREAD_CACHE_AUTO => Kept::Text("the L3 share per core"),
            b => Kept::Bytes(b),
        },
    );
    o
}

/// A decay time: `-1` (never) or a whole number of milliseconds.
fn parse_decay(s: &[u8]) -> Option<i64> {
    let s = trim(s);
    if s == b"-1" {
        return Some(-1);
    }
    parse_uint(s).and_then(|v| i64::try_from(v).ok())
}

/// How to purge: `dontneed` (false) or `free` (true), any case.
fn parse_purge(s: &[u8]) -> Option<bool> {
    let s = trim(s);
    if is_one_of(s, &[b"dontneed", b"madv_dontneed"]) {
        Some(false)
    } else if is_one_of(s, &[b"free", b"madv_free"]) {
        Some(true)
    } else {
        None
    }
}

/// A huge-page policy: `auto`, `always` or any true flag, `never` or any false flag.
fn parse_huge(s: &[u8]) -> Option<HugePages> {
    let s = trim(s);
    if is_one_of(s, &[b"auto", b"madvise"]) {
        return Some(HugePages::Auto);
    }
    if is_one_of(s, &[b"always"]) {
        return Some(HugePages::Always);
    }
    if is_one_of(s, &[b"never"]) {
        return Some(HugePages::Never);
    }
    parse_bool(s).map(|on| {
        if on {
            HugePages::Always
        } else {
            HugePages::Never
        }
    })
}

fn parse_bool(s: &[u8]) -> Option<bool> {
    let s = trim(s);
    if is_one_of(s, &[b"1", b"true", b"on", b"yes"]) {
        Some(true)
    } else if is_one_of(s, &[b"0", b"false", b"off", b"no"]) {
        Some(false)
    } else {
        None
    }
}

fn parse_report(s: &[u8]) -> Option<ExitReport> {
    let s = trim(s);
    if is_one_of(s, &[b"json"]) {
        return Some(ExitReport::Json);
    }
    if is_one_of(s, &[b"table"]) {
        return Some(ExitReport::Table);
    }
    {
        parse_bool(s).map(|on| {
            if on {
                ExitReport::Table
            } else {
                ExitReport::Off
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_and_reports_parse() {
        assert_eq!(parse_bool(b"on"), Some(true));
        assert_eq!(parse_bool(b"0"), Some(false));
        assert_eq!(parse_bool(b"maybe"), None);
        assert_eq!(parse_report(b"json"), Some(ExitReport::Json));
        assert_eq!(parse_report(b"1"), Some(ExitReport::Table));
        assert_eq!(parse_report(b"0"), Some(ExitReport::Off));
        assert_eq!(parse_report(b"xml"), None);
        assert_eq!(parse_decay(b"-1"), Some(-1));
        assert_eq!(parse_decay(b" 250 "), Some(250));
        assert_eq!(parse_decay(b"0"), Some(0));
        for bad in [&b"-2"[..], b"1.5", b"ten", b"", b"99999999999999999999"] {
            assert_eq!(parse_decay(bad), None);
        }
        assert_eq!(parse_purge(b"FREE"), Some(true));
        assert_eq!(parse_purge(b"dontneed"), Some(false));
        assert_eq!(parse_purge(b"never"), None);
        assert_eq!(parse_huge(b"AUTO"), Some(HugePages::Auto));
        assert_eq!(parse_huge(b"1"), Some(HugePages::Always));
        assert_eq!(parse_huge(b" always "), Some(HugePages::Always));
        assert_eq!(parse_huge(b"0"), Some(HugePages::Never));
        assert_eq!(parse_huge(b"never"), Some(HugePages::Never));
        assert_eq!(parse_huge(b"sometimes"), None);
    }

    #[test]
    fn huge_page_policy_follows_the_kernel_only_in_auto() {
        use crate::os::Thp;
        for k in [Thp::Always, Thp::Madvise] {
            assert!(HugePages::Auto.resolve(k));
        }
        for k in [Thp::Never, Thp::Unknown] {
            assert!(!HugePages::Auto.resolve(k));
            assert!(HugePages::Always.resolve(k));
        }
        assert!(!HugePages::Never.resolve(Thp::Always));
    }
}

// ---------------------------------------------------------------------------------------------
// Whether the configuration has been applied
// ---------------------------------------------------------------------------------------------

/// `CONFIG`: none applied yet, one being applied (by the thread whose `configuring` flag is set),
/// applied.
const UNCONFIGURED: usize = 0;
const APPLYING: usize = 1;
const APPLIED: usize = 2;

shared_static! {
    /// Where the configuration stands. Another thread's first large allocation waits while one
    /// is being applied: it once went ahead with the thread caches' total still zero and cached
    /// nothing (a test's thread, one time in twelve).
    #[cfg_attr(not(loom), link_section = ".bss.hot.tensorpool")]
    static CONFIG: AtomicUsize = AtomicUsize::new(UNCONFIGURED);
}

crate::tls::fast_thread_local! {
    /// Whether the calling thread is applying the configuration (it may allocate meanwhile,
    /// and must not wait for itself). Through the TLS descriptor, not `thread_local!`, whose
    /// `__tls_get_addr` call through the PLT made every process run (and the kernel map) the
    /// end of the preload library's code (see `src/lib.rs`, "Code layout").
    mod configuring_slot: bool = zeroed;
}

/// Whether the calling thread is applying the configuration.
fn configuring() -> bool {
    // SAFETY: the calling thread's own flag, only ever touched by it.
    unsafe { *configuring_slot::addr() }
}

/// Say whether the calling thread is applying the configuration.
fn set_configuring(on: bool) {
    // SAFETY: as in `configuring`.
    unsafe { *configuring_slot::addr() = on }
}

/// Whether a configuration has been applied (a load on the large path).
#[inline]
pub(crate) fn configured() -> bool {
    CONFIG.load(Ordering::Acquire) == APPLIED
}

/// Claim the applying of the configuration: true if the caller is to apply it (then
/// `end_configure`). Otherwise it was applied, or another thread applies it and this waits
/// until it has (that thread takes no lock the caller could hold and waits for no other
/// thread), or the caller is that thread, allocating meanwhile.
pub(crate) fn begin_configure() -> bool {
    match CONFIG.compare_exchange(UNCONFIGURED, APPLYING, Ordering::AcqRel, Ordering::Acquire) {
        Ok(_) => {
            set_configuring(true);
            true
        }
        Err(_) => {
            if !configuring() {
                wait_applied();
            }
            false
        }
    }
}

/// The configuration claimed by `begin_configure` is applied.
pub(crate) fn end_configure() {
    set_configuring(false);
    CONFIG.store(APPLIED, Ordering::Release);
}

/// Wait while another thread applies the configuration.
fn wait_applied() {
    while CONFIG.load(Ordering::Acquire) == APPLYING && !configuring() {
        crate::sync::yield_now();
    }
}

/// After `fork`, in the child: a configuration another thread was applying at the fork will
/// never be finished by it (it does not exist here), so the child applies it again (its
/// registrations are made once). Waiting for it before the fork instead could deadlock: the
/// applying thread registers a fork handler, which takes the lock `fork` holds.
pub(crate) fn after_fork_in_child() {
    if CONFIG.load(Ordering::Relaxed) == APPLYING && !configuring() {
        CONFIG.store(UNCONFIGURED, Ordering::Relaxed);
    }
}
