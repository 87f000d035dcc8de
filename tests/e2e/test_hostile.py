"""A hostile peer against the real driver in QEMU, and against the host bridge.

`ivnet-hostile` joins a running link, behaves honestly, then attacks for ATTACK_SECS: it
corrupts every field the other end reads (indices, descriptors, completions, state words, the
v1 owner table, the whole queue header), floods doorbells, re-publishes frames, or stalls. Then
it turns honest again. The other end must never crash, must reset the link where the protocol
was broken (and only drop a frame where one was merely too long), must keep its log quiet
(rate-limited), and must recover: traffic flows again on the attacked link.

Against the driver: one cell on two links (twolinks.TwoLinks), link 1 attacked, one attack
after the other on the same cell (the hostile peer restarts between them, as a restarting
host peer would), link 0 pinged throughout. Against the host bridge: `ivnet peer` on a TAP in
one namespace, the hostile peer on a TAP in another, pinging across the link.
"""

import os
import re
import signal
import time

import pytest

import ivnet_harness as h
from ivnet_twolinks import CELL0, CELL1, Closer, TwoLinks, hostile_bin, pct

ATTACK_SECS = 3

# attack -> what the attacked end must have counted (STATS counter of the driver that grows);
# "protocol_resets": the peer broke the protocol; "rx_dropped": a frame was dropped, no reset.
EXPECT = {
    "stall": "peer_stalls",
    "avail-index": "protocol_resets",
    "desc-index": "protocol_resets",
    "desc-flags": "protocol_resets",
    "desc-bounds": "protocol_resets",
    "runt": "protocol_resets",
    "oversize": "rx_dropped",
    "used-index": "protocol_resets",
    "used-id": "protocol_resets",
    "state-word": "protocol_resets",
    "state-flap": "state_changes",
    "owner-table": "state_changes",  # a wrong owner word reads as "peer gone": RESET
    "header-garbage": "protocol_resets",
    "doorbell-flood": None,
    "republish": "rx_frames",  # the blaster's requests are not forwarded meanwhile
    "drip": "tx_dropped",
}
# IVNET_HOSTILE_ATTACKS=a,b,...: only these (while working on one); all by default.
ONLY = [a for a in os.environ.get("IVNET_HOSTILE_ATTACKS", "").split(",") if a]
for _a in ONLY:
    assert _a in EXPECT, f"IVNET_HOSTILE_ATTACKS: no attack named {_a!r} (known: {', '.join(EXPECT)})"
# Attacks that must not reset the link (the peer stayed within the protocol).
NO_RESET = {"oversize", "doorbell-flood", "republish", "drip"}
# Link 0's p99 during an attack on link 1 stays below P99_MS (ms). A doorbell flood costs every
# link of the cell: each doorbell is an interrupt QEMU injects (under its big lock, shared with
# the vCPU's I/O), whatever the driver does with it; measured p50 2-3 ms, p99 5-35 ms on this
# machine (docs/reliability.md). No ping is lost.
# A dripping peer (never stuck, so send() may wait for it) holds the TX thread that all links
# share for up to the wait budget (ETH_IVNET_TX_WAIT_BUDGET_PCT, 10 ms of every 100 ms): a frame
# of link 0 queued behind such a wait is late by as much.
P99_MS = {"doorbell-flood": 60.0, "drip": 20.0}
# The stall must outlast the driver's watchdog (2 s) by a margin on a loaded host.
SECS = {"stall": 5, "drip": 6}
# Requests a second to link 1 during an attack, on top of the steady 100 a second: the drip
# completes 25 frames a second, and the cell's TX ring (up to 2048 frames) must fill within the
# attack for send() to meet it (and wait within its budget, then drop).
EXTRA_RATE = {"drip": 1500}


def test_hostile_peer_against_the_driver(work, cell_elf):
    results = []
    with h.Stack() as st:
        attacks = [a for a in EXPECT if not ONLY or a in ONLY]
        two = TwoLinks(st, work, cell_elf, "ivnet-hostile", attack=attacks[0])
        ns, vm = two.ns, two.vm
        # Link 1 keeps being asked for answers (in-flight frames for the completion attacks).
        two.blaster(st, CELL1, 100, 200, len(attacks) * (ATTACK_SECS + 45) + 60)
        first = True
        for attack in attacks:
            counter = EXPECT[attack]
            if not first:
                # A new hostile peer for this attack: the old one leaves (the cell sees RESET),
                # the new one joins and runs honestly until SIGUSR1.
                h.stop(two.hostile)
                two.hostile = ns.popen(str(hostile_bin()), "--socket", str(work / "l1.sock"),
                                       "--tap", "ivl1", "--attack", attack, log=two.hostile_log)
                st.push(Closer(two.hostile))
                two.wait_link1_back(30)
            first = False
            secs = SECS.get(attack, ATTACK_SECS)
            before = two.stat("ivnet1")
            mark = vm.mark()
            if attack in EXTRA_RATE:
                two.blaster(st, CELL1, EXTRA_RATE[attack], 200, secs)
            pinger = ns.popen("ping", "-c", str(secs * 50), "-i", "0.02", "-W", "1", CELL0,
                              log=work / f"ping0-{attack}.log")
            two.hostile.send_signal(signal.SIGUSR1)
            time.sleep(secs)
            # What the attack did, counted before it ends (the recovery handshake afterwards
            # moves counters of its own). The read itself is a check: MCUmgr's work queue runs
            # below the link threads' priority, so it answers mid-attack only if a flooded link
            # leaves the cell's lower priorities time (ETH_IVNET_RX_BUSY_MS; without it, a
            # republish flood on a loaded host starved it).
            mid = two.stat("ivnet1")
            two.hostile.send_signal(signal.SIGUSR2)
            pinger.wait(30)
            back = two.wait_link1_back(30)
            during = vm.buf[mark:]
            text = (work / f"ping0-{attack}.log").read_text()
            rtts = [float(x) for x in re.findall(r"time=([\d.]+) ms", text)]
            grew = {k: mid[k] - before[k] for k in mid if mid[k] != before[k]}
            logged = len(re.findall(r"ivnet1: peer (broke|completed)", during))
            row = {"attack": attack, "grew": grew, "back_s": round(back, 2), "logs": logged,
                   "link0": f"{len(rtts)}/{secs * 50}, p50 {pct(rtts, 50):.2f} ms, p99 {pct(rtts, 99):.2f} ms, max {max(rtts):.2f} ms" if rtts else "none"}
            results.append(row)
            print(row)
            two.assert_no_fatal()
            assert "ivnet0: carrier off" not in during, f"{attack}: link 0 went down"
            assert len(rtts) >= secs * 50 - 2, f"{attack}: link 0 lost pings: {text[-300:]}"
            # Whatever happens on link 1, link 0 keeps its latency.
            assert pct(rtts, 99) < P99_MS.get(attack, 10.0), (attack, row["link0"])
            if counter:
                assert grew.get(counter, 0) > 0, (attack, counter, grew)
            if attack in NO_RESET:
                assert "protocol_resets" not in grew and "peer_stalls" not in grew, (attack, grew)
            # Peer-triggered messages are rate-limited: one a second at most (and a first one).
            assert logged <= secs + 3, (attack, logged)
    print("\nhostile peer vs driver:")
    for r in results:
        print(f"  {r['attack']:<15} counters grew {r['grew']}, link 1 back in {r['back_s']} s, "
              f"{r['logs']} log lines, link 0 {r['link0']}")


def peer_counters(peer: h.HostPeer, work) -> dict:
    """The host peer's counters, which it logs on SIGUSR1."""
    mark = len((work / "peer.log").read_text())
    peer.proc.send_signal(signal.SIGUSR1)
    for _ in range(50):
        time.sleep(0.1)
        stats = re.findall(r"stats: Stats \{([^}]*)\}", (work / "peer.log").read_text()[mark:])
        if stats:
            return {k: int(v) for k, v in re.findall(r"(\w+): (\d+)", stats[-1])}
    raise AssertionError("the host peer logged no counters")


BRIDGE_ATTACKS = [a for a in EXPECT if a != "doorbell-flood"] + ["doorbell-flood"]


@pytest.mark.parametrize("attack", BRIDGE_ATTACKS)
def test_hostile_peer_against_the_host_bridge(work, attack):
    """`ivnet peer` (bridged to TAP ivb0 in namespace A) against `ivnet-hostile` playing the
    cell (TAP ivb1 in namespace B); namespace A pings B across the link."""
    a_addr, b_addr = "10.73.0.1", "10.73.0.2"
    with h.Stack() as st:
        ns_a = st.push(h.Netns("ivnet-hb-a"))
        ns_b = st.push(h.Netns("ivnet-hb-b"))
        ns_a.tap("ivb0", f"{a_addr}/24")
        ns_b.tap("ivb1", f"{b_addr}/24")
        sock = work / "link.sock"
        st.push(h.Server(sock, work / "server.log"))
        peer = st.push(h.HostPeer(ns_a, sock, "ivb0", work / "peer.log"))
        hostile = ns_b.popen(str(hostile_bin()), "--socket", str(sock), "--tap", "ivb1",
                             "--attack", attack, log=work / "hostile.log")
        st.push(Closer(hostile))

        def link_ok(timeout: float) -> float:
            t = time.time()
            while ns_a.run("ping", "-c", "1", "-W", "1", b_addr, check=False).returncode != 0:
                assert time.time() - t < timeout, f"{attack}: the link did not come back"
                time.sleep(0.05)
            return time.time() - t

        link_ok(20)
        # Traffic across the link during the attack (answers fill the bridge's ring).
        pinger = ns_a.popen("ping", "-c", str(ATTACK_SECS * 100), "-i", "0.01", "-W", "1", b_addr,
                            log=work / "ping.log")
        log_mark = len((work / "peer.log").read_text())

        def tap_frames() -> int:
            """Frames the namespace's kernel handed to the bridge's TAP."""
            return int(ns_a.run("cat", "/sys/class/net/ivb0/statistics/tx_packets").stdout)

        sent_before, tap_before = peer_counters(peer, work)["tx_frames"], tap_frames()
        hostile.send_signal(signal.SIGUSR1)
        time.sleep(ATTACK_SECS)
        if attack == "republish":
            # The peer keeps a full queue of frames published all along: the bridge still
            # moves every frame the TAP gives it into the link (the pings' echo requests; the
            # flood takes CPU, so ping itself sends fewer than 100/s), and stops at once.
            tap = tap_frames() - tap_before
            sent = peer_counters(peer, work)["tx_frames"] - sent_before
            print(f"republish: during the flood the TAP gave {tap} frames, the bridge moved {sent}")
            assert sent >= 100 and sent >= tap - 5, (tap, sent)
            t = time.time()
            peer.proc.terminate()
            peer.proc.wait(5)
            print(f"republish: ivnet peer stopped {time.time() - t:.3f} s after SIGTERM")
            assert time.time() - t < 1.0
            peer.start()
        hostile.send_signal(signal.SIGUSR2)
        pinger.wait(30)
        back = link_ok(30)
        assert peer.proc.poll() is None, f"{attack}: ivnet peer died"
        counters = peer_counters(peer, work)
        log = (work / "peer.log").read_text()
        errors = len(re.findall(r"ERROR|WARN", log[log_mark:]))
        print(f"{attack}: host bridge back in {back:.2f} s, {errors} error lines, counters {counters}")
        if attack not in NO_RESET | {"stall", "state-flap", "owner-table"}:
            assert counters["protocol_resets"] > 0, counters
        if attack == "oversize":
            assert counters["rx_oversize"] > 0 and counters["protocol_resets"] == 0, counters
        if attack in NO_RESET:
            assert counters["protocol_resets"] == 0, counters
        # Rate-limited: at most one error or warning line a second of attack per kind (protocol
        # errors; dropped frames; TAP errors), and a first one each.
        assert errors <= 2 * ATTACK_SECS + 6, log[log_mark:][-2000:]
