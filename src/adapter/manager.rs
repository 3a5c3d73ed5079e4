//! `PoolManager`: the reference's `SpecializedPoolManager` (`get_tensor` / `return_tensor`),
//! with ownership doing most of the returning.

use super::dtype::DType;
use super::tensor::{Tensor, TensorError};
use crate::kind::{TensorKind, NUM_KINDS};
use core::fmt;

/// Hands out tensors from the per-kind pools and takes them back, checking that a tensor goes
/// back to the pool it came from. Dropping a tensor returns its storage too; `return_tensor` is
/// for code that wants the check (and the count) the reference's manager gave.
#[derive(Debug)]
pub struct PoolManager {
    dtype: DType,
    handed_out: [usize; NUM_KINDS],
    returned: [usize; NUM_KINDS],
}

/// A tensor given back to a pool it did not come from. The tensor is inside, unharmed: take it
/// back with `into_tensor`.
pub struct ReturnError {
    tensor: Tensor,
    /// The pool named in the call.
    pub given: TensorKind,
}

impl ReturnError {
    /// The tensor, as it was.
    pub fn into_tensor(self) -> Tensor {
        self.tensor
    }

    /// The pool the tensor belongs to.
    pub fn belongs_to(&self) -> TensorKind {
        self.tensor.kind()
    }
}

impl fmt::Debug for ReturnError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ReturnError")
            .field("tensor", &self.tensor)
            .field("given", &self.given)
            .finish()
    }
}

impl fmt::Display for ReturnError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "a {} tensor of shape {:?} cannot be returned to the {} pool",
            self.tensor.kind(),
            self.tensor.shape(),
            self.given
        )
    }
}

impl std::error::Error for ReturnError {}

impl PoolManager {
    /// A manager whose tensors default to `dtype` (the reference's managers default to f16).
    pub fn new(dtype: DType) -> Self {
        Self {
            dtype,
            handed_out: [0; NUM_KINDS],
            returned: [0; NUM_KINDS],
        }
    }

    /// The default element type.
    pub fn dtype(&self) -> DType {
        self.dtype
    }

    /// A zeroed tensor of `shape` and the default element type from `kind`'s pool.
    pub fn get_tensor(&mut self, shape: &[usize], kind: TensorKind) -> Result<Tensor, TensorError> {
        self.get_tensor_of(shape, self.dtype, kind)
    }

    /// A zeroed tensor of `shape` and `dtype` from `kind`'s pool.
    pub fn get_tensor_of(
        &mut self,
        shape: &[usize],
        dtype: DType,
        kind: TensorKind,
    ) -> Result<Tensor, TensorError> {
        let t = Tensor::zeros(shape, dtype, kind)?;
        self.handed_out[kind.index()] += 1;
        Ok(t)
    }

    /// Give a tensor back to `kind`'s pool. A tensor of another kind is refused and handed back
    /// in the error.
    pub fn return_tensor(&mut self, tensor: Tensor, kind: TensorKind) -> Result<(), ReturnError> {
        if tensor.kind() != kind {
            return Err(ReturnError {
                tensor,
                given: kind,
            });
        }
        self.returned[kind.index()] += 1;
        drop(tensor);
        Ok(())
    }

    /// Tensors of `kind` handed out by this manager and not returned through it (dropped ones
    /// included: their storage is back in the pool, but the manager did not see it).
    pub fn outstanding(&self, kind: TensorKind) -> usize {
        self.handed_out[kind.index()]
            - self.returned[kind.index()].min(self.handed_out[kind.index()])
    }

    /// Tensors of `kind` handed out by this manager.
    pub fn handed_out(&self, kind: TensorKind) -> usize {
        self.handed_out[kind.index()]
    }

    /// The allocator's statistics (all pools, process-wide).
    pub fn stats(&self) -> crate::stats::Stats {
        crate::global::TensorPool::new().stats()
    }
}

impl Default for PoolManager {
    fn default() -> Self {
        Self::new(DType::F16)
    }
}
