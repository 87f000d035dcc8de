#!/usr/bin/env bash
# Builds qemu-system-aarch64 from the source of the QEMU that Debian installed (10.0.x from
# bookworm-backports), outside the tree, in ~/.cache/ivnet/qemu (or $IVNET_QEMU_CACHE): the
# project's own devices (the ivshmem 2.0 device, issue 12) are added to that source tree. The
# build is incremental: a second run rebuilds only what changed. Prints the path of the binary.
#
# Needs: a deb-src line for bookworm-backports (added here when missing), Debian's
# libglib2.0-dev, libpixman-1-dev, libfdt-dev, libseccomp-dev (`ivnet up` runs QEMU with
# -sandbox), flex, bison, and meson >= 1.5 and
# python3-pycotap from bookworm-backports (the +ds tarball has no bundled Python wheels).
set -euo pipefail
cache=${IVNET_QEMU_CACHE:-$HOME/.cache/ivnet/qemu}
log() { printf '\033[1mqemu-build:\033[0m %s\n' "$*" >&2; }
SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO=sudo

# The version Debian installed (the source must match what the tests otherwise run).
ver=$(dpkg-query -W -f '${Version}' qemu-system-arm 2>/dev/null || true)
[ -n "$ver" ] || { log "qemu-system-arm is not installed (scripts/bootstrap.sh installs it)"; exit 1; }
upstream=${ver#*:}
upstream=${upstream%%+*}
upstream=${upstream%%-*}
src=$cache/qemu-$upstream
build=$cache/build-$upstream

# Build dependencies.
need=()
for p in libglib2.0-dev libpixman-1-dev libfdt-dev libseccomp-dev flex bison python3-pycotap; do
  dpkg -s "$p" >/dev/null 2>&1 || need+=("$p")
done
mver=$(dpkg-query -W -f '${Version}' meson 2>/dev/null || echo 0)
if ! dpkg --compare-versions "$mver" ge 1.5; then need+=(meson); fi
if [ ${#need[@]} -gt 0 ]; then
  log "installing ${need[*]} (meson and pycotap from bookworm-backports)"
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq -t bookworm-backports "${need[@]}" >/dev/null
fi

# The source: the orig tarball of Debian's qemu source package.
mkdir -p "$cache"
if [ ! -f "$src/VERSION" ]; then
  tarball=$(ls "$cache"/qemu_"$upstream"*.orig.tar.* 2>/dev/null | head -1 || true)
  if [ -z "$tarball" ]; then
    if ! grep -rqs '^Types: deb-src' /etc/apt/sources.list.d/ || ! grep -rqs 'bookworm-backports' /etc/apt/sources.list.d/; then
      uri=$(awk '/^URIs:/{print $2; exit}' /etc/apt/sources.list.d/debian.sources 2>/dev/null || true)
      printf 'Types: deb-src\nURIs: %s\nSuites: bookworm-backports\nComponents: main\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n' \
        "${uri:-http://deb.debian.org/debian}" | $SUDO tee /etc/apt/sources.list.d/ivnet-backports-src.sources >/dev/null
      $SUDO apt-get update -qq
    fi
    log "downloading the source of qemu $ver"
    # The .dsc and the Debian diff may not download; the orig tarball is what is needed.
    (cd "$cache" && apt-get source --download-only "qemu=$ver" >/dev/null 2>&1 || true)
    tarball=$(ls "$cache"/qemu_"$upstream"*.orig.tar.* 2>/dev/null | head -1 || true)
    [ -n "$tarball" ] || { log "no orig tarball of qemu $ver could be downloaded"; exit 1; }
  fi
  log "unpacking $(basename "$tarball")"
  rm -rf "$src.partial"
  mkdir -p "$src.partial"
  tar xf "$tarball" -C "$src.partial" --strip-components=1
  mv "$src.partial" "$src"
fi
# The +ds tarball strips the EDK2 firmware blobs that pc-bios/meson.build would unpack whenever
# bzip2 is found: none are needed (the cells boot their ELF with -kernel).
if grep -q '^    unpack_edk2_blobs = bzip2.found()' "$src/meson.build"; then
  sed -i 's/^    unpack_edk2_blobs = bzip2.found()/    unpack_edk2_blobs = false # ivnet: the +ds tarball has no EDK2 blobs/' "$src/meson.build"
fi

# The project's devices (qemu/ in the tree): the ivshmem 2.0 device, with its Kconfig symbol and
# meson line. Copied only when changed, so that ninja rebuilds only what did.
here=$(cd "$(dirname "$0")/.." && pwd)
if ! cmp -s "$here/qemu/hw/misc/ivshmem2-pci.c" "$src/hw/misc/ivshmem2-pci.c"; then
  cp "$here/qemu/hw/misc/ivshmem2-pci.c" "$src/hw/misc/ivshmem2-pci.c"
fi
if ! grep -q '^config IVSHMEM2_DEVICE' "$src/hw/misc/Kconfig"; then
  printf '\nconfig IVSHMEM2_DEVICE\n    bool\n    default y if PCI_DEVICES\n    depends on PCI && LINUX && IVSHMEM && MSI_NONBROKEN\n' >>"$src/hw/misc/Kconfig"
fi
if ! grep -q 'ivshmem2-pci.c' "$src/hw/misc/meson.build"; then
  printf "system_ss.add(when: 'CONFIG_IVSHMEM2_DEVICE', if_true: files('ivshmem2-pci.c'))\n" >>"$src/hw/misc/meson.build"
fi

# Configure (aarch64 system emulation only, seccomp for -sandbox) when the options changed,
# then build incrementally.
opts="--target-list=aarch64-softmmu --enable-seccomp --disable-docs --disable-tools --disable-user --disable-install-blobs --disable-werror --python=/usr/bin/python3 --disable-download"
if [ ! -f "$build/build.ninja" ] || [ "$(cat "$build/ivnet-configure" 2>/dev/null)" != "$opts" ]; then
  log "configuring in $build"
  rm -rf "$build"
  mkdir -p "$build"
  # shellcheck disable=SC2086
  (cd "$build" && "$src/configure" $opts >&2)
  printf %s "$opts" >"$build/ivnet-configure"
fi
log "building qemu-system-aarch64"
ninja -C "$build" qemu-system-aarch64 >&2
echo "$build/qemu-system-aarch64"
