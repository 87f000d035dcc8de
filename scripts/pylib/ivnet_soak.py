"""Soak: TCP through a link in both directions at full rate for a while, every byte checked by
the application (the link skips RX checksums, so only the application can prove that nothing
was corrupted), then the counters of both ends reconciled. Shared by scripts/soak.py and
tests/e2e/test_soak.py.

The client (in a namespace made by the caller) streams a fixed pseudo-random pattern to the
cell's TCP echo service (port 4242) and reads the echo back, keeping at most WINDOW bytes
outstanding; every echoed byte is compared with what was sent at that offset. At the end it
stops sending and waits for the rest of the echo (at most 30 s) before closing; it does not
half-close, which Zephyr's TCP does not support ("Half-close is not supported" in tcp.c: the
echo of what was still in flight would be dropped).
"""

from __future__ import annotations

import json
import re
import signal
import time

import ivnet_harness as h
from ivnet_twolinks import CELL1

CLIENT = r"""
import json, random, select, socket, sys, time
addr, port, secs = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
L = 1048573                      # pattern length (prime: a slip of the stream cannot hide)
rnd = random.Random(20261127)
pat = bytes(rnd.getrandbits(8) for _ in range(L))
pat2 = pat + pat                 # any offset's next 64 KiB is one slice
WINDOW, CHUNK = 256 * 1024, 16384
s = socket.create_connection((addr, port), timeout=10)
s.setblocking(False)
sent = got = bad = 0
first_bad = None
t0 = time.monotonic(); last = t0; series = []
closing = False
while True:
    now = time.monotonic()
    if not closing and now - t0 >= secs:
        # Stop sending and wait for the rest of the echo (no half-close: Zephyr's TCP does
        # not support it and would drop what it has not echoed yet).
        closing = True; t_end = now
    if closing and got >= sent:
        break
    if now - last >= 10:
        series.append([round(now - t0), got]); last = now
    want_w = not closing and sent - got < WINDOW
    r, w, _ = select.select([s], [s] if want_w else [], [], 1.0)
    if w:
        k = sent % L
        n = min(CHUNK, WINDOW - (sent - got))
        try:
            sent += s.send(pat2[k:k + n])
        except BlockingIOError:
            pass
    if r:
        try:
            d = s.recv(65536)
        except BlockingIOError:
            continue
        if not d:
            break                    # the echo server closed early: counted as lost below
        k = got % L
        exp = pat2[k:k + len(d)] if len(d) <= L else None
        if exp != d:
            for i, b in enumerate(d):
                if b != pat[(got + i) % L]:
                    bad += 1
                    if first_bad is None:
                        first_bad = got + i
        got += len(d)
    if closing and time.monotonic() - t_end > 30:
        break
dur = t_end - t0
s.close()
print(json.dumps({"sent": sent, "received": got, "bad_bytes": bad, "first_bad": first_bad,
                  "secs": round(dur, 1), "mbit_s_each_way": round(8 * got / dur / 1e6, 2),
                  "received_by_10s": series}))
"""


def stream(ns: h.Netns, addr: str, secs: float) -> dict:
    """Runs the client for `secs` (plus the drain); its JSON report."""
    r = ns.run("python3", "-c", CLIENT, addr, "4242", str(secs), timeout=secs + 120, check=False)
    lines = [l for l in r.stdout.splitlines() if l.startswith("{")]
    if r.returncode != 0 or not lines:
        raise RuntimeError(f"soak client failed ({r.returncode}): {r.stdout[-500:]}{r.stderr[-1500:]}")
    return json.loads(lines[-1])


def peer_stats(peer: h.HostPeer) -> dict:
    """The host peer's counters (it logs them on SIGUSR1)."""
    mark = len(peer.log.read_text())
    peer.proc.send_signal(signal.SIGUSR1)
    for _ in range(50):
        time.sleep(0.1)
        m = re.findall(r"stats: Stats \{([^}]*)\}", peer.log.read_text()[mark:])
        if m:
            return {k: int(v) for k, v in re.findall(r"(\w+): (\d+)", m[-1])}
    raise RuntimeError("the host peer logged no counters")


def reconcile(host: dict, cell: dict) -> list[str]:
    """Differences between a host peer's counters and the cell's STATS group of the same link
    (the cell's are 32-bit): every frame one end sent, the other received or counted dropped."""
    m = 1 << 32
    bad = []
    if host["tx_frames"] % m != (cell["rx_frames"] + cell["rx_dropped"]) % m:
        bad.append(f"host sent {host['tx_frames']} frames, cell received {cell['rx_frames']} "
                   f"+ dropped {cell['rx_dropped']}")
    if cell["tx_frames"] % m != (host["rx_frames"]) % m:
        bad.append(f"cell sent {cell['tx_frames']} frames, host received {host['rx_frames']}")
    if cell["rx_dropped"] == 0 and host["tx_bytes"] % m != cell["rx_bytes"] % m:
        bad.append(f"host sent {host['tx_bytes']} bytes, cell received {cell['rx_bytes']}")
    if host["rx_dropped"] + host["rx_oversize"] == 0 and cell["tx_bytes"] % m != host["rx_bytes"] % m:
        bad.append(f"cell sent {cell['tx_bytes']} bytes, host received {host['rx_bytes']}")
    return bad


def quiet_counters(two) -> tuple[dict, dict]:
    """Link 0's counters at both ends, read while nothing crosses link 0 (the cell's are read
    over link 1): host, cell, host again, until the host's did not move meanwhile."""
    for _ in range(5):
        time.sleep(1)
        a = peer_stats(two.peer0)
        cell = two.stat("ivnet0", via=CELL1)
        b = peer_stats(two.peer0)
        if a == b:
            return a, cell
    raise RuntimeError("link 0 did not fall quiet")
