"""``python -m tensorpool._run (script.py | -m module | -c code) [args...]``: run the program
as the interpreter would, after setting up what the launcher's ``--torch-modules`` asks for
(global module hooks, the per-module table at exit) and ``--python-stacks``. The launcher execs this with the library
preloaded; ``sys.argv`` and ``sys.path[0]`` are the program's, as under ``python script.py``."""

from __future__ import annotations

import os
import runpy
import sys


def main(argv: list) -> None:
    if not argv:
        raise SystemExit("tensorpool._run: the program is required: a script, -m module or -c code")
    if os.environ.get("TENSORPOOL_PYTHON_STACKS") == "1":
        import tensorpool

        tensorpool.python_stacks(True)
    if os.environ.get("TENSORPOOL_TORCH_MODULES") == "1":
        import tensorpool.torch

        tensorpool.torch._boot(argv)
    if argv[0] == "-m":
        sys.argv = [argv[1], *argv[2:]]
        sys.path.insert(0, os.getcwd())
        runpy.run_module(argv[1], run_name="__main__", alter_sys=True)
    elif argv[0] == "-c":
        sys.argv = ["-c", *argv[2:]]
        sys.path.insert(0, "")
        exec(compile(argv[1], "<string>", "exec"), {"__name__": "__main__"})
    else:
        sys.argv = list(argv)
        sys.path.insert(0, os.path.dirname(os.path.abspath(argv[0])))
        runpy.run_path(argv[0], run_name="__main__")


if __name__ == "__main__":
    # Our own directory (tensorpool/) went first on sys.path as the -m target's: the program's
    # path goes there instead.
    if sys.path and os.path.abspath(sys.path[0] or ".") == os.path.dirname(os.path.abspath(__file__)):
        sys.path.pop(0)
    main(sys.argv[1:])
