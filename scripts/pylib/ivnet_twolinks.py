"""A cell on two links, for the tests that attack one of them: the cell image (two ivnet
links, addresses from fw_cfg) in QEMU, link 0 to an honest host peer (TAP ivl0), link 1 to
`ivnet-hostile` (TAP ivl1, honest until told to attack), both TAPs in a namespace made here.
Shared by the liveness, hostile-peer and storm tests and by scripts/storm.py and soak.py."""

import os
import re
import subprocess
import time
from pathlib import Path

import ivnet_harness as h

ROOT = Path(__file__).resolve().parents[2]  # scripts/pylib -> the repository
PYTHON = Path(os.environ.get("ZEPHYR_WORKSPACE", Path.home() / "zephyrproject")) / ".venv/bin/python"
HOST0, CELL0 = "10.70.0.1", "10.70.0.2"
HOST1, CELL1 = "10.71.0.1", "10.71.0.2"
MAC0, MAC1 = "02:00:00:00:70:02", "02:00:00:00:71:02"

# A bounded UDP sender: `rate` datagrams of `size` bytes a second to addr:port for `secs`.
BLASTER = """
import socket, sys, time
addr, port, rate, size, secs = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), float(sys.argv[5])
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.setblocking(False)
payload = b"x" * size
t0 = time.monotonic(); n = 0
while time.monotonic() - t0 < secs:
    due = int((time.monotonic() - t0) * rate)
    while n < due:
        try:
            s.sendto(payload, (addr, port))
        except OSError:
            pass
        n += 1
    time.sleep(0.002)
print("sent", n)
"""


def hostile_bin() -> Path:
    b = h.ivnet_bin().parent / "ivnet-hostile"
    if not b.exists():
        subprocess.run(["cargo", "build", "--release", "-q", "-p", "ivnet", "-p", "ivnet-bench"], cwd=ROOT, check=True)
    return b


class Closer:
    """Closes a process when the stack unwinds."""

    def __init__(self, proc: subprocess.Popen):
        self.proc = proc

    def close(self) -> None:
        h.stop(self.proc)


class TwoLinks:
    """The cell, its two links and the hostile peer (started with `attack`, waiting for
    SIGUSR1 to attack and SIGUSR2 to stop). Everything is pushed onto `st`."""

    def __init__(self, st: h.Stack, work: Path, elf: Path, ns_name: str, attack: str = "stall"):
        self.work = work
        self.ns = st.push(h.Netns(ns_name))
        self.ns.tap("ivl0", f"{HOST0}/24")
        self.ns.tap("ivl1", f"{HOST1}/24")
        l0, l1 = work / "l0.sock", work / "l1.sock"
        st.push(h.Server(l0, work / "server0.log"))
        st.push(h.Server(l1, work / "server1.log"))
        self.peer0 = st.push(h.HostPeer(self.ns, l0, "ivl0", work / "peer0.log"))
        self.hostile_log = work / "hostile.log"
        self.hostile = self.ns.popen(str(hostile_bin()), "--socket", str(l1), "--tap", "ivl1",
                                     "--attack", attack, log=self.hostile_log)
        st.push(Closer(self.hostile))
        cfg = work / "cell.cfg"
        cfg.write_text(f"name=two\nif0.mac={MAC0}\nif0.ipv4={CELL0}/24\n"
                       f"if1.mac={MAC1}\nif1.ipv4={CELL1}/24\ndefault=0\n")
        self.vm = st.push(h.Vm(elf, [l0, l1], work, "two",
                               extra_args=["-fw_cfg", f"name=opt/ivnet/cell,file={cfg}"]))
        self.vm.wait_for("ivnet0: carrier on", 30)
        self.vm.wait_for("ivnet1: carrier on", 30)
        self.vm.wait_for(re.escape(h.Vm.PROMPT), 10)
        for a in (CELL0, CELL1):
            r = self.ns.run("ping", "-c", "3", "-i", "0.2", "-W", "2", a, check=False)
            assert h.ping_summary(r.stdout)[1] > 0, f"{a}: {r.stdout}"
        # Link 1's neighbour entry is fixed: an attacked link carries no ARP answers, and the
        # load put on it must not depend on the namespace's ARP cache.
        self.ns.ip("neigh", "replace", CELL1, "lladdr", MAC1, "dev", "ivl1", "nud", "permanent")

    def stat(self, group: str, via: str = CELL0) -> dict:
        """The cell's STATS group `group`, read over MCUmgr at address `via` (link 0's by
        default)."""
        r = self.ns.run(str(PYTHON), str(ROOT / "scripts/pylib/mcumgr.py"), "--timeout", "5", via,
                        "stat", group, timeout=30, check=False)
        assert r.returncode == 0, r.stdout + r.stderr
        return {k: int(v) for k, v in re.findall(r"(\w+)\W+(\d+)", r.stdout)}

    def blaster(self, st: h.Stack, addr: str, rate: int, size: int, secs: float) -> subprocess.Popen:
        """UDP to the cell's echo port, bounded in rate and time."""
        p = self.ns.popen("python3", "-c", BLASTER, addr, "4242", str(rate), str(size), str(secs),
                          log=self.work / "blaster.log")
        st.push(Closer(p))
        return p

    def wait_link1_back(self, timeout: float = 20) -> float:
        """Seconds until a ping over link 1 is answered again."""
        t = time.time()
        while self.ns.run("ping", "-c", "1", "-W", "1", CELL1, check=False).returncode != 0:
            assert time.time() - t < timeout, f"link 1 did not come back within {timeout} s"
            time.sleep(0.05)
        return time.time() - t

    def assert_no_fatal(self) -> None:
        assert "FATAL" not in self.vm.buf, "the cell hit a fatal error"
        assert self.vm.buf.count("Booting Zephyr") == 1, "the cell rebooted"


def pings(ns: h.Netns, addr: str, count: int, interval: float = 0.02) -> tuple[list[float], int]:
    """`count` pings; (round-trip times in ms, replies missing)."""
    r = ns.run("ping", "-c", str(count), "-i", str(interval), "-W", "1", addr,
               timeout=count * (interval + 0.03) + 30, check=False)
    rtts = [float(x) for x in re.findall(r"time=([\d.]+) ms", r.stdout)]
    return rtts, count - len(rtts)


def pct(xs: list[float], p: float) -> float:
    s = sorted(xs)
    return s[min(len(s) - 1, int(round(p / 100 * (len(s) - 1))))]
