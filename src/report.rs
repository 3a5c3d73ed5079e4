//! The memory report as one self-contained HTML page (`TensorPool::write_html`,
//! `TENSORPOOL_REPORT=path.html` at exit, `tensorpool_write_report` from C): the timeline chart
//! of the whole run with its markers and bands, one chart per marked stretch (a request) so
//! that every request is readable, the per-kind statistics table, and the top live call sites
//! per kind from the profile, each of which opens (click) or shows in a tooltip (hover) its
//! stack. No network resource: the charts are inline SVG, the style and the script inline.

use crate::kind::TensorKind;
use crate::profile::Profile;
use crate::stats::Stats;
use crate::text::Bytes;
use crate::timeline::Timeline;
use core::fmt::Write;

/// Call sites shown per kind.
const TOP_SITES: usize = 10;

/// The page for `title` (the program, say) from the three snapshots.
pub(crate) fn html(title: &str, stats: &Stats, timeline: &Timeline, profile: &Profile) -> String {
    let mut s = String::new();
    let _ = write!(
        s,
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <title>tensorpool memory report: {t}</title>\n<style>{STYLE}</style></head>\n\
         <body data-ready=\"0\">\n<h1>tensorpool memory report: {t}</h1>\n",
        t = esc(title)
    );
    timeline_section(&mut s, timeline);
    table_section(&mut s, stats);
    profile_section(&mut s, profile);
    let _ = write!(s, "<script>{SCRIPT}</script>\n</body></html>\n");
    s
}

fn timeline_section(s: &mut String, t: &Timeline) {
    s.push_str("<h2>Timeline</h2>\n");
    if t.samples.is_empty() {
        s.push_str(
            "<p class=\"note\">No timeline was recorded (<code>TENSORPOOL_TIMELINE=1</code>, or \
             <code>start_timeline()</code>).</p>\n",
        );
        return;
    }
    let _ = writeln!(
        s,
        "<p class=\"note\">Live large-block bytes stacked by kind; the dashed line is live + \
         cached. {} events, {} samples, {} markers.</p>\n<div class=\"chart\">{}</div>",
        t.events,
        t.samples.len(),
        t.markers.len(),
        t.to_svg("the whole run", 1100, 420)
    );
    if t.markers.is_empty() {
        return;
    }
    s.push_str("<h3>Each marked stretch</h3>\n");
    let end = t.samples.last().map_or(0, |x| x.t_ns) + 1;
    for (i, m) in t.markers.iter().enumerate() {
        let until = t.markers.get(i + 1).map_or(end, |n| n.t_ns.max(m.t_ns + 1));
        let part = t.between(m.t_ns, until);
        if part.samples.len() < 2 {
            continue;
        }
        let _ = writeln!(
            s,
            "<div class=\"chart\">{}</div>",
            part.to_svg(&m.name, 1100, 300)
        );
    }
}

fn table_section(s: &mut String, st: &Stats) {
    s.push_str(
        "<h2>Pools</h2>\n<table class=\"pools\"><thead><tr><th>kind</th><th>requests</th>\
         <th>hit rate</th><th>live</th><th>cached</th><th>hot</th><th>peak live</th>\
         <th>returned</th></tr></thead><tbody>\n",
    );
    for (k, p) in TensorKind::ALL.iter().zip(&st.kinds) {
        let hit = p
            .hit_rate()
            .map_or_else(|| "-".to_string(), |h| format!("{:.1}%", h * 100.0));
        let _ = writeln!(
            s,
            "<tr><td>{}</td><td>{}</td><td>{hit}</td><td>{}</td><td>{}</td><td>{}</td>\
             <td>{}</td><td>{}</td></tr>",
            k.name(),
            p.requests,
            Bytes(p.live_bytes),
            Bytes(p.cached_bytes),
            Bytes(p.hot_bytes),
            Bytes(p.peak_live_bytes),
            Bytes(p.evicted_bytes)
        );
    }
    s.push_str("</tbody></table>\n");
    let a = &st.arena;
    let _ = write!(
        s,
        "<p class=\"huge\">Huge pages: <b>{}</b>",
        if a.huge_pages { "on" } else { "off" }
    );
    if let Some(h) = st.huge_pages {
        let _ = write!(
            s,
            "; {} of the arena's {} resident on huge pages",
            Bytes(h.huge_bytes),
            Bytes(h.resident_bytes)
        );
        if let Some(c) = h.coverage() {
            let _ = write!(s, " (<b>{:.1}%</b>)", c * 100.0);
        }
    }
    if a.huge_pages {
        let _ = write!(s, "; {} huge pages cut by purges", a.huge_page_cuts);
    }
    s.push_str("</p>\n<details><summary>The full table</summary><pre>");
    s.push_str(&esc(&st.to_string()));
    s.push_str("</pre></details>\n");
}

fn profile_section(s: &mut String, p: &Profile) {
    s.push_str("<h2>Live memory by call site</h2>\n");
    if p.rate == 0 {
        s.push_str(
            "<p class=\"note\">Profiling is off (<code>TENSORPOOL_PROFILE=512K</code>, or \
             <code>PoolConfig::with_profile</code>).</p>\n",
        );
        return;
    }
    let _ = writeln!(
        s,
        "<p class=\"note\">Sampled every {} on average; estimates. Click a call site for its \
         stack.</p>",
        Bytes(p.rate as u64)
    );
    for kind in TensorKind::ALL {
        let sites = p.call_sites(kind);
        if sites.is_empty() {
            continue;
        }
        let _ = writeln!(
            s,
            "<h3>{}</h3>\n<table class=\"sites\"><thead><tr><th>live</th><th>blocks</th>\
             <th>call site</th></tr></thead><tbody>",
            kind.name()
        );
        for (i, (site, bytes, blocks, stacks)) in sites.into_iter().take(TOP_SITES).enumerate() {
            // Every stack that reached the call site, largest first, each with its share.
            let text: Vec<String> = stacks
                .iter()
                .map(|st| {
                    let frames: Vec<String> = st.stack.iter().map(|f| f.to_string()).collect();
                    format!(
                        "{} in {} blocks:\n  {}",
                        Bytes(st.bytes),
                        st.blocks,
                        frames.join("\n  ")
                    )
                })
                .collect();
            let text = text.join("\n\n");
            let _ = writeln!(
                s,
                "<tr class=\"site\" title=\"{}\"><td>{}</td><td>{}</td><td><details{}>\
                 <summary>{} ({} stack{})</summary><pre>{}</pre></details></td></tr>",
                esc(&text),
                // The largest site of each kind shows its stacks from the start.
                if i == 0 { " open" } else { "" },
                Bytes(bytes),
                blocks,
                esc(&site),
                stacks.len(),
                if stacks.len() == 1 { "" } else { "s" },
                esc(&text)
            );
        }
        s.push_str("</tbody></table>\n");
    }
}

/// `&`, `<`, `>` and `"` escaped for HTML text and attributes.
fn esc(t: &str) -> String {
    let mut o = String::with_capacity(t.len());
    for c in t.chars() {
        match c {
            '&' => o.push_str("&amp;"),
            '<' => o.push_str("&lt;"),
            '>' => o.push_str("&gt;"),
            '"' => o.push_str("&quot;"),
            c => o.push(c),
        }
    }
    o
}

const STYLE: &str = "body{font-family:sans-serif;margin:24px;color:#222}\
h1{font-size:20px}h2{font-size:17px;margin-top:28px}h3{font-size:14px}\
.note{color:#555;font-size:13px}.chart{margin:8px 0}\
table{border-collapse:collapse;font-size:13px}td,th{border:1px solid #ccc;padding:3px 8px;\
text-align:right}td:last-child,th:last-child{text-align:left}\
tr.site:hover{background:#fff4d6}summary{cursor:pointer}pre{margin:4px 0;font-size:12px}";

/// Opening a site's stack closes the others of its table; the page says it is ready.
const SCRIPT: &str = "document.querySelectorAll('table.sites').forEach(function(t){\
t.addEventListener('toggle',function(e){if(!e.target.open)return;\
t.querySelectorAll('details').forEach(function(d){if(d!==e.target)d.open=false;});},true);});\
document.body.dataset.ready='1';\
console.log('tensorpool report: '+document.querySelectorAll('tr.site').length+' call sites, '+\
document.querySelectorAll('svg').length+' charts');";
