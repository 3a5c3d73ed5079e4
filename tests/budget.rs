//! The L3 budget through the public API: each thread's cache of freed large blocks reuses the
//! most recently freed first, holds at most its limit (the coldest blocks flow back to the shared
//! pool), lets larger blocks bypass it, goes back to the pools at thread exit and on `trim`, and
//! the budget says whether a working set fits.
//!
//! Tests run in parallel threads and each uses a kind of its own (counters are per kind; hot
//! caches are per thread). Tests that read the arena's contents, call `trim`, or count on their
//! thread's cache taking every block it frees run alone in a child process: the arena serves
//! any kind from any kind's freed memory, and all threads' caches share one total (the limit
//! times the cores), which parallel tests would fill.
//!
//! A block holds whole pages (its usable bytes plus its cache colour, the offset of its start in
//! its first page); thread caches and the arena count those bytes, read here from the
//! `granted_bytes` counter around each allocation.
use allocator_api2::alloc::Allocator;
use std::alloc::Layout;
use std::ptr::NonNull;
use tensorpool::{PoolConfig, TensorKind, TensorPool};
mod common;

const KIB: usize = 1 << 10;
const MIB: usize = 1 << 20;
/// The thread-cache limit this binary configures.
const LIMIT: usize = MIB;

#[global_allocator]
static ALLOC: TensorPool = TensorPool::with_config(PoolConfig::new().with_thread_cache(LIMIT));

fn in_child() -> bool {
    std::env::var_os("TENSORPOOL_TEST_CHILD").is_some()
}

/// For tests that read the shared pools: run test `name` alone in a child process, where no
/// other test's recycling (which takes cached blocks of any kind) or `trim` can reach its
/// blocks. True in that child (run the body), false in the parent (the child ran it).
fn alone(name: &str) -> bool {
    if in_child() {
        return true;
    }
    common::run_child_test(name, &[]);
    false
}

/// Allocate `l` through `h`, returning the block and the bytes it holds.
fn alloc_held(h: tensorpool::KindHandle, l: Layout) -> (NonNull<u8>, u64) {
    let g0 = ALLOC.large_counters(h.kind()).granted_bytes;
    let p = h.allocate(l).unwrap().cast::<u8>();
    (p, ALLOC.large_counters(h.kind()).granted_bytes - g0)
}

fn fill(p: NonNull<u8>, len: usize, v: u8) {
    unsafe { p.as_ptr().write_bytes(v, len) };
}

fn check(p: NonNull<u8>, len: usize, v: u8) {
    let s = unsafe { std::slice::from_raw_parts(p.as_ptr(), len) };
    assert!(s.iter().all(|&b| b == v), "contents changed");
}

#[test]
fn budget_reports_topology_share_and_limit() {
    if in_child() {
        return;
    }
    let b = ALLOC.budget();
    let (t, _) = ALLOC.topology();
    assert_eq!(b.topology, t);
    assert_eq!(b.share, t.l3 / t.cores);
    assert_eq!(b.thread_limit, LIMIT);
    assert!(b.fits(b.share));
    assert!(!b.fits(b.share + 1));
    // Sizes are rounded to whole lines before summing.
    let line = t.line;
    assert!(b.fits_all(&[b.share - line, line]));
    assert!(!b.fits_all(&[b.share - line, 1, 1]));
    assert!(!b.fits_all(&[usize::MAX, 1]));
    assert!(b.fits_all(&[]));
}

#[test]
fn reuse_is_most_recently_freed_first_without_the_pool() {
    if !alone("reuse_is_most_recently_freed_first_without_the_pool") {
        return;
    }
    let kind = TensorKind::Attention;
    let h = ALLOC.handle(kind);
    let l = Layout::from_size_align(256 * KIB, 64).unwrap();
    let (a, ha) = alloc_held(h, l);
    let (b, hb) = alloc_held(h, l);
    assert!(
        ha >= l.size() as u64 && ha <= (l.size() + 4096) as u64,
        "{ha}"
    );
    fill(a, l.size(), 0xa1);
    fill(b, l.size(), 0xb2);
    let before = ALLOC.large_counters(kind);
    unsafe {
        h.deallocate(a, l);
        h.deallocate(b, l);
    }
    let budget = ALLOC.budget();
    assert_eq!(budget.thread_hot_bytes, ha + hb);
    assert!(budget.hot(kind) >= ha + hb);
    // The frees never reached the shared pool: it still counts both blocks live.
    let mid = ALLOC.large_counters(kind);
    assert_eq!(mid.cached_bytes, before.cached_bytes);
    assert_eq!(mid.live_bytes, before.live_bytes);
    let s = ALLOC.stats();
    assert!(s.kind(kind).hot_bytes >= ha + hb);

    let r1 = h.allocate(l).unwrap().cast::<u8>();
    let r2 = h.allocate(l).unwrap().cast::<u8>();
    assert_eq!((r1, r2), (b, a), "most recently freed first");
    check(r1, l.size(), 0xb2);
    check(r2, l.size(), 0xa1);
    assert_eq!(ALLOC.budget().thread_hot_bytes, 0);
    let after = ALLOC.large_counters(kind);
    assert_eq!(after.requests, before.requests, "no pool request");
    assert_eq!(after.misses, before.misses);
    let s2 = ALLOC.stats();
    assert_eq!(s2.kind(kind).requests, s.kind(kind).requests + 2);
    assert_eq!(s2.kind(kind).hits, s.kind(kind).hits + 2);
    unsafe {
        h.deallocate(r1, l);
        h.deallocate(r2, l);
    }
}

#[test]
fn the_coldest_blocks_flow_back_over_the_limit() {
    if !alone("the_coldest_blocks_flow_back_over_the_limit") {
        return;
    }
    let kind = TensorKind::KvCache;
    let h = ALLOC.handle(kind);
    // Four of these fit the 1 MiB limit (each holds at most one page more), five do not.
    let l = Layout::from_size_align(240 * KIB, 64).unwrap();
    let blocks: Vec<_> = (0..6u8)
        .map(|i| {
            let (p, held) = alloc_held(h, l);
            fill(p, l.size(), i);
            (p, held)
        })
        .collect();
    let before = ALLOC.large_counters(kind);
    for &(p, _) in &blocks {
        unsafe { h.deallocate(p, l) };
    }
    // The first two freed (the coldest) went back to the arena.
    let hot: u64 = blocks[2..].iter().map(|b| b.1).sum();
    let cold: u64 = blocks[..2].iter().map(|b| b.1).sum();
    assert_eq!(ALLOC.budget().thread_hot_bytes, hot);
    let mid = ALLOC.large_counters(kind);
    assert_eq!(mid.cached_bytes - before.cached_bytes, cold);
    assert_eq!(before.live_bytes - mid.live_bytes, cold);
    // Reuse takes the hot ones newest first, then memory the arena kept resident: no fresh
    // pages at all.
    let again: Vec<_> = (0..6)
        .map(|_| h.allocate(l).unwrap().cast::<u8>())
        .collect();
    let expect: Vec<_> = blocks[2..].iter().rev().map(|b| b.0).collect();
    assert_eq!(again[..4], expect[..]);
    let after = ALLOC.large_counters(kind);
    assert_eq!(after.misses, mid.misses, "served from resident memory");
    assert_eq!(after.hits - mid.hits, 2);
    for (i, &(p, _)) in blocks.iter().enumerate().skip(2) {
        check(p, l.size(), i as u8);
    }
    let mut starts: Vec<_> = again.iter().map(|p| p.as_ptr() as usize).collect();
    starts.sort();
    starts.dedup();
    assert_eq!(starts.len(), 6, "a block handed out twice");
    for &p in &again {
        unsafe { h.deallocate(p, l) };
    }
}

#[test]
fn blocks_over_the_limit_bypass_the_thread_cache() {
    if !alone("blocks_over_the_limit_bypass_the_thread_cache") {
        return;
    }
    let kind = TensorKind::ImageEmbedding;
    let h = ALLOC.handle(kind);
    let l = Layout::from_size_align(2 * MIB, 64).unwrap();
    let p = h.allocate(l).unwrap().cast::<u8>();
    fill(p, l.size(), 7);
    let hot = ALLOC.budget().thread_hot_bytes;
    let before = ALLOC.large_counters(kind);
    unsafe { h.deallocate(p, l) };
    assert_eq!(ALLOC.budget().thread_hot_bytes, hot);
    let after = ALLOC.large_counters(kind);
    assert_eq!(after.cached_bytes - before.cached_bytes, l.size() as u64);
}

#[test]
fn kinds_and_alignment_are_respected_and_zeroing_holds() {
    if !alone("kinds_and_alignment_are_respected_and_zeroing_holds") {
        return;
    }
    let (ka, kb) = (TensorKind::TextEmbedding, TensorKind::Activation);
    // Resident memory in the arena first (a block over the cache's limit bypasses the cache),
    // so that the misses below are served without fresh pages and leave the cache as it is
    // (a miss that would fault pages in sends the cache back first).
    let big = Layout::from_size_align(4 * MIB, 64).unwrap();
    let x = ALLOC.handle(kb).allocate(big).unwrap().cast::<u8>();
    fill(x, big.size(), 0x33);
    unsafe { ALLOC.handle(kb).deallocate(x, big) };
    let l = Layout::from_size_align(128 * KIB, 64).unwrap();
    let a = ALLOC.handle(ka).allocate(l).unwrap().cast::<u8>();
    fill(a, l.size(), 0xee);
    unsafe { ALLOC.handle(ka).deallocate(a, l) };
    // Another kind does not take it.
    let b = ALLOC.handle(kb).allocate(l).unwrap().cast::<u8>();
    assert_ne!(a, b);
    assert_eq!(unsafe { ALLOC.kind_of(b.as_ptr()) }, kb);
    // A stricter alignment than the cached block's start does not take it either.
    let big_align = Layout::from_size_align(128 * KIB, 1 << 21).unwrap();
    let c = ALLOC.handle(ka).allocate(big_align).unwrap().cast::<u8>();
    assert_eq!(c.as_ptr() as usize % (1 << 21), 0);
    // Zeroed allocation of a hot block is zero.
    let z = ALLOC.handle(ka).allocate_zeroed(l).unwrap().cast::<u8>();
    assert_eq!(z, a, "the hot block is reused");
    check(z, l.size(), 0);
    unsafe {
        ALLOC.handle(ka).deallocate(z, l);
        ALLOC.handle(ka).deallocate(c, big_align);
        ALLOC.handle(kb).deallocate(b, l);
    }
}

#[test]
fn thread_exit_and_trim_send_the_cache_back() {
    if !alone("thread_exit_and_trim_send_the_cache_back") {
        return;
    }
    let kind = TensorKind::General;
    let l = Layout::from_size_align(192 * KIB, 64).unwrap();
    let held = std::thread::spawn(move || {
        let h = ALLOC.handle(kind);
        let (p, held) = alloc_held(h, l);
        fill(p, l.size(), 0x5a);
        unsafe { h.deallocate(p, l) };
        assert_eq!(ALLOC.budget().thread_hot_bytes, held);
        held
    })
    .join()
    .unwrap();
    // The exited thread's cache went back to the arena, where this thread's request of the
    // same size takes it: resident memory, no fresh pages.
    let c = ALLOC.large_counters(kind);
    assert!(c.cached_bytes >= held, "{c:?}");
    let h = ALLOC.handle(kind);
    let (p, held2) = alloc_held(h, l);
    assert_eq!(ALLOC.large_counters(kind).misses, c.misses);
    fill(p, l.size(), 0x6b);
    unsafe { h.deallocate(p, l) };
    assert_eq!(ALLOC.budget().thread_hot_bytes, held2);
    let released = ALLOC.trim();
    assert!(released >= 192 * KIB, "trim released {released}");
    assert_eq!(ALLOC.budget().thread_hot_bytes, 0);
    assert_eq!(ALLOC.large_counters(kind).cached_bytes, 0);
}

/// A request the thread cache cannot serve, and that would take fresh pages, first sends the
/// cache's blocks back: the request is then served from their resident memory, where before it
/// faulted fresh pages in beside them.
#[test]
fn cached_blocks_go_back_before_fresh_pages_are_taken() {
    if !alone("cached_blocks_go_back_before_fresh_pages_are_taken") {
        return;
    }
    let kind = TensorKind::KvCache;
    let h = ALLOC.handle(kind);
    let la = Layout::from_size_align(768 * KIB, 64).unwrap();
    let (a, held) = alloc_held(h, la);
    fill(a, la.size(), 0x11);
    unsafe { h.deallocate(a, la) };
    assert_eq!(
        ALLOC.budget().thread_hot_bytes,
        held,
        "the freed block is cached"
    );
    // Classes more than four apart: the cache has no fit for it.
    let lb = Layout::from_size_align(256 * KIB, 64).unwrap();
    let misses = ALLOC.large_counters(kind).misses;
    let (b, _) = alloc_held(h, lb);
    let c = ALLOC.large_counters(kind);
    assert_eq!(c.misses, misses, "served from resident memory: {c:?}");
    assert_eq!(ALLOC.budget().thread_hot_bytes, 0, "the cache went back");
    let (lo, hi) = (a.as_ptr() as usize & !4095, a.as_ptr() as usize + la.size());
    assert!(
        (lo..hi).contains(&(b.as_ptr() as usize)),
        "the request took the cached block's pages"
    );
    fill(b, lb.size(), 0x22);
    check(b, lb.size(), 0x22);
    unsafe { h.deallocate(b, lb) };
}

/// All thread caches together hold at most the limit times the cores that share the L3: with
/// 2 cores and a 1 MiB limit, eight threads that each free a 768 KiB block cache at most 2 MiB
/// between them; the other blocks go back to the arena.
#[test]
fn the_caches_together_hold_at_most_the_cores_share() {
    if !in_child() {
        common::run_child_test(
            "the_caches_together_hold_at_most_the_cores_share",
            &[("TENSORPOOL_CORES", "2")],
        );
        return;
    }
    const THREADS: usize = 8;
    let kind = TensorKind::ImageEmbedding;
    let l = Layout::from_size_align(768 * KIB, 64).unwrap();
    let freed = std::sync::Arc::new(std::sync::Barrier::new(THREADS + 1));
    let read = std::sync::Arc::new(std::sync::Barrier::new(THREADS + 1));
    let threads: Vec<_> = (0..THREADS)
        .map(|i| {
            let (freed, read) = (freed.clone(), read.clone());
            std::thread::spawn(move || {
                let h = ALLOC.handle(kind);
                let p = h.allocate(l).unwrap().cast::<u8>();
                fill(p, l.size(), i as u8);
                check(p, l.size(), i as u8);
                unsafe { h.deallocate(p, l) };
                let mine = ALLOC.budget().thread_hot_bytes;
                freed.wait();
                read.wait();
                mine
            })
        })
        .collect();
    freed.wait();
    let hot = ALLOC.stats().kind(kind).hot_bytes;
    read.wait();
    let mine: u64 = threads.into_iter().map(|t| t.join().unwrap()).sum();
    assert_eq!(mine, hot, "every cached byte is one thread's");
    assert!(
        hot >= 768 * KIB as u64,
        "some thread cached its block: {hot}"
    );
    assert!(
        hot <= 2 * MIB as u64,
        "{hot} bytes cached by {THREADS} threads, over 2 MiB"
    );
    assert_eq!(
        ALLOC.stats().kind(kind).hot_bytes,
        0,
        "exited threads' caches went back"
    );
}

#[test]
fn many_threads_reuse_their_own_blocks_with_contents_intact() {
    if in_child() {
        return;
    }
    let threads: Vec<_> = (0..4u8)
        .map(|t| {
            std::thread::spawn(move || {
                let h = ALLOC.handle(TensorKind::Activation);
                let mut rng = common::Rng(0x9e37_79b9 + t as u64);
                let mut live: Vec<(NonNull<u8>, Layout, u8)> = Vec::new();
                for step in 0..2_000u32 {
                    if live.len() > 6 || (!live.is_empty() && rng.below(2) == 0) {
                        let (p, l, v) = live.swap_remove(rng.below(live.len() as u64));
                        check(p, l.size(), v);
                        unsafe { h.deallocate(p, l) };
                    } else {
                        let size = (20 + rng.below(300)) * KIB;
                        let l = Layout::from_size_align(size, 64).unwrap();
                        let p = h.allocate(l).unwrap().cast::<u8>();
                        let v = (step as u8) ^ t;
                        fill(p, size, v);
                        live.push((p, l, v));
                    }
                    assert!(ALLOC.budget().thread_hot_bytes <= LIMIT as u64);
                }
                for (p, l, v) in live {
                    check(p, l.size(), v);
                    unsafe { h.deallocate(p, l) };
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
}

/// Entry point of the environment tests' children.
#[test]
fn child_entry() {
    if !in_child() {
        return;
    }
    let b = ALLOC.budget();
    println!("limit={}", b.thread_limit);
    let h = ALLOC.handle(TensorKind::Attention);
    let l = Layout::from_size_align(64 * KIB, 64).unwrap();
    let (p, held) = alloc_held(h, l);
    unsafe { h.deallocate(p, l) };
    println!("hot={}", ALLOC.budget().thread_hot_bytes);
    println!("held={held}");
}

#[test]
fn environment_sets_the_limit_and_bad_values_warn() {
    if in_child() {
        return;
    }
    let (out, _) = common::run_child_test("child_entry", &[("TENSORPOOL_THREAD_CACHE", "0")]);
    assert!(
        out.contains("limit=0\n") && out.contains("hot=0\n"),
        "{out}"
    );
    let (out, _) = common::run_child_test("child_entry", &[("TENSORPOOL_THREAD_CACHE", "256K")]);
    let held = out
        .lines()
        .find_map(|l| l.strip_prefix("held="))
        .expect("held line");
    assert!(
        out.contains("limit=262144\n") && out.contains(&format!("hot={held}\n")),
        "{out}"
    );
    let (out, err) = common::run_child_test("child_entry", &[("TENSORPOOL_THREAD_CACHE", "lots")]);
    assert!(out.contains(&format!("limit={LIMIT}\n")), "{out}");
    assert!(
        err.contains("TENSORPOOL_THREAD_CACHE=\"lots\" is not valid")
            && err.contains("keeping 1.0 MiB (1048576 bytes)"),
        "{err}"
    );
    // Values that would be taken for something else, or cut without a word, warn too: the
    // largest number is the "auto" sentinel's, and a cache records sizes in 32 bits.
    for bad in ["18446744073709551615", "1T", "4G", "0.0000001K"] {
        let (out, err) = common::run_child_test("child_entry", &[("TENSORPOOL_THREAD_CACHE", bad)]);
        assert!(out.contains(&format!("limit={LIMIT}\n")), "{bad}: {out}");
        assert!(
            err.contains(&format!("TENSORPOOL_THREAD_CACHE={bad:?} is not valid")),
            "{bad}: {err}"
        );
    }
}
