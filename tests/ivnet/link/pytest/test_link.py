"""Twister pytest harness for the ivnet link test: before QEMU starts, it creates a network
namespace with a persistent TAP (192.0.2.2/24), starts the ivnet server on the socket Zephyr's
QEMU command line uses for ivshmem-doorbell (/tmp/ivshmem_socket), the host peer bridging the
link to the TAP, and UDP/TCP echo servers in the namespace. Then it boots the VM, whose ztest
suite exchanges traffic with them and checks it."""

import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[4]
sys.path.insert(0, str(ROOT / "scripts" / "pylib"))
import ivnet_harness as h  # noqa: E402

SOCKET = Path("/tmp/ivshmem_socket")


@pytest.fixture
def host_side(tmp_path):
    with h.Stack() as st:
        ns = st.push(h.Netns("ivnet-twister"))
        ns.tap("ivtap0", "192.0.2.2/24")
        st.push(h.Server(SOCKET, tmp_path / "server.log"))
        st.push(h.HostPeer(ns, SOCKET, "ivtap0", tmp_path / "peer.log"))
        echo = ns.popen(sys.executable, str(Path(__file__).parent / "echo_server.py"),
                        "--addr", "192.0.2.2", "--lifetime", "300", log=tmp_path / "echo.log")
        time.sleep(0.5)

        class Proc:
            def close(self):
                h.stop(echo)

        st.push(Proc())
        yield tmp_path


def test_link_traffic(unlaunched_dut, host_side):
    unlaunched_dut.launch()
    lines = unlaunched_dut.readlines_until(regex=r"PROJECT EXECUTION (SUCCESSFUL|FAILED)",
                                           timeout=90)
    text = "\n".join(lines)
    for line in lines:
        if "UDP:" in line or "TCP:" in line or "carrier on after" in line:
            print(line)
    assert "PROJECT EXECUTION SUCCESSFUL" in text, text[-3000:]
    assert "SUITE PASS - 100.00% [ivnet_link]" in text
