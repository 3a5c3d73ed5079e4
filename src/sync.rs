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

/// Relax the CPU inside a spin loop (loom needs to see the yield, or it reports a livelock).
#[inline]
pub(crate) fn spin_hint() {
    #[cfg(not(loom))]
    core::hint::spin_loop();
    #[cfg(loom)]
    loom::thread::yield_now();
}

/// Give the rest of the time slice away after spinning for a while. `sched_yield` does not
/// allocate.
#[inline]
pub(crate) fn yield_now() {
    #[cfg(not(loom))]
    std::thread::yield_now();
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

/// A test-and-test-and-set lock around a value. `lock` spins briefly, then yields.
pub(crate) struct SpinLock<T> {
    locked: AtomicBool,
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
            locked: AtomicBool::new(false),
            value: UnsafeCell::new(value),
        }
    }
    #[cfg(loom)]
    pub(crate) fn new(value: T) -> Self {
        Self {
            locked: AtomicBool::new(false),
            value: UnsafeCell::new(value),
        }
    }

    /// Take the lock, run `f` on the value, release it. `f` must not call back into this lock.
    #[inline]
    pub(crate) fn with<R>(&self, f: impl FnOnce(&mut T) -> R) -> R {
        self.raw_lock();
        // SAFETY: `raw_lock` gave this thread exclusive access until `raw_unlock` below.
        let r = self.value.with_mut(|p| f(unsafe { &mut *p }));
        self.raw_unlock();
        r
    }

    /// Acquire without a guard; pairs with `raw_unlock` (used across `fork` callbacks).
    pub(crate) fn raw_lock(&self) {
        let mut spins = 0u32;
        loop {
            if self
                .locked
                .compare_exchange_weak(false, true, Ordering::Acquire, Ordering::Relaxed)
                .is_ok()
            {
                return;
            }
            while self.locked.load(Ordering::Relaxed) {
                spins += 1;
                if spins < 64 {
                    spin_hint();
                } else {
                    yield_now();
                }
            }
        }
    }

    pub(crate) fn raw_unlock(&self) {
        self.locked.store(false, Ordering::Release);
    }
}
