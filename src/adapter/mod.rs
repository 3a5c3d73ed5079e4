//! What inference code calls instead of thinking in `Layout`s, built on the crate's public API
//! only: element types, owning tensor buffers, a manager that checks returns, a per-request
//! workspace, and the reference system's Qwen3-VL and legacy adapters.

mod dtype;
mod manager;
mod qwen3vl;
mod tensor;
mod workspace;

pub use dtype::{Bf16, DType, Element, ParseDTypeError, F16};
pub use manager::{PoolManager, ReturnError};
pub use qwen3vl::{LegacyAdapter, PoolGroupStats, PoolStatistics, Qwen3VlAdapter, Qwen3VlConfig};
pub use tensor::{checked_size, Tensor, TensorError, TENSOR_ALIGN};
pub use workspace::{TensorId, Workspace, WorkspaceReport};
