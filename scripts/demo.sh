#!/usr/bin/env bash
# Sets up a fresh machine, builds, and runs the main demo. Usage: scripts/demo.sh [demo args…]
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
[ -d build ] || meson setup build
ninja -C build
# devenv points HASHATTN_PLUGIN_PATH at the plugins of this build tree
meson devenv -C build ./examples/hello "$@"
