"""Capacity benchmark: ivnet against Zephyr's virtio-net, side by side, on this machine.

One command builds the images, measures, and writes a report:

  scripts/bench.sh                  quick mode (default; under 15 minutes with the builds)
  scripts/bench.sh --full           the seed's method: 200 x 1 s samples for its capacity tests

The same application, Zephyr's own samples/net/zperf with ivnet's tuned profile (prj.conf), is
built on ivnet (`-S ivnet`) and on virtio-net (`-S virtio-net-baseline`, same machine mode) and
measured with iperf 2 in a network namespace made here (removed afterwards):

  tcp host->cell   iperf -c -l SIZE         -> zperf tcp download   (rate seen by iperf)
  tcp cell->host   zperf tcp upload SIZE    -> iperf -s             (rate seen by iperf)
  udp host->cell   iperf -u -b RATE -l SIZE -> zperf udp download   (zperf's server report;
                   loss from what iperf sent)
  udp cell->host   zperf udp upload SIZE RATE -> iperf -s -u        (iperf's report)
  ping             ping -i 0.01 from the namespace: every RTT is a sample
  cell<->cell      (ivnet) two VMs on one link, zperf upload -> zperf download
  tuning           ivnet with Zephyr's default network config, each of the seed's steps, and
                   the full profile
  profile          interrupt delivery (QEMU's GIC traces, during pings); the guest's executed
                   instructions per function (QEMU's exec log) and host CPU per thread during
                   a TCP run
  micro            `ivnet bench-core`: the protocol core alone, two host threads
  v2               ivshmem 2.0 (the project's QEMU device `ivshmem2`): the same zperf image
                   on ivnet (`-S ivnet-v2`) and on Zephyr's C eth_ivshmem (`-S ivshmem2-eth`),
                   each against the host peer on an `ivnet server --ivshmem 2` link (TCP 1460 B
                   and UDP 1024 B, both directions) and each against itself cell<->cell

Both drivers' VMs run at once and the samples alternate between them, so drifts in the machine's
load hit both alike. Output (--out): samples.csv (every sample), report.md (ratio table with
mean, stddev and 95 % CI; tuning table; profile; configuration), PNG plots, and config/ (each
image's .config and the QEMU lines).
"""

from __future__ import annotations

import argparse
import csv
import datetime
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent / "pylib"))
import ivnet_harness as h  # noqa: E402
from bench_probe import (irq_latency, lost_total, machine_info, mbit, parse_exec_log,  # noqa: E402
                         thread_times)

ROOT = h.ROOT
HOST, CELL, CELL2 = "192.0.2.2", "192.0.2.1", "192.0.2.12"
SIZES = (20, 256, 1024, 1460)
DIRS = ("host->cell", "cell->host")
TUNING_DIR = ROOT / "bench" / "tuning"
# (key, label, fragments applied on top of zperf's prj.conf); the last row is the main image.
TUNING = [
    ("default", "Zephyr defaults", ["00-default.conf"]),
    ("txq", "+ TX queue (NET_TC_TX_COUNT=1)", ["00-default.conf", "01-tx-queue.conf"]),
    ("buf1500", "+ 1500 B buffers", ["00-default.conf", "01-tx-queue.conf", "02-buf-1500.conf"]),
    ("seed", "+ 80 pkt/buf each way (seed profile)",
     ["00-default.conf", "01-tx-queue.conf", "02-buf-1500.conf", "03-counts-80.conf"]),
]


def log(msg: str) -> None:
    print(msg, flush=True)


# ---- images ------------------------------------------------------------------------------

def conf_settings(files: list[Path]) -> dict[str, str]:
    out = {}
    for f in files:
        for line in f.read_text().splitlines():
            m = re.match(r"\s*(CONFIG_\w+)=(.*)", line)
            if m:
                out[m.group(1)] = m.group(2).strip()
    return out


def build(name: str, snippet: str, confs: list[Path], out: Path) -> Path:
    """west build of Zephyr's zperf sample into build/bench/<name>; returns the ELF."""
    d = ROOT / "build" / "bench" / name
    zb = os.environ["ZEPHYR_BASE"]
    confs = confs + [ROOT / "bench" / "zperf.conf"]
    cmd = ["west", "build", "-b", "qemu_cortex_a53", f"{zb}/samples/net/zperf", "-d", str(d),
           "-S", snippet, "--", f"-DEXTRA_ZEPHYR_MODULES={ROOT}",
           # One cargo target directory for all images: bindgen and cbindgen compile once.
           f"-DIVNET_CARGO_TARGET_DIR={ROOT / 'build' / 'bench' / 'cargo'}",
           "-DEXTRA_CONF_FILE=" + ";".join(str(c) for c in confs)]
    if os.environ.get("ZEPHYR_TOOLCHAIN_VARIANT") == "cross-compile":
        # Debian's cross gcc has no picolibc/POSIX layer for Zephyr (docs/zephyr-workspace.md).
        cmd += ["-DCONFIG_POSIX_API=n", "-DCONFIG_MINIMAL_LIBC=y", "-DCONFIG_PICOLIBC_USE_MODULE=n"]
    t = time.time()
    r = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    if r.returncode:
        sys.stderr.write(r.stdout[-4000:] + r.stderr[-4000:])
        raise SystemExit(f"build of {name} failed: {' '.join(cmd)}")
    (out / "config").mkdir(parents=True, exist_ok=True)
    shutil.copy(d / "zephyr" / ".config", out / "config" / f"{name}.config")
    (out / "config" / f"{name}.build").write_text(" ".join(cmd) + "\n")
    log(f"  built {name} in {time.time() - t:.0f} s")
    return d / "zephyr" / "zephyr.elf"


# ---- one driver's world ------------------------------------------------------------------

# The ivshmem 2.0 drivers (phase v2): both on the project's QEMU device, against the host peer.
V2_KINDS = ("c-v2", "ivnet-v2")
V2_LABEL = {"c-v2": "Zephyr's C eth_ivshmem", "ivnet-v2": "ivnet"}


class Env:
    """A namespace with a TAP (ivnet: plus a link server and the host peer) and the VMs on it.
    Kinds: "virtio", "ivnet" (ivshmem-doorbell), and V2_KINDS (the ivshmem2 device)."""

    def __init__(self, kind: str, work: Path, st: h.Stack):
        self.kind, self.work, self.st = kind, work, st
        self.v2 = kind in V2_KINDS
        self.ns = st.push(h.Netns(f"ivbench-{kind}"))
        self.tap = "zeth" if kind == "virtio" else "ivtap0"
        self.ns.tap(self.tap, f"{HOST}/24")
        self.peer = None
        if kind != "virtio":
            self.link = work / f"{kind}-link.sock"
            st.push(h.Server(self.link, work / f"{kind}-server.log", ivshmem=2 if self.v2 else 1))
            self.peer = st.push(h.HostPeer(self.ns, self.link, self.tap, work / f"{kind}-peer.log"))
        self.vm = None
        self.elf = None
        self.n = 0

    def boot(self, elf: Path, extra: list[str] | None = None) -> h.Vm:
        """Boots `elf` (replacing any VM of this env) and starts zperf's download servers."""
        self.shutdown()
        self.elf = elf
        self.n += 1
        subprocess.run(["ip", "-n", self.ns.name, "neigh", "flush", "all"], check=False)
        name = f"{self.kind}{self.n}"
        if self.kind == "ivnet":
            vm = h.Vm(elf, [self.link], self.work, name, monitor=True, extra_args=extra)
            self.vm = vm
            vm.wait_for("ivnet0: carrier on", 30)
        elif self.v2:
            vm = h.Vm(elf, [self.link], self.work, name, monitor=True, extra_args=extra,
                      device="ivshmem2", qemu_bin=h.qemu_v2())
            self.vm = vm
            if self.kind == "ivnet-v2":
                vm.wait_for("ivnet0: carrier on", 30)
        else:
            vm = h.Vm(elf, [], self.work, name, virtio_tap=(self.ns, self.tap), monitor=True, extra_args=extra)
            self.vm = vm
        vm.wait_for(r"net_config: IPv4 address", 30)
        vm.wait_for(re.escape(h.Vm.PROMPT), 10)
        time.sleep(0.3)
        vm.shell("zperf tcp download 5001", r"TCP server started|already")
        vm.shell("zperf udp download 5001", r"UDP server started|already")
        self.ns.run("ping", "-c", "2", "-i", "0.2", "-W", "2", CELL, check=False)  # ARP
        return vm

    def ensure(self) -> h.Vm:
        """The VM, rebooted if it died."""
        if self.vm is None or self.vm.proc.poll() is not None:
            if self.elf is None:
                raise RuntimeError(f"{self.kind}: no image booted")
            log(f"  ({self.kind}: VM gone, booting it again)")
            self.boot(self.elf)
        return self.vm

    def shutdown(self) -> None:
        if self.vm:
            self.vm.close()
            self.vm = None

    def close(self) -> None:
        self.shutdown()


def zrate(mbit_s: float) -> str:
    """A rate as zperf's shell parses it (an integer with a unit; "50.0M" would not parse)."""
    return f"{int(round(mbit_s * 1000))}K"


def iperf_server(env: Env, udp: bool, port: int, secs: float) -> subprocess.Popen:
    args = ["timeout", str(int(secs) + 30), "iperf", "-s", "-P", "1", "-f", "m", "-p", str(port)]
    # UDP: a 4 MB socket buffer, so the host's receiver is not what drops datagrams.
    return subprocess.Popen(env.ns.cmd(*args, *(["-u", "-w", "4M"] if udp else [])),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)


def wait_server(p: subprocess.Popen, secs: float) -> str:
    """The server's output once it exits (killed, with its children, after `secs`)."""
    try:
        return p.communicate(timeout=secs)[0]
    except subprocess.TimeoutExpired:
        os.killpg(p.pid, signal.SIGKILL)
        return p.communicate()[0]


def run_sample(env: Env, proto: str, direction: str, size: int, secs: int, rate: float) -> dict:
    """One sample; returns {'mbit': .., 'loss_pct': ..} (loss for UDP only)."""
    vm = env.ensure()
    if direction == "host->cell":
        if proto == "tcp":
            r = env.ns.run("iperf", "-c", CELL, "-p", "5001", "-t", str(secs), "-l", str(size),
                           "-f", "m", timeout=secs + 30, check=False)
            return {"mbit": mbit(r.stdout + r.stderr)}
        r = env.ns.run("iperf", "-c", CELL, "-u", "-p", "5001", "-b", f"{rate}M", "-l", str(size),
                       "-t", str(secs), "-f", "m", timeout=secs + 30, check=False)
        if "Server Report" not in r.stdout:
            raise ValueError("no server report from zperf")
        rep = r.stdout[r.stdout.index("Server Report"):]
        sent = re.findall(r"Sent (\d+) datagrams", r.stdout)
        iv = re.findall(r"([\d.]+)-\s*([\d.]+) sec", rep)
        if not sent or not iv:
            raise ValueError(f"iperf: {r.stdout[-300:]!r}")
        # Loss from what iperf sent and what zperf received (its rate over its interval):
        # zperf's own lost/total counts sequence gaps and overcounts under reordering.
        got = mbit(rep) * 1e6 * (float(iv[-1][1]) - float(iv[-1][0])) / 8 / size
        return {"mbit": mbit(rep), "loss_pct": max(0.0, 100.0 * (1 - got / int(sent[-1])))}
    port = 5002 if proto == "tcp" else 5003
    srv = iperf_server(env, proto == "udp", port, secs)
    time.sleep(0.25)
    since = vm.mark()
    if proto == "tcp":
        cmd = f"zperf tcp upload {HOST} {port} {secs} {size}"
    else:
        cmd = f"zperf udp upload {HOST} {port} {secs} {size} {zrate(rate)}"
    got = vm.shell(cmd, r"Upload completed|failed|rror", secs + 30)
    out = wait_server(srv, 10)
    # zperf prints its statistics after "completed": let it finish before the next command.
    vm.wait_for(re.escape(h.Vm.PROMPT), 10, since=since + len(got))
    time.sleep(0.1)
    res = {"mbit": mbit(out)}
    if proto == "udp":
        lost, total = lost_total(out)
        res["loss_pct"] = 100.0 * lost / max(1, total)
    return res


def ping_sample(env: Env, count: int) -> list[float]:
    env.ensure()
    r = env.ns.run("ping", "-c", str(count), "-i", "0.01", "-W", "1", CELL, timeout=count * 0.05 + 30,
                   check=False)
    rtts = [float(x) for x in re.findall(r"time=([\d.]+) ms", r.stdout)]
    if len(rtts) < count * 0.95:
        raise ValueError(f"only {len(rtts)}/{count} ping replies")
    return rtts


# ---- profile -----------------------------------------------------------------------------
# Guest: QEMU logs every translated block it executes (`log in_asm,exec,nochain` through the
# monitor) for a short window during a TCP run; executions x instructions per block, summed
# by function, say where the guest's instructions go. (Sampling the PC by stopping the VM is
# biased: a stop is served where the vCPU waits for QEMU's big lock, i.e. at timer reads and
# MMIO.) Interrupts: QEMU's GIC traces, from the interrupt being raised to the guest
# acknowledging it, during a ping run. Host: CPU time per thread of QEMU, the host peer and
# iperf over the TCP run.

TRACE_EVENTS = ["gicv3_its_translation_write", "gicv3_dist_set_irq", "gicv3_icc_iar1_read"]


def profile(env: Env, secs: int, work: Path) -> dict:
    """Boots a traced VM, measures interrupt latency (ping) and where the guest's
    instructions and the host's CPU go (TCP host->cell, 1460 B)."""
    trace = work / f"{env.kind}-trace.log"
    execlog = work / f"{env.kind}-exec.log"
    # debug-threads: QEMU names its threads ("CPU 0/TCG", ...) for the host table.
    extra = ["-msg", "timestamp=on", "-D", str(trace), "-name", f"{env.kind},debug-threads=on"]
    for e in TRACE_EVENTS:
        extra += ["-trace", e]
    elf = env.elf
    vm = env.boot(elf, extra=extra)
    try:
        env.ns.run("ping", "-c", "100", "-i", "0.02", CELL, timeout=60, check=False)
        lat = sorted(irq_latency(trace))
        procs = {"qemu": vm.proc.pid}
        if env.peer:
            procs["ivnet peer"] = env.peer.proc.pid
        ipf = subprocess.Popen(env.ns.cmd("iperf", "-c", CELL, "-p", "5001", "-t", str(secs), "-l", "1460", "-f", "m"),
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        procs["iperf"] = ipf.pid
        time.sleep(1.0)
        before = {k: thread_times(p) for k, p in procs.items()}
        t0 = time.time()
        time.sleep(max(1.0, secs / 2 - 1.5))
        vm.monitor(f"logfile {execlog}")
        vm.monitor("log in_asm,exec,nochain")
        time.sleep(0.4)
        vm.monitor("log none")
        vm.monitor(f"logfile {trace}")
        out_text = ipf.communicate(timeout=secs + 30)[0]
        dt = time.time() - t0
        after = {k: thread_times(p) for k, p in procs.items()}
        host = []
        for k in procs:
            for th, cpu in after[k].items():
                d = cpu - before[k].get(th, 0.0)
                if d / dt >= 0.01:
                    host.append((f"{k}: {th.split('/')[0]}", 100.0 * d / dt))
        host.sort(key=lambda x: -x[1])
        if "bits/sec" not in out_text:
            raise ValueError(f"iperf during the profile: {out_text[-300:]!r}")
        guest, blocks, insns = parse_exec_log(execlog)
        execlog.unlink(missing_ok=True)
    finally:
        env.boot(elf)  # untraced again for what follows
    pct = (lambda q: lat[min(len(lat) - 1, int(len(lat) * q))]) if lat else (lambda q: float("nan"))
    return {"guest": guest, "blocks": blocks, "insns": insns, "host": host,
            "irq_n": len(lat), "irq_p50": pct(0.5), "irq_p90": pct(0.9),
            "mbit": mbit(out_text) if "bits/sec" in out_text else float("nan")}


# ---- the run -----------------------------------------------------------------------------

class Recorder:
    def __init__(self, out: Path, total: int):
        self.rows: list[dict] = []
        self.f = open(out / "samples.csv", "w", newline="")
        self.w = csv.DictWriter(self.f, ["driver", "image", "test", "proto", "direction", "size",
                                         "offered_mbit", "rep", "seconds", "metric", "value", "error"])
        self.w.writeheader()
        self.total, self.done, self.t0 = total, 0, time.time()

    def add(self, **row) -> None:
        row.setdefault("error", "")
        self.rows.append(row)
        self.w.writerow(row)
        self.f.flush()

    def step(self, text: str) -> None:
        self.done += 1
        el = time.time() - self.t0
        left = el / self.done * (self.total - self.done)
        log(f"[{self.done:3}/{self.total}] {text}   ({el / 60:.1f} min, ~{left / 60:.1f} min left)")


def measure(env: Env, rec: Recorder, image: str, test: str, proto: str, direction: str, size: int,
            rate: float, rep: int, secs: int) -> None:
    base = dict(driver=env.kind, image=image, test=test, proto=proto, direction=direction, size=size,
                offered_mbit=rate if proto == "udp" else "", rep=rep, seconds=secs)
    try:
        r = run_sample(env, proto, direction, size, secs, rate)
        for k, v in r.items():
            rec.add(**base, metric=k, value=f"{v:.4f}")
        txt = f"{r['mbit']:.1f} Mbit/s" + (f", {r['loss_pct']:.2f} % loss" if "loss_pct" in r else "")
    except Exception as e:  # a failed sample is recorded and the run goes on
        msg = " ".join(str(e).split())[:300] if str(e) else type(e).__name__
        rec.add(**base, metric="mbit", value="", error=msg)
        txt = f"ERROR {msg}"
        # Whatever failed (a wedged shell, a zperf server gone), the next sample starts clean.
        try:
            env.boot(env.elf)
        except Exception as e2:
            log(f"  ({env.kind}: reboot failed: {e2}; next sample tries again)")
            env.shutdown()
    rec.step(f"{env.kind:6} {image:8} {proto} {direction} {size:4} B"
             + (f" @{rate:g}M" if proto == "udp" else "") + f" #{rep}: {txt}")


def cell_cell(work: Path, elf: Path, rec: Recorder, reps: int, secs: int, rate: float,
              kind: str = "ivnet") -> None:
    """Two VMs of `elf` on one link, zperf upload from one to the other. `kind` "ivnet" (the
    doorbell device; test "cell<->cell") or one of V2_KINDS (the ivshmem2 device; test
    "v2 cell<->cell")."""
    v2 = kind in V2_KINDS
    lan = work / f"cc-{kind}-link.sock"
    test = "v2 cell<->cell" if v2 else "cell<->cell"
    vm_args = dict(device="ivshmem2", qemu_bin=h.qemu_v2()) if v2 else {}
    with h.Stack() as st:
        st.push(h.Server(lan, work / f"cc-{kind}-server.log", ivshmem=2 if v2 else 1))
        a = st.push(h.Vm(elf, [lan], work, f"cellA-{kind}", **vm_args))
        b = st.push(h.Vm(elf, [lan], work, f"cellB-{kind}", **vm_args))
        for vm in (a, b):
            if kind != "c-v2":
                vm.wait_for("ivnet0: carrier on", 30)
            vm.wait_for(r"net_config: IPv4 address", 30)
            vm.wait_for(re.escape(h.Vm.PROMPT), 10)
        time.sleep(0.3)
        b.shell(f"net ipv4 del 1 {CELL}")
        b.shell(f"net ipv4 add 1 {CELL2} 255.255.255.0")
        b.shell("zperf tcp download 5001", "TCP server started")
        b.shell("zperf udp download 5001", "UDP server started")
        for proto, size in (("tcp", 1460), ("udp", 1024)):
            for rep in range(reps):
                base = dict(driver=kind, image=kind, test=test, proto=proto,
                            direction="cell->cell", size=size, offered_mbit=rate if proto == "udp" else "",
                            rep=rep, seconds=secs)
                cmd = (f"zperf tcp upload {CELL2} 5001 {secs} {size}" if proto == "tcp"
                       else f"zperf udp upload {CELL2} 5001 {secs} {size} {zrate(rate)}")
                try:
                    out = a.shell(cmd, r"Upload completed![\s\S]*?Rate:\s+[\d.]+ [MK]bps|failed|rror", secs + 30)
                    tail = out[out.find("Upload completed"):] if "Upload completed" in out else out
                    m = re.findall(r"Rate:\s+([\d.]+) ([MK])bps", tail)
                    if "Upload completed" not in out or not m:
                        raise ValueError(out[-200:])
                    v = float(m[-1][0]) / (1000 if m[-1][1] == "K" else 1)
                    rec.add(**base, metric="mbit", value=f"{v:.4f}")
                    if proto == "udp":
                        lm = re.search(r"Num packets lost:\s+(\d+)", tail)
                        pm = re.search(r"Num packets:\s+(\d+)", tail)
                        if lm and pm and int(pm.group(1)):
                            rec.add(**base, metric="loss_pct",
                                    value=f"{100.0 * int(lm.group(1)) / int(pm.group(1)):.4f}")
                    txt = f"{v:.1f} Mbit/s"
                except Exception as e:
                    rec.add(**base, metric="mbit", value="", error=str(e).splitlines()[0][:120])
                    txt = "ERROR"
                time.sleep(0.5)
                rec.step(f"{kind:6} {test} {proto} {size} B #{rep}: {txt}")


def main() -> int:
    # SIGTERM unwinds like Ctrl-C, so namespaces, VMs and servers are removed.
    signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--full", action="store_true",
                    help="the seed's method: 200 x 1 s samples for its capacity tests (cell->host TCP 256 B, "
                         "UDP 20/256/1024 B), 10 x 5 s for the rest; takes hours")
    ap.add_argument("--reps", type=int, help="samples per test (quick: 3)")
    ap.add_argument("--seconds", type=int, help="length of each sample (quick: 1)")
    ap.add_argument("--udp-rate", type=float, default=300, help="offered UDP rate in the size matrix, Mbit/s (above what either driver absorbs: a capacity test)")
    ap.add_argument("--sizes", default=",".join(map(str, SIZES)), help="payload sizes, bytes")
    ap.add_argument("--rates", help="UDP offered-rate sweep, Mbit/s (quick: 10,50,100,200,300)")
    ap.add_argument("--skip", default="", help="comma list of phases to skip: matrix,sweep,ping,cc,tuning,profile,micro,v2")
    ap.add_argument("--tests", help="matrix subset, e.g. tcp:host->cell,udp:cell->host (default: all four)")
    ap.add_argument("--build-only", action="store_true", help="build the images and stop")
    ap.add_argument("--out", type=Path, help="report directory (default bench-out/<date>)")
    a = ap.parse_args()
    reps = a.reps or (10 if a.full else 3)
    secs = a.seconds or (5 if a.full else 1)
    sizes = [int(x) for x in a.sizes.split(",")]
    rates = [float(x) for x in (a.rates or ("10,25,50,75,100,150,200,300" if a.full else "10,50,100,200,300")).split(",")]
    skip = set(filter(None, a.skip.split(",")))
    out = a.out or ROOT / "bench-out" / datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    out.mkdir(parents=True, exist_ok=True)
    t_start = time.time()
    log(f"ivnet benchmark -> {out}")

    # The matrix: (proto, direction, size, reps, seconds); in --full, the seed's capacity tests
    # get 200 x 1 s samples.
    seed_tests = {("tcp", "cell->host", 256), ("udp", "cell->host", 20), ("udp", "cell->host", 256),
                  ("udp", "cell->host", 1024)}
    matrix = []
    if "matrix" not in skip:
        for proto in ("tcp", "udp"):
            for d in DIRS:
                if a.tests and f"{proto}:{d}" not in a.tests.split(","):
                    continue
                for s in sizes:
                    r, t = (200, 1) if a.full and (proto, d, s) in seed_tests else (reps, secs)
                    matrix.append((proto, d, s, r, t))
    sweep = [] if "sweep" in skip else [(d, r) for d in DIRS for r in rates]
    # The steps, then the full profile (the main ivnet image: prj.conf as shipped).
    tun_rows = [] if "tuning" in skip else TUNING + [("full", "full ivnet profile (prj.conf)", None)]
    v2_tests = [] if "v2" in skip else [(p, d, s) for p, s in (("tcp", 1460), ("udp", 1024)) for d in DIRS]
    if v2_tests and not h.qemu_v2():
        raise SystemExit("phase v2 needs the project's QEMU (scripts/qemu-build.sh); or --skip v2")
    total = (2 * sum(m[3] for m in matrix) + 2 * len(sweep) * (3 if a.full else 1)
             + 2 * len(v2_tests) * reps + (0 if not v2_tests else 4 * reps)
             + (2 if v2_tests and "profile" not in skip else 0)
             + (0 if "ping" in skip else 2) + (0 if "cc" in skip else 2 * reps)
             + len(tun_rows) * 4 + (0 if "profile" in skip else 2))

    # ---- builds
    log("building images (zperf sample; incremental when already built)")
    prj = ROOT / "prj.conf"
    elfs = {"ivnet": build("ivnet", "ivnet", [prj], out),
            "virtio": build("virtio", "virtio-net-baseline", [prj], out)}
    tun_elfs = {}
    for key, _label, frags in tun_rows:
        if frags is None:
            tun_elfs[key] = elfs["ivnet"]
            continue
        files = [TUNING_DIR / f for f in frags]
        if conf_settings(files) == conf_settings([prj]):
            tun_elfs[key] = elfs["ivnet"]  # exactly the main image's settings: no second build
            continue
        tun_elfs[key] = build(f"tune-{key}", "ivnet", files, out)
    if v2_tests:
        elfs["ivnet-v2"] = build("ivnet-v2", "ivnet-v2", [prj], out)
        elfs["c-v2"] = build("c-v2", "ivshmem2-eth", [prj], out)
    log(f"builds done in {(time.time() - t_start) / 60:.1f} min")
    if a.build_only:
        return 0

    rec = Recorder(out, total)
    profiles = {}
    qemu_lines = {}
    with h.Stack() as st:
        wd = st.push(h.Workdir("ivbench"))
        envs = {k: st.push(Env(k, wd.path, st)) for k in ("virtio", "ivnet")}
        for k, e in envs.items():
            e.boot(elfs[k])
            qemu_lines[k] = " ".join(e.vm.cmdline)
        # Alternate the drivers sample by sample.
        for proto, d, s, r, t in matrix:
            for rep in range(r):
                for k in ("virtio", "ivnet"):
                    measure(envs[k], rec, k, "size", proto, d, s, a.udp_rate, rep, t)
        for d, rate in sweep:
            for rep in range(3 if a.full else 1):
                for k in ("virtio", "ivnet"):
                    measure(envs[k], rec, k, "sweep", "udp", d, 1024, rate, rep, secs)
        if "ping" not in skip:
            for k in ("virtio", "ivnet"):
                base = dict(driver=k, image=k, test="ping", proto="icmp", direction="host->cell", size=56,
                            offered_mbit="", rep=0, seconds="")
                try:
                    rtts = ping_sample(envs[k], 1000 if a.full else 300)
                    for i, x in enumerate(rtts):
                        rec.add(**{**base, "rep": i}, metric="rtt_ms", value=f"{x:.3f}")
                    txt = f"{len(rtts)} replies, median {sorted(rtts)[len(rtts) // 2]:.2f} ms"
                except Exception as e:
                    rec.add(**base, metric="rtt_ms", value="", error=str(e)[:120])
                    txt = f"ERROR {e}"
                rec.step(f"{k:6} ping: {txt}")
        if "profile" not in skip:
            for k in ("virtio", "ivnet"):
                try:
                    profiles[k] = profile(envs[k], max(6, secs), wd.path)
                    p = profiles[k]
                    txt = (f"{p['insns']} guest instructions logged, {p['mbit']:.1f} Mbit/s; interrupt "
                           f"raised -> acknowledged p50 {p['irq_p50']:.0f} us")
                except Exception as e:
                    txt = f"ERROR {e}"
                rec.step(f"{k:6} profile (tcp host->cell): {txt}")
        envs["virtio"].shutdown()
        # Tuning table: ivnet with each configuration step; the virtio row is the main image.
        for key, _label, _f in tun_rows:
            env = envs["ivnet"]
            if tun_elfs[key] != env.elf:
                env.boot(tun_elfs[key])
            for proto, d, s in (("tcp", "host->cell", 1460), ("tcp", "cell->host", 1460),
                                ("udp", "host->cell", 1024), ("udp", "cell->host", 1024)):
                measure(env, rec, f"tune-{key}", "tuning", proto, d, s, a.udp_rate, 0, max(2, secs))
        envs["ivnet"].shutdown()
        if "cc" not in skip:
            cell_cell(wd.path, elfs["ivnet"], rec, reps, max(2, secs), a.udp_rate)
        if v2_tests:
            # ivshmem 2.0: ivnet and Zephyr's C driver on the same device, alternating.
            v2envs = {k: st.push(Env(k, wd.path, st)) for k in V2_KINDS}
            for k, e in v2envs.items():
                e.boot(elfs[k])
                qemu_lines[k] = " ".join(e.vm.cmdline)
            for proto, d, s in v2_tests:
                for rep in range(reps):
                    for k in V2_KINDS:
                        measure(v2envs[k], rec, k, "v2", proto, d, s, a.udp_rate, rep, max(2, secs))
            if "profile" not in skip:
                for k in V2_KINDS:
                    try:
                        profiles[k] = profile(v2envs[k], max(6, secs), wd.path)
                        txt = f"{profiles[k]['insns']} guest instructions logged"
                    except Exception as e:
                        txt = f"ERROR {e}"
                    rec.step(f"{k:6} profile (tcp host->cell): {txt}")
            for e in v2envs.values():
                e.shutdown()
            for k in V2_KINDS:
                cell_cell(wd.path, elfs[k], rec, reps, max(2, secs), a.udp_rate, kind=k)

    micro = None
    if "micro" not in skip:
        micro = run_micro()
    info = machine_info()
    info["elapsed"] = f"{(time.time() - t_start) / 60:.1f} min"
    (out / "config" / "qemu.txt").write_text("\n".join(f"{k}: {v}" for k, v in qemu_lines.items()) + "\n")
    import bench_report
    md = bench_report.write(out, rec.rows, dict(info=info, profiles=profiles, micro=micro,
                                                  tuning=[(k, lab) for k, lab, _ in tun_rows],
                                                  udp_rate=a.udp_rate, reps=reps, secs=secs,
                                                  full=a.full, qemu=qemu_lines))
    log(f"\nreport: {out / 'report.md'}  ({(time.time() - t_start) / 60:.1f} min in all)\n")
    print(md.split("## Tuning")[0])
    return 0


def run_micro() -> dict | None:
    """The host microbenchmark of the protocol core (`ivnet bench-core`)."""
    try:
        r = subprocess.run([str(h.ivnet_bin()), "bench-core"], capture_output=True, text=True, timeout=120)
    except Exception as e:
        log(f"  microbenchmark: {e}")
        return None
    res = []
    for line in r.stdout.splitlines():
        if line.startswith("RESULT "):
            res.append(dict(kv.split("=", 1) for kv in line.split()[1:]))
    log(f"  microbenchmark: {len(res)} figures")
    return {"results": res, "text": r.stdout + r.stderr, "rc": r.returncode}


if __name__ == "__main__":
    sys.exit(main())
