//! Scopes: named, nested stretches of a thread's work (a model's layers, a request's prefill),
//! and the large-block bytes allocated inside each, live and at peak, per kind.
//!
//! A scope is a node of one process-wide tree, interned by (parent, name): entering
//! `"self_attn"` inside `"layers.3"` reaches the same node every time, so a scope entered on
//! every module call costs a lookup, not a new entry. A thread's *current* scope is one
//! thread-local node id (0: none); entering sets it to the child, leaving to the parent. Names
//! are copied into the node (the first `SCOPE_NAME_MAX` bytes), so the caller's string need not
//! outlive the call.
//!
//! **Attribution.** A large block (above the small classes: tensors) allocated while a scope is
//! current records the scope's id in its descriptor (`Extent::scope`, two bytes of padding), and
//! its bytes are added to that node's *own* counters and to the *inclusive* counters of the node
//! and every ancestor, per kind and in total, each with a peak; its free subtracts them again,
//! whichever thread frees it. So, at every moment and per kind,
//!
//! `inclusive.live(n) = own.live(n) + sum(inclusive.live(c) for c a child of n)`
//!
//! and the large live bytes of the process are the sum of the top-level nodes' inclusive bytes
//! plus the bytes allocated outside every scope. Peaks are maxima of those sums over time (an
//! inclusive peak is not the sum of the children's). Small blocks carry no descriptor to record
//! a scope in; sampled profiles attribute them (each sample records the current scope).
//!
//! **Other threads.** A thread may *share* its scopes (`share`): threads outside every scope
//! then allocate into its current scope, as the worker threads of a model's operators allocate
//! scratch and outputs for the module that runs them (in the PyTorch inference of the docs, 3.4
//! of 9.1 MB allocated during a run came from those threads).
//!
//! **Cost.** Outside any scope the allocation paths pay one thread-local load, one relaxed load
//! and a branch on the large path only. Inside, a large allocation or free pays relaxed atomic adds on its node and
//! each ancestor (four per level); the small paths pay nothing. Entering a scope hashes its name
//! and probes a table read without a lock (the node's fields are written once, before the slot
//! that publishes it); only a name seen for the first time under that parent takes the lock.
//!
//! Nothing here allocates; `snapshot` (in `report`) does, outside every lock.

pub(crate) mod report;

pub use report::{ScopeBytes, ScopeStats, Scopes};

use crate::kind::NUM_KINDS;
use crate::sync::plain::{AtomicU64, AtomicUsize};
use crate::sync::{shared_static, SharedStat, SpinLock};
use core::cell::Cell;
use core::sync::atomic::Ordering::{Acquire, Relaxed, Release};

/// Scopes the process can name at once (node 0 is "no scope").
pub const SCOPE_CAPACITY: usize = 4096;
/// Bytes of a scope's name that are kept (longer names are told apart by a hash of the whole).
pub const SCOPE_NAME_MAX: usize = 104;
/// How deep scopes may nest.
pub const SCOPE_DEPTH_MAX: usize = 255;

/// Hash table slots (a power of two, twice the nodes: probes stay short).
const SLOTS: usize = SCOPE_CAPACITY * 2;
const WORDS: usize = SCOPE_NAME_MAX / 8;

/// Counter layout per node: own live and peak, inclusive live and peak, each per kind and one
/// for the total (`ALL`).
const ALL: usize = NUM_KINDS;
const PER: usize = NUM_KINDS + 1;
const OWN_LIVE: usize = 0;
const OWN_PEAK: usize = PER;
const INC_LIVE: usize = 2 * PER;
const INC_PEAK: usize = 3 * PER;
const COUNTERS: usize = 4 * PER;

/// Why a scope could not be entered.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ScopeError {
    /// An empty name.
    EmptyName,
    /// `SCOPE_CAPACITY` distinct scopes exist already.
    Full,
    /// Scopes nest `SCOPE_DEPTH_MAX` deep already.
    TooDeep,
}

impl core::fmt::Display for ScopeError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(match self {
            ScopeError::EmptyName => "a scope needs a non-empty name",
            ScopeError::Full => "the scope table is full (4096 distinct scopes)",
            ScopeError::TooDeep => "scopes nest 255 deep already",
        })
    }
}

impl std::error::Error for ScopeError {}

/// One node. Written once, under `INTERN`, before the slot that publishes it; read by anyone
/// after an acquire load of that slot (or of `NEXT`, for snapshots).
struct Node {
    /// `parent | depth << 16 | name length << 32`.
    meta: AtomicU64,
    /// A hash of the parent and the whole name.
    hash: AtomicU64,
    /// The name's first `SCOPE_NAME_MAX` bytes, little-endian in words.
    name: [AtomicU64; WORDS],
}

impl Node {
    #[allow(clippy::declare_interior_mutable_const)]
    const EMPTY: Node = Node {
        meta: AtomicU64::new(0),
        hash: AtomicU64::new(0),
        name: [const { AtomicU64::new(0) }; WORDS],
    };

    fn parent(&self) -> usize {
        (self.meta.load(Relaxed) & 0xffff) as usize
    }

    fn depth(&self) -> usize {
        ((self.meta.load(Relaxed) >> 16) & 0xffff) as usize
    }

    fn len(&self) -> usize {
        (self.meta.load(Relaxed) >> 32) as usize
    }

    /// Copy the kept bytes of the name into `out`; how many.
    fn name_into(&self, out: &mut [u8; SCOPE_NAME_MAX]) -> usize {
        for (i, w) in self.name.iter().enumerate() {
            out[i * 8..i * 8 + 8].copy_from_slice(&w.load(Relaxed).to_le_bytes());
        }
        self.len().min(SCOPE_NAME_MAX)
    }

    fn is(&self, parent: usize, hash: u64, name: &[u8]) -> bool {
        if self.hash.load(Relaxed) != hash || self.parent() != parent || self.len() != name.len() {
            return false;
        }
        let mut kept = [0u8; SCOPE_NAME_MAX];
        let n = self.name_into(&mut kept);
        kept[..n] == name[..n]
    }
}

static NODES: [Node; SCOPE_CAPACITY] = [Node::EMPTY; SCOPE_CAPACITY];
static COUNTS: [[SharedStat; COUNTERS]; SCOPE_CAPACITY] =
    [const { [SharedStat::ZERO; COUNTERS] }; SCOPE_CAPACITY];
/// Node ids by hash (0: empty). A slot, once set, never changes.
static TABLE: [AtomicUsize; SLOTS] = [const { AtomicUsize::new(0) }; SLOTS];
/// Nodes made so far, node 0 included (published with release after the node is written).
static NEXT: AtomicUsize = AtomicUsize::new(1);
/// Entries refused (table full, too deep): what the report calls dropped.
#[cfg_attr(not(loom), link_section = ".bss.hot.tensorpool")]
static REFUSED: AtomicUsize = AtomicUsize::new(0);
/// The current scope of the thread that shares its scopes (`share`), which threads outside
/// every scope allocate into; 0: none.
#[cfg_attr(not(loom), link_section = ".bss.hot.tensorpool")]
static AMBIENT: AtomicUsize = AtomicUsize::new(0);

shared_static! {
    /// Held to add a node (lookups take no lock).
    #[cfg_attr(not(loom), link_section = ".bss.hot.tensorpool")]
    static INTERN: SpinLock<()> = SpinLock::new(());
}

thread_local! {
    /// The calling thread's current scope (0: none).
    static CURRENT: Cell<u16> = const { Cell::new(0) };
    /// Whether the calling thread's scope is also `AMBIENT`.
    static SHARING: Cell<bool> = const { Cell::new(false) };
}

/// The scope the calling thread's allocations go to: its own current scope, or, outside every
/// scope, the sharing thread's (0: none).
#[inline]
pub(crate) fn current() -> u16 {
    match CURRENT.get() {
        0 => AMBIENT.load(Relaxed) as u16,
        s => s,
    }
}

fn set_current(id: u16) {
    CURRENT.set(id);
    if SHARING.get() {
        AMBIENT.store(id as usize, Relaxed);
    }
}

/// Make the calling thread's scopes also those of every thread outside all scopes (`on`), or
/// stop. An inference thread that runs a model shares its scopes with the worker threads of
/// its operators, which allocate scratch and outputs for it; the last thread to share wins.
pub(crate) fn share(on: bool) {
    SHARING.set(on);
    AMBIENT.store(if on { CURRENT.get() as usize } else { 0 }, Relaxed);
}

/// FNV-1a over the parent id and the name.
fn hash(parent: usize, name: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in (parent as u16).to_le_bytes().iter().chain(name) {
        h ^= b as u64;
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

/// The node for `name` under `parent`, made if new.
fn intern(parent: usize, name: &[u8]) -> Result<usize, ScopeError> {
    let depth = if parent == 0 {
        1
    } else {
        NODES[parent].depth() + 1
    };
    if depth > SCOPE_DEPTH_MAX {
        return Err(ScopeError::TooDeep);
    }
    let h = hash(parent, name);
    if let Some(id) = find(parent, h, name) {
        return Ok(id);
    }
    INTERN.with(|_| {
        // Another thread may have added it since the lookup.
        if let Some(id) = find(parent, h, name) {
            return Ok(id);
        }
        let id = NEXT.load(Relaxed);
        if id >= SCOPE_CAPACITY {
            return Err(ScopeError::Full);
        }
        let n = &NODES[id];
        let meta =
            parent as u64 | (depth as u64) << 16 | (name.len().min(u32::MAX as usize) as u64) << 32;
        n.meta.store(meta, Relaxed);
        n.hash.store(h, Relaxed);
        let mut kept = [0u8; SCOPE_NAME_MAX];
        let k = name.len().min(SCOPE_NAME_MAX);
        kept[..k].copy_from_slice(&name[..k]);
        for (i, w) in n.name.iter().enumerate() {
            let mut b = [0u8; 8];
            b.copy_from_slice(&kept[i * 8..i * 8 + 8]);
            w.store(u64::from_le_bytes(b), Relaxed);
        }
        let mut s = h as usize & (SLOTS - 1);
        while TABLE[s].load(Relaxed) != 0 {
            s = (s + 1) & (SLOTS - 1);
        }
        // Publish: the node's fields above happen before any lookup that finds it.
        NEXT.store(id + 1, Release);
        TABLE[s].store(id, Release);
        Ok(id)
    })
}

/// Look `name` under `parent` up without the lock.
fn find(parent: usize, h: u64, name: &[u8]) -> Option<usize> {
    let mut s = h as usize & (SLOTS - 1);
    loop {
        let id = TABLE[s].load(Acquire);
        if id == 0 {
            return None;
        }
        if NODES[id].is(parent, h, name) {
            return Some(id);
        }
        s = (s + 1) & (SLOTS - 1);
    }
}

/// Enter the scope `name` inside the calling thread's current one; returns the scope that was
/// current (restore it with `restore`).
pub(crate) fn push(name: &[u8]) -> Result<u16, ScopeError> {
    if name.is_empty() {
        return Err(ScopeError::EmptyName);
    }
    let prev = CURRENT.get();
    match intern(prev as usize, name) {
        Ok(id) => {
            set_current(id as u16);
            Ok(prev)
        }
        Err(e) => {
            REFUSED.fetch_add(1, Relaxed);
            Err(e)
        }
    }
}

/// Leave the calling thread's current scope for its parent; the new depth, or `None` if no
/// scope was current.
pub(crate) fn pop() -> Option<usize> {
    let cur = CURRENT.get() as usize;
    if cur == 0 {
        return None;
    }
    let parent = NODES[cur].parent();
    set_current(parent as u16);
    Some(if parent == 0 {
        0
    } else {
        NODES[parent].depth()
    })
}

/// Make `id` (a value `push` returned) the calling thread's current scope again.
pub(crate) fn restore(id: u16) {
    set_current(id);
}

/// The calling thread's scope depth (0: none).
pub(crate) fn depth() -> usize {
    match CURRENT.get() as usize {
        0 => 0,
        id => NODES[id].depth(),
    }
}

/// `bytes` of kind `kind` allocated in scope `id` (non-zero).
pub(crate) fn add(id: u16, kind: usize, bytes: u64) {
    let c = &COUNTS[id as usize];
    for k in [kind, ALL] {
        let v = c[OWN_LIVE + k].add(bytes);
        c[OWN_PEAK + k].raise(v);
    }
    let mut n = id as usize;
    while n != 0 {
        let c = &COUNTS[n];
        for k in [kind, ALL] {
            let v = c[INC_LIVE + k].add(bytes);
            c[INC_PEAK + k].raise(v);
        }
        n = NODES[n].parent();
    }
}

/// `bytes` of kind `kind` allocated in scope `id` (non-zero) freed.
pub(crate) fn sub(id: u16, kind: usize, bytes: u64) {
    let c = &COUNTS[id as usize];
    c[OWN_LIVE + kind].sub(bytes);
    c[OWN_LIVE + ALL].sub(bytes);
    let mut n = id as usize;
    while n != 0 {
        let c = &COUNTS[n];
        c[INC_LIVE + kind].sub(bytes);
        c[INC_LIVE + ALL].sub(bytes);
        n = NODES[n].parent();
    }
}

/// Lower every scope's peaks to its live bytes now (a new measuring period starts).
pub(crate) fn reset_peaks() {
    for c in COUNTS.iter().take(NEXT.load(Acquire)) {
        for k in 0..PER {
            c[OWN_PEAK + k].set(c[OWN_LIVE + k].get());
            c[INC_PEAK + k].set(c[INC_LIVE + k].get());
        }
    }
}

/// Hold the scope table's lock across `fork` (the heap registry's fork handlers call this and
/// `release_after_fork`), so a child never inherits it held by a thread it does not have.
pub(crate) fn hold_across_fork() {
    INTERN.raw_lock();
}

/// Release what `hold_across_fork` took (in the parent and in the child).
pub(crate) fn release_after_fork() {
    INTERN.raw_unlock();
}

/// Entries refused so far (a full table, scopes too deep).
pub(crate) fn refused() -> usize {
    REFUSED.load(Relaxed)
}

/// Run `f` in the scope `name` (see `ScopeGuard`). If the scope cannot be entered (an empty
/// name, a full table), `f` runs in the current scope and the refusal is counted.
///
/// ```
/// use tensorpool::TensorPool;
///
/// #[global_allocator]
/// static ALLOC: TensorPool = TensorPool::new();
///
/// fn main() {
///     let weights = tensorpool::scope("load", || vec![1u8; 1 << 20]);
///     let s = ALLOC.scopes();
///     assert!(s.get("load").unwrap().own.live_total >= 1 << 20);
///     drop(weights);
///     assert_eq!(ALLOC.scopes().get("load").unwrap().own.live_total, 0);
/// }
/// ```
pub fn scope<R>(name: &str, f: impl FnOnce() -> R) -> R {
    let _guard = ScopeGuard::enter(name).ok();
    f()
}

/// A scope entered by the calling thread: large blocks it allocates until the guard is dropped
/// are attributed to `name` (inside the scope that was current). Scopes nest; dropping a guard
/// (also while unwinding) makes the scope current at its entry current again.
#[must_use = "the scope ends when the guard is dropped"]
#[derive(Debug)]
pub struct ScopeGuard {
    prev: u16,
    // The current scope is per thread: a guard must end on the thread that entered it.
    _not_send: core::marker::PhantomData<*const ()>,
}

impl ScopeGuard {
    /// Enter the scope `name` inside the calling thread's current scope.
    pub fn enter(name: &str) -> Result<Self, ScopeError> {
        let prev = push(name.as_bytes())?;
        Ok(Self {
            prev,
            _not_send: core::marker::PhantomData,
        })
    }
}

impl Drop for ScopeGuard {
    fn drop(&mut self) {
        restore(self.prev);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_name_under_one_parent_is_one_node() {
        let a = intern(0, b"unit-a").unwrap();
        assert_eq!(intern(0, b"unit-a").unwrap(), a);
        let b = intern(a, b"unit-a").unwrap();
        assert_ne!(a, b, "the same name under another parent is another node");
        assert_eq!(NODES[b].parent(), a);
        assert_eq!(NODES[b].depth(), 2);
    }

    #[test]
    fn long_names_are_told_apart_by_their_whole() {
        let mut x = [b'x'; 300];
        let a = intern(0, &x).unwrap();
        x[299] = b'y';
        let b = intern(0, &x).unwrap();
        assert_ne!(a, b);
        assert_eq!(NODES[a].len(), 300);
    }

    #[test]
    fn inclusive_bytes_are_own_plus_children() {
        let p = intern(0, b"unit-parent").unwrap();
        let c = intern(p, b"unit-child").unwrap();
        add(p as u16, 1, 100);
        add(c as u16, 2, 50);
        let at = |n: usize, i: usize| COUNTS[n][i].get();
        assert_eq!(at(p, OWN_LIVE + ALL), 100);
        assert_eq!(at(p, INC_LIVE + ALL), 150);
        assert_eq!(at(p, INC_LIVE + 2), 50);
        sub(c as u16, 2, 50);
        assert_eq!(at(p, INC_LIVE + ALL), 100);
        assert_eq!(at(p, INC_PEAK + ALL), 150);
        reset_peaks();
        assert_eq!(at(p, INC_PEAK + ALL), 100);
        sub(p as u16, 1, 100);
    }
}
