//! A snapshot of the scopes and their bytes, as a value, a table and JSON.

use super::{COUNTS, INC_LIVE, INC_PEAK, NEXT, NODES, OWN_LIVE, OWN_PEAK, SCOPE_NAME_MAX};
use crate::kind::{TensorKind, NUM_KINDS};
use core::fmt::{self, Write as _};
use core::sync::atomic::Ordering::Acquire;

/// Large-block bytes of one scope, live now and at their peak, per kind (indexed by
/// `TensorKind::index`) and in total (the peak of the sum, not the sum of the peaks).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ScopeBytes {
    /// Live bytes per kind.
    pub live: [u64; NUM_KINDS],
    /// Most live bytes per kind since the start (or the last `reset_scope_peaks`).
    pub peak: [u64; NUM_KINDS],
    /// Live bytes of every kind.
    pub live_total: u64,
    /// Most live bytes of every kind together.
    pub peak_total: u64,
}

impl ScopeBytes {
    fn read(c: &[crate::sync::SharedStat], live: usize, peak: usize) -> Self {
        Self {
            live: core::array::from_fn(|k| c[live + k].get()),
            peak: core::array::from_fn(|k| c[peak + k].get()),
            live_total: c[live + super::ALL].get(),
            peak_total: c[peak + super::ALL].get(),
        }
    }

    /// The kind with the highest peak (the general kind if none).
    pub fn main_kind(&self) -> TensorKind {
        let k = (0..NUM_KINDS).max_by_key(|&k| (self.peak[k], NUM_KINDS - k));
        TensorKind::from_index(k.unwrap_or(0)).unwrap_or_default()
    }
}

/// One scope: where it sits in the tree and its bytes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ScopeStats {
    /// The scope's id (stable for the process's life; a parent's is smaller than its
    /// children's).
    pub id: usize,
    /// The enclosing scope's id, `None` at the top.
    pub parent: Option<usize>,
    /// The name it was entered with (its first `SCOPE_NAME_MAX` bytes).
    pub name: String,
    /// The names from the outermost scope in, joined by `/`.
    pub path: String,
    /// 1 at the top.
    pub depth: usize,
    /// Blocks allocated while this scope was the innermost.
    pub own: ScopeBytes,
    /// Blocks allocated in this scope or any inside it.
    pub inclusive: ScopeBytes,
}

/// Every scope the process has entered, in order of first entry (parents before children),
/// with the large live bytes allocated outside all of them.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Scopes {
    /// The scopes.
    pub scopes: Vec<ScopeStats>,
    /// Large-block bytes the program holds (every kind; what the statistics call live, less
    /// the thread caches).
    pub large_live: u64,
    /// Of those, bytes allocated outside every scope.
    pub outside_live: u64,
    /// Scope entries refused (a full table, scopes nested too deep).
    pub refused: usize,
}

impl Scopes {
    /// The scope with this path (`"model/model.layers.0"`), if entered.
    pub fn get(&self, path: &str) -> Option<&ScopeStats> {
        self.scopes.iter().find(|s| s.path == path)
    }

    /// The scopes entered under this name, under whatever parent.
    pub fn named<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a ScopeStats> + 'a {
        self.scopes.iter().filter(move |s| s.name == name)
    }

    /// The top-level scopes.
    pub fn roots(&self) -> impl Iterator<Item = &ScopeStats> {
        self.scopes.iter().filter(|s| s.parent.is_none())
    }

    /// One JSON object: `{"large_live", "outside_live", "refused", "scopes": [{"id", "parent",
    /// "name", "path", "depth", "own": {...}, "inclusive": {...}}]}`, where each bytes object is
    /// `{"live": {kind: bytes}, "peak": {kind: bytes}, "live_total", "peak_total"}` (kinds with
    /// no bytes ever left out).
    pub fn to_json(&self) -> String {
        let mut out = String::new();
        let _ = write!(
            out,
            "{{\"large_live\":{},\"outside_live\":{},\"refused\":{},\"scopes\":[",
            self.large_live, self.outside_live, self.refused
        );
        for (i, s) in self.scopes.iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            let _ = write!(out, "{{\"id\":{},\"parent\":", s.id);
            match s.parent {
                Some(p) => {
                    let _ = write!(out, "{p}");
                }
                None => out.push_str("null"),
            }
            out.push_str(",\"name\":");
            crate::text::json_str(&mut out, &s.name);
            out.push_str(",\"path\":");
            crate::text::json_str(&mut out, &s.path);
            let _ = write!(out, ",\"depth\":{},\"own\":", s.depth);
            bytes_json(&mut out, &s.own);
            out.push_str(",\"inclusive\":");
            bytes_json(&mut out, &s.inclusive);
            out.push('}');
        }
        out.push_str("]}");
        out
    }
}

fn bytes_json(out: &mut String, b: &ScopeBytes) {
    for (i, (key, v)) in [("live", &b.live), ("peak", &b.peak)]
        .into_iter()
        .enumerate()
    {
        out.push_str(if i == 0 { "{" } else { "," });
        let _ = write!(out, "\"{key}\":{{");
        let mut first = true;
        for k in TensorKind::ALL {
            if b.peak[k.index()] == 0 {
                continue;
            }
            if !first {
                out.push(',');
            }
            first = false;
            let _ = write!(out, "\"{}\":{}", k.name(), v[k.index()]);
        }
        out.push('}');
    }
    let _ = write!(
        out,
        ",\"live_total\":{},\"peak_total\":{}}}",
        b.live_total, b.peak_total
    );
}

/// The table: one row per scope, indented by depth, with its main kind, own and inclusive
/// peaks and live bytes.
impl fmt::Display for Scopes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        use crate::text::Bytes;
        writeln!(
            f,
            "{:<48} {:<16} {:>10} {:>10} {:>10} {:>10}",
            "scope", "main kind", "own peak", "incl peak", "own live", "incl live"
        )?;
        for s in &self.scopes {
            let mut name = String::new();
            for _ in 1..s.depth {
                name.push_str("  ");
            }
            name.push_str(&s.name);
            writeln!(
                f,
                "{:<48} {:<16} {:>10} {:>10} {:>10} {:>10}",
                name,
                s.inclusive.main_kind().name(),
                Bytes(s.own.peak_total).to_string(),
                Bytes(s.inclusive.peak_total).to_string(),
                Bytes(s.own.live_total).to_string(),
                Bytes(s.inclusive.live_total).to_string(),
            )?;
        }
        writeln!(
            f,
            "{:<48} {:<16} {:>10} {:>10} {:>10} {:>10}",
            "(outside every scope)",
            "",
            "",
            "",
            "",
            Bytes(self.outside_live).to_string()
        )?;
        if self.refused > 0 {
            writeln!(
                f,
                "({} scope entries refused: see SCOPE_CAPACITY)",
                self.refused
            )?;
        }
        Ok(())
    }
}

/// Every scope now; `large_live` is the process's large live bytes (every kind), from which
/// the bytes outside every scope follow. Allocates.
pub(crate) fn snapshot(large_live: u64) -> Scopes {
    let n = NEXT.load(Acquire);
    let mut scopes: Vec<ScopeStats> = Vec::with_capacity(n.saturating_sub(1));
    let mut paths: Vec<String> = Vec::with_capacity(n);
    paths.push(String::new());
    for id in 1..n {
        let node = &NODES[id];
        let mut buf = [0u8; SCOPE_NAME_MAX];
        let len = node.name_into(&mut buf);
        let name = String::from_utf8_lossy(&buf[..len]).into_owned();
        let parent = node.parent();
        let path = if parent == 0 {
            name.clone()
        } else {
            format!("{}/{}", paths[parent], name)
        };
        paths.push(path.clone());
        let c = &COUNTS[id];
        scopes.push(ScopeStats {
            id,
            parent: (parent != 0).then_some(parent),
            name,
            path,
            depth: node.depth(),
            own: ScopeBytes::read(c, OWN_LIVE, OWN_PEAK),
            inclusive: ScopeBytes::read(c, INC_LIVE, INC_PEAK),
        });
    }
    let top: u64 = scopes
        .iter()
        .filter(|s| s.parent.is_none())
        .map(|s| s.inclusive.live_total)
        .sum();
    Scopes {
        scopes,
        large_live,
        outside_live: large_live.saturating_sub(top),
        refused: super::refused(),
    }
}

/// The path of scope `id` (names from the outermost in, joined by `/`; empty for 0).
pub(crate) fn path_of(id: usize) -> String {
    let mut names = Vec::new();
    let mut n = id;
    while n != 0 && n < NEXT.load(Acquire) {
        let mut buf = [0u8; SCOPE_NAME_MAX];
        let len = NODES[n].name_into(&mut buf);
        names.push(String::from_utf8_lossy(&buf[..len]).into_owned());
        n = NODES[n].parent();
    }
    names.reverse();
    names.join("/")
}
