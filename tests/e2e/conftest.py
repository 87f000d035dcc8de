"""Fixtures for the end-to-end tests: the echo sample built for qemu_cortex_a53, and a scratch
directory. These tests need root (network namespaces, TAP) and QEMU."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "scripts" / "pylib"))

import ivnet_harness as h  # noqa: E402


def built_echo(env: str, build: str, west_args: str = "") -> Path:
    """The echo sample's image: $`env` if set, else build/`build`, built (with `west_args`)
    when missing."""
    elf = Path(os.environ.get(env, ROOT / "build" / build / "zephyr" / "zephyr.elf")).absolute()
    if not elf.exists():
        subprocess.run(["bash", "-c", f". {ROOT}/scripts/zephyr-env.sh && west build -b qemu_cortex_a53 "
                        f"{ROOT}/samples/echo -d {ROOT}/build/{build} {west_args}"], check=True)
    return elf


@pytest.fixture(scope="session")
def echo_elf() -> Path:
    return built_echo("IVNET_ECHO_ELF", "echo")


@pytest.fixture(scope="session")
def cell_elf() -> Path:
    """The echo sample as a network cell (two links, fw_cfg configuration, MCUmgr)."""
    return built_echo("IVNET_CELL_ELF", "cell", "-S ivnet -S ivnet-cell")


@pytest.fixture(scope="session")
def cell_nowd_elf() -> Path:
    """The cell image with the driver's liveness watchdog off (CONFIG_ETH_IVNET_PEER_TIMEOUT_MS=0):
    only the progress-aware send() protects the other link from a stuck peer."""
    return built_echo("IVNET_CELL_NOWD_ELF", "cell-nowd",
                      "-S ivnet -S ivnet-cell -- -DCONFIG_ETH_IVNET_PEER_TIMEOUT_MS=0")


@pytest.fixture
def work():
    w = h.Workdir("ivnet-e2e")
    yield w.path
    w.close()


def pytest_terminal_summary(terminalreporter):
    """The drop-in conformance table (tests/e2e/test_conformance.py), when it ran."""
    mod = sys.modules.get("test_conformance")
    if mod is None or not mod.RESULTS:
        return
    text = mod.table()
    terminalreporter.write_sep("=", "drop-in conformance: Zephyr's samples on ivnet and virtio-net")
    terminalreporter.write_line(text)
    mod.CONF.mkdir(parents=True, exist_ok=True)
    (mod.CONF / "results.md").write_text(text + "\n")
