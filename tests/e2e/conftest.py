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


@pytest.fixture(scope="session")
def echo_elf() -> Path:
    elf = Path(os.environ.get("IVNET_ECHO_ELF", ROOT / "build" / "echo" / "zephyr" / "zephyr.elf"))
    if not elf.exists():
        subprocess.run(["bash", "-c", f". {ROOT}/scripts/zephyr-env.sh && west build -b qemu_cortex_a53 "
                        f"{ROOT}/samples/echo -d {ROOT}/build/echo"], check=True)
    return elf


@pytest.fixture
def work():
    w = h.Workdir("ivnet-e2e")
    yield w.path
    w.close()
