from __future__ import annotations

import asyncio
import socket
from collections.abc import Callable
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from nitrokms.proto.addresses import (
    VMADDR_CID_ANY,
    Address,
    AddressError,
    TcpAddress,
    UnixAddress,
    VsockAddress,
    format_address,
    parse_address,
)
from nitrokms.transport.sockets import bound_address, connect_socket, open_connection, start_server


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("vsock://3:8000", VsockAddress(3, 8000)),
        ("vsock://any:5000", VsockAddress(VMADDR_CID_ANY, 5000)),
        ("VSOCK://16:5000", VsockAddress(16, 5000)),
        ("vsock://4294967295:4294967295", VsockAddress(0xFFFFFFFF, 0xFFFFFFFF)),
        ("tcp://127.0.0.1:0", TcpAddress("127.0.0.1", 0)),
        ("tcp://[::1]:443", TcpAddress("::1", 443)),
        ("tcp://kms.us-east-1.amazonaws.com:443", TcpAddress("kms.us-east-1.amazonaws.com", 443)),
        ("unix:///run/nitrokms/enclave.sock", UnixAddress("/run/nitrokms/enclave.sock")),
        ("unix://relative.sock", UnixAddress("relative.sock")),
        ("unix://@abstract-name", UnixAddress("@abstract-name")),
    ],
)
def test_parse(text: str, expected: Address) -> None:
    assert parse_address(text) == expected
    assert parse_address(format_address(expected)) == expected


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("3:8000", "no scheme"),
        ("http://host:80", "unknown address scheme 'http'"),
        ("vsock://3", "no port"),
        ("vsock://3:", "not a decimal number"),
        ("vsock://three:8000", "CID 'three'"),
        ("vsock://-1:8000", "CID '-1'"),
        ("vsock://3:+80", "port '+80'"),
        ("vsock://4294967296:1", "out of range"),
        ("vsock://3:4294967296", "out of range"),
        ("tcp://host:65536", "out of range"),
        ("tcp://:80", "no host"),
        ("tcp://::1:80", "brackets"),
        ("tcp://[::1]80", "[IPV6]:PORT"),
        ("tcp://bad host:1", "not a valid host"),
        ("tcp://host_.-x:1", "not a valid host"),
        ("unix://", "empty path"),
        ("unix:///" + "x" * 200, "limit is 107"),
        ("unix:///a\0b", "NUL"),
        ("tcp://h:0x10", "not a decimal"),
    ],
)
def test_malformed_addresses_name_the_problem(text: str, problem: str) -> None:
    with pytest.raises(AddressError) as info:
        parse_address(text)
    assert problem in str(info.value)
    assert info.value.code == "protocol.BadAddress"


def test_non_string_refused() -> None:
    with pytest.raises(AddressError):
        parse_address(5)  # type: ignore[arg-type]


@settings(max_examples=500)
@given(st.text(max_size=80))
def test_arbitrary_text_parses_or_raises_address_error(text: str) -> None:
    try:
        address = parse_address(text)
    except AddressError:
        return
    assert parse_address(str(address)) == address


# --- transports: one conformance check every stream transport must pass ---------------------


async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    while data := await reader.read(65536):
        writer.write(data)
        await writer.drain()
    writer.write_eof()
    await writer.drain()
    writer.close()


async def check_two_way_stream(listen: Address) -> Address:
    server = await start_server(echo, listen)
    try:
        where = bound_address(server)
        reader, writer = await open_connection(where)
        payload = bytes(range(256)) * 4096  # 1 MiB

        async def send() -> None:
            writer.write(payload)
            await writer.drain()
            writer.write_eof()  # half-close: the echo still flows back

        _sent, received = await asyncio.gather(send(), reader.read(-1))
        assert received == payload
        writer.close()
        await writer.wait_closed()
        return where
    finally:
        server.close()
        await server.wait_closed()


def unix_path(tmp_path: Path) -> Address:
    return UnixAddress(str(tmp_path / "s.sock"))


TRANSPORTS: dict[str, Callable[[Path], Address]] = {
    "unix": unix_path,
    "unix-abstract": lambda tmp: UnixAddress(f"@nitrokms-test-{tmp.name}"),
    "tcp": lambda _tmp: TcpAddress("127.0.0.1", 0),
}


@pytest.mark.parametrize("name", sorted(TRANSPORTS))
def test_transport_conformance(name: str, tmp_path: Path) -> None:
    where = asyncio.run(check_two_way_stream(TRANSPORTS[name](tmp_path)))
    if isinstance(where, TcpAddress):
        assert where.port != 0


def test_stale_unix_socket_is_replaced_but_other_files_are_not(tmp_path: Path) -> None:
    path = tmp_path / "s.sock"
    stale = socket.socket(socket.AF_UNIX)
    stale.bind(str(path))
    stale.close()
    asyncio.run(check_two_way_stream(UnixAddress(str(path))))
    regular = tmp_path / "file"
    regular.write_text("keep me")
    with pytest.raises(AddressError, match="not a socket"):
        asyncio.run(check_two_way_stream(UnixAddress(str(regular))))
    assert regular.read_text() == "keep me"


def test_sync_connect_socket(tmp_path: Path) -> None:
    async def scenario() -> None:
        server = await start_server(echo, UnixAddress(str(tmp_path / "s.sock")))
        where = bound_address(server)

        def client() -> bytes:
            with connect_socket(where, timeout_s=5) as sock:
                sock.sendall(b"ping")
                sock.shutdown(socket.SHUT_WR)
                return sock.recv(16)

        try:
            assert await asyncio.to_thread(client) == b"ping"
        finally:
            server.close()
            await server.wait_closed()

    asyncio.run(scenario())


def test_connect_to_absent_peer_raises_oserror(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        asyncio.run(open_connection(UnixAddress(str(tmp_path / "nobody.sock"))))
    with pytest.raises(FileNotFoundError):
        connect_socket(UnixAddress(str(tmp_path / "nobody.sock")), timeout_s=1)


@pytest.mark.skipif(not hasattr(socket, "AF_VSOCK"), reason="platform has no AF_VSOCK")
def test_vsock_server_binds_with_af_vsock() -> None:
    # No vsock peer exists on these machines; binding a listener is what can be checked here.
    async def scenario() -> None:
        try:
            server = await start_server(echo, VsockAddress(VMADDR_CID_ANY, 0xFFFFFFFF))
        except OSError as exc:  # no vsock transport loaded in this kernel
            pytest.skip(f"vsock unavailable: {exc}")
        try:
            where = bound_address(server)
            assert isinstance(where, VsockAddress)
        finally:
            server.close()
            await server.wait_closed()

    asyncio.run(scenario())
