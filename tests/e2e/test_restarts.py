"""Processes come and go: the enclave restarts (its keys are gone, its envelopes still open, the
credential provider feeds it again) and the local KMS restarts with its state kept."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from nitrokms.parent.rpc import RemoteError
from nitrokms.sim.world import World

from tests.e2e.conftest import open_world

CONTEXT = {"suite": "restarts"}


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    yield from open_world(tmp_path_factory, "e2e-restarts")


@pytest.fixture(scope="module")
def key(world: World) -> str:
    return world.create_attested_key()


def test_enclave_restart(world: World, key: str):
    provider = world.process("credentials")
    with world.client() as client:
        made = client.generate_data_key(key, key_spec="AES_256", encryption_context=CONTEXT)
        envelope = client.seal(b"before the restart", handle=made.handle).envelope
        first_pid = world.enclave_pid
        mark = provider.mark()
        world.restart_enclave()
        assert world.enclave_pid != first_pid
        assert client.health().credentials_present, "the provider pushed to the new enclave"
        with pytest.raises(RemoteError) as gone:
            client.seal(b"x", handle=made.handle)
        assert client.unseal(envelope, encryption_context=CONTEXT) == b"before the restart"
        assert client.connections_opened == 2, "the same client reconnected"
    assert gone.value.code == "enclave.UnknownHandle"
    assert any("reconnected to the enclave" in line for line in provider.lines(mark))


def test_kms_restart_keeps_keys_and_service(world: World, key: str):
    with world.client() as client:
        sealed = client.seal(b"sealed before KMS restarted", key_id=key)
        assert sealed.handle is not None
        client.forget_key(sealed.handle)
        world.restart_kms()
        assert world.kms_admin().describe_key(KeyId=key)["KeyMetadata"]["Arn"] == key
        assert client.unseal(sealed.envelope) == b"sealed before KMS restarted"
        made = client.generate_data_key(key, number_of_bytes=32)
    assert made.key_id == key
