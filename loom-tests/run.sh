#!/usr/bin/env bash
# Run the loom models: release mode, preemption bound 3 (override with LOOM_MAX_PREEMPTIONS), in
# their own target directory so the `--cfg loom` build does not disturb the normal one.
set -euo pipefail
cd "$(dirname "$0")/.."
export RUSTFLAGS="--cfg loom ${RUSTFLAGS:-}"
export LOOM_MAX_PREEMPTIONS="${LOOM_MAX_PREEMPTIONS:-3}"
exec cargo test --release -p loom-tests --target-dir target/loom "$@"
