#!/usr/bin/env bash
# Sets everything up (idempotent) and runs the ivnet demo network: `ivnet up
# topologies/demo.toml`, four Zephyr cells in QEMU on a host bridge with DHCP, NAT and a port
# forward, inside network namespaces made for it (see scripts/demo.py). Needs root and the
# Zephyr workspace (~/zephyrproject, see docs/zephyr-workspace.md). Extra arguments go to
# demo.py (--keep).
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
cd "$here"
ws=${ZEPHYR_WORKSPACE:-$HOME/zephyrproject}
bash scripts/bootstrap.sh
if [ ! -d "$ws/zephyr" ]; then
  echo "demo: no Zephyr workspace at $ws (see docs/zephyr-workspace.md)" >&2
  exit 1
fi
cargo build --release --quiet -p ivnet -p ivnet-bench
. scripts/zephyr-env.sh
west build -p auto -b qemu_cortex_a53 samples/echo -d build/cell -S ivnet -S ivnet-cell >/dev/null
exec "$ws/.venv/bin/python" scripts/demo.py "$@"
