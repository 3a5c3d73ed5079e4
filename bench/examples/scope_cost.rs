//! What a scope costs the allocation paths, in instructions (callgrind counts them repeatably):
//! `N` malloc/free pairs of small (256 B) and large (64 KiB) blocks, outside every scope or
//! inside four nested ones (a model, a layer, a block, a module).
//!
//!     cargo build --release -p tensorpool-bench --example scope_cost
//!     for s in none nested; do for n in 0 100000; do
//!       valgrind --tool=callgrind --callgrind-out-file=/dev/null \
//!         target/release/examples/scope_cost $s $n 2>&1 | grep refs; done; done
//!
//! Instructions per pair = (refs at N - refs at 0) / N / 2 (small and large).
use std::alloc::{GlobalAlloc, Layout};
use std::hint::black_box;
use tensorpool::TensorPool;

#[global_allocator]
static ALLOC: TensorPool = TensorPool::new();

fn pairs(n: usize) {
    let small = Layout::from_size_align(256, 8).unwrap();
    let large = Layout::from_size_align(64 << 10, 64).unwrap();
    for _ in 0..n {
        for l in [small, large] {
            // SAFETY: non-zero layouts; each block is freed once, with its layout.
            unsafe {
                let p = ALLOC.alloc(l);
                black_box(p).write(1);
                ALLOC.dealloc(p, l);
            }
        }
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let mode = args.get(1).map_or("none", |s| s.as_str());
    let n: usize = args.get(2).and_then(|s| s.parse().ok()).unwrap_or(100_000);
    // One warm pair of each outside the loop, so that N = 0 has made the same first calls.
    pairs(1);
    match mode {
        "none" => pairs(n),
        "nested" => {
            let _g: Vec<_> = [
                "model",
                "model.layers.3",
                "model.layers.3.self_attn",
                "q_proj",
            ]
            .iter()
            .map(|s| ALLOC.enter_scope(s).expect("a scope"))
            .collect();
            pairs(n);
        }
        _ => {
            eprintln!("usage: scope_cost (none|nested) [pairs]");
            std::process::exit(2);
        }
    }
}
