#!/usr/bin/env bash
# device_ab.sh — on a machine with an NVIDIA GPU: the paper- or group-mode decode step of two
# plugins/cuda trees timed in one call in the order new → base → new (bench/bench_cuda.py with
# --stages), so that a difference that is only the order of the runs shows up as one.
#
#   SHAPES=1x131072,16x32768 [MODES=paper] [SPARSITIES=32,16] [CONFORMANCE_ENV="default VAR=VALUE ..."] \
#     scripts/device_ab.sh BASE.tar.gz
#
# With CONFORMANCE_ENV, the conformance suite and the CUDA-graph test of the new tree run first, once per
# word ("default": no variable; VAR=VALUE: with that one set), and the timings only if all of them pass.
#
# "new" is this tree; BASE.tar.gz holds an earlier plugins/cuda (`git archive OLD plugins/cuda | gzip`),
# carried in an ignored folder. Writes $OUT/new1.json, base.json, new2.json (OUT: default the current
# directory); prints each run's steps and held stage times.
set -u
cd "$(dirname "$0")/.."
out=${OUT:-$PWD}
source scripts/device_deps.sh /tmp/ab-deps
nvidia-smi --query-gpu=name --format=csv,noheader
targets="plugins/cuda/hashattn_cuda.so core/libhashattn.so.0.1.0 tools/ha-make-weights"
checks=${CONFORMANCE_ENV:-}
new_targets="$targets${checks:+ tests/conformance tests/test_cuda_graph plugins/cpu_avx512/hashattn_cpu_avx512.so}"
rm -rf /tmp/ab-base /tmp/ab-new-build /tmp/ab-base-build && mkdir -p /tmp/ab-base
tar --exclude=./.git -cf - . | tar -C /tmp/ab-base -xf - && rm -rf /tmp/ab-base/plugins/cuda &&
  tar -C /tmp/ab-base -xzf "$1" || exit 1
(meson setup /tmp/ab-new-build -Dcuda=enabled >/dev/null && ninja -C /tmp/ab-new-build $new_targets >/dev/null) &
new=$!
(cd /tmp/ab-base && meson setup /tmp/ab-base-build -Dcuda=enabled >/dev/null && ninja -C /tmp/ab-base-build $targets >/dev/null) &
base=$!
wait $new || { echo "new build failed"; exit 1; }
wait $base || { echo "base build failed"; exit 1; }
for c in $checks; do
  [ "$c" = default ] && c=HASHATTN_CUDA_UNSET=1
  for t in conformance test_cuda_graph; do
    echo "== $t, $c"
    env "$c" HASHATTN_BACKEND=cuda HASHATTN_LOG=error \
      HASHATTN_PLUGIN_PATH=/tmp/ab-new-build/plugins/cuda:/tmp/ab-new-build/plugins/cpu_avx512 \
      /tmp/ab-new-build/tests/$t >/tmp/ab-check.log 2>&1 || { tail -40 /tmp/ab-check.log; echo "FAILED: $t, $c"; exit 1; }
    tail -2 /tmp/ab-check.log
  done
done
run() { # BUILD NAME
  echo "== $2"
  PYTHONUNBUFFERED=1 python3 bench/bench_cuda.py --build "$1" --shapes "${SHAPES:-1x131072,16x32768}" \
    --sparsities "${SPARSITIES:-32,16}" --modes "${MODES:-paper}" --reps 30 --stages --json "$out/$2.json" 2>&1 |
    grep -E "^B|stages held"
}
run /tmp/ab-new-build new1 && run /tmp/ab-base-build base && run /tmp/ab-new-build new2
