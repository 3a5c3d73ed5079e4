//! Every Layout edge through the global allocator: sizes, alignments, realloc, zeroing, overflow.
use std::alloc::{GlobalAlloc, Layout};
use tensorpool::TensorPool;

#[global_allocator]
static ALLOC: TensorPool = TensorPool::new();

fn fill(p: *mut u8, n: usize, seed: u8) {
    for i in 0..n {
        // SAFETY (test): p has at least n bytes.
        unsafe { *p.add(i) = seed.wrapping_add(i as u8).wrapping_mul(31) };
    }
}
fn check(p: *const u8, n: usize, seed: u8) -> bool {
    (0..n).all(|i| unsafe { *p.add(i) } == seed.wrapping_add(i as u8).wrapping_mul(31))
}

#[test]
fn sizes_and_alignments() {
    let sizes = [
        1usize,
        2,
        7,
        8,
        9,
        15,
        16,
        17,
        24,
        31,
        33,
        48,
        63,
        64,
        65,
        100,
        127,
        128,
        129,
        255,
        256,
        257,
        1000,
        1024,
        1025,
        4095,
        4096,
        4097,
        8192,
        12_000,
        16_383,
        16_384,
        16_385,
        65_536,
        100_000,
        1 << 20,
        (1 << 20) + 1,
        3 << 20,
        (4 << 20) - 1,
        4 << 20,
        (4 << 20) + 1,
        10_000_000,
    ];
    let mut align = 1;
    while align <= 8 << 20 {
        for &size in &sizes {
            let l = Layout::from_size_align(size, align).unwrap();
            let p = unsafe { ALLOC.alloc(l) };
            assert!(!p.is_null(), "size {size} align {align}");
            assert_eq!(p as usize % align, 0, "size {size} align {align}");
            if size >= 64 {
                assert_eq!(
                    p as usize % 64,
                    0,
                    "blocks of 64 bytes or more start on a cache line"
                );
            }
            let usable = unsafe { ALLOC.usable_size(p) };
            assert!(
                usable >= size,
                "usable {usable} < size {size} (align {align}) at {p:p}"
            );
            let n = size.min(1 << 16);
            fill(p, n, size as u8);
            // touch the last byte too
            unsafe { *p.add(size - 1) = 0xAB };
            assert!(check(p, n.min(size - 1), size as u8));
            unsafe { ALLOC.dealloc(p, l) };
        }
        align *= 2;
    }
}

#[test]
fn hundreds_of_mib() {
    let l = Layout::from_size_align(300 << 20, 64).unwrap();
    let p = unsafe { ALLOC.alloc(l) };
    assert!(!p.is_null());
    for off in (0..(300 << 20)).step_by(1 << 20) {
        unsafe { *p.add(off) = (off >> 20) as u8 };
    }
    for off in (0..(300 << 20)).step_by(1 << 20) {
        assert_eq!(unsafe { *p.add(off) }, (off >> 20) as u8);
    }
    unsafe { ALLOC.dealloc(p, l) };
    ALLOC.trim();
}

#[test]
fn realloc_keeps_contents_across_class_boundaries() {
    let steps = [
        1usize,
        8,
        9,
        48,
        64,
        65,
        200,
        1024,
        4000,
        16_384,
        16_385,
        40_000,
        300_000,
        1 << 20,
        5 << 20,
        9 << 20,
        600_000,
        16_000,
        1500,
        100,
        3,
    ];
    for &align in &[1usize, 8, 64, 4096, 1 << 21] {
        let mut size = steps[0];
        let l = Layout::from_size_align(size, align).unwrap();
        let mut p = unsafe { ALLOC.alloc(l) };
        fill(p, size, 7);
        for &next in &steps[1..] {
            let l = Layout::from_size_align(size, align).unwrap();
            let q = unsafe { ALLOC.realloc(p, l, next) };
            assert!(!q.is_null());
            assert_eq!(q as usize % align, 0, "realloc keeps alignment {align}");
            let keep = size.min(next);
            assert!(
                check(q, keep.min(1 << 16), 7),
                "contents kept {size} -> {next} align {align}"
            );
            fill(q, next.min(1 << 16), 7);
            if next > 1 << 16 {
                // fill the rest sparsely and check it survives the next move
                for off in ((1 << 16)..next).step_by(4096) {
                    unsafe { *q.add(off) = (off >> 12) as u8 };
                }
            }
            p = q;
            size = next;
        }
        unsafe { ALLOC.dealloc(p, Layout::from_size_align(size, align).unwrap()) };
    }
}

#[test]
fn large_realloc_growth_keeps_sparse_contents() {
    let l = Layout::from_size_align(1 << 20, 64).unwrap();
    let p = unsafe { ALLOC.alloc(l) };
    for off in (0..(1 << 20)).step_by(4096) {
        unsafe { *p.add(off) = (off >> 12) as u8 };
    }
    let q = unsafe { ALLOC.realloc(p, l, 64 << 20) };
    assert!(!q.is_null());
    for off in (0..(1 << 20)).step_by(4096) {
        assert_eq!(unsafe { *q.add(off) }, (off >> 12) as u8);
    }
    unsafe { *q.add((64 << 20) - 1) = 1 };
    unsafe { ALLOC.dealloc(q, Layout::from_size_align(64 << 20, 64).unwrap()) };
}

#[test]
fn alloc_zeroed_is_zero_after_reuse() {
    for &size in &[8usize, 100, 4096, 16_384, 20_000, 1 << 20, 6 << 20] {
        let l = Layout::from_size_align(size, 64).unwrap();
        for round in 0..3 {
            let p = unsafe { ALLOC.alloc_zeroed(l) };
            assert!(!p.is_null());
            assert!(
                (0..size).all(|i| unsafe { *p.add(i) } == 0),
                "size {size} round {round}"
            );
            unsafe { std::ptr::write_bytes(p, 0xFF, size) };
            unsafe { ALLOC.dealloc(p, l) };
        }
    }
}

#[test]
fn overflow_and_refusal_return_null() {
    // Largest valid layouts: the OS cannot serve them, so the answer is null, not a panic.
    let huge = Layout::from_size_align(isize::MAX as usize - (1 << 21) + 1, 1 << 21).unwrap();
    assert!(unsafe { ALLOC.alloc(huge) }.is_null());
    let huge = Layout::from_size_align(isize::MAX as usize, 1).unwrap();
    assert!(unsafe { ALLOC.alloc(huge) }.is_null());
    assert!(unsafe { ALLOC.alloc_zeroed(huge) }.is_null());
    let big = Layout::from_size_align(1 << 46, 64).unwrap();
    assert!(unsafe { ALLOC.alloc(big) }.is_null(), "64 TiB is refused");
    // realloc to an impossible size keeps the old block intact
    let l = Layout::from_size_align(100, 8).unwrap();
    let p = unsafe { ALLOC.alloc(l) };
    fill(p, 100, 3);
    assert!(unsafe { ALLOC.realloc(p, l, isize::MAX as usize - 7) }.is_null());
    assert!(check(p, 100, 3));
    unsafe { ALLOC.dealloc(p, l) };
    // and through std: try_reserve reports the error
    let mut v: Vec<u8> = vec![1, 2, 3];
    assert!(v.try_reserve(1 << 50).is_err());
    assert_eq!(v, [1, 2, 3]);
}

#[test]
fn the_cached_fast_path_serves_every_small_size_aligned_and_none_larger() {
    // `alloc_cached` is `malloc`'s fast path in the C library: a thread's cached block or null,
    // and never a block too small or misaligned.
    std::thread::spawn(|| {
        assert!(ALLOC.alloc_cached(16 * 1024 + 1).is_null());
        assert!(ALLOC.alloc_cached(usize::MAX).is_null());
        let mut served = 0;
        for size in (0..=16 * 1024).step_by(7).chain([1, 15, 16, 17, 16 * 1024]) {
            // A block of the size's class freed by this thread is what the fast path reuses.
            let q = ALLOC.alloc_raw(size, 16, false);
            assert!(!q.is_null());
            // SAFETY (test): `q` is a live block of this allocator.
            unsafe { ALLOC.free_raw(q) };
            let p = ALLOC.alloc_cached(size);
            if p.is_null() {
                continue;
            }
            served += 1;
            assert_eq!(p as usize % 16, 0, "size {size}");
            // SAFETY (test): `p` is a live block of this allocator.
            assert!(
                unsafe { ALLOC.usable_size(p) } >= size.max(1),
                "size {size}"
            );
            fill(p, size, size as u8);
            assert!(check(p, size, size as u8));
            // SAFETY (test): as above.
            unsafe { ALLOC.free_raw(p) };
        }
        assert!(served > 2000, "the fast path served {served} requests");
    })
    .join()
    .unwrap();
}
