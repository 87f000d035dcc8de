#!/usr/bin/env bash
# Builds the fuzz targets and runs each for a while, one after the other.
#
#   fuzz/run.sh [TARGET...]            # all targets by default
#
# Environment:
#   IVNET_FUZZ_SECS       seconds per target (default 30)
#   IVNET_FUZZ_RUNS       stop a target after this many executions (default: no limit)
#   IVNET_FUZZ_SANITIZER  none (default) or address (ASan; works on stable through RUSTC_BOOTSTRAP)
#   IVNET_FUZZ_CORPUS     corpus root, one directory per target, outside the repository
#                         (default ~/.cache/ivnet-fuzz/corpus); seeded from fuzz/regressions/
#   IVNET_FUZZ_ARTIFACTS  where crashing inputs go (default ~/.cache/ivnet-fuzz/artifacts)
#   IVNET_FUZZ_TARGET_DIR where the instrumented builds go, outside the repository so that a
#                         fresh clone (CI) reuses them (default ~/.cache/ivnet-fuzz/target)
#   IVNET_FUZZ_MAX_LEN    largest input in bytes (default 1024)
#   IVNET_FUZZ_VARIANTS   1 (default): afterwards, replay the corpora and report which
#                         ProtocolError variants they reach (fails when one a peer can cause is
#                         not reached); report: the same without failing (a short run on a
#                         fresh corpus, as in CI; the property test every_variant_is_reached
#                         asserts them there); 0: skip
#
# Prints, per target, the executions, executions per second, final coverage (libFuzzer's cov
# and ft) and the result; exits non-zero when any target crashed, hung or failed to build.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
cd "$here"

secs=${IVNET_FUZZ_SECS:-30}
runs=${IVNET_FUZZ_RUNS:--1}
san=${IVNET_FUZZ_SANITIZER:-none}
corpus_root=${IVNET_FUZZ_CORPUS:-$HOME/.cache/ivnet-fuzz/corpus}
art_root=${IVNET_FUZZ_ARTIFACTS:-$HOME/.cache/ivnet-fuzz/artifacts}
max_len=${IVNET_FUZZ_MAX_LEN:-1024}
all=(rx tx honest state v1 cell observer client_proto)
if [ $# -gt 0 ]; then targets=("$@"); else targets=("${all[@]}"); fi

# cargo-fuzz drives the build (sanitizer-coverage flags, --cfg fuzzing, debug assertions).
if ! cargo fuzz --version >/dev/null 2>&1; then
  echo "==> installing cargo-fuzz (once, into ~/.cargo/bin)"
  cargo install cargo-fuzz --locked
fi
# Only stable Rust is installed: cargo-fuzz passes nightly-only flags (-Zsanitizer, and
# -Cpasses=sancov-module needs them too), which stable rustc accepts with RUSTC_BOOTSTRAP.
export RUSTC_BOOTSTRAP=1
tdir=${IVNET_FUZZ_TARGET_DIR:-$HOME/.cache/ivnet-fuzz/target}/$san
echo "==> building the fuzz targets (sanitizer: $san)"
cargo fuzz build -s "$san" --target-dir "$tdir"
bin=$tdir/x86_64-unknown-linux-gnu/release

mkdir -p "$art_root"
logs=$(mktemp -d)
failed=0
summary=()
for t in "${targets[@]}"; do
  corpus=$corpus_root/$t
  mkdir -p "$corpus"
  # Known crashers of the past are seeds: each run checks them again first.
  if [ -d "regressions/$t" ]; then cp -n regressions/"$t"/* "$corpus"/ 2>/dev/null || true; fi
  echo "==> fuzzing $t for ${secs}s (corpus $corpus)"
  log=$logs/$t.log
  set +e
  "$bin/$t" "$corpus" -max_total_time="$secs" -runs="$runs" -max_len="$max_len" -timeout=10 \
    -print_final_stats=1 -artifact_prefix="$art_root/$t-" >"$log" 2>&1
  rc=$?
  set -e
  execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
  rate=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log" | tail -1)
  last=$(grep -E '^#[0-9]+' "$log" | tail -1 || true)
  cov=$(sed -n 's/.* cov: \([0-9]*\).*/\1/p' <<<"$last")
  ft=$(sed -n 's/.* ft: \([0-9]*\).*/\1/p' <<<"$last")
  corp=$(sed -n 's/.* corp: \([0-9]*\).*/\1/p' <<<"$last")
  if [ "$rc" -eq 0 ]; then
    result=ok
  else
    result="FAILED (exit $rc)"
    failed=1
    grep -E -A3 'panicked|ERROR: libFuzzer|SUMMARY|Test unit written' "$log" | head -20 || true
  fi
  line=$(printf '%-13s %12s execs %8s exec/s  cov %-5s ft %-6s corpus %-5s %s' \
    "$t" "${execs:-?}" "${rate:-?}" "${cov:-?}" "${ft:-?}" "${corp:-?}" "$result")
  echo "$line"
  summary+=("$line")
done

echo
echo "==> summary (${secs}s per target, sanitizer $san; logs in $logs)"
printf '%s\n' "${summary[@]}"

variants=${IVNET_FUZZ_VARIANTS:-1}
if [ "$variants" != 0 ]; then
  echo
  echo "==> ProtocolError variants reached by the corpora"
  if ! CARGO_TARGET_DIR="${IVNET_FUZZ_TARGET_DIR:-$HOME/.cache/ivnet-fuzz/target}/replay" \
    cargo run --quiet -p ivnet-fuzz-common --bin ivnet-fuzz-replay -- \
    "$corpus_root" "$@"; then
    if [ "$variants" = report ]; then
      echo "(not every variant reached by this short run: reported only)"
    else
      failed=1
    fi
  fi
fi
exit $failed
