//! Does tiling to the cache budget pay? A matrix product at a Qwen3-VL-like projection shape
//! (256 tokens x 1536 -> 1536, f32) over buffers from tensorpool's activation pool: the plain
//! i-k-j loop against the same loop blocked by `plan_matmul`, for the reference i5-10210U's
//! per-core L3 share and for this machine's detected topology. Interleaved rounds, medians,
//! ratios in one run; results checked equal.
//!
//! Run: `cargo bench --bench tiles` (`-- --rounds N`).

use allocator_api2::vec::Vec as AVec;
use std::time::Instant;
use tensorpool::{plan_matmul, CacheTopology, MatmulBlocks, TensorKind, TensorPool};

#[global_allocator]
static ALLOC: TensorPool = TensorPool::new();

const M: usize = 256;
const K: usize = 1536;
const N: usize = 1536;

fn matmul_plain(a: &[f32], b: &[f32], c: &mut [f32]) {
    c.fill(0.0);
    for i in 0..M {
        let crow = &mut c[i * N..(i + 1) * N];
        for p in 0..K {
            let x = a[i * K + p];
            let brow = &b[p * N..(p + 1) * N];
            for (cv, bv) in crow.iter_mut().zip(brow) {
                *cv += x * bv;
            }
        }
    }
}

fn matmul_tiled(a: &[f32], b: &[f32], c: &mut [f32], blk: MatmulBlocks) {
    c.fill(0.0);
    for ii in (0..M).step_by(blk.mb) {
        for pp in (0..K).step_by(blk.kb) {
            for jj in (0..N).step_by(blk.nb) {
                let (ie, pe, je) = (
                    (ii + blk.mb).min(M),
                    (pp + blk.kb).min(K),
                    (jj + blk.nb).min(N),
                );
                for i in ii..ie {
                    let crow = &mut c[i * N + jj..i * N + je];
                    for p in pp..pe {
                        let x = a[i * K + p];
                        let brow = &b[p * N + jj..p * N + je];
                        for (cv, bv) in crow.iter_mut().zip(brow) {
                            *cv += x * bv;
                        }
                    }
                }
            }
        }
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|x, y| x.partial_cmp(y).unwrap());
    v[v.len() / 2]
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let rounds: usize = args
        .iter()
        .position(|a| a == "--rounds")
        .and_then(|i| args.get(i + 1))
        .map_or(5, |r| r.parse().unwrap());
    let h = ALLOC.handle(TensorKind::Activation);
    let fill = |n: usize, seed: u32| {
        let mut v = AVec::with_capacity_in(n, h);
        let mut s = seed;
        for _ in 0..n {
            s = s.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
            v.push((s >> 9) as f32 / (1u32 << 23) as f32 - 0.5);
        }
        v
    };
    let (a, b) = (fill(M * K, 1), fill(K * N, 2));
    let mut c_plain = AVec::with_capacity_in(M * N, h);
    c_plain.resize(M * N, 0f32);
    let mut c_tiled = c_plain.clone();
    let (detected, source) = ALLOC.topology();
    let preset = CacheTopology::I5_10210U;
    let plans = [
        ("i5-10210U L3 share", preset.l3_share(), preset.line),
        ("detected L3 share", detected.l3_share(), detected.line),
        ("detected L2", detected.l2, detected.line),
    ];
    println!(
        "matmul {M}x{K} * {K}x{N} f32 over tensorpool buffers; {rounds} interleaved rounds, medians"
    );
    println!("this machine ({source:?}): {detected:?}");
    let mut plain = Vec::new();
    let mut tiled: Vec<Vec<f64>> = vec![Vec::new(); plans.len()];
    let blocks: Vec<MatmulBlocks> = plans
        .iter()
        .map(|&(_, budget, line)| plan_matmul(M, N, K, 4, budget, line).unwrap())
        .collect();
    for _ in 0..rounds {
        let t = Instant::now();
        matmul_plain(&a, &b, &mut c_plain);
        plain.push(t.elapsed().as_secs_f64() * 1e3);
        for (i, blk) in blocks.iter().enumerate() {
            let t = Instant::now();
            matmul_tiled(&a, &b, &mut c_tiled, *blk);
            tiled[i].push(t.elapsed().as_secs_f64() * 1e3);
            let max_err = c_plain
                .iter()
                .zip(c_tiled.iter())
                .map(|(x, y)| (x - y).abs())
                .fold(0f32, f32::max);
            assert!(max_err < 1e-2, "tiled result differs by {max_err}");
        }
    }
    let p = median(plain);
    println!(
        "{:<22} {:>22} {:>10} {:>8}",
        "kernel", "blocks (mb, nb, kb)", "ms", "ratio"
    );
    println!("{:<22} {:>22} {:>10.1} {:>8.2}", "plain i-k-j", "-", p, 1.0);
    for (i, (name, budget, _)) in plans.iter().enumerate() {
        let b = blocks[i];
        let t = median(tiled[i].clone());
        println!(
            "{:<22} {:>22} {:>10.1} {:>8.2}   (budget {} KiB)",
            name,
            format!("({}, {}, {})", b.mb, b.nb, b.kb),
            t,
            t / p,
            budget >> 10
        );
    }
}
