"""The relay in-process, through its Python API, against real sockets on 127.0.0.1 and unix."""

from __future__ import annotations

import asyncio
import dataclasses
import os
import socket

import pytest
from nitrokms.parent.proxy.metrics import start_metrics_server
from nitrokms.parent.proxy.relay import WRITE_HIGH_WATER_BYTES
from nitrokms.parent.proxy.resolver import Resolver
from nitrokms.proto.addresses import TcpAddress, UnixAddress

from tests.proxy.support import (
    DnsZone,
    FakeClock,
    close,
    connect,
    fake_dns,
    hang,
    reply_then_close,
    running_relay,
    upstream,
)

TEST_TIMEOUT_S = 20.0
PAYLOAD = os.urandom(3 * 1024 * 1024 + 17)


def run(coro) -> None:
    asyncio.run(asyncio.wait_for(coro, TEST_TIMEOUT_S))


async def read_to_end(reader: asyncio.StreamReader) -> bytes:
    """Read to EOF; a reset (the relay's abort) counts as the end."""
    try:
        return await reader.read()
    except ConnectionError:
        return b""


async def round_trip(address, payload: bytes) -> bytes:
    reader, writer = await connect(address)

    async def send() -> None:
        writer.write(payload)
        await writer.drain()
        writer.write_eof()

    sender = asyncio.create_task(send())
    received = await reader.read()  # until EOF: proves half-close travels back
    await sender
    await close(writer)
    return received


@pytest.mark.parametrize("kind", ["tcp", "unix"])
def test_large_payload_round_trip_with_half_close(kind: str, tmp_path) -> None:
    async def main() -> None:
        listen = (
            TcpAddress("127.0.0.1", 0) if kind == "tcp" else UnixAddress(str(tmp_path / "r.sock"))
        )
        async with upstream() as port, running_relay(port, listen) as relay:
            assert await round_trip(relay.address, PAYLOAD) == PAYLOAD
            assert relay.metrics.bytes_to_upstream == len(PAYLOAD)
            assert relay.metrics.bytes_to_client == len(PAYLOAD)

    run(main())


def test_server_closing_first_reaches_the_client_and_the_client_can_still_finish() -> None:
    async def main() -> None:
        async with upstream(reply_then_close) as port, running_relay(port) as relay:
            reader, writer = await connect(relay.address)
            assert await reader.read() == b"bye from upstream"
            await close(writer)

    run(main())


def test_client_half_close_still_receives_the_reply() -> None:
    async def lazy_reply(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        request = await reader.read()  # waits for the client's EOF
        writer.write(b"got " + str(len(request)).encode())
        await writer.drain()
        await close(writer)

    async def main() -> None:
        async with upstream(lazy_reply) as port, running_relay(port) as relay:
            reader, writer = await connect(relay.address)
            writer.write(b"x" * 100_000)
            writer.write_eof()
            assert await reader.read() == b"got 100000"
            await close(writer)

    run(main())


def test_upstream_refused_closes_that_client_counts_it_and_keeps_serving(caplog) -> None:
    free = socket.socket()
    free.bind(("127.0.0.1", 0))
    dead_port = free.getsockname()[1]
    free.close()

    async def main() -> None:
        async with running_relay(dead_port) as relay:
            reader, writer = await connect(relay.address)
            assert await read_to_end(reader) == b""
            await close(writer)
            assert relay.metrics.upstream_failures["refused"] == 1
            assert relay.metrics.active == 0
            async with upstream() as port:
                relay.settings = dataclasses.replace(relay.settings, remote_port=port)
                assert await round_trip(relay.address, b"next") == b"next"

    with caplog.at_level("WARNING", logger="nitrokms.proxy"):
        run(main())
    assert any(r.getMessage() == "upstream.failed" for r in caplog.records)


def test_dns_change_after_ttl_is_followed_by_new_connections() -> None:
    zone = DnsZone({"kms.example": {"A": (1, ["127.0.0.2"])}})  # nothing listens on .2
    clock = FakeClock()

    async def main() -> None:
        async with upstream() as port, fake_dns(zone) as dns_resolver:
            resolver = Resolver(dns_resolver=dns_resolver, hosts_path=None, clock=clock)
            async with running_relay(port, host="kms.example", resolver=resolver) as relay:
                reader, writer = await connect(relay.address)
                assert await reader.read() == b""
                await close(writer)
                zone.records["kms.example"]["A"] = (1, ["127.0.0.1"])
                clock.now += 1.5
                assert await round_trip(relay.address, b"fresh") == b"fresh"
                assert relay.metrics.upstream_connect_failures == 1

    run(main())


def test_connect_timeout_closes_the_client() -> None:
    backlog = socket.socket()
    backlog.bind(("127.0.0.1", 0))
    backlog.listen(0)
    fillers = []
    for _ in range(8):  # fill the accept queue so further SYNs go unanswered
        filler = socket.socket()
        filler.setblocking(False)
        filler.connect_ex(backlog.getsockname())
        fillers.append(filler)

    async def main() -> None:
        async with running_relay(backlog.getsockname()[1], connect_timeout_s=0.3) as relay:
            reader, writer = await connect(relay.address)
            assert await read_to_end(reader) == b""
            await close(writer)
            assert relay.metrics.upstream_failures["timeout"] == 1

    try:
        run(main())
    finally:
        for sock in [*fillers, backlog]:
            sock.close()


def test_idle_timeout_closes_a_pair_whose_upstream_hangs() -> None:
    async def main() -> None:
        async with upstream(hang) as port, running_relay(port, idle_timeout_s=0.3) as relay:
            reader, writer = await connect(relay.address)
            writer.write(b"hello?")
            assert await reader.read() == b""
            await close(writer)
            assert relay.metrics.idle_timeouts == 1
            assert relay.metrics.active == 0

    run(main())


def test_max_connections_closes_extra_connections_at_once() -> None:
    async def main() -> None:
        async with upstream() as port, running_relay(port, max_connections=2) as relay:
            held = [await connect(relay.address) for _ in range(2)]
            for _, writer in held:
                writer.write(b"ping")
            for reader, _ in held:
                assert await reader.readexactly(4) == b"ping"
            reader, writer = await connect(relay.address)
            assert await read_to_end(reader) == b""
            await close(writer)
            assert relay.metrics.refused == 1
            for _, w in held:
                await close(w)

    run(main())


def test_slow_reader_is_bounded_and_does_not_stall_others() -> None:
    async def main() -> None:
        async with upstream() as port, running_relay(port) as relay:
            sluggish = socket.socket()
            sluggish.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
            sluggish.setblocking(False)
            address = relay.address
            assert isinstance(address, TcpAddress)
            await asyncio.get_running_loop().sock_connect(sluggish, (address.host, address.port))
            pushed = await push_until_blocked(sluggish, limit=64 * 1024 * 1024)
            assert pushed < 24 * 1024 * 1024  # the relay stopped reading: backpressure
            # per direction: the write high-water mark plus one read, not the megabytes unread
            assert relay.buffered_bytes() <= 2 * (WRITE_HIGH_WATER_BYTES + 256 * 1024)
            assert await round_trip(relay.address, PAYLOAD) == PAYLOAD
            sluggish.close()

    run(main())


def _settle(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


async def push_until_blocked(sock: socket.socket, limit: int) -> int:
    """Send until the socket stays unwritable for a while (waits on writability, not time)."""
    chunk = b"s" * 65536
    pushed = 0
    loop = asyncio.get_running_loop()
    while pushed < limit:
        try:
            pushed += sock.send(chunk)
            continue
        except BlockingIOError:
            pass
        writable: asyncio.Future[None] = loop.create_future()
        loop.add_writer(sock.fileno(), _settle, writable)
        try:
            await asyncio.wait_for(writable, 0.5)
        except TimeoutError:
            return pushed
        finally:
            loop.remove_writer(sock.fileno())
    return pushed


def test_metrics_endpoint_serves_prometheus_text() -> None:
    async def main() -> None:
        async with upstream() as port, running_relay(port) as relay:
            await round_trip(relay.address, b"abc")
            server = await start_metrics_server(relay.metrics, TcpAddress("127.0.0.1", 0))
            try:
                sock_port = server.sockets[0].getsockname()[1]  # type: ignore[attr-defined]
                reader, writer = await asyncio.open_connection("127.0.0.1", sock_port)
                writer.write(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
                response = (await reader.read()).decode()
                await close(writer)
            finally:
                server.close()
        head, _, body = response.partition("\r\n\r\n")
        assert head.startswith("HTTP/1.0 200 OK")
        assert "text/plain; version=0.0.4" in head
        assert "nitrokms_proxy_connections_accepted_total 1\n" in body
        assert 'nitrokms_proxy_bytes_total{direction="to_upstream"} 3\n' in body
        assert 'nitrokms_proxy_upstream_connect_failures_total{reason="refused"} 0\n' in body
        assert "# TYPE nitrokms_proxy_connections_active gauge" in body

    run(main())


def test_drain_lets_open_pairs_finish_and_refuses_new_ones() -> None:
    async def main() -> None:
        async with upstream() as port, running_relay(port) as relay:
            reader, writer = await connect(relay.address)
            address = relay.address
            drain = asyncio.create_task(relay.drain(5.0))
            await asyncio.sleep(0)
            with pytest.raises(ConnectionRefusedError):
                await connect(address)
            writer.write(b"still here")
            assert await reader.readexactly(10) == b"still here"
            writer.write_eof()
            assert await reader.read() == b""
            await close(writer)
            assert await drain == 0

    run(main())


def test_drain_deadline_aborts_pairs_that_do_not_finish() -> None:
    async def main() -> None:
        async with upstream() as port, running_relay(port) as relay:
            reader, writer = await connect(relay.address)
            writer.write(b"x")
            assert await reader.readexactly(1) == b"x"
            assert await relay.drain(0.2) == 1
            assert await read_to_end(reader) == b""
            await close(writer)

    run(main())


def test_client_reset_aborts_the_upstream_side_only() -> None:
    upstream_saw_end = asyncio.Event()

    async def watch(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while await reader.read(65536):
                pass
        except ConnectionError:
            pass
        upstream_saw_end.set()
        writer.close()

    async def main() -> None:
        async with upstream(watch) as port, running_relay(port) as relay:
            rude = socket.socket()
            rude.setblocking(False)
            address = relay.address
            assert isinstance(address, TcpAddress)
            await asyncio.get_running_loop().sock_connect(rude, (address.host, address.port))
            await asyncio.get_running_loop().sock_sendall(rude, b"partial request")
            rude.setsockopt(
                socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00"
            )
            rude.close()  # RST
            await upstream_saw_end.wait()
            async with upstream() as echo_port:
                relay.settings = dataclasses.replace(relay.settings, remote_port=echo_port)
                assert await round_trip(relay.address, b"others fine") == b"others fine"

    run(main())
