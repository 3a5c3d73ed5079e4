"""Run the programs of mimalloc-bench (the allocator field's suite) under each allocator, rounds
interleaved, and print per program the suite's own score (elapsed seconds; larson,
xmalloc-test, rptest and glibc-thread from their printed rates, as the suite's bench.sh
computes them), peak RSS and minor faults, with tensorpool's ratio to the best other and the
geometric means; then the suite's security programs, caught or not, under each allocator and
under TENSORPOOL_CHECK=full.

This script builds nothing: it runs a checkout of the suite whose `bench/` directory was built
with CMake into `out/bench` (see docs/performance.md, "mimalloc-bench", for how it was built
here). The allocators are the preload library and Debian's libraries (apt-get install
libjemalloc2 libtcmalloc-minimal4 libmimalloc2.0); a missing one is reported and skipped.

    cargo build --release -p tensorpool-preload
    python3 bench/mimalloc_bench.py --suite PATH [--rounds 3] [--procs 2] [--only a,b]
        [--no-security] [--also NAME=LIB[,NAME=LIB...]]

`--also` adds preload libraries to compare (another build of tensorpool, say, copied out of
target/ first); a NAME starting with "tensorpool" is not counted among the others.
"""
import math
import os
import random
import re
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
LIBDIR = "/usr/lib/x86_64-linux-gnu"
ALLOCATORS = [
    ("glibc", None),
    ("tensorpool", os.path.join(ROOT, "target", "release", "libtensorpool_preload.so")),
    ("jemalloc", os.path.join(LIBDIR, "libjemalloc.so.2")),
    ("tcmalloc", os.path.join(LIBDIR, "libtcmalloc_minimal.so.4")),
    ("mimalloc", os.path.join(LIBDIR, "libmimalloc.so.2")),
]


def programs(procs, src):
    """(name, argv, stdin file or None, score parser or None: elapsed seconds)."""
    p = str(procs)

    def rel_time(out):
        m = re.search(r"relative time: ([0-9.]+)", out)
        return float(m.group(1)) if m else None

    def rtime(out):
        m = re.search(r"rtime: ([0-9.]+)", out)
        return float(m.group(1)) if m else None

    def rptest(out):
        m = re.search(r"\.\.\.([0-9]+) memory ops", out)
        return 2_000_000 / int(m.group(1)) if m else None

    def glibc_thread(out):
        m = re.match(r"\s*([0-9.]+)", out)
        return 1e9 / float(m.group(1)) if m else None

    return [
        ("cfrac", ["./cfrac", "17545186520507317056371138836327483792789528"], None, None),
        ("espresso", ["./espresso", os.path.join(src, "espresso", "largest.espresso")], None, None),
        ("barnes", ["./barnes"], os.path.join(src, "barnes", "input"), None),
        ("larsonN", ["./larson", "5", "8", "1000", "5000", "100", "4141", p], None, rel_time),
        ("alloc-test1", ["./alloc-test", "1"], None, None),
        ("alloc-testN", ["./alloc-test", p], None, None),
        ("xmalloc-testN", ["./xmalloc-test", "-w", p, "-t", "5", "-s", "64"], None, rtime),
        ("cache-scratch1", ["./cache-scratch", "1", "1000", "1", "2000000", p], None, None),
        ("cache-scratchN", ["./cache-scratch", p, "1000", "1", "2000000", p], None, None),
        ("cache-thrashN", ["./cache-thrash", p, "1000", "1", "2000000", p], None, None),
        ("malloc-large", ["./malloc-large"], None, None),
        ("mstressN", ["./mstress", p, "50", "25"], None, None),
        ("rptestN", ["./rptest", p, "0", "1", "2", "500", "1000", "100", "8", "16000"], None, rptest),
        ("glibc-simple", ["./glibc-simple"], None, None),
        ("glibc-thread", ["./glibc-thread", p], None, glibc_thread),
    ]


def env_for(lib, extra=None):
    env = dict(os.environ)
    env.pop("LD_PRELOAD", None)
    if lib:
        env["LD_PRELOAD"] = lib
    env.update(extra or {})
    return env


TIME_OUT = "/tmp/tensorpool-mimalloc-bench-time.txt"


def run_once(builddir, argv, stdin, parse, lib):
    """One run: the score, peak RSS (MiB) and minor faults, from GNU time (a child's own
    rusage here would carry this Python process's high-water mark across the exec)."""
    fin = open(stdin, "rb") if stdin else subprocess.DEVNULL
    t0 = time.perf_counter()
    p = subprocess.run(["/usr/bin/time", "-o", TIME_OUT, "-f", "%M %R"] + argv, cwd=builddir,
                       env=env_for(lib), stdin=fin, stdout=subprocess.PIPE,
                       stderr=subprocess.STDOUT)
    wall = time.perf_counter() - t0
    if stdin:
        fin.close()
    out = p.stdout.decode(errors="replace")
    if p.returncode != 0:
        return None, f"exit {p.returncode}: {out[-300:]}"
    score = parse(out) if parse else wall
    if score is None:
        return None, f"no score in: {out[-300:]}"
    with open(TIME_OUT) as f:
        rss_kib, faults = (int(x) for x in f.read().split()[-2:])
    return (score, rss_kib / 1024.0, faults), None


def geomean(xs):
    return math.exp(sum(math.log(x) for x in xs) / len(xs)) if xs else float("nan")


def security(builddir, allocs):
    """Per allocator (and tensorpool with full checks), how many security programs catch their
    bug: as the suite's bench.sh counts them, a program whose output lacks NOT_CAUGHT within 1 s
    (the allocator stopped it, or the program saw the corruption)."""
    sec = os.path.join(builddir, "security")
    bins = sorted(b for b in os.listdir(sec)
                  if os.path.isfile(os.path.join(sec, b)) and os.access(os.path.join(sec, b), os.X_OK))
    runs = [(n, lib, None) for n, lib in allocs]
    tp = dict(allocs).get("tensorpool")
    if tp:
        runs.insert(2, ("tensorpool, CHECK=full", tp, {"TENSORPOOL_CHECK": "full"}))
    print(f"\nsecurity programs ({len(bins)} builds): caught within 1 s")
    for name, lib, extra in runs:
        caught = 0
        for b in bins:
            try:
                r = subprocess.run([os.path.join(sec, b)], cwd=builddir, env=env_for(lib, extra),
                                   stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=1)
                out = r.stdout.decode(errors="replace")
                caught += "NOT_CAUGHT" not in out
            except subprocess.TimeoutExpired:
                pass
        print(f"  {name:<24} {caught:>4}")


def main():
    args = sys.argv[1:]

    def opt(name, default=None):
        return args[args.index(name) + 1] if name in args else default

    suite = opt("--suite")
    if not suite:
        raise SystemExit(__doc__)
    builddir = os.path.join(suite, "out", "bench")
    src = os.path.join(suite, "bench")
    rounds = int(opt("--rounds", "3"))
    procs = int(opt("--procs", "2"))
    only = opt("--only")
    allocs = []
    for name, lib in ALLOCATORS:
        if lib and not os.path.exists(lib):
            print(f"skipping {name}: {lib} not found")
            continue
        allocs.append((name, lib))
    for extra in filter(None, (opt("--also") or "").split(",")):
        name, _, lib = extra.partition("=")
        allocs.append((name, os.path.abspath(lib)))
    progs = [pr for pr in programs(procs, src) if not only or pr[0] in only.split(",")]
    res = {(pr[0], a): [] for pr in progs for a, _ in allocs}
    failed = {}
    for r in range(rounds):
        # A fresh order each round, not a rotation: a rotation keeps each allocator's
        # predecessor, and xmalloc-test's score depends on the run before it (the same library
        # scored 1.62 after glibc and 1.06 after mimalloc, medians of five rounds each).
        order = list(allocs)
        random.Random(r).shuffle(order)
        for name, argv, stdin, parse in progs:
            for a, lib in order:
                v, err = run_once(builddir, argv, stdin, parse, lib)
                if v is None:
                    failed[(name, a)] = err
                else:
                    res[(name, a)].append(v)
    names = [a for a, _ in allocs]
    print(f"mimalloc-bench, {procs} threads where the suite says $procs; medians of {rounds} "
          f"interleaved rounds; score = the suite's (seconds, or relative time from a rate)")
    print(f"{'program':<15}" + "".join(f"{a:>11}" for a in names)
          + "   tp/best  best other   RSS MiB (" + " / ".join(names) + ")   tp RSS/lowest")
    t_ratios, m_ratios = [], []
    best_all = {a: [] for a in names}
    extra = {a: ([], []) for a in names}
    for name, *_ in progs:
        med = {}
        for a in names:
            vs = res[(name, a)]
            if vs:
                med[a] = tuple(statistics.median(v[i] for v in vs) for i in range(3))
        row = f"{name:<15}"
        for a in names:
            row += f"{med[a][0]:>11.3f}" if a in med else f"{'fail':>11}"
        others = {a: m for a, m in med.items() if not a.startswith("tensorpool")}
        if "tensorpool" in med and others:
            best = min(others, key=lambda a: others[a][0])
            tr = med["tensorpool"][0] / others[best][0]
            mr = med["tensorpool"][1] / min(m[1] for m in others.values())
            t_ratios.append(tr)
            m_ratios.append(mr)
            row += f"   {tr:>7.2f}  {best:<10}"
        else:
            row += f"   {'-':>7}  {'-':<10}"
        row += "   " + " / ".join(f"{med[a][1]:.0f}" if a in med else "-" for a in names)
        if "tensorpool" in med and others:
            row += f"   {m_ratios[-1]:.2f}"
            row += (f"   faults {med['tensorpool'][2]:.0f} (fewest other "
                    f"{min(m[2] for m in others.values()):.0f})")
        print(row)
        for a in names:
            if a.startswith("tensorpool") and a != "tensorpool" and a in med and others:
                best = min(others, key=lambda o: others[o][0])
                extra[a][0].append(med[a][0] / others[best][0])
                extra[a][1].append(med[a][1] / min(m[1] for m in others.values()))
                print(f"{'':<15}{a}: time / best other {extra[a][0][-1]:.2f}, peak RSS "
                      f"{med[a][1]:.0f} MiB ({extra[a][1][-1]:.2f} of the lowest other), "
                      f"faults {med[a][2]:.0f}")
        if len(med) == len(names):
            lo = min(m[0] for m in med.values())
            for a in names:
                best_all[a].append(med[a][0] / lo)
    print("\ngeometric mean of time / the per-program best of all: "
          + ", ".join(f"{a} {geomean(v):.3f}" for a, v in sorted(best_all.items(), key=lambda kv: geomean(kv[1]))))
    print(f"tensorpool / best other per program, geometric mean: time {geomean(t_ratios):.3f}, "
          f"peak RSS {geomean(m_ratios):.3f}")
    for a, (t, m) in extra.items():
        if t:
            print(f"{a} / best other per program, geometric mean: time {geomean(t):.3f}, "
                  f"peak RSS {geomean(m):.3f}")
    for (name, a), err in sorted(failed.items()):
        print(f"failed: {name} under {a}: {err}")
    if "--no-security" not in args:
        security(builddir, allocs)


if __name__ == "__main__":
    main()
