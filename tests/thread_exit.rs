//! 1,000 short-lived threads: their memory comes back (heaps are recycled, empty pages returned).
use tensorpool::TensorPool;

#[global_allocator]
static ALLOC: TensorPool = TensorPool::new();

fn churn(t: usize) -> usize {
    let mut keep = Vec::new();
    for i in 0..2_000 {
        let v = vec![(t + i) as u8; (i * 37) % 3000 + 1];
        if i % 3 == 0 {
            keep.push(v);
        }
    }
    let big = vec![t as u8; 100_000 + t * 13];
    keep.iter().map(|v| v.len()).sum::<usize>() + big.len()
}

#[test]
fn a_thousand_short_lived_threads_return_their_memory() {
    // warm up: the first batch sets the baseline
    for t in 0..20 {
        std::thread::spawn(move || churn(t)).join().unwrap();
    }
    let base = tensorpool::resident_bytes().unwrap();
    let mut peak = base;
    for batch in 0..250 {
        let hs: Vec<_> = (0..4)
            .map(|i| std::thread::spawn(move || churn(batch * 4 + i)))
            .collect();
        for h in hs {
            assert!(h.join().unwrap() > 0);
        }
        peak = peak.max(tensorpool::resident_bytes().unwrap());
    }
    // Each thread touches ~1.3 MB; 1,000 threads would be over 1 GB if nothing came back.
    let growth = peak.saturating_sub(base);
    eprintln!(
        "resident: base {} KiB, peak {} KiB, growth {} KiB",
        base >> 10,
        peak >> 10,
        growth >> 10
    );
    assert!(
        growth < 48 << 20,
        "resident memory grew by {growth} bytes over 1,000 threads"
    );
}

#[test]
fn blocks_outlive_their_thread_and_are_freed_elsewhere() {
    let blocks: Vec<Vec<Box<[u8]>>> = (0..50)
        .map(|t| {
            std::thread::spawn(move || {
                (0..500)
                    .map(|i| vec![t as u8; i % 700 + 1].into_boxed_slice())
                    .collect()
            })
            .join()
            .unwrap()
        })
        .collect();
    for (t, bs) in blocks.into_iter().enumerate() {
        for b in bs {
            assert!(b.iter().all(|&x| x == t as u8));
        }
    }
}
