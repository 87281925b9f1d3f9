"""Sockets behind the transport addresses: asyncio connect and listen, and a blocking connect.

vsock, unix (including Linux abstract names, `unix://@name`) and TCP go through the same calls, so
enclave and parent code is the same on Nitro hardware and in tests.
"""

from __future__ import annotations

import asyncio
import os
import socket
import stat
from collections.abc import Awaitable, Callable
from typing import Any

from nitrokms.proto.addresses import Address, AddressError, TcpAddress, UnixAddress, VsockAddress

__all__ = [
    "STREAM_LIMIT_BYTES",
    "bound_address",
    "connect_protocol",
    "connect_socket",
    "open_connection",
    "start_server",
    "vsock_socket",
]

StreamPair = tuple[asyncio.StreamReader, asyncio.StreamWriter]
STREAM_LIMIT_BYTES = 64 * 1024  # asyncio's own default StreamReader limit
ClientCallback = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


def vsock_socket() -> socket.socket:
    """A new AF_VSOCK stream socket. Raises AddressError where the platform has none."""
    family = getattr(socket, "AF_VSOCK", None)
    if family is None:
        raise AddressError("this platform has no AF_VSOCK sockets")
    return socket.socket(family, socket.SOCK_STREAM)


def _remove_stale_unix_socket(path: str) -> None:
    """Unlink a socket file left by an earlier run; refuse to clobber anything else."""
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(mode):
        raise AddressError(f"{path} exists and is not a socket")
    os.unlink(path)


async def connect_protocol(
    address: Address, factory: Callable[[], asyncio.Protocol]
) -> asyncio.Transport:
    """Connect to `address` with a protocol from `factory` (no streams in between).

    Raises OSError when the peer is absent, AddressError for vsock on a platform without it.
    """
    loop = asyncio.get_running_loop()
    transport: asyncio.Transport
    if isinstance(address, TcpAddress):
        transport, _ = await loop.create_connection(factory, address.host, address.port)
        return transport
    if isinstance(address, UnixAddress) and not address.abstract:
        transport, _ = await loop.create_unix_connection(factory, address.path)
        return transport
    if isinstance(address, UnixAddress):
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        target: Any = address.sockaddr()
    else:
        sock = vsock_socket()
        target = (address.cid, address.port)
    sock.setblocking(False)
    try:
        await loop.sock_connect(sock, target)
        if isinstance(address, UnixAddress):
            transport, _ = await loop.create_unix_connection(factory, sock=sock)
        else:
            transport, _ = await loop.create_connection(factory, sock=sock)
    except BaseException:
        sock.close()
        raise
    return transport


async def open_connection(address: Address, *, limit: int = STREAM_LIMIT_BYTES) -> StreamPair:
    """Connect to `address` and return asyncio streams. Raises OSError when the peer is absent."""
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=limit, loop=loop)
    protocol = asyncio.StreamReaderProtocol(reader, loop=loop)
    transport = await connect_protocol(address, lambda: protocol)
    return reader, asyncio.StreamWriter(transport, protocol, reader, loop)


async def start_server(
    callback: ClientCallback, address: Address, **kwargs: Any
) -> asyncio.AbstractServer:
    """Listen on `address`, calling `callback(reader, writer)` for every connection.

    A TCP port of 0 picks a free port; read it back with `bound_address(server)`. A stale unix
    socket file is replaced.
    """
    if isinstance(address, TcpAddress):
        return await asyncio.start_server(callback, address.host, address.port, **kwargs)
    if isinstance(address, UnixAddress):
        if address.abstract:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.bind(address.sockaddr())
            return await asyncio.start_unix_server(callback, sock=sock, **kwargs)
        _remove_stale_unix_socket(address.path)
        return await asyncio.start_unix_server(callback, address.path, **kwargs)
    sock = vsock_socket()
    try:
        sock.bind((address.cid, address.port))
        sock.listen(socket.SOMAXCONN)
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return await asyncio.start_server(callback, sock=sock, **kwargs)


def bound_address(server: asyncio.AbstractServer) -> Address:
    """The address a server from `start_server` actually listens on (resolves TCP port 0)."""
    sockets = getattr(server, "sockets", ())
    if not sockets:
        raise AddressError("server is not listening")
    sock = sockets[0]
    name = sock.getsockname()
    if sock.family in (socket.AF_INET, socket.AF_INET6):
        return TcpAddress(name[0], name[1])
    if sock.family == socket.AF_UNIX:
        if isinstance(name, bytes):
            return UnixAddress("@" + os.fsdecode(name[1:]))
        return UnixAddress(name)
    return VsockAddress(name[0], name[1])


def connect_socket(address: Address, timeout_s: float | None = None) -> socket.socket:
    """Blocking connect, for synchronous callers. Raises OSError (or TimeoutError)."""
    sock: socket.socket
    if isinstance(address, TcpAddress):
        return socket.create_connection((address.host, address.port), timeout=timeout_s)
    if isinstance(address, UnixAddress):
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        target: Any = address.sockaddr()
    else:
        sock = vsock_socket()
        target = (address.cid, address.port)
    try:
        sock.settimeout(timeout_s)
        sock.connect(target)
    except BaseException:
        sock.close()
        raise
    return sock
