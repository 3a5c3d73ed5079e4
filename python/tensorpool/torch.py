"""PyTorch on CPU: which module holds the memory.

``instrument(model)`` wraps the ``forward`` of every module of ``model`` so that each
module call is a tensorpool scope named by the module's path (``model.layers.3.self_attn``), and
the tensors it allocates get a kind from what the module is (see :data:`KIND_RULES`); the KV cache
objects of transformers (``transformers.cache_utils``) allocate under ``kv_cache``. Then
:func:`memory_by_module` says, per module, the bytes allocated while it was the innermost module
(``self``) and while it or a module inside it ran (``inclusive``), live now and at peak, per
kind::

    import tensorpool.torch as tpt
    tpt.instrument(model)
    model.generate(ids, max_new_tokens=16)
    print(tpt.format_memory_by_module(top=20))

``python -m tensorpool run --torch-modules script.py`` does the same for every module the script
calls, without a change to it (global module hooks; a model's modules are named when it is first
called), and prints the table at exit.

Why a wrapped ``forward`` and not hooks: any forward hook sends every call of the module through
PyTorch's slow path (the hook dictionaries, ``always_call`` bookkeeping): 2.3 us more per module
call here, against 0.65 us for the wrapper (its two C calls included). The wrapper is a
``functools.partial`` of the bound ``forward`` (as accelerate's hooks are), so
``copy.deepcopy(model)`` gives a copy whose wrappers call the copy; pickling a whole instrumented
model needs tensorpool to unpickle it: ``remove()`` first (``state_dict`` is not affected). The
global hooks of ``--torch-modules`` must be hooks (they reach modules no one named) and cost the
slow path.

What is counted: the large blocks (above 16 KiB: tensor storage) the calling thread allocates
while the module runs, whichever thread frees them. Weights are allocated before any call, so they
are outside every module's scope; :func:`memory_by_module` reports each module's parameter and
buffer bytes under ``weights``. The process must run under the allocator (``python -m tensorpool
run``); otherwise every function here raises :class:`tensorpool.NotActiveError`.
"""

from __future__ import annotations

import atexit
import functools
import sys
import threading
from typing import Any, Dict, List, Optional, Sequence, Tuple

import tensorpool

__all__ = [
    "KIND_RULES",
    "Instrumentation",
    "instrument",
    "install_global_hooks",
    "memory_by_module",
    "format_memory_by_module",
    "kind_of_module",
]

#: How a module's class name maps to a kind: the first rule whose text is in the class name
#: wins; a module no rule matches takes its parent's kind (a ``Linear`` inside an attention
#: block is attention), and the outermost module ``activation``. Extend it per call with
#: ``instrument(model, kinds={"MyBlock": "attention"})`` (those rules come first), or edit this
#: list for the whole process.
KIND_RULES: List[Tuple[str, str]] = [
    ("Rotary", "activation"),
    ("Vision", "image_embedding"),
    ("Visual", "image_embedding"),
    ("PatchEmbed", "image_embedding"),
    ("PatchMerger", "image_embedding"),
    ("Attention", "attention"),
    ("Attn", "attention"),
    ("Embedding", "text_embedding"),
]

_DEFAULT_KIND = "activation"
_names: Dict[str, str] = {}  # scope name -> kind, for every module named
_weights: Dict[str, int] = {}  # scope name -> parameter and buffer bytes it owns directly
_lock = threading.Lock()
_caches_patched = False
_global = None


_cdll = None
_enter: Any = None
_leave: Any = None


def _lib():
    # The scopes' calls hold the interpreter's lock (PyDLL): releasing and taking it back
    # around each would cost more than the calls.
    global _cdll, _enter, _leave
    if _cdll is None:
        lib = tensorpool._need_py()
        _enter, _leave = lib.tensorpool_scope_enter_kind, lib.tensorpool_scope_leave_kind
        _cdll = lib
    return _cdll


def kind_of_module(module: Any, parent_kind: Optional[str] = None,
                   rules: Optional[Sequence[Tuple[str, str]]] = None) -> str:
    """The kind ``module``'s tensors get: the first rule of ``rules`` (default
    :data:`KIND_RULES`) whose text is in its class name, else ``parent_kind``, else
    ``activation``."""
    cls = type(module).__name__
    for text, kind in (KIND_RULES if rules is None else rules):
        if text in cls:
            return kind
    return parent_kind or _DEFAULT_KIND


def _scoped_forward(forward: Any, name: bytes, kind: int, *args: Any, **kwargs: Any) -> Any:
    """A module's ``forward`` run as the scope ``name`` with kind ``kind``: one C call each way
    (the allocator keeps the stack of what each entry changed, and the thread's outermost entry
    shares its scopes with the operators' worker threads). A refused scope (a full table) is
    counted by the allocator and the model runs on."""
    _enter(name, kind)
    try:
        return forward(*args, **kwargs)
    finally:
        _leave()


def _inner_forward(module: Any) -> Any:
    """What a module's ``forward`` runs inside a wrapper of ours (or the ``forward`` itself)."""
    f = module.forward
    if isinstance(f, functools.partial) and f.func is _scoped_forward:
        return f.args[0]
    return f


class _Wrapped:
    """A module whose ``forward`` :func:`instrument` wrapped."""

    __slots__ = ("module",)

    def __init__(self, module: Any, name: bytes, kind: int) -> None:
        self.module = module
        # A partial, not a closure: `copy.deepcopy(model)` copies the bound method inside it
        # with the module, so a copy's forward calls the copy. A wrapper of an earlier
        # instrumentation is replaced, not wrapped: no scope nested in itself.
        module.__dict__["forward"] = functools.partial(
            _scoped_forward, _inner_forward(module), name, kind)

    def remove(self) -> None:
        m = self.module
        f = m.__dict__.get("forward")
        if not (isinstance(f, functools.partial) and f.func is _scoped_forward):
            return  # replaced since by other code: theirs stays
        inner = f.args[0]
        if getattr(inner, "__self__", None) is m and \
                getattr(inner, "__func__", None) is getattr(type(m), "forward", None):
            del m.__dict__["forward"]  # the class's own
        else:
            m.__dict__["forward"] = inner  # an instance's forward set before ours


def _kind_index(kind: str) -> int:
    try:
        return tensorpool.KINDS.index(kind)
    except ValueError:
        raise ValueError(
            f"unknown tensor kind {kind!r} (one of {', '.join(tensorpool.KINDS)})"
        ) from None


def _own_bytes(module: Any) -> int:
    n = 0
    for t in list(module.parameters(recurse=False)) + list(module.buffers(recurse=False)):
        try:
            n += t.numel() * t.element_size()
        except Exception:  # a lazy or meta parameter
            pass
    return n


def _name_modules(root: Any, prefix: str, rules: Sequence[Tuple[str, str]]) -> List[Any]:
    """Give every module under ``root`` its scope name and kind (``_tensorpool_tag``)."""
    kinds: Dict[str, str] = {}
    named = []
    for path, m in root.named_modules():
        parent = path.rpartition(".")[0] if path else None
        kind = kind_of_module(m, kinds.get(parent) if parent is not None else None, rules)
        kinds[path] = kind
        name = path if path else prefix
        m.__dict__["_tensorpool_tag"] = (name.encode(), _kind_index(kind))
        with _lock:
            _names[name] = kind
            _weights[name] = _own_bytes(m)
        named.append(m)
    return named


def _patch_caches() -> None:
    """transformers' KV caches allocate under ``kv_cache`` (their ``update``, wherever called)."""
    global _caches_patched
    with _lock:
        if _caches_patched:
            return
        _caches_patched = True
    try:
        import transformers.cache_utils as cu  # type: ignore
    except Exception:
        return
    bases = tuple(c for c in (getattr(cu, "Cache", None), getattr(cu, "CacheLayerMixin", None))
                  if isinstance(c, type))
    kv = tensorpool.KINDS.index("kv_cache")
    for name in dir(cu):
        cls = getattr(cu, name)
        if not (isinstance(cls, type) and bases and issubclass(cls, bases)):
            continue
        for meth in ("update", "lazy_initialization"):
            f = cls.__dict__.get(meth)
            if f is None or getattr(f, "_tensorpool_kv", False):
                continue

            def wrap(f):
                @functools.wraps(f)
                def kv_update(*a, **k):
                    lib = _lib()
                    prev = lib.tensorpool_set_kind(kv)
                    try:
                        return f(*a, **k)
                    finally:
                        lib.tensorpool_set_kind(prev)

                kv_update._tensorpool_kv = True  # type: ignore[attr-defined]
                return kv_update

            setattr(cls, meth, wrap(f))


class Instrumentation:
    """The wrappers :func:`instrument` put on a model's modules; ``remove()`` (or leaving a
    ``with`` block) puts each module's ``forward`` back (one replaced since by other code keeps
    that code's)."""

    def __init__(self, model: Any, handles: list, names: List[str]) -> None:
        self.model = model
        self.modules = names
        self._handles = handles

    def remove(self) -> None:
        for h in reversed(self._handles):
            h.remove()
        self._handles = []

    def __enter__(self) -> "Instrumentation":
        return self

    def __exit__(self, *exc: object) -> None:
        self.remove()


def instrument(model: Any, kinds: Optional[Dict[str, str]] = None,
               name: Optional[str] = None) -> Instrumentation:
    """Make every call of ``model``'s modules a scope named by the module's path (the model
    itself: ``name``, default its class name), with the module's kind (``kinds`` maps class-name
    texts to kinds, before :data:`KIND_RULES`), and transformers' caches allocate under
    ``kv_cache``. Returns the instrumentation (``.remove()`` it to stop). A scope is left also
    when a forward raises, so scopes stay balanced. Instrumenting a model again re-wraps each
    module's original ``forward`` (no scope nested in itself); either instrumentation's
    ``remove()`` takes the wrappers away."""
    _lib()  # NotActiveError before anything changes
    rules = list((kinds or {}).items()) + KIND_RULES
    for _, k in rules:
        _kind_index(k)
    root = name or type(model).__name__
    mods = _name_modules(model, root, rules)
    handles = [_Wrapped(m, *m.__dict__["_tensorpool_tag"]) for m in mods]
    _patch_caches()
    return Instrumentation(model, handles, [m.__dict__["_tensorpool_tag"][0].decode() for m in mods])


def install_global_hooks(kinds: Optional[Dict[str, str]] = None) -> None:
    """Make every module call of the process a scope (``--torch-modules``): a module first
    called outside any module names itself and everything under it (its class name, then the
    paths below), as :func:`instrument` does. Idempotent."""
    global _global
    import torch  # type: ignore

    _lib()
    if _global is not None:
        return
    rules = list((kinds or {}).items()) + KIND_RULES

    lib = _lib()
    enter, leave = lib.tensorpool_scope_enter_kind, lib.tensorpool_scope_leave_kind

    def pre(module: Any, args: Any) -> None:
        tag = module.__dict__.get("_tensorpool_tag")
        if tag is None:
            _name_modules(module, type(module).__name__, rules)
            tag = module.__dict__["_tensorpool_tag"]
        enter(tag[0], tag[1])

    def post(module: Any, args: Any, output: Any) -> None:
        leave()

    mm = torch.nn.modules.module
    _global = (mm.register_module_forward_pre_hook(pre),
               mm.register_module_forward_hook(post, always_call=True))
    _patch_caches()


def _row() -> Dict[str, Any]:
    return {"self_live": 0, "self_peak": 0, "inclusive_live": 0, "inclusive_peak": 0}


def memory_by_module() -> Dict[str, Dict[str, Any]]:
    """Per module (by scope name: its path), in the order modules were first called::

        {"model.layers.0.self_attn": {"kind": "attention", "weights": bytes,
            "self_live", "self_peak", "inclusive_live", "inclusive_peak",
            "by_kind": {"kv_cache": {"self_live", "self_peak", "inclusive_live",
                                     "inclusive_peak"}, ...}}, ...}

    ``self`` counts the blocks allocated while the module was the innermost one running,
    ``inclusive`` those of the modules it called too; peaks are the most held at once since the
    start (or :func:`tensorpool.reset_scope_peaks`). Scopes that are not modules
    (``tensorpool.scope``) appear too, with ``kind`` None. A module reached under two parents
    (a shared block) sums both. The entry ``"(outside modules)"`` holds the large live bytes
    allocated outside every scope."""
    s = tensorpool.scopes()
    out: Dict[str, Dict[str, Any]] = {}
    for sc in s["scopes"]:
        name = sc["name"]
        e = out.get(name)
        if e is None:
            e = out[name] = _row()
            e["kind"] = _names.get(name)
            e["weights"] = _weights.get(name, 0)
            e["by_kind"] = {}
        for part in ("own", "inclusive"):
            key = "self" if part == "own" else "inclusive"
            b = sc[part]
            e[f"{key}_live"] += b["live_total"]
            e[f"{key}_peak"] += b["peak_total"]
            for k, v in b["peak"].items():
                bk = e["by_kind"].setdefault(k, _row())
                bk[f"{key}_peak"] += v
                bk[f"{key}_live"] += b["live"].get(k, 0)
    out["(outside modules)"] = dict(_row(), kind=None, weights=0, by_kind={},
                                    inclusive_live=s["outside_live"], self_live=s["outside_live"])
    return out


def _size(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


def format_memory_by_module(top: Optional[int] = None, sort: str = "inclusive_peak",
                            table: Optional[Dict[str, Dict[str, Any]]] = None) -> str:
    """:func:`memory_by_module` as a text table (no pandas needed), largest ``sort`` first
    (``inclusive_peak``, ``self_peak``, ``inclusive_live``, ``self_live``, or ``calls`` for the
    order of first call), at most ``top`` rows."""
    t = memory_by_module() if table is None else table
    rows = [(k, v) for k, v in t.items() if k != "(outside modules)"]
    if sort != "calls":
        if sort not in _row():
            raise ValueError(f"sort by one of {', '.join(list(_row()) + ['calls'])}, not {sort!r}")
        rows.sort(key=lambda kv: -kv[1][sort])
    if top is not None:
        rows = rows[:top]
    w = max([len(k) for k, _ in rows] + [24])
    lines = [f"{'module':<{w}} {'kind':<16} {'self peak':>10} {'incl peak':>10} "
             f"{'self live':>10} {'incl live':>10} {'weights':>10}"]
    for k, v in rows:
        lines.append(
            f"{k:<{w}} {v['kind'] or '-':<16} {_size(v['self_peak']):>10} "
            f"{_size(v['inclusive_peak']):>10} {_size(v['self_live']):>10} "
            f"{_size(v['inclusive_live']):>10} {_size(v['weights']):>10}")
    o = t.get("(outside modules)")
    if o is not None:
        lines.append(f"{'(outside modules)':<{w}} {'':<16} {'':>10} {'':>10} {'':>10} "
                     f"{_size(o['inclusive_live']):>10}")
    return "\n".join(lines) + "\n"


def _print_at_exit() -> None:
    try:
        sys.stderr.write("tensorpool: memory by module (large blocks; peaks since start)\n")
        sys.stderr.write(format_memory_by_module(top=40))
    except Exception as e:  # the interpreter is going down; say why, do not raise
        sys.stderr.write(f"tensorpool: no per-module table: {e}\n")


def _boot(argv: Sequence[str]) -> None:
    """``python -m tensorpool run --torch-modules``: hooks on, the table at exit."""
    install_global_hooks()
    atexit.register(_print_at_exit)
