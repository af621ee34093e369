#!/usr/bin/env bash
# Scans the machine code of the given objects (shared modules, static libraries, object files) for
# an AVX-512 mask register stored to the stack with a narrow kmov and then read back wider than it
# was stored (say `kmovw %k1,-0xb0(%rbp)` then `popcnt -0xb0(%rbp),%r14d`): the extra bytes are
# stale stack. gcc 12 emitted exactly that for __builtin_popcount of an __mmask16 in the
# ThreadSanitizer build (docs/reliability.md, "A compiler bug the TSan stage found"); the kernels now
# count mask lanes through cpu_mask_count16(), and this test keeps it that way in every build.
# Exit status: 0 clean, 1 such a read found, 2 usage or tool error.
set -euo pipefail
[ $# -ge 1 ] || { echo "usage: $0 OBJECT..." >&2; exit 2; }
command -v objdump >/dev/null || { echo "objdump not found" >&2; exit 2; }
status=0
for obj in "$@"; do
  [ -r "$obj" ] || { echo "$obj: not readable" >&2; exit 2; }
  objdump -d --no-show-raw-insn "$obj" | awk -v obj="$obj" '
    function width(reg) {            # bits of an AT&T register operand
      if (reg ~ /^%k[0-7]$/) return 0              # mask register: no width of its own
      if (reg ~ /^%r[0-9]+b$/ || reg ~ /^%[a-d]l$/ || reg ~ /^%(sil|dil|bpl|spl)$/) return 8
      if (reg ~ /^%r[0-9]+w$/ || reg ~ /^%([a-d]x|si|di|bp|sp)$/) return 16
      if (reg ~ /^%r[0-9]+d$/ || reg ~ /^%e/) return 32
      if (reg ~ /^%r/) return 64
      return 0
    }
    /^[0-9a-f]+ <.*>:$/ { delete stored; fn = $2; next }
    /^ *[0-9a-f]+:\t/ {
      split($0, f, "\t"); ins = f[2]; op = ins; sub(/ .*/, "", op)
      # only the fall-through path is followed: after a jump or return the next instruction is
      # reached from elsewhere, where the slot may hold something else
      if (op ~ /^(jmp|ret)/) { delete stored; next }
      # the operands: split on the commas outside parentheses
      args = ins; sub(/^[^ ]+ +/, "", args); gsub(/ /, "", args)
      n = 0; depth = 0; cur = ""
      for (i = 1; i <= length(args); i++) {
        c = substr(args, i, 1)
        if (c == "(") depth++
        if (c == ")") depth--
        if (c == "," && depth == 0) { a[++n] = cur; cur = "" } else cur = cur c
      }
      a[++n] = cur
      if (n < 2) next
      src = a[1]; dst = a[n]
      if (op ~ /^kmov[bwdq]$/ && src ~ /^%k[0-7]$/ && dst ~ /\(%r[sb]p\)$/) {
        stored[dst] = (op == "kmovb") ? 8 : (op == "kmovw") ? 16 : (op == "kmovd") ? 32 : 64; next
      }
      if (dst in stored && src != dst) { delete stored[dst]; next }   # the slot is rewritten
      if (src in stored) {
        w = width(dst)
        if (op ~ /^movz[bw]/ || op ~ /^kmov/) w = 0                    # narrow or mask reloads are exact
        if (w > stored[src]) {
          printf "%s: %s: %s reads %d bits of a %d-bit mask spill\n", obj, fn, ins, w, stored[src]
          bad = 1
        }
      }
    }
    END { exit bad }' || status=1
done
exit $status
