#!/usr/bin/env python3
"""Storms: each fault, again and again (100 cycles of each kind by default), and the figures:
how many cycles recovered, how fast, and whether anything leaked (guest net_pkt/net_buf, host
fds and RSS). See scripts/pylib/ivnet_storm.py for the kinds.

    scripts/storm.py [--cycles N] [--kinds peer-kill,stop-cont,raw-connect,cell-kill]

Needs root (namespaces, TAP) and the cell image (build/cell, built by scripts/test.sh or
`west build -b qemu_cortex_a53 samples/echo -d build/cell -S ivnet -S ivnet-cell`). All traffic
stays inside namespaces made here. Exits non-zero when a cycle did not recover or something
leaked.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts" / "pylib"))

import ivnet_harness as h  # noqa: E402
import ivnet_network as ivn  # noqa: E402
import ivnet_storm as storm  # noqa: E402
from ivnet_twolinks import CELL0, CELL1, TwoLinks  # noqa: E402

KINDS = ["peer-kill", "stop-cont", "raw-connect", "cell-kill"]


def network_topology(elf: Path) -> str:
    return f"""[host]
bridge = "ivstorm0"
subnet = "10.79.0.0/24"

[[cell]]
name = "s1"
image = "{elf}"
mac = "02:00:00:00:79:01"
address = "10.79.0.11"

[[cell]]
name = "s2"
image = "{elf}"
mac = "02:00:00:00:79:02"
address = "10.79.0.12"

[[link]]
ends = ["s1", "host"]

[[link]]
ends = ["s2", "host"]
"""


def run(kinds: list[str], cycles: int, elf: Path, work: Path) -> list[storm.Result]:
    results = []
    two_kinds = [k for k in kinds if k != "cell-kill"]
    if two_kinds:
        with h.Stack() as st:
            two = TwoLinks(st, work, elf, "ivnet-storm")
            for k in two_kinds:
                t = time.time()
                if k == "peer-kill":
                    r = storm.peer_kill(two, st, cycles, CELL0)
                elif k == "stop-cont":
                    r = storm.stop_cont(two, cycles, [CELL0, CELL1])
                else:
                    r = storm.raw_connect(two, cycles, CELL0)
                print(f"{r.line()}  ({time.time() - t:.0f} s)", flush=True)
                results.append(r)
            two.assert_no_fatal()
    if "cell-kill" in kinds:
        net = ivn.Network(work / "state", "ivstorm0", "127.0.0.1:9479", "ivnet-storm-h", "ivnet-storm-o")
        try:
            topo = work / "storm.toml"
            topo.write_text(network_topology(elf))
            net.up(topo)
            net.wait_addressed(60)
            t = time.time()
            r = storm.cell_kill(net, cycles, topo, "s1")
            print(f"{r.line()}  ({time.time() - t:.0f} s)", flush=True)
            results.append(r)
        finally:
            net.close()
    return results


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--cycles", type=int, default=100)
    p.add_argument("--kinds", default=",".join(KINDS))
    p.add_argument("--elf", type=Path, default=Path(os.environ.get(
        "IVNET_CELL_ELF", ROOT / "build/cell/zephyr/zephyr.elf")))
    a = p.parse_args()
    kinds = a.kinds.split(",")
    bad = [k for k in kinds if k not in KINDS]
    if bad:
        p.error(f"unknown kind(s) {bad}: choose from {KINDS}")
    if not a.elf.exists():
        p.error(f"no cell image at {a.elf} (see the docstring)")
    work = Path(tempfile.mkdtemp(prefix="ivnet-storm-", dir="/tmp"))
    print(f"storms: {kinds}, {a.cycles} cycles each; logs in {work}")
    results = run(kinds, a.cycles, a.elf.resolve(), work)
    failed = 0
    print("\nsummary:")
    for r in results:
        print(f"  {r.line()}")
        leaks = r.leaks()
        if r.recovered != r.cycles or leaks:
            failed += 1
            print(f"  FAIL {r.kind}: {r.cycles - r.recovered} not recovered; leaks: {leaks or 'none'}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
