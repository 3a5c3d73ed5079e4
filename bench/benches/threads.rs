//! Many threads on few cores: every thread allocates tensor-sized blocks (64 KiB-4 MiB,
//! log-uniform, 64-byte aligned), writes one byte per page and a check word, keeps the last four
//! live, and sends every eighth block it retires to the next thread, which frees it (the
//! pattern of intra-op worker pools handing tensors between threads). Nothing is tagged: this is
//! the global path, as a program that only declares the allocator runs it.
//!
//! Each configuration (`tensorpool_bench::Config`) runs in a child process of its own, whose
//! global allocator is the one under test; the parent runs the children interleaved (every
//! configuration once per round, the order rotating) and reports medians of wall time, minor
//! faults, peak RSS against the peak of live bytes, and the mapping count at the end.
//!
//! With `-- --then-alone N`, the workers do not exit when done: they park (a pool whose threads
//! wait for the next layer), and the main thread alone then allocates and frees N blocks of the
//! same sizes, keeping four live; that phase is timed on its own (`alone ms`), with the bytes
//! the main thread's cache holds at its end (tensorpool only): with the parked threads' caches
//! holding every byte the caches may hold together, those show whether their share came back.
//!
//! Run: `cargo bench -p tensorpool-bench --bench threads` (`-- --threads N` (16),
//! `-- --blocks N` per thread (1,000), `-- --then-alone N` (0), `-- --rounds N` (3),
//! `-- --allocs a,b`).

use std::alloc::{GlobalAlloc, Layout};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::Instant;
use tensorpool_bench::{
    arg_after, mappings, median, minor_faults, print_ratios, run_child, status_bytes, Rng, Switch,
    UNTAGGED_CONFIGS,
};

#[global_allocator]
static GLOBAL: Switch = Switch;

const KEEP: usize = 4;
const SEND_EVERY: u64 = 8;
const PAGE: usize = 4096;
const MIN: f64 = (64 << 10) as f64;
const MAX: f64 = (4 << 20) as f64;

/// A block in flight: its address, size and the word written at its start.
struct Block {
    p: usize,
    size: usize,
    word: u64,
}

/// Live bytes now and their peak (the blocks of every thread).
static LIVE: AtomicU64 = AtomicU64::new(0);
static PEAK: AtomicU64 = AtomicU64::new(0);

fn layout(size: usize) -> Layout {
    Layout::from_size_align(size, 64).unwrap()
}

fn take(rng: &mut Rng) -> Block {
    let u = (rng.next() >> 11) as f64 / (1u64 << 53) as f64;
    let size = ((MIN * (MAX / MIN).powf(u)) as usize).next_multiple_of(64);
    // SAFETY: the layout is not zero-sized.
    let p = unsafe { GLOBAL.alloc(layout(size)) };
    assert!(!p.is_null(), "allocation of {size} bytes failed");
    let word = rng.next();
    // SAFETY: `p` is a fresh block of `size` bytes, 64-byte aligned.
    unsafe {
        (p as *mut u64).write(word);
        for off in (PAGE..size).step_by(PAGE) {
            p.add(off).write(1);
        }
        p.add(size - 1).write(word as u8);
    }
    let live = LIVE.fetch_add(size as u64, Relaxed) + size as u64;
    PEAK.fetch_max(live, Relaxed);
    Block {
        p: p as usize,
        size,
        word,
    }
}

fn give_back(b: Block) {
    let p = b.p as *mut u8;
    // SAFETY: `b` is a live block this program wrote; checked, then freed once.
    unsafe {
        assert_eq!(
            (p as *const u64).read(),
            b.word,
            "a block's first word changed"
        );
        assert_eq!(
            p.add(b.size - 1).read(),
            b.word as u8,
            "a block's last byte changed"
        );
        GLOBAL.dealloc(p, layout(b.size));
    }
    LIVE.fetch_sub(b.size as u64, Relaxed);
}

fn child(threads: usize, blocks: usize, alone: usize) {
    let boxes: Arc<Vec<Mutex<Vec<Block>>>> =
        Arc::new((0..threads).map(|_| Mutex::new(Vec::new())).collect());
    // With a phase alone, the workers park between these two (all of them, and the main thread).
    let parked = Arc::new(std::sync::Barrier::new(threads + 1));
    let resume = Arc::new(std::sync::Barrier::new(threads + 1));
    let f0 = minor_faults();
    let t0 = Instant::now();
    let handles: Vec<_> = (0..threads)
        .map(|t| {
            let boxes = Arc::clone(&boxes);
            let (parked, resume) = (Arc::clone(&parked), Arc::clone(&resume));
            std::thread::spawn(move || {
                let mut rng = Rng(0x9e37_79b9_7f4a_7c15 ^ ((t as u64 + 1) * 0x2545_f491_4f6c_dd1d));
                let mut ring: std::collections::VecDeque<Block> =
                    std::collections::VecDeque::with_capacity(KEEP + 1);
                let mut inbox = Vec::new();
                for i in 0..blocks as u64 {
                    ring.push_back(take(&mut rng));
                    if ring.len() > KEEP {
                        let b = ring.pop_front().unwrap();
                        if i % SEND_EVERY == 0 {
                            boxes[(t + 1) % threads].lock().unwrap().push(b);
                        } else {
                            give_back(b);
                        }
                    }
                    if i % SEND_EVERY == 0 {
                        std::mem::swap(&mut inbox, &mut *boxes[t].lock().unwrap());
                        inbox.drain(..).for_each(give_back);
                    }
                }
                ring.into_iter().for_each(give_back);
                if alone > 0 {
                    parked.wait();
                    resume.wait();
                }
            })
        })
        .collect();
    let (mut alone_ms, mut alone_cached) = (0.0, 0u64);
    if alone > 0 {
        parked.wait();
        let mut rng = Rng(0x2545_f491_4f6c_dd1d);
        let mut ring = std::collections::VecDeque::with_capacity(KEEP + 1);
        let t1 = Instant::now();
        for _ in 0..alone {
            ring.push_back(take(&mut rng));
            if ring.len() > KEEP {
                give_back(ring.pop_front().unwrap());
            }
        }
        ring.into_iter().for_each(give_back);
        alone_ms = t1.elapsed().as_secs_f64() * 1e3;
        if GLOBAL.name().starts_with("tensorpool") {
            alone_cached = tensorpool_bench::TP.budget().thread_hot_bytes;
        }
        resume.wait();
    }
    for h in handles {
        h.join().unwrap();
    }
    for b in boxes.iter() {
        b.lock().unwrap().drain(..).for_each(give_back);
    }
    let ms = t0.elapsed().as_secs_f64() * 1e3;
    // How often tensorpool's threads found a lock held (the arena's), and how many of those
    // waits yielded: zeros under the other allocators.
    let w = tensorpool_bench::TP.lock_waits();
    println!(
        "RESULT {ms:.1} {} {} {} {} {} {} {} {alone_ms:.1} {alone_cached}",
        minor_faults() - f0,
        status_bytes("VmHWM:"),
        PEAK.load(Relaxed),
        mappings(),
        w.contended,
        w.spins,
        w.yields
    );
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.iter().any(|a| a == "--list") {
        return;
    }
    let threads: usize = arg_after(&args, "--threads").map_or(16, |v| v.parse().unwrap());
    let blocks: usize = arg_after(&args, "--blocks").map_or(1000, |v| v.parse().unwrap());
    let alone: usize = arg_after(&args, "--then-alone").map_or(0, |v| v.parse().unwrap());
    if args.iter().any(|a| a == "--child") {
        return child(threads, blocks, alone);
    }
    let rounds: usize = arg_after(&args, "--rounds").map_or(3, |v| v.parse().unwrap());
    let allocs: Vec<String> = arg_after(&args, "--allocs").map_or_else(
        || UNTAGGED_CONFIGS.iter().map(|s| s.to_string()).collect(),
        |v| v.split(',').map(String::from).collect(),
    );
    let (ts, bs, al) = (threads.to_string(), blocks.to_string(), alone.to_string());
    let mut runs: Vec<Vec<[f64; 10]>> = vec![Vec::new(); allocs.len()];
    for round in 0..rounds {
        for j in 0..allocs.len() {
            let i = (j + round) % allocs.len();
            let out = run_child(
                &allocs[i],
                &[
                    "--child",
                    "--threads",
                    &ts,
                    "--blocks",
                    &bs,
                    "--then-alone",
                    &al,
                ],
            );
            let line = out
                .lines()
                .find(|l| l.starts_with("RESULT"))
                .unwrap_or_else(|| panic!("no result from {}: {out}", allocs[i]));
            let v: Vec<f64> = line
                .split_whitespace()
                .skip(1)
                .map(|x| x.parse().unwrap())
                .collect();
            runs[i].push(core::array::from_fn(|k| v[k]));
        }
    }
    println!(
        "{threads} threads on {} cores, {blocks} blocks each (64 KiB-4 MiB, one byte per page), \
         {KEEP} kept, every {SEND_EVERY}th freed by another thread; untagged; medians of {rounds} \
         interleaved rounds",
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    println!(
        "{:<24} {:>9} {:>10} {:>9} {:>9} {:>8} {:>5} {:>10} {:>10} {:>8}",
        "allocator",
        "ms",
        "faults",
        "peak MiB",
        "live MiB",
        "RSS/live",
        "maps",
        "lock waits",
        "spins",
        "yields"
    );
    let mib = |b: f64| b / (1u64 << 20) as f64;
    let med: Vec<[f64; 10]> = runs
        .iter()
        .map(|r| core::array::from_fn(|k| median(r.iter().map(|x| x[k]).collect())))
        .collect();
    for (name, m) in allocs.iter().zip(&med) {
        println!(
            "{name:<24} {:>9.0} {:>10.0} {:>9.1} {:>9.1} {:>8.3} {:>5.0} {:>10.0} {:>10.0} {:>8.0}",
            m[0],
            m[1],
            mib(m[2]),
            mib(m[3]),
            m[2] / m[3],
            m[4],
            m[5],
            m[6],
            m[7]
        );
    }
    if alone > 0 {
        println!("then the workers park and the main thread alone runs {alone} blocks:");
        println!(
            "{:<24} {:>9} {:>14}",
            "allocator", "alone ms", "cached at end"
        );
        for (name, m) in allocs.iter().zip(&med) {
            println!("{name:<24} {:>9.1} {:>10.1} MiB", m[8], mib(m[9]));
        }
    }
    let cols: &[(&str, usize)] = if alone > 0 {
        &[
            ("time", 0),
            ("faults", 1),
            ("peak RSS", 2),
            ("alone time", 8),
        ]
    } else {
        &[("time", 0), ("faults", 1), ("peak RSS", 2)]
    };
    print_ratios(&allocs, &med, cols);
    println!("peak MiB: VmHWM of the child; live MiB: the peak of live block bytes; maps: /proc/self/maps lines at the end; lock waits, spins, yields: tensorpool's `lock_waits()` (acquisitions that found a lock held, busy-wait rounds, sched_yield calls; 0 for the others)");
}
