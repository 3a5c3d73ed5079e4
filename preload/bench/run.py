"""Run numpy_forward.py with no preload and with each allocator library preloaded, rounds
interleaved (A B C D E A B C D E ...), and print medians of wall time, minor page faults and
peak RSS, with tensorpool's ratio to the best of the others.

    cargo build --release -p tensorpool-preload
    python3 preload/bench/run.py [--rounds N]

Debian's libraries are used where installed (apt-get install libjemalloc2 libtcmalloc-minimal4
libmimalloc2.0); a missing one is reported and skipped. BLAS runs one thread, so the two cores
are not shared between the work and the measurement.
"""
import os
import statistics
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.abspath(os.path.join(HERE, "..", ".."))
LIBDIR = "/usr/lib/x86_64-linux-gnu"
CANDIDATES = [
    ("glibc (no preload)", None),
    ("tensorpool", os.path.join(ROOT, "target", "release", "libtensorpool_preload.so")),
    ("jemalloc", os.path.join(LIBDIR, "libjemalloc.so.2")),
    ("tcmalloc", os.path.join(LIBDIR, "libtcmalloc_minimal.so.4")),
    ("mimalloc", os.path.join(LIBDIR, "libmimalloc.so.2")),
]


def run_once(lib):
    env = dict(os.environ, OPENBLAS_NUM_THREADS="1", OMP_NUM_THREADS="1")
    env.pop("LD_PRELOAD", None)
    if lib:
        env["LD_PRELOAD"] = lib
    p = subprocess.Popen(
        [sys.executable, os.path.join(HERE, "numpy_forward.py")],
        env=env,
        stdout=subprocess.PIPE,
        text=True,
    )
    out = p.stdout.read()
    _, status, ru = os.wait4(p.pid, 0)
    p.returncode = os.waitstatus_to_exitcode(status)
    if p.returncode != 0:
        raise SystemExit(f"{lib}: exit {p.returncode}")
    fields = dict(kv.split("=") for kv in out.split())
    return float(fields["wall_ms"]), ru.ru_minflt, ru.ru_maxrss / 1024.0, fields["checksum"]


def main():
    rounds = int(sys.argv[sys.argv.index("--rounds") + 1]) if "--rounds" in sys.argv else 3
    allocs = []
    for name, lib in CANDIDATES:
        if lib and not os.path.exists(lib):
            print(f"skipping {name}: {lib} not found")
            continue
        allocs.append((name, lib))
    results = {name: [] for name, _ in allocs}
    checksums = set()
    for _ in range(rounds):
        for name, lib in allocs:
            wall, flt, rss, ck = run_once(lib)
            results[name].append((wall, flt, rss))
            checksums.add(ck)
    assert len(checksums) == 1, f"allocators disagree on the output: {checksums}"
    print(f"numpy transformer forward pass: medians of {rounds} interleaved rounds "
          f"(same output from all: checksum {checksums.pop()})")
    print(f"{'allocator':<20} {'wall ms':>9} {'minor faults':>13} {'peak RSS MiB':>13}")
    med = {}
    for name, _ in allocs:
        cols = list(zip(*results[name]))
        med[name] = [statistics.median(c) for c in cols]
        w, f, r = med[name]
        print(f"{name:<20} {w:>9.0f} {f:>13.0f} {r:>13.1f}")
    others = [m for n, m in med.items() if n != "tensorpool"]
    if "tensorpool" in med and others:
        tp = med["tensorpool"]
        best = [min(o[i] for o in others) for i in range(3)]
        print("tensorpool / best other: wall {:.2f}, faults {:.2f}, peak RSS {:.2f}".format(
            *(tp[i] / best[i] for i in range(3))))


main()
