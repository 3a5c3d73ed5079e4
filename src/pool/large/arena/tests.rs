use super::super::usable;
use super::huge::HUGE_META_FROM;
use super::*;

const MIB: usize = 1 << 20;

/// The arena tests run one at a time: they read the address-space layout (chunks placed
/// together), which other arenas mapping at the same moment would disturb.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn arena() -> (&'static Arena, std::sync::MutexGuard<'static, ()>) {
    let g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    // Each test's arena lives (and keeps its chunks) until the test binary exits.
    (Box::leak(Box::new(Arena::new())), g)
}

/// `arena()` with decay off (only what a test asks for is purged) and huge pages as `huge`.
fn arena_without_decay(huge: bool) -> (&'static Arena, std::sync::MutexGuard<'static, ()>) {
    let (a, serial) = arena();
    a.with(|s| {
        s.decay.set_ms(-1);
        s.huge_pages = huge;
    });
    (a, serial)
}

fn fill(p: *mut u8, n: usize, v: u8) {
    // SAFETY: `p` is a live block of at least `n` bytes.
    unsafe { p.write_bytes(v, n) };
}

fn check(p: *mut u8, n: usize, v: u8) {
    // SAFETY: `p` is a live block of at least `n` bytes.
    let s = unsafe { core::slice::from_raw_parts(p, n) };
    assert!(s.iter().all(|&b| b == v), "block contents changed");
}

/// Random allocations, frees, resizes, purges and trims with a pattern in every block;
/// the census after each step checks the structure.
#[test]
fn random_operations_keep_every_invariant() {
    let (a, _serial) = arena();
    a.with(|s| s.decay.set_ms(-1));
    let mut x = 0x1234_5678_9abc_def1u64;
    let mut rnd = |n: u64| {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        (x % n) as usize
    };
    let mut live: Vec<(*mut u8, usize, u8)> = Vec::new();
    for step in 0..4000 {
        match rnd(10) {
            0..=4 => {
                let size = if rnd(8) == 0 {
                    (rnd(24) + 1) * MIB
                } else {
                    16 * 1024 + rnd(900 * 1024)
                };
                let align = [64, 64, 4096, 1 << 16, 2 * MIB][rnd(5)];
                let kind = rnd(NUM_KINDS as u64);
                let p = a.alloc_block(kind, size, align);
                assert!(!p.is_null());
                assert_eq!(p as usize % align, 0);
                let v = step as u8;
                fill(p, size, v);
                live.push((p, size, v));
            }
            5..=7 if !live.is_empty() => {
                let (p, n, v) = live.swap_remove(rnd(live.len() as u64));
                check(p, n, v);
                let e = a.lookup(p);
                assert!(!e.is_null());
                // SAFETY: `e` is the live block at `p`, freed once.
                unsafe { a.free(e) };
                assert!(a.lookup(p).is_null(), "a freed block still looks live");
            }
            8 if !live.is_empty() => {
                let i = rnd(live.len() as u64);
                let (p, n, v) = live[i];
                let m = 16 * 1024 + rnd(2 * MIB as u64);
                let e = a.lookup(p);
                // SAFETY: `e` is the live block at `p`.
                if unsafe { a.resize(e, p, m, m < n) } {
                    check(p, n.min(m), v);
                    fill(p, m, v);
                    live[i].1 = m;
                    // SAFETY: as above.
                    assert!(unsafe { usable(e, p) } >= m);
                }
            }
            _ => match rnd(3) {
                0 => {
                    a.trim();
                }
                1 => {
                    let chain = a.with(|s| s.take_dirty((rnd(8) * MIB) as u64, None, Cause::Decay));
                    a.purge(chain);
                }
                _ => a.recover(),
            },
        }
        let c = a.census();
        assert_eq!(c.live, live.len(), "step {step}");
    }
    for (p, n, v) in live.drain(..) {
        check(p, n, v);
        // SAFETY: live, freed once.
        unsafe { a.free(a.lookup(p)) };
    }
    a.trim();
    let c = a.census();
    assert_eq!((c.live, c.dirty, c.live_bytes), (0, 0, 0));
    assert_eq!(c.regions, 0, "trim unmaps regions left wholly free: {c:?}");
}

/// Freed blocks of several kinds coalesce into one dirty extent that serves a larger
/// request of another kind without fresh pages; the shares say who released what.
#[test]
fn coalesced_memory_of_any_kind_serves_any_kind() {
    let (a, _serial) = arena();
    a.with(|s| s.decay.set_ms(-1));
    let blocks: Vec<_> = (0..3).map(|k| a.alloc_block(k, 3 * MIB, 64)).collect();
    let base = a.census();
    for &p in &blocks {
        // SAFETY: live, freed once.
        unsafe { a.free(a.lookup(p)) };
    }
    let after = a.census();
    assert_eq!(after.live, base.live - 3);
    let cached = a.with(|s| s.kind_counters());
    for c in cached.iter().take(3) {
        assert!(c.cached_bytes >= 3 * MIB as u64, "{c:?}");
    }
    let misses = a.with(|s| s.kinds[5].misses);
    let q = a.alloc_block(5, 8 * MIB, 64);
    assert!(!q.is_null());
    let k5 = a.with(|s| s.kinds[5]);
    assert_eq!(k5.misses, misses, "served from coalesced dirty memory");
    assert!(k5.recycled_bytes >= 8 * MIB as u64);
    let donated: u64 = a
        .with(|s| s.kind_counters())
        .iter()
        .take(3)
        .map(|c| c.donated_bytes)
        .sum();
    assert!(donated >= 8 * MIB as u64);
    // SAFETY: live, freed once.
    unsafe { a.free(a.lookup(q)) };
    a.census();
}

/// A block grows in place into its free neighbour and shrinks by giving its tail back.
#[test]
fn blocks_grow_and_shrink_in_place() {
    let (a, _serial) = arena();
    a.with(|s| s.decay.set_ms(-1));
    let p = a.alloc_block(2, 4 * MIB, 64);
    let q = a.alloc_block(2, 4 * MIB, 64);
    fill(p, 4 * MIB, 7);
    // SAFETY: live, freed once.
    unsafe { a.free(a.lookup(q)) };
    let e = a.lookup(p);
    // SAFETY: `e` is the live block at `p`.
    let grew = unsafe { a.resize(e, p, 7 * MIB, false) };
    assert!(grew, "grows into the freed neighbour");
    check(p, 4 * MIB, 7);
    fill(p, 7 * MIB, 8);
    assert_eq!(a.with(|s| s.totals.grown_in_place), 1);
    // SAFETY: as above.
    assert!(unsafe { a.resize(e, p, MIB, true) });
    assert_eq!(a.with(|s| s.totals.shrunk_in_place), 1);
    // SAFETY: as above.
    assert!(unsafe { usable(e, p) } < 2 * MIB);
    check(p, MIB, 8);
    a.census();
    // SAFETY: live, freed once.
    unsafe { a.free(e) };
    a.census();
}

/// Touching chunks become one region; a request larger than the first chunk gets its own.
#[test]
fn chunks_that_touch_form_one_region() {
    let (a, _serial) = arena();
    a.with(|s| s.decay.set_ms(-1));
    let ps: Vec<_> = (0..6)
        .map(|i| a.alloc_block(i % NUM_KINDS, 30 * MIB, 64))
        .collect();
    let c = a.census();
    let maps = a.with(|s| s.totals.chunk_maps);
    assert!(maps >= 2, "{maps} chunks");
    assert!(
        (c.regions as u64) < maps,
        "{} regions for {maps} chunks: the hint did not place them together",
        c.regions
    );
    for p in ps {
        // SAFETY: live, freed once.
        unsafe { a.free(a.lookup(p)) };
    }
    let c = a.census();
    // Freed blocks coalesce; only the clean tails of chunks separate dirty extents.
    assert_eq!(c.regions, 1, "{c:?}");
    assert!(c.dirty <= 2, "{c:?}");
}

/// Decay: memory idle for a whole period goes back; memory in use does not.
#[test]
fn decay_returns_idle_memory_only() {
    let (a, _serial) = arena();
    a.with(|s| s.decay.set_ms(800));
    const MS: u64 = 1_000_000;
    // Far ahead of the real clock, which the allocations themselves read.
    let t0 = os::coarse_now_ns() + 3_600_000 * MS;
    a.tick_at(t0);
    let p = a.alloc_block(1, 20 * MIB, 64);
    fill(p, 20 * MIB, 1);
    let q = a.alloc_block(1, 20 * MIB, 64);
    // SAFETY: live, freed once.
    unsafe { a.free(a.lookup(p)) };
    a.tick_at(t0 + 500 * MS);
    assert!(
        a.with(|s| s.dirty_bytes) >= 20 * MIB as u64,
        "kept for reuse"
    );
    a.tick_at(t0 + 1_100 * MS);
    let c = a.with(|s| s.arena_counters());
    assert!(
        c.dirty_bytes < MIB as u64,
        "idle for a period: purged ({c:?})"
    );
    assert!(c.decay_purged_bytes >= 20 * MIB as u64);
    a.census();
    // SAFETY: live, freed once.
    unsafe { a.free(a.lookup(q)) };
}

/// With huge pages on, a purge takes whole huge pages from inside a dirty extent and leaves
/// its unaligned ends dirty; off, it takes the extent's high end, cutting into a huge page.
#[test]
fn purges_take_whole_huge_pages_first() {
    for huge in [true, false] {
        let (a, _serial) = arena_without_decay(huge);
        let size = 5 * MIB + 12 * 1024;
        let x = a.alloc_block(1, size, 64);
        let y = a.alloc_block(1, MIB, 64);
        // SAFETY: live, freed once.
        unsafe { a.free(a.lookup(x)) };
        let (base, len, cuts) = a.with(|s| {
            let chain = s.take_dirty(2 * MIB as u64, None, Cause::Bound);
            assert!(!chain.is_null());
            // SAFETY: the chain is one `Busy` extent of ours, put back clean at once.
            unsafe {
                assert!((*chain).lru_next.is_null(), "one extent");
                let r = ((*chain).base, (*chain).size, s.totals.huge_page_cuts);
                s.finish_purge(chain);
                r
            }
        });
        if huge {
            assert_eq!(base % HUGE_PAGE, 0, "starts on a huge page");
            assert_eq!(len, 2 * MIB, "whole huge pages");
            assert!(base + len <= x as usize + size);
            assert_eq!(cuts, 0);
        } else {
            assert_eq!(base + len, (x as usize + size).next_multiple_of(PAGE));
            assert_ne!(base % HUGE_PAGE, 0, "the old policy cuts into a huge page");
        }
        a.census();
        // SAFETY: live, freed once.
        unsafe { a.free(a.lookup(y)) };
    }
}

/// With huge pages on, a request that takes fresh pages while the holes it cannot use would
/// leave `live + dirty` over the footprint bound returns whole huge pages of those holes first;
/// with them off, the holes stay dirty (decay's business).
#[test]
fn fresh_pages_past_the_footprint_bound_return_whole_huge_pages_of_holes() {
    for huge in [true, false] {
        let (a, _serial) = arena_without_decay(huge);
        let hole = a.alloc_block(1, 32 * MIB, 64);
        let guard = a.alloc_block(1, MIB, 64);
        fill(guard, MIB, 3);
        // SAFETY: live, freed once.
        unsafe { a.free(a.lookup(hole)) };
        let (dirty_before, cuts_before) = a.with(|s| (s.dirty_bytes, s.totals.huge_page_cuts));
        assert!(dirty_before >= 32 * MIB as u64);
        // Larger than the hole: 41 MiB live with it (past `FOOTPRINT_FROM`), a new peak, so
        // `live + dirty` may reach 45 MiB (the slack's least is 4 MiB), where it would be 73
        // with the hole kept.
        let big = a.alloc_block(1, 40 * MIB, 64);
        assert!(!big.is_null());
        fill(big, 40 * MIB, 7);
        let (dirty, live, bound, cuts) = a.with(|s| {
            (
                s.dirty_bytes,
                s.live,
                s.decay.footprint_bound(s.live),
                s.totals.huge_page_cuts,
            )
        });
        if huge {
            assert!(live + dirty <= bound, "{live} + {dirty} over {bound}");
            assert!(
                dirty < dirty_before,
                "whole huge pages of the hole went back"
            );
            assert_eq!(cuts, cuts_before, "no huge page split for it");
        } else {
            assert_eq!(dirty, dirty_before, "4 KiB pages: the hole stays");
        }
        check(guard, MIB, 3);
        check(big, 40 * MIB, 7);
        a.census();
        // SAFETY: live, freed once each.
        unsafe {
            a.free(a.lookup(big));
            a.free(a.lookup(guard));
        }
    }
}

/// Metadata goes on huge pages only once the arena holds `HUGE_META_FROM`: before, a 2 MiB
/// huge page would hold a few KiB of page-map nodes in a process of a few MiB.
#[test]
fn metadata_goes_huge_only_once_the_arena_is_large() {
    let (a, _serial) = arena_without_decay(true);
    let mut blocks: Vec<*mut u8> = (0..8).map(|_| a.alloc_block(0, MIB, 64)).collect();
    assert!(blocks.iter().all(|p| !p.is_null()));
    a.with(|s| {
        assert!(s.huge_armed, "a block of 1 MiB arms huge pages");
        assert!(!s.meta.is_huge() && !s.map_meta.is_huge(), "8 MiB held");
    });
    blocks.push(a.alloc_block(0, HUGE_META_FROM as usize, 64));
    // The next request finds the arena past the threshold before it maps anything.
    blocks.push(a.alloc_block(0, MIB, 64));
    assert!(blocks.iter().all(|p| !p.is_null()));
    a.with(|s| assert!(s.meta.is_huge() && s.map_meta.is_huge()));
    a.census();
    for p in blocks {
        // SAFETY: live, freed once.
        unsafe { a.free(a.lookup(p)) };
    }
}
