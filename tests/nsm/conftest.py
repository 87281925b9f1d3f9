from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from nitrokms.sim.nsm.pki import SimulatedPKI
from nitrokms.sim.nsm.server import SimulatedNSM, preload_library_path
from nitrokms.sim.nsm.simulator import NSMSimulator, boot_pcrs

ROOT = Path(__file__).resolve().parents[2]

PYTHON = sys.executable
INSTANCE_ID = "i-0123456789abcdef0"
MODULE_ID = f"{INSTANCE_ID}-enc0123456789abcdef"


@pytest.fixture(scope="session")
def preload_library() -> Path:
    """The preload library the package built at install time (`nitrokms.sim.nsm._preload`)."""
    path = preload_library_path()
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
