"""Storms: the same fault again and again, and after each the link must be back in RUN with
nothing leaked. Shared by scripts/storm.py (the full study, 100+ cycles a kind, figures) and
tests/e2e/test_storm.py (a short run in CI).

Kinds:
  peer-kill     kill -9 of the host peer of a cell's link while traffic crosses it, then a new
                host peer; recovered when the cell answers pings over that link again.
  stop-cont     SIGSTOP of the cell's QEMU for STOP_SECS, then SIGCONT; recovered when both of
                its links answer again.
  raw-connect   a bare connect + close on the link's server socket (a third party the server
                must refuse), 10 per cycle; the link must stay up throughout.
  cell-kill     kill -9 of a cell's QEMU in a network run by `ivnet up`, then `ivnet up` again
                (which restarts it); recovered when the cell answers pings.

Leaks: the guest's free net_pkt and net_buf counts (`net mem`, needs CONFIG_NET_BUF_POOL_USAGE),
read when traffic has stopped, before and after; and the open fds and RSS of the long-running
host processes (the ivshmem server, the host peer that is not killed, the supervisor).
"""

from __future__ import annotations

import os
import re
import signal
import socket
import statistics
import subprocess
import time
from pathlib import Path

import ivnet_harness as h

STOP_SECS = 3.0
MEM_LINE = re.compile(r"0x[0-9a-f]+\s+(\d+)\s+(\d+)\s+\S+\s+(RX DATA|TX DATA|RX|TX)\b")


def guest_mem(con: h.Console) -> dict:
    """Free net_pkt (RX, TX) and net_buf (RX DATA, TX DATA) counts, from `net mem`."""
    out = con.shell("net mem", timeout=10)
    got = {m.group(3): int(m.group(2)) for m in MEM_LINE.finditer(out)}
    if len(got) != 4:
        raise RuntimeError(f"no pool usage in `net mem` (CONFIG_NET_BUF_POOL_USAGE?): {out[-400:]}")
    return got


def settled_mem(con: h.Console, tries: int = 10) -> dict:
    """`net mem` once two readings a second apart agree (buffers in flight have come back)."""
    last = guest_mem(con)
    for _ in range(tries):
        time.sleep(1)
        now = guest_mem(con)
        if now == last:
            return now
        last = now
    return last


def proc_usage(pid: int) -> tuple[int, int]:
    """(open fds, RSS in KiB) of a process."""
    fds = len(os.listdir(f"/proc/{pid}/fd"))
    rss = int(re.search(r"VmRSS:\s+(\d+)", Path(f"/proc/{pid}/status").read_text()).group(1))
    return fds, rss


def pids_of(pattern: str) -> list[int]:
    r = subprocess.run(["pgrep", "-f", pattern], capture_output=True, text=True)
    return [int(p) for p in r.stdout.split()]


def ping_ok(ns: h.Netns, addr: str) -> bool:
    return ns.run("ping", "-c", "1", "-W", "1", addr, check=False).returncode == 0


def wait_ping(ns: h.Netns, addr: str, timeout: float) -> float | None:
    """Seconds until `addr` answers a ping, or None after `timeout`."""
    t = time.time()
    while time.time() - t < timeout:
        if ping_ok(ns, addr):
            return time.time() - t
        time.sleep(0.05)
    return None


class Result:
    """What a storm saw."""

    def __init__(self, kind: str):
        self.kind, self.cycles, self.recovered = kind, 0, 0
        self.times: list[float] = []
        self.before: dict = {}
        self.after: dict = {}

    def cycle(self, took: float | None) -> None:
        self.cycles += 1
        if took is not None:
            self.recovered += 1
            self.times.append(took)

    def leaks(self) -> list[str]:
        """What grew: fds (any), RSS (more than 2 MiB or 10 %), guest free counts (any drop)."""
        bad = []
        for k, b in self.before.items():
            a = self.after.get(k)
            if a is None:
                continue
            if k.endswith(" fds") and a > b:
                bad.append(f"{k} {b} -> {a}")
            elif k.endswith(" RSS KiB") and a > b + max(2048, b // 10):
                bad.append(f"{k} {b} -> {a}")
            elif k.startswith("guest free ") and a < b:
                bad.append(f"{k} {b} -> {a}")
        return bad

    def line(self) -> str:
        t = sorted(self.times) or [float("nan")]
        p95 = t[min(len(t) - 1, int(0.95 * (len(t) - 1) + 0.5))]
        flat = ", ".join(f"{k} {self.before[k]} -> {self.after.get(k)}" for k in self.before)
        return (f"{self.kind}: {self.recovered}/{self.cycles} recovered; recovery p50 "
                f"{statistics.median(t):.2f} s, p95 {p95:.2f} s, max {t[-1]:.2f} s; {flat}")


def usage_of(procs: dict[str, int]) -> dict:
    out = {}
    for name, pid in procs.items():
        fds, rss = proc_usage(pid)
        out[f"{name} fds"] = fds
        out[f"{name} RSS KiB"] = rss
    return out


def mem_of(con: h.Console) -> dict:
    return {f"guest free {k}": v for k, v in settled_mem(con).items()}


def peer_kill(two, st: h.Stack, cycles: int, addr: str, traffic_rate: int = 200) -> Result:
    """Kills link 0's host peer mid-transfer `cycles` times (see the module docstring)."""
    r = Result("peer-kill")
    servers = {"server0": pids_of(f"server --socket {two.work / 'l0.sock'}")[0]}
    r.before = {**usage_of(servers), **mem_of(two.vm)}
    blaster = two.blaster(st, addr, traffic_rate, 1000, cycles * 10 + 60)
    for _ in range(cycles):
        time.sleep(0.3)
        two.peer0.kill()
        time.sleep(0.2)
        two.peer0.start()
        r.cycle(wait_ping(two.ns, addr, 20))
    h.stop(blaster)
    time.sleep(1)
    r.after = {**usage_of(servers), **mem_of(two.vm)}
    return r


def stop_cont(two, cycles: int, addrs: list[str], secs: float = STOP_SECS) -> Result:
    """SIGSTOPs the cell's QEMU for `secs`, then SIGCONT, `cycles` times."""
    r = Result("stop-cont")
    procs = {"server0": pids_of(f"server --socket {two.work / 'l0.sock'}")[0],
             "peer0": two.peer0.proc.pid}
    r.before = {**usage_of(procs), **mem_of(two.vm)}
    for _ in range(cycles):
        two.vm.proc.send_signal(signal.SIGSTOP)
        time.sleep(secs)
        two.vm.proc.send_signal(signal.SIGCONT)
        t = time.time()
        took = 0.0
        for a in addrs:
            w = wait_ping(two.ns, a, 30)
            if w is None:
                took = None
                break
        r.cycle(None if took is None else time.time() - t)
    r.after = {**usage_of(procs), **mem_of(two.vm)}
    return r


def raw_connect(two, cycles: int, addr: str, per_cycle: int = 10) -> Result:
    """Bare connects and closes on link 0's server socket while the link carries pings."""
    r = Result("raw-connect")
    path = str(two.work / "l0.sock")
    procs = {"server0": pids_of(f"server --socket {path}")[0], "peer0": two.peer0.proc.pid}
    r.before = {**usage_of(procs), **mem_of(two.vm)}
    for _ in range(cycles):
        t = time.time()
        for _ in range(per_cycle):
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            s.connect(path)
            s.close()
        r.cycle(time.time() - t if ping_ok(two.ns, addr) else None)
    time.sleep(1)
    r.after = {**usage_of(procs), **mem_of(two.vm)}
    return r


def cell_kill(net, cycles: int, topo: Path, cell: str) -> Result:
    """Kills `cell`'s QEMU under `ivnet up`, then `ivnet up` again, `cycles` times."""
    r = Result("cell-kill")
    st = net.status()
    sup = {"supervisor": st["supervisor_pid"]}
    r.before = usage_of(sup)
    addr = next(c["address"] for c in st["cells"] if c["name"] == cell)
    for _ in range(cycles):
        pid = next(c["pid"] for c in net.status()["cells"] if c["name"] == cell)
        os.kill(pid, signal.SIGKILL)
        # Wait until the supervisor saw it die, then bring it back.
        t0 = time.time()
        while next(c["running"] for c in net.status()["cells"] if c["name"] == cell):
            if time.time() - t0 > 10:
                break
            time.sleep(0.05)
        t = time.time()
        net.up(topo)
        took = wait_ping(net.host, addr, 30)
        r.cycle(None if took is None else time.time() - t)
    # (The guest is a new one after every kill: nothing of it accumulates.)
    r.after = usage_of(sup)
    return r
