//! A kind's configured capacity: over it, the kind's least recently released cached memory goes
//! back to the OS first (checked page by page with `mincore`), the capacity holds after every
//! step, and `trim` returns everything. It runs alone in a child process: the arena serves every
//! kind (and new slab segments) from any kind's cached memory, so another thread of the test
//! harness could take some of this kind's.
use allocator_api2::alloc::Allocator;
use std::alloc::Layout;
use tensorpool::{PoolConfig, TensorKind, TensorPool};
mod common;

// The arena's own behaviour is under test: no thread cache in front of it, no decay, and 4 KiB
// pages, whose layout (blocks back to back) the page counts below assume; with huge pages the
// 3 MiB blocks start on 2 MiB boundaries and the 4 MiB request fits a freed block and a gap.
#[global_allocator]
static ALLOC: TensorPool = TensorPool::with_config(
    PoolConfig::new()
        .with_thread_cache(0)
        .with_decay_ms(-1)
        .with_huge_pages(false),
);

const MIB: usize = 1 << 20;
const KIND: TensorKind = TensorKind::TextEmbedding;

fn held(cap: usize) {
    let c = ALLOC.large_counters(KIND);
    assert!(
        c.live_bytes + c.cached_bytes <= cap as u64 || c.cached_bytes == 0,
        "capacity exceeded: {c:?}"
    );
}

/// Resident pages of `[p, p + len)` (a range the arena keeps mapped; `mincore` reads no data).
fn resident_pages(p: *mut u8, len: usize) -> usize {
    let pages = len.div_ceil(4096);
    let mut v = vec![0u8; pages];
    let base = (p as usize) & !4095;
    let r = unsafe { libc::mincore(base as *mut _, pages * 4096, v.as_mut_ptr()) };
    assert_eq!(r, 0);
    v.iter().filter(|&&b| b & 1 != 0).count()
}

#[test]
fn the_least_recently_released_goes_back_first_and_capacity_holds() {
    if std::env::var_os("TENSORPOOL_TEST_CHILD").is_none() {
        common::run_child_test(
            "the_least_recently_released_goes_back_first_and_capacity_holds",
            &[],
        );
        return;
    }
    // Nothing else's cached memory in the arena: only this test's blocks can serve it.
    ALLOC.trim();
    let cap = 19 * MIB;
    ALLOC.set_capacity(KIND, cap);
    assert_eq!(ALLOC.capacity(KIND), cap);
    let h = ALLOC.handle(KIND);
    let l3 = Layout::from_size_align(3 * MIB, 64).unwrap();
    // a, b, c with live spacers between them, so that they do not coalesce when freed. Spacers
    // of the blocks' own size land just after them: first fit put each block in the lowest
    // hole that holds 3 MiB, so no lower hole holds a spacer.
    let mut blocks = Vec::new();
    let mut spacers = Vec::new();
    for _ in 0..3 {
        let p = h.allocate(l3).unwrap().cast::<u8>();
        unsafe { p.as_ptr().write_bytes(1, 3 * MIB) };
        blocks.push(p);
        spacers.push(h.allocate(l3).unwrap().cast::<u8>());
    }
    let (a, b, c) = (blocks[0], blocks[1], blocks[2]);
    held(cap);
    // Release order a, c, b: a is the least recently released.
    for p in [a, c, b] {
        unsafe { h.deallocate(p, l3) };
        held(cap);
    }
    let s = ALLOC.large_counters(KIND);
    assert_eq!(s.cached_bytes, 9 * MIB as u64, "{s:?}");
    for p in [a, b, c] {
        assert_eq!(
            resident_pages(p.as_ptr(), 3 * MIB),
            768,
            "kept resident while cached"
        );
    }
    // A 4 MiB request fits no cached block: fresh pages would take the kind to 22 MiB, over
    // its capacity, so the 3 MiB over go back first, least recently released first: all of a,
    // none of b or c.
    let l4 = Layout::from_size_align(4 * MIB, 64).unwrap();
    let d = h.allocate(l4).unwrap().cast::<u8>();
    unsafe { d.as_ptr().write_bytes(2, 4 * MIB) };
    held(cap);
    let e = ALLOC.large_counters(KIND);
    assert_eq!(e.misses, s.misses + 1, "fresh pages: {e:?}");
    assert_eq!(e.evicted_bytes - s.evicted_bytes, 3 * MIB as u64, "{e:?}");
    assert_eq!(resident_pages(a.as_ptr(), 3 * MIB), 0, "a went back first");
    assert_eq!(
        resident_pages(b.as_ptr(), 3 * MIB),
        768,
        "b was released last: kept"
    );
    assert_eq!(
        resident_pages(c.as_ptr(), 3 * MIB),
        768,
        "c is younger than a: kept"
    );
    assert!(ALLOC.arena_counters().capacity_purged_bytes >= 3 * MIB as u64);
    unsafe { h.deallocate(d, l4) };
    held(cap);
    for p in spacers {
        unsafe { h.deallocate(p, l3) };
        held(cap);
    }
    let s = ALLOC.large_counters(KIND);
    assert!(s.cached_bytes <= cap as u64);
    let released = ALLOC.trim();
    assert!(released >= s.cached_bytes as usize);
    assert_eq!(ALLOC.large_counters(KIND).cached_bytes, 0);
    // Back to following the workload.
    ALLOC.set_capacity(KIND, tensorpool::DEFAULT_CAPACITY);
    assert_eq!(ALLOC.capacity(KIND), usize::MAX);
}
