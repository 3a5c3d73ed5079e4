//! A thread's cache of large blocks behind its gate (`heap::hot::ThreadCache`), shared with the
//! threads that take back the caches of sleeping ones (`heap::idle`): the owner frees into it
//! and takes from it while a reclaimer sends it back to the arena.
#![cfg(loom)]

use loom::sync::Arc;
use loom::thread;
use loom_tests::{check, stamp};
use tensorpool::loom_model::{
    large_alloc, large_free, large_live, set_thread_cache, thread_caches_claimed, HeapRef, Registry,
};

/// Above the small classes, so the arena serves it.
const SIZE: usize = 32 << 10;
/// How long a cache must go unused to be taken by an idle look (`heap::idle::IDLE_NS`).
const IDLE: u64 = 100_000_000;

/// Everything back: a last look that takes every cache (no thread is inside any now), then the
/// cache is empty with no claim, its counters say so, the shared total is unclaimed and the
/// arena holds no live block.
fn check_all_back(reg: &Registry, h: HeapRef) {
    reg.reclaim(u64::MAX, None);
    assert_eq!(h.cache_bytes(), (Some((0, 0)), 0), "cache not empty");
    assert_eq!(thread_caches_claimed(), 0, "a claim outlived its cache");
    assert_eq!(large_live(), 0, "a block lost or freed twice");
}

/// The owner frees a block into its cache, takes one back and frees another while a second
/// thread takes every cache not in use. The two never touch the cache at once (loom checks
/// every access to it), every block ends in one place (a block handed out is the one cached,
/// its contents intact), and claims and counters agree.
#[test]
fn the_owner_and_a_reclaimer_never_share_the_cache() {
    loom_tests::model("the_owner_and_a_reclaimer_never_share_the_cache", || {
        set_thread_cache(4 * SIZE, 1);
        let reg = Arc::new(Registry::new());
        let h = reg.acquire();
        let (b1, b2) = (large_alloc(0, SIZE), large_alloc(0, SIZE));
        // SAFETY: both blocks are held here.
        unsafe { (stamp(b1, SIZE, 1), stamp(b2, SIZE, 2)) };
        let (p1, p2) = (b1 as usize, b2 as usize);
        let owner = thread::spawn(move || {
            let (b1, b2) = (p1 as *mut u8, p2 as *mut u8);
            // SAFETY: this thread owns the heap and holds both blocks until it frees them.
            unsafe {
                if !h.cache_put(b1) {
                    large_free(b1);
                }
                let mut q = h.cache_take(0, SIZE);
                if q.is_null() {
                    q = large_alloc(0, SIZE);
                } else {
                    assert_eq!(q, b1, "the cache handed out a block it did not hold");
                    check(q, SIZE, 1);
                }
                stamp(q, SIZE, 3);
                if !h.cache_put(b2) {
                    large_free(b2);
                }
                q as usize
            }
        });
        let freed = reg.reclaim(1, None);
        let q = owner.join().unwrap() as *mut u8;
        assert!(
            freed <= 4 * SIZE + 2 * 4096,
            "claimed more than the limit: {freed}"
        );
        // SAFETY: the owner's last block, held and freed once.
        unsafe {
            check(q, SIZE, 3);
            large_free(q);
        }
        check_all_back(&reg, h);
    });
}

/// A cache goes back to an idle look only after two looks `IDLE` apart with no use between:
/// the owner takes its cached block while a reclaimer looks twice. If the owner got nothing
/// (the block was gone, or a look was inside the cache when it asked), the second look found the
/// cache unused since the first and sent it back.
#[test]
fn an_idle_cache_goes_back_after_two_looks_without_use() {
    loom_tests::model(
        "an_idle_cache_goes_back_after_two_looks_without_use",
        || {
            set_thread_cache(4 * SIZE, 1);
            let reg = Arc::new(Registry::new());
            let h = reg.acquire();
            let b = large_alloc(0, SIZE);
            // SAFETY: the block is held here; this thread owns the heap until the spawn.
            unsafe {
                stamp(b, SIZE, 1);
                assert!(h.cache_put(b), "an empty cache took no block");
            }
            let looks = {
                let reg = reg.clone();
                thread::spawn(move || {
                    let first = reg.reclaim(1, Some(IDLE));
                    assert_eq!(first, 0, "taken at the first look");
                    reg.reclaim(1 + IDLE, Some(IDLE))
                })
            };
            // SAFETY: this thread owns the heap.
            let q = unsafe { h.cache_take(0, SIZE) };
            let freed = looks.join().unwrap();
            assert!(
                !q.is_null() || freed > 0,
                "the owner got nothing, yet the idle cache was not sent back"
            );
            if !q.is_null() {
                assert_eq!(q, b);
                // SAFETY: the block the cache handed out, held and freed once.
                unsafe {
                    check(q, SIZE, 1);
                    large_free(q);
                }
            }
            check_all_back(&reg, h);
        },
    );
}
