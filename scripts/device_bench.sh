#!/usr/bin/env bash
# device_bench.sh — on a machine with an NVIDIA GPU, in one go, each step under a time limit so that
# the whole fits one lent-machine call (scripts/device_test.sh is the full check):
#
#   1. build from scratch what the steps need (the cuda plugin, the core, the two tests, ha-make-weights);
#   2. conformance-cuda and test_cuda_graph (must pass), and the conformance suite once more with
#      HASHATTN_CUDA_PORTABLE=1 (the kernels an sm_89 card runs, on this card) and with
#      HASHATTN_CUDA_MATCH_LANES=1 (the match's per-lane histograms, which the long chunks of the
#      benchmark shapes use, on the suite's short ones) and with HASHATTN_CUDA_ENCODE_ROWS=1 (the
#      row encode, which the decode steps up to batch ~16 use, on every encode of the suite) and with
#      HASHATTN_CUDA_FUSED=1 and =0 (the decode step in one launch wherever it applies; never) and with
#      HASHATTN_CUDA_MATCH_WIDE=1 (the match's clusters of 16 blocks wherever the items are few);
#   3. bench/bench_cuda.py: the decode step against cuDNN and flash SDPA, each stage alone too; then
#      the paper's configuration (--config paper: MHA 32 heads, fp16, top-k n/32) unless PAPER_SHAPES=none;
#   4. ncu: one step's kernels per mode at PROFILE_SHAPE (duration, DRAM bytes, speed of light);
#   5. compute-sanitizer memcheck and racecheck on a few conformance cases, memcheck on the graph test.
#
# With BASELINE_PLUGIN_SRC (a .tar.gz of an earlier plugins/cuda, e.g. `git archive OLD plugins/cuda |
# gzip > .before/old.tar.gz`, carried in an ignored folder; several, space-separated, for variants),
# that plugin is built too (a copy of the tree with plugins/cuda replaced, in parallel with the main
# build) and benchmarked right before the current one with the same shapes
# (results_cuda_baseline.json, results_cuda_baseline2.json, …): a before/after of one call, each
# with its own cuDNN and flash times.
#
# Usage: scripts/device_bench.sh
# Environment: BENCH_SHAPES (B×n list, default 1x8192,1x131072,1x524288,16x32768), BENCH_SPARSITIES
# (32), BENCH_REPS (30), PAPER_SHAPES (1x8192,1x131072,16x32768; none: skip), PROFILE_SHAPE
# (1x131072), NCU_SECTIONS (SpeedOfLight; e.g. "SpeedOfLight WarpStateStats LaunchStats Occupancy"),
# NCU_FULL_SHAPES (B×n list: also an ncu --set full profile with source counters of NCU_FULL_KERNELS,
# regex encode|match|attend, in NCU_FULL_MODES, paper; ncu_full.ncu-rep, ncu_full.txt, ncu_source.csv),
# SANITIZE_CHECKS (TOOL:CASE list, see below), SANITIZE_ENV (VAR=VALUE words for the checked programs), SANITIZE_SECONDS (45, the limit of each),
# BASELINE_PLUGIN_SRC (above), BENCH_MODES (paper,group).
# Writes under $OUT (default: the current directory): device_bench.log, meson-testlog.txt,
# results_cuda.json, results_cuda.png, results_cuda_paper.json, ncu.txt. Exit status 0 only if every
# step passed.
set -uo pipefail
cd "$(dirname "$0")/.."
out=${OUT:-$PWD}
mkdir -p "$out"
log=$out/device_bench.log
: >"$log"
work=$(mktemp -d)
build=$work/build
source scripts/device_deps.sh "$work/deps"
# TOOL:CASE (a substring of conformance case names, or "graph" for test_cuda_graph)
checks=${SANITIZE_CHECKS:-"memcheck:llama racecheck:llama-group memcheck:long-one-item racecheck:long-one-item memcheck:graph memcheck:odd-lengths racecheck:paged7 memcheck:paged7 synccheck:long-one-item"}

say() { echo "$*" | tee -a "$log"; }
results=()
failed=0
# step NAME SECONDS COMMAND...: COMMAND under a time limit, its output in the log (and on stdout).
step() {
  local name=$1 limit=$2; shift 2
  say "== $name: $*"
  local t0=$SECONDS
  timeout "$limit" "$@" 2>&1 | tee -a "$log"
  local rc=${PIPESTATUS[0]} verdict=PASS
  [ "$rc" -eq 0 ] || { verdict="FAIL (exit $rc)"; failed=1; }
  [ "$rc" -eq 124 ] && verdict="FAIL (timed out after ${limit}s)"
  results+=("$(printf '%-40s %-28s %4ds' "$name" "$verdict" $((SECONDS - t0)))")
  return "$rc"
}

say "hashattn device bench, $(date -u +%Y-%m-%dT%H:%M:%SZ)"
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv,noheader 2>&1 | tee -a "$log"

# baselines: BASELINE_PLUGIN_SRC may name several tarballs (space-separated); baseline i (1, 2, …)
# builds in $work/baseline$i, in the background, and its results go to results_cuda_baseline.json
# (the first) or results_cuda_baseline$i.json
baselines=()
i=0
for tarball in ${BASELINE_PLUGIN_SRC:-}; do
  i=$((i + 1))
  base=$work/baseline$i
  baselines+=("$i:$tarball")
  mkdir -p "$base/src"
  tar -C . --exclude=./.git -cf - . | tar -C "$base/src" -xf -
  rm -rf "$base/src/plugins/cuda" && tar -C "$base/src" -xzf "$tarball"
  ( cd "$base/src" && meson setup "$base/build" -Dcuda=enabled >/dev/null &&
    ninja -C "$base/build" plugins/cuda/hashattn_cuda.so core/libhashattn.so.0.1.0 tools/ha-make-weights
    echo $? >"$base/rc" ) >"$work/baseline_build$i.log" 2>&1 &
done
baseline_json() { [ "$1" = 1 ] && echo "$out/results_cuda_baseline.json" || echo "$out/results_cuda_baseline$1.json"; }
step "meson setup" 60 meson setup "$build" -Dcuda=enabled >/dev/null || exit 1
step "ninja" 300 ninja -C "$build" plugins/cuda/hashattn_cuda.so core/libhashattn.so.0.1.0 tests/conformance \
  tests/test_cuda_graph tests/conformance_match tools/ha-make-weights || exit 1
step "conformance-cuda, conformance_match-cuda, test_cuda_graph" 180 meson test -C "$build" --no-rebuild \
  conformance-cuda conformance_match-cuda test_cuda_graph --print-errorlogs
cp "$build/meson-logs/testlog.txt" "$out/meson-testlog.txt" 2>/dev/null
step "conformance, HASHATTN_CUDA_PORTABLE=1" 180 env HASHATTN_BACKEND=cuda HASHATTN_CUDA_PORTABLE=1 \
  HASHATTN_PLUGIN_PATH="$build/plugins/cuda" HASHATTN_LOG=error OMP_WAIT_POLICY=passive "$build/tests/conformance"

step "conformance, HASHATTN_CUDA_MATCH_LANES=1" 180 env HASHATTN_BACKEND=cuda HASHATTN_CUDA_MATCH_LANES=1 \
  HASHATTN_PLUGIN_PATH="$build/plugins/cuda" HASHATTN_LOG=error OMP_WAIT_POLICY=passive "$build/tests/conformance"

step "conformance, HASHATTN_CUDA_ENCODE_ROWS=1" 180 env HASHATTN_BACKEND=cuda HASHATTN_CUDA_ENCODE_ROWS=1 \
  HASHATTN_PLUGIN_PATH="$build/plugins/cuda" HASHATTN_LOG=error OMP_WAIT_POLICY=passive "$build/tests/conformance"

step "conformance, HASHATTN_CUDA_MATCH_WIDE=1" 180 env HASHATTN_BACKEND=cuda HASHATTN_CUDA_MATCH_WIDE=1 \
  HASHATTN_PLUGIN_PATH="$build/plugins/cuda" HASHATTN_LOG=error OMP_WAIT_POLICY=passive "$build/tests/conformance"

for fused in 1 0; do
  step "conformance, HASHATTN_CUDA_FUSED=$fused" 180 env HASHATTN_BACKEND=cuda HASHATTN_CUDA_FUSED=$fused \
    HASHATTN_PLUGIN_PATH="$build/plugins/cuda" HASHATTN_LOG=error OMP_WAIT_POLICY=passive "$build/tests/conformance"
done
ncu=$(command -v ncu || ls /usr/local/cuda*/bin/ncu /opt/nvidia/nsight-compute/*/ncu 2>/dev/null | head -1)
# that the suite's decode steps do take the fused kernel: the fused-* cases of both modes (groups of 1 and 4)
[ -n "$ncu" ] && step "fused kernel ran in conformance (ncu)" 90 bash -c "env HASHATTN_BACKEND=cuda \
  HASHATTN_CUDA_FUSED=1 HASHATTN_PLUGIN_PATH='$build/plugins/cuda' HASHATTN_LOG=error \
  HASHATTN_TEST_CASES=fused- '$ncu' --kernel-name regex:decode_fused --launch-count 20 \
  --section LaunchStats '$build/tests/conformance' >'$work/ncu_fused.txt' 2>&1; grep -o 'decode_fused_kernel<[0-9]' \
  '$work/ncu_fused.txt' | sort | uniq -c; tail -5 '$work/ncu_fused.txt'; grep -q 'decode_fused_kernel<1' '$work/ncu_fused.txt' &&
  grep -q 'decode_fused_kernel<4' '$work/ncu_fused.txt'"

modes=${BENCH_MODES:+--modes $BENCH_MODES}
for entry in "${baselines[@]}"; do
  i=${entry%%:*} base=$work/baseline${entry%%:*}
  step "baseline $i build (${entry#*:})" 300 bash -c "while [ ! -f '$base/rc' ]; do sleep 1; done;
    tail -2 '$work/baseline_build$i.log'; exit \$(cat '$base/rc')" &&
    step "bench_cuda.py (baseline $i plugin)" 240 env PYTHONUNBUFFERED=1 python3 bench/bench_cuda.py \
      --build "$base/build" --shapes "${BENCH_SHAPES:-1x8192,1x131072,1x524288,16x32768}" \
      --sparsities "${BENCH_SPARSITIES:-32}" $modes --reps "${BENCH_REPS:-30}" --stages --json "$(baseline_json "$i")"
done
step "bench_cuda.py" 240 env PYTHONUNBUFFERED=1 python3 bench/bench_cuda.py --build "$build" $modes \
  --shapes "${BENCH_SHAPES:-1x8192,1x131072,1x524288,16x32768}" --sparsities "${BENCH_SPARSITIES:-32}" \
  --reps "${BENCH_REPS:-30}" --stages --json "$out/results_cuda.json" --png "$out/results_cuda.png"
for entry in "${baselines[@]}"; do
  i=${entry%%:*}
  [ -f "$(baseline_json "$i")" ] && [ -f "$out/results_cuda.json" ] || continue
  # before/after of this call: graph-replay step and stages, µs; each half's own cuDNN
  say "baseline $i: ${entry#*:}"
  python3 - "$(baseline_json "$i")" "$out/results_cuda.json" <<'PY' | tee -a "$log"
import json, sys
before, now = ({(r["batch"], r["n"], r["mode"], r["sparsity"]): r for r in json.load(open(f))["results"]}
               for f in sys.argv[1:3])
print("before/after, " + json.load(open(sys.argv[2]))["info"]["device"] + " (graph replays, us)")
print(f"{'B':>3} {'n':>7} {'mode':5} {'1/s':>3} | {'step':>13} {'cuDNN':>13} {'x cuDNN':>11}"
      f" | {'encode q':>11} {'encode k':>11} {'match':>11} {'attend':>11}")
for key in sorted(set(before) & set(now)):
    b, a = before[key], now[key]
    pair = lambda k: f"{b.get(k, float('nan')):5.1f}->{a.get(k, float('nan')):5.1f}"
    print(f"{key[0]:>3} {key[1]:>7} {key[2]:5} {key[3]:>3} | {pair('hash_graph_us'):>13} {pair('sdpa_cudnn_us'):>13}"
          f" {b['speedup_vs_cudnn']:4.2f}->{a['speedup_vs_cudnn']:4.2f}"
          + "".join(f" {pair('stage_' + s + '_us'):>11}" for s in ("encode_q", "encode_k", "match", "attend")))
PY
done
if [ "${PAPER_SHAPES:-}" != none ]; then
  step "bench_cuda.py --config paper" 180 env PYTHONUNBUFFERED=1 python3 bench/bench_cuda.py --build "$build" \
    --config paper --shapes "${PAPER_SHAPES:-1x8192,1x131072,16x32768}" --reps "${BENCH_REPS:-30}" --stages \
    --json "$out/results_cuda_paper.json"
fi

if [ -n "$ncu" ]; then
  step "ncu (one step per mode)" 120 "$ncu" --profile-from-start off --clock-control none \
    --kernel-name regex:'encode|match|attend|fused' $(for s in ${NCU_SECTIONS:-SpeedOfLight}; do echo --section "$s"; done) \
    --metrics gpu__time_duration.sum,dram__bytes_read.sum,dram__bytes_write.sum,lts__t_bytes.sum \
    --log-file "$out/ncu.txt" python3 bench/bench_cuda.py --build "$build" --profile \
    --shapes "${PROFILE_SHAPE:-1x131072}" --sparsities 32 --json "$work/profile.json"
  if [ -n "${NCU_FULL_SHAPES:-}" ]; then
    # every section, with per-instruction source counters, for the kernels of a few shapes (paper mode
    # unless NCU_FULL_MODES says): the details page and the SASS source page (stall reasons per line)
    step "ncu --set full ($NCU_FULL_SHAPES)" 240 "$ncu" --profile-from-start off --clock-control none --set full \
      --import-source yes --kernel-name regex:"${NCU_FULL_KERNELS:-encode|match|attend}" -f -o "$out/ncu_full" \
      python3 bench/bench_cuda.py --build "$build" --profile --shapes "$NCU_FULL_SHAPES" --sparsities 32 \
      --modes "${NCU_FULL_MODES:-paper}" --json "$work/profile_full.json" &&
      "$ncu" --import "$out/ncu_full.ncu-rep" --page details >"$out/ncu_full.txt" 2>&1 &&
      "$ncu" --import "$out/ncu_full.ncu-rep" --page source --csv --print-source sass >"$out/ncu_source.csv" 2>&1
  fi
else
  say "ncu not found"
fi

sanitizer=$(command -v compute-sanitizer || ls /usr/local/cuda*/bin/compute-sanitizer 2>/dev/null | head -1)
plugins=$build/plugins/cuda
san() { # SECONDS TOOL CASES PROGRAM
  step "$2: $(basename "$4") ${3:-all}" "$1" env ${SANITIZE_ENV:-} HASHATTN_BACKEND=cuda HASHATTN_PLUGIN_PATH="$plugins" \
    HASHATTN_LOG=error HASHATTN_TEST_CASES="$3" "$sanitizer" --tool "$2" --error-exitcode 99 --print-limit 20 "$4" \
    >/dev/null
}
if [ -n "$sanitizer" ]; then
  # most telling first: the call may end before the last
  for run in $checks; do
    tool=${run%%:*} c=${run#*:}
    if [ "$c" = graph ]; then san "${SANITIZE_SECONDS:-45}" "$tool" "" "$build/tests/test_cuda_graph"
    else san "${SANITIZE_SECONDS:-45}" "$tool" "$c" "$build/tests/conformance"; fi
  done
else
  say "compute-sanitizer not found"; failed=1
fi

say ""
say "== summary"
for r in "${results[@]}"; do say "$r"; done
[ $failed -eq 0 ] && say "ALL PASSED" || say "SOME STEPS FAILED (see $log)"
exit $failed
