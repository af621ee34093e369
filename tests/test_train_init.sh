#!/bin/sh
# ha-train --init and --loss mass on the shipped model (small windows: seconds): --init with no steps
# writes the file it read back bit for bit; --loss mass changes the weights, is deterministic for a
# seed whatever the thread count; bad input (another geometry, mass options without --loss mass)
# fails with a message and no output file.
#
#   tests/test_train_init.sh BUILD_DIR/tools/ha-train MODEL_DIR
set -eu
train=$1
model=$2
dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT
fail() { echo "FAIL: $*" >&2; exit 1; }
shipped="$model/hashattn_paper32.safetensors"
small="--model $model --text $model/prompt.txt --window 512 --min-pos 320 --windows 2 --rows-per-window 64 --rows 32 --val-rows 64 --log-every 1000"
export OMP_WAIT_POLICY=passive

"$train" $small --steps 0 --init "$shipped" --out "$dir/same.st" 2>"$dir/log" || fail "--init --steps 0: $(cat "$dir/log")"
cmp -s "$dir/same.st" "$shipped" || fail "--init then --steps 0 did not write the file it read"

mass="--loss mass --target-frac 1/8,1/32 --alpha 5 --mass-temp 1.5 --mass-bce 0.5 --steps 3 --lr 1e-3 --seed 7"
OMP_NUM_THREADS=2 "$train" $small $mass --init "$shipped" --out "$dir/m2.st" 2>"$dir/log" || fail "--loss mass: $(cat "$dir/log")"
OMP_NUM_THREADS=1 "$train" $small $mass --init "$shipped" --out "$dir/m1.st" 2>"$dir/log" || fail "--loss mass: $(cat "$dir/log")"
cmp -s "$dir/m1.st" "$shipped" && fail "--loss mass training changed nothing"
cmp -s "$dir/m1.st" "$dir/m2.st" || fail "--loss mass: 1 and 2 threads wrote different weights"
"$train" $small --loss mass --mass-bce 0 --target-frac 1/16 --steps 2 --dense-layers 0,1,2,3,5,6,7 \
    --out "$dir/m0.st" 2>"$dir/log" || fail "--loss mass alone, random start: $(cat "$dir/log")"
grep -q "loss -" "$dir/log" || fail "the mass loss alone should be negative: $(cat "$dir/log")"

expect_error() { # WORDS_IN_MESSAGE ARGS...
    words=$1
    shift
    rm -f "$dir/bad.st"
    if "$train" $small --steps 0 --out "$dir/bad.st" "$@" 2>"$dir/err" >/dev/null; then fail "accepted: $*"; fi
    grep -q "$words" "$dir/err" || fail "message for '$*' lacks '$words': $(cat "$dir/err")"
    [ ! -e "$dir/bad.st" ] || fail "wrote an output for '$*'"
}
expect_error "geometry" --init "$shipped" --bits 64
expect_error "geometry" --init "$shipped" --mode group
expect_error "width" --init "$shipped" --hidden 64
expect_error "No such file" --init "$dir/none.st"
expect_error "need --loss mass" --mass-temp 2
expect_error "bce or mass" --loss hinge
echo "ok"
