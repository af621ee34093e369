#!/usr/bin/env python3
"""Interleaves text files in blocks of whole paragraphs, round-robin, and writes the result to stdout.

    scripts/interleave_text.py BLOCK_BYTES FILE...

Each file is cut at blank lines into blocks of at least BLOCK_BYTES (the last block of a file may be
shorter); the output is block 1 of every file in the order given, then block 2 of every file, and so
on, a file that has run out being skipped. ha-train takes its training windows from the start of a
text, so interleaving puts every source into the first windows instead of only the first file.
Bytes are copied unchanged (no decoding); the output is deterministic.
"""
import re
import sys


def blocks(data: bytes, size: int) -> list[bytes]:
    # Paragraph boundaries: a run of blank lines; each paragraph keeps its trailing newlines.
    paragraphs = re.split(rb"(?<=\n\n)(?=[^\n])", data)
    out, cur = [], b""
    for p in paragraphs:
        cur += p
        if len(cur) >= size:
            out.append(cur)
            cur = b""
    if cur:
        out.append(cur)
    return out


def main() -> int:
    if len(sys.argv) < 3 or not sys.argv[1].isdigit() or int(sys.argv[1]) < 1:
        print("usage: " + __doc__.strip().splitlines()[2].strip(), file=sys.stderr)
        return 2
    size = int(sys.argv[1])
    per_file = []
    for name in sys.argv[2:]:
        try:
            with open(name, "rb") as f:
                data = f.read()
        except OSError as e:
            print(f"interleave_text.py: {name}: {e.strerror}", file=sys.stderr)
            return 1
        if not data.endswith(b"\n"):
            data += b"\n"
        # Every block ends in a blank line, so that two sources never run into one paragraph.
        per_file.append([b if b.endswith(b"\n\n") else b + b"\n" for b in blocks(data, size)])
    out = sys.stdout.buffer
    for i in range(max(len(b) for b in per_file)):
        for b in per_file:
            if i < len(b):
                out.write(b[i])
    return 0


if __name__ == "__main__":
    sys.exit(main())
