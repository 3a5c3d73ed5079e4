//! What the benchmarks share: the allocators under comparison, a global allocator that becomes
//! one of them per process, and the measurements every benchmark reports besides time (minor
//! faults, peak resident memory, the mapping count).
//!
//! A benchmark that compares allocators on the global path runs each in a child process of its
//! own binary, whose `#[global_allocator]` is `Switch`: the child's environment (`BENCH_ALLOC`,
//! read with `getenv` at the first allocation, before anything is allocated) picks the allocator
//! for everything the process allocates, as a user's `#[global_allocator]` would. `Config::env`
//! gives the environment for each configuration compared (jemalloc with decay off, tensorpool
//! with huge pages, tensorpool through per-kind handles or untagged).

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicU8, Ordering};
use tensorpool::TensorPool;

/// The tensorpool every benchmark uses (configured by the child's `TENSORPOOL_*` variables).
pub static TP: TensorPool = TensorPool::new();
/// mimalloc 0.1 (the `mimalloc` crate).
pub static MI: mimalloc::MiMalloc = mimalloc::MiMalloc;
/// jemalloc 5.3 (the `tikv-jemallocator` crate).
pub static JE: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// Allocators `Switch` can become, by `BENCH_ALLOC` value.
pub const ALLOCATORS: [&str; 4] = ["tensorpool", "system", "mimalloc", "jemalloc"];

/// The allocator chosen (index into `ALLOCATORS`, plus one; 0 until read).
static CHOICE: AtomicU8 = AtomicU8::new(0);

/// A global allocator that forwards every call to the allocator `BENCH_ALLOC` names
/// (tensorpool when it is unset).
pub struct Switch;

impl Switch {
    fn chosen(&self) -> &'static dyn GlobalAlloc {
        let mut c = CHOICE.load(Ordering::Relaxed);
        if c == 0 {
            // SAFETY: getenv reads the environment without allocating; the result is
            // NUL-terminated or null.
            let v = unsafe { libc::getenv(c"BENCH_ALLOC".as_ptr()) };
            c = 1;
            if !v.is_null() {
                // SAFETY: as above.
                let name = unsafe { std::ffi::CStr::from_ptr(v) }.to_bytes();
                if let Some(i) = ALLOCATORS.iter().position(|n| n.as_bytes() == name) {
                    c = i as u8 + 1;
                }
            }
            CHOICE.store(c, Ordering::Relaxed);
        }
        match c {
            2 => &System,
            3 => &MI,
            4 => &JE,
            _ => &TP,
        }
    }

    /// The name of the allocator in use.
    pub fn name(&self) -> &'static str {
        let _ = self.chosen();
        ALLOCATORS[CHOICE.load(Ordering::Relaxed) as usize - 1]
    }
}

// SAFETY: every call forwards to one allocator, the same for the whole process (chosen before the
// first allocation and never changed), so blocks are always freed by the allocator that made them.
unsafe impl GlobalAlloc for Switch {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        // SAFETY: forwarded with the caller's contract.
        unsafe { self.chosen().alloc(l) }
    }
    unsafe fn alloc_zeroed(&self, l: Layout) -> *mut u8 {
        // SAFETY: forwarded with the caller's contract.
        unsafe { self.chosen().alloc_zeroed(l) }
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        // SAFETY: forwarded with the caller's contract.
        unsafe { self.chosen().dealloc(p, l) }
    }
    unsafe fn realloc(&self, p: *mut u8, l: Layout, n: usize) -> *mut u8 {
        // SAFETY: forwarded with the caller's contract.
        unsafe { self.chosen().realloc(p, l, n) }
    }
}

/// A configuration compared: an allocator and its settings, given to a child as environment.
pub struct Config;

impl Config {
    /// Configurations every global-path benchmark knows, with what each means.
    pub const ALL: [(&'static str, &'static str); 8] = [
        (
            "tensorpool",
            "tensorpool, tensors through per-kind handles (tagged)",
        ),
        (
            "tensorpool-untagged",
            "tensorpool as the global allocator, nothing tagged",
        ),
        (
            "tensorpool-4k",
            "tensorpool, tagged, with TENSORPOOL_HUGE_PAGES=0 (4 KiB pages)",
        ),
        (
            "tensorpool-untagged-4k",
            "tensorpool untagged, with TENSORPOOL_HUGE_PAGES=0",
        ),
        ("system", "glibc malloc"),
        ("mimalloc", "mimalloc 0.1"),
        ("jemalloc", "jemalloc 5.3"),
        (
            "jemalloc-nodecay",
            "jemalloc 5.3 with dirty and muzzy decay off",
        ),
    ];

    /// The child environment of configuration `name`; `None` for an unknown name.
    pub fn env(name: &str) -> Option<Vec<(&'static str, &'static str)>> {
        let base: &'static str = match name {
            "tensorpool" | "tensorpool-untagged" | "tensorpool-4k" | "tensorpool-untagged-4k" => {
                "tensorpool"
            }
            "system" => "system",
            "mimalloc" => "mimalloc",
            "jemalloc" | "jemalloc-nodecay" => "jemalloc",
            _ => return None,
        };
        let mut env = vec![("BENCH_ALLOC", base)];
        match name {
            // tikv-jemallocator prefixes its symbols, and so the name of its configuration
            // variable.
            "jemalloc-nodecay" => {
                env.push(("_RJEM_MALLOC_CONF", "dirty_decay_ms:-1,muzzy_decay_ms:-1"))
            }
            "tensorpool-4k" => env.push(("TENSORPOOL_HUGE_PAGES", "0")),
            "tensorpool-untagged" => env.push(("BENCH_UNTAGGED", "1")),
            "tensorpool-untagged-4k" => {
                env.push(("BENCH_UNTAGGED", "1"));
                env.push(("TENSORPOOL_HUGE_PAGES", "0"));
            }
            _ => {}
        }
        Some(env)
    }

    /// Whether this child should allocate its tensors untagged (through the global allocator).
    pub fn untagged() -> bool {
        std::env::var_os("BENCH_UNTAGGED").is_some()
    }
}

/// Minor page faults of this process so far.
pub fn minor_faults() -> u64 {
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: getrusage fills the struct it is given.
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) };
    ru.ru_minflt as u64
}

/// A field of /proc/self/status in bytes (`VmRSS:`, `VmHWM:`).
pub fn status_bytes(field: &str) -> u64 {
    let s = std::fs::read_to_string("/proc/self/status").unwrap();
    s.lines()
        .find(|l| l.starts_with(field))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse::<u64>().ok())
        .map_or(0, |kb| kb * 1024)
}

/// Resident bytes now.
pub fn rss() -> u64 {
    status_bytes("VmRSS:")
}

/// The process's mappings (lines of /proc/self/maps).
pub fn mappings() -> u64 {
    std::fs::read_to_string("/proc/self/maps")
        .unwrap()
        .lines()
        .count() as u64
}

/// Median of the values (the mean of the middle two for an even count).
pub fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let n = v.len();
    if n == 0 {
        return f64::NAN;
    }
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

/// The configurations a benchmark of the untagged global path compares by default: tensorpool
/// (huge pages on, then off) against glibc, mimalloc and jemalloc.
pub const UNTAGGED_CONFIGS: [&str; 5] = [
    "tensorpool-untagged",
    "tensorpool-untagged-4k",
    "system",
    "mimalloc",
    "jemalloc",
];

/// The lowest `value(i)` over the configurations `i` of `allocs` that are not tensorpool's; `None`
/// when every configuration is tensorpool's. The denominator of each "tensorpool / best other"
/// ratio.
pub fn best_other(allocs: &[String], value: impl Fn(usize) -> f64) -> Option<f64> {
    (0..allocs.len())
        .filter(|&i| !allocs[i].starts_with("tensorpool"))
        .map(value)
        .reduce(f64::min)
}

/// Print `NAME / best other: LABEL RATIO, ...` for each tensorpool configuration of `allocs`,
/// over the columns `cols` (a label and an index into each configuration's medians `med`).
pub fn print_ratios<const N: usize>(allocs: &[String], med: &[[f64; N]], cols: &[(&str, usize)]) {
    for (i, name) in allocs.iter().enumerate() {
        if !name.starts_with("tensorpool") {
            continue;
        }
        let ratios: Option<Vec<String>> = cols
            .iter()
            .map(|&(label, k)| {
                best_other(allocs, |o| med[o][k]).map(|b| format!("{label} {:.2}", med[i][k] / b))
            })
            .collect();
        if let Some(r) = ratios {
            println!("{name} / best other: {}", r.join(", "));
        }
    }
}

/// The value after `flag` on the command line.
pub fn arg_after(args: &[String], flag: &str) -> Option<String> {
    args.iter()
        .position(|a| a == flag)
        .and_then(|i| args.get(i + 1))
        .cloned()
}

/// Run this binary as a child for configuration `config` with `args`; returns its stdout.
/// Panics (with its stderr) if it fails.
pub fn run_child(config: &str, args: &[&str]) -> String {
    let env = Config::env(config).unwrap_or_else(|| panic!("unknown configuration {config}"));
    let mut cmd = std::process::Command::new(std::env::current_exe().unwrap());
    cmd.args(args);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().unwrap();
    if !out.status.success() {
        panic!(
            "child {config} {args:?} failed: {}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// xorshift64: deterministic, good enough to pick sizes.
pub struct Rng(pub u64);

impl Rng {
    /// The next value.
    #[allow(clippy::should_implement_trait)]
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    /// A value in `0..n`.
    pub fn below(&mut self, n: u64) -> usize {
        (self.next() % n) as usize
    }
}
