#!/usr/bin/env bash
# Reproduces docs/quality.md (SPEC §5): selection quality, perplexity and next-token agreement of
# HashAttention on tinylm-25m over eval_public.txt, against oracle top-k, SimHash-32 (MIPS), Quest
# and sink+local. Writes docs/quality/eval.json, eval.txt and the PNG plots.
#
#   scripts/eval_quality.sh [extra ha-eval options, e.g. --ppl 6144:8192]
#
# Environment: BUILD (build directory, default build), TEXT (evaluation text, default
# ../shared/data/eval_public.txt), OUT (output directory, default docs/quality), WEIGHTS (comma-
# separated mapping-weights files; default: the trained weights of models/tinylm-25m that exist,
# then the untrained 32-bit SimHash weights the build makes).
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
build=${BUILD:-build}
text=$(realpath "${TEXT:-../shared/data/eval_public.txt}")
out=${OUT:-docs/quality}

[ -d "$build" ] || meson setup "$build"
ninja -C "$build" tools/ha-eval examples/generate_simhash32.safetensors

if [ -z "${WEIGHTS:-}" ]; then
    list=()
    for f in models/tinylm-25m/hashattn_paper32.safetensors models/tinylm-25m/hashattn_group32.safetensors; do
        [ -f "$f" ] && list+=("$root/$f")
    done
    list+=("$(realpath "$build")/examples/generate_simhash32.safetensors")
    WEIGHTS=$(IFS=,; echo "${list[*]}")
fi

mkdir -p "$out"
out=$(realpath "$out")
# On cores shared with another busy process, run with OMP_WAIT_POLICY=passive: spinning OpenMP
# threads then slow decode down 100x (on idle cores passive costs ~40 %, so it is not the default).
# devenv points HASHATTN_PLUGIN_PATH at this build's plugins (it runs in the build directory)
meson devenv -C "$build" ./tools/ha-eval --model "$root/models/tinylm-25m" --text "$text" \
    --window 8192 --rows 7680:8192 --budgets 1/8,1/16,1/32 --weights "$WEIGHTS" \
    --json "$out/eval.json" "$@" | tee "$out/eval.txt"
python3 scripts/plot_eval.py "$out/eval.json" --out "$out" --markdown "$out/tables.md"
