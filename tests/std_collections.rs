//! std collections, strings and threads work normally on top of TensorPool.
use std::collections::{BTreeMap, HashMap, VecDeque};
use tensorpool::TensorPool;

#[global_allocator]
static ALLOC: TensorPool = TensorPool::new();

#[test]
fn vectors_strings_and_maps() {
    let mut v: Vec<u64> = Vec::new();
    for i in 0..100_000u64 {
        v.push(i * 3);
    }
    assert_eq!(v.iter().sum::<u64>(), 3 * (100_000 * 99_999 / 2));
    v.truncate(10);
    v.shrink_to_fit();
    assert_eq!(v, (0..10).map(|i| i * 3).collect::<Vec<_>>());

    let mut s = String::new();
    for i in 0..10_000 {
        s.push_str(&i.to_string());
    }
    assert!(s.starts_with("0123456789101112"));
    assert_eq!(s.len(), 38_890);

    let mut m: HashMap<String, Vec<u8>> = HashMap::new();
    for i in 0..20_000 {
        m.insert(format!("key{i}"), vec![(i % 251) as u8; i % 300]);
    }
    for i in (0..20_000).step_by(7) {
        let e = &m[&format!("key{i}")];
        assert_eq!(e.len(), i % 300);
        assert!(e.iter().all(|&b| b == (i % 251) as u8));
    }
    let mut b = BTreeMap::new();
    for i in (0..50_000).rev() {
        b.insert(i, i.to_string());
    }
    assert_eq!(b.iter().next(), Some((&0, &"0".to_string())));
    let mut d: VecDeque<Box<[u8]>> = VecDeque::new();
    for i in 0..5_000usize {
        d.push_back(vec![i as u8; i % 5000 + 1].into_boxed_slice());
        if d.len() > 100 {
            let x = d.pop_front().unwrap();
            assert!(x.iter().all(|&c| c == x[0]));
        }
    }
}

#[test]
fn threads_and_channels() {
    let (tx, rx) = std::sync::mpsc::channel::<Vec<String>>();
    let producers: Vec<_> = (0..4)
        .map(|t| {
            let tx = tx.clone();
            std::thread::spawn(move || {
                for i in 0..2_000 {
                    tx.send(vec![format!("{t}-{i}"); 3]).unwrap();
                }
            })
        })
        .collect();
    drop(tx);
    let mut n = 0;
    for msg in rx {
        assert_eq!(msg.len(), 3);
        assert_eq!(msg[0], msg[2]);
        n += 1;
    }
    for p in producers {
        p.join().unwrap();
    }
    assert_eq!(n, 8_000);
}

#[test]
fn boxed_trait_objects_and_arcs() {
    let items: Vec<Box<dyn Fn(u32) -> u32 + Send + Sync>> = (0..1000u32)
        .map(|i| Box::new(move |x| x + i) as Box<dyn Fn(u32) -> u32 + Send + Sync>)
        .collect();
    assert_eq!(
        items.iter().map(|f| f(1)).sum::<u32>(),
        1000 + 999 * 1000 / 2
    );
    let shared = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let hs: Vec<_> = (0..4)
        .map(|t| {
            let s = shared.clone();
            std::thread::spawn(move || {
                for i in 0..1000 {
                    s.lock().unwrap().push(t * 1000 + i);
                }
            })
        })
        .collect();
    for h in hs {
        h.join().unwrap();
    }
    let mut v = shared.lock().unwrap().clone();
    v.sort();
    assert_eq!(v, (0..4000).collect::<Vec<_>>());
}
