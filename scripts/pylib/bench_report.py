"""The benchmark's analysis: statistics (scipy, statsmodels), plots (matplotlib) and the markdown
report, from the samples scripts/bench.py recorded."""

from __future__ import annotations

import math
import re
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from scipy import stats  # noqa: E402
from statsmodels.graphics.gofplots import qqplot  # noqa: E402

TARGET = 1.5
DRIVERS = ("virtio", "ivnet")
COLORS = {"virtio": "#888888", "ivnet": "#1f77b4"}
LABEL = {"virtio": "virtio-net", "ivnet": "ivnet"}


class Summary:
    """n, mean, sample stddev and the 95 % confidence interval of the mean (Student's t)."""

    def __init__(self, values):
        self.v = np.asarray([x for x in values if not math.isnan(x)], dtype=float)
        self.n = len(self.v)
        self.mean = float(self.v.mean()) if self.n else math.nan
        self.sd = float(self.v.std(ddof=1)) if self.n > 1 else math.nan
        if self.n > 1 and self.sd > 0:
            self.lo, self.hi = stats.t.interval(0.95, self.n - 1, loc=self.mean, scale=stats.sem(self.v))
        else:
            self.lo = self.hi = self.mean

    def fmt(self, digits: int = 1) -> str:
        if not self.n:
            return "-"
        f = f"{{:.{digits}f}}"
        sd = f.format(self.sd) if self.n > 1 else "-"
        return f"{f.format(self.mean)} ± {sd} [{f.format(self.lo)}, {f.format(self.hi)}]"


def _num(x):
    try:
        return float(x)
    except (TypeError, ValueError):
        return math.nan


def group(rows, **where):
    """Values of the rows matching every key in `where` (errors excluded)."""
    out = []
    for r in rows:
        if all(str(r[k]) == str(v) for k, v in where.items()) and not r.get("error"):
            out.append(_num(r["value"]))
    return out


def errors(rows, **where):
    return sum(1 for r in rows if all(str(r[k]) == str(v) for k, v in where.items()) and r.get("error"))


def write(out: Path, rows: list[dict], meta: dict) -> str:
    md = []
    info = meta["info"]
    mode = "full (--full)" if meta["full"] else "quick"
    md.append("# ivnet vs virtio-net: capacity benchmark\n")
    md.append(f"{info['date']} on {info['host']}. Mode: {mode}; {meta['reps']} samples x "
              f"{meta['secs']} s per test unless noted; UDP offered at {meta['udp_rate']:g} Mbit/s in "
              f"the size matrix. Both drivers run Zephyr's samples/net/zperf with ivnet's prj.conf on "
              f"qemu_cortex_a53 (TCG); iperf 2 in a network namespace; samples alternate between the "
              f"drivers. Took {info['elapsed']}.\n")
    checks = []
    md += ratio_section(rows, checks)
    md += latency_section(rows, checks)
    md += cell_cell_section(rows, checks)
    md += v2_section(rows, checks, meta.get("profiles") or {})
    md.insert(2, target_section(checks) + gap_section(checks, rows, meta.get("profiles") or {}))
    md += sweep_section(rows)
    md += tuning_section(rows, meta)
    md += profile_section(meta.get("profiles") or {})
    md += micro_section(meta.get("micro"))
    md += distribution_section(rows)
    plots = make_plots(out, rows, meta)
    md.append("## Plots\n")
    for p in plots:
        md.append(f"![{p}]({p})\n")
    md += config_section(out, meta)
    text = "\n".join(md)
    (out / "report.md").write_text(text)
    return text


def target_section(checks) -> str:
    ok = sum(1 for c in checks if c[1])
    lines = [f"## Target: {ok} of {len(checks)} checks met\n",
             "| check | measured | met |", "|---|---|---|"]
    for name, passed, what in checks:
        lines.append(f"| {name} | {what} | {'yes' if passed else '**no**'} |")
    return "\n".join(lines) + "\n"


def gap_section(checks, rows, profiles) -> str:
    """For each missed check, what the profile data of this run says about it."""
    missed = [c for c in checks if not c[1]]
    if not missed:
        return ""
    out = ["\n### Where the target is missed, and why (from this run's profile)\n"]
    for name, _ok, what in missed:
        line = f"- **{name}** ({what})."
        if name.startswith("ping") and all(k in profiles for k in DRIVERS):
            pi, pv = profiles["ivnet"], profiles["virtio"]
            line += (f" Interrupt delivery alone, raised -> acknowledged by the guest, takes p50 "
                     f"{pi['irq_p50']:.0f} us for ivnet's MSI-X (an LPI through QEMU's emulated GICv3 ITS) "
                     f"against {pv['irq_p50']:.0f} us for virtio-mmio's wired interrupt: "
                     f"{pi['irq_p50'] - pv['irq_p50']:.0f} us per interrupt, one per ping. A wired "
                     f"interrupt (ivshmem 2.0's INTx, as under Jailhouse) or a faster LPI path in QEMU "
                     f"would remove it; QEMU's ivshmem-doorbell offers only MSI-X.")
        elif "ivnet" in profiles and not any(o.startswith("- throughput") for o in out):
            p = profiles["ivnet"]
            vcpu = max((c for t, c in p["host"] if t.startswith("qemu: CPU")),
                       default=max((c for t, c in p["host"] if t.startswith("qemu")), default=float("nan")))
            top = ", ".join(f"`{f}` {c:.0f} %" for f, c in p["guest"][:4])
            names = "; ".join(f"{n} ({w})" for n, _o, w in missed if not n.startswith("ping"))
            line = (f"- throughput: **{names}**. The guest is CPU-bound: QEMU's vCPU thread ran at {vcpu:.0f} % "
                     f"of a core during the TCP profile, the host peer at "
                     f"{sum(c for t, c in p['host'] if t.startswith('ivnet')):.0f} %. The guest's "
                     f"instructions go mostly to Zephyr's stack and libc ({top}); fewer instructions "
                     f"per frame in the stack, or a faster emulated CPU, move these figures.")
        else:
            continue
        out.append(line)
    return "\n".join(out) + "\n"


def ratio_section(rows, checks) -> list[str]:
    md = ["## Ratio table (throughput, Mbit/s: mean ± stddev [95 % CI])\n",
          "| test | size B | virtio-net | ivnet | ivnet / virtio | Welch p | errors |",
          "|---|---|---|---|---|---|---|"]
    tests = sorted({(r["proto"], r["direction"], int(r["size"])) for r in rows if r["test"] == "size"},
                   key=lambda t: (t[0], t[1], t[2]))
    for proto, d, size in tests:
        s = {k: Summary(group(rows, test="size", driver=k, proto=proto, direction=d, size=size, metric="mbit"))
             for k in DRIVERS}
        ratio = s["ivnet"].mean / s["virtio"].mean if s["virtio"].mean else math.nan
        p = "-"
        if s["ivnet"].n > 1 and s["virtio"].n > 1:
            p = f"{stats.ttest_ind(s['ivnet'].v, s['virtio'].v, equal_var=False).pvalue:.3g}"
        err = sum(errors(rows, test="size", driver=k, proto=proto, direction=d, size=size) for k in DRIVERS)
        md.append(f"| {proto.upper()} {d} | {size} | {s['virtio'].fmt()} | {s['ivnet'].fmt()} | "
                  f"**{ratio:.2f}x** | {p} | {err} |")
        checks.append((f"{proto.upper()} {d} {size} B >= {TARGET}x", ratio >= TARGET, f"{ratio:.2f}x"))
        if proto == "udp":
            lv = Summary(group(rows, test="size", driver="virtio", proto=proto, direction=d, size=size,
                               metric="loss_pct"))
            li = Summary(group(rows, test="size", driver="ivnet", proto=proto, direction=d, size=size,
                               metric="loss_pct"))
            if lv.n and li.n:
                checks.append((f"UDP {d} {size} B loss not above virtio's", li.mean <= lv.mean + 1e-9,
                               f"{li.mean:.2f} % vs {lv.mean:.2f} %"))
    md.append("")
    md.append("UDP loss in the size matrix (%, mean over samples):\n")
    md.append("| direction | size B | virtio-net | ivnet |")
    md.append("|---|---|---|---|")
    for proto, d, size in tests:
        if proto != "udp":
            continue
        lv = Summary(group(rows, test="size", driver="virtio", proto="udp", direction=d, size=size, metric="loss_pct"))
        li = Summary(group(rows, test="size", driver="ivnet", proto="udp", direction=d, size=size, metric="loss_pct"))
        md.append(f"| {d} | {size} | {lv.fmt(2)} | {li.fmt(2)} |")
    md.append("")
    return md


def latency_section(rows, checks) -> list[str]:
    r = {k: np.asarray(group(rows, test="ping", driver=k, metric="rtt_ms")) for k in DRIVERS}
    if not all(len(v) for v in r.values()):
        return []
    md = ["## Ping RTT, namespace -> cell (ms)\n", "| driver | n | p50 | p90 | p99 | mean |", "|---|---|---|---|---|---|"]
    pct = {}
    for k in DRIVERS:
        v = r[k]
        pct[k] = np.percentile(v, [50, 90, 99])
        md.append(f"| {LABEL[k]} | {len(v)} | {pct[k][0]:.3f} | {pct[k][1]:.3f} | {pct[k][2]:.3f} | {v.mean():.3f} |")
    for i, q in ((0, "p50"), (2, "p99")):
        checks.append((f"ping RTT {q} not above virtio's", pct["ivnet"][i] <= pct["virtio"][i],
                       f"{pct['ivnet'][i]:.3f} vs {pct['virtio'][i]:.3f} ms"))
    md.append("")
    return md


def cell_cell_section(rows, checks) -> list[str]:
    md = []
    for proto, size in (("tcp", 1460), ("udp", 1024)):
        cc = Summary(group(rows, test="cell<->cell", proto=proto, metric="mbit"))
        if not cc.n:
            continue
        vb = Summary(group(rows, test="size", driver="virtio", proto=proto, direction="cell->host", size=size,
                           metric="mbit"))
        if not md:
            md = ["## Cell <-> cell (two ivnet VMs on one link) vs virtio-net cell -> host\n",
                  "| test | ivnet cell<->cell | virtio cell->host | ratio |", "|---|---|---|---|"]
        ratio = cc.mean / vb.mean if vb.n and vb.mean else math.nan
        md.append(f"| {proto.upper()} {size} B | {cc.fmt()} | {vb.fmt()} | **{ratio:.2f}x** |")
        checks.append((f"{proto.upper()} cell<->cell >= {TARGET}x virtio cell->host", ratio >= TARGET, f"{ratio:.2f}x"))
    return md + [""] if md else []


V2_TARGET = 2.0


def v2_section(rows, checks, profiles) -> list[str]:
    """ivshmem 2.0: ivnet and Zephyr's C eth_ivshmem on the same device (phase v2)."""
    if not any(r["test"] in ("v2", "v2 cell<->cell") for r in rows):
        return []
    md = ["## ivshmem 2.0: ivnet vs Zephyr's C eth_ivshmem\n",
          "The same zperf image (this prj.conf) built with `-S ivnet-v2` and with `-S ivshmem2-eth` "
          "(Zephyr's own driver, unmodified), on the project's QEMU device `ivshmem2` (MSI-X), "
          "served by `ivnet server --ivshmem 2`; against the host peer (`ivnet peer`, TAP, iperf 2) "
          "and cell<->cell (two VMs of the same image on one link). Mbit/s, mean ± sd [95 % CI].\n",
          "| test | size B | C eth_ivshmem | ivnet | ivnet / C | Welch p | errors |",
          "|---|---|---|---|---|---|---|"]
    keys = sorted({(r["proto"], r["direction"], int(r["size"]), r["test"]) for r in rows
                   if r["test"] in ("v2", "v2 cell<->cell")}, key=lambda k: (k[3], k[0], k[1]))
    for proto, d, size, test in keys:
        s = {k: Summary(group(rows, test=test, driver=k, proto=proto, direction=d, size=size, metric="mbit"))
             for k in ("c-v2", "ivnet-v2")}
        ratio = s["ivnet-v2"].mean / s["c-v2"].mean if s["c-v2"].n and s["c-v2"].mean else math.nan
        p = "-"
        if s["ivnet-v2"].n > 1 and s["c-v2"].n > 1:
            p = f"{stats.ttest_ind(s['ivnet-v2'].v, s['c-v2'].v, equal_var=False).pvalue:.3g}"
        err = sum(errors(rows, test=test, driver=k, proto=proto, direction=d, size=size) for k in ("c-v2", "ivnet-v2"))
        md.append(f"| {proto.upper()} {d} | {size} | {s['c-v2'].fmt()} | {s['ivnet-v2'].fmt()} | "
                  f"**{ratio:.2f}x** | {p} | {err} |")
        checks.append((f"ivshmem 2.0 {proto.upper()} {d}: ivnet >= {V2_TARGET:g}x C eth_ivshmem",
                       ratio >= V2_TARGET, f"{ratio:.2f}x"))
    md.append("")
    missed = [c for c in checks if c[0].startswith("ivshmem 2.0") and not c[1]]
    if missed and all(k in profiles for k in ("c-v2", "ivnet-v2")):
        pc, pi = profiles["c-v2"], profiles["ivnet-v2"]
        cpu = lambda p: max((c for t, c in p["host"] if t.startswith("qemu: CPU")), default=math.nan)
        fn = lambda p, name: sum(v for f, v in p["guest"] if f == name)
        md.append(f"Where the {V2_TARGET:g}x target is missed ({', '.join(c[0].split(': ')[0][12:] for c in missed)}): "
                  f"both guests are CPU-bound (QEMU's vCPU thread at {cpu(pc):.0f} % for the C driver, "
                  f"{cpu(pi):.0f} % for ivnet, during TCP host -> cell), and the drivers' own functions are "
                  f"{guest_split(pc)[0]:.0f} % and {guest_split(pi)[0]:.0f} % of the guest's top functions "
                  f"(table below): the time goes to Zephyr's stack, kernel and zperf, which are the same "
                  f"code on both. What differs is the copying: `memcpy` is {fn(pc, 'memcpy'):.0f} % of the "
                  f"C driver's guest and {fn(pi, 'memcpy'):.0f} % of ivnet's (ivnet copies with its own "
                  f"aligned loop and aligns received payloads; the C driver's copies hit the minimal libc's "
                  f"byte loop), which is about the gap on the host -> cell rows. From the cell, the "
                  f"stack's transmit path and zperf set the pace for both; cell<->cell, where both ends "
                  f"are the driver under test, shows the difference twice.\n")
    md += profile_section(profiles, ("c-v2", "ivnet-v2"), {"c-v2": "C eth_ivshmem", "ivnet-v2": "ivnet"},
                          "### Where each spends its time (ivshmem 2.0, TCP host -> cell)\n")
    return md + [""]


def sweep_section(rows) -> list[str]:
    sw = [r for r in rows if r["test"] == "sweep"]
    if not sw:
        return []
    md = ["## UDP offered-rate sweep (1024 B): received Mbit/s / loss %\n",
          "| direction | offered | virtio-net | ivnet |", "|---|---|---|---|"]
    for d in sorted({r["direction"] for r in sw}):
        for rate in sorted({_num(r["offered_mbit"]) for r in sw if r["direction"] == d}):
            cells = []
            for k in DRIVERS:
                m = Summary(group(sw, driver=k, direction=d, offered_mbit=str(rate), metric="mbit"))
                lo = Summary(group(sw, driver=k, direction=d, offered_mbit=str(rate), metric="loss_pct"))
                cells.append(f"{m.mean:.1f} / {lo.mean:.2f} %" if m.n else "error")
            md.append(f"| {d} | {rate:g} | {cells[0]} | {cells[1]} |")
    return md + [""]


def tuning_section(rows, meta) -> list[str]:
    tun = [r for r in rows if r["test"] == "tuning"]
    if not tun:
        return []
    cols = [("tcp", "cell->host", "TCP up"), ("tcp", "host->cell", "TCP down"),
            ("udp", "cell->host", "UDP up"), ("udp", "host->cell", "UDP down")]
    md = ["## Tuning table (the seed's steps, on ivnet; Mbit/s, UDP loss in brackets)\n",
          "Up = cell -> host, down = host -> cell; TCP 1460 B, UDP 1024 B at the matrix rate, one "
          "sample each. Each row adds its step to the one above, on top of Zephyr's zperf sample "
          "(the files in bench/tuning/); the last ivnet row is prj.conf as shipped (the seed's "
          "steps plus this project's additions).\n",
          "| configuration | " + " | ".join(c[2] for c in cols) + " |", "|---" * (len(cols) + 1) + "|"]

    def cell(vals, loss):
        if not vals.n:
            return "error"
        return f"{vals.mean:.1f}" + (f" ({loss.mean:.1f} %)" if loss.n else "")

    for key, label in meta["tuning"]:
        line = [label]
        for proto, d, _ in cols:
            size = 1460 if proto == "tcp" else 1024
            w = dict(image=f"tune-{key}", proto=proto, direction=d, size=size)
            line.append(cell(Summary(group(tun, **w, metric="mbit")), Summary(group(tun, **w, metric="loss_pct"))))
        md.append("| " + " | ".join(line) + " |")
    line = ["virtio-net, full profile (size matrix)"]
    for proto, d, _ in cols:
        size = 1460 if proto == "tcp" else 1024
        w = dict(test="size", driver="virtio", proto=proto, direction=d, size=size)
        line.append(cell(Summary(group(rows, **w, metric="mbit")), Summary(group(rows, **w, metric="loss_pct"))))
    md.append("| " + " | ".join(line) + " |")
    return md + [""]


def profile_section(profiles, kinds=DRIVERS, labels=None, heading="## Profile: where the time goes\n") -> list[str]:
    labels = labels or LABEL
    if not any(k in profiles for k in kinds):
        return []
    md = [heading,
          "Measured on fresh VMs after the samples. **Interrupt delivery**: QEMU's GIC trace events, "
          "from the NIC's interrupt being raised (ivnet: MSI-X through the GICv3 ITS, an LPI; "
          "virtio-mmio: a wired SPI) to the guest acknowledging it (ICC_IAR1), over 100 pings. "
          "**Guest**: every translated block QEMU executed during 0.4 s of a TCP host -> cell run "
          "(1460 B), weighted by its instruction count and summed per function: the share of the "
          "guest's instructions. **Host**: CPU time per thread during that run (100 % = one core).\n",
          "| | " + " | ".join(labels[k] for k in kinds) + " |", "|---" * (len(kinds) + 1) + "|"]
    get = lambda k, f: f(profiles[k]) if k in profiles else "-"
    md.append("| interrupt raised -> acknowledged, p50 / p90 (us) | "
              + " | ".join(get(k, lambda p: f"{p['irq_p50']:.0f} / {p['irq_p90']:.0f} (n={p['irq_n']})") for k in kinds)
              + " |")
    md.append("| TCP host -> cell during the profile (Mbit/s) | "
              + " | ".join(get(k, lambda p: f"{p['mbit']:.1f}") for k in kinds) + " |")
    md.append("| guest instructions logged in 0.4 s | "
              + " | ".join(get(k, lambda p: f"{p['insns']:,} in {p['blocks']:,} blocks"
                               + (" (a QEMU without a disassembler: block executions, not instructions)"
                                  if p["insns"] == p["blocks"] else "")) for k in kinds) + " |")
    md.append("| of the top functions: driver / idle / the rest (stack, kernel, zperf), % | "
              + " | ".join(get(k, lambda p: "{:.0f} / {:.0f} / {:.0f}".format(*guest_split(p))) for k in kinds) + " |")
    md.append("")
    for k in kinds:
        p = profiles.get(k)
        if not p:
            continue
        md.append(f"### {labels[k]}\n")
        md.append("| guest function | % of guest instructions |")
        md.append("|---|---|")
        for f, pc in p["guest"]:
            md.append(f"| `{f}` | {pc:.1f} |")
        md.append("")
        md.append("| host thread | CPU % |")
        md.append("|---|---|")
        for t, pc in p["host"]:
            md.append(f"| {t} | {pc:.0f} |")
        md.append("")
    return md


DRIVER_FN = re.compile(r"eth_ivshmem|ivshmem|ivnet|vring|copy::")
IDLE_FN = re.compile(r"cpu_idle|arch_cpu_atomic_idle|idle")


def guest_split(p) -> tuple[float, float, float]:
    """Shares of the guest's instructions (among the profile's top functions) in the network
    driver (ivnet's crates, eth_ivshmem and its queue, the ivshmem API), in the idle loop, and
    elsewhere (the stack, the kernel, the application)."""
    drv = sum(pc for f, pc in p["guest"] if DRIVER_FN.search(f))
    idle = sum(pc for f, pc in p["guest"] if IDLE_FN.search(f) and not DRIVER_FN.search(f))
    top = sum(pc for _, pc in p["guest"])
    return drv, idle, top - drv - idle


def micro_section(micro) -> list[str]:
    if not micro:
        return []
    md = ["## Host microbenchmark of the protocol core (`ivnet bench-core`)\n",
          "Two host threads over one shared region, the real queue code; the machine's memcpy "
          "bandwidth measured in the same run.\n", "```", micro["text"].strip(), "```", ""]
    return md


def distribution_section(rows) -> list[str]:
    md = ["## Sample distributions (Shapiro-Wilk normality test, n >= 3)\n",
          "| driver | test | size | n | mean | stddev | Shapiro-Wilk p |", "|---|---|---|---|---|---|---|"]
    keys = sorted({(r["driver"], r["proto"], r["direction"], int(r["size"])) for r in rows if r["test"] == "size"})
    for drv, proto, d, size in keys:
        v = np.asarray(group(rows, test="size", driver=drv, proto=proto, direction=d, size=size, metric="mbit"))
        if len(v) < 3:
            continue
        p = stats.shapiro(v).pvalue if np.ptp(v) > 0 else float("nan")
        md.append(f"| {LABEL[drv]} | {proto.upper()} {d} | {size} | {len(v)} | {v.mean():.1f} | "
                  f"{v.std(ddof=1):.2f} | {p:.3f} |")
    return md + [""]


def make_plots(out: Path, rows, meta) -> list[str]:
    made = []

    def save(fig, name: str, dpi: int) -> None:
        fig.tight_layout()
        fig.savefig(out / name, dpi=dpi)
        plt.close(fig)
        made.append(name)
    size_rows = [r for r in rows if r["test"] == "size"]
    if size_rows:
        fig, axes = plt.subplots(2, 2, figsize=(11, 8))
        for ax, (proto, d) in zip(axes.flat, [(p, d) for p in ("tcp", "udp") for d in ("host->cell", "cell->host")]):
            sizes = sorted({int(r["size"]) for r in size_rows if r["proto"] == proto and r["direction"] == d})
            x = np.arange(len(sizes))
            for i, k in enumerate(DRIVERS):
                ss = [Summary(group(size_rows, driver=k, proto=proto, direction=d, size=s, metric="mbit")) for s in sizes]
                means = [s.mean for s in ss]
                err = [[max(0, s.mean - s.lo) for s in ss], [max(0, s.hi - s.mean) for s in ss]]
                ax.bar(x + (i - 0.5) * 0.38, means, 0.38, yerr=err, capsize=3, color=COLORS[k], label=LABEL[k])
            ax.set_xticks(x, [str(s) for s in sizes])
            ax.set_xlabel("payload, bytes")
            ax.set_ylabel("Mbit/s")
            ax.set_title(f"{proto.upper()} {d}")
            ax.legend()
        fig.suptitle("Throughput per payload size (mean, 95 % CI)")
        save(fig, "throughput_by_size.png", 90)
    sw = [r for r in rows if r["test"] == "sweep"]
    if sw:
        fig, (a1, a2) = plt.subplots(1, 2, figsize=(11, 4.5))
        for k in DRIVERS:
            for d, style in (("host->cell", "-o"), ("cell->host", "--s")):
                rates = sorted({_num(r["offered_mbit"]) for r in sw if r["direction"] == d})
                loss = [Summary(group(sw, driver=k, direction=d, offered_mbit=str(x), metric="loss_pct")).mean for x in rates]
                got = [Summary(group(sw, driver=k, direction=d, offered_mbit=str(x), metric="mbit")).mean for x in rates]
                a1.plot(rates, loss, style, color=COLORS[k], label=f"{LABEL[k]} {d}")
                a2.plot(rates, got, style, color=COLORS[k], label=f"{LABEL[k]} {d}")
        a1.set(xlabel="offered, Mbit/s", ylabel="loss, %", title="UDP loss vs offered rate (1024 B)")
        a2.set(xlabel="offered, Mbit/s", ylabel="received, Mbit/s", title="UDP received vs offered rate")
        a1.legend(fontsize=8)
        a2.legend(fontsize=8)
        save(fig, "udp_sweep.png", 90)
    # Histograms and QQ-plots of the samples, as in the seed's report.
    picks = [(p, d, s) for p, d, s in (("tcp", "host->cell", 1460), ("tcp", "cell->host", 1460),
                                        ("tcp", "cell->host", 256), ("udp", "host->cell", 1024),
                                        ("udp", "cell->host", 1024))
             if any(r["proto"] == p and r["direction"] == d and int(r["size"]) == s for r in size_rows)]
    ping = {k: group(rows, test="ping", driver=k, metric="rtt_ms") for k in DRIVERS}
    panels = [(f"{p.upper()} {d} {s} B, Mbit/s",
               {k: group(size_rows, driver=k, proto=p, direction=d, size=s, metric="mbit") for k in DRIVERS})
              for p, d, s in picks]
    if all(ping.values()):
        panels.append(("ping RTT, ms", ping))
    if panels:
        fig, axes = plt.subplots(len(panels), 3, figsize=(13, 3.2 * len(panels)), squeeze=False)
        for row, (title, data) in zip(axes, panels):
            for k in DRIVERS:
                if data[k]:
                    row[0].hist(data[k], bins=min(30, max(5, len(data[k]) // 5)), alpha=0.6, color=COLORS[k],
                                label=LABEL[k])
            row[0].set_title(title, fontsize=9)
            row[0].legend(fontsize=8)
            for ax, k in zip(row[1:], DRIVERS):
                v = np.asarray(data[k])
                if len(v) >= 3 and np.ptp(v) > 0:
                    qqplot(v, line="s", ax=ax, markerfacecolor=COLORS[k], markeredgecolor=COLORS[k])
                ax.set_title(f"QQ {LABEL[k]}: {title}", fontsize=9)
        save(fig, "samples_hist_qq.png", 80)
    tun = [r for r in rows if r["test"] == "tuning"]
    if tun:
        cols = [("tcp", "cell->host", 1460, "TCP up"), ("tcp", "host->cell", 1460, "TCP down"),
                ("udp", "cell->host", 1024, "UDP up"), ("udp", "host->cell", 1024, "UDP down")]
        fig, ax = plt.subplots(figsize=(11, 4.5))
        n = len(meta["tuning"])
        x = np.arange(len(cols))
        cmap = plt.get_cmap("viridis")
        for i, (key, label) in enumerate(meta["tuning"]):
            vals = [Summary(group(tun, image=f"tune-{key}", proto=p, direction=d, size=s, metric="mbit")).mean
                    for p, d, s, _ in cols]
            ax.bar(x + (i - (n - 1) / 2) * 0.8 / n, vals, 0.8 / n, label=label, color=cmap(i / max(1, n - 1)))
        ax.set_xticks(x, [c[3] for c in cols])
        ax.set_ylabel("Mbit/s")
        ax.set_title("ivnet: Zephyr defaults vs each tuning step")
        ax.legend(fontsize=8)
        save(fig, "tuning.png", 90)
    return made


NET_KEYS = re.compile(r"^CONFIG_(NET_(TC_|BUF_|PKT_|TCP_MAX|TCP_WIN|RX_STACK|TX_STACK|SOCKETS_SERVICE)|"
                      r"SPEED_OPT|SIZE_OPT|TIMESLICING|ETH_IVNET|QEMU_ICOUNT|ARMV8_A_NS|NET_ZPERF)")


def config_section(out: Path, meta) -> list[str]:
    info = meta["info"]
    md = ["## Configuration\n", "| | |", "|---|---|"]
    for k in ("ivnet", "zephyr", "qemu", "iperf", "toolchain", "rustc", "host"):
        md.append(f"| {k} | {info.get(k, '')} |")
    md.append("")
    cfgs = sorted((out / "config").glob("*.config"))
    if cfgs:
        md.append("Network-relevant Kconfig per image (full .config files in config/):\n")
        per = {}
        for c in cfgs:
            per[c.stem] = {ln.split("=", 1)[0]: ln.split("=", 1)[1] for ln in c.read_text().splitlines()
                           if NET_KEYS.match(ln) and "=" in ln and "LOG_LEVEL" not in ln}
        keys = sorted(set().union(*per.values()))
        md.append("| Kconfig | " + " | ".join(per) + " |")
        md.append("|---" * (len(per) + 1) + "|")
        for k in keys:
            md.append(f"| {k[7:]} | " + " | ".join(per[i].get(k, "-") for i in per) + " |")
        md.append("")
    md.append("QEMU command lines:\n")
    for k, v in meta["qemu"].items():
        md.append(f"- {k}: `{v}`")
    md.append("")
    return md
