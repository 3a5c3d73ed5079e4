//! The thread cache of large blocks: each thread's hot set of freed tensors, bounded by the
//! thread's share of the last-level cache (the L3 budget as the allocator applies it; the budget
//! as users see it is `budget::L3Budget`).
//!
//! A large block freed by the thread that took it goes onto that thread's hot cache (no lock, no
//! shared write) when it is no larger than the thread's limit (freed by another thread, it is
//! sent back to this one first: `returns`); the thread's next request of the same kind and
//! class takes the most recently freed match, whose lines are the likeliest still to be in cache.
//! While the cache holds more than the limit (or more than `HOT_SLOTS` blocks), its coldest blocks
//! flow back to the arena, where any thread can reuse them and decay, the bound and capacities
//! see them. Blocks larger than the limit bypass the cache: they cannot stay cache-hot anyway.
//! A request the cache has no fit for, that the arena could serve only with fresh pages, and
//! that the cache holds at least as many bytes as, first sends the whole cache back
//! (`TensorPool::take_large`): its blocks are of classes the thread no longer asks for, and in
//! the arena they coalesce and may serve the request. Kept, they were resident beside the new
//! pages (8 MiB of the inference example's peak RSS, a third of the tensor-block loops').
//!
//! The limit is the L3 share per core (`CacheTopology::l3_share`) clamped to `THREAD_CACHE_MAX`,
//! or what `PoolConfig::with_thread_cache` / `TENSORPOOL_THREAD_CACHE` set. The clamp exists
//! because a thread cache is memory no other thread can use: a VM that reports its host's whole
//! L3 as shared by its two vCPUs (this one says 480 MiB) would otherwise let every thread sit on
//! hundreds of MiB.
//!
//! **Shared through a gate.** A thread that sleeps holds its cache and its claim on the shared
//! total, which no running thread can then use. So the cache sits behind a gate
//! (`ThreadCache`): a try-lock that its owner takes around each use (one uncontended
//! compare-exchange) and that another thread may take to send an idle cache back to the arena
//! (`idle`). Neither side ever waits: an owner that finds the gate taken bypasses its cache for
//! that request (to the arena, as a block too large for it does), and a reclaimer that finds it
//! taken skips the heap, whose owner is evidently running.
//!
//! Blocks in hot caches still count as live in the arena (they are handed back only when they
//! flow back), so capacities and the timeline see them as live; `stats()` and `budget()` report
//! them as hot. A cached block's descriptor is marked `Hot`, so freeing it again is caught as a
//! double free.

use crate::kind::NUM_KINDS;
use crate::options::{THREAD_CACHE_AUTO, THREAD_CACHE_LIMIT_MAX, THREAD_CACHE_MAX};
use crate::pool::large::{self, Extent};
use crate::sync::{shared_static, AtomicBool, AtomicUsize, Ordering, Stat, UnsafeCell};
use core::ptr;

/// Blocks a thread cache holds at most (so a lookup scans a few cache lines at most).
pub(crate) const HOT_SLOTS: usize = 32;

shared_static! {
    /// Each thread cache's byte limit; 0 (before configuration, or when turned off) bypasses.
    #[cfg_attr(not(loom), link_section = ".bss.hot.tensorpool")]
    static LIMIT: AtomicUsize = AtomicUsize::new(0);
}

shared_static! {
    /// What all thread caches may hold together: the limit times the cores that share the
    /// last-level cache (at most that many threads run at once, each with its share).
    #[cfg_attr(not(loom), link_section = ".bss.hot.tensorpool")]
    static TOTAL_LIMIT: AtomicUsize = AtomicUsize::new(0);
}

shared_static! {
    /// What the thread caches have reserved of `TOTAL_LIMIT` together: the sum of their
    /// `reserved`.
    #[cfg_attr(not(loom), link_section = ".bss.hot.tensorpool")]
    static RESERVED: AtomicUsize = AtomicUsize::new(0);
}

/// Set the thread-cache limit (at configuration). `THREAD_CACHE_AUTO` derives it from the L3
/// share per core, `l3_share`; all caches together hold at most `cores` limits.
pub(crate) fn set_limit(configured: usize, l3_share: usize, cores: usize) {
    let limit = if configured == THREAD_CACHE_AUTO {
        l3_share.min(THREAD_CACHE_MAX)
    } else {
        configured
    };
    let limit = limit.min(THREAD_CACHE_LIMIT_MAX);
    TOTAL_LIMIT.store(limit.saturating_mul(cores.max(1)), Ordering::Relaxed);
    LIMIT.store(limit, Ordering::Relaxed);
}

/// In a child after `fork`: only the forking thread exists, so the shared total holds its
/// cache's claim alone (the other threads' heaps are the parent's, and never free theirs).
pub(crate) fn after_fork_in_child(own: &ThreadCache) {
    // A thread that held the gate at the fork does not exist here: open it.
    own.gate.store(false, Ordering::Relaxed);
    let reserved = own.try_with(|c, _| c.reserved).unwrap_or(0);
    RESERVED.store(reserved, Ordering::Relaxed);
}

/// Reserve `bytes` of the caches' shared total; false if that would pass it.
fn reserve(bytes: usize) -> bool {
    let total = TOTAL_LIMIT.load(Ordering::Relaxed);
    let mut cur = RESERVED.load(Ordering::Relaxed);
    loop {
        if cur + bytes > total {
            return false;
        }
        match RESERVED.compare_exchange_weak(cur, cur + bytes, Ordering::Relaxed, Ordering::Relaxed)
        {
            Ok(_) => return true,
            Err(v) => cur = v,
        }
    }
}

/// What the thread caches have claimed of their shared total, together (models).
#[cfg(loom)]
pub(crate) fn claimed() -> usize {
    RESERVED.load(Ordering::Relaxed)
}

/// The thread-cache limit in force.
#[inline]
pub(crate) fn limit() -> usize {
    LIMIT.load(Ordering::Relaxed)
}

const fn tag(kind: usize, class_index: usize) -> u16 {
    ((kind << 8) | class_index) as u16
}

/// A thread's hot cache of freed large blocks. Lives in the thread's heap (a zeroed mapping, and
/// all-zero is its empty state), behind its `ThreadCache`'s gate.
///
/// Slots are unordered; a free stamp orders them. A lookup compares all the tags at once (one
/// cache line of them: `near_tags`) and takes the matching slot freed last; the coldest slot is
/// the one with the lowest stamp. Nothing is ever shifted: moving entries cost a `memmove` per
/// operation, a third of a tensor loop's time.
#[repr(C)]
pub(crate) struct HotCache {
    /// `kind << 8 | large class index` per slot, so a lookup reads no block header.
    tags: [u16; HOT_SLOTS],
    /// When each slot was filled (higher is more recent).
    stamps: [u64; HOT_SLOTS],
    starts: [*mut u8; HOT_SLOTS],
    /// The blocks' descriptors (for the arena when a block flows back).
    descs: [*mut Extent; HOT_SLOTS],
    /// Usable bytes of each block (what a request may use).
    sizes: [u32; HOT_SLOTS],
    /// Bytes each block holds (whole pages, as the arena counts them live).
    held: [u32; HOT_SLOTS],
    /// Bit `i` set: slot `i` holds a block.
    full: u32,
    clock: u64,
    bytes: usize,
    /// This cache's claim on the caches' shared total (`RESERVED`): `bytes <= reserved`,
    /// taken in grants of a quarter of the limit so that the shared counter is written once
    /// per several puts, and given back when the cache shrinks well below it.
    reserved: usize,
    /// `clock` when a reclaimer last looked, and when it saw it change (`idle`).
    seen_clock: u64,
    seen_at: u64,
}

const _: () = assert!(HOT_SLOTS == u32::BITS as usize);

/// Per kind, written only by whoever holds the cache's gate (its owner nearly always), read by
/// any thread.
#[repr(C)]
pub(crate) struct HotCounters {
    /// Bytes cached now.
    pub(crate) bytes: Stat,
    /// Requests served from the cache.
    pub(crate) hits: Stat,
    /// Bytes those requests asked for, and bytes they were given.
    pub(crate) requested: Stat,
    pub(crate) granted: Stat,
}

impl HotCache {
    /// Take a cached block of `kind` for a request of `size` bytes whose start is
    /// `align`-aligned: of its own class if there is one, else of up to four classes larger,
    /// the most recently freed among the closest; its descriptor, or null if there is none.
    #[inline]
    #[link_section = ".text.hot.tensorpool"]
    pub(crate) fn take(
        &mut self,
        c: &Counters,
        kind: usize,
        size: usize,
        align: usize,
    ) -> *mut Extent {
        if self.full == 0 {
            return ptr::null_mut();
        }
        // Tags hold the class at or below each block's size, so the request's own (rounded
        // down) class finds blocks of exactly its size; `sizes` then confirms the fit.
        debug_assert!(align.is_power_of_two());
        let want = tag(kind, class_below(size));
        let mut matches = near_tags(&self.tags, want) & self.full;
        let mut best: Option<(u16, u64, usize)> = None;
        while matches != 0 {
            let i = matches.trailing_zeros() as usize;
            matches &= matches - 1;
            let key = (self.tags[i] - want, u64::MAX - self.stamps[i], i);
            // `align` is a power of two (a layout's): a mask, not a division per candidate.
            let fits =
                self.sizes[i] as usize >= size && (self.starts[i] as usize) & (align - 1) == 0;
            if fits && best.is_none_or(|b| key < b) {
                best = Some(key);
            }
        }
        let Some((_, _, i)) = best else {
            return ptr::null_mut();
        };
        let got = self.held[i] as usize;
        let e = self.descs[i];
        self.clock += 1;
        self.empty(c, i, kind);
        self.shrink_claim();
        note_held(kind, true, got as u64);
        // SAFETY: cached blocks are blocks this thread freed and nobody else holds.
        unsafe { large::reuse(e) };
        let c = &c[kind];
        c.hits.add(1);
        c.requested.add(size as u64);
        c.granted.add(got as u64);
        e
    }

    /// Cache a freed block, sending the coldest blocks back to their pools while over `limit`.
    /// Returns false (caching nothing) if the block is larger than `limit`.
    ///
    /// # Safety
    /// `e` is the descriptor of a live large block, freed by this call if it returns true.
    pub(crate) unsafe fn put(
        &mut self,
        c: &Counters,
        e: *mut Extent,
        limit: usize,
        reclaim: fn() -> bool,
    ) -> bool {
        // SAFETY: the caller's contract.
        let (_, _, bytes, kind) = unsafe { large::block_info(e) };
        if bytes > limit {
            return false;
        }
        // SAFETY: as above.
        let cached = unsafe { self.insert(c, e, limit, reclaim) };
        if cached {
            note_held(kind, false, bytes as u64);
        }
        cached
    }

    /// Cache a block another thread freed and sent back to this one (`returns`): already hot,
    /// and already subtracted from the program's held bytes. Returns false (caching nothing) if
    /// the cache cannot hold it.
    ///
    /// # Safety
    /// `e` is a hot block taken from this heap's return list.
    pub(crate) unsafe fn put_returned(
        &mut self,
        c: &Counters,
        e: *mut Extent,
        limit: usize,
        reclaim: fn() -> bool,
    ) -> bool {
        // SAFETY: the caller's contract.
        let bytes = unsafe { large::block_info(e) }.2;
        // SAFETY: as above.
        bytes <= limit && unsafe { self.insert(c, e, limit, reclaim) }
    }

    /// Put a block of at most `limit` bytes into a slot, making room. `reclaim` is called
    /// when the caches' shared total has no room left (it may send idle caches back: `idle`).
    ///
    /// # Safety
    /// As `put`.
    #[link_section = ".text.hot.tensorpool"]
    unsafe fn insert(
        &mut self,
        c: &Counters,
        e: *mut Extent,
        limit: usize,
        reclaim: fn() -> bool,
    ) -> bool {
        // SAFETY: the caller's contract.
        let (start, usable, bytes, kind) = unsafe { large::block_info(e) };
        while self.full == u32::MAX || self.bytes + bytes > limit {
            self.flow_back_coldest(c);
        }
        // Within the caches' shared total: grow this cache's claim (a quarter of the limit at a
        // time, never past the limit), else make room in what it holds, else leave the block
        // to the arena: the other threads' caches hold the total (unless some of them sleep:
        // `reclaim`).
        if self.bytes + bytes > self.reserved {
            let need = self.bytes + bytes - self.reserved;
            let grant = (limit / 4)
                .min(limit.saturating_sub(self.reserved))
                .max(need);
            if reserve(grant) {
                self.reserved += grant;
            } else if reserve(need) || (reclaim() && reserve(need)) {
                self.reserved += need;
            } else {
                while self.full != 0 && self.bytes + bytes > self.reserved {
                    self.flow_back_coldest(c);
                }
                if self.bytes + bytes > self.reserved {
                    return false;
                }
            }
        }
        debug_assert!(self.bytes + bytes <= self.reserved.min(limit));
        // SAFETY: as above.
        unsafe { large::prepare_hot(e) };
        let i = (!self.full).trailing_zeros() as usize;
        self.clock += 1;
        self.tags[i] = tag(kind, class_below(usable));
        self.stamps[i] = self.clock;
        self.starts[i] = start;
        self.descs[i] = e;
        self.sizes[i] = usable as u32;
        self.held[i] = bytes as u32;
        self.full |= 1 << i;
        self.bytes += bytes;
        c[kind].bytes.add(bytes as u64);
        true
    }

    /// Send every cached block back to its pool (thread exit, `trim`), and the cache's claim
    /// on the shared total with them.
    pub(crate) fn flush(&mut self, c: &Counters) {
        while self.full != 0 {
            self.flow_back_coldest(c);
        }
        RESERVED.fetch_sub(self.reserved, Ordering::Relaxed);
        self.reserved = 0;
    }

    /// Free slot `i` (holding a block of `kind`).
    fn empty(&mut self, c: &Counters, i: usize, kind: usize) {
        self.full &= !(1 << i);
        self.bytes -= self.held[i] as usize;
        c[kind].bytes.sub(self.held[i] as u64);
    }

    /// After a take: a claim on the shared total that the cache no longer fills by half a
    /// limit goes back down to a quarter limit above what it holds.
    fn shrink_claim(&mut self) {
        let quarter = limit() / 4;
        if self.reserved > self.bytes + 2 * quarter {
            let keep = self.bytes + quarter;
            RESERVED.fetch_sub(self.reserved - keep, Ordering::Relaxed);
            self.reserved = keep;
        }
    }

    #[link_section = ".text.hot.tensorpool"]
    fn flow_back_coldest(&mut self, c: &Counters) {
        let mut left = self.full;
        let mut cold = left.trailing_zeros() as usize;
        while left != 0 {
            let i = left.trailing_zeros() as usize;
            left &= left - 1;
            if self.stamps[i] < self.stamps[cold] {
                cold = i;
            }
        }
        let e = self.descs[cold];
        // The tag has the kind: no need to read the (likely cold) descriptor before the free.
        let kind = (self.tags[cold] >> 8) as usize;
        self.empty(c, cold, kind);
        // SAFETY: the block is counted live in the arena until this free.
        unsafe { large::ARENA.free(e) };
    }

    /// Bytes cached now.
    pub(crate) fn bytes(&self) -> usize {
        self.bytes
    }

    /// This cache's claim on the caches' shared total.
    pub(crate) fn claim(&self) -> usize {
        self.reserved
    }

    /// Whether the cache holds blocks or a claim that its owner has not used for `idle` ns, as
    /// far as reclaimers looking at `now` can tell: a look that finds it used since the last
    /// look (or the first look) starts the wait again, so a cache is taken only after two looks
    /// `idle` apart with no use between them.
    pub(crate) fn idle_at(&mut self, now: u64, idle: u64) -> bool {
        if self.clock != self.seen_clock || self.seen_at == 0 {
            self.seen_clock = self.clock;
            self.seen_at = now.max(1);
            return false;
        }
        self.reserved != 0 && now.saturating_sub(self.seen_at) >= idle
    }
}

/// Per-kind counters of one cache.
pub(crate) type Counters = [HotCounters; NUM_KINDS];

/// A thread's cache behind its gate, with its counters beside it, where any thread may read
/// them. All-zero bytes are an open gate and an empty cache (heaps are zeroed mappings).
///
/// Invariant: the cache is touched only inside `try_with`, by the one thread that turned the
/// gate from false to true, and the gate is true exactly while one is inside.
#[repr(C)]
pub(crate) struct ThreadCache {
    gate: AtomicBool,
    cache: UnsafeCell<HotCache>,
    pub(crate) counters: Counters,
}

impl ThreadCache {
    /// An open, empty cache (for a heap being made under loom, whose atomics and cells are not
    /// valid as zero bytes).
    #[cfg(loom)]
    pub(crate) fn new() -> Self {
        Self {
            gate: AtomicBool::new(false),
            // SAFETY: all-zero is the empty cache (integers, null pointers, zero counters).
            cache: UnsafeCell::new(unsafe { core::mem::zeroed() }),
            // SAFETY: as above.
            counters: unsafe { core::mem::zeroed() },
        }
    }

    /// Run `f` on the cache if no other thread is using it; `None`, running nothing, if one is.
    /// The owner's path costs one uncontended compare-exchange and one store.
    #[inline(always)]
    pub(crate) fn try_with<R>(&self, f: impl FnOnce(&mut HotCache, &Counters) -> R) -> Option<R> {
        // Acquire pairs with the Release that opened the gate last: whatever the previous user
        // wrote to the cache happens before this one reads it. (A compare-exchange, not a swap:
        // as cheap here, and loom 0.7 let a swap that found the gate taken
        // leave it taken after its holder opened it, in a model where that cannot happen.)
        if self
            .gate
            .compare_exchange(false, true, Ordering::Acquire, Ordering::Relaxed)
            .is_err()
        {
            return None;
        }
        let r = self.cache.with_mut(|c| {
            // SAFETY: the compare-exchange gave this thread the gate, so no other thread touches
            // the cache until the store below opens it again (the type's invariant).
            let c = unsafe { &mut *c };
            f(c, &self.counters)
        });
        self.gate.store(false, Ordering::Release);
        Some(r)
    }
}

/// Bit `i` set where `tags[i]` is `want` to `want + 4`: the same kind, a class up to four above
/// (large class indexes stay far below 251 in a cache limited to 4 GiB, so the kind byte cannot
/// carry). Four compares of eight tags each and two byte masks on x86-64 (SSE2 is part of its
/// baseline): the compiler's vectorisation of the plain loop below spent 80 instructions here,
/// half of each `take`.
#[inline(always)]
fn near_tags(tags: &[u16; HOT_SLOTS], want: u16) -> u32 {
    #[cfg(target_arch = "x86_64")]
    {
        use core::arch::x86_64::{
            __m128i, _mm_cmpeq_epi16, _mm_loadu_si128, _mm_movemask_epi8, _mm_packs_epi16,
            _mm_set1_epi16, _mm_setzero_si128, _mm_sub_epi16, _mm_subs_epu16,
        };
        const _: () = assert!(HOT_SLOTS == 32);
        let p = tags.as_ptr().cast::<__m128i>();
        // SAFETY: SSE2 is in every x86-64 CPU; the four unaligned loads read the 64 bytes of
        // `tags` and nothing else.
        unsafe {
            let (w, four, zero) = (
                _mm_set1_epi16(want as i16),
                _mm_set1_epi16(4),
                _mm_setzero_si128(),
            );
            // Lanes whose `tag - want` (wrapping) is at most 4 become all ones.
            let near = |i: usize| {
                let d = _mm_sub_epi16(_mm_loadu_si128(p.add(i)), w);
                _mm_cmpeq_epi16(_mm_subs_epu16(d, four), zero)
            };
            // Packing keeps all-ones lanes all ones (-1 saturates to -1), one byte per tag.
            let lo = _mm_movemask_epi8(_mm_packs_epi16(near(0), near(1))) as u32;
            let hi = _mm_movemask_epi8(_mm_packs_epi16(near(2), near(3))) as u32;
            (lo & 0xffff) | (hi << 16)
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let mut m = 0u32;
        for (i, &t) in tags.iter().enumerate() {
            m |= u32::from(t.wrapping_sub(want) <= 4) << i;
        }
        m
    }
}

/// The index of the large class at or below `bytes` (a whole number of pages or more).
fn class_below(bytes: usize) -> usize {
    crate::class::large_index(bytes.next_multiple_of(crate::os::PAGE))
}

/// A block of `kind` taken from a thread cache (`taken`) or freed into one: the program's held
/// bytes change (`stats::HELD`), and the timeline, if recording, gets a sample, since the arena
/// sees neither event.
#[inline(always)]
pub(crate) fn note_held(kind: usize, taken: bool, bytes: u64) {
    if taken {
        crate::stats::held_add(kind, bytes);
    } else {
        crate::stats::held_sub(kind, bytes);
    }
    if crate::timeline::enabled() {
        crate::timeline::record_live(kind, crate::stats::HELD[kind].get());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The vector compare agrees with the plain definition: every lane, wanted tags at the ends
    /// of the range (wrapping below 0 and past `u16::MAX`), kinds either side.
    #[test]
    fn near_tags_marks_exactly_the_tags_up_to_four_classes_above() {
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        for want in [0u16, 1, 3, 0x0104, 0x05fa, 0xfffb, 0xfffe, 0xffff] {
            for round in 0..200 {
                let mut tags = [0u16; HOT_SLOTS];
                for t in tags.iter_mut() {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    // Half near `want` (within 8 either side), half anywhere.
                    *t = if (x >> 40) & 1 == 0 {
                        want.wrapping_add((x % 17) as u16).wrapping_sub(8)
                    } else {
                        (x >> 16) as u16
                    };
                }
                if round == 0 {
                    tags[0] = want;
                    tags[31] = want.wrapping_add(4);
                    tags[15] = want.wrapping_add(5);
                    tags[16] = want.wrapping_sub(1);
                }
                let mut expect = 0u32;
                for (i, &t) in tags.iter().enumerate() {
                    if (0..=4).any(|d| t == want.wrapping_add(d)) {
                        expect |= 1 << i;
                    }
                }
                assert_eq!(near_tags(&tags, want), expect, "want {want:#x}: {tags:x?}");
            }
        }
    }
}
