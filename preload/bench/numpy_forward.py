"""A transformer-like forward pass in numpy, as eager CPU inference does it: prefill over a
prompt, then decode token by token with a KV cache that grows by concatenation, for several
requests. Every step allocates fresh arrays (projections, scores, MLP intermediates), so the
allocator under it (LD_PRELOAD) decides how many page faults and how much memory that costs.

Prints one line: `wall_ms=... checksum=...` (the checksum is the same under every allocator).
"""
import time

import numpy as np

D, HEADS, LAYERS, FF, VOCAB = 512, 8, 4, 2048, 8192
PROMPT, DECODE, REQUESTS = 128, 48, 3
HD = D // HEADS

rng = np.random.default_rng(1234)
W = [
    {
        "qkv": (rng.standard_normal((D, 3 * D)) / np.sqrt(D)).astype(np.float32),
        "o": (rng.standard_normal((D, D)) / np.sqrt(D)).astype(np.float32),
        "up": (rng.standard_normal((D, FF)) / np.sqrt(D)).astype(np.float32),
        "down": (rng.standard_normal((FF, D)) / np.sqrt(FF)).astype(np.float32),
    }
    for _ in range(LAYERS)
]
EMB = (rng.standard_normal((VOCAB, D)) * 0.05).astype(np.float32)


def norm(x):
    return x / np.sqrt((x * x).mean(-1, keepdims=True) + 1e-6)


def layer(x, w, cache, pos):
    """x: [T, D]; cache: (k, v) each [heads, len, hd] or None."""
    t = x.shape[0]
    q, k, v = np.split(norm(x) @ w["qkv"], 3, axis=-1)
    q = q.reshape(t, HEADS, HD).transpose(1, 0, 2)
    k = k.reshape(t, HEADS, HD).transpose(1, 0, 2)
    v = v.reshape(t, HEADS, HD).transpose(1, 0, 2)
    if cache is not None:
        k = np.concatenate([cache[0], k], axis=1)
        v = np.concatenate([cache[1], v], axis=1)
    s = q @ k.transpose(0, 2, 1) / np.sqrt(HD)
    if t > 1:
        s = s + np.triu(np.full((t, k.shape[1]), -1e9, dtype=np.float32), k.shape[1] - t + 1)
    s = np.exp(s - s.max(-1, keepdims=True))
    s /= s.sum(-1, keepdims=True)
    a = (s @ v).transpose(1, 0, 2).reshape(t, D)
    x = x + a @ w["o"]
    h = norm(x) @ w["up"]
    x = x + np.maximum(h, 0) @ w["down"]
    return x, (k, v)


def request(r):
    toks = np.random.default_rng(r).integers(0, VOCAB, PROMPT)
    x = EMB[toks]
    caches = [None] * LAYERS
    for i, w in enumerate(W):
        x, caches[i] = layer(x, w, None, 0)
    out = []
    nxt = int(np.argmax(EMB @ norm(x[-1])))
    for step in range(DECODE):
        out.append(nxt)
        x = EMB[nxt][None, :]
        for i, w in enumerate(W):
            x, caches[i] = layer(x, w, caches[i], PROMPT + step)
        nxt = int(np.argmax(EMB @ norm(x[-1])))
    return out


t0 = time.perf_counter()
tokens = [request(r) for r in range(REQUESTS)]
wall = (time.perf_counter() - t0) * 1e3
checksum = sum((i + 1) * t for seq in tokens for i, t in enumerate(seq)) % 1_000_003
print(f"wall_ms={wall:.1f} checksum={checksum}")
