"""One live connection to the enclave: streams, the sans-I/O state, waiting callers, one read loop.

The read loop is the only reader of the socket. It feeds bytes to `ClientConnection` and resolves
the future of whichever request each response answers, so any number of callers can wait on one
connection and replies may come back in any order. When the stream ends or breaks, every caller
still waiting fails with a typed error and the link is dead; the client opens a new one.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable

from nitrokms.parent.rpc.errors import (
    CLIENT_CLOSED,
    BrokenStreamError,
    RPCConnectionError,
    RPCError,
    error_from_reply,
)
from nitrokms.proto.connection import ClientConnection
from nitrokms.proto.errors import RemoteProtocolError
from nitrokms.proto.messages import Response

READ_CHUNK_BYTES = 256 * 1024

_log = logging.getLogger(__name__)

ErrorFactory = Callable[[], RPCError]


class Link:
    def __init__(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        max_frame_bytes: int,
        max_in_flight: int,
    ) -> None:
        self.reader = reader
        self.writer = writer
        self.proto = ClientConnection(max_frame_bytes, max_in_flight)
        self.pending: dict[int, asyncio.Future[Response]] = {}
        self.closed = False
        self._task = asyncio.get_running_loop().create_task(self._read_loop())

    async def _read_loop(self) -> None:
        try:
            while not self.closed:
                data = await self.reader.read(READ_CHUNK_BYTES)
                if not data:
                    self.proto.receive_eof()
                    self.fail(lambda: RPCConnectionError("the enclave closed the connection"))
                    return
                for response in self.proto.receive_data(data):
                    self._deliver(response)
        except RemoteProtocolError as exc:
            code, message = exc.code, exc.message
            self.fail(
                lambda: BrokenStreamError(f"the enclave broke the protocol: {message}", code=code)
            )
        except OSError as exc:
            text = exc.strerror or str(exc) or type(exc).__name__
            self.fail(lambda: RPCConnectionError(f"connection to the enclave failed: {text}"))
        except Exception:
            _log.exception("RPC read loop failed")
            self.fail(lambda: RPCConnectionError("the RPC read loop failed; see the log"))

    def _deliver(self, response: Response) -> None:
        if response.id is None:
            self.fail(lambda: error_from_reply(response))
            return
        future = self.pending.get(response.id)
        if future is not None and not future.done():
            future.set_result(response)

    def fail(self, make_error: ErrorFactory) -> None:
        """Fail every waiting caller with a fresh error from `make_error` and close the stream."""
        if self.closed:
            return
        self.closed = True
        for future in self.pending.values():
            if not future.done():
                future.set_exception(make_error())
        self.pending.clear()
        self.writer.close()

    def close(self) -> None:
        """Synchronous part of shutdown; safe to call from cleanup that may itself be cancelled."""
        self.fail(lambda: RPCConnectionError("the client was closed", code=CLIENT_CLOSED))
        self._task.cancel()

    async def wait_closed(self) -> None:
        await asyncio.wait([self._task])
        with contextlib.suppress(OSError):
            await self.writer.wait_closed()
