"""nitrokms.transport.splice: the shared byte pump (relay and in-enclave CONNECT listener) on
real sockets."""

from __future__ import annotations

import asyncio
import os
import socket
import struct
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest
from nitrokms.proto.addresses import TcpAddress, UnixAddress
from nitrokms.transport.sockets import connect_protocol
from nitrokms.transport.splice import Splice

TIMEOUT_S = 10.0
PAYLOAD = os.urandom(2 * 1024 * 1024 + 5)

Echo = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


async def _upper_after_eof(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    data = await reader.read()
    writer.write(data.upper())
    await writer.drain()
    writer.close()


async def _spliced(
    tmp: Path, upstream: Echo, *, tcp: bool = False
) -> tuple[Splice, socket.socket, asyncio.Server]:
    """A splice whose side a is one end of a socketpair (the other end returned, non-blocking)
    and whose side b is connected to a unix (or TCP) server running `upstream`."""
    loop = asyncio.get_running_loop()
    address: TcpAddress | UnixAddress
    if tcp:
        server = await asyncio.start_server(upstream, "127.0.0.1", 0)
        address = TcpAddress("127.0.0.1", server.sockets[0].getsockname()[1])
    else:
        server = await asyncio.start_unix_server(upstream, str(tmp / "up.sock"))
        address = UnixAddress(str(tmp / "up.sock"))
    splice = Splice(high_water=64 * 1024)
    ours, theirs = socket.socketpair()
    await loop.connect_accepted_socket(lambda: splice.a, sock=ours)
    await connect_protocol(address, lambda: splice.b)
    theirs.setblocking(False)
    return splice, theirs, server


async def _read_all(sock: socket.socket) -> bytes:
    loop, chunks = asyncio.get_running_loop(), []
    while chunk := await loop.sock_recv(sock, 65536):
        chunks.append(chunk)
    return b"".join(chunks)


def test_bytes_flow_both_ways_through_a_half_close(tmp_path: Path) -> None:
    async def main() -> bytes:
        splice, peer, server = await _spliced(tmp_path, _upper_after_eof)
        async with server:
            splice.start(b"first ")
            loop = asyncio.get_running_loop()
            await loop.sock_sendall(peer, b"then the rest")
            peer.shutdown(socket.SHUT_WR)  # upstream replies only after it sees EOF
            reply = await _read_all(peer)
            await asyncio.wait_for(splice.finished, TIMEOUT_S)
            peer.close()
            return reply

    assert asyncio.run(asyncio.wait_for(main(), TIMEOUT_S)) == b"FIRST THEN THE REST"


def test_a_slow_reader_bounds_what_the_splice_buffers(tmp_path: Path) -> None:
    async def main() -> tuple[int, bytes]:
        release = asyncio.Event()

        async def slow(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await release.wait()
            writer.write(await reader.read())
            await writer.drain()
            writer.close()

        splice, peer, server = await _spliced(tmp_path, slow)
        async with server:
            splice.start()
            loop = asyncio.get_running_loop()
            sender = asyncio.ensure_future(loop.sock_sendall(peer, PAYLOAD))
            peak = 0
            for _ in range(50):  # the upstream reads nothing while we watch
                await asyncio.sleep(0)
                peak = max(peak, splice.buffered_bytes())
            assert not sender.done()  # the kernel buffers filled and the splice stopped reading
            release.set()
            await sender
            peer.shutdown(socket.SHUT_WR)
            echoed = await _read_all(peer)
            peer.close()
            return peak, echoed

    peak, echoed = asyncio.run(asyncio.wait_for(main(), TIMEOUT_S))
    assert echoed == PAYLOAD
    assert peak <= 64 * 1024 + 256 * 1024  # high water plus one read


def test_a_reset_on_one_side_aborts_both_and_records_the_error(tmp_path: Path) -> None:
    async def main() -> tuple[Exception | None, bytes]:
        async def reset(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await reader.read(1)
            sock = writer.get_extra_info("socket")
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            writer.transport.abort()  # linger 0: the client side sees a reset

        splice, peer, server = await _spliced(tmp_path, reset, tcp=True)
        async with server:
            splice.start()
            await asyncio.get_running_loop().sock_sendall(peer, b"x")
            await asyncio.wait_for(splice.finished, TIMEOUT_S)
            try:
                rest = await _read_all(peer)
            except ConnectionResetError:
                rest = b""
            peer.close()
            return splice.error, rest

    error, rest = asyncio.run(asyncio.wait_for(main(), TIMEOUT_S))
    assert rest == b""  # the peer of the healthy side was cut too, not left hanging
    assert isinstance(error, ConnectionResetError)


def test_connect_protocol_reaches_tcp_and_reports_a_missing_peer(tmp_path: Path) -> None:
    async def main() -> bytes:
        server = await asyncio.start_server(_upper_after_eof, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        async with server:
            got = bytearray()
            done = asyncio.get_running_loop().create_future()

            class Collect(asyncio.Protocol):
                def data_received(self, data: bytes) -> None:
                    got.extend(data)

                def connection_lost(self, exc: Exception | None) -> None:
                    done.set_result(None)

            transport = await connect_protocol(TcpAddress("127.0.0.1", port), Collect)
            transport.write(b"tcp")
            transport.write_eof()
            await done
            with pytest.raises(FileNotFoundError):
                await connect_protocol(UnixAddress(str(tmp_path / "absent.sock")), Collect)
            return bytes(got)

    assert asyncio.run(asyncio.wait_for(main(), TIMEOUT_S)) == b"TCP"
