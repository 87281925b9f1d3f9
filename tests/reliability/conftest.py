"""One simulated world for the reliability suite (package scope), with the KMS fault plan wired in
and every process logging at its most verbose, so the secrets scan sees everything they say."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from nitrokms.parent.rpc import EnclaveClient
from nitrokms.proto import messages as m
from nitrokms.sim.kms.faults import write_plan
from nitrokms.sim.world import World

from tests.reliability.support import CONTEXT

VERBOSE_KMS = ("-v",)
VERBOSE_ENCLAVE = ("--log-level", "DEBUG")
VERBOSE_RELAY = ("--log-level", "debug")


@pytest.fixture(scope="package")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    workdir = tmp_path_factory.mktemp("reliability-world")
    plan = workdir / "kms-faults.json"
    with World(
        workdir,
        kms_args=(*VERBOSE_KMS, "--fault-plan", str(plan)),
        enclave_args=VERBOSE_ENCLAVE,
        relay_args=VERBOSE_RELAY,
    ) as running:
        yield running


@pytest.fixture
def fault_plan(world: World) -> Iterator[Path]:
    """The KMS fault plan, emptied again after the test."""
    path = world.workdir / "kms-faults.json"
    write_plan(path, [])
    yield path
    write_plan(path, [])


@pytest.fixture(scope="package")
def key_id(world: World) -> str:
    return world.create_attested_key()


@pytest.fixture(scope="module")
def held(world: World, key_id: str) -> m.GenerateDataKeyResult:
    """A data key the world's enclave holds (one per test module: fault tests restart it)."""
    with world.client() as client:
        return client.generate_data_key(key_id, encryption_context=CONTEXT)


@pytest.fixture
def client(world: World) -> Iterator[EnclaveClient]:
    with world.client(timeout_s=30.0) as opened:
        yield opened
