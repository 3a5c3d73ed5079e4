//! Peak live bytes are what the program held at once: blocks waiting in a thread cache after
//! their free are not live (issue 17: a program holding at most 3.06 MiB of activations was
//! reported a peak of 9 MiB, the thread cache's blocks counted in). Its own binary, so that no
//! other test's activations count.
use std::alloc::{GlobalAlloc, Layout};
use tensorpool::{with_kind, TensorKind, TensorPool};

#[global_allocator]
static ALLOC: TensorPool = TensorPool::new();

#[test]
fn peak_live_excludes_thread_cached_blocks() {
    ALLOC.start_timeline();
    let mut most_held = 0usize;
    for round in 0..40 {
        // Three blocks at a time, of sizes that change every round, so the thread cache keeps
        // freed blocks of other sizes while new ones are taken.
        let size = (1 << 20) + (round % 7) * (48 << 10);
        let layout = Layout::from_size_align(size, 64).unwrap();
        let blocks: Vec<*mut u8> = (0..3)
            .map(|_| with_kind(TensorKind::Activation, || unsafe { ALLOC.alloc(layout) }))
            .inspect(|p| assert!(!p.is_null()))
            .collect();
        let held: usize = blocks
            .iter()
            .map(|&p| unsafe { ALLOC.usable_size(p) })
            .sum();
        most_held = most_held.max(held);
        for p in blocks {
            unsafe {
                p.write_bytes(round as u8, size);
                ALLOC.dealloc(p, layout);
            }
        }
    }
    let stats = ALLOC.stats();
    let a = stats.kinds[TensorKind::Activation.index()];
    assert!(
        a.hot_bytes > 0,
        "the test needs blocks in the thread cache: {a:?}"
    );
    // Each block's extent is its usable size plus at most a page of colour.
    let limit = most_held as u64 + 3 * 4096;
    assert!(
        a.peak_live_bytes >= 3 << 20 && a.peak_live_bytes <= limit,
        "peak {} against at most {} held: {a:?}",
        a.peak_live_bytes,
        most_held
    );
    assert_eq!(a.live_bytes, 0);
    let t = ALLOC.timeline();
    let k = TensorKind::Activation.index();
    let top = t.samples.iter().map(|s| s.live[k]).max().unwrap();
    assert!(
        top >= 3 << 20 && top <= limit,
        "timeline maximum {top} against at most {most_held} held"
    );
}
