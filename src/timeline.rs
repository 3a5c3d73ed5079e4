//! The memory timeline: per-kind live and cached large-block bytes, sampled at every large-block
//! allocation and free into a fixed ring buffer, exported as CSV or as an SVG chart, with named
//! markers (`TensorPool::mark`: "request 2") drawn on the chart.
//!
//! Large blocks are the tensors, and each of their events already takes its kind's lock, so a
//! sample costs little beside it: the kind's two values are published to a per-kind mirror and
//! the mirrors are copied into the next ring slot. Small blocks are not sampled (too frequent,
//! and not where tensor memory goes). Recording allocates nothing; exporting (called by the user)
//! does. The ring and mirrors are plain process-wide statistics, not synchronisation, so they use
//! core's atomics in every build (loom has nothing to explore in them).

use crate::kind::{TensorKind, NUM_KINDS};
use core::fmt::Write as _;
use core::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering::Relaxed};

/// Samples the ring holds; older ones are overwritten.
pub const TIMELINE_CAPACITY: usize = 8192;

struct Slot {
    t_ns: AtomicU64,
    live: [AtomicU64; NUM_KINDS],
    cached: [AtomicU64; NUM_KINDS],
}

#[allow(clippy::declare_interior_mutable_const)] // templates for the static arrays below
const Z: AtomicU64 = AtomicU64::new(0);
#[allow(clippy::declare_interior_mutable_const)]
const EMPTY: Slot = Slot {
    t_ns: Z,
    live: [Z; NUM_KINDS],
    cached: [Z; NUM_KINDS],
};

static RING: [Slot; TIMELINE_CAPACITY] = [EMPTY; TIMELINE_CAPACITY];
#[cfg_attr(not(loom), link_section = ".bss.hot.tensorpool")]
static NEXT: AtomicUsize = AtomicUsize::new(0);
#[cfg_attr(not(loom), link_section = ".bss.hot.tensorpool")]
static ON: AtomicBool = AtomicBool::new(false);
#[cfg_attr(not(loom), link_section = ".bss.hot.tensorpool")]
static START_NS: AtomicU64 = AtomicU64::new(0);
#[cfg_attr(not(loom), link_section = ".bss.hot.tensorpool")]
static LIVE: [AtomicU64; NUM_KINDS] = [Z; NUM_KINDS];
/// Least time between samples (0: every event), and when the last one was taken.
#[cfg_attr(not(loom), link_section = ".bss.hot.tensorpool")]
static INTERVAL_NS: AtomicU64 = AtomicU64::new(0);
#[cfg_attr(not(loom), link_section = ".bss.hot.tensorpool")]
static LAST_NS: AtomicU64 = AtomicU64::new(0);
#[cfg_attr(not(loom), link_section = ".bss.hot.tensorpool")]
static CACHED: [AtomicU64; NUM_KINDS] = [Z; NUM_KINDS];

/// Markers the ring keeps; older ones are overwritten.
pub const MARKER_CAPACITY: usize = 64;
/// Bytes of a marker's name that are kept (longer names are cut at a character boundary).
pub const MARKER_NAME_MAX: usize = 32;

struct MarkSlot {
    t_ns: AtomicU64,
    /// The name's bytes, NUL-padded, in words (so that recording is plain atomic stores).
    name: [AtomicU64; MARKER_NAME_MAX / 8],
}

#[allow(clippy::declare_interior_mutable_const)]
const EMPTY_MARK: MarkSlot = MarkSlot {
    t_ns: Z,
    name: [Z; MARKER_NAME_MAX / 8],
};

static MARKS: [MarkSlot; MARKER_CAPACITY] = [EMPTY_MARK; MARKER_CAPACITY];
#[cfg_attr(not(loom), link_section = ".bss.hot.tensorpool")]
static MARK_NEXT: AtomicUsize = AtomicUsize::new(0);

/// Whether recording is on (one relaxed load on each large-block event).
#[inline]
pub(crate) fn enabled() -> bool {
    ON.load(Relaxed)
}

/// Start recording (clears the ring), at most one sample per `interval_ns` (0: every event).
pub(crate) fn start(interval_ns: u64) {
    NEXT.store(0, Relaxed);
    MARK_NEXT.store(0, Relaxed);
    INTERVAL_NS.store(interval_ns, Relaxed);
    let now = crate::os::now_ns();
    START_NS.store(now, Relaxed);
    LAST_NS.store(0, Relaxed);
    ON.store(true, Relaxed);
}

/// Stop recording; the samples stay.
pub(crate) fn stop() {
    ON.store(false, Relaxed);
}

/// As `record`, keeping the kind's last cached figure (an event the arena does not see).
pub(crate) fn record_live(kind: usize, live: u64) {
    record(kind, live, CACHED[kind].load(Relaxed));
}

/// Record that `kind` now has `live` (held by the program) and `cached` large-block bytes.
pub(crate) fn record(kind: usize, live: u64, cached: u64) {
    LIVE[kind].store(live, Relaxed);
    CACHED[kind].store(cached, Relaxed);
    let t = crate::os::now_ns().saturating_sub(START_NS.load(Relaxed));
    let interval = INTERVAL_NS.load(Relaxed);
    if interval > 0 {
        // One sample per interval: the first event after it elapses takes it.
        let last = LAST_NS.load(Relaxed);
        if t < last.saturating_add(interval)
            || LAST_NS
                .compare_exchange(last, t.max(1), Relaxed, Relaxed)
                .is_err()
        {
            return;
        }
    }
    let i = NEXT.fetch_add(1, Relaxed) % TIMELINE_CAPACITY;
    let s = &RING[i];
    s.t_ns.store(t, Relaxed);
    for k in 0..NUM_KINDS {
        s.live[k].store(LIVE[k].load(Relaxed), Relaxed);
        s.cached[k].store(CACHED[k].load(Relaxed), Relaxed);
    }
}

/// Put a marker named `name` (its first `MARKER_NAME_MAX` bytes) at the present moment, if
/// recording is on. Allocates nothing.
pub(crate) fn mark(name: &str) {
    if !enabled() {
        return;
    }
    let t = crate::os::now_ns().saturating_sub(START_NS.load(Relaxed));
    let mut cut = name.len().min(MARKER_NAME_MAX);
    while !name.is_char_boundary(cut) {
        cut -= 1;
    }
    let mut bytes = [0u8; MARKER_NAME_MAX];
    bytes[..cut].copy_from_slice(&name.as_bytes()[..cut]);
    let slot = &MARKS[MARK_NEXT.fetch_add(1, Relaxed) % MARKER_CAPACITY];
    slot.t_ns.store(t, Relaxed);
    for (w, chunk) in slot.name.iter().zip(bytes.chunks(8)) {
        w.store(
            u64::from_le_bytes(chunk.try_into().unwrap_or([0; 8])),
            Relaxed,
        );
    }
}

/// A named moment on the timeline.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Marker {
    /// Nanoseconds since recording started.
    pub t_ns: u64,
    /// The name given to `mark`.
    pub name: String,
}

/// One sample of the timeline.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Sample {
    /// Nanoseconds since recording started.
    pub t_ns: u64,
    /// Live large-block bytes per kind (indexed by `TensorKind::index`).
    pub live: [u64; NUM_KINDS],
    /// Cached large-block bytes per kind.
    pub cached: [u64; NUM_KINDS],
}

/// The recorded samples, oldest first (the last `TIMELINE_CAPACITY` events).
#[derive(Clone, Debug, Default)]
pub struct Timeline {
    /// The samples.
    pub samples: Vec<Sample>,
    /// Events recorded in all, including those the ring overwrote.
    pub events: usize,
    /// The markers, oldest first (the last `MARKER_CAPACITY`).
    pub markers: Vec<Marker>,
}

/// Copy the ring out. A sample being written meanwhile may mix two events' values.
pub(crate) fn snapshot() -> Timeline {
    let n = NEXT.load(Relaxed);
    let first = n.saturating_sub(TIMELINE_CAPACITY);
    let samples = (first..n)
        .map(|i| {
            let s = &RING[i % TIMELINE_CAPACITY];
            Sample {
                t_ns: s.t_ns.load(Relaxed),
                live: core::array::from_fn(|k| s.live[k].load(Relaxed)),
                cached: core::array::from_fn(|k| s.cached[k].load(Relaxed)),
            }
        })
        .collect();
    let m = MARK_NEXT.load(Relaxed);
    let markers = (m.saturating_sub(MARKER_CAPACITY)..m)
        .map(|i| {
            let slot = &MARKS[i % MARKER_CAPACITY];
            let mut bytes = [0u8; MARKER_NAME_MAX];
            for (chunk, w) in bytes.chunks_mut(8).zip(&slot.name) {
                chunk.copy_from_slice(&w.load(Relaxed).to_le_bytes());
            }
            let len = bytes
                .iter()
                .position(|&b| b == 0)
                .unwrap_or(MARKER_NAME_MAX);
            Marker {
                t_ns: slot.t_ns.load(Relaxed),
                name: String::from_utf8_lossy(&bytes[..len]).into_owned(),
            }
        })
        .collect();
    Timeline {
        samples,
        events: n,
        markers,
    }
}

/// Fill colours per kind (colour-blind-safe palette, Okabe-Ito).
const COLOURS: [&str; NUM_KINDS] = [
    "#999999", "#E69F00", "#0072B2", "#009E73", "#CC79A7", "#D55E00",
];

impl Timeline {
    /// CSV: `t_ms`, then `live_<kind>` and `cached_<kind>` for every kind, in bytes.
    pub fn to_csv(&self) -> String {
        let mut s = String::from("t_ms");
        for k in TensorKind::ALL {
            let _ = write!(s, ",live_{}", k.name());
        }
        for k in TensorKind::ALL {
            let _ = write!(s, ",cached_{}", k.name());
        }
        s.push('\n');
        for x in &self.samples {
            let _ = write!(s, "{:.3}", x.t_ns as f64 / 1e6);
            for v in x.live.iter().chain(&x.cached) {
                let _ = write!(s, ",{v}");
            }
            s.push('\n');
        }
        s
    }

    /// The samples and markers from `t0_ns` up to `t1_ns`, with times counted from `t0_ns` (one
    /// request of a run marked per request), the last sample before `t0_ns` starting it.
    pub fn between(&self, t0_ns: u64, t1_ns: u64) -> Timeline {
        let before = self.samples.iter().rev().find(|s| s.t_ns < t0_ns).copied();
        let samples = before
            .map(|s| Sample { t_ns: t0_ns, ..s })
            .into_iter()
            .chain(
                self.samples
                    .iter()
                    .filter(|s| s.t_ns >= t0_ns && s.t_ns < t1_ns)
                    .copied(),
            )
            .map(|s| Sample {
                t_ns: s.t_ns - t0_ns,
                ..s
            })
            .collect();
        let markers = self
            .markers
            .iter()
            .filter(|m| m.t_ns >= t0_ns && m.t_ns < t1_ns)
            .map(|m| Marker {
                t_ns: m.t_ns - t0_ns,
                name: m.name.clone(),
            })
            .collect();
        Timeline {
            samples,
            events: self.events,
            markers,
        }
    }

    /// An SVG chart, `width` x `height` pixels: live bytes stacked by kind over time (areas), the
    /// live + cached total as a dashed line, the markers as labelled vertical lines, labelled axes
    /// and a legend.
    pub fn to_svg(&self, title: &str, width: u32, height: u32) -> String {
        let (w, h) = (width.max(320) as f64, height.max(200) as f64);
        // The right margin holds the legend's longest label ("live image_embedding").
        let (left, right, top, bottom) = (80.0, 200.0, 40.0, 50.0);
        let (pw, ph) = (w - left - right, h - top - bottom);
        // Two samples per pixel column at most: in each bucket the one with the most live bytes,
        // so peaks survive.
        let cols = (2.0 * pw) as usize;
        if self.samples.len() > cols {
            let n = self.samples.len();
            let samples = (0..cols)
                .filter_map(|c| {
                    self.samples[c * n / cols..(c + 1) * n / cols]
                        .iter()
                        .max_by_key(|s| s.live.iter().sum::<u64>())
                        .copied()
                })
                .collect();
            let thin = Timeline {
                samples,
                events: self.events,
                markers: self.markers.clone(),
            };
            return thin.to_svg(title, width, height);
        }
        let t_max = self.samples.last().map_or(1, |s| s.t_ns.max(1)) as f64;
        let total = |s: &Sample| s.live.iter().chain(&s.cached).sum::<u64>();
        let y_max_raw = self.samples.iter().map(total).max().unwrap_or(0).max(1) as f64;
        let mib = (1u64 << 20) as f64;
        let step_mib = nice_step(y_max_raw / mib / 5.0);
        let y_max = ((y_max_raw / mib / step_mib).ceil() * step_mib).max(step_mib) * mib;
        let x = |t: u64| left + t as f64 / t_max * pw;
        let y = |b: f64| top + ph - b / y_max * ph;
        let mut s = String::new();
        let _ = write!(
            s,
            "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{w}\" height=\"{h}\" \
             viewBox=\"0 0 {w} {h}\" font-family=\"sans-serif\" font-size=\"12\">\n\
             <rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n\
             <text x=\"{}\" y=\"22\" text-anchor=\"middle\" font-size=\"15\">{}</text>\n",
            left + pw / 2.0,
            escape(title)
        );
        // Bands: every other stretch between markers shaded, so each request reads as one.
        for (i, m) in self.markers.iter().enumerate().step_by(2) {
            let x0 = x(m.t_ns.min(t_max as u64));
            let x1 = self
                .markers
                .get(i + 1)
                .map_or(left + pw, |n| x(n.t_ns.min(t_max as u64)));
            let _ = writeln!(
                s,
                "<rect x=\"{x0}\" y=\"{top}\" width=\"{}\" height=\"{ph}\" fill=\"#eef2f7\"/>",
                (x1 - x0).max(0.0)
            );
        }
        // Stacked areas, bottom kind first: each polygon runs along its top edge forwards and
        // along the previous top edge backwards (steps: a value holds until the next event).
        let n = self.samples.len();
        let mut below = vec![0u64; n];
        for (k, colour) in COLOURS.iter().enumerate() {
            if self.samples.iter().all(|x| x.live[k] == 0) {
                continue;
            }
            let tops: Vec<u64> = (0..n).map(|i| below[i] + self.samples[i].live[k]).collect();
            let mut pts = String::new();
            step_path(&mut pts, &self.samples, &tops, &x, &y, false);
            step_path(&mut pts, &self.samples, &below, &x, &y, true);
            let _ = writeln!(
                s,
                "<polygon points=\"{pts}\" fill=\"{colour}\" fill-opacity=\"0.85\" stroke=\"none\"/>"
            );
            below = tops;
        }
        let totals: Vec<u64> = self.samples.iter().map(total).collect();
        let mut pts = String::new();
        step_path(&mut pts, &self.samples, &totals, &x, &y, false);
        let _ = writeln!(
            s,
            "<polyline points=\"{pts}\" fill=\"none\" stroke=\"black\" stroke-width=\"1.2\" \
             stroke-dasharray=\"5,3\"/>"
        );
        // Markers: a thin line across the plot and the name above it.
        for m in &self.markers {
            let xx = x(m.t_ns.min(t_max as u64));
            let _ = writeln!(
                s,
                "<line x1=\"{xx}\" y1=\"{top}\" x2=\"{xx}\" y2=\"{}\" stroke=\"#444444\" \
                 stroke-width=\"0.8\"/><text x=\"{}\" y=\"{}\" font-size=\"10\" \
                 text-anchor=\"end\" transform=\"rotate(-90 {} {})\">{}</text>",
                top + ph,
                xx + 3.0,
                top + 4.0,
                xx + 3.0,
                top + 4.0,
                escape(&m.name)
            );
        }
        // Axes, ticks and labels.
        let _ = writeln!(
            s,
            "<line x1=\"{left}\" y1=\"{}\" x2=\"{}\" y2=\"{}\" stroke=\"black\"/>\n\
             <line x1=\"{left}\" y1=\"{top}\" x2=\"{left}\" y2=\"{}\" stroke=\"black\"/>",
            top + ph,
            left + pw,
            top + ph,
            top + ph
        );
        let mut v = 0.0;
        while v <= y_max / mib + 1e-9 {
            let yy = y(v * mib);
            let _ = writeln!(
                s,
                "<line x1=\"{}\" y1=\"{yy}\" x2=\"{left}\" y2=\"{yy}\" stroke=\"black\"/>\
                 <line x1=\"{left}\" y1=\"{yy}\" x2=\"{}\" y2=\"{yy}\" stroke=\"#dddddd\"/>\
                 <text x=\"{}\" y=\"{}\" text-anchor=\"end\">{}</text>",
                left - 4.0,
                left + pw,
                left - 7.0,
                yy + 4.0,
                fmt_num(v)
            );
            v += step_mib;
        }
        let t_ms = t_max / 1e6;
        let t_step = nice_step(t_ms / 6.0);
        let mut t = 0.0;
        while t <= t_ms + 1e-9 {
            let xx = left + t / t_ms * pw;
            let _ = writeln!(
                s,
                "<line x1=\"{xx}\" y1=\"{}\" x2=\"{xx}\" y2=\"{}\" stroke=\"black\"/>\
                 <text x=\"{xx}\" y=\"{}\" text-anchor=\"middle\">{}</text>",
                top + ph,
                top + ph + 4.0,
                top + ph + 18.0,
                fmt_num(t)
            );
            t += t_step;
        }
        let _ = writeln!(
            s,
            "<text x=\"{}\" y=\"{}\" text-anchor=\"middle\">time since recording started (ms)</text>\n\
             <text x=\"18\" y=\"{}\" text-anchor=\"middle\" transform=\"rotate(-90 18 {})\">\
             large-block bytes (MiB)</text>",
            left + pw / 2.0,
            h - 10.0,
            top + ph / 2.0,
            top + ph / 2.0
        );
        // Legend: the kinds drawn, top kind first, as stacked.
        let lx = left + pw + 15.0;
        let mut ly = top + 10.0;
        for k in (0..NUM_KINDS).rev() {
            if self.samples.iter().all(|x| x.live[k] == 0) {
                continue;
            }
            let _ = writeln!(
                s,
                "<rect x=\"{lx}\" y=\"{}\" width=\"14\" height=\"14\" fill=\"{}\"/>\
                 <text x=\"{}\" y=\"{}\">live {}</text>",
                ly - 11.0,
                COLOURS[k],
                lx + 20.0,
                ly,
                TensorKind::ALL[k].name()
            );
            ly += 20.0;
        }
        let _ = writeln!(
            s,
            "<line x1=\"{lx}\" y1=\"{}\" x2=\"{}\" y2=\"{}\" stroke=\"black\" \
             stroke-dasharray=\"5,3\"/><text x=\"{}\" y=\"{ly}\">live + cached</text>\n</svg>",
            ly - 4.0,
            lx + 14.0,
            ly - 4.0,
            lx + 20.0
        );
        s
    }
}

/// Append the points of a step line through `(t_i, v_i)` (reversed: from the last sample back).
fn step_path(
    out: &mut String,
    samples: &[Sample],
    v: &[u64],
    x: &impl Fn(u64) -> f64,
    y: &impl Fn(f64) -> f64,
    reverse: bool,
) {
    let n = samples.len();
    let mut push = |t: u64, b: u64| {
        let _ = write!(out, "{:.1},{:.1} ", x(t), y(b as f64));
    };
    if !reverse {
        for i in 0..n {
            if i > 0 {
                push(samples[i].t_ns, v[i - 1]);
            }
            push(samples[i].t_ns, v[i]);
        }
    } else {
        for i in (0..n).rev() {
            push(samples[i].t_ns, v[i]);
            if i > 0 {
                push(samples[i].t_ns, v[i - 1]);
            }
        }
    }
}

/// A round axis step (1, 2 or 5 times a power of ten) near `raw`.
fn nice_step(raw: f64) -> f64 {
    if raw <= 0.0 || !raw.is_finite() {
        return 1.0;
    }
    // The largest power of ten not above `raw`, by steps (libm's `log10` and `pow` cost the
    // preload library a dependency; see `fmath`).
    let mut p = 1.0;
    while p * 10.0 <= raw {
        p *= 10.0;
    }
    while p > raw {
        p /= 10.0;
    }
    let m = raw / p;
    p * if m <= 1.0 {
        1.0
    } else if m <= 2.0 {
        2.0
    } else if m <= 5.0 {
        5.0
    } else {
        10.0
    }
}

fn fmt_num(v: f64) -> String {
    if (v - v.round()).abs() < 1e-9 {
        format!("{}", v.round() as i64)
    } else {
        format!("{v:.1}")
    }
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn steps_are_round() {
        assert_eq!(nice_step(0.7), 1.0);
        assert_eq!(nice_step(1.7), 2.0);
        assert_eq!(nice_step(37.0), 50.0);
        assert_eq!(nice_step(0.0), 1.0);
        assert_eq!(nice_step(10.0), 10.0);
        assert_eq!(nice_step(4096.0), 5000.0);
        assert_eq!(nice_step(7.3e9), 1e10);
        assert!((nice_step(0.0031) - 0.005).abs() < 1e-15);
    }
}
