"""The blocking client: shared by several threads, same results and errors as the async one."""

from __future__ import annotations

import asyncio
import inspect
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest
from nitrokms.parent.rpc import (
    AccessDeniedError,
    AsyncEnclaveClient,
    EnclaveClient,
    InvalidRequestError,
    RPCConnectionError,
    RPCTimeoutError,
)
from nitrokms.proto import messages as m
from nitrokms.proto.addresses import Address, UnixAddress

from tests.rpc.fakes import Action, Fail, FakeEnclave, ServerThread


def test_several_threads_share_one_client_and_one_connection(listen_address: Address) -> None:
    async def attest(request: m.Request) -> m.Body:
        assert isinstance(request.body, m.AttestRequest)
        assert request.body.nonce is not None
        await asyncio.sleep((request.body.nonce[0] % 5) / 1000)  # reorder the replies
        return m.AttestResult(document=b"doc:" + request.body.nonce)

    with (
        ServerThread(listen_address, FakeEnclave(overrides={"Attest": attest})) as server,
        EnclaveClient(server.address) as client,
    ):

        def worker(i: int) -> list[bytes]:
            return [client.attest(nonce=bytes([i, j])) for j in range(10)]

        with ThreadPoolExecutor(max_workers=8) as pool:
            results = list(pool.map(worker, range(8)))
        assert results == [[b"doc:" + bytes([i, j]) for j in range(10)] for i in range(8)]
        assert server.server.connections == 1
        assert len(server.requests) == 80


def test_every_operation_through_the_blocking_api(unix_address: UnixAddress) -> None:
    with (
        ServerThread(unix_address, FakeEnclave()) as server,
        EnclaveClient(str(unix_address)) as client,
    ):
        client.set_credentials("AKIAIOSFODNN7EXAMPLE", "secret", "us-west-2")
        assert client.generate_data_key("alias/a").handle == "h-gen"
        assert client.load_data_key(b"blob").handle == "h-load"
        client.forget_key("h-gen")
        envelope = client.seal(b"data", key_id="alias/a").envelope
        assert client.unseal(envelope) == b"data"
        assert client.attest(b"n") == b"DOC:n"
        assert client.describe().digest == "SHA384"
        assert client.health().region == "us-west-2"
        operations = [r.operation for r in server.requests]
    assert operations == [
        "SetCredentials",
        "GenerateDataKey",
        "LoadDataKey",
        "ForgetKey",
        "Seal",
        "Unseal",
        "Attest",
        "Describe",
        "Health",
    ]


def test_errors_and_timeouts_surface_in_the_calling_thread(unix_address: UnixAddress) -> None:
    release = threading.Event()

    async def deny(request: m.Request) -> Fail:
        return Fail("kms.AccessDeniedException", "denied by statement 1")

    async def slow(request: m.Request) -> Action:
        await asyncio.to_thread(release.wait, 10)
        return FakeEnclave().answer(request.body)

    fake = FakeEnclave(overrides={"GenerateDataKey": deny, "Describe": slow})
    with ServerThread(unix_address, fake), EnclaveClient(unix_address, timeout_s=0.1) as client:
        with pytest.raises(AccessDeniedError, match="denied by statement 1"):
            client.generate_data_key("alias/a")
        with pytest.raises(RPCTimeoutError):
            client.describe()
        release.set()
        with pytest.raises(InvalidRequestError):
            client.seal(b"x")
        assert client.health().key_pool_ready == 2


def test_closed_client_refuses_calls_and_close_is_idempotent(unix_address: UnixAddress) -> None:
    with ServerThread(unix_address, FakeEnclave()):
        client = EnclaveClient(unix_address)
        assert client.health().handles == 0
        client.close()
        client.close()
        with pytest.raises(RPCConnectionError) as caught:
            client.health()
        assert caught.value.code == "client.Closed"


def test_every_async_operation_has_a_blocking_twin() -> None:
    operations = {
        name
        for name, method in inspect.getmembers(AsyncEnclaveClient, inspect.iscoroutinefunction)
        if not name.startswith("_") and name != "aclose"
    }
    assert {"generate_data_key", "seal", "unseal", "call", "health"} <= operations
    for name in operations:
        twin = getattr(EnclaveClient, name, None)
        assert twin is not None, f"EnclaveClient lacks {name}"
        assert not inspect.iscoroutinefunction(twin), name
