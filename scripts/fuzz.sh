#!/usr/bin/env bash
# Builds the libFuzzer targets (tests/fuzz: clang, ASan + UBSan) and runs each for a bounded time,
# starting from the committed seed corpus; fails on the first crash, leak, timeout or sanitizer report.
#
#   scripts/fuzz.sh [SECONDS] [TARGET ...]     default: 25 seconds each, every target
#
# FUZZ_BUILD_DIR (default build-fuzz) holds the build, the corpus each target grew
# (<dir>/fuzz-corpus/<target>), the logs and any crash reproducer (<dir>/fuzz-artifacts/).
# Extra libFuzzer flags may be passed in FUZZ_FLAGS (e.g. FUZZ_FLAGS=-jobs=2).
set -euo pipefail
cd "$(dirname "$0")/.."
seconds=${1:-25}
[ $# -gt 0 ] && shift
targets=("$@")
[ ${#targets[@]} -eq 0 ] && targets=(fuzz_weights fuzz_config fuzz_tokenizer_files fuzz_tokenizer_text fuzz_plugin_table)
dir=${FUZZ_BUILD_DIR:-build-fuzz}

if [ ! -f "$dir/build.ninja" ]; then
  CC=clang meson setup "$dir" -Dfuzz=enabled -Dcuda=disabled -Dtests=false >/dev/null
fi
ninja -C "$dir" "${targets[@]/#/tests/fuzz/}" >/dev/null

# A number of libFuzzer's last status line ("#N DONE cov: C ft: F corp: K/Bb ..."), by name.
field() { sed -E "s/.* $1: ([0-9]+)[^0-9].*/\\1/" <<<"$done_line"; }

mkdir -p "$dir/fuzz-artifacts"
for t in "${targets[@]}"; do
  corpus=$dir/fuzz-corpus/$t
  log=$dir/fuzz-$t.log
  mkdir -p "$corpus"
  dict=()
  [ -f "tests/fuzz/dict/$t.dict" ] && dict=(-dict="tests/fuzz/dict/$t.dict")
  # New inputs go to $corpus; the seeds are only read. -timeout: one input taking 10 s is a hang.
  # shellcheck disable=SC2086
  if ! "$dir/tests/fuzz/$t" -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 \
      -artifact_prefix="$dir/fuzz-artifacts/$t-" "${dict[@]}" ${FUZZ_FLAGS:-} "$corpus" "tests/fuzz/corpus/$t" \
      >"$log" 2>&1; then
    tail -n 60 "$log"
    echo "FAIL: $t (log $log; reproducer in $dir/fuzz-artifacts/)" >&2
    exit 1
  fi
  # e.g. "fuzz_config: 61163846 execs (100104/s), cov 77, ft 102, corpus 41 inputs / 3264b"
  execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log")
  rate=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log")
  done_line=$(grep -E '^#[0-9]+[[:space:]]+DONE' "$log" | tail -n 1)
  bytes=$(sed -E 's/.* corp: [0-9]+\/([0-9]+[a-zA-Z]*) .*/\1/' <<<"$done_line")
  echo "$t: ${execs:-?} execs (${rate:-?}/s), cov $(field cov), ft $(field ft), corpus $(field corp) inputs / $bytes"
done
