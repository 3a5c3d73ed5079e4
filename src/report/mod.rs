//! The memory report as one self-contained HTML page (`TensorPool::write_html`,
//! `TENSORPOOL_REPORT=path.html` at exit, `tensorpool_write_report` from C): the timeline chart
//! of the whole run with its markers and bands, one chart per marked stretch (a request) so
//! that every request is readable, the per-kind statistics table, and the top live call sites
//! per kind from the profile, each of which opens (click) or shows in a tooltip (hover) its
//! stack, trimmed to the program's frames (`frames`); the scopes' table (modules, requests);
//! and the flame graph of live memory with a search box (`flame`). A chart zooms (its buttons
//! widen it, the page scrolls). No network resource: the charts are inline SVG, the style and
//! the script inline.

mod flame;
mod frames;

use crate::kind::{TensorKind, NUM_KINDS};
use crate::profile::Profile;
use crate::scope::Scopes;
use crate::stats::Stats;
use crate::text::Bytes;
use crate::timeline::Timeline;
use core::fmt::Write;

/// Call sites shown per kind.
const TOP_SITES: usize = 10;

/// Scope rows shown at most.
const TOP_SCOPES: usize = 500;

/// The page for `title` (the program, say) from the four snapshots.
pub(crate) fn html(
    title: &str,
    stats: &Stats,
    timeline: &Timeline,
    profile: &Profile,
    at_peak: &(Profile, u64),
    scopes: &Scopes,
) -> String {
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
    scopes_section(&mut s, scopes);
    profile_section(&mut s, profile);
    flame_section(&mut s, profile, at_peak);
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
         cached. {} events, {} samples, {} markers. Zoom a chart with its buttons.</p>\n\
         {ZOOM}<div class=\"chart\">{}</div>",
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
        let mut part = t.between(m.t_ns, until);
        if part.samples.len() < 2 {
            continue;
        }
        // What stays through the whole stretch (the weights) is a baseline, not a band: the
        // chart draws what changes, so the activations and the KV cache fill its height.
        let base: [u64; NUM_KINDS] =
            core::array::from_fn(|k| part.samples.iter().map(|x| x.live[k]).min().unwrap_or(0));
        let total: u64 = base.iter().sum();
        let title = if total > 0 {
            for x in &mut part.samples {
                for (l, b) in x.live.iter_mut().zip(&base) {
                    *l -= b;
                }
            }
            let parts: Vec<String> = TensorKind::ALL
                .iter()
                .filter(|k| base[k.index()] > 0)
                .map(|k| format!("{} {}", k.name(), Bytes(base[k.index()])))
                .collect();
            format!(
                "{}: above a baseline of {} held throughout ({})",
                m.name,
                Bytes(total),
                parts.join(", ")
            )
        } else {
            m.name.clone()
        };
        let _ = writeln!(
            s,
            "{ZOOM}<div class=\"chart\" data-baseline=\"{total}\">{}</div>",
            part.to_svg(&title, 1100, 300)
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
            let shown: String = stacks
                .iter()
                .map(|st| {
                    let mut o = format!("{} in {} blocks", Bytes(st.bytes), st.blocks);
                    if !st.scope.is_empty() {
                        let _ = write!(o, " in scope {}", esc(&st.scope));
                    }
                    o.push_str(":\n");
                    // Python's frames first, where they were recorded: the program's own words.
                    for f in &st.python {
                        let _ = writeln!(
                            o,
                            "<div class=\"frame py\">py: {}</div>",
                            esc(&f.to_string())
                        );
                    }
                    o.push_str(&trimmed(&st.stack));
                    o
                })
                .collect::<Vec<_>>()
                .join("\n");
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
                 <summary>{} ({} stack{})</summary><div class=\"stack\">{shown}</div>\
                 </details></td></tr>",
                esc(&text),
                Bytes(bytes),
                blocks,
                // The largest site of each kind shows its stacks from the start.
                if i == 0 { " open" } else { "" },
                esc(&site),
                stacks.len(),
                if stacks.len() == 1 { "" } else { "s" },
            );
        }
        s.push_str("</tbody></table>\n");
    }
}

/// A stack as HTML: the program's frames one per line, each run of the runtime's frames folded
/// into one line that opens to show them.
fn trimmed(stack: &[crate::profile::Frame]) -> String {
    let mut o = String::new();
    for (group, run) in frames::runs(stack, |f| f.function.as_str()) {
        match group {
            None => {
                let _ = writeln!(o, "<div class=\"frame\">{}</div>", esc(&run[0].to_string()));
            }
            Some(g) => {
                let _ = write!(
                    o,
                    "<details class=\"trimmed\"><summary>{} frame{} of {g}</summary>",
                    run.len(),
                    if run.len() == 1 { "" } else { "s" }
                );
                for f in run {
                    let _ = write!(o, "<div class=\"frame\">{}</div>", esc(&f.to_string()));
                }
                o.push_str("</details>\n");
            }
        }
    }
    o
}

fn scopes_section(s: &mut String, sc: &Scopes) {
    s.push_str("<h2>Memory by scope</h2>\n");
    if sc.scopes.is_empty() {
        s.push_str(
            "<p class=\"note\">No scope was entered (<code>TensorPool::scope</code>, \
             <code>tensorpool_scope_push</code>, <code>tensorpool.scope</code>, \
             <code>tensorpool.torch.instrument(model)</code> or <code>python -m tensorpool run \
             --torch-modules</code>).</p>\n",
        );
        return;
    }
    let _ = writeln!(
        s,
        "<p class=\"note\">Large blocks allocated while a scope (a module, a request) was the \
         innermost (own) or inside it (inclusive), by their main kind; peaks since the start or \
         the last reset. {} outside every scope.</p>\n<table class=\"scopes\"><thead><tr>\
         <th>scope</th><th>main kind</th><th>own peak</th><th>inclusive peak</th>\
         <th>own live</th><th>inclusive live</th></tr></thead><tbody>",
        Bytes(sc.outside_live)
    );
    for x in sc.scopes.iter().take(TOP_SCOPES) {
        let _ = writeln!(
            s,
            "<tr class=\"scope\" data-depth=\"{d}\"><td style=\"padding-left:{}px\">{}</td>\
             <td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            8 + 14 * (x.depth - 1),
            esc(&x.name),
            x.inclusive.main_kind().name(),
            Bytes(x.own.peak_total),
            Bytes(x.inclusive.peak_total),
            Bytes(x.own.live_total),
            Bytes(x.inclusive.live_total),
            d = x.depth
        );
    }
    s.push_str("</tbody></table>\n");
    if sc.scopes.len() > TOP_SCOPES {
        let _ = writeln!(
            s,
            "<p class=\"note\">{} more scopes not shown.</p>",
            sc.scopes.len() - TOP_SCOPES
        );
    }
}

fn flame_section(s: &mut String, now: &Profile, at_peak: &(Profile, u64)) {
    let (peak, peak_bytes) = at_peak;
    let (graph_peak, graph_now) = (flame::html(peak), flame::html(now));
    if graph_peak.is_empty() && graph_now.is_empty() {
        return;
    }
    s.push_str(
        "<h2>Flame graph of live memory</h2>\n<p class=\"note\">Sampled bytes by kind, scope \
         ([in brackets]) and the program's frames, outermost at the top; hover a box for its \
         bytes. <input id=\"fg-search\" type=\"search\" placeholder=\"search functions, \
         scopes\"> <span id=\"fg-found\"></span></p>\n",
    );
    if !graph_peak.is_empty() {
        let _ = writeln!(
            s,
            "<h3>At the peak ({} of large blocks live)</h3>\n<div class=\"flame\" \
             id=\"fg-peak\">{graph_peak}</div>",
            Bytes(*peak_bytes)
        );
    }
    if !graph_now.is_empty() {
        let _ = writeln!(
            s,
            "<details{}><summary>Live when the report was made</summary>\
             <div class=\"flame\" id=\"fg-now\">{graph_now}</div></details>",
            if graph_peak.is_empty() { " open" } else { "" }
        );
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
tr.site:hover{background:#fff4d6}summary{cursor:pointer}pre{margin:4px 0;font-size:12px}\
td.left,table.scopes td:first-child{text-align:left}.stack{text-align:left;font:12px monospace}\
details.trimmed{color:#888}details.trimmed>summary{font-style:italic}\
.chart{overflow-x:auto}.chart svg{width:100%;height:auto}.zoom button{font-size:11px}\
.flame{font:11px sans-serif;border:1px solid #ccc}.fg{box-sizing:border-box;overflow:hidden}\
.fg-label{background:#f2b36b;border:1px solid #fff;white-space:nowrap;overflow:hidden;\
text-overflow:ellipsis;padding:1px 2px}.fg-kids{display:flex}\
.fg.match>.fg-label{background:#d35cd3;color:#fff}.frame.py{color:#1f5fa8}";

/// Zoom buttons for the chart that follows them.
const ZOOM: &str = "<div class=\"zoom\"><button data-z=\"2\">zoom in</button> \
<button data-z=\"0.5\">zoom out</button></div>";

/// Opening a site's stack closes the others of its table; the page says it is ready.
const SCRIPT: &str = "document.querySelectorAll('table.sites').forEach(function(t){\
t.addEventListener('toggle',function(e){if(!e.target.open)return;\
t.querySelectorAll('details').forEach(function(d){if(d!==e.target)d.open=false;});},true);});\
document.querySelectorAll('.zoom button').forEach(function(b){b.addEventListener('click',\
function(){var c=b.parentNode.nextElementSibling;var v=c.querySelector('svg');\
var w=parseFloat(v.style.width||'100')*parseFloat(b.dataset.z);w=Math.max(100,Math.min(1600,w));\
v.style.width=w+'%';});});\
var q=document.getElementById('fg-search');if(q){q.addEventListener('input',function(){\
var t=q.value.toLowerCase(),sum=0,n=0;document.querySelectorAll('.fg').forEach(function(d){\
var l=d.firstChild.textContent.toLowerCase();var m=t.length>0&&l.indexOf(t)>=0;\
d.classList.toggle('match',m);if(m){n++;var up=d.parentNode.closest('.fg.match');\
if(!up)sum+=parseInt(d.dataset.bytes);}});\
document.getElementById('fg-found').textContent=t?n+' boxes, '+(sum/1048576).toFixed(1)+' MiB':'';});}\
document.body.dataset.ready='1';\
console.log('tensorpool report: '+document.querySelectorAll('tr.site').length+' call sites, '+\
document.querySelectorAll('svg').length+' charts, '+document.querySelectorAll('tr.scope').length+\
' scopes, '+document.querySelectorAll('.fg').length+' flame boxes, '+\
document.querySelectorAll('details.trimmed').length+' trimmed runs');";
