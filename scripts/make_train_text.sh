#!/bin/sh
# Rebuilds the novels (and the mixed) training text of the mapping functions
# (models/tinylm-25m/train_text/README.md) from Debian packages, and checks that it is byte for byte the text the recorded runs used: Jane
# Austen's six novels (Debian package r-cran-janeaustenr, public domain) interleaved in blocks of
# whole paragraphs (scripts/interleave_text.py), so that the first training windows hold all six.
# The text itself is not in the repository (4 MB; the tree must stay under what a GPU-machine call
# carries). Never the evaluation text: no Conan Doyle in it.
#
#   scripts/make_train_text.sh [OUT_DIR]      (default ${TMPDIR:-/tmp}/train_text)
#
# Writes OUT_DIR/austen-novels.txt, OUT_DIR/jargon-4.4.7.txt (the shipped Jargon File text,
# decompressed) and OUT_DIR/austen-jargon.txt (the two interleaved the same way: the mixed text).
# Needs apt-get (download only: nothing is installed) and Rscript (Debian: apt-get install
# --no-install-recommends r-base-core) to read the package's R data file; python3.
set -eu
cd "$(dirname "$0")/.."
out=${1:-${TMPDIR:-/tmp}/train_text}
pkg=r-cran-janeaustenr
ver=1.0.0-1
sum=cc1bf3472ab77d6344858e1126e6cad7ab56cec9a03e7d086c6eb6adf9fd9d68
sum_mixed=610a2c2f8fbd43fb0d5f26e2bbcafcba514e7f29b00f88c30d2325b5adbdd747
command -v Rscript >/dev/null || { echo "make_train_text.sh: needs Rscript (apt-get install --no-install-recommends r-base-core)" >&2; exit 1; }
mkdir -p "$out/deb"
root=$(pwd)
(cd "$out/deb" && apt-get download "$pkg=$ver" && dpkg-deb -x "${pkg}_${ver}_all.deb" x)
# The package keeps each novel as an R character vector (one element per line) in a lazy-load
# database; R itself reads it, and writeLines restores the lines unchanged.
Rscript -e 'e <- new.env(); a <- commandArgs(TRUE)
invisible(lazyLoad(file.path(a[1], "usr/lib/R/site-library/janeaustenr/data/Rdata"), envir = e))
for (n in ls(e)) writeLines(get(n, e), file.path(a[2], paste0(n, ".txt")), useBytes = TRUE)' \
    "$out/deb/x" "$out/deb"
# The order of the package's austen_books(): publication order but for the two posthumous novels.
d=$out/deb
python3 "$root/scripts/interleave_text.py" 32768 "$d/sensesensibility.txt" "$d/prideprejudice.txt" \
    "$d/mansfieldpark.txt" "$d/emma.txt" "$d/northangerabbey.txt" "$d/persuasion.txt" >"$out/austen-novels.txt"
if grep -qi -e 'sherlock' -e 'conan doyle' "$out/austen-novels.txt"; then
    echo "make_train_text.sh: the text names Sherlock Holmes or Conan Doyle: refusing it" >&2
    exit 1
fi
xz -dc models/tinylm-25m/train_text/jargon-4.4.7.txt.xz >"$out/jargon-4.4.7.txt"
# The mixed text: the novels and the Jargon File, block for block.
python3 "$root/scripts/interleave_text.py" 32768 "$out/austen-novels.txt" "$out/jargon-4.4.7.txt" >"$out/austen-jargon.txt"
printf '%s  %s\n' "$sum" "$out/austen-novels.txt" "$sum_mixed" "$out/austen-jargon.txt" | sha256sum -c -
