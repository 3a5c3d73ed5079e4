//! `Workspace`: the reference's `MemoryPoolIntegration`, which tracks the tensors of one request
//! so they can be released together.

use super::dtype::DType;
use super::tensor::{Tensor, TensorError};
use crate::kind::{TensorKind, NUM_KINDS};
use core::fmt;

/// Names a tensor held by a `Workspace`. Ids of tensors released by `cleanup` (or taken out)
/// name nothing afterwards, even if the workspace is reused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct TensorId {
    index: usize,
    generation: u64,
}

/// Owns the tensors of one request: allocate through it, use them by id, and release them all
/// at once with `cleanup` (or by dropping the workspace).
#[derive(Debug, Default)]
pub struct Workspace {
    slots: Vec<Option<Tensor>>,
    generation: u64,
}

/// What a workspace holds, or what a cleanup released.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct WorkspaceReport {
    /// Tensors.
    pub tensors: usize,
    /// Their bytes.
    pub bytes: usize,
    /// Tensors and bytes per kind (`TensorKind::index`).
    pub per_kind: [(usize, usize); NUM_KINDS],
}

impl WorkspaceReport {
    /// Tensors and bytes of one kind.
    pub fn kind(&self, kind: TensorKind) -> (usize, usize) {
        self.per_kind[kind.index()]
    }
}

impl fmt::Display for WorkspaceReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} tensors, {}",
            self.tensors,
            crate::text::Bytes(self.bytes as u64)
        )?;
        for k in TensorKind::ALL {
            let (n, b) = self.kind(k);
            if n > 0 {
                write!(f, "; {k}: {n} ({})", crate::text::Bytes(b as u64))?;
            }
        }
        Ok(())
    }
}

impl Workspace {
    /// An empty workspace.
    pub fn new() -> Self {
        Self::default()
    }

    /// Allocate a zeroed tensor and keep it here.
    pub fn alloc(
        &mut self,
        shape: &[usize],
        dtype: DType,
        kind: TensorKind,
    ) -> Result<TensorId, TensorError> {
        let t = Tensor::zeros(shape, dtype, kind)?;
        Ok(self.adopt(t))
    }

    /// Keep a tensor made elsewhere.
    pub fn adopt(&mut self, t: Tensor) -> TensorId {
        self.slots.push(Some(t));
        TensorId {
            index: self.slots.len() - 1,
            generation: self.generation,
        }
    }

    fn slot(&self, id: TensorId) -> Option<&Option<Tensor>> {
        (id.generation == self.generation)
            .then(|| self.slots.get(id.index))
            .flatten()
    }

    /// The tensor named by `id`, if still held.
    pub fn get(&self, id: TensorId) -> Option<&Tensor> {
        self.slot(id)?.as_ref()
    }

    /// The tensor named by `id`, mutably, if still held.
    pub fn get_mut(&mut self, id: TensorId) -> Option<&mut Tensor> {
        self.slot(id)?;
        self.slots[id.index].as_mut()
    }

    /// Stop tracking a tensor and hand it to the caller.
    pub fn take(&mut self, id: TensorId) -> Option<Tensor> {
        self.slot(id)?;
        self.slots[id.index].take()
    }

    /// Release one tensor now. Returns whether `id` named a held tensor.
    pub fn release(&mut self, id: TensorId) -> bool {
        self.take(id).is_some()
    }

    /// What the workspace holds.
    pub fn report(&self) -> WorkspaceReport {
        let mut r = WorkspaceReport::default();
        for t in self.slots.iter().flatten() {
            r.tensors += 1;
            r.bytes += t.nbytes();
            let k = &mut r.per_kind[t.kind().index()];
            k.0 += 1;
            k.1 += t.nbytes();
        }
        r
    }

    /// Release every tensor held, returning what was released. A second cleanup releases
    /// nothing (and says so); ids from before it name nothing.
    pub fn cleanup(&mut self) -> WorkspaceReport {
        let r = self.report();
        self.slots.clear();
        self.generation += 1;
        r
    }
}

impl Drop for Workspace {
    fn drop(&mut self) {
        self.cleanup();
    }
}
