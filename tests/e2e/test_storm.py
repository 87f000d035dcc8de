"""Storms and soak, short (CI): every storm kind IVNET_STORM_CYCLES times (default 5; the full
study is `scripts/storm.py`, 100 cycles a kind), and IVNET_SOAK_SECS of soak (default 20; the
full run is `scripts/soak.py`, 10 minutes). Every cycle must recover, nothing may leak, every
byte must come back intact and the counters of both ends must add up."""

import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "scripts"))

import ivnet_harness as h  # noqa: E402
import ivnet_soak as soak  # noqa: E402
import ivnet_storm as storm  # noqa: E402
import storm as storm_cli  # noqa: E402
from ivnet_twolinks import CELL0, CELL1, TwoLinks  # noqa: E402

CYCLES = int(os.environ.get("IVNET_STORM_CYCLES", "5"))
SOAK_SECS = float(os.environ.get("IVNET_SOAK_SECS", "20"))


def check(r: storm.Result) -> None:
    print(r.line())
    assert r.recovered == r.cycles, r.line()
    assert not r.leaks(), r.leaks()


def test_storms_on_a_cell(work, cell_elf):
    with h.Stack() as st:
        two = TwoLinks(st, work, cell_elf, "ivnet-storm")
        check(storm.peer_kill(two, st, CYCLES, CELL0))
        check(storm.stop_cont(two, CYCLES, [CELL0, CELL1]))
        check(storm.raw_connect(two, CYCLES * 4, CELL0))
        two.assert_no_fatal()


def test_cell_kill_storm_under_ivnet_up(work, cell_elf):
    results = storm_cli.run(["cell-kill"], CYCLES, cell_elf.resolve(), work)
    for r in results:
        check(r)


def test_soak_every_byte_checked(work, cell_elf):
    with h.Stack() as st:
        two = TwoLinks(st, work, cell_elf, "ivnet-soak")
        soak.quiet_counters(two)
        rep = soak.stream(two.ns, CELL0, SOAK_SECS)
        host, cell = soak.quiet_counters(two)
        two.assert_no_fatal()
    print(f"soak {rep['secs']} s: {rep['sent']} bytes sent, {rep['received']} echoed, "
          f"{rep['mbit_s_each_way']} Mbit/s each way, {rep['bad_bytes']} corrupted; "
          f"host {host}; cell {cell}")
    assert rep["bad_bytes"] == 0 and rep["sent"] == rep["received"] > 0, rep
    assert not soak.reconcile(host, cell), soak.reconcile(host, cell)

