//! The flame graph of live memory (an icicle: the whole at the top, call sites at the bottom),
//! drawn as nested boxes in the page: kind, then the scopes the blocks were allocated in, then
//! the Python frames where they were recorded, then the program's native frames from the
//! outermost in (the runtime's left out, see `frames`). A box's
//! width is its share of its parent's bytes; the page's search box marks the boxes whose name
//! matches and sums their bytes.

use super::esc;
use crate::profile::Profile;
use crate::text::Bytes;
use core::fmt::Write;

/// Levels drawn at most (deeper frames fold into their ancestor).
const DEPTH: usize = 48;
/// Boxes narrower than this share of the whole are left out (their bytes stay in the parent).
const MIN_SHARE: f64 = 0.002;

#[derive(Default)]
struct Node {
    name: String,
    bytes: u64,
    children: Vec<Node>,
}

impl Node {
    fn add(&mut self, path: &[String], bytes: u64) {
        self.bytes += bytes;
        let Some((first, rest)) = path.split_first() else {
            return;
        };
        let i = match self.children.iter().position(|c| &c.name == first) {
            Some(i) => i,
            None => {
                self.children.push(Node {
                    name: first.clone(),
                    ..Node::default()
                });
                self.children.len() - 1
            }
        };
        self.children[i].add(rest, bytes);
    }
}

/// The flame graph of `p`'s live sites, or an empty string when nothing was sampled.
pub(crate) fn html(p: &Profile) -> String {
    let mut root = Node {
        name: "all".into(),
        ..Node::default()
    };
    for site in &p.sites {
        let mut path = vec![site.kind.name().to_string()];
        path.extend(
            site.scope
                .split('/')
                .filter(|n| !n.is_empty())
                .map(|n| format!("[{n}]")),
        );
        path.extend(
            site.python
                .iter()
                .rev()
                .map(|f| format!("py: {}", f.function)),
        );
        let program = site
            .stack
            .iter()
            .rev()
            .filter(|f| super::frames::runtime(&f.function).is_none());
        path.extend(program.map(|f| f.function.clone()));
        path.truncate(DEPTH);
        root.add(&path, site.bytes);
    }
    if root.bytes == 0 {
        return String::new();
    }
    let mut s = String::new();
    let total = root.bytes;
    node(&mut s, &root, total, 100.0);
    s
}

fn node(s: &mut String, n: &Node, total: u64, width: f64) {
    let _ = write!(
        s,
        "<div class=\"fg\" style=\"width:{width:.3}%\" data-bytes=\"{}\" title=\"{}: {} ({:.1}% \
         of all)\"><div class=\"fg-label\">{}</div>",
        n.bytes,
        esc(&n.name),
        Bytes(n.bytes),
        n.bytes as f64 * 100.0 / total as f64,
        esc(&n.name)
    );
    let mut kids: Vec<&Node> = n
        .children
        .iter()
        .filter(|c| c.bytes as f64 >= MIN_SHARE * total as f64)
        .collect();
    kids.sort_by_key(|c| core::cmp::Reverse(c.bytes));
    if !kids.is_empty() {
        s.push_str("<div class=\"fg-kids\">");
        for c in kids {
            node(s, c, total, c.bytes as f64 * 100.0 / n.bytes.max(1) as f64);
        }
        s.push_str("</div>");
    }
    s.push_str("</div>");
}
