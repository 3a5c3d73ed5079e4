//! Cached large blocks: reuse most-recently-released first, eviction in least-recently-released
//! order under a kind's capacity, capacity held after every step, `trim` releasing everything.
//! Its own binary, and only this test touches the TextEmbedding kind, so the counters are exact.
use allocator_api2::alloc::Allocator;
use std::alloc::Layout;
use tensorpool::{PoolConfig, TensorKind, TensorPool};

// The shared pools' own behaviour is under test: no thread cache in front of them.
#[global_allocator]
static ALLOC: TensorPool = TensorPool::with_config(PoolConfig::new().with_thread_cache(0));

const MIB: usize = 1 << 20;
const KIND: TensorKind = TensorKind::TextEmbedding;

fn held(cap: usize) {
    let c = ALLOC.large_counters(KIND);
    assert!(
        c.live_bytes + c.cached_bytes <= cap as u64 || c.cached_bytes == 0,
        "capacity exceeded: {c:?}"
    );
}

#[test]
fn lru_order_and_capacity() {
    let cap = 10 * MIB;
    ALLOC.set_capacity(KIND, cap);
    let h = ALLOC.handle(KIND);
    let l3 = Layout::from_size_align(3 * MIB, 64).unwrap();
    let l4 = Layout::from_size_align(4 * MIB, 64).unwrap();
    let a = h.allocate(l3).unwrap().cast::<u8>();
    let b = h.allocate(l3).unwrap().cast::<u8>();
    let c = h.allocate(l3).unwrap().cast::<u8>();
    for p in [a, b, c] {
        unsafe { p.as_ptr().write_bytes(1, 3 * MIB) };
    }
    held(cap);
    let base = ALLOC.large_counters(KIND);
    assert_eq!(base.live_bytes, 9 * MIB as u64);
    // release order: a, c, b  (b is the most recent, a the least)
    for p in [a, c, b] {
        unsafe { h.deallocate(p, l3) };
        held(cap);
    }
    let s = ALLOC.large_counters(KIND);
    assert_eq!((s.live_bytes, s.cached_bytes), (0, 9 * MIB as u64));
    // reuse is most recent first: b, then c
    let r1 = h.allocate(l3).unwrap().cast::<u8>();
    assert_eq!(r1, b);
    let r2 = h.allocate(l3).unwrap().cast::<u8>();
    assert_eq!(r2, c);
    // contents of reused blocks are what the last owner left (no hidden copy)
    assert_eq!(unsafe { *r1.as_ptr().add(3 * MIB - 1) }, 1);
    // release order now: a, c, b
    unsafe { h.deallocate(r2, l3) };
    unsafe { h.deallocate(r1, l3) };
    held(cap);
    // A 4 MiB request has no block of its class. Live 4 + cached 9 > 10 evicts exactly one
    // block, the least recently released (a); then the request recycles the pages of the next
    // least recently released (c, whole) and the tail of b, whose head stays cached.
    let d = h.allocate(l4).unwrap().cast::<u8>();
    held(cap);
    let s = ALLOC.large_counters(KIND);
    assert_eq!(s.evictions - base.evictions, 1);
    assert_eq!(s.evicted_bytes - base.evicted_bytes, 3 * MIB as u64);
    assert_eq!(s.recycled - base.recycled, 1);
    assert!(s.recycled_bytes - base.recycled_bytes >= 4 * MIB as u64);
    assert!(s.cached_bytes > MIB as u64 && s.cached_bytes < 3 * MIB as u64);
    unsafe { d.as_ptr().write_bytes(2, 4 * MIB) };
    // what is left of b serves a smaller request in place: same address, b's contents
    let l2 = Layout::from_size_align(2 * MIB, 64).unwrap();
    let e = h.allocate(l2).unwrap().cast::<u8>();
    assert_eq!(e, b);
    assert_eq!(unsafe { *e.as_ptr().add(2 * MIB - 1) }, 1);
    assert_eq!(ALLOC.large_counters(KIND).hits, s.hits + 1);
    held(cap);
    unsafe { h.deallocate(e, l2) };
    held(cap);
    unsafe { h.deallocate(d, l4) };
    held(cap);
    // live 0: cached must fit the capacity
    let s = ALLOC.large_counters(KIND);
    assert!(s.cached_bytes <= cap as u64);
    let released = ALLOC.trim();
    assert!(released >= s.cached_bytes as usize);
    assert_eq!(ALLOC.large_counters(KIND).cached_bytes, 0);
}
