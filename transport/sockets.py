"""Sockets behind the transport addresses: asyncio connect and listen, and a blocking connect.

vsock, unix (including Linux abstract names, `unix://@name`) and TCP go through the same calls, so
enclave and parent code is the same on Nitro hardware and in tests. `vhost-vsock://PATH:PORT`
reaches a virtual machine's vsock through vhost-device-vsock: a unix connection plus a one-line
handshake (`nitrokms.proto.vhost_vsock`), bounded by HANDSHAKE_TIMEOUT_S; listening on it binds
the unix socket `PATH_PORT`.
"""

from __future__ import annotations

import asyncio
import errno
import os
import socket
import stat
import time
from collections.abc import Awaitable, Callable
from typing import Any

from nitrokms.proto.addresses import (
    Address,
    AddressError,
    TcpAddress,
    UnixAddress,
    VhostVsockAddress,
    VsockAddress,
)
from nitrokms.proto.vhost_vsock import MAX_REPLY_BYTES, connect_request, parse_reply

__all__ = [
    "HANDSHAKE_TIMEOUT_S",
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
# The backend answers once the guest's kernel accepted; a guest under an emulator can be slow.
HANDSHAKE_TIMEOUT_S = 10.0
ClientCallback = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


def vsock_socket() -> socket.socket:
    """A new AF_VSOCK stream socket. Raises AddressError where the platform has none."""
    family = getattr(socket, "AF_VSOCK", None)
    if family is None:
        raise AddressError("this platform has no AF_VSOCK sockets")
    return socket.socket(family, socket.SOCK_STREAM)


def _socket_for(
    address: UnixAddress | VhostVsockAddress | VsockAddress,
) -> tuple[socket.socket, Any]:
    """A new, unconnected stream socket for `address` and the target to connect it to (a unix
    path, an abstract name, or (CID, port)). Raises AddressError where there is no AF_VSOCK."""
    if isinstance(address, UnixAddress):
        return socket.socket(socket.AF_UNIX, socket.SOCK_STREAM), address.sockaddr()
    if isinstance(address, VhostVsockAddress):
        return socket.socket(socket.AF_UNIX, socket.SOCK_STREAM), address.path
    return vsock_socket(), (address.cid, address.port)


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
    sock, target = _socket_for(address)
    sock.setblocking(False)
    try:
        await loop.sock_connect(sock, target)
        if isinstance(address, VhostVsockAddress):
            async with asyncio.timeout(HANDSHAKE_TIMEOUT_S):
                await _vhost_vsock_handshake(loop, sock, address)
        if isinstance(address, UnixAddress | VhostVsockAddress):
            transport, _ = await loop.create_unix_connection(factory, sock=sock)
        else:
            transport, _ = await loop.create_connection(factory, sock=sock)
    except BaseException:
        sock.close()
        raise
    return transport


async def _vhost_vsock_handshake(
    loop: asyncio.AbstractEventLoop, sock: socket.socket, address: VhostVsockAddress
) -> None:
    """Ask the backend for the guest's port. One byte per read, so not one byte of the guest's
    stream is consumed here. Raises ConnectionRefusedError when the guest refused (the backend
    closed without a reply) and VsockHandshakeError for a reply that is not `OK`."""
    await loop.sock_sendall(sock, connect_request(address.port))
    reply = bytearray()
    while len(reply) < MAX_REPLY_BYTES:
        byte = await loop.sock_recv(sock, 1)
        if not byte:
            raise _refused(address)
        reply += byte
        if parse_reply(bytes(reply)) is not None:
            return
    parse_reply(bytes(reply))  # raises: no newline within the cap


def _refused(address: VhostVsockAddress) -> ConnectionRefusedError:
    return ConnectionRefusedError(
        errno.ECONNREFUSED,
        f"the guest behind {address.path} refused port {address.port} (nothing listening?)",
    )


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
    socket file is replaced. A vhost-vsock address listens on its `listen_path` (unix).
    """
    if isinstance(address, TcpAddress):
        return await asyncio.start_server(callback, address.host, address.port, **kwargs)
    if isinstance(address, VhostVsockAddress):
        address = UnixAddress(address.listen_path)
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
    """Blocking connect, for synchronous callers. Raises OSError (or TimeoutError), and
    VsockHandshakeError for a vhost-vsock backend that answers with something other than OK."""
    if isinstance(address, TcpAddress):
        return socket.create_connection((address.host, address.port), timeout=timeout_s)
    sock, target = _socket_for(address)
    try:
        sock.settimeout(timeout_s)
        sock.connect(target)
        if isinstance(address, VhostVsockAddress):
            _blocking_handshake(sock, address, timeout_s)
    except BaseException:
        sock.close()
        raise
    return sock


def _blocking_handshake(
    sock: socket.socket, address: VhostVsockAddress, timeout_s: float | None
) -> None:
    limit_s = HANDSHAKE_TIMEOUT_S if timeout_s is None else min(timeout_s, HANDSHAKE_TIMEOUT_S)
    deadline = time.monotonic() + limit_s
    sock.sendall(connect_request(address.port))
    reply = bytearray()
    while len(reply) < MAX_REPLY_BYTES:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError(f"vhost-vsock handshake with {address.path} timed out")
        sock.settimeout(remaining)
        byte = sock.recv(1)
        if not byte:
            raise _refused(address)
        reply += byte
        if parse_reply(bytes(reply)) is not None:
            sock.settimeout(timeout_s)
            return
    parse_reply(bytes(reply))
