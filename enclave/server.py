"""The asyncio RPC server: proto frames in, operation results out, many at once, within limits.

Each connection is a `Session` (enclave.session: reading, the memory budget, replies); requests
run in the scheduler's lanes (enclave.scheduler: local work apart from KMS-bound work, fair shares
per connection). Limits: connections, requests in flight per connection, frame size (checked from
the length header, before buffering), bytes held per connection and in total, invalid requests per
connection, a per-request timeout (`enclave.Timeout`), an idle timeout (a connection with nothing
in flight must complete a frame at least every `idle_timeout_s`, so a peer that dribbles bytes or
goes silent is dropped) and a send timeout (a peer that takes no reply bytes for `send_timeout_s`
is dropped). A broken stream gets one error frame and only that connection is closed.

A second, optional listener (`start_control`) serves only the operations the credential provider
needs (CONTROL_OPERATIONS), with connection slots of its own and priority in the lanes, so
connections on the service address, however many or slow, cannot lock the provider out.

Shutdown stops accepting, lets requests in flight finish until a deadline, answers the rest with
`enclave.ShuttingDown`, then runs the shutdown hooks (the keyring wipe). A handler thread cannot be
interrupted: one that outlives its timeout or the shutdown deadline runs on (its KMS calls make no
further attempt past the deadline) and its result is dropped.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

from nitrokms.enclave.lanes import KMS, LOCAL, Lane, lane_by_operation
from nitrokms.enclave.scheduler import LaneLimits, Scheduler
from nitrokms.enclave.session import READ_CHUNK_BYTES, Session
from nitrokms.proto.addresses import Address, UnixAddress
from nitrokms.proto.codes import INTERNAL_ERROR, SHUTTING_DOWN, TIMEOUT, TOO_MANY_CONNECTIONS
from nitrokms.proto.connection import ServerConnection
from nitrokms.proto.framing import DEFAULT_MAX_FRAME_BYTES
from nitrokms.proto.messages import Body
from nitrokms.transport.sockets import bound_address, start_server

__all__ = [
    "CONTROL_OPERATIONS",
    "INTERNAL_ERROR",
    "SHUTTING_DOWN",
    "TIMEOUT",
    "TOO_MANY_CONNECTIONS",
    "Budget",
    "RPCServer",
    "ServerLimits",
]

CONTROL_OPERATIONS: Final = frozenset({"SetCredentials", "Health"})
MiB: Final = 1024 * 1024

Handler = Callable[[Body], Body]
LaneOf = Callable[[Body], Lane]


@dataclass(frozen=True)
class ServerLimits:
    """Every limit of the server (RELIABILITY.md says how each default was chosen)."""

    max_connections: int = 256
    max_in_flight: int = 64
    max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES
    connection_buffer_bytes: int = 16 * MiB
    total_buffer_bytes: int = 256 * MiB
    max_bad_requests: int = 4
    request_timeout_s: float = 30.0
    idle_timeout_s: float = 60.0
    send_timeout_s: float = 10.0
    shutdown_grace_s: float = 10.0
    workers: int = 16
    local_workers: int = 4
    max_workers_per_connection: int = 8
    control_max_connections: int = 8

    def __post_init__(self) -> None:
        for name in (
            "max_connections", "max_in_flight", "max_frame_bytes", "max_bad_requests", "workers",
            "local_workers", "max_workers_per_connection", "control_max_connections",
        ):  # fmt: skip
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1")
        for name in ("request_timeout_s", "idle_timeout_s", "send_timeout_s", "shutdown_grace_s"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive")
        least = self.max_frame_bytes + 2 * READ_CHUNK_BYTES
        if self.connection_buffer_bytes < least:
            raise ValueError(f"connection_buffer_bytes must be at least {least} (a whole frame)")
        if self.total_buffer_bytes < self.connection_buffer_bytes:
            raise ValueError("total_buffer_bytes must be at least connection_buffer_bytes")

    def lanes(self) -> dict[str, LaneLimits]:
        return {
            LOCAL: LaneLimits(self.local_workers, self.max_workers_per_connection),
            KMS: LaneLimits(self.workers, self.max_workers_per_connection),
        }


class Budget:
    """Bytes held by all sessions, with a wake-up for sessions waiting for some to be freed."""

    def __init__(self) -> None:
        self.held = 0
        self._waiters: list[asyncio.Future[None]] = []

    def adjust(self, delta: int) -> None:
        self.held += delta
        if delta < 0:
            self.wake()

    def release(self, amount: int) -> None:
        self.adjust(-amount)

    def wait_for_release(self) -> asyncio.Future[None]:
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        return waiter

    def wake(self) -> None:
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(None)


class _Listener:
    def __init__(self, max_connections: int, operations: frozenset[str] | None) -> None:
        self.max_connections = max_connections
        self.operations = operations
        self.server: asyncio.AbstractServer | None = None
        self.address: Address | None = None
        self.sessions: set[Session] = set()


class RPCServer:
    """Serve `handler` (blocking, thread-safe) over proto frames. Start, then `shutdown()`.

    `lane_of` picks each request's lane ("local" or "kms"); by default from the operation alone.
    """

    def __init__(
        self,
        handler: Handler,
        limits: ServerLimits | None = None,
        *,
        lane_of: LaneOf = lane_by_operation,
        on_shutdown: Callable[[], None] | None = None,
    ) -> None:
        self.handler = handler
        self.limits = limits or ServerLimits()
        self.lane_of = lane_of
        self.budget = Budget()
        self.scheduler: Scheduler[Body, Body] = Scheduler(self.limits.lanes())
        self._on_shutdown = on_shutdown
        self._main = _Listener(self.limits.max_connections, None)
        self._control = _Listener(self.limits.control_max_connections, CONTROL_OPERATIONS)
        self._stopping = asyncio.Event()
        self._stopped = asyncio.Event()

    @property
    def address(self) -> Address:
        """The bound address. Raises RuntimeError before `start`."""
        if self._main.address is None:
            raise RuntimeError("the server has not been started")
        return self._main.address

    @property
    def control_address(self) -> Address | None:
        return self._control.address

    @property
    def connection_count(self) -> int:
        return len(self._main.sessions) + len(self._control.sessions)

    def stopping(self) -> bool:
        return self._stopping.is_set()

    async def start(self, address: Address) -> Address:
        """Listen on `address`; return the address actually bound. Raises OSError/AddressError."""
        return await self._listen(self._main, address)

    async def start_control(self, address: Address) -> Address:
        """Also listen on `address` for the credential provider (CONTROL_OPERATIONS only)."""
        return await self._listen(self._control, address)

    async def _listen(self, listener: _Listener, address: Address) -> Address:
        async def accept(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await self._accept(listener, reader, writer)

        listener.server = await start_server(accept, address)
        listener.address = bound_address(listener.server)
        return listener.address

    async def wait_stopped(self) -> None:
        await self._stopped.wait()

    def schedule(
        self,
        session: Session,
        body: Body,
        deadline: float,
        on_done: Callable[[asyncio.Future[Body]], None] | None = None,
    ) -> asyncio.Future[Body]:
        """Queue `handler(body)` in its lane, in `session`'s share, until `deadline`; `on_done`
        is called on the loop as soon as the result is in (Lane.submit)."""
        return self.scheduler.submit(
            self.lane_of(body), session, self.handler, body,
            deadline=deadline, priority=session.priority, label=body.operation, on_done=on_done,
        )  # fmt: skip

    async def shutdown(self) -> None:
        """Stop accepting, drain in-flight requests until the grace deadline, run the hooks."""
        if self._stopping.is_set():
            await self._stopped.wait()
            return
        self._stopping.set()
        listeners = (self._main, self._control)
        sessions = [s for listener in listeners for s in listener.sessions]
        for session in sessions:
            session.stop_reading()
        self.budget.wake()
        for listener in listeners:
            await self._close(listener)
        if sessions:
            waiters = [asyncio.ensure_future(s.closed.wait()) for s in sessions]
            await asyncio.wait(waiters, timeout=self.limits.shutdown_grace_s + 1.0)
            for waiter in waiters:
                waiter.cancel()
        for session in sessions:
            session.abort()
        self.scheduler.shutdown()
        try:
            if self._on_shutdown is not None:
                self._on_shutdown()
        finally:
            self._stopped.set()

    async def _close(self, listener: _Listener) -> None:
        if listener.server is not None:
            listener.server.close()
            await listener.server.wait_closed()
        address = listener.address
        if isinstance(address, UnixAddress) and not address.abstract:
            with contextlib.suppress(OSError):
                os.unlink(address.path)

    async def _accept(
        self, listener: _Listener, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        refusal = None
        if self._stopping.is_set():
            refusal = (SHUTTING_DOWN, "the enclave service is shutting down")
        elif len(listener.sessions) >= listener.max_connections:
            refusal = (TOO_MANY_CONNECTIONS, "too many connections; try again later")
        if refusal is not None:
            await _refuse(writer, *refusal, timeout_s=self.limits.send_timeout_s)
            return
        session = Session(self, reader, writer, operations=listener.operations)
        listener.sessions.add(session)
        try:
            await session.run()
        finally:
            listener.sessions.discard(session)


async def _refuse(writer: asyncio.StreamWriter, code: str, message: str, timeout_s: float) -> None:
    with contextlib.suppress(OSError, TimeoutError):
        writer.write(ServerConnection().send_error(None, None, code, message))
        await asyncio.wait_for(writer.drain(), timeout_s)
    writer.close()
