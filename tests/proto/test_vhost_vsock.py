"""vhost-vsock:// addresses: the sans-I/O handshake (`nitrokms.proto.vhost_vsock`), and the
connect and listen paths in `nitrokms.transport.sockets` against a fake vhost-device-vsock.

The fake does what the real backend does on its `--uds-path` socket: read one `CONNECT P` line,
answer `OK <port>` and join the connection to the guest's port P (here an echo server), or close
without a word when nothing listens on P. Scripted variants answer in fragments, with garbage, or
never.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from nitrokms.parent.rpc.errors import RPCConnectionError
from nitrokms.parent.rpc.sync import EnclaveClient
from nitrokms.proto.addresses import AddressError, UnixAddress, VhostVsockAddress, parse_address
from nitrokms.proto.vhost_vsock import (
    MAX_REPLY_BYTES,
    VsockHandshakeError,
    VsockReply,
    connect_request,
    parse_reply,
)
from nitrokms.transport import sockets
from nitrokms.transport.sockets import bound_address, connect_socket, open_connection, start_server

from tests.proxy.support import echo

# --- addresses --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "path", "port"),
    [
        ("vhost-vsock:///run/vm.vsock:5000", "/run/vm.vsock", 5000),
        ("VHOST-VSOCK:///a:b/vm.vsock:0", "/a:b/vm.vsock", 0),
        ("vhost-vsock://rel.vsock:4294967295", "rel.vsock", 0xFFFFFFFF),
    ],
)
def test_parse(text: str, path: str, port: int) -> None:
    address = parse_address(text)
    assert address == VhostVsockAddress(path, port)
    assert parse_address(str(address)) == address
    assert isinstance(address, VhostVsockAddress)
    assert address.listen_path == f"{path}_{port}"


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("vhost-vsock:///run/vm.vsock", "vhost-vsock:///PATH:PORT"),
        ("vhost-vsock://:5000", "vhost-vsock:///PATH:PORT"),
        ("vhost-vsock:///run/vm.vsock:", "not a decimal"),
        ("vhost-vsock:///run/vm.vsock:4294967296", "out of range"),
        ("vhost-vsock://@abstract:1", "filesystem socket"),
        ("vhost-vsock:///" + "x" * 104 + ":5000", "limit is 107"),
        ("vhost-vsock:///a\0b:1", "NUL"),
    ],
)
def test_malformed(text: str, problem: str) -> None:
    with pytest.raises(AddressError) as info:
        parse_address(text)
    assert problem in str(info.value)


# --- the handshake, sans-I/O ------------------------------------------------------------------

GOLDEN = [
    (b"OK 1234\n", VsockReply(1234, b"")),
    (b"OK\n", VsockReply(None, b"")),
    (b"OK 4294967295\nstream", VsockReply(0xFFFFFFFF, b"stream")),
]


def test_connect_request() -> None:
    assert connect_request(5000) == b"CONNECT 5000\n"
    for bad in (-1, 1 << 32, True):
        with pytest.raises(ValueError, match="out of range"):
            connect_request(bad)


@pytest.mark.parametrize(("data", "reply"), GOLDEN)
def test_reply_whole_bytewise_and_trailing(data: bytes, reply: VsockReply) -> None:
    assert parse_reply(data) == reply
    line_end = data.index(b"\n") + 1
    for cut in range(line_end):
        assert parse_reply(data[:cut]) is None
    assert parse_reply(data + b"more") == VsockReply(reply.host_port, reply.rest + b"more")


@pytest.mark.parametrize(
    "data",
    [b"ERR\n", b"OK  1\n", b"OK -1\n", b"ok 1\n", b"OK 1 \n", b"OK 99999999999\n",
     b"OK 4294967296\n", b"\n", b"CONNECT 5\n"],
)  # fmt: skip
def test_garbage_is_a_handshake_error(data: bytes) -> None:
    with pytest.raises(VsockHandshakeError) as info:
        parse_reply(data)
    assert info.value.code == "protocol.VsockHandshake"
    assert isinstance(info.value, ConnectionError)


def test_a_line_too_long_is_refused_at_the_cap() -> None:
    assert parse_reply(b"O" * (MAX_REPLY_BYTES - 1)) is None
    with pytest.raises(VsockHandshakeError, match="no reply line"):
        parse_reply(b"O" * MAX_REPLY_BYTES)


@settings(max_examples=500)
@given(st.binary(max_size=100))
def test_arbitrary_bytes_parse_or_raise_the_handshake_error(data: bytes) -> None:
    try:
        reply = parse_reply(data)
    except VsockHandshakeError:
        return
    assert reply is None or data.startswith(b"OK")


# --- a fake vhost-device-vsock ----------------------------------------------------------------

Script = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


def backend(guest_ports: dict[int, Path], reply: Callable[[int], list[bytes]]) -> Script:
    """vhost-device-vsock's host side: CONNECT P -> the reply (maybe in pieces) -> the guest."""

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        line = await reader.readline()
        port = int(line.removeprefix(b"CONNECT ").strip())
        if port not in guest_ports:
            writer.close()  # the guest refused: no reply at all
            return
        guest_reader, guest_writer = await asyncio.open_unix_connection(str(guest_ports[port]))
        try:
            for piece in reply(port):
                writer.write(piece)
                await writer.drain()
                await asyncio.sleep(0.01)  # separate reads on the client's side

            async def pump(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
                dst.write_eof()

            await asyncio.gather(pump(reader, guest_writer), pump(guest_reader, writer))
        finally:
            guest_writer.close()

    return serve


def tracked(script: Script, tasks: set[asyncio.Task[None]]) -> Script:
    """`script` with its task remembered and its connection closed however it ends."""

    async def run(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        tasks.add(task)
        try:
            await script(reader, writer)
        finally:
            writer.close()
            tasks.discard(task)

    return run


@contextlib.asynccontextmanager
async def bridge(tmp_path: Path, script: Script | None = None) -> AsyncIterator[Path]:
    """An echo "guest" on port 5000 behind a fake backend; yields the backend's --uds-path.
    On the way out every connection either side still holds is cancelled and closed."""
    tasks: set[asyncio.Task[None]] = set()
    guest = await asyncio.start_unix_server(tracked(echo, tasks), str(tmp_path / "guest-5000.sock"))
    uds = tmp_path / "vm.vsock"
    default = backend({5000: tmp_path / "guest-5000.sock"}, lambda p: [b"OK %d\n" % (p + 1)])
    server = await asyncio.start_unix_server(tracked(script or default, tasks), str(uds))
    try:
        yield uds
    finally:
        for s in (server, guest):
            s.close()
        for task in list(tasks):
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for s in (server, guest):
            await s.wait_closed()


def test_conformance_through_the_bridge(tmp_path: Path) -> None:
    async def main() -> None:
        async with bridge(tmp_path) as uds:
            reader, writer = await open_connection(VhostVsockAddress(str(uds), 5000))
            payload = bytes(range(256)) * 4096

            async def send() -> None:
                writer.write(payload)
                await writer.drain()
                writer.write_eof()

            _sent, received = await asyncio.gather(send(), reader.read(-1))
            assert received == payload
            writer.close()

    asyncio.run(main())


def test_a_reply_in_fragments_consumes_no_stream_byte(tmp_path: Path) -> None:
    pieces = [b"O", b"K", b" 12", b"34", b"\n"]

    async def main() -> None:
        script = backend({5000: tmp_path / "guest-5000.sock"}, lambda _p: pieces)
        async with bridge(tmp_path, script) as uds:
            reader, writer = await open_connection(VhostVsockAddress(str(uds), 5000))
            writer.write(b"first bytes")
            writer.write_eof()
            assert await reader.read(-1) == b"first bytes"
            writer.close()

    asyncio.run(main())


def test_a_refused_port_is_connection_refused(tmp_path: Path) -> None:
    async def main() -> None:
        async with bridge(tmp_path) as uds:
            with pytest.raises(ConnectionRefusedError, match="refused port 6000"):
                await open_connection(VhostVsockAddress(str(uds), 6000))

    asyncio.run(main())


def test_garbage_from_the_backend_is_a_handshake_error(tmp_path: Path) -> None:
    async def main() -> None:
        script = backend({5000: tmp_path / "guest-5000.sock"}, lambda _p: [b"HELLO\n"])
        async with bridge(tmp_path, script) as uds:
            with pytest.raises(VsockHandshakeError, match="expected 'OK', got 'HELLO'"):
                await open_connection(VhostVsockAddress(str(uds), 5000))

    asyncio.run(main())


def test_an_endless_reply_is_cut_at_the_cap(tmp_path: Path) -> None:
    async def main() -> None:
        script = backend({5000: tmp_path / "guest-5000.sock"}, lambda _p: [b"OK " + b"1" * 500])
        async with bridge(tmp_path, script) as uds:
            with pytest.raises(VsockHandshakeError, match="no reply line within 64 bytes"):
                await open_connection(VhostVsockAddress(str(uds), 5000))

    asyncio.run(main())


def test_a_silent_backend_times_out(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sockets, "HANDSHAKE_TIMEOUT_S", 0.2)

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read()  # reads the CONNECT line and never answers

    async def main() -> None:
        async with bridge(tmp_path, silent) as uds:
            with pytest.raises(TimeoutError):
                await open_connection(VhostVsockAddress(str(uds), 5000))

    asyncio.run(main())


def test_listening_binds_the_guest_to_host_socket(tmp_path: Path) -> None:
    async def main() -> None:
        address = VhostVsockAddress(str(tmp_path / "vm.vsock"), 8000)
        server = await start_server(echo, address)
        try:
            assert bound_address(server) == UnixAddress(str(tmp_path / "vm.vsock_8000"))
            reader, writer = await open_connection(UnixAddress(address.listen_path))
            writer.write(b"from the guest")
            writer.write_eof()
            assert await reader.read(-1) == b"from the guest"
            writer.close()
        finally:
            server.close()
            await server.wait_closed()

    asyncio.run(main())


class ThreadedBridge:
    """The fake backend on its own loop, for the blocking callers."""

    def __init__(self, tmp_path: Path, script: Script | None = None) -> None:
        self.loop = asyncio.new_event_loop()
        self.ready = threading.Event()
        self.stop: asyncio.Event | None = None
        self.uds = tmp_path / "vm.vsock"
        self.tmp_path, self.script = tmp_path, script
        self.thread = threading.Thread(target=self.loop.run_until_complete, args=(self.run(),))

    async def run(self) -> None:
        self.stop = asyncio.Event()
        async with bridge(self.tmp_path, self.script):
            self.ready.set()
            await self.stop.wait()

    def __enter__(self) -> Path:
        self.thread.start()
        assert self.ready.wait(10)
        return self.uds

    def __exit__(self, *exc: object) -> None:
        assert self.stop is not None
        self.loop.call_soon_threadsafe(self.stop.set)
        self.thread.join(10)
        self.loop.close()


def test_blocking_connect(tmp_path: Path) -> None:
    with ThreadedBridge(tmp_path) as uds:
        sock = connect_socket(VhostVsockAddress(str(uds), 5000), timeout_s=5)
        with sock:
            sock.sendall(b"ping")
            sock.shutdown(socket.SHUT_WR)
            assert sock.recv(100) == b"ping"
        with pytest.raises(ConnectionRefusedError):
            connect_socket(VhostVsockAddress(str(uds), 7), timeout_s=5)


def test_blocking_connect_times_out(tmp_path: Path) -> None:
    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read()

    with ThreadedBridge(tmp_path, silent) as uds, pytest.raises(TimeoutError):
        connect_socket(VhostVsockAddress(str(uds), 5000), timeout_s=0.2)


def test_the_rpc_client_reports_a_refusing_guest(tmp_path: Path) -> None:
    """The production client retries a refused port until its connect timeout, then says so."""
    with ThreadedBridge(tmp_path) as uds:
        client = EnclaveClient(f"vhost-vsock://{uds}:6000", connect_timeout_s=0.5)
        with client, pytest.raises(RPCConnectionError, match="cannot connect to the enclave"):
            client.health()
