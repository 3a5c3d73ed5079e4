//! Statistics: where the memory went, per tensor kind.
//!
//! `TensorPool::stats()` assembles a snapshot from counters that already exist for other reasons
//! or cost the fast path nothing shared. This module defines the counter types the layers below
//! fill and assembles them; it reads none of them itself:
//! - large blocks: each kind's `LargeCounters`, updated under the arena's lock, which every
//!   large operation takes anyway (exact);
//! - small blocks: derived from the slab pages' own fields when a snapshot is taken
//!   (`SlabCounts`): live bytes from each page's `used`, which the allocator keeps anyway, and
//!   requests from a per-page count the allocation fast path bumps in the cache line it already
//!   writes. A free counts nothing. Pages given back fold their counts into their kind heap's.
//!   Each figure is one its owner stored; the sum is a moment's view while other threads run,
//!   and a block freed by another thread counts as live until its owner takes it back;
//! - the threads' caches of large blocks (`HeapPart`'s hot fields), and the handles' limits.
//!
//! Nothing here allocates: the snapshot is a plain value, `Display` and `write_json` format
//! through `core::fmt`, so the exit report can run inside the allocator.

use crate::kind::{TensorKind, NUM_KINDS};
use crate::sync::SharedStat;
use crate::text::{Bytes, StackStr};
use core::fmt::{self, Write as _};

/// Large-block bytes the program holds, per kind: `HELD[k]` is the arena's live bytes of kind
/// `k` less the bytes of its blocks waiting in thread caches, and `HELD_PEAK[k]` its greatest
/// value. The arena adds at a block handed out and subtracts at a live block given back; a thread
/// cache subtracts at a free into it and adds at a block taken from it (a cached block flowing
/// back to the arena changes nothing). Read without locks, so a snapshot's figure is a moment's.
#[cfg_attr(not(loom), link_section = ".bss.hot.tensorpool")]
pub(crate) static HELD: [SharedStat; NUM_KINDS] = [SharedStat::ZERO; NUM_KINDS];
#[cfg_attr(not(loom), link_section = ".bss.hot.tensorpool")]
pub(crate) static HELD_PEAK: [SharedStat; NUM_KINDS] = [SharedStat::ZERO; NUM_KINDS];

/// `bytes` of kind `kind` handed to the program.
#[inline]
pub(crate) fn held_add(kind: usize, bytes: u64) {
    let v = HELD[kind].add(bytes);
    HELD_PEAK[kind].raise(v);
}

/// Large-block bytes the program holds, every kind together.
#[inline]
pub(crate) fn held_total() -> u64 {
    HELD.iter().map(|h| h.get()).sum()
}

/// `bytes` of kind `kind` given back by the program.
#[inline]
pub(crate) fn held_sub(kind: usize, bytes: u64) {
    HELD[kind].sub(bytes);
}

/// One pool's statistics: a kind's, or a sum over kinds.
///
/// Definitions:
/// - a *request* is one allocation; a *hit* is one served from memory the pool already held (a
///   block on a thread heap's pages, a cached large block, or pages recycled from other cached
///   blocks); a *miss* needed new memory (a small request that took a new slab page, or a large
///   block mapped fresh);
/// - *live* bytes are handed out and not freed (block sizes); *cached* bytes are freed large-block
///   memory still resident in the arena, counted under the kind that released it; *hot* bytes
///   are the thread caches: free small blocks on the thread heaps' pages and freed large blocks in
///   the threads' hot caches (see `L3Budget`), reused next by the thread that freed them;
/// - *utilization* is `live / (live + cached + hot)`: the share of the memory the pool holds
///   that is in use;
/// - *overhead* is `(granted - requested) / requested` over large blocks: rounding to size
///   classes and alignment.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PoolStats {
    /// Allocations served.
    pub requests: u64,
    /// Requests served from memory the pool held.
    pub hits: u64,
    /// Requests that needed new memory.
    pub misses: u64,
    /// Large requests served from memory another kind released (counted in `hits` too).
    pub recycled: u64,
    /// Bytes handed out and not yet freed.
    pub live_bytes: u64,
    /// Freed large-block bytes kept resident for reuse.
    pub cached_bytes: u64,
    /// Free small-block bytes on the thread heaps' pages, and large blocks in thread caches.
    pub hot_bytes: u64,
    /// Highest live bytes seen: large blocks the program held at once (blocks in thread caches
    /// excluded), and never below the live bytes now (small blocks keep no peak); per kind, a
    /// sum of kinds sums their peaks.
    pub peak_live_bytes: u64,
    /// Large-block bytes asked for. (Small blocks' requested sizes are not counted: doing so on
    /// the fast path cost a third of the malloc/free loop's speed; their rounding is bounded by
    /// the class spacing.)
    pub requested_bytes: u64,
    /// Large-block bytes handed out for them (class sizes).
    pub granted_bytes: u64,
    /// Purges of cached memory (decay, the workload bound, a capacity, `trim`).
    pub evictions: u64,
    /// Bytes they returned to the OS.
    pub evicted_bytes: u64,
    /// Large allocations that left live + cached bytes above the kind's configured capacity.
    pub over_capacity: u64,
    /// Requests refused by a handle's hard limit.
    pub limit_refusals: u64,
    /// Bytes held through limited handles.
    pub limited_bytes: u64,
}

impl PoolStats {
    /// Hits per request, 0 to 1; `None` when there were no requests (a pool that was never
    /// asked has no rate, not a perfect one).
    pub fn hit_rate(&self) -> Option<f64> {
        (self.requests > 0).then(|| self.hits as f64 / self.requests as f64)
    }

    /// Granted bytes beyond the requested ones, as a percentage of the requested.
    pub fn overhead_percent(&self) -> f64 {
        if self.requested_bytes == 0 {
            0.0
        } else {
            self.granted_bytes.saturating_sub(self.requested_bytes) as f64 * 100.0
                / self.requested_bytes as f64
        }
    }

    /// `live / (live + cached + hot)`, 0 to 1 (1 when the pool holds nothing).
    pub fn utilization(&self) -> f64 {
        let held = self.live_bytes + self.cached_bytes + self.hot_bytes;
        if held == 0 {
            1.0
        } else {
            self.live_bytes as f64 / held as f64
        }
    }

    fn add(&mut self, o: &PoolStats) {
        macro_rules! sum {
            ($($f:ident),*) => { $( self.$f = self.$f.wrapping_add(o.$f); )* };
        }
        sum!(
            requests,
            hits,
            misses,
            recycled,
            live_bytes,
            cached_bytes,
            hot_bytes,
            peak_live_bytes,
            requested_bytes,
            granted_bytes,
            evictions,
            evicted_bytes,
            over_capacity,
            limit_refusals,
            limited_bytes
        );
    }
}

/// A snapshot of the allocator's statistics, per kind and in aggregate.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Stats {
    /// Per kind, indexed by `TensorKind::index`.
    pub kinds: [PoolStats; NUM_KINDS],
    /// The general pool (untagged memory): the same as `kinds[0]`.
    pub general: PoolStats,
    /// The specialised pools: every kind but `General`, summed.
    pub specialised: PoolStats,
    /// All kinds.
    pub total: PoolStats,
    /// Slab segments (4 MiB, holding the small blocks of every kind) taken from the arena and
    /// given back.
    pub segment_maps: u64,
    /// See `segment_maps`.
    pub segment_unmaps: u64,
    /// The arena every large block and segment lives in.
    pub arena: ArenaCounters,
    /// The process's resident memory when the snapshot was taken, if the OS said.
    pub resident_bytes: Option<u64>,
    /// How much of the arena's resident memory is on huge pages, read from `/proc/self/smaps`
    /// when the snapshot was taken (`None` where it cannot be read).
    pub huge_pages: Option<HugePageCoverage>,
}

/// How long threads waited on the allocator's locks, over the process and all its locks
/// together (the arena's, taken by a large allocation or free that misses its thread's cache,
/// and the rare ones: profiles, scope names, thread exit). Counted only when a lock was found
/// held, so an uncontended lock costs nothing to count.
#[derive(Clone, Copy, Default, Debug, PartialEq, Eq)]
pub struct LockWaits {
    /// Acquisitions that found the lock held.
    pub contended: u64,
    /// Busy-wait rounds (a CPU pause each) while a lock was held: the first 64 of each wait.
    pub spins: u64,
    /// `sched_yield` calls while a lock was held (each wait past 64 rounds).
    pub yields: u64,
}

/// The arena's resident memory and the part of it the kernel backs with transparent huge pages
/// (the `Rss` and `AnonHugePages` of its mappings in `/proc/self/smaps`).
#[derive(Clone, Copy, Default, Debug, PartialEq, Eq)]
pub struct HugePageCoverage {
    /// Resident bytes of the arena's mappings (blocks, segments and cached free memory).
    pub resident_bytes: u64,
    /// Of those, bytes on huge pages.
    pub huge_bytes: u64,
}

impl HugePageCoverage {
    /// `huge_bytes / resident_bytes`; `None` while nothing is resident.
    pub fn coverage(&self) -> Option<f64> {
        (self.resident_bytes > 0).then(|| self.huge_bytes as f64 / self.resident_bytes as f64)
    }
}

/// Counters of one kind's large blocks (exact: kept under the arena's lock).
#[derive(Clone, Copy, Default, Debug, PartialEq, Eq)]
pub struct LargeCounters {
    /// Allocation requests served by the arena (thread-cache hits are counted by the caches).
    pub requests: u64,
    /// Requests served from dirty (resident) memory: no page fault.
    pub hits: u64,
    /// Requests that took clean pages (never touched, or purged): they fault on first touch.
    pub misses: u64,
    /// Bytes of clean pages handed out (what faults in when touched), blocks grown in place
    /// included.
    pub fresh_bytes: u64,
    /// Bytes of blocks handed out and not freed (extent sizes), thread caches included.
    pub live_bytes: u64,
    /// Bytes of dirty free memory this kind released and no request has taken since.
    pub cached_bytes: u64,
    /// Highest large-block bytes the program held at once (`live_bytes` less the blocks in
    /// thread caches).
    pub peak_live_bytes: u64,
    /// Bytes asked for.
    pub requested_bytes: u64,
    /// Bytes handed out for them (whole pages, a cache colour included): `granted - requested`
    /// is rounding overhead.
    pub granted_bytes: u64,
    /// Purges of this kind's cached memory (decay, bound, capacity, `trim`).
    pub evictions: u64,
    /// Bytes they returned to the OS.
    pub evicted_bytes: u64,
    /// Allocations that left live + cached bytes above a configured capacity.
    pub over_capacity: u64,
    /// Hits served from memory another kind (or a returned segment) released.
    pub recycled: u64,
    /// Bytes of those hits.
    pub recycled_bytes: u64,
    /// Bytes of this kind's cached memory that other kinds' requests (or new slab segments)
    /// took.
    pub donated_bytes: u64,
}

impl LargeCounters {
    /// All zero (a template for const initialisers).
    pub(crate) const ZERO: LargeCounters = LargeCounters {
        requests: 0,
        hits: 0,
        misses: 0,
        fresh_bytes: 0,
        live_bytes: 0,
        cached_bytes: 0,
        peak_live_bytes: 0,
        requested_bytes: 0,
        granted_bytes: 0,
        evictions: 0,
        evicted_bytes: 0,
        over_capacity: 0,
        recycled: 0,
        recycled_bytes: 0,
        donated_bytes: 0,
    };
}

/// Counters of the arena as a whole (exact: kept under its lock).
#[derive(Clone, Copy, Default, Debug, PartialEq, Eq)]
pub struct ArenaCounters {
    /// Bytes mapped for blocks and segments (chunks, less what was unmapped).
    pub mapped_bytes: u64,
    /// Regions: contiguous mapped ranges, each one kernel mapping.
    pub regions: u64,
    /// Chunks mapped.
    pub chunk_maps: u64,
    /// Free ranges unmapped (recovery, `trim`).
    pub unmaps: u64,
    /// Bytes of free extents whose pages may be resident.
    pub dirty_bytes: u64,
    /// Bytes of free extents that are not resident.
    pub clean_bytes: u64,
    /// Bytes of small-block segments held by thread heaps.
    pub segment_bytes: u64,
    /// Bytes of large blocks handed out (thread caches included).
    pub live_bytes: u64,
    /// Purges (system calls), all causes.
    pub purges: u64,
    /// Bytes they returned to the OS.
    pub purged_bytes: u64,
    /// Of those bytes: by decay (idle for a whole period, or at once with a decay of 0).
    pub decay_purged_bytes: u64,
    /// By the bound that follows the workload's recent peak.
    pub bound_purged_bytes: u64,
    /// By a kind's configured capacity.
    pub capacity_purged_bytes: u64,
    /// Times the OS refused memory and the arena released everything free to retry.
    pub recoveries: u64,
    /// Extent descriptors in use (live, segments and free extents).
    pub extents: u64,
    /// Bytes mapped for metadata (descriptors, page map).
    pub meta_bytes: u64,
    /// The recent peak of live bytes (blocks and segments).
    pub recent_peak_bytes: u64,
    /// The most dirty bytes the arena keeps by the bound that follows the workload: the recent
    /// peak plus a sixteenth (at least 4 MiB).
    pub bound_bytes: u64,
    /// Large blocks grown in place by `realloc` (into a free neighbour).
    pub grown_in_place: u64,
    /// Large blocks shrunk in place (their tail given back).
    pub shrunk_in_place: u64,
    /// Whether the block zone is laid out for transparent huge pages (`HugePages`).
    pub huge_pages: bool,
    /// Ends of purged ranges that fell inside a huge page of the block zone (each splits that
    /// huge page, if the kernel had backed it with one), with huge pages on.
    pub huge_page_cuts: u64,
}

/// Small-block figures of one kind, summed over slab pages in use (see `pool::slab::count_pages`).
#[derive(Clone, Copy, Default, Debug, PartialEq, Eq)]
pub(crate) struct SlabCounts {
    /// Allocations served.
    pub(crate) requests: u64,
    /// Their class sizes, summed.
    pub(crate) granted_bytes: u64,
    /// Blocks handed out and not seen freed by their page's owner, in bytes.
    pub(crate) live_bytes: u64,
    /// Bytes carved into blocks (live or free).
    pub(crate) carved_bytes: u64,
}

/// What the thread heaps counted for one kind, summed over heaps: the small path, and the hot
/// caches of large blocks (whose blocks the large pools still count as live).
#[derive(Clone, Copy, Default)]
pub(crate) struct HeapPart {
    /// Small allocations served (by pages in use, and by pages since retired).
    pub(crate) requests: u64,
    /// Their class sizes, summed.
    pub(crate) granted: u64,
    /// Small blocks live (their pages' `used`, remote frees not yet taken back included).
    pub(crate) live: u64,
    /// Bytes carved into blocks on pages in use.
    pub(crate) carved: u64,
    /// Requests that took a page new to their kind heap (the small path's misses).
    pub(crate) new_pages: u64,
    /// Bytes in the threads' caches of large blocks, and what those caches served.
    pub(crate) hot_bytes: u64,
    pub(crate) hot_hits: u64,
    pub(crate) hot_requested: u64,
    pub(crate) hot_granted: u64,
}

impl Stats {
    /// Assemble a snapshot from its parts.
    pub(crate) fn assemble(
        large: &[LargeCounters; NUM_KINDS],
        small: &[HeapPart; NUM_KINDS],
        limits: &[(u64, u64); NUM_KINDS],
        segments: (u64, u64),
        arena: ArenaCounters,
        resident: Option<u64>,
    ) -> Stats {
        let kinds: [PoolStats; NUM_KINDS] = core::array::from_fn(|k| {
            let (l, s) = (&large[k], &small[k]);
            let small_live = s.live;
            let small_misses = s.new_pages.min(s.requests);
            PoolStats {
                requests: l.requests + s.requests + s.hot_hits,
                hits: l.hits + (s.requests - small_misses) + s.hot_hits,
                misses: l.misses + small_misses,
                recycled: l.recycled,
                live_bytes: l.live_bytes.saturating_sub(s.hot_bytes) + small_live,
                cached_bytes: l.cached_bytes,
                hot_bytes: s.carved.saturating_sub(small_live) + s.hot_bytes,
                // Large blocks' peak excludes thread-cached blocks (`HELD_PEAK`); small blocks
                // have no tracked peak: the figure is never below what is live now.
                peak_live_bytes: l
                    .peak_live_bytes
                    .max(l.live_bytes.saturating_sub(s.hot_bytes) + small_live),
                requested_bytes: l.requested_bytes + s.hot_requested,
                granted_bytes: l.granted_bytes + s.hot_granted,
                evictions: l.evictions,
                evicted_bytes: l.evicted_bytes,
                over_capacity: l.over_capacity,
                limit_refusals: limits[k].1,
                limited_bytes: limits[k].0,
            }
        });
        let general = kinds[TensorKind::General.index()];
        let mut specialised = PoolStats::default();
        for s in &kinds[1..] {
            specialised.add(s);
        }
        let mut total = general;
        total.add(&specialised);
        Stats {
            kinds,
            general,
            specialised,
            total,
            segment_maps: segments.0,
            segment_unmaps: segments.1,
            arena,
            resident_bytes: resident,
            huge_pages: None,
        }
    }

    /// One kind's statistics.
    pub fn kind(&self, kind: TensorKind) -> &PoolStats {
        &self.kinds[kind.index()]
    }

    /// Write the snapshot as one JSON object (no allocation):
    /// `{"kinds":{"general":{...},...},"general":{...},"specialised":{...},"total":{...},
    /// "segment_maps":N,"segment_unmaps":N,"resident_bytes":N|null}`. Each pool object has every
    /// `PoolStats` field plus `hit_rate`, `overhead_percent` and `utilization`.
    pub fn write_json(&self, w: &mut impl fmt::Write) -> fmt::Result {
        w.write_str("{\"kinds\":{")?;
        for (i, k) in TensorKind::ALL.iter().enumerate() {
            if i > 0 {
                w.write_char(',')?;
            }
            write!(w, "\"{}\":", k.name())?;
            write_pool_json(w, &self.kinds[i])?;
        }
        w.write_str("},\"general\":")?;
        write_pool_json(w, &self.general)?;
        w.write_str(",\"specialised\":")?;
        write_pool_json(w, &self.specialised)?;
        w.write_str(",\"total\":")?;
        write_pool_json(w, &self.total)?;
        write!(
            w,
            ",\"segment_maps\":{},\"segment_unmaps\":{},",
            self.segment_maps, self.segment_unmaps
        )?;
        write_arena_json(w, &self.arena)?;
        w.write_str(",\"resident_bytes\":")?;
        match self.resident_bytes {
            Some(r) => write!(w, "{r}")?,
            None => w.write_str("null")?,
        }
        w.write_str(",\"huge_pages\":")?;
        match self.huge_pages {
            Some(h) => write!(
                w,
                "{{\"resident_bytes\":{},\"huge_bytes\":{}}}}}",
                h.resident_bytes, h.huge_bytes
            ),
            None => w.write_str("null}"),
        }
    }

    /// The snapshot as a JSON string (see `write_json`).
    pub fn to_json(&self) -> String {
        let mut s = String::new();
        // Writing to a String cannot fail.
        let _ = self.write_json(&mut s);
        s
    }
}

fn write_arena_json(w: &mut impl fmt::Write, a: &ArenaCounters) -> fmt::Result {
    write!(
        w,
        "\"arena\":{{\"mapped_bytes\":{},\"regions\":{},\"chunk_maps\":{},\"unmaps\":{},\
         \"dirty_bytes\":{},\"clean_bytes\":{},\"segment_bytes\":{},\"live_bytes\":{},\
         \"purges\":{},\"purged_bytes\":{},\"decay_purged_bytes\":{},\
         \"bound_purged_bytes\":{},\"capacity_purged_bytes\":{},\"recoveries\":{},\
         \"extents\":{},\"meta_bytes\":{},\"recent_peak_bytes\":{},\"bound_bytes\":{},\
         \"grown_in_place\":{},\"shrunk_in_place\":{},\"huge_pages\":{},\
         \"huge_page_cuts\":{}}}",
        a.mapped_bytes,
        a.regions,
        a.chunk_maps,
        a.unmaps,
        a.dirty_bytes,
        a.clean_bytes,
        a.segment_bytes,
        a.live_bytes,
        a.purges,
        a.purged_bytes,
        a.decay_purged_bytes,
        a.bound_purged_bytes,
        a.capacity_purged_bytes,
        a.recoveries,
        a.extents,
        a.meta_bytes,
        a.recent_peak_bytes,
        a.bound_bytes,
        a.grown_in_place,
        a.shrunk_in_place,
        a.huge_pages,
        a.huge_page_cuts
    )
}

fn write_pool_json(w: &mut impl fmt::Write, p: &PoolStats) -> fmt::Result {
    write!(
        w,
        "{{\"requests\":{},\"hits\":{},\"misses\":{},\"recycled\":{},\"live_bytes\":{},\
         \"cached_bytes\":{},\"hot_bytes\":{},\"peak_live_bytes\":{},\"requested_bytes\":{},\
         \"granted_bytes\":{},\"evictions\":{},\"evicted_bytes\":{},\
         \"over_capacity\":{},\"limit_refusals\":{},\"limited_bytes\":{},\
         \"hit_rate\":{},\"overhead_percent\":{:.4},\"utilization\":{:.6}}}",
        p.requests,
        p.hits,
        p.misses,
        p.recycled,
        p.live_bytes,
        p.cached_bytes,
        p.hot_bytes,
        p.peak_live_bytes,
        p.requested_bytes,
        p.granted_bytes,
        p.evictions,
        p.evicted_bytes,
        p.over_capacity,
        p.limit_refusals,
        p.limited_bytes,
        OptRate(p.hit_rate(), "null"),
        p.overhead_percent(),
        p.utilization()
    )
}

/// A rate with six decimals, or `none` (JSON `null`, the table's `-`) when there is none.
struct OptRate(Option<f64>, &'static str);

impl fmt::Display for OptRate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Some(r) => write!(f, "{r:.6}"),
            None => f.write_str(self.1),
        }
    }
}

/// A percentage with one decimal, or `-` when there is none, padded (no allocation).
struct OptPct(Option<f64>);

impl fmt::Display for OptPct {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Some(r) => Pct(r).fmt(f),
            None => f.pad("-"),
        }
    }
}

/// Percentage with one decimal, padded (no allocation).
struct Pct(f64);

impl fmt::Display for Pct {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut buf = StackStr::<16>::new();
        write!(buf, "{:.1}%", self.0 * 100.0)?;
        f.pad(buf.as_str())
    }
}

/// The table's columns, in order (names as printed in the header).
pub const COLUMNS: [&str; 11] = [
    "pool",
    "requests",
    "hit rate",
    "live",
    "cached",
    "hot",
    "peak live",
    "overhead",
    "returned",
    "over cap",
    "refused",
];

fn write_row(f: &mut fmt::Formatter<'_>, name: &str, p: &PoolStats) -> fmt::Result {
    writeln!(
        f,
        "{:<16} {:>10} {:>8} {:>10} {:>10} {:>10} {:>10} {:>8} {:>10} {:>8} {:>7}",
        name,
        p.requests,
        OptPct(p.hit_rate()),
        Bytes(p.live_bytes),
        Bytes(p.cached_bytes),
        Bytes(p.hot_bytes),
        Bytes(p.peak_live_bytes),
        Pct(p.overhead_percent() / 100.0),
        Bytes(p.evicted_bytes),
        p.over_capacity,
        p.limit_refusals,
    )
}

impl fmt::Display for Stats {
    /// An aligned table: one row per kind, then the general pool, the specialised pools and the
    /// total, then utilization and resident memory.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let c = &COLUMNS;
        writeln!(
            f,
            "{:<16} {:>10} {:>8} {:>10} {:>10} {:>10} {:>10} {:>8} {:>10} {:>8} {:>7}",
            c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7], c[8], c[9], c[10]
        )?;
        for (k, p) in TensorKind::ALL.iter().zip(&self.kinds) {
            write_row(f, k.name(), p)?;
        }
        writeln!(f, "{:-<119}", "")?;
        write_row(f, "general pool", &self.general)?;
        write_row(f, "specialised", &self.specialised)?;
        write_row(f, "total", &self.total)?;
        write!(
            f,
            "utilization {} (live / (live + cached + hot)); slab segments taken {}, returned {}",
            Pct(self.total.utilization()),
            self.segment_maps,
            self.segment_unmaps
        )?;
        if let Some(r) = self.resident_bytes {
            write!(f, "; resident {}", Bytes(r))?;
        }
        let a = &self.arena;
        writeln!(
            f,
            "\narena: {} mapped in {} regions ({} chunks mapped, {} ranges unmapped); \
             dirty {}, clean {}, segments {}; returned to the OS {} (decay {}, bound {}, \
             capacity {}); recoveries {}; huge pages {}",
            Bytes(a.mapped_bytes),
            a.regions,
            a.chunk_maps,
            a.unmaps,
            Bytes(a.dirty_bytes),
            Bytes(a.clean_bytes),
            Bytes(a.segment_bytes),
            Bytes(a.purged_bytes),
            Bytes(a.decay_purged_bytes),
            Bytes(a.bound_purged_bytes),
            Bytes(a.capacity_purged_bytes),
            a.recoveries,
            HugeLine(a, self.huge_pages)
        )
    }
}

/// The arena line's huge-page part: off, or on with its coverage and the cuts purges made.
struct HugeLine<'a>(&'a ArenaCounters, Option<HugePageCoverage>);

impl fmt::Display for HugeLine<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if !self.0.huge_pages {
            f.write_str("off")?;
        } else {
            f.write_str("on")?;
        }
        if let Some(h) = self.1 {
            write!(
                f,
                ", {} of {} resident",
                Bytes(h.huge_bytes),
                Bytes(h.resident_bytes)
            )?;
            if let Some(c) = h.coverage() {
                write!(f, " ({})", Pct(c))?;
            }
        }
        if self.0.huge_pages {
            write!(f, ", {} cut by purges", self.0.huge_page_cuts)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_are_defined_when_empty() {
        let p = PoolStats::default();
        assert_eq!(p.hit_rate(), None);
        assert_eq!(p.overhead_percent(), 0.0);
        assert_eq!(p.utilization(), 1.0);
    }

    /// A pool never asked shows no hit rate: `-` in the table, `null` in JSON, never 100 %.
    #[test]
    fn a_pool_without_requests_has_no_hit_rate() {
        let mut large = [LargeCounters::default(); NUM_KINDS];
        large[1].requests = 4;
        large[1].hits = 3;
        let s = Stats::assemble(
            &large,
            &[HeapPart::default(); NUM_KINDS],
            &[(0, 0); NUM_KINDS],
            (0, 0),
            ArenaCounters::default(),
            None,
        );
        let mut json = StackStr::<8192>::new();
        s.write_json(&mut json).unwrap();
        let j = json.as_str();
        // Five kinds and the general pool were never asked; attention, the specialised pools and
        // the total were.
        assert_eq!(j.matches("\"hit_rate\":null").count(), 6, "{j}");
        assert_eq!(j.matches("\"hit_rate\":0.750000").count(), 3, "{j}");
        let mut table = StackStr::<8192>::new();
        write!(table, "{s}").unwrap();
        let rows: Vec<&str> = table.as_str().lines().collect();
        let rate = |name: &str| {
            let row = rows.iter().find(|r| r.starts_with(name)).unwrap();
            row.split_whitespace().nth(2).unwrap().to_string()
        };
        assert_eq!(rate("general "), "-", "{}", table.as_str());
        assert_eq!(rate("kv_cache"), "-");
        assert_eq!(rate("attention"), "75.0%");
        assert_eq!(rate("total"), "75.0%");
    }

    /// Small blocks keep no peak, so the peak shown is never below the live bytes.
    #[test]
    fn peak_live_is_never_below_live() {
        let mut small = [HeapPart::default(); NUM_KINDS];
        small[2].live = 3 << 20;
        small[2].carved = 4 << 20;
        let s = Stats::assemble(
            &[LargeCounters::default(); NUM_KINDS],
            &small,
            &[(0, 0); NUM_KINDS],
            (0, 0),
            ArenaCounters::default(),
            None,
        );
        assert_eq!(s.kinds[2].live_bytes, 3 << 20);
        assert_eq!(s.kinds[2].peak_live_bytes, 3 << 20);
    }
}
