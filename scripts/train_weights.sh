#!/bin/sh
# Trains the mapping-function weights shipped with models/tinylm-25m (SPEC §1 recipe, ha-train) on
# the training text models/tinylm-25m/train_text/jargon-4.4.7.txt.xz (see its README; kept compressed so
# the repository stays small enough to travel to the GPU machine). Deterministic for
# the seed whatever the thread count. When EVAL_TEXT names the held-out evaluation text (default
# /work/shared/data/eval_public.txt if present) it also reports recall there, without training on it.
#
#   scripts/train_weights.sh [BUILD_DIR]      (default: build; needs BUILD_DIR/tools/ha-train)
set -eu
build=${1:-build}
train=${HA_TRAIN:-$build/tools/ha-train}
model=models/tinylm-25m
eval_text=${EVAL_TEXT:-/work/shared/data/eval_public.txt}
text=${TMPDIR:-/tmp}/jargon-4.4.7.txt
xz -dc $model/train_text/jargon-4.4.7.txt.xz >"$text"
set -- --model $model --text "$text" --windows 24 --steps 500 --rows 256 --seed 1 --dtype f16
[ -f "$eval_text" ] && set -- "$@" --eval-text "$eval_text"

"$train" "$@" --mode paper --bits 32 --out $model/hashattn_paper32.safetensors
"$train" "$@" --mode group --bits 32 --out $model/hashattn_group32.safetensors
"$train" "$@" --mode paper --bits 64 --out $model/hashattn_paper64.safetensors
