//! Tensor-trace benchmark: a Qwen3-VL-like inference (`common/qwen_trace.rs`) replayed three times
//! in one process, every tensor allocated under its kind, 64-byte aligned, and touched.
//!
//! Each configuration runs in its own child process (`--child MODE`), whose global allocator is the
//! one under test (`tensorpool_bench::Switch`), so that page faults and peak resident memory are its
//! own; the parent runs the children interleaved (every configuration once per round, the order
//! rotating) and reports medians. Touch modes: `page` writes one byte per 4 KiB page of every tensor
//! (the cost of faults alone), `full` writes every byte (faults plus the work a kernel would do).
//! Configurations (`tensorpool_bench::Config`): tensorpool through per-kind handles (tagged),
//! tensorpool as the global allocator with nothing tagged (what most users do), glibc, mimalloc,
//! jemalloc, and jemalloc with decay off; `tensorpool-4k` and `tensorpool-untagged-4k`
//! (huge pages off) on request.
//!
//! Run: `cargo bench -p tensorpool-bench --bench trace` (`-- --rounds N`, `-- --modes page`,
//! `-- --allocs a,b`).

#[path = "common/qwen_trace.rs"]
mod qwen_trace;

use allocator_api2::alloc::Allocator;
use qwen_trace::{Event, Model, Trace};
use std::alloc::{GlobalAlloc, Layout};
use std::ptr::NonNull;
use std::time::Instant;
use tensorpool::{TensorKind, TensorPool};
use tensorpool_bench::{
    arg_after, median, minor_faults, run_child, status_bytes, Config, Switch, TP,
};

#[global_allocator]
static GLOBAL: Switch = Switch;

const ALLOCS: [&str; 6] = [
    "tensorpool",
    "tensorpool-untagged",
    "system",
    "mimalloc",
    "jemalloc",
    "jemalloc-nodecay",
];
const MODES: [&str; 2] = ["page", "full"];
const REQUESTS: usize = 3;
const ALIGN: usize = 64;

/// The allocator a child replays with.
enum Backend {
    /// Per-kind handles of the tensorpool that is also the global allocator.
    Pool(&'static TensorPool),
    /// The global allocator, untagged.
    Global(&'static (dyn GlobalAlloc + Sync)),
}

impl Backend {
    fn current() -> Backend {
        if GLOBAL.name() == "tensorpool" && !Config::untagged() {
            Backend::Pool(&TP)
        } else {
            Backend::Global(&GLOBAL)
        }
    }

    fn alloc(&self, kind: TensorKind, layout: Layout) -> *mut u8 {
        match self {
            Backend::Pool(p) => p
                .handle(kind)
                .allocate(layout)
                .map_or(std::ptr::null_mut(), |b| b.cast::<u8>().as_ptr()),
            // SAFETY: layouts in the trace are never zero-sized.
            Backend::Global(a) => unsafe { a.alloc(layout) },
        }
    }

    unsafe fn free(&self, kind: TensorKind, p: *mut u8, layout: Layout) {
        match self {
            Backend::Pool(pool) => unsafe {
                pool.handle(kind)
                    .deallocate(NonNull::new_unchecked(p), layout)
            },
            Backend::Global(a) => unsafe { a.dealloc(p, layout) },
        }
    }
}

fn touch(p: *mut u8, bytes: usize, full: bool, v: u8) {
    if full {
        unsafe { std::ptr::write_bytes(p, v, bytes) };
    } else {
        for off in (0..bytes).step_by(4096) {
            unsafe { p.add(off).write_volatile(v) };
        }
    }
    std::hint::black_box(p);
}

/// Replay one request's trace `REQUESTS` times; print per-request times and faults, peak RSS and
/// the trace's peak live bytes as one `RESULT` line for the parent.
fn child(mode: &str) {
    let trace = Trace::build(&Model::QWEN3_VL, 1);
    let full = mode == "full";
    let backend = Backend::current();
    let alloc = GLOBAL.name();
    if alloc == "jemalloc" {
        // SAFETY: the name is a NUL-terminated jemalloc option of type ssize_t.
        let dirty: isize =
            unsafe { tikv_jemalloc_ctl::raw::read(b"opt.dirty_decay_ms\0") }.unwrap();
        assert_eq!(
            dirty == -1,
            std::env::var_os("_RJEM_MALLOC_CONF").is_some(),
            "decay setting not applied"
        );
    }
    let mut slots: Slots = vec![
        (
            std::ptr::null_mut(),
            Layout::new::<u8>(),
            TensorKind::General
        );
        trace.ids()
    ];
    let base_rss = status_bytes("VmRSS:");
    let report = std::env::var("TRACE_REPORT").ok();
    if let (Backend::Pool(p), Some(_)) = (&backend, &report) {
        p.start_timeline_every(std::time::Duration::from_micros(100));
    }
    // TRACE_TOUCH=decode: outside the decode phase, allocate and free without touching memory,
    // so a cache simulator's data accesses are the decode phase's (for cachegrind, which cannot
    // restrict itself to one function).
    let decode_only = std::env::var("TRACE_TOUCH").is_ok_and(|v| v == "decode");
    let requests: usize = std::env::var("TRACE_REQUESTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(REQUESTS);
    let mut line = format!("RESULT {alloc} {mode}");
    for r in 0..requests {
        if report.is_some() {
            TP.mark(&format!("request {}", r + 1));
        }
        let t0 = Instant::now();
        let f0 = minor_faults();
        // The decode phase (Phase(2) to Phase(3)) runs in its own function, so a profiler can
        // measure it alone: `valgrind --tool=callgrind --toggle-collect='*decode_phase*'`.
        let evs = &trace.events;
        let mut i = 0;
        while i < evs.len() {
            if let Event::Phase(2) = evs[i] {
                let end = evs[i..]
                    .iter()
                    .position(|e| matches!(e, Event::Phase(3)))
                    .map_or(evs.len(), |j| i + j);
                decode_phase(&evs[i..end], &backend, &mut slots, full);
                i = end;
                continue;
            }
            if decode_only {
                replay_untouched(&evs[i], &backend, &mut slots);
            } else {
                replay(&evs[i], &backend, &mut slots, full);
            }
            i += 1;
        }
        let ms = t0.elapsed().as_secs_f64() * 1e3;
        if std::env::var_os("TRACE_DEBUG").is_some() {
            let f: Vec<u64> = TP
                .all_large_counters()
                .iter()
                .map(|c| c.fresh_bytes >> 10)
                .collect();
            let m: Vec<u64> = TP.all_large_counters().iter().map(|c| c.misses).collect();
            eprintln!(
                "fresh KiB per kind {f:?} misses {m:?} arena {:?}",
                TP.arena_counters()
            );
        }
        line += &format!(" {ms:.3} {}", minor_faults() - f0);
    }
    if let (Backend::Pool(p), Some(dir)) = (&backend, &report) {
        // TRACE_REPORT=DIR: the statistics table and the memory timeline of this child. A relative
        // DIR is relative to the workspace root (cargo runs benches in the package's directory).
        let dir = if std::path::Path::new(dir).is_absolute() {
            dir.clone()
        } else {
            format!("{}/../{dir}", env!("CARGO_MANIFEST_DIR"))
        };
        p.stop_timeline();
        let stats = p.stats();
        let tl = p.timeline();
        let title = format!("tensorpool, tensor trace ({mode} mode): {REQUESTS} requests");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(format!("{dir}/trace-{mode}-stats.txt"), stats.to_string()).unwrap();
        std::fs::write(format!("{dir}/trace-{mode}-timeline.csv"), tl.to_csv()).unwrap();
        std::fs::write(
            format!("{dir}/trace-{mode}-timeline.svg"),
            tl.to_svg(&title, 900, 420),
        )
        .unwrap();
        // The HTML report: the whole run, then one chart per request (the markers).
        p.write_html(format!("{dir}/trace-{mode}-report.html"))
            .unwrap();
        eprintln!("{stats}");
    }
    let hwm = status_bytes("VmHWM:");
    let maps = std::fs::read_to_string("/proc/self/maps")
        .unwrap()
        .lines()
        .count();
    line += &format!(" {hwm} {base_rss} {} {maps}", trace.peak_live);
    println!("{line}");
}

type Slots = Vec<(*mut u8, Layout, TensorKind)>;

/// Replay one event of the trace.
#[inline(always)]
fn replay(ev: &Event, backend: &Backend, slots: &mut Slots, full: bool) {
    match *ev {
        Event::Alloc { id, kind, bytes } => {
            let layout = Layout::from_size_align(bytes, ALIGN).unwrap();
            let p = backend.alloc(kind, layout);
            assert!(!p.is_null() && p as usize % ALIGN == 0);
            touch(p, bytes, full, id as u8);
            slots[id] = (p, layout, kind);
        }
        Event::Free { id } => {
            let (p, layout, kind) = slots[id];
            // SAFETY: `p` was allocated by this backend with this layout and kind.
            unsafe { backend.free(kind, p, layout) };
        }
        Event::Phase(_) => {}
    }
}

/// Replay an event without touching the block (allocator work only).
fn replay_untouched(ev: &Event, backend: &Backend, slots: &mut Slots) {
    match *ev {
        Event::Alloc { id, kind, bytes } => {
            let layout = Layout::from_size_align(bytes, ALIGN).unwrap();
            let p = backend.alloc(kind, layout);
            assert!(!p.is_null());
            slots[id] = (p, layout, kind);
        }
        _ => replay(ev, backend, slots, false),
    }
}

/// The decode steps of one request (see the loop in `child`).
#[inline(never)]
fn decode_phase(evs: &[Event], backend: &Backend, slots: &mut Slots, full: bool) {
    for ev in evs {
        replay(ev, backend, slots, full);
    }
}

/// One child's figures.
#[derive(Clone, Debug)]
struct Run {
    ms: [f64; REQUESTS],
    faults: [u64; REQUESTS],
    hwm: u64,
    base: u64,
    peak_live: u64,
    maps: u64,
}

fn parse(line: &str) -> Run {
    let f: Vec<&str> = line.split_whitespace().skip(3).collect();
    let num = |i: usize| f[i].parse::<f64>().unwrap();
    Run {
        ms: std::array::from_fn(|r| num(2 * r)),
        faults: std::array::from_fn(|r| num(2 * r + 1) as u64),
        hwm: num(2 * REQUESTS) as u64,
        base: num(2 * REQUESTS + 1) as u64,
        peak_live: num(2 * REQUESTS + 2) as u64,
        maps: num(2 * REQUESTS + 3) as u64,
    }
}

fn run(config: &str, mode: &str) -> Run {
    let out = run_child(config, &["--child", mode]);
    let line = out
        .lines()
        .find(|l| l.starts_with("RESULT"))
        .unwrap_or_else(|| panic!("no result from {config} {mode}: {out}"));
    parse(line)
}

/// Medians over runs of one allocator and mode.
struct Summary {
    total: f64,
    first: f64,
    later: f64,
    faults_first: f64,
    faults_later: f64,
    hwm: f64,
    net: f64,
    peak_live: f64,
    maps: f64,
}

fn summarise(runs: &[Run]) -> Summary {
    let m = |f: &dyn Fn(&Run) -> f64| median(runs.iter().map(f).collect());
    Summary {
        total: m(&|r| r.ms.iter().sum()),
        first: m(&|r| r.ms[0]),
        later: m(&|r| r.ms[1..].iter().sum()),
        faults_first: m(&|r| r.faults[0] as f64),
        faults_later: m(&|r| r.faults[1..].iter().sum::<u64>() as f64),
        hwm: m(&|r| r.hwm as f64),
        net: m(&|r| r.hwm.saturating_sub(r.base) as f64),
        peak_live: m(&|r| r.peak_live as f64),
        maps: m(&|r| r.maps as f64),
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if let Some(i) = args.iter().position(|a| a == "--child") {
        child(&args[i + 1]);
        return;
    }
    if args.iter().any(|a| a == "--list") {
        return; // `cargo bench -- --list` asks a harness for its benchmarks
    }
    let rounds: usize = arg_after(&args, "--rounds").map_or(3, |r| r.parse().unwrap());
    let modes: Vec<String> = arg_after(&args, "--modes")
        .map_or(MODES.iter().map(|m| m.to_string()).collect(), |m| {
            m.split(',').map(str::to_string).collect()
        });
    let allocs: Vec<String> = arg_after(&args, "--allocs")
        .map_or(ALLOCS.iter().map(|a| a.to_string()).collect(), |a| {
            a.split(',').map(str::to_string).collect()
        });
    let m = Model::QWEN3_VL;
    println!(
        "Qwen3-VL-like trace: vision {}x{}x{}, prefill {} tokens x {} layers, {} decode steps; \
         {REQUESTS} requests per process; medians of {rounds} interleaved rounds",
        m.vision_layers, m.patches, m.vision_width, m.prompt, m.text_layers, m.decode_steps
    );
    for mode in &modes {
        let mut runs: Vec<Vec<Run>> = vec![Vec::new(); allocs.len()];
        for round in 0..rounds {
            for j in 0..allocs.len() {
                let i = (j + round) % allocs.len();
                runs[i].push(run(&allocs[i], mode));
            }
        }
        let sums: Vec<Summary> = runs.iter().map(|r| summarise(r)).collect();
        println!("\ntouch mode: {mode}");
        println!(
            "{:<17} {:>9} {:>9} {:>9} {:>10} {:>10} {:>8} {:>9} {:>9} {:>5}",
            "allocator",
            "total ms",
            "req1 ms",
            "req2-3 ms",
            "req1 flt",
            "req2-3 flt",
            "2-3/1",
            "RSS MiB",
            "RSS/live",
            "maps"
        );
        for (name, s) in allocs.iter().zip(&sums) {
            println!(
                "{:<17} {:>9.0} {:>9.0} {:>9.0} {:>10.0} {:>10.0} {:>7.2}% {:>9.0} {:>9.3} {:>5.0}",
                name,
                s.total,
                s.first,
                s.later,
                s.faults_first,
                s.faults_later,
                100.0 * s.faults_later / s.faults_first.max(1.0),
                s.hwm / 1048576.0,
                s.net / s.peak_live,
                s.maps,
            );
        }
        let others: Vec<usize> = (0..allocs.len())
            .filter(|&i| !allocs[i].starts_with("tensorpool"))
            .collect();
        for (tp, name) in allocs.iter().enumerate() {
            if !name.starts_with("tensorpool") {
                continue;
            }
            let best_of = |f: &dyn Fn(&Summary) -> f64| -> (f64, usize) {
                others
                    .iter()
                    .map(|&i| (f(&sums[i]), i))
                    .fold((f64::INFINITY, 0), |a, b| if b.0 < a.0 { b } else { a })
            };
            if others.is_empty() {
                continue;
            }
            let (total, bt) = best_of(&|s| s.total);
            let (later, bl) = best_of(&|s| s.later);
            let (net, bn) = best_of(&|s| s.net);
            let s = &sums[tp];
            println!(
                "{name} / best other: total {:.2} ({}), requests 2-3 {:.2} ({}), RSS/live {:.3} \
                 against the lowest {:.3} ({})",
                s.total / total,
                allocs[bt],
                s.later / later,
                allocs[bl],
                s.net / s.peak_live,
                net / s.peak_live,
                allocs[bn],
            );
        }
        println!(
            "peak live bytes of the trace: {:.0} MiB; RSS/live = (VmHWM - RSS before replay) / peak \
             live; maps = the process's mappings at the end",
            sums[0].peak_live / 1048576.0
        );
    }
}
