"""Which module holds the memory: transformers' Qwen2, built from a small config with random
weights on torch CPU, one prefill of 256 tokens and 16 decode steps, under tensorpool.

    python -m tensorpool run python/examples/torch_modules.py on       # instrumented: the table
    python -m tensorpool run python/examples/torch_modules.py off      # the same run, not instrumented
    python python/examples/torch_modules.py compare 5                  # wall time on vs off,
                                                                       # 5 alternating runs each
    python -m tensorpool run python/examples/torch_modules.py pairs 25 [general]
                                          # 25 alternating pairs in one process: the median ratio
    python -m tensorpool run python/examples/torch_modules.py calls   # per module call: bare,
                                          # instrumented, and the same C calls from torch hooks
    python python/examples/torch_modules.py profiler   # torch.profiler(profile_memory=True)
    python -m memray run -o run.bin python/examples/torch_modules.py plain   # memray's view

Needs torch and transformers (``pip install torch transformers``). Each run prints one JSON line
last: the wall time of prefill + decode in seconds and, instrumented, the per-module figures.
"""

import json
import os
import statistics
import subprocess
import sys
import time


def build(layers=8, vocab=8192):
    """The model (random weights, seeded), its config and a prompt of 256 token ids."""
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    cfg = Qwen2Config(vocab_size=vocab, hidden_size=512, intermediate_size=1408,
                      num_hidden_layers=layers, num_attention_heads=8, num_key_value_heads=4,
                      max_position_embeddings=1024)
    torch.manual_seed(0)
    return cfg, Qwen2ForCausalLM(cfg).eval(), torch.randint(0, cfg.vocab_size, (1, 256))


def generate(cfg, model, ids, steps=16):
    """One prefill of ``ids`` and ``steps`` greedy decode steps; the last output and the cache."""
    import torch
    from transformers import DynamicCache

    cache = DynamicCache(config=cfg)
    with torch.no_grad():
        out = model(ids, past_key_values=cache, use_cache=True)
        for _ in range(steps):
            nxt = out.logits[:, -1:].argmax(-1)
            out = model(nxt, past_key_values=cache, use_cache=True)
    return out, cache


def run(mode):
    import warnings

    warnings.filterwarnings("ignore")
    cfg, model, ids = build()
    if mode == "on":
        import tensorpool.torch as tpt

        tpt.instrument(model)
    generate(cfg, model, ids[:, :8], steps=1)  # first calls: one-time buffers, in both modes
    if mode == "on":
        import tensorpool

        live0 = tensorpool.memory_stats()["allocated_bytes.all.current"]
        root0 = tpt.memory_by_module()[type(model).__name__]["inclusive_live"]
    t0 = time.perf_counter()
    out, cache = generate(cfg, model, ids)
    wall = time.perf_counter() - t0
    result = {"mode": mode, "wall_s": wall}
    if mode == "on":
        table = tpt.memory_by_module()
        # What the run left live (the process's bytes, small blocks too) against what the
        # scopes attribute to the model.
        result["run_live"] = tensorpool.memory_stats()["allocated_bytes.all.current"] - live0
        result["root_live"] = table[type(model).__name__]["inclusive_live"] - root0
        print(tpt.format_memory_by_module(top=16))
        result["modules"] = len(table) - 1
        result["kv_cache_live"] = sum(v["by_kind"].get("kv_cache", {}).get("self_live", 0)
                                      for v in table.values())
        result["kv_tensors"] = sum(x.numel() * x.element_size()
                                   for layer in cache.layers for x in (layer.keys, layer.values))
        result["live_all"] = tensorpool.memory_stats()["allocated_bytes.all.current"]
    print(json.dumps(result))


def profiler():
    import warnings

    import torch

    warnings.filterwarnings("ignore")
    cfg, model, ids = build()
    generate(cfg, model, ids[:, :8], steps=1)
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU],
                                profile_memory=True) as prof:
        generate(cfg, model, ids)
    print(prof.key_averages().table(sort_by="self_cpu_memory_usage", row_limit=12))


def pairs(n, general=False):
    """In one process (under the launcher): ``n`` pairs of runs, instrumented and not, in
    alternating order; the median of the pairwise time ratios. ``general``: every module under
    the general kind (the uninstrumented run's pools), to separate the kinds' share."""
    import statistics
    import warnings

    import tensorpool.torch as tpt

    warnings.filterwarnings("ignore")
    cfg, model, ids = build()
    generate(cfg, model, ids[:, :8], steps=1)
    ratios, on, off = [], [], []
    for i in range(n):
        t = {}
        for mode in ("off", "on") if i % 2 == 0 else ("on", "off"):
            ins = None
            if mode == "on":
                ins = tpt.instrument(model, kinds={"": "general"} if general else None)
            t0 = time.perf_counter()
            generate(cfg, model, ids)
            t[mode] = time.perf_counter() - t0
            if ins is not None:
                ins.remove()
        ratios.append(t["on"] / t["off"])
        on.append(t["on"])
        off.append(t["off"])
    print(json.dumps({"pairs": n, "general": general, "median_ratio": statistics.median(ratios),
                      "median_on_s": statistics.median(on), "median_off_s": statistics.median(off)}))


def calls(rounds=7, n=100_000):
    """Per call of a trivial module, medians of ``rounds`` alternating rounds of ``n`` calls:
    bare, instrumented (the wrapped ``forward``), and the same two C calls made from a forward
    pre-hook and a post-hook instead (what an instrumentation by hooks would cost)."""
    import torch

    import tensorpool
    import tensorpool.torch as tpt

    lib = tensorpool._need_py()
    enter, leave = lib.tensorpool_scope_enter_kind, lib.tensorpool_scope_leave_kind
    x = torch.zeros(1)

    def bare():
        return torch.nn.Identity()

    def wrapped():
        m = torch.nn.Identity()
        tpt.instrument(m)
        return m

    def hooked():
        m = torch.nn.Identity()
        m.register_forward_pre_hook(lambda mod, a: enter(b"Identity", 0))
        m.register_forward_hook(lambda mod, a, o: leave(), always_call=True)
        return m

    ns = {"bare": [], "instrumented": [], "hooks": []}
    for r in range(rounds):
        order = list(ns) if r % 2 == 0 else list(reversed(ns))
        for name in order:
            m = {"bare": bare, "instrumented": wrapped, "hooks": hooked}[name]()
            t0 = time.perf_counter()
            for _ in range(n):
                m(x)
            ns[name].append((time.perf_counter() - t0) / n * 1e9)
    print(json.dumps({k: round(statistics.median(v)) for k, v in ns.items()} | {"unit": "ns"}))


def compare(n):
    here = os.path.abspath(__file__)
    walls = {"on": [], "off": []}
    for i in range(n):
        for mode in ("off", "on") if i % 2 == 0 else ("on", "off"):
            p = subprocess.run([sys.executable, "-m", "tensorpool", "run", here, mode],
                               capture_output=True, text=True, check=True)
            walls[mode].append(json.loads(p.stdout.splitlines()[-1])["wall_s"])
    on, off = statistics.median(walls["on"]), statistics.median(walls["off"])
    print(json.dumps({"runs": n, "off_s": walls["off"], "on_s": walls["on"],
                      "median_off_s": off, "median_on_s": on, "cost": on / off - 1}))


if __name__ == "__main__":
    what = sys.argv[1] if len(sys.argv) > 1 else "on"
    if what in ("on", "off"):
        run(what)
    elif what == "plain":
        cfg, model, ids = build()
        generate(cfg, model, ids)
    elif what == "profiler":
        profiler()
    elif what == "pairs":
        pairs(int(sys.argv[2]) if len(sys.argv) > 2 else 25, "general" in sys.argv[3:])
    elif what == "calls":
        calls()
    elif what == "compare":
        compare(int(sys.argv[2]) if len(sys.argv) > 2 else 5)
    else:
        raise SystemExit("usage: torch_modules.py (on | off | plain | profiler | compare [N] | "
                         "pairs [N] [general] | calls)")
