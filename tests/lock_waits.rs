//! `TensorPool::lock_waits`: one thread alone never finds a lock held; eight threads whose
//! large blocks all go to the arena (thread caches off) do, and every wait counted spun at least
//! once. Contents are checked before every free.
use tensorpool::TensorPool;
mod common;

#[global_allocator]
static ALLOC: TensorPool = TensorPool::new();

fn churn(seed: usize, n: usize) {
    for i in 0..n {
        let size = (64 << 10) + ((i * 7 + seed) % 16) * 4096;
        let v = vec![(i + seed) as u8; size];
        assert!(v.iter().step_by(4096).all(|&b| b == (i + seed) as u8));
    }
}

#[test]
fn waits_are_counted_only_when_a_lock_is_held() {
    if std::env::var_os("TENSORPOOL_TEST_CHILD").is_none() {
        common::run_child_test(
            "waits_are_counted_only_when_a_lock_is_held",
            &[("TENSORPOOL_THREAD_CACHE", "0")],
        );
        return;
    }
    let before = ALLOC.lock_waits();
    churn(0, 2_000);
    assert_eq!(
        ALLOC.lock_waits(),
        before,
        "one thread alone found a lock held"
    );
    let threads: Vec<_> = (0..8)
        .map(|t| std::thread::spawn(move || churn(t, 4_000)))
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let w = ALLOC.lock_waits();
    println!("{w:?}");
    assert!(
        w.contended > before.contended,
        "eight threads never met: {w:?}"
    );
    assert!(
        w.spins + w.yields >= w.contended,
        "a wait that never waited: {w:?}"
    );
}
