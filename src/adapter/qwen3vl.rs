//! The reference's `Qwen3VLMemoryPoolAdapter` and `LegacyMemoryPoolAdapter`: typed allocation for
//! the tensors of a Qwen3-VL forward pass, pool statistics in the reference's shape, and the
//! string-typed entry point older code calls.

use super::dtype::DType;
use super::tensor::{Tensor, TensorError};
use crate::global::TensorPool;
use crate::kind::TensorKind;
use crate::stats::PoolStats;

/// The reference's `Config`: the pools' base capacity and the default element type.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Qwen3VlConfig {
    /// Soft capacity of each specialised pool (live + cached bytes), applied process-wide when
    /// the adapter is created; `None` keeps the allocator's capacities.
    pub base_capacity: Option<usize>,
    /// Element type of the tensors the adapter allocates.
    pub dtype: DType,
}

impl Default for Qwen3VlConfig {
    /// The reference's defaults: 2 GiB, f16.
    fn default() -> Self {
        Self {
            base_capacity: Some(2 << 30),
            dtype: DType::F16,
        }
    }
}

/// Typed allocation for a Qwen3-VL forward pass; each operation documents its tensor's shape and
/// pool. Tensors return to their pool when dropped.
#[derive(Clone, Copy, Debug)]
pub struct Qwen3VlAdapter {
    config: Qwen3VlConfig,
}

/// One group of pools in `PoolStatistics`: the allocator's counters and the reference's derived
/// percentages.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct PoolGroupStats {
    /// The counters (see `PoolStats`).
    pub stats: PoolStats,
    /// `100 * live / (live + cached + hot)`: how much of what the pools hold is in use.
    pub total_utilization_percent: f64,
    /// `100 * hits / requests`, 0 when there were no requests (the reference's summary has no
    /// place for "none").
    pub hit_rate_percent: f64,
}

impl PoolGroupStats {
    fn of(stats: PoolStats) -> Self {
        Self {
            stats,
            total_utilization_percent: 100.0 * stats.utilization(),
            hit_rate_percent: stats.hit_rate().map_or(0.0, |r| 100.0 * r),
        }
    }
}

/// The reference's `get_pool_statistics()`: the general pool, the specialised pools and the
/// aggregate, each with utilization; the aggregate also with alignment overhead.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct PoolStatistics {
    /// The general pool (`general_pool_stats`).
    pub general_pool_stats: PoolGroupStats,
    /// The specialised pools together (`specialized_pool_stats`).
    pub specialized_pool_stats: PoolGroupStats,
    /// Everything (`aggregate`).
    pub aggregate: PoolGroupStats,
    /// `100 * (granted - requested) / requested` over tensor-sized blocks: what rounding to
    /// size classes and 64-byte alignment cost.
    pub alignment_overhead_percent: f64,
}

impl Qwen3VlAdapter {
    /// An adapter with `config`; a base capacity is applied to every specialised pool.
    pub fn new(config: Qwen3VlConfig) -> Self {
        if let Some(cap) = config.base_capacity {
            let pool = TensorPool::new();
            for kind in &TensorKind::ALL[1..] {
                pool.set_capacity(*kind, cap);
            }
        }
        Self { config }
    }

    /// The configuration.
    pub fn config(&self) -> Qwen3VlConfig {
        self.config
    }

    fn alloc(&self, shape: &[usize], kind: TensorKind) -> Result<Tensor, TensorError> {
        Tensor::zeros(shape, self.config.dtype, kind)
    }

    /// Attention weights (the softmax of the scores): `[batch, num_heads, seq_len, seq_len]`,
    /// from the attention pool. (The reference also takes `head_dim`, which this shape does not
    /// depend on.)
    pub fn allocate_attention_weights(
        &self,
        batch_size: usize,
        num_heads: usize,
        seq_len: usize,
    ) -> Result<Tensor, TensorError> {
        self.alloc(
            &[batch_size, num_heads, seq_len, seq_len],
            TensorKind::Attention,
        )
    }

    /// One layer's keys and values: `[2, batch, num_heads, seq_len, head_dim]` (keys first),
    /// from the KV-cache pool.
    pub fn allocate_kv_cache(
        &self,
        batch_size: usize,
        num_heads: usize,
        seq_len: usize,
        head_dim: usize,
    ) -> Result<Tensor, TensorError> {
        self.alloc(
            &[2, batch_size, num_heads, seq_len, head_dim],
            TensorKind::KvCache,
        )
    }

    /// Vision-encoder output: `[batch, num_patches, feature_dim]`, from the image-embedding pool.
    pub fn allocate_image_features(
        &self,
        batch_size: usize,
        num_patches: usize,
        feature_dim: usize,
    ) -> Result<Tensor, TensorError> {
        self.alloc(
            &[batch_size, num_patches, feature_dim],
            TensorKind::ImageEmbedding,
        )
    }

    /// Token embeddings: `[batch, seq_len, hidden_size]`, from the text-embedding pool.
    pub fn allocate_text_embeddings(
        &self,
        batch_size: usize,
        seq_len: usize,
        hidden_size: usize,
    ) -> Result<Tensor, TensorError> {
        self.alloc(
            &[batch_size, seq_len, hidden_size],
            TensorKind::TextEmbedding,
        )
    }

    /// Feed-forward intermediates: `[batch, seq_len, intermediate_size]`, from the activation
    /// pool.
    pub fn allocate_intermediate_activations(
        &self,
        batch_size: usize,
        seq_len: usize,
        intermediate_size: usize,
    ) -> Result<Tensor, TensorError> {
        self.alloc(
            &[batch_size, seq_len, intermediate_size],
            TensorKind::Activation,
        )
    }

    /// A tensor of any shape from any pool.
    pub fn allocate(&self, shape: &[usize], kind: TensorKind) -> Result<Tensor, TensorError> {
        self.alloc(shape, kind)
    }

    /// Statistics in the reference's shape (process-wide: every user of the allocator counts).
    pub fn get_pool_statistics(&self) -> PoolStatistics {
        let s = TensorPool::new().stats();
        PoolStatistics {
            general_pool_stats: PoolGroupStats::of(s.general),
            specialized_pool_stats: PoolGroupStats::of(s.specialised),
            aggregate: PoolGroupStats::of(s.total),
            alignment_overhead_percent: s.total.overhead_percent(),
        }
    }
}

impl Default for Qwen3VlAdapter {
    fn default() -> Self {
        Self::new(Qwen3VlConfig::default())
    }
}

/// The reference's legacy entry point: tensors named by a type string.
#[derive(Clone, Copy, Debug, Default)]
pub struct LegacyAdapter {
    inner: Qwen3VlAdapter,
}

impl LegacyAdapter {
    /// An adapter with `config` (see `Qwen3VlAdapter::new`).
    pub fn new(config: Qwen3VlConfig) -> Self {
        Self {
            inner: Qwen3VlAdapter::new(config),
        }
    }

    /// A zeroed tensor of `shape` and `dtype` from the pool `tensor_type` names
    /// (`"attention_weights"`, `"kv_cache"`, `"image_features"`, ... : every spelling
    /// `TensorKind::from_str` accepts). An unknown type, a zero or overflowing shape and a size
    /// the OS cannot provide are errors.
    pub fn allocate_tensor_memory(
        &self,
        shape: &[usize],
        dtype: DType,
        tensor_type: &str,
    ) -> Result<Tensor, TensorError> {
        let kind: TensorKind = tensor_type.parse().map_err(TensorError::UnknownKind)?;
        Tensor::zeros(shape, dtype, kind)
    }

    /// The typed adapter underneath.
    pub fn adapter(&self) -> &Qwen3VlAdapter {
        &self.inner
    }
}
