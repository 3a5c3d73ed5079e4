//! The crate's main job for now: an inference-shaped binary that declares `TensorPool` as its
//! global allocator and runs a mixed workload (tokenizer-like small objects, tensors of several
//! kinds allocated and touched per request, a KV cache that grows during decode), then prints what
//! each kind's pool did.
//!
//! Run: `cargo run --release --example inference`

use std::collections::HashMap;
use std::time::Instant;
use tensorpool::{with_kind, TensorKind, TensorPool};

#[global_allocator]
static ALLOC: TensorPool = TensorPool::new();

/// A tensor stand-in: f32 storage allocated under a kind and touched.
fn tensor(kind: TensorKind, elems: usize) -> Vec<f32> {
    with_kind(kind, || {
        let mut v = Vec::with_capacity(elems);
        v.resize(elems, 0.5f32);
        v
    })
}

fn request(r: usize, vocab: &HashMap<String, u32>) -> f32 {
    let (patches, vision_width, tokens, width, layers) = (256, 768, 128, 1024, 8);
    let mut acc = 0.0f32;
    // tokenizer: many small strings and vectors
    let prompt: Vec<u32> = (0..tokens)
        .map(|i| vocab[&format!("tok{}", (i * 7 + r) % 1000)])
        .collect();
    // vision encoder: image embeddings and per-layer activations
    let mut img = tensor(TensorKind::ImageEmbedding, patches * vision_width);
    for _ in 0..layers {
        let act = tensor(TensorKind::Activation, patches * vision_width * 4);
        let attn = tensor(TensorKind::Attention, patches * patches);
        img[0] += act[act.len() - 1] + attn[attn.len() / 2];
    }
    // text prefill with a KV cache per layer, then decode steps that grow it
    let mut kv: Vec<Vec<f32>> = (0..layers)
        .map(|_| tensor(TensorKind::KvCache, 2 * tokens * width))
        .collect();
    let hidden = tensor(TensorKind::TextEmbedding, tokens * width);
    for step in 0..16 {
        for layer in kv.iter_mut() {
            with_kind(TensorKind::KvCache, || {
                layer.extend(std::iter::repeat_n(0.25f32, 2 * width))
            });
            let scores = tensor(TensorKind::Attention, layer.len() / width);
            let mlp = tensor(TensorKind::Activation, width * 4);
            acc += scores[0] + mlp[step];
        }
    }
    acc + hidden[0] + img[0] + prompt.len() as f32
}

fn main() {
    let vocab: HashMap<String, u32> = (0..1000).map(|i| (format!("tok{i}"), i)).collect();
    let t0 = Instant::now();
    let mut times = Vec::new();
    let mut sink = 0.0;
    for r in 0..5 {
        let t = Instant::now();
        sink += request(r, &vocab);
        times.push(t.elapsed().as_secs_f64() * 1e3);
    }
    println!(
        "5 requests in {:.1} ms (per request: {:?} ms), checksum {sink}",
        t0.elapsed().as_secs_f64() * 1e3,
        times
            .iter()
            .map(|t| (t * 10.0).round() / 10.0)
            .collect::<Vec<_>>()
    );
    println!(
        "{:<16} {:>8} {:>6} {:>8} {:>6} {:>8} {:>12} {:>12} {:>12}",
        "kind",
        "requests",
        "hits",
        "recycled",
        "misses",
        "hit rate",
        "live bytes",
        "cached bytes",
        "peak live"
    );
    for kind in TensorKind::ALL {
        let c = ALLOC.large_counters(kind);
        let rate = if c.requests == 0 {
            0.0
        } else {
            100.0 * c.hits as f64 / c.requests as f64
        };
        println!(
            "{:<16} {:>8} {:>6} {:>8} {:>6} {:>7.1}% {:>12} {:>12} {:>12}",
            kind.name(),
            c.requests,
            c.hits,
            c.recycled,
            c.misses,
            rate,
            c.live_bytes,
            c.cached_bytes,
            c.peak_live_bytes
        );
    }
    println!(
        "resident: {} KiB",
        tensorpool::resident_bytes().unwrap_or(0) >> 10
    );
}
