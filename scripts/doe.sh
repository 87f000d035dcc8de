#!/usr/bin/env bash
# The stress study: the original's design of experiments on ivnet and virtio-net, with and
# without ivnet's isolation (see scripts/doe.py --help).
#   scripts/doe.sh --quick      3 replicates x 2 s samples, under 20 minutes with the builds
#   scripts/doe.sh              5 replicates x 5 s samples
# Needs root (namespaces, control groups), stress-ng and the set-up of scripts/bootstrap.sh.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
cd "$here"
. scripts/zephyr-env.sh
[ -n "${ZEPHYR_BASE:-}" ] && [ -d "$ZEPHYR_BASE" ] || { echo "doe: no Zephyr workspace (run scripts/bootstrap.sh)" >&2; exit 1; }
command -v stress-ng >/dev/null || { echo "doe: stress-ng is missing (scripts/bootstrap.sh installs it)" >&2; exit 1; }
cargo build --release -q -p ivnet -p ivnet-bench
exec python3 scripts/doe.py "$@"
