//! Configuration: `PoolConfig` for code (const-constructible, so it can configure a
//! `#[global_allocator]` static).

use crate::kind::{TensorKind, NUM_KINDS};

/// Capacity value meaning "the default": half of physical memory, per kind.
pub const DEFAULT_CAPACITY: usize = 0;

/// Process-wide allocator configuration, applied when the allocator first serves a large block
/// (or at `TensorPool::init`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PoolConfig {
    /// Soft capacity per kind on live + cached large-block bytes; over it, least recently
    /// released cached blocks go back to the OS. `DEFAULT_CAPACITY` picks half of physical memory.
    pub capacity: [usize; NUM_KINDS],
    /// Advise transparent huge pages for large blocks of 2 MiB or more.
    pub huge_pages: bool,
}

impl PoolConfig {
    /// Defaults: every kind at the default capacity, huge pages off.
    pub const fn new() -> Self {
        Self {
            capacity: [DEFAULT_CAPACITY; NUM_KINDS],
            huge_pages: false,
        }
    }

    /// Set one kind's capacity in bytes.
    pub const fn with_capacity(mut self, kind: TensorKind, bytes: usize) -> Self {
        self.capacity[kind.index()] = bytes;
        self
    }

    /// Turn huge-page advice on or off.
    pub const fn with_huge_pages(mut self, on: bool) -> Self {
        self.huge_pages = on;
        self
    }
}

impl Default for PoolConfig {
    fn default() -> Self {
        Self::new()
    }
}

/// Half of physical memory (the default capacity), or 1 GiB if the OS will not say.
pub(crate) fn default_capacity() -> usize {
    crate::os::physical_memory().map_or(1 << 30, |b| b / 2)
}
