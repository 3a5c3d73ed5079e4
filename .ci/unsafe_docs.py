#!/usr/bin/env python3
"""Fail on an `unsafe fn` without a `# Safety` section in its doc comment, and on a `SAFETY:`
comment that names no invariant ("forwarded contract" and the like), in `src/`, `preload/src/`
and `loom-tests/`. (Clippy checks that every `unsafe` block has a `SAFETY:` comment.)"""
import os
import re
import sys

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
DIRS = ["src", "preload/src", "bench/src", "loom-tests/src"]
VAGUE = re.compile(r"SAFETY:\s*(forwarded( contract)?|see above|trust me|ok)\.?\s*$", re.I)


def in_trait_impl(lines, i):
    """Whether line `i` is a method of an `impl Trait for Type` block."""
    indent = len(lines[i]) - len(lines[i].lstrip())
    for j in range(i - 1, -1, -1):
        l = lines[j]
        if not l.strip():
            continue
        ind = len(l) - len(l.lstrip())
        if ind < indent:
            return bool(re.match(r"\s*(unsafe\s+)?impl\b.*\bfor\b", l))
    return False


def main():
    bad = []
    for d in DIRS:
        for root, _, names in os.walk(os.path.join(ROOT, d)):
            for n in sorted(names):
                if not n.endswith(".rs"):
                    continue
                path = os.path.join(root, n)
                lines = open(path).read().split("\n")
                rel = os.path.relpath(path, ROOT)
                for i, line in enumerate(lines):
                    if VAGUE.search(line):
                        bad.append("%s:%d: a SAFETY comment naming no invariant" % (rel, i + 1))
                    if not re.match(r"\s*(pub(\([a-z]+\))?\s+)?unsafe\s+(extern\s+\"C\"\s+)?fn\s", line):
                        continue
                    if 'extern "C"' in line:
                        continue  # callbacks handed to the C library: their contract is C's
                    if in_trait_impl(lines, i):
                        continue  # `GlobalAlloc`, `Allocator`: the trait documents the contract
                    j = i - 1
                    doc = []
                    while j >= 0 and re.match(r"\s*(///|#\[)", lines[j]):
                        doc.append(lines[j])
                        j -= 1
                    if not any("# Safety" in l for l in doc):
                        name = re.search(r"fn\s+(\w+)", line).group(1)
                        bad.append("%s:%d: unsafe fn %s has no `# Safety` section" % (rel, i + 1, name))
    for b in bad:
        print(b)
    if bad:
        return 1
    print("every unsafe fn documents its safety contract")
    return 0


if __name__ == "__main__":
    sys.exit(main())
