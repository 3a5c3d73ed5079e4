//! Owning tensor buffers: shape, element type, kind and 64-byte aligned pooled storage.

use super::dtype::{DType, Element};
use crate::heap::tag::with_kind;
use crate::kind::TensorKind;
use allocator_api2::alloc::{Allocator, Global};
use core::alloc::Layout;
use core::fmt;
use core::ptr::NonNull;

/// Every tensor's storage starts on a cache line.
pub const TENSOR_ALIGN: usize = 64;

/// What went wrong building or using a tensor. Nothing is allocated or changed when one is
/// returned.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TensorError {
    /// A dimension is zero (tensors here always hold at least one element).
    ZeroDimension {
        /// The shape asked for.
        shape: Vec<usize>,
        /// The first zero dimension.
        axis: usize,
    },
    /// The element count or byte size does not fit in memory's address range.
    Overflow {
        /// The shape asked for.
        shape: Vec<usize>,
        /// Its element type.
        dtype: DType,
    },
    /// The allocator could not provide the storage (the OS refused, or a handle's limit).
    OutOfMemory {
        /// Bytes asked for.
        bytes: usize,
        /// The pool asked.
        kind: TensorKind,
    },
    /// A typed view of the wrong element type.
    DTypeMismatch {
        /// The tensor's element type.
        tensor: DType,
        /// The type asked for.
        requested: DType,
    },
    /// A reshape to a different element count.
    ShapeMismatch {
        /// The tensor's shape.
        from: Vec<usize>,
        /// The shape asked for.
        to: Vec<usize>,
    },
    /// A tensor-type string that names no kind (legacy entry point).
    UnknownKind(crate::kind::ParseKindError),
}

impl fmt::Display for TensorError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TensorError::ZeroDimension { shape, axis } => {
                write!(f, "shape {shape:?} has a zero dimension (axis {axis})")
            }
            TensorError::Overflow { shape, dtype } => {
                write!(f, "shape {shape:?} of {dtype} overflows the address space")
            }
            TensorError::OutOfMemory { bytes, kind } => write!(
                f,
                "the {kind} pool could not provide {bytes} bytes ({})",
                crate::text::Bytes(*bytes as u64)
            ),
            TensorError::DTypeMismatch { tensor, requested } => {
                write!(f, "tensor holds {tensor}, not {requested}")
            }
            TensorError::ShapeMismatch { from, to } => {
                write!(
                    f,
                    "cannot reshape {from:?} to {to:?}: element counts differ"
                )
            }
            TensorError::UnknownKind(e) => e.fmt(f),
        }
    }
}

impl std::error::Error for TensorError {}

/// Elements and bytes of a shape, checked: no zero dimension, no overflow (of `isize` bytes, with
/// room to round up to the alignment). A rank-0 shape is a scalar (one element).
pub fn checked_size(shape: &[usize], dtype: DType) -> Result<(usize, usize), TensorError> {
    if let Some(axis) = shape.iter().position(|&d| d == 0) {
        return Err(TensorError::ZeroDimension {
            shape: shape.to_vec(),
            axis,
        });
    }
    let overflow = || TensorError::Overflow {
        shape: shape.to_vec(),
        dtype,
    };
    let numel = shape
        .iter()
        .try_fold(1usize, |n, &d| n.checked_mul(d))
        .ok_or_else(overflow)?;
    let bytes = numel.checked_mul(dtype.size()).ok_or_else(overflow)?;
    if bytes > isize::MAX as usize - (TENSOR_ALIGN - 1) {
        return Err(overflow());
    }
    Ok((numel, bytes))
}

/// An owning tensor buffer: zero-initialised, 64-byte aligned storage from its kind's pool, with a
/// shape and an element type. Dropping it returns the storage to the pool it came from.
///
/// `Tensor::zeros` takes its storage from the global allocator under the kind's tag, so with
/// `TensorPool` as the global allocator it lands in the kind's pool (and under any other global
/// allocator it still works). `Tensor::zeros_in` takes any `Allocator`, for example a limited
/// `KindHandle`.
pub struct Tensor<A: Allocator = Global> {
    ptr: NonNull<u8>,
    bytes: usize,
    shape: Vec<usize>,
    dtype: DType,
    kind: TensorKind,
    alloc: A,
}

// SAFETY: the tensor owns its storage exclusively; sending it sends the allocator with it.
unsafe impl<A: Allocator + Send> Send for Tensor<A> {}
// SAFETY: shared access only reads the storage.
unsafe impl<A: Allocator + Sync> Sync for Tensor<A> {}

impl Tensor {
    /// A zeroed tensor of `shape` and `dtype` from the global allocator, tagged with `kind`.
    pub fn zeros(shape: &[usize], dtype: DType, kind: TensorKind) -> Result<Self, TensorError> {
        Self::zeros_in(shape, dtype, kind, Global)
    }

    /// A tensor holding `data`, with `shape` (whose element count must be `data.len()`).
    pub fn from_slice<T: Element>(
        shape: &[usize],
        data: &[T],
        kind: TensorKind,
    ) -> Result<Self, TensorError> {
        let mut t = Self::zeros(shape, T::DTYPE, kind)?;
        if t.numel() != data.len() {
            return Err(TensorError::ShapeMismatch {
                from: vec![data.len()],
                to: shape.to_vec(),
            });
        }
        t.as_mut_slice::<T>()?.copy_from_slice(data);
        Ok(t)
    }
}

impl<A: Allocator> Tensor<A> {
    /// A zeroed tensor whose storage comes from `alloc` (allocated under `kind`'s tag, so an
    /// allocator that routes by tag routes it there).
    pub fn zeros_in(
        shape: &[usize],
        dtype: DType,
        kind: TensorKind,
        alloc: A,
    ) -> Result<Self, TensorError> {
        let (_, bytes) = checked_size(shape, dtype)?;
        let layout = Self::layout(bytes);
        let ptr = with_kind(kind, || alloc.allocate_zeroed(layout))
            .map_err(|_| TensorError::OutOfMemory { bytes, kind })?;
        Ok(Tensor {
            ptr: ptr.cast(),
            bytes,
            shape: shape.to_vec(),
            dtype,
            kind,
            alloc,
        })
    }

    fn layout(bytes: usize) -> Layout {
        // `checked_size` keeps `bytes` below `isize::MAX - 63`, so this cannot fail.
        Layout::from_size_align(bytes, TENSOR_ALIGN).unwrap_or(Layout::new::<u8>())
    }

    /// The shape.
    pub fn shape(&self) -> &[usize] {
        &self.shape
    }

    /// The element type.
    pub fn dtype(&self) -> DType {
        self.dtype
    }

    /// The pool the storage came from.
    pub fn kind(&self) -> TensorKind {
        self.kind
    }

    /// Elements held.
    pub fn numel(&self) -> usize {
        self.bytes / self.dtype.size()
    }

    /// Bytes of storage in use (elements times element size).
    pub fn nbytes(&self) -> usize {
        self.bytes
    }

    /// The storage's address (64-byte aligned).
    pub fn as_ptr(&self) -> *const u8 {
        self.ptr.as_ptr()
    }

    /// The elements as `T`, which must match the tensor's element type.
    pub fn as_slice<T: Element>(&self) -> Result<&[T], TensorError> {
        self.check::<T>()?;
        // SAFETY: the storage holds `numel` initialised elements of `T`'s dtype (zeroed at
        // creation, written only through typed slices), is aligned to 64 and lives as long as
        // `self`.
        Ok(unsafe { core::slice::from_raw_parts(self.ptr.as_ptr().cast::<T>(), self.numel()) })
    }

    /// The elements as mutable `T`, which must match the tensor's element type.
    pub fn as_mut_slice<T: Element>(&mut self) -> Result<&mut [T], TensorError> {
        self.check::<T>()?;
        // SAFETY: as in `as_slice`, and `&mut self` makes the access exclusive.
        Ok(unsafe { core::slice::from_raw_parts_mut(self.ptr.as_ptr().cast::<T>(), self.numel()) })
    }

    /// The storage as bytes.
    pub fn as_bytes(&self) -> &[u8] {
        // SAFETY: `bytes` initialised bytes owned by `self`.
        unsafe { core::slice::from_raw_parts(self.ptr.as_ptr(), self.bytes) }
    }

    /// Set every element to `v`.
    pub fn fill<T: Element>(&mut self, v: T) -> Result<(), TensorError> {
        self.as_mut_slice::<T>()?.fill(v);
        Ok(())
    }

    /// Change the shape, keeping the element count.
    pub fn reshape(&mut self, shape: &[usize]) -> Result<(), TensorError> {
        match checked_size(shape, self.dtype) {
            Ok((n, _)) if n == self.numel() => {
                self.shape = shape.to_vec();
                Ok(())
            }
            Ok(_) => Err(TensorError::ShapeMismatch {
                from: self.shape.clone(),
                to: shape.to_vec(),
            }),
            Err(e) => Err(e),
        }
    }

    fn check<T: Element>(&self) -> Result<(), TensorError> {
        if T::DTYPE == self.dtype {
            Ok(())
        } else {
            Err(TensorError::DTypeMismatch {
                tensor: self.dtype,
                requested: T::DTYPE,
            })
        }
    }
}

impl<A: Allocator> Drop for Tensor<A> {
    fn drop(&mut self) {
        // SAFETY: the storage was allocated by `self.alloc` with this layout and is freed once.
        unsafe { self.alloc.deallocate(self.ptr, Self::layout(self.bytes)) };
    }
}

impl<A: Allocator> fmt::Debug for Tensor<A> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Tensor")
            .field("shape", &self.shape)
            .field("dtype", &self.dtype)
            .field("kind", &self.kind)
            .field("bytes", &self.bytes)
            .finish()
    }
}
