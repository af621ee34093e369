#!/bin/sh
# ha-merge-weights (tools/ha_merge_weights.c): layers land where --take says and nowhere else, F16
# round-trips bit for bit, F32 -> F16 equals writing F16 directly, and bad input fails with a message
# and no output file. Random weights from ha-make-weights (two seeds: every tensor differs).
#
#   tests/test_merge_weights.sh BUILD_DIR/tools/ha-make-weights BUILD_DIR/tools/ha-merge-weights
set -eu
make=$1
merge=$2
dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT
fail() { echo "FAIL: $*" >&2; exit 1; }
geom="--layers 4 --dense-layers 0 --q-heads 4 --k-heads 2 --head-dim 24 --hidden 20 --bits 32"
"$make" $geom --seed 11 --dtype f16 --out "$dir/a.st" >/dev/null
"$make" $geom --seed 12 --dtype f16 --out "$dir/b.st" >/dev/null
"$make" $geom --seed 11 --dtype f32 --out "$dir/a32.st" >/dev/null
"$make" --layers 4 --dense-layers 0 --q-heads 4 --k-heads 2 --head-dim 24 --bits 64 --seed 3 --out "$dir/c64.st" >/dev/null

# no --take: the same file, bit for bit (F16 -> fp32 -> F16 is exact)
"$merge" --out "$dir/same.st" "$dir/a.st" >/dev/null
cmp -s "$dir/same.st" "$dir/a.st" || fail "rewriting a F16 file changed it"
# F32 -> F16 equals the F16 file written from the same values
"$merge" --out "$dir/conv.st" "$dir/a32.st" --dtype f16 >/dev/null
cmp -s "$dir/conv.st" "$dir/a.st" || fail "F32 -> F16 differs from writing F16 directly"
# layer 2 from b: differs from a; taking layer 2 back from a restores a
"$merge" --out "$dir/m.st" "$dir/a.st" --take "2:$dir/b.st" >/dev/null
cmp -s "$dir/m.st" "$dir/a.st" && fail "--take 2 changed nothing"
"$merge" --out "$dir/back.st" "$dir/m.st" --take "2:$dir/a.st" >/dev/null
cmp -s "$dir/back.st" "$dir/a.st" || fail "taking layer 2 back did not restore the file"
# the other way round: b with layers 1 and 3 from a is m (layer 2 of b, the rest of a)
"$merge" --out "$dir/m2.st" "$dir/b.st" --take "1:$dir/a.st" --take "3:$dir/a.st" >/dev/null
cmp -s "$dir/m2.st" "$dir/m.st" || fail "b + layers 1,3 of a differs from a + layer 2 of b"
"$merge" --out "$dir/m3.st" "$dir/b.st" --take "1,3:$dir/a.st" >/dev/null
cmp -s "$dir/m3.st" "$dir/m.st" || fail "a layer list differs from two --take"

# bad input: exit status, a message naming the problem, no output
expect_error() { # WORDS_IN_MESSAGE ARGS...
    words=$1
    shift
    rm -f "$dir/bad.st"
    if "$merge" --out "$dir/bad.st" "$@" 2>"$dir/err" >/dev/null; then fail "accepted: $*"; fi
    grep -q "$words" "$dir/err" || fail "message for '$*' lacks '$words': $(cat "$dir/err")"
    [ ! -e "$dir/bad.st" ] || fail "wrote an output for '$*'"
}
expect_error "geometry" "$dir/a.st" --take "1:$dir/c64.st"
expect_error "dense" "$dir/a.st" --take "0:$dir/b.st"
expect_error "named twice" "$dir/a.st" --take "1:$dir/b.st" --take "1:$dir/b.st"
expect_error "not an integer" "$dir/a.st" --take "4:$dir/b.st"
expect_error "LAYERS:FILE" "$dir/a.st" --take "$dir/b.st"
expect_error "No such file" "$dir/a.st" --take "1:$dir/none.st"
expect_error "f32, f16 or bf16" "$dir/a.st" --dtype f8
head -c 100 "$dir/a.st" >"$dir/cut.st"
expect_error "cut.st" "$dir/cut.st"
echo "ha-merge-weights: all checks passed"
