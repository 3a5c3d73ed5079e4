//! The tile planner: how to split a tensor, or a matrix product, into pieces whose working set
//! fits a cache budget (by default each core's share of the last-level cache).
//!
//! Plans are for code that inference kernels run outside the allocator, so they may allocate.

use core::ops::Range;

/// Why a plan could not be made.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PlanError {
    /// The shape has no dimensions.
    EmptyShape,
    /// Dimension `0`-based index `.0` is zero.
    ZeroDim(usize),
    /// The element size is zero.
    ZeroElement,
    /// The tensor's size in bytes overflows `usize`.
    Overflow,
    /// The budget is smaller than one cache line (`line` bytes).
    BudgetTooSmall {
        /// The budget given.
        budget: usize,
        /// The cache line it must at least hold.
        line: usize,
    },
}

impl core::fmt::Display for PlanError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            PlanError::EmptyShape => f.write_str("a shape needs at least one dimension"),
            PlanError::ZeroDim(d) => write!(f, "dimension {d} is zero"),
            PlanError::ZeroElement => f.write_str("the element size is zero"),
            PlanError::Overflow => f.write_str("the tensor's size in bytes overflows"),
            PlanError::BudgetTooSmall { budget, line } => {
                write!(
                    f,
                    "a budget of {budget} bytes is less than one {line}-byte cache line"
                )
            }
        }
    }
}

impl std::error::Error for PlanError {}

/// A split of a row-major tensor into a grid of tiles: tile `i` along dimension `d` covers
/// `i * tile[d] .. min((i + 1) * tile[d], shape[d])`. The tiles cover the tensor exactly, with
/// no overlap.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TilePlan {
    /// The tensor's shape.
    pub shape: Vec<usize>,
    /// The full tile's extent along each dimension.
    pub tile: Vec<usize>,
    /// Element size in bytes.
    pub elem: usize,
}

impl TilePlan {
    /// Number of tiles.
    pub fn count(&self) -> usize {
        self.shape
            .iter()
            .zip(&self.tile)
            .map(|(&s, &t)| s.div_ceil(t))
            .product()
    }

    /// Bytes of a full tile.
    pub fn tile_bytes(&self) -> usize {
        self.tile.iter().product::<usize>() * self.elem
    }

    /// Every tile's index ranges, in row-major order of tiles.
    pub fn tiles(&self) -> impl Iterator<Item = Vec<Range<usize>>> + '_ {
        let n = self.count();
        let per_dim: Vec<usize> = self
            .shape
            .iter()
            .zip(&self.tile)
            .map(|(&s, &t)| s.div_ceil(t))
            .collect();
        (0..n).map(move |mut i| {
            let mut ranges = vec![0..0; self.shape.len()];
            for d in (0..self.shape.len()).rev() {
                let k = i % per_dim[d];
                i /= per_dim[d];
                let start = k * self.tile[d];
                ranges[d] = start..(start + self.tile[d]).min(self.shape[d]);
            }
            ranges
        })
    }
}

fn check(shape: &[usize], elem: usize, budget: usize, line: usize) -> Result<usize, PlanError> {
    if shape.is_empty() {
        return Err(PlanError::EmptyShape);
    }
    if let Some(d) = shape.iter().position(|&s| s == 0) {
        return Err(PlanError::ZeroDim(d));
    }
    if elem == 0 {
        return Err(PlanError::ZeroElement);
    }
    let bytes = shape
        .iter()
        .try_fold(elem, |acc, &s| acc.checked_mul(s))
        .ok_or(PlanError::Overflow)?;
    if budget < line || budget < elem {
        return Err(PlanError::BudgetTooSmall { budget, line });
    }
    Ok(bytes)
}

/// Split a row-major tensor of `shape` (elements of `elem` bytes) into tiles of at most `budget`
/// bytes, keeping the innermost dimensions whole as far as they fit, so each tile is as few
/// contiguous runs as possible. Where even one innermost row does not fit, the row is split
/// into whole cache lines (`line` bytes).
pub fn plan_tiles(
    shape: &[usize],
    elem: usize,
    budget: usize,
    line: usize,
) -> Result<TilePlan, PlanError> {
    check(shape, elem, budget, line)?;
    let n = shape.len();
    let mut tile = vec![1; n];
    let mut inner = elem;
    let mut d = n;
    while d > 0 {
        let dim = shape[d - 1];
        match inner.checked_mul(dim) {
            Some(b) if b <= budget => {
                tile[d - 1] = dim;
                inner = b;
                d -= 1;
            }
            _ => {
                // As many of this dimension as fit; outer dimensions stay at 1.
                let mut k = (budget / inner).clamp(1, dim);
                if d == n && elem < line {
                    // Splitting the innermost dimension: whole cache lines per tile.
                    let per_line = line / elem;
                    if k >= per_line {
                        k -= k % per_line;
                    }
                }
                tile[d - 1] = k;
                break;
            }
        }
    }
    Ok(TilePlan {
        shape: shape.to_vec(),
        tile,
        elem,
    })
}

/// Block sizes for `C[m x n] += A[m x k] * B[k x n]`, elements of `elem` bytes, whose A, B and C
/// blocks fit `budget` bytes together: `elem * (mb*kb + kb*nb + mb*nb) <= budget`. `kb` and `nb`
/// (the contiguous dimensions of A and B) are whole cache lines where the matrix is that wide.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MatmulBlocks {
    /// Rows of A and C per block.
    pub mb: usize,
    /// Columns of B and C per block.
    pub nb: usize,
    /// Columns of A, rows of B per block.
    pub kb: usize,
}

impl MatmulBlocks {
    /// Bytes of the three blocks together.
    pub fn bytes(&self, elem: usize) -> usize {
        elem * (self.mb * self.kb + self.kb * self.nb + self.mb * self.nb)
    }
}

/// Plan matmul blocks (see `MatmulBlocks`).
pub fn plan_matmul(
    m: usize,
    n: usize,
    k: usize,
    elem: usize,
    budget: usize,
    line: usize,
) -> Result<MatmulBlocks, PlanError> {
    check(&[m, k], elem, budget, line)?;
    check(&[k, n], elem, budget, line)?;
    check(&[m, n], elem, budget, line)?;
    if 3 * elem > budget {
        return Err(PlanError::BudgetTooSmall { budget, line });
    }
    let per_line = (line / elem).max(1);
    // Square blocks of side s hold 3*s*s elements; start there, align to lines, clamp to the
    // matrices, then shrink the largest side until the three blocks fit.
    let s = ((budget / elem / 3) as f64).sqrt() as usize;
    let align = |v: usize, dim: usize| {
        let v = v.clamp(1, dim);
        if v >= per_line && v < dim {
            v - v % per_line
        } else {
            v
        }
    };
    let mut b = MatmulBlocks {
        mb: s.clamp(1, m),
        nb: align(s, n),
        kb: align(s, k),
    };
    while b.bytes(elem) > budget {
        if b.kb >= b.nb && b.kb >= b.mb && b.kb > 1 {
            b.kb = align(b.kb / 2, k);
        } else if b.nb >= b.mb && b.nb > 1 {
            b.nb = align(b.nb / 2, n);
        } else if b.mb > 1 {
            b.mb /= 2;
        } else {
            b.kb = (b.kb / 2).max(1);
            b.nb = (b.nb / 2).max(1);
        }
    }
    Ok(b)
}

/// The smallest length at least `dim` whose rows of `elem`-byte elements fill whole cache lines
/// of `line` bytes: a leading dimension to pad a row-major matrix to. `None` on overflow or a
/// zero argument.
pub fn round_to_line(dim: usize, elem: usize, line: usize) -> Option<usize> {
    if dim == 0 || elem == 0 || line == 0 {
        return None;
    }
    let bytes = dim.checked_mul(elem)?;
    let padded = bytes.checked_next_multiple_of(lcm(elem, line))?;
    Some(padded / elem)
}

fn lcm(a: usize, b: usize) -> usize {
    let (mut x, mut y) = (a, b);
    while y != 0 {
        (x, y) = (y, x % y);
    }
    a / x * b
}
