"""A pytest plugin (registered by the package's ``pytest11`` entry point): limits on what a test
may hold at its peak, per tensor kind::

    @pytest.mark.tensorpool_limit(kv_cache="64 MiB", total="1 GiB")
    def test_decode_keeps_its_cache_small():
        ...

The test runs in a scope of its own (``test:<node id>``); when it ends, the scope's inclusive
peak of each limited kind (``total``: all kinds together) is compared with the limit, and a test
over it fails with the peak, the limit, the modules or scopes inside the test that held most of
that kind at their peak, and the largest call sites of the kind (with ``--profile``). What is
counted is what the scopes count: large blocks (above 16 KiB: tensor storage) allocated by the
test's thread, or by threads outside every scope while it shares (``tensorpool.share_scopes``:
``tensorpool.torch`` turns it on).

Run pytest (8 or later) under the allocator: ``python -m tensorpool run -m pytest``. Elsewhere a test with
the marker is skipped, saying so. A malformed marker (an unknown kind, a size that is not one)
is an error of the test, not a pass.
"""

from __future__ import annotations

import re
from typing import Dict, List, Tuple

import pytest

import tensorpool

_UNITS = {"": 1, "b": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]?)(?:i?b)?\s*$", re.I)


def parse_size(v: object) -> int:
    """Bytes from an int or a text such as ``"64 MiB"``, ``"1.5G"``, ``"4096"`` (binary units)."""
    if isinstance(v, bool):
        raise ValueError(f"{v!r} is not a size")
    if isinstance(v, int):
        if v < 0:
            raise ValueError(f"{v} is not a size (negative)")
        return v
    m = _SIZE.match(str(v))
    if not m:
        raise ValueError(f"{v!r} is not a size such as '64 MiB', '1.5G' or 4096")
    return int(float(m.group(1)) * _UNITS[m.group(2).lower()])


def _limits(marker: pytest.Mark) -> Dict[str, int]:
    if marker.args:
        raise pytest.UsageError(
            "tensorpool_limit takes kinds as keywords, e.g. tensorpool_limit(kv_cache='64 MiB')"
        )
    if not marker.kwargs:
        raise pytest.UsageError("tensorpool_limit needs at least one limit, e.g. total='1 GiB'")
    out = {}
    for k, v in marker.kwargs.items():
        if k != "total" and k not in tensorpool.KINDS:
            raise pytest.UsageError(
                f"tensorpool_limit: unknown kind {k!r} (one of {', '.join(tensorpool.KINDS)}, total)"
            )
        try:
            out[k] = parse_size(v)
        except ValueError as e:
            raise pytest.UsageError(f"tensorpool_limit({k}=...): {e}") from None
    return out


def _fmt(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


def _peak(b: dict, kind: str) -> int:
    return b["peak_total"] if kind == "total" else b["peak"].get(kind, 0)


def _explain(kind: str, root: dict, scopes: List[dict], profile: object) -> List[str]:
    """The scopes inside the test that held most of ``kind`` at their own peak, and the call
    sites, largest first."""
    lines = []
    prefix = root["path"] + "/"
    inner = [s for s in scopes if s["path"].startswith(prefix) and _peak(s["own"], kind) > 0]
    inner.sort(key=lambda s: -_peak(s["own"], kind))
    if inner:
        lines.append(f"  top modules / scopes (own peak of {kind}):")
        for s in inner[:5]:
            lines.append(f"    {_fmt(_peak(s['own'], kind)):>10}  {s['name']}")
    if isinstance(profile, dict):
        sites = [x for x in profile.get("sites", [])
                 if (kind == "total" or x["kind"] == kind)
                 and (x.get("scope", "") + "/").startswith(prefix[:-1] + "/")]
        sites.sort(key=lambda x: -x["bytes"])
        if sites:
            lines.append("  top call sites (live at the end, sampled):")
            for x in sites[:5]:
                f = x["stack"][0] if x["stack"] else {"function": "?", "file": None, "line": None}
                where = f" ({f['file']}:{f['line']})" if f.get("file") else ""
                lines.append(f"    {_fmt(x['bytes']):>10}  {f['function']}{where}")
    return lines


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "tensorpool_limit(**limits): fail the test if its peak bytes of a kind (general, "
        "attention, kv_cache, image_embedding, text_embedding, activation, or total) pass the "
        "limit ('64 MiB', 1 << 26); needs `python -m tensorpool run -m pytest`",
    )


def pytest_runtest_setup(item: pytest.Item) -> None:
    marker = item.get_closest_marker("tensorpool_limit")
    if marker is None:
        return
    _limits(marker)  # a malformed marker is an error even where the allocator is absent
    if not tensorpool.is_active():
        pytest.skip("tensorpool_limit: tensorpool is not this process's allocator "
                    "(run `python -m tensorpool run -m pytest`)")


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item: pytest.Item):
    marker = item.get_closest_marker("tensorpool_limit")
    if marker is None or not tensorpool.is_active():
        return (yield)
    limits = _limits(marker)
    name = f"test:{item.nodeid}"
    tensorpool.reset_scope_peaks()
    with tensorpool.scope(name):
        result = yield
    snap = tensorpool.scopes()
    # The allocator keeps a name's first 104 bytes.
    kept = name.encode()[:104].decode("utf-8", "replace")
    entries = [s for s in snap["scopes"] if s["name"] == kept]
    if not entries:  # the scope table was full: nothing was attributed to the test
        return result
    # A test run again (a rerun plugin) reaches the same scope; its peaks were reset.
    root = max(entries, key=lambda s: s["inclusive"]["peak_total"])
    over: List[Tuple[str, int, int]] = [
        (k, _peak(root["inclusive"], k), v) for k, v in limits.items()
        if _peak(root["inclusive"], k) > v
    ]
    if over:
        try:
            profile = tensorpool.profile()
        except RuntimeError:
            profile = None
        msg = []
        for k, peak, limit in over:
            msg.append(f"tensorpool_limit: {k} peaked at {_fmt(peak)}, over the limit of {_fmt(limit)}")
            msg.extend(_explain(k, root, snap["scopes"], profile))
        pytest.fail("\n".join(msg), pytrace=False)
    return result
