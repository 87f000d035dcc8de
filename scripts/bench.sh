#!/usr/bin/env bash
# The capacity benchmark, ivnet vs Zephyr's virtio-net (see scripts/bench.py --help).
#   scripts/bench.sh            quick mode, under 15 minutes including the image builds
#   scripts/bench.sh --full     the seed's 200 x 1 s samples (hours)
# Needs root (network namespaces) and the set-up of scripts/bootstrap.sh.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
cd "$here"
. scripts/zephyr-env.sh
[ -n "${ZEPHYR_BASE:-}" ] && [ -d "$ZEPHYR_BASE" ] || { echo "bench: no Zephyr workspace (run scripts/bootstrap.sh)" >&2; exit 1; }
cargo build --release -q -p ivnet -p ivnet-bench
exec python3 scripts/bench.py "$@"
