//! 20,000 short-lived threads, each allocating a few large blocks under a kind (some freed by the
//! main thread, after the thread has exited) and some small ones: the process's mapping count and
//! resident memory end within a small margin of their level after the first 100 threads.
//! Nothing a thread held stays behind when it exits.
use std::sync::mpsc;
use tensorpool::{with_kind, TensorKind, TensorPool};
mod common;

#[global_allocator]
static ALLOC: TensorPool = TensorPool::new();

const KIB: usize = 1 << 10;
const MIB: usize = 1 << 20;

fn mappings() -> usize {
    std::fs::read_to_string("/proc/self/maps")
        .unwrap()
        .lines()
        .count()
}

/// One thread's work: 2 to 5 blocks of 100 KiB to 4 MiB under a kind, each written and checked;
/// half freed here, half handed to the main thread; a few hundred small strings besides.
fn work(t: u64, tx: mpsc::Sender<Vec<u8>>) {
    let mut rng = common::Rng(t * 0x9e37_79b9 + 1);
    let kind = TensorKind::ALL[rng.below(6)];
    let n = 2 + rng.below(4);
    let blocks: Vec<Vec<u8>> = with_kind(kind, || {
        (0..n)
            .map(|i| {
                vec![
                    (t as u8) ^ (i as u8);
                    100 * KIB + rng.below(4 * MIB as u64 - 100 * KIB as u64)
                ]
            })
            .collect()
    });
    let words: Vec<String> = (0..200).map(|i| format!("thread {t} word {i}")).collect();
    for (i, b) in blocks.into_iter().enumerate() {
        assert!(b.iter().step_by(4096).all(|&x| x == (t as u8) ^ (i as u8)));
        if i % 2 == 0 {
            tx.send(b).unwrap();
        }
    }
    assert!(words.iter().all(|w| w.starts_with("thread")));
}

#[test]
fn twenty_thousand_short_lived_threads_leave_nothing_behind() {
    if std::env::var_os("TENSORPOOL_TEST_CHILD").is_none() {
        let (out, _) = common::run_child_test(
            "twenty_thousand_short_lived_threads_leave_nothing_behind",
            &[],
        );
        print!("{out}");
        return;
    }
    let (tx, rx) = mpsc::channel::<Vec<u8>>();
    let mut base = (0, 0);
    let mut peak = (0, 0);
    const THREADS: u64 = 20_000;
    const BATCH: u64 = 4;
    for batch in 0..THREADS / BATCH {
        let hs: Vec<_> = (0..BATCH)
            .map(|i| {
                let tx = tx.clone();
                std::thread::spawn(move || work(batch * BATCH + i, tx))
            })
            .collect();
        for h in hs {
            h.join().unwrap();
        }
        // The main thread frees what the exited threads handed over.
        while let Ok(b) = rx.try_recv() {
            drop(b);
        }
        let now = (mappings(), tensorpool::resident_bytes().unwrap());
        if batch * BATCH == 100 {
            base = now;
        }
        if batch * BATCH > 100 {
            peak = (peak.0.max(now.0), peak.1.max(now.1));
        }
    }
    let end = (mappings(), tensorpool::resident_bytes().unwrap());
    let a = ALLOC.arena_counters();
    println!(
        "after 100 threads: {} mappings, {} MiB resident; peak after: {} mappings, {} MiB; \
         end: {} mappings, {} MiB; arena regions {}, segments {} MiB",
        base.0,
        base.1 / MIB,
        peak.0,
        peak.1 / MIB,
        end.0,
        end.1 / MIB,
        a.regions,
        a.segment_bytes / MIB as u64
    );
    assert!(
        peak.0 <= base.0 + 16,
        "mappings grew from {} to {}",
        base.0,
        peak.0
    );
    assert!(
        peak.1 <= base.1 + 48 * MIB,
        "resident memory grew from {} to {} MiB",
        base.1 / MIB,
        peak.1 / MIB
    );
}
