"""The launcher: re-execute the interpreter with tensorpool preloaded.

``python -m tensorpool run [options] script.py [args...]`` (or ``-m module``, ``-c code``)
sets ``LD_PRELOAD`` to this package's library, turns each option into its ``TENSORPOOL_*``
variable, and replaces itself with ``python script.py args...``: the program then runs in a
process whose every allocation (numpy's, PyTorch's CPU tensors', the interpreter's) comes from
tensorpool. Bad option values are refused here, before anything runs.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from typing import List, Optional, Sequence, Tuple

from tensorpool import __version__, library_path

_SIZE = re.compile(r"^\s*\d+(\.\d+)?\s*([kKmMgGtT](i?[bB])?|[bB])?\s*$")


def _size(text: str) -> str:
    """A size such as 512K, 6M, 1.5G or 4096 (checked here so a typo is an error, not ignored)."""
    if not _SIZE.match(text):
        raise argparse.ArgumentTypeError(f"{text!r} is not a size such as 512K, 6M or 4096")
    return text.strip()


def _decay(text: str) -> str:
    t = text.strip()
    if t != "-1" and not t.isdigit():
        raise argparse.ArgumentTypeError(
            f"{text!r} is not milliseconds (a whole number, 0 for at once, -1 for never)"
        )
    return t


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m tensorpool",
        description="Run a Python program with tensorpool as its memory allocator.",
    )
    p.add_argument("--version", action="version", version=f"tensorpool {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    run = sub.add_parser(
        "run",
        help="run a script, a module (-m) or code (-c) under tensorpool",
        description="Re-execute the interpreter with tensorpool preloaded and run the program.",
        usage="python -m tensorpool run [options] (script.py | -m module | -c code) [args ...]",
    )
    run.add_argument("--stats", nargs="?", const="1", choices=["1", "json"],
                     help="print the statistics at exit (TENSORPOOL_STATS; --stats=json: one JSON line)")
    run.add_argument("--stats-file", metavar="PATH",
                     help="write the exit statistics there (%%p: the pid) (TENSORPOOL_STATS_FILE)")
    run.add_argument("--decay-ms", type=_decay, metavar="MS",
                     help="freed memory idle this long goes back to the OS (TENSORPOOL_DECAY_MS)")
    run.add_argument("--report", metavar="PATH",
                     help="write the HTML memory report at exit (TENSORPOOL_REPORT)")
    run.add_argument("--profile", type=_size, metavar="BYTES",
                     help="sample live memory by call site, one per BYTES on average, e.g. 512K "
                          "(TENSORPOOL_PROFILE)")
    run.add_argument("--timeline", action="store_true",
                     help="record the memory timeline (TENSORPOOL_TIMELINE)")
    run.add_argument("--thread-cache", type=_size, metavar="BYTES",
                     help="bytes of freed large blocks each thread keeps (TENSORPOOL_THREAD_CACHE)")
    run.add_argument("--torch-modules", action="store_true",
                     help="PyTorch: every module call is a scope (its path), tensors get a kind from "
                          "the module; the per-module table is printed at exit")
    run.add_argument("--python-stacks", action="store_true",
                     help="record the Python frames of sampled allocations (with --profile)")
    run.add_argument("--check", choices=["default", "full"],
                     help="full: canaries, quarantine, census at exit (TENSORPOOL_CHECK)")
    # The target is taken apart by `_split` (everything after it is the program's); these
    # entries are for the help text.
    run.add_argument("-m", dest="module", metavar="MODULE", help="run a library module")
    run.add_argument("-c", dest="code", metavar="CODE", help="run code")
    return p, run


def _env(ns: argparse.Namespace) -> dict:
    env = dict(os.environ)
    lib = str(library_path())
    prev = env.get("LD_PRELOAD", "")
    if lib not in prev.split():
        env["LD_PRELOAD"] = f"{lib} {prev}".strip()
    for opt, var in [
        ("stats", "TENSORPOOL_STATS"),
        ("stats_file", "TENSORPOOL_STATS_FILE"),
        ("decay_ms", "TENSORPOOL_DECAY_MS"),
        ("report", "TENSORPOOL_REPORT"),
        ("profile", "TENSORPOOL_PROFILE"),
        ("thread_cache", "TENSORPOOL_THREAD_CACHE"),
        ("check", "TENSORPOOL_CHECK"),
    ]:
        v = getattr(ns, opt)
        if v is not None:
            env[var] = str(v)
    if ns.timeline:
        env["TENSORPOOL_TIMELINE"] = "1"
    if ns.torch_modules:
        env["TENSORPOOL_TORCH_MODULES"] = "1"
    if ns.python_stacks:
        env["TENSORPOOL_PYTHON_STACKS"] = "1"
    return env


def main(argv: Optional[Sequence[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    p, run = _parser()
    if not argv or argv[0] != "run":
        p.parse_args(argv)  # --version, --help, or an unknown command (an error)
        p.print_help()
        return 2
    opts, target, args = _split(argv[1:])
    ns = run.parse_args(opts)
    if target is None:
        run.error("the program is required: a script, -m module or -c code")
    env = _env(ns)
    cmd: List[str] = [sys.executable, *target, *args]
    if ns.python_stacks and ns.profile is None:
        run.error("--python-stacks records the stacks of sampled allocations: add --profile 512K")
    if ns.torch_modules or ns.python_stacks:
        # A bootstrap installs the hooks, then runs the program as the interpreter would.
        cmd = [sys.executable, "-m", "tensorpool._run", *target, *args]
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, cmd, env)
    return 0  # not reached


#: The launcher's options that take a value.
_VALUED = ("--stats-file", "--decay-ms", "--report", "--profile", "--thread-cache", "--check")


def _split(argv: List[str]) -> Tuple[List[str], Optional[List[str]], List[str]]:
    """The launcher's options, the target (``[script]``, ``["-m", module]`` or ``["-c", code]``)
    and the program's arguments: everything after the target is the program's, so that its own
    options (a ``--stats`` of the program, say) are not taken for the launcher's."""
    opts: List[str] = []
    i = 0
    while i < len(argv):
        a = argv[i]
        if a in ("-m", "-c"):
            if i + 1 >= len(argv):
                return opts + [a], None, []
            return opts, [a, argv[i + 1]], argv[i + 2:]
        if a == "--":
            rest = argv[i + 1:]
            return (opts, [rest[0]], rest[1:]) if rest else (opts, None, [])
        if not a.startswith("-"):
            return opts, [a], argv[i + 1:]
        opts.append(a)
        if a in _VALUED and i + 1 < len(argv):
            opts.append(argv[i + 1])
            i += 1
        i += 1
    return opts, None, []
