//! A Qwen3-VL-like inference as a trace of tensor allocations and frees, each under its kind.
//!
//! Shapes follow the Qwen3-VL 8B configuration: a vision encoder of 27 layers over 576 patches of
//! width 1152 (16 heads, MLP 4304), merged 2x2 into 144 image tokens of width 4096; a text decoder
//! of 36 layers of width 4096 (32 heads, MLP 11008) that prefills 1,088 tokens (144 image + 944
//! text) and then decodes 64 tokens with a KV cache per layer sized for the whole request (as
//! static caches in llama.cpp or vLLM do). Elements are bf16 (2 bytes). Attention is computed
//! eagerly (scores and probabilities materialised), as a reference PyTorch implementation does.
//!
//! Shared by the benchmarks through `#[path]`; not every user calls every item.
#![allow(dead_code)]

use tensorpool::TensorKind;

/// Bytes per element (bf16).
pub const ELEM: usize = 2;

/// One step of the trace.
#[derive(Clone, Copy, Debug)]
pub enum Event {
    /// Allocate tensor `id` of `bytes` bytes under `kind`.
    Alloc {
        id: usize,
        kind: TensorKind,
        bytes: usize,
    },
    /// Free tensor `id`.
    Free { id: usize },
    /// A phase boundary (for reports): 0 vision, 1 prefill, 2 decode, 3 end of request.
    Phase(u8),
}

/// Model dimensions.
#[derive(Clone, Copy, Debug)]
pub struct Model {
    pub vision_layers: usize,
    pub patches: usize,
    pub vision_width: usize,
    pub vision_heads: usize,
    pub vision_mlp: usize,
    pub text_layers: usize,
    pub prompt: usize,
    pub width: usize,
    pub heads: usize,
    pub mlp: usize,
    pub vocab: usize,
    pub decode_steps: usize,
}

impl Model {
    /// The configuration the issue names.
    pub const QWEN3_VL: Model = Model {
        vision_layers: 27,
        patches: 576,
        vision_width: 1152,
        vision_heads: 16,
        vision_mlp: 4304,
        text_layers: 36,
        prompt: 1088,
        width: 4096,
        heads: 32,
        mlp: 11008,
        vocab: 151_936,
        decode_steps: 64,
    };
}

/// Builds the event list and tracks live bytes as it goes.
pub struct Trace {
    pub events: Vec<Event>,
    next_id: usize,
    live: usize,
    sizes: Vec<usize>,
    /// Highest sum of live tensor bytes (requested sizes) at any point.
    pub peak_live: usize,
}

impl Trace {
    fn new() -> Self {
        Trace {
            events: Vec::new(),
            next_id: 0,
            live: 0,
            sizes: Vec::new(),
            peak_live: 0,
        }
    }

    fn alloc(&mut self, kind: TensorKind, dims: &[usize]) -> usize {
        let bytes = dims.iter().product::<usize>() * ELEM;
        let id = self.next_id;
        self.next_id += 1;
        self.sizes.push(bytes);
        self.live += bytes;
        self.peak_live = self.peak_live.max(self.live);
        self.events.push(Event::Alloc { id, kind, bytes });
        id
    }

    fn free(&mut self, id: usize) {
        self.live -= self.sizes[id];
        self.events.push(Event::Free { id });
    }

    /// Number of tensor ids used (slots a replayer needs).
    pub fn ids(&self) -> usize {
        self.next_id
    }

    /// `requests` back-to-back inferences of `m`.
    pub fn build(m: &Model, requests: usize) -> Trace {
        let mut t = Trace::new();
        for _ in 0..requests {
            t.request(m);
        }
        t
    }

    /// One pre-norm transformer block over `n` rows: returns the new hidden state's id and frees
    /// the old one. `kv` = Some((k_cache, v_cache)) for decoder layers, which copy K and V there.
    #[allow(clippy::too_many_arguments)]
    fn block(
        &mut self,
        hidden: usize,
        n: usize,
        ctx: usize,
        width: usize,
        heads: usize,
        mlp: usize,
        gated: bool,
    ) -> usize {
        use TensorKind::{Activation as Act, Attention as Att};
        let ln = self.alloc(Act, &[n, width]);
        let q = self.alloc(Act, &[n, width]);
        let k = self.alloc(Act, &[n, width]);
        let v = self.alloc(Act, &[n, width]);
        self.free(ln);
        let scores = self.alloc(Att, &[heads, n, ctx]);
        self.free(q);
        let probs = self.alloc(Att, &[heads, n, ctx]);
        self.free(scores);
        let attn = self.alloc(Act, &[n, width]);
        self.free(probs);
        self.free(k);
        self.free(v);
        let o = self.alloc(Act, &[n, width]);
        self.free(attn);
        let h1 = self.alloc(Act, &[n, width]); // residual add
        self.free(o);
        self.free(hidden);
        let ln2 = self.alloc(Act, &[n, width]);
        let up = self.alloc(Act, &[n, mlp]);
        let act = if gated {
            let gate = self.alloc(Act, &[n, mlp]);
            let act = self.alloc(Act, &[n, mlp]);
            self.free(gate);
            act
        } else {
            self.alloc(Act, &[n, mlp])
        };
        self.free(up);
        self.free(ln2);
        let down = self.alloc(Act, &[n, width]);
        self.free(act);
        let h2 = self.alloc(Act, &[n, width]); // residual add
        self.free(down);
        self.free(h1);
        h2
    }

    fn request(&mut self, m: &Model) {
        use TensorKind::*;
        // vision encoder
        self.events.push(Event::Phase(0));
        let pixels = self.alloc(ImageEmbedding, &[m.patches, 3 * 2 * 14 * 14]);
        let mut h = self.alloc(Activation, &[m.patches, m.vision_width]);
        self.free(pixels);
        for _ in 0..m.vision_layers {
            h = self.block(
                h,
                m.patches,
                m.patches,
                m.vision_width,
                m.vision_heads,
                m.vision_mlp,
                false,
            );
        }
        let merged_in = self.alloc(Activation, &[m.patches / 4, 4 * m.vision_width]);
        self.free(h);
        let image = self.alloc(ImageEmbedding, &[m.patches / 4, m.width]);
        self.free(merged_in);

        // text prefill
        self.events.push(Event::Phase(1));
        let n = m.prompt;
        let max_ctx = m.prompt + m.decode_steps;
        let embeds = self.alloc(TextEmbedding, &[n, m.width]);
        let mut h = self.alloc(Activation, &[n, m.width]);
        let mut kv = Vec::with_capacity(2 * m.text_layers);
        for _ in 0..m.text_layers {
            kv.push(self.alloc(KvCache, &[max_ctx, m.width]));
            kv.push(self.alloc(KvCache, &[max_ctx, m.width]));
            h = self.block(h, n, n, m.width, m.heads, m.mlp, true);
        }
        let norm = self.alloc(Activation, &[1, m.width]);
        self.free(h);
        let logits = self.alloc(Activation, &[1, m.vocab]);
        self.free(norm);
        self.free(logits);

        // decode
        self.events.push(Event::Phase(2));
        for step in 0..m.decode_steps {
            let ctx = n + step + 1;
            let tok = self.alloc(TextEmbedding, &[1, m.width]);
            let mut h = self.alloc(Activation, &[1, m.width]);
            self.free(tok);
            for _ in 0..m.text_layers {
                h = self.block(h, 1, ctx, m.width, m.heads, m.mlp, true);
            }
            let logits = self.alloc(Activation, &[1, m.vocab]);
            self.free(h);
            self.free(logits);
        }

        // end of request
        self.events.push(Event::Phase(3));
        for id in kv {
            self.free(id);
        }
        self.free(embeds);
        self.free(image);
    }
}
