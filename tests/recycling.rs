//! Cross-class recycling: a request whose class has no cached block takes the pages of other
//! cached blocks (any class, any kind) by moving them, so it neither faults nor grows resident
//! memory, and the block it gets is fully usable.
use std::alloc::{GlobalAlloc, Layout};
use tensorpool::{with_kind, PoolConfig, TensorKind, TensorPool};

// The shared pools' own behaviour is under test: no thread cache in front of them.
#[global_allocator]
static ALLOC: TensorPool = TensorPool::with_config(PoolConfig::new().with_thread_cache(0));

fn minor_faults() -> u64 {
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) };
    ru.ru_minflt as u64
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
    assert!(s.iter().all(|&b| b == v));
}

/// One test function: the checks read process-wide counters and resident memory.
#[test]
fn misses_recycle_cached_pages_of_other_classes_and_kinds() {
    const MIB: usize = 1 << 20;
    ALLOC.trim();

    // One victim larger than the request: its tail moves, its head stays cached.
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
    assert_eq!(att1.recycled - att0.recycled, 1, "{att1:?}");
    assert_eq!(att1.misses, att0.misses);
    assert!(
        faults < 64,
        "{faults} faults writing a recycled 6 MiB block"
    );
    assert!(rss1 < rss0 + MIB, "resident grew from {rss0} to {rss1}");
    assert!(act1.donated_bytes - act.donated_bytes >= 6 * MIB as u64);
    // about 4 MiB of the victim stays cached for its own kind
    assert!(act1.cached_bytes >= 3 * MIB as u64 && act1.cached_bytes < 5 * MIB as u64);
    check(b, 6 * MIB, 0x22);

    // Several victims assembled into one block: contents and faults as above.
    let small: Vec<_> = (0..3u8)
        .map(|i| {
            let (p, l) = alloc(TensorKind::KvCache, 3 * MIB);
            fill(p, 3 * MIB, i);
            (p, l)
        })
        .collect();
    for (p, l) in small {
        unsafe { ALLOC.dealloc(p, l) };
    }
    unsafe { ALLOC.dealloc(b, lb) };
    let cached_before: usize = TensorKind::ALL
        .iter()
        .map(|&k| ALLOC.large_counters(k).cached_bytes as usize)
        .sum();
    assert!(cached_before >= 15 * MIB);
    let rss0 = tensorpool::resident_bytes().unwrap();
    let f0 = minor_faults();
    let (c, lc) = alloc(TensorKind::ImageEmbedding, 20 * MIB);
    fill(c, 20 * MIB, 0x33);
    let faults = minor_faults() - f0;
    let rss1 = tensorpool::resident_bytes().unwrap();
    // Every cached byte was moved in (the first 3 MiB block took the 4 MiB head left above);
    // only the rest faults, and resident memory grows by that rest alone.
    let moved = ALLOC
        .large_counters(TensorKind::ImageEmbedding)
        .recycled_bytes as usize;
    assert!(
        moved + 64 * 1024 >= cached_before,
        "{moved} of {cached_before}"
    );
    let fresh = 20 * MIB - moved.min(20 * MIB);
    assert!(
        faults < (fresh / 4096) as u64 + 64,
        "{faults} faults for {fresh} fresh bytes"
    );
    assert!(
        rss1 < rss0 + fresh + MIB,
        "resident grew from {rss0} to {rss1}"
    );
    check(c, 20 * MIB, 0x33);

    // The recycled block grows, shrinks and frees like any other.
    let c2 = unsafe { ALLOC.realloc(c, lc, 40 * MIB) };
    assert!(!c2.is_null());
    check(c2, 20 * MIB, 0x33);
    fill(c2, 40 * MIB, 0x44);
    unsafe { ALLOC.dealloc(c2, Layout::from_size_align(40 * MIB, 64).unwrap()) };
    let released = ALLOC.trim();
    assert!(released >= 40 * MIB);
    for k in TensorKind::ALL {
        let c = ALLOC.large_counters(k);
        assert_eq!(c.cached_bytes, 0, "{k:?}: {c:?}");
        assert_eq!(c.live_bytes, 0, "{k:?}: {c:?}");
    }
}
