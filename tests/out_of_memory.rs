//! When the OS refuses memory: a child process under an address-space limit (`RLIMIT_AS`) fills
//! it with 16 MiB blocks, frees them all, and then gets at least 95 % as much again in other
//! sizes (40 MiB blocks, a mix of 64 KiB to 4 MiB, and 2 KiB small blocks), without calling
//! `trim`: the arena releases what it holds free and retries before it returns null.
//!
//! Everything runs through `GlobalAlloc` directly, since a refused `Vec` would abort, and the
//! pointer arrays are reserved before the limit is set.
use std::alloc::{GlobalAlloc, Layout};
use tensorpool::TensorPool;
mod common;

#[global_allocator]
static ALLOC: TensorPool = TensorPool::new();

const MIB: usize = 1 << 20;
/// Address space the child may use beyond what it holds when the test starts.
const HEADROOM: usize = 1 << 30;

fn vm_size() -> usize {
    let s = std::fs::read_to_string("/proc/self/status").unwrap();
    let kb: usize = s
        .lines()
        .find(|l| l.starts_with("VmSize:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap();
    kb * 1024
}

/// Allocate blocks of the sizes `next` yields until one is refused; returns the bytes held.
/// Each block gets a byte written every 64 KiB (so it is memory in use, not only address
/// space) and a pattern checked before it is freed.
fn fill(ptrs: &mut Vec<(*mut u8, Layout)>, mut next: impl FnMut() -> usize) -> usize {
    let mut total = 0;
    loop {
        if ptrs.len() == ptrs.capacity() {
            return total;
        }
        let l = Layout::from_size_align(next(), 64).unwrap();
        let p = unsafe { ALLOC.alloc(l) };
        if p.is_null() {
            return total;
        }
        for off in (0..l.size()).step_by(64 << 10) {
            unsafe { p.add(off).write(off as u8 ^ 0x5a) };
        }
        total += l.size();
        ptrs.push((p, l));
    }
}

fn free_all(ptrs: &mut Vec<(*mut u8, Layout)>) {
    for (p, l) in ptrs.drain(..) {
        for off in (0..l.size()).step_by(64 << 10) {
            assert_eq!(
                unsafe { p.add(off).read() },
                off as u8 ^ 0x5a,
                "contents changed"
            );
        }
        unsafe { ALLOC.dealloc(p, l) };
    }
}

#[test]
fn after_running_out_memory_of_other_sizes_is_had_without_trim() {
    if std::env::var_os("TENSORPOOL_TEST_CHILD").is_none() {
        let (out, _) = common::run_child_test(
            "after_running_out_memory_of_other_sizes_is_had_without_trim",
            &[],
        );
        print!("{out}");
        return;
    }
    // Reserved before the limit: a million small blocks' pointers.
    let mut ptrs: Vec<(*mut u8, Layout)> = Vec::with_capacity(1 << 20);
    let mut rng = common::Rng(0x00f1);
    let limit = vm_size() + HEADROOM;
    let rl = libc::rlimit {
        rlim_cur: limit as libc::rlim_t,
        rlim_max: libc::RLIM_INFINITY,
    };
    assert_eq!(unsafe { libc::setrlimit(libc::RLIMIT_AS, &rl) }, 0);

    let first = fill(&mut ptrs, || 16 * MIB);
    free_all(&mut ptrs);
    let big = fill(&mut ptrs, || 40 * MIB);
    free_all(&mut ptrs);
    let mixed = fill(&mut ptrs, || {
        (64 << 10) + rng.below(4 * MIB as u64 - (64 << 10))
    });
    free_all(&mut ptrs);
    let small = fill(&mut ptrs, || 2048);
    free_all(&mut ptrs);
    let again = fill(&mut ptrs, || 16 * MIB);
    free_all(&mut ptrs);

    let a = ALLOC.arena_counters();
    println!(
        "16 MiB blocks {} MiB; then 40 MiB blocks {} MiB, mixed {} MiB, 2 KiB blocks {} MiB, \
         16 MiB blocks again {} MiB; recoveries {}, regions {}",
        first / MIB,
        big / MIB,
        mixed / MIB,
        small / MIB,
        again / MIB,
        a.recoveries,
        a.regions
    );
    assert!(
        first >= HEADROOM * 9 / 10,
        "only {} MiB at first",
        first / MIB
    );
    for (what, got) in [
        ("40 MiB blocks", big),
        ("a mix of sizes", mixed),
        ("2 KiB blocks", small),
        ("16 MiB blocks again", again),
    ] {
        assert!(
            got * 100 >= first * 95,
            "{what}: {} MiB after {} MiB",
            got / MIB,
            first / MIB
        );
    }
    assert!(a.recoveries > 0, "the limit was never reached: {a:?}");
}
