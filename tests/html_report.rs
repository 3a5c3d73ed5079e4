//! The HTML memory report: a program with three marked requests, profiling on, writes its
//! report at exit (`TENSORPOOL_REPORT`); the page needs no network, and headless Chromium opens
//! it with no console error, runs its script (which marks the page ready and logs what it
//! found) and takes a screenshot. Chromium is Debian's `chromium`; without it the browser part
//! is skipped, unless `TENSORPOOL_BROWSER_TEST=1` (CI sets it) makes its absence a failure.
use std::path::{Path, PathBuf};
use std::process::Command;
use tensorpool::{with_kind, TensorKind, TensorPool};

#[global_allocator]
static ALLOC: TensorPool = TensorPool::new();

#[inline(never)]
fn request(n: usize) -> Vec<Vec<u8>> {
    ALLOC.mark(&format!("request {n}"));
    ALLOC.scope(&format!("request {n}"), || {
        let kv = with_kind(TensorKind::KvCache, || vec![1u8; (2 + n) << 20]);
        for i in 0..20 {
            let act = with_kind(TensorKind::Activation, || vec![i as u8; 3 << 20]);
            let attn = ALLOC.scope("attention", || {
                with_kind(TensorKind::Attention, || vec![2u8; (1 + i % 3) << 20])
            });
            std::hint::black_box((&act, &attn));
        }
        vec![kv]
    })
}

fn program() {
    // Weights: held through every request, so each request's chart draws them as a baseline.
    let weights = vec![7u8; 24 << 20];
    std::mem::forget(weights);
    let mut kept = Vec::new();
    for n in 1..=3 {
        let r = request(n);
        if n == 3 {
            kept = r;
        }
    }
    std::mem::forget(kept);
}

#[test]
fn child_entry() {
    if std::env::var_os("REPORT_CHILD").is_some() {
        program();
    }
}

fn tmp(name: &str) -> PathBuf {
    let d = Path::new(env!("CARGO_TARGET_TMPDIR")).join(name);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn chromium() -> Option<PathBuf> {
    ["/usr/bin/chromium", "/usr/bin/chromium-browser"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
}

fn browse(chromium: &Path, profile_dir: &Path, args: &[&str]) -> std::process::Output {
    Command::new(chromium)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--enable-logging=stderr",
            "--v=0",
        ])
        .arg(format!("--user-data-dir={}", profile_dir.display()))
        .args(args)
        .output()
        .expect("chromium runs")
}

#[test]
fn the_report_opens_in_a_browser() {
    if std::env::var_os("REPORT_CHILD").is_some() {
        return;
    }
    let dir = tmp("html-report");
    let page = dir.join("report.html");
    let _ = std::fs::remove_file(&page);
    let out = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "child_entry", "--nocapture"])
        .env("REPORT_CHILD", "1")
        .env("TENSORPOOL_REPORT", &page)
        .env("TENSORPOOL_PROFILE", "512K")
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let html = std::fs::read_to_string(&page).expect("the report was written at exit");
    assert!(html.starts_with("<!DOCTYPE html>") && html.trim_end().ends_with("</html>"));
    for bad in ["src=\"http", "href=\"http", "url(http", "<link", "@import"] {
        assert!(!html.contains(bad), "a network resource: {bad}");
    }
    // The whole run and one chart per request, each with its marker; the kinds with data in
    // the legend; the leaking request's KV cache under its call site.
    assert_eq!(html.matches("<svg").count(), 4, "charts");
    for n in 1..=3 {
        assert!(html.contains(&format!(">request {n}</text>")), "marker {n}");
    }
    assert!(html.contains("live kv_cache") && html.contains("live activation"));
    assert!(
        html.contains("<p class=\"huge\">Huge pages: <b>"),
        "the huge-page line"
    );
    assert!(
        !html.contains("live image_embedding"),
        "a kind with no data in the legend"
    );
    let kv = html.find("<h3>kv_cache</h3>").expect("kv_cache call sites");
    assert!(html[kv..].contains("request"), "the KV cache's site");
    // The weights are a baseline of each request's chart, not a band. (24.x: the test
    // harness's own general blocks may stay live through a request too.)
    assert_eq!(
        html.matches("above a baseline of 24.").count(),
        3,
        "{}",
        html.match_indices("above a baseline")
            .map(|(i, _)| &html[i..i + 60])
            .collect::<Vec<_>>()
            .join(" | ")
    );
    // The scopes' table: each request, with its attention scope inside.
    assert!(html.contains("<h2>Memory by scope</h2>"));
    assert_eq!(
        html.matches("<tr class=\"scope\" data-depth=\"1\">")
            .count(),
        3
    );
    assert_eq!(
        html.matches("<tr class=\"scope\" data-depth=\"2\">")
            .count(),
        3
    );
    assert!(html.contains(">attention</td>"));
    // Stacks trimmed to the program's frames; the runtime's folded.
    assert!(
        html.contains("<details class=\"trimmed\"><summary>"),
        "a trimmed run"
    );
    assert!(html.contains("of Rust's standard library</summary>"));
    // The flame graph, with the kept KV cache under its request's scope.
    assert!(html.contains("id=\"fg-search\""));
    // At the peak: the weights, request 3's KV cache and its activations and attention.
    assert!(
        html.contains("<h3>At the peak ("),
        "the flame graph at the peak"
    );
    let peak = &html[html.find("id=\"fg-peak\"").expect("the peak's graph")..];
    assert!(
        peak.contains("title=\"activation: "),
        "activations live at the peak"
    );
    assert!(html.contains("title=\"[request 3]: "), "a scope's box");

    let Some(chromium) = chromium() else {
        assert!(
            std::env::var_os("TENSORPOOL_BROWSER_TEST").is_none(),
            "TENSORPOOL_BROWSER_TEST is set but Chromium is not installed"
        );
        eprintln!("skipping the browser part: no chromium (apt-get install chromium)");
        return;
    };
    let url = format!("file://{}", page.display());
    let dom = browse(&chromium, &dir.join("profile-dom"), &["--dump-dom", &url]);
    let log = String::from_utf8_lossy(&dom.stderr);
    let dom_text = String::from_utf8_lossy(&dom.stdout);
    assert!(
        dom_text.contains("data-ready=\"1\""),
        "the page's script did not run: {log}"
    );
    let console: Vec<&str> = log.lines().filter(|l| l.contains("CONSOLE")).collect();
    assert!(
        console.iter().any(|l| l.contains("tensorpool report:")
            && l.contains("4 charts, 6 scopes")
            && !l.contains(" 0 flame boxes")
            && !l.contains(" 0 trimmed runs")),
        "{log}"
    );
    assert!(
        !console
            .iter()
            .any(|l| l.contains("Uncaught") || l.contains("Error")),
        "console errors: {console:#?}"
    );
    let png = dir.join("report.png");
    let _ = std::fs::remove_file(&png);
    let shot = browse(
        &chromium,
        &dir.join("profile-shot"),
        &[
            &format!("--screenshot={}", png.display()),
            "--window-size=1200,1600",
            "--hide-scrollbars",
            &url,
        ],
    );
    let bytes = std::fs::read(&png)
        .unwrap_or_else(|_| panic!("no screenshot: {}", String::from_utf8_lossy(&shot.stderr)));
    assert!(bytes.starts_with(b"\x89PNG"), "not a PNG");
    assert!(bytes.len() > 30_000, "a blank page? {} bytes", bytes.len());
}
