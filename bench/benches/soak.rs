//! The long run: a server-like soak. Two threads each serve requests of random sizes (an image
//! and a prompt per request: a small vision encoder, then a text decoder's prefill and decode),
//! with every tensor written one byte per page, KV caches held as `Vec`s grown with
//! `reserve_exact` as decoding goes (so they grow by `realloc`), and small strings and maps on the
//! side (a per-request vocabulary map, log lines kept for the last 200 requests). Every 25
//! requests a sample records the mapping count, resident memory, the workload's live bytes, its
//! peak so far, and (under tensorpool) the arena's cached bytes.
//!
//! Each configuration (`tensorpool_bench::Config`) runs in a child process of its own, whose
//! global allocator is the one under test; tensorpool runs tagged (every tensor under its kind)
//! and untagged. After the requests, the child idles for twice tensorpool's decay time with no
//! allocator call and samples again, then makes one allocation (decay advances on calls) and
//! samples a last time.
//!
//! Run: `cargo bench -p tensorpool-bench --bench soak` (`-- --requests N`, `-- --allocs a,b`,
//! `-- --svg PATH` to chart tensorpool's samples, with the others' resident memory for
//! comparison).

use std::alloc::{alloc, dealloc, Layout};
use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::sync::Mutex;
use std::time::{Duration, Instant};
use tensorpool::{with_kind, TensorKind};
use tensorpool_bench::{
    arg_after, mappings, minor_faults, rss, run_child, Config, Rng, Switch, TP,
};

#[global_allocator]
static GLOBAL: Switch = Switch;

const DEFAULT_REQUESTS: usize = 3000;
const THREADS: usize = 2;
const SAMPLE_EVERY: usize = 25;
const ALLOCS: [&str; 6] = [
    "tensorpool",
    "tensorpool-untagged",
    "system",
    "mimalloc",
    "jemalloc",
    "jemalloc-nodecay",
];

/// Model dimensions (bf16).
const ELEM: usize = 2;
const VISION_LAYERS: usize = 2;
const VISION_WIDTH: usize = 1280;
const VISION_HEADS: usize = 16;
const TEXT_LAYERS: usize = 8;
const WIDTH: usize = 2048;
const HEADS: usize = 16;
const MLP: usize = 5632;
/// Tokens a KV cache grows by when it is full (`reserve_exact`).
const KV_GROW: usize = 16;

/// Tensor bytes the workload holds, and the most it has held.
static LIVE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);
static DONE: AtomicUsize = AtomicUsize::new(0);

fn tagged() -> bool {
    static TAGGED: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *TAGGED.get_or_init(|| GLOBAL.name() == "tensorpool" && !Config::untagged())
}

fn held(bytes: usize) {
    let now = LIVE.fetch_add(bytes, Relaxed) + bytes;
    PEAK.fetch_max(now, Relaxed);
}

fn released(bytes: usize) {
    LIVE.fetch_sub(bytes, Relaxed);
}

/// An activation, attention or embedding tensor: allocated under its kind when tagged, one byte
/// written per page, freed on drop.
struct T {
    p: *mut u8,
    l: Layout,
}

impl T {
    fn new(kind: TensorKind, dims: &[usize]) -> T {
        let bytes = dims.iter().product::<usize>() * ELEM;
        let l = Layout::from_size_align(bytes.max(1), 64).unwrap();
        // SAFETY: a non-zero layout.
        let p = if tagged() {
            with_kind(kind, || unsafe { alloc(l) })
        } else {
            unsafe { alloc(l) }
        };
        assert!(!p.is_null(), "out of memory");
        for off in (0..bytes).step_by(4096) {
            // SAFETY: inside the block.
            unsafe { p.add(off).write_volatile(off as u8) };
        }
        held(bytes);
        T { p, l }
    }
}

impl Drop for T {
    fn drop(&mut self) {
        // Check a byte per 64 KiB: nobody else was handed the block.
        for off in (0..self.l.size()).step_by(64 << 10) {
            // SAFETY: written above, inside the block.
            assert_eq!(unsafe { self.p.add(off).read_volatile() }, off as u8);
        }
        released(self.l.size());
        // SAFETY: allocated with this layout.
        unsafe { dealloc(self.p, self.l) };
    }
}

/// One layer's KV cache: keys and values as byte vectors, grown with `reserve_exact`.
struct Kv {
    k: Vec<u8>,
    v: Vec<u8>,
}

impl Kv {
    fn new(tokens: usize) -> Kv {
        let bytes = tokens * WIDTH * ELEM;
        let make = || {
            let mut v: Vec<u8> = Vec::with_capacity(bytes);
            v.resize(bytes, 1);
            v
        };
        let (k, v) = if tagged() {
            with_kind(TensorKind::KvCache, || (make(), make()))
        } else {
            (make(), make())
        };
        held(k.capacity() + v.capacity());
        Kv { k, v }
    }

    /// Append one token, growing by `KV_GROW` tokens when full (outside any kind scope: a block
    /// keeps its kind when it grows).
    fn push(&mut self) {
        let t = WIDTH * ELEM;
        for c in [&mut self.k, &mut self.v] {
            if c.len() + t > c.capacity() {
                let before = c.capacity();
                c.reserve_exact(KV_GROW * t);
                held(c.capacity() - before);
            }
            let n = c.len();
            c.resize(n + t, 2);
        }
    }
}

impl Drop for Kv {
    fn drop(&mut self) {
        released(self.k.capacity() + self.v.capacity());
    }
}

/// A pre-norm transformer block over `n` rows attending to `ctx` positions.
fn block(n: usize, ctx: usize, width: usize, heads: usize, mlp: usize) {
    use TensorKind::{Activation as Act, Attention as Att};
    let ln = T::new(Act, &[n, width]);
    let q = T::new(Act, &[n, width]);
    let k = T::new(Act, &[n, width]);
    let v = T::new(Act, &[n, width]);
    drop(ln);
    let scores = T::new(Att, &[heads, n, ctx]);
    drop(q);
    let probs = T::new(Att, &[heads, n, ctx]);
    drop(scores);
    let attn = T::new(Act, &[n, width]);
    drop((probs, k, v));
    let o = T::new(Act, &[n, width]);
    drop(attn);
    let up = T::new(Act, &[n, mlp]);
    let gate = T::new(Act, &[n, mlp]);
    let act = T::new(Act, &[n, mlp]);
    drop((up, gate));
    let down = T::new(Act, &[n, width]);
    drop((act, o, down));
}

/// One request with sizes drawn from `rng`; returns a log line.
fn request(id: usize, rng: &mut Rng, logs: &mut Vec<String>) {
    let patches = 64 + 16 * rng.below(61); // 64..=1024
    let prompt = 64 + rng.below(961); // 64..=1024
    let decode = 16 + rng.below(113); // 16..=128
                                      // Vision encoder.
    let image = {
        let _pixels = T::new(TensorKind::ImageEmbedding, &[patches, 588]);
        for _ in 0..VISION_LAYERS {
            block(
                patches,
                patches,
                VISION_WIDTH,
                VISION_HEADS,
                4 * VISION_WIDTH,
            );
        }
        T::new(TensorKind::ImageEmbedding, &[patches / 4, WIDTH])
    };
    // Text prefill, building the KV caches.
    let n = prompt + patches / 4;
    let embeds = T::new(TensorKind::TextEmbedding, &[n, WIDTH]);
    let mut kv: Vec<Kv> = (0..TEXT_LAYERS).map(|_| Kv::new(n)).collect();
    for _ in 0..TEXT_LAYERS {
        block(n, n, WIDTH, HEADS, MLP);
    }
    // Decode: one token at a time, each layer's cache growing.
    let mut vocab: HashMap<String, u32> = HashMap::new();
    for step in 0..decode {
        for c in kv.iter_mut() {
            c.push();
            block(1, n + step + 1, WIDTH, HEADS, MLP);
        }
        *vocab.entry(format!("tok{}", rng.below(500))).or_insert(0) += 1;
    }
    drop((kv, embeds, image));
    let mut line = format!("request {id}: {patches} patches, {prompt} tokens, {decode} decoded;");
    for (w, c) in vocab.iter().take(8) {
        let _ = write!(line, " {w}={c}");
    }
    logs.push(line);
    if logs.len() > 200 / THREADS {
        logs.remove(0);
    }
}

#[derive(Clone, Copy)]
struct Sample {
    requests: usize,
    maps: u64,
    rss: u64,
    live: u64,
    peak: u64,
    cached: u64,
    /// tensorpool's huge-page coverage of its arena, per mille (`/proc/self/smaps`); 0 for the
    /// others.
    huge: u64,
}

fn sample(requests: usize) -> Sample {
    let (cached, huge) = if GLOBAL.name() == "tensorpool" {
        let cov = TP.huge_page_coverage().and_then(|c| c.coverage());
        (
            TP.arena_counters().dirty_bytes,
            cov.map_or(0, |c| (c * 1000.0).round() as u64),
        )
    } else {
        (0, 0)
    };
    Sample {
        requests,
        maps: mappings(),
        rss: rss(),
        live: LIVE.load(Relaxed) as u64,
        peak: PEAK.load(Relaxed) as u64,
        cached,
        huge,
    }
}

/// The child: run the soak, print samples (`S requests maps rss live peak cached`) and a
/// `RESULT` line.
fn child(requests: usize) {
    let samples = Mutex::new(Vec::new());
    samples.lock().unwrap().push(sample(0));
    let f0 = minor_faults();
    let t0 = Instant::now();
    std::thread::scope(|s| {
        for t in 0..THREADS {
            let samples = &samples;
            s.spawn(move || {
                let mut rng = Rng(0x50a4 + t as u64 * 0x9e37_79b9);
                let mut logs = Vec::new();
                loop {
                    let id = DONE.fetch_add(1, Relaxed);
                    if id >= requests {
                        DONE.fetch_sub(1, Relaxed);
                        break;
                    }
                    request(id, &mut rng, &mut logs);
                    if (id + 1) % SAMPLE_EVERY == 0 {
                        let s = sample(id + 1);
                        samples.lock().unwrap().push(s);
                    }
                }
                assert!(logs.iter().all(|l| l.starts_with("request")));
            });
        }
    });
    let secs = t0.elapsed().as_secs_f64();
    let faults = minor_faults() - f0;
    let done = sample(requests);
    // Idle: no allocator call for twice tensorpool's decay time.
    let decay = TP.decay_ms().max(0) as u64;
    std::thread::sleep(Duration::from_millis(2 * decay.max(500)));
    let idle = sample(requests);
    // One ordinary allocation: decay advances on allocator calls.
    drop(T::new(TensorKind::General, &[1 << 20]));
    let called = sample(requests);
    let mut out = String::new();
    let mut all = samples.into_inner().unwrap();
    all.sort_by_key(|s| s.requests);
    for s in &all {
        let _ = writeln!(
            out,
            "S {} {} {} {} {} {} {}",
            s.requests, s.maps, s.rss, s.live, s.peak, s.cached, s.huge
        );
    }
    let _ = writeln!(
        out,
        "RESULT {secs:.3} {faults} {} {} {} {} {} {} {} {}",
        done.rss, done.live, idle.rss, idle.live, called.rss, called.live, done.maps, done.peak
    );
    print!("{out}");
}

struct Run {
    samples: Vec<Sample>,
    secs: f64,
    faults: u64,
    end_rss: u64,
    idle_rss: u64,
    idle_live: u64,
    called_rss: u64,
    called_live: u64,
    peak: u64,
}

fn parse(out: &str) -> Run {
    let mut samples = Vec::new();
    let mut res = None;
    for l in out.lines() {
        let f: Vec<&str> = l.split_whitespace().collect();
        let n = |i: usize| f[i].parse::<u64>().unwrap();
        match f.first() {
            Some(&"S") => samples.push(Sample {
                requests: n(1) as usize,
                maps: n(2),
                rss: n(3),
                live: n(4),
                peak: n(5),
                cached: n(6),
                huge: n(7),
            }),
            Some(&"RESULT") => res = Some(f),
            _ => {}
        }
    }
    let f = res.expect("no RESULT line");
    let n = |i: usize| f[i].parse::<u64>().unwrap();
    Run {
        samples,
        secs: f[1].parse().unwrap(),
        faults: n(2),
        end_rss: n(3),
        idle_rss: n(5),
        idle_live: n(6),
        called_rss: n(7),
        called_live: n(8),
        peak: n(10),
    }
}

const MIB: f64 = 1048576.0;

fn report(name: &str, r: &Run) {
    let warm = r.samples.len() / 10;
    let base_maps = r.samples.get(warm).map_or(0, |s| s.maps);
    let max_maps = r.samples[warm..].iter().map(|s| s.maps).max().unwrap_or(0);
    let base_rss = r.samples.get(warm).map_or(0, |s| s.rss);
    let late_rss = r.samples[r.samples.len() * 9 / 10..]
        .iter()
        .map(|s| s.rss)
        .max()
        .unwrap_or(0);
    let max_rss = r.samples.iter().map(|s| s.rss).max().unwrap_or(0);
    let ratio = r
        .samples
        .iter()
        .filter(|s| s.peak > 0)
        .map(|s| s.rss as f64 / s.peak as f64)
        .fold(0.0, f64::max);
    // Huge-page coverage after the warm-up: its lowest and its mean, in percent.
    let cov: Vec<f64> = r.samples[warm..]
        .iter()
        .filter(|s| s.huge > 0)
        .map(|s| s.huge as f64 / 10.0)
        .collect();
    let huge = if cov.is_empty() {
        "-".to_string()
    } else {
        format!(
            "{:.0}/{:.0}%",
            cov.iter().copied().fold(f64::INFINITY, f64::min),
            cov.iter().sum::<f64>() / cov.len() as f64
        )
    };
    println!(
        "{name:<20} {:>7.1} {:>9} {:>6}->{:<6} {:>7.0}->{:<7.0} {:>8.0} {:>8.0} {:>6.3} {:>9.0} {:>9.0} {huge:>9}",
        r.secs,
        r.faults,
        base_maps,
        max_maps,
        base_rss as f64 / MIB,
        late_rss as f64 / MIB,
        max_rss as f64 / MIB,
        r.peak as f64 / MIB,
        ratio,
        (r.idle_rss.saturating_sub(r.idle_live)) as f64 / MIB,
        (r.called_rss.saturating_sub(r.called_live)) as f64 / MIB,
    );
    let _ = r.end_rss;
}

/// An SVG chart of tensorpool's samples (resident, live, peak live so far, cached; mappings on
/// the right axis) with the other allocators' resident memory in grey.
fn svg(runs: &[(String, Run)]) -> String {
    let (w, h) = (900.0, 420.0);
    let (l, r, t, b) = (70.0, 70.0, 40.0, 60.0);
    let Some((tp_name, tp)) = runs.iter().find(|(n, _)| n.starts_with("tensorpool")) else {
        return String::new();
    };
    let max_req = tp.samples.last().map_or(1, |s| s.requests).max(1) as f64;
    let max_mib = runs
        .iter()
        .flat_map(|(_, r)| r.samples.iter().map(|s| s.rss.max(s.peak)))
        .max()
        .unwrap_or(1) as f64
        / MIB
        * 1.1;
    // The right axis holds the mapping count and the huge-page coverage in percent.
    let max_maps = runs
        .iter()
        .flat_map(|(_, r)| r.samples.iter().map(|s| s.maps))
        .max()
        .unwrap_or(1)
        .max(100) as f64
        * 1.1;
    let x = |req: usize| l + (w - l - r) * req as f64 / max_req;
    let y = |mib: f64| h - b - (h - t - b) * mib / max_mib;
    let ym = |m: f64| h - b - (h - t - b) * m / max_maps;
    let mut s = String::new();
    let _ = write!(
        s,
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{w}\" height=\"{h}\" \
         font-family=\"sans-serif\" font-size=\"12\">\n<rect width=\"100%\" height=\"100%\" \
         fill=\"white\"/>\n<text x=\"{l}\" y=\"22\" font-size=\"14\">Soak: {} requests, {THREADS} \
         threads, random sizes ({tp_name}; others' resident memory in grey)</text>\n",
        max_req as usize
    );
    // Axes and grid.
    for i in 0..=5 {
        let v = max_mib * i as f64 / 5.0;
        let yy = y(v);
        let _ = writeln!(
            s,
            "<line x1=\"{l}\" x2=\"{}\" y1=\"{yy:.1}\" y2=\"{yy:.1}\" stroke=\"#eee\"/>\
             <text x=\"{}\" y=\"{:.1}\" text-anchor=\"end\">{v:.0} MiB</text>\
             <text x=\"{}\" y=\"{:.1}\">{:.0}</text>",
            w - r,
            l - 6.0,
            yy + 4.0,
            w - r + 6.0,
            yy + 4.0,
            max_maps * i as f64 / 5.0
        );
    }
    for i in 0..=5 {
        let req = (max_req * i as f64 / 5.0) as usize;
        let _ = writeln!(
            s,
            "<text x=\"{:.1}\" y=\"{}\" text-anchor=\"middle\">{req}</text>",
            x(req),
            h - b + 18.0
        );
    }
    let _ = writeln!(
        s,
        "<text x=\"{:.1}\" y=\"{}\" text-anchor=\"middle\">requests served</text>\
         <text x=\"{}\" y=\"{:.1}\" text-anchor=\"end\" transform=\"rotate(-90 {} {:.1})\">\
         mappings, huge pages %</text>",
        (l + w - r) / 2.0,
        h - b + 36.0,
        w - 14.0,
        t + 10.0,
        w - 14.0,
        t + 10.0
    );
    let path = |pts: &mut dyn Iterator<Item = (f64, f64)>| -> String {
        let mut d = String::new();
        for (i, (px, py)) in pts.enumerate() {
            let _ = write!(d, "{}{px:.1},{py:.1}", if i == 0 { "M" } else { " L" });
        }
        d
    };
    for (name, run) in runs {
        if name == tp_name {
            continue;
        }
        let d = path(
            &mut run
                .samples
                .iter()
                .map(|p| (x(p.requests), y(p.rss as f64 / MIB))),
        );
        let _ = writeln!(
            s,
            "<path d=\"{d}\" fill=\"none\" stroke=\"#bbb\" stroke-width=\"1\"><title>{name} resident</title></path>"
        );
    }
    type Series = (&'static str, &'static str, &'static str, fn(&Sample) -> f64);
    let series: [Series; 6] = [
        ("resident", "#d62728", "", |p| p.rss as f64 / MIB),
        ("live", "#1f77b4", "", |p| p.live as f64 / MIB),
        ("peak live so far", "#1f77b4", "4 3", |p| {
            p.peak as f64 / MIB
        }),
        ("cached (dirty)", "#2ca02c", "", |p| p.cached as f64 / MIB),
        ("mappings (right)", "#9467bd", "", |p| p.maps as f64),
        ("huge pages % (right)", "#ff7f0e", "2 2", |p| {
            p.huge as f64 / 10.0
        }),
    ];
    for (i, (label, colour, dash, f)) in series.iter().enumerate() {
        let maps = i >= 4;
        let d = path(
            &mut tp
                .samples
                .iter()
                .map(|p| (x(p.requests), if maps { ym(f(p)) } else { y(f(p)) })),
        );
        let _ = writeln!(
            s,
            "<path d=\"{d}\" fill=\"none\" stroke=\"{colour}\" stroke-width=\"1.5\" \
             stroke-dasharray=\"{dash}\"/>"
        );
        let lx = l + 10.0 + 134.0 * i as f64;
        let _ = writeln!(
            s,
            "<line x1=\"{lx}\" x2=\"{}\" y1=\"{}\" y2=\"{}\" stroke=\"{colour}\" \
             stroke-width=\"2\" stroke-dasharray=\"{dash}\"/><text x=\"{}\" y=\"{}\">{label}</text>",
            lx + 18.0,
            h - 12.0,
            h - 12.0,
            lx + 22.0,
            h - 8.0
        );
    }
    s.push_str("</svg>\n");
    s
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let requests: usize =
        arg_after(&args, "--requests").map_or(DEFAULT_REQUESTS, |r| r.parse().unwrap());
    if args.iter().any(|a| a == "--child") {
        child(requests);
        return;
    }
    if args.iter().any(|a| a == "--list") {
        return;
    }
    let allocs: Vec<String> = arg_after(&args, "--allocs")
        .map_or(ALLOCS.iter().map(|a| a.to_string()).collect(), |a| {
            a.split(',').map(str::to_string).collect()
        });
    println!(
        "soak: {requests} requests over {THREADS} threads, random image and prompt sizes; one byte \
         written per page; samples every {SAMPLE_EVERY} requests"
    );
    println!(
        "{:<20} {:>7} {:>9} {:>13} {:>15} {:>8} {:>8} {:>6} {:>9} {:>9} {:>9}",
        "allocator",
        "secs",
        "faults",
        "maps warm->max",
        "RSS warm->late",
        "max RSS",
        "peak",
        "RSS/pk",
        "idle-live",
        "call-live",
        "huge min/mean"
    );
    let mut runs = Vec::new();
    for name in &allocs {
        let r = parse(&run_child(
            name,
            &["--child", "--requests", &requests.to_string()],
        ));
        report(name, &r);
        runs.push((name.clone(), r));
    }
    println!(
        "maps: /proc/self/maps lines after the first tenth of the requests and their maximum \
         after; RSS warm->late: resident MiB then and the maximum over the last tenth; RSS/pk: \
         the largest ratio of resident memory to the peak of live tensor bytes so far, over all \
         samples; idle-live / call-live: resident minus live MiB after an idle wait of twice the \
         decay time, and after one more allocation; huge: tensorpool's arena on huge pages \
         (AnonHugePages / Rss of its mappings), lowest and mean over the samples after the first \
         tenth"
    );
    if let Some(path) = arg_after(&args, "--svg") {
        // `cargo bench` runs benches in their package's directory: a relative path is taken
        // from the workspace's root.
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("..")
            .join(path);
        std::fs::write(&path, svg(&runs)).unwrap();
        println!("chart written to {}", path.display());
    }
}
