"""A network of cells run by `ivnet up`, inside two network namespaces made here: one plays
the host (bridge, dnsmasq, nftables, the supervisor and the cells' QEMUs run in it), the other
the "outside" behind the host's uplink (a veth pair). Shared by the demo and the tests.

    <outside ns> eth0 OUTSIDE_ADDR --- veth --- ivup0 UPLINK_ADDR <host ns> bridge ... cells
                      OUTSIDE_ADDR6               UPLINK_ADDR6 (default route via OUTSIDE_ADDR6)
"""

import json
import os
import re
import subprocess
import time
from pathlib import Path

import ivnet_harness as h

ROOT = Path(__file__).resolve().parents[2]
PYTHON = Path(os.environ.get("ZEPHYR_WORKSPACE", Path.home() / "zephyrproject")) / ".venv/bin/python"
UPLINK_ADDR, OUTSIDE_ADDR = "172.31.77.1", "172.31.77.2"
UPLINK_ADDR6, OUTSIDE_ADDR6 = "fd00:ff77::1", "fd00:ff77::2"


class Network:
    """Two namespaces joined by a veth pair, and `ivnet` run inside the host one."""

    def __init__(self, state: Path, bridge: str, metrics: str, host_ns: str, out_ns: str):
        self.state, self.bridge, self.metrics = state, bridge, metrics
        self.host = h.Netns(host_ns)
        self.out = h.Netns(out_ns)
        subprocess.run(["ip", "link", "add", "ivup0", "netns", host_ns, "type", "veth",
                        "peer", "name", "eth0", "netns", out_ns], check=True)
        self.host.ip("addr", "add", f"{UPLINK_ADDR}/24", "dev", "ivup0")
        self.host.ip("link", "set", "ivup0", "up")
        self.out.ip("addr", "add", f"{OUTSIDE_ADDR}/24", "dev", "eth0")
        self.out.ip("link", "set", "eth0", "up")
        # IPv6 as a host with an uplink has it: an address and a default route.
        self.host.ip("-6", "addr", "add", f"{UPLINK_ADDR6}/64", "dev", "ivup0", "nodad")
        self.out.ip("-6", "addr", "add", f"{OUTSIDE_ADDR6}/64", "dev", "eth0", "nodad")
        self.host.ip("-6", "route", "add", "default", "via", OUTSIDE_ADDR6, "dev", "ivup0")

    def ivnet(self, *args: str, check: bool = True, timeout: float = 180) -> subprocess.CompletedProcess:
        # Only the network namespace is the test host's: `ip netns exec` would also mount a
        # fresh /sys, without the cgroup file systems that `[host] isolation` writes to,
        # which an `ivnet` run on a real host has.
        r = subprocess.run(["nsenter", f"--net=/run/netns/{self.host.name}", str(h.ivnet_bin()), *args],
                           capture_output=True, text=True, timeout=timeout, check=False)
        if check and r.returncode != 0:
            raise AssertionError(f"ivnet {' '.join(args)} failed ({r.returncode}):\n{r.stdout}{r.stderr}")
        return r

    def up(self, topo: Path, check: bool = True) -> subprocess.CompletedProcess:
        return self.ivnet("up", str(topo), "--state-root", str(self.state), "--metrics", self.metrics,
                          check=check)

    def down(self) -> subprocess.CompletedProcess:
        return self.ivnet("down", self.bridge, "--state-root", str(self.state))

    def status(self) -> dict:
        out = self.ivnet("status", self.bridge, "--state-root", str(self.state), "--json").stdout
        return json.loads(out)

    def wait_addressed(self, timeout: float = 90) -> dict:
        """The status once every cell has its address (DHCP leases included)."""
        def addressed():
            s = self.status()
            return s if all(c["address"] for c in s["cells"]) else None
        return wait_until("every cell has its address", addressed, timeout)

    def metrics_text(self) -> str:
        return self.host.run("python3", "-c", "import urllib.request; print(urllib.request.urlopen("
                             f"'http://{self.metrics}/metrics', timeout=5).read().decode())").stdout

    def mcumgr(self, addr: str, *args: str, timeout: float = 30) -> str:
        """scripts/pylib/mcumgr.py inside the host namespace; asserts it succeeded."""
        r = self.host.run(str(PYTHON), str(ROOT / "scripts/pylib/mcumgr.py"), "--timeout", "5",
                          addr, *args, timeout=timeout, check=False)
        assert r.returncode == 0, f"mcumgr {addr} {args}: {r.stdout}{r.stderr}"
        return r.stdout

    def snapshot(self) -> dict:
        """What `down` must leave as it found: links, addresses, routes (both families),
        nftables, ip_forward and IPv6 forwarding of the host namespace; links and nftables of the machine; ivnet processes
        and state files."""
        def run(cmd):
            return subprocess.run(cmd, capture_output=True, text=True, check=True).stdout

        def links(text):
            return sorted((l["ifname"], l.get("master"), l.get("operstate")) for l in json.loads(text))
        procs = run(["ps", "-ww", "-eo", "args"]).splitlines()
        return {
            "ns links": links(run(["ip", "-n", self.host.name, "-j", "link"])),
            "ns addrs": run(["ip", "-n", self.host.name, "-4", "addr"]),
            # (global ones: link-local addresses come and go with duplicate address detection)
            "ns addrs6": run(["ip", "-n", self.host.name, "-6", "-o", "addr", "show", "scope", "global"]),
            "ns routes": run(["ip", "-n", self.host.name, "route"]),
            "ns routes6": run(["ip", "-n", self.host.name, "-6", "route"]),
            "ns ipv6 forwarding": run(self.host.cmd("cat", "/proc/sys/net/ipv6/conf/all/forwarding")),
            "ns uplink accept_ra": run(self.host.cmd("cat", "/proc/sys/net/ipv6/conf/ivup0/accept_ra")),
            "ns nft": run(self.host.cmd("nft", "list", "ruleset")),
            "ns ip_forward": run(self.host.cmd("cat", "/proc/sys/net/ipv4/ip_forward")),
            "links": links(run(["ip", "-j", "link"])),
            "nft": run(["nft", "list", "ruleset"]),
            "processes": sorted(p for p in procs if str(self.state) in p),
            "state files": sorted(str(p) for p in self.state.rglob("*")) if self.state.exists() else [],
            "cgroups": h.ivnet_cgroups(),
        }

    def close(self) -> None:
        """`ivnet down` (whatever state the network is in), then the namespaces."""
        self.ivnet("down", self.bridge, "--state-root", str(self.state), check=False, timeout=120)
        self.out.close()
        self.host.close()


def wait_until(what: str, fn, timeout: float):
    """Calls `fn` until it returns something true; its exceptions count as "not yet"."""
    end = time.time() + timeout
    last = None
    while time.time() < end:
        try:
            v = fn()
            if v:
                return v
        except Exception as e:  # the condition's own failure: retry until the deadline
            last = e
        time.sleep(0.5)
    raise TimeoutError(f"{what} within {timeout} s (last error: {last})")


def cell_ping(con: h.Console, addr: str, tries: int = 3) -> None:
    """One `net ping` from a cell's shell, tried up to `tries` times; the reply line names the
    address."""
    for _ in range(tries):
        since = con.mark()
        con.sock.sendall(f"net ping -c 1 {addr}\r\n".encode())
        try:
            con.wait_for(rf"bytes from {re.escape(addr)} ", timeout=4, since=since)
            return
        except TimeoutError:
            continue
    raise AssertionError(f"{con.name} cannot ping {addr}")


def ping_matrix(cons: dict, addrs: dict, host_addr: str) -> tuple[int, list[str]]:
    """Every cell (`cons`: name -> Console) pings every other cell (`addrs`: name -> address)
    and the host with `cell_ping`; returns how many answered and the failures."""
    ok, failed = 0, []
    for n, con in cons.items():
        for d in [a for m, a in addrs.items() if m != n] + [host_addr]:
            try:
                cell_ping(con, d)
                ok += 1
            except AssertionError as e:
                failed.append(str(e))
    return ok, failed


def tcp_echo(ns: h.Netns, addr: str, port: int, payload: str) -> str:
    """Sends `payload` to a TCP echo service from inside `ns`; returns what came back."""
    code = (f"import socket; s = socket.create_connection(('{addr}', {port}), timeout=5); "
            f"s.sendall(b'{payload}'); d = b''\n"
            f"while len(d) < {len(payload)}: d += s.recv(100)\nprint(d.decode())")
    return ns.run("python3", "-c", code, timeout=20).stdout.strip()


def stat_lines(text: str) -> dict:
    """`name: value` lines of `mcumgr.py <host> stat <group>` as a dict of ints."""
    out = {}
    for line in text.splitlines():
        k, sep, v = line.partition(": ")
        if sep and v.strip().isdigit():
            out[k.strip()] = int(v)
    return out
