#!/usr/bin/env bash
# Builds and runs every test: a gcc build, a clang build, an ASan+UBSan build, a ThreadSanitizer
# build that runs the thread and unit suites (docs/reliability.md, "Thread safety"), and a short run
# of every libFuzzer target (scripts/fuzz.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
jobs=$(nproc)

# The CUDA plugin must compile wherever nvcc exists (its GPU tests skip without a device).
[ -x /usr/local/cuda/bin/nvcc ] && ! command -v nvcc >/dev/null && export PATH=$PATH:/usr/local/cuda/bin
cuda=auto
command -v nvcc >/dev/null && cuda=enabled

run() { # name, then meson setup arguments; $suites, when set, limits meson test to those suites
  local dir=build-test-$1; shift
  rm -rf "$dir"
  meson setup "$dir" -Dcuda=$cuda "$@" >/dev/null
  ninja -C "$dir" >/dev/null
  local only=()
  for s in ${suites:-}; do only+=(--suite "$s"); done
  meson test -C "$dir" --num-processes "$jobs" --print-errorlogs "${only[@]}"
}

echo "== gcc, debugoptimized"
CC=gcc run gcc
echo "== clang, debugoptimized"
CC=clang run clang
echo "== gcc, address + undefined sanitizers"
CC=gcc ASAN_OPTIONS=detect_leaks=1 UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1 \
  run asan -Db_sanitize=address,undefined -Db_lundef=false
# ThreadSanitizer sees only instrumented code: libgomp (gcc's OpenMP runtime) is not, so the
# happens-before edges of its barriers would be invisible and OpenMP worker threads would look racy.
# One OpenMP thread per team keeps every parallel region on its calling thread: the races TSan can
# then see are between the host's threads, which is the contract under test. No CUDA: its driver is
# not instrumented either.
echo "== gcc, thread sanitizer (suites threads and unit, OMP_NUM_THREADS=1)"
CC=gcc cuda=disabled suites="threads unit" OMP_NUM_THREADS=1 \
  TSAN_OPTIONS=allocator_may_return_null=1:halt_on_error=1 \
  run tsan -Db_sanitize=thread -Db_lundef=false
echo "== clang, libFuzzer targets (address + undefined sanitizers), 20 s each"
rm -rf build-test-fuzz
FUZZ_BUILD_DIR=build-test-fuzz scripts/fuzz.sh 20
echo "all test builds passed"
