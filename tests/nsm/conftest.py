from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.harness.nsm.pki import SimulatedPKI
from tests.harness.nsm.server import SimulatedNSM, checkout_root
from tests.harness.nsm.simulator import NSMSimulator, boot_pcrs

ROOT = checkout_root()
PYTHON = sys.executable
INSTANCE_ID = "i-0123456789abcdef0"
MODULE_ID = f"{INSTANCE_ID}-enc0123456789abcdef"


@pytest.fixture(scope="session")
def preload_library() -> Path:
    """Build the preload library the way a fresh checkout would (`make` file target)."""
    subprocess.run(["make", "-s", "-C", str(ROOT), "build/libnsmsim.so"], check=True)
    path = ROOT / "build" / "libnsmsim.so"
    assert path.is_file()
    return path


@pytest.fixture(scope="session")
def pki() -> SimulatedPKI:
    return SimulatedPKI.ephemeral()


@pytest.fixture
def simulator(pki: SimulatedPKI) -> NSMSimulator:
    return NSMSimulator(
        pki,
        module_id=MODULE_ID,
        pcrs=boot_pcrs(instance_id=INSTANCE_ID),
        clock_ms=lambda: 1_700_000_000_123,
    )


@pytest.fixture(scope="session")
def nsm_state(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("nsm-state")


@pytest.fixture
def running_nsm(preload_library: Path, nsm_state: Path) -> Iterator[SimulatedNSM]:
    with SimulatedNSM(nsm_state) as nsm:
        yield nsm
