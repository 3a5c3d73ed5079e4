//! Core allocator benchmark: tensorpool against System (glibc), mimalloc and jemalloc, in one run.
//!
//! Every allocator is called through `GlobalAlloc` directly, so all four run in the same process
//! and the same conditions. Rounds are interleaved (A B C D A B C D ...) and the median of each is
//! reported, with its ratio to the best of the other three (below 1.0: tensorpool is faster).
//! Peak resident memory is measured per allocator in child processes (`--child ALLOC WORKLOAD`).
//!
//! Run: `cargo bench --bench core` (`-- --quick` for fewer rounds, `-- --only NAME` for the
//! workloads whose name contains NAME).

use mimalloc::MiMalloc;
use std::alloc::{GlobalAlloc, Layout, System};
use std::hint::black_box;
use std::sync::atomic::{AtomicPtr, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Instant;
use tensorpool::TensorPool;
use tensorpool_bench::{mappings, minor_faults, status_bytes, Rng};
use tikv_jemallocator::Jemalloc;

static TP: TensorPool = TensorPool::new();
static MI: MiMalloc = MiMalloc;
static JE: Jemalloc = Jemalloc;
static SYS: System = System;

const NAMES: [&str; 4] = ["tensorpool", "system", "mimalloc", "jemalloc"];

fn alloc_by(name: &str) -> &'static (dyn GlobalAlloc + Sync) {
    match name {
        "tensorpool" => &TP,
        "system" => &SYS,
        "mimalloc" => &MI,
        "jemalloc" => &JE,
        _ => panic!("unknown allocator {name}"),
    }
}

fn sizes(n: usize, seed: u64) -> Vec<Layout> {
    let mut r = Rng(seed);
    (0..n)
        .map(|_| Layout::from_size_align((r.next() % 1017 + 8) as usize, 8).unwrap())
        .collect()
}

/// malloc+free pairs of mixed sizes 8..1024.
fn pairs(a: &dyn GlobalAlloc) {
    let ls = sizes(4096, 1);
    for round in 0..250 {
        for l in &ls {
            unsafe {
                let p = a.alloc(*l);
                *p = round as u8;
                black_box(p);
                a.dealloc(p, *l);
            }
        }
    }
}

/// A window of 1,000 live objects: free the oldest, allocate a new one.
fn window(a: &dyn GlobalAlloc) {
    let ls = sizes(4096, 2);
    let mut ring: Vec<(*mut u8, Layout)> = Vec::with_capacity(1000);
    for l in ls.iter().take(1000) {
        ring.push((unsafe { a.alloc(*l) }, *l));
    }
    let mut i = 0;
    for step in 0..1_000_000usize {
        let l = ls[step % ls.len()];
        unsafe {
            let (p, ol) = ring[i];
            a.dealloc(p, ol);
            let q = a.alloc(l);
            *q = step as u8;
            ring[i] = (black_box(q), l);
        }
        i = (i + 1) % 1000;
    }
    for (p, l) in ring {
        unsafe { a.dealloc(p, l) };
    }
}

/// Sizes from 64 B to 64 KiB, log-uniform: a fifth of them above the 16 KiB small classes.
fn sizes_to_64k(n: usize, seed: u64) -> Vec<Layout> {
    let mut r = Rng(seed);
    (0..n)
        .map(|_| {
            let u = (r.next() % 1_000_000) as f64 / 1e6;
            let size = (64.0 * 1024f64.powf(u)) as usize;
            Layout::from_size_align(size, 8).unwrap()
        })
        .collect()
}

/// Producer/consumer: one thread allocates, another frees (cross-thread frees), through a
/// lock-free single-producer single-consumer ring; blocks of 8..1024 bytes.
fn producer_consumer(a: &'static (dyn GlobalAlloc + Sync)) {
    producer_consumer_of(a, sizes(1024, 3), 1_000_000)
}

/// The same with blocks of 64 B-64 KiB, log-uniform.
fn producer_consumer_64k(a: &'static (dyn GlobalAlloc + Sync)) {
    producer_consumer_of(a, sizes_to_64k(1024, 4), 300_000)
}

fn producer_consumer_of(a: &'static (dyn GlobalAlloc + Sync), ls: Vec<Layout>, n: usize) {
    const CAP: usize = 1024;
    let ring: Arc<Vec<AtomicPtr<u8>>> = Arc::new(
        (0..CAP)
            .map(|_| AtomicPtr::new(std::ptr::null_mut()))
            .collect(),
    );
    let ls = Arc::new(ls);
    let (r2, l2) = (ring.clone(), ls.clone());
    let consumer = std::thread::spawn(move || {
        for i in 0..n {
            let slot = &r2[i % CAP];
            let p = loop {
                let p = slot.swap(std::ptr::null_mut(), Ordering::Acquire);
                if !p.is_null() {
                    break p;
                }
                std::hint::spin_loop();
            };
            unsafe { a.dealloc(p, l2[i % l2.len()]) };
        }
    });
    for i in 0..n {
        let l = ls[i % ls.len()];
        let p = unsafe { a.alloc(l) };
        unsafe { *p = i as u8 };
        let slot = &ring[i % CAP];
        while !slot.load(Ordering::Relaxed).is_null() {
            std::hint::spin_loop();
        }
        slot.store(p, Ordering::Release);
    }
    consumer.join().unwrap();
}

/// Larson-like: two threads replace random slots of a shared array; the block freed may have
/// been allocated by the other thread.
fn larson(a: &'static (dyn GlobalAlloc + Sync)) {
    const SLOTS: usize = 2000;
    /// A slot some thread is working on (never a real block: blocks are at least 8-aligned).
    const HELD: *mut u8 = std::ptr::without_provenance_mut(1);
    let slots: Arc<Vec<(AtomicPtr<u8>, AtomicUsize)>> = Arc::new(
        (0..SLOTS)
            .map(|_| (AtomicPtr::new(std::ptr::null_mut()), AtomicUsize::new(8)))
            .collect(),
    );
    let hs: Vec<_> = (0..2)
        .map(|t| {
            let slots = slots.clone();
            std::thread::spawn(move || {
                let mut r = Rng(77 + t);
                for _ in 0..500_000 {
                    let size = (r.next() % 1017 + 8) as usize;
                    let p = unsafe { a.alloc(Layout::from_size_align_unchecked(size, 8)) };
                    unsafe { *p = size as u8 };
                    let (sp, ss) = &slots[r.next() as usize % SLOTS];
                    // Take the slot: swap in the HELD marker (spin while the other thread holds
                    // it); the size is only touched by the holder. Put ours in, then release.
                    // (An earlier protocol let both threads take an empty slot at once, so a
                    // block was later freed with the other's size: jemalloc's sized free then
                    // corrupted its heap and once hung this benchmark.)
                    let old = loop {
                        let old = sp.swap(HELD, Ordering::AcqRel);
                        if old != HELD {
                            break old;
                        }
                        std::hint::spin_loop();
                    };
                    let old_size = ss.swap(size, Ordering::Relaxed);
                    if !old.is_null() {
                        unsafe { a.dealloc(old, Layout::from_size_align_unchecked(old_size, 8)) };
                    }
                    sp.store(p, Ordering::Release);
                }
            })
        })
        .collect();
    for h in hs {
        h.join().unwrap();
    }
    for (sp, ss) in slots.iter() {
        let p = sp.swap(std::ptr::null_mut(), Ordering::AcqRel);
        if !p.is_null() {
            unsafe {
                a.dealloc(
                    p,
                    Layout::from_size_align_unchecked(ss.load(Ordering::Relaxed), 8),
                )
            };
        }
    }
}

/// False sharing: two threads allocate small objects and write them in a loop; objects of
/// different threads that share a cache line slow both down.
fn false_sharing(a: &'static (dyn GlobalAlloc + Sync)) {
    let hs: Vec<_> = (0..2)
        .map(|t| {
            std::thread::spawn(move || {
                let l = Layout::from_size_align(16, 8).unwrap();
                for round in 0..2_000 {
                    let objs: Vec<*mut u64> =
                        (0..16).map(|_| unsafe { a.alloc(l) as *mut u64 }).collect();
                    for k in 0..200u64 {
                        for &o in &objs {
                            unsafe { std::ptr::write_volatile(o, k + t + round) };
                        }
                    }
                    for o in objs {
                        unsafe { a.dealloc(o.cast(), l) };
                    }
                }
            })
        })
        .collect();
    for h in hs {
        h.join().unwrap();
    }
}

/// Cache-scratch (after Hoard's benchmark): the main thread allocates one small object per
/// thread, neighbours on one cache line in most allocators, and each thread frees the one it was
/// given, then allocates its own objects of that size and writes each many times. An allocator
/// that hands a thread the line it freed for the other thread (passive false sharing) makes the
/// two threads' writes fight over one line.
fn cache_scratch(a: &'static (dyn GlobalAlloc + Sync)) {
    let l = Layout::from_size_align(8, 8).unwrap();
    let given: Vec<usize> = (0..2).map(|_| unsafe { a.alloc(l) } as usize).collect();
    let hs: Vec<_> = given
        .into_iter()
        .map(|g| {
            std::thread::spawn(move || {
                unsafe { a.dealloc(g as *mut u8, l) };
                for i in 0..200_000u64 {
                    let o = unsafe { a.alloc(l) } as *mut u64;
                    for k in 0..100 {
                        unsafe { std::ptr::write_volatile(o, i + k) };
                    }
                    unsafe { a.dealloc(black_box(o).cast(), l) };
                }
            })
        })
        .collect();
    for h in hs {
        h.join().unwrap();
    }
}

/// Tensor-sized blocks: a window of 4 live blocks of 20 KiB to 1 MiB (a layer's activations),
/// free the oldest, allocate the next, write one byte per page (so memory handed back to the OS
/// and faulted in again shows).
fn tensor_blocks(a: &dyn GlobalAlloc, seed: u64, steps: usize) {
    let mut r = Rng(seed);
    let ls: Vec<Layout> = (0..64)
        .map(|_| {
            let size = 20 * 1024 + r.below(1004) * 1024;
            Layout::from_size_align(size, 64).unwrap()
        })
        .collect();
    let mut ring: [(*mut u8, Layout); 4] = [(std::ptr::null_mut(), ls[0]); 4];
    for (step, l) in ls.iter().cycle().take(steps).enumerate() {
        let slot = &mut ring[step % 4];
        unsafe {
            if !slot.0.is_null() {
                a.dealloc(slot.0, slot.1);
            }
            let p = a.alloc(*l);
            for off in (0..l.size()).step_by(4096) {
                *p.add(off) = step as u8;
            }
            *slot = (black_box(p), *l);
        }
    }
    for (p, l) in ring {
        unsafe { a.dealloc(p, l) };
    }
}

fn tensor_blocks_2t(a: &'static (dyn GlobalAlloc + Sync)) {
    let hs: Vec<_> = (0..2u64)
        .map(|t| std::thread::spawn(move || tensor_blocks(a, 7 + t, 100_000)))
        .collect();
    for h in hs {
        h.join().unwrap();
    }
}

/// Big-block churn: one block live at a time, sizes cycling 1, 6, 2, 24, 4, 64, 8, 16 MiB, every
/// page written (an allocator that hands big blocks back to the OS faults them all in again).
fn churn(a: &dyn GlobalAlloc) {
    const MIB: usize = 1 << 20;
    for cycle in 0..20u8 {
        for mib in [1, 6, 2, 24, 4, 64, 8, 16] {
            let l = Layout::from_size_align(mib * MIB, 64).unwrap();
            unsafe {
                let p = a.alloc(l);
                for off in (0..l.size()).step_by(4096) {
                    *p.add(off) = cycle;
                }
                a.dealloc(black_box(p), l);
            }
        }
    }
}

type Workload = fn(&'static (dyn GlobalAlloc + Sync));
const WORKLOADS: [(&str, Workload); 10] = [
    ("pairs 8..1024 (1M)", |a| pairs(a)),
    ("window of 1,000 live (1M)", |a| window(a)),
    ("producer/consumer (1M)", producer_consumer),
    ("producer/consumer to 64K (300k)", producer_consumer_64k),
    ("larson-like, 2 threads (1M)", larson),
    ("false sharing, 2 threads", false_sharing),
    ("cache-scratch, 2 threads", cache_scratch),
    ("tensor blocks 20K-1M (200k)", |a| {
        tensor_blocks(a, 5, 200_000)
    }),
    ("tensor blocks, 2 threads", tensor_blocks_2t),
    ("big-block churn 1-64 MiB (160)", |a| churn(a)),
];

/// Peak resident KiB, minor faults and mappings of a child process running one workload under
/// one allocator. The child reports its own VmHWM (a child's ru_maxrss would include the
/// parent's high-water mark), its faults during the workload and its mappings after it.
fn child_figures(alloc: &str, w: usize) -> Option<(u64, u64, u64)> {
    let exe = std::env::current_exe().ok()?;
    let out = std::process::Command::new(exe)
        .args(["--child", alloc, &w.to_string()])
        .output()
        .ok()?;
    let s = String::from_utf8(out.stdout).ok()?;
    let mut f = s.split_whitespace().map(|v| v.parse::<u64>());
    Some((f.next()?.ok()?, f.next()?.ok()?, f.next()?.ok()?))
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.len() >= 4 && args[1] == "--child" {
        let w: usize = args[3].parse().unwrap();
        let f0 = minor_faults();
        (WORKLOADS[w].1)(alloc_by(&args[2]));
        let faults = minor_faults() - f0;
        println!("{} {faults} {}", status_bytes("VmHWM:") / 1024, mappings());
        return;
    }
    if args.iter().any(|a| a == "--list") {
        return;
    }
    let rounds = if args.iter().any(|a| a == "--quick") {
        3
    } else {
        7
    };
    println!(
        "core benchmark: median of {rounds} interleaved rounds; ratio = tensorpool / best other"
    );
    println!(
        "{:<31} {:>11} {:>11} {:>11} {:>11} {:>6}   each alone in a child (tp / sys / mi / je): \
         peak RSS KiB; minor faults; mappings",
        "workload", "tensorpool", "system", "mimalloc", "jemalloc", "ratio"
    );
    let only = args
        .iter()
        .position(|a| a == "--only")
        .and_then(|i| args.get(i + 1));
    for (w, (name, f)) in WORKLOADS.iter().enumerate() {
        if only.is_some_and(|o| !name.contains(o.as_str())) {
            continue;
        }
        let mut times = [[0f64; 16]; 4];
        #[allow(clippy::needless_range_loop)]
        for r in 0..rounds {
            for (i, n) in NAMES.iter().enumerate() {
                let t = Instant::now();
                f(alloc_by(n));
                times[i][r] = t.elapsed().as_secs_f64() * 1e3;
            }
        }
        let med: Vec<f64> = times
            .iter()
            .map(|t| {
                let mut v = t[..rounds].to_vec();
                v.sort_by(|a, b| a.partial_cmp(b).unwrap());
                v[rounds / 2]
            })
            .collect();
        let best_other = med[1..].iter().cloned().fold(f64::INFINITY, f64::min);
        let figs: Vec<Option<(u64, u64, u64)>> =
            NAMES.iter().map(|n| child_figures(n, w)).collect();
        let col = |i: usize| -> String {
            figs.iter()
                .map(|f| f.map_or("?".into(), |f| [f.0, f.1, f.2][i].to_string()))
                .collect::<Vec<_>>()
                .join(" / ")
        };
        println!(
            "{:<31} {:>9.2}ms {:>9.2}ms {:>9.2}ms {:>9.2}ms {:>6.2}   {}; {}; {}",
            name,
            med[0],
            med[1],
            med[2],
            med[3],
            med[0] / best_other,
            col(0),
            col(1),
            col(2)
        );
    }
}
