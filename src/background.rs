//! The optional background thread (`TENSORPOOL_BACKGROUND=1`): decay for an idle process.
//!
//! Decay advances on allocator calls (every large allocation and free, and every small slow
//! path), so a process that keeps allocating returns idle memory without any thread. A process
//! that goes quiet makes no calls, and its dirty memory would stay until it wakes; the background
//! thread wakes every decay tick and lets decay catch up.
//!
//! It is started lazily, and only where that is safe:
//! - from a large free, after the arena's lock is dropped (`pthread_create` may call `malloc`,
//!   which re-enters the allocator: nothing is held, and the state machine below stops a second
//!   start);
//! - never before `main` when the allocator is a preloaded C library (`defer_background_thread`,
//!   which the library sets at load and clears in its `__libc_start_main` wrapper), since a
//!   thread created while the program is still being loaded can outlive a `fork` the program
//!   makes before `main`, or run before the C library is ready;
//! - after `fork`, the child has no such thread (this module's fork handler resets the state)
//!   and starts its own at its next large free.
//!
//! The thread allocates nothing: it sleeps, reads the clock, purges, and sends the caches of
//! parked threads back to the arena (`heap::idle`).

use crate::pool::large::ARENA;
use crate::sync::plain::AtomicU8;
use core::sync::atomic::Ordering::{AcqRel, Acquire, Relaxed, Release};

const OFF: u8 = 0;
const WANTED: u8 = 1;
const STARTING: u8 = 2;
const RUNNING: u8 = 3;

#[cfg_attr(not(loom), link_section = ".bss.hot.tensorpool")]
static STATE: AtomicU8 = AtomicU8::new(OFF);
/// Non-zero while starting the thread must wait (see `defer_background_thread`).
#[cfg_attr(not(loom), link_section = ".bss.hot.tensorpool")]
static DEFERRED: AtomicU8 = AtomicU8::new(0);

/// Turn the background thread on or off (configuration). Turning it off stops a running thread
/// at its next wake-up.
pub(crate) fn configure(on: bool) {
    if on {
        #[cfg_attr(not(loom), link_section = ".bss.hot.tensorpool")]
        static FORK_HANDLER: AtomicU8 = AtomicU8::new(0);
        if FORK_HANDLER.swap(1, AcqRel) == 0 {
            crate::os::at_fork(nothing, nothing, after_fork_child);
        }
        let _ = STATE.compare_exchange(OFF, WANTED, AcqRel, Relaxed);
    } else {
        STATE.store(OFF, Release);
    }
}

/// Whether a background thread is running (for tests and reports).
pub(crate) fn running() -> bool {
    STATE.load(Acquire) == RUNNING
}

/// Hold back (or allow) starting the background thread. A preloaded C library defers it from
/// the moment it is loaded until the program's `main` starts.
#[link_section = ".text.hot.tensorpool"]
pub fn defer_background_thread(defer: bool) {
    DEFERRED.store(u8::from(defer), Release);
}

/// Start the thread if it is wanted and may start. Called with no allocator lock held.
#[inline]
pub(crate) fn poke() {
    if STATE.load(Relaxed) == WANTED {
        start();
    }
}

#[cold]
fn start() {
    if DEFERRED.load(Acquire) != 0 {
        return;
    }
    if STATE
        .compare_exchange(WANTED, STARTING, AcqRel, Relaxed)
        .is_err()
    {
        return;
    }
    let next = if crate::os::spawn_detached(run) {
        RUNNING
    } else {
        // No thread could be made (a process at its limit): try again at a later free.
        WANTED
    };
    // Configuration may have turned it off meanwhile; only a starting state moves on.
    let _ = STATE.compare_exchange(STARTING, next, AcqRel, Relaxed);
}

unsafe extern "C" fn nothing() {}

/// In a child after `fork`: the parent's thread is not here.
unsafe extern "C" fn after_fork_child() {
    let s = STATE.load(Relaxed);
    if s == RUNNING || s == STARTING {
        STATE.store(WANTED, Relaxed);
    }
}

extern "C" fn run(_: *mut libc::c_void) -> *mut libc::c_void {
    loop {
        let ms = ARENA.with(|s| s.decay.ms());
        // One decay tick (a period has eight), between 1 ms and 1 s.
        let ns = if ms > 0 {
            (ms as u64 * 1_000_000 / 8).clamp(1_000_000, 1_000_000_000)
        } else {
            1_000_000_000
        };
        crate::os::sleep_ns(ns);
        if STATE.load(Acquire) != RUNNING {
            return core::ptr::null_mut();
        }
        ARENA.tick();
        // Caches that parked threads keep would never decay: send back those unused for a
        // while, for the next ticks to return.
        crate::heap::idle::reclaim_for_decay();
    }
}
