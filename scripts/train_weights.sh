#!/bin/sh
# Trains the mapping-function weights shipped with models/tinylm-25m (ha-train) on the training text
# models/tinylm-25m/train_text/jargon-4.4.7.txt.xz (see its README; kept compressed so the
# repository stays small enough to travel to the GPU machine). Deterministic for the seed whatever
# the thread count. When EVAL_TEXT names the held-out evaluation text (default
# /work/shared/data/eval_public.txt if present) it also reports recall there, without training on it.
#
#   scripts/train_weights.sh [BUILD_DIR]      (default: build; needs BUILD_DIR/tools/ha-train, ha-merge-weights)
#
# Recipes (docs/quality.md): paper mode trains with targets at the evaluation budgets
# (--target-frac 1/8,1/16,1/32, α 5) instead of the paper's top-32 (α 20); paper mode's layers 3 and 4
# are then retrained (below). Group mode: both recipes, each fine-tuned with the attention-mass loss,
# layers picked on the validation window (below; session 8). The 64-bit paper-mode weights (the
# beyond-the-paper result, below) are not shipped: they go to BUILD_DIR/hashattn_paper64.safetensors
# (3.3 MB: the tree has no room for it under the 64 MiB a GPU-machine call carries).
set -eu
build=${1:-build}
train=${HA_TRAIN:-$build/tools/ha-train}
model=models/tinylm-25m
eval_text=${EVAL_TEXT:-/work/shared/data/eval_public.txt}
text=${TMPDIR:-/tmp}/jargon-4.4.7.txt
xz -dc $model/train_text/jargon-4.4.7.txt.xz >"$text"
set -- --model $model --text "$text" --windows 24 --steps 500 --rows 256 --seed 1 --dtype f16
[ -f "$eval_text" ] && set -- "$@" --eval-text "$eval_text"
budgets="--target-frac 1/8,1/16,1/32 --alpha 5"

# Paper mode: every sparse layer with the budget recipe, then layer 3 retrained with targets at the
# two smaller budgets (α 10; docs/quality.md, "Per-layer training": it beats Quest p128 there at every
# budget) and merged in. Layers 3 and 4 are trained together exactly as in that measured run.
# Then layer 4 fine-tuned from that file for 200 steps with the attention-mass loss (--loss mass,
# T 2, BCE weight 0.3, lr 3e-4; docs/quality.md, "Attention-mass loss": it beats Quest p128 there at
# every budget) and merged in.
merge=${HA_MERGE:-$build/tools/ha-merge-weights}
"$train" "$@" --mode paper --bits 32 $budgets --out "$build/hashattn_paper32_all.safetensors"
"$train" "$@" --mode paper --bits 32 --dense-layers 0,1,2,5,6,7 --target-frac 1/16,1/32 --alpha 10 \
    --out "$build/hashattn_paper32_l34.safetensors"
"$merge" --out "$build/hashattn_paper32_bce.safetensors" \
    "$build/hashattn_paper32_all.safetensors" --take "3:$build/hashattn_paper32_l34.safetensors"
"$train" "$@" --mode paper --bits 32 $budgets --dense-layers 0,1,2,3,5,6,7 --init "$build/hashattn_paper32_bce.safetensors" \
    --loss mass --mass-temp 2 --mass-bce 0.3 --lr 3e-4 --steps 200 --out "$build/hashattn_paper32_l4mass.safetensors"
"$merge" --out $model/hashattn_paper32.safetensors \
    "$build/hashattn_paper32_bce.safetensors" --take "4:$build/hashattn_paper32_l4mass.safetensors"
# Group mode (session 8; docs/quality.md, "Group mode with budget targets and the mass loss"): the
# paper's top-32 recipe and the budget recipe, each then fine-tuned on every sparse layer for 200
# steps with the attention-mass loss (T 2, BCE weight 0.3, lr 3e-4, budget targets); per layer the
# run with the best mean validation-window recall over the three budgets: layer 3 from the top-32
# start, layers 4-7 from the budget start. Expected sha256 of the result:
# a6277488c1b73afd5d69d5cf6b2578cbdb23d807f83622eaa70723e6961acaa2 (2,234,240 bytes).
g32=$build/hashattn_group32
gmass="--mode group --bits 32 $budgets --dense-layers 0,1,2 --loss mass --mass-temp 2 --mass-bce 0.3 --lr 3e-4 --steps 200"
"$train" "$@" --mode group --bits 32 --out "${g32}_top32.safetensors"
"$train" "$@" --mode group --bits 32 $budgets --out "${g32}_budget.safetensors"
"$train" "$@" $gmass --init "${g32}_top32.safetensors" --out "${g32}_top32_mass.safetensors"
"$train" "$@" $gmass --init "${g32}_budget.safetensors" --out "${g32}_budget_mass.safetensors"
"$merge" --out $model/hashattn_group32.safetensors \
    "${g32}_budget_mass.safetensors" --take "3:${g32}_top32_mass.safetensors"

# 64-bit paper mode (beyond the paper; docs/quality.md, "64 bits at 1/8 (session 7)": it beats Quest
# p16 at every budget). The budget recipe on every sparse layer; a run with α 10 on layers 3, 4, 6
# (its layer 6 taken); layers 3 and 4 fine-tuned with the attention-mass loss and the 1/8 level
# doubled (T 2, BCE weight 0.3); then from that file two more 200-step fine-tunes of layers 3, 4, 6:
# the same recipe again (layers 3 and 4 taken) and the 1/8 level alone at T 1 (layer 6 taken). Each
# layer is the recipe with the best mean recall over the three budgets on the held-out validation
# window of the training text, never chosen on the evaluation text. Expected sha256 of the result:
# a15e5d8382c4156751bc9fbcc7083d158def834abbb7818ce86d2b5ad6077f5c (3,307,528 bytes).
p64=$build/hashattn_paper64
l346="--mode paper --bits 64 --dense-layers 0,1,2,5,7"
mass="--loss mass --mass-bce 0.3 --lr 3e-4 --steps 200"
"$train" "$@" --mode paper --bits 64 $budgets --out "${p64}_all.safetensors"
"$train" "$@" $l346 $budgets --alpha 10 --out "${p64}_a10.safetensors"
"$train" "$@" $l346 $budgets --init "${p64}_all.safetensors" $mass --mass-temp 2 \
    --target-frac 1/8,1/8,1/16,1/32 --out "${p64}_e8.safetensors"
"$merge" --out "${p64}_s6.safetensors" "${p64}_all.safetensors" \
    --take "3,4:${p64}_e8.safetensors" --take "6:${p64}_a10.safetensors"
"$train" "$@" $l346 $budgets --init "${p64}_s6.safetensors" $mass --mass-temp 2 \
    --target-frac 1/8,1/8,1/16,1/32 --out "${p64}_e8x2.safetensors"
"$train" "$@" $l346 $budgets --init "${p64}_s6.safetensors" $mass --mass-temp 1 \
    --target-frac 1/8 --out "${p64}_e8only.safetensors"
"$merge" --out "${p64}.safetensors" "${p64}_all.safetensors" \
    --take "3,4:${p64}_e8x2.safetensors" --take "6:${p64}_e8only.safetensors"
