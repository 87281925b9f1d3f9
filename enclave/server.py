"""The asyncio RPC server: proto frames in, operation results out, many at once.

One read loop per connection feeds a sans-I/O `ServerConnection`; each request runs as its own
task, which calls the blocking handler in a thread pool and writes its reply when it finishes, in
any order. Limits: connections, requests in flight per connection, frame size (checked from the
length header, before buffering), a per-request timeout (`enclave.Timeout`) and an idle timeout:
a connection with nothing in flight must complete a frame at least every `idle_timeout_s`, so a
peer that dribbles bytes (slowloris) or goes silent is dropped. A broken stream gets one error
frame and only that connection is closed. Shutdown stops accepting, lets requests in flight finish
until a deadline, answers the rest with `enclave.ShuttingDown`, then runs the shutdown hooks
(the keyring wipe). A handler thread cannot be interrupted: one that outlives its timeout or the
shutdown deadline runs on (KMS calls are bounded by botocore's own timeouts) and its result is
dropped.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import sys
import traceback
from collections.abc import Callable
from concurrent.futures import Executor, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Final

from nitrokms.enclave.errors import EnclaveError
from nitrokms.proto.addresses import Address, UnixAddress
from nitrokms.proto.codes import (
    INTERNAL_ERROR,
    SHUTTING_DOWN,
    TIMEOUT,
    TOO_MANY_CONNECTIONS,
    TOO_MANY_IN_FLIGHT,
)
from nitrokms.proto.connection import BadRequest, ServerConnection, error_reply_for
from nitrokms.proto.errors import ProtocolError, RemoteProtocolError
from nitrokms.proto.framing import DEFAULT_MAX_FRAME_BYTES
from nitrokms.proto.messages import Body, Request
from nitrokms.transport.sockets import bound_address, start_server

log = logging.getLogger("enclave.server")

READ_CHUNK_BYTES: Final = 64 * 1024

Handler = Callable[[Body], Body]


@dataclass(frozen=True)
class ServerLimits:
    max_connections: int = 256
    max_in_flight: int = 64
    max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES
    request_timeout_s: float = 30.0
    idle_timeout_s: float = 60.0
    shutdown_grace_s: float = 10.0
    workers: int = 16

    def __post_init__(self) -> None:
        for name in ("max_connections", "max_in_flight", "max_frame_bytes", "workers"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1")
        for name in ("request_timeout_s", "idle_timeout_s", "shutdown_grace_s"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive")


class RPCServer:
    """Serve `handler` (blocking, thread-safe) over proto frames. Start, then `shutdown()`."""

    def __init__(
        self,
        handler: Handler,
        limits: ServerLimits | None = None,
        *,
        executor: Executor | None = None,
        on_shutdown: Callable[[], None] | None = None,
    ) -> None:
        self.handler = handler
        self.limits = limits or ServerLimits()
        self._own_executor = executor is None
        self._executor = executor or ThreadPoolExecutor(
            self.limits.workers, thread_name_prefix="enclave-rpc"
        )
        self._on_shutdown = on_shutdown
        self._server: asyncio.AbstractServer | None = None
        self._connections: set[_Connection] = set()
        self._stopping = asyncio.Event()
        self._stopped = asyncio.Event()
        self._address: Address | None = None

    @property
    def address(self) -> Address:
        """The bound address. Raises RuntimeError before `start`."""
        if self._address is None:
            raise RuntimeError("the server has not been started")
        return self._address

    @property
    def connection_count(self) -> int:
        return len(self._connections)

    async def start(self, address: Address) -> Address:
        """Listen on `address`; return the address actually bound. Raises OSError/AddressError."""
        self._server = await start_server(self._accept, address)
        self._address = bound_address(self._server)
        return self._address

    async def wait_stopped(self) -> None:
        await self._stopped.wait()

    async def shutdown(self) -> None:
        """Stop accepting, drain in-flight requests until the grace deadline, run the hooks."""
        if self._stopping.is_set():
            await self._stopped.wait()
            return
        self._stopping.set()
        for connection in self._connections:
            connection.stop_reading()
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
        self._remove_socket_file()
        connections = list(self._connections)
        if connections:
            waiters = [asyncio.ensure_future(c.closed.wait()) for c in connections]
            await asyncio.wait(waiters, timeout=self.limits.shutdown_grace_s + 1.0)
            for waiter in waiters:
                waiter.cancel()
        for connection in connections:
            connection.abort()
        if self._own_executor:
            self._executor.shutdown(wait=False, cancel_futures=True)
        try:
            if self._on_shutdown is not None:
                self._on_shutdown()
        finally:
            self._stopped.set()

    def _remove_socket_file(self) -> None:
        address = self._address
        if isinstance(address, UnixAddress) and not address.abstract:
            with contextlib.suppress(OSError):
                os.unlink(address.path)

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        refusal = None
        if self._stopping.is_set():
            refusal = (SHUTTING_DOWN, "the enclave service is shutting down")
        elif len(self._connections) >= self.limits.max_connections:
            refusal = (TOO_MANY_CONNECTIONS, "too many connections; try again later")
        if refusal is not None:
            await _refuse(writer, *refusal, timeout_s=self.limits.idle_timeout_s)
            return
        connection = _Connection(self, reader, writer)
        self._connections.add(connection)
        try:
            await connection.run()
        finally:
            self._connections.discard(connection)

    def run_handler(self, body: Body) -> asyncio.Future[Body]:
        return asyncio.get_running_loop().run_in_executor(self._executor, self.handler, body)


async def _refuse(writer: asyncio.StreamWriter, code: str, message: str, timeout_s: float) -> None:
    with contextlib.suppress(OSError, TimeoutError):
        writer.write(ServerConnection().send_error(None, None, code, message))
        await asyncio.wait_for(writer.drain(), timeout_s)
    writer.close()


class _Connection:
    def __init__(
        self, server: RPCServer, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        self.server, self.limits = server, server.limits
        self.reader, self.writer = reader, writer
        self.state = ServerConnection(self.limits.max_frame_bytes)
        self.tasks: dict[asyncio.Task[None], Request] = {}
        # Requests counted against max_in_flight: a slot is freed just before its reply is
        # written, so a client that sends its next request on seeing a reply is never refused
        # (the task itself lingers for a loop iteration or more after the write).
        self.in_flight = 0
        self.write_lock = asyncio.Lock()
        self.closed = asyncio.Event()
        self.broken = False
        self.loop = asyncio.get_running_loop()
        self.last_progress = self.loop.time()
        self.read_timeout: asyncio.Timeout | None = None

    async def run(self) -> None:
        try:
            await self._read_loop()
            await self._drain_tasks()
        except Exception:  # a bug here must not take the server down
            log.error("connection handler failed at %s", _safe_traceback())
        finally:
            self._cancel_tasks()
            self.writer.close()
            self.closed.set()

    def abort(self) -> None:
        self._cancel_tasks()
        self.writer.transport.abort()

    def stop_reading(self) -> None:
        """Shutdown: end the read loop now (requests in flight carry on until the grace)."""
        if self.read_timeout is not None and not self.read_timeout.expired():
            self.read_timeout.reschedule(self.loop.time())

    async def _read_loop(self) -> None:
        while not self.broken:
            data = await self._read()
            if data is None:
                return
            if not data:
                await self._eof()
                return
            if not await self._feed(data):
                return

    async def _read(self) -> bytes | None:
        """The next chunk; b"" at EOF; None on idle timeout or shutdown.

        One `asyncio.timeout` per read (a timer handle; no task or wait set per chunk), which
        `stop_reading` fires early at shutdown.
        """
        while not self.server._stopping.is_set():
            deadline = self.last_progress + self.limits.idle_timeout_s
            try:
                async with asyncio.timeout_at(deadline) as self.read_timeout:
                    data: bytes = await self.reader.read(READ_CHUNK_BYTES)
                    return data
            except TimeoutError:
                if self.read_timeout is None or not self.read_timeout.expired():
                    raise
            finally:
                self.read_timeout = None
            if self.server._stopping.is_set():
                return None
            if not self.tasks:
                await self._send_error(None, None, TIMEOUT, "connection idle too long")
                return None
            self.last_progress = self.loop.time()
        return None

    async def _eof(self) -> None:
        try:
            self.state.receive_eof()
        except RemoteProtocolError as exc:
            await self._fail(exc)

    async def _feed(self, data: bytes) -> bool:
        try:
            events = self.state.receive_data(data)
        except RemoteProtocolError as exc:
            await self._fail(exc)
            return False
        for event in events:
            self.last_progress = self.loop.time()
            if isinstance(event, BadRequest):
                await self._write(self.state.send(event.error))
            elif self.in_flight >= self.limits.max_in_flight:
                await self._send_error(
                    event.id,
                    event.operation,
                    TOO_MANY_IN_FLIGHT,
                    f"more than {self.limits.max_in_flight} requests in flight",
                )
            else:
                self.in_flight += 1
                task = self.loop.create_task(self._serve(event))
                self.tasks[task] = event
                task.add_done_callback(self._task_done)
        return True

    def _task_done(self, task: asyncio.Task[None]) -> None:
        self.tasks.pop(task, None)
        self.last_progress = self.loop.time()

    async def _fail(self, exc: RemoteProtocolError) -> None:
        """A broken stream: one error frame, then this connection (only) is closed."""
        log.info("closing a connection after a bad frame: %s", exc.code)
        self.broken = True
        self._cancel_tasks()
        await self._write(self.state.send(error_reply_for(exc)), force=True)

    async def _serve(self, request: Request) -> None:
        try:
            code, message, result = await self._outcome(request)
        finally:
            self.in_flight -= 1
        await self._reply(request, result, code, message)

    async def _outcome(self, request: Request) -> tuple[str | None, str, Body | None]:
        """Run the handler: (error code or None, error message, result or None)."""
        code: str | None = None
        message, result = "", None
        future = self.server.run_handler(request.body)
        timeout = asyncio.timeout(self.limits.request_timeout_s)
        try:
            async with timeout:
                result = await future  # a timeout cancels the future (if not yet running)
        except TimeoutError as exc:
            if not timeout.expired():  # the handler's own TimeoutError: a bug, like any other
                code, message = _internal(request, exc)
            else:
                code = TIMEOUT
                message = (
                    f"{request.operation} did not finish within {self.limits.request_timeout_s}s"
                )
        except EnclaveError as exc:
            code, message = exc.code, exc.message
        except asyncio.CancelledError:
            future.cancel()
            raise
        except Exception as exc:
            code, message = _internal(request, exc)
        return code, message, result

    async def _reply(
        self, request: Request, result: Body | None, code: str | None, message: str
    ) -> None:
        try:
            if result is not None:
                frame = self.state.send_reply(request.id, result)
            else:
                frame = self._error_frame(
                    request.id, request.operation, code or INTERNAL_ERROR, message
                )
        except ProtocolError as exc:
            frame = self._error_frame(request.id, request.operation, *_internal(request, exc))
        await self._write(frame)

    def _error_frame(self, request_id: int | None, op: str | None, code: str, msg: str) -> bytes:
        try:
            return self.state.send_error(request_id, op, code, msg)
        except ProtocolError:
            return self.state.send_error(request_id, op, INTERNAL_ERROR, "internal error")

    async def _send_error(
        self, request_id: int | None, operation: str | None, code: str, message: str
    ) -> None:
        await self._write(self._error_frame(request_id, operation, code, message))

    async def _write(self, frame: bytes, *, force: bool = False) -> None:
        if self.broken and not force:
            return
        async with self.write_lock:
            try:
                self.writer.write(frame)
                if self.writer.transport.get_write_buffer_size():  # else drain is a no-op
                    await asyncio.wait_for(self.writer.drain(), self.limits.idle_timeout_s)
            except (OSError, TimeoutError, RuntimeError):
                self.broken = True
                self.writer.transport.abort()

    async def _drain_tasks(self) -> None:
        if not self.tasks:
            return
        pending = set(self.tasks)
        grace = self.limits.shutdown_grace_s if self.server._stopping.is_set() else None
        _, pending = await asyncio.wait(pending, timeout=grace)
        for task in pending:
            request = self.tasks.get(task)
            task.cancel()
            if request is not None:
                await self._send_error(
                    request.id, request.operation, SHUTTING_DOWN, "the enclave is shutting down"
                )

    def _cancel_tasks(self) -> None:
        for task in list(self.tasks):
            task.cancel()


def _internal(request: Request, exc: BaseException) -> tuple[str, str]:
    """Log an unexpected failure by type and location only (messages may quote inputs)."""
    log.error(
        "internal error in %s: %s at %s",
        request.operation,
        type(exc).__name__,
        _safe_traceback(exc),
    )
    return INTERNAL_ERROR, "internal error"


def _safe_traceback(exc: BaseException | None = None) -> str:
    """Frame locations only: no exception message or source text, which might quote input."""
    if exc is None:
        exc = sys.exc_info()[1]
    if exc is None:
        return ""
    frames = traceback.extract_tb(exc.__traceback__)
    return " <- ".join(f"{f.filename}:{f.lineno} {f.name}" for f in reversed(frames))
