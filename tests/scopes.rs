//! Scopes through the public API, on the global path: large blocks allocated in a scope count
//! towards it (own) and its ancestors (inclusive), per kind, live and at peak, until they are
//! freed, by whichever thread; scopes nest and end on unwinding; small blocks are not
//! attributed; the bytes outside every scope close the sum.
//!
//! A block holds whole pages and more (its cache colour), so the bytes a test expects are read
//! from its kind's `granted_bytes` around each allocation. Each test uses scope names of its
//! own; the test that reads process-wide figures runs alone in a child.
use std::hint::black_box;
use tensorpool::{with_kind, ScopeError, ScopeGuard, TensorKind, TensorPool};
mod common;

#[global_allocator]
static ALLOC: TensorPool = TensorPool::new();

const MIB: usize = 1 << 20;

/// A zeroed buffer of `n` bytes of the calling thread's kind, and the bytes the pool granted.
fn block(kind: TensorKind, n: usize) -> (Vec<u8>, u64) {
    let before = ALLOC.large_counters(kind).granted_bytes;
    let v = black_box(vec![1u8; n]);
    (v, ALLOC.large_counters(kind).granted_bytes - before)
}

#[test]
fn nested_scopes_attribute_own_and_inclusive_bytes_per_kind() {
    let g = TensorKind::TextEmbedding;
    let kv = TensorKind::KvCache;
    let (outer_block, outer_bytes, inner_block, inner_bytes);
    {
        let _outer = ScopeGuard::enter("nest-outer").unwrap();
        (outer_block, outer_bytes) = with_kind(g, || block(g, 3 * MIB));
        assert_eq!(ALLOC.scope_depth(), 1);
        let _inner = ScopeGuard::enter("nest-inner").unwrap();
        (inner_block, inner_bytes) = with_kind(kv, || block(kv, 2 * MIB));
        assert_eq!(ALLOC.scope_depth(), 2);
    }
    assert_eq!(ALLOC.scope_depth(), 0, "the guards restored the scope");
    let s = ALLOC.scopes();
    let outer = s.get("nest-outer").expect("the outer scope");
    let inner = s.get("nest-outer/nest-inner").expect("the inner scope");
    assert_eq!(inner.parent, Some(outer.id));
    assert_eq!(inner.depth, 2);
    assert_eq!(outer.own.live[g.index()], outer_bytes);
    assert_eq!(
        outer.own.live_total, outer_bytes,
        "the inner block is not the outer's own"
    );
    assert_eq!(inner.own.live[kv.index()], inner_bytes);
    assert_eq!(outer.inclusive.live[kv.index()], inner_bytes);
    assert_eq!(outer.inclusive.live_total, outer_bytes + inner_bytes);
    assert_eq!(outer.inclusive.peak_total, outer_bytes + inner_bytes);
    assert_eq!(inner.inclusive.main_kind(), kv);

    drop(inner_block);
    let s = ALLOC.scopes();
    let outer = s.get("nest-outer").unwrap();
    assert_eq!(outer.inclusive.live_total, outer_bytes);
    assert_eq!(
        outer.inclusive.peak_total,
        outer_bytes + inner_bytes,
        "the peak stays"
    );
    assert_eq!(s.get("nest-outer/nest-inner").unwrap().own.live_total, 0);
    drop(outer_block);
    let s = ALLOC.scopes();
    let outer = s.get("nest-outer").unwrap();
    assert_eq!(outer.inclusive.live_total, 0);
    assert_eq!(outer.own.peak[g.index()], outer_bytes);
    assert!(s.to_json().contains("\"path\":\"nest-outer/nest-inner\""));
    assert!(
        s.to_string().contains("  nest-inner"),
        "the table indents by depth"
    );
}

#[test]
fn a_scope_entered_again_is_the_same_scope_and_its_peak_is_the_most_held_at_once() {
    let k = TensorKind::ImageEmbedding;
    let mut granted = Vec::new();
    for _ in 0..3 {
        ALLOC.scope("again", || {
            let (v, n) = with_kind(k, || block(k, MIB));
            granted.push(n);
            drop(v);
        });
    }
    let s = ALLOC.scopes();
    assert_eq!(s.named("again").count(), 1);
    let again = s.named("again").next().unwrap();
    assert_eq!(again.own.live_total, 0);
    assert_eq!(again.own.peak_total, *granted.iter().max().unwrap());
}

#[test]
fn a_block_freed_by_another_thread_leaves_its_scope() {
    let k = TensorKind::Attention;
    let (v, n) = ALLOC.scope("cross-thread", || with_kind(k, || block(k, 2 * MIB)));
    let before = ALLOC.scopes();
    assert_eq!(before.get("cross-thread").unwrap().own.live[k.index()], n);
    std::thread::spawn(move || drop(v)).join().unwrap();
    let after = ALLOC.scopes();
    assert_eq!(after.get("cross-thread").unwrap().own.live_total, 0);
    assert_eq!(after.get("cross-thread").unwrap().own.peak_total, n);
}

#[test]
fn a_block_grown_in_place_counts_its_new_size() {
    let k = TensorKind::Activation;
    let (v, n) = ALLOC.scope("grown", || with_kind(k, || block(k, MIB)));
    let mut v = v;
    let at = v.as_ptr();
    let live_before = ALLOC.large_counters(k).live_bytes;
    v.resize(3 * MIB, 2); // grows in place or moves, outside the scope either way
    let grew_in_place = v.as_ptr() == at;
    let s = ALLOC.scopes();
    let own = s.get("grown").unwrap().own;
    if grew_in_place {
        let grown = ALLOC.large_counters(k).live_bytes - live_before;
        assert_eq!(
            own.live_total,
            n + grown,
            "an in-place growth stays in the scope"
        );
    } else {
        assert_eq!(
            own.live_total, 0,
            "a moved block is the current scope's (none)"
        );
    }
    assert!(v[..MIB].iter().all(|&b| b == 1) && v[MIB..].iter().all(|&b| b == 2));
    drop(v);
    assert_eq!(ALLOC.scopes().get("grown").unwrap().own.live_total, 0);
}

#[test]
fn small_blocks_are_not_attributed_and_a_scope_ends_when_its_guard_unwinds() {
    let r = std::panic::catch_unwind(|| {
        let _g = ScopeGuard::enter("unwound").unwrap();
        let small: Vec<Box<[u8; 256]>> = (0..1000).map(|_| Box::new([3u8; 256])).collect();
        black_box(&small);
        assert_eq!(
            ALLOC.scopes().get("unwound").unwrap().inclusive.peak_total,
            0
        );
        panic!("out of the scope");
    });
    assert!(r.is_err());
    assert_eq!(ALLOC.scope_depth(), 0);
}

#[test]
fn bad_scope_names_and_nesting_too_deep_are_errors_that_change_nothing() {
    assert_eq!(ScopeGuard::enter("").unwrap_err(), ScopeError::EmptyName);
    assert_eq!(ALLOC.push_scope(b"").unwrap_err(), ScopeError::EmptyName);
    assert_eq!(ALLOC.pop_scope(), None, "nothing to leave");
    let mut depth = 0;
    let err = loop {
        match ALLOC.push_scope(b"deep") {
            Ok(d) => depth = d,
            Err(e) => break e,
        }
    };
    assert_eq!(err, ScopeError::TooDeep);
    assert_eq!(depth, tensorpool::SCOPE_DEPTH_MAX);
    assert_eq!(
        ALLOC.scope_depth(),
        depth,
        "a refused entry changes nothing"
    );
    while ALLOC.pop_scope().is_some_and(|d| d > 0) {}
    assert_eq!(ALLOC.scope_depth(), 0);
    assert!(ALLOC.scopes().refused >= 1);
    // A scope that cannot be entered still runs its closure.
    assert_eq!(ALLOC.scope("", || 7), 7);
}

#[test]
fn the_top_scopes_and_the_bytes_outside_them_sum_to_the_large_live_bytes() {
    let name = "the_top_scopes_and_the_bytes_outside_them_sum_to_the_large_live_bytes";
    if std::env::var_os("TENSORPOOL_TEST_CHILD").is_none() {
        common::run_child_test(name, &[]);
        return;
    }
    let k = TensorKind::General;
    let (outside, _) = block(k, 4 * MIB);
    let (a, an) = ALLOC.scope("sum-a", || block(k, 2 * MIB));
    let (b, bn) = ALLOC.scope("sum-b", || ALLOC.scope("sum-b-inner", || block(k, MIB)));
    let s = ALLOC.scopes();
    let top: u64 = s.roots().map(|r| r.inclusive.live_total).sum();
    assert_eq!(top, an + bn);
    assert_eq!(top + s.outside_live, s.large_live);
    let held: u64 = TensorKind::ALL
        .iter()
        .map(|&k| {
            let c = ALLOC.large_counters(k);
            c.live_bytes
        })
        .sum();
    assert!(s.large_live <= held, "live less the thread caches");
    drop((outside, a, b));
}

#[test]
fn threads_outside_every_scope_allocate_into_the_sharing_threads_scope() {
    let name = "threads_outside_every_scope_allocate_into_the_sharing_threads_scope";
    if std::env::var_os("TENSORPOOL_TEST_CHILD").is_none() {
        common::run_child_test(name, &[]);
        return;
    }
    // The worker's kind is its own (the general kind): kinds are not shared.
    let k = TensorKind::General;
    let worker = || {
        std::thread::spawn(move || block(k, 2 * MIB))
            .join()
            .unwrap()
    };
    ALLOC.share_scopes(true);
    let (v, n) = ALLOC.scope("shared", worker);
    let s = ALLOC.scopes();
    assert!(n >= 2 * MIB as u64);
    assert_eq!(s.get("shared").unwrap().own.live[k.index()], n);
    // Outside every scope, the sharing thread shares none; and a thread that stopped sharing
    // shares nothing.
    let (w, _) = worker();
    ALLOC.share_scopes(false);
    let (x, _) = ALLOC.scope("not-shared", worker);
    let s = ALLOC.scopes();
    assert_eq!(s.get("shared").unwrap().own.live_total, n);
    assert_eq!(s.get("not-shared").unwrap().own.live_total, 0);
    drop((v, w, x));
    assert_eq!(ALLOC.scopes().get("shared").unwrap().own.live_total, 0);
}
