"""Test and demo harness for ivnet: network namespaces with TAPs, the ivnet server and host
peer, and Zephyr VMs in QEMU with a scripted shell console.

Every piece cleans up after itself (use them as context managers, or call close()); traffic
only ever goes to addresses inside the namespaces made here.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]|\x1b")


def ivnet_bin() -> Path:
    """The ivnet host binary (built by `cargo build --release` if missing)."""
    b = Path(os.environ.get("IVNET_BIN", ROOT / "target" / "release" / "ivnet"))
    if not b.exists():
        subprocess.run(["cargo", "build", "--release", "-q", "-p", "ivnet", "-p", "ivnet-bench"],
                       cwd=ROOT, check=True)
    return b


def qemu_v2() -> str | None:
    """The project's QEMU build, which has the ivshmem 2.0 device `ivshmem2`
    (scripts/qemu-build.sh): $IVNET_QEMU_V2, else the newest build in the cache; None when
    there is none."""
    env = os.environ.get("IVNET_QEMU_V2")
    if env:
        return env
    cache = Path(os.environ.get("IVNET_QEMU_CACHE", Path.home() / ".cache/ivnet/qemu"))
    builds = sorted(cache.glob("build-*/qemu-system-aarch64"))
    return str(builds[-1]) if builds else None


def wait_path(p: Path, timeout: float = 10.0) -> None:
    end = time.time() + timeout
    while not p.exists():
        if time.time() > end:
            raise TimeoutError(f"{p} did not appear within {timeout} s")
        time.sleep(0.05)


class Workdir:
    """A temporary directory for sockets and logs."""

    def __init__(self, tag: str = "ivnet"):
        self.path = Path(tempfile.mkdtemp(prefix=f"{tag}-", dir="/tmp"))

    def close(self) -> None:
        if os.environ.get("IVNET_KEEP_LOGS"):
            print(f"logs kept in {self.path}")
            return
        shutil.rmtree(self.path, ignore_errors=True)


class Netns:
    """A network namespace (removed on close) with helpers to configure and run in it."""

    def __init__(self, name: str):
        self.name = name
        subprocess.run(["ip", "netns", "del", name], stderr=subprocess.DEVNULL)
        subprocess.run(["ip", "netns", "add", name], check=True)
        self.ip("link", "set", "lo", "up")

    def ip(self, *args: str) -> None:
        subprocess.run(["ip", "-n", self.name, *args], check=True)

    def tap(self, dev: str, addr: str | None = None) -> None:
        """A persistent TAP (keeps address and MAC when the host peer restarts)."""
        self.ip("tuntap", "add", "dev", dev, "mode", "tap")
        if addr:
            self.ip("addr", "add", addr, "dev", dev)
        self.ip("link", "set", dev, "up")

    def cmd(self, *args: str) -> list[str]:
        return ["ip", "netns", "exec", self.name, *args]

    def run(self, *args: str, timeout: float = 60, check: bool = True) -> subprocess.CompletedProcess:
        return subprocess.run(self.cmd(*args), capture_output=True, text=True,
                              timeout=timeout, check=check)

    def popen(self, *args: str, log: Path | None = None) -> subprocess.Popen:
        out = open(log, "ab") if log else subprocess.DEVNULL
        return subprocess.Popen(self.cmd(*args), stdout=out, stderr=subprocess.STDOUT)

    def close(self) -> None:
        subprocess.run(["ip", "netns", "del", self.name], stderr=subprocess.DEVNULL)


def stop(p: subprocess.Popen | None, sig_timeout: float = 5) -> None:
    if p and p.poll() is None:
        p.terminate()
        try:
            p.wait(sig_timeout)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


class Server:
    """`ivnet server` for one link (a context manager too)."""

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


    def __init__(self, socket_path: Path, log: Path, size: str = "1M", ivshmem: int = 1):
        """`ivshmem`: 1 for QEMU's ivshmem-doorbell, 2 for the project's ivshmem2 device."""
        self.socket = socket_path
        self.log = log
        if socket_path.exists():
            socket_path.unlink()
        self.proc = subprocess.Popen([str(ivnet_bin()), "server", "--socket", str(socket_path),
                                      "--size", size, "--ivshmem", str(ivshmem)],
                                     stdout=open(log, "ab"), stderr=subprocess.STDOUT)
        wait_path(socket_path)

    def close(self) -> None:
        stop(self.proc)


class HostPeer:
    """`ivnet peer`: the host end of a link, bridged to a TAP inside a namespace."""

    def __init__(self, ns: Netns, socket_path: Path, tap: str, log: Path, pcap: Path | None = None):
        """`pcap`: record the link's frames there (`ivnet peer --pcap`)."""
        self.ns, self.socket, self.tap, self.log, self.pcap = ns, socket_path, tap, log, pcap
        self.proc = None
        self.start()

    def start(self) -> None:
        extra = ["--pcap", str(self.pcap)] if self.pcap else []
        self.proc = self.ns.popen(str(ivnet_bin()), "peer", "--socket", str(self.socket),
                                  "--tap", self.tap, *extra, log=self.log)
        time.sleep(0.2)
        if self.proc.poll() is not None:
            raise RuntimeError(f"ivnet peer exited: {self.log.read_text()[-500:]}")

    def kill(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def close(self) -> None:
        stop(self.proc)


class Console:
    """A Zephyr shell on a serial console that QEMU serves on a UNIX socket, read by a
    background thread into a buffer (and a log file)."""

    PROMPT = "uart:~$"

    def __init__(self, path: Path, log_path: Path, name: str,
                 proc: subprocess.Popen | None = None, qemu_log: Path | None = None,
                 timeout: float = 10):
        """Connects to `path` (retrying until `timeout`, or until `proc` exits)."""
        self.name, self.con_path, self.log_path, self.proc = name, path, log_path, proc
        self.buf = ""
        self.last_rx = time.monotonic()
        self.lock = threading.Lock()
        self.sock = socket.socket(socket.AF_UNIX)
        end = time.time() + timeout
        while True:
            try:
                self.sock.connect(str(path))
                break
            except OSError:
                if time.time() > end or (proc is not None and proc.poll() is not None):
                    detail = qemu_log.read_text()[-800:] if qemu_log and qemu_log.exists() else ""
                    raise RuntimeError(f"console of {name} at {path} did not open: {detail}")
                time.sleep(0.05)
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        log = open(self.log_path, "a")
        while True:
            try:
                d = self.sock.recv(65536)
            except OSError:
                return
            if not d:
                return
            text = ANSI.sub("", d.decode(errors="replace"))
            log.write(text)
            log.flush()
            with self.lock:
                self.buf += text
                self.last_rx = time.monotonic()

    def mark(self) -> int:
        with self.lock:
            return len(self.buf)

    def wait_for(self, pattern: str, timeout: float = 20, since: int = 0) -> re.Match:
        rx = re.compile(pattern)
        end = time.time() + timeout
        while True:
            with self.lock:
                m = rx.search(self.buf, since)
            if m:
                return m
            if time.time() > end:
                with self.lock:
                    tail = self.buf[-1500:]
                raise TimeoutError(f"{self.name}: no /{pattern}/ within {timeout} s; console tail:\n{tail}")
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(f"{self.name}: QEMU exited ({self.proc.returncode})")
            time.sleep(0.05)

    def quiet(self, ms: float = 50, limit: float = 3) -> None:
        """Waits until the console has printed nothing for `ms` milliseconds (at most `limit`
        seconds). Zephyr 4.3's shell, when a command arrives while it is printing queued log
        messages, leaves the rest in its queue until the next message is logged, which on a
        quiet system is never (seen with a debugger: the driver's "carrier on" queued, no
        thread woken for it). The boot log is such a burst."""
        end = time.monotonic() + limit
        while time.monotonic() < end:
            with self.lock:
                idle = time.monotonic() - self.last_rx
            if idle >= ms / 1000:
                return
            time.sleep(max(0.005, ms / 1000 - idle))

    def shell(self, cmd: str, expect: str | None = None, timeout: float = 20) -> str:
        """Runs a shell command, typed once the console is quiet (see `quiet`); waits for
        `expect` (default: the next prompt) and returns the output since the command was
        sent."""
        self.quiet()
        since = self.mark()
        self.sock.sendall(cmd.encode() + b"\r\n")
        m = self.wait_for(expect or re.escape(self.PROMPT), timeout, since)
        with self.lock:
            return self.buf[since:m.end()]

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass


class Vm(Console):
    """A Zephyr image in QEMU (qemu_cortex_a53) on one or more ivnet links, with its shell
    console on a UNIX socket read by a background thread."""

    def __init__(self, elf: Path, links: list[Path], workdir: Path, name: str = "vm",
                 virtio_tap: tuple[Netns, str] | None = None, monitor: bool = False,
                 extra_args: list[str] | None = None,
                 device: str = "ivshmem-doorbell,vectors=2", qemu_bin: str | None = None):
        """`links`: ivnet server sockets, one `device` each (ivshmem-doorbell; "ivshmem2" or
        "ivshmem2,msix=off" with `qemu_bin` = qemu_v2() for ivshmem 2.0). `virtio_tap`:
        (namespace, TAP name) for a virtio-net NIC instead (the benchmark baseline); QEMU then
        runs inside that namespace. `monitor`: a QEMU monitor socket (see `monitor()`).
        `extra_args`: more QEMU options (traces, logs)."""
        self.name = name
        self.con_path = workdir / f"{name}-console.sock"
        self.log_path = workdir / f"{name}-console.log"
        self.mon_path = workdir / f"{name}-monitor.sock" if monitor else None
        self.mon = None
        # A socket file left by an earlier QEMU of that name would take the console's first
        # connect attempts.
        self.con_path.unlink(missing_ok=True)
        mon = f"unix:{self.mon_path},server=on,wait=off" if monitor else "none"
        qemu = [qemu_bin or "qemu-system-aarch64", "-cpu", "cortex-a53", "-nographic",
                "-global", "virtio-mmio.force-legacy=false",
                "-machine", "virt,gic-version=3", "-net", "none", "-monitor", mon,
                "-chardev", f"socket,id=con,path={self.con_path},server=on,wait=on",
                "-serial", "chardev:con"]
        for i, link in enumerate(links):
            qemu += ["-device", f"{device},chardev=ivs{i}",
                     "-chardev", f"socket,path={link},id=ivs{i}"]
        if virtio_tap:
            qemu += ["-netdev", f"tap,id=n0,ifname={virtio_tap[1]},script=no,downscript=no",
                     "-device", "virtio-net-device,netdev=n0,bus=virtio-mmio-bus.0"]
            qemu = virtio_tap[0].cmd(*qemu)
        qemu += ["-kernel", str(elf)]
        qemu += os.environ.get("IVNET_QEMU_EXTRA", "").split() + (extra_args or [])
        self.cmdline = qemu
        self.proc = subprocess.Popen(qemu, stdout=open(workdir / f"{name}-qemu.log", "ab"),
                                     stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        Console.__init__(self, self.con_path, self.log_path, name, self.proc,
                         workdir / f"{name}-qemu.log")

    def monitor(self, cmd: str) -> str:
        """One HMP command on the monitor socket; returns its output."""
        if self.mon is None:
            if self.mon_path is None:
                raise RuntimeError(f"{self.name}: started without a monitor")
            self.mon = socket.socket(socket.AF_UNIX)
            self.mon.settimeout(5)
            self.mon.connect(str(self.mon_path))
            self._mon_read()
        self.mon.sendall(cmd.encode() + b"\n")
        return self._mon_read()

    def _mon_read(self) -> str:
        out = b""
        while not out.endswith(b"(qemu) "):
            d = self.mon.recv(65536)
            if not d:
                raise RuntimeError(f"{self.name}: monitor closed")
            out += d
        return ANSI.sub("", out.decode(errors="replace"))

    def close(self) -> None:
        for s in (self.sock, self.mon):
            try:
                if s:
                    s.close()
            except OSError:
                pass
        stop(self.proc)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class Stack:
    """Closes what it was given, in reverse order."""

    def __init__(self):
        self.items = []

    def push(self, x):
        self.items.append(x)
        return x

    def close(self) -> None:
        while self.items:
            try:
                self.items.pop().close()
            except Exception as e:  # keep closing the rest
                print(f"cleanup: {e}")

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def ping_summary(text: str) -> tuple[int, int]:
    """(transmitted, received) from Linux ping output."""
    m = re.search(r"(\d+) packets transmitted, (\d+) received", text)
    if not m:
        raise ValueError(f"no ping summary in: {text[-300:]}")
    return int(m.group(1)), int(m.group(2))


def iperf_rate(text: str) -> float | None:
    """The last rate iperf 2 printed, in Mbit/s (whatever unit it chose), or None."""
    r = re.findall(r"([\d.]+) ([MKG]?)bits/sec", text)
    if not r:
        return None
    v, u = r[-1]
    return float(v) * {"K": 1e-3, "M": 1.0, "G": 1e3, "": 1e-6}[u]


def zephyr_ping_count(text: str) -> int:
    """Replies counted in the output of Zephyr's `net ping`."""
    return len(re.findall(r"bytes from .* icmp_seq=", text))


CGROUP_ROOT = Path("/sys/fs/cgroup")


def ivnet_cgroups(root: Path = CGROUP_ROOT, depth: int = 4) -> list[str]:
    """Every control group named `ivnet-*` in every hierarchy (v1 and v2), as paths: what
    `[host] isolation` and `ivnet isolate` make, and what their removal must leave as before."""
    out = []

    def walk(d: Path, left: int) -> None:
        try:
            subs = [e for e in os.scandir(d) if e.is_dir(follow_symlinks=False)]
        except OSError:
            return
        for e in subs:
            if e.name.startswith("ivnet-"):
                out.append(e.path)
            elif left > 0:
                walk(Path(e.path), left - 1)
    walk(root, depth)
    return sorted(out)


def cgroup_of(pid: int) -> str:
    """/proc/<pid>/cgroup (empty when the process is gone)."""
    try:
        return Path(f"/proc/{pid}/cgroup").read_text()
    except OSError:
        return ""
