"""ivshmem 2.0 for real: the project's QEMU device `ivshmem2` (qemu/hw/misc/ivshmem2-pci.c, in
the QEMU that scripts/qemu-build.sh builds), `ivnet server --ivshmem 2`, and frames exchanged
between ivnet and an implementation it did not write: Zephyr's own C eth_ivshmem, unmodified
(snippet ivshmem2-eth).

- ivnet <-> ivnet over one v2 link, with MSI-X and with INTx (msix=off): pings both ways,
  TCP both ways (zperf).
- cell <-> host: `ivnet peer` on a TAP in a namespace made here, over a v2 server.
- ivnet <-> C driver: Zephyr's echo_client against Zephyr's echo_server, each built once for
  each driver, in both pairings: TCP and UDP echoed byte-exact (the client compares every
  echo), IPv4 and IPv6; pings both ways from the shells.
- Restarts: either end's QEMU killed and started again; the other end follows (carrier off,
  then on) and answers again, without rebooting.
- `ivnet up` with `ivshmem = 2` links: two cells (the cell image built for v2) on the host
  bridge and on a cell<->cell link; DHCP, the ping matrix, the cell<->cell link, `down`.

Images: tests/e2e/v2-images.txt (built by scripts/test.sh into $IVNET_V2_DIR, or here when
missing). Addresses: the samples' own (echo_server 192.0.2.1, echo_client 192.0.2.2).
"""

import os
import re
import shlex
import subprocess
import time
from pathlib import Path

import pytest

import ivnet_harness as h
import ivnet_network as ivn

ROOT = Path(__file__).resolve().parents[2]
V2 = Path(os.environ.get("IVNET_V2_DIR", ROOT / "build" / "v2")).absolute()
ZEPHYR = Path(os.environ.get("ZEPHYR_BASE", Path.home() / "zephyrproject" / "zephyr"))
ROWS = {r[0]: r[1:] for r in (line.split() for line in
        (Path(__file__).parent / "v2-images.txt").read_text().splitlines())
        if r and not r[0].startswith("#")}
MODULE_PATHS = {"picolibc": "modules/lib/picolibc", "open-amp": "modules/lib/open-amp",
                "libmetal": "modules/hal/libmetal", "zcbor": "modules/lib/zcbor"}
SERVER4, CLIENT4 = "192.0.2.1", "192.0.2.2"
SERVER6, CLIENT6 = "2001:db8::1", "2001:db8::2"


def qemu() -> str:
    q = h.qemu_v2()
    if q is None or not Path(q).exists():
        pytest.fail("no QEMU with the ivshmem2 device: scripts/qemu-build.sh builds it "
                    "(or set IVNET_QEMU_V2)")
    return q


def image(name: str) -> Path:
    """The image `name` of v2-images.txt, built when missing."""
    elf = V2 / name / "zephyr" / "zephyr.elf"
    if elf.exists():
        return elf
    app, snippet, *rest = ROWS[name]
    needs = rest[0][len("needs="):].split(",") if rest and rest[0].startswith("needs=") else []
    args = rest[1:] if needs else rest
    lacking = [m for m in needs if not (ZEPHYR.parent / MODULE_PATHS[m] / "zephyr/module.yml").exists()]
    if lacking:
        pytest.fail(f"{name} needs the module(s) {', '.join(lacking)}, which the workspace lacks "
                    "(docs/zephyr-workspace.md)")
    kind, path = app.split(":", 1)
    src = ROOT / path if kind == "module" else ZEPHYR / "samples" / path
    cmd = (f". {ROOT}/scripts/zephyr-env.sh && west build -p auto -b qemu_cortex_a53 {src} "
           f"-d {elf.parents[1]} {' '.join('-S ' + x for x in snippet.split(','))} -- "
           f"-DEXTRA_ZEPHYR_MODULES={ROOT} "
           f"{' '.join(map(shlex.quote, args))}")
    subprocess.run(["bash", "-c", cmd], check=True)
    return elf


def vm(st: h.Stack, work: Path, name: str, elf: Path, link: Path, msix: bool = True) -> h.Vm:
    device = "ivshmem2" if msix else "ivshmem2,msix=off"
    return st.push(h.Vm(elf, [link], work, name, device=device, qemu_bin=qemu()))


def ping(v: h.Vm, addr: str, n: int = 100) -> int:
    out = v.shell(f"net ping -c {n} -i 20 {addr}", rf"icmp_seq={n} |Ping timeout", 60)
    return h.zephyr_ping_count(out)


def udp_stats(v: h.Vm) -> tuple[int, int]:
    """The interface's UDP datagrams (received, sent), from `net stats`."""
    out = v.shell("net stats", r"UDP chkerr", 10)
    m = re.findall(r"UDP recv\s+(\d+)\s+sent\s+(\d+)", out)
    assert m, out[-800:]
    return int(m[-1][0]), int(m[-1][1])


def boots(v: h.Vm) -> int:
    return v.buf.count("Booting Zephyr")


@pytest.mark.parametrize("msix", [True, False], ids=["msix", "intx"])
def test_ivnet_to_ivnet(work, msix):
    elf = image("echo-ivnet" if msix else "echo-ivnet-intx")
    with h.Stack() as st:
        link = work / "link.sock"
        st.push(h.Server(link, work / "server.log", ivshmem=2))
        a = vm(st, work, "cell-a", elf, link, msix)
        b = vm(st, work, "cell-b", elf, link, msix)
        for v, ip in ((a, "192.0.2.11"), (b, "192.0.2.12")):
            v.wait_for("ivnet0: carrier on", 20)
            v.wait_for(re.escape(h.Vm.PROMPT), 10)
            assert "ivnet0: ivshmem v2 id" in v.buf
            assert f"MSI-X bar present: {'yes' if msix else 'no'}" in v.buf
            v.shell(f"net ipv4 add 1 {ip} 255.255.255.0")
        got_ab, got_ba = ping(a, "192.0.2.12"), ping(b, "192.0.2.11")
        print(f"{'MSI-X' if msix else 'INTx'}: pings a -> b {got_ab}/100, b -> a {got_ba}/100")
        assert (got_ab, got_ba) == (100, 100)
        for src, dst, ip in ((a, b, "192.0.2.12"), (b, a, "192.0.2.11")):
            dst.shell("zperf tcp download 5001", "Listening on port 5001|TCP server started")
            out = src.shell(f"zperf tcp upload {ip} 5001 3 1K", r"Upload completed!|failed|rror", 60)
            src.wait_for(r"Rate:\s+[\d.]+\s*[KMG]?bps", 10)
            rate = re.findall(r"Rate:\s+([\d.]+\s*[KMG]?bps)", src.buf)[-1]
            print(f"  TCP {src.name} -> {dst.name}: {rate}")
            assert "Upload completed!" in out, out[-500:]


def test_cell_host(work):
    """The host end on v2 (`ivnet peer` finds the v2 server by its INIT)."""
    elf = image("echo-ivnet")
    host, cell = "192.0.2.2", "192.0.2.1"
    with h.Stack() as st:
        ns = st.push(h.Netns(f"ivnet-v2-{int(time.time() * 1000) % 100000}"))
        ns.tap("ivtap0", f"{host}/24")
        link = work / "link.sock"
        st.push(h.Server(link, work / "server.log", ivshmem=2))
        st.push(h.HostPeer(ns, link, "ivtap0", work / "peer.log"))
        v = vm(st, work, "cell", elf, link)
        v.wait_for("ivnet0: carrier on", 20)
        v.wait_for(re.escape(h.Vm.PROMPT), 10)
        v.shell(f"net ipv4 add 1 {cell} 255.255.255.0")
        assert "(ivshmem 2.0)" in (work / "peer.log").read_text()
        r = ns.run("ping", "-c", "100", "-i", "0.02", "-W", "2", "-w", "30", cell, check=False)
        tx, rx = h.ping_summary(r.stdout)
        got = ping(v, host)
        print(f"v2 host -> cell {rx}/{tx}, cell -> host {got}/100")
        assert (tx, rx, got) == (100, 100, 100)
        v.shell("zperf tcp download 5001", "Listening on port 5001|TCP server started")
        r = ns.run("iperf", "-c", cell, "-p", "5001", "-t", "5", "-i", "5", "-f", "m",
                   timeout=60, check=False)
        rate = h.iperf_rate(r.stdout)
        print(f"v2 iperf TCP host -> cell: {rate} Mbit/s")
        assert r.returncode == 0 and rate and rate > 1.0, r.stdout + r.stderr


@pytest.mark.parametrize("client,server", [("ivnet", "c"), ("c", "ivnet")],
                         ids=["ivnet-client-c-server", "c-client-ivnet-server"])
def test_ivnet_with_zephyrs_c_driver(work, client, server):
    """Zephyr's echo_client and echo_server, unmodified, one on ivnet and one on Zephyr's C
    eth_ivshmem, over one v2 link: every echo compared byte for byte by the client, TCP and
    UDP, IPv4 and IPv6 (the pings are in the restart test, on a quiet link: echo_client never
    stops sending)."""
    with h.Stack() as st:
        link = work / "link.sock"
        st.push(h.Server(link, work / "server.log", ivshmem=2))
        srv = vm(st, work, f"server-{server}", image(f"echo_server-{server}"), link)
        # The server's network comes up with the link, that is once its peer is there.
        cli = vm(st, work, f"client-{client}", image(f"echo_client-{client}"), link)
        srv.wait_for("Network connected", 60)
        t0 = time.time()
        for fam in ("IPv4", "IPv6"):
            cli.wait_for(f"{fam} TCP: Exchanged 1000 packets", 180)
        tcp_s = time.time() - t0
        # UDP: one datagram per 150 ms per family, each compared with what was sent (a missing
        # or different echo is an error in the client's log). The interfaces' UDP counters
        # show the progress (about 15 datagrams a second here, all families together).
        time.sleep(15)
        cli_udp, srv_udp = udp_stats(cli), udp_stats(srv)
        errors = [ln for ln in cli.buf.splitlines() + srv.buf.splitlines()
                  if "<err> net_echo_" in ln]
        print(f"{client} client <-> {server} server: 1000 TCP exchanges per family in "
              f"{tcp_s:.1f} s; UDP (recv, sent) client {cli_udp}, server {srv_udp}")
        assert not errors, errors[:5]
        assert min(cli_udp) >= 60 and min(srv_udp) >= 60, (cli_udp, srv_udp)


def test_pings_and_restarts_with_c_driver(work):
    """The project's echo sample on ivnet and on Zephyr's C eth_ivshmem (-S ivshmem2-eth), one
    v2 link: 100 pings each way (IPv4), then each end's QEMU killed and started again twice while
    the other runs; the other end follows (ivnet logs carrier off, then on) and answers again,
    without rebooting."""
    ivnet_elf, c_elf = image("echo-ivnet"), image("echo-c")
    ivnet_ip, c_ip = "192.0.2.11", "192.0.2.12"
    with h.Stack() as st:
        link = work / "link.sock"
        st.push(h.Server(link, work / "server.log", ivshmem=2))

        def start(name: str, elf: Path, ip: str) -> h.Vm:
            v = vm(st, work, name, elf, link)
            v.wait_for(re.escape(h.Vm.PROMPT), 20)
            v.shell(f"net ipv4 add 1 {ip} 255.255.255.0")
            return v

        c = start("c0", c_elf, c_ip)
        iv = start("ivnet0", ivnet_elf, ivnet_ip)
        iv.wait_for("ivnet0: carrier on", 20)
        got_ic, got_ci = ping(iv, c_ip), ping(c, ivnet_ip)
        print(f"pings ivnet -> C {got_ic}/100, C -> ivnet {got_ci}/100")
        assert (got_ic, got_ci) == (100, 100)
        # 1. ivnet's end restarts: the C driver follows the peer's RESET and the new one.
        for i in range(2):
            iv.proc.kill()
            iv.close()
            iv = start(f"ivnet{i + 1}", ivnet_elf, ivnet_ip)
            iv.wait_for("ivnet0: carrier on", 20)
            got, back = ping(iv, c_ip, 10), ping(c, ivnet_ip, 10)
            print(f"ivnet end restarted ({i + 1}): new ivnet -> C {got}/10, C -> new ivnet {back}/10")
            assert (got, back) == (10, 10)
        assert boots(c) == 1, "the C end rebooted"
        # 2. the C end restarts: ivnet sees carrier off, then on, and talks to the new one.
        for i in range(2):
            mark = iv.mark()
            c.proc.kill()
            c.close()
            off = iv.wait_for("ivnet0: carrier off", 10, mark)
            c = start(f"c{i + 1}", c_elf, c_ip)
            iv.wait_for("ivnet0: carrier on", 20, off.end())
            # The new C end has a new random MAC, which ivnet's ARP cache learns from the new
            # end's first packet (its ARP request), as on any Ethernet where a host was
            # replaced; cells with fixed MACs (`ivnet up`) keep theirs across restarts.
            back, got = ping(c, ivnet_ip, 10), ping(iv, c_ip, 10)
            print(f"C end restarted ({i + 1}): ivnet carrier off -> on, new C -> ivnet {back}/10, "
                  f"ivnet -> new C {got}/10")
            assert (got, back) == (10, 10)
        assert boots(iv) == 1, "the ivnet end rebooted"


V2_TOPOLOGY = """
[host]
bridge = "ivv2br0"
subnet = "10.79.0.0/24"
dhcp = ["10.79.0.100", "10.79.0.199"]

[[cell]]
name = "c1"
image = "{image}"
mac = "02:00:00:00:79:01"
address = "dhcp"
services = [4242]

[[cell]]
name = "c2"
image = "{image}"
mac = "02:00:00:00:79:02"
address = "10.79.0.12"

[[link]]
ends = ["c1", "host"]
ivshmem = 2

[[link]]
ends = ["c2", "host"]
ivshmem = 2

[[link]]
ends = ["c1", "c2"]
subnet = "10.80.0.0/30"
ivshmem = 2
"""


def test_network_with_v2_links(work):
    """`ivnet up` of a topology whose links are all ivshmem 2.0: the supervisor's servers in the
    v2 role, its host peers on them, the cells' QEMUs with -device ivshmem2 (IVNET_QEMU_V2 or
    the cache of scripts/qemu-build.sh)."""
    elf = image("cell-ivnet")
    qemu()
    net = ivn.Network(work / "state", "ivv2br0", "127.0.0.1:9479", "ivv2-host", "ivv2-out")
    try:
        before = net.snapshot()
        topo = work / "v2.toml"
        topo.write_text(V2_TOPOLOGY.format(image=elf))
        t0 = time.time()
        print(net.up(topo).stdout)
        st = net.wait_addressed(90)
        cells = {c["name"]: c for c in st["cells"]}
        print(f"2 cells on ivshmem 2.0 links up and addressed in {time.time() - t0:.1f} s: "
              f"{ {n: c['address'] for n, c in cells.items()} }")
        addrs = {n: c["address"] for n, c in cells.items()}
        for n, a in addrs.items():
            assert net.host.run("ping", "-c", "3", "-W", "3", a, check=False).returncode == 0, n
        cons = {n: h.Console(Path(c["console"]), work / f"{n}-console.log", n)
                for n, c in cells.items()}
        for n, con in cons.items():
            con.shell("")
            boot = (net.state / "ivv2br0" / f"{n}.console.log").read_text(errors="replace")
            assert "ivnet0: ivshmem v2 id" in boot and "ivnet1: ivshmem v2 id" in boot, boot[-1500:]
        failed = ivn.ping_matrix(cons, addrs, "10.79.0.1")[1]
        assert not failed, failed
        ivn.cell_ping(cons["c1"], "10.80.0.2")
        ivn.cell_ping(cons["c2"], "10.80.0.1")
        logs = "".join(p.read_text(errors="replace") for p in (net.state / "ivv2br0").glob("*.qemu.log"))
        assert "rror" not in logs, logs[-1000:]
        for con in cons.values():
            con.close()
        net.down()
        assert net.snapshot() == before
    finally:
        net.close()
