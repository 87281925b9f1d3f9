"""A scripted stand-in for the enclave service, built on proto's sans-I/O ServerConnection.

A handler decides each request's fate: a result body, an error reply, never answering, garbage
bytes, or an abrupt close. Each request is answered from its own task, so delays in the handler
reorder replies. `FakeEnclave` is a stateful default handler (credentials remembered, so Health
reports them) that tests override per operation. `ServerThread` runs a server on its own loop for
blocking callers (the sync client, the CLI).
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any

from nitrokms.proto import messages as m
from nitrokms.proto.addresses import Address
from nitrokms.proto.connection import BadRequest, ServerConnection, error_reply_for
from nitrokms.proto.errors import RemoteProtocolError
from nitrokms.transport.sockets import bound_address, start_server

KEY_ARN = "arn:aws:kms:us-east-1:111122223333:key/1234abcd-12ab-34cd-56ef-1234567890ab"
PCR = bytes(range(48))


@dataclass(frozen=True)
class Fail:
    code: str
    message: str = "scripted failure"


@dataclass(frozen=True)
class Never:
    """Do not answer."""


@dataclass(frozen=True)
class Garbage:
    data: bytes


@dataclass(frozen=True)
class Close:
    """Abort the connection without answering."""


Action = m.Body | Fail | Never | Garbage | Close
Handler = Callable[[m.Request], Awaitable[Action]]


@dataclass
class FakeEnclave:
    """Default answers for every operation; `overrides[op]` replaces one."""

    credentials: m.SetCredentialsRequest | None = None
    overrides: dict[str, Handler] = field(default_factory=dict)

    async def __call__(self, request: m.Request) -> Action:
        override = self.overrides.get(request.operation)
        if override is not None:
            return await override(request)
        return self.answer(request.body)

    def answer(self, body: m.Body) -> Action:  # noqa: PLR0911 - one branch per operation
        if isinstance(body, m.SetCredentialsRequest):
            self.credentials = body
            return m.SetCredentialsResult()
        if isinstance(body, m.GenerateDataKeyRequest):
            return m.GenerateDataKeyResult(
                handle="h-gen", ciphertext_blob=b"\x01\x02\x03" * 10, key_id=KEY_ARN
            )
        if isinstance(body, m.LoadDataKeyRequest):
            return m.LoadDataKeyResult(handle="h-load", key_id=KEY_ARN)
        if isinstance(body, m.ForgetKeyRequest):
            return m.ForgetKeyResult()
        if isinstance(body, m.SealRequest):
            return m.SealResult(envelope=b"ENV:" + body.plaintext, key_id=KEY_ARN, handle="h-seal")
        if isinstance(body, m.UnsealRequest):
            if not body.envelope.startswith(b"ENV:"):
                return Fail("crypto.DecryptionFailed", "decryption failed")
            return m.UnsealResult(plaintext=body.envelope[4:], key_id=KEY_ARN)
        if isinstance(body, m.AttestRequest):
            return m.AttestResult(document=b"DOC:" + (body.nonce or b"") + (body.user_data or b""))
        if isinstance(body, m.DescribeRequest):
            return m.DescribeResult(
                module_id="i-0123456789abcdef0-enc0123456789abcdef",
                pcrs={0: PCR, 1: PCR, 2: PCR},
                debug_mode=False,
                service_version="0.1.0",
                nsm_version="1.0.0",
                digest="SHA384",
                locked_pcrs=(0, 1, 2),
            )
        assert isinstance(body, m.HealthRequest)
        creds = self.credentials
        return m.HealthResult(
            ready=creds is not None,
            credentials_present=creds is not None,
            key_pool_ready=2,
            key_pool_target=4,
            handles=0,
            credentials_expiration_ms=creds.expiration_ms if creds else None,
            region=creds.region if creds else None,
        )


class ScriptedServer:
    """An RPC server answering through `handler`; records every request it receives."""

    def __init__(self, address: Address, handler: Handler) -> None:
        self._requested_address = address
        self.handler = handler
        self.requests: list[m.Request] = []
        self.connections = 0
        self._changed: asyncio.Condition | None = None
        self._server: asyncio.AbstractServer | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._tasks: set[asyncio.Task[Any]] = set()

    @property
    def address(self) -> Address:
        assert self._server is not None
        return bound_address(self._server)

    async def __aenter__(self) -> ScriptedServer:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def start(self) -> None:
        self._changed = asyncio.Condition()
        self._server = await start_server(self._serve, self._requested_address)

    async def stop(self) -> None:
        """Stop listening, abort every connection, and wait for the handlers to finish."""
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
        await self.drop_connections()

    async def drop_connections(self) -> None:
        for writer in list(self._writers):
            writer.transport.abort()
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.wait(list(self._tasks))

    async def wait_for_requests(self, count: int) -> list[m.Request]:
        assert self._changed is not None
        async with self._changed:
            await self._changed.wait_for(lambda: len(self.requests) >= count)
        return self.requests[:count]

    async def wait_for_operation(self, operation: str, count: int = 1) -> list[m.Request]:
        """Wait until `count` requests for `operation` arrived; return them."""
        assert self._changed is not None

        def matching() -> list[m.Request]:
            return [r for r in self.requests if r.operation == operation]

        async with self._changed:
            await self._changed.wait_for(lambda: len(matching()) >= count)
        return matching()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        self._writers.add(writer)
        self.connections += 1
        conn = ServerConnection()
        answers: set[asyncio.Task[None]] = set()
        try:
            await self._read_requests(reader, writer, conn, answers)
        except (ConnectionError, asyncio.CancelledError):
            pass
        finally:
            for answer in answers:
                answer.cancel()
            if answers:
                await asyncio.wait(answers)
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()
            self._writers.discard(writer)
            self._tasks.discard(task)

    async def _read_requests(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        conn: ServerConnection,
        answers: set[asyncio.Task[None]],
    ) -> None:
        while data := await reader.read(65536):
            try:
                events = conn.receive_data(data)
            except RemoteProtocolError as exc:
                writer.write(conn.send(error_reply_for(exc)))
                return
            for event in events:
                if isinstance(event, BadRequest):
                    writer.write(conn.send(event.error))
                    continue
                await self._record(event)
                answer = asyncio.create_task(self._answer(conn, writer, event))
                answers.add(answer)
                answer.add_done_callback(answers.discard)

    async def _record(self, request: m.Request) -> None:
        assert self._changed is not None
        async with self._changed:
            self.requests.append(request)
            self._changed.notify_all()

    async def _answer(
        self, conn: ServerConnection, writer: asyncio.StreamWriter, request: m.Request
    ) -> None:
        action = await self.handler(request)
        if isinstance(action, m.Body):
            writer.write(conn.send_reply(request.id, action))
        elif isinstance(action, Fail):
            writer.write(
                conn.send_error(request.id, request.operation, action.code, action.message)
            )
        elif isinstance(action, Garbage):
            writer.write(action.data)
        elif isinstance(action, Close):
            writer.transport.abort()


class ServerThread:
    """A ScriptedServer on a private event loop, for tests whose client blocks."""

    def __init__(self, address: Address, handler: Handler) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.server = ScriptedServer(address, handler)

    def __enter__(self) -> ServerThread:
        self._thread.start()
        self.run(self.server.start())
        return self

    def __exit__(self, *exc: object) -> None:
        try:
            self.run(self.server.stop())
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self._thread.join()
            self.loop.close()

    def run(self, coro: Coroutine[Any, Any, Any], timeout_s: float = 10.0) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout_s)

    @property
    def address(self) -> Address:
        return self.server.address

    @property
    def requests(self) -> list[m.Request]:
        return list(self.server.requests)
