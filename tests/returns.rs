//! Large blocks freed by another thread go back to the thread that took them (its return list,
//! then its cache), not through the shared arena; a thread that exits, or sleeps through a
//! `trim`, keeps none in transit.
use std::alloc::{GlobalAlloc, Layout};
use std::sync::mpsc;
use tensorpool::{with_kind, TensorKind, TensorPool};

#[global_allocator]
static ALLOC: TensorPool = TensorPool::new();

/// The tests read one kind's counters; they run one at a time.
static ONE: std::sync::Mutex<()> = std::sync::Mutex::new(());

const KIND: TensorKind = TensorKind::TextEmbedding;
const N: usize = 16;

fn layout() -> Layout {
    Layout::from_size_align(64 << 10, 64).unwrap()
}

struct Send(*mut u8);
// SAFETY: the pointer is a block handed from one thread to the other, used by one at a time.
unsafe impl std::marker::Send for Send {}

fn alloc_stamped(who: u8) -> Send {
    let p = with_kind(KIND, || unsafe { ALLOC.alloc(layout()) });
    assert!(!p.is_null());
    unsafe { std::ptr::write_bytes(p, who, layout().size()) };
    Send(p)
}

fn check_and_free(b: Send, who: u8) {
    let s = unsafe { std::slice::from_raw_parts(b.0, layout().size()) };
    assert!(s.iter().all(|&x| x == who), "block overwritten while live");
    unsafe { ALLOC.dealloc(b.0, layout()) };
}

fn in_transit_or_hot() -> u64 {
    ALLOC.stats().kind(KIND).hot_bytes
}

#[test]
fn a_consumers_frees_come_back_to_the_producers_cache() {
    let _g = ONE.lock().unwrap_or_else(|e| e.into_inner());
    // Warm up: the producer's cache and the arena have seen this size.
    for round in 0..3u8 {
        let blocks: Vec<Send> = (0..N)
            .map(|i| alloc_stamped(round * 32 + i as u8))
            .collect();
        let before = ALLOC.large_counters(KIND);
        let hot_before = in_transit_or_hot();
        std::thread::spawn(move || {
            for (i, b) in blocks.into_iter().enumerate() {
                check_and_free(b, round * 32 + i as u8);
            }
        })
        .join()
        .unwrap();
        // The consumer's frees reached neither the arena nor the consumer's own cache (which
        // its exit would have flushed to the arena): they wait for the producer, counted hot.
        let mid = ALLOC.large_counters(KIND);
        assert_eq!(mid.live_bytes, before.live_bytes, "freed into the arena");
        assert!(
            in_transit_or_hot() >= hot_before + (N * layout().size()) as u64,
            "blocks in transit not counted"
        );
        // The producer's next requests take them back: no arena request at all.
        let again: Vec<Send> = (0..N).map(|i| alloc_stamped(200 + i as u8)).collect();
        let after = ALLOC.large_counters(KIND);
        assert_eq!(
            after.requests, mid.requests,
            "served by the arena, not sent back"
        );
        for (i, b) in again.into_iter().enumerate() {
            check_and_free(b, 200 + i as u8);
        }
    }
    // Leave nothing in this thread's cache for its exit to flush while the next test counts.
    ALLOC.trim();
}

#[test]
fn blocks_of_an_exited_thread_and_a_sleeping_one_leave_nothing_in_transit() {
    let _g = ONE.lock().unwrap_or_else(|e| e.into_inner());
    ALLOC.trim();
    let base = ALLOC.large_counters(KIND).live_bytes;
    // A producer that exits before its blocks are freed: its heap's list is closed, so the
    // frees keep the blocks here (or give them to the arena), and a trim returns them all.
    let blocks: Vec<Send> = std::thread::spawn(|| (0..N).map(|i| alloc_stamped(i as u8)).collect())
        .join()
        .unwrap();
    for (i, b) in blocks.into_iter().enumerate() {
        check_and_free(b, i as u8);
    }
    ALLOC.trim();
    assert_eq!(
        ALLOC.large_counters(KIND).live_bytes,
        base,
        "a block stuck in transit"
    );

    // A producer that sleeps after its blocks are freed: a trim from this thread takes them
    // off its list; woken, it allocates again from the arena.
    let (to_sleeper, wake) = mpsc::channel::<()>();
    let (made, blocks_rx) = mpsc::channel::<Vec<Send>>();
    let sleeper = std::thread::spawn(move || {
        made.send((0..N).map(|i| alloc_stamped(100 + i as u8)).collect())
            .unwrap();
        wake.recv().unwrap();
        let again: Vec<Send> = (0..N).map(|i| alloc_stamped(150 + i as u8)).collect();
        for (i, b) in again.into_iter().enumerate() {
            check_and_free(b, 150 + i as u8);
        }
    });
    for (i, b) in blocks_rx.recv().unwrap().into_iter().enumerate() {
        check_and_free(b, 100 + i as u8);
    }
    assert!(in_transit_or_hot() >= (N * layout().size()) as u64);
    ALLOC.trim();
    assert_eq!(
        ALLOC.large_counters(KIND).live_bytes,
        base,
        "a sleeping thread's blocks stayed in transit through a trim"
    );
    to_sleeper.send(()).unwrap();
    sleeper.join().unwrap();
    ALLOC.trim();
    assert_eq!(ALLOC.large_counters(KIND).live_bytes, base);
}
