//! Idle slots: taken resident-first, purged after the delay.

use super::*;
use crate::class::small_class;

/// A segment of our own, outside the arena (its owner is a dummy: nothing here looks at it).
fn segment() -> *mut Segment {
    let seg = crate::os::map_aligned(SEGMENT_SIZE, SEGMENT_SIZE).cast::<Segment>();
    assert!(!seg.is_null());
    // SAFETY: a fresh, aligned mapping of a segment's size, ours alone.
    unsafe { init_segment(seg, ptr::null_mut(), true) };
    seg
}

/// Take a page of 1 KiB blocks in `seg` and carve 4 KiB `n` times; returns it and its slot.
///
/// # Safety
/// `seg` is a segment from `segment()`.
unsafe fn carved(seg: *mut Segment, n: usize) -> (*mut Page, usize) {
    // SAFETY: the segment is ours; so is the page.
    unsafe {
        let page = take_page(seg, 0, small_class(1024));
        for _ in 0..n {
            extend(page);
        }
        (page, locate(page).1)
    }
}

/// Give back a page none of whose blocks is handed out.
///
/// # Safety
/// `page` came from `carved`.
unsafe fn release(page: *mut Page, now: u64) {
    // SAFETY: as above.
    unsafe {
        (*page).free = ptr::null_mut();
        assert!(!release_page(page, now));
    }
}

#[test]
fn idle_slots_are_purged_after_the_delay_and_resident_ones_taken_first() {
    let seg = segment();
    // SAFETY: `seg` is ours; pages are taken and released by this thread alone.
    unsafe {
        let (_keep, k) = carved(seg, 1);
        let (p2, i2) = carved(seg, 2);
        let (p3, i3) = carved(seg, 1);
        assert_eq!((k, i2, i3), (1, 2, 3));
        release(p2, 1_000);
        release(p3, 3_000);
        assert_eq!((*seg).touched_mask, 0b1110);
        assert_eq!((*seg).touched_bytes, 4 * 4096);

        // Slot 2 idle for the delay, slot 3 not yet (due at 4,000).
        let mut seen = [(0usize, 0usize); 4];
        let mut calls = 0;
        let (purged, next) = purge_idle(seg, 3_500, 1_000, |p, len| {
            seen[calls] = (p as usize, len);
            calls += 1;
            true
        });
        assert_eq!((purged, next, calls), (8192, 4_000, 1));
        assert_eq!(seen[0], (seg as usize + 2 * SLAB_SIZE, 8192));
        assert_eq!((*seg).touched_mask, 0b1010);
        assert_eq!((*seg).touched_bytes, 2 * 4096);

        // The resident slot 3 is taken before the lower, purged slot 2.
        let (p, i) = carved(seg, 1);
        assert_eq!(i, 3);
        release(p, 5_000);

        // A purge the kernel refuses leaves the slot resident and counted.
        let (purged, next) = purge_idle(seg, 9_000, 1_000, |_, _| false);
        assert_eq!((purged, next), (0, 0));
        assert_eq!((*seg).touched_mask, 0b1010);
        let (purged, _) = purge_idle(seg, 9_000, 1_000, |_, _| true);
        assert_eq!(purged, 4096);
        assert_eq!(((*seg).touched_mask, (*seg).touched_bytes), (0b10, 4096));
        crate::os::unmap(seg.cast(), SEGMENT_SIZE);
    }
}

#[test]
fn a_fresh_segment_brings_in_only_the_descriptors_it_uses() {
    // A zeroed segment's header is not cleared: of its 16 KiB of page descriptors, only the
    // 4 KiB page holding those in use becomes resident (clearing it made all of them resident
    // in every heap's first segment).
    let seg = segment();
    // SAFETY: the segment is ours.
    let page = unsafe { take_page(seg, 0, small_class(1024)) };
    assert!(!page.is_null());
    let header = core::mem::size_of::<Segment>();
    assert!(header > 3 * crate::os::PAGE);
    let resident = crate::os::resident_pages(seg.cast(), header).expect("mincore");
    assert_eq!(
        resident, 1,
        "header pages resident after one slot was taken"
    );
}
