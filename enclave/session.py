"""One RPC connection of the enclave service: read, decode, schedule, reply, within a budget.

A read loop feeds a sans-I/O `ServerConnection`; each request goes to the scheduler as soon as its
frame is decoded, and its reply is written when the result comes, in any order, from a callback
on the loop (a `_Call`: no task per request, so no extra loop iteration before the job starts
or after it ends). A reply is one synchronous `transport.write`, so frames never interleave and
no reply waits behind another.

Memory. Everything held for a connection is counted: the frame being read, requests running
(each charged its frame's bytes) and replies the peer has not taken yet (the transport's write
buffer). The connection reads on only while its count is under `connection_buffer_bytes` and the
server's total under `total_buffer_bytes`; a frame whose header announces more than fits waits,
holding only what has arrived, until it fits (the frame is then admitted whole, so no two
half-read frames can wait for each other). The first CONNECTION_RESERVE_BYTES of every connection
do not wait for the total, so a small request on a fresh connection is read even while others
hold the whole budget. A connection over its budget is not read, so the peer's own socket fills
and its sends block: backpressure, not an error. The check is made before each read, so one read
(READ_CHUNK_BYTES) may admit several requests past the budget, and a reply may be larger than its
request (by up to 16 KiB, an attestation document): a connection can pass its budget by one read
plus `max_in_flight` x 16 KiB (1 MiB by default).

Unsent replies are watched by a drainer task (the write buffer's high-water mark is 0, so the
transport says when it is empty): a peer that takes no reply bytes for `send_timeout_s` is closed,
and a connection that ends with replies unsent keeps them no longer than that either. After EOF
the requests in flight still finish (a half-closed peer reads their replies) unless the peer
turns out to be gone, which cancels them. Requests whose frames are valid envelopes with invalid
bodies are answered one by one, but after `max_bad_requests` of them the connection is closed
(`enclave.TooManyBadRequests`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sys
import time
import traceback
from collections.abc import Callable
from typing import TYPE_CHECKING, Final

from nitrokms.enclave.errors import DeadlineExceededError, EnclaveError
from nitrokms.proto.codes import (
    INTERNAL_ERROR,
    OPERATION_NOT_ALLOWED,
    SHUTTING_DOWN,
    TIMEOUT,
    TOO_MANY_BAD_REQUESTS,
    TOO_MANY_IN_FLIGHT,
)
from nitrokms.proto.connection import (
    BadRequest,
    ServerConnection,
    error_reply_for,
)
from nitrokms.proto.errors import ProtocolError, RemoteProtocolError
from nitrokms.proto.messages import Body, Request

if TYPE_CHECKING:
    from nitrokms.enclave.server import RPCServer

log = logging.getLogger("enclave.server")

READ_CHUNK_BYTES: Final = 64 * 1024
CONNECTION_RESERVE_BYTES: Final = 2 * READ_CHUNK_BYTES
MAX_DRAIN_POLL_S: Final = 1.0


class Session:
    """One connection. `run()` until it ends; `stop_reading()` and `abort()` for shutdown."""

    def __init__(
        self,
        server: RPCServer,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        *,
        operations: frozenset[str] | None = None,
    ) -> None:
        self.server, self.limits = server, server.limits
        self.reader, self.writer = reader, writer
        self.transport = writer.transport
        self.operations = operations  # None: all; else the only ones served (control listener)
        self.state = ServerConnection(self.limits.max_frame_bytes)
        self.calls: dict[asyncio.Future[None], _Call] = {}  # by their `finished` futures
        self.in_flight = 0
        self.charged = 0  # bytes charged to requests not yet answered
        self.accounted = 0  # this session's share of the server's total
        self.frame_admitted = False
        self.bad_requests = 0
        self.written = 0
        self.drainer: asyncio.Task[None] | None = None
        self.closed = asyncio.Event()
        self.broken = False
        self.loop = asyncio.get_running_loop()
        self.last_progress = self.loop.time()
        self.read_timeout: asyncio.Timeout | None = None
        self._changed: asyncio.Future[None] | None = None
        self.transport.set_write_buffer_limits(high=0)  # drain() then means "all sent"

    @property
    def priority(self) -> bool:
        return self.operations is not None

    async def run(self) -> None:
        try:
            await self._read_loop()
            if not self.broken:  # after EOF a half-closed peer still gets its replies
                await self._drain_calls()
            await self._flush()
        except Exception:  # a bug here must not take the server down
            log.error("connection handler failed at %s", safe_traceback())
        finally:
            self._cancel_calls()
            self.writer.close()
            self.server.budget.release(self.accounted)
            self.accounted = 0
            self.closed.set()

    def abort(self) -> None:
        self._cancel_calls()
        if self.drainer is not None:
            self.drainer.cancel()
        self.transport.abort()

    def stop_reading(self) -> None:
        """Shutdown: end the read loop now (requests in flight carry on until the grace)."""
        if self.read_timeout is not None and not self.read_timeout.expired():
            self.read_timeout.reschedule(self.loop.time())
        self._notify()

    # --- memory ----------------------------------------------------------------------------------

    def held_bytes(self) -> int:
        reading = self.state.buffered_bytes
        if self.frame_admitted:
            reading += self.state.frame_remaining_bytes
        return reading + self.charged + self.transport.get_write_buffer_size()

    def _account(self) -> int:
        held = self.held_bytes()
        self.server.budget.adjust(held - self.accounted)
        self.accounted = held
        return held

    def _notify(self) -> None:
        if self._changed is not None and not self._changed.done():
            self._changed.set_result(None)

    def _need(self) -> int:
        """Bytes the next read commits: the rest of a newly announced frame, else one chunk."""
        remaining = self.state.frame_remaining_bytes
        if remaining and not self.frame_admitted:
            return remaining
        return 0 if self.frame_admitted else READ_CHUNK_BYTES

    def _blocked(self) -> Callable[[], asyncio.Future[None]] | None:
        """What to wait for before reading on (None: read now)."""
        held, need = self._account(), self._need()
        if held + need <= CONNECTION_RESERVE_BYTES:
            return None
        own = held + need > self.limits.connection_buffer_bytes
        if own and (self.calls or self.transport.get_write_buffer_size()):
            return self._wait_own
        budget = self.server.budget
        if budget.held + need > self.limits.total_buffer_bytes and budget.held > self.accounted:
            return budget.wait_for_release
        return None

    def _wait_own(self) -> asyncio.Future[None]:
        self._changed = self.loop.create_future()
        return self._changed

    async def _wait_for_room(self) -> bool:
        """Wait until the next read fits the budgets; False if the connection must end."""
        waited = False
        while (wait := self._blocked()) is not None:
            if self.broken or self.server.stopping():
                return False
            waited = True
            await wait()
        if waited:
            self.last_progress = self.loop.time()  # the pause was ours, not the peer's
        if self.state.frame_remaining_bytes and not self.frame_admitted:
            self.frame_admitted = True
            self._account()
        return not (self.broken or self.server.stopping())

    # --- reading ---------------------------------------------------------------------------------

    async def _read_loop(self) -> None:
        while not self.broken:
            if not await self._wait_for_room():
                return
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
        while not self.server.stopping():
            deadline = self.last_progress + self.limits.idle_timeout_s
            try:
                async with asyncio.timeout_at(deadline) as self.read_timeout:
                    data: bytes = await self.reader.read(READ_CHUNK_BYTES)
                    return data
            except TimeoutError:
                if self.read_timeout is None or not self.read_timeout.expired():
                    raise
            except OSError:  # reset by the peer (TimeoutError is caught above): nobody to answer
                self.broken = True
                return None
            finally:
                self.read_timeout = None
            if self.server.stopping():
                return None
            if not self.calls:
                self._send_error(None, None, TIMEOUT, "connection idle too long")
                return None
            self.last_progress = self.loop.time()
        return None

    async def _eof(self) -> None:
        try:
            self.state.receive_eof()
        except RemoteProtocolError as exc:
            self._fail(exc)

    async def _feed(self, data: bytes) -> bool:
        before, share = self.state.buffered_bytes + len(data), 0
        try:
            events = self.state.receive_data(data)
        except RemoteProtocolError as exc:
            self._fail(exc)
            return False
        if events:
            self.frame_admitted = False
            share = (before - self.state.buffered_bytes) // len(events)
        for event in events:
            self.last_progress = self.loop.time()
            if isinstance(event, BadRequest):
                if not self._bad_request(event):
                    return False
            elif self.operations is not None and event.operation not in self.operations:
                self._send_error(
                    event.id, event.operation, OPERATION_NOT_ALLOWED,
                    f"this address serves {', '.join(sorted(self.operations))} only",
                )  # fmt: skip
            elif self.in_flight >= self.limits.max_in_flight:
                self._send_error(
                    event.id,
                    event.operation,
                    TOO_MANY_IN_FLIGHT,
                    f"more than {self.limits.max_in_flight} requests in flight",
                )
            else:
                self._start(event, share)
        self._account()
        return True

    def _bad_request(self, event: BadRequest) -> bool:
        self._write(self.state.send(event.error))
        self.bad_requests += 1
        if self.bad_requests < self.limits.max_bad_requests:
            return True
        log.info("closing a connection after %d invalid requests", self.bad_requests)
        self._send_error(
            None, None, TOO_MANY_BAD_REQUESTS,
            f"{self.bad_requests} invalid requests on this connection; closing it",
        )  # fmt: skip
        self.broken = True
        self._cancel_calls()
        return False

    def _start(self, request: Request, charge: int) -> None:
        self.in_flight += 1
        self.charged += charge
        call = _Call(self, request, charge)
        self.calls[call.finished] = call
        call.begin()

    def _call_done(self, call: _Call) -> None:
        self.calls.pop(call.finished, None)
        self.last_progress = self.loop.time()

    def _fail(self, exc: RemoteProtocolError) -> None:
        """A broken stream: one error frame, then this connection (only) is closed."""
        log.info("closing a connection after a bad frame: %s", exc.code)
        self._write(self.state.send(error_reply_for(exc)))
        self.broken = True
        self._cancel_calls()

    # --- serving ---------------------------------------------------------------------------------

    def _settle(self, charge: int) -> None:
        """The request is answered (or abandoned): its slot and its charge are free again. The
        reply written right after is counted in the transport's buffer instead."""
        self.in_flight -= 1
        self.charged -= charge
        self._notify()

    def _reply(self, request: Request, result: Body | None, code: str | None, msg: str) -> None:
        try:
            if result is not None:
                frame = self.state.send_reply(request.id, result)
            else:
                code = code or INTERNAL_ERROR
                frame = self._error_frame(request.id, request.operation, code, msg)
        except ProtocolError as exc:
            frame = self._error_frame(request.id, request.operation, *internal(request, exc))
        self._write(frame)

    def _error_frame(self, request_id: int | None, op: str | None, code: str, msg: str) -> bytes:
        try:
            return self.state.send_error(request_id, op, code, msg)
        except ProtocolError:
            return self.state.send_error(request_id, op, INTERNAL_ERROR, "internal error")

    def _send_error(self, request_id: int | None, op: str | None, code: str, msg: str) -> None:
        self._write(self._error_frame(request_id, op, code, msg))

    # --- writing ---------------------------------------------------------------------------------

    def _write(self, frame: bytes) -> None:
        if self.broken or self.transport.is_closing():
            return
        self.writer.write(frame)
        self.written += len(frame)
        if self.transport.get_write_buffer_size() and self.drainer is None:
            self.drainer = self.loop.create_task(self._drain())
        self._account()

    async def _flush(self) -> None:
        """Before the connection ends: unsent bytes go out, or the transport is aborted after
        the send timeout. (A closed transport would otherwise keep them until the peer reads,
        which a hostile one never does, long after this session and its budget are gone.)"""
        if self.transport.get_write_buffer_size() and self.drainer is None:
            self.drainer = self.loop.create_task(self._drain())
        if self.drainer is not None:
            await self.drainer

    def _flushed(self) -> int:
        return self.written - self.transport.get_write_buffer_size()

    async def _drain(self) -> None:
        """Follow unsent replies out; close the connection if the peer takes none of them for
        `send_timeout_s`."""
        poll_s = min(MAX_DRAIN_POLL_S, self.limits.send_timeout_s / 4)
        flushed, progress_at = self._flushed(), self.loop.time()
        try:
            while self.transport.get_write_buffer_size():
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(poll_s):
                        await self.writer.drain()
                if self._flushed() > flushed:
                    flushed, progress_at = self._flushed(), self.loop.time()
                elif self.loop.time() - progress_at >= self.limits.send_timeout_s:
                    log.info(
                        "closing a connection that took no reply bytes for %gs (%d unsent)",
                        self.limits.send_timeout_s, self.transport.get_write_buffer_size(),
                    )  # fmt: skip
                    self._break()
                self._account()
                self._notify()
        except (ConnectionError, OSError, RuntimeError):
            self._break()
        finally:
            self.drainer = None
            self._account()
            self._notify()

    def _break(self) -> None:
        self.broken = True
        self._cancel_calls()
        self.transport.abort()

    # --- ending ----------------------------------------------------------------------------------

    async def _drain_calls(self) -> None:
        """After EOF: finish the requests in flight (a half-closed peer still reads replies),
        until the shutdown grace if shutting down, and only while the connection lives: once
        a reply finds the peer gone (it closed, not half-closed), the rest are cancelled, so a
        client cannot leave a backlog running for nobody by hanging up."""
        if not self.calls:
            return
        grace = self.limits.shutdown_grace_s if self.server.stopping() else None
        end = None if grace is None else self.loop.time() + grace
        lost = self.loop.create_task(self._connection_lost())
        pending = set(self.calls)
        try:
            while pending and not lost.done():
                timeout = None if end is None else max(0.0, end - self.loop.time())
                done, _ = await asyncio.wait(
                    pending | {lost}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED
                )
                if not done:
                    break
                pending -= done
        finally:
            lost.cancel()
        if lost.done() and not lost.cancelled():
            self._cancel_calls()
            return
        for finished in pending:
            call = self.calls.get(finished)
            if call is not None:
                call.cancel()
                request = call.request
                self._send_error(
                    request.id, request.operation, SHUTTING_DOWN, "the enclave is shutting down"
                )

    async def _connection_lost(self) -> None:
        with contextlib.suppress(Exception):  # how it was lost does not matter here
            await self.writer.wait_closed()

    def _cancel_calls(self) -> None:
        for call in list(self.calls.values()):
            call.cancel()


class _Call:
    """One request from its frame to its reply, driven by callbacks on the loop.

    `begin` queues the handler in the scheduler and arms the request timeout; whichever comes
    first, the result (`_complete`), the timeout (`_expire`) or a cancellation (`cancel`: the
    connection ended or the service is stopping), answers the request, and the others then do
    nothing. A timeout or a cancellation takes a job that has not started out of its queue; one
    that has started runs on and its result is dropped. `finished` resolves (or is cancelled)
    once the request is answered or abandoned.
    """

    __slots__ = ("answered", "charge", "finished", "job", "request", "session", "timer")

    def __init__(self, session: Session, request: Request, charge: int) -> None:
        self.session, self.request, self.charge = session, request, charge
        self.finished: asyncio.Future[None] = session.loop.create_future()
        self.answered = False
        self.job: asyncio.Future[Body] | None = None
        self.timer: asyncio.TimerHandle | None = None

    def begin(self) -> None:
        session = self.session
        timeout_s = session.limits.request_timeout_s
        deadline = time.monotonic() + timeout_s
        try:
            self.job = session.server.schedule(session, self.request.body, deadline, self._complete)
        except Exception as exc:
            self._answer(None, *internal(self.request, exc))
            return
        if not self.answered:  # a job refused at once (past its deadline) is answered already
            self.timer = session.loop.call_later(timeout_s, self._expire)

    def cancel(self) -> None:
        """Abandon the request without a reply."""
        if self.answered:
            return
        self._close()
        self.session._settle(self.charge)
        self.session._call_done(self)
        self.finished.cancel()

    def _close(self) -> None:
        self.answered = True
        if self.timer is not None:
            self.timer.cancel()
        if self.job is not None and not self.job.done():
            self.job.cancel()  # a queued job leaves the queue; a started one runs on

    def _expire(self) -> None:
        if not self.answered:
            timeout_s = self.session.limits.request_timeout_s
            message = f"{self.request.operation} did not finish within {timeout_s}s"
            self._answer(None, TIMEOUT, message)

    def _complete(self, job: asyncio.Future[Body]) -> None:
        if self.answered:
            return
        code: str | None = None
        message, result = "", None
        try:
            result = job.result()
        except DeadlineExceededError:
            timeout_s = self.session.limits.request_timeout_s
            code, message = TIMEOUT, f"{self.request.operation} did not finish within {timeout_s}s"
        except EnclaveError as exc:
            code, message = exc.code, exc.message
        except (Exception, asyncio.CancelledError) as exc:
            code, message = internal(self.request, exc)
        self._answer(result, code, message)

    def _answer(self, result: Body | None, code: str | None, message: str) -> None:
        self._close()
        session = self.session
        try:
            session._settle(self.charge)
            session._reply(self.request, result, code, message)
        except Exception:  # a bug here must not take the loop's callback machinery down
            log.error("replying failed at %s", safe_traceback())
        finally:
            session._call_done(self)
            if not self.finished.done():
                self.finished.set_result(None)


def internal(request: Request, exc: BaseException) -> tuple[str, str]:
    """Log an unexpected failure by type and location only (messages may quote inputs)."""
    log.error(
        "internal error in %s: %s at %s",
        request.operation,
        type(exc).__name__,
        safe_traceback(exc),
    )
    return INTERNAL_ERROR, "internal error"


def safe_traceback(exc: BaseException | None = None) -> str:
    """Frame locations only: no exception message or source text, which might quote input."""
    if exc is None:
        exc = sys.exc_info()[1]
    if exc is None:
        return ""
    frames = traceback.extract_tb(exc.__traceback__)
    return " <- ".join(f"{f.filename}:{f.lineno} {f.name}" for f in reversed(frames))
