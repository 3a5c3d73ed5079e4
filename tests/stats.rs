//! Statistics through the public API: exact counters after known sequences, JSON that parses back,
//! the table's columns, options from the environment and the exit report, on the global path.

use allocator_api2::alloc::{Allocator, Layout};
use tensorpool::{with_kind, PoolStats, Stats, TensorKind, TensorPool, STATS_COLUMNS};
mod common;

#[global_allocator]
static ALLOC: TensorPool = TensorPool::new();

/// Counter differences between two snapshots of one kind.
fn delta(a: &PoolStats, b: &PoolStats) -> PoolStats {
    PoolStats {
        requests: b.requests - a.requests,
        hits: b.hits - a.hits,
        misses: b.misses - a.misses,
        recycled: b.recycled - a.recycled,
        live_bytes: b.live_bytes.wrapping_sub(a.live_bytes),
        requested_bytes: b.requested_bytes - a.requested_bytes,
        granted_bytes: b.granted_bytes - a.granted_bytes,
        ..PoolStats::default()
    }
}

/// A known sequence on a kind no other test uses: every counter moves by exactly what was done.
#[test]
#[cfg_attr(
    not(feature = "stats"),
    ignore = "small blocks are counted only with the stats feature"
)]
fn counters_are_exact_after_a_known_sequence() {
    let kind = TensorKind::ImageEmbedding;
    let h = ALLOC.handle(kind);
    let before = ALLOC.stats().kinds[kind.index()];
    let small = Layout::from_size_align(100, 8).unwrap();
    let large = Layout::from_size_align((1 << 20) + 5, 64).unwrap();
    let s: Vec<_> = (0..3).map(|_| h.allocate(small).unwrap()).collect();
    let l1 = h.allocate(large).unwrap();
    let l2 = h.allocate(large).unwrap();
    let granted_small: u64 = s.iter().map(|p| p.len() as u64).sum();
    let granted_large = (l1.len() + l2.len()) as u64;
    let mid = ALLOC.stats().kinds[kind.index()];
    let d = delta(&before, &mid);
    assert_eq!(d.requests, 5);
    // Requested and granted bytes cover large blocks (small ones count blocks, not bytes asked).
    assert_eq!(d.requested_bytes, 2 * ((1 << 20) + 5));
    // Granted large bytes are whole pages: the usable bytes plus each block's cache colour (the
    // offset of its start in its first page, under a page).
    assert!(d.granted_bytes >= granted_large && d.granted_bytes < granted_large + 2 * 4096);
    assert_eq!(d.granted_bytes % 4096, 0);
    assert_eq!(d.live_bytes, granted_small + d.granted_bytes);
    assert_eq!(d.hits + d.misses, 5);
    // Free one large block and ask again: a cache hit, no new mapping.
    // SAFETY: `l1` came from `h` with `large`.
    unsafe { h.deallocate(l1.cast(), large) };
    let l3 = h.allocate(large).unwrap();
    let after = ALLOC.stats().kinds[kind.index()];
    let d2 = delta(&mid, &after);
    assert_eq!((d2.requests, d2.hits, d2.misses), (1, 1, 0));
    assert_eq!(d2.live_bytes, 0, "one freed, one reused: same live bytes");
    assert!(after.cached_bytes <= mid.cached_bytes);
    // SAFETY: every block came from `h` with its layout.
    unsafe {
        h.deallocate(l2.cast(), large);
        h.deallocate(l3.cast(), large);
        for p in s {
            h.deallocate(p.cast(), small);
        }
    }
    let end = ALLOC.stats().kinds[kind.index()];
    assert_eq!(end.live_bytes, before.live_bytes, "everything freed");
    assert_eq!(end.requests - before.requests, 6);
    assert!(end.utilization() <= 1.0 && end.hit_rate().is_some_and(|r| r <= 1.0));
}

/// Four threads allocate and free under one tag, one of them freeing blocks the others allocated
/// (remote frees): the kind's request count grows by exactly the allocations made, and once the
/// owners have taken the remote frees back, its live bytes return to where they were.
#[test]
#[cfg_attr(
    not(feature = "stats"),
    ignore = "small blocks are counted only with the stats feature"
)]
fn counters_are_exact_across_threads() {
    let kind = TensorKind::TextEmbedding;
    let before = ALLOC.stats().kinds[kind.index()];
    const N: usize = 2000;
    let (tx, rx) = std::sync::mpsc::channel::<Vec<Box<[u8; 48]>>>();
    let done = std::sync::Arc::new(std::sync::Barrier::new(4));
    let owners: Vec<_> = (0..3)
        .map(|t| {
            let tx = tx.clone();
            let done = done.clone();
            std::thread::spawn(move || {
                // Only the counted allocations run under the tag (the channel allocates too).
                let give = with_kind(kind, || {
                    let mut keep = Vec::with_capacity(N);
                    let mut give = Vec::with_capacity(N);
                    for i in 0..N {
                        let b = Box::new([(t * 7 + i) as u8; 48]);
                        if i % 2 == 0 {
                            keep.push(b);
                        } else {
                            give.push(b);
                        }
                    }
                    drop(keep);
                    give
                });
                tx.send(give).unwrap();
                drop(tx);
                // Wait until the other thread freed what it was given, then allocate again: the
                // slow path takes the remote frees back.
                done.wait();
                with_kind(kind, || {
                    let mut again = Vec::with_capacity(4096);
                    for _ in 0..4096 {
                        again.push(Box::new([0u8; 48]));
                    }
                    drop(again);
                });
            })
        })
        .collect();
    drop(tx);
    let freer = std::thread::spawn(move || {
        for batch in rx {
            for b in &batch {
                assert!(b.iter().all(|&x| x == b[0]), "contents changed");
            }
            drop(batch);
        }
    });
    // The freer's exit publishes its last batch of remote frees; only then may the owners
    // allocate again and take them back.
    freer.join().unwrap();
    done.wait();
    for t in owners {
        t.join().unwrap();
    }
    let after = ALLOC.stats().kinds[kind.index()];
    // Under the tag: per thread N boxes + 2 vectors' buffers + 4096 boxes + one more buffer.
    let per_thread = N + 2 + 4096 + 1;
    assert_eq!(after.requests - before.requests, (3 * per_thread) as u64);
    // The vectors of boxes are large blocks (freed locally); every small block was freed and
    // the remote ones taken back by their owners' next slow paths or at their exit.
    assert_eq!(after.live_bytes, before.live_bytes, "{before:?}\n{after:?}");
}

#[test]
fn json_parses_back_with_every_field() {
    let stats = ALLOC.stats();
    let json = stats.to_json();
    let v: serde_json::Value = serde_json::from_str(&json).expect("valid JSON");
    for (k, kind) in TensorKind::ALL.iter().enumerate() {
        let o = &v["kinds"][kind.name()];
        assert_eq!(o["requests"].as_u64(), Some(stats.kinds[k].requests));
        assert_eq!(o["live_bytes"].as_u64(), Some(stats.kinds[k].live_bytes));
        // A rate where the kind was asked, `null` where it never was.
        assert_eq!(
            o["hit_rate"].as_f64().is_some(),
            stats.kinds[k].requests > 0,
            "{kind:?}: {o}"
        );
    }
    let t = &v["total"];
    assert_eq!(t["granted_bytes"].as_u64(), Some(stats.total.granted_bytes));
    assert_eq!(t["evictions"].as_u64(), Some(stats.total.evictions));
    assert_eq!(
        v["general"]["requests"].as_u64(),
        Some(stats.general.requests)
    );
    assert_eq!(
        v["specialised"]["requests"].as_u64(),
        Some(stats.specialised.requests)
    );
    assert_eq!(v["segment_maps"].as_u64(), Some(stats.segment_maps));
}

#[test]
fn aggregates_split_general_from_specialised() {
    let s: Stats = ALLOC.stats();
    let sum: u64 = s.kinds[1..].iter().map(|k| k.requests).sum();
    assert_eq!(s.specialised.requests, sum);
    assert_eq!(s.general, s.kinds[0]);
    assert_eq!(
        s.total.requests,
        s.general.requests + s.specialised.requests
    );
    assert_eq!(
        s.total.live_bytes,
        s.general.live_bytes + s.specialised.live_bytes
    );
}

#[test]
fn table_has_every_column_and_row() {
    let table = ALLOC.stats().to_string();
    let mut lines = table.lines();
    let header = lines.next().unwrap();
    let mut at = 0;
    for col in STATS_COLUMNS {
        let i = header[at..]
            .find(col)
            .unwrap_or_else(|| panic!("no column {col}: {header}"));
        at += i + col.len();
    }
    for row in
        TensorKind::ALL
            .iter()
            .map(|k| k.name())
            .chain(["general pool", "specialised", "total"])
    {
        let line = table
            .lines()
            .find(|l| l.starts_with(row))
            .unwrap_or_else(|| panic!("no row {row}:\n{table}"));
        // Right-aligned columns: every data row is as wide as the header.
        assert_eq!(line.len(), header.len(), "row {row} misaligned:\n{table}");
    }
    assert!(table.contains("utilization"));
}

/// When run as a child (marker set), allocate a large KV-cache block and leak it, and print the
/// KV-cache capacity in force.
#[test]
fn child_entry() {
    if std::env::var_os("TENSORPOOL_TEST_CHILD").is_none() {
        return;
    }
    println!("capacity_kv_cache={}", ALLOC.capacity(TensorKind::KvCache));
    let h = ALLOC.handle(TensorKind::KvCache);
    let p = h
        .allocate(Layout::from_size_align(3 << 20, 64).unwrap())
        .unwrap();
    // SAFETY: writing into the block just allocated.
    unsafe { p.cast::<u8>().as_ptr().write_bytes(1, 3 << 20) };
    // Leaked on purpose: the exit report must name it.
}

fn run_child(env: &[(&str, &str)]) -> (String, String) {
    common::run_child_test("child_entry", env)
}

#[test]
fn exit_report_names_the_leaked_kind_and_bytes() {
    let (_, err) = run_child(&[("TENSORPOOL_STATS", "1")]);
    assert!(err.contains("tensorpool: statistics at exit"), "{err}");
    assert!(
        err.contains("still live at exit: kv_cache 3.0 MiB (3145728 bytes)"),
        "{err}"
    );
    let (_, err) = run_child(&[("TENSORPOOL_STATS", "json")]);
    let line = err
        .lines()
        .find(|l| l.starts_with('{'))
        .expect("a JSON line");
    let v: serde_json::Value = serde_json::from_str(line).unwrap();
    assert_eq!(v["kinds"]["kv_cache"]["live_bytes"].as_u64(), Some(3 << 20));
}

#[test]
fn environment_sets_capacity_and_bad_values_warn_and_keep_the_default() {
    let (out, err) = run_child(&[("TENSORPOOL_CAPACITY_KV_CACHE", "2G")]);
    assert!(
        out.contains(&format!("capacity_kv_cache={}", 2u64 << 30)),
        "{out}"
    );
    assert!(!err.contains("warning"), "{err}");

    let (out_default, _) = run_child(&[]);
    let (out, err) = run_child(&[("TENSORPOOL_CAPACITY_KV_CACHE", "lots")]);
    assert_eq!(
        out.lines().next(),
        out_default.lines().next(),
        "default kept"
    );
    let warn: Vec<_> = err.lines().filter(|l| l.contains("warning")).collect();
    assert_eq!(warn.len(), 1, "{err}");
    assert!(
        warn[0].contains("TENSORPOOL_CAPACITY_KV_CACHE=\"lots\"") && warn[0].contains("keeping"),
        "{err}"
    );

    let (_, err) = run_child(&[
        ("TENSORPOOL_STATS", "verbose"),
        ("TENSORPOOL_HUGE_PAGES", "2"),
    ]);
    assert!(err.contains("TENSORPOOL_STATS=\"verbose\""), "{err}");
    assert!(err.contains("TENSORPOOL_HUGE_PAGES=\"2\""), "{err}");
    assert!(
        !err.contains("statistics at exit"),
        "a bad value turned the report on: {err}"
    );
}

/// The timeline records each large-block event with the kinds' live bytes, and exports CSV with
/// a column per kind and an SVG chart with axes, labels and a legend.
#[test]
fn timeline_records_large_events_and_exports() {
    let h = ALLOC.handle(TensorKind::Attention);
    let layout = Layout::from_size_align(1 << 20, 64).unwrap();
    ALLOC.mark("before start: not kept");
    ALLOC.start_timeline();
    ALLOC.mark("request 1");
    let a = h.allocate(layout).unwrap();
    ALLOC.mark("a name longer than the thirty-two bytes a marker keeps");
    let b = h.allocate(layout).unwrap();
    // SAFETY: both came from `h` with `layout`.
    unsafe {
        h.deallocate(a.cast(), layout);
        h.deallocate(b.cast(), layout);
    }
    ALLOC.stop_timeline();
    let tl = ALLOC.timeline();
    let att = TensorKind::Attention.index();
    // Other tests may add events of their own kinds; this kind's live bytes rise and fall.
    let peak = tl.samples.iter().map(|s| s.live[att]).max().unwrap();
    assert!(peak >= 2 << 20, "{:?}", tl.samples);
    assert!(
        tl.samples.windows(2).all(|w| w[0].t_ns <= w[1].t_ns),
        "not in time order"
    );
    let csv = tl.to_csv();
    let header = csv.lines().next().unwrap();
    assert!(header.starts_with("t_ms,live_general,"), "{header}");
    assert_eq!(header.split(',').count(), 1 + 2 * TensorKind::ALL.len());
    assert_eq!(csv.lines().count(), tl.samples.len() + 1);
    let svg = tl.to_svg("test", 800, 400);
    assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
    for text in [
        "time since recording started (ms)",
        "large-block bytes (MiB)",
        "live attention",
    ] {
        assert!(svg.contains(text), "no {text}");
    }
    assert!(svg.contains("<polygon"), "no area drawn");
    // Markers: only those made while recording, in order, names cut to 32 bytes, drawn.
    let names: Vec<&str> = tl.markers.iter().map(|m| m.name.as_str()).collect();
    let ours: Vec<&str> = names
        .iter()
        .copied()
        .filter(|n| n.starts_with("request 1") || n.starts_with("a name"))
        .collect();
    assert_eq!(
        ours,
        ["request 1", "a name longer than the thirty-tw"],
        "{names:?}"
    );
    assert!(!names.iter().any(|n| n.starts_with("before")), "{names:?}");
    assert!(tl.markers.windows(2).all(|w| w[0].t_ns <= w[1].t_ns));
    assert!(svg.contains(">request 1</text>"), "marker not drawn");
    // The legend lists the kinds that have data only.
    let only_attention = tensorpool::Timeline {
        samples: tl
            .samples
            .iter()
            .map(|s| {
                let mut live = [0; TensorKind::ALL.len()];
                live[att] = s.live[att];
                tensorpool::Sample { live, ..*s }
            })
            .collect(),
        ..tl.clone()
    };
    let svg = only_attention.to_svg("legend", 800, 400);
    assert!(svg.contains("live attention"), "{svg}");
    for k in TensorKind::ALL
        .iter()
        .filter(|k| **k != TensorKind::Attention)
    {
        assert!(
            !svg.contains(&format!("live {}<", k.name())),
            "{k:?} in the legend"
        );
    }
}
