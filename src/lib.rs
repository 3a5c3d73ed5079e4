//! tensorpool: a memory allocator for ML inference processes.
//!
//! `TensorPool` is a `#[global_allocator]` that routes every request by size class and by tensor
//! kind: small blocks come from per-thread slab pages, one page per (kind, class); large (tensor)
//! blocks from one extent arena shared by every kind, with per-kind accounting, that keeps freed
//! memory resident for reuse and returns it to the OS when it stays unused (decay, a bound that
//! follows the workload, per-kind capacities). Every block of 64 bytes or more starts on a 64-byte
//! cache line.
//!
//! Modules, lowest layer first (each uses only those above it in this list): `os`, `sync`,
//! `text`, `tiles`, `fmath`; `class`, `kind`, `meta`, `env`, `scope`, `pystack`; `topology`, `options`, `stats`, `pagemap`,
//! `timeline`; `pool` (`slab`, `large`); `heap`, `background`; `budget`, `global`; `handle`,
//! `adapter`. `.ci/module_cycles.py` checks that no import runs back up.
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

// Code layout. Functions that every process runs (start-up, the thread's first allocation and
// its exit, the slow paths of small and large blocks, the arena's taking, freeing, purging and
// decay) carry `#[link_section = ".text.hot.tensorpool"]`, so that the linker puts them side by
// side. The kernel maps a library's code 64 KiB around each page a process executes
// ("fault-around"), and with these functions spread over the 680 KiB of the preload library's
// code, nine such windows were resident in a process that allocates a few blocks: 300-490 KiB,
// where mimalloc's whole library is 120 KiB (glibc-simple, a `main` that returns at once). Side
// by side, they and the preload library's entry points take two windows (readelf-checked:
// `the_code_every_process_runs_lies_together` in preload/tests/preload.rs). A function on those
// paths without it costs a window, not correctness; reports, statistics, profiles and
// timelines stay where they are. Closures coerced to `fn` pointers get shims the attribute
// cannot reach: avoid them there. The preload library's linker script (preload/layout.ld) puts
// this section at the front of its code, after the PLT, std's start-up hook and the entry
// points, and the tables every allocation reads (`.rodata.hot.tensorpool`: size classes, the
// static empty page) with this crate's other constants beside the dynamic symbols: a process
// that allocates a few blocks then keeps 80 KiB of the library's code and 64 KiB of its
// read-only data resident instead of 260 and 128 (docs/performance.md, "0.3.12"). The same
// holds for writable statics: `.bss` is mostly large tables that a process never touches (the
// page map's bitmap, the scope, profile and Python tables), and each small static written
// among them is a page resident. Those a process writes carry `#[cfg_attr(not(loom),
// link_section = ".bss.hot.tensorpool")]`, which the preload library's script puts at the
// front of `.bss`, on the page the loader zeroes after `.data` anyway: three to five pages less
// per process (docs/performance.md, "0.3.14").

pub mod adapter;
mod background;
mod budget;
mod checked;
mod class;
mod env;
mod fmath;
mod global;
mod handle;
mod heap;
mod kind;
#[cfg(loom)]
#[doc(hidden)]
pub mod loom_model;
mod meta;
mod options;
mod os;
mod pagemap;
mod pool;
mod profile;
mod pystack;
mod report;
mod scope;
mod stats;
mod sync;
mod text;
mod tiles;
mod timeline;
mod tls;
mod topology;

pub use adapter::{DType, Tensor, TensorError};
pub use background::defer_background_thread;
pub use budget::L3Budget;
pub use global::TensorPool;
pub use handle::KindHandle;
#[cfg(feature = "check")]
pub use heap::census::Census as HeapCensus;
pub use heap::tag::{current_kind, set_current_kind, with_kind, KindScope};
pub use kind::{ParseKindError, TensorKind, NUM_KINDS};
pub use options::{
    ExitReport, HugePages, PoolConfig, DEFAULT_CAPACITY, THREAD_CACHE_AUTO, THREAD_CACHE_MAX,
};
pub use os::resident_bytes;
#[cfg(feature = "check")]
pub use pool::large::Census as ArenaCensus;
pub use profile::{Frame, Profile, ProfileSite, PROFILE_FRAMES, PROFILE_RECORDS};
pub use pystack::{PythonStacksError, PYTHON_FRAMES};
pub use scope::{
    scope, ScopeBytes, ScopeError, ScopeGuard, ScopeStats, Scopes, SCOPE_CAPACITY, SCOPE_DEPTH_MAX,
    SCOPE_NAME_MAX,
};
pub use stats::{ArenaCounters, HugePageCoverage, LargeCounters, LockWaits};
pub use stats::{PoolStats, Stats, COLUMNS as STATS_COLUMNS};
pub use tiles::{plan_matmul, plan_tiles, round_to_line, MatmulBlocks, PlanError, TilePlan};
pub use timeline::{Marker, Sample, Timeline, MARKER_CAPACITY, MARKER_NAME_MAX, TIMELINE_CAPACITY};
pub use topology::{CacheTopology, TopologyError, TopologySource};
