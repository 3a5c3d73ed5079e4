//! The caches of threads that sleep, through the global allocator: all thread caches together
//! hold at most the limit times the cores (here one core, so one limit), and a thread that
//! stops allocating must not keep that total from the threads that run. Its cache goes back to
//! the arena once it has been idle (`heap::idle`), or at once on `trim`; its blocks' contents
//! are the program's until freed, and the memory stays resident for the next request.
//!
//! Each case runs in a child process of its own (`TENSORPOOL_CORES=1`), since the total is
//! shared by every thread of the process.
use allocator_api2::alloc::Allocator;
use std::alloc::Layout;
use std::ptr::NonNull;
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};
use tensorpool::{PoolConfig, TensorKind, TensorPool};
mod common;

const KIB: usize = 1 << 10;
const MIB: usize = 1 << 20;

#[global_allocator]
static ALLOC: TensorPool = TensorPool::with_config(PoolConfig::new().with_thread_cache(MIB));

fn in_child() -> bool {
    std::env::var_os("TENSORPOOL_TEST_CHILD").is_some()
}

/// Run test `name` alone in a child process with one core; true in that child.
fn alone(name: &str) -> bool {
    if in_child() {
        return true;
    }
    common::run_child_test(name, &[("TENSORPOOL_CORES", "1")]);
    false
}

fn fill(p: NonNull<u8>, len: usize, v: u8) {
    // SAFETY: `p` is a live block of at least `len` bytes.
    unsafe { p.as_ptr().write_bytes(v, len) };
}

fn check(p: NonNull<u8>, len: usize, v: u8) {
    // SAFETY: as in `fill`.
    let s = unsafe { std::slice::from_raw_parts(p.as_ptr(), len) };
    assert!(s.iter().all(|&b| b == v), "contents changed");
}

/// Allocate, write, check and free a block of `l` through `kind`'s handle.
fn cycle(kind: TensorKind, l: Layout, v: u8) {
    let h = ALLOC.handle(kind);
    let p = h.allocate(l).unwrap().cast::<u8>();
    fill(p, l.size(), v);
    check(p, l.size(), v);
    // SAFETY: allocated above with `l`, freed once.
    unsafe { h.deallocate(p, l) };
}

/// A thread that runs `before`, parks (as a pool's thread waits for the next layer) until
/// `Parked::wake`, then runs `after` on what `before` returned; `wake` returns its result.
struct Parked<T> {
    wake: Arc<Barrier>,
    thread: std::thread::JoinHandle<T>,
}

/// Start a `Parked` thread; returns once `before` has run.
fn park<B, T: Send + 'static>(
    before: impl FnOnce() -> B + Send + 'static,
    after: impl FnOnce(B) -> T + Send + 'static,
) -> Parked<T> {
    let parked = Arc::new(Barrier::new(2));
    let wake = Arc::new(Barrier::new(2));
    let thread = {
        let (parked, wake) = (parked.clone(), wake.clone());
        std::thread::spawn(move || {
            let b = before();
            parked.wait();
            wake.wait();
            after(b)
        })
    };
    parked.wait();
    Parked { wake, thread }
}

impl<T> Parked<T> {
    fn wake(self) -> T {
        self.wake.wait();
        self.thread.join().unwrap()
    }
}

/// A thread caches a 768 KiB block (most of the one-limit total) and sleeps, holding a live
/// block too. The main thread frees blocks of that size: at first the total has no room and
/// they bypass its cache; once the sleeper's cache has been idle long enough a look sends it
/// back, and the main thread's next block is cached. The sleeper finds its cache empty and
/// its live block intact when it wakes. (The wait is bounded by a deadline far above the
/// 100-150 ms the rule takes, so that a loaded machine does not fail it.)
#[test]
fn a_sleeping_threads_cache_goes_to_the_thread_that_runs() {
    if !alone("a_sleeping_threads_cache_goes_to_the_thread_that_runs") {
        return;
    }
    let kind = TensorKind::Activation;
    let l = Layout::from_size_align(768 * KIB, 64).unwrap();
    let kept_l = Layout::from_size_align(64 * KIB, 64).unwrap();
    let sleeper = park(
        move || {
            let kept = ALLOC.handle(TensorKind::KvCache).allocate(kept_l).unwrap();
            fill(kept.cast(), kept_l.size(), 0x3c);
            cycle(kind, l, 0x11);
            let mine = ALLOC.budget().thread_hot_bytes;
            assert!(
                mine >= l.size() as u64,
                "the sleeper cached its block: {mine}"
            );
            kept.cast::<u8>()
        },
        move |kept| {
            let after = ALLOC.budget().thread_hot_bytes;
            check(kept, kept_l.size(), 0x3c);
            // SAFETY: allocated by this thread before it parked, freed once.
            unsafe { ALLOC.handle(TensorKind::KvCache).deallocate(kept, kept_l) };
            after
        },
    );
    cycle(kind, l, 0x22);
    assert_eq!(
        ALLOC.budget().thread_hot_bytes,
        0,
        "the total is the sleeper's: the block bypassed this thread's cache"
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut rounds = 0u32;
    while ALLOC.budget().thread_hot_bytes == 0 {
        assert!(
            Instant::now() < deadline,
            "after {rounds} blocks the sleeper's cache still holds the total: {:?}",
            ALLOC.budget()
        );
        std::thread::sleep(Duration::from_millis(20));
        cycle(kind, l, rounds as u8);
        rounds += 1;
    }
    let b = ALLOC.budget();
    assert_eq!(
        b.hot_bytes.iter().sum::<u64>(),
        b.thread_hot_bytes,
        "every cached byte is this thread's: {b:?}"
    );
    assert_eq!(sleeper.wake(), 0, "the sleeper's cache went back");
}

/// `trim` sends back the caches of the other threads too (those not inside theirs at that
/// moment), not only the calling thread's: a sleeping thread keeps nothing cached past it.
#[test]
fn trim_sends_other_threads_caches_back() {
    if !alone("trim_sends_other_threads_caches_back") {
        return;
    }
    let kind = TensorKind::ImageEmbedding;
    let l = Layout::from_size_align(512 * KIB, 64).unwrap();
    let sleeper = park(
        move || {
            cycle(kind, l, 0x5a);
            assert!(ALLOC.budget().thread_hot_bytes >= l.size() as u64);
        },
        |()| ALLOC.budget().thread_hot_bytes,
    );
    assert!(ALLOC.stats().kind(kind).hot_bytes >= l.size() as u64);
    let released = ALLOC.trim();
    assert!(
        released >= l.size(),
        "trim released {released}: the sleeper's block was not among it"
    );
    assert_eq!(ALLOC.stats().kind(kind).hot_bytes, 0);
    assert_eq!(sleeper.wake(), 0, "the sleeper's cache went back");
}

/// Decay driven from outside the allocation paths looks at the caches too: `collect` (what the
/// background thread runs) sends back a parked thread's cache once two of its looks, 100 ms or
/// more apart, found it unused, though no thread needed its room.
#[test]
fn collect_sends_a_parked_threads_cache_back() {
    if !alone("collect_sends_a_parked_threads_cache_back") {
        return;
    }
    let kind = TensorKind::TextEmbedding;
    let l = Layout::from_size_align(256 * KIB, 64).unwrap();
    let sleeper = park(
        move || cycle(kind, l, 0x77),
        |()| ALLOC.budget().thread_hot_bytes,
    );
    let held = ALLOC.stats().kind(kind).hot_bytes;
    assert!(
        held >= l.size() as u64,
        "the sleeper cached its block: {held}"
    );
    ALLOC.collect();
    assert_eq!(
        ALLOC.stats().kind(kind).hot_bytes,
        held,
        "taken at the first look"
    );
    std::thread::sleep(Duration::from_millis(150));
    ALLOC.collect();
    assert_eq!(
        ALLOC.stats().kind(kind).hot_bytes,
        0,
        "the parked cache stayed"
    );
    assert!(ALLOC.large_counters(kind).cached_bytes >= l.size() as u64);
    assert_eq!(sleeper.wake(), 0);
}

/// With the background thread on, a parked thread's cache goes back to the arena and from there,
/// idle a whole decay period, to the OS, while no thread makes a call.
#[test]
fn the_background_thread_returns_a_parked_threads_cache() {
    if !in_child() {
        common::run_child_test(
            "the_background_thread_returns_a_parked_threads_cache",
            &[
                ("TENSORPOOL_CORES", "1"),
                ("TENSORPOOL_BACKGROUND", "1"),
                ("TENSORPOOL_DECAY_MS", "80"),
            ],
        );
        return;
    }
    let kind = TensorKind::Attention;
    let l = Layout::from_size_align(384 * KIB, 64).unwrap();
    let sleeper = park(move || cycle(kind, l, 0x42), |()| ());
    assert!(ALLOC.stats().kind(kind).hot_bytes >= l.size() as u64);
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let s = ALLOC.stats();
        let c = ALLOC.large_counters(kind);
        if s.kind(kind).hot_bytes == 0 && c.cached_bytes == 0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the parked cache was not returned: hot {} cached {}",
            s.kind(kind).hot_bytes,
            c.cached_bytes
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    sleeper.wake();
}
