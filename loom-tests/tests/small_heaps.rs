//! Thread heaps: remote frees onto pages (batched per page), full pages brought back by the
//! remote-free notice, heap abandonment and adoption.
#![cfg(loom)]

use loom::sync::Arc;
use loom::thread;
use loom_tests::{check, stamp};
use tensorpool::loom_model::{Registry, RemoteBatch};

/// Four blocks per slab page, so a few allocations cross pages and refills.
const SIZE: usize = 16 << 10;
const KIND: usize = 0;

/// Two other threads free the owner's blocks, two each, publishing each free with one CAS onto
/// the block's page, while the owner allocates three more, collecting a page's remote frees when
/// it runs dry. Nothing is handed out twice and nothing is lost: at the end
/// `used == live + remote`, and once collected every carved block is free.
#[test]
fn remote_frees_while_owner_allocates() {
    loom_tests::model("remote_frees_while_owner_allocates", || {
        let reg = Registry::new();
        let h = reg.acquire();
        // SAFETY: this thread owns `h`.
        let held: Vec<usize> = (0..5)
            .map(|i| {
                let p = unsafe { h.alloc(KIND, SIZE) };
                // SAFETY: this thread holds the block.
                unsafe { stamp(p, SIZE, i as u8 + 1) };
                p as usize
            })
            .collect();
        let remote = |ps: [(usize, u8); 2]| {
            thread::spawn(move || {
                let mut batch = RemoteBatch::new();
                for (p, who) in ps {
                    let p = p as *mut u8;
                    // SAFETY: this thread holds the block.
                    unsafe { check(p, SIZE, who) };
                    // SAFETY: `p` is live and this thread frees it once.
                    unsafe { batch.free(p) };
                    batch.flush();
                }
            })
        };
        let t1 = remote([(held[0], 1), (held[1], 2)]);
        let t2 = remote([(held[2], 3), (held[3], 4)]);
        let mut mine = vec![(held[4], 5u8)];
        for who in 6..9u8 {
            // SAFETY: this thread owns `h`.
            let p = unsafe { h.alloc(KIND, SIZE) };
            assert!(
                mine.iter().all(|&(q, _)| q != p as usize),
                "a block handed out twice"
            );
            // SAFETY: this thread holds the block.
            unsafe { stamp(p, SIZE, who) };
            mine.push((p as usize, who));
        }
        for &(p, who) in &mine {
            // SAFETY: this thread holds the block.
            unsafe { check(p as *mut u8, SIZE, who) };
        }
        t1.join().unwrap();
        t2.join().unwrap();
        // SAFETY: every thread but this one is joined.
        let before = unsafe { h.census() };
        assert_eq!(
            before.used,
            4 + before.remote,
            "live + remote != used: {before:?}"
        );
        let mut batch = RemoteBatch::new();
        for (p, who) in mine {
            // SAFETY: this thread holds the block.
            unsafe { check(p as *mut u8, SIZE, who) };
            // SAFETY: this thread owns `h` and the blocks.
            unsafe { h.free(&mut batch, p as *mut u8) };
        }
        // SAFETY: this thread owns `h`.
        unsafe { h.collect() };
        // SAFETY: quiescent.
        let after = unsafe { h.census() };
        assert_eq!((after.used, after.remote), (0, 0), "{after:?}");
        assert_eq!(after.free, after.carved, "{after:?}");
        assert_eq!(after.allocs, 8, "{after:?}");
    });
}

/// The owner thread exits (abandons its heap) while another thread still frees its blocks and a
/// third thread starts, possibly adopting the heap mid-way. The remote frees wait on the
/// abandoned heap's pages and reach the adopter; no block is lost or handed out twice, and no
/// heap is adopted by two threads.
#[test]
fn owner_exits_while_others_free() {
    loom_tests::model("owner_exits_while_others_free", || {
        let reg = Arc::new(Registry::new());
        let h = reg.acquire();
        // SAFETY: this thread owns `h` until it hands it to the owner thread below.
        let (a, b, c) = unsafe {
            (
                h.alloc(KIND, SIZE),
                h.alloc(KIND, SIZE),
                h.alloc(KIND, SIZE),
            )
        };
        for (p, who) in [(a, 1), (b, 2), (c, 3)] {
            // SAFETY: this thread holds the block.
            unsafe { stamp(p, SIZE, who) };
        }
        let (a, b, c) = (a as usize, b as usize, c as usize);
        let owner = thread::spawn(move || {
            let mut batch = RemoteBatch::new();
            // SAFETY: this thread holds the block.
            unsafe { check(c as *mut u8, SIZE, 3) };
            // SAFETY: the heap is this thread's now; `c` is its block, freed once; the heap is
            // not touched after `abandon`.
            unsafe {
                h.free(&mut batch, c as *mut u8);
                h.abandon();
            }
        });
        let remote = thread::spawn(move || {
            let mut batch = RemoteBatch::new();
            for (p, who) in [(a, 1), (b, 2)] {
                // SAFETY: this thread holds the block.
                unsafe { check(p as *mut u8, SIZE, who) };
                // SAFETY: live blocks, each freed once by this thread.
                unsafe { batch.free(p as *mut u8) };
                batch.flush();
            }
        });
        // A thread starting now: it adopts `h` if the owner has abandoned it, else makes a heap.
        let r2 = reg.clone();
        let starter = thread::spawn(move || {
            let h2 = r2.acquire();
            // SAFETY: `h2` is this thread's.
            let x = unsafe { h2.alloc(KIND, SIZE) };
            // SAFETY: this thread holds the block.
            unsafe { stamp(x, SIZE, 9) };
            (h2, x as usize)
        });
        owner.join().unwrap();
        remote.join().unwrap();
        let (h2, x) = starter.join().unwrap();
        let x = x as *mut u8;
        // SAFETY: this thread holds the block.
        unsafe { check(x, SIZE, 9) };
        // Quiescent: `h`'s pages hold `x` (if `h2` adopted `h`) and the remote frees not yet
        // collected.
        // SAFETY: every thread is joined.
        let (ch, c2) = unsafe { (h.census(), h2.census()) };
        let live_on_h = usize::from(h2 == h);
        assert_eq!(ch.used, live_on_h + ch.remote, "{ch:?}");
        if h2 != h {
            assert_eq!((c2.used, c2.remote), (1, 0), "{c2:?}");
        }
        // The starter exits; then this thread adopts every heap and collects.
        let mut batch = RemoteBatch::new();
        // SAFETY: `h2` was the starter's (joined); `x` is its block.
        unsafe {
            h2.free(&mut batch, x);
            h2.abandon();
        }
        let mut adopted = vec![reg.acquire()];
        if h2 != h {
            adopted.push(reg.acquire());
            assert_ne!(adopted[0], adopted[1], "a heap adopted twice");
        }
        for &g in &adopted {
            assert!(g == h || g == h2, "a third heap was made");
            // SAFETY: this thread adopted `g`.
            unsafe { g.collect() };
            // SAFETY: quiescent.
            let c = unsafe { g.census() };
            assert_eq!((c.used, c.remote), (0, 0), "{c:?}");
            assert_eq!(c.free, c.carved, "{c:?}");
        }
    });
}

/// Two threads start while one heap is abandoned: exactly one adopts it, the other makes a new
/// one.
#[test]
fn two_threads_race_to_adopt() {
    loom_tests::model("two_threads_race_to_adopt", || {
        let reg = Arc::new(Registry::new());
        let h = reg.acquire();
        // SAFETY: this thread owns `h` and leaves it.
        unsafe { h.abandon() };
        let spawn = |r: Arc<Registry>| thread::spawn(move || r.acquire());
        let t1 = spawn(reg.clone());
        let t2 = spawn(reg.clone());
        let (g1, g2) = (t1.join().unwrap(), t2.join().unwrap());
        assert_ne!(g1, g2, "one heap adopted by two threads");
        assert!(g1 == h || g2 == h, "the abandoned heap was not adopted");
    });
}

/// The full-page handshake: the owner fills a page (four blocks), so its next refill finds the
/// page full and arms it; another thread frees two of the page's blocks while the owner goes on
/// allocating and refilling. Whatever the interleaving, the remote frees are never stranded on a
/// full page: either the owner's arming saw them, or the first of them took the notice and put
/// the page on the owner's delayed list, from which the owner's next refill brings it back. At the
/// end nothing is lost and, once collected, the page's blocks are free again.
#[test]
fn full_page_is_brought_back_by_a_remote_free() {
    loom_tests::model("full_page_is_brought_back_by_a_remote_free", || {
        let reg = Registry::new();
        let h = reg.acquire();
        // SAFETY: this thread owns `h`; it holds every block it stamps.
        let first: Vec<usize> = (0..4)
            .map(|i| unsafe {
                let p = h.alloc(KIND, SIZE);
                stamp(p, SIZE, i + 1);
                p as usize
            })
            .collect();
        let (a, b) = (first[0], first[1]);
        let remote = thread::spawn(move || {
            for (p, who) in [(a, 1u8), (b, 2u8)] {
                let mut batch = RemoteBatch::new();
                // SAFETY: this thread holds the block, live and freed once here.
                unsafe {
                    check(p as *mut u8, SIZE, who);
                    batch.free(p as *mut u8);
                }
                batch.flush();
            }
        });
        // The fifth allocation finds the first page full and arms it; the later ones refill
        // again, draining the delayed list whenever the notice has been taken.
        let mut mine: Vec<(usize, u8)> = vec![(first[2], 3), (first[3], 4)];
        for who in 5..9u8 {
            // SAFETY: this thread owns `h`.
            let p = unsafe { h.alloc(KIND, SIZE) };
            assert!(
                mine.iter().all(|&(q, _)| q != p as usize),
                "a block handed out twice"
            );
            // SAFETY: this thread holds the block.
            unsafe { stamp(p, SIZE, who) };
            mine.push((p as usize, who));
        }
        remote.join().unwrap();
        // SAFETY: the other thread is joined: the heap is quiescent.
        let mid = unsafe { h.census() };
        assert_eq!(mid.used, mine.len() + mid.remote, "{mid:?}");
        let mut batch = RemoteBatch::new();
        for (p, who) in mine {
            // SAFETY: this thread holds the block and owns `h`.
            unsafe {
                check(p as *mut u8, SIZE, who);
                h.free(&mut batch, p as *mut u8);
            }
        }
        // SAFETY: this thread owns `h`.
        unsafe { h.collect() };
        // SAFETY: quiescent.
        let end = unsafe { h.census() };
        assert_eq!(
            (end.used, end.remote, end.delayed_pages),
            (0, 0, 0),
            "{end:?}"
        );
        assert_eq!(end.free, end.carved, "{end:?}");
    });
}
