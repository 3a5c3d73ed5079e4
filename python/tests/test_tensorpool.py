"""The Python package, installed: the launcher runs scripts, modules and code with tensorpool
preloaded, the API reads and steers the allocator, and without the launcher it refuses with the
documented error. Each case runs in a child process, since the allocator is chosen at start."""

import json
import os
import subprocess
import sys
import textwrap

import pytest

import tensorpool

PY = sys.executable


def launch(*args, env=None, check=True):
    """`python -m tensorpool run ARGS`; its completed process."""
    e = dict(os.environ)
    e.pop("LD_PRELOAD", None)
    e.update(env or {})
    p = subprocess.run(
        [PY, "-m", "tensorpool", "run", *args], capture_output=True, text=True, env=e, timeout=300
    )
    if check:
        assert p.returncode == 0, p.stdout + p.stderr
    return p


def code(src):
    return textwrap.dedent(src)


def test_version_and_help():
    p = subprocess.run([PY, "-m", "tensorpool", "--version"], capture_output=True, text=True)
    assert p.returncode == 0 and p.stdout.strip() == f"tensorpool {tensorpool.__version__}"
    p = subprocess.run([PY, "-m", "tensorpool", "--help"], capture_output=True, text=True)
    assert p.returncode == 0 and "run" in p.stdout
    p = subprocess.run([PY, "-m", "tensorpool", "run", "--help"], capture_output=True, text=True)
    assert p.returncode == 0 and "--profile" in p.stdout and "-m MODULE" in p.stdout


def test_the_launcher_runs_a_script_a_module_and_code(tmp_path):
    script = tmp_path / "prog.py"
    script.write_text(
        "import sys, tensorpool\nprint('script', tensorpool.is_active(), sys.argv[1:])\n"
    )
    p = launch(str(script), "a", "--stats", "b")
    assert p.stdout.strip() == "script True ['a', '--stats', 'b']"
    (tmp_path / "tpmod.py").write_text(
        "import sys, tensorpool\nprint('module', tensorpool.is_active(), sys.argv[1:])\n"
    )
    p = launch("-m", "tpmod", "x", env={"PYTHONPATH": str(tmp_path)})
    assert p.stdout.strip() == "module True ['x']"
    p = launch("-c", "import tensorpool; print('code', tensorpool.is_active())")
    assert p.stdout.strip() == "code True"


def test_options_reach_the_allocator(tmp_path):
    report = tmp_path / "r.html"
    p = launch(
        "--stats",
        "--profile",
        "512K",
        "--report",
        str(report),
        "-c",
        "import numpy as np, tensorpool\n"
        "with tensorpool.kind('kv_cache'):\n"
        "    keep = np.ones(8 << 20, np.uint8)\n"
        "tensorpool.mark('request 1')\n"
        "print(tensorpool.profile()['rate'])\n",
    )
    assert p.stdout.strip() == str(512 << 10)
    assert "tensorpool: statistics at exit of" in p.stderr
    assert "still live at exit: kv_cache" in p.stderr
    assert "live memory by call site" in p.stderr
    html = report.read_text()
    assert html.startswith("<!DOCTYPE html>") and "request 1" in html


def test_a_kind_holds_a_numpy_array_and_lets_it_go():
    p = launch(
        "-c",
        code(
            """
            import json, numpy as np, tensorpool
            key = "allocated_bytes.kv_cache.current"
            before = tensorpool.memory_stats()[key]
            with tensorpool.kind("kv_cache"):
                a = np.zeros(3_000_000, np.float32)
            held = tensorpool.memory_stats()[key] - before
            n = a.nbytes
            del a
            after = tensorpool.memory_stats()[key] - before
            print(json.dumps([n, held, after]))
            """
        ),
    )
    n, held, after = json.loads(p.stdout)
    assert n <= held <= n + 4096, (n, held)
    assert after == 0


def test_kinds_nest_and_threads_keep_their_own():
    p = launch(
        "-c",
        code(
            """
            import json, threading, tensorpool
            seen = {}
            with tensorpool.kind("kv_cache"):
                seen["outer"] = tensorpool.current_kind()
                with tensorpool.kind("attention"):
                    seen["inner"] = tensorpool.current_kind()
                    def other():
                        seen["thread"] = tensorpool.current_kind()
                        with tensorpool.kind("activation"):
                            seen["thread_inner"] = tensorpool.current_kind()
                    t = threading.Thread(target=other); t.start(); t.join()
                    seen["after_thread"] = tensorpool.current_kind()
                seen["back"] = tensorpool.current_kind()
            seen["out"] = tensorpool.current_kind()

            @tensorpool.kind("image_embedding")
            def embed():
                return tensorpool.current_kind()
            seen["decorated"] = embed()
            try:
                with tensorpool.kind("text_embedding"):
                    raise KeyError
            except KeyError:
                seen["after_exception"] = tensorpool.current_kind()
            print(json.dumps(seen))
            """
        ),
    )
    assert json.loads(p.stdout) == {
        "outer": "kv_cache",
        "inner": "attention",
        "thread": "general",
        "thread_inner": "activation",
        "after_thread": "attention",
        "back": "kv_cache",
        "out": "general",
        "decorated": "image_embedding",
        "after_exception": "general",
    }


def test_trim_lowers_resident_memory_after_a_large_free():
    p = launch(
        "-c",
        code(
            """
            import json, numpy as np, tensorpool
            rss = lambda: tensorpool.memory_stats()["resident_bytes"]
            arrays = [np.ones(16 << 20, np.uint8) for _ in range(20)]
            high = rss()
            del arrays
            kept = rss()
            returned = tensorpool.trim()
            print(json.dumps([high, kept, rss(), returned]))
            """
        ),
        env={"TENSORPOOL_DECAY_MS": "-1"},
    )
    high, kept, low, returned = json.loads(p.stdout)
    assert kept > 300 << 20, "freed arrays stay resident until trim (decay off)"
    assert returned >= 300 << 20 and low < kept - (250 << 20), (high, kept, low, returned)


def test_summary_and_stats_keys():
    p = launch(
        "-c",
        "import json, tensorpool; s = tensorpool.memory_stats(); "
        "print(json.dumps(sorted(s))); print(tensorpool.memory_summary())",
    )
    keys = json.loads(p.stdout.splitlines()[0])
    for k in tensorpool.KINDS + ("all",):
        for f in ("allocated_bytes.{}.current", "allocated_bytes.{}.peak",
                  "reserved_bytes.{}.current", "num_alloc.{}", "hit_rate.{}"):
            assert f.format(k) in keys
    for k in ("num_alloc_retries", "num_ooms", "resident_bytes", "huge_pages.enabled",
              "huge_pages.coverage", "huge_pages.huge_bytes", "huge_pages.cuts"):
        assert k in keys
    assert "pool " in p.stdout and "kv_cache" in p.stdout


def test_scopes_nest_and_attribute_exactly():
    # A block holds whole pages (and a cache colour): up to 8 KiB over the array's bytes.
    p = launch(
        "-c",
        code(
            """
            import json, threading, numpy as np, tensorpool
            with tensorpool.scope("request"):
                with tensorpool.kind("kv_cache"), tensorpool.scope("decode"):
                    kv = np.ones(1_000_000, np.float32)
                    s0 = tensorpool.scopes()
                    tmp = np.ones(500_000, np.float32)
                    del tmp
                @tensorpool.scope("sampler")
                def sample():
                    return np.ones(300_000, np.float64)
                keep = sample()
            try:
                tensorpool.scope("")
            except ValueError as e:
                err = str(e)
            s1 = tensorpool.scopes()
            # A block freed by another thread leaves its scope.
            held = [kv]
            del kv
            t = threading.Thread(target=held.clear)
            t.start()
            t.join()
            s2 = tensorpool.scopes()
            print(json.dumps([s0, s1, s2, err]))
            """
        ),
    )
    s0, s1, s2, err = json.loads(p.stdout)
    by0 = {s["path"]: s for s in s0["scopes"]}
    kv = by0["request/decode"]["own"]["live"]["kv_cache"]
    assert 4_000_000 <= kv <= 4_008_192
    by = {s["path"]: s for s in s1["scopes"]}
    dec, req, smp = by["request/decode"], by["request"], by["request/sampler"]
    assert dec["own"]["live"]["kv_cache"] == kv
    tmp = dec["own"]["peak"]["kv_cache"] - kv
    assert 2_000_000 <= tmp <= 2_008_192
    got = smp["own"]["live_total"]
    assert 2_400_000 <= got <= 2_408_192 and "kv_cache" not in smp["own"]["live"]
    assert req["own"]["live_total"] == 0
    assert req["inclusive"]["live_total"] == kv + got
    assert req["inclusive"]["peak_total"] == kv + max(tmp, got)
    assert req["inclusive"]["peak"]["kv_cache"] == kv + tmp
    by2 = {s["path"]: s for s in s2["scopes"]}
    assert by2["request/decode"]["own"]["live_total"] == 0
    assert by2["request"]["inclusive"]["live_total"] == got
    assert "non-empty" in err


PYTEST_LIMITS = """
import numpy as np, pytest, tensorpool

@pytest.mark.tensorpool_limit(kv_cache="8 MiB")
def test_under():
    with tensorpool.kind("kv_cache"):
        a = np.ones(1 << 20, np.float32)     # 4 MiB
    del a

@pytest.mark.tensorpool_limit(kv_cache="6 MiB", total="1 GiB")
def test_over():
    keep = []
    with tensorpool.kind("kv_cache"), tensorpool.scope("grow_cache"):
        for _ in range(4):
            keep.append(np.ones(1 << 19, np.float32))   # 4 x 2 MiB held at once

@pytest.mark.tensorpool_limit(total="1 MiB")
def test_small_blocks_do_not_count():
    keep = [bytes(1000) for _ in range(10000)]

@pytest.mark.tensorpool_limit(kv_cash="1 MiB")
def test_bad_kind():
    pass

@pytest.mark.tensorpool_limit(kv_cache="lots")
def test_bad_size():
    pass
"""


def test_the_pytest_marker_fails_a_test_over_its_limit(tmp_path):
    f = tmp_path / "test_limits.py"
    f.write_text(PYTEST_LIMITS)
    p = launch("-m", "pytest", "-q", "-p", "no:cacheprovider", "-rA", "--rootdir", str(tmp_path),
               str(f), check=False)
    out = p.stdout + p.stderr
    assert p.returncode == 1, out
    import re

    def outcome(name):
        m = re.search(r"^(PASSED|FAILED|ERROR) \S*test_limits.py::" + name + r"\b", out, re.M)
        return m and m.group(1)

    assert outcome("test_under") == "PASSED", out
    assert outcome("test_small_blocks_do_not_count") == "PASSED", out
    assert outcome("test_over") == "FAILED", out
    assert outcome("test_bad_kind") == "ERROR" and outcome("test_bad_size") == "ERROR", out
    # A block reused from the thread's cache may be larger than asked: 8 MiB or more.
    m = re.search(r"kv_cache peaked at (\d+\.\d) MiB, over the limit of 6.0 MiB", out)
    assert m and float(m.group(1)) >= 8.0, out
    assert re.search(r"MiB  grow_cache", out), "the scope holding the memory is named"
    text = out
    assert "unknown kind 'kv_cash'" in text, out
    assert "'lots' is not a size" in text, out
    # Without the allocator, marked tests are skipped, saying why.
    e = dict(os.environ)
    e.pop("LD_PRELOAD", None)
    q = subprocess.run([PY, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-rs", str(f),
                        "-k", "under"], capture_output=True, text=True, env=e)
    assert q.returncode == 0 and "python -m tensorpool run -m pytest" in q.stdout, q.stdout


PYTHON_STACKS = """
import json, os, sys, threading, numpy as np, tensorpool

def make_cache(n):
    return [np.ones(1 << 20, np.float64) for _ in range(n)]   # line 5: 8 MiB each

class Model:
    def forward(self):
        return make_cache(3)                                   # line 9

def worker(out):
    out.append(np.ones(1 << 21, np.float32))                  # line 12

kept = Model().forward()
out = []
t = threading.Thread(target=worker, args=(out,))
t.start()
t.join()
tensorpool.write_report(sys.argv[1])
print(json.dumps(tensorpool.profile()))
"""


def test_python_stacks_name_the_python_functions_that_allocated(tmp_path):
    script = tmp_path / "stacks.py"
    script.write_text(PYTHON_STACKS)
    page = tmp_path / "report.html"
    p = launch("--profile", "512K", "--python-stacks", str(script), str(page))
    sites = json.loads(p.stdout.splitlines()[-1])["sites"]

    def frames(s):
        return [(f["function"], os.path.basename(f["file"] or ""), f["line"]) for f in s["python"]]

    cache = [s for s in sites if ("make_cache", "stacks.py", 5) in frames(s)]
    assert len(cache) == 1 and 24 << 20 <= cache[0]["bytes"] <= 26 << 20, sites
    assert ("Model.forward", "stacks.py", 9) in frames(cache[0])
    assert cache[0]["stack"], "the native frames stay"
    # A thread started after the stacks were turned on is covered too.
    assert any(("worker", "stacks.py", 12) in frames(s) for s in sites), sites
    html = page.read_text()
    assert "py: make_cache (" in html and "stacks.py:5)" in html
    assert "py: Model.forward" in html
    # Without --profile there is nothing to attach the stacks to: refused.
    q = launch("--python-stacks", str(script), str(page), check=False)
    assert q.returncode == 2 and "add --profile" in q.stderr


def test_without_the_launcher_the_api_says_how_to_start():
    env = dict(os.environ)
    env.pop("LD_PRELOAD", None)
    p = subprocess.run(
        [
            PY,
            "-c",
            code(
                """
                import tensorpool
                assert not tensorpool.is_active()
                for f in (lambda: tensorpool.kind("kv_cache"), tensorpool.memory_stats,
                          tensorpool.scopes, lambda: tensorpool.scope("x").__enter__(),
                          tensorpool.memory_summary, tensorpool.trim,
                          lambda: tensorpool.mark("x"), tensorpool.profile,
                          lambda: tensorpool.write_report("/tmp/x.html")):
                    try:
                        f()
                    except tensorpool.NotActiveError as e:
                        assert isinstance(e, RuntimeError)
                        assert "python -m tensorpool run" in str(e)
                    else:
                        raise SystemExit("no error")
                print("ok")
                """
            ),
        ],
        capture_output=True,
        text=True,
        env=env,
    )
    assert p.returncode == 0 and p.stdout.strip() == "ok", p.stderr


@pytest.mark.parametrize(
    "args, message",
    [
        (["--decay-ms", "soon"], "is not milliseconds"),
        (["--profile", "lots"], "is not a size"),
        (["--thread-cache", "1X"], "is not a size"),
        (["--check", "paranoid"], "invalid choice"),
        (["--stats=yaml"], "invalid choice"),
        ([], "required"),
    ],
)
def test_bad_launcher_options_are_reported(args, message):
    p = launch(*args, *([] if args == [] else ["-c", "pass"]), check=False)
    assert p.returncode == 2 and message in p.stderr, p.stderr


def test_the_example_runs():
    example = os.path.join(os.path.dirname(__file__), "..", "examples", "tag_numpy.py")
    p = launch("--stats", example)
    lines = p.stdout.splitlines()
    live, held = [int(w) for w in lines[0].replace(",", "").split() if w.isdigit()]
    assert held <= live <= held + 4096, lines[0]
    assert "trim returned" in lines[2]
    assert "kv_cache" in p.stderr


def test_a_bad_kind_name_is_an_error():
    p = launch(
        "-c",
        "import tensorpool\ntry:\n    tensorpool.kind('kv-cash')\nexcept ValueError as e:\n"
        "    print(e)\n",
    )
    assert "unknown tensor kind 'kv-cash'" in p.stdout


def test_torch_tensors_land_in_their_kind():
    pytest.importorskip("torch")
    p = launch(
        "-c",
        code(
            """
            import json, torch, tensorpool
            torch.zeros(3_000_000).sum()   # torch's one-time state, outside the kind
            key = "allocated_bytes.kv_cache.current"
            before = tensorpool.memory_stats()[key]
            with tensorpool.kind("kv_cache"):
                t = torch.zeros(3_000_000, dtype=torch.float32)
            held = tensorpool.memory_stats()[key] - before
            n = t.numel() * t.element_size()
            del t
            print(json.dumps([n, held, tensorpool.memory_stats()[key] - before]))
            """
        ),
    )
    n, held, after = json.loads(p.stdout)
    # Whole pages and a cache colour, and the tensor's own small objects made under the kind.
    assert n <= held <= n + 16384, (n, held)
    assert after == 0
