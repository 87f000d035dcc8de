#!/usr/bin/env python3
"""Soak: TCP in both directions at full rate through one of a cell's links for a while (10
minutes by default), every byte checked by the application, then the counters of both ends of
the link reconciled. See scripts/pylib/ivnet_soak.py.

    scripts/soak.py [--minutes M]

Needs root and the cell image (build/cell). All traffic stays inside a namespace made here.
Exits non-zero on any corrupted or lost byte, or counters that do not add up.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts" / "pylib"))

import ivnet_harness as h  # noqa: E402
import ivnet_soak as soak  # noqa: E402
from ivnet_twolinks import CELL0, TwoLinks  # noqa: E402


def run(minutes: float, elf: Path, work: Path) -> dict:
    with h.Stack() as st:
        two = TwoLinks(st, work, elf, "ivnet-soak")
        before_host, before_cell = soak.quiet_counters(two)
        rep = soak.stream(two.ns, CELL0, minutes * 60)
        host, cell = soak.quiet_counters(two)
        two.assert_no_fatal()
        echo = two.stat("echo")
    rep["host_counters"] = host
    rep["cell_counters"] = cell
    rep["reconcile"] = soak.reconcile(host, cell)
    rep["echo_tcp_bytes"] = echo.get("tcp_bytes")
    rep["counters_before"] = {"host": before_host, "cell": before_cell}
    return rep


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--minutes", type=float, default=10.0)
    p.add_argument("--elf", type=Path, default=Path(os.environ.get(
        "IVNET_CELL_ELF", ROOT / "build/cell/zephyr/zephyr.elf")))
    a = p.parse_args()
    if not a.elf.exists():
        p.error(f"no cell image at {a.elf} (see the docstring)")
    work = Path(tempfile.mkdtemp(prefix="ivnet-soak-", dir="/tmp"))
    print(f"soak: {a.minutes:g} min of TCP echo through link 0; logs in {work}", flush=True)
    rep = run(a.minutes, a.elf.resolve(), work)
    print(json.dumps(rep, indent=1))
    lost = rep["sent"] - rep["received"]
    print(f"\nsoak: {rep['secs']} s, {rep['sent']} bytes sent, {rep['received']} echoed "
          f"({rep['mbit_s_each_way']} Mbit/s each way), {rep['bad_bytes']} corrupted, {lost} lost; "
          f"counters {'reconciled' if not rep['reconcile'] else rep['reconcile']}")
    return 0 if rep["bad_bytes"] == 0 and lost == 0 and not rep["reconcile"] else 1


if __name__ == "__main__":
    sys.exit(main())
