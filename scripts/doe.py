"""The stress study: the design of experiments of the system ivnet grew from, on ivnet and
Zephyr's virtio-net side by side, and again with ivnet's resource isolation on.

  scripts/doe.sh --quick     3 replicates x 2 s samples (under 20 minutes with the builds)
  scripts/doe.sh             5 replicates x 5 s samples (the default; about 35 minutes)

Factors: stress class (none, cpu, vm, net, irq: stress-ng on every core of this machine, which
runs the QEMUs, the host peers and the traffic's far end, as the original's root cell did) x
driver (ivnet, virtio-net) x isolation (off, on). Responses, measured for both drivers in every
run: the original's two workloads, TCP 256 B and UDP 1024 B uploads cell -> host (zperf ->
iperf 2), plus a TCP download host -> cell and the ping RTT.

Runs: one stress condition and one replicate is a run; within it both drivers are measured, in
a random order. The isolation factor is a block (its VMs are booted once per block, inside or
outside the control group), with the two blocks in a random order and the runs shuffled within
each; the seed and the order are recorded.

Isolation "on" runs the whole measuring side (both drivers' QEMUs, ivnet's link servers and host
peers, and the iperf/ping end on the host) under `ivnet isolate` with the settings of a
topology's `[host] isolation` (the same code), while the stressors stay outside: ivnet's group
is the only thing the study changes. Stressors run with --timeout and are stopped after each run;
network stress runs only inside a namespace the study makes (loopback). The study checks the
machine is left as it found it (namespaces, links, control groups, processes) and says so.

Output (--out): samples.csv, report.md with the original's tables beside ours, the two-way and
isolation analyses, PNG plots, plan.json (order and seed) and config/ (images, command lines).
"""

from __future__ import annotations

import argparse
import csv
import datetime
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE / "pylib"))
sys.path.insert(0, str(HERE))
import ivnet_harness as h  # noqa: E402

ROOT = h.ROOT
CLASSES = ("none", "cpu", "vm", "net", "irq")
DRIVERS = ("ivnet", "virtio")
# Responses: (key, proto, direction, payload size).
WORKLOADS = (("tcp256_up", "tcp", "cell->host", 256), ("udp1024_up", "udp", "cell->host", 1024),
             ("tcp1460_down", "tcp", "host->cell", 1460))
STRESS_NS = "ivdoe-stress"
DEFAULT_ISOLATION = {"cpu_weight": 10000, "memory_min": "256M"}
FIELDS = ["order", "block", "isolation", "stress", "rep", "driver", "response", "value", "loss_pct",
          "p99_ms", "error", "t"]
# Where the time went during each sample, per second of it (see probe()).
PROBES = ["qemu_cpu_ms", "qemu_wait_ms", "peer_cpu_ms", "peer_wait_ms", "irq_ms", "softirq_ms", "steal_ms",
          "qemu_preempt", "intr", "ctxt"]
FIELDS += PROBES


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# ---- stressors ---------------------------------------------------------------------------

def mem_available() -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no MemAvailable in /proc/meminfo")


def stressor_commands(bound_s: int) -> dict[str, list[str]]:
    """The stress-ng command line of each class, sized to this machine. Every one has a
    --timeout (`bound_s`), on top of being stopped after its run."""
    n = os.cpu_count() or 1
    # A quarter of the memory available now, split between the workers, at most 2 GiB each:
    # pressure and page faults without endangering the machine (no swap is assumed).
    per = min(2 << 30, mem_available() // 4 // n) >> 20
    t = ["--timeout", f"{bound_s}s", "--metrics-brief"]
    return {
        "cpu": ["stress-ng", "--cpu", str(n), "--cpu-method", "all", *t],
        "vm": ["stress-ng", "--vm", str(n), "--vm-bytes", f"{per}M", "--vm-method", "all", *t],
        "net": ["ip", "netns", "exec", STRESS_NS, "stress-ng", "--sock", str(n), "--sock-port", "23000", *t],
        "irq": ["stress-ng", "--timer", str(n), "--timer-freq", "1000000", *t],
    }


class Stressor:
    """One class's stress-ng, in its own process group, stopped by stop()."""

    def __init__(self, cls: str, cmd: list[str], logf: Path):
        self.cls, self.cmd = cls, cmd
        self.p = subprocess.Popen(cmd, stdout=open(logf, "ab"), stderr=subprocess.STDOUT,
                                  start_new_session=True)

    def stop(self) -> None:
        if self.p.poll() is None:
            os.killpg(self.p.pid, signal.SIGTERM)
            try:
                self.p.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(self.p.pid, signal.SIGKILL)
                self.p.wait()
        # stress-ng's workers are in its process group: none may outlive it.
        for _ in range(100):
            if not stress_pids():
                return
            time.sleep(0.05)
        for pid in stress_pids():
            os.kill(pid, signal.SIGKILL)


def stress_pids() -> list[int]:
    r = subprocess.run(["pgrep", "-x", "stress-ng"], capture_output=True, text=True)
    return [int(x) for x in r.stdout.split()]


# ---- the machine, before and after -----------------------------------------------------

def machine_state() -> dict:
    def run(cmd):
        return subprocess.run(cmd, capture_output=True, text=True).stdout
    return {
        "namespaces": sorted(line.split()[0] for line in run(["ip", "netns", "list"]).splitlines() if line),
        "links": sorted(link["ifname"] for link in json.loads(run(["ip", "-j", "link"]) or "[]")),
        "ivnet cgroups": h.ivnet_cgroups(),
        "stress-ng processes": stress_pids(),
        "qemu processes": sorted(p for p in run(["ps", "-eo", "args"]).splitlines() if "qemu-system" in p),
    }


# ---- the worker: the measuring side (inside the group when isolation is on) ---------------

def task_times(pid: int | None) -> tuple[float, float, int]:
    """(CPU time, time runnable but waiting for a CPU, in ms; involuntary context switches) of
    all threads of `pid` (/proc/<pid>/task/*/schedstat and status)."""
    cpu = wait = 0.0
    preempt = 0
    if not pid:
        return cpu, wait, preempt
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return cpu, wait, preempt
    for t in tasks:
        try:
            f = Path(f"/proc/{pid}/task/{t}/schedstat").read_text().split()
            st = Path(f"/proc/{pid}/task/{t}/status").read_text()
        except OSError:
            continue
        cpu += int(f[0]) / 1e6
        wait += int(f[1]) / 1e6
        preempt += sum(int(line.split()[1]) for line in st.splitlines()
                       if line.startswith("nonvoluntary_ctxt_switches"))
    return cpu, wait, preempt


def probe(env) -> dict:
    """Cumulative counters: the VM's QEMU and the host peer (CPU time and run-queue wait, from
    the scheduler's statistics; QEMU's involuntary context switches), and the machine's
    interrupt, softirq and steal time in ms, interrupts and context switches (/proc/stat),
    with the wall clock."""
    q = task_times(env.vm.proc.pid if env.vm else None)
    p = task_times(env.peer.proc.pid if env.peer and env.peer.proc else None)
    lines = Path("/proc/stat").read_text().splitlines()
    f = lines[0].split()[1:]
    count = {line.split()[0]: int(line.split()[1]) for line in lines if line.startswith(("intr ", "ctxt "))}
    tick = 1000.0 / os.sysconf("SC_CLK_TCK")
    return {"t": time.monotonic() * 1000, "qemu_cpu_ms": q[0], "qemu_wait_ms": q[1], "peer_cpu_ms": p[0],
            "peer_wait_ms": p[1], "irq_ms": int(f[5]) * tick, "softirq_ms": int(f[6]) * tick,
            "steal_ms": int(f[7]) * tick, "qemu_preempt": q[2], "intr": count.get("intr", 0),
            "ctxt": count.get("ctxt", 0)}


def rates(a: dict, b: dict) -> dict:
    """Per second of wall clock between two probes (ms per second for the times)."""
    dt = max(1e-3, (b["t"] - a["t"]) / 1000)
    return {k: f"{(b[k] - a[k]) / dt:.1f}" for k in PROBES}


def worker(plan_path: Path) -> int:
    """Boots both drivers' VMs, and for each run of its block asks the controller (on stdout)
    for the run's stress, measures, and asks it to stop the stress. Samples go to the CSV."""
    import bench  # the benchmark's VM and traffic helpers
    # The controller's channel is the real stdout; everything else printed goes to stderr.
    chan = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    plan = json.loads(plan_path.read_text())
    out = Path(plan["out"])
    secs, pings = plan["seconds"], plan["pings"]
    f = open(out / "samples.csv", "a", newline="")
    w = csv.DictWriter(f, FIELDS)
    rng = random.Random(plan["seed"] + plan["block"])

    def ask(msg: dict) -> str:
        print(json.dumps(msg), file=chan, flush=True)
        return sys.stdin.readline().strip()

    with h.Stack() as st:
        wd = st.push(h.Workdir(f"ivdoe-{plan['isolation']}"))
        envs = {k: st.push(bench.Env(k, wd.path, st)) for k in DRIVERS}
        for k, e in envs.items():
            e.boot(Path(plan["elfs"][k]))
            (out / "config" / f"qemu-{k}-{plan['isolation']}.txt").write_text(" ".join(e.vm.cmdline) + "\n")
        # Where the measuring side runs: recorded as evidence of the isolation.
        (out / "config" / f"cgroup-{plan['isolation']}.txt").write_text(
            "".join(f"{k} (pid {e.vm.proc.pid}):\n{h.cgroup_of(e.vm.proc.pid)}\n" for k, e in envs.items()))
        for run in plan["runs"]:
            if ask({"stress": run["stress"]}) != "ready":
                raise SystemExit("controller did not start the stress")
            order = list(DRIVERS)
            rng.shuffle(order)
            for k in order:
                env = envs[k]
                base = dict(order=run["order"], block=plan["block"], isolation=plan["isolation"],
                            stress=run["stress"], rep=run["rep"], driver=k)

                def blank(response: str) -> dict:
                    return dict(base, response=response, value="", loss_pct="", p99_ms="", error="",
                                t=round(time.time(), 1))

                def why(e: Exception) -> str:
                    return " ".join(str(e).split())[:200] or type(e).__name__
                for key, proto, direction, size in WORKLOADS:
                    row = blank(key)
                    try:
                        env.ensure()
                        p0 = probe(env)
                        r = bench.run_sample(env, proto, direction, size, secs, plan["udp_rate"])
                        row.update(rates(p0, probe(env)))
                        row["value"] = f"{r['mbit']:.4f}"
                        if "loss_pct" in r:
                            row["loss_pct"] = f"{r['loss_pct']:.3f}"
                    except Exception as e:
                        row["error"] = why(e)
                        try:
                            env.boot(env.elf)
                        except Exception as e2:
                            log(f"  ({k}: reboot failed: {e2})")
                            env.shutdown()
                    w.writerow(row)
                    f.flush()
                    log(f"  #{run['order']:3} {plan['isolation']:3} {run['stress']:4} {k:6} {key:12} "
                        + (f"{float(row['value']):8.2f} Mbit/s" if row["value"] else f"ERROR {row['error']}"))
                row = blank("ping_ms")
                try:
                    env.ensure()
                    p0 = probe(env)
                    rtts = sorted(bench.ping_sample(env, pings))
                    row.update(rates(p0, probe(env)))
                    row["value"] = f"{rtts[len(rtts) // 2]:.4f}"
                    row["p99_ms"] = f"{rtts[min(len(rtts) - 1, int(len(rtts) * 0.99))]:.4f}"
                except Exception as e:
                    row["error"] = why(e)
                w.writerow(row)
                f.flush()
            if ask({"unstress": run["stress"]}) != "ok":
                raise SystemExit("controller did not stop the stress")
    print(json.dumps({"done": plan["block"]}), file=chan, flush=True)
    return 0


# ---- the controller --------------------------------------------------------------------

def run_block(plan: dict, plan_path: Path, iso: dict | None, cmds: dict, out: Path, warmup: float,
              bound_s: int) -> None:
    me = [sys.executable, str(Path(__file__).resolve()), "--worker", str(plan_path)]
    if iso:
        wrap = [str(h.ivnet_bin()), "isolate", "--name", "doe"]
        for k, v in iso.items():
            wrap += [f"--{k.replace('_', '-')}", str(v)]
        me = wrap + ["--"] + me
    (out / "config" / f"worker-{plan['isolation']}.txt").write_text(" ".join(me) + "\n")
    p = subprocess.Popen(me, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    stressor = None
    try:
        for line in p.stdout:
            msg = json.loads(line)
            if "stress" in msg:
                cls = msg["stress"]
                if cls != "none":
                    stressor = Stressor(cls, cmds[cls], out / "stress-ng.log")
                    time.sleep(warmup)
                    if stressor.p.poll() is not None:
                        raise SystemExit(f"stress-ng ({cls}) ended early: see {out / 'stress-ng.log'}")
                else:
                    time.sleep(warmup)
                p.stdin.write("ready\n")
                p.stdin.flush()
            elif "unstress" in msg:
                if stressor:
                    stressor.stop()
                    stressor = None
                time.sleep(0.5)
                p.stdin.write("ok\n")
                p.stdin.flush()
            elif "done" in msg:
                break
        rc = p.wait(120)
        if rc:
            raise SystemExit(f"the {plan['isolation']} block's worker failed ({rc})")
    finally:
        if stressor:
            stressor.stop()
        if p.poll() is None:
            p.terminate()
            try:
                p.wait(30)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()


def parse_isolation(text: str) -> dict:
    """`cpu_weight=1000,memory_min=256M[,cpus=0-1]`, checked by `ivnet isolate` itself."""
    out = {}
    for part in filter(None, text.split(",")):
        k, _, v = part.partition("=")
        if k not in ("cpu_weight", "cpus", "memory_min") or not v:
            raise SystemExit(f"--isolation: {part!r}: use cpu_weight=N, cpus=LIST, memory_min=SIZE")
        out[k] = v
    return out


def main() -> int:
    signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="3 replicates x 2 s samples (under 20 minutes)")
    ap.add_argument("--reps", type=int, help="replicates per stress class and isolation (default 5; quick 3)")
    ap.add_argument("--seconds", type=int, help="length of each throughput sample (default 5; quick 2)")
    ap.add_argument("--pings", type=int, default=100, help="pings per RTT sample (10 ms apart)")
    ap.add_argument("--udp-rate", type=float, default=300, help="offered UDP rate, Mbit/s (a capacity test)")
    ap.add_argument("--isolation", default=",".join(f"{k}={v}" for k, v in DEFAULT_ISOLATION.items()),
                    help="the isolation block's settings, as a topology's [host] isolation: "
                         "cpu_weight=N,cpus=LIST,memory_min=SIZE (default %(default)s)")
    ap.add_argument("--classes", default=",".join(CLASSES), help="stress classes (default: all)")
    ap.add_argument("--blocks", default="off,on", help="isolation blocks to run (default off,on)")
    ap.add_argument("--seed", type=int, help="random seed of the run order (default: from the clock)")
    ap.add_argument("--warmup", type=float, default=2.0, help="seconds of stress before measuring")
    ap.add_argument("--out", type=Path, help="report directory (default doe-out/<date>)")
    ap.add_argument("--analyse", type=Path, metavar="DIR", help="only (re)write the report of a finished study in DIR")
    ap.add_argument("--worker", type=Path, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.worker:
        return worker(a.worker)
    import doe_report
    if a.analyse:
        doe_report.write(a.analyse)
        return 0

    import bench
    reps = a.reps or (3 if a.quick else 5)
    secs = a.seconds or (2 if a.quick else 5)
    classes = [c for c in a.classes.split(",") if c]
    for c in classes:
        if c not in CLASSES:
            raise SystemExit(f"--classes: unknown class {c!r} (known: {', '.join(CLASSES)})")
    blocks = [b for b in a.blocks.split(",") if b]
    if not blocks or any(b not in ("off", "on") for b in blocks):
        raise SystemExit("--blocks: off, on or both")
    iso = parse_isolation(a.isolation)
    seed = a.seed if a.seed is not None else int(time.time())
    rng = random.Random(seed)
    out = a.out or ROOT / "doe-out" / datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    (out / "config").mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    log(f"ivnet stress study -> {out}")
    before = machine_state()
    if before["stress-ng processes"]:
        raise SystemExit(f"stress-ng is already running here (pids {before['stress-ng processes']}): "
                         "the study would measure it too")
    # A bound on each stressor's life: the longest a run can take, with room.
    per_run = 2 * (len(WORKLOADS) * (secs + 8) + a.pings * 0.05 + 10) + a.warmup
    bound_s = int(per_run * 2 + 60)
    cmds = stressor_commands(bound_s)

    log("building images (zperf sample; incremental when already built)")
    prj = ROOT / "prj.conf"
    elfs = {"ivnet": str(bench.build("ivnet", "ivnet", [prj], out)),
            "virtio": str(bench.build("virtio", "virtio-net-baseline", [prj], out))}
    t_built = time.time()

    rng.shuffle(blocks)
    plans = []
    order = 0
    for bi, b in enumerate(blocks):
        runs = [{"stress": c, "rep": r} for c in classes for r in range(reps)]
        rng.shuffle(runs)
        for r in runs:
            order += 1
            r["order"] = order
        plans.append({"block": bi, "isolation": b, "runs": runs, "elfs": elfs, "seconds": secs,
                      "pings": a.pings, "udp_rate": a.udp_rate, "seed": seed, "out": str(out)})
    meta = {"seed": seed, "quick": a.quick, "reps": reps, "seconds": secs, "pings": a.pings,
            "udp_rate": a.udp_rate, "warmup_s": a.warmup, "classes": classes, "blocks": blocks,
            "isolation": iso, "stressors": cmds, "stress_bound_s": bound_s,
            "stress_ng": subprocess.run(["stress-ng", "--version"], capture_output=True, text=True).stdout.strip(),
            "cgroup": "v2" if (h.CGROUP_ROOT / "cgroup.controllers").exists() else "v1",
            "info": bench.machine_info(), "plans": plans}
    (out / "plan.json").write_text(json.dumps(meta, indent=1))
    total = sum(len(p["runs"]) for p in plans)
    log(f"{total} runs ({len(classes)} classes x {reps} replicates x blocks {' then '.join(blocks)}), "
        f"{secs} s samples, seed {seed}")

    with open(out / "samples.csv", "w", newline="") as f:
        csv.DictWriter(f, FIELDS).writeheader()
    subprocess.run(["ip", "netns", "add", STRESS_NS], check=True)
    try:
        subprocess.run(["ip", "-n", STRESS_NS, "link", "set", "lo", "up"], check=True)
        for p in plans:
            ppath = out / f"plan-{p['isolation']}.json"
            ppath.write_text(json.dumps(p, indent=1))
            log(f"block {p['block'] + 1}/{len(plans)}: isolation {p['isolation']}")
            run_block(p, ppath, iso if p["isolation"] == "on" else None, cmds, out, a.warmup, bound_s)
    finally:
        for pid in stress_pids():
            os.kill(pid, signal.SIGKILL)
        subprocess.run(["ip", "netns", "del", STRESS_NS], check=False)
    time.sleep(1)
    after = machine_state()
    diff = {k: (before[k], after[k]) for k in before if before[k] != after[k]}
    meta.update(elapsed_min=round((time.time() - t0) / 60, 1), build_min=round((t_built - t0) / 60, 1),
                machine_before=before, machine_after=after, machine_diff=diff)
    meta["info"]["elapsed"] = f"{meta['elapsed_min']} min"
    (out / "plan.json").write_text(json.dumps(meta, indent=1))
    doe_report.write(out)
    log(f"report: {out / 'report.md'} ({meta['elapsed_min']} min)")
    if diff:
        log(f"THE MACHINE IS NOT AS BEFORE: {diff}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
