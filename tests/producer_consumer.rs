//! Producer/consumer with cross-thread frees: memory freed remotely is reused (its own binary, so
//! the resident-memory measurement sees no other test).
use std::sync::mpsc;
use tensorpool::TensorPool;

#[global_allocator]
static ALLOC: TensorPool = TensorPool::new();

#[test]
fn producer_consumer_memory_is_reused() {
    // One thread allocates, another frees everything: the producer's pages must be reused via the
    // remote-free path, so resident memory stays bounded across rounds.
    let (tx, rx) = mpsc::sync_channel::<Box<[u64; 8]>>(1024);
    let consumer = std::thread::spawn(move || {
        let mut n = 0u64;
        for b in rx {
            assert!(b.iter().all(|&x| x == b[0]));
            n += 1;
        }
        n
    });
    let before = tensorpool::resident_bytes().unwrap();
    for i in 0..2_000_000u64 {
        tx.send(Box::new([i; 8])).unwrap();
    }
    drop(tx);
    assert_eq!(consumer.join().unwrap(), 2_000_000);
    let after = tensorpool::resident_bytes().unwrap();
    // 2M * 64 B = 128 MB went through; only a bounded window can be resident.
    assert!(
        after < before + (32 << 20),
        "resident grew from {before} to {after}"
    );
}
