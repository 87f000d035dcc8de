#!/usr/bin/env bash
# cargo clippy -D warnings on the Zephyr driver crate, for the Zephyr target, with the include
# paths and definitions of an existing build (default build/echo).
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
build=${1:-$here/build/echo}
env_file=$(find "$build" -path '*ivnet-rust/cargo-env.sh' | head -1)
[ -n "$env_file" ] || { echo "clippy-zephyr: no ivnet build in $build (west build first)"; exit 1; }
. "$env_file"
mkdir -p "$(dirname "$IVNET_WRAPPER_FILE")" "$(dirname "$WRAPPER_FILE")"
cd "$here/rust/ivnet-zephyr"
# shellcheck disable=SC2086
exec cargo clippy --release --quiet --config "$IVNET_CARGO_CONFIG" --target "$IVNET_TARGET" --target-dir "$IVNET_TARGET_DIR" $IVNET_BUILD_STD -- -D warnings
