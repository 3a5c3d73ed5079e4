//! Sampled allocation profiles: who allocated the memory that is live, per kind.
//!
//! With a mean of `M` bytes between samples (`TENSORPOOL_PROFILE`, `PoolConfig::with_profile`;
//! off by default), each thread counts down the bytes it allocates from a random exponential
//! draw of mean `M`; the allocation that crosses zero is sampled, as tcmalloc and jemalloc
//! sample. A block of `s` bytes is then sampled with probability `1 - exp(-s/M)` (a 24 MiB
//! tensor almost always at 512 KiB, a 64-byte object once in about 8,000), and stands for
//! `s / (1 - exp(-s/M))` bytes in the totals, an unbiased estimate.
//!
//! A sample records the call stack (return addresses only: `backtrace::trace_unsynchronized`,
//! libgcc's `_Unwind_Backtrace` over the unwind tables every x86-64 and aarch64 binary carries,
//! into a fixed array, so nothing is allocated and frame pointers are not needed; a thread-local
//! guard keeps an allocation made inside the unwinder from being sampled in turn), size, kind
//! and time, in a fixed table under a lock. The sampled block is flagged (a large block's
//! descriptor; a sampled small request is served as a large block, so that its free finds the
//! flag), and its free removes the record: the profile is of live memory. Symbol names are
//! resolved only when a report is made (`backtrace::resolve`, which allocates), outside the
//! table's lock, and reports ignore the allocator's own frames, so a record's call site is the
//! first frame outside tensorpool, `alloc`, `core` and `std`.
//!
//! Off, the pools call here only from paths that are already slow (a large allocation, a small
//! allocation's slow path), so off costs the fast paths nothing. On, every small allocation
//! takes the slow path (no kind heap of a thread started with profiling on is ever the
//! thread's current one), which is what profiling costs.

use crate::kind::TensorKind;
use crate::pystack::PYTHON_FRAMES;
use crate::sync::{shared_static, AtomicUsize, Ordering, SpinLock};
use core::cell::Cell;

/// Return addresses kept per sample.
pub const PROFILE_FRAMES: usize = 32;
/// Samples kept at once (later samples are counted as dropped while the table is full).
pub const PROFILE_RECORDS: usize = 4096;

/// Not read yet; otherwise the mean bytes between samples (`OFF`: profiling off).
const UNREAD: usize = usize::MAX;
const OFF: usize = 0;

shared_static! {
    static RATE: AtomicUsize = AtomicUsize::new(UNREAD);
}

shared_static! {
    static TABLE: SpinLock<Table> = SpinLock::new(Table::new());
}

shared_static! {
    #[cfg_attr(not(loom), link_section = ".bss.hot.tensorpool")]
    static DROPPED: AtomicUsize = AtomicUsize::new(0);
}

shared_static! {
    /// A copy of `TABLE` taken when the program's large live bytes last reached `PEAK_MARK`:
    /// the samples live at (within a sixteenth of) the peak.
    static PEAK_TABLE: SpinLock<Table> = SpinLock::new(Table::new());
}

shared_static! {
    /// Large live bytes at which the next copy is taken (a sixteenth above the last copy's).
    #[cfg_attr(not(loom), link_section = ".bss.hot.tensorpool")]
    static PEAK_MARK: AtomicUsize = AtomicUsize::new(0);
}

shared_static! {
    /// Large live bytes when `PEAK_TABLE` was copied.
    #[cfg_attr(not(loom), link_section = ".bss.hot.tensorpool")]
    static PEAK_BYTES: AtomicUsize = AtomicUsize::new(0);
}

thread_local! {
    /// Bytes this thread allocates before its next sample.
    static UNTIL: Cell<i64> = const { Cell::new(0) };
    /// Set while this thread samples or reports: its allocations then are not sampled.
    static BUSY: Cell<bool> = const { Cell::new(false) };
    /// The thread's random state (xorshift), seeded from its stack address at first use.
    static SEED: Cell<u64> = const { Cell::new(0) };
}

#[derive(Clone, Copy)]
struct Record {
    /// The block's address (0: a free slot).
    ptr: usize,
    size: usize,
    /// The mean between samples when it was taken (for the weight).
    rate: usize,
    kind: u8,
    depth: u8,
    /// The allocating thread's scope (`scope`; 0: none).
    scope: u16,
    /// Python frames (function id, line), innermost first (`pystack`), and how many.
    py_depth: u8,
    py: [(u32, u32); PYTHON_FRAMES],
    t_ns: u64,
    frames: [usize; PROFILE_FRAMES],
}

impl Record {
    const EMPTY: Record = Record {
        ptr: 0,
        size: 0,
        rate: 0,
        kind: 0,
        depth: 0,
        scope: 0,
        py_depth: 0,
        py: [(0, 0); PYTHON_FRAMES],
        t_ns: 0,
        frames: [0; PROFILE_FRAMES],
    };
}

struct Table {
    records: [Record; PROFILE_RECORDS],
    len: usize,
}

impl Table {
    const fn new() -> Self {
        Self {
            records: [Record::EMPTY; PROFILE_RECORDS],
            len: 0,
        }
    }
}

/// The mean bytes between samples (0: off). Reads `TENSORPOOL_PROFILE` at the first call.
#[inline]
pub(crate) fn rate() -> usize {
    match RATE.load(Ordering::Relaxed) {
        UNREAD => read_rate(),
        r => r,
    }
}

/// Whether profiling is on.
#[inline]
pub(crate) fn on() -> bool {
    rate() != OFF
}

#[cold]
#[link_section = ".text.hot.tensorpool"]
fn read_rate() -> usize {
    let r = crate::env::read_var(
        c"TENSORPOOL_PROFILE",
        crate::text::parse_size,
        "mean bytes between samples, such as 512K, or 0 (off)",
        || crate::env::Kept::Text("off"),
    )
    .unwrap_or(OFF);
    let _ = RATE.compare_exchange(UNREAD, r, Ordering::AcqRel, Ordering::Acquire);
    RATE.load(Ordering::Relaxed)
}

/// The code's setting (`PoolConfig::with_profile`), unless the environment set one.
pub(crate) fn configure(bytes: usize) {
    if rate() == OFF && bytes != OFF && crate::os::getenv(c"TENSORPOOL_PROFILE").is_none() {
        RATE.store(bytes, Ordering::Relaxed);
    }
}

/// Count `size` bytes against the calling thread's countdown: whether this allocation is to be
/// sampled.
#[inline]
#[link_section = ".text.hot.tensorpool"]
pub(crate) fn should_sample(size: usize) -> bool {
    let r = rate();
    if r == OFF {
        return false;
    }
    let left = UNTIL.get() - size as i64;
    if left > 0 {
        UNTIL.set(left);
        return false;
    }
    UNTIL.set(next_interval(r));
    !BUSY.get()
}

/// An exponential draw of mean `rate` bytes.
fn next_interval(rate: usize) -> i64 {
    let mut x = SEED.get();
    if x == 0 {
        x = (&x as *const u64 as u64) | 1;
    }
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    SEED.set(x);
    let u = ((x >> 11) as f64 + 0.5) / (1u64 << 53) as f64;
    ((-crate::fmath::ln(u)) * rate as f64).min(i64::MAX as f64 / 2.0) as i64 + 1
}

/// Record the sampled block `ptr` of `size` bytes and kind `kind`, with the calling thread's
/// stack. Allocates nothing.
pub(crate) fn record(ptr: *mut u8, size: usize, kind: usize) {
    if BUSY.replace(true) {
        return;
    }
    hold_tables_across_fork();
    let mut frames = [0usize; PROFILE_FRAMES];
    let mut depth = 0;
    // SAFETY: the unwinder walks this thread's own stack; no other thread's.
    unsafe {
        backtrace::trace_unsynchronized(|f| {
            frames[depth] = f.ip() as usize;
            depth += 1;
            depth < PROFILE_FRAMES
        });
    }
    let mut py = [(0, 0); PYTHON_FRAMES];
    let py_depth = crate::pystack::capture(&mut py);
    let rec = Record {
        ptr: ptr as usize,
        size,
        rate: rate(),
        kind: kind as u8,
        depth: depth as u8,
        scope: crate::scope::current(),
        py_depth: py_depth as u8,
        py,
        t_ns: crate::os::now_ns(),
        frames,
    };
    let kept = TABLE.with(|t| {
        if t.len == PROFILE_RECORDS {
            return false;
        }
        t.records[t.len] = rec;
        t.len += 1;
        true
    });
    if !kept {
        DROPPED.fetch_add(1, Ordering::Relaxed);
    }
    BUSY.set(false);
}

/// Register, once, before the tables are first locked, a fork handler holding both across
/// `fork` (the live table, then the copy: the one lock order), so that a child never inherits
/// one held by a thread it does not have (its first sampled allocation or free would wait for
/// ever). Registering may allocate: the caller holds no lock and is `BUSY` (not sampled).
fn hold_tables_across_fork() {
    #[cfg(not(loom))]
    {
        #[cfg_attr(not(loom), link_section = ".bss.hot.tensorpool")]
        static REGISTERED: core::sync::atomic::AtomicBool =
            core::sync::atomic::AtomicBool::new(false);
        if !REGISTERED.load(Ordering::Acquire) && !REGISTERED.swap(true, Ordering::AcqRel) {
            crate::os::at_fork(fork_prepare, fork_release, fork_release);
        }
    }
}

#[cfg(not(loom))]
unsafe extern "C" fn fork_prepare() {
    TABLE.raw_lock();
    PEAK_TABLE.raw_lock();
}

#[cfg(not(loom))]
unsafe extern "C" fn fork_release() {
    PEAK_TABLE.raw_unlock();
    TABLE.raw_unlock();
}

/// The program's large live bytes are `live` now (profiling on): at a new peak, a sixteenth
/// above the last copy's, copy the table of live samples, so that the report can show what was
/// live at the peak. Copies are geometrically spaced: about 11 per doubling of the peak.
/// A thread making a report (its allocations unsampled: symbol tables) does not move the peak.
#[inline]
pub(crate) fn note_live(live: usize) {
    if live >= PEAK_MARK.load(Ordering::Relaxed) && !BUSY.get() {
        keep_peak(live);
    }
}

#[cold]
fn keep_peak(live: usize) {
    PEAK_MARK.store(live + live / 16 + 1, Ordering::Relaxed);
    hold_tables_across_fork();
    // Lock order: the live table, then the copy (only here are both held).
    TABLE.with(|t| {
        PEAK_TABLE.with(|p| {
            p.records[..t.len].copy_from_slice(&t.records[..t.len]);
            p.len = t.len;
        })
    });
    PEAK_BYTES.store(live, Ordering::Relaxed);
}

/// Run `f` with the calling thread's allocations unsampled (a report's own allocations must not
/// show in the profile it reports).
pub(crate) fn unsampled<R>(f: impl FnOnce() -> R) -> R {
    let was = BUSY.replace(true);
    let r = f();
    BUSY.set(was);
    r
}

/// The sampled block at `ptr` was freed: drop its record.
pub(crate) fn remove(ptr: *mut u8) {
    TABLE.with(|t| {
        if let Some(i) = t.records[..t.len]
            .iter()
            .position(|r| r.ptr == ptr as usize)
        {
            t.len -= 1;
            t.records[i] = t.records[t.len];
        }
    });
}

/// One frame of a stack, resolved.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Frame {
    /// The function (demangled, without its hash), or the address in hex if unknown.
    pub function: String,
    /// Source file, where the debug information says.
    pub file: Option<String>,
    /// Line in `file`.
    pub line: Option<u32>,
}

impl core::fmt::Display for Frame {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(&self.function)?;
        if let (Some(file), Some(line)) = (&self.file, self.line) {
            write!(f, " ({file}:{line})")?;
        }
        Ok(())
    }
}

/// Live memory allocated from one call stack, of one kind (estimated from the samples).
#[derive(Clone, Debug)]
pub struct ProfileSite {
    /// The blocks' kind.
    pub kind: TensorKind,
    /// Estimated live bytes (each sample of `s` bytes stands for `s / (1 - exp(-s/M))`).
    pub bytes: u64,
    /// Estimated live blocks.
    pub blocks: u64,
    /// Samples behind the estimate.
    pub samples: u64,
    /// When the oldest of them was taken (`CLOCK_MONOTONIC` nanoseconds).
    pub oldest_ns: u64,
    /// The scope path the blocks were allocated in (`Scopes`' paths: names joined by `/`;
    /// empty outside every scope).
    pub scope: String,
    /// The Python frames of the allocating thread, innermost first (qualified name, file and
    /// current line), where Python stacks are kept (`tensorpool.python_stacks()`); else empty.
    pub python: Vec<Frame>,
    /// The stack from the call site outwards (innermost first); the allocator's own frames,
    /// and those of `alloc`, `core` and `std` below the call site, are left out.
    pub stack: Vec<Frame>,
}

impl ProfileSite {
    /// The call site: the innermost Python frame where there is one, else the first frame of
    /// the stack (`"?"` if both are empty).
    pub fn call_site(&self) -> String {
        self.python
            .first()
            .or(self.stack.first())
            .map_or("?".into(), |f| f.to_string())
    }
}

/// A profile of live memory by call site and kind, largest first.
#[derive(Clone, Debug, Default)]
pub struct Profile {
    /// Mean bytes between samples (0: profiling was off).
    pub rate: usize,
    /// The call sites, largest first.
    pub sites: Vec<ProfileSite>,
    /// Samples not kept because the table was full.
    pub dropped: usize,
}

/// Whether a resolved function is the allocator's or the standard library's (a frame below the
/// call site).
fn internal(name: &str) -> bool {
    let n = name.trim_start_matches('<');
    // `<T as Trait>::f`: the trait's crate says whose code it is (`<u8 as alloc::...>`).
    if let Some((ty, rest)) = n.split_once(" as ") {
        if internal(ty) || internal(rest) {
            return true;
        }
    }
    [
        "tensorpool",
        "alloc::",
        "core::",
        "std::",
        "backtrace::",
        "__rust",
        "__rdl",
        "__rg_",
        "_Unwind",
        "malloc",
        "calloc",
        "realloc",
        "reallocarray",
        "posix_memalign",
        "aligned_alloc",
        "memalign",
        "valloc",
        "pvalloc",
        "free",
        "hashbrown::",
        "allocator_api2::",
    ]
    .iter()
    .any(|p| n.starts_with(p))
}

/// Every frame at `ip`, inlined ones included, innermost first (just the address if nothing
/// resolves). A return address points after the call: the call itself is looked up.
fn resolve_all(ip: usize) -> Vec<Frame> {
    let mut v = Vec::new();
    backtrace::resolve((ip.saturating_sub(1)) as *mut core::ffi::c_void, |s| {
        let mut name = s
            .name()
            .map_or_else(|| format!("{ip:#x}"), |n| format!("{n:#}"));
        // Without the hash a symbol name ends in (`::h` and 16 hex digits).
        if let Some(i) = name.rfind("::h").filter(|&i| name.len() - i == 19) {
            name.truncate(i);
        }
        v.push(Frame {
            function: name,
            file: s.filename().map(|f| f.display().to_string()),
            line: s.lineno(),
        });
    });
    if v.is_empty() {
        v.push(Frame {
            function: format!("{ip:#x}"),
            file: None,
            line: None,
        });
    }
    v
}

/// The current profile: live sampled blocks grouped by kind and stack, with estimates. Allocates
/// (call it outside hot paths); resolves symbols outside every lock.
pub(crate) fn snapshot() -> Profile {
    unsampled(|| snapshot_of(&TABLE))
}

/// The profile of the samples that were live at the highest large live bytes seen (within a
/// sixteenth), and those bytes; empty with 0 when profiling is off.
pub(crate) fn snapshot_at_peak() -> (Profile, usize) {
    unsampled(|| (snapshot_of(&PEAK_TABLE), PEAK_BYTES.load(Ordering::Relaxed)))
}

fn snapshot_of(table: &SpinLock<Table>) -> Profile {
    hold_tables_across_fork();
    let mut recs: Vec<Record> = Vec::with_capacity(PROFILE_RECORDS);
    // `recs` has room for the whole table, so copying allocates nothing under the lock.
    table.with(|t| recs.extend_from_slice(&t.records[..t.len]));
    // (kind, scope, Python frames, return addresses) -> (estimated bytes, estimated blocks,
    // samples, oldest time)
    type Group = (f64, u64, u64, u64);
    type Key = (u8, u16, Vec<(u32, u32)>, Vec<usize>);
    let mut groups: std::collections::HashMap<Key, Group> = std::collections::HashMap::new();
    for r in &recs {
        let s = r.size as f64;
        let m = r.rate.max(1) as f64;
        let p = 1.0 - crate::fmath::exp(-s / m);
        let scale = if p > 0.0 { 1.0 / p } else { 1.0 };
        let e = groups
            .entry((
                r.kind,
                r.scope,
                r.py[..r.py_depth as usize].to_vec(),
                r.frames[..r.depth as usize].to_vec(),
            ))
            .or_insert((0.0, 0, 0, u64::MAX));
        e.0 += s * scale;
        e.1 += scale.round() as u64;
        e.2 += 1;
        e.3 = e.3.min(r.t_ns);
    }
    let mut cache: std::collections::HashMap<usize, Vec<Frame>> = Default::default();
    let mut sites: Vec<ProfileSite> = groups
        .into_iter()
        .map(
            |((kind, scope, py, ips), (bytes, blocks, samples, oldest_ns))| {
                let mut stack: Vec<Frame> = Vec::new();
                for ip in ips {
                    stack.extend(
                        cache
                            .entry(ip)
                            .or_insert_with(|| resolve_all(ip))
                            .iter()
                            .cloned(),
                    );
                }
                let first = stack
                    .iter()
                    .position(|f| !internal(&f.function))
                    .unwrap_or(0);
                stack.drain(..first);
                ProfileSite {
                    kind: TensorKind::from_index(kind as usize).unwrap_or_default(),
                    bytes: bytes.round() as u64,
                    blocks: blocks.max(samples),
                    samples,
                    oldest_ns,
                    scope: crate::scope::report::path_of(scope as usize),
                    python: py
                        .iter()
                        .map(|&(id, line)| {
                            let (function, file, _) = crate::pystack::function(id);
                            Frame {
                                function,
                                file: (!file.is_empty()).then_some(file),
                                line: Some(line),
                            }
                        })
                        .collect(),
                    stack,
                }
            },
        )
        .collect();
    // Samples of one kind whose stacks differ only below the call site are one site.
    sites.sort_by(|a, b| {
        let key = |s: &ProfileSite| (s.kind.index(), s.scope.clone(), s.python.clone());
        (key(a), &a.stack).cmp(&(key(b), &b.stack))
    });
    sites.dedup_by(|b, a| {
        if a.kind == b.kind && a.scope == b.scope && a.python == b.python && a.stack == b.stack {
            a.bytes += b.bytes;
            a.blocks += b.blocks;
            a.samples += b.samples;
            a.oldest_ns = a.oldest_ns.min(b.oldest_ns);
            true
        } else {
            false
        }
    });
    sites.sort_by_key(|s| core::cmp::Reverse(s.bytes));
    Profile {
        rate: rate(),
        sites,
        dropped: DROPPED.load(Ordering::Relaxed),
    }
}

impl Ord for Frame {
    fn cmp(&self, o: &Self) -> core::cmp::Ordering {
        (&self.function, &self.file, self.line).cmp(&(&o.function, &o.file, o.line))
    }
}

impl PartialOrd for Frame {
    fn partial_cmp(&self, o: &Self) -> Option<core::cmp::Ordering> {
        Some(self.cmp(o))
    }
}

impl Profile {
    /// The sites of `kind`, largest first.
    pub fn sites_of(&self, kind: TensorKind) -> impl Iterator<Item = &ProfileSite> {
        self.sites.iter().filter(move |s| s.kind == kind)
    }

    /// The sites of `kind` grouped by call site (their first frame), largest first: the call
    /// site, its bytes and blocks, and its stacks, largest first.
    pub fn call_sites(&self, kind: TensorKind) -> Vec<(String, u64, u64, Vec<&ProfileSite>)> {
        let mut groups: Vec<(String, u64, u64, Vec<&ProfileSite>)> = Vec::new();
        for s in self.sites_of(kind) {
            let c = s.call_site();
            match groups.iter_mut().find(|g| g.0 == c) {
                Some(g) => {
                    g.1 += s.bytes;
                    g.2 += s.blocks;
                    g.3.push(s);
                }
                None => groups.push((c, s.bytes, s.blocks, vec![s])),
            }
        }
        groups.sort_by_key(|g| core::cmp::Reverse(g.1));
        groups
    }

    /// The report's text: per kind with live samples, its `top` largest call sites.
    pub fn to_text(&self, top: usize) -> String {
        use core::fmt::Write;
        let mut out = String::new();
        if self.rate == 0 {
            out.push_str("tensorpool: profiling is off (TENSORPOOL_PROFILE)\n");
            return out;
        }
        let _ = writeln!(
            out,
            "tensorpool: live memory by call site (sampled every {} on average; estimates)",
            crate::text::Bytes(self.rate as u64)
        );
        for kind in TensorKind::ALL {
            for (site, bytes, blocks, _) in self.call_sites(kind).into_iter().take(top) {
                let _ = writeln!(
                    out,
                    "  {:<16} {:>10} in {:>6} blocks  {site}",
                    kind.name(),
                    crate::text::Bytes(bytes).to_string(),
                    blocks,
                );
            }
        }
        if self.dropped > 0 {
            let _ = writeln!(
                out,
                "  ({} samples dropped: the table holds {PROFILE_RECORDS})",
                self.dropped
            );
        }
        out
    }

    /// One JSON object: the rate and every site with its kind, estimates and stack.
    pub fn to_json(&self) -> String {
        use core::fmt::Write;
        let mut out = String::new();
        let _ = write!(
            out,
            "{{\"rate\":{},\"dropped\":{},\"sites\":[",
            self.rate, self.dropped
        );
        for (i, s) in self.sites.iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            let _ = write!(
                out,
                "{{\"kind\":\"{}\",\"bytes\":{},\"blocks\":{},\"samples\":{},\"scope\":",
                s.kind.name(),
                s.bytes,
                s.blocks,
                s.samples
            );
            crate::text::json_str(&mut out, &s.scope);
            out.push_str(",\"python\":");
            frames_json(&mut out, &s.python);
            out.push_str(",\"stack\":");
            frames_json(&mut out, &s.stack);
            out.push('}');
        }
        out.push_str("]}");
        out
    }

    /// Folded stacks (one line per site: `kind;scope;...;py:outermost;...;native outermost;
    /// ...;call site bytes`: one frame per scope name, then the Python frames prefixed `py:`,
    /// then the native ones, outermost first), as flamegraph tools (`inferno-flamegraph`,
    /// `flamegraph.pl`) read them.
    pub fn to_folded(&self) -> String {
        let mut out = String::new();
        for s in &self.sites {
            out.push_str(s.kind.name());
            for name in s.scope.split('/').filter(|n| !n.is_empty()) {
                out.push(';');
                out.push_str(&name.replace([';', ' ', '\n'], "_"));
            }
            for f in s.python.iter().rev() {
                out.push_str(";py:");
                out.push_str(&f.function.replace([';', ' ', '\n'], "_"));
            }
            for f in s.stack.iter().rev() {
                out.push(';');
                out.push_str(&f.function.replace([';', ' ', '\n'], "_"));
            }
            out.push(' ');
            out.push_str(&s.bytes.to_string());
            out.push('\n');
        }
        out
    }
}

/// `[{"function", "file", "line"}, ...]`.
fn frames_json(out: &mut String, frames: &[Frame]) {
    use core::fmt::Write;
    out.push('[');
    for (j, f) in frames.iter().enumerate() {
        if j > 0 {
            out.push(',');
        }
        out.push_str("{\"function\":");
        crate::text::json_str(out, &f.function);
        out.push_str(",\"file\":");
        match &f.file {
            Some(file) => crate::text::json_str(out, file),
            None => out.push_str("null"),
        }
        out.push_str(",\"line\":");
        match f.line {
            Some(l) => {
                let _ = write!(out, "{l}");
            }
            None => out.push_str("null"),
        }
        out.push('}');
    }
    out.push(']');
}
