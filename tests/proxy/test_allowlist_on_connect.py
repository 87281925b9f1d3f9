"""The allowlist holds on every connection, not only at start-up (issue 15 item 6).

vsock-proxy checks the allowlist once; a remote name allowed because it resolved to an
allowlisted name's address stays allowed whatever DNS says later. Here the fake DNS server changes
its answers (with a fake clock past the TTL), and a second upstream listens on the address the
new answer points to, standing for whoever took that address: it must never see a connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator

import pytest
from nitrokms.parent.proxy.allowlist import AllowEntry
from nitrokms.parent.proxy.relay import Relay
from nitrokms.parent.proxy.resolver import Resolver

from tests.proxy.support import (
    DnsZone,
    FakeClock,
    close,
    connect,
    fake_dns,
    running_relay,
    upstream,
)

ALLOWED_IP = "127.0.0.1"
ELSEWHERE_IP = "127.0.0.2"  # another loopback address: reachable, and nobody allowlisted it
TTL_S = 1


def run(coro) -> None:
    asyncio.run(asyncio.wait_for(coro, 20))


async def exchange(address, payload: bytes) -> bytes:
    """Send, half-close and read to the end; b"" when the relay refused (closed at once)."""
    reader, writer = await connect(address)
    try:
        writer.write(payload)
        await writer.drain()
        writer.write_eof()
        return await reader.read()
    except ConnectionError:
        return b""
    finally:
        await close(writer)


class Witness:
    """An upstream that records whether anyone connected to it."""

    def __init__(self) -> None:
        self.connections = 0

    async def __call__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        writer.close()


@contextlib.asynccontextmanager
async def relaying(
    zone: DnsZone, clock: FakeClock, remote: str, elsewhere: Witness
) -> AsyncIterator[Relay]:
    """An echo upstream on ALLOWED_IP, `elsewhere` on ELSEWHERE_IP (same port), the fake DNS, and
    a relay to `remote` whose allowlist holds kms.example on that port."""
    async with (
        upstream() as port,
        upstream(elsewhere, host=ELSEWHERE_IP, port=port),
        fake_dns(zone) as dns_resolver,
    ):
        resolver = Resolver(dns_resolver=dns_resolver, hosts_path=None, clock=clock)
        allowlist = (AllowEntry("kms.example", port),)
        async with running_relay(
            port, host=remote, resolver=resolver, allowlist=allowlist
        ) as relay:
            yield relay


def test_a_remote_name_that_now_resolves_elsewhere_is_refused_on_connect(caplog) -> None:
    zone = DnsZone(
        {
            "kms.example": {"A": (TTL_S, [ALLOWED_IP])},
            "alias.example": {"A": (TTL_S, [ALLOWED_IP])},  # allowed: same address as kms
        }
    )
    clock, witness = FakeClock(), Witness()

    async def main() -> None:
        async with relaying(zone, clock, "alias.example", witness) as relay:
            assert await exchange(relay.address, b"before") == b"before"
            zone.records["alias.example"]["A"] = (TTL_S, [ELSEWHERE_IP])
            clock.now += TTL_S + 0.5
            assert await exchange(relay.address, b"after") == b""
            assert witness.connections == 0
            assert relay.metrics.upstream_failures["not_allowed"] == 1
            assert "not_allowed" in relay.metrics.render()

    with caplog.at_level(logging.WARNING, logger="nitrokms.proxy"):
        run(main())
    refusals = [r for r in caplog.records if r.getMessage() == "upstream.not_allowed"]
    assert len(refusals) == 1
    assert ELSEWHERE_IP in refusals[0].fields["error"]


def test_an_allowlisted_name_that_moves_takes_its_permission_along() -> None:
    """REMOTE_ADDR is an IP allowed because kms.example resolved to it; once kms.example resolves
    elsewhere, nothing allows that IP any more."""
    zone = DnsZone({"kms.example": {"A": (TTL_S, [ALLOWED_IP])}})
    clock = FakeClock()

    async def main() -> None:
        async with relaying(zone, clock, ALLOWED_IP, Witness()) as relay:
            assert await exchange(relay.address, b"ok") == b"ok"
            zone.records["kms.example"]["A"] = (TTL_S, ["127.0.0.3"])
            clock.now += TTL_S + 0.5
            assert await exchange(relay.address, b"no") == b""
            assert relay.metrics.upstream_failures["not_allowed"] == 1

    run(main())


@pytest.mark.parametrize("ttl_passed", [False, True])
def test_an_exact_name_match_follows_its_own_answers(ttl_passed: bool) -> None:
    """vsock-proxy's rule: REMOTE_ADDR written in the allowlist is allowed by name, wherever it
    resolves; a new answer is used only once the old one's TTL has passed."""
    zone = DnsZone({"kms.example": {"A": (TTL_S, [ALLOWED_IP])}})
    clock, moved_to = FakeClock(), Witness()

    async def main() -> None:
        async with relaying(zone, clock, "kms.example", moved_to) as relay:
            assert await exchange(relay.address, b"one") == b"one"
            zone.records["kms.example"]["A"] = (TTL_S, [ELSEWHERE_IP])
            if ttl_passed:
                clock.now += TTL_S + 0.5
            answer = await exchange(relay.address, b"two")
            assert answer == (b"" if ttl_passed else b"two")
            assert moved_to.connections == (1 if ttl_passed else 0)
            assert relay.metrics.upstream_failures["not_allowed"] == 0

    run(main())
