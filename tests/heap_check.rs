//! The thread heaps' invariants through the global allocator (built with `--features check`):
//! the census walks the calling thread's heap after each phase of a cross-thread workload and
//! panics on a broken invariant; the per-kind counts it returns are checked exactly, because
//! nothing but this test allocates under the kinds it uses.
#![cfg(feature = "check")]

use std::alloc::{GlobalAlloc, Layout};
use std::sync::Barrier;
use tensorpool::{with_kind, HeapCensus, TensorKind, TensorPool};

#[global_allocator]
static ALLOC: TensorPool = TensorPool::new();

const SIZES: [usize; 6] = [16, 48, 200, 1024, 4000, 16 << 10];

fn census() -> HeapCensus {
    ALLOC
        .check_heap()
        .expect("this thread has allocated, so it has a heap")
}

fn layout(i: usize) -> Layout {
    Layout::from_size_align(SIZES[i % SIZES.len()], 8).unwrap()
}

/// Allocate `n` blocks of mixed small sizes under `kind`, each filled with a pattern of `seed`.
fn alloc_blocks(kind: TensorKind, n: usize, seed: u8, out: &mut Vec<usize>) {
    with_kind(kind, || {
        for i in 0..n {
            let l = layout(i);
            // SAFETY: non-zero size.
            let p = unsafe { ALLOC.alloc(l) };
            assert!(!p.is_null());
            // SAFETY: `p` holds `l.size()` bytes.
            unsafe { p.write_bytes(seed.wrapping_add(i as u8), l.size()) };
            out.push(p as usize);
        }
    });
}

/// Check and free the blocks `alloc_blocks` made, `ps[j]` being its block `first + j`.
fn free_blocks(ps: &[usize], first: usize, seed: u8) {
    for (j, &p) in ps.iter().enumerate() {
        let i = first + j;
        let l = layout(i);
        let p = p as *mut u8;
        // SAFETY: a live block of `l.size()` bytes, freed once here.
        unsafe {
            let s = std::slice::from_raw_parts(p, l.size());
            let want = seed.wrapping_add(i as u8);
            assert!(s.iter().all(|&b| b == want), "block {i} overwritten");
            ALLOC.dealloc(p, l);
        }
    }
}

/// Remote frees wait on the owner's pages until it needs them; its next allocations take them
/// back; its own frees and a trim leave nothing used.
#[test]
fn remote_frees_are_counted_on_the_owners_pages_until_taken_back() {
    const N: usize = 600;
    const K: TensorKind = TensorKind::Attention;
    let ki = K.index();
    let mut mine = Vec::with_capacity(2 * N);
    let barrier = Barrier::new(2);
    std::thread::scope(|s| {
        let (mine_ref, barrier) = (&mut mine, &barrier);
        // The main thread allocates; a second thread frees the first half.
        let half: &mut Vec<usize> = mine_ref;
        let c0 = census();
        assert_eq!(c0.used_by_kind[ki], 0, "{c0:?}");
        alloc_blocks(K, N, 1, half);
        let c1 = census();
        assert_eq!(c1.used_by_kind[ki], N, "{c1:?}");
        assert_eq!(c1.remote_by_kind[ki], 0, "{c1:?}");
        let first_half: Vec<usize> = half[..N / 2].to_vec();
        let t = s.spawn(move || {
            barrier.wait();
            free_blocks(&first_half, 0, 1);
        });
        barrier.wait();
        t.join().unwrap();
        // The second thread exited, so its batches were published: every block it freed is on a
        // remote list of this thread's pages, and still counts as used until this thread looks.
        let c2 = census();
        assert_eq!(c2.used_by_kind[ki], N, "{c2:?}");
        assert_eq!(c2.remote_by_kind[ki], N / 2, "{c2:?}");
        // Allocating again takes remote frees back.
        let mut more = Vec::with_capacity(N);
        alloc_blocks(K, N / 2, 1, &mut more);
        let c3 = census();
        assert_eq!(
            c3.used_by_kind[ki] - c3.remote_by_kind[ki],
            N,
            "live blocks of the kind: {c3:?}"
        );
        // Full pages that got remote frees were queued for this thread; its refills took them.
        assert!(
            c3.remote_by_kind[ki] < c2.remote_by_kind[ki],
            "the owner took none of its remote frees back: {c2:?} {c3:?}"
        );
        free_blocks(&half[N / 2..], N / 2, 1);
        free_blocks(&more, 0, 1);
        ALLOC.trim();
        let c4 = census();
        assert_eq!(c4.used_by_kind[ki], 0, "{c4:?}");
        assert_eq!(c4.remote_by_kind[ki], 0, "{c4:?}");
    });
}

/// Threads come and go holding blocks that others free: after every round the census of each
/// thread's heap holds (it panics otherwise), every block keeps its pattern, and at the end
/// nothing of the kind is used on this thread's heap.
#[test]
fn threads_that_exit_with_live_blocks_leave_consistent_heaps() {
    const K: TensorKind = TensorKind::KvCache;
    const N: usize = 300;
    let ki = K.index();
    // Blocks a round's thread left behind: (pointers, index of the first, pattern seed).
    let mut carry: Vec<(Vec<usize>, usize, u8)> = Vec::new();
    for round in 0..8u8 {
        let seed = round.wrapping_mul(31);
        let handed = std::mem::take(&mut carry);
        let made = std::thread::scope(|s| {
            s.spawn(move || {
                // Free what the last round left (remote frees onto an abandoned heap, or onto
                // this thread's own if it adopted that heap), then leave blocks behind.
                for (ps, first, seed) in &handed {
                    free_blocks(ps, *first, *seed);
                }
                let mut ps = Vec::with_capacity(N);
                alloc_blocks(K, N, seed, &mut ps);
                let c = census();
                assert!(c.used_by_kind[ki] >= N, "{c:?}");
                ps
            })
            .join()
            .unwrap()
        });
        // Half freed here, half by the next round's thread.
        free_blocks(&made[..N / 2], 0, seed);
        let _ = census();
        carry.push((made[N / 2..].to_vec(), N / 2, seed));
    }
    for (ps, first, seed) in &carry {
        free_blocks(ps, *first, *seed);
    }
    ALLOC.trim();
    let c = census();
    assert_eq!(c.used_by_kind[ki], 0, "{c:?}");
    assert_eq!(c.remote_by_kind[ki], 0, "{c:?}");
}
