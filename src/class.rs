//! Size classes: const tables for small blocks (carved from slab pages), and the large-block
//! class index the thread caches group blocks by (large blocks themselves are whole pages of the
//! arena, of any size).
//!
//! Small classes below 64 bytes step by 8 or 16; from 64 bytes on every class is a multiple of 64,
//! so that every block of 64 bytes or more starts on its own cache line (slab pages start on a
//! 64 KiB boundary and blocks sit at multiples of the class size). From 256 bytes there are four
//! classes per power of two, bounding internal waste at 25 %.
//!
//! Alignment: a request of size `s` and alignment `a` asks for class `class_of(round_up(s, a))`.
//! Every class between `2^k` and `2^(k+1)` is a multiple of `2^(k-2)`, so the chosen class is always
//! a multiple of `a` and every block in the page is `a`-aligned (checked in the tests below).

/// Largest small-class size; bigger requests take the large path.
pub(crate) const SMALL_MAX: usize = 16 * 1024;

/// Size of every small-class slab page.
pub(crate) const SLAB_SIZE: usize = 64 * 1024;
pub(crate) const SLAB_SHIFT: u32 = 16;

/// The small class sizes, ascending.
pub(crate) const SMALL_CLASSES: [u32; 32] = [
    16, 24, 32, 48, 64, 128, 192, 256, 320, 384, 448, 512, 640, 768, 896, 1024, 1280, 1536, 1792,
    2048, 2560, 3072, 3584, 4096, 5120, 6144, 7168, 8192, 10240, 12288, 14336, 16384,
];

/// Number of small classes.
pub(crate) const NUM_SMALL: usize = SMALL_CLASSES.len();

/// Class index for every size in 8-byte steps: `CLASS_OF[(size + 7) / 8]`.
#[link_section = ".rodata.hot.tensorpool"]
static CLASS_OF: [u8; SMALL_MAX / 8 + 1] = build_class_table::<8, { SMALL_MAX / 8 + 1 }>();
/// The same in 16-byte steps, for `malloc`'s 16-byte alignment: `CLASS16_OF[(size + 15) / 16]`.
#[link_section = ".rodata.hot.tensorpool"]
static CLASS16_OF: [u8; SMALL_MAX / 16 + 1] = build_class_table::<16, { SMALL_MAX / 16 + 1 }>();

const fn build_class_table<const STEP: usize, const N: usize>() -> [u8; N] {
    let mut t = [0u8; N];
    let mut i = 0;
    let mut c = 0;
    while i < t.len() {
        let size = i * STEP;
        while (SMALL_CLASSES[c] as usize) < size {
            c += 1;
        }
        t[i] = c as u8;
        i += 1;
    }
    t
}

// Compile-time checks of the table's shape.
const _: () = {
    let mut i = 1;
    while i < NUM_SMALL {
        assert!(SMALL_CLASSES[i] > SMALL_CLASSES[i - 1]);
        if SMALL_CLASSES[i] >= 64 {
            assert!(SMALL_CLASSES[i] % 64 == 0);
        }
        i += 1;
    }
    assert!(SMALL_CLASSES[NUM_SMALL - 1] as usize == SMALL_MAX);
    assert!(SMALL_MAX * 4 <= SLAB_SIZE);
    assert!(1 << SLAB_SHIFT == SLAB_SIZE);
    assert!(NUM_SMALL < 256);
};

/// The small class for `size` (already rounded up to the alignment), `size <= SMALL_MAX`.
#[inline(always)]
pub(crate) fn small_class(size: usize) -> usize {
    debug_assert!(size <= SMALL_MAX);
    // SAFETY-free: the index is at most SMALL_MAX / 8 by the caller's check, so `get` never fails;
    // the `unwrap_or` keeps the path panic-free without a branch the optimiser keeps.
    *CLASS_OF
        .get(size.div_ceil(8))
        .unwrap_or(&(NUM_SMALL as u8 - 1)) as usize
}

/// The small class for a 16-byte aligned request of `size <= SMALL_MAX` bytes (0 as 1).
#[inline(always)]
pub(crate) fn small_class_16(size: usize) -> usize {
    debug_assert!(size <= SMALL_MAX);
    // As in `small_class`: the index is at most SMALL_MAX / 16.
    *CLASS16_OF
        .get((size + 15) >> 4)
        .unwrap_or(&(NUM_SMALL as u8 - 1)) as usize
}

/// Size in bytes of small class `c`.
#[inline(always)]
pub(crate) fn small_size(c: usize) -> usize {
    SMALL_CLASSES[c] as usize
}

/// The alignment every block of class `c` has in its page (the size's largest power-of-two
/// factor, at most a page): what a request served by class `c` may have asked for.
#[inline]
pub(crate) fn block_align(c: usize) -> usize {
    1 << small_size(c).trailing_zeros().min(12)
}

/// `floor(2^32 / size) + 1` of class `c` (`ceil(2^32 / size)` unless the size is a power of
/// two): for an offset `off` in a page, `q = off * recip mod 2^32` is `k * recip_step(c)` when
/// `off` is the `k`-th multiple of the size, and at least `recip` otherwise (Lemire, Kaser and
/// Kurz, "Faster remainder by direct computation", 2019, for the multiples' test; the order of
/// the multiples' products is what lets one compare also bound `k`; both checked for every
/// class and offset in the tests).
#[inline]
pub(crate) fn recip(c: usize) -> u32 {
    ((1u64 << 32) / small_size(c) as u64 + 1) as u32
}

/// `recip(c) * size - 2^32`, in `1..=size`: what `off * recip mod 2^32` grows by from one
/// block of class `c` to the next.
#[inline]
pub(crate) fn recip_step(c: usize) -> u32 {
    (recip(c) as u64 * small_size(c) as u64 - (1u64 << 32)) as u32
}

/// The bound for the first `n` blocks of a page of class `c`: `off * recip mod 2^32 < limit`
/// exactly when `off` starts one of them (`n * recip_step(c)`, below `recip` for every `n` up
/// to a page's blocks).
#[inline]
pub(crate) fn check_limit(c: usize, n: u32) -> u32 {
    n * recip_step(c)
}

/// Blocks of class `c` one slab page holds.
#[inline]
pub(crate) fn blocks_per_page(c: usize) -> u32 {
    (SLAB_SIZE / small_size(c)) as u32
}

/// The small class for a request, or `None` if it takes the large path.
#[inline(always)]
pub(crate) fn class_for(size: usize, align: usize) -> Option<usize> {
    // `size + align - 1` cannot overflow for a valid Layout (size <= isize::MAX - (align - 1)).
    let rounded = (size + align - 1) & !(align - 1);
    if rounded <= SMALL_MAX {
        Some(small_class(rounded))
    } else {
        None
    }
}

/// Index of the large class at or below `bytes`: classes are page counts, every count up to 8
/// and then four per power of two (steps of `2^(k-2)` pages between `2^k` and `2^(k+1)`), so
/// indices are dense and a class spans at most a quarter of its size. Thread caches group blocks
/// by it.
pub(crate) fn large_index(bytes: usize) -> usize {
    let pages = bytes / crate::os::PAGE;
    if pages <= 8 {
        return pages;
    }
    let k = (usize::BITS - 1 - pages.leading_zeros()) as usize; // 2^k <= pages < 2^(k+1)
    let step_shift = k - 2;
    let j = (pages >> step_shift) - 4; // 0..4 (pages == 2^(k+1) rounds into the next k)
    8 + (k - 3) * 4 + j
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_compare_tells_the_first_n_blocks_of_a_page_for_every_class_and_offset() {
        for c in 0..NUM_SMALL {
            let (size, r, step) = (small_size(c), recip(c), recip_step(c));
            assert!(step >= 1 && step as usize <= size, "class {c}");
            let blocks = blocks_per_page(c);
            assert!(check_limit(c, blocks) <= r, "class {c}");
            for off in 0..SLAB_SIZE as u64 {
                let q = (off * r as u64) as u32;
                if off as usize % size == 0 {
                    assert_eq!(
                        q,
                        (off as usize / size) as u32 * step,
                        "class {c} offset {off}"
                    );
                } else {
                    assert!(q >= r, "class {c} offset {off}: {q} < {r}");
                }
            }
            // So `q < check_limit(c, n)` picks exactly the first n blocks, for every n.
            for n in [0, 1, blocks / 2, blocks] {
                let limit = check_limit(c, n);
                for off in 0..SLAB_SIZE as u64 {
                    let q = (off * r as u64) as u32;
                    let first_n = off as usize % size == 0 && ((off as usize / size) as u32) < n;
                    assert_eq!(q < limit, first_n, "class {c} n {n} offset {off}");
                }
            }
        }
    }

    #[test]
    fn a_class_aligns_its_blocks_as_requests_routed_to_it_need() {
        for align in [1usize, 8, 16, 64, 256, 4096] {
            for size in [1usize, 24, 100, 3000] {
                if let Some(c) = class_for(size, align) {
                    assert!(
                        block_align(c) >= align,
                        "size {size} align {align} class {c}"
                    );
                }
            }
        }
    }

    #[test]
    fn class_for_respects_alignment_and_limits() {
        assert_eq!(class_for(1, 1).map(small_size), Some(16));
        assert_eq!(class_for(65, 8).map(small_size), Some(128));
        assert_eq!(class_for(1, 4096).map(small_size), Some(4096));
        assert_eq!(class_for(16384, 8).map(small_size), Some(16384));
        assert_eq!(class_for(16385, 8), None);
        assert_eq!(class_for(8, 32768), None);
    }

    #[test]
    fn every_size_gets_the_smallest_fitting_class() {
        for size in 1..=SMALL_MAX {
            let c = small_class(size);
            assert!(small_size(c) >= size);
            if c > 0 {
                assert!(small_size(c - 1) < size, "size {size} class {c}");
            }
        }
    }

    #[test]
    fn malloc_classes_are_the_16_byte_aligned_lookups() {
        for size in 0..=SMALL_MAX {
            assert_eq!(
                Some(small_class_16(size)),
                class_for(size.max(1), 16),
                "size {size}"
            );
        }
    }

    #[test]
    fn aligned_requests_land_in_multiples_of_the_alignment() {
        let mut align = 1;
        while align <= SMALL_MAX {
            for size in 1..=SMALL_MAX {
                let r = (size + align - 1) & !(align - 1);
                if r > SMALL_MAX {
                    break;
                }
                let cs = small_size(small_class(r));
                assert_eq!(cs % align, 0, "size {size} align {align} class {cs}");
                if cs >= 64 {
                    assert_eq!(cs % 64, 0);
                }
            }
            align *= 2;
        }
    }

    #[test]
    fn large_indices_are_dense_and_classes_narrow() {
        let mut first = 0; // first page count of the current index
        let mut last_idx = large_index(5 * crate::os::PAGE);
        for pages in 6..(1usize << 22) {
            let idx = large_index(pages * crate::os::PAGE);
            assert!(idx == last_idx || idx == last_idx + 1, "{pages} pages");
            if idx != last_idx {
                first = pages;
                last_idx = idx;
            }
            // Every page count of one index is within a quarter of the index's first.
            assert!(
                first == 0 || (pages - first) * 4 < first.max(8),
                "{pages} after {first}"
            );
        }
    }
}
