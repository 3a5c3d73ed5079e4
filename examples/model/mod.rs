//! A small Qwen3-VL-shaped model, computed for real: a vision encoder (patch embedding, layers of
//! bidirectional attention and GELU MLP, a 2x2 patch merger) and a text decoder (RMSNorm,
//! grouped-query attention with rotary positions and a KV cache, SwiGLU MLP, tied embeddings),
//! with prefill and greedy decode. Weights come from a seed; nothing is downloaded.
//!
//! Every intermediate is a `Tensor` allocated by the operation that produces it and dropped when
//! its consumer is done, as eager frameworks do, each under its kind: image features, text
//! embeddings, attention weights, activations, and a KV cache per layer per request (through the
//! Qwen3-VL adapter, held in the request's `Workspace`). Shared by `inference` (tensorpool as the
//! global allocator) and `inference_compare` (the same model under each allocator).

use std::time::Instant;
use tensorpool::adapter::{Qwen3VlAdapter, Qwen3VlConfig, TensorId, Workspace};
use tensorpool::{plan_matmul, DType, MatmulBlocks, Tensor, TensorKind};

/// Model dimensions.
pub struct Dims {
    pub vocab: usize,
    pub d: usize,
    pub layers: usize,
    pub heads: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
    pub ff: usize,
    pub vision_d: usize,
    pub vision_layers: usize,
    pub vision_heads: usize,
    pub vision_ff: usize,
    /// Pixels per patch side (3 channels).
    pub patch: usize,
}

/// Small enough to run several requests in seconds on two cores, shaped like Qwen3-VL.
pub const DIMS: Dims = Dims {
    vocab: 8192,
    d: 512,
    layers: 6,
    heads: 8,
    kv_heads: 2,
    head_dim: 64,
    ff: 1408,
    vision_d: 384,
    vision_layers: 4,
    vision_heads: 6,
    vision_ff: 1536,
    patch: 16,
};

/// One request: an image of `side` x `side` pixels and a prompt of `prompt` tokens, then `gen`
/// tokens decoded.
pub struct Request {
    pub side: usize,
    pub prompt: usize,
    pub gen: usize,
}

pub const REQUESTS: [Request; 4] = [
    Request {
        side: 256,
        prompt: 64,
        gen: 64,
    },
    Request {
        side: 224,
        prompt: 96,
        gen: 64,
    },
    Request {
        side: 288,
        prompt: 48,
        gen: 64,
    },
    Request {
        side: 256,
        prompt: 80,
        gen: 64,
    },
];

fn t(shape: &[usize], kind: TensorKind) -> Tensor {
    Tensor::zeros(shape, DType::F32, kind).expect("tensor allocation")
}

fn f(x: &Tensor) -> &[f32] {
    x.as_slice::<f32>().expect("f32 tensor")
}

fn fm(x: &mut Tensor) -> &mut [f32] {
    x.as_mut_slice::<f32>().expect("f32 tensor")
}

/// Deterministic weights: uniform in `[-scale, scale]` from a xorshift stream.
struct Seed(u64);

impl Seed {
    fn next(&mut self) -> f32 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        ((self.0 >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
    }

    fn weights(&mut self, shape: &[usize], scale: f32) -> Tensor {
        let mut w = t(shape, TensorKind::General);
        for v in fm(&mut w) {
            *v = self.next() * scale;
        }
        w
    }

    /// A `[k, n]` projection scaled by `1/sqrt(k)`.
    fn linear(&mut self, k: usize, n: usize) -> Tensor {
        self.weights(&[k, n], 1.0 / (k as f32).sqrt())
    }
}

/// `out[m, n] = a[m, k] x w[k, n]`, blocked as `plan_matmul` says for the tile budget.
fn matmul(a: &[f32], w: &Tensor, m: usize, budget: usize, kind: TensorKind) -> Tensor {
    let (k, n) = (w.shape()[0], w.shape()[1]);
    debug_assert_eq!(a.len(), m * k);
    let mut out = t(&[m, n], kind);
    let o = fm(&mut out);
    let w = f(w);
    let b = plan_matmul(m, n, k, 4, budget, 64).unwrap_or(MatmulBlocks {
        mb: m,
        nb: n,
        kb: k,
    });
    for i0 in (0..m).step_by(b.mb) {
        for k0 in (0..k).step_by(b.kb) {
            for j0 in (0..n).step_by(b.nb) {
                let j1 = (j0 + b.nb).min(n);
                for i in i0..(i0 + b.mb).min(m) {
                    let row = &mut o[i * n + j0..i * n + j1];
                    for kk in k0..(k0 + b.kb).min(k) {
                        let x = a[i * k + kk];
                        for (r, &wv) in row.iter_mut().zip(&w[kk * n + j0..kk * n + j1]) {
                            *r += x * wv;
                        }
                    }
                }
            }
        }
    }
    out
}

fn add_into(x: &mut [f32], y: &[f32]) {
    for (a, b) in x.iter_mut().zip(y) {
        *a += b;
    }
}

fn rms_norm(x: &[f32], rows: usize, kind: TensorKind) -> Tensor {
    let d = x.len() / rows;
    let mut out = t(&[rows, d], kind);
    for (o, r) in fm(&mut out).chunks_mut(d).zip(x.chunks(d)) {
        let ms = r.iter().map(|v| v * v).sum::<f32>() / d as f32;
        let s = 1.0 / (ms + 1e-6).sqrt();
        for (a, b) in o.iter_mut().zip(r) {
            *a = b * s;
        }
    }
    out
}

fn layer_norm(x: &[f32], rows: usize, kind: TensorKind) -> Tensor {
    let d = x.len() / rows;
    let mut out = t(&[rows, d], kind);
    for (o, r) in fm(&mut out).chunks_mut(d).zip(x.chunks(d)) {
        let mean = r.iter().sum::<f32>() / d as f32;
        let var = r.iter().map(|v| (v - mean) * (v - mean)).sum::<f32>() / d as f32;
        let s = 1.0 / (var + 1e-6).sqrt();
        for (a, b) in o.iter_mut().zip(r) {
            *a = (b - mean) * s;
        }
    }
    out
}

fn gelu(x: &mut [f32]) {
    for v in x {
        *v = 0.5 * *v * (1.0 + (0.797_884_6 * (*v + 0.044_715 * *v * *v * *v)).tanh());
    }
}

fn softmax_row(r: &mut [f32]) {
    let max = r.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
    let mut sum = 0.0;
    for v in r.iter_mut() {
        *v = (*v - max).exp();
        sum += *v;
    }
    for v in r.iter_mut() {
        *v /= sum;
    }
}

/// Rotate pairs of a head's dimensions by position (rotary embedding).
fn rope(x: &mut [f32], pos: usize) {
    let half = x.len() / 2;
    for i in 0..half {
        let theta = pos as f32 / 10000f32.powf(i as f32 / half as f32);
        let (s, c) = theta.sin_cos();
        let (a, b) = (x[i], x[i + half]);
        x[i] = a * c - b * s;
        x[i + half] = a * s + b * c;
    }
}

/// Attention of `q` (`[rows, heads, hd]`, positions `first..first + rows`) over `keys` and
/// `values` (`[len, kv_heads, hd]`): causal when `causal`. The weights live in an attention
/// tensor `[heads, rows, len]`, as an eager framework materialises them.
#[allow(clippy::too_many_arguments)]
fn attention(
    q: &[f32],
    keys: &[f32],
    values: &[f32],
    rows: usize,
    len: usize,
    heads: usize,
    kv_heads: usize,
    hd: usize,
    first: usize,
    causal: bool,
) -> Tensor {
    let mut w = t(&[heads, rows, len], TensorKind::Attention);
    let mut out = t(&[rows, heads * hd], TensorKind::Activation);
    let scale = 1.0 / (hd as f32).sqrt();
    let group = heads / kv_heads;
    let ws = fm(&mut w);
    for h in 0..heads {
        let kh = h / group;
        for i in 0..rows {
            let qi = &q[(i * heads + h) * hd..][..hd];
            let row = &mut ws[(h * rows + i) * len..][..len];
            let visible = if causal { first + i + 1 } else { len };
            for (j, s) in row.iter_mut().enumerate() {
                *s = if j < visible {
                    let kj = &keys[(j * kv_heads + kh) * hd..][..hd];
                    qi.iter().zip(kj).map(|(a, b)| a * b).sum::<f32>() * scale
                } else {
                    f32::NEG_INFINITY
                };
            }
            softmax_row(row);
        }
    }
    let o = fm(&mut out);
    for h in 0..heads {
        let kh = h / group;
        for i in 0..rows {
            let row = &ws[(h * rows + i) * len..][..len];
            let oi = &mut o[(i * heads + h) * hd..][..hd];
            for (j, &p) in row.iter().enumerate() {
                if p != 0.0 {
                    let vj = &values[(j * kv_heads + kh) * hd..][..hd];
                    for (a, b) in oi.iter_mut().zip(vj) {
                        *a += p * b;
                    }
                }
            }
        }
    }
    out
}

struct VisionLayer {
    qkv: Tensor,
    o: Tensor,
    up: Tensor,
    down: Tensor,
}

struct TextLayer {
    q: Tensor,
    k: Tensor,
    v: Tensor,
    o: Tensor,
    gate: Tensor,
    up: Tensor,
    down: Tensor,
}

/// The model's weights (general pool: they live as long as the process).
pub struct Model {
    patch_embed: Tensor,
    vision: Vec<VisionLayer>,
    merge1: Tensor,
    merge2: Tensor,
    embed: Tensor,
    text: Vec<TextLayer>,
    /// Matmul tile budget in bytes.
    budget: usize,
    adapter: Qwen3VlAdapter,
}

/// What one request produced.
pub struct Output {
    pub tokens: Vec<u32>,
    pub prefill_tokens: usize,
    pub prefill_s: f64,
    pub decode_s: f64,
    /// What the request's workspace released at its end.
    pub released: tensorpool::adapter::WorkspaceReport,
}

impl Model {
    /// Generate the weights from `seed`; matmuls are blocked for a tile budget of `budget` bytes.
    pub fn new(seed: u64, budget: usize) -> Model {
        let d = &DIMS;
        let mut s = Seed(seed);
        let pd = 3 * d.patch * d.patch;
        let vision = (0..d.vision_layers)
            .map(|_| VisionLayer {
                qkv: s.linear(d.vision_d, 3 * d.vision_d),
                o: s.linear(d.vision_d, d.vision_d),
                up: s.linear(d.vision_d, d.vision_ff),
                down: s.linear(d.vision_ff, d.vision_d),
            })
            .collect();
        let kvd = d.kv_heads * d.head_dim;
        let text = (0..d.layers)
            .map(|_| TextLayer {
                q: s.linear(d.d, d.heads * d.head_dim),
                k: s.linear(d.d, kvd),
                v: s.linear(d.d, kvd),
                o: s.linear(d.heads * d.head_dim, d.d),
                gate: s.linear(d.d, d.ff),
                up: s.linear(d.d, d.ff),
                down: s.linear(d.ff, d.d),
            })
            .collect();
        Model {
            patch_embed: s.linear(pd, d.vision_d),
            vision,
            merge1: s.linear(4 * d.vision_d, d.d),
            merge2: s.linear(d.d, d.d),
            // Small embeddings, so the layers' outputs shape the residual stream.
            embed: s.weights(&[d.vocab, d.d], 0.08),
            text,
            budget,
            adapter: Qwen3VlAdapter::new(Qwen3VlConfig {
                base_capacity: None,
                dtype: DType::F32,
            }),
        }
    }

    /// The vision encoder: `side`^2 pixels to `[(side/patch/2)^2, d]` image tokens.
    fn encode_image(&self, side: usize, seed: u64) -> Tensor {
        let d = &DIMS;
        let g = side / d.patch;
        let (p, vd, pd) = (g * g, d.vision_d, 3 * d.patch * d.patch);
        // Patches of a synthetic image, flattened channel-last.
        let mut px = Seed(seed | 1);
        let mut patches = t(&[p, pd], TensorKind::ImageEmbedding);
        for v in fm(&mut patches) {
            *v = px.next();
        }
        let mut x = matmul(
            f(&patches),
            &self.patch_embed,
            p,
            self.budget,
            TensorKind::ImageEmbedding,
        );
        drop(patches);
        for l in &self.vision {
            let h = layer_norm(f(&x), p, TensorKind::Activation);
            let qkv = matmul(f(&h), &l.qkv, p, self.budget, TensorKind::Activation);
            drop(h);
            let (mut q, mut k, mut v) = (
                t(&[p, vd], TensorKind::Activation),
                t(&[p, vd], TensorKind::Activation),
                t(&[p, vd], TensorKind::Activation),
            );
            for (i, row) in f(&qkv).chunks(3 * vd).enumerate() {
                fm(&mut q)[i * vd..][..vd].copy_from_slice(&row[..vd]);
                fm(&mut k)[i * vd..][..vd].copy_from_slice(&row[vd..2 * vd]);
                fm(&mut v)[i * vd..][..vd].copy_from_slice(&row[2 * vd..]);
            }
            drop(qkv);
            let hd = vd / d.vision_heads;
            for i in 0..p {
                for h in 0..d.vision_heads {
                    // 2-D rotary positions: row for the first half of each head, column for
                    // the second.
                    let (r, c) = (i / g, i % g);
                    for (m, pos) in [(0, r), (1, c)] {
                        rope(
                            &mut fm(&mut q)[(i * d.vision_heads + h) * hd + m * hd / 2..][..hd / 2],
                            pos,
                        );
                        rope(
                            &mut fm(&mut k)[(i * d.vision_heads + h) * hd + m * hd / 2..][..hd / 2],
                            pos,
                        );
                    }
                }
            }
            let a = attention(
                f(&q),
                f(&k),
                f(&v),
                p,
                p,
                d.vision_heads,
                d.vision_heads,
                hd,
                0,
                false,
            );
            drop((q, k, v));
            let o = matmul(f(&a), &l.o, p, self.budget, TensorKind::Activation);
            add_into(fm(&mut x), f(&o));
            drop((a, o));
            let h = layer_norm(f(&x), p, TensorKind::Activation);
            let mut up = matmul(f(&h), &l.up, p, self.budget, TensorKind::Activation);
            gelu(fm(&mut up));
            let down = matmul(f(&up), &l.down, p, self.budget, TensorKind::Activation);
            add_into(fm(&mut x), f(&down));
        }
        // Merge each 2x2 block of patches into one token, then project to the text width.
        let (mg, mut merged) = (
            g / 2,
            t(&[(g / 2) * (g / 2), 4 * vd], TensorKind::ImageEmbedding),
        );
        for r in 0..mg {
            for c in 0..mg {
                for (n, (dr, dc)) in [(0, 0), (0, 1), (1, 0), (1, 1)].into_iter().enumerate() {
                    let src = ((2 * r + dr) * g + 2 * c + dc) * vd;
                    let dst = ((r * mg + c) * 4 + n) * vd;
                    fm(&mut merged)[dst..dst + vd].copy_from_slice(&f(&x)[src..src + vd]);
                }
            }
        }
        drop(x);
        let mut h = matmul(
            f(&merged),
            &self.merge1,
            mg * mg,
            self.budget,
            TensorKind::ImageEmbedding,
        );
        gelu(fm(&mut h));
        matmul(
            f(&h),
            &self.merge2,
            mg * mg,
            self.budget,
            TensorKind::ImageEmbedding,
        )
    }

    /// One pass of the decoder over `rows` new positions starting at `first`, writing their keys
    /// and values into the caches; returns the final hidden state of the last row.
    fn decode_rows(
        &self,
        mut x: Tensor,
        rows: usize,
        first: usize,
        ws: &mut Workspace,
        caches: &[TensorId],
    ) -> Tensor {
        let d = &DIMS;
        let (hd, kvd) = (d.head_dim, d.kv_heads * d.head_dim);
        for (l, &cid) in self.text.iter().zip(caches) {
            let h = rms_norm(f(&x), rows, TensorKind::Activation);
            let mut q = matmul(f(&h), &l.q, rows, self.budget, TensorKind::Activation);
            let mut k = matmul(f(&h), &l.k, rows, self.budget, TensorKind::Activation);
            let v = matmul(f(&h), &l.v, rows, self.budget, TensorKind::Activation);
            drop(h);
            for i in 0..rows {
                for qh in fm(&mut q)[i * d.heads * hd..][..d.heads * hd].chunks_mut(hd) {
                    rope(qh, first + i);
                }
                for kh in fm(&mut k)[i * kvd..][..kvd].chunks_mut(hd) {
                    rope(kh, first + i);
                }
            }
            // The cache is [2, 1, kv_heads, capacity, hd] as the adapter documents; this model
            // keeps it position-major inside that buffer ([2][capacity][kv_heads][hd]), so a new
            // position's keys are one contiguous write.
            let cache = fm(ws.get_mut(cid).expect("cache is held"));
            let cap = cache.len() / 2;
            let (keys, values) = cache.split_at_mut(cap);
            keys[first * kvd..(first + rows) * kvd].copy_from_slice(f(&k));
            values[first * kvd..(first + rows) * kvd].copy_from_slice(f(&v));
            drop((k, v));
            let len = first + rows;
            let a = attention(
                f(&q),
                &keys[..len * kvd],
                &values[..len * kvd],
                rows,
                len,
                d.heads,
                d.kv_heads,
                hd,
                first,
                true,
            );
            drop(q);
            let o = matmul(f(&a), &l.o, rows, self.budget, TensorKind::Activation);
            add_into(fm(&mut x), f(&o));
            drop((a, o));
            let h = rms_norm(f(&x), rows, TensorKind::Activation);
            let mut gate = matmul(f(&h), &l.gate, rows, self.budget, TensorKind::Activation);
            let up = matmul(f(&h), &l.up, rows, self.budget, TensorKind::Activation);
            for (g, u) in fm(&mut gate).iter_mut().zip(f(&up)) {
                *g = *g / (1.0 + (-*g).exp()) * u;
            }
            drop((h, up));
            let down = matmul(f(&gate), &l.down, rows, self.budget, TensorKind::Activation);
            add_into(fm(&mut x), f(&down));
        }
        let last = &f(&x)[(rows - 1) * d.d..];
        rms_norm(last, 1, TensorKind::Activation)
    }

    /// The next token, sampled from the tied-embedding logits at temperature 1 with a seeded
    /// stream (deterministic, so every allocator must produce the same tokens).
    fn next_token(&self, h: &Tensor, rng: &mut Seed) -> u32 {
        let d = &DIMS;
        let mut logits = t(&[d.vocab], TensorKind::Activation);
        for (l, row) in fm(&mut logits).iter_mut().zip(f(&self.embed).chunks(d.d)) {
            *l = row.iter().zip(f(h)).map(|(a, b)| a * b).sum::<f32>();
        }
        softmax_row(fm(&mut logits));
        let mut u = rng.next().abs();
        for (i, &p) in f(&logits).iter().enumerate() {
            u -= p;
            if u <= 0.0 {
                return i as u32;
            }
        }
        (d.vocab - 1) as u32
    }

    /// Run one request: image, prompt, prefill, then greedy decode.
    pub fn run(&self, r: &Request, seed: u64) -> Output {
        let d = &DIMS;
        let t0 = Instant::now();
        let mut ws = Workspace::new();
        let img = self.encode_image(r.side, seed);
        let n_img = img.shape()[0];
        let total = n_img + r.prompt;
        let capacity = total + r.gen;
        let caches: Vec<TensorId> = (0..d.layers)
            .map(|_| {
                let c = self
                    .adapter
                    .allocate_kv_cache(1, d.kv_heads, capacity, d.head_dim)
                    .expect("KV cache");
                ws.adopt(c)
            })
            .collect();
        // The sequence: image tokens, then the prompt's token embeddings.
        let mut x = t(&[total, d.d], TensorKind::TextEmbedding);
        fm(&mut x)[..n_img * d.d].copy_from_slice(f(&img));
        drop(img);
        let mut tok = Seed(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1);
        for i in 0..r.prompt {
            let id = (tok.next().abs() * (d.vocab - 1) as f32) as usize;
            let dst = (n_img + i) * d.d;
            fm(&mut x)[dst..dst + d.d].copy_from_slice(&f(&self.embed)[id * d.d..][..d.d]);
        }
        let h = self.decode_rows(x, total, 0, &mut ws, &caches);
        let mut tokens = vec![self.next_token(&h, &mut tok)];
        let prefill_s = t0.elapsed().as_secs_f64();
        let t1 = Instant::now();
        for step in 0..r.gen - 1 {
            let id = *tokens.last().unwrap() as usize;
            let mut x = t(&[1, d.d], TensorKind::TextEmbedding);
            fm(&mut x).copy_from_slice(&f(&self.embed)[id * d.d..][..d.d]);
            let h = self.decode_rows(x, 1, total + step, &mut ws, &caches);
            tokens.push(self.next_token(&h, &mut tok));
        }
        let decode_s = t1.elapsed().as_secs_f64();
        let released = ws.cleanup();
        Output {
            tokens,
            prefill_tokens: total,
            prefill_s,
            decode_s,
            released,
        }
    }
}
