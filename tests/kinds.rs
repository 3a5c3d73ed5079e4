//! Routing by the thread's tag and by handle; frees return to the owning kind whatever the tag or
//! thread; allocator-api2 and hashbrown collections on handles of every kind.
use allocator_api2::vec::Vec as AVec;
use tensorpool::{with_kind, KindScope, TensorKind, TensorPool};

#[global_allocator]
static ALLOC: TensorPool = TensorPool::new();

/// Tests that read a kind's counters exclusively, or allocate large blocks of every kind, hold this.
static COUNTERS: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn kind_of<T>(p: *const T) -> TensorKind {
    unsafe { ALLOC.kind_of(p as *mut u8) }
}

#[test]
fn tag_routes_global_allocations_and_scopes_nest() {
    let _g = COUNTERS.lock().unwrap_or_else(|e| e.into_inner());
    assert_eq!(tensorpool::current_kind(), TensorKind::General);
    let small = with_kind(TensorKind::Attention, || Box::new([1u8; 100]));
    let large = with_kind(TensorKind::KvCache, || vec![2u8; 1 << 20]);
    assert_eq!(kind_of(small.as_ptr()), TensorKind::Attention);
    assert_eq!(kind_of(large.as_ptr()), TensorKind::KvCache);
    {
        let _a = KindScope::enter(TensorKind::ImageEmbedding);
        {
            let _b = KindScope::enter(TensorKind::Activation);
            assert_eq!(tensorpool::current_kind(), TensorKind::Activation);
            let v = vec![0u32; std::hint::black_box(10)];
            assert_eq!(kind_of(v.as_ptr()), TensorKind::Activation);
        }
        assert_eq!(tensorpool::current_kind(), TensorKind::ImageEmbedding);
    }
    assert_eq!(tensorpool::current_kind(), TensorKind::General);
    // unwinding restores the tag too
    let r = std::panic::catch_unwind(|| with_kind(TensorKind::TextEmbedding, || panic!("boom")));
    assert!(r.is_err());
    assert_eq!(tensorpool::current_kind(), TensorKind::General);
    let plain = Box::new(5u64);
    assert_eq!(kind_of(&*plain), TensorKind::General);
}

#[test]
fn frees_return_to_the_owner_whatever_the_tag_or_thread() {
    let _g = COUNTERS.lock().unwrap_or_else(|e| e.into_inner());
    let before = ALLOC.large_counters(TensorKind::ImageEmbedding);
    let v = with_kind(TensorKind::ImageEmbedding, || vec![3u8; 3 << 20]);
    let small = with_kind(TensorKind::ImageEmbedding, || vec![4u8; 200]);
    // freed on another thread under another tag
    std::thread::spawn(move || {
        with_kind(TensorKind::Attention, || {
            assert_eq!(kind_of(v.as_ptr()), TensorKind::ImageEmbedding);
            drop(v);
            drop(small);
        })
    })
    .join()
    .unwrap();
    let after = ALLOC.large_counters(TensorKind::ImageEmbedding);
    assert_eq!(after.requests - before.requests, 1);
    // Sent back to this thread, which took it (or to the arena): held for reuse in its kind.
    // (Against the block's size alone, not the kind's holdings before plus it: those include
    // free small blocks on the pages of other tests' threads, which go when a thread exits;
    // once in 80 runs beside another copy of this binary they had shrunk by 90 KiB.)
    let s = ALLOC.stats();
    let k = s.kind(TensorKind::ImageEmbedding);
    assert!(
        k.cached_bytes + k.hot_bytes >= 3 << 20,
        "block kept in its own kind: cached {} hot {}",
        k.cached_bytes,
        k.hot_bytes
    );
    // the next request of that size and kind is a hit (of this thread's cache or the arena):
    // no fresh pages
    let hits = |s: &tensorpool::Stats| s.kind(TensorKind::ImageEmbedding).hits;
    let v2 = with_kind(TensorKind::ImageEmbedding, || vec![5u8; 3 << 20]);
    let again = ALLOC.large_counters(TensorKind::ImageEmbedding);
    assert_eq!(hits(&ALLOC.stats()) - hits(&s), 1);
    assert_eq!(again.misses, after.misses, "no fresh pages");
    drop(v2);
}

#[test]
fn handles_of_every_kind_serve_allocator_aware_collections() {
    let _g = COUNTERS.lock().unwrap_or_else(|e| e.into_inner());
    for kind in TensorKind::ALL {
        let h = ALLOC.handle(kind);
        let mut v: AVec<u64, _> = AVec::new_in(h);
        for i in 0..10_000u64 {
            v.push(i);
        }
        assert_eq!(kind_of(v.as_ptr()), kind);
        assert_eq!(v.iter().sum::<u64>(), 10_000 * 9_999 / 2);
        v.truncate(3);
        v.shrink_to_fit();
        assert_eq!(&v[..], &[0, 1, 2]);

        let mut m = hashbrown::HashMap::new_in(h);
        for i in 0..5_000u32 {
            m.insert(i, i.to_string());
        }
        assert_eq!(m[&4_321], "4321");
        // zero-sized requests through a handle
        let z: AVec<(), _> = AVec::with_capacity_in(10, h);
        assert_eq!(z.len(), 0);
        let e: AVec<u8, _> = AVec::new_in(h);
        drop(e);
    }
}

#[test]
fn handle_allocations_ignore_the_thread_tag() {
    let h = ALLOC.handle(TensorKind::KvCache);
    let v = with_kind(TensorKind::Attention, || {
        let mut v = AVec::with_capacity_in(1000, h);
        v.extend_from_slice(&[7u8; 1000]);
        v
    });
    assert_eq!(kind_of(v.as_ptr()), TensorKind::KvCache);
}
