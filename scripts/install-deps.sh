#!/usr/bin/env bash
# Installs what a fresh Debian 12 machine lacks to build and test hashattn (as root, or with sudo).
set -euo pipefail
# libclang-rt-dev: libFuzzer and the sanitizer runtimes of clang (scripts/fuzz.sh)
pkgs=(build-essential clang libclang-rt-dev meson ninja-build pkg-config libcmocka-dev libjansson-dev libomp-dev libpcre2-dev)
missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO=sudo
  echo "installing: ${missing[*]}"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}" >/dev/null
fi
