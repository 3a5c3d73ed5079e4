#!/usr/bin/env python3
"""Fail on an import cycle between the crate's modules.

Two levels are checked: the top-level modules (`src/x.rs` or `src/x/`), and, inside each
directory, its sibling files (a `mod.rs` may use its children and re-export them; children
naming each other in a circle are a cycle). An edge is any `crate::a::...` path (or, inside a
directory, `super::b::...`) outside comments and `#[cfg(test)]` modules, which may reach
anywhere. Prints each cycle found and exits 1; prints the layers (each module after those it
depends on) and exits 0 when there is none.
"""
import os
import re
import sys

SRC = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "src")


def strip(text):
    """Drop comments, string literals and `#[cfg(test)] mod tests { ... }` blocks."""
    text = re.sub(r"//[^\n]*", "", text)
    text = re.sub(r"/\*.*?\*/", "", text, flags=re.S)
    text = re.sub(r'"(?:\\.|[^"\\])*"', '""', text)
    out, i = [], 0
    for m in re.finditer(r"#\[cfg\(test\)\]\s*mod\s+\w+\s*\{", text):
        if m.start() < i:
            continue
        out.append(text[i : m.start()])
        depth, j = 1, m.end()
        while depth and j < len(text):
            depth += {"{": 1, "}": -1}.get(text[j], 0)
            j += 1
        i = j
    out.append(text[i:])
    return "".join(out)


def files():
    for root, _, names in os.walk(SRC):
        for n in names:
            if n.endswith(".rs"):
                yield os.path.relpath(os.path.join(root, n), SRC)


def module_path(rel):
    parts = rel[:-3].split(os.sep)
    if parts[-1] in ("mod", "lib"):
        parts = parts[:-1]
    return parts


def paths_in(text, root):
    """Every `root::a::b` path, with `use root::{a, b::c}` groups expanded."""
    found = []
    for m in re.finditer(r"\b%s::(\{[^;]*?\}|[A-Za-z_][\w:]*)" % root, text):
        body = m.group(1)
        if body.startswith("{"):
            for item in re.split(r"[,{}\s]+", body):
                if item and item != "self":
                    found.append(item.split("::"))
        else:
            found.append(body.split("::"))
    return found


def cycles(graph):
    """Strongly connected components with more than one node (Tarjan)."""
    index, low, stack, on, out = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def edges(graph, comp):
    """The imports between the members of one cycle, `a -> b` each."""
    return ", ".join("%s -> %s" % (a, b) for a in comp for b in sorted(graph[a]) if b in comp)


def layers(graph):
    level = {}

    def depth(v):
        if v not in level:
            level[v] = 0
            level[v] = 1 + max((depth(w) for w in graph[v]), default=-1)
        return level[v]

    for v in graph:
        depth(v)
    rows = {}
    for v, d in level.items():
        rows.setdefault(d, []).append(v)
    return [sorted(rows[d]) for d in sorted(rows)]


def main():
    sources = {tuple(module_path(f)): strip(open(os.path.join(SRC, f)).read()) for f in files()}
    top = {m[0] for m in sources if m}
    top_graph = {t: set() for t in top}
    dirs = {}
    for mod, text in sources.items():
        if not mod:
            continue
        for p in paths_in(text, "crate"):
            if p[0] in top and p[0] != mod[0]:
                top_graph[mod[0]].add(p[0])
        if len(mod) >= 2:
            parent = mod[:-1]
            sib = dirs.setdefault(parent, {})
            sib.setdefault(mod[-1], set())
            for p in paths_in(text, "super"):
                if (parent + (p[0],)) in sources and p[0] != mod[-1]:
                    sib[mod[-1]].add(p[0])
            for p in paths_in(text, "crate"):
                q = tuple(p[: len(parent) + 1])
                if q[: len(parent)] == parent and q in sources and q[-1] != mod[-1]:
                    sib[mod[-1]].add(q[-1])
    bad = False
    for c in cycles(top_graph):
        bad = True
        print("import cycle between src/ modules: " + ", ".join(c))
        print("  edges: " + edges(top_graph, c))
    for parent, sib in sorted(dirs.items()):
        for c in cycles(sib):
            bad = True
            print("import cycle inside src/%s/: %s" % ("/".join(parent), ", ".join(c)))
            print("  edges: " + edges(sib, c))
    if bad:
        return 1
    print("no import cycle; layers, lowest first:")
    for i, row in enumerate(layers(top_graph)):
        print("  %d: %s" % (i, " ".join(row)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
