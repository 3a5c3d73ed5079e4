//! A forked child can allocate (no lock inherited from another thread) and exits cleanly.
use tensorpool::TensorPool;

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
