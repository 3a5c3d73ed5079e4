//! The cache topology the allocator budgets for: detected from Linux sysfs once, overridden by
//! `TENSORPOOL_*` options, and the reference machine's preset where neither says.
//!
//! Detection reads small files into stack buffers (no allocation), so the allocator may run it
//! lazily on an allocation path. Parsing takes any root directory, so tests run it on sysfs-like
//! fixtures.

use crate::env::{read_var, warn_bad, Kept};
use crate::os;
use crate::text::{parse_size, parse_uint, trim};
use core::sync::atomic::{AtomicU8, Ordering};

/// Cache sizes and sharing, in bytes and counts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CacheTopology {
    /// Cache line size.
    pub line: usize,
    /// L1 data cache per core.
    pub l1d: usize,
    /// L2 cache per core.
    pub l2: usize,
    /// Last-level cache, shared by `cores` cores.
    pub l3: usize,
    /// Cores sharing the last-level cache.
    pub cores: usize,
    /// Hardware threads sharing it.
    pub threads: usize,
}

/// Where a topology came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TopologySource {
    /// Linux sysfs, possibly with some values overridden by options.
    Detected,
    /// The preset (sysfs unreadable), possibly with some values overridden.
    Preset,
}

/// Why sysfs could not give a topology.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TopologyError {
    /// No cache index directory could be read.
    Unreadable,
    /// A file held something that is not what the kernel writes there (its name).
    Malformed(&'static str),
    /// A cache level is missing (1 for L1d, 2, 3).
    Missing(u8),
    /// Values that cannot describe a real machine (line not a power of two from 16 to 512 bytes,
    /// levels not growing, no core).
    Absurd,
}

impl core::fmt::Display for TopologyError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            TopologyError::Unreadable => f.write_str("no cache information could be read"),
            TopologyError::Malformed(what) => write!(f, "malformed sysfs file: {what}"),
            TopologyError::Missing(l) => write!(f, "no level-{l} cache described"),
            TopologyError::Absurd => f.write_str("cache values that cannot describe a machine"),
        }
    }
}

impl std::error::Error for TopologyError {}

impl CacheTopology {
    /// The reference machine, an Intel Core i5-10210U: 64-byte lines, 32 KiB L1d and 256 KiB L2
    /// per core, 6 MiB L3 shared by 4 cores and 8 threads.
    pub const I5_10210U: CacheTopology = CacheTopology {
        line: 64,
        l1d: 32 << 10,
        l2: 256 << 10,
        l3: 6 << 20,
        cores: 4,
        threads: 8,
    };

    /// Each core's share of the last-level cache: the hot working-set budget per thread cache.
    pub const fn l3_share(&self) -> usize {
        self.l3 / if self.cores == 0 { 1 } else { self.cores }
    }

    /// Split a tensor into tiles that each fit this machine's per-core L3 share (see
    /// `tiles::plan_tiles`).
    pub fn plan_tiles(
        &self,
        shape: &[usize],
        elem: usize,
    ) -> Result<crate::tiles::TilePlan, crate::tiles::PlanError> {
        crate::tiles::plan_tiles(shape, elem, self.l3_share(), self.line)
    }

    /// Matmul blocks whose A, B and C blocks fit this machine's per-core L3 share together.
    pub fn plan_matmul(
        &self,
        m: usize,
        n: usize,
        k: usize,
        elem: usize,
    ) -> Result<crate::tiles::MatmulBlocks, crate::tiles::PlanError> {
        crate::tiles::plan_matmul(m, n, k, elem, self.l3_share(), self.line)
    }

    /// Whether the values can describe a real machine.
    pub fn is_plausible(&self) -> bool {
        self.line.is_power_of_two()
            && (16..=512).contains(&self.line)
            && self.l1d >= self.line
            && self.l2 >= self.l1d
            && self.l3 >= self.l2
            && self.l3 <= 1 << 40
            && self.cores >= 1
            && self.threads >= self.cores
            && self.cores <= 1 << 16
    }

    /// Parse a sysfs-like tree: `{root}/cpu0/cache/index*/{level,type,size,
    /// coherency_line_size,shared_cpu_list}` and `{root}/cpu0/topology/thread_siblings_list`
    /// (`root` is `/sys/devices/system/cpu` on Linux). Allocates nothing.
    #[link_section = ".text.hot.tensorpool"]
    pub fn from_sysfs(root: &str) -> Result<CacheTopology, TopologyError> {
        let mut dir = [0u8; 256];
        let mut found = false;
        let (mut l1d, mut l2, mut l3, mut line, mut l3_threads) = (0, 0, 0, 0, 0);
        for i in 0..10u8 {
            let Some(d) = join(&mut dir, root, b"/cpu0/cache/index", i) else {
                return Err(TopologyError::Unreadable);
            };
            let mut buf = [0u8; 128];
            let Some(level) = os::read_small_file(d, b"level", &mut buf) else {
                continue;
            };
            found = true;
            let level = parse_uint(level).ok_or(TopologyError::Malformed("level"))?;
            let mut tb = [0u8; 64];
            let ty = os::read_small_file(d, b"type", &mut tb)
                .map(trim)
                .ok_or(TopologyError::Malformed("type"))?;
            if ty == b"Instruction" {
                continue;
            }
            if ty != b"Data" && ty != b"Unified" {
                return Err(TopologyError::Malformed("type"));
            }
            let mut sb = [0u8; 64];
            let size = os::read_small_file(d, b"size", &mut sb)
                .and_then(parse_cache_size)
                .ok_or(TopologyError::Malformed("size"))?;
            let mut lb = [0u8; 64];
            let l = os::read_small_file(d, b"coherency_line_size", &mut lb)
                .and_then(parse_uint)
                .ok_or(TopologyError::Malformed("coherency_line_size"))?;
            line = line.max(l);
            match level {
                1 => l1d = size,
                2 => l2 = size,
                3 => {
                    l3 = size;
                    let mut cb = [0u8; 1024];
                    l3_threads = os::read_small_file(d, b"shared_cpu_list", &mut cb)
                        .and_then(count_cpu_list)
                        .ok_or(TopologyError::Malformed("shared_cpu_list"))?;
                }
                _ => {}
            }
        }
        if !found {
            return Err(TopologyError::Unreadable);
        }
        for (size, level) in [(l1d, 1u8), (l2, 2), (l3, 3)] {
            if size == 0 {
                return Err(TopologyError::Missing(level));
            }
        }
        // Threads per core from cpu0's siblings (1 where the file is missing: no SMT info).
        let mut sib = [0u8; 256];
        let per_core = match join(&mut dir, root, b"/cpu0/topology", u8::MAX) {
            Some(d) => os::read_small_file(d, b"thread_siblings_list", &mut sib)
                .map(|s| count_cpu_list(s).ok_or(TopologyError::Malformed("thread_siblings_list")))
                .transpose()?
                .unwrap_or(1),
            None => 1,
        };
        let t = CacheTopology {
            line,
            l1d,
            l2,
            l3,
            cores: (l3_threads / per_core.max(1)).max(1),
            threads: l3_threads,
        };
        if t.is_plausible() {
            Ok(t)
        } else {
            Err(TopologyError::Absurd)
        }
    }
}

/// `root` + `middle` + (`index` in decimal unless `u8::MAX`) into `buf`; `None` if too long.
fn join<'a>(buf: &'a mut [u8; 256], root: &str, middle: &[u8], index: u8) -> Option<&'a [u8]> {
    let mut n = 0;
    for part in [root.as_bytes(), middle] {
        buf.get_mut(n..n + part.len())?.copy_from_slice(part);
        n += part.len();
    }
    if index != u8::MAX {
        let mut digits = [0u8; 3];
        let mut k = 0;
        let mut v = index;
        loop {
            digits[k] = b'0' + v % 10;
            k += 1;
            v /= 10;
            if v == 0 {
                break;
            }
        }
        for i in (0..k).rev() {
            *buf.get_mut(n)? = digits[i];
            n += 1;
        }
    }
    Some(&buf[..n])
}

/// The kernel writes cache sizes as `48K`, `2048K`, `32768K` (and some kernels `1M`).
fn parse_cache_size(s: &[u8]) -> Option<usize> {
    let s = trim(s);
    let (num, shift) = match s.last()? {
        b'K' => (&s[..s.len() - 1], 10),
        b'M' => (&s[..s.len() - 1], 20),
        b'G' => (&s[..s.len() - 1], 30),
        _ => (s, 0),
    };
    parse_uint(num)?.checked_mul(1 << shift)
}

/// CPUs in a list such as `0-3,8-11` or `0,4`.
#[link_section = ".text.hot.tensorpool"]
fn count_cpu_list(s: &[u8]) -> Option<usize> {
    let s = trim(s);
    if s.is_empty() {
        return None;
    }
    let mut total = 0usize;
    for part in s.split(|&c| c == b',') {
        let mut ends = part.splitn(2, |&c| c == b'-');
        let a = parse_uint(ends.next()?)?;
        let b = match ends.next() {
            Some(b) => parse_uint(b)?,
            None => a,
        };
        if b < a {
            return None;
        }
        total = total.checked_add(b - a + 1)?;
    }
    Some(total)
}

/// 0: not detected yet; 1: detecting; 2: done.
#[cfg_attr(not(loom), link_section = ".bss.hot.tensorpool")]
static STATE: AtomicU8 = AtomicU8::new(0);
static mut DETECTED: (CacheTopology, TopologySource) =
    (CacheTopology::I5_10210U, TopologySource::Preset);

/// The topology in force: sysfs, then `TENSORPOOL_*` overrides, the preset where sysfs says
/// nothing. Worked out once (no allocation); later calls read the result.
pub(crate) fn current() -> (CacheTopology, TopologySource) {
    if STATE.load(Ordering::Acquire) == 2 {
        // SAFETY: written once before STATE became 2 (Release), never again.
        return unsafe { *core::ptr::addr_of!(DETECTED) };
    }
    if STATE
        .compare_exchange(0, 1, Ordering::Acquire, Ordering::Acquire)
        .is_ok()
    {
        let t = detect_with_overrides();
        // SAFETY: only the thread that moved STATE from 0 to 1 writes, and readers wait for 2.
        unsafe { *core::ptr::addr_of_mut!(DETECTED) = t };
        STATE.store(2, Ordering::Release);
        return t;
    }
    // Another thread is detecting: work it out here too (a few file reads, the same answer)
    // rather than wait. Waiting hung a forked child whose parent forked while another thread
    // was detecting: that thread does not exist in the child, and `STATE` stayed 1 there.
    detect_with_overrides()
}

#[link_section = ".text.hot.tensorpool"]
fn detect_with_overrides() -> (CacheTopology, TopologySource) {
    let (mut t, source) = match CacheTopology::from_sysfs("/sys/devices/system/cpu") {
        Ok(t) => (t, TopologySource::Detected),
        Err(_) => (CacheTopology::I5_10210U, TopologySource::Preset),
    };
    apply_overrides(&mut t);
    (t, source)
}

/// Apply `TENSORPOOL_L1D`, `_L2`, `_L3`, `_LINE` (sizes), `_CORES` and `_THREADS` (counts) to a
/// detected or preset topology. A value that does not parse, or that would make the topology
/// absurd (see `CacheTopology::is_plausible`), is ignored with a warning naming what is kept.
#[link_section = ".text.hot.tensorpool"]
fn apply_overrides(t: &mut CacheTopology) {
    // By index, not by closures coerced to `fn` pointers: their shims land far from the rest of
    // the start-up code, and a process maps the code around each one it runs (`lib.rs`, "Code
    // layout").
    fn field(t: &mut CacheTopology, i: usize) -> &mut usize {
        match i {
            0 => &mut t.l1d,
            1 => &mut t.l2,
            2 => &mut t.l3,
            3 => &mut t.line,
            4 => &mut t.cores,
            _ => &mut t.threads,
        }
    }
    let vars: [(&core::ffi::CStr, bool); 6] = [
        (c"TENSORPOOL_L1D", true),
        (c"TENSORPOOL_L2", true),
        (c"TENSORPOOL_L3", true),
        (c"TENSORPOOL_LINE", true),
        (c"TENSORPOOL_CORES", false),
        (c"TENSORPOOL_THREADS", false),
    ];
    for (i, (name, is_size)) in vars.into_iter().enumerate() {
        let kept = *field(t, i);
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
        *field(t, i) = v;
        if name == c"TENSORPOOL_CORES" {
            // More cores than the detected threads: each core has at least one thread.
            t.threads = t.threads.max(v);
        }
        if !t.is_plausible() {
            *field(t, i) = kept;
            t.threads = threads;
            let raw = os::getenv(name).unwrap_or(b"");
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sysfs_values_parse() {
        assert_eq!(parse_cache_size(b"48K\n"), Some(48 << 10));
        assert_eq!(parse_cache_size(b"6144K"), Some(6 << 20));
        assert_eq!(parse_cache_size(b"1M"), Some(1 << 20));
        assert_eq!(parse_cache_size(b"K"), None);
        assert_eq!(count_cpu_list(b"0-3,8-11\n"), Some(8));
        assert_eq!(count_cpu_list(b"0,4"), Some(2));
        assert_eq!(count_cpu_list(b"5"), Some(1));
        assert_eq!(count_cpu_list(b"3-1"), None);
        assert_eq!(count_cpu_list(b"a-b"), None);
    }

    #[test]
    fn preset_is_plausible() {
        assert!(CacheTopology::I5_10210U.is_plausible());
        assert_eq!(CacheTopology::I5_10210U.l3_share(), 1536 << 10);
    }
}
