"""The ivnet demo network: three Zephyr VMs and the host on two ivshmem-net links.

  link "uplink":  cell1 (192.0.2.1)  <->  host peer + TAP ivtap0 (192.0.2.2) in netns ivnet-demo
  link "lan":     cell2 (192.0.2.11) <->  cell3 (192.0.2.12)

It pings across both links, checks the echo service of cell1 over UDP and TCP from the host,
measures TCP host -> cell1 with iperf 2 against zperf, and prints what it saw. Everything runs in
a namespace made here and is removed at the end (--keep leaves the network up until Ctrl-C).
"""

import argparse
import re
import socket
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent / "pylib"))
import ivnet_harness as h  # noqa: E402


def say(msg):
    print(f"\033[1m{msg}\033[0m", flush=True)


def boot(vm, ip):
    vm.wait_for("ivnet0: carrier on", 30)
    vm.wait_for(re.escape(h.Vm.PROMPT), 10)
    vm.shell(f"net ipv4 add 1 {ip} 255.255.255.0")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--elf", required=True, type=Path, help="the echo sample's zephyr.elf")
    ap.add_argument("--keep", action="store_true", help="leave the network up until Ctrl-C")
    ap.add_argument("--iperf-seconds", type=int, default=5)
    a = ap.parse_args()

    wd = h.Workdir("ivnet-demo")
    work = wd.path
    figures = []
    with h.Stack() as st:
        st.push(wd)
        say("1. host side: namespace ivnet-demo with TAP ivtap0 = 192.0.2.2/24")
        ns = st.push(h.Netns("ivnet-demo"))
        ns.tap("ivtap0", "192.0.2.2/24")
        say("2. two links: ivnet servers on unix sockets (1 MiB shared memory each)")
        up, lan = work / "uplink.sock", work / "lan.sock"
        st.push(h.Server(up, work / "server-uplink.log"))
        st.push(h.Server(lan, work / "server-lan.log"))
        st.push(h.HostPeer(ns, up, "ivtap0", work / "peer.log"))
        say("3. three Zephyr VMs (qemu_cortex_a53, Rust ivnet driver)")
        cell1 = st.push(h.Vm(a.elf, [up], work, "cell1"))
        cell2 = st.push(h.Vm(a.elf, [lan], work, "cell2"))
        cell3 = st.push(h.Vm(a.elf, [lan], work, "cell3"))
        t0 = time.time()
        boot(cell1, "192.0.2.1")
        boot(cell2, "192.0.2.11")
        boot(cell3, "192.0.2.12")
        figures.append(("links up, addresses set", f"{time.time() - t0:.1f} s"))

        say("4. host -> cell1: ping")
        r = ns.run("ping", "-c", "20", "-i", "0.05", "-W", "2", "192.0.2.1", check=False)
        tx, rx = h.ping_summary(r.stdout)
        rtt = r.stdout.strip().splitlines()[-1]
        figures.append(("ping host -> cell1", f"{rx}/{tx}  {rtt}"))
        say("5. cell1 -> host: net ping from the Zephyr shell")
        out = cell1.shell("net ping -c 20 -i 50 192.0.2.2", r"icmp_seq=20 |Ping timeout", 30)
        figures.append(("ping cell1 -> host (Zephyr shell)", f"{h.zephyr_ping_count(out)}/20"))

        say("6. cell1's echo service (port 4242) from the host, UDP and TCP")
        echo = ns.run(sys.executable, "-c", ECHO_CHECK, timeout=60, check=False)
        figures.append(("echo UDP/TCP host <-> cell1", echo.stdout.strip() or echo.stderr.strip()[-200:]))

        say(f"7. TCP throughput host -> cell1: iperf 2 -> zperf, {a.iperf_seconds} s")
        cell1.shell("zperf tcp download 5001", "Listening on port 5001")
        r = ns.run("iperf", "-c", "192.0.2.1", "-p", "5001", "-t", str(a.iperf_seconds), "-f", "m",
                   timeout=a.iperf_seconds + 30, check=False)
        rate = h.iperf_rate(r.stdout)
        figures.append(("iperf TCP host -> cell1", f"{rate:g} Mbit/s" if rate is not None else "failed"))

        say("8. cell2 <-> cell3 on their own link")
        out = cell2.shell("net ping -c 20 -i 50 192.0.2.12", r"icmp_seq=20 |Ping timeout", 30)
        figures.append(("ping cell2 -> cell3", f"{h.zephyr_ping_count(out)}/20"))
        out = cell3.shell("net ping -c 20 -i 50 192.0.2.11", r"icmp_seq=20 |Ping timeout", 30)
        figures.append(("ping cell3 -> cell2", f"{h.zephyr_ping_count(out)}/20"))

        say("\nWhat the demo network did:")
        for k, v in figures:
            print(f"  {k:38} {v}")
        if a.keep:
            print(f"\nThe network is up. Consoles: socat - UNIX-CONNECT:{work}/cellN-console.sock is taken by"
                  f" the demo; logs in {work}. Host side: ip netns exec ivnet-demo bash. Ctrl-C ends it.")
            try:
                while True:
                    time.sleep(3600)
            except KeyboardInterrupt:
                pass
    ok = all(not v.startswith(("0/", "failed")) for _, v in figures)
    return 0 if ok else 1


ECHO_CHECK = r"""
import socket
u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); u.settimeout(2)
good = 0
for i in range(50):
    msg = bytes((i + k) % 256 for k in range(1 + i * 20))
    u.sendto(msg, ("192.0.2.1", 4242))
    try:
        if u.recv(2048) == msg: good += 1
    except socket.timeout: pass
t = socket.create_connection(("192.0.2.1", 4242), timeout=5)
data = bytes(k % 251 for k in range(100000)); t.sendall(data); got = b""
while len(got) < len(data):
    d = t.recv(65536)
    if not d: break
    got += d
print(f"UDP {good}/50 datagrams, TCP {len(got)} of {len(data)} bytes, intact: {got == data}")
"""

if __name__ == "__main__":
    sys.exit(main())
