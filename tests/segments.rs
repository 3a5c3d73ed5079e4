//! Small-block segments given back to the arena are reused before fresh pages are faulted in:
//! the segment zone grows downwards (each chunk mapped below the last), so it takes its
//! highest-addressed fit, its oldest memory, where blocks take their lowest. Contents are
//! checked before every free.
use tensorpool::TensorPool;

#[global_allocator]
static ALLOC: TensorPool = TensorPool::new();

/// `n` blocks of 1 KiB (about 4,000 to a segment), each written with its index.
fn fill(n: usize) -> Vec<Vec<u8>> {
    (0..n).map(|i| vec![(i % 251) as u8; 1000]).collect()
}

fn check(v: &[Vec<u8>]) {
    for (i, b) in v.iter().enumerate() {
        assert!(b.iter().all(|&x| x == (i % 251) as u8), "block {i} changed");
    }
}

#[test]
fn freed_segments_are_reused_before_fresh_pages() {
    const N: usize = 60_000;
    // Round 1 (60 MB) maps chunks of two, four, eight and sixteen segments, using one of the
    // last. Freed, the segments go back to the arena dirty (but the heap's spare and those
    // holding a direct page).
    let v = fill(N);
    check(&v);
    drop(v);
    let before = ALLOC.stats();
    assert!(
        before.segment_unmaps >= 8,
        "the segments went back: {}",
        before.segment_unmaps
    );
    // Round 2 needs as many segments: all of them are there, dirty. Taking the lowest fit
    // first (the old policy) took the clean segments below the one round 1 used in the
    // newest chunk before the dirty ones above.
    let v = fill(N);
    check(&v);
    let after = ALLOC.stats();
    assert!(
        after.arena.clean_bytes >= before.arena.clean_bytes,
        "fresh pages taken while freed segments were dirty: clean {} -> {}, dirty {} -> {}",
        before.arena.clean_bytes,
        after.arena.clean_bytes,
        before.arena.dirty_bytes,
        after.arena.dirty_bytes
    );
    assert!(after.arena.dirty_bytes < before.arena.dirty_bytes);
    drop(v);
}
