//! The extent arena: first fit, coalescing across kinds with exact shares, capacity purges in
//! release order, decay purges that drop the lock for the system call, trim, under concurrent
//! release and reuse.
#![cfg(loom)]

use loom::sync::Arc;
use loom::thread;
use loom_tests::{check, stamp};
use tensorpool::loom_model::{LargePool, PoolCensus};

/// A block size that gets no cache colour (2 MiB and up start on their extent's first byte),
/// so that layouts are exact.
const SIZE: usize = 2 << 20;

/// The invariants every model checks at its end, besides what the census checks itself (the
/// extents tile each region, trees and the release-order list hold exactly the free and dirty
/// extents, shares add up to each extent's size and to the kinds' cached bytes, and live + dirty
/// + clean == mapped): no live bytes once everything is freed, each request counted once as a
/// hit or a miss, and bytes taken across kinds counted on both sides.
fn check_quiescent(c: &PoolCensus) {
    assert_eq!(c.census.live, 0, "{c:?}");
    let (mut recycled, mut donated) = (0, 0);
    for (k, n) in c.kinds.iter().enumerate() {
        assert_eq!(
            n.live_bytes, 0,
            "kind {k}: live bytes after every free: {n:?}"
        );
        assert_eq!(n.requests, n.hits + n.misses, "kind {k}: {n:?}");
        recycled += n.recycled_bytes;
        donated += n.donated_bytes;
    }
    assert_eq!(
        recycled, donated,
        "bytes taken across kinds not counted on both sides"
    );
}

/// Two threads free and reuse blocks of one kind while a third trims. No block is handed out
/// twice (each holder's stamp survives) and the structure holds.
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
        // SAFETY: this thread holds the blocks now.
        unsafe {
            check(q1, SIZE, 1);
            check(q2, SIZE, 2);
            pool.free(q1);
            pool.free(q2);
        }
        let c = pool.census();
        check_quiescent(&c);
        assert_eq!(c.kinds[0].requests, 4);
    });
}

/// Three neighbours, of three kinds: two threads free the outer ones while the middle one is
/// freed here, in every order, so coalescing meets coalescing. One dirty extent remains, its
/// shares a third each, and a request of a fourth kind takes it all without fresh pages.
#[test]
fn neighbours_of_any_kind_coalesce_under_concurrent_frees() {
    loom_tests::model(
        "neighbours_of_any_kind_coalesce_under_concurrent_frees",
        || {
            let pool = Arc::new(LargePool::new(usize::MAX));
            let ps: Vec<usize> = (0..3).map(|k| pool.alloc(k, SIZE) as usize).collect();
            assert_eq!(ps[1] - ps[0], SIZE, "first fit placed them side by side");
            let frees: Vec<_> = [ps[0], ps[2]]
                .into_iter()
                .map(|p| {
                    let pool = pool.clone();
                    // SAFETY: live, freed once.
                    thread::spawn(move || unsafe { pool.free(p as *mut u8) })
                })
                .collect();
            // SAFETY: live, freed once.
            unsafe { pool.free(ps[1] as *mut u8) };
            for t in frees {
                t.join().unwrap();
            }
            let c = pool.census();
            check_quiescent(&c);
            for k in 0..3 {
                assert_eq!(c.kinds[k].cached_bytes, SIZE as u64, "kind {k}'s share");
            }
            let misses = c.kinds[3].misses;
            let big = pool.alloc(3, 3 * SIZE);
            assert_eq!(big as usize, ps[0], "the coalesced extent serves it");
            let c = pool.census();
            assert_eq!(c.kinds[3].misses, misses, "no fresh pages");
            assert_eq!(c.kinds[3].recycled_bytes, 3 * SIZE as u64);
            // SAFETY: live, freed once.
            unsafe { pool.free(big) };
            check_quiescent(&pool.census());
        },
    );
}

/// A kind with room for two cached blocks sees three released concurrently (blocks kept apart
/// by live spacers, so they do not coalesce): exactly one block's bytes go back to the OS, and
/// the two kept are the two released last (the census checks release order).
#[test]
fn capacity_purges_the_least_recently_released() {
    loom_tests::model("capacity_purges_the_least_recently_released", || {
        let pool = Arc::new(LargePool::new(usize::MAX));
        let mut blocks = Vec::new();
        let mut spacers = Vec::new();
        for _ in 0..3 {
            blocks.push(pool.alloc(1, SIZE) as usize);
            spacers.push(pool.alloc(0, SIZE) as usize);
        }
        pool.set_capacity(1, 2 * SIZE);
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
        let c = pool.census();
        let k = &c.kinds[1];
        assert_eq!(k.evicted_bytes, SIZE as u64, "{k:?}");
        assert_eq!(k.cached_bytes, 2 * SIZE as u64, "{k:?}");
        assert_eq!(c.census.dirty, 2, "{c:?}");
        for p in spacers {
            // SAFETY: live, freed once.
            unsafe { pool.free(p as *mut u8) };
        }
        check_quiescent(&pool.census());
    });
}

/// Decay purges an idle extent with the lock dropped for the system call, while another thread
/// frees the extent's neighbour and a third allocates. The neighbour must not coalesce into
/// the extent being purged, the allocation must not take it (it may take it before the purge
/// starts: then there is nothing idle to purge), and when the purge is done the extent comes
/// back clean: the census checks the tiling, the trees and the shares.
#[test]
fn decay_purges_outside_the_lock_while_neighbours_change() {
    const MS: u64 = 1_000_000;
    loom_tests::model(
        "decay_purges_outside_the_lock_while_neighbours_change",
        || {
            let pool = Arc::new(LargePool::new(usize::MAX));
            pool.set_decay_ms(8); // ticks of 1 ms
            let t0 = 1_000 * MS;
            pool.tick_at(t0);
            let x = pool.alloc(2, SIZE);
            let y = pool.alloc(3, SIZE);
            assert_eq!(y as usize - x as usize, SIZE);
            // SAFETY: live, freed once.
            unsafe { pool.free(x) };
            pool.tick_at(t0 + MS); // x has been seen dirty for a whole tick
            let purger = {
                let pool = pool.clone();
                thread::spawn(move || pool.tick_at(t0 + 20 * MS))
            };
            let freer = {
                let pool = pool.clone();
                let y = y as usize;
                // SAFETY: live, freed once.
                thread::spawn(move || unsafe { pool.free(y as *mut u8) })
            };
            let z = pool.alloc(4, SIZE);
            assert!(!z.is_null());
            // SAFETY: this thread holds the block.
            unsafe { stamp(z, SIZE, 9) };
            purger.join().unwrap();
            freer.join().unwrap();
            // SAFETY: this thread holds the block.
            unsafe {
                check(z, SIZE, 9);
                pool.free(z);
            }
            let c = pool.census();
            check_quiescent(&c);
            assert!(
                z == x || c.arena.decay_purged_bytes >= SIZE as u64,
                "the idle extent was neither reused nor purged: {:?}",
                c.arena
            );
        },
    );
}

/// A block grows in place into its neighbour while another thread frees and reallocates at
/// that neighbour: either the growth takes the free space or the other request does, never
/// both.
#[test]
fn growth_in_place_races_with_reuse_of_the_neighbour() {
    loom_tests::model("growth_in_place_races_with_reuse_of_the_neighbour", || {
        let pool = Arc::new(LargePool::new(usize::MAX));
        let a = pool.alloc(2, SIZE);
        let b = pool.alloc(5, SIZE);
        // SAFETY: this thread holds `a`.
        unsafe { stamp(a, SIZE, 1) };
        let other = {
            let pool = pool.clone();
            let b = b as usize;
            thread::spawn(move || {
                // SAFETY: live, freed once.
                unsafe { pool.free(b as *mut u8) };
                let q = pool.alloc(5, SIZE);
                // SAFETY: this thread holds the block.
                unsafe { stamp(q, SIZE, 2) };
                q as usize
            })
        };
        // SAFETY: this thread holds `a`.
        let grew = unsafe { pool.resize(a, 2 * SIZE) };
        if grew {
            // SAFETY: `a` now holds twice the bytes.
            unsafe { stamp(a.add(SIZE), SIZE, 1) };
        }
        let q = other.join().unwrap() as *mut u8;
        // SAFETY: each thread's blocks still carry its stamp: nothing was handed out twice.
        unsafe {
            check(a, SIZE, 1);
            if grew {
                check(a.add(SIZE), SIZE, 1);
            }
            check(q, SIZE, 2);
            pool.free(a);
            pool.free(q);
        }
        check_quiescent(&pool.census());
    });
}
