"""Processes of the world dying or restarting: KMS under load, the enclave mid-request, the
parent's relay, and the credential provider falling behind so credentials expire under load.

What must hold each time: every request ends (none hangs) with a result or a typed error, and
once the failed part is back, requests succeed again without restarting anything else.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from nitrokms.parent.rpc import EnclaveClient
from nitrokms.parent.rpc.errors import RemoteError, RPCConnectionError, RPCError
from nitrokms.sim.kms.faults import write_plan
from nitrokms.sim.world import World

from tests.reliability.support import CONTEXT, LoadThread, gdk_call

# A dropped KMS connection reads as kms.Unreachable (never as a TLS verification failure, which
# means a man in the middle); a KMS stopping mid-request may answer 500 while it drains.
KMS_DOWN_CODES = {"kms.Unreachable", "kms.KMSInternalException"}


def test_kms_restart_under_load(world: World, key_id: str) -> None:
    with LoadThread(world.enclave_address, gdk_call(key_id, CONTEXT), concurrency=8) as load:
        load.wait_for_successes(20)
        world.restart_kms()
        load.wait_for_successes(50)
        result = load.finish()
    assert set(result.errors) <= KMS_DOWN_CODES, result.messages
    assert "client.Timeout" not in result.errors
    with world.client() as client:
        for _ in range(10):
            assert client.generate_data_key(key_id, encryption_context=CONTEXT).handle


def test_enclave_killed_mid_request_then_client_reconnects(
    world: World, key_id: str, fault_plan: Path
) -> None:
    kms = world.process("kms")
    with world.client(timeout_s=30.0) as client:
        assert client.generate_data_key(key_id).handle
        write_plan(fault_plan, [{"operation": "GenerateDataKey", "delay_s": 3.0}])
        mark = kms.mark()
        outcome: list[BaseException | object] = []
        caller = threading.Thread(target=_capture, args=(outcome, client, key_id))
        caller.start()
        kms.wait_for_line("injecting fault", after=mark, timeout_s=30)
        old_pid = world.enclave_pid
        world.enclave.process.signal(signal.SIGCONT)
        _kill(old_pid)
        caller.join(30)
        assert not caller.is_alive(), "the client hung after the enclave died"
        assert len(outcome) == 1
        assert isinstance(outcome[0], RPCConnectionError), outcome
        assert world.stop_enclave() != 0, "the killed enclave exited cleanly?"
        world.start_enclave()
        assert world.enclave_pid != old_pid
        assert client.generate_data_key(key_id).handle


def _capture(outcome: list[BaseException | object], client: EnclaveClient, key_id: str) -> None:
    try:
        outcome.append(client.generate_data_key(key_id))
    except RPCError as exc:
        outcome.append(exc)


def _kill(pid: int) -> None:
    import os

    os.kill(pid, signal.SIGKILL)


def test_relay_killed_enclave_keeps_its_keys(world: World, key_id: str) -> None:
    with world.client() as client:
        held = client.generate_data_key(key_id, encryption_context=CONTEXT)
        sealed = client.seal(b"before the relay died", handle=held.handle)
        relay = world.process("relay")
        relay.signal(signal.SIGKILL)
        relay.stop()
        with pytest.raises(RemoteError) as caught:
            client.generate_data_key(key_id)
        assert caught.value.code in KMS_DOWN_CODES
        during = client.seal(b"while the relay is down", handle=held.handle)
        assert (
            client.unseal(sealed.envelope, encryption_context=CONTEXT) == b"before the relay died"
        )
        world._start_relay()  # the world has no public restart for its relay
        assert (
            client.unseal(during.envelope, encryption_context=CONTEXT) == b"while the relay is down"
        )
        after = client.seal(b"after the relay restarted", handle=held.handle)
        assert (
            client.unseal(after.envelope, encryption_context=CONTEXT)
            == b"after the relay restarted"
        )
        assert client.generate_data_key(key_id).handle


# --- credentials expiring --------------------------------------------------------------------

CREDENTIALS_TTL_S = 5.0


@pytest.fixture(scope="module")
def expiring_world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    workdir = tmp_path_factory.mktemp("expiring-world")
    with World(workdir, credentials_ttl_s=CREDENTIALS_TTL_S) as running:
        yield running


def test_credentials_expiring_under_load(expiring_world: World) -> None:
    world = expiring_world
    key = world.create_attested_key()
    provider = world.provider
    with LoadThread(world.enclave_address, gdk_call(key), concurrency=4) as load:
        load.wait_for_successes(10)
        provider.signal(signal.SIGSTOP)
        try:
            _wait_for_error(load, "enclave.CredentialsExpired", timeout_s=CREDENTIALS_TTL_S + 30)
        finally:
            mark = provider.mark()
            provider.signal(signal.SIGCONT)
        provider.wait_for_line("pushed credentials", after=mark, timeout_s=30)
        load.wait_for_successes(20)
        result = load.finish()
    assert set(result.errors) == {"enclave.CredentialsExpired"}, result.messages
    with world.client() as client:
        assert client.generate_data_key(key).handle


def _wait_for_error(load: LoadThread, code: str, timeout_s: float) -> None:
    with load.result.progress:
        seen = load.result.progress.wait_for(lambda: load.result.errors[code] > 0, timeout_s)
    assert seen, f"no {code} within {timeout_s:g} s: {load.result}"
