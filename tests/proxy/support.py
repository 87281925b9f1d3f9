"""Upstream servers, a tiny DNS server and a fake clock for the relay tests."""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field

import dns.asyncresolver
import dns.message
import dns.rcode
import dns.rdataclass
import dns.rdatatype
import dns.rrset
from nitrokms.parent.proxy.allowlist import AllowEntry
from nitrokms.parent.proxy.relay import Relay, RelaySettings
from nitrokms.parent.proxy.resolver import IpFamily, Resolver
from nitrokms.proto.addresses import Address, TcpAddress

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Echo until EOF, then half-close back and finish."""
    with contextlib.suppress(ConnectionError):
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
        writer.write_eof()
        await writer.drain()
    writer.close()


async def reply_then_close(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Send a greeting and close at once, before the client says anything."""
    writer.write(b"bye from upstream")
    await writer.drain()
    writer.close()


async def hang(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Accept and never answer; end when the relay closes."""
    with contextlib.suppress(ConnectionError):
        await reader.read()
    writer.close()


@contextlib.asynccontextmanager
async def upstream(
    handler: Handler = echo, *, host: str = "127.0.0.1", port: int = 0
) -> AsyncIterator[int]:
    """A server on `host` (any loopback address: all of 127/8 is local); yields its port."""
    tasks: set[asyncio.Task[None]] = set()
    writers: set[asyncio.StreamWriter] = set()

    async def track(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        tasks.add(task)
        writers.add(writer)
        try:
            await handler(reader, writer)
        finally:
            tasks.discard(task)

    server = await asyncio.start_server(track, host, port)
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        server.close()
        for writer in writers:
            writer.transport.abort()
        if tasks:
            await asyncio.wait(tasks, timeout=5)
        await server.wait_closed()


@contextlib.asynccontextmanager
async def running_relay(
    port: int,
    listen: Address | None = None,
    *,
    host: str = "127.0.0.1",
    resolver: Resolver | None = None,
    allowlist: tuple[AllowEntry, ...] | None = None,
    **settings: float | int | None,
) -> AsyncIterator[Relay]:
    relay = Relay(
        RelaySettings(host, port, allowlist=allowlist, **settings),  # type: ignore[arg-type]
        resolver or Resolver(IpFamily.ANY, hosts_path=None, use_system_dns=False),
    )
    await relay.start(listen or TcpAddress("127.0.0.1", 0))
    try:
        yield relay
    finally:
        await relay.aclose()


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@dataclass
class DnsZone:
    """Records served by FakeDns: name -> {"A"|"AAAA": (ttl, [addresses])}."""

    records: dict[str, dict[str, tuple[int, list[str]]]] = field(default_factory=dict)
    queries: list[tuple[str, str]] = field(default_factory=list)

    def answer(self, wire: bytes) -> bytes:
        query = dns.message.from_wire(wire)
        response = dns.message.make_response(query)
        question = query.question[0]
        name = question.name.to_text(omit_final_dot=True).lower()
        rdtype = dns.rdatatype.to_text(question.rdtype)
        self.queries.append((name, rdtype))
        if name not in self.records:
            response.set_rcode(dns.rcode.NXDOMAIN)
            return response.to_wire()
        found = self.records[name].get(rdtype)
        if found is not None:
            ttl, addresses = found
            response.answer.append(
                dns.rrset.from_text_list(question.name, ttl, dns.rdataclass.IN, rdtype, addresses)
            )
        return response.to_wire()


class _DnsProtocol(asyncio.DatagramProtocol):
    def __init__(self, zone: DnsZone) -> None:
        self.zone = zone
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        assert self.transport is not None
        self.transport.sendto(self.zone.answer(data), addr)


@contextlib.asynccontextmanager
async def fake_dns(zone: DnsZone) -> AsyncIterator[dns.asyncresolver.Resolver]:
    """Serve `zone` on 127.0.0.1 (UDP) and yield a dnspython resolver pointed at it."""
    loop = asyncio.get_running_loop()
    transport, _ = await loop.create_datagram_endpoint(
        lambda: _DnsProtocol(zone), local_addr=("127.0.0.1", 0)
    )
    resolver = dns.asyncresolver.Resolver(configure=False)
    resolver.nameservers = ["127.0.0.1"]
    resolver.port = transport.get_extra_info("sockname")[1]
    try:
        yield resolver
    finally:
        transport.close()


def ip(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    return ipaddress.ip_address(text)


async def close(writer: asyncio.StreamWriter) -> None:
    writer.close()
    with contextlib.suppress(OSError):
        await writer.wait_closed()


async def connect(address: Address) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    from nitrokms.transport.sockets import open_connection

    return await open_connection(address)
