#!/usr/bin/env bash
# Host-only end to end: two namespaces, each with a TAP bridged by an ivnet host peer onto the
# same ivshmem-net link through an ivnet server. Pings across (bounded count and time), then
# kills one peer mid-run and restarts it: the link must come back without restarting the other.
# Needs root (network namespaces, TAP). All traffic stays inside the namespaces made here.
set -euo pipefail
bin=${IVNET_BIN:-$(cd "$(dirname "$0")/../.." && pwd)/target/release/ivnet}
[ -x "$bin" ] || { echo "netns-ping: $bin not built (cargo build --release)"; exit 1; }
[ "$(id -u)" -eq 0 ] || { echo "netns-ping: needs root"; exit 1; }
tag=ivt$$
dir=$(mktemp -d /tmp/ivnet-netns.XXXXXX)
nsa=${tag}a nsb=${tag}b
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  ip netns del "$nsa" 2>/dev/null || true
  ip netns del "$nsb" 2>/dev/null || true
  if [ "${ok:-0}" != 1 ]; then for f in "$dir"/*.log; do echo "== $f"; tail -20 "$f"; done; fi
  rm -rf "$dir"
}
trap cleanup EXIT
ip netns add "$nsa"; ip netns add "$nsb"
# Persistent TAPs (as for QEMU's -netdev tap): they keep address and MAC across peer restarts.
ip -n "$nsa" tuntap add dev ivtap0 mode tap
ip -n "$nsb" tuntap add dev ivtap0 mode tap
ip -n "$nsa" addr add 10.99.0.1/24 dev ivtap0; ip -n "$nsa" link set ivtap0 up
ip -n "$nsb" addr add 10.99.0.2/24 dev ivtap0; ip -n "$nsb" link set ivtap0 up
"$bin" server --socket "$dir/link.sock" --size 1M >"$dir/server.log" 2>&1 & pids+=($!)
for i in $(seq 50); do [ -S "$dir/link.sock" ] && break; sleep 0.1; done
start_peer() { # ns addr
  ip netns exec "$1" "$bin" peer --socket "$dir/link.sock" --tap ivtap0 >>"$dir/peer-$1.log" 2>&1 &
  echo $!
}
pa=$(start_peer "$nsa"); pids+=($pa)
pb=$(start_peer "$nsb"); pids+=($pb)
ip netns exec "$nsa" ping -c 100 -i 0.01 -W 2 -w 20 10.99.0.2 | tail -2
# Kill b's peer and restart it: the link must recover.
kill "$pb"; wait "$pb" 2>/dev/null || true
sleep 0.5
pb=$(start_peer "$nsb"); pids+=($pb)
ip netns exec "$nsa" ping -c 100 -i 0.01 -W 2 -w 30 10.99.0.2 | tail -2
grep -c "joined" "$dir/server.log" | sed 's/^/joins seen by server: /'
ok=1
