//! The extent arena through the global allocator: freed memory of any kind serves any kind's next
//! request from resident pages (no faults, resident memory flat), freed neighbours coalesce, a
//! block grows by `realloc` into a free neighbour without moving, and the process's mapping count
//! stays flat however many blocks come and go.
use std::alloc::{GlobalAlloc, Layout};
use tensorpool::{with_kind, PoolConfig, TensorKind, TensorPool};
mod common;

// The arena's own behaviour is under test: no thread cache in front of it, no decay, and 4 KiB
// pages, the layout whose extents the assertions count (blocks back to back; with huge pages,
// blocks of 2 MiB or more start on 2 MiB boundaries: tests/huge_pages.rs).
#[global_allocator]
static ALLOC: TensorPool = TensorPool::with_config(
    PoolConfig::new()
        .with_thread_cache(0)
        .with_decay_ms(-1)
        .with_huge_pages(false),
);

const MIB: usize = 1 << 20;

fn minor_faults() -> u64 {
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) };
    ru.ru_minflt as u64
}

fn mappings() -> usize {
    std::fs::read_to_string("/proc/self/maps")
        .unwrap()
        .lines()
        .count()
}

fn alloc(kind: TensorKind, bytes: usize) -> (*mut u8, Layout) {
    let l = Layout::from_size_align(bytes, 64).unwrap();
    let p = with_kind(kind, || unsafe { ALLOC.alloc(l) });
    assert!(!p.is_null());
    (p, l)
}

fn fill(p: *mut u8, bytes: usize, v: u8) {
    unsafe { std::ptr::write_bytes(p, v, bytes) };
}

fn check(p: *mut u8, bytes: usize, v: u8) {
    let s = unsafe { std::slice::from_raw_parts(p, bytes) };
    assert!(s.iter().all(|&b| b == v), "contents changed");
}

/// One test function: the checks read process-wide counters, faults and resident memory.
#[test]
fn freed_memory_of_any_kind_serves_any_kind_without_faults() {
    ALLOC.trim();
    // A victim larger than the request: the request takes part of its pages.
    let (a, la) = alloc(TensorKind::Activation, 10 * MIB);
    fill(a, 10 * MIB, 0x11);
    unsafe { ALLOC.dealloc(a, la) };
    let act = ALLOC.large_counters(TensorKind::Activation);
    assert!(act.cached_bytes >= 10 * MIB as u64);
    let rss0 = tensorpool::resident_bytes().unwrap();
    let f0 = minor_faults();
    let att0 = ALLOC.large_counters(TensorKind::Attention);
    let (b, lb) = alloc(TensorKind::Attention, 6 * MIB);
    fill(b, 6 * MIB, 0x22);
    let faults = minor_faults() - f0;
    let rss1 = tensorpool::resident_bytes().unwrap();
    let att1 = ALLOC.large_counters(TensorKind::Attention);
    let act1 = ALLOC.large_counters(TensorKind::Activation);
    assert_eq!(att1.misses, att0.misses, "no fresh pages: {att1:?}");
    assert_eq!(att1.recycled - att0.recycled, 1, "{att1:?}");
    assert!(faults < 64, "{faults} faults writing a reused 6 MiB block");
    assert!(rss1 < rss0 + MIB, "resident grew from {rss0} to {rss1}");
    assert!(act1.donated_bytes - act.donated_bytes >= 6 * MIB as u64);
    // What the request did not take stays cached for the activations.
    assert!(act1.cached_bytes >= 3 * MIB as u64 && act1.cached_bytes < 5 * MIB as u64);
    check(b, 6 * MIB, 0x22);

    // Three neighbours freed coalesce with the attention block into one 15 MiB extent (the KV
    // blocks took the 4 MiB the activations kept and 5 MiB of fresh pages after it), which
    // serves a request larger than any of its parts.
    let kv: Vec<_> = (0..3u8)
        .map(|i| {
            let (p, l) = alloc(TensorKind::KvCache, 3 * MIB);
            fill(p, 3 * MIB, i);
            (p, l)
        })
        .collect();
    for (p, l) in kv {
        unsafe { ALLOC.dealloc(p, l) };
    }
    unsafe { ALLOC.dealloc(b, lb) };
    let cached: u64 = ALLOC
        .all_large_counters()
        .iter()
        .map(|c| c.cached_bytes)
        .sum();
    assert!(cached >= 15 * MIB as u64, "{cached}");
    let img0 = ALLOC.large_counters(TensorKind::ImageEmbedding);
    let rss0 = tensorpool::resident_bytes().unwrap();
    let f0 = minor_faults();
    let (c, lc) = alloc(TensorKind::ImageEmbedding, 15 * MIB);
    fill(c, 15 * MIB, 0x33);
    let faults = minor_faults() - f0;
    let rss1 = tensorpool::resident_bytes().unwrap();
    let img1 = ALLOC.large_counters(TensorKind::ImageEmbedding);
    assert_eq!(
        img1.misses, img0.misses,
        "one coalesced extent held it: {img1:?}"
    );
    assert!(faults < 64, "{faults} faults");
    assert!(rss1 < rss0 + MIB, "resident grew from {rss0} to {rss1}");
    check(c, 15 * MIB, 0x33);
    unsafe { ALLOC.dealloc(c, lc) };

    // A KV cache grown by realloc into its free neighbour keeps its address and contents.
    let (kv, lkv) = alloc(TensorKind::KvCache, 4 * MIB);
    fill(kv, 4 * MIB, 0x44);
    let grown0 = ALLOC.arena_counters().grown_in_place;
    let kv2 = unsafe { ALLOC.realloc(kv, lkv, 12 * MIB) };
    assert_eq!(kv2, kv, "grown in place");
    assert_eq!(ALLOC.arena_counters().grown_in_place, grown0 + 1);
    check(kv2, 4 * MIB, 0x44);
    fill(kv2, 12 * MIB, 0x55);
    // A realloc outside the kind's scope keeps the block's kind.
    let kv3 = unsafe {
        ALLOC.realloc(
            kv2,
            Layout::from_size_align(12 * MIB, 64).unwrap(),
            200 * MIB,
        )
    };
    assert!(!kv3.is_null());
    assert_eq!(unsafe { ALLOC.kind_of(kv3) }, TensorKind::KvCache);
    check(kv3, 12 * MIB, 0x55);
    unsafe { ALLOC.dealloc(kv3, Layout::from_size_align(200 * MIB, 64).unwrap()) };

    let released = ALLOC.trim();
    assert!(released >= 200 * MIB, "trim released {released}");
    for k in TensorKind::ALL {
        let c = ALLOC.large_counters(k);
        assert_eq!((c.cached_bytes, c.live_bytes), (0, 0), "{k:?}: {c:?}");
    }
}

/// Thousands of blocks of random sizes and kinds, a window of them live, contents checked:
/// the mapping count and the arena's regions stay flat after warm-up.
#[test]
fn the_mapping_count_stays_flat_under_churn() {
    if std::env::var_os("TENSORPOOL_TEST_CHILD").is_none() {
        common::run_child_test("the_mapping_count_stays_flat_under_churn", &[]);
        return;
    }
    let mut rng = common::Rng(0x5eed);
    let mut live: Vec<(*mut u8, Layout, u8)> = Vec::new();
    let mut after_warmup = 0;
    let mut max_maps = 0;
    for step in 0..6000usize {
        if live.len() > 40 || (!live.is_empty() && rng.below(2) == 0) {
            let (p, l, v) = live.swap_remove(rng.below(live.len() as u64));
            check(p, 64.min(l.size()), v);
            check(unsafe { p.add(l.size() - 64) }, 64, v);
            unsafe { ALLOC.dealloc(p, l) };
        } else {
            let bytes = if rng.below(10) == 0 {
                (1 + rng.below(32)) * MIB
            } else {
                20_000 + rng.below(2 * MIB as u64)
            };
            let kind = TensorKind::ALL[rng.below(6)];
            let (p, l) = alloc(kind, bytes);
            let v = step as u8;
            fill(p, 64, v);
            fill(unsafe { p.add(bytes - 64) }, 64, v);
            live.push((p, l, v));
        }
        if step == 500 {
            after_warmup = mappings();
        }
        // With the expensive checks compiled in, the whole arena is checked as it goes.
        #[cfg(feature = "check")]
        if step % 50 == 0 {
            ALLOC.check_arena();
        }
        if step > 500 {
            max_maps = max_maps.max(mappings());
        }
    }
    let regions = ALLOC.arena_counters().regions;
    eprintln!("mappings after warm-up {after_warmup}, max {max_maps}; regions {regions}");
    assert!(max_maps <= after_warmup + 8, "{after_warmup} -> {max_maps}");
    assert!(regions <= 4, "{regions} regions");
    for (p, l, _) in live {
        unsafe { ALLOC.dealloc(p, l) };
    }
}
