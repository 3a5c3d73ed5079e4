//! Per-kind pools: slab segments and pages for small blocks (`slab`), cached large blocks with
//! least-recently-released eviction (`large`).

pub(crate) mod large;
pub(crate) mod slab;
