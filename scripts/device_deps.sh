# device_deps.sh — sourced by the device scripts: where the development files of cmocka, jansson or
# PCRE2 (the model runner's) are missing (the lent GPU machines), unpacks their Debian packages from
# .device-deps/*.deb (see shared/DEVICE.md) into the folder given as $1 and points pkg-config and the loader at it; puts nvcc on the PATH.
command -v nvcc >/dev/null || { [ -x /usr/local/cuda/bin/nvcc ] && export PATH=$PATH:/usr/local/cuda/bin; }
if ! pkg-config --exists cmocka jansson libpcre2-8 2>/dev/null && compgen -G ".device-deps/*.deb" >/dev/null; then
  for f in .device-deps/*.deb; do dpkg -x "$f" "$1"; done
  export PKG_CONFIG_PATH=$1/usr/lib/x86_64-linux-gnu/pkgconfig
  export LD_LIBRARY_PATH=$1/usr/lib/x86_64-linux-gnu${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
  # the .pc files hold absolute paths (prefix=/usr, -I/usr/include, -L/usr/lib/...)
  sed -i -E "s#(=|-I|-L)/usr#\1$1/usr#g" "$PKG_CONFIG_PATH"/*.pc
fi
