"""The network between the relay and KMS misbehaving, through a fault-injecting TCP proxy:

    enclave `faulty` -> relay `relay-faulty` -> FaultProxy -> local KMS

Silence (timeouts), resets and a closed KMS port all reach the client as `kms.Unreachable`
within the enclave's bounded retries; the relay process survives each and keeps serving.
"""

from __future__ import annotations

import socket
import ssl
import time
from collections.abc import Iterator

import pytest
from nitrokms.parent.rpc import EnclaveClient
from nitrokms.parent.rpc.errors import RemoteError
from nitrokms.sim.world import World

from tests.reliability.support import FaultyPath, faulty_path

ATTEMPTS = 2
READ_TIMEOUT_S = 10.0  # enclave.kms.DEFAULT_READ_TIMEOUT_S
UNREACHABLE_CODES = ("kms.Unreachable",)


@pytest.fixture(scope="module")
def faulty(world: World) -> Iterator[FaultyPath]:
    with faulty_path(world, "--kms-max-attempts", str(ATTEMPTS)) as path:
        yield path


@pytest.fixture
def faulty_client(faulty: FaultyPath) -> Iterator[EnclaveClient]:
    faulty.proxy.set_mode("pass")
    with EnclaveClient(faulty.enclave.address, timeout_s=60.0) as opened:
        yield opened
    faulty.proxy.set_mode("pass")


def _fresh_connections(faulty: FaultyPath) -> None:
    """Drop pooled keep-alive connections so the next call dials through the proxy again."""
    faulty.proxy.drop_all()


def test_blackholed_kms_times_out_typed_then_recovers(
    faulty: FaultyPath, faulty_client: EnclaveClient, key_id: str
) -> None:
    assert faulty_client.generate_data_key(key_id).handle
    faulty.proxy.set_mode("blackhole")
    _fresh_connections(faulty)
    started = time.monotonic()
    with pytest.raises(RemoteError) as caught:
        faulty_client.generate_data_key(key_id)
    elapsed = time.monotonic() - started
    assert caught.value.code == "kms.Unreachable"
    assert elapsed < ATTEMPTS * (READ_TIMEOUT_S + 5) + 10, "retries were not bounded in time"
    faulty.proxy.set_mode("pass")
    assert faulty_client.generate_data_key(key_id).handle


def _reset_error(faulty: FaultyPath, client: EnclaveClient, key_id: str) -> RemoteError:
    faulty.proxy.set_mode("reset")
    _fresh_connections(faulty)
    before = faulty.proxy.connections["reset"]
    with pytest.raises(RemoteError) as caught:
        client.generate_data_key(key_id)
    assert 1 <= faulty.proxy.connections["reset"] - before <= ATTEMPTS * 2
    faulty.proxy.set_mode("pass")
    return caught.value


def test_network_resets_are_typed_then_recover(
    faulty: FaultyPath, faulty_client: EnclaveClient, key_id: str
) -> None:
    error = _reset_error(faulty, faulty_client, key_id)
    assert error.code in UNREACHABLE_CODES, str(error)
    assert faulty_client.generate_data_key(key_id).handle


def test_reset_during_the_handshake_is_reported_as_unreachable_not_as_a_tls_failure(
    faulty: FaultyPath, faulty_client: EnclaveClient, key_id: str
) -> None:
    error = _reset_error(faulty, faulty_client, key_id)
    assert error.code == "kms.Unreachable", str(error)


def test_slow_network_is_waited_for(
    faulty: FaultyPath, faulty_client: EnclaveClient, key_id: str
) -> None:
    faulty.proxy.set_mode("delay", delay_s=0.1)
    _fresh_connections(faulty)
    assert faulty_client.generate_data_key(key_id).handle


def _open_tunnel(world: World, relay_socket: str) -> ssl.SSLSocket:
    """A TLS session to KMS through the relay, as the enclave would make one."""
    raw = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    raw.settimeout(10)
    raw.connect(relay_socket)
    context = ssl.create_default_context(cafile=str(world.kms_ca_path))
    return context.wrap_socket(raw, server_hostname=world.kms_host)


def test_refused_upstream_fails_that_connection_and_the_relay_keeps_serving(
    world: World, faulty: FaultyPath, faulty_client: EnclaveClient, key_id: str
) -> None:
    relay_socket = str(world.run_dir / "relay-faulty.sock")
    _fresh_connections(faulty)
    established = _open_tunnel(world, relay_socket)
    faulty.proxy.set_mode("refuse")
    try:
        with pytest.raises((ssl.SSLError, ConnectionError)):
            _open_tunnel(world, relay_socket).close()
        with pytest.raises(RemoteError) as caught:
            faulty_client.generate_data_key(key_id)
        assert caught.value.code in UNREACHABLE_CODES, str(caught.value)
        established.sendall(b"GET / HTTP/1.1\r\nHost: kms\r\nConnection: close\r\n\r\n")
        assert established.recv(64).startswith(b"HTTP/1.1 ")
    finally:
        established.close()
    assert faulty.relay.returncode is None, "the relay died on an upstream refusal"
    faulty.proxy.set_mode("pass")
    assert faulty_client.generate_data_key(key_id).handle
