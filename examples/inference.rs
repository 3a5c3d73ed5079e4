//! The crate's main job: an inference binary with `TensorPool` as its global allocator. It runs a
//! small Qwen3-VL-shaped model for real (vision encoder over image patches, text decoder with
//! attention, MLP and a KV cache; weights from a seed), prefill and decode, for several requests,
//! then prints tokens per second and what each kind's pool did.
//!
//! Run: `cargo run --release --example inference`

#[path = "model/mod.rs"]
mod model;

use std::time::Instant;
use tensorpool::adapter::{Qwen3VlAdapter, Qwen3VlConfig};
use tensorpool::{TensorPool, THREAD_CACHE_MAX};

#[global_allocator]
static ALLOC: TensorPool = TensorPool::new();

fn main() {
    let (topology, source) = ALLOC.topology();
    // Matmul blocks fit one core's L3 share, clamped as the thread caches are (some VMs report
    // their host's whole L3 for a couple of cores).
    let budget = topology.l3_share().min(THREAD_CACHE_MAX);
    println!(
        "cache topology ({source:?}): L3 {} KiB over {} cores; matmul tile budget {} KiB",
        topology.l3 >> 10,
        topology.cores,
        budget >> 10
    );
    let t0 = Instant::now();
    let m = model::Model::new(42, budget);
    println!(
        "weights generated in {:.0} ms",
        t0.elapsed().as_secs_f64() * 1e3
    );
    let mut all = (0usize, 0.0f64, 0usize, 0.0f64);
    for (i, r) in model::REQUESTS.iter().enumerate() {
        // A marker per request on the memory timeline (recorded with TENSORPOOL_TIMELINE=1 or
        // TENSORPOOL_REPORT=report.html; otherwise nothing is kept).
        ALLOC.mark(&format!("request {}", i + 1));
        let out = m.run(r, i as u64 + 1);
        let n = out.tokens.len();
        println!(
            "request {}: image {}x{} + {} prompt tokens: prefill {} tokens in {:.0} ms ({:.0} tok/s), \
             decode {} tokens in {:.0} ms ({:.1} tok/s); first tokens {:?}; released {}",
            i + 1,
            r.side,
            r.side,
            r.prompt,
            out.prefill_tokens,
            out.prefill_s * 1e3,
            out.prefill_tokens as f64 / out.prefill_s,
            n,
            out.decode_s * 1e3,
            (n - 1) as f64 / out.decode_s,
            &out.tokens[..6],
            out.released
        );
        all.0 += out.prefill_tokens;
        all.1 += out.prefill_s;
        all.2 += n - 1;
        all.3 += out.decode_s;
    }
    println!(
        "all requests: prefill {:.0} tok/s, decode {:.1} tok/s, {:.2} s in total",
        all.0 as f64 / all.1,
        all.2 as f64 / all.3,
        t0.elapsed().as_secs_f64()
    );
    println!();
    print!("{}", ALLOC.stats());
    // INFERENCE_REPORT=report.html: the HTML memory report now, with the model still live (run
    // with TENSORPOOL_TIMELINE=1 for the timeline and TENSORPOOL_PROFILE=512K for call sites).
    if let Some(path) = std::env::var_os("INFERENCE_REPORT") {
        match ALLOC.write_html(&path) {
            Ok(()) => println!("memory report written to {}", path.to_string_lossy()),
            Err(e) => println!("memory report not written: {e}"),
        }
    }
    let adapter = Qwen3VlAdapter::new(Qwen3VlConfig {
        base_capacity: None,
        dtype: tensorpool::DType::F32,
    });
    let s = adapter.get_pool_statistics();
    println!(
        "reference-style summary: general pool utilization {:.2} %, specialised {:.2} %, \
         aggregate hit rate {:.2} %, alignment overhead {:.2} %",
        s.general_pool_stats.total_utilization_percent,
        s.specialized_pool_stats.total_utilization_percent,
        s.aggregate.hit_rate_percent,
        s.alignment_overhead_percent
    );
}
