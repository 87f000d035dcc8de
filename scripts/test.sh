#!/usr/bin/env bash
# Runs every test of the project:
#   host:   cargo fmt/clippy/test over the workspace, the Zephyr driver crate's fmt, the
#           host-only link test across two network namespaces, and a short run of every fuzz
#           target (IVNET_FUZZ_SECS each, default 5: a smoke run; the campaigns are fuzz/run.sh's);
#   Zephyr: (when the workspace ~/zephyrproject exists) builds the echo sample with the module
#           added from outside the Zephyr tree, runs the twister suite in QEMU, and the
#           end-to-end tests (VM <-> host through TAP, VM <-> VM, host peer restart, iperf, and
#           a 3-cell network from a topology file: `ivnet up`/`status`/`down`, DHCP, NAT,
#           forwards, MCUmgr; IVNET_NET_CELLS=8 for the 8-cell acceptance run), and the
#           liveness test (a stuck peer on one link of a cell, the other link measured); and
#           ivshmem 2.0: the project's QEMU device (scripts/qemu-build.sh), the twister suite
#           over it, and tests/e2e/test_v2.py (ivnet <-> ivnet, <-> host, <-> Zephyr's C
#           eth_ivshmem).
# Needs root for namespaces/TAP. Set IVNET_SKIP_BOOTSTRAP=1 to skip the install step.
set -uo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
cd "$here"
ws=${ZEPHYR_WORKSPACE:-$HOME/zephyrproject}
pass=0 fail=0 failed=()

step() { # name, command...
  local name=$1; shift
  printf '\n\033[1m==> %s\033[0m\n' "$name"
  local t0=$SECONDS
  if "$@"; then
    pass=$((pass + 1)); printf '\033[32mok\033[0m   %s (%ds)\n' "$name" $((SECONDS - t0))
  else
    fail=$((fail + 1)); failed+=("$name"); printf '\033[31mFAIL\033[0m %s (%ds)\n' "$name" $((SECONDS - t0))
  fi
}

if [ -z "${IVNET_SKIP_BOOTSTRAP:-}" ]; then
  bash scripts/bootstrap.sh || { echo "bootstrap failed"; exit 1; }
fi

# Cargo's target directory outside the clone when the clone has none (CI clones afresh):
# dependencies then compile once, not at every run.
if [ ! -e "$here/target" ] && [ -z "${CARGO_TARGET_DIR:-}" ]; then
  cache=${IVNET_HOST_TARGET_DIR:-$HOME/.cache/ivnet/target-host}
  mkdir -p "$cache" && ln -s "$cache" "$here/target"
fi

step "cargo fmt" cargo fmt --all --check
step "cargo fmt (Zephyr driver crate)" bash -c "cd rust/ivnet-zephyr && cargo fmt --check"
step "cargo clippy" cargo clippy --workspace --all-targets --quiet -- -D warnings
step "cargo test" cargo test --workspace
step "cargo build --release" cargo build --release --quiet -p ivnet -p ivnet-bench
step "host link across namespaces (netns-ping)" bash tests/host/netns-ping.sh
step "fuzz crate: fmt, clippy, regression inputs" \
  env CARGO_TARGET_DIR="$HOME/.cache/ivnet-fuzz/check" bash -c "cd fuzz && cargo fmt --check && cargo clippy --all-targets --quiet -- -D warnings && cargo test -q -p ivnet-fuzz-common"
step "fuzz: every target ${IVNET_FUZZ_SECS:-5} s, corpora replayed for ProtocolError variants" \
  env IVNET_FUZZ_SECS="${IVNET_FUZZ_SECS:-5}" IVNET_FUZZ_VARIANTS="${IVNET_FUZZ_VARIANTS:-report}" bash fuzz/run.sh

if [ -d "$ws/zephyr" ] && [ -x "$ws/.venv/bin/west" ]; then
  . scripts/zephyr-env.sh
  build=$here/build
  # ccache (Zephyr uses it when installed): paths under the clone are rewritten relative to
  # it, so that a fresh clone (CI) hits the cache of the last one.
  export CCACHE_BASEDIR="$here" CCACHE_NOHASHDIR=true
  # One cargo target directory for the driver crate of the builds below (one after the other):
  # its build dependencies (bindgen, cbindgen) compile once, and stay for the next run.
  zcargo="-DIVNET_CARGO_TARGET_DIR=${IVNET_CARGO_TARGET_DIR:-$HOME/.cache/ivnet/cargo-zephyr}"
  step "west build samples/echo (qemu_cortex_a53, module from outside the tree)" \
    west build -p auto -b qemu_cortex_a53 samples/echo -d "$build/echo" -- "$zcargo"
  step "west build samples/echo as a network cell (-S ivnet -S ivnet-cell: two links, fw_cfg config, MCUmgr)" \
    west build -p auto -b qemu_cortex_a53 samples/echo -d "$build/cell" -S ivnet -S ivnet-cell -- "$zcargo"
  step "west build the cell image with the liveness watchdog off (the liveness test's second case)" \
    west build -p auto -b qemu_cortex_a53 samples/echo -d "$build/cell-nowd" -S ivnet -S ivnet-cell -- \
      -DCONFIG_ETH_IVNET_PEER_TIMEOUT_MS=0 "$zcargo"
  step "cargo clippy (Zephyr driver crate, target build)" bash scripts/clippy-zephyr.sh "$build/echo"
  # Drop-in conformance: Zephyr's own samples, unchanged, on ivnet and on virtio-net.
  # The conformance images are kept outside the clone, built with the module from a copy of
  # it there (scripts/sync-tree.py rewrites only changed files), so that a later run, from this
  # clone or a fresh one (CI), rebuilds only what changed: each is a whole Zephyr build with
  # picolibc. One run at a time builds and runs them (a lock held until the end-to-end tests
  # are done); a run that finds it held for 5 minutes uses directories of its own clone path.
  confroot=$HOME/.cache/ivnet/conf
  mkdir -p "$confroot"
  exec 9>"$confroot/lock"
  modcopy=$confroot/module conf=$confroot/images
  if ! flock -w 300 9; then
    key=$(printf %s "$here" | sha1sum | cut -c1-12)
    modcopy=$confroot/$key-module conf=$confroot/$key-images
    echo "NOTE: $confroot/lock is held (another run?): building in $conf"
  fi
  conf=${IVNET_CONF_DIR:-$conf}
  python3 scripts/sync-tree.py "$here" "$modcopy" || { echo "sync-tree failed"; exit 1; }
  # The image lists (conformance-samples.txt, v2-images.txt) may name the workspace modules a
  # row needs (`needs=a,b` first among its arguments): split_needs sets $needs and $args from
  # a row's argument text, lacking_modules says which of $needs the workspace lacks.
  declare -A modpath=([picolibc]=modules/lib/picolibc [mbedtls]=modules/crypto/mbedtls [zcbor]=modules/lib/zcbor
                      [open-amp]=modules/lib/open-amp [libmetal]=modules/hal/libmetal)
  split_needs() {
    needs="" args=$1
    case "$args" in needs=*) needs=${args%% *}; args=${args#"$needs"}; args=${args# }; needs=${needs#needs=} ;; esac
  }
  lacking_modules() {
    local m out=""
    for m in ${needs//,/ }; do
      [ -f "$ws/${modpath[$m]:-modules/$m}/zephyr/module.yml" ] || out+=" $m"
    done
    printf %s "$out"
  }
  while read -r row path rest; do
    case "$row" in ''|'#'*) continue ;; esac
    split_needs "$rest"
    lacking=$(lacking_modules)
    if [ -n "$lacking" ]; then
      printf '\n\033[1;31m!!! conformance row %s needs the module(s)%s, which %s lacks: NOT BUILT\n!!! (docs/zephyr-workspace.md)\033[0m\n' "$row" "$lacking" "$ws"
      continue
    fi
    for drv in ivnet virtio-net; do
      snip=ivnet; [ "$drv" = virtio-net ] && snip=virtio-net-baseline
      # CMake keeps -D options in its cache: a row whose options changed starts afresh.
      pristine=auto
      [ "$(cat "$conf/$row-$drv.args" 2>/dev/null)" = "$args" ] || pristine=always
      mkdir -p "$conf" && printf %s "$args" >"$conf/$row-$drv.args"
      step "conformance build: Zephyr's samples/$path, -S $snip" \
        west build -p "$pristine" -b qemu_cortex_a53 "$ZEPHYR_BASE/samples/$path" -d "$conf/$row-$drv" \
          -S "$snip" -- -DEXTRA_ZEPHYR_MODULES="$modcopy" "$zcargo" $args </dev/null
    done
  done < tests/e2e/conformance-samples.txt
  step "cargo clippy (Zephyr driver crate, cell build: fw_cfg config, STATS groups)" \
    bash scripts/clippy-zephyr.sh "$build/cell"
  # ivshmem 2.0: the project's QEMU device (built into ~/.cache/ivnet/qemu, incremental) and
  # the images of tests/e2e/v2-images.txt (beside the conformance images, same module copy).
  qemu_v2=""
  step "QEMU with the project's ivshmem 2.0 device (scripts/qemu-build.sh, cached outside the clone)" \
    bash -c 'bash scripts/qemu-build.sh >"$0"' "$confroot/qemu-v2.path"
  qemu_v2=$(cat "$confroot/qemu-v2.path" 2>/dev/null || true)
  v2=$conf/v2
  while read -r name app snip rest; do
    case "$name" in ''|'#'*) continue ;; esac
    split_needs "$rest"
    lacking=$(lacking_modules)
    if [ -n "$lacking" ]; then
      printf '\n\033[1;31m!!! ivshmem 2.0 image %s needs the module(s)%s, which %s lacks: NOT BUILT\n!!! (docs/zephyr-workspace.md)\033[0m\n' "$name" "$lacking" "$ws"
      continue
    fi
    case "$app" in module:*) src=$modcopy/${app#module:} ;; *) src=$ZEPHYR_BASE/samples/${app#zephyr:} ;; esac
    snips=()
    for sn in ${snip//,/ }; do snips+=(-S "$sn"); done
    step "ivshmem 2.0 build: $app -S ${snip//,/ -S } ($name)" \
      west build -p auto -b qemu_cortex_a53 "$src" -d "$v2/$name" "${snips[@]}" -- \
        -DEXTRA_ZEPHYR_MODULES="$modcopy" "$zcargo" $args </dev/null
  done < tests/e2e/v2-images.txt
  step "cargo clippy (Zephyr driver crate, ivshmem 2.0 build)" bash scripts/clippy-zephyr.sh "$v2/echo-ivnet"
  rm -rf "$build/twister"
  # QEMU_BIN_PATH: the project's QEMU, whose ivshmem2 device the v2 suite needs (it runs the
  # v1 suite as Debian's does).
  step "west twister -T tests -p qemu_cortex_a53 (runs in QEMU: ivshmem v1 and 2.0 suites)" \
    env ${qemu_v2:+QEMU_BIN_PATH="$(dirname "$qemu_v2")"} \
      west twister -T tests -p qemu_cortex_a53 -O "$build/twister" --inline-logs
  step "end-to-end in QEMU + netns (pytest)" \
    env IVNET_ECHO_ELF="$build/echo/zephyr/zephyr.elf" IVNET_ZPERF_ELF="$conf/zperf-ivnet/zephyr/zephyr.elf" \
      IVNET_CELL_ELF="$build/cell/zephyr/zephyr.elf" IVNET_CELL_NOWD_ELF="$build/cell-nowd/zephyr/zephyr.elf" \
      IVNET_CONF_DIR="$conf" IVNET_V2_DIR="$v2" ${qemu_v2:+IVNET_QEMU_V2="$qemu_v2"} \
      "$ws/.venv/bin/python" -m pytest -s -v --durations=0 tests/e2e
  exec 9>&-
else
  printf '\n\033[1;31m!!! NO ZEPHYR WORKSPACE at %s: the Zephyr build, twister and QEMU end-to-end\n!!! suites DID NOT RUN. Only the host tests ran. See docs/zephyr-workspace.md.\033[0m\n' "$ws"
fi

echo
for f in "${failed[@]}"; do echo "failed: $f"; done
echo "$pass passed, $fail failed"
[ "$fail" -eq 0 ]
