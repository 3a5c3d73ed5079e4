//! Per-kind large pools: cached-block lists, LRU eviction, recycling across kinds, trim and the
//! counters, under concurrent release and reuse.
#![cfg(loom)]

use loom::sync::Arc;
use loom::thread;
use loom_tests::{check, stamp};
use tensorpool::loom_model::{KindCensus, LargePool};

/// A small large block: one class, no recycling (that starts at 256 KiB).
const SIZE: usize = 64 << 10;

/// The invariants every model checks at its end (the census itself checks the lists' structure,
/// that LRU order is release order and that `cached_bytes` matches the cached blocks): no live
/// bytes once everything is freed, each request counted once as a hit, a miss or a recycled
/// block, capacity held after the last eviction step, and recycled bytes all donated by someone.
fn check_quiescent(census: &[KindCensus]) {
    let (mut recycled, mut donated) = (0, 0);
    for (k, c) in census.iter().enumerate() {
        let n = &c.counters;
        assert_eq!(
            n.live_bytes, 0,
            "kind {k}: live bytes after every free: {n:?}"
        );
        assert_eq!(
            n.requests,
            n.hits + n.misses + n.recycled,
            "kind {k}: {n:?}"
        );
        assert!(
            n.cached_bytes == 0 || n.live_bytes + n.cached_bytes <= c.capacity as u64,
            "kind {k}: capacity {} not held: {n:?}",
            c.capacity
        );
        recycled += n.recycled_bytes;
        donated += n.donated_bytes;
    }
    assert_eq!(recycled, donated, "recycled bytes not all donated");
}

/// Two threads release and reuse blocks of one kind while a third trims. No block is handed out
/// twice, the counters add up, and whatever stays cached is in release order.
#[test]
fn release_reuse_and_trim() {
    loom_tests::model("release_reuse_and_trim", || {
        let pool = Arc::new(LargePool::new(usize::MAX));
        let p1 = pool.alloc(0, SIZE) as usize;
        let p2 = pool.alloc(0, SIZE) as usize;
        let worker = |p: usize, who: u8| {
            let pool = pool.clone();
            thread::spawn(move || {
                // SAFETY: `p` is live and freed once, here.
                unsafe { pool.free(p as *mut u8) };
                let q = pool.alloc(0, SIZE);
                assert!(!q.is_null());
                // SAFETY: this thread holds the block.
                unsafe { stamp(q, SIZE, who) };
                q as usize
            })
        };
        let t1 = worker(p1, 1);
        let t2 = worker(p2, 2);
        pool.trim();
        let (q1, q2) = (t1.join().unwrap() as *mut u8, t2.join().unwrap() as *mut u8);
        assert_ne!(q1, q2, "one block handed to two threads");
        // SAFETY: this thread holds the block.
        unsafe { check(q1, SIZE, 1) };
        // SAFETY: this thread holds the block.
        unsafe { check(q2, SIZE, 2) };
        // SAFETY: both live, freed once.
        unsafe {
            pool.free(q1);
            pool.free(q2);
        }
        let census = pool.census();
        check_quiescent(&census);
        let n = &census[0].counters;
        assert_eq!(n.requests, 4);
        assert_eq!(census[0].cached.len(), 2, "both last blocks stay cached");
    });
}

/// Three threads release blocks into a kind whose capacity holds two: exactly one is evicted,
/// and it is the least recently released one (the two cached are the last two released, newest
/// first).
#[test]
fn eviction_keeps_the_most_recently_released() {
    loom_tests::model("eviction_keeps_the_most_recently_released", || {
        let class = LargePool::class_size(SIZE);
        let pool = Arc::new(LargePool::new(2 * class));
        let blocks: Vec<usize> = (0..3).map(|_| pool.alloc(0, SIZE) as usize).collect();
        let threads: Vec<_> = blocks[..2]
            .iter()
            .map(|&p| {
                let pool = pool.clone();
                // SAFETY: live, freed once.
                thread::spawn(move || unsafe { pool.free(p as *mut u8) })
            })
            .collect();
        // SAFETY: live, freed once.
        unsafe { pool.free(blocks[2] as *mut u8) };
        for t in threads {
            t.join().unwrap();
        }
        let census = pool.census();
        check_quiescent(&census);
        let c = &census[0];
        assert_eq!(c.counters.evictions, 1, "{:?}", c.counters);
        assert_eq!(c.cached.len(), 2);
        // The census checked the cached blocks are in release order; the evicted one must be
        // older than both (release clocks 0, 1, 2 were handed out, one per free).
        let stamps: Vec<usize> = c.cached.iter().map(|&(_, _, t)| t).collect();
        assert_eq!(stamps, [2, 1], "evicted a block other than the oldest");
    });
}

/// A request of one kind recycles the pages of another kind's cached block while that kind
/// reuses and releases it concurrently: the two never share pages, the bytes moved are counted
/// on both sides, and the lists stay consistent.
#[test]
fn recycling_across_kinds_races_with_reuse() {
    const BIG: usize = 512 << 10;
    loom_tests::model("recycling_across_kinds_races_with_reuse", || {
        let pool = Arc::new(LargePool::new(usize::MAX));
        let v = pool.alloc(1, BIG);
        // SAFETY: this thread holds the block.
        unsafe { stamp(v, BIG, 7) };
        // SAFETY: live, freed once: now cached in kind 1.
        unsafe { pool.free(v) };
        let p2 = pool.clone();
        let reuser = thread::spawn(move || {
            let q = p2.alloc(1, BIG);
            assert!(!q.is_null());
            // SAFETY: this thread holds the block.
            unsafe { stamp(q, BIG, 1) };
            // SAFETY: this thread holds the block.
            unsafe { check(q, BIG, 1) };
            // SAFETY: live, freed once.
            unsafe { p2.free(q) };
        });
        // A different class of another kind: no hit, so it recycles whatever is cached.
        let r = pool.alloc(0, BIG + (128 << 10));
        assert!(!r.is_null());
        // SAFETY: this thread holds the block.
        unsafe { stamp(r, BIG, 2) };
        reuser.join().unwrap();
        // SAFETY: this thread holds the block.
        unsafe { check(r, BIG, 2) };
        // SAFETY: live, freed once.
        unsafe { pool.free(r) };
        let census = pool.census();
        check_quiescent(&census);
        assert_eq!(census[0].counters.requests, 1);
        assert_eq!(census[1].counters.requests, 2);
    });
}
