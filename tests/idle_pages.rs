//! Small-block pages emptied while their segment stays in use go back to the OS once idle for
//! the delay (the decay time, at most 1 s), at the owning thread's next slow path, and not
//! where decay never runs (checked page by page with `mincore`). Contents are checked before
//! every free. Each case runs alone in a child process, under its own `TENSORPOOL_DECAY_MS`.
use std::time::Duration;
use tensorpool::{PoolConfig, TensorPool};
mod common;

// 4 KiB pages: a segment on huge pages is never purged in part.
#[global_allocator]
static ALLOC: TensorPool = TensorPool::with_config(PoolConfig::new().with_huge_pages(false));

const SLOT: usize = 64 << 10;

/// Resident 4 KiB pages of the 64 KiB slot at `base` (`mincore` reads no data).
fn resident(base: usize) -> usize {
    let mut v = [0u8; SLOT / 4096];
    // SAFETY: the slot lies in a segment the arena keeps mapped; `v` has a byte per page.
    let r = unsafe { libc::mincore(base as *mut _, SLOT, v.as_mut_ptr()) };
    assert_eq!(r, 0);
    v.iter().filter(|&&b| b & 1 != 0).count()
}

/// After `ballast` 1 KiB blocks kept throughout, fill about ten slots with 1 KiB blocks, free
/// them, wait `wait`, allocate a block of another class (a slow path), and return the slots with
/// the resident pages each had after the frees and after that allocation.
fn run(wait: Duration, ballast: usize) -> Vec<(usize, usize, usize)> {
    // No `ALLOC.init()` and no large block: the configuration (the environment's decay time)
    // must apply at the first small allocation's slow path.
    let ballast: Vec<Vec<u8>> = (0..ballast).map(|i| vec![(i % 13) as u8; 1000]).collect();
    // Keeps a page of another class, and so the segment, in use throughout.
    let keep = Box::new([7u8; 100]);
    let blocks: Vec<Vec<u8>> = (0..640).map(|i| vec![(i % 251) as u8; 1000]).collect();
    let mut slots: Vec<usize> = blocks
        .iter()
        .map(|b| b.as_ptr() as usize & !(SLOT - 1))
        .collect();
    slots.sort_unstable();
    slots.dedup();
    for (i, b) in blocks.iter().enumerate() {
        assert!(b.iter().all(|&x| x == (i % 251) as u8), "block {i} changed");
    }
    drop(blocks);
    let before: Vec<usize> = slots.iter().map(|&s| resident(s)).collect();
    std::thread::sleep(wait);
    let other = vec![1u8; 3000];
    let after: Vec<usize> = slots.iter().map(|&s| resident(s)).collect();
    assert!(keep.iter().all(|&x| x == 7) && other.iter().all(|&x| x == 1));
    for (i, b) in ballast.iter().enumerate() {
        assert!(
            b.iter().all(|&x| x == (i % 13) as u8),
            "ballast block {i} changed"
        );
    }
    slots
        .iter()
        .zip(before.iter().zip(&after))
        .map(|(&s, (&b, &a))| (s, b, a))
        .collect()
}

/// Of `run`'s slots, at most two still resident after the delay: the class's direct page
/// stays (it is never given back while direct), and the new block's page may reuse one.
fn assert_idle_pages_gone(r: &[(usize, usize, usize)]) {
    let still = r.iter().filter(|&&(_, _, a)| a > 0).count();
    assert!(
        still <= 2,
        "idle pages still resident after the delay: {r:x?}"
    );
}

#[test]
fn idle_pages_go_back_after_the_delay() {
    if std::env::var_os("TENSORPOOL_TEST_CHILD").is_none() {
        common::run_child_test(
            "idle_pages_go_back_after_the_delay",
            &[("TENSORPOOL_DECAY_MS", "200")],
        );
        return;
    }
    let r = run(Duration::from_millis(500), 0);
    assert!(r.len() >= 10, "the blocks took {} slots", r.len());
    let full = r.iter().filter(|&&(_, b, _)| b == SLOT / 4096).count();
    assert!(
        full >= 9,
        "freed pages stay resident for reuse at first: {r:x?}"
    );
    assert_idle_pages_gone(&r);
}

/// On 4 KiB pages, a segment taken for a heap that grows densely (full segments of blocks it
/// keeps before it: `DENSE_GROWTH_SEGMENTS`) has its idle pages purged like any other.
#[test]
fn idle_pages_of_a_dense_heap_go_back_on_small_pages() {
    if std::env::var_os("TENSORPOOL_TEST_CHILD").is_none() {
        common::run_child_test(
            "idle_pages_of_a_dense_heap_go_back_on_small_pages",
            &[("TENSORPOOL_DECAY_MS", "200")],
        );
        return;
    }
    // Two segments hold 8,064 blocks of this class (64 a page); two pages more, so that neither
    // has a free slot and the freed blocks start a page of their own.
    let r = run(Duration::from_millis(500), 8_192);
    assert_idle_pages_gone(&r);
}

#[test]
fn nothing_goes_back_where_decay_never_runs() {
    if std::env::var_os("TENSORPOOL_TEST_CHILD").is_none() {
        common::run_child_test(
            "nothing_goes_back_where_decay_never_runs",
            &[("TENSORPOOL_DECAY_MS", "-1")],
        );
        return;
    }
    let r = run(Duration::from_millis(300), 0);
    let kept = r.iter().filter(|&&(_, b, a)| a == b && b > 0).count();
    assert!(
        kept + 1 >= r.len(),
        "pages purged though decay never runs: {r:x?}"
    );
}
