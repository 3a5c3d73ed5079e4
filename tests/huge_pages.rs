//! Transparent huge pages through the global allocator, with the default policy (`auto`): a
//! large block is on huge pages when the kernel allows them (its mapping's `AnonHugePages` in
//! `/proc/self/smaps` grows by the block's size when it is written), the statistics say so, a
//! freed block serves the next request of another kind without faults, and `never` (or a kernel
//! in `never` mode) keeps 4 KiB pages. Skipped, with the reason printed, where THP is off.
use std::alloc::{GlobalAlloc, Layout};
use tensorpool::{with_kind, TensorKind, TensorPool};
mod common;

#[global_allocator]
static ALLOC: TensorPool = TensorPool::new();

const MIB: usize = 1 << 20;

/// The kernel's THP mode: the bracketed word of the sysfs file, or `None` without one.
fn kernel_mode() -> Option<String> {
    let s = std::fs::read_to_string("/sys/kernel/mm/transparent_hugepage/enabled").ok()?;
    let open = s.find('[')?;
    let close = s[open..].find(']')? + open;
    Some(s[open + 1..close].to_string())
}

/// `AnonHugePages` (bytes) of the mapping holding address `p`.
fn huge_bytes_at(p: usize) -> u64 {
    let smaps = std::fs::read_to_string("/proc/self/smaps").unwrap();
    let mut inside = false;
    for line in smaps.lines() {
        let first = line.split(' ').next().unwrap_or("");
        if let Some((lo, hi)) = first.split_once('-') {
            if let (Ok(lo), Ok(hi)) = (usize::from_str_radix(lo, 16), usize::from_str_radix(hi, 16))
            {
                inside = lo <= p && p < hi;
                continue;
            }
        }
        if inside {
            if let Some(v) = line.strip_prefix("AnonHugePages:") {
                return v
                    .trim()
                    .trim_end_matches(" kB")
                    .trim()
                    .parse::<u64>()
                    .unwrap()
                    << 10;
            }
        }
    }
    0
}

/// This thread's minor faults (the other test spawns children meanwhile).
fn minor_faults() -> u64 {
    let mut u: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_THREAD, &mut u) };
    u.ru_minflt as u64
}

/// Allocate and write a block of `size` bytes under `kind`; its huge-page bytes gained and the
/// faults its writing took.
fn written_block(kind: TensorKind, size: usize) -> (*mut u8, Layout, u64, u64) {
    let l = Layout::from_size_align(size, 64).unwrap();
    let p = with_kind(kind, || unsafe { ALLOC.alloc(l) });
    assert!(!p.is_null());
    let h0 = huge_bytes_at(p as usize);
    let f0 = minor_faults();
    unsafe { p.write_bytes(0x5a, size) };
    let faults = minor_faults() - f0;
    (p, l, huge_bytes_at(p as usize).saturating_sub(h0), faults)
}

#[test]
fn a_large_block_is_on_huge_pages_when_the_kernel_allows() {
    let mode = kernel_mode();
    let Some(mode) = mode.clone().filter(|m| m == "always" || m == "madvise") else {
        eprintln!(
            "skipped: transparent huge pages are {mode:?} on this kernel (need always or madvise)"
        );
        return;
    };
    if std::env::var_os("TENSORPOOL_HUGE_PAGES").is_some() {
        eprintln!("skipped: TENSORPOOL_HUGE_PAGES is set; this test checks the default");
        return;
    }
    // The block is packed against whatever lies below it (no 2 MiB start of its own): at
    // least 7 whole huge pages lie inside it whatever its offset, and the zone is advised.
    let (p, l, gained, faults) = written_block(TensorKind::General, 16 * MIB);
    let stats = ALLOC.stats();
    assert!(stats.arena.huge_pages, "auto under THP {mode}: on");
    // The kernel may fail to find a free huge page now and then (fragmented memory); most of
    // the block must still be huge.
    assert!(
        gained >= 12 * MIB as u64,
        "only {gained} bytes of a written 16 MiB block on huge pages (THP {mode}, {faults} faults)"
    );
    assert!(faults < 256, "{faults} faults writing 16 MiB on huge pages");
    let cov = stats.huge_pages.expect("smaps readable");
    assert!(
        cov.huge_bytes >= gained && cov.huge_bytes <= cov.resident_bytes,
        "{cov:?}"
    );
    assert!(stats
        .to_json()
        .contains("\"huge_pages\":{\"resident_bytes\":"));
    assert!(stats.to_string().contains("huge pages on, "), "{stats}");

    // Freed, it serves another kind's request from resident memory: no fresh pages.
    unsafe { ALLOC.dealloc(p, l) };
    let act0 = ALLOC.large_counters(TensorKind::Activation);
    let (q, lq, _, faults) = written_block(TensorKind::Activation, 12 * MIB);
    let act1 = ALLOC.large_counters(TensorKind::Activation);
    assert_eq!(act1.misses, act0.misses, "reused: {act1:?}");
    assert!(faults < 64, "{faults} faults writing a reused block");
    unsafe { ALLOC.dealloc(q, lq) };
}

/// `TENSORPOOL_HUGE_PAGES=0` and `never` turn huge pages off, a bad value warns and keeps the
/// default; each in a child process, which configures itself from its environment.
#[test]
fn the_option_turns_huge_pages_off_and_bad_values_warn() {
    for (value, on) in [("0", false), ("never", false), ("sometimes", true)] {
        let (out, err) = common::run_child_test(
            "child_reports_its_policy",
            &[("TENSORPOOL_HUGE_PAGES", value)],
        );
        let policy = line_value(&out, "policy ");
        let mode = kernel_mode();
        let kernel_on = matches!(mode.as_deref(), Some("always") | Some("madvise"));
        assert_eq!(policy, u64::from(on && kernel_on), "{value}: {out} {err}");
        if value == "sometimes" {
            assert!(
                err.contains("TENSORPOOL_HUGE_PAGES=\"sometimes\" is not valid"),
                "{err}"
            );
            assert!(err.contains("keeping auto"), "{err}");
        } else if mode.as_deref() == Some("madvise") {
            // Off: the kernel gives huge pages only where asked, so none.
            let gained: u64 = line_value(&out, "gained ");
            assert_eq!(gained, 0, "{value}: huge pages without advice: {out}");
        }
    }
}

fn line_value(out: &str, key: &str) -> u64 {
    out.lines()
        .find_map(|l| l.contains(key).then(|| l.rsplit(key).next().unwrap_or("")))
        .unwrap_or_else(|| panic!("no {key} in {out}"))
        .trim()
        .parse()
        .unwrap()
}

#[test]
fn child_reports_its_policy() {
    if std::env::var_os("TENSORPOOL_TEST_CHILD").is_none() {
        return;
    }
    let (p, l, gained, _) = written_block(TensorKind::KvCache, 8 * MIB);
    println!("policy {}", u8::from(ALLOC.arena_counters().huge_pages));
    println!("gained {gained}");
    unsafe { ALLOC.dealloc(p, l) };
}

/// THP's mode when it is `madvise` and the policy is the default (`TENSORPOOL_HUGE_PAGES`
/// unset); otherwise says why the calling test is skipped and returns `None`.
fn madvise_mode_and_default_policy() -> Option<String> {
    let Some(mode) = kernel_mode().filter(|m| m == "madvise") else {
        eprintln!("skipped: this test needs THP in madvise mode (the kernel decides otherwise)");
        return None;
    };
    if std::env::var_os("TENSORPOOL_HUGE_PAGES").is_some() {
        eprintln!("skipped: TENSORPOOL_HUGE_PAGES is set; this test checks the default");
        return None;
    }
    Some(mode)
}

/// Huge pages go where they will be dense: a process that holds a few hundred KiB keeps its
/// small blocks (the main thread's and another's) and its first large blocks on 4 KiB pages (a
/// 2 MiB page would be mostly empty); so does a thread with 1 MiB of small blocks while the
/// heaps hold less than 64 MiB of segments, and one with 80 MB has its later segments on huge
/// pages; the first block of 1 MiB or more arms them for large blocks, and the range its first
/// blocks were placed in is collapsed into a huge page then (in a fresh child process: the other
/// tests of this binary arm them in theirs).
#[test]
fn a_small_process_stays_on_small_pages_until_it_holds_a_tensor() {
    let Some(mode) = madvise_mode_and_default_policy() else {
        return;
    };
    let (out, err) = common::run_child_test("child_grows_from_small_to_tensors", &[]);
    assert_eq!(line_value(&out, "small "), 0, "THP {mode}: {out} {err}");
    assert_eq!(line_value(&out, "thread "), 0, "THP {mode}: {out} {err}");
    assert_eq!(
        line_value(&out, "dense thread "),
        0,
        "THP {mode}: {out} {err}"
    );
    let many = line_value(&out, "many segments ");
    assert!(many >= 2 * MIB as u64, "THP {mode}: {out} {err}");
    assert_eq!(line_value(&out, "medium "), 0, "THP {mode}: {out} {err}");
    let tensor = line_value(&out, "tensor ");
    assert!(tensor >= 12 * MIB as u64, "THP {mode}: {out} {err}");
    let collapsed = line_value(&out, "collapsed ");
    assert!(collapsed >= 2 * MIB as u64, "THP {mode}: {out} {err}");
}

/// The most any of `small`'s blocks has on huge pages (every 50th block looked at: each look
/// reads the whole of /proc/self/smaps).
fn small_huge(small: &[Vec<u64>]) -> u64 {
    let huge = small
        .iter()
        .step_by(50)
        .map(|v| huge_bytes_at(v.as_ptr() as usize));
    huge.max().unwrap_or(0)
}

/// On a thread of its own, `n` small blocks written with `i ^ salt`: what they hold on huge
/// pages (`small_huge`), their contents checked before they are freed.
fn small_blocks_on_a_thread(n: u64, salt: u64) -> u64 {
    std::thread::spawn(move || {
        let small: Vec<Vec<u64>> = (0..n).map(|i| vec![i ^ salt; 8]).collect();
        let huge = small_huge(&small);
        for (i, v) in small.iter().enumerate() {
            assert!(v.iter().all(|&x| x == i as u64 ^ salt));
        }
        huge
    })
    .join()
    .unwrap()
}

/// On a thread of its own, 80,000 blocks of 1,000 bytes (20 segments), each written with its
/// index: what the last of them hold on huge pages, their contents checked before they are freed.
fn many_segments_on_a_thread() -> u64 {
    std::thread::spawn(|| {
        let blocks: Vec<Vec<u8>> = (0..80_000u32).map(|i| vec![i as u8; 1000]).collect();
        let huge = tail_huge(&blocks);
        check_indexed(&blocks);
        huge
    })
    .join()
    .unwrap()
}

#[test]
fn child_grows_from_small_to_tensors() {
    if std::env::var_os("TENSORPOOL_TEST_CHILD").is_none() {
        return;
    }
    // Written, checked before they are freed: 2,000 small blocks on this thread and another,
    // 16,000 (1 MiB) on a third, whose segment is dense enough for a huge page, and 4 of 64 KiB
    // (below the 512 KiB of large blocks that arm huge pages).
    let small: Vec<Vec<u64>> = (0..2000u64).map(|i| vec![i; 8]).collect();
    println!("small {}", small_huge(&small));
    println!("thread {}", small_blocks_on_a_thread(2000, !0));
    let medium: Vec<Vec<u8>> = (0..4u8).map(|i| vec![i; 64 << 10]).collect();
    let at = |v: &[u8]| huge_bytes_at(v.as_ptr() as usize);
    println!("medium {}", medium.iter().map(|v| at(v)).max().unwrap_or(0));
    println!("dense thread {}", small_blocks_on_a_thread(16_000, 0));
    println!("many segments {}", many_segments_on_a_thread());
    let (p, l, gained, _) = written_block(TensorKind::Activation, 16 * MIB);
    println!("tensor {gained}");
    // The medium blocks share the tensor's mapping: what it holds on huge pages beyond the
    // tensor's is the collapsed range.
    println!("collapsed {}", at(&medium[0]).saturating_sub(gained));
    unsafe { ALLOC.dealloc(p, l) };
    for (i, v) in small.iter().enumerate() {
        assert!(v.iter().all(|&x| x == i as u64));
    }
    for (i, v) in medium.iter().enumerate() {
        assert!(v.iter().all(|&x| x == i as u8));
    }
}

/// A block grown in place by `realloc` arms huge pages as a new block of its size would: a
/// vector grown from 64 KiB to 8 MiB, every page written as it grows, ends on huge pages (it
/// went on 4 KiB pages for good when only new blocks armed them). In a fresh child process.
#[test]
fn a_vector_grown_in_place_goes_on_huge_pages() {
    let Some(mode) = madvise_mode_and_default_policy() else {
        return;
    };
    let (out, err) = common::run_child_test("child_grows_a_vector", &[]);
    assert_eq!(line_value(&out, "moved "), 0, "THP {mode}: {out} {err}");
    let huge = line_value(&out, "grown ");
    assert!(huge >= 4 * MIB as u64, "THP {mode}: {out} {err}");
}

#[test]
fn child_grows_a_vector() {
    if std::env::var_os("TENSORPOOL_TEST_CHILD").is_none() {
        return;
    }
    let mut v: Vec<u8> = Vec::with_capacity(64 << 10);
    let first = v.as_ptr() as usize;
    while v.capacity() < 8 * MIB {
        v.reserve_exact(64 << 10);
        let from = v.len();
        let to = v.capacity();
        // One byte per page of the new part, as a tensor filled page by page.
        v.resize(to, 0);
        for i in (from..to).step_by(4096) {
            v[i] = (i / 4096) as u8;
        }
    }
    println!("moved {}", u64::from(v.as_ptr() as usize != first));
    println!("grown {}", huge_bytes_at(v.as_ptr() as usize));
    for i in (0..v.len()).step_by(4096) {
        assert_eq!(v[i], (i / 4096) as u8);
    }
}

/// A heap that fills its segments with blocks it keeps goes on huge pages before the heaps
/// hold 64 MiB of segments (a program building one large structure: its second segment on),
/// and one that has freed half of what it touched stays on 4 KiB pages. In a fresh child
/// process, which never holds 64 MiB.
#[test]
fn a_heap_that_grows_densely_goes_on_huge_pages_early() {
    let Some(mode) = madvise_mode_and_default_policy() else {
        return;
    };
    let (out, err) = common::run_child_test("child_grows_densely", &[]);
    assert_eq!(line_value(&out, "sparse "), 0, "THP {mode}: {out} {err}");
    let dense = line_value(&out, "dense ");
    assert!(dense >= 2 * MIB as u64, "THP {mode}: {out} {err}");
}

/// A heap that keeps most of what it makes but whose other blocks another thread frees (a
/// producer) stays on 4 KiB pages, however dense its live blocks: it churns, and what it
/// touched would be resident whole on huge pages. In a fresh child process, which never holds
/// 64 MiB.
#[test]
fn a_heap_whose_blocks_other_threads_free_stays_on_small_pages() {
    let Some(mode) = madvise_mode_and_default_policy() else {
        return;
    };
    let (out, err) = common::run_child_test("child_produces", &[]);
    assert!(
        line_value(&out, "kept ") >= 16_000,
        "THP {mode}: {out} {err}"
    );
    assert_eq!(line_value(&out, "produced "), 0, "THP {mode}: {out} {err}");
}

#[test]
fn child_produces() {
    if std::env::var_os("TENSORPOOL_TEST_CHILD").is_none() {
        return;
    }
    // The producer makes 1,000-byte blocks holding their number, keeps three of every four
    // (16 MB in the end, as the dense thread of `child_grows_densely`) and sends the fourth to
    // a consumer, which checks and frees it; it waits for each batch to be freed, so the
    // producer takes the frees back as it refills its pages.
    let producer = std::thread::spawn(|| {
        let (tx, rx) = std::sync::mpsc::channel::<Vec<(u32, Vec<u8>)>>();
        let (done_tx, done_rx) = std::sync::mpsc::channel::<()>();
        let consumer = std::thread::spawn(move || {
            for batch in rx {
                for (i, v) in &batch {
                    assert!(v.iter().all(|&x| x == *i as u8));
                }
                drop(batch);
                done_tx.send(()).unwrap();
            }
        });
        // Each kept block and its number.
        let mut kept: Vec<Vec<u8>> = Vec::with_capacity(16_000);
        let mut numbers: Vec<u32> = Vec::with_capacity(16_000);
        let mut i = 0u32;
        while kept.len() < 16_000 {
            let mut batch = Vec::with_capacity(64);
            for _ in 0..256 {
                let v = vec![i as u8; 1000];
                if i % 4 == 3 {
                    batch.push((i, v));
                } else {
                    kept.push(v);
                    numbers.push(i);
                }
                i += 1;
            }
            tx.send(batch).unwrap();
            done_rx.recv().unwrap();
        }
        drop(tx);
        consumer.join().unwrap();
        let huge = tail_huge(&kept);
        for (v, i) in kept.iter().zip(&numbers) {
            assert!(v.iter().all(|&x| x == *i as u8));
        }
        (kept.len(), huge)
    });
    let (n, huge) = producer.join().unwrap();
    println!("kept {n}");
    println!("produced {huge}");
}

/// The most the last twentieth of `blocks` hold on huge pages (four of them looked at: each
/// look reads the whole of /proc/self/smaps).
fn tail_huge(blocks: &[Vec<u8>]) -> u64 {
    let n = blocks.len() / 20;
    blocks[blocks.len() - n..]
        .iter()
        .step_by(n.div_ceil(4))
        .map(|v| huge_bytes_at(v.as_ptr() as usize))
        .max()
        .unwrap_or(0)
}

/// Each block of `blocks` holds its index (mod 256) in every byte.
fn check_indexed(blocks: &[Vec<u8>]) {
    for (i, v) in blocks.iter().enumerate() {
        assert!(v.iter().all(|&x| x == i as u8));
    }
}

#[test]
fn child_grows_densely() {
    if std::env::var_os("TENSORPOOL_TEST_CHILD").is_none() {
        return;
    }
    // No `ALLOC.init()`: a program of small blocks only is configured at its first slow path.
    // Sparse: 6 MB of 1,000-byte blocks, every second one freed, then 6 MB of 3,000-byte blocks
    // (a class of its own, so the freed ones are not reused): three quarters of what the heap
    // touched is live. Kept until the end, so that the dense thread takes fresh segments.
    let sparse = std::thread::spawn(|| {
        let mut a: Vec<Vec<u8>> = (0..6_000u32).map(|i| vec![i as u8; 1000]).collect();
        for v in a.iter_mut().skip(1).step_by(2) {
            *v = Vec::new();
        }
        let b: Vec<Vec<u8>> = (0..2_000u32).map(|i| vec![i as u8; 3000]).collect();
        (tail_huge(&b), a, b)
    });
    let (huge, a, b) = sparse.join().unwrap();
    println!("sparse {huge}");
    // Dense: 16 MB of 1,000-byte blocks, all kept.
    let dense = std::thread::spawn(|| {
        let blocks: Vec<Vec<u8>> = (0..16_000u32).map(|i| vec![i as u8; 1000]).collect();
        let huge = tail_huge(&blocks);
        check_indexed(&blocks);
        huge
    });
    println!("dense {}", dense.join().unwrap());
    check_indexed(&b);
    for (i, v) in a.iter().enumerate().step_by(2) {
        assert!(v.iter().all(|&x| x == i as u8));
    }
}
