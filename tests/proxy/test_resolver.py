from __future__ import annotations

import asyncio

import pytest
from nitrokms.parent.proxy.errors import NO_ACCEPTED_IP_MESSAGE, ResolveError
from nitrokms.parent.proxy.resolver import IpFamily, Resolver, hosts_file_lookup, normalise_host

from tests.proxy.support import DnsZone, FakeClock, fake_dns, ip


def resolve_with(zone: DnsZone, family: IpFamily, host: str, clock: FakeClock | None = None):
    async def main():
        async with fake_dns(zone) as dns_resolver:
            resolver = Resolver(
                family,
                dns_resolver=dns_resolver,
                hosts_path=None,
                use_getaddrinfo=False,
                clock=clock or FakeClock(),
            )
            return await resolver.resolve_all(host)

    return asyncio.run(main())


def dual_stack_zone() -> DnsZone:
    return DnsZone({"kms.example": {"A": (60, ["127.0.0.7"]), "AAAA": (60, ["::7"])}})


def test_record_is_reresolved_only_after_its_ttl() -> None:
    zone = DnsZone({"kms.example": {"A": (1, ["127.0.0.2"])}})
    clock = FakeClock()

    async def main() -> list[str]:
        async with fake_dns(zone) as dns_resolver:
            resolver = Resolver(dns_resolver=dns_resolver, hosts_path=None, clock=clock)
            seen = [str(await resolver.resolve("kms.example"))]
            zone.records["kms.example"]["A"] = (1, ["127.0.0.3"])
            clock.now += 0.9
            seen.append(str(await resolver.resolve("kms.example")))
            clock.now += 0.2
            seen.append(str(await resolver.resolve("kms.example")))
            return seen

    assert asyncio.run(main()) == ["127.0.0.2", "127.0.0.2", "127.0.0.3"]
    assert zone.queries == [("kms.example", "A"), ("kms.example", "A")]


def test_concurrent_lookups_of_an_expired_name_share_one_query() -> None:
    zone = DnsZone({"kms.example": {"A": (30, ["127.0.0.2"])}})

    async def main() -> set[str]:
        async with fake_dns(zone) as dns_resolver:
            resolver = Resolver(dns_resolver=dns_resolver, hosts_path=None, clock=FakeClock())
            found = await asyncio.gather(*(resolver.resolve("kms.example") for _ in range(20)))
            return {str(a) for a in found}

    assert asyncio.run(main()) == {"127.0.0.2"}
    assert len(zone.queries) == 1


@pytest.mark.parametrize(
    ("family", "expected"),
    [(IpFamily.ANY, "127.0.0.7"), (IpFamily.V4, "127.0.0.7"), (IpFamily.V6, "::7")],
)
def test_family_selects_the_record_type(family: IpFamily, expected: str) -> None:
    assert resolve_with(dual_stack_zone(), family, "kms.example") == (ip(expected),)


def test_ipv4_only_name_under_ipv6_has_no_accepted_ip() -> None:
    zone = DnsZone({"v4only.example": {"A": (60, ["127.0.0.8"])}})
    with pytest.raises(ResolveError, match=NO_ACCEPTED_IP_MESSAGE):
        resolve_with(zone, IpFamily.V6, "v4only.example")


def test_ipv6_only_name_without_family_falls_back_to_aaaa() -> None:
    zone = DnsZone({"v6only.example": {"AAAA": (60, ["::9"])}})
    assert resolve_with(zone, IpFamily.ANY, "v6only.example") == (ip("::9"),)


def test_unknown_name_is_a_resolve_error() -> None:
    with pytest.raises(ResolveError, match=r"nope\.example"):
        resolve_with(DnsZone(), IpFamily.ANY, "nope.example")


def test_ip_literals_need_no_dns_but_respect_the_family() -> None:
    zone = DnsZone()
    assert resolve_with(zone, IpFamily.ANY, "127.0.0.5") == (ip("127.0.0.5"),)
    assert resolve_with(zone, IpFamily.V6, "::1") == (ip("::1"),)
    with pytest.raises(ResolveError, match=NO_ACCEPTED_IP_MESSAGE):
        resolve_with(zone, IpFamily.V4, "::1")
    assert zone.queries == []


def test_unicode_names_are_idna_normalised_before_lookup() -> None:
    zone = DnsZone({"xn--bcher-kva.example": {"A": (60, ["127.0.0.4"])}})
    assert resolve_with(zone, IpFamily.ANY, "Bücher.Example.") == (ip("127.0.0.4"),)
    assert zone.queries == [("xn--bcher-kva.example", "A")]


@pytest.mark.parametrize("host", ["16", "3.4", "", "a..b", "x" * 64 + ".example"])
def test_bare_numbers_and_invalid_names_are_refused(host: str) -> None:
    with pytest.raises(ResolveError):
        normalise_host(host)


def test_hosts_file_entries_are_used_before_dns() -> None:
    text = "# comment\n127.0.0.1 localhost vm\n::1 localhost ip6-localhost\n10.0.0.1 other\n"
    assert hosts_file_lookup(text, "localhost") == (ip("127.0.0.1"), ip("::1"))
    assert hosts_file_lookup(text, "missing") == ()


def test_hosts_file_names_resolve_without_dns(tmp_path) -> None:
    hosts = tmp_path / "hosts"
    hosts.write_text("127.0.0.9 upstream.internal\n")
    zone = DnsZone()

    async def main():
        async with fake_dns(zone) as dns_resolver:
            resolver = Resolver(dns_resolver=dns_resolver, hosts_path=str(hosts))
            return await resolver.resolve("UPSTREAM.internal")

    assert asyncio.run(main()) == ip("127.0.0.9")
    assert zone.queries == []


def test_getaddrinfo_fallback_answers_names_dns_cannot() -> None:
    async def main():
        resolver = Resolver(IpFamily.V4, hosts_path=None, use_system_dns=False)
        return await resolver.resolve("localhost")

    assert asyncio.run(main()) == ip("127.0.0.1")
