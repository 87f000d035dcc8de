"""Twister pytest harness for the ivnet link test: before QEMU starts, it creates a network
namespace with a persistent TAP (192.0.2.2/24), starts the ivnet server on the socket Zephyr's
QEMU command line uses for ivshmem-doorbell (/tmp/ivshmem_socket), the host peer bridging the
link to the TAP, and UDP/TCP echo servers in the namespace. Then it boots the VM, whose ztest
suite exchanges traffic with them and checks it."""

import fcntl
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[4]
sys.path.insert(0, str(ROOT / "scripts" / "pylib"))
import ivnet_harness as h  # noqa: E402

SOCKET = Path("/tmp/ivshmem_socket")
# The ivshmem 2.0 variant's link (CONFIG_QEMU_EXTRA_FLAGS in testcase.yaml).
SOCKET_V2 = Path("/tmp/ivshmem2_socket")


@pytest.fixture
def host_side(tmp_path, request):
    v2 = request.node.name.endswith("_v2")
    # Zephyr's QEMU command line names /tmp/ivshmem_socket for every ivshmem test: twister's
    # parallel jobs take turns (the lock goes with the process).
    lock = open("/tmp/ivshmem_socket.ivnet-lock", "w")
    fcntl.flock(lock, fcntl.LOCK_EX)
    with lock, h.Stack() as st:
        ns = st.push(h.Netns("ivnet-twister"))
        ns.tap("ivtap0", "192.0.2.2/24")
        st.push(h.Server(SOCKET, tmp_path / "server.log"))
        link = SOCKET
        if v2:
            # Zephyr's ivshmem-doorbell device still needs its server at start-up; the link
            # is the ivshmem2 device's.
            st.push(h.Server(SOCKET_V2, tmp_path / "server-v2.log", ivshmem=2))
            link = SOCKET_V2
        st.push(h.HostPeer(ns, link, "ivtap0", tmp_path / "peer.log"))
        echo = ns.popen(sys.executable, str(Path(__file__).parent / "echo_server.py"),
                        "--addr", "192.0.2.2", "--lifetime", "300", log=tmp_path / "echo.log")
        time.sleep(0.5)

        class Proc:
            def close(self):
                h.stop(echo)

        st.push(Proc())
        yield tmp_path


def test_link_traffic(unlaunched_dut, host_side):
    run(unlaunched_dut)


def test_link_traffic_v2(unlaunched_dut, host_side):
    """The same over ivshmem 2.0 (ivnet.link.host_echo_v2)."""
    run(unlaunched_dut)
    assert "(ivshmem 2.0)" in (host_side / "peer.log").read_text()


def run(unlaunched_dut):
    unlaunched_dut.launch()
    lines = unlaunched_dut.readlines_until(regex=r"PROJECT EXECUTION (SUCCESSFUL|FAILED)",
                                           timeout=90)
    text = "\n".join(lines)
    for line in lines:
        if "UDP:" in line or "TCP:" in line or "carrier on after" in line:
            print(line)
    assert "PROJECT EXECUTION SUCCESSFUL" in text, text[-3000:]
    assert "SUITE PASS - 100.00% [ivnet_link]" in text
