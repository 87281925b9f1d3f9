"""Expiring credentials, as boto3 gets them from a credential_process profile: the provider pushes
them with their expiry, refreshes them ahead of it, and the enclave refuses to use lapsed ones."""

from __future__ import annotations

import signal
import time
from collections.abc import Iterator

import pytest
from nitrokms.parent.rpc import CredentialsError
from nitrokms.sim.world import PUSHED, World

from tests.e2e.conftest import open_world

TTL_S = 3.0


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    yield from open_world(tmp_path_factory, "e2e-credentials", credentials_ttl_s=TTL_S)


@pytest.fixture(scope="module")
def key(world: World) -> str:
    return world.create_attested_key()


def test_the_provider_refreshes_before_expiry(world: World, key: str):
    provider = world.process("credentials")
    with world.client() as client:
        first = client.health().credentials_expiration_ms
        assert first is not None
        assert first <= (time.time() + TTL_S) * 1000 + 1000
        provider.wait_for_line(PUSHED, after=provider.mark(), timeout_s=4 * TTL_S)
        health = client.health()
        assert health.ready
        assert health.credentials_expiration_ms is not None
        assert health.credentials_expiration_ms > first
        assert client.generate_data_key(key, number_of_bytes=32).key_id == key


def test_lapsed_credentials_fail_until_the_provider_pushes_new_ones(world: World, key: str):
    provider = world.process("credentials")
    with world.client() as client:
        provider.signal(signal.SIGSTOP)
        try:
            expires_ms = client.health().credentials_expiration_ms
            assert expires_ms is not None
            time.sleep(max(0.0, expires_ms / 1000 - time.time()) + 0.1)  # let them lapse
            with pytest.raises(CredentialsError) as lapsed:
                client.generate_data_key(key, number_of_bytes=32)
            assert not client.health().ready
            mark = provider.mark()
        finally:
            provider.signal(signal.SIGCONT)
        provider.wait_for_line(PUSHED, after=mark, timeout_s=4 * TTL_S)
        assert client.health().ready
        assert client.generate_data_key(key, number_of_bytes=32).key_id == key
    assert lapsed.value.code == "enclave.CredentialsExpired"
