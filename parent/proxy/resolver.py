"""Host name resolution for the relay: lazy, cached for the record's TTL, filtered by family.

Like vsock-proxy's hickory resolver: /etc/hosts first, then DNS from the system configuration
(`/etc/resolv.conf`), IDNA-normalised names, the first accepted record used, and a fresh lookup
only once the TTL has passed (the stale-IP bug, vsock-proxy #553). Names that neither answers (other
NSS sources) fall back to getaddrinfo, which has no TTL, so those are kept for `fallback_ttl_s`.
IP literals need no lookup; bare numbers are refused (a vsock CID passed by mistake, #716).
"""

from __future__ import annotations

import asyncio
import enum
import ipaddress
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass

import dns.asyncresolver
import dns.exception
import dns.rdatatype
import dns.resolver
from nitrokms.parent.proxy.errors import NO_ACCEPTED_IP_MESSAGE, ResolveError

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
Clock = Callable[[], float]

DEFAULT_FALLBACK_TTL_S = 60.0
DEFAULT_LIFETIME_S = 5.0
MAX_TTL_S = 86_400.0
MAX_HOSTS_FILE_BYTES = 1 << 20
HOSTS_PATH = "/etc/hosts"


class IpFamily(enum.Enum):
    ANY = "any"
    V4 = "ipv4"
    V6 = "ipv6"

    def accepts(self, address: IPAddress) -> bool:
        if self is IpFamily.V4:
            return address.version == 4
        if self is IpFamily.V6:
            return address.version == 6
        return True


@dataclass(frozen=True)
class Resolution:
    addresses: tuple[IPAddress, ...]
    expires_at: float


def normalise_host(host: str) -> str:
    """Lower-case ASCII (IDNA) form of `host` without a trailing dot. Raises ResolveError."""
    name = host.strip().rstrip(".").lower()
    if not name:
        raise ResolveError("empty host name")
    try:
        ascii_name = name.encode("idna").decode("ascii")
    except UnicodeError as exc:
        raise ResolveError(f"{host!r} is not a valid host name: {exc}") from exc
    if all(label.isdigit() for label in ascii_name.split(".")):
        raise ResolveError(f"{host!r} is a bare number, not a host name or IP address")
    return ascii_name


def parse_ip(host: str) -> IPAddress | None:
    try:
        return ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return None


class Resolver:
    """Resolve names to accepted IPs with a TTL cache. Every failure is a ResolveError."""

    def __init__(
        self,
        family: IpFamily = IpFamily.ANY,
        *,
        dns_resolver: dns.asyncresolver.Resolver | None = None,
        use_system_dns: bool = True,
        hosts_path: str | None = HOSTS_PATH,
        use_getaddrinfo: bool = True,
        fallback_ttl_s: float = DEFAULT_FALLBACK_TTL_S,
        lifetime_s: float = DEFAULT_LIFETIME_S,
        clock: Clock = time.monotonic,
    ) -> None:
        self.family = family
        self._dns = dns_resolver
        self._use_system_dns = use_system_dns and dns_resolver is None
        self._hosts_path = hosts_path
        self._use_getaddrinfo = use_getaddrinfo
        self._fallback_ttl_s = fallback_ttl_s
        self._lifetime_s = lifetime_s
        self._clock = clock
        self._cache: dict[str, Resolution] = {}
        self._lock = asyncio.Lock()
        self.lookups = 0

    async def resolve(self, host: str) -> IPAddress:
        """The first accepted address of `host` (cached until its TTL ends)."""
        return (await self.resolve_all(host))[0]

    async def resolve_all(self, host: str) -> tuple[IPAddress, ...]:
        """All accepted addresses of `host`, never empty. Raises ResolveError."""
        literal = parse_ip(host)
        if literal is not None:
            return self._filter(host, (literal,))
        name = normalise_host(host)
        cached = self._cache.get(name)
        if cached is not None and self._clock() < cached.expires_at:
            return cached.addresses
        async with self._lock:
            cached = self._cache.get(name)
            if cached is not None and self._clock() < cached.expires_at:
                return cached.addresses
            resolution = await self._lookup(name)
            self._cache[name] = resolution
            return resolution.addresses

    def _filter(self, host: str, addresses: tuple[IPAddress, ...]) -> tuple[IPAddress, ...]:
        accepted = tuple(a for a in addresses if self.family.accepts(a))
        if not accepted:
            raise ResolveError(f"{host}: {NO_ACCEPTED_IP_MESSAGE}")
        return accepted

    def _expiry(self, ttl_s: float) -> float:
        return self._clock() + min(max(ttl_s, 0.0), MAX_TTL_S)

    async def _lookup(self, name: str) -> Resolution:
        self.lookups += 1
        from_hosts = self._from_hosts_file(name)
        if from_hosts:
            return Resolution(self._filter(name, from_hosts), self._expiry(self._fallback_ttl_s))
        dns_error = NO_ACCEPTED_IP_MESSAGE
        resolver = self._dns_resolver()
        if resolver is not None:
            try:
                found = await self._from_dns(resolver, name)
            except dns.exception.DNSException as exc:
                found, dns_error = None, str(exc) or type(exc).__name__
            if found is not None:
                return Resolution(self._filter(name, found[0]), self._expiry(found[1]))
        if self._use_getaddrinfo:
            addresses = await self._from_getaddrinfo(name, dns_error)
            return Resolution(self._filter(name, addresses), self._expiry(self._fallback_ttl_s))
        if resolver is None:
            dns_error = "no DNS resolver configured"
        raise ResolveError(f"cannot resolve {name}: {dns_error}")

    def _dns_resolver(self) -> dns.asyncresolver.Resolver | None:
        if self._dns is None and self._use_system_dns:
            try:
                self._dns = dns.asyncresolver.Resolver()
            except dns.exception.DNSException:
                self._use_system_dns = False
        return self._dns

    async def _from_dns(
        self, resolver: dns.asyncresolver.Resolver, name: str
    ) -> tuple[tuple[IPAddress, ...], float] | None:
        """Addresses and TTL, or None when the name has no record of the wanted types."""
        rdtypes = {IpFamily.V4: ["A"], IpFamily.V6: ["AAAA"], IpFamily.ANY: ["A", "AAAA"]}
        for rdtype in rdtypes[self.family]:
            answer = await resolver.resolve(
                name, rdtype, search=False, lifetime=self._lifetime_s, raise_on_no_answer=False
            )
            if answer.rrset:
                addresses = tuple(ipaddress.ip_address(rdata.address) for rdata in answer.rrset)
                return addresses, float(answer.rrset.ttl)
        return None

    async def _from_getaddrinfo(self, name: str, dns_error: str) -> tuple[IPAddress, ...]:
        family = {IpFamily.V4: socket.AF_INET, IpFamily.V6: socket.AF_INET6}.get(
            self.family, socket.AF_UNSPEC
        )
        loop = asyncio.get_running_loop()
        try:
            infos = await loop.getaddrinfo(name, None, family=family, type=socket.SOCK_STREAM)
        except (OSError, UnicodeError) as exc:
            raise ResolveError(f"cannot resolve {name}: {dns_error} (getaddrinfo: {exc})") from exc
        found = [ipaddress.ip_address(str(info[4][0]).partition("%")[0]) for info in infos]
        found.sort(key=lambda a: a.version)  # IPv4 first, like hickory's Ipv4thenIpv6
        return tuple(dict.fromkeys(found))

    def _from_hosts_file(self, name: str) -> tuple[IPAddress, ...]:
        if self._hosts_path is None:
            return ()
        try:
            with open(self._hosts_path, "rb") as handle:
                text = handle.read(MAX_HOSTS_FILE_BYTES).decode("utf-8", "replace")
        except OSError:
            return ()
        return hosts_file_lookup(text, name)


def hosts_file_lookup(text: str, name: str) -> tuple[IPAddress, ...]:
    """Addresses for `name` in /etc/hosts-format `text`, IPv4 first, without duplicates."""
    found: list[IPAddress] = []
    for line in text.splitlines():
        fields = line.partition("#")[0].split()
        if len(fields) < 2 or name not in (f.lower().rstrip(".") for f in fields[1:]):
            continue
        address = parse_ip(fields[0].partition("%")[0])
        if address is not None:
            found.append(address)
    found.sort(key=lambda a: a.version)
    return tuple(dict.fromkeys(found))
