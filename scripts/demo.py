"""The ivnet demo network: `ivnet up topologies/demo.toml`, then a tour of what it built.

Four Zephyr cells (qemu_cortex_a53, the Rust ivnet driver) on a host bridge, c3 and c4 also on
a cell<->cell link; DHCP from dnsmasq, NAT to the uplink and a port forward by nftables. It all
runs inside the network namespace `ivnet-demo`, whose uplink is a veth to `ivnet-demo-out`
("outside"); both are made here and removed at the end, with `ivnet down` (--keep leaves the
network up until Ctrl-C).

The demo pings host <-> cells and cell <-> cell in IPv4 and IPv6, reaches c1's echo service
from outside through the port forward, reaches outside from a cell through NAT (both
families), talks MCUmgr to every cell,
reads the metrics and the Ansible inventory, measures TCP with iperf 2 against zperf, kills a
cell and brings it back with `ivnet up`, and prints what it saw.
"""

import argparse
import json
import os
import re
import shutil
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent / "pylib"))
import ivnet_harness as h  # noqa: E402
import ivnet_network as ivn  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
TOPOLOGY = ROOT / "topologies" / "demo.toml"
BRIDGE = "ivdemo0"
METRICS = "127.0.0.1:9477"


def say(msg):
    print(f"\033[1m{msg}\033[0m", flush=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--keep", action="store_true", help="leave the network up until Ctrl-C")
    ap.add_argument("--iperf-seconds", type=int, default=5)
    a = ap.parse_args()

    state = Path("/tmp/ivnet-demo-state")
    shutil.rmtree(state, ignore_errors=True)
    figures = []

    def fig(name, value):
        figures.append((name, value))
        print(f"   {name}: {value}")

    net = ivn.Network(state, BRIDGE, METRICS, "ivnet-demo", "ivnet-demo-out")
    cons = {}
    try:
        say(f"1. ivnet up {TOPOLOGY.relative_to(ROOT)} (inside namespace ivnet-demo)")
        t0 = time.time()
        print(net.up(TOPOLOGY).stdout)
        st = net.wait_addressed(90)
        fig("4 cells up, DHCP leases taken", f"{time.time() - t0:.1f} s")
        addrs = {c["name"]: c["address"] for c in st["cells"]}
        for c, ad in addrs.items():
            print(f"   {c}: {ad}")

        say("2. host -> every cell: 20 pings each")
        for c, ad in addrs.items():
            r = net.host.run("ping", "-c", "20", "-i", "0.05", "-W", "2", ad, check=False)
            tx, rx = h.ping_summary(r.stdout)
            fig(f"ping host -> {c}", f"{rx}/{tx}  {r.stdout.strip().splitlines()[-1]}")

        say("3. every cell -> every other cell and the host (Zephyr shell `net ping`)")
        cons = {c["name"]: h.Console(Path(c["console"]), state / f"demo-{c['name']}.log", c["name"])
                for c in st["cells"]}
        for con in cons.values():
            con.shell("")
        ok, failed = ivn.ping_matrix(cons, addrs, st["host"]["address"])
        for e in failed:
            print(f"   {e}")
        fig("ping matrix (cell -> cells + host)", f"{ok}/{ok + len(failed)}")

        say("3b. the same in IPv6: SLAAC addresses from the host's router advertisements")
        addrs6 = {c["name"]: c["address6"] for c in st["cells"]}
        for c, ad in addrs6.items():
            print(f"   {c}: {ad}")
        ok6 = 0
        for c, ad in addrs6.items():
            try:
                ivn.wait_until(f"host -> {c} over IPv6", lambda: net.host.run(
                    "ping", "-6", "-c", "1", "-W", "2", ad, check=False).returncode == 0, 30)
                ok6 += 1
            except TimeoutError as e:
                print(f"   {e}")
        fig("ping host -> cells over IPv6", f"{ok6}/{len(addrs6)}")
        ok, failed = ivn.ping_matrix(cons, addrs6, st["host"]["address6"])
        for e in failed:
            print(f"   {e}")
        fig("IPv6 ping matrix (cell -> cells + host)", f"{ok}/{ok + len(failed)}")

        say("4. c3 <-> c4 on their own link (10.30.0.0/30)")
        out = cons["c3"].shell("net ping -c 10 -i 50 10.30.0.2", r"icmp_seq=10 |Ping timeout", 30)
        fig("ping c3 -> c4 over the cell<->cell link", f"{h.zephyr_ping_count(out)}/10")
        out = cons["c3"].shell("net ping -c 10 -i 50 fd00:30::2", r"icmp_seq=10 |Ping timeout", 30)
        fig("ping c3 -> c4 over that link in IPv6 (fd00:30::/64)", f"{h.zephyr_ping_count(out)}/10")
        link = ivn.stat_lines(net.mcumgr(addrs["c3"], "stat", "ivnet0"))
        fig("c3's counters of that link (MCUmgr stat ivnet0)",
            f"tx {link.get('tx_frames')} frames, rx {link.get('rx_frames')} frames")

        say(f"5. outside -> host {ivn.UPLINK_ADDR}:8080 -> c1's TCP echo (nftables DNAT)")
        got = ivn.tcp_echo(net.out, ivn.UPLINK_ADDR, 8080, "hello-from-outside")
        fig("port forward from outside", "echoed" if got == "hello-from-outside" else f"FAILED ({got!r})")
        got = ivn.tcp_echo(net.out, ivn.UPLINK_ADDR6, 8080, "hello-from-outside-6")
        fig(f"port forward from outside in IPv6 ([{ivn.UPLINK_ADDR6}]:8080)",
            "echoed" if got == "hello-from-outside-6" else f"FAILED ({got!r})")

        say(f"6. c2 -> outside {ivn.OUTSIDE_ADDR} (masquerade out of the uplink)")
        try:
            ivn.cell_ping(cons["c2"], ivn.OUTSIDE_ADDR)
            fig("NAT from a cell to outside", "ping answered")
        except AssertionError:
            fig("NAT from a cell to outside", "FAILED")
        try:
            ivn.cell_ping(cons["c2"], ivn.OUTSIDE_ADDR6)
            fig(f"NAT66 from a cell to outside {ivn.OUTSIDE_ADDR6}", "ping answered")
        except AssertionError:
            fig(f"NAT66 from a cell to outside {ivn.OUTSIDE_ADDR6}", "FAILED")

        say("7. MCUmgr (SMP over UDP) to every cell: echo, and the echo service's stats")
        for c, ad in addrs.items():
            e = net.mcumgr(ad, "echo", f"hi {c}").strip()
            s = ivn.stat_lines(net.mcumgr(ad, "stat", "echo"))
            fig(f"MCUmgr {c}", f"echo {e!r}, tcp_conns {s.get('tcp_conns')}, udp_rx {s.get('udp_rx')}")

        say(f"8. TCP throughput host -> c1: iperf 2 -> zperf, {a.iperf_seconds} s")
        cons["c1"].shell("zperf tcp download 5001", "Listening on port 5001")
        r = net.host.run("iperf", "-c", addrs["c1"], "-p", "5001", "-t", str(a.iperf_seconds), "-f", "m",
                         timeout=a.iperf_seconds + 30, check=False)
        rate = h.iperf_rate(r.stdout)
        fig("iperf TCP host -> c1", f"{rate:g} Mbit/s" if rate is not None else "failed")

        say("9. what an orchestrator sees: status, inventory, metrics")
        st = net.status()
        for l in st["links"]:
            flows = ", ".join(f"{f['from']}->{f['to']} {f['frames']} frames" for f in l.get("flows", []))
            print(f"   link {l['name']:9} {l['state']:12} {flows}")
        inv = json.loads(net.ivnet("inventory", "--list", "--state-root", str(state)).stdout)
        fig("Ansible inventory (ivnet_cells)", " ".join(sorted(inv["ivnet_cells"]["hosts"])))
        m = [x for x in net.metrics_text().splitlines() if x.startswith("ivnet_link_frames_total")]
        fig("Prometheus series ivnet_link_frames_total", f"{len(m)} (e.g. {m[0] if m else '-'})")

        say("10. kill c2's QEMU: the others carry on, `ivnet up` brings it back")
        os.kill(next(c["pid"] for c in st["cells"] if c["name"] == "c2"), 9)
        ivn.wait_until("c2 seen down", lambda: not next(c for c in net.status()["cells"] if c["name"] == "c2")["running"], 10)
        others = sum(net.host.run("ping", "-c", "1", "-W", "2", addrs[c], check=False).returncode == 0
                     for c in addrs if c != "c2")
        fig("other cells answering while c2 is down", f"{others}/{len(addrs) - 1}")
        t1 = time.time()
        print("   " + net.up(TOPOLOGY).stdout.strip())
        ivn.wait_until("c2 answers", lambda: net.host.run("ping", "-c", "1", "-W", "1", addrs["c2"],
                                                           check=False).returncode == 0, 60)
        fig("c2 back after `ivnet up`", f"{time.time() - t1:.1f} s")

        say("\nWhat the demo network did:")
        for k, v in figures:
            print(f"  {k:48} {v}")
        if a.keep:
            print(f"\nThe network is up. Host side: ip netns exec ivnet-demo bash; then "
                  f"`{h.ivnet_bin()} status --state-root {state}`. Consoles: "
                  f"{state}/{BRIDGE}/<cell>.console.sock (socat). Ctrl-C ends it.")
            for con in cons.values():
                con.close()
            cons = {}
            try:
                while True:
                    time.sleep(3600)
            except KeyboardInterrupt:
                pass
    finally:
        for con in cons.values():
            con.close()
        say("ivnet down")
        net.close()
        shutil.rmtree(state, ignore_errors=True)
    return 0 if all(good(v) for _, v in figures) else 1


def good(v) -> bool:
    """A figure is good unless it says it failed or counts fewer successes than tries."""
    v = str(v)
    if "failed" in v.lower():
        return False
    m = re.match(r"(\d+)/(\d+)", v)
    return not m or m.group(1) == m.group(2)


if __name__ == "__main__":
    sys.exit(main())
