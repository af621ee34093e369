#!/usr/bin/env bash
# test_install.sh BUILD_DIR SOURCE_DIR — the installed library works on its own:
#   1. meson install into a fresh temporary DESTDIR;
#   2. the installed ha-make-weights writes random weights;
#   3. tests/install/install_host.c, copied out of the tree, is compiled with
#      `pkg-config --cflags --libs hashattn` against that install (PKG_CONFIG_PATH into it,
#      PKG_CONFIG_SYSROOT_DIR = DESTDIR) and nothing else;
#   4. it runs with no HASHATTN_* in its environment and no LD_LIBRARY_PATH entry inside the build
#      tree (entries elsewhere stay: where dependencies are unpacked by hand, shared/DEVICE.md): it
#      must load the installed libhashattn and find, by probing, a plugin of the install (it prints
#      both paths), then pass its decode-step checks.
# INSTALL_TEST_CC (default cc) compiles the host, with INSTALL_TEST_CFLAGS (say, the build's
# -fsanitize flags).
set -euo pipefail
build=$(cd "$1" && pwd)
src=$(cd "$2" && pwd)
read -ra cc <<<"${INSTALL_TEST_CC:-cc}"
read -ra cflags <<<"${INSTALL_TEST_CFLAGS:-}"
tmp=$(mktemp -d "${TMPDIR:-/tmp}/hashattn-install.XXXXXX")
trap 'rm -rf "$tmp"' EXIT
root=$tmp/root

fail() { echo "test_install: $*" >&2; exit 1; }

meson install -C "$build" --destdir "$root" --no-rebuild --quiet
pc=$(find "$root" -name hashattn.pc -print -quit)
[ -n "$pc" ] || fail "no hashattn.pc installed under $root"
export PKG_CONFIG_PATH=$(dirname "$pc") PKG_CONFIG_SYSROOT_DIR=$root
unset PKG_CONFIG_LIBDIR
libdir=$(pkg-config --variable=libdir hashattn)
plugindir=$(pkg-config --variable=plugindir hashattn)
case $libdir in "$root"/*) ;; *) fail "pkg-config libdir $libdir is not inside the install $root";; esac
ls "$plugindir"/hashattn_*.so >/dev/null 2>&1 || fail "no plugin installed in $plugindir"
bindir=$(dirname "$(find "$root" -name ha-make-weights -type f -print -quit)")

# The program and its weights live in $tmp only: no include path or library of the source or build
# tree is involved.
cp "$src/tests/install/install_host.c" "$tmp/"
cd "$tmp"
# shellcheck disable=SC2046  # pkg-config's words are meant to split
"${cc[@]}" "${cflags[@]}" -std=c11 -Wall -Wextra -Werror -o install_host install_host.c \
  $(pkg-config --cflags --libs hashattn) -Wl,-rpath,"$libdir" -lm
"$bindir/ha-make-weights" --out weights.safetensors --layers 2 --q-heads 4 --k-heads 2 --head-dim 64 \
  --dense-layers 0 --seed 7 >/dev/null

# A clean environment: nothing points at the build tree.
ld_path=$(tr ':' '\n' <<<"${LD_LIBRARY_PATH:-}" | grep -v -e "^$build" -e '^$' | paste -sd: - || true)
env -u HASHATTN_PLUGIN_PATH -u HASHATTN_BACKEND -u HASHATTN_LOG -u LD_PRELOAD LD_LIBRARY_PATH="$ld_path" \
  ./install_host weights.safetensors | tee run.log
library=$(sed -n 's/^library: //p' run.log)
plugin=$(sed -n 's/^plugin: //p' run.log)
case $library in "$libdir"/*) ;; *) fail "loaded libhashattn from $library, not from the install ($libdir)";; esac
case $plugin in
  "$plugindir"/*) ;;
  *) fail "loaded the plugin $plugin, not one of the install ($plugindir)";;
esac
case $plugin in "$build"/*) fail "the plugin came from the build tree";; esac
echo "test_install: the installed library ($library) found the installed plugin ($plugin)"
