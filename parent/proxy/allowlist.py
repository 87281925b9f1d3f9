"""The vsock-proxy allowlist: its YAML file, the start-up check and the check on every connect.

Same format as AWS `vsock-proxy` (`allowlist: [{address: HOST, port: PORT}, ...]`; unknown keys are
ignored, as serde does) and the same rule: entries for another port are skipped, an exact string
match of the address wins, otherwise the resolved IPs of each entry are compared with those of the
remote address. The file is read whole, capped at MAX_CONFIG_BYTES, before parsing.

vsock-proxy applies the rule once, at start-up; a remote name allowed then because it resolved to
an allowlisted name's address stays allowed whatever it resolves to later. `check_destination`
applies it again to the address each connection is about to use, with the resolver's TTL-aware
cache, so a changed DNS answer cannot lead the relay to an address nobody allowlisted.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Any

import yaml
from nitrokms.parent.proxy.errors import (
    NOT_ALLOWED_MESSAGE,
    ConfigError,
    NotAllowedError,
    ResolveError,
)
from nitrokms.parent.proxy.logs import event
from nitrokms.parent.proxy.resolver import IPAddress

DEFAULT_CONFIG_PATH = "/etc/nitro_enclaves/vsock-proxy.yaml"
MAX_CONFIG_BYTES = 1 << 20  # AWS's shipped file is ~10 KiB; anything near 1 MiB is a mistake
MAX_ENTRIES = 10_000
MAX_ADDRESS_CHARS = 255
MAX_PORT = 0xFFFF

ResolveAll = Callable[[str], Awaitable[tuple[IPAddress, ...]]]


@dataclass(frozen=True)
class AllowEntry:
    address: str
    port: int

    def __post_init__(self) -> None:
        if not isinstance(self.address, str) or not self.address.strip():
            raise ConfigError("allowlist address must be a non-empty string")
        if len(self.address) > MAX_ADDRESS_CHARS or any(c.isspace() for c in self.address):
            raise ConfigError(f"allowlist address {self.address[:64]!r} is not a host name or IP")
        if isinstance(self.port, bool) or not isinstance(self.port, int):
            raise ConfigError(f"allowlist port for {self.address!r} must be an integer")
        if not 0 <= self.port <= MAX_PORT:
            raise ConfigError(f"allowlist port {self.port} for {self.address!r} is out of range")


def load_allowlist(path: str) -> tuple[AllowEntry, ...]:
    """Read and parse the allowlist file. Raises ConfigError (missing, unreadable, malformed)."""
    try:
        with open(path, "rb") as handle:
            data = handle.read(MAX_CONFIG_BYTES + 1)
    except OSError as exc:
        raise ConfigError(f"cannot read config {path}: {exc.strerror or exc}") from exc
    return parse_allowlist(data, source=path)


def parse_allowlist(data: bytes | str, *, source: str = "config") -> tuple[AllowEntry, ...]:
    """Parse the YAML allowlist. Raises ConfigError naming the problem for any malformed input."""
    if len(data) > MAX_CONFIG_BYTES:
        raise ConfigError(f"{source}: larger than {MAX_CONFIG_BYTES} bytes")
    try:
        document = yaml.safe_load(data)
    except (yaml.YAMLError, RecursionError, ValueError, TypeError) as exc:
        raise ConfigError(f"{source}: not valid YAML: {_first_line(exc)}") from exc
    if not isinstance(document, dict) or "allowlist" not in document:
        raise ConfigError(f"{source}: expected a mapping with an 'allowlist' key")
    raw = document["allowlist"]
    if not isinstance(raw, list):
        raise ConfigError(f"{source}: 'allowlist' must be a list of {{address, port}} entries")
    if len(raw) > MAX_ENTRIES:
        raise ConfigError(f"{source}: more than {MAX_ENTRIES} allowlist entries")
    try:
        return tuple(_entry(item, index) for index, item in enumerate(raw))
    except ConfigError as exc:
        raise ConfigError(f"{source}: {exc.message}") from exc


def _entry(item: Any, index: int) -> AllowEntry:
    if not isinstance(item, dict):
        raise ConfigError(f"allowlist entry {index} is not a mapping")
    if "address" not in item or "port" not in item:
        raise ConfigError(f"allowlist entry {index} needs both 'address' and 'port'")
    return AllowEntry(item["address"], item["port"])


async def check_allowlist(
    entries: Iterable[AllowEntry], remote_addr: str, remote_port: int, resolve_all: ResolveAll
) -> None:
    """Refuse REMOTE_ADDR:REMOTE_PORT unless the allowlist covers it, as vsock-proxy does.

    Raises NotAllowedError whose message starts with NOT_ALLOWED_MESSAGE. An allowlisted name that
    does not resolve is skipped (logged), so one stale entry cannot block the others.
    """
    candidates = _by_name_or_port(entries, remote_addr, remote_port)
    if candidates is None:
        return
    try:
        remote_ips = set(await resolve_all(remote_addr))
    except ResolveError as exc:
        raise NotAllowedError(f"{NOT_ALLOWED_MESSAGE}: {exc.message}") from exc
    if not await _resolves_to_one_of(candidates, remote_ips, resolve_all, logging.WARNING):
        raise NotAllowedError(
            f"{NOT_ALLOWED_MESSAGE}: {remote_addr}:{remote_port} matches no allowlist entry"
        )


async def check_destination(
    entries: Iterable[AllowEntry],
    remote_addr: str,
    remote_port: int,
    ip: IPAddress,
    resolve_all: ResolveAll,
) -> None:
    """Refuse a connection to `ip` (what REMOTE_ADDR resolves to now) unless the allowlist still
    covers it: REMOTE_ADDR is itself an entry, or `ip` is among an entry's current addresses.

    Raises NotAllowedError whose message starts with NOT_ALLOWED_MESSAGE.
    """
    candidates = _by_name_or_port(entries, remote_addr, remote_port)
    if candidates is None:
        return
    if not await _resolves_to_one_of(candidates, {ip}, resolve_all, logging.DEBUG):
        raise NotAllowedError(
            f"{NOT_ALLOWED_MESSAGE}: {remote_addr} now resolves to {ip}, which no allowlist "
            f"entry for port {remote_port} resolves to"
        )


def _by_name_or_port(
    entries: Iterable[AllowEntry], remote_addr: str, remote_port: int
) -> list[AllowEntry] | None:
    """None when REMOTE_ADDR is an entry itself; else the entries to compare addresses with.
    Raises NotAllowedError when there are none."""
    candidates = [entry for entry in entries if entry.port == remote_port]
    if any(entry.address == remote_addr for entry in candidates):
        return None
    if not candidates:
        raise NotAllowedError(f"{NOT_ALLOWED_MESSAGE}: no entry for port {remote_port}")
    return candidates


async def _resolves_to_one_of(
    candidates: Iterable[AllowEntry], ips: set[IPAddress], resolve_all: ResolveAll, level: int
) -> bool:
    """Whether any candidate resolves to one of `ips`. An entry that does not resolve is skipped
    (logged at `level`), so one stale entry cannot block the others."""
    for entry in candidates:
        try:
            allowed_ips = await resolve_all(entry.address)
        except ResolveError as exc:
            event(level, "allowlist.skipped", address=entry.address, error=exc.message)
            continue
        if ips.intersection(allowed_ips):
            return True
    return False


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0][:200]
