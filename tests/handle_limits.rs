//! Hard limits on handles: over the limit, `allocate`/`grow` give `AllocError`, collections report
//! it through `try_reserve`, and their contents stay intact; the account is exact.
use allocator_api2::alloc::{Allocator, Layout};
use allocator_api2::vec::Vec as AVec;
use tensorpool::{TensorKind, TensorPool};

#[global_allocator]
static ALLOC: TensorPool = TensorPool::new();

/// Each test uses its own kind, so tests running in parallel do not share an account.
#[test]
fn vec_over_the_limit_reports_the_error_and_keeps_its_contents() {
    let kind = TensorKind::KvCache;
    let h = ALLOC.handle(kind).with_limit(1 << 20);
    assert_eq!(h.limit(), Some(1 << 20));
    assert_eq!(ALLOC.handle(kind).limit(), None);
    let mut v: AVec<u32, _> = AVec::new_in(h);
    for i in 0..100_000u32 {
        v.push(i); // grows through `grow`, in place or moved
    }
    assert_eq!(ALLOC.limited_bytes(kind), v.capacity() * 4);
    let refused = ALLOC.limit_refusals(kind);
    // 1 MiB = 262,144 u32: asking for 300,000 must fail
    assert!(v.try_reserve_exact(200_000).is_err());
    assert!(v.try_reserve(200_000).is_err());
    assert_eq!(ALLOC.limit_refusals(kind), refused + 2);
    assert_eq!(v.len(), 100_000);
    assert!(v.iter().enumerate().all(|(i, &x)| x == i as u32));
    // still usable within the limit
    v.try_reserve_exact(100_000).unwrap();
    assert_eq!(ALLOC.limited_bytes(kind), v.capacity() * 4);
    assert!(v.capacity() * 4 <= 1 << 20);
    v.shrink_to_fit();
    assert_eq!(ALLOC.limited_bytes(kind), 400_000);
    assert!(v.iter().enumerate().all(|(i, &x)| x == i as u32));
    drop(v);
    assert_eq!(ALLOC.limited_bytes(kind), 0);
}

#[test]
fn copies_share_one_account_and_unlimited_handles_keep_none() {
    let kind = TensorKind::Attention;
    let h = ALLOC.handle(kind).with_limit(3 << 20);
    let h2 = h; // a copy
    let a = h
        .allocate(Layout::from_size_align(2 << 20, 64).unwrap())
        .unwrap();
    assert_eq!(
        a.len(),
        2 << 20,
        "a limited handle grants exactly the request"
    );
    let big = Layout::from_size_align(2 << 20, 64).unwrap();
    assert!(h2.allocate(big).is_err());
    let small = Layout::from_size_align(100, 8).unwrap();
    let b = h2.allocate(small).unwrap();
    assert_eq!(ALLOC.limited_bytes(kind), (2 << 20) + 100);
    // an unlimited handle of the same kind is not charged and not refused
    let u = ALLOC.handle(kind);
    let c = u.allocate(big).unwrap();
    assert!(c.len() >= 2 << 20);
    assert_eq!(ALLOC.limited_bytes(kind), (2 << 20) + 100);
    unsafe {
        h2.deallocate(a.cast(), big);
        h.deallocate(b.cast(), small);
        u.deallocate(c.cast(), big);
    }
    assert_eq!(ALLOC.limited_bytes(kind), 0);
    // zero-sized requests are free of charge even under a zero limit
    let z = ALLOC.handle(kind).with_limit(0);
    let p = z.allocate(Layout::from_size_align(0, 64).unwrap()).unwrap();
    assert_eq!(p.len(), 0);
    assert_eq!(p.cast::<u8>().as_ptr() as usize % 64, 0);
    assert!(z.allocate(Layout::new::<u8>()).is_err());
    unsafe { z.deallocate(p.cast(), Layout::from_size_align(0, 64).unwrap()) };
    assert_eq!(ALLOC.limited_bytes(kind), 0);
}

#[test]
fn grow_over_the_limit_fails_and_leaves_the_block_unchanged() {
    let kind = TensorKind::ImageEmbedding;
    let h = ALLOC.handle(kind).with_limit(8 << 20);
    let old = Layout::from_size_align(4 << 20, 64).unwrap();
    let p = h.allocate(old).unwrap().cast::<u8>();
    unsafe { std::ptr::write_bytes(p.as_ptr(), 0xA5, old.size()) };
    let too_big = Layout::from_size_align(9 << 20, 64).unwrap();
    assert!(unsafe { h.grow(p, old, too_big) }.is_err());
    assert_eq!(ALLOC.limited_bytes(kind), 4 << 20);
    let bytes = unsafe { std::slice::from_raw_parts(p.as_ptr(), old.size()) };
    assert!(bytes.iter().all(|&b| b == 0xA5));
    // growing to the limit exactly works and keeps contents
    let fits = Layout::from_size_align(8 << 20, 64).unwrap();
    let q = unsafe { h.grow(p, old, fits) }.unwrap().cast::<u8>();
    assert_eq!(ALLOC.limited_bytes(kind), 8 << 20);
    let bytes = unsafe { std::slice::from_raw_parts(q.as_ptr(), old.size()) };
    assert!(bytes.iter().all(|&b| b == 0xA5));
    let half = Layout::from_size_align(1 << 20, 64).unwrap();
    let r = unsafe { h.shrink(q, fits, half) }.unwrap().cast::<u8>();
    assert_eq!(ALLOC.limited_bytes(kind), 1 << 20);
    unsafe { h.deallocate(r, half) };
    assert_eq!(ALLOC.limited_bytes(kind), 0);
}

#[test]
fn hashbrown_map_over_the_limit_reports_the_error_and_keeps_its_entries() {
    let kind = TensorKind::TextEmbedding;
    let h = ALLOC.handle(kind).with_limit(64 << 10);
    let mut m = hashbrown::HashMap::new_in(h);
    let mut n = 0u64;
    // insert until the next growth would pass the limit
    while m.try_reserve(1).is_ok() {
        m.insert(n, n * 3);
        n += 1;
        assert!(n < 100_000, "the limit never applied");
    }
    assert!(ALLOC.limit_refusals(kind) >= 1);
    assert!(ALLOC.limited_bytes(kind) <= 64 << 10);
    assert_eq!(m.len() as u64, n);
    assert!((0..n).all(|k| m[&k] == k * 3));
    drop(m);
    assert_eq!(ALLOC.limited_bytes(kind), 0);
}

#[test]
fn limited_handles_on_many_threads_never_pass_the_limit_together() {
    let kind = TensorKind::Activation;
    let limit = 1 << 20;
    let h = ALLOC.handle(kind).with_limit(limit);
    let layout = Layout::from_size_align(48 << 10, 64).unwrap();
    std::thread::scope(|s| {
        for t in 0..4u8 {
            s.spawn(move || {
                for _ in 0..200 {
                    let mut held = Vec::new();
                    while let Ok(p) = h.allocate(layout) {
                        unsafe { std::ptr::write_bytes(p.cast::<u8>().as_ptr(), t, layout.size()) };
                        held.push(p.cast::<u8>());
                        assert!(ALLOC.limited_bytes(kind) <= limit);
                    }
                    for p in held {
                        let b = unsafe { std::slice::from_raw_parts(p.as_ptr(), layout.size()) };
                        assert!(b.iter().all(|&x| x == t));
                        unsafe { h.deallocate(p, layout) };
                    }
                }
            });
        }
    });
    assert_eq!(ALLOC.limited_bytes(kind), 0);
}

/// `grow_zeroed` charges only the growth, as `grow` does: 4 MiB held under a 10 MiB limit grow to
/// 9 MiB (the default `grow_zeroed` would hold 13 MiB for a moment and be refused); the old bytes
/// are kept and the new ones zero.
#[test]
fn grow_zeroed_succeeds_wherever_grow_would() {
    let kind = TensorKind::General;
    let h = ALLOC.handle(kind).with_limit(10 << 20);
    let old = Layout::from_size_align(4 << 20, 64).unwrap();
    let p = h.allocate(old).unwrap().cast::<u8>();
    unsafe { std::ptr::write_bytes(p.as_ptr(), 0x5A, old.size()) };
    let new = Layout::from_size_align(9 << 20, 64).unwrap();
    let q = unsafe { h.grow_zeroed(p, old, new) }.expect("grow_zeroed within the limit");
    assert_eq!(q.len(), new.size());
    assert_eq!(ALLOC.limited_bytes(kind), 9 << 20);
    let bytes = unsafe { std::slice::from_raw_parts(q.as_ptr().cast::<u8>(), new.size()) };
    assert!(
        bytes[..old.size()].iter().all(|&b| b == 0x5A),
        "old bytes lost"
    );
    assert!(
        bytes[old.size()..].iter().all(|&b| b == 0),
        "new bytes not zero"
    );
    // Over the limit it is refused like `grow`, and the block stays as it was.
    let too_big = Layout::from_size_align(11 << 20, 64).unwrap();
    assert!(unsafe { h.grow_zeroed(q.cast(), new, too_big) }.is_err());
    assert_eq!(ALLOC.limited_bytes(kind), 9 << 20);
    unsafe { h.deallocate(q.cast(), new) };
    assert_eq!(ALLOC.limited_bytes(kind), 0);
}
