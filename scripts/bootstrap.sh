#!/usr/bin/env bash
# Installs everything this project needs on a Debian 12 (bookworm) machine, idempotently:
# host packages (QEMU 10 from bookworm-backports, cross toolchain, cmake/ninja/dtc, iperf, ...),
# the Rust targets, and a Python venv with west and Zephyr's Python requirements.
#
# Then the Zephyr workspace, ~/zephyrproject (or $ZEPHYR_WORKSPACE), when there is none
# (scripts/workspace.sh: from the local sources that $IVNET_ZEPHYR_SRC and friends name, else
# from GitHub with west; docs/zephyr-workspace.md), and its Python requirements. An existing
# workspace only gains the modules it lacks whose local sources are named (IVNET_*_SRC).
#
# Usage: scripts/bootstrap.sh            (as root, or with sudo available)
set -euo pipefail

here=$(cd "$(dirname "$0")/.." && pwd)
ws=${ZEPHYR_WORKSPACE:-$HOME/zephyrproject}
venv=${IVNET_VENV:-$ws/.venv}
SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO=sudo

log() { printf '\033[1mbootstrap:\033[0m %s\n' "$*"; }

# ---- Debian packages ---------------------------------------------------------------------
pkgs=(cmake ninja-build device-tree-compiler gperf gcc-aarch64-linux-gnu libclang-dev clang
      iperf iperf3 iproute2 dnsmasq-base iptables nftables python3-venv python3-dev git file xz-utils
      socat stress-ng procps iputils-ping tcpdump ccache gdb-multiarch curl mosquitto-clients
      libcap2 libedit2 libgnutls30 libnettle8 libseccomp2 libcjson1 libdlt2 libwrap0 libssl3)
missing=()
for p in "${pkgs[@]}"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
need_qemu=1
if command -v qemu-system-aarch64 >/dev/null 2>&1; then
  v=$(qemu-system-aarch64 --version | head -1 | sed -E 's/.*version ([0-9]+).*/\1/')
  [ "${v:-0}" -ge 10 ] && need_qemu=0
fi
if [ ${#missing[@]} -gt 0 ] || [ $need_qemu -eq 1 ]; then
  . /etc/os-release
  if [ "${VERSION_CODENAME:-}" = bookworm ] && [ $need_qemu -eq 1 ] \
     && ! grep -rqs 'bookworm-backports' /etc/apt/sources.list.d/ /etc/apt/sources.list; then
    log "adding bookworm-backports (QEMU 10)"
    src=/etc/apt/sources.list.d/debian.sources
    if [ -f "$src" ]; then
      uri=$(awk '/^URIs:/{print $2; exit}' "$src")
    else
      uri=http://deb.debian.org/debian
    fi
    printf 'Types: deb\nURIs: %s\nSuites: bookworm-backports\nComponents: main\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n' \
      "$uri" | $SUDO tee /etc/apt/sources.list.d/ivnet-backports.sources >/dev/null
  fi
  log "apt-get update"
  $SUDO apt-get update -qq
  if [ ${#missing[@]} -gt 0 ]; then
    log "installing: ${missing[*]}"
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}" >/dev/null
  fi
  if [ $need_qemu -eq 1 ]; then
    log "installing qemu-system-arm (QEMU >= 10)"
    if [ "${VERSION_CODENAME:-}" = bookworm ]; then
      DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq -t bookworm-backports qemu-system-arm >/dev/null
    else
      DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq qemu-system-arm >/dev/null
    fi
  fi
fi

# The conformance suite's NTP server and MQTT broker (chronyd, mosquitto), unpacked from
# Debian's packages into $tools rather than installed: installing them would start them as
# the machine's services (and chrony would replace its time daemon). Their libraries are
# installed above.
tools=${IVNET_TOOLS_DIR:-$HOME/.cache/ivnet/tools}
for pb in chrony:usr/sbin/chronyd mosquitto:usr/sbin/mosquitto; do
  pkg=${pb%%:*} bin=${pb#*:}
  if [ ! -x "$tools/$bin" ]; then
    log "unpacking $pkg into $tools (not installed as a service)"
    mkdir -p "$tools/debs"
    (cd "$tools/debs" && rm -f "${pkg}"_*.deb && apt-get download -qq "$pkg" >/dev/null 2>&1) \
      && dpkg-deb -x "$tools/debs/${pkg}"_*.deb "$tools" \
      || log "WARNING: could not unpack $pkg: the conformance rows that need it will not run"
  fi
done

# Debian's gcc-12 cross compiler ships no include-fixed/limits.h; Zephyr's CMake asks for it.
for d in /usr/lib/gcc-cross/aarch64-linux-gnu/*/; do
  if [ -f "$d/include/limits.h" ] && [ ! -e "$d/include-fixed/limits.h" ]; then
    log "adding include-fixed/limits.h to $d"
    $SUDO mkdir -p "$d/include-fixed"
    $SUDO ln -sf ../include/limits.h "$d/include-fixed/limits.h"
  fi
done

# ---- Rust --------------------------------------------------------------------------------
if command -v rustup >/dev/null 2>&1; then
  for t in aarch64-unknown-none-softfloat aarch64-unknown-none; do
    if ! rustup target list --installed | grep -qx "$t"; then
      log "rustup target add $t"
      rustup target add "$t"
    fi
  done
  rustup component list --installed | grep -q '^clippy' || rustup component add clippy rustfmt
else
  # Debian's Rust: build core/alloc from source for the bare-metal target.
  for p in rustc-web cargo-web rust-web-src; do
    dpkg -s "$p" >/dev/null 2>&1 || DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "$p" >/dev/null
  done
fi

# ---- Python: west and Zephyr's requirements ---------------------------------------------
mkdir -p "$ws"
if [ ! -x "$venv/bin/west" ]; then
  log "creating venv $venv with west"
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q --upgrade pip
  "$venv/bin/pip" install -q west
fi
# The statistics and plots of the benchmark and the stress study (scripts/bench.py, doe.py), and what the network test drives
# the cells with: the MCUmgr client (scripts/pylib/mcumgr.py) and Ansible (the inventory).
if ! "$venv/bin/python" -c "import matplotlib, scipy, statsmodels, pandas, smpclient, ansible" 2>/dev/null; then
  log "installing the benchmark's analysis libraries, the MCUmgr client and ansible-core into $venv"
  "$venv/bin/pip" install -q -r "$here/bench/requirements.txt"
fi
# Also with a workspace: it adds the modules that one lacks when their sources are named.
bash "$here/scripts/workspace.sh" || log "WARNING: no Zephyr workspace could be made or completed (above)"
if [ -d "$ws/zephyr/scripts" ]; then
  stamp="$venv/.ivnet-reqs"
  if [ ! -f "$stamp" ]; then
    log "installing Zephyr's Python requirements into $venv"
    for r in requirements-base.txt requirements-build-test.txt requirements-run-test.txt; do
      "$venv/bin/pip" install -q -r "$ws/zephyr/scripts/$r"
    done
    touch "$stamp"
  fi
  if [ ! -f "$ws/modules/lib/zcbor/zephyr/module.yml" ]; then
    log "WARNING: no zcbor module at $ws/modules/lib/zcbor: the cell image (MCUmgr) will not build;"
    log "         docs/zephyr-workspace.md says how to add it"
  fi
  if [ ! -f "$ws/modules/lib/open-amp/zephyr/module.yml" ] || [ ! -f "$ws/modules/hal/libmetal/zephyr/module.yml" ]; then
    log "NOTE: no open-amp/libmetal modules in $ws: Zephyr's C eth_ivshmem (-S ivshmem2-eth) will not"
    log "      build; name IVNET_OPENAMP_SRC and IVNET_LIBMETAL_SRC (docs/zephyr-workspace.md)"
  fi
else
  log "NOTE: no Zephyr workspace at $ws/zephyr yet (see docs/zephyr-workspace.md); host-only set-up done"
fi
log "done"
