//! A forked child can allocate (no lock inherited from another thread) and exits cleanly, and
//! its thread cache is not starved by the parent's other threads' caches.
use tensorpool::TensorPool;
mod common;

#[global_allocator]
static ALLOC: TensorPool = TensorPool::new();

#[test]
fn child_allocates_after_fork_while_other_threads_allocate() {
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let workers: Vec<_> = (0..2)
        .map(|_| {
            let stop = stop.clone();
            std::thread::spawn(move || {
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let v: Vec<Vec<u8>> = (0..64).map(|i| vec![i as u8; i * 1000 + 1]).collect();
                    std::hint::black_box(v);
                }
            })
        })
        .collect();
    for _ in 0..20 {
        // SAFETY (test): the child only allocates, checks and calls _exit.
        let pid = unsafe { libc::fork() };
        assert!(pid >= 0);
        if pid == 0 {
            let mut ok = true;
            let v: Vec<String> = (0..10_000).map(|i| i.to_string()).collect();
            ok &= v[9999] == "9999";
            let big = vec![7u8; 5 << 20];
            ok &= big.iter().all(|&b| b == 7);
            let t = std::thread::spawn(|| vec![1u8; 100_000].len()).join();
            ok &= matches!(t, Ok(100_000));
            unsafe { libc::_exit(if ok { 0 } else { 3 }) };
        }
        let mut status = 0;
        // SAFETY (test): waiting for our own child.
        unsafe { libc::waitpid(pid, &mut status, 0) };
        assert!(
            libc::WIFEXITED(status),
            "child did not exit normally: {status}"
        );
        assert_eq!(libc::WEXITSTATUS(status), 0);
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for w in workers {
        w.join().unwrap();
    }
}

/// With profiling on (every large block sampled), the other threads lock the profile's tables
/// at every allocation and free: a child forked meanwhile must not inherit them held.
#[test]
fn a_child_forked_while_threads_sample_allocates() {
    if std::env::var_os("TENSORPOOL_TEST_CHILD").is_none() {
        common::run_child_test(
            "a_child_forked_while_threads_sample_allocates",
            &[("TENSORPOOL_PROFILE", "1K")],
        );
        return;
    }
    child_allocates_after_fork_while_other_threads_allocate();
}

/// The thread caches share one total (the limit times the cores). After `fork` only the forking
/// thread exists: the caches of the parent's other threads must not use up the child's total.
/// With a 1 MiB limit and 2 cores, two threads each hold a 768 KiB block in their cache across
/// the fork (1.5 of the 2 MiB); the child then frees a block of the same size, which its own
/// cache must take.
#[test]
fn a_forked_child_has_the_thread_caches_total_to_itself() {
    if std::env::var_os("TENSORPOOL_TEST_CHILD").is_none() {
        common::run_child_test(
            "a_forked_child_has_the_thread_caches_total_to_itself",
            &[("TENSORPOOL_THREAD_CACHE", "1M"), ("TENSORPOOL_CORES", "2")],
        );
        return;
    }
    const SIZE: usize = 768 << 10;
    let cached = std::sync::Arc::new(std::sync::Barrier::new(3));
    let forked = std::sync::Arc::new(std::sync::Barrier::new(3));
    let holders: Vec<_> = (0..2)
        .map(|_| {
            let (cached, forked) = (cached.clone(), forked.clone());
            std::thread::spawn(move || {
                drop(std::hint::black_box(vec![1u8; SIZE]));
                // Checked after the barriers: a holder that panicked here left the others
                // waiting for ever.
                let held = ALLOC.budget().thread_hot_bytes;
                cached.wait();
                forked.wait();
                held
            })
        })
        .collect();
    cached.wait();
    // SAFETY (test): the child only allocates, frees, reads the budget and calls _exit.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0);
    if pid == 0 {
        drop(std::hint::black_box(vec![2u8; SIZE]));
        let hot = ALLOC.budget().thread_hot_bytes;
        unsafe { libc::_exit(if hot >= SIZE as u64 { 0 } else { 3 }) };
    }
    let mut status = 0;
    // SAFETY (test): waiting for our own child.
    unsafe { libc::waitpid(pid, &mut status, 0) };
    forked.wait();
    let held: Vec<u64> = holders.into_iter().map(|h| h.join().unwrap()).collect();
    assert!(
        held.iter().all(|&b| b >= SIZE as u64),
        "each holder's cache took its block before the fork: {held:?}, all caches {:?}",
        ALLOC.budget().hot_bytes
    );
    assert!(
        libc::WIFEXITED(status),
        "child did not exit normally: {status}"
    );
    assert_eq!(
        libc::WEXITSTATUS(status),
        0,
        "the child's cache took nothing: the parent's threads held the total"
    );
}
