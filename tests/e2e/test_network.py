"""A whole network from a topology file (`ivnet up` / `status` / `inventory` / `down`), inside
network namespaces the test creates:

    ivn-out (the "outside": 172.31.77.2)
       | veth
    ivn-host (plays the host: uplink ivup0 172.31.77.1, bridge ivtbr0 10.77.0.1/24, dnsmasq,
       |      nftables, the supervisor; the cells' QEMUs run here)
    cells c1..cN on the bridge (odd ones by DHCP, even ones static; IPv6 by SLAAC from the
    host's router advertisements, fd00:77::/64), c2 <-> c3 also on a cell<->cell link
    (10.78.0.0/30, fd00:78::/64)

N is 3 by default (CI) and $IVNET_NET_CELLS otherwise (the acceptance run uses 8). Checked:
every DHCP lease; the full ping matrix in IPv4 and IPv6 (every cell to every other cell and
to the host, the host to every cell); a
host port forward from "outside" to c1's TCP echo; a cell reaching "outside" through NAT;
the cell<->cell link; status JSON, Ansible inventory and Prometheus metrics with live
counters; MCUmgr echo, stats, shell and reset on the cells; killing one cell's QEMU leaves the others
working and `ivnet up` brings it back; `down` leaves both namespaces and the host's files and
processes as they were. A second test checks that a failure half-way through `up` rolls back.
"""

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "scripts" / "pylib"))

import ivnet_harness as h  # noqa: E402
import ivnet_network as ivn  # noqa: E402
from ivnet_network import (OUTSIDE_ADDR, OUTSIDE_ADDR6, UPLINK_ADDR, UPLINK_ADDR6, cell_ping,  # noqa: E402
                           tcp_echo, wait_until)

N = int(os.environ.get("IVNET_NET_CELLS", "3"))
HOST_NS, OUT_NS = "ivn-host", "ivn-out"
BRIDGE = "ivtbr0"
HOST_ADDR = "10.77.0.1"
HOST_ADDR6 = "fd00:77::1"
FORWARD_PORT = 8080
METRICS = "127.0.0.1:9478"


def topology(image: Path, n: int, bad_image: Path | None = None, isolation: str | None = None) -> str:
    t = [f'''[host]
bridge = "{BRIDGE}"
subnet = "10.77.0.0/24"
subnet6 = "fd00:77::/64"
dhcp = ["10.77.0.100", "10.77.0.199"]
uplink = "ivup0"
{f"isolation = {isolation}" if isolation else ""}

[[host.forward]]
port = {FORWARD_PORT}
cell = "c1"
to = 4242
''']
    for i in range(1, n + 1):
        addr = "dhcp" if i % 2 else f"10.77.0.{10 + i}"
        img = bad_image if (bad_image and i == n) else image
        t.append(f'''[[cell]]
name = "c{i}"
image = "{img}"
mac = "02:00:00:00:77:{i:02x}"
address = "{addr}"
services = [4242]
''')
    for i in range(1, n + 1):
        t.append(f'[[link]]\nends = ["c{i}", "host"]\n')
    if n >= 3:
        t.append('[[link]]\nends = ["c2", "c3"]\nsubnet = "10.78.0.0/30"\nsubnet6 = "fd00:78::/64"\n')
    return "\n".join(t)


SLOW_CLIENT = """
import socket, sys, time, urllib.request
host, port = sys.argv[1].rsplit(":", 1)
silent = socket.create_connection((host, int(port)))
time.sleep(0.2)
t = time.monotonic()
urllib.request.urlopen(f"http://{sys.argv[1]}/metrics", timeout=10).read()
print(round(time.monotonic() - t, 3))
silent.close()
"""


def proc_caps(status_path: str) -> dict:
    """Capability masks (hex), NoNewPrivs, Seccomp and the real uid of a task."""
    out = {}
    for line in Path(status_path).read_text().splitlines():
        k, _, v = line.partition(":")
        v = v.split()
        if k.startswith("Cap") and v:
            out[k] = int(v[0], 16)
        elif k in ("NoNewPrivs", "Seccomp") and v:
            out[k] = int(v[0])
        elif k == "Uid":
            out[k] = int(v[0])
    return out


def check_captures(net: ivn.Network, cons: dict, addrs: dict, work: Path) -> None:
    """`ivnet capture` of a link to the host (every frame) and of the cell<->cell link c2-c3
    (sampled from its memory) at once, with pings across each meanwhile: tcpdump reads both
    files back with every echo request and reply."""
    files = {"c1-host": work / "c1-host.pcap", "c2-c3": work / "c2-c3.pcap"}
    caps = {}
    for link, f in files.items():
        caps[link] = subprocess.Popen(
            ["nsenter", f"--net=/run/netns/{net.host.name}", str(h.ivnet_bin()), "capture",
             "--state-root", str(net.state), "--link", link, "-w", str(f), "--seconds", "5"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        line = caps[link].stdout.readline()
        assert line.startswith(f"capturing link {link} into {f}"), (line, caps[link].stderr.read())
    st = net.status()
    assert {l["name"]: l.get("capture") for l in st["links"]}["c2-c3"] == str(files["c2-c3"]), st["links"]
    # Refused: a second capture of the same link, an unknown link (the error lists the links),
    # a file that exists (never overwritten).
    for args, why in ((["--link", "c1-host", "-w", str(work / "again.pcap")], "being captured already"),
                      (["--link", "c9-host", "-w", str(work / "none.pcap")], "its links are c1-host"),
                      (["--link", "c2-host", "-w", str(files["c1-host"])], "File exists")):
        r = net.ivnet("capture", "--state-root", str(net.state), *args, check=False)
        assert r.returncode != 0 and why in r.stderr, (args, r.stdout, r.stderr)
    assert not (work / "none.pcap").exists() and not (work / "again.pcap").exists()
    r = net.host.run("ping", "-c", "20", "-i", "0.05", "-W", "2", addrs["c1"], check=False)
    assert h.ping_summary(r.stdout) == (20, 20), r.stdout
    for _ in range(3):
        cell_ping(cons["c2"], "10.78.0.2")
    for link, p in caps.items():
        out, err = p.communicate(timeout=30)
        assert p.returncode == 0, (link, out, err)
    counts = {}
    for link, f in files.items():
        r = subprocess.run(["tcpdump", "-nn", "-r", str(f)], capture_output=True, text=True, check=True)
        lines = r.stdout.splitlines()
        a, b = (HOST_ADDR, addrs["c1"]) if link == "c1-host" else ("10.78.0.1", "10.78.0.2")
        counts[link] = [sum(1 for line in lines if re.search(rf"IP {re.escape(x)} > {re.escape(y)}: ICMP echo {w}", line))
                        for x, y, w in ((a, b, "request"), (b, a, "reply"))]
        print(f"capture {link}: {len(lines)} frames, echo request/reply {counts[link]}")
    # Every frame of the host link; at least every ping of the cell link (c2's shell may ping
    # again when a reply is slow).
    assert counts["c1-host"] == [20, 20], counts
    assert min(counts["c2-c3"]) >= 3, counts
    # Ctrl-C ends a capture at once (it asks the supervisor to), with the file complete.
    f = work / "c3-host.pcap"
    p = subprocess.Popen(
        ["nsenter", f"--net=/run/netns/{net.host.name}", str(h.ivnet_bin()), "capture",
         "--state-root", str(net.state), "--link", "c3-host", "-w", str(f), "--seconds", "600"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert p.stdout.readline().startswith("capturing link c3-host"), p.stderr.read()
    assert net.host.run("ping", "-c", "3", "-i", "0.2", addrs["c3"], check=False).returncode == 0
    t = time.time()
    p.send_signal(signal.SIGINT)
    out, err = p.communicate(timeout=20)
    print(f"capture c3-host ended {time.time() - t:.2f} s after SIGINT: {out.strip()}")
    assert p.returncode == 0 and time.time() - t < 5, (out, err)
    assert not {l["name"]: l.get("capture") for l in net.status()["links"]}["c3-host"]
    r = subprocess.run(["tcpdump", "-nn", "-r", str(f)], capture_output=True, text=True, check=True)
    assert sum(1 for line in r.stdout.splitlines() if "ICMP echo reply" in line) == 3, r.stdout


def make_net(work: Path) -> ivn.Network:
    return ivn.Network(work / "state", BRIDGE, METRICS, HOST_NS, OUT_NS)


def test_network_of_cells(cell_elf, work):
    net = make_net(work)
    try:
        before = net.snapshot()
        topo = work / "net.toml"
        topo.write_text(topology(cell_elf, N))
        t0 = time.time()
        r = net.up(topo)
        print(r.stdout)
        # Every cell up and addressed (DHCP leases included).
        st = net.wait_addressed(90)
        print(f"{N} cells up and addressed in {time.time() - t0:.1f} s")
        cells = {c["name"]: c for c in st["cells"]}
        assert len(cells) == N and all(c["running"] for c in cells.values())
        leases = (net.state / BRIDGE / "dnsmasq.leases").read_text()
        for name, c in cells.items():
            if int(name[1:]) % 2:
                assert c["mac"] in leases and c["address"].startswith("10.77.0.1"), (name, c)
        addrs = {n: c["address"] for n, c in cells.items()}

        # Host -> every cell.
        for n, a in addrs.items():
            assert net.host.run("ping", "-c", "1", "-W", "3", a, check=False).returncode == 0, n

        # The full ping matrix: every cell to every other cell and to the host.
        cons = {n: h.Console(Path(c["console"]), work / f"{n}-console.log", n) for n, c in cells.items()}
        t1 = time.time()
        for con in cons.values():
            con.shell("")
        failed = ivn.ping_matrix(cons, addrs, HOST_ADDR)[1]
        assert not failed, failed
        print(f"ping matrix {N} x {N} (incl. host) in {time.time() - t1:.1f} s")

        # The cell<->cell link carries c2 <-> c3 traffic on its own subnet.
        if N >= 3:
            cell_ping(cons["c2"], "10.78.0.2")
            cell_ping(cons["c3"], "10.78.0.1")
            check_captures(net, cons, addrs, work)

        # IPv6: every cell has its SLAAC address (status says which) from the host's router
        # advertisements; the same matrix in IPv6, and the cell<->cell link's static pair.
        addrs6 = {n: c["address6"] for n, c in cells.items()}
        assert all(addrs6.values()) and st["host"]["address6"] == HOST_ADDR6, (addrs6, st["host"])
        t1 = time.time()
        for n, a in addrs6.items():
            wait_until(f"host -> {n} over IPv6 ({a})",
                       lambda: net.host.run("ping", "-6", "-c", "1", "-W", "2", a, check=False).returncode == 0, 60)
        failed = ivn.ping_matrix(cons, addrs6, HOST_ADDR6)[1]
        assert not failed, failed
        print(f"IPv6 ping matrix {N} x {N} (incl. host) in {time.time() - t1:.1f} s")
        if N >= 3:
            cell_ping(cons["c2"], "fd00:78::2")
            cell_ping(cons["c3"], "fd00:78::1")

        # A host port forward reaches c1's TCP echo from "outside"...
        assert tcp_echo(net.out, UPLINK_ADDR, FORWARD_PORT, "through-the-forward") == "through-the-forward"
        # ... and a cell reaches "outside" through NAT (the outside has no route to 10.77/24).
        cell_ping(cons["c2"], OUTSIDE_ADDR)
        # The same in IPv6: the forward to c1's IPv6 echo, and NAT66 (no route to fd00:77::/64
        # outside either).
        assert tcp_echo(net.out, UPLINK_ADDR6, FORWARD_PORT, "through-the-forward-6") == "through-the-forward-6"
        cell_ping(cons["c2"], OUTSIDE_ADDR6)

        # Control: status, inventory, metrics with live counters.
        st1 = net.status()
        host_links = [l for l in st1["links"] if "host" in l["ends"]]
        assert len(host_links) == N
        for l in host_links:
            assert l["up"] and l["counters"]["rx_frames"] > 0 and l["counters"]["tx_frames"] > 0, l
        inv = json.loads(net.ivnet("inventory", "--list", "--state-root", str(net.state)).stdout)
        assert sorted(inv["ivnet_cells"]["hosts"]) == sorted(cells)
        assert inv["_meta"]["hostvars"]["c1"]["ansible_host"] == addrs["c1"]
        one = json.loads(net.ivnet("inventory", "--host", "c2", "--state-root", str(net.state)).stdout)
        assert one["ansible_host"] == addrs["c2"]
        # Real Ansible reads the inventory and drives every cell (an MCUmgr echo per cell).
        inv_script = work / "ivnet-inventory"
        inv_script.write_text(f"#!/bin/sh\nexec {h.ivnet_bin()} inventory --state-root {net.state} \"$@\"\n")
        inv_script.chmod(0o755)
        venv_bin = ivn.PYTHON.parent
        r = net.host.run("env", f"IVNET_NETWORK={BRIDGE}", str(venv_bin / "ansible"), "-i", str(inv_script),
                         "ivnet_cells", "-m", "ansible.builtin.command", "-a",
                         f"{ivn.PYTHON} {ROOT}/scripts/pylib/mcumgr.py {{{{ ansible_host }}}} "
                         "echo via-ansible-{{ inventory_hostname }}", timeout=120, check=False)
        assert r.returncode == 0, r.stdout + r.stderr
        for name in cells:
            assert f"via-ansible-{name}" in r.stdout, r.stdout

        def scrape() -> tuple[dict, dict]:
            """Frames per host link (cell -> host), and per cell<->cell direction."""
            text = net.metrics_text()
            to_host, between = {}, {}
            for line in text.splitlines():
                m = re.match(r'ivnet_link_frames_total\{.*link="([^"]+)",from="([^"]+)",to="([^"]+)"\} (\d+)', line)
                if m and m.group(3) == "host":
                    to_host[m.group(1)] = int(m.group(4))
                elif m and m.group(2) != "host":
                    between[(m.group(2), m.group(3))] = int(m.group(4))
            assert f'ivnet_cell_up{{network="{BRIDGE}",cell="c1"}} 1' in text
            return to_host, between
        m1, cc = scrape()
        assert sorted(m1) == sorted(l["name"] for l in host_links)
        if N >= 3:
            # The host counts the cell<->cell link from its shared memory, and knows who sent
            # what by the frames' source MACs.
            assert cc.get(("c2", "c3"), 0) > 0 and cc.get(("c3", "c2"), 0) > 0, cc
        for n, a in addrs.items():
            net.host.run("ping", "-c", "2", "-i", "0.2", "-W", "2", a, check=False)
        time.sleep(0.5)
        m2, _ = scrape()
        assert all(m2[k] > m1[k] for k in m1), (m1, m2)

        # Least privilege: once the network is built, the supervisor's main thread keeps only
        # the capabilities it needs (privs::SUPERVISOR_CAPS) and no new privileges; its worker
        # threads (host peers, servers, observer, metrics), which handle what peers and clients
        # send, hold none; the cells' QEMUs run as nobody in QEMU's seccomp sandbox with none;
        # every socket is private.
        sup = st1["supervisor_pid"]
        keep = sum(1 << c for c in (5, 6, 7, 10, 12, 13))  # KILL SETGID SETUID NET_BIND NET_ADMIN NET_RAW
        effective = sum(1 << c for c in (5, 12))  # KILL NET_ADMIN
        main_caps = proc_caps(f"/proc/{sup}/status")
        assert main_caps["CapPrm"] == keep and main_caps["CapBnd"] == keep, main_caps
        assert main_caps["CapEff"] == effective, main_caps
        assert main_caps["NoNewPrivs"] == 1, main_caps
        tasks = [t for t in os.listdir(f"/proc/{sup}/task") if int(t) != sup]
        assert len(tasks) >= N, tasks
        for t in tasks:
            c = proc_caps(f"/proc/{sup}/task/{t}/status")
            name = Path(f"/proc/{sup}/task/{t}/comm").read_text().strip()
            assert c["CapEff"] == 0 and c["CapPrm"] == 0 and c["CapBnd"] == 0, (name, t, c)
        for c in st1["cells"]:
            q = proc_caps(f"/proc/{c['pid']}/status")
            assert q["Uid"] == 65534 and q["CapEff"] == 0 and q["Seccomp"] == 2, (c["name"], q)
        for sock in (net.state / BRIDGE).glob("*.sock"):
            assert sock.stat().st_mode & 0o077 == 0, f"{sock} is {oct(sock.stat().st_mode)}"
        # A metrics client that connects and says nothing does not hold up the next scrape.
        r = net.host.run("python3", "-c", SLOW_CLIENT, METRICS, timeout=30, check=False)
        assert r.returncode == 0, r.stdout + r.stderr
        print(f"metrics scrape while a silent client holds a connection: {r.stdout.strip()} s")
        assert float(r.stdout) < 1.0, r.stdout
        # dnsmasq restarted by the reduced supervisor still starts (and drops to nobody).
        if st1["host"]["dnsmasq_pid"]:
            os.kill(st1["host"]["dnsmasq_pid"], 9)
            wait_until("the supervisor sees dnsmasq die",
                       lambda: net.status()["host"]["dnsmasq_pid"] is None, 10)
            r = net.up(topo)
            assert "dnsmasq" in r.stdout, r.stdout
            pid = net.status()["host"]["dnsmasq_pid"]
            time.sleep(1)
            d = proc_caps(f"/proc/{pid}/status")
            assert d["Uid"] == 65534, d

        # MCUmgr on every cell: echo and its stats.
        for n, a in addrs.items():
            assert net.mcumgr(a, "echo", f"hello-{n}").strip() == f"hello-{n}"
            assert "echo" in net.mcumgr(a, "stats")
        # Each cell's per-link counters (the driver's STATS groups): c2's cell<->cell link
        # (ivnet0) carried the pings above, its host link (ivnet1) everything else.
        if N >= 3:
            link_stats = ivn.stat_lines(net.mcumgr(addrs["c2"], "stat", "ivnet0"))
            assert link_stats["rx_frames"] > 0 and link_stats["tx_frames"] > 0, link_stats
            assert link_stats["state_changes"] >= 3, link_stats
        c1_stats = net.mcumgr(addrs["c1"], "stat", "echo")
        assert re.search(r"tcp_conns: [1-9]", c1_stats), c1_stats  # the forwarded connection
        # (`net ipv4`: `net iface`, with both families, outgrows the captured output.)
        rc_out = net.mcumgr(addrs["c2"], "shell", "net ipv4")
        assert addrs["c2"] in rc_out, rc_out
        # An MCUmgr reset reboots the cell in place (same QEMU); both its links come back: the
        # host link, and (c3) the cell<->cell link whose other end kept running.
        rst = "c3" if N >= 3 else f"c{N}"
        boots = cons[rst].mark()
        assert "reset" in net.mcumgr(addrs[rst], "reset")
        cons[rst].wait_for(r"Booting Zephyr", timeout=20, since=boots)
        wait_until(f"{rst} answers after its reset",
                   lambda: net.mcumgr(addrs[rst], "echo", "rebooted").strip() == "rebooted", 30)
        if N >= 3:
            cons["c2"].sock.sendall(b"\r\n")
            cell_ping(cons["c2"], "10.78.0.2", tries=10)

        # Kill one cell's QEMU: the others keep working; `up` brings it back.
        victim = "c2"
        os.kill(cells[victim]["pid"], 9)
        wait_until("the supervisor sees the cell die",
                   lambda: not {c["name"]: c for c in net.status()["cells"]}[victim]["running"], 10)
        others = [n for n in cells if n != victim]
        for n in others:
            assert net.host.run("ping", "-c", "1", "-W", "3", addrs[n], check=False).returncode == 0, n
        cell_ping(cons[others[0]], addrs[others[-1]])
        r = net.up(topo)
        assert "restarted" in r.stdout and victim in r.stdout, r.stdout
        wait_until(f"{victim} answers again",
                   lambda: net.host.run("ping", "-c", "1", "-W", "2", addrs[victim], check=False).returncode == 0, 60)
        assert net.mcumgr(addrs[victim], "echo", "back").strip() == "back"
        if N >= 3:
            # The restarted c2's cell<->cell link to c3 runs again.
            cons[victim].close()
            cons[victim] = h.Console(Path(cells[victim]["console"]), work / "c2-again.log", victim)
            cons[victim].shell("")
            cell_ping(cons[victim], "10.78.0.2", tries=10)
        # `up` again with nothing dead changes nothing.
        r = net.up(topo)
        assert "restarted: []" in r.stdout, r.stdout
        for con in cons.values():
            con.close()

        # `down` leaves everything as it was.
        net.down()
        after = net.snapshot()
        assert after == before
    finally:
        net.close()


def test_failed_up_rolls_back(cell_elf, work):
    """dnsmasq cannot start (another process holds the DHCP port in that namespace) after the
    bridge, nftables table, TAPs, servers and host peers exist: `up` fails, names the cause,
    and removes everything it created."""
    net = make_net(work)
    blocker = None
    try:
        blocker = net.host.popen("python3", "-c", "import socket, time; s = socket.socket(socket.AF_INET, "
                                 "socket.SOCK_DGRAM); s.bind(('0.0.0.0', 67)); time.sleep(120)")
        time.sleep(0.5)
        before = net.snapshot()
        topo = work / "net.toml"
        topo.write_text(topology(cell_elf, 2))
        r = net.up(topo, check=False)
        print(r.stderr)
        assert r.returncode != 0
        assert "dnsmasq" in r.stderr and "removed" in r.stderr, r.stderr
        assert net.snapshot() == before
    finally:
        h.stop(blocker)
        net.close()


def test_ipv6_forwarding_would_break_the_uplink(cell_elf, work):
    """The uplink has a route learned from a router advertisement and takes them (accept_ra 1):
    turning IPv6 forwarding on would make the kernel drop it, so `up` refuses, says where and
    how to fix it, and leaves the machine as it was; with accept_ra 2 it goes up."""
    net = make_net(work)
    try:
        net.host.ip("-6", "route", "add", "fd00:abcd::/64", "dev", "ivup0", "proto", "ra")
        before = net.snapshot()
        topo = work / "net.toml"
        topo.write_text(topology(cell_elf, 1))
        r = net.up(topo, check=False)
        print(r.stderr)
        assert r.returncode != 0
        assert "ivup0" in r.stderr and "accept_ra=2" in r.stderr and "removed" in r.stderr, r.stderr
        assert net.snapshot() == before
        net.host.run("sysctl", "-qw", "net.ipv6.conf.ivup0.accept_ra=2")
        net.up(topo)
        net.down()
        after = net.snapshot()
        assert after.pop("ns uplink accept_ra").strip() == "2"
        before.pop("ns uplink accept_ra")
        assert after == before
    finally:
        net.close()


def in_group(pid: int, group: str) -> list[str]:
    """The hierarchies (controller lists) in which `pid` is in control group `group`."""
    return [line.split(":")[1] for line in h.cgroup_of(pid).splitlines()
            if line.split(":")[-1].rstrip("/").endswith("/" + group)]


def test_down_after_the_supervisor_was_killed(cell_elf, work):
    """SIGKILL to the supervisor leaves its cells, dnsmasq, bridge, nftables table and control
    group behind; `down` removes all of them from the record, and `up` on such a leftover
    rebuilds. The network runs with `[host] isolation`: the supervisor (its host peers are its
    threads) and every cell's QEMU are in the group `ivnet-<bridge>` with its settings."""
    net = make_net(work)
    try:
        before = net.snapshot()
        assert not [c for c in before["cgroups"] if c.endswith("ivnet-" + BRIDGE)], before["cgroups"]
        topo = work / "net.toml"
        topo.write_text(topology(cell_elf, 2, isolation='{ cpu_weight = 800, cpus = "0-1", memory_min = "64M" }'))
        net.up(topo)
        st = net.wait_addressed(60)
        iso = st["host"]["isolation"]
        print("isolation:", iso)
        group = "ivnet-" + BRIDGE
        assert iso["group"] == group and iso["directories"], iso
        v1 = iso["cgroup_version"] == 1
        assert ("cpu.shares=8192" if v1 else "cpu.weight=800") in iso["settings"], iso
        assert "cpuset.cpus=0-1" in iso["settings"], iso
        assert ("memory.soft_limit_in_bytes=67108864" if v1 else "memory.min=67108864") in iso["settings"], iso
        members = [st["supervisor_pid"]] + [c["pid"] for c in st["cells"]]
        for pid in members:
            got = in_group(pid, group)
            # v1: one hierarchy per setting (cpu, cpuset, memory); v2: the unified one.
            assert len(got) == (3 if v1 else 1), (pid, h.cgroup_of(pid))
            assert pid in iso["pids"], (pid, iso["pids"])
        for d in iso["directories"]:
            assert Path(d).name == group and Path(d).is_dir(), d
        os.kill(st["supervisor_pid"], 9)
        time.sleep(0.5)
        left = net.snapshot()
        assert left != before and any("qemu" in p for p in left["processes"]), left["processes"]
        assert sorted(iso["directories"]) == [c for c in left["cgroups"] if c.endswith(group)], left["cgroups"]
        # `up` on the leftover: cleans it and builds the network again.
        r = net.up(topo)
        assert "c1" in r.stdout
        st2 = net.wait_addressed(60)
        assert st2["supervisor_pid"] != st["supervisor_pid"]
        os.kill(st2["supervisor_pid"], 9)
        time.sleep(0.5)
        net.down()
        assert net.snapshot() == before
    finally:
        net.close()
