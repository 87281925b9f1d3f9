"""A minimal asyncio RPC client for the tests, over proto.connection.ClientConnection."""

from __future__ import annotations

import asyncio
import struct
from typing import Self

from nitrokms.proto.addresses import Address
from nitrokms.proto.connection import ClientConnection
from nitrokms.proto.framing import FrameDecoder
from nitrokms.proto.messages import Body, ErrorReply, Response, decode_response
from nitrokms.transport.sockets import open_connection

READ_TIMEOUT_S = 20.0


class RawPeer:
    """Bytes in, decoded responses out; for tests that send broken frames."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer
        self.decoder = FrameDecoder()
        self.pending: list[Response] = []

    @classmethod
    async def connect(cls, address: Address) -> Self:
        return cls(*await open_connection(address))

    async def send_raw(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()

    async def next_response(self) -> Response | None:
        """The next response, or None at EOF."""
        while not self.pending:
            data = await asyncio.wait_for(self.reader.read(65536), READ_TIMEOUT_S)
            if not data:
                return None
            self.decoder.feed(data)
            self.pending.extend(decode_response(f) for f in self.decoder.frames())
        return self.pending.pop(0)

    async def at_eof(self) -> bool:
        data = await asyncio.wait_for(self.reader.read(65536), READ_TIMEOUT_S)
        return data == b""

    def close(self) -> None:
        self.writer.close()


class Client(RawPeer):
    """`send`/`receive` for tests that script the order; `call` for concurrent request/reply
    (a background reader then owns the stream: do not mix `receive` in after the first `call`)."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        super().__init__(reader, writer)
        self.connection = ClientConnection()
        self.waiters: dict[int, asyncio.Future[Response]] = {}
        self.pump: asyncio.Task[None] | None = None

    async def send(self, body: Body) -> int:
        request_id, frame = self.connection.send_request(body)
        await self.send_raw(frame)
        return request_id

    async def receive(self) -> Response:
        """The next response in arrival order."""
        while not self.pending:
            data = await asyncio.wait_for(self.reader.read(65536), READ_TIMEOUT_S)
            if not data:
                raise EOFError("server closed the connection")
            self.pending.extend(self.connection.receive_data(data))
        return self.pending.pop(0)

    async def call(self, body: Body) -> Response:
        request_id = await self.send(body)
        waiter = asyncio.get_running_loop().create_future()
        self.waiters[request_id] = waiter
        if self.pump is None:
            self.pump = asyncio.ensure_future(self._pump())
        return await asyncio.wait_for(waiter, READ_TIMEOUT_S)

    async def _pump(self) -> None:
        while True:
            data = await self.reader.read(65536)
            if not data:
                for waiter in self.waiters.values():
                    waiter.set_exception(EOFError("server closed the connection"))
                self.waiters.clear()
                return
            for response in self.connection.receive_data(data):
                if response.id in self.waiters:
                    waiter = self.waiters.pop(response.id)
                    if not waiter.done():
                        waiter.set_result(response)

    def close(self) -> None:
        if self.pump is not None:
            self.pump.cancel()
        super().close()


def error_of(response: Response | None) -> ErrorReply:
    assert isinstance(response, ErrorReply), response
    return response


def header(length: int) -> bytes:
    return struct.pack(">I", length)
