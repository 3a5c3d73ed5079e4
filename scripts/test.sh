#!/usr/bin/env bash
# Every check CI runs, for a developer to run before a change (CI's .ci/run calls this script).
# Needs Rust, python3 (with venv and pip) and a C compiler; what the tests need beyond that
# (numpy and pytest, the Python package's build tools) goes into venvs under target/, made once
# and reused. A case whose tool cannot be had prints why and is skipped: numpy when PyPI cannot
# be reached, the browser part of the HTML report's test without Debian's chromium.
#
#   bash scripts/test.sh          everything (about 6 minutes on 2 cores once built)
#   bash scripts/test.sh --quick  the Rust tests and the Python package's tests only
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"
quick=0
[ "${1:-}" = "--quick" ] && quick=1
step() { echo "=== $1 ($(date +%T))"; }
root=$PWD

# numpy and pytest for the preload library's tests, which run `python3`: the venv's bin goes
# first on PATH. Made once; a venv without them is rebuilt.
venv=target/test-venv
if ! "$venv/bin/python" -c "import numpy, pytest" 2>/dev/null; then
  step "a venv with numpy and pytest ($venv)"
  rm -rf "$venv"
  if python3 -m venv "$venv" &&
    "$venv/bin/python" -m pip install --quiet --disable-pip-version-check numpy pytest; then
    :
  else
    echo "WARNING: no venv with numpy could be made: the numpy cases will be skipped"
  fi
fi
if "$venv/bin/python" -c "import numpy, pytest" 2>/dev/null; then
  export PATH="$root/$venv/bin:$PATH" TENSORPOOL_NUMPY_TEST=1
fi

if [ $quick = 0 ]; then
  if cargo fmt --version >/dev/null 2>&1; then
    step "cargo fmt --check"
    cargo fmt --all -- --check
  fi
  step "no import cycle between src/ modules; every unsafe fn documents its contract"
  python3 .ci/module_cycles.py
  python3 .ci/unsafe_docs.py
fi

step "the allocator's and the C library's tests (doctests included)"
cargo test --release -p tensorpool -p tensorpool-preload

step "the Python package: a binary wheel, installed where no cargo is, its pytest tests"
bash scripts/wheel.sh target/wheels
wheel=$(ls -t target/wheels/tensorpool-*manylinux*.whl 2>/dev/null | head -n 1 || true)
[ -n "$wheel" ] || wheel=$(ls -t target/wheels/tensorpool-*.whl | head -n 1)
rm -rf target/wheel-venv
python3 -m venv target/wheel-venv
# PATH without cargo or rustc: the wheel must install and run without a toolchain.
nocargo=$(echo "$PATH" | tr ':' '\n' | grep -v -e '\.cargo' -e rustup | paste -sd: -)
PATH="$root/target/wheel-venv/bin:$nocargo" bash -c '
  set -euo pipefail
  ! command -v cargo >/dev/null || { echo "cargo is still on PATH"; exit 1; }
  python -m pip install --quiet --disable-pip-version-check --no-index --find-links "$(dirname "$1")" "$1"
  python -m tensorpool run -c "import tensorpool; print(\"wheel ok:\", tensorpool.is_active())"
  if python -m pip install --quiet --disable-pip-version-check numpy pytest; then
    # From the root, not python/, so that the installed package (with its library) is imported.
    python -m pytest -q -p no:cacheprovider python/tests
  else
    echo "WARNING: pytest and numpy could not be installed: the Python package tests are skipped"
  fi
' _ "$wheel"

[ $quick = 1 ] && { step "done (quick)"; exit 0; }

# PyTorch on CPU (a 540 MB wheel, with the CUDA libraries pip cannot leave out: about 90 s and
# 5.6 GB once) and transformers, in a venv of their own made once and reused: the per-module
# attribution on a real model, the --torch-modules launcher, the pytest marker with a model.
tvenv=target/torch-venv
if ! "$tvenv/bin/python" -c "import torch, transformers, pytest, numpy" 2>/dev/null; then
  step "a venv with torch and transformers ($tvenv)"
  rm -rf "$tvenv"
  if ! { python3 -m venv "$tvenv" &&
    "$tvenv/bin/python" -m pip install --quiet --disable-pip-version-check torch transformers pytest numpy; }; then
    echo "WARNING: torch and transformers could not be installed: the PyTorch tests are skipped"
  fi
fi
if "$tvenv/bin/python" -c "import torch, transformers" 2>/dev/null; then
  step "PyTorch: a Qwen2 model instrumented per module, from the wheel ($tvenv)"
  "$tvenv/bin/python" -m pip install --quiet --disable-pip-version-check --force-reinstall --no-deps "$wheel"
  PATH="$root/$tvenv/bin:$nocargo" python -m pytest -q -p no:cacheprovider \
    python/tests/test_torch.py python/tests/test_tensorpool.py -k "torch or scope or pytest"
fi

step "the censuses of the arena and the thread heaps (--features check)"
cargo test --release -p tensorpool --features check --test arena --test heap_check
step "the thread-locals as the C library builds them (--features tls-desc)"
cargo test --release -p tensorpool --features tls-desc --lib tls
step "the crate packages for crates.io (cargo publish --dry-run)"
cargo publish --dry-run --allow-dirty -p tensorpool 2>&1 | tail -n 3
step "the documentation builds without a warning"
RUSTDOCFLAGS="-D warnings" cargo doc --no-deps -p tensorpool
step "the benches build (they run by hand: docs/performance.md)"
cargo bench -p tensorpool-bench --no-run
step "the inference example runs to the end (a few seconds)"
cargo run --release --example inference
step "the loom models (preemption bound 3; a few seconds once built)"
bash loom-tests/run.sh
step "done"
