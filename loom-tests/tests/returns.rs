//! Large blocks sent back to the heap that took them (`heap::returns`): pushes from two threads
//! while the owner takes the list and then leaves its heap (closing the list).
#![cfg(loom)]

use loom::sync::Arc;
use loom::thread;
use tensorpool::loom_model::{drop_block, new_block, Pushed, ReturnList};

const PAGE: usize = 4096;

/// Two threads push two blocks each (a bound of three pages, so a push may find the list full
/// and take it) while the owner takes the list once and then closes it. Every block ends in
/// exactly one place: taken by the owner, handed back by the close, kept by a pusher that found
/// the list closed, or taken by a pusher that found it full; and the list's byte count is zero
/// once it is closed and the pushers are done.
#[test]
fn every_block_sent_back_arrives_once() {
    loom_tests::model("every_block_sent_back_arrives_once", || {
        let list = Arc::new(ReturnList::new());
        let blocks: Vec<usize> = (0..4).map(|i| new_block(PAGE, i % 2)).collect();
        let pusher = |bs: [usize; 2]| {
            let list = list.clone();
            thread::spawn(move || {
                let mut mine = Vec::new();
                for b in bs {
                    // SAFETY: this thread holds `b`, which is on no list.
                    match unsafe { list.push(b, 3 * PAGE) } {
                        Pushed::Sent => {}
                        Pushed::Closed => mine.push(b),
                        Pushed::Full(chain) => mine.extend(chain),
                    }
                }
                mine
            })
        };
        let t1 = pusher([blocks[0], blocks[1]]);
        let t2 = pusher([blocks[2], blocks[3]]);
        let mut seen = list.take();
        seen.extend(list.close());
        seen.extend(t1.join().unwrap());
        seen.extend(t2.join().unwrap());
        seen.sort_unstable();
        let mut want = blocks.clone();
        want.sort_unstable();
        assert_eq!(seen, want, "a block lost or delivered twice");
        assert_eq!(list.bytes(), 0, "bytes counted on a closed, empty list");
        // Closed, the list refuses; opened again (a thread adopts the heap), it takes.
        let b = new_block(PAGE, 0);
        // SAFETY: a block of ours on no list.
        assert!(matches!(unsafe { list.push(b, 3 * PAGE) }, Pushed::Closed));
        list.open();
        // SAFETY: as above.
        assert!(matches!(unsafe { list.push(b, 3 * PAGE) }, Pushed::Sent));
        assert_eq!(list.take(), vec![b]);
        for b in blocks.into_iter().chain([b]) {
            // SAFETY: every block is off the list and freed once.
            unsafe { drop_block(b) };
        }
    });
}
