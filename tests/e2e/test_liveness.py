"""Liveness, in QEMU: a peer that stays in RUN but stops completing frames (a hung guest whose
QEMU is alive, or a hostile peer) must not stall the cell's other link.

One cell (the cell image: two ivnet links, addresses from fw_cfg) in a namespace made here:
link 0 to an honest host peer (TAP ivl0), link 1 to `ivnet-hostile --attack stall` (TAP ivl1).
The namespace keeps sending UDP into link 1, so the cell keeps answering into a ring nobody
empties. The healthy link's ping latency and TCP throughput (both ways) are measured before
and during the stall, in the same run; afterwards the hostile peer turns honest again and
link 1 must come back.

Link 1 carries the same UDP load (200 datagrams of 1000 bytes a second, echoed by the cell)
in both phases, so that what is compared is the stall alone. Two images: the default one, whose
watchdog resets the stuck link, and one with the watchdog off, where the ring stays full the
whole time and only send()'s progress rule protects link 0.

The phases alternate, ROUNDS times (IVNET_LIVENESS_ROUNDS, default 3): healthy, stalled,
healthy again... so that drift of the host's load does not pass for an effect. Each phase takes
200 pings at 20 ms and one TCP sample each way of IVNET_LIVENESS_SECS seconds (default 4)."""

import os
import re
import signal
import statistics
import subprocess
import time
from pathlib import Path

import ivnet_harness as h
from ivnet_twolinks import CELL0, CELL1, HOST0, TwoLinks, pct, pings

NS = "ivnet-live"
SECS = int(os.environ.get("IVNET_LIVENESS_SECS", "4"))
ROUNDS = int(os.environ.get("IVNET_LIVENESS_ROUNDS", "3"))


def tcp_down(ns: h.Netns) -> float:
    """iperf host -> cell's zperf (already listening on 5001), Mbit/s."""
    r = ns.run("iperf", "-c", CELL0, "-p", "5001", "-t", str(SECS), "-f", "m",
               timeout=SECS + 30, check=False)
    rate = h.iperf_rate(r.stdout)
    assert rate, r.stdout + r.stderr
    return rate


def tcp_up(ns: h.Netns, vm: h.Vm) -> float:
    """zperf cell -> iperf server in the namespace, Mbit/s (as iperf saw it)."""
    srv = subprocess.Popen(ns.cmd("timeout", str(SECS + 30), "iperf", "-s", "-P", "1", "-f", "m",
                                  "-p", "5002"),
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    time.sleep(0.3)
    since = vm.mark()
    got = vm.shell(f"zperf tcp upload {HOST0} 5002 {SECS} 1K", r"Upload completed|failed|rror",
                   SECS + 30)
    try:
        out = srv.communicate(timeout=15)[0]
    except subprocess.TimeoutExpired:
        srv.kill()
        out = srv.communicate()[0]
    vm.wait_for(re.escape(h.Vm.PROMPT), 10, since=since + len(got))
    time.sleep(0.2)
    rate = h.iperf_rate(out)
    assert rate, out
    return rate


def sample(ns: h.Netns, vm: h.Vm) -> dict:
    """Link 0: 200 pings at 20 ms, then TCP host -> cell and cell -> host, SECS each."""
    rtts, lost = pings(ns, CELL0, 200)
    return {"rtts": rtts, "lost": lost, "down": tcp_down(ns), "up": tcp_up(ns, vm)}


def summary(samples: list[dict], label: str) -> dict:
    rtts = [r for s in samples for r in s["rtts"]]
    m = {"p50": pct(rtts, 50), "p99": pct(rtts, 99), "max": max(rtts),
         "lost": sum(s["lost"] for s in samples), "pings": 200 * len(samples),
         "down": statistics.mean(s["down"] for s in samples),
         "up": statistics.mean(s["up"] for s in samples)}
    print(f"{label}: ping p50 {m['p50']:.2f} ms, p99 {m['p99']:.2f} ms, max {m['max']:.2f} ms, "
          f"lost {m['lost']}/{m['pings']}; TCP host->cell {m['down']:.1f} Mbit/s "
          f"{[round(s['down'], 1) for s in samples]}, cell->host {m['up']:.1f} Mbit/s "
          f"{[round(s['up'], 1) for s in samples]}")
    return m


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process (and its waited-for children), in seconds."""
    f = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return sum(int(x) for x in f[11:15]) / os.sysconf("SC_CLK_TCK")


class CpuMeter:
    """CPU use of named processes over a phase, in % of one core."""

    def __init__(self, procs: dict):
        self.procs, self.t0 = procs, time.time()
        self.c0 = {n: cpu_seconds(p.pid) for n, p in procs.items()}

    def report(self) -> str:
        dt = time.time() - self.t0
        return ", ".join(f"{n} {100 * (cpu_seconds(p.pid) - self.c0[n]) / dt:.0f} %"
                         for n, p in self.procs.items())


def stall_run(work: Path, elf: Path, watchdog: bool) -> None:
    """The scenario of the module docstring; `watchdog`: the image resets a stuck link."""
    with h.Stack() as st:
        two = TwoLinks(st, work, elf, NS, "stall")
        ns, vm, hostile, peer0 = two.ns, two.vm, two.hostile, two.peer0
        # Bound to link 0's address: Zephyr ties a listener bound to 0.0.0.0 to one interface
        # (the source address choice for 0.0.0.0, here link 1's) and closes it when that
        # interface goes down (docs/reliability.md).
        vm.shell(f"zperf tcp download 5001 {CELL0}", "Listening on port 5001")

        # UDP into link 1 from here on (the cell echoes every datagram back into link 1).
        load_secs = ROUNDS * 2 * (4 + 2 * (SECS + 4) + 20) + 60
        two.blaster(st, CELL1, 200, 1000, load_secs)
        time.sleep(1)
        procs = {"QEMU": vm.proc, "peer0": peer0.proc, "hostile": hostile}
        healthy, stalled = [], []
        cpu_healthy, cpu_stalled = [], []
        stalls_before = 0
        for rnd in range(ROUNDS):
            # Healthy: link 1 answers its load.
            cpu = CpuMeter(procs)
            healthy.append(sample(ns, vm))
            cpu_healthy.append(cpu.report())
            s0 = two.stat("ivnet1")
            # The stall: the hostile peer stops completing; the cell's answers fill link 1.
            mark = vm.mark()
            drops0 = s0["tx_dropped"]
            hostile.send_signal(signal.SIGUSR1)
            if watchdog:
                # The cell judges link 1's peer stuck and resets that link (only that one).
                vm.wait_for(r"ivnet1: peer completed none of \d+ frames in flight", 15, mark)
                vm.wait_for("ivnet1: carrier off", 5, mark)
            else:
                # The ring fills; from then on every answer into it is dropped at once.
                t = time.time()
                while two.stat("ivnet1")["tx_dropped"] == drops0:
                    assert time.time() - t < 30, "link 1's ring never filled"
                    time.sleep(0.5)
            cpu = CpuMeter(procs)
            stalled.append(sample(ns, vm))
            cpu_stalled.append(cpu.report())
            s1 = two.stat("ivnet1")
            if watchdog:
                assert s1["peer_stalls"] == stalls_before + 1, s1
                stalls_before = s1["peer_stalls"]
            else:
                assert s1["peer_stalls"] == 0 and "ivnet1: carrier off" not in vm.buf[mark:], s1
                assert s1["tx_dropped"] - drops0 > 500, (s0, s1)
            assert "ivnet0: carrier off" not in vm.buf[mark:]
            # The peer comes back: link 1 answers again (after a new handshake when reset).
            mark = vm.mark()
            hostile.send_signal(signal.SIGUSR2)
            if watchdog:
                vm.wait_for("ivnet1: carrier on", 20, mark)
            two.wait_link1_back()
            print(f"round {rnd}: ivnet1 {s1}")
        print(f"CPU while healthy: {cpu_healthy}; while stalled: {cpu_stalled}")
        before = summary(healthy, "link 1 healthy")
        during = summary(stalled, f"link 1 stalled ({'watchdog on' if watchdog else 'watchdog off'})")

        # Link 0 kept its latency and throughput.
        assert during["lost"] == 0, during
        assert during["p99"] < 10.0, during
        for way in ("down", "up"):
            ratio = during[way] / before[way]
            print(f"TCP {way}: {100 * ratio:.0f} % of the unaffected rate")
            assert ratio >= 0.8, (way, before, during)

        r = ns.run("ping", "-c", "20", "-i", "0.05", "-W", "2", CELL1, check=False)
        tx, rx = h.ping_summary(r.stdout)
        print(f"link 1 after the last stall: {rx}/{tx} pings")
        assert rx >= 18, r.stdout
        assert "ATTACK end" in two.hostile_log.read_text()
        two.assert_no_fatal()


def test_stuck_peer_is_reset_and_the_other_link_keeps_its_pace(work, cell_elf):
    stall_run(work, cell_elf, watchdog=True)


def test_stuck_peer_without_watchdog_costs_the_other_link_nothing(work, cell_nowd_elf):
    stall_run(work, cell_nowd_elf, watchdog=False)
