"""tensorpool for Python: the per-kind memory allocator for ML inference.

Start a program under the allocator with the launcher, which preloads the library this package
carries (the C allocator of the whole process, numpy's and PyTorch's CPU buffers included)::

    python -m tensorpool run [--stats] [--profile 512K] [--report report.html] script.py args...
    python -m tensorpool run -m package.module args...
    python -m tensorpool run -c "code"

Inside such a program::

    import tensorpool
    with tensorpool.kind("kv_cache"):      # numpy arrays / torch CPU tensors made here
        cache = np.zeros((2, 8, 4096, 64), np.float32)   # land in the KV-cache pool
    tensorpool.memory_stats()["allocated_bytes.kv_cache.current"]

Scopes name stretches of a thread's work; large blocks (tensors) allocated inside count
towards the scope and those around it, per kind, live and at peak::

    with tensorpool.scope("prefill"):
        logits = model(ids)
    tensorpool.scopes()["scopes"]    # [{"path": "prefill", "inclusive": {...}, ...}]

``tensorpool.torch.instrument(model)`` makes every module call of a PyTorch model a scope.

Every function but :func:`is_active`, :func:`library_path` and :data:`KINDS` raises
:class:`NotActiveError` (a ``RuntimeError``) when the library is not preloaded, saying how to
start under the launcher: nothing silently does nothing.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import json
import os
import threading
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, Optional, TypeVar, Union

__version__ = "0.3.15"

#: The tensor kinds, in the library's order (their index is the C API's kind number).
KINDS = (
    "general",
    "attention",
    "kv_cache",
    "image_embedding",
    "text_embedding",
    "activation",
)

__all__ = [
    "KINDS",
    "NotActiveError",
    "is_active",
    "library_path",
    "kind",
    "current_kind",
    "memory_stats",
    "memory_summary",
    "trim",
    "mark",
    "write_report",
    "profile",
    "scope",
    "scopes",
    "reset_scope_peaks",
    "share_scopes",
    "scope_depth",
    "python_stacks",
    "__version__",
]


class NotActiveError(RuntimeError):
    """The tensorpool library is not this process's allocator (it was not preloaded)."""


_HOW = (
    "tensorpool is not this process's allocator: start the program with "
    "`python -m tensorpool run script.py` (or `-m module`, `-c code`), "
    "which preloads the library"
)


def library_path() -> Path:
    """Where this package's ``libtensorpool_preload.so`` is."""
    here = Path(__file__).resolve().parent
    for name in sorted(os.listdir(here)):
        if name.startswith("libtensorpool_preload") and ".so" in name:
            return here / name
    raise FileNotFoundError(f"libtensorpool_preload.so is not in {here} (a broken install?)")


_lib: Optional[ctypes.CDLL] = None
_lib_lock = threading.Lock()


def _load() -> Optional[ctypes.CDLL]:
    """The preloaded library's symbols (the process's global namespace), or None."""
    global _lib
    with _lib_lock:
        if _lib is None:
            g = ctypes.CDLL(None, use_errno=True)
            if not hasattr(g, "tensorpool_set_kind"):
                return None
            g.tensorpool_set_kind.argtypes = [ctypes.c_int]
            g.tensorpool_set_kind.restype = ctypes.c_int
            g.tensorpool_get_kind.restype = ctypes.c_int
            g.tensorpool_kind_from_name.argtypes = [ctypes.c_char_p]
            g.tensorpool_kind_from_name.restype = ctypes.c_int
            g.tensorpool_write_stats.argtypes = [ctypes.c_int, ctypes.c_int]
            g.tensorpool_trim.restype = ctypes.c_size_t
            g.tensorpool_mark.argtypes = [ctypes.c_char_p]
            g.tensorpool_write_report.argtypes = [ctypes.c_int]
            g.tensorpool_write_profile.argtypes = [ctypes.c_int, ctypes.c_int]
            g.tensorpool_scope_push.argtypes = [ctypes.c_char_p]
            g.tensorpool_scope_push.restype = ctypes.c_int
            g.tensorpool_scope_pop.restype = ctypes.c_int
            g.tensorpool_scope_depth.restype = ctypes.c_int
            g.tensorpool_scope_reset_peaks.restype = None
            g.tensorpool_scope_share.argtypes = [ctypes.c_int]
            g.tensorpool_scope_share.restype = None
            g.tensorpool_write_scopes.argtypes = [ctypes.c_int, ctypes.c_int]
            _lib = g
        return _lib


_pylib: Optional[ctypes.PyDLL] = None


def _need_py() -> ctypes.PyDLL:
    """The library's quick functions called with the interpreter's lock held (``PyDLL``; a
    ``CDLL`` call releases it): ``tensorpool.torch`` enters a scope on every module call, and
    setting a profile function must hold the lock."""
    global _pylib
    _need()
    if _pylib is None:
        g = ctypes.PyDLL(None)
        g.tensorpool_python_stacks.argtypes = [ctypes.c_int]
        g.tensorpool_python_stacks.restype = ctypes.c_int
        g.tensorpool_scope_enter_kind.argtypes = [ctypes.c_char_p, ctypes.c_int]
        g.tensorpool_scope_enter_kind.restype = ctypes.c_int
        g.tensorpool_scope_leave_kind.argtypes = []
        g.tensorpool_scope_leave_kind.restype = ctypes.c_int
        g.tensorpool_scope_share.argtypes = [ctypes.c_int]
        g.tensorpool_scope_share.restype = None
        g.tensorpool_set_kind.argtypes = [ctypes.c_int]
        g.tensorpool_set_kind.restype = ctypes.c_int
        _pylib = g
    return _pylib


def _need() -> ctypes.CDLL:
    lib = _load()
    if lib is None:
        raise NotActiveError(_HOW)
    return lib


def is_active() -> bool:
    """Whether tensorpool is this process's allocator (the launcher preloaded it)."""
    return _load() is not None


def _kind_index(name: str) -> int:
    lib = _need()
    if not isinstance(name, str):
        raise TypeError(f"a kind is a name such as 'kv_cache', not {type(name).__name__}")
    k = lib.tensorpool_kind_from_name(name.encode())
    if k < 0:
        raise ValueError(f"unknown tensor kind {name!r} (one of {', '.join(KINDS)})")
    return k


F = TypeVar("F", bound=Callable[..., Any])


class kind(contextlib.ContextDecorator):
    """Allocations this thread makes inside the block go to the pool of kind ``name``.

    A context manager and a decorator; scopes nest (the previous kind comes back at the end,
    also on an exception) and are per thread, like the C tag they set::

        with tensorpool.kind("kv_cache"):
            k = np.empty((layers, 2, heads, ctx, dim), np.float16)

        @tensorpool.kind("activation")
        def mlp(x): ...
    """

    def __init__(self, name: str) -> None:
        self.name = name
        self._index = _kind_index(name)
        self._prev = threading.local()

    def __enter__(self) -> "kind":
        stack = getattr(self._prev, "stack", None)
        if stack is None:
            stack = self._prev.stack = []
        stack.append(_need().tensorpool_set_kind(self._index))
        return self

    def __exit__(self, *exc: object) -> None:
        _need().tensorpool_set_kind(self._prev.stack.pop())


def current_kind() -> str:
    """The calling thread's kind."""
    return KINDS[_need().tensorpool_get_kind()]


def _read_fd(write: Callable[[int], int], what: str) -> str:
    """What a C writer puts on a descriptor (through a temporary file: no pipe to fill)."""
    import tempfile

    with tempfile.TemporaryFile() as f:
        if write(f.fileno()) != 0:
            raise OSError(ctypes.get_errno(), f"tensorpool: {what} failed")
        f.seek(0)
        return f.read().decode()


def _stats_json() -> Dict[str, Any]:
    lib = _need()
    return json.loads(_read_fd(lambda fd: lib.tensorpool_write_stats(fd, 1), "write_stats"))


def memory_stats() -> Dict[str, Union[int, float, None]]:
    """The allocator's statistics as one flat dict, keyed as ``torch.cuda.memory_stats()`` is
    where a key fits.

    Per kind ``<k>`` (and ``all`` for the total): ``allocated_bytes.<k>.current`` (live bytes),
    ``.peak`` (most held at once), ``reserved_bytes.<k>.current`` (live + cached + hot: what the
    pool holds), ``requested_bytes.<k>.all`` (bytes asked for), ``num_alloc.<k>``,
    ``num_hits.<k>``, ``hit_rate.<k>`` (None for a pool never asked), ``cached_bytes.<k>``,
    ``hot_bytes.<k>``, ``num_evictions.<k>``; and ``num_alloc_retries`` (allocations that
    released cached memory to the OS and tried again), ``num_ooms`` (requests refused by a limit),
    ``resident_bytes``, ``mapped_bytes``, ``returned_bytes``; and the huge-page figures
    ``huge_pages.enabled`` (the policy), ``huge_pages.resident_bytes`` (the arena's resident
    bytes), ``huge_pages.huge_bytes`` (of those, on transparent huge pages), ``huge_pages.coverage``
    (their ratio; None where smaps cannot be read or nothing is resident) and
    ``huge_pages.cuts`` (purges that cut into a huge page).
    """
    s = _stats_json()
    out: Dict[str, Union[int, float, None]] = {}
    pools = dict(s["kinds"])
    pools["all"] = s["total"]
    for k, p in pools.items():
        out[f"allocated_bytes.{k}.current"] = p["live_bytes"]
        out[f"allocated_bytes.{k}.peak"] = p["peak_live_bytes"]
        out[f"reserved_bytes.{k}.current"] = p["live_bytes"] + p["cached_bytes"] + p["hot_bytes"]
        out[f"requested_bytes.{k}.all"] = p["requested_bytes"]
        out[f"num_alloc.{k}"] = p["requests"]
        out[f"num_hits.{k}"] = p["hits"]
        out[f"hit_rate.{k}"] = p["hit_rate"]
        out[f"cached_bytes.{k}"] = p["cached_bytes"]
        out[f"hot_bytes.{k}"] = p["hot_bytes"]
        out[f"num_evictions.{k}"] = p["evictions"]
    a = s["arena"]
    out["num_alloc_retries"] = a.get("recoveries", 0)
    out["num_ooms"] = s["total"].get("limit_refusals", 0)
    out["resident_bytes"] = s.get("resident_bytes")
    out["mapped_bytes"] = a.get("mapped_bytes")
    out["returned_bytes"] = a.get("purged_bytes")
    out["huge_pages.enabled"] = int(bool(a.get("huge_pages")))
    out["huge_pages.cuts"] = a.get("huge_page_cuts", 0)
    h = s.get("huge_pages") or {}
    out["huge_pages.resident_bytes"] = h.get("resident_bytes")
    out["huge_pages.huge_bytes"] = h.get("huge_bytes")
    r, b = h.get("resident_bytes"), h.get("huge_bytes")
    out["huge_pages.coverage"] = b / r if r else None
    return out


def memory_summary() -> str:
    """The statistics table, as the exit report prints it."""
    lib = _need()
    return _read_fd(lambda fd: lib.tensorpool_write_stats(fd, 0), "write_stats")


def trim() -> int:
    """Return every cached page to the OS; the bytes returned."""
    return int(_need().tensorpool_trim())


def mark(name: str) -> None:
    """Put a named marker ("request 2") on the memory timeline (recorded with ``--timeline``
    or ``--report``)."""
    _need().tensorpool_mark(str(name).encode())


def write_report(path: Union[str, "os.PathLike[str]"]) -> None:
    """Write the HTML memory report (timeline, per-kind table, live call sites) to ``path``."""
    lib = _need()
    fd = os.open(os.fspath(path), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        if lib.tensorpool_write_report(fd) != 0:
            raise OSError(ctypes.get_errno(), "tensorpool: write_report failed")
    finally:
        os.close(fd)


def profile() -> Dict[str, Any]:
    """The profile of live memory by call site: ``{"rate", "dropped", "sites": [{"kind",
    "bytes", "blocks", "samples", "stack": [{"function", "file", "line"}]}]}``. Profiling must
    be on (``--profile 512K``); otherwise ``RuntimeError`` says so."""
    lib = _need()
    p = json.loads(_read_fd(lambda fd: lib.tensorpool_write_profile(fd, 1), "write_profile"))
    if p["rate"] == 0:
        raise RuntimeError(
            "tensorpool: profiling is off; start with `python -m tensorpool run --profile 512K ...`"
        )
    return p


_SCOPE_ERRORS = {
    22: "a scope needs a non-empty name",  # EINVAL
    28: "the scope table is full (4096 distinct scopes)",  # ENOSPC
    7: "scopes nest 255 deep already",  # E2BIG
}


def _push_scope(name: str) -> None:
    """Enter scope ``name`` on this thread; raises ``ValueError`` (empty name) or
    ``RuntimeError`` (a full table, nesting too deep), changing nothing."""
    if not isinstance(name, str):
        raise TypeError(f"a scope name is a str, not {type(name).__name__}")
    lib = _need()
    if lib.tensorpool_scope_push(name.encode()) < 0:
        err = ctypes.get_errno()
        msg = f"tensorpool: cannot enter scope {name!r}: {_SCOPE_ERRORS.get(err, os.strerror(err))}"
        raise (ValueError if err == 22 else RuntimeError)(msg)


class scope(contextlib.ContextDecorator):
    """Large blocks this thread allocates inside the block are attributed to the scope ``name``
    (and to the scopes around it): see :func:`scopes`. A context manager and a decorator;
    scopes nest, are per thread, and end also on an exception::

        with tensorpool.scope("decode"):
            for _ in range(16):
                step()

    An empty name is a ``ValueError``; a full scope table (4096 distinct scopes) or scopes
    nested 255 deep a ``RuntimeError``, raised at entry.
    """

    def __init__(self, name: str) -> None:
        if not isinstance(name, str) or not name:
            raise ValueError(f"tensorpool: a scope needs a non-empty str name, not {name!r}")
        self.name = name

    def __enter__(self) -> "scope":
        _push_scope(self.name)
        return self

    def __exit__(self, *exc: object) -> None:
        _need().tensorpool_scope_pop()


def scopes() -> Dict[str, Any]:
    """Every scope entered so far: ``{"large_live", "outside_live", "refused", "scopes": [{"id",
    "parent", "name", "path", "depth", "own", "inclusive"}]}``, where ``own`` counts the blocks
    allocated while the scope was the innermost and ``inclusive`` those of the scopes inside it
    too, each as ``{"live": {kind: bytes}, "peak": {kind: bytes}, "live_total", "peak_total"}``.
    Large blocks only (above 16 KiB: tensors); ``outside_live`` is what was allocated outside
    every scope."""
    lib = _need()
    return json.loads(_read_fd(lambda fd: lib.tensorpool_write_scopes(fd, 1), "write_scopes"))


def reset_scope_peaks() -> None:
    """Lower every scope's peaks to its live bytes now (peaks from here on are of what runs
    next: a test, a request)."""
    _need().tensorpool_scope_reset_peaks()


def share_scopes(on: bool = True) -> None:
    """Share this thread's scopes with every thread outside all scopes (or stop): worker
    threads (PyTorch's intra-op threads, a thread pool's) then allocate into this thread's
    current scope. One thread shares at a time; the last to call wins."""
    _need().tensorpool_scope_share(1 if on else 0)


def scope_depth() -> int:
    """This thread's scope depth (0: outside every scope)."""
    return int(_need().tensorpool_scope_depth())


def _thread_profile(frame: Any, event: str, arg: Any) -> None:
    # A new thread's first Python event (Python 3.11: no all-threads profile): from here on
    # the C profile function keeps this thread's shadow stack.
    _need_py().tensorpool_python_stacks(1)


def python_stacks(on: bool = True) -> None:
    """Record the Python frames (function, file, line) of every sampled allocation (with
    ``--profile``): ``profile()`` sites gain ``"python"``, the report shows them first. A C
    profile function keeps a shadow stack of each thread's Python calls (memray's way), which
    the allocator reads without calling into the interpreter; it costs tens of nanoseconds per
    Python call and replaces another profile function (cProfile's). Covers every thread (threads
    started later too)."""
    if _need_py().tensorpool_python_stacks(1 if on else 0) < 0:
        raise OSError("tensorpool: the Python C API was not found in this process")
    # Python 3.12+ set it for every thread; before, threads started from now on set it at their
    # first event.
    threading.setprofile(_thread_profile if on else None)
