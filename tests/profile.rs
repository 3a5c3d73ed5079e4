//! Sampled profiles of live memory (`TENSORPOOL_PROFILE`), each case in a child process (the
//! rate is read once): a program leaks 3 blocks of 8 MiB under `KvCache` from one function,
//! among call sites that allocate and free heavily; the exit report names that function under
//! `kv_cache` with about 24 MiB and no other site as holding live KV-cache memory. The folded
//! stacks feed a flamegraph (inferno), and the JSON parses.
use tensorpool::{with_kind, TensorKind, TensorPool};

mod common;

#[global_allocator]
static ALLOC: TensorPool = TensorPool::new();

#[inline(never)]
fn leak_kv_cache() -> Vec<Vec<u8>> {
    (0..3)
        .map(|i| with_kind(TensorKind::KvCache, || vec![i as u8; 8 << 20]))
        .collect()
}

/// Allocates and frees KV caches, activations and small objects, keeping nothing.
#[inline(never)]
fn churn_kv_and_activations() -> u64 {
    let mut sum = 0u64;
    for i in 0..200u64 {
        let kv = with_kind(TensorKind::KvCache, || {
            vec![i as u8; (1 << 20) + (i as usize) * 4096]
        });
        let act = with_kind(TensorKind::Activation, || vec![1u8; 300_000]);
        let small: Vec<String> = (0..200).map(|j| format!("{i}-{j}")).collect();
        sum += kv[kv.len() - 1] as u64 + act[7] as u64 + small.len() as u64;
    }
    sum
}

/// Small objects kept until exit: live general memory from a site of its own (one allocation
/// each, hence the boxes): 6.4 MB, about 12 samples at 512 KiB, so that the site is missed
/// once in 200,000 runs (`exp(-12.5)`).
#[allow(clippy::vec_box)]
#[inline(never)]
fn keep_small_objects() -> Vec<Box<[u64; 8]>> {
    (0..100_000).map(|i| Box::new([i; 8])).collect()
}

/// 64 MiB of activations live at once, then freed: the run's peak.
#[inline(never)]
fn peak_burst() -> u64 {
    let blocks: Vec<Vec<u8>> = (0..4)
        .map(|i| with_kind(TensorKind::Activation, || vec![i as u8; 16 << 20]))
        .collect();
    blocks.iter().map(|b| b[b.len() - 1] as u64).sum()
}

fn program() {
    let kept = leak_kv_cache();
    if std::env::var("PROFILE_OUT").as_deref() == Ok("peak") {
        println!("burst {}", peak_burst());
    }
    let sum = churn_kv_and_activations();
    let small = keep_small_objects();
    println!("sum {sum} {}", small.len());
    // (A profile taken here would resolve symbols, and the debug information that loads stays
    // cached, live, to the exit report.)
    match std::env::var("PROFILE_OUT").as_deref() {
        Ok("folded") => print!("{}", ALLOC.profile().to_folded()),
        Ok("json") => println!("{}", ALLOC.profile().to_json()),
        Ok("peak") => {
            let (at_peak, bytes) = ALLOC.profile_at_peak();
            println!("peak bytes {bytes}");
            print!(
                "AT PEAK\n{}NOW\n{}",
                at_peak.to_text(5),
                ALLOC.profile().to_text(5)
            );
        }
        _ => {}
    }
    std::mem::forget(kept);
    std::mem::forget(small);
}

#[test]
fn child_entry() {
    if std::env::var_os("PROFILE_CHILD").is_some() {
        program();
    }
}

fn run(rate: &str, out: &str) -> (String, String) {
    let o = common::child_output(
        "child_entry",
        &[
            ("PROFILE_CHILD", "1"),
            ("PROFILE_OUT", out),
            ("TENSORPOOL_PROFILE", rate),
            ("TENSORPOOL_STATS", "1"),
        ],
    );
    assert!(o.status.success(), "{o:?}");
    (
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

/// `12.3 MiB` -> bytes.
fn parse_bytes(s: &str) -> f64 {
    let mut it = s.split_whitespace();
    let v: f64 = it.next().unwrap().parse().unwrap();
    match it.next().unwrap() {
        "B" => v,
        "KiB" => v * 1024.0,
        "MiB" => v * 1048576.0,
        "GiB" => v * 1073741824.0,
        u => panic!("unit {u}"),
    }
}

#[test]
fn the_exit_report_names_the_leaking_function() {
    if std::env::var_os("PROFILE_CHILD").is_some() {
        return;
    }
    let (_, err) = run("512K", "");
    let start = err
        .find("tensorpool: live memory by call site (sampled every 512.0 KiB")
        .unwrap_or_else(|| panic!("no profile in the report: {err}"));
    let rows: Vec<&str> = err[start..]
        .lines()
        .skip(1)
        .take_while(|l| l.starts_with("  "))
        .collect();
    let kv: Vec<&&str> = rows
        .iter()
        .filter(|l| l.trim_start().starts_with("kv_cache "))
        .collect();
    assert_eq!(kv.len(), 1, "one KV-cache site expected: {rows:#?}");
    let row = kv[0];
    assert!(row.contains("leak_kv_cache"), "{row}");
    assert!(row.contains("profile.rs:"), "no file:line: {row}");
    let bytes = parse_bytes(
        row.trim_start()["kv_cache".len()..]
            .trim_start()
            .split(" in ")
            .next()
            .unwrap(),
    );
    assert!(
        (22.0e6..28.0e6).contains(&bytes),
        "about 24 MiB expected: {row}"
    );
    assert!(
        rows.iter().any(|l| l.contains("keep_small_objects")),
        "the small objects' site: {rows:#?}"
    );
    assert!(
        !rows.iter().any(|l| l.contains("churn_kv_and_activations")),
        "a site that keeps nothing listed: {rows:#?}"
    );
}

#[test]
fn folded_stacks_make_a_flamegraph_and_json_parses() {
    if std::env::var_os("PROFILE_CHILD").is_some() {
        return;
    }
    let (out, _) = run("256K", "folded");
    let folded: Vec<&str> = out.lines().filter(|l| l.contains(';')).collect();
    assert!(
        folded
            .iter()
            .any(|l| l.starts_with("kv_cache;") && l.contains("leak_kv_cache")),
        "{out}"
    );
    let mut svg = Vec::new();
    let mut opts = inferno::flamegraph::Options::default();
    inferno::flamegraph::from_lines(&mut opts, folded.iter().copied(), &mut svg).unwrap();
    let svg = String::from_utf8(svg).unwrap();
    assert!(svg.contains("<svg") && svg.contains("leak_kv_cache"));

    let (out, _) = run("256K", "json");
    let line = out.lines().find(|l| l.starts_with("{\"rate\"")).unwrap();
    let v: serde_json::Value = serde_json::from_str(line).unwrap();
    assert_eq!(v["rate"], 256 * 1024);
    let sites = v["sites"].as_array().unwrap();
    let kv = sites
        .iter()
        .find(|s| s["kind"] == "kv_cache")
        .expect("a kv_cache site");
    assert!(kv["stack"][0]["function"]
        .as_str()
        .unwrap()
        .contains("leak_kv_cache"));
}

#[test]
fn profiling_off_reports_nothing() {
    if std::env::var_os("PROFILE_CHILD").is_some() {
        return;
    }
    let (_, err) = run("0", "");
    assert!(!err.contains("live memory by call site"), "{err}");
    assert!(
        err.contains("tensorpool: still live at exit: kv_cache"),
        "{err}"
    );
}

/// The profile at the peak holds what was live then (the 64 MiB burst, freed since, and the
/// leaked KV caches); the profile now holds the leak only.
#[test]
fn the_profile_at_the_peak_shows_what_was_live_then() {
    if std::env::var_os("PROFILE_CHILD").is_some() {
        return;
    }
    let (out, _) = run("512K", "peak");
    let peak: u64 = out
        .lines()
        .find_map(|l| l.strip_prefix("peak bytes "))
        .expect(&out)
        .parse()
        .unwrap();
    assert!(peak >= 88 << 20, "the burst and the leak: {peak}");
    let (at_peak, now) = out.split_once("NOW\n").expect(&out);
    let burst: Vec<&str> = at_peak
        .lines()
        .filter(|l| l.contains("peak_burst"))
        .collect();
    assert_eq!(burst.len(), 1, "{out}");
    let bytes = parse_bytes(
        burst[0]
            .split_whitespace()
            .skip(1)
            .take(2)
            .collect::<Vec<_>>()
            .join(" ")
            .as_str(),
    );
    assert!(
        (60.0 * 1048576.0..=68.0 * 1048576.0).contains(&bytes),
        "{out}"
    );
    assert!(at_peak.contains("leak_kv_cache"), "{out}");
    assert!(
        !now.contains("peak_burst") && now.contains("leak_kv_cache"),
        "{out}"
    );
}
