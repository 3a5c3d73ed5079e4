//! Shared helpers of the loom models in `tests/` (built only with `--cfg loom`).
#![cfg(loom)]

/// Write a pattern naming `who` into a held block (past the first word, which a free block uses
/// as its link).
///
/// # Safety
/// The caller holds `p`, a live block of at least `len >= 16` bytes.
pub unsafe fn stamp(p: *mut u8, len: usize, who: u8) {
    // SAFETY: the caller's contract.
    unsafe {
        core::ptr::write_bytes(p.add(8), who, 8);
        core::ptr::write_bytes(p.add(len - 8), who, 8);
    }
}

/// Check the pattern `stamp` wrote: no one else was handed the block meanwhile.
///
/// # Safety
/// As for `stamp`.
pub unsafe fn check(p: *mut u8, len: usize, who: u8) {
    // SAFETY: the caller's contract.
    let (a, b) = unsafe {
        (
            core::slice::from_raw_parts(p.add(8), 8),
            core::slice::from_raw_parts(p.add(len - 8), 8),
        )
    };
    assert!(
        a.iter().chain(b).all(|&x| x == who),
        "block {p:p} of holder {who} was overwritten: handed out twice"
    );
}

/// Run `f` under `loom::model` (preemption bound from `LOOM_MAX_PREEMPTIONS`) and report how many
/// executions loom explored, so a model that explores almost nothing is noticed.
///
/// Models run one at a time, whatever `--test-threads` says: the heap models carve their pages
/// from the process's one real arena, so a model running beside another would see segments come
/// and go between loom's replays of one execution. Loom assumes each replay is deterministic; with
/// that broken it explored `owner_exits_while_others_free` for over an hour on CI instead of under
/// a second.
pub fn model<F: Fn() + Sync + Send + 'static>(name: &str, f: F) {
    use std::sync::atomic::{AtomicUsize, Ordering};
    static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());
    // A model that failed poisons the lock; the next still runs alone.
    let _alone = ONE_AT_A_TIME
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let runs = std::sync::Arc::new(AtomicUsize::new(0));
    let r = runs.clone();
    loom::model(move || {
        r.fetch_add(1, Ordering::Relaxed);
        f()
    });
    eprintln!("{name}: {} executions", runs.load(Ordering::Relaxed));
}
