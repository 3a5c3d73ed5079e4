"""PyTorch on CPU under the allocator, with a real model: transformers' Qwen2 built from a small
config with random weights, one prefill and 16 decode steps, instrumented by
``tensorpool.torch``. Skipped where torch or transformers is not installed (CI installs both)."""

import json
import os
import subprocess
import sys
import textwrap

import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")

PY = sys.executable

EXAMPLES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "examples")

# The example's model with 4 layers and 4,096 tokens: `cfg`, `model`, `ids` (256 tokens), and
# `run(model, steps)`, a prefill and greedy decode steps returning the output and the cache.
MODEL = f"""
import json, sys, torch, tensorpool, tensorpool.torch as tpt
sys.path.insert(0, {EXAMPLES!r})
from torch_modules import build, generate
cfg, model, ids = build(layers=4, vocab=4096)

def live():
    return tensorpool.memory_stats()["allocated_bytes.all.current"]

def run(model, steps=16):
    return generate(cfg, model, ids, steps)
"""


def launch(src, *opts, check=True):
    e = dict(os.environ)
    e.pop("LD_PRELOAD", None)
    e["PYTHONWARNINGS"] = "ignore"
    p = subprocess.run([PY, "-m", "tensorpool", "run", *opts, "-c", textwrap.dedent(src)],
                       capture_output=True, text=True, env=e, timeout=600)
    if check:
        assert p.returncode == 0, p.stdout + p.stderr
    return p


def test_memory_by_module_names_the_layers_and_accounts_for_the_run():
    p = launch(MODEL + """
tpt.instrument(model)
with torch.no_grad():
    model(ids[:, :8])   # first calls: oneDNN's and the interpreter's one-time buffers
l0, s0 = live(), tensorpool.scopes()
root0 = tpt.memory_by_module()["Qwen2ForCausalLM"]["inclusive_live"]
tensorpool.reset_scope_peaks()
out, cache = run(model)
l1, t = live(), tpt.memory_by_module()
kv = sum(x.numel() * x.element_size() for layer in cache.layers for x in (layer.keys, layer.values))
print(json.dumps({"delta": l1 - l0, "root": t["Qwen2ForCausalLM"]["inclusive_live"] - root0,
                  "kv": kv, "table": t, "depth": tensorpool.scope_depth()}))
""")
    r = json.loads(p.stdout.splitlines()[-1])
    t = r["table"]
    attn, mlp, emb = (t["model.layers.0.self_attn"], t["model.layers.0.mlp"],
                      t["model.embed_tokens"])
    assert attn["kind"] == "attention" and attn["inclusive_peak"] > 0
    assert mlp["kind"] == "activation" and mlp["inclusive_peak"] > 0
    assert t["model.layers.0.mlp.gate_proj"]["kind"] == "activation"
    assert t["model.layers.0.self_attn.q_proj"]["kind"] == "attention", "inherits its parent's"
    assert emb["kind"] == "text_embedding" and emb["inclusive_peak"] > 0
    assert emb["weights"] == 4096 * 512 * 4
    # The KV cache: under kv_cache, in the attention modules, within 5 % of its tensors' bytes.
    kv = sum(v["by_kind"].get("kv_cache", {}).get("self_live", 0) for v in t.values())
    assert r["kv"] <= kv <= r["kv"] * 1.05, (kv, r["kv"])
    for i in range(4):
        assert t[f"model.layers.{i}.self_attn"]["by_kind"]["kv_cache"]["self_live"] > 0
    # What the run left live is the model's: the root's inclusive bytes match the process's
    # live bytes (all kinds, small blocks too) within 5 %.
    assert abs(r["root"] - r["delta"]) <= 0.05 * r["delta"], (r["root"], r["delta"])
    assert r["depth"] == 0, "every scope was left"


def test_a_module_that_leaks_a_tensor_is_named():
    p = launch(MODEL + """
kept = []
class Leak(torch.nn.Module):
    def __init__(self, inner):
        super().__init__()
        self.inner = inner
    def forward(self, x):
        y = self.inner(x)
        kept.append(y * 1.0)       # a copy kept past the call: the leak
        return y
model.model.layers[2].mlp = Leak(model.model.layers[2].mlp)
tpt.instrument(model)
run(model, steps=4)
# What a module still holds after a run may be a cache of the backend's (oneDNN packs weights
# at first use); what grows from run to run is a leak.
t1 = tpt.memory_by_module()
run(model, steps=4)
t2 = tpt.memory_by_module()
growth = sorted(((t2[k]["self_live"] - t1.get(k, {"self_live": 0})["self_live"], k)
                 for k in t2 if k != "(outside modules)"), reverse=True)
print(json.dumps(growth[:3]))
""")
    top = json.loads(p.stdout.splitlines()[0])
    assert top[0][1] == "model.layers.2.mlp", p.stdout
    assert top[0][0] >= 256 * 512 * 4, "the prefill's copy alone"
    assert top[1][0] == 0, "nothing else grows"


def test_scopes_stay_balanced_when_a_forward_raises():
    p = launch(MODEL + """
tpt.instrument(model)
bad = torch.zeros((1, 3), dtype=torch.float32)   # not token ids: embedding raises
try:
    model(bad)
except Exception as e:
    print("raised", type(e).__name__)
print("depth", tensorpool.scope_depth(), tensorpool.current_kind())
""")
    assert "raised" in p.stdout and "depth 0 general" in p.stdout, p.stdout


def test_the_launcher_instruments_every_module_without_code(tmp_path):
    script = tmp_path / "infer.py"
    script.write_text(MODEL + "\nrun(model, steps=2)\nprint('done')\n")
    e = dict(os.environ)
    e.pop("LD_PRELOAD", None)
    e["PYTHONWARNINGS"] = "ignore"
    p = subprocess.run([PY, "-m", "tensorpool", "run", "--torch-modules", str(script)],
                       capture_output=True, text=True, env=e, timeout=600)
    assert p.returncode == 0 and p.stdout.strip() == "done", p.stdout + p.stderr
    assert "tensorpool: memory by module" in p.stderr
    for name in ("model.layers.0.self_attn", "model.layers.3.mlp", "model.embed_tokens"):
        assert name in p.stderr, p.stderr


def test_a_pytest_limit_on_the_kv_cache_of_a_real_model(tmp_path):
    f = tmp_path / "test_model.py"
    f.write_text(MODEL + textwrap.dedent("""
        import pytest
        tpt.instrument(model)

        @pytest.mark.tensorpool_limit(kv_cache="1 MiB")
        def test_decode_over():
            run(model, steps=4)

        @pytest.mark.tensorpool_limit(kv_cache="64 MiB")
        def test_decode_under():
            run(model, steps=4)
        """))
    e = dict(os.environ)
    e.pop("LD_PRELOAD", None)
    e["PYTHONWARNINGS"] = "ignore"
    p = subprocess.run([PY, "-m", "tensorpool", "run", "-m", "pytest", "-q", "-p",
                        "no:cacheprovider", "-rA", str(f)],
                       capture_output=True, text=True, env=e, timeout=600)
    out = p.stdout + p.stderr
    assert p.returncode == 1, out
    assert "over the limit of 1.0 MiB" in out and "self_attn" in out, out
    assert "1 failed, 1 passed" in out, out


def test_instrumenting_wraps_forward_once_and_remove_restores_it():
    p = launch(MODEL + """
import copy
mlp = model.model.layers[1].mlp
seen = []
class Probe(torch.nn.Module):
    def __init__(self, inner):
        super().__init__()
        self.inner = inner
    def forward(self, x):
        seen.append(tensorpool.scope_depth())
        return self.inner(x)
mlp.act_fn = Probe(mlp.act_fn)
a = tpt.instrument(model)
b = tpt.instrument(model)          # again: the wrappers are replaced, not nested
run(model, steps=0)
copied = copy.deepcopy(model)      # a copy's wrappers call the copy
same = copied.model.layers[1].mlp.forward.args[0].__self__ is copied.model.layers[1].mlp
b.remove()
a.remove()
run(model, steps=0)
print(json.dumps({"depths": seen, "copy_calls_copy": same,
                  "left": sum("forward" in m.__dict__ for m in model.modules()),
                  "depth_after": tensorpool.scope_depth()}))
""")
    r = json.loads(p.stdout.splitlines()[-1])
    # Qwen2ForCausalLM > model > layers.1 > mlp > act_fn: 5 deep once instrumented, 0 after.
    assert r["depths"] == [5, 0], r
    assert r["copy_calls_copy"], r
    assert r["left"] == 0 and r["depth_after"] == 0, r
