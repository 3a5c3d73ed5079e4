//! A real program of the kind inference services run beside their models, with nothing tagged:
//! a tokenizer's training and a large JSON document. It builds a corpus (a Zipf-like draw over a
//! random vocabulary), counts its words into a hash map, trains byte-pair-encoding merges on
//! them (pair counts in a hash map rebuilt every merge, each word's symbols rewritten when it
//! holds the merged pair), then writes the vocabulary, the merges and the corpus's documents
//! with their token ids as one JSON document of about 48 MB with serde_json, parses it back
//! and checks it. Small strings and vectors by the million, hash tables that grow, and a
//! string of tens of MiB grown by `realloc`: the global path as a plain Rust program uses it.
//!
//! Each configuration runs in a child process of its own (`tensorpool_bench::Config`); the
//! parent runs them interleaved and reports medians of wall time, minor faults, peak RSS and
//! the mapping count at the end. Every child must print the same checksum of what it computed.
//!
//! Run: `cargo bench -p tensorpool-bench --bench program` (`-- --rounds N` (3),
//! `-- --allocs a,b`, `-- --scale F` to shrink or grow the corpus).

use std::collections::HashMap;
use std::time::Instant;
use tensorpool_bench::{
    arg_after, mappings, median, minor_faults, print_ratios, run_child, status_bytes, Rng, Switch,
    UNTAGGED_CONFIGS,
};

#[global_allocator]
static GLOBAL: Switch = Switch;

/// A corpus of `tokens` words over a vocabulary of `vocab` random words, in lines of 24 words.
fn corpus(rng: &mut Rng, vocab: usize, tokens: usize) -> Vec<String> {
    let words: Vec<String> = (0..vocab)
        .map(|_| {
            let n = 2 + rng.below(11);
            (0..n)
                .map(|_| (b'a' + rng.below(26) as u8) as char)
                .collect()
        })
        .collect();
    let mut lines = Vec::new();
    let mut line = String::new();
    for i in 0..tokens {
        // u^3 favours the first words (a Zipf-like head, a long tail).
        let u = (rng.next() >> 11) as f64 / (1u64 << 53) as f64;
        let w = &words[((u * u * u) * vocab as f64) as usize];
        if !line.is_empty() {
            line.push(' ');
        }
        line.push_str(w);
        if i % 24 == 23 {
            lines.push(std::mem::take(&mut line));
        }
    }
    lines
}

/// Byte-pair merges, in the order learnt.
type Merges = Vec<(u32, u32)>;
/// Every word's symbols after the merges.
type Symbols = HashMap<String, Vec<u32>>;

/// Train `merges` byte-pair merges on the word counts; returns the merges and the final
/// symbols of every word.
fn train(counts: &HashMap<String, u64>, merges: usize) -> (Merges, Symbols) {
    let mut words: Vec<(Vec<u32>, u64, &str)> = counts
        .iter()
        .map(|(w, &c)| (w.bytes().map(u32::from).collect(), c, w.as_str()))
        .collect();
    words.sort_by(|a, b| a.2.cmp(b.2));
    let mut out = Vec::with_capacity(merges);
    for m in 0..merges {
        let mut pairs: HashMap<(u32, u32), u64> = HashMap::new();
        for (s, c, _) in &words {
            for p in s.windows(2) {
                *pairs.entry((p[0], p[1])).or_default() += c;
            }
        }
        let Some((&best, _)) = pairs
            .iter()
            .max_by_key(|&(p, c)| (*c, std::cmp::Reverse(*p)))
        else {
            break;
        };
        let id = 256 + m as u32;
        for (s, _, _) in words.iter_mut() {
            if s.windows(2).any(|p| (p[0], p[1]) == best) {
                let mut t = Vec::with_capacity(s.len());
                let mut i = 0;
                while i < s.len() {
                    if i + 1 < s.len() && (s[i], s[i + 1]) == best {
                        t.push(id);
                        i += 2;
                    } else {
                        t.push(s[i]);
                        i += 1;
                    }
                }
                *s = t;
            }
        }
        out.push(best);
    }
    let symbols = words
        .into_iter()
        .map(|(s, _, w)| (w.to_string(), s))
        .collect();
    (out, symbols)
}

fn child(scale: f64) {
    let f0 = minor_faults();
    let t0 = Instant::now();
    let mut rng = Rng(0x243f_6a88_85a3_08d3);
    let lines = corpus(&mut rng, 40_000, (3_000_000.0 * scale) as usize);
    let mut counts: HashMap<String, u64> = HashMap::new();
    for l in &lines {
        for w in l.split(' ') {
            *counts.entry(w.to_string()).or_default() += 1;
        }
    }
    let (merges, symbols) = train(&counts, 120);
    let t_train = t0.elapsed().as_secs_f64() * 1e3;

    let vocab: serde_json::Map<String, serde_json::Value> = symbols
        .iter()
        .map(|(w, s)| (w.clone(), serde_json::Value::from(s.clone())))
        .collect();
    let docs: Vec<serde_json::Value> = lines
        .iter()
        .enumerate()
        .map(|(i, l)| {
            let ids: Vec<u32> = l
                .split(' ')
                .flat_map(|w| symbols[w].iter().copied())
                .collect();
            serde_json::json!({ "id": i, "text": l, "tokens": ids })
        })
        .collect();
    let doc = serde_json::json!({
        "vocab": vocab,
        "merges": merges.iter().map(|&(a, b)| [a, b]).collect::<Vec<_>>(),
        "documents": docs,
    });
    let text = serde_json::to_string(&doc).unwrap();
    drop(doc);
    let back: serde_json::Value = serde_json::from_str(&text).unwrap();
    let n_docs = back["documents"].as_array().unwrap().len();
    assert_eq!(n_docs, lines.len(), "documents lost in the round trip");
    let tokens: u64 = back["documents"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["tokens"].as_array().unwrap().len() as u64)
        .sum();
    let ms = t0.elapsed().as_secs_f64() * 1e3;
    let check = merges
        .iter()
        .fold(tokens ^ text.len() as u64, |h, &(a, b)| {
            h.rotate_left(7) ^ ((a as u64) << 32 | b as u64)
        });
    println!(
        "RESULT {ms:.1} {t_train:.1} {} {} {} {} {check:x}",
        minor_faults() - f0,
        status_bytes("VmHWM:"),
        mappings(),
        text.len()
    );
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.iter().any(|a| a == "--list") {
        return;
    }
    let scale: f64 = arg_after(&args, "--scale").map_or(1.0, |v| v.parse().unwrap());
    if args.iter().any(|a| a == "--child") {
        return child(scale);
    }
    let rounds: usize = arg_after(&args, "--rounds").map_or(3, |v| v.parse().unwrap());
    let allocs: Vec<String> = arg_after(&args, "--allocs").map_or_else(
        || UNTAGGED_CONFIGS.iter().map(|s| s.to_string()).collect(),
        |v| v.split(',').map(String::from).collect(),
    );
    let sc = scale.to_string();
    let mut runs: Vec<Vec<[f64; 6]>> = vec![Vec::new(); allocs.len()];
    let mut checks = Vec::new();
    for round in 0..rounds {
        for j in 0..allocs.len() {
            let i = (j + round) % allocs.len();
            let out = run_child(&allocs[i], &["--child", "--scale", &sc]);
            let line = out
                .lines()
                .find(|l| l.starts_with("RESULT"))
                .unwrap_or_else(|| panic!("no result from {}: {out}", allocs[i]));
            let f: Vec<&str> = line.split_whitespace().skip(1).collect();
            let v: Vec<f64> = f[..6].iter().map(|x| x.parse().unwrap()).collect();
            runs[i].push([v[0], v[1], v[2], v[3], v[4], v[5]]);
            checks.push(f[6].to_string());
        }
    }
    checks.dedup();
    assert_eq!(
        checks.len(),
        1,
        "the allocators computed different results: {checks:?}"
    );
    let med: Vec<[f64; 6]> = runs
        .iter()
        .map(|r| core::array::from_fn(|k| median(r.iter().map(|x| x[k]).collect())))
        .collect();
    println!(
        "BPE training and a {:.0} MB JSON round trip (serde_json), untagged; medians of {rounds} \
         interleaved rounds; same checksum from all ({})",
        med[0][5] / 1e6,
        checks[0]
    );
    println!(
        "{:<24} {:>9} {:>9} {:>10} {:>9} {:>5}",
        "allocator", "wall ms", "train ms", "faults", "peak MiB", "maps"
    );
    for (name, m) in allocs.iter().zip(&med) {
        println!(
            "{name:<24} {:>9.0} {:>9.0} {:>10.0} {:>9.1} {:>5.0}",
            m[0],
            m[1],
            m[2],
            m[3] / (1u64 << 20) as f64,
            m[4]
        );
    }
    print_ratios(
        &allocs,
        &med,
        &[("wall", 0), ("faults", 2), ("peak RSS", 3)],
    );
}
