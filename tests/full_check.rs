//! `TENSORPOOL_CHECK=full` through the global allocator, each case in a child process (the mode
//! is read once, at the process's first allocation): a 1-byte overflow and a write after free
//! are reported, bad frees too, and a correct program runs to the end with its contents intact
//! and the census at exit reporting nothing wrong.
use std::alloc::{GlobalAlloc, Layout};
use tensorpool::{with_kind, TensorKind, TensorPool};

mod common;

#[global_allocator]
static ALLOC: TensorPool = TensorPool::new();

fn l(size: usize) -> Layout {
    Layout::from_size_align(size, 8).unwrap()
}

/// The cases, by number (run in a child: `FULL_CASE=n`).
fn case(which: u32) {
    unsafe {
        match which {
            // One byte past the end of a small block.
            0 => {
                let p = with_kind(TensorKind::KvCache, || ALLOC.alloc(l(100)));
                *p.add(100) = 1;
                ALLOC.dealloc(p, l(100));
            }
            // A write after free, found when the block leaves the quarantine.
            1 => {
                let p = ALLOC.alloc(l(100));
                ALLOC.dealloc(p, l(100));
                *p.add(5) = 0x41;
                for _ in 0..3000 {
                    let q = ALLOC.alloc(l(48));
                    ALLOC.dealloc(q, l(48));
                }
            }
            // One byte past the end of a large block.
            2 => {
                let n = 3 << 20;
                let p = ALLOC.alloc(l(n));
                *p.add(n) = 1;
                ALLOC.dealloc(p, l(n));
            }
            // A double free, an interior free.
            3 => {
                let p = ALLOC.alloc(l(64));
                ALLOC.dealloc(p, l(64));
                ALLOC.dealloc(p, l(64));
            }
            4 => {
                let p = ALLOC.alloc(l(100));
                ALLOC.dealloc(p.add(16), l(100));
            }
            // A write after free left in the quarantine until exit: the census finds it.
            5 => {
                let p = ALLOC.alloc(l(200));
                ALLOC.dealloc(p, l(200));
                *p.add(199) = 7;
            }
            // A correct program.
            6 => correct_program(),
            _ => {}
        }
    }
    println!("survived");
}

/// Collections of every size, across threads, through realloc, with their contents checked.
fn correct_program() {
    let mut all: Vec<Vec<u64>> = Vec::new();
    for i in 0..2000u64 {
        let n = (i * 37 % 5000) as usize;
        all.push((0..n as u64).map(|x| x ^ i).collect());
    }
    let big: Vec<u8> = with_kind(TensorKind::Activation, || vec![3u8; 5 << 20]);
    let handles: Vec<_> = (0..4u64)
        .map(|t| {
            std::thread::spawn(move || {
                let mut s = String::new();
                for i in 0..5000u64 {
                    s.push_str(&format!("{t}:{i},"));
                }
                s
            })
        })
        .collect();
    for (t, h) in handles.into_iter().enumerate() {
        let s = h.join().unwrap();
        assert!(s.starts_with(&format!("{t}:0,")) && s.ends_with(&format!("{t}:4999,")));
    }
    let mut grown: Vec<u32> = Vec::new();
    for i in 0..300_000u32 {
        grown.push(i);
    }
    assert!(grown.iter().enumerate().all(|(i, &v)| v == i as u32));
    for (i, v) in all.iter().enumerate() {
        assert!(v.iter().enumerate().all(|(x, &y)| y == x as u64 ^ i as u64));
    }
    assert!(big.iter().all(|&b| b == 3));
    for shift in [4, 6, 12, 16, 21, 23, 25] {
        for size in [1, 100, 5000, 3 << 20] {
            let layout = Layout::from_size_align(size, 1 << shift).unwrap();
            let p = unsafe { ALLOC.alloc(layout) };
            assert!(!p.is_null() && p as usize % (1 << shift) == 0, "{layout:?}");
            unsafe {
                std::ptr::write_bytes(p, 9, size);
                let q = ALLOC.realloc(p, layout, size * 2);
                assert!(q as usize % (1 << shift) == 0);
                assert!((0..size).all(|i| *q.add(i) == 9));
                ALLOC.dealloc(q, Layout::from_size_align(size * 2, 1 << shift).unwrap());
            }
        }
    }
    assert_eq!(
        unsafe { ALLOC.kind_of(big.as_ptr() as *mut u8) },
        TensorKind::Activation
    );
}

#[test]
fn child_entry() {
    if let Ok(n) = std::env::var("FULL_CASE") {
        case(n.parse().unwrap());
    }
}

fn run_case(n: u32, check: &str) -> std::process::Output {
    common::child_output(
        "child_entry",
        &[("FULL_CASE", &n.to_string()), ("TENSORPOOL_CHECK", check)],
    )
}

#[test]
fn full_checks_report_overflows_writes_after_free_and_bad_frees() {
    if std::env::var_os("FULL_CASE").is_some() {
        return;
    }
    let cases: [(u32, &str); 6] = [
        (
            0,
            "buffer overflow: the 100-byte block (kind kv_cache) was written past its end, at +0",
        ),
        (1, "write after free: the 100-byte block at 0x"),
        (2, "buffer overflow: the 3145728-byte block (kind general)"),
        (
            3,
            "double free of a 64-byte block (kind general), freed before",
        ),
        (
            4,
            "not the start of a block: 16 bytes into the 100-byte block",
        ),
        (5, "write after free: the 200-byte block at 0x"),
    ];
    for (n, want) in cases {
        let out = run_case(n, "full");
        let line = common::assert_stopped(&out, &n.to_string(), want);
        if n == 1 {
            assert!(line.contains("at offset 5 (byte 0x41)"), "{line}");
        }
    }
    // The same overflow goes unseen by the default checks, which look at frees only.
    let out = run_case(0, "default");
    assert!(
        out.status.success(),
        "the overflow under the default checks"
    );
}

#[test]
fn a_correct_program_runs_under_full_checks() {
    if std::env::var_os("FULL_CASE").is_some() {
        return;
    }
    let out = run_case(6, "full");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{:?} {err}", out.status);
    assert!(String::from_utf8_lossy(&out.stdout).contains("survived"));
    assert!(
        err.lines().any(
            |l| l.starts_with("tensorpool: TENSORPOOL_CHECK=full: at exit")
                && l.contains("canaries intact")
                && l.contains("fills intact")
        ),
        "{err}"
    );
}

#[test]
fn a_bad_mode_is_warned_about() {
    if std::env::var_os("FULL_CASE").is_some() {
        return;
    }
    let out = run_case(99, "fulll");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success());
    assert!(
        err.contains("tensorpool: warning: TENSORPOOL_CHECK=\"fulll\" is not valid"),
        "{err}"
    );
}
