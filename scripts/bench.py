"""Capacity benchmark: ivnet against Zephyr's virtio-net, side by side, on this machine.

The same application (Zephyr's own samples/net/zperf, with ivnet's tuned profile) is built
twice, once on ivnet (`-S ivnet`) and once on virtio-net (`-S virtio-net-baseline`), and
measured with iperf 2 on the host side inside a network namespace made here:

  tcp host->cell   iperf -c  -> zperf tcp download           (rate seen by iperf)
  tcp cell->host   zperf tcp upload -> iperf -s              (rate seen by iperf)
  udp host->cell   iperf -u -b RATE -> UDP discard port of the echo sample; the VM's own UDP
                   receive counter (`net stats`) against the datagrams iperf sent: rate, loss
                   (zperf's UDP download crashes Zephyr 4.3's shell as a session starts)
  udp cell->host   zperf udp upload RATE -> iperf -s -u      (rate, loss seen by iperf)
  ping rtt         ping -i 0.01 host->cell, p50 / p99
  tcp cell<->cell  (ivnet only) zperf tcp upload -> zperf tcp download on a second VM

Every measurement boots a fresh VM (0.1 s): Zephyr 4.3's zperf crashes its shell at the end of
a download session, so a VM is never reused after one. Prints a table and the ratios.
"""

import argparse
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent / "pylib"))
import ivnet_harness as h  # noqa: E402

HOST, CELL, CELL2 = "192.0.2.2", "192.0.2.1", "192.0.2.12"


class Env:
    """One driver's world: namespace + TAP, and for ivnet a link server and host peer."""

    def __init__(self, kind, elf, work, st):
        self.kind, self.elf, self.work, self.st = kind, elf, work, st
        self.ns = st.push(h.Netns(f"ivbench-{kind}"))
        tap = "ivtap0" if kind == "ivnet" else "zeth"
        self.ns.tap(tap, f"{HOST}/24")
        self.tap = tap
        self.n = 0
        if kind == "ivnet":
            self.link = work / "link.sock"
            st.push(h.Server(self.link, work / "server.log"))
            st.push(h.HostPeer(self.ns, self.link, tap, work / "peer.log"))

    def vm(self, links=None, name=None, wait=True, elf=None):
        self.n += 1
        # A new VM may come with a new MAC: forget the last one's.
        subprocess.run(["ip", "-n", self.ns.name, "neigh", "flush", "all"], check=False)
        name = name or f"{self.kind}{self.n}"
        if self.kind == "ivnet":
            vm = h.Vm(elf or self.elf, links or [self.link], self.work, name)
            if not wait:
                return vm
            vm.wait_for("ivnet0: carrier on", 20)
        else:
            vm = h.Vm(elf or self.elf, [], self.work, name, virtio_tap=(self.ns, self.tap))
        vm.wait_for(re.escape(h.Vm.PROMPT), 20)
        time.sleep(0.3)
        return vm


def mbit(text):
    r = re.findall(r"([\d.]+) ([MK])bits/sec", text)
    if not r:
        raise ValueError(f"no rate in: {text[-400:]}")
    v, u = r[-1]
    return float(v) / (1000 if u == "K" else 1)


def loss(text):
    """Loss from iperf 2's `lost/total (pct%)` column (the last report line)."""
    m = re.findall(r"\s(\d+)/\s*(\d+)\s+\(([\d.e+-]+)%\)", text)
    if not m:
        raise ValueError(f"no loss figure in: {text[-400:]}")
    lost, total = int(m[-1][0]), int(m[-1][1])
    return 100.0 * lost / max(1, total)


def iperf_server(env, args, seconds):
    return subprocess.Popen(env.ns.cmd("timeout", str(seconds + 25), "iperf", "-s", "-f", "m", *args),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def tcp_rx(env, s, _rate):
    with env.vm() as vm:
        vm.shell("zperf tcp download 5001", "Listening on port 5001")
        r = env.ns.run("iperf", "-c", CELL, "-p", "5001", "-t", str(s), "-f", "m", timeout=s + 30, check=False)
        return {"Mbit/s": mbit(r.stdout)}


def tcp_tx(env, s, _rate):
    srv = iperf_server(env, ["-p", "5002"], s)
    time.sleep(0.5)
    with env.vm() as vm:
        vm.shell(f"zperf tcp upload {HOST} 5002 {s} 1K", r"Upload completed|failed", s + 30)
    srv.terminate()
    return {"Mbit/s": mbit(srv.communicate()[0])}


def udp_recv_count(vm):
    m = re.search(r"UDP recv\s+(\d+)", vm.shell("net stats", timeout=10))
    if not m:
        raise ValueError("no UDP counter in net stats")
    return int(m.group(1))


def udp_rx(env, s, rate):
    with env.vm(elf=env.echo_elf) as vm:
        vm.shell(f"net ipv4 add 1 {CELL} 255.255.255.0")
        env.ns.run("ping", "-c", "3", "-i", "0.2", CELL, check=False)  # resolve ARP first
        before = udp_recv_count(vm)
        r = env.ns.run("iperf", "-c", CELL, "-u", "-p", "9", "-b", f"{rate}M", "-l", "1024",
                       "-t", str(s), "-f", "m", timeout=s + 30, check=False)
        sent = re.findall(r"Sent (\d+) datagrams", r.stdout)
        if not sent:
            raise ValueError(f"iperf: {r.stdout[-300:]}{r.stderr[-200:]}")
        time.sleep(1)
        got = udp_recv_count(vm) - before
        n = int(sent[-1])
        return {"Mbit/s": got * 1024 * 8 / s / 1e6, "loss %": 100.0 * max(0, n - got) / max(1, n)}


def udp_tx(env, s, rate):
    srv = iperf_server(env, ["-u", "-p", "5003"], s)
    time.sleep(0.5)
    with env.vm() as vm:
        vm.shell(f"zperf udp upload {HOST} 5003 {s} 1K {rate}M", r"Upload completed|failed", s + 30)
    time.sleep(1)
    srv.terminate()
    out = srv.communicate()[0]
    return {"Mbit/s": mbit(out), "loss %": loss(out)}


def ping(env, _s, _rate):
    with env.vm():
        r = env.ns.run("ping", "-c", "300", "-i", "0.01", "-W", "1", CELL, timeout=60, check=False)
        rtts = sorted(float(x) for x in re.findall(r"time=([\d.]+) ms", r.stdout))
        if len(rtts) < 290:
            raise ValueError(f"only {len(rtts)}/300 replies")
        return {"p50 ms": statistics.median(rtts), "p99 ms": rtts[int(len(rtts) * 0.99) - 1]}


def cell_cell(env, s, _rate):
    lan = env.work / "lan.sock"
    with h.Server(lan, env.work / "server-lan.log"):
        a = env.vm([lan], "cellA", wait=False)
        b = env.vm([lan], "cellB", wait=False)
        try:
            for vm in (a, b):
                vm.wait_for("ivnet0: carrier on", 20)
                vm.wait_for(re.escape(h.Vm.PROMPT), 20)
            time.sleep(0.3)
            b.shell("net ipv4 del 1 192.0.2.1")
            b.shell(f"net ipv4 add 1 {CELL2} 255.255.255.0")
            b.shell("zperf tcp download 5001", "Listening on port 5001")
            out = a.shell(f"zperf tcp upload {CELL2} 5001 {s} 1K",
                          r"Upload completed![\s\S]*?Rate:\s+[\d.]+ [MK]bps|failed", s + 30)
            # zperf prints its configured rate before starting; the result follows "completed".
            tail = out[out.find("Upload completed"):] if "Upload completed" in out else ""
            m = re.findall(r"Rate:\s+([\d.]+) ([MK])bps", tail)
            if not m:
                raise ValueError(out[-400:])
            v, u = m[-1]
            return {"Mbit/s": float(v) / (1000 if u == "K" else 1)}
        finally:
            a.close()
            b.close()


TESTS = [("tcp host->cell", tcp_rx), ("tcp cell->host", tcp_tx), ("udp host->cell", udp_rx),
         ("udp cell->host", udp_tx), ("ping rtt", ping)]


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ivnet-elf", type=Path, required=True)
    ap.add_argument("--virtio-elf", type=Path, required=True)
    ap.add_argument("--ivnet-echo-elf", type=Path, default=Path("build/echo/zephyr/zephyr.elf"),
                    help="samples/echo on ivnet (UDP sink for udp host->cell)")
    ap.add_argument("--virtio-echo-elf", type=Path, default=Path("build/echo-virtio/zephyr/zephyr.elf"),
                    help="samples/echo on virtio-net (-S virtio-net-baseline)")
    ap.add_argument("--seconds", type=int, default=10, help="length of each throughput run")
    ap.add_argument("--udp-rate", type=int, default=150, help="offered UDP rate, Mbit/s")
    ap.add_argument("-v", action="store_true", help="print raw iperf output")
    ap.add_argument("--only", help="comma-separated subset of: " + ", ".join(n for n, _ in TESTS))
    a = ap.parse_args()
    chosen = [t for t in TESTS if not a.only or t[0] in a.only.split(",")]
    results = {}
    for kind, elf, echo in (("virtio", a.virtio_elf, a.virtio_echo_elf), ("ivnet", a.ivnet_elf, a.ivnet_echo_elf)):
        wd = h.Workdir(f"ivbench-{kind}")
        with h.Stack() as st:
            st.push(wd)
            env = Env(kind, elf, wd.path, st)
            env.echo_elf = echo
            cc = not a.only or "tcp cell<->cell" in a.only.split(",")
            tests = chosen + ([("tcp cell<->cell", cell_cell)] if kind == "ivnet" and cc else [])
            for name, fn in tests:
                try:
                    results[(kind, name)] = fn(env, a.seconds, a.udp_rate)
                except Exception as e:  # report and go on
                    results[(kind, name)] = {"error": str(e).splitlines()[0][:60]}
                print(f"  {kind:6} {name:16} {results[(kind, name)]}", flush=True)
    print(f"\nivnet vs virtio-net, qemu_cortex_a53 (TCG), {a.seconds} s runs, UDP offered {a.udp_rate} Mbit/s, 1 KiB datagrams")
    print(f"{'measurement':18} {'virtio-net':>22} {'ivnet':>22} {'ivnet/virtio':>13}")
    for name, _ in TESTS + [("tcp cell<->cell", None)]:
        v, i = results.get(("virtio", name)), results.get(("ivnet", name))
        if v is None and i is None:
            continue
        fmt = lambda r: "-" if r is None else ("error" if "error" in r else "  ".join(f"{x:.2f} {k}" if k != "Mbit/s" else f"{x:.1f} {k}" for k, x in r.items()))
        ratio = ""
        if name == "tcp cell<->cell" and i and "Mbit/s" in i and (v2 := results.get(("virtio", "tcp cell->host"))) and "Mbit/s" in v2:
            ratio = f"{i['Mbit/s'] / v2['Mbit/s']:.2f}x (vs virtio cell->host)"
        elif v and i and "Mbit/s" in v and "Mbit/s" in i:
            ratio = f"{i['Mbit/s'] / v['Mbit/s']:.2f}x"
        elif v and i and "p50 ms" in v and "p50 ms" in i:
            ratio = f"p50 {i['p50 ms'] / v['p50 ms']:.2f}x, p99 {i['p99 ms'] / v['p99 ms']:.2f}x"
        print(f"{name:18} {fmt(v):>22} {fmt(i):>22} {ratio:>13}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
