//! The `inference` example's model under tensorpool, glibc (`System`), mimalloc and jemalloc:
//! each allocator in its own child process, rounds interleaved (A B C D A B C D ...), medians
//! reported with tensorpool's ratio to the best of the others. Every child must produce the same
//! tokens (the model is deterministic), which checks that no allocator corrupted a tensor.
//!
//! Run: `cargo run --release -p tensorpool-bench --example inference_compare` (`-- --rounds N`).
//!
//! One binary serves all four: its global allocator is the bench library's `Switch`, which
//! forwards to the one named by `BENCH_ALLOC`, read (with `getenv`, which does not allocate) at
//! the process's first allocation, before anything has been allocated by anyone else.

// The comparison reads fewer of the outputs than `inference` prints.
#[allow(dead_code)]
#[path = "../../examples/model/mod.rs"]
mod model;

use std::process::Command;
use std::time::Instant;
use tensorpool::THREAD_CACHE_MAX;
use tensorpool_bench::{Switch, ALLOCATORS as NAMES, TP};

#[global_allocator]
static GLOBAL: Switch = Switch;

/// Run the model's requests once and print one line of results.
fn child() {
    let (topology, _) = TP.topology();
    let t0 = Instant::now();
    let m = model::Model::new(42, topology.l3_share().min(THREAD_CACHE_MAX));
    let (mut prefill, mut decode, mut ptoks, mut dtoks, mut hash) = (0.0, 0.0, 0, 0, 0u64);
    for (i, r) in model::REQUESTS.iter().enumerate() {
        let out = m.run(r, i as u64 + 1);
        prefill += out.prefill_s;
        decode += out.decode_s;
        ptoks += out.prefill_tokens;
        dtoks += out.tokens.len() - 1;
        for t in out.tokens {
            hash = hash.wrapping_mul(1_000_003).wrapping_add(t as u64);
        }
    }
    let wall = t0.elapsed().as_secs_f64();
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: getrusage fills the struct it is given.
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) };
    println!(
        "wall_ms={:.1} prefill_tps={:.1} decode_tps={:.2} minflt={} maxrss_kib={} tokens={hash:016x}",
        wall * 1e3,
        ptoks as f64 / prefill,
        dtoks as f64 / decode,
        ru.ru_minflt,
        ru.ru_maxrss
    );
}

fn field(line: &str, key: &str) -> f64 {
    line.split_whitespace()
        .find_map(|kv| kv.strip_prefix(key)?.strip_prefix('='))
        .and_then(|v| v.parse().ok())
        .unwrap_or(f64::NAN)
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.iter().any(|a| a == "--child") {
        child();
        return;
    }
    let rounds: usize = args
        .iter()
        .position(|a| a == "--rounds")
        .and_then(|i| args.get(i + 1))
        .map_or(3, |r| r.parse().expect("--rounds N"));
    let exe = std::env::current_exe().expect("own path");
    // Per allocator: wall ms, prefill tok/s, decode tok/s, faults, peak RSS KiB.
    let mut results = vec![vec![Vec::new(); 5]; NAMES.len()];
    let mut tokens: Option<String> = None;
    for _ in 0..rounds {
        for (a, name) in NAMES.iter().enumerate() {
            let out = Command::new(&exe)
                .arg("--child")
                .env("BENCH_ALLOC", name)
                .output()
                .expect("run child");
            assert!(out.status.success(), "{name} failed: {out:?}");
            let line = String::from_utf8_lossy(&out.stdout).trim().to_string();
            let tok = line.rsplit("tokens=").next().unwrap_or("").to_string();
            match &tokens {
                None => tokens = Some(tok),
                Some(t) => assert_eq!(*t, tok, "{name} produced different tokens"),
            }
            for (k, key) in [
                "wall_ms",
                "prefill_tps",
                "decode_tps",
                "minflt",
                "maxrss_kib",
            ]
            .iter()
            .enumerate()
            {
                results[a][k].push(field(&line, key));
            }
        }
    }
    let med: Vec<Vec<f64>> = results
        .iter_mut()
        .map(|r| r.iter_mut().map(|v| median(v)).collect())
        .collect();
    println!(
        "inference example under each allocator: medians of {rounds} interleaved rounds \
         (same tokens from all: {})",
        tokens.unwrap_or_default()
    );
    println!(
        "{:<12} {:>10} {:>13} {:>12} {:>12} {:>12}",
        "allocator", "wall ms", "prefill tok/s", "decode tok/s", "minor faults", "peak RSS MiB"
    );
    for (a, name) in NAMES.iter().enumerate() {
        let m = &med[a];
        println!(
            "{:<12} {:>10.0} {:>13.0} {:>12.1} {:>12.0} {:>12.1}",
            name,
            m[0],
            m[1],
            m[2],
            m[3],
            m[4] / 1024.0
        );
    }
    // Lower is better for wall, faults and RSS; higher for throughput.
    let best = |k: usize, higher: bool| {
        med[1..]
            .iter()
            .map(|m| m[k])
            .fold(if higher { 0.0 } else { f64::INFINITY }, |b, v| {
                if higher {
                    b.max(v)
                } else {
                    b.min(v)
                }
            })
    };
    println!(
        "tensorpool / best other: wall {:.2}, prefill tok/s {:.2}, decode tok/s {:.2}, faults {:.2}, \
         peak RSS {:.2}",
        med[0][0] / best(0, false),
        med[0][1] / best(1, true),
        med[0][2] / best(2, true),
        med[0][3] / best(3, false),
        med[0][4] / best(4, false)
    );
}
