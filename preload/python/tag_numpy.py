"""Tag numpy's allocations by tensor kind with tensorpool's C API (ctypes).

Run with the library preloaded, so that numpy's buffers come from tensorpool:

    LD_PRELOAD=target/release/libtensorpool_preload.so python3 preload/python/tag_numpy.py

It allocates a KV cache and attention scores under their kinds, prints the per-kind statistics
as JSON and checks that each kind's pool holds what was allocated under it.
"""
import contextlib
import ctypes
import json
import os
import sys

import numpy as np

# The preloaded library's symbols are in the global namespace.
tp = ctypes.CDLL(None)
if not hasattr(tp, "tensorpool_set_kind"):
    sys.exit("tensorpool is not preloaded (set LD_PRELOAD to libtensorpool_preload.so)")
tp.tensorpool_set_kind.argtypes = [ctypes.c_int]
tp.tensorpool_kind_from_name.argtypes = [ctypes.c_char_p]
tp.tensorpool_write_stats.argtypes = [ctypes.c_int, ctypes.c_int]
tp.tensorpool_trim.restype = ctypes.c_size_t


@contextlib.contextmanager
def kind(name):
    """Allocations made by this thread inside the block go to the pool of `name`."""
    k = tp.tensorpool_kind_from_name(name.encode())
    if k < 0:
        raise ValueError(f"unknown tensor kind {name!r}")
    prev = tp.tensorpool_set_kind(k)
    try:
        yield
    finally:
        tp.tensorpool_set_kind(prev)


def stats():
    r, w = os.pipe()
    if tp.tensorpool_write_stats(w, 1) != 0:
        raise OSError(ctypes.get_errno(), "tensorpool_write_stats failed")
    os.close(w)
    with os.fdopen(r) as f:
        return json.loads(f.readline())


layers, heads, seq, head_dim = 4, 8, 512, 64
with kind("kv_cache"):
    kv = [np.zeros((2, heads, seq, head_dim), dtype=np.float32) for _ in range(layers)]
with kind("attention"):
    q = np.random.default_rng(0).standard_normal((heads, seq, head_dim), dtype=np.float32)
    scores = q @ q.transpose(0, 2, 1) / np.sqrt(head_dim)
s = stats()
kv_bytes = sum(a.nbytes for a in kv)
live_kv = s["kinds"]["kv_cache"]["live_bytes"]
live_attn = s["kinds"]["attention"]["live_bytes"]
print(f"kv_cache live {live_kv} bytes (numpy holds {kv_bytes}); attention live {live_attn} bytes")
assert live_kv >= kv_bytes, s["kinds"]["kv_cache"]
assert live_attn >= scores.nbytes + q.nbytes, s["kinds"]["attention"]
del kv, scores, q
s = stats()
# Python may keep a few small objects made inside the block (free lists): the arrays are gone.
left = s["kinds"]["kv_cache"]["live_bytes"]
assert left < 4096, s["kinds"]["kv_cache"]
print(f"freed: kv_cache live {left} bytes; trimmed", tp.tensorpool_trim(), "bytes")
