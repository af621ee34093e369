#!/usr/bin/env bash
# Sets up a fresh machine, builds, and runs the main demo: the shipped tiny LM (models/tinylm-25m)
# generating text with HashAttention in layers 3-7, next to dense attention.
# Usage: scripts/demo.sh [generate args…] (e.g. --tokens 128 --backend cpu_avx512)
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
[ -d build ] || meson setup build
ninja -C build
# devenv points HASHATTN_PLUGIN_PATH at the plugins of this build tree
meson devenv -C build ./examples/generate "$@"
