//! tensorpool: a memory allocator for ML inference processes.
//!
//! `TensorPool` is a `#[global_allocator]` that routes every request by size class and by tensor
//! kind into per-kind pools: small blocks come from per-thread slab pages, large (tensor) blocks
//! from per-kind pools that keep freed blocks mapped for reuse and give the least recently released
//! ones back to the OS under a capacity. Every block of 64 bytes or more starts on a 64-byte cache
//! line.
//!
//! ```no_run
//! use tensorpool::TensorPool;
//!
//! #[global_allocator]
//! static ALLOC: TensorPool = TensorPool::new();
//!
//! fn main() {
//!     let v: Vec<u8> = vec![0; 1 << 20]; // served by tensorpool
//!     drop(v);
//! }
//! ```
#![deny(unsafe_op_in_unsafe_fn)]
#![warn(missing_docs, clippy::undocumented_unsafe_blocks)]

pub mod adapter;
mod background;
mod budget;
mod class;
mod global;
mod handle;
mod kind;
#[cfg(loom)]
#[doc(hidden)]
pub mod loom_model;
mod meta;
mod options;
mod os;
mod pagemap;
mod pool;
mod stats;
mod sync;
mod tcache;
mod tiles;
mod timeline;
mod topology;

pub use adapter::{DType, Tensor, TensorError};
pub use background::defer_background_thread;
pub use budget::{L3Budget, THREAD_CACHE_AUTO, THREAD_CACHE_MAX};
pub use global::TensorPool;
pub use handle::KindHandle;
pub use kind::{
    current_kind, set_current_kind, with_kind, KindScope, ParseKindError, TensorKind, NUM_KINDS,
};
pub use options::{ExitReport, PoolConfig, DEFAULT_CAPACITY};
pub use os::resident_bytes;
#[cfg(feature = "check")]
pub use pool::large::Census as ArenaCensus;
pub use pool::large::{ArenaCounters, LargeCounters};
pub use stats::{PoolStats, Stats, COLUMNS as STATS_COLUMNS};
pub use tiles::{plan_matmul, plan_tiles, round_to_line, MatmulBlocks, PlanError, TilePlan};
pub use timeline::{Sample, Timeline, TIMELINE_CAPACITY};
pub use topology::{CacheTopology, TopologyError, TopologySource};
