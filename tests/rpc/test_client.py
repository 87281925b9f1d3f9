"""The asyncio client against a scripted server over unix and tcp addresses."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from typing import Any

import pytest
from nitrokms.parent.rpc import (
    AccessDeniedError,
    AsyncEnclaveClient,
    Backoff,
    BrokenStreamError,
    CredentialsError,
    DecryptionFailedError,
    InvalidRequestError,
    KMSError,
    NSMError,
    ProtocolViolationError,
    RemoteError,
    RPCConnectionError,
    RPCTimeoutError,
)
from nitrokms.proto import messages as m
from nitrokms.proto.addresses import Address, UnixAddress
from nitrokms.proto.keys import KeyRequest

from tests.rpc.fakes import KEY_ARN, Close, Fail, FakeEnclave, Garbage, ScriptedServer

FAST = Backoff(initial_s=0.01, max_s=0.05)


def run(coro: Any) -> Any:
    return asyncio.run(asyncio.wait_for(coro, 30))


def test_every_operation_reaches_the_server_and_returns_typed_results(
    listen_address: Address,
) -> None:
    async def scenario() -> None:
        fake = FakeEnclave()
        async with (
            ScriptedServer(listen_address, fake) as server,
            AsyncEnclaveClient(server.address) as client,
        ):
            expiry = datetime(2030, 1, 2, 3, 4, 5, tzinfo=UTC)
            await client.set_credentials(
                "AKIAIOSFODNN7EXAMPLE", "wJalrXUtnFEMI/K7MDENG", "eu-west-1", "TOKEN", expiry
            )
            generated = await client.generate_data_key(
                "alias/app", encryption_context={"app": "x"}, grant_tokens=["g1"]
            )
            loaded = await client.load_data_key(b"\x07" * 40, key_id="alias/app")
            await client.forget_key("h-gen")
            sealed = await client.seal(
                b"secret data", handle="h-gen", encryption_context={"a": "b"}
            )
            plaintext = await client.unseal(sealed.envelope, encryption_context={"a": "b"})
            document = await client.attest(nonce=b"\x01\x02", user_data=b"ud")
            described = await client.describe()
            health = await client.health()
            bodies = [r.body for r in server.requests]
            assert server.connections == 1

        assert bodies == [
            m.SetCredentialsRequest(
                access_key_id="AKIAIOSFODNN7EXAMPLE",
                secret_access_key="wJalrXUtnFEMI/K7MDENG",
                region="eu-west-1",
                session_token="TOKEN",
                expiration_ms=1893553445000,
            ),
            m.GenerateDataKeyRequest(
                key_id="alias/app",
                key_spec="AES_256",
                encryption_context={"app": "x"},
                grant_tokens=("g1",),
            ),
            m.LoadDataKeyRequest(ciphertext_blob=b"\x07" * 40, key_id="alias/app"),
            m.ForgetKeyRequest(handle="h-gen"),
            m.SealRequest(plaintext=b"secret data", handle="h-gen", encryption_context={"a": "b"}),
            m.UnsealRequest(envelope=b"ENV:secret data", encryption_context={"a": "b"}),
            m.AttestRequest(nonce=b"\x01\x02", user_data=b"ud"),
            m.DescribeRequest(),
            m.HealthRequest(),
        ]
        assert generated == m.GenerateDataKeyResult(
            handle="h-gen", ciphertext_blob=b"\x01\x02\x03" * 10, key_id=KEY_ARN
        )
        assert loaded.handle == "h-load"
        assert sealed.envelope == b"ENV:secret data"
        assert plaintext == b"secret data"
        assert document == b"DOC:\x01\x02ud"
        assert described.locked_pcrs == (0, 1, 2)
        assert health.credentials_present
        assert health.region == "eu-west-1"
        assert health.credentials_expiration_ms == 1893553445000

    run(scenario())


def test_number_of_bytes_and_key_id_variants_are_sent_as_given(unix_address: UnixAddress) -> None:
    async def scenario() -> list[m.Body]:
        async with (
            ScriptedServer(unix_address, FakeEnclave()) as server,
            AsyncEnclaveClient(unix_address) as client,
        ):
            await client.generate_data_key("k", number_of_bytes=64)
            await client.seal(b"", key_id="alias/x")
            return [r.body for r in server.requests]

    assert run(scenario()) == [
        m.GenerateDataKeyRequest(key_id="k", number_of_bytes=64),
        m.SealRequest(plaintext=b"", key_id="alias/x"),
    ]


def test_many_concurrent_requests_answered_out_of_order_reach_their_callers(
    listen_address: Address,
) -> None:
    count = 64
    gates = {i: asyncio.Event() for i in range(count)}

    async def attest(request: m.Request) -> m.Body:
        assert isinstance(request.body, m.AttestRequest)
        assert request.body.nonce is not None
        await gates[request.body.nonce[0]].wait()
        return m.AttestResult(document=b"doc-for-" + request.body.nonce)

    async def scenario() -> None:
        fake = FakeEnclave(overrides={"Attest": attest})
        async with (
            ScriptedServer(listen_address, fake) as server,
            AsyncEnclaveClient(server.address) as client,
        ):
            calls = [asyncio.create_task(client.attest(nonce=bytes([i]))) for i in range(count)]
            await server.wait_for_requests(count)
            for i in reversed(range(count)):
                gates[i].set()
                await asyncio.sleep(0)
            documents = await asyncio.gather(*calls)
            assert server.connections == 1
        assert documents == [b"doc-for-" + bytes([i]) for i in range(count)]

    run(scenario())


def test_timeout_cancels_only_that_request_and_a_late_reply_is_discarded(
    listen_address: Address,
) -> None:
    release = asyncio.Event()

    async def slow_once(request: m.Request) -> m.Body:
        if request.id == 1:
            await release.wait()
            return m.AttestResult(document=b"late")
        return m.AttestResult(document=b"prompt")

    async def scenario() -> None:
        fake = FakeEnclave(overrides={"Attest": slow_once})
        async with (
            ScriptedServer(listen_address, fake) as server,
            AsyncEnclaveClient(server.address) as client,
        ):
            with pytest.raises(RPCTimeoutError) as caught:
                await client.attest(timeout_s=0.05)
            assert caught.value.code == "client.Timeout"
            assert await client.attest() == b"prompt"
            release.set()
            await server.wait_for_requests(2)
            assert await client.attest() == b"prompt"
            assert (await client.health()).key_pool_target == 4
            assert client.connected
            assert server.connections == 1

    run(scenario())


@pytest.mark.parametrize(
    ("code", "cls"),
    [
        ("kms.AccessDeniedException", AccessDeniedError),
        ("kms.NotFoundException", KMSError),
        ("kms.Unreachable", KMSError),
        ("enclave.CredentialsMissing", CredentialsError),
        ("enclave.CredentialsExpired", CredentialsError),
        ("protocol.InvalidField", ProtocolViolationError),
        ("nsm.InvalidIndex", NSMError),
        ("crypto.DecryptionFailed", DecryptionFailedError),
        ("enclave.UnknownHandle", RemoteError),
        ("vendor.SomethingNew", RemoteError),
    ],
)
def test_error_replies_raise_the_class_for_their_code(
    unix_address: UnixAddress, code: str, cls: type[RemoteError]
) -> None:
    async def fail(request: m.Request) -> Fail:
        return Fail(code, "it went wrong")

    async def scenario() -> None:
        fake = FakeEnclave(overrides={"GenerateDataKey": fail})
        async with (
            ScriptedServer(unix_address, fake),
            AsyncEnclaveClient(unix_address) as client,
        ):
            with pytest.raises(cls) as caught:
                await client.generate_data_key("alias/x")
            assert type(caught.value) is cls
            assert caught.value.code == code
            assert caught.value.operation == "GenerateDataKey"
            assert str(caught.value) == f"{code}: it went wrong"
            assert (await client.health()).ready is False

    run(scenario())


def test_access_denied_is_also_a_kms_error_and_remote_error() -> None:
    assert issubclass(AccessDeniedError, KMSError)
    assert issubclass(KMSError, RemoteError)
    assert issubclass(RPCTimeoutError, TimeoutError)
    assert issubclass(RPCConnectionError, ConnectionError)


def test_abrupt_close_fails_every_call_in_flight_and_the_next_call_reconnects(
    listen_address: Address,
) -> None:
    hang = asyncio.Event()

    async def never(request: m.Request) -> m.Body:
        await hang.wait()
        raise AssertionError("unreachable")

    async def close(request: m.Request) -> Close:
        return Close()

    async def scenario() -> None:
        fake = FakeEnclave(overrides={"Attest": never, "Describe": close})
        async with (
            ScriptedServer(listen_address, fake) as server,
            AsyncEnclaveClient(server.address, backoff=FAST) as client,
        ):
            waiting = [asyncio.create_task(client.attest()) for _ in range(3)]
            await server.wait_for_requests(3)
            with pytest.raises(RPCConnectionError):
                await client.describe()
            for task in waiting:
                with pytest.raises(RPCConnectionError) as caught:
                    await task
                assert caught.value.code == "client.ConnectionLost"
            assert (await client.health()).key_pool_ready == 2
            assert server.connections == 2

    run(scenario())


def test_server_restart_on_the_same_unix_path_fails_in_flight_calls_then_reconnects(
    unix_address: UnixAddress,
) -> None:
    async def never(request: m.Request) -> m.Body:
        await asyncio.Event().wait()
        raise AssertionError("unreachable")

    async def scenario() -> None:
        client = AsyncEnclaveClient(unix_address, backoff=FAST)
        async with client:
            first = ScriptedServer(unix_address, FakeEnclave(overrides={"Attest": never}))
            await first.start()
            try:
                assert (await client.health()).handles == 0
                pending = asyncio.create_task(client.attest())
                await first.wait_for_requests(2)
            finally:
                await first.stop()
            with pytest.raises(RPCConnectionError):
                await pending
            async with ScriptedServer(unix_address, FakeEnclave()) as second:
                assert await client.attest(nonce=b"n") == b"DOC:n"
                assert second.connections == 1
            assert client.connections_opened == 2

    run(scenario())


@pytest.mark.parametrize(
    ("garbage", "code"),
    [
        (b"\x00\x00\x00\x00", "protocol.MalformedFrame"),
        (b"\xff\xff\xff\xff", "protocol.FrameTooLarge"),
        (b"\x00\x00\x00\x01\xff", "protocol.MalformedMessage"),
    ],
)
def test_garbage_from_the_server_fails_the_call_with_a_typed_error(
    unix_address: UnixAddress, garbage: bytes, code: str
) -> None:
    async def spew(request: m.Request) -> Garbage:
        return Garbage(garbage)

    async def scenario() -> None:
        fake = FakeEnclave(overrides={"Describe": spew})
        async with (
            ScriptedServer(unix_address, fake),
            AsyncEnclaveClient(unix_address, backoff=FAST) as client,
        ):
            with pytest.raises(BrokenStreamError) as caught:
                await client.describe()
            assert caught.value.code == code
            assert not client.connected
            assert (await client.health()).key_pool_ready == 2

    run(scenario())


def test_reply_to_the_wrong_operation_is_a_broken_stream(unix_address: UnixAddress) -> None:
    async def wrong(request: m.Request) -> m.Body:
        return m.ForgetKeyResult()

    async def scenario() -> None:
        fake = FakeEnclave(overrides={"Describe": wrong})
        async with (
            ScriptedServer(unix_address, fake),
            AsyncEnclaveClient(unix_address) as client,
        ):
            with pytest.raises(BrokenStreamError):
                await client.describe()

    run(scenario())


def test_connection_level_error_reply_fails_calls_in_flight(unix_address: UnixAddress) -> None:
    async def connection_error(request: m.Request) -> Garbage:
        from nitrokms.proto.connection import ServerConnection

        frame = ServerConnection().send_error(None, None, "protocol.TooManyRequests", "slow down")
        return Garbage(frame)

    async def scenario() -> None:
        fake = FakeEnclave(overrides={"Health": connection_error})
        async with (
            ScriptedServer(unix_address, fake),
            AsyncEnclaveClient(unix_address) as client,
        ):
            with pytest.raises(ProtocolViolationError) as caught:
                await client.health()
            assert caught.value.code == "protocol.TooManyRequests"
            assert caught.value.request_id is None

    run(scenario())


def test_unreachable_enclave_fails_within_the_connect_timeout_after_retries(
    unix_address: UnixAddress,
) -> None:
    async def scenario() -> None:
        async with AsyncEnclaveClient(unix_address, connect_timeout_s=0.3, backoff=FAST) as client:
            with pytest.raises(RPCConnectionError) as caught:
                await client.health()
            assert caught.value.code == "client.ConnectionFailed"
            assert str(unix_address) in caught.value.message
            assert client.failed_connects > 1
            async with ScriptedServer(unix_address, FakeEnclave()):
                assert (await client.health()).key_pool_ready == 2

    run(scenario())


def test_close_fails_calls_in_flight_and_survives_cancellation(unix_address: UnixAddress) -> None:
    async def never(request: m.Request) -> m.Body:
        await asyncio.Event().wait()
        raise AssertionError("unreachable")

    async def scenario() -> None:
        fake = FakeEnclave(overrides={"Describe": never})
        async with ScriptedServer(unix_address, fake) as server:
            client = AsyncEnclaveClient(unix_address)
            pending = asyncio.create_task(client.describe())
            await server.wait_for_requests(1)
            closing = asyncio.create_task(client.aclose())
            await asyncio.sleep(0)
            closing.cancel()
            with pytest.raises(RPCConnectionError) as caught:
                await pending
            assert caught.value.code == "client.Closed"
            assert not client.connected
            with pytest.raises(RPCConnectionError):
                await client.health()
            await client.aclose()

    run(scenario())


@pytest.mark.parametrize(
    "call",
    [
        lambda c: c.generate_data_key("k", key_spec="AES_256", number_of_bytes=32),
        lambda c: c.generate_data_key("k", key_spec="RSA_2048"),
        lambda c: c.seal(b"x"),
        lambda c: c.seal(b"x", handle="bad handle!"),
        lambda c: c.forget_key(None),
        lambda c: c.set_credentials("not an id", "s", "us-east-1"),
        lambda c: c.set_credentials(
            "AKIAIOSFODNN7EXAMPLE", "s", "us-east-1", expiration=datetime(2030, 1, 1)
        ),
        lambda c: c.load_data_key(b""),
        lambda c: c.generate_data_key(KeyRequest("k"), key_spec="AES_256"),
        lambda c: c.generate_data_key(KeyRequest(number_of_bytes=8)),
    ],
)
def test_invalid_arguments_raise_before_anything_is_sent(
    unix_address: UnixAddress, call: Any
) -> None:
    async def scenario() -> None:
        async with (
            ScriptedServer(unix_address, FakeEnclave()) as server,
            AsyncEnclaveClient(unix_address) as client,
        ):
            with pytest.raises(InvalidRequestError):
                await call(client)
            assert server.requests == []

    run(scenario())


def test_secret_arguments_do_not_appear_in_error_messages(unix_address: UnixAddress) -> None:
    async def scenario() -> None:
        async with AsyncEnclaveClient(unix_address) as client:
            with pytest.raises(InvalidRequestError) as caught:
                await client.set_credentials("AKIAIOSFODNN7EXAMPLE", "SECRET" * 30, "us-east-1")
            assert "SECRET" not in str(caught.value)
            assert "SECRET" not in repr(caught.value)

    run(scenario())


def test_calls_beyond_max_in_flight_wait_for_a_slot(unix_address: UnixAddress) -> None:
    release = asyncio.Event()
    answering = 0
    most = 0

    async def gated(request: m.Request) -> m.Body:
        nonlocal answering, most
        answering += 1
        most = max(most, answering)
        await release.wait()
        answering -= 1
        return m.AttestResult(document=b"d")

    async def scenario() -> None:
        fake = FakeEnclave(overrides={"Attest": gated})
        async with (
            ScriptedServer(unix_address, fake) as server,
            AsyncEnclaveClient(unix_address, max_in_flight=2) as client,
        ):
            calls = [asyncio.create_task(client.attest()) for _ in range(5)]
            await server.wait_for_requests(2)
            for _ in range(10):
                await asyncio.sleep(0)
            assert len(server.requests) == 2
            release.set()
            assert await asyncio.gather(*calls) == [b"d"] * 5
        assert most == 2

    run(scenario())


def test_a_key_request_goes_out_as_the_same_body_as_its_fields(unix_address: UnixAddress) -> None:
    key = KeyRequest("alias/app", encryption_context={"app": "x"}, grant_tokens=("g1",))

    async def scenario() -> list[m.Body]:
        async with (
            ScriptedServer(unix_address, FakeEnclave()) as server,
            AsyncEnclaveClient(unix_address) as client,
        ):
            await client.generate_data_key(key)
            await client.generate_data_key(
                "alias/app", encryption_context={"app": "x"}, grant_tokens=["g1"]
            )
            return [r.body for r in server.requests]

    sent = run(scenario())
    assert sent[0] == sent[1] == m.GenerateDataKeyRequest(**key.sized().fields())
