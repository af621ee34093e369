#!/usr/bin/env bash
# device_test.sh — on a machine with an NVIDIA GPU: build hashattn from scratch with the cuda plugin
# and check it.
#
#   1. meson setup -Dcuda=enabled, ninja (a fresh temporary build directory unless one is given);
#   2. meson test: every suite; the cuda conformance suite and the CUDA-graph test must run (a SKIP
#      there is a failure: this machine has a GPU);
#   3. the cuda conformance suite once more with HASHATTN_CUDA_ENCODE_ROWS=1 and =4 (every encode through
#      the row kernel, which the decode steps up to batch ~16 use: tiles by the rule; 4 rows a block), and with HASHATTN_CUDA_FUSED=1 and =0 (the
#      decode step in one launch wherever it applies; never) and with HASHATTN_CUDA_MATCH_WIDE=1 (the
#      match's clusters of 16 blocks wherever the items are few, which by default only plans of
#      ≥ 256 K tokens take);
#   4. compute-sanitizer on the cuda backend: memcheck over the whole conformance suite and the graph
#      test; racecheck, synccheck and initcheck over a subset of cases (HASHATTN_SANITIZE_CASES,
#      substrings of case names separated by spaces).
#
# Usage: scripts/device_test.sh [build-dir]
# The log goes to $OUT/device_test.log (OUT defaults to the current directory), meson's test log to
# $OUT/meson-testlog.txt. Exit status 0 only if every step passed.
#
# Where cmocka or jansson development files are missing (the lent GPU machines), their Debian
# packages are unpacked from .device-deps/*.deb (see shared/DEVICE.md).
set -uo pipefail
cd "$(dirname "$0")/.."
out=${OUT:-$PWD}
mkdir -p "$out"
log=$out/device_test.log
: >"$log"
work=$(mktemp -d)
build=${1:-$work/build}
cases=${HASHATTN_SANITIZE_CASES:-"llama paged7 odd-lengths"}

say() { echo "$*" | tee -a "$log"; }
results=()
failed=0
# step NAME COMMAND...: runs COMMAND with its output in the log, records PASS/FAIL.
step() {
  local name=$1; shift
  say "== $name: $*"
  local t0=$SECONDS
  "$@" >>"$log" 2>&1
  local rc=$?
  local verdict=PASS
  [ $rc -eq 0 ] || { verdict="FAIL (exit $rc)"; failed=1; }
  [ $rc -eq 124 ] && verdict="FAIL (timed out)"
  results+=("$(printf '%-48s %-16s %4ds' "$name" "$verdict" $((SECONDS - t0)))")
  say "   -> $verdict"
  return $rc
}

source scripts/device_deps.sh "$work/deps"
sanitizer=$(command -v compute-sanitizer || ls /usr/local/cuda*/bin/compute-sanitizer 2>/dev/null | head -1)

say "hashattn device test, $(date -u +%Y-%m-%dT%H:%M:%SZ), build dir $build"
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader; nvcc --version | tail -2;
  meson --version; } 2>&1 | tee -a "$log"

step "meson setup" meson setup "$build" -Dcuda=enabled || { say "setup failed"; exit 1; }
step "ninja" ninja -C "$build" || { say "build failed"; exit 1; }
step "meson test (all suites)" meson test -C "$build" --num-processes "$(nproc)" --print-errorlogs
cp "$build/meson-logs/testlog.txt" "$out/meson-testlog.txt" 2>/dev/null
# A GPU machine must run the GPU tests, not skip them.
ran_ok() {
  python3 -c 'import json, re, sys
ok = any(re.search(r"[ :/]" + re.escape(sys.argv[2]) + "$", d["name"]) and d["result"] == "OK"
         for d in map(json.loads, open(sys.argv[1])))
sys.exit(0 if ok else 1)' "$build/meson-logs/testlog.json" "$1"
}
for t in conformance-cuda test_cuda_graph; do
  step "$t ran and passed (not skipped)" ran_ok "$t"
done

plugins=$build/plugins/cuda:$build/plugins/cpu_avx512
for rows in 1 4; do
  step "conformance-cuda, HASHATTN_CUDA_ENCODE_ROWS=$rows" env HASHATTN_BACKEND=cuda HASHATTN_CUDA_ENCODE_ROWS=$rows \
    HASHATTN_PLUGIN_PATH="$plugins" HASHATTN_LOG=error "$build/tests/conformance"
done
for fused in 1 0; do
  step "conformance-cuda, HASHATTN_CUDA_FUSED=$fused" env HASHATTN_BACKEND=cuda HASHATTN_CUDA_FUSED=$fused \
    HASHATTN_PLUGIN_PATH="$plugins" HASHATTN_LOG=error "$build/tests/conformance"
done
step "conformance-cuda, HASHATTN_CUDA_MATCH_WIDE=1" env HASHATTN_BACKEND=cuda HASHATTN_CUDA_MATCH_WIDE=1 \
  HASHATTN_PLUGIN_PATH="$plugins" HASHATTN_LOG=error "$build/tests/conformance"
# san SECONDS TOOL CASES PROGRAM: PROGRAM on the cuda backend under compute-sanitizer, stopped after
# SECONDS (exit 124); CASES filters the conformance cases by name ("" = all); SAN_ENV: VAR=VALUE words.
san() {
  timeout "$1" env ${SAN_ENV:-} HASHATTN_BACKEND=cuda HASHATTN_PLUGIN_PATH="$plugins" HASHATTN_LOG=error \
    HASHATTN_TEST_CASES="$3" "$sanitizer" --tool "$2" --error-exitcode 99 --print-limit 20 "$4"
}
if [ -z "$sanitizer" ]; then
  say "compute-sanitizer not found"; failed=1
else
  step "memcheck: conformance (all cases)" san 240 memcheck "" "$build/tests/conformance"
  step "memcheck: test_cuda_graph" san 60 memcheck "" "$build/tests/test_cuda_graph"
  for c in $cases; do
    step "racecheck: conformance *$c*" san 60 racecheck "$c" "$build/tests/conformance"
  done
  first=${cases%% *}
  step "synccheck: conformance *$first*" san 40 synccheck "$first" "$build/tests/conformance"
  step "initcheck: conformance *$first*" san 40 initcheck "$first" "$build/tests/conformance"
  san_rows() { SAN_ENV=HASHATTN_CUDA_ENCODE_ROWS=4 san "$@"; }
  step "racecheck: conformance *$first*, HASHATTN_CUDA_ENCODE_ROWS=4" san_rows 60 racecheck "$first" \
    "$build/tests/conformance"
  step "synccheck: conformance *$first*, HASHATTN_CUDA_ENCODE_ROWS=4" san_rows 40 synccheck "$first" \
    "$build/tests/conformance"
  # the match's clusters of 16 blocks (cuda_match_cluster.cu) on the suite's one-item cases
  san_wide() { SAN_ENV=HASHATTN_CUDA_MATCH_WIDE=1 san "$@"; }
  for tool in memcheck racecheck synccheck; do
    step "$tool: conformance *long-one-item*, HASHATTN_CUDA_MATCH_WIDE=1" san_wide 60 "$tool" "long-one-item" \
      "$build/tests/conformance"
  done
  # the cases whose decode steps run the fused kernel (cuda_decode_fused.cu), and the graph test
  san_fused() { SAN_ENV=HASHATTN_CUDA_FUSED=1 san "$@"; }
  for tool in memcheck racecheck synccheck; do
    step "$tool: conformance *fused-*, HASHATTN_CUDA_FUSED=1" san_fused 90 "$tool" "fused-" "$build/tests/conformance"
    step "$tool: test_cuda_graph, HASHATTN_CUDA_FUSED=1" san_fused 60 "$tool" "" "$build/tests/test_cuda_graph"
  done
fi

say ""
say "== summary"
for r in "${results[@]}"; do say "$r"; done
[ $failed -eq 0 ] && say "ALL PASSED" || say "SOME STEPS FAILED (see $log)"
exit $failed
