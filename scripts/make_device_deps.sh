#!/usr/bin/env bash
# make_device_deps.sh — packs what the GPU machines lack (cmocka, jansson, PCRE2's 8-bit library:
# their shared libraries, headers and pkg-config files) into .device-deps/deps-prefix.tar.xz, the
# folder a device call carries (`carry: [".device-deps"]`). Trimmed from the Debian packages, because
# what travels to the device is capped (64 MiB with the whole tree) and the -dev packages are mostly
# static libraries and documentation. scripts/device_deps.sh unpacks it there.
set -euo pipefail
cd "$(dirname "$0")/.."
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
(cd "$work" && apt-get download libcmocka0 libcmocka-dev libjansson4 libjansson-dev libpcre2-8-0 libpcre2-dev >/dev/null)
for f in "$work"/*.deb; do dpkg -x "$f" "$work/root"; done
(cd "$work/root" && find . \( -type f -o -type l \) \( -path './usr/include/*' -o -name '*.so*' -o -name '*.pc' \) \
   ! -name '*pcre2-16*' ! -name '*pcre2-32*' ! -name '*pcre2-posix*' ! -name '*pcre2posix*' | sort > "$work/keep")
mkdir -p .device-deps
tar -C "$work/root" -cJf .device-deps/deps-prefix.tar.xz -T "$work/keep"
echo "wrote .device-deps/deps-prefix.tar.xz ($(stat -c %s .device-deps/deps-prefix.tar.xz) bytes)"
