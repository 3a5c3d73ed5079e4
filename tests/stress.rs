//! Multi-threaded stress: every block carries a pattern checked before it is freed, and most blocks
//! are freed by another thread than the one that allocated them.
use std::sync::mpsc;
use tensorpool::TensorPool;
mod common;
use common::Rng;

#[global_allocator]
static ALLOC: TensorPool = TensorPool::new();

fn make(size: usize, tag: u64) -> Vec<u8> {
    let mut v = Vec::with_capacity(size);
    for i in 0..size {
        v.push((tag as usize).wrapping_add(i.wrapping_mul(7)) as u8);
    }
    v
}

fn verify(v: &[u8], tag: u64) {
    for (i, &b) in v.iter().enumerate() {
        assert_eq!(
            b,
            (tag as usize).wrapping_add(i.wrapping_mul(7)) as u8,
            "block of {} corrupted at {i}",
            v.len()
        );
    }
}

fn size_for(r: &mut Rng) -> usize {
    match r.next() % 100 {
        0..=69 => (r.next() % 256) as usize + 1,
        70..=94 => (r.next() % 16_384) as usize + 1,
        95..=98 => (r.next() % 200_000) as usize + 1,
        _ => (r.next() % (3 << 20)) as usize + 1,
    }
}

#[test]
fn cross_thread_frees_keep_every_block_intact() {
    const THREADS: usize = 4;
    const OPS: usize = 40_000;
    let (txs, rxs): (Vec<_>, Vec<_>) = (0..THREADS)
        .map(|_| mpsc::channel::<(u64, Vec<u8>)>())
        .unzip();
    let mut handles = Vec::new();
    for (t, rx) in rxs.into_iter().enumerate() {
        let txs = txs.clone();
        handles.push(std::thread::spawn(move || {
            let mut rng = Rng(0x9E37_79B9_7F4A_7C15 ^ ((t as u64 + 1) * 0x1234_5678));
            let mut local: Vec<(u64, Vec<u8>)> = Vec::new();
            for op in 0..OPS {
                let tag = rng.next();
                let v = make(size_for(&mut rng), tag);
                match rng.next() % 4 {
                    0 | 1 => {
                        // hand to another thread, which checks and frees it
                        let to = (t + 1 + (rng.next() as usize % (THREADS - 1))) % THREADS;
                        let _ = txs[to].send((tag, v));
                    }
                    _ => local.push((tag, v)),
                }
                if local.len() > 200 || op % 97 == 0 {
                    let i = rng.next() as usize % local.len().max(1);
                    if i < local.len() {
                        let (tag, v) = local.swap_remove(i);
                        verify(&v, tag);
                    }
                }
                while let Ok((tag, v)) = rx.try_recv() {
                    verify(&v, tag);
                }
            }
            for (tag, v) in local {
                verify(&v, tag);
            }
            drop(txs);
            // drain what the others still send
            while let Ok((tag, v)) = rx.recv_timeout(std::time::Duration::from_millis(200)) {
                verify(&v, tag);
            }
        }));
    }
    drop(txs);
    for h in handles {
        h.join().unwrap();
    }
}
