# Source this: the environment for building this module with west.
#   . scripts/zephyr-env.sh
# Uses the workspace at $ZEPHYR_WORKSPACE (default ~/zephyrproject) and its .venv; picks the
# Zephyr SDK when one is installed, else Debian's aarch64 cross compiler.
ws=${ZEPHYR_WORKSPACE:-$HOME/zephyrproject}
export ZEPHYR_BASE=${ZEPHYR_BASE:-$ws/zephyr}
[ -f "$ws/.venv/bin/activate" ] && . "$ws/.venv/bin/activate"
if [ -z "${ZEPHYR_TOOLCHAIN_VARIANT:-}" ]; then
  if [ -n "${ZEPHYR_SDK_INSTALL_DIR:-}" ] || ls -d "$HOME"/zephyr-sdk-* /opt/zephyr-sdk-* >/dev/null 2>&1; then
    export ZEPHYR_TOOLCHAIN_VARIANT=zephyr
  else
    export ZEPHYR_TOOLCHAIN_VARIANT=cross-compile
    export CROSS_COMPILE=${CROSS_COMPILE:-/usr/bin/aarch64-linux-gnu-}
  fi
fi
# libclang for bindgen (Debian's libclang-dev).
if [ -z "${LIBCLANG_PATH:-}" ]; then
  for d in /usr/lib/llvm-*/lib; do [ -e "$d/libclang.so" ] || [ -e "$d"/libclang-*.so ] && export LIBCLANG_PATH=$d; done
fi
