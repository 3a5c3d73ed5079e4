//! Configuration: `PoolConfig` for code (const-constructible, so it can configure a
//! `#[global_allocator]` static).

use crate::kind::{TensorKind, NUM_KINDS};

/// Capacity value meaning "the default": the kind keeps no fixed number and the arena's memory
/// follows the workload (cached memory is bounded by the recent peak of live bytes).
pub const DEFAULT_CAPACITY: usize = 0;

/// Process-wide allocator configuration, applied when the allocator first serves a large block
/// (or at `TensorPool::init`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PoolConfig {
    /// Soft capacity per kind on live + cached large-block bytes; over it, the kind's least
    /// recently released cached memory goes back to the OS (a request is never refused for it).
    /// `DEFAULT_CAPACITY`: no fixed number; cached memory follows the workload.
    pub capacity: [usize; NUM_KINDS],
    /// Advise transparent huge pages for large blocks of 2 MiB or more.
    pub huge_pages: bool,
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
}

impl PoolConfig {
    /// Defaults: every kind at the default capacity, huge pages off.
    pub const fn new() -> Self {
        Self {
            capacity: [DEFAULT_CAPACITY; NUM_KINDS],
            huge_pages: false,
            exit_report: ExitReport::Off,
            timeline: false,
            thread_cache: crate::budget::THREAD_CACHE_AUTO,
            decay_ms: crate::pool::large::DEFAULT_DECAY_MS,
            background: false,
            lazy_purge: false,
        }
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

    /// Turn huge-page advice on or off.
    pub const fn with_huge_pages(mut self, on: bool) -> Self {
        self.huge_pages = on;
        self
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
    pub(crate) huge_pages: Option<bool>,
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
    o.huge_pages = read_var(c"TENSORPOOL_HUGE_PAGES", parse_bool, "0 or 1", || {
        Kept::Bool(config.huge_pages)
    });
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
        parse_size,
        "a size such as 1536K or 0",
        || match config.thread_cache {
            crate::budget::THREAD_CACHE_AUTO => Kept::Text("the L3 share per core"),
            b => Kept::Bytes(b),
        },
    );
    o
}

/// The value a bad setting falls back to, for the warning.
enum Kept {
    Bytes(usize),
    Count(usize),
    Bool(bool),
    Millis(i64),
    Text(&'static str),
}

fn read_var<T>(
    name: &core::ffi::CStr,
    parse: fn(&[u8]) -> Option<T>,
    expected: &str,
    kept: impl FnOnce() -> Kept,
) -> Option<T> {
    let raw = crate::os::getenv(name)?;
    let v = parse(raw);
    if v.is_none() {
        warn_bad(name, raw, expected, kept());
    }
    v
}

/// One line to stderr: the variable, its bad value, what was expected and the value kept.
fn warn_bad(name: &core::ffi::CStr, raw: &[u8], expected: &str, kept: Kept) {
    use core::fmt::Write;
    let mut line = crate::stats::StackStr::<512>::new();
    let shown = core::str::from_utf8(&raw[..raw.len().min(64)]).unwrap_or("(not UTF-8)");
    let name = core::str::from_utf8(name.to_bytes()).unwrap_or("");
    let _ = write!(
        line,
        "tensorpool: warning: {name}={shown:?} is not valid (expected {expected}); keeping "
    );
    let _ = match kept {
        Kept::Bytes(b) => write!(line, "{} ({b} bytes)", crate::stats::Bytes(b as u64)),
        Kept::Count(n) => write!(line, "{n}"),
        Kept::Bool(b) => write!(line, "{}", u8::from(b)),
        Kept::Millis(ms) => write!(line, "{ms}"),
        Kept::Text(t) => write!(line, "{t}"),
    };
    let _ = line.write_char('\n');
    crate::os::write_stderr(line.as_bytes());
}

/// A byte size: digits, an optional fraction, an optional binary unit (K, M, G, T, with or
/// without `iB`/`B`, any case). Rejects overflow and empty input.
pub(crate) fn parse_size(s: &[u8]) -> Option<usize> {
    let s = trim(s);
    let split = s
        .iter()
        .position(|c| !(c.is_ascii_digit() || *c == b'.'))
        .unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let unit = trim(unit);
    // Compared in place: this runs on the allocation path, where nothing may allocate.
    let units: [(&[u8], u32); 5] = [(b"", 0), (b"K", 10), (b"M", 20), (b"G", 30), (b"T", 40)];
    let shift = units
        .iter()
        .find(|&&(p, _)| {
            [&b""[..], b"B", b"IB"].iter().any(|suffix| {
                unit.len() == p.len() + suffix.len()
                    && unit[..p.len()].eq_ignore_ascii_case(p)
                    && unit[p.len()..].eq_ignore_ascii_case(suffix)
                    && !(p.is_empty() && *suffix == b"IB")
            })
        })?
        .1;
    let (int, frac) = match num.iter().position(|&c| c == b'.') {
        Some(i) => (&num[..i], &num[i + 1..]),
        None => (num, &b""[..]),
    };
    if int.is_empty() || frac.contains(&b'.') || (frac.is_empty() && num.ends_with(b".")) {
        return None;
    }
    let mut v: usize = 0;
    for &c in int {
        v = v.checked_mul(10)?.checked_add((c - b'0') as usize)?;
    }
    let bytes = v.checked_mul(1usize.checked_shl(shift)?)?;
    // A fraction of the unit, to 1/1000: (digits << shift) / 10^len, exact for halves etc.
    let (mut f, mut d) = (0usize, 1usize);
    for &c in frac.iter().take(3) {
        f = f * 10 + (c - b'0') as usize;
        d *= 10;
    }
    bytes.checked_add(f.checked_mul(1usize.checked_shl(shift)?)? / d)
}

/// Whether `s` is one of `words`, ignoring ASCII case (no allocation).
fn is_one_of(s: &[u8], words: &[&[u8]]) -> bool {
    words.iter().any(|w| s.eq_ignore_ascii_case(w))
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

/// `s` without surrounding ASCII whitespace.
pub(crate) fn trim(s: &[u8]) -> &[u8] {
    let start = s
        .iter()
        .position(|c| !c.is_ascii_whitespace())
        .unwrap_or(s.len());
    let end = s
        .iter()
        .rposition(|c| !c.is_ascii_whitespace())
        .map_or(start, |e| e + 1);
    &s[start..end]
}

/// Apply `TENSORPOOL_L1D`, `_L2`, `_L3`, `_LINE` (sizes), `_CORES` and `_THREADS` (counts) to a
/// detected or preset topology. A value that does not parse, or that would make the topology
/// absurd (see `CacheTopology::is_plausible`), is ignored with a warning naming what is kept.
pub(crate) fn apply_topology_overrides(t: &mut crate::topology::CacheTopology) {
    type Field = fn(&mut crate::topology::CacheTopology) -> &mut usize;
    let vars: [(&core::ffi::CStr, Field, bool); 6] = [
        (c"TENSORPOOL_L1D", |t| &mut t.l1d, true),
        (c"TENSORPOOL_L2", |t| &mut t.l2, true),
        (c"TENSORPOOL_L3", |t| &mut t.l3, true),
        (c"TENSORPOOL_LINE", |t| &mut t.line, true),
        (c"TENSORPOOL_CORES", |t| &mut t.cores, false),
        (c"TENSORPOOL_THREADS", |t| &mut t.threads, false),
    ];
    for (name, field, is_size) in vars {
        let kept = *field(t);
        let (parse, expected): (Parser, &str) = if is_size {
            (parse_size, "a size such as 6M")
        } else {
            (parse_count, "a whole number")
        };
        let Some(v) = read_var(name, parse, expected, || {
            if is_size {
                Kept::Bytes(kept)
            } else {
                Kept::Count(kept)
            }
        }) else {
            continue;
        };
        let threads = t.threads;
        *field(t) = v;
        if name == c"TENSORPOOL_CORES" {
            // More cores than the detected threads: each core has at least one thread.
            t.threads = t.threads.max(v);
        }
        if !t.is_plausible() {
            *field(t) = kept;
            t.threads = threads;
            let raw = crate::os::getenv(name).unwrap_or(b"");
            let kept = if is_size {
                Kept::Bytes(kept)
            } else {
                Kept::Count(kept)
            };
            warn_bad(name, raw, "a value a real cache could have", kept);
        }
    }
}

type Parser = fn(&[u8]) -> Option<usize>;

/// A count: digits only, at least 1.
fn parse_count(s: &[u8]) -> Option<usize> {
    parse_uint(s).filter(|&v| v > 0)
}

/// A decimal number with nothing else but surrounding whitespace; `None` on overflow.
pub(crate) fn parse_uint(s: &[u8]) -> Option<usize> {
    let s = trim(s);
    if s.is_empty() {
        return None;
    }
    let mut v: usize = 0;
    for &c in s {
        if !c.is_ascii_digit() {
            return None;
        }
        v = v.checked_mul(10)?.checked_add((c - b'0') as usize)?;
    }
    Some(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse_with_binary_units() {
        assert_eq!(parse_size(b"6M"), Some(6 << 20));
        assert_eq!(parse_size(b" 2GiB "), Some(2 << 30));
        assert_eq!(parse_size(b"512k"), Some(512 << 10));
        assert_eq!(parse_size(b"1.5G"), Some(3 << 29));
        assert_eq!(parse_size(b"4096"), Some(4096));
        assert_eq!(parse_size(b"0"), Some(0));
        for bad in [
            &b""[..],
            b"M",
            b"abc",
            b"12Q",
            b"1..5G",
            b"-1G",
            b"5.G",
            b"99999999999999T",
        ] {
            assert_eq!(parse_size(bad), None, "{:?}", core::str::from_utf8(bad));
        }
    }

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
    }
}
