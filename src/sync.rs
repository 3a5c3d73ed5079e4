//! The one file that names std's or loom's atomics, cells and spin hints.
//!
//! Every other module imports its shared-state primitives from here, so that building with
//! `--cfg loom` swaps in loom's types and the model checker sees every access.
//!
//! The lock is a hand-rolled spin lock rather than `std::sync::Mutex` for two reasons: it never
//! allocates and never poisons (the allocator may not panic), and `fork` handling needs to take it
//! in one callback and release it in another, which a guard-based API cannot express.

#[cfg(not(loom))]
pub(crate) use core::sync::atomic::{AtomicBool, AtomicPtr, AtomicUsize, Ordering};
#[cfg(loom)]
pub(crate) use loom::sync::atomic::{AtomicBool, AtomicPtr, AtomicUsize, Ordering};

/// Atomics that loom does not model, in every build: statistics, and tables that are written
/// under a modelled lock and read only by a thread that a modelled handoff (the block's pointer
/// passed through the program's own synchronisation) already orders after the write. Modelling
/// them would only multiply loom's state space (the small-segment bitmap alone has a million
/// words), and zero bytes are a valid value for each, so they can live in zeroed memory.
pub(crate) mod plain {
    pub(crate) use core::sync::atomic::{AtomicBool, AtomicPtr, AtomicU64, AtomicU8, AtomicUsize};
}

/// Declare a process-wide static of shared state. Normal builds get a plain `static` (its
/// initialiser must be const); loom builds get a `loom::lazy_static`, because loom's atomics
/// cannot be built in a const context and each model execution must start from fresh state.
macro_rules! shared_static {
    ($(#[$m:meta])* static $name:ident: $t:ty = $e:expr;) => {
        #[cfg(not(loom))]
        $(#[$m])* static $name: $t = $e;
        #[cfg(loom)]
        loom::lazy_static! { $(#[$m])* static ref $name: $t = $e; }
    };
    ($(#[$m:meta])* pub(crate) static $name:ident: $t:ty = $e:expr;) => {
        #[cfg(not(loom))]
        $(#[$m])* pub(crate) static $name: $t = $e;
        #[cfg(loom)]
        loom::lazy_static! { $(#[$m])* pub(crate) static ref $name: $t = $e; }
    };
}
pub(crate) use shared_static;

/// A statistics counter written by one thread (the owner of the structure holding it) and read by
/// any: a relaxed load and store, no read-modify-write, so an update costs what a plain add costs
/// and touches only the owner's cache line. It orders nothing, so loom builds use core's atomic
/// as well: loom has nothing to explore in it, and zero bytes are a valid value (thread heaps are
/// zeroed mappings).
#[repr(transparent)]
#[derive(Default)]
pub(crate) struct Stat(core::sync::atomic::AtomicU64);

impl Stat {
    /// A zero counter (a template for const initialisers).
    #[allow(clippy::declare_interior_mutable_const)]
    pub(crate) const ZERO: Stat = Stat(core::sync::atomic::AtomicU64::new(0));

    /// Add `v` (owner only).
    #[inline(always)]
    pub(crate) fn add(&self, v: u64) {
        let o = core::sync::atomic::Ordering::Relaxed;
        self.0.store(self.0.load(o).wrapping_add(v), o);
    }

    /// Set the value (owner only).
    #[inline(always)]
    pub(crate) fn set(&self, v: u64) {
        self.0.store(v, core::sync::atomic::Ordering::Relaxed);
    }

    /// Subtract `v` (owner only).
    #[inline(always)]
    pub(crate) fn sub(&self, v: u64) {
        let o = core::sync::atomic::Ordering::Relaxed;
        self.0.store(self.0.load(o).wrapping_sub(v), o);
    }

    /// The current value (any thread).
    #[inline]
    pub(crate) fn get(&self) -> u64 {
        self.0.load(core::sync::atomic::Ordering::Relaxed)
    }
}

/// A statistics counter any thread adds to, with relaxed read-modify-writes (it orders nothing,
/// so loom builds use core's atomic as well), and a peak that only grows.
#[derive(Default)]
pub(crate) struct SharedStat(core::sync::atomic::AtomicU64);

impl SharedStat {
    /// A zero counter (a template for const initialisers).
    #[allow(clippy::declare_interior_mutable_const)]
    pub(crate) const ZERO: SharedStat = SharedStat(core::sync::atomic::AtomicU64::new(0));

    /// Add `v`; the new value.
    #[inline]
    pub(crate) fn add(&self, v: u64) -> u64 {
        let o = core::sync::atomic::Ordering::Relaxed;
        self.0.fetch_add(v, o).wrapping_add(v)
    }

    /// Subtract `v`.
    #[inline]
    pub(crate) fn sub(&self, v: u64) {
        self.0.fetch_sub(v, core::sync::atomic::Ordering::Relaxed);
    }

    /// Set the value (a peak lowered to the current level by a reset).
    #[inline]
    pub(crate) fn set(&self, v: u64) {
        self.0.store(v, core::sync::atomic::Ordering::Relaxed);
    }

    /// Raise the value to `v` if it is below.
    #[inline]
    pub(crate) fn raise(&self, v: u64) {
        let o = core::sync::atomic::Ordering::Relaxed;
        if self.0.load(o) < v {
            self.0.fetch_max(v, o);
        }
    }

    /// The current value.
    #[inline]
    pub(crate) fn get(&self) -> u64 {
        self.0.load(core::sync::atomic::Ordering::Relaxed)
    }
}

/// A 32-bit field written by one thread (the owner of the structure holding it) and read by any:
/// as `Stat`, a relaxed load and store that cost what plain accesses cost, so that statistics
/// snapshots may read the field while the owner runs without a data race. Zero bytes are a valid
/// value.
#[repr(transparent)]
#[derive(Default)]
pub(crate) struct Owned32(core::sync::atomic::AtomicU32);

impl Owned32 {
    /// A counter starting at `v`.
    pub(crate) const fn new(v: u32) -> Self {
        Self(core::sync::atomic::AtomicU32::new(v))
    }

    /// The current value (the owner's own, or a moment's view from another thread).
    #[inline(always)]
    pub(crate) fn get(&self) -> u32 {
        self.0.load(core::sync::atomic::Ordering::Relaxed)
    }

    /// Set the value (owner only).
    #[inline(always)]
    pub(crate) fn set(&self, v: u32) {
        self.0.store(v, core::sync::atomic::Ordering::Relaxed);
    }
}

/// Relax the CPU inside a spin loop (loom needs to see the yield, or it reports a livelock).
#[inline]
pub(crate) fn spin_hint() {
    #[cfg(not(loom))]
    core::hint::spin_loop();
    #[cfg(loom)]
    loom::thread::yield_now();
}

/// Give the rest of the time slice away after spinning for a while.
#[inline]
pub(crate) fn yield_now() {
    #[cfg(not(loom))]
    crate::os::yield_now();
    #[cfg(loom)]
    loom::thread::yield_now();
}

/// An `UnsafeCell` whose accesses go through closures, as loom's does, so that loom can track
/// them. In normal builds the closures compile to plain pointer accesses.
#[cfg(not(loom))]
#[derive(Debug)]
pub(crate) struct UnsafeCell<T>(core::cell::UnsafeCell<T>);

#[cfg(not(loom))]
impl<T> UnsafeCell<T> {
    pub(crate) const fn new(v: T) -> Self {
        Self(core::cell::UnsafeCell::new(v))
    }
    #[inline(always)]
    #[allow(dead_code)] // part of loom's cell API, kept so both builds offer the same one
    pub(crate) fn with<R>(&self, f: impl FnOnce(*const T) -> R) -> R {
        f(self.0.get())
    }
    #[inline(always)]
    pub(crate) fn with_mut<R>(&self, f: impl FnOnce(*mut T) -> R) -> R {
        f(self.0.get())
    }
}

#[cfg(loom)]
pub(crate) use loom::cell::UnsafeCell;

/// How often a `RawSpinLock` was found held, over the process, all locks together: counted
/// on the contended path only (after a failed first attempt), so an uncontended lock pays
/// nothing. Relaxed adds: they order nothing.
pub(crate) mod waits {
    use core::sync::atomic::{AtomicU64, Ordering::Relaxed};

    /// The counters, on a cache line of their own: they sit with the small statics a process
    /// writes (`.bss.hot.tensorpool`), and threads that wait on a lock must not take the line
    /// of the thread caches' limits or the held bytes with them.
    #[repr(C, align(64))]
    struct Waits {
        /// Acquisitions that found the lock held.
        contended: AtomicU64,
        /// Busy-wait rounds (`spin_hint`) while it was held.
        spins: AtomicU64,
        /// `sched_yield` calls while it was held (after 64 spins).
        yields: AtomicU64,
    }

    #[cfg_attr(not(loom), link_section = ".bss.hot.tensorpool")]
    static WAITS: Waits = Waits {
        contended: AtomicU64::new(0),
        spins: AtomicU64::new(0),
        yields: AtomicU64::new(0),
    };

    /// (contended, spins, yields) so far.
    pub(crate) fn get() -> (u64, u64, u64) {
        (
            WAITS.contended.load(Relaxed),
            WAITS.spins.load(Relaxed),
            WAITS.yields.load(Relaxed),
        )
    }

    #[cold]
    pub(super) fn add(spins: u32) {
        WAITS.contended.fetch_add(1, Relaxed);
        let s = spins.min(64) as u64;
        WAITS.spins.fetch_add(s, Relaxed);
        WAITS.yields.fetch_add(spins as u64 - s, Relaxed);
    }
}

/// The lock word of `SpinLock`: test-and-test-and-set, spinning briefly, then yielding.
pub(crate) struct RawSpinLock {
    locked: AtomicBool,
}

impl RawSpinLock {
    #[cfg(not(loom))]
    pub(crate) const fn new() -> Self {
        Self {
            locked: AtomicBool::new(false),
        }
    }
    #[cfg(loom)]
    pub(crate) fn new() -> Self {
        Self {
            locked: AtomicBool::new(false),
        }
    }

    /// Acquire: the Acquire CAS pairs with `unlock`'s Release store, so the previous holder's
    /// writes happen before ours.
    pub(crate) fn lock(&self) {
        let mut spins = 0u32;
        loop {
            if self
                .locked
                .compare_exchange_weak(false, true, Ordering::Acquire, Ordering::Relaxed)
                .is_ok()
            {
                if spins != 0 {
                    waits::add(spins);
                }
                return;
            }
            while self.locked.load(Ordering::Relaxed) {
                spins = spins.saturating_add(1);
                if spins < 64 {
                    spin_hint();
                } else {
                    yield_now();
                }
            }
        }
    }

    pub(crate) fn unlock(&self) {
        self.locked.store(false, Ordering::Release);
    }
}

/// A lock around a value: a `RawSpinLock` in normal builds. Under loom it is loom's `Mutex`,
/// which loom schedules as blocking: with three threads or more, loom's exploration includes
/// schedules where spinning threads yield to each other forever while the holder never runs,
/// and it gives up on them. The spin algorithm itself has its own model (two threads).
pub(crate) struct SpinLock<T> {
    #[cfg(not(loom))]
    raw: RawSpinLock,
    #[cfg(loom)]
    raw: loom::sync::Mutex<()>,
    value: UnsafeCell<T>,
}

// SAFETY: the lock serialises every access to `value`, so sharing the lock between threads only
// ever hands `&mut T` to one thread at a time; `T: Send` is enough for that.
unsafe impl<T: Send> Sync for SpinLock<T> {}
// SAFETY: moving the lock moves the value; `T: Send` allows that.
unsafe impl<T: Send> Send for SpinLock<T> {}

impl<T> SpinLock<T> {
    #[cfg(not(loom))]
    pub(crate) const fn new(value: T) -> Self {
        Self {
            raw: RawSpinLock::new(),
            value: UnsafeCell::new(value),
        }
    }
    #[cfg(loom)]
    pub(crate) fn new(value: T) -> Self {
        Self {
            raw: loom::sync::Mutex::new(()),
            value: UnsafeCell::new(value),
        }
    }

    /// Take the lock, run `f` on the value, release it. `f` must not call back into this lock.
    #[inline]
    pub(crate) fn with<R>(&self, f: impl FnOnce(&mut T) -> R) -> R {
        #[cfg(not(loom))]
        {
            self.raw.lock();
            // SAFETY: `lock` gave this thread exclusive access until `unlock` below.
            let r = self.value.with_mut(|p| f(unsafe { &mut *p }));
            self.raw.unlock();
            r
        }
        #[cfg(loom)]
        {
            let _guard = self.raw.lock().unwrap();
            // SAFETY: the guard gives this thread exclusive access while it lives.
            self.value.with_mut(|p| f(unsafe { &mut *p }))
        }
    }

    /// Acquire without a guard; pairs with `raw_unlock` (used across `fork` callbacks, which
    /// loom models never run).
    pub(crate) fn raw_lock(&self) {
        #[cfg(not(loom))]
        self.raw.lock();
        #[cfg(loom)]
        unreachable!("fork handlers are not modelled");
    }

    pub(crate) fn raw_unlock(&self) {
        #[cfg(not(loom))]
        self.raw.unlock();
        #[cfg(loom)]
        unreachable!("fork handlers are not modelled");
    }
}
