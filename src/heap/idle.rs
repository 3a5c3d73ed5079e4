//! The caches of threads that sleep, taken back for the threads that run.
//!
//! All thread caches together hold at most the last-level cache (`hot`'s shared total: the
//! per-thread limit times the cores that share it), the seed's budget of one hot working set
//! for the cores. A thread that stops allocating keeps its cache and its claim on that total,
//! so a pool of 16 intra-op threads that ran one layer can leave the thread that runs the next
//! with no room to cache anything. Here a thread whose cache cannot grow within the total looks,
//! at most once per `LOOK_EVERY_NS` in the whole process, at every other cache through its gate:
//! one its owner has not used for `IDLE_NS` (two looks that far apart saw no use between them)
//! goes back to the arena, with the blocks other threads sent back to that owner, and its claim
//! is freed. The owner loses nothing but the cache's hits: its blocks stay resident in the arena
//! until decay, for whichever thread asks first, without faults.
//!
//! `IDLE_NS` is long against a time slice (a runnable thread that the scheduler parked for a
//! few milliseconds is not idle) and short against what a cache is for: after 100 ms of other
//! threads' work, nothing of a sleeping thread's blocks is left in the last-level cache anyway.
//! `trim` and the arena's last attempt before failing a request take every cache whose owner
//! is not inside it at that moment (`reclaim` with no idle time). And decay, when something
//! other than an allocation drives it (the background thread, `TensorPool::collect`), looks too
//! (`reclaim_for_decay`): a cache in the arena decays like any freed memory, a cache left with
//! a parked thread stayed resident however long the process was idle.

use super::registry::Registry;
use crate::sync::plain::AtomicU64;
#[cfg(not(loom))]
use crate::sync::Ordering;

/// A cache unused this long (ns) is idle.
pub(crate) const IDLE_NS: u64 = 100_000_000;

/// Looks at the other caches, process-wide, at most this often (ns).
const LOOK_EVERY_NS: u64 = IDLE_NS / 2;

/// When the next look may start (`os::coarse_now_ns`); written by the thread that starts one.
#[cfg_attr(not(loom), link_section = ".bss.hot.tensorpool")]
static NEXT_LOOK: AtomicU64 = AtomicU64::new(0);

/// For a thread whose cache could not grow within the shared total: send back the caches of
/// the threads that have not used theirs for `IDLE_NS`, unless another look happened less than
/// `LOOK_EVERY_NS` ago. Whether any claim on the total was freed.
#[cfg(not(loom))]
#[cold]
pub(crate) fn reclaim_idle() -> bool {
    let now = crate::os::coarse_now_ns();
    let next = NEXT_LOOK.load(Ordering::Relaxed);
    if now < next
        || NEXT_LOOK
            .compare_exchange(
                next,
                now + LOOK_EVERY_NS,
                Ordering::Relaxed,
                Ordering::Relaxed,
            )
            .is_err()
    {
        return false;
    }
    reclaim_idle_at(now) > 0
}

/// For decay driven from outside the allocation paths (the background thread's tick,
/// `TensorPool::collect`): send back the caches unused for `IDLE_NS`, so that decay can return
/// their memory too. Looks at every call (those come at most once per decay tick, or when the
/// program asks). The claims freed (bytes).
pub(crate) fn reclaim_for_decay() -> usize {
    reclaim_idle_at(crate::os::coarse_now_ns())
}

/// Send back every cache of the process unused for `IDLE_NS` at `now`; the claims freed.
fn reclaim_idle_at(now: u64) -> usize {
    reclaim(&super::registry::HEAPS, now, Some(IDLE_NS))
}

/// Models look when they say so (`reclaim`), not by the clock: a clock read and a process-wide
/// rate limit would differ between loom's replays of one execution.
#[cfg(loom)]
pub(crate) fn reclaim_idle() -> bool {
    let _ = (&NEXT_LOOK, LOOK_EVERY_NS);
    false
}

/// Send back to the arena every cache of `reg`'s heaps that no thread is using now and that
/// has been idle `idle` ns at `now` (`None`: every such cache), with the blocks on their way
/// back to those heaps. Returns the claims on the shared total freed (bytes).
pub(crate) fn reclaim(reg: &Registry, now: u64, idle: Option<u64>) -> usize {
    let mut freed = 0;
    reg.for_each(|h| {
        // SAFETY: heaps are never freed, and a cache is touched only through its gate.
        let cache = unsafe { &*core::ptr::addr_of!((*h).hot) };
        let taken = cache.try_with(|c, counters| {
            if idle.is_some_and(|d| !c.idle_at(now, d)) {
                return None;
            }
            let claim = c.claim();
            c.flush(counters);
            Some(claim)
        });
        if let Some(Some(claim)) = taken {
            freed += claim;
            // SAFETY: as above; the return list is atomic, and a chain taken whole is ours.
            unsafe { super::free_chain((*h).returns.take()) };
        }
    });
    freed
}
