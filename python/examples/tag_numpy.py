"""numpy's buffers by tensor kind, with the tensorpool package.

    python3 -m pip install ./python
    python3 -m tensorpool run --stats python/examples/tag_numpy.py
"""
import numpy as np

import tensorpool

layers, heads, seq, head_dim = 4, 8, 512, 64
with tensorpool.kind("kv_cache"):
    kv = [np.zeros((2, heads, seq, head_dim), dtype=np.float32) for _ in range(layers)]
with tensorpool.kind("attention"):
    q = np.random.default_rng(0).standard_normal((heads, seq, head_dim), dtype=np.float32)
    scores = q @ q.transpose(0, 2, 1) / np.sqrt(head_dim)
s = tensorpool.memory_stats()
print(f"kv_cache: {s['allocated_bytes.kv_cache.current']} bytes live, "
      f"numpy holds {sum(a.nbytes for a in kv)}")
print(f"attention: {s['allocated_bytes.attention.current']} bytes live "
      f"(scores {scores.nbytes} + q {q.nbytes})")
del kv, scores
print(f"trim returned {tensorpool.trim()} bytes to the OS")
