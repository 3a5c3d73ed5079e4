//! The L3 budget as users see it: the cache topology, each core's share of the last-level cache,
//! the thread-cache limit and the bytes in thread caches (`TensorPool::budget`). The budget as the
//! allocator applies it is the thread cache of large blocks (`heap::hot`); tiles for tensors that
//! do not fit come from `tiles`.

use crate::kind::NUM_KINDS;
use crate::topology::CacheTopology;

/// The L3 budget as the allocator applies it, with the hot bytes at the time it was taken
/// (`TensorPool::budget`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct L3Budget {
    /// The cache topology in use.
    pub topology: CacheTopology,
    /// Each core's share of the last-level cache: the working set one thread can keep in L3.
    pub share: usize,
    /// Bytes each thread's cache of freed large blocks may hold; larger blocks bypass it.
    pub thread_limit: usize,
    /// Bytes in thread caches now, per kind (`TensorKind::index`), over all threads.
    pub hot_bytes: [u64; NUM_KINDS],
    /// Bytes in the calling thread's cache now.
    pub thread_hot_bytes: u64,
}

impl L3Budget {
    /// Whether a working set of `bytes` fits one core's share of the last-level cache.
    pub fn fits(&self, bytes: usize) -> bool {
        bytes <= self.share
    }

    /// Whether tensors of these sizes, each rounded up to whole cache lines, fit one core's
    /// share together (false on overflow).
    pub fn fits_all(&self, sizes: &[usize]) -> bool {
        let line = self.topology.line.max(1);
        sizes
            .iter()
            .try_fold(0usize, |acc, &s| {
                acc.checked_add(s.checked_next_multiple_of(line)?)
            })
            .is_some_and(|total| self.fits(total))
    }

    /// Bytes of one kind in thread caches.
    pub fn hot(&self, kind: crate::TensorKind) -> u64 {
        self.hot_bytes[kind.index()]
    }

    /// Bytes in thread caches, all kinds.
    pub fn total_hot(&self) -> u64 {
        self.hot_bytes.iter().sum()
    }
}
