# device_deps.sh — sourced by the device scripts: where the development files of cmocka, jansson or
# PCRE2 (the model runner's) are missing (the lent GPU machines), unpacks them into the folder given
# as $1 — from .device-deps/deps-prefix.tar.xz (scripts/make_device_deps.sh), or else from Debian
# packages in .device-deps/*.deb (see shared/DEVICE.md) — and points pkg-config and the loader at
# them; puts nvcc on the PATH.
command -v nvcc >/dev/null || { [ -x /usr/local/cuda/bin/nvcc ] && export PATH=$PATH:/usr/local/cuda/bin; }
if ! pkg-config --exists cmocka jansson libpcre2-8 2>/dev/null &&
   { [ -f .device-deps/deps-prefix.tar.xz ] || compgen -G ".device-deps/*.deb" >/dev/null; }; then
  if [ -f .device-deps/deps-prefix.tar.xz ]; then
    mkdir -p "$1" && tar -C "$1" -xJf .device-deps/deps-prefix.tar.xz
  else
    for f in .device-deps/*.deb; do dpkg -x "$f" "$1"; done
  fi
  export PKG_CONFIG_PATH=$1/usr/lib/x86_64-linux-gnu/pkgconfig
  export LD_LIBRARY_PATH=$1/usr/lib/x86_64-linux-gnu${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
  # the .pc files hold absolute paths (prefix=/usr, -I/usr/include, -L/usr/lib/...)
  sed -i -E "s#(=|-I|-L)/usr#\1$1/usr#g" "$PKG_CONFIG_PATH"/*.pc
fi
