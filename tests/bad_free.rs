//! Frees the allocator must refuse, through the global allocator: each in a child process that
//! must die by SIGABRT after one line naming tensorpool, the problem and the address, with
//! nothing written to the allocator's state first. The same cases under the preload library are
//! in `preload/tests/preload.rs`.
use std::alloc::{GlobalAlloc, Layout};
use tensorpool::{with_kind, TensorKind, TensorPool};

mod common;

#[global_allocator]
static ALLOC: TensorPool = TensorPool::new();

fn l(size: usize) -> Layout {
    Layout::from_size_align(size, 8).unwrap()
}

/// The bad frees, by number (run in a child: `BAD_FREE=n`).
fn bad_free(which: u32) {
    unsafe {
        match which {
            // Inside a small block.
            0 => {
                let p = ALLOC.alloc(l(100));
                ALLOC.dealloc(p.add(16), l(100));
            }
            // Inside a large block.
            1 => {
                let p = ALLOC.alloc(l(1 << 20));
                ALLOC.dealloc(p.add(8192), l(1 << 20));
            }
            // A small block freed twice by its owner.
            2 => {
                let p = with_kind(TensorKind::Attention, || ALLOC.alloc(l(64)));
                ALLOC.dealloc(p, l(64));
                ALLOC.dealloc(p, l(64));
            }
            // A large block freed twice.
            3 => {
                let p = ALLOC.alloc(l(8 << 20));
                ALLOC.dealloc(p, l(8 << 20));
                ALLOC.dealloc(p, l(8 << 20));
            }
            // A stack address, a static's, an unmapped one.
            4 => {
                let x = [0u8; 64];
                ALLOC.dealloc(std::hint::black_box(x.as_ptr() as *mut u8).add(16), l(16));
            }
            5 => {
                static S: [u8; 4096] = [0; 4096];
                ALLOC.dealloc(S.as_ptr().add(64) as *mut u8, l(16));
            }
            6 => ALLOC.dealloc(0x100_0000_0000 as *mut u8, l(16)),
            // A small block freed twice by another thread (the second free finds it in the
            // thread's own batch of remote frees).
            7 => {
                let p = ALLOC.alloc(l(48)) as usize;
                std::thread::spawn(move || {
                    ALLOC.dealloc(p as *mut u8, l(48));
                    ALLOC.dealloc(p as *mut u8, l(48));
                })
                .join()
                .ok();
            }
            // Freed by another thread (published at its exit), then again by the owner.
            8 => {
                let p = ALLOC.alloc(l(48)) as usize;
                std::thread::spawn(move || ALLOC.dealloc(p as *mut u8, l(48)))
                    .join()
                    .unwrap();
                ALLOC.dealloc(p as *mut u8, l(48));
            }
            // realloc of an address inside a small block.
            9 => {
                let p = ALLOC.alloc(l(100));
                ALLOC.realloc(p.add(16), l(100), 200);
            }
            // A block-aligned address in a small page, never handed out.
            10 => {
                let p = ALLOC.alloc(l(4096));
                ALLOC.dealloc(p.add(4096 * 8), l(4096));
            }
            // Freed by another thread, its batch published (its trim), then freed again there.
            11 => {
                let p = ALLOC.alloc(l(48)) as usize;
                std::thread::spawn(move || {
                    ALLOC.dealloc(p as *mut u8, l(48));
                    ALLOC.trim();
                    ALLOC.dealloc(p as *mut u8, l(48));
                })
                .join()
                .ok();
            }
            // A large block freed twice while the first free waits in the thread's cache.
            12 => {
                let p = ALLOC.alloc(l(64 << 10));
                ALLOC.dealloc(p, l(64 << 10));
                ALLOC.dealloc(p, l(64 << 10));
            }
            // A large block freed twice after its thread's cache gave it back to the arena (the thread
            // exits).
            14 => {
                let p = std::thread::spawn(|| {
                    let p = ALLOC.alloc(l(1 << 20));
                    ALLOC.dealloc(p, l(1 << 20));
                    p as usize
                })
                .join()
                .unwrap();
                ALLOC.dealloc(p as *mut u8, l(1 << 20));
            }
            // A small block freed twice by its owner, after other frees in between.
            13 => {
                let p = ALLOC.alloc(l(32));
                let q = ALLOC.alloc(l(32));
                ALLOC.dealloc(p, l(32));
                ALLOC.dealloc(q, l(32));
                ALLOC.dealloc(p, l(32));
            }
            _ => {}
        }
    }
    println!("survived");
}

#[test]
fn child_entry() {
    if let Ok(n) = std::env::var("BAD_FREE") {
        bad_free(n.parse().unwrap());
    }
}

#[test]
fn every_bad_free_stops_the_process_with_a_message() {
    if std::env::var_os("BAD_FREE").is_some() {
        return;
    }
    let cases: [(u32, &str); 15] = [
        (
            0,
            "not the start of a block: 16 bytes into the 128-byte block",
        ),
        (1, "not the start of a block: 8192 bytes into the"),
        (2, "double free of a 64-byte block (kind attention)"),
        (3, "double free"),
        (4, "not a live block of this allocator"),
        (5, "not a live block of this allocator"),
        (6, "not a live block of this allocator"),
        (7, "double free of a 48-byte block"),
        (8, "double free of a 48-byte block"),
        (9, "realloc("),
        (10, "was never handed out"),
        (11, "double free of a 48-byte block"),
        (12, "KiB block (kind general); aborting"),
        (14, "the memory there is free (a double free"),
        (13, "double free of a 32-byte block"),
    ];
    for (n, want) in cases {
        let out = common::child_output("child_entry", &[("BAD_FREE", &n.to_string())]);
        common::assert_stopped(&out, &n.to_string(), want);
        assert!(!String::from_utf8_lossy(&out.stdout).contains("survived"));
    }
}

fn size(i: usize) -> usize {
    16 + i * 37 % 3000
}

/// A pattern of block `i`: its bytes, and its second word (where a free block's mark goes).
fn fill(p: usize, i: usize) {
    unsafe {
        std::ptr::write_bytes(p as *mut u8, i as u8, size(i));
        *(p as *mut usize).add(1) = i.wrapping_mul(0x9e37_79b9_7f4a_7c15);
    }
}

fn check(p: usize, i: usize) {
    unsafe {
        assert_eq!(
            *(p as *const usize).add(1),
            i.wrapping_mul(0x9e37_79b9_7f4a_7c15)
        );
        assert!((16..size(i)).all(|j| *(p as *const u8).add(j) == i as u8));
    }
}

/// What the checks must not catch: frees of live blocks however they travel (by their owner,
/// by other threads, after the owner has gone), with every block's contents checked before it
/// is freed, including blocks whose second word the program wrote as it liked.
#[test]
fn valid_frees_pass_the_checks() {
    if std::env::var_os("BAD_FREE").is_some() {
        return;
    }
    for round in 0..3 {
        let v: Vec<usize> = (0..3000)
            .map(|i| {
                let p = unsafe { ALLOC.alloc(l(size(i))) } as usize;
                fill(p, i);
                p
            })
            .collect();
        let (mine, theirs) = v.split_at(1500);
        let theirs = theirs.to_vec();
        let t = std::thread::spawn(move || {
            for (j, &p) in theirs.iter().enumerate().rev() {
                check(p, 1500 + j);
                unsafe { ALLOC.dealloc(p as *mut u8, l(size(1500 + j))) };
            }
        });
        for (i, &p) in mine.iter().enumerate() {
            check(p, i);
            unsafe { ALLOC.dealloc(p as *mut u8, l(size(i))) };
        }
        t.join().unwrap();
        // Blocks allocated by a thread that has exited, freed here.
        let gone: Vec<usize> = std::thread::spawn(move || {
            (0..500)
                .map(|i| {
                    let p = unsafe { ALLOC.alloc(l(size(i + round))) } as usize;
                    fill(p, i + round);
                    p
                })
                .collect()
        })
        .join()
        .unwrap();
        for (i, &p) in gone.iter().enumerate() {
            check(p, i + round);
            unsafe { ALLOC.dealloc(p as *mut u8, l(size(i + round))) };
        }
    }
}
