"""End to end, for real: Zephyr VMs in QEMU (qemu_cortex_a53) running the Rust ivnet driver,
QEMU's ivshmem-doorbell, the ivnet server, and the host peer bridged to a TAP in a network
namespace made here. All traffic stays inside that namespace."""

import os
import re
import subprocess
import time
from pathlib import Path

import pytest

import ivnet_harness as h

HOST_IP = "192.0.2.2"
VM_IP = "192.0.2.1"


def cell_host(stack, work, elf, pcap=None):
    """One VM on one link; the host end is a TAP (HOST_IP) in a fresh namespace. `pcap`: the
    host peer records the link's frames there."""
    ns = stack.push(h.Netns(f"ivnet-e2e-{int(time.time() * 1000) % 100000}"))
    ns.tap("ivtap0", f"{HOST_IP}/24")
    link = work / "link.sock"
    stack.push(h.Server(link, work / "server.log"))
    peer = stack.push(h.HostPeer(ns, link, "ivtap0", work / "peer.log", pcap=pcap))
    vm = stack.push(h.Vm(elf, [link], work, "cell"))
    vm.wait_for("ivnet0: carrier on", 20)
    vm.wait_for(re.escape(h.Vm.PROMPT), 10)
    vm.shell(f"net ipv4 add 1 {VM_IP} 255.255.255.0")
    return ns, peer, vm


def test_cell_host_ping_both_ways(work, echo_elf):
    """Pings each way, with the host peer capturing the link (`ivnet peer --pcap`): tcpdump
    reads the file back with every echo request and reply of both directions in it."""
    pcap = work / "link.pcap"
    with h.Stack() as st:
        ns, peer, vm = cell_host(st, work, echo_elf, pcap=pcap)
        r = ns.run("ping", "-c", "100", "-i", "0.02", "-W", "2", "-w", "30", VM_IP, check=False)
        tx, rx = h.ping_summary(r.stdout)
        print(f"namespace -> VM: {rx}/{tx}; {r.stdout.strip().splitlines()[-1]}")
        assert (tx, rx) == (100, 100)
        out = vm.shell(f"net ping -c 100 -i 20 {HOST_IP}", r"icmp_seq=100 |Ping timeout", 60)
        got = h.zephyr_ping_count(out)
        print(f"VM shell -> host: {got}/100")
        assert got == 100
        peer.close()  # the capture is complete once the peer is gone
    r = subprocess.run(["tcpdump", "-nn", "-r", str(pcap)], capture_output=True, text=True, check=True)
    lines = r.stdout.splitlines()
    count = {
        what: sum(1 for line in lines if re.search(rf"IP {a} > {b}: ICMP echo {what.split()[-1]}", line))
        for what, a, b in (("host request", HOST_IP, VM_IP), ("cell reply", VM_IP, HOST_IP),
                           ("cell request", VM_IP, HOST_IP), ("host reply", HOST_IP, VM_IP))
    }
    print(f"capture: {len(lines)} frames, {count}; {r.stderr.strip()}")
    assert count == {"host request": 100, "cell reply": 100, "cell request": 100, "host reply": 100}, count
    assert any("ARP" in line for line in lines)


def test_cell_host_iperf_tcp_to_zperf(work, echo_elf):
    with h.Stack() as st:
        ns, _, vm = cell_host(st, work, echo_elf)
        vm.shell("zperf tcp download 5001", "Listening on port 5001")
        r = ns.run("iperf", "-c", VM_IP, "-p", "5001", "-t", "10", "-i", "10", "-f", "m",
                   timeout=60, check=False)
        rate = h.iperf_rate(r.stdout)
        print(r.stdout)
        assert r.returncode == 0 and rate is not None, r.stdout + r.stderr
        print(f"iperf TCP host -> VM (zperf): {rate:g} Mbit/s")
        assert rate > 1.0


def test_cell_cell_ping(work, echo_elf):
    with h.Stack() as st:
        link = work / "link.sock"
        st.push(h.Server(link, work / "server.log"))
        a = st.push(h.Vm(echo_elf, [link], work, "cell-a"))
        b = st.push(h.Vm(echo_elf, [link], work, "cell-b"))
        for vm, ip in ((a, "192.0.2.11"), (b, "192.0.2.12")):
            vm.wait_for("ivnet0: carrier on", 20)
            vm.wait_for(re.escape(h.Vm.PROMPT), 10)
            vm.shell(f"net ipv4 add 1 {ip} 255.255.255.0")
        out = a.shell("net ping -c 100 -i 20 192.0.2.12", r"icmp_seq=100 |Ping timeout", 60)
        got = h.zephyr_ping_count(out)
        print(f"cell-a -> cell-b: {got}/100")
        assert got == 100
        out = b.shell("net ping -c 100 -i 20 192.0.2.11", r"icmp_seq=100 |Ping timeout", 60)
        got = h.zephyr_ping_count(out)
        print(f"cell-b -> cell-a: {got}/100")
        assert got == 100


def test_host_peer_restart_mid_ping(work, echo_elf):
    """Kill the host peer while the namespace pings the VM, restart it: the VM's carrier goes
    off, then on, and the pings resume; the VM is never rebooted."""
    with h.Stack() as st:
        ns, peer, vm = cell_host(st, work, echo_elf)
        boot_mark = vm.mark()
        pinger = ns.popen("ping", "-c", "300", "-i", "0.05", "-W", "1", "-D", VM_IP,
                          log=work / "ping.log")
        time.sleep(3)
        killed_at = time.time()
        peer.kill()
        off = vm.wait_for("ivnet0: carrier off", 10, boot_mark)
        time.sleep(1)
        peer.start()
        vm.wait_for("ivnet0: carrier on", 10, off.end())
        restarted_at = time.time()
        pinger.wait(60)
        text = (work / "ping.log").read_text()
        stamps = [float(m) for m in re.findall(r"^\[(\d+\.\d+)\] \d+ bytes from", text, re.M)]
        before = [t for t in stamps if t < killed_at]
        after = [t for t in stamps if t > restarted_at]
        print(f"replies before the kill: {len(before)}, after the restart: {len(after)}")
        assert len(before) > 30 and len(after) > 100
        assert "Booting Zephyr" not in vm.buf[boot_mark:], "the VM rebooted"


def test_restarted_cell_is_reachable_at_once(work, echo_elf):
    """A cell's QEMU restarted while the host peer runs comes back with a new random MAC. The
    TAP's carrier follows the link (off for at least 1.1 s when it goes down), so the kernel
    forgets the old cell's neighbour entry and finds the new one within about a second
    (before, it kept sending to the old MAC while the entry stayed REACHABLE: 8 to 40 s
    without an answer)."""
    with h.Stack() as st:
        ns, _, vm = cell_host(st, work, echo_elf)
        link = work / "link.sock"
        for i in range(3):
            # The neighbour entry is fresh (REACHABLE) when the cell goes away.
            r = ns.run("ping", "-c", "3", "-i", "0.2", "-W", "2", VM_IP, check=False)
            assert h.ping_summary(r.stdout)[1] == 3, r.stdout
            vm.proc.kill()
            vm.close()
            vm = h.Vm(echo_elf, [link], work, f"cell{i + 1}")
            st.push(vm)
            vm.wait_for("ivnet0: carrier on", 20)
            vm.wait_for(re.escape(h.Vm.PROMPT), 10)
            vm.shell(f"net ipv4 add 1 {VM_IP} 255.255.255.0")
            t = time.time()
            while ns.run("ping", "-c", "1", "-W", "0.3", VM_IP, check=False).returncode != 0:
                assert time.time() - t < 5, \
                    f"restart {i + 1}: no answer within 5 s; host peer: {(work / 'peer.log').read_text()[-1500:]}"
            print(f"restart {i + 1}: first answer after {time.time() - t:.2f} s")


def eth_stats(vm) -> dict:
    """The first interface's Ethernet statistics as `net stats` prints them (the driver's
    get_stats, through CONFIG_NET_STATISTICS_USER_API)."""
    out = vm.shell("net stats iface 1", r"Unknown protocol\s*:\s*\d+", 10)
    block = out[out.index("Statistics for Ethernet interface"):]
    return {k.strip(): int(v) for k, v in re.findall(r"^([A-Za-z ]+?)\s*:\s*(\d+)\s*$", block, re.M)}


def test_net_stats_shows_the_link(work, cell_elf):
    """`net stats` in a cell shows the ivnet interface's Ethernet counters: frames and bytes
    (counted by Zephyr's Ethernet L2 through the driver's get_stats) and the driver's own
    drops."""
    with h.Stack() as st:
        ns, _, vm = cell_host(st, work, cell_elf)
        before = eth_stats(vm)
        r = ns.run("ping", "-c", "50", "-i", "0.02", "-s", "200", "-W", "2", VM_IP, check=False)
        assert h.ping_summary(r.stdout) == (50, 50), r.stdout
        after = eth_stats(vm)
        grew = {k: after[k] - before[k] for k in after}
        print(f"net stats grew by {grew}")
        assert grew["Packets received"] >= 50 and grew["Packets sent"] >= 50, grew
        # 50 requests of 200 bytes of payload + 8 ICMP + 20 IPv4 + 14 Ethernet.
        assert grew["Bytes received"] >= 50 * 242 and grew["Bytes sent"] >= 50 * 242, grew
        assert after["Send Drops"] == 0 and after["Send errors"] == 0, after


@pytest.mark.skipif(not os.environ.get("IVNET_ZPERF_ELF"), reason="IVNET_ZPERF_ELF not built")
def test_dropin_into_zephyrs_zperf_sample(work):
    """Zephyr's own samples/net/zperf, unmodified, built with `-S ivnet` and the module added
    from outside the tree: it comes up on the link with its configured 192.0.2.1."""
    elf = Path(os.environ["IVNET_ZPERF_ELF"]).absolute()
    with h.Stack() as st:
        ns = st.push(h.Netns(f"ivnet-e2e-{int(time.time() * 1000) % 100000}"))
        ns.tap("ivtap0", f"{HOST_IP}/24")
        link = work / "link.sock"
        st.push(h.Server(link, work / "server.log"))
        st.push(h.HostPeer(ns, link, "ivtap0", work / "peer.log"))
        vm = st.push(h.Vm(elf, [link], work, "zperf"))
        vm.wait_for("ivnet0: carrier on", 20)
        r = ns.run("ping", "-c", "20", "-i", "0.05", "-W", "2", "-w", "30", VM_IP, check=False)
        tx, rx = h.ping_summary(r.stdout)
        print(f"namespace -> zperf sample: {rx}/{tx}")
        assert (tx, rx) == (20, 20)
