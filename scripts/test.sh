#!/usr/bin/env bash
# Builds and runs every test: a gcc build, a clang build, an ASan+UBSan build, and a short run of
# every libFuzzer target (scripts/fuzz.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
jobs=$(nproc)

# The CUDA plugin must compile wherever nvcc exists (its GPU tests skip without a device).
[ -x /usr/local/cuda/bin/nvcc ] && ! command -v nvcc >/dev/null && export PATH=$PATH:/usr/local/cuda/bin
cuda=auto
command -v nvcc >/dev/null && cuda=enabled

run() { # name, then meson setup arguments
  local dir=build-test-$1; shift
  rm -rf "$dir"
  meson setup "$dir" -Dcuda=$cuda "$@" >/dev/null
  ninja -C "$dir" >/dev/null
  meson test -C "$dir" --num-processes "$jobs" --print-errorlogs
}

echo "== gcc, debugoptimized"
CC=gcc run gcc
echo "== clang, debugoptimized"
CC=clang run clang
echo "== gcc, address + undefined sanitizers"
CC=gcc ASAN_OPTIONS=detect_leaks=1 UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1 \
  run asan -Db_sanitize=address,undefined -Db_lundef=false
echo "== clang, libFuzzer targets (address + undefined sanitizers), 20 s each"
rm -rf build-test-fuzz
FUZZ_BUILD_DIR=build-test-fuzz scripts/fuzz.sh 20
echo "all test builds passed"
