//! Frees the allocator must refuse, through the global allocator: each in a child process that
//! must die by SIGABRT after one line naming tensorpool, the problem and the address, with
//! nothing written to the allocator's state first. The same cases under the preload library are
//! in `preload/tests/preload.rs`.
use std::alloc::{GlobalAlloc, Layout};
use std::os::unix::process::ExitStatusExt;
use std::process::Command;
use tensorpool::{with_kind, TensorKind, TensorPool};

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
    let cases: [(u32, &str); 11] = [
        (
            0,
            "not the start of a block: 16 bytes into the 128-byte block",
        ),
        (1, "not a live block of this allocator"),
        (2, "double free of a 64-byte block (kind attention)"),
        (3, "not a live block of this allocator"),
        (4, "not a live block of this allocator"),
        (5, "not a live block of this allocator"),
        (6, "not a live block of this allocator"),
        (7, "double free of a 48-byte block"),
        (8, "double free of a 48-byte block"),
        (9, "realloc("),
        (10, "was never handed out"),
    ];
    for (n, want) in cases {
        let out = Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "child_entry",
                "--nocapture",
                "--test-threads",
                "1",
            ])
            .env("BAD_FREE", n.to_string())
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(
            out.status.signal(),
            Some(libc::SIGABRT),
            "case {n} was not stopped: {:?} {err}",
            out.status
        );
        let line = err
            .lines()
            .find(|l| l.starts_with("tensorpool: "))
            .unwrap_or_else(|| panic!("case {n}: no message: {err}"));
        assert!(
            line.contains(want) && line.contains("aborting"),
            "case {n}: {line}"
        );
        assert!(!String::from_utf8_lossy(&out.stdout).contains("survived"));
    }
}

/// What the checks must not catch: frees of live blocks however they travel, and blocks whose
/// second word holds the free mark by chance (a live block with the mark costs a search, never
/// an abort).
#[test]
fn valid_frees_pass_the_checks() {
    if std::env::var_os("BAD_FREE").is_some() {
        return;
    }
    let mut v: Vec<usize> = (0..2000)
        .map(|i| unsafe { ALLOC.alloc(l(16 + i % 200)) } as usize)
        .collect();
    // Copy every block's second word from a freed neighbour's: the marks of freed blocks
    // reappear in live ones.
    let freed: Vec<usize> = v.drain(..1000).collect();
    for (i, &p) in freed.iter().enumerate() {
        unsafe { ALLOC.dealloc(p as *mut u8, l(16 + i % 200)) };
    }
    let marks: Vec<usize> = freed
        .iter()
        .map(|&p| unsafe { *(p as *const usize).add(1) })
        .collect();
    for (j, &p) in v.iter().enumerate() {
        unsafe { *(p as *mut usize).add(1) = marks[j % marks.len()] };
    }
    let half: Vec<usize> = v.drain(..500).collect();
    std::thread::spawn(move || {
        for (j, p) in half.into_iter().enumerate() {
            unsafe { ALLOC.dealloc(p as *mut u8, l(16 + (1000 + j) % 200)) };
        }
    })
    .join()
    .unwrap();
    for (j, &p) in v.iter().enumerate() {
        unsafe { ALLOC.dealloc(p as *mut u8, l(16 + (1500 + j) % 200)) };
    }
}
