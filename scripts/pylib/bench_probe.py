"""What the benchmark reads from the machine and its tools: iperf 2's figures, per-thread CPU
times, QEMU's exec log and GIC trace events, and the versions of everything measured with."""
from __future__ import annotations

import datetime
import os
import platform
import re
import subprocess
from pathlib import Path

import ivnet_harness as h

ROOT = h.ROOT


def mbit(text: str) -> float:
    r = h.iperf_rate(text)
    if r is None:
        raise ValueError(f"no rate in: {text[-300:]!r}")
    return r


def lost_total(text: str) -> tuple[int, int]:
    m = re.findall(r"\s(-?\d+)/\s*(\d+)\s+\(", text)
    if not m:
        raise ValueError(f"no loss figure in: {text[-300:]!r}")
    return max(0, int(m[-1][0])), int(m[-1][1])

def thread_times(pid: int) -> dict[str, float]:
    """CPU seconds per thread of `pid` (name/tid -> utime+stime)."""
    out = {}
    tck = os.sysconf("SC_CLK_TCK")
    tasks = Path(f"/proc/{pid}/task")
    if not tasks.exists():
        return out
    for t in tasks.iterdir():
        try:
            st = (t / "stat").read_text()
        except OSError:
            continue
        name = st[st.index("(") + 1:st.rindex(")")]
        f = st[st.rindex(")") + 2:].split()
        out[f"{name}/{t.name}"] = (int(f[11]) + int(f[12])) / tck
    return out


def parse_exec_log(path: Path) -> tuple[list[tuple[str, float]], int, int]:
    """(function, % of executed guest instructions) from a QEMU in_asm+exec log; also the
    number of blocks and instructions executed."""
    size: dict[int, int] = {}
    per_fn: dict[str, int] = {}
    pc = n = None
    blocks = insns = 0
    with open(path, errors="replace") as f:
        for line in f:
            if line.startswith("IN:"):
                pc, n = None, 0
            elif n is not None and re.match(r"0x[0-9a-f]+:", line):
                if pc is None:
                    pc = int(line.split(":")[0], 16)
                n += 1
            elif n is not None and not line.strip():
                if pc is not None:
                    size[pc] = n
                pc = n = None
            elif line.startswith("Trace "):
                m = re.search(r"\[[0-9a-f]+/([0-9a-f]+)/[0-9a-f]+/[0-9a-f]+\]\s*(\S*)", line)
                if not m:
                    continue
                w = size.get(int(m.group(1), 16), 1)
                fn = m.group(2) or m.group(1)
                per_fn[fn] = per_fn.get(fn, 0) + w
                blocks += 1
                insns += w
    top = sorted(per_fn.items(), key=lambda x: -x[1])[:15]
    return [(demangle(f), 100.0 * c / max(1, insns)) for f, c in top], blocks, insns


def demangle(sym: str) -> str:
    """Readable Rust symbol (`_ZN12ivnet_zephyr6driver4Link6update17h...E` -> `ivnet_zephyr::driver::Link::update`)."""
    if not sym.startswith("_ZN"):
        return sym
    parts, i = [], 3
    while i < len(sym) and sym[i].isdigit():
        j = i
        while sym[j].isdigit():
            j += 1
        n = int(sym[i:j])
        parts.append(sym[j:j + n])
        i = j + n
    if parts and re.fullmatch(r"h[0-9a-f]{16}", parts[-1]):
        parts.pop()
    return "::".join(parts) or sym


def irq_latency(trace: Path) -> list[float]:
    """Microseconds from the NIC's interrupt being raised (an ITS translation for ivnet's
    MSI-X, a level change of a distributor line for virtio-mmio) to the guest acknowledging
    an interrupt of that kind (ICC_IAR1: an LPI, >= 8192, or that SPI)."""
    raised, spi, out = None, None, []
    for line in trace.read_text(errors="replace").splitlines():
        m = re.match(r"\d+@([\d.]+):(\S+) (.*)", line)
        if not m:
            continue
        t, ev, rest = float(m.group(1)), m.group(2), m.group(3)
        if ev == "gicv3_its_translation_write" or (ev == "gicv3_dist_set_irq" and rest.endswith("changed to 1")):
            if ev == "gicv3_dist_set_irq":
                spi = int(re.search(r"interrupt (\d+)", rest).group(1))
                if spi == 33:  # the console UART
                    continue
            if raised is None:
                raised = t
        elif ev == "gicv3_icc_iar1_read" and raised is not None:
            v = int(rest.split()[-1], 16)
            if v >= 8192 or v == spi:
                out.append((t - raised) * 1e6)
                raised = None
    return out

def machine_info() -> dict:
    def ver(cmd):
        try:
            r = subprocess.run(cmd, capture_output=True, text=True, timeout=10)
            return (r.stdout or r.stderr).strip().splitlines()[0]
        except Exception:
            return "n/a"
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.machine())
    info = {
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "host": f"{platform.node()} {platform.release()}, {os.cpu_count()} CPUs, {cpu}",
        "ivnet": ver(["git", "-C", str(ROOT), "describe", "--always", "--dirty"]),
        "zephyr": (Path(os.environ["ZEPHYR_BASE"]) / "VERSION").read_text().replace("\n", " ").strip(),
        "qemu": ver(["qemu-system-aarch64", "--version"]),
        "iperf": ver(["iperf", "-v"]),
        "toolchain": os.environ.get("ZEPHYR_TOOLCHAIN_VARIANT", "?") + " " + ver(
            [os.environ.get("CROSS_COMPILE", "aarch64-linux-gnu-") + "gcc", "--version"]),
        "rustc": ver(["rustc", "--version"]),
    }
    return info
