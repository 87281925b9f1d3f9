"""Transport addresses (`vsock://CID:PORT`, `tcp://HOST:PORT`, `unix:///path`,
`vhost-vsock:///path:PORT`): parsing and formatting only.

Enclave and parent code name their peers with these addresses so that the same code runs over
AF_VSOCK on Nitro hardware and over unix sockets or TCP in tests and the simulated world. The
sockets behind them live in `nitrokms.transport.sockets`.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import re
from dataclasses import dataclass

from nitrokms.proto.errors import AddressError

__all__ = [
    "VMADDR_CID_ANY",
    "VMADDR_CID_HOST",
    "VMADDR_CID_PARENT",
    "Address",
    "AddressError",
    "TcpAddress",
    "UnixAddress",
    "VhostVsockAddress",
    "VsockAddress",
    "format_address",
    "parse_address",
]

VMADDR_CID_ANY = 0xFFFFFFFF
VMADDR_CID_HOST = 2
VMADDR_CID_PARENT = 3
MAX_VSOCK_CID = 0xFFFFFFFF
MAX_VSOCK_PORT = 0xFFFFFFFF
MAX_TCP_PORT = 0xFFFF
MAX_UNIX_PATH_BYTES = 107  # sizeof(sun_path) - 1 for the terminating NUL on Linux
MAX_HOSTNAME_CHARS = 253
MAX_ADDRESS_CHARS = 1024  # the longest valid one is a unix path or a host name plus a port

_HOSTNAME = re.compile(
    r"\A(?=.{1,253}\Z)(?:[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?\.)*"
    r"[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?\.?\Z"
)
_DECIMAL = re.compile(r"\A[0-9]{1,10}\Z")


@dataclass(frozen=True)
class VsockAddress:
    cid: int
    port: int

    def __post_init__(self) -> None:
        _check_range("vsock CID", self.cid, MAX_VSOCK_CID)
        _check_range("vsock port", self.port, MAX_VSOCK_PORT)

    def __str__(self) -> str:
        cid = "any" if self.cid == VMADDR_CID_ANY else str(self.cid)
        return f"vsock://{cid}:{self.port}"


@dataclass(frozen=True)
class TcpAddress:
    host: str
    port: int

    def __post_init__(self) -> None:
        _check_range("TCP port", self.port, MAX_TCP_PORT)
        _check_host(self.host)

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"tcp://{host}:{self.port}"


@dataclass(frozen=True)
class UnixAddress:
    path: str

    def __post_init__(self) -> None:
        if not self.path:
            raise AddressError("unix address has an empty path")
        if "\0" in self.path:
            raise AddressError("unix socket path contains a NUL byte")
        if len(os.fsencode(self.path)) > MAX_UNIX_PATH_BYTES:
            raise AddressError(
                f"unix socket path is {len(os.fsencode(self.path))} bytes; "
                f"the limit is {MAX_UNIX_PATH_BYTES}"
            )

    @property
    def abstract(self) -> bool:
        """Linux abstract-namespace socket, written `unix://@name`."""
        return self.path.startswith("@")

    def sockaddr(self) -> str | bytes:
        return b"\0" + os.fsencode(self.path[1:]) if self.abstract else self.path

    def __str__(self) -> str:
        return f"unix://{self.path}"


@dataclass(frozen=True)
class VhostVsockAddress:
    """A vsock port of a virtual machine whose vsock device is vhost-device-vsock (a vhost-user
    backend that bridges the guest's vsock to unix sockets on the host), `vhost-vsock:///PATH:PORT`.

    PATH is the backend's `--uds-path`. Connecting reaches the guest's port PORT: connect to PATH,
    send the line `CONNECT PORT`, read one line `OK ...`, then the stream is the guest's (see
    `nitrokms.proto.vhost_vsock`). Listening binds the unix socket `PATH_PORT`, where the backend
    delivers the guest's connections to host port PORT (CID 2 as the guest sees it).
    """

    path: str
    port: int

    def __post_init__(self) -> None:
        _check_range("vsock port", self.port, MAX_VSOCK_PORT)
        if not isinstance(self.path, str) or self.path.startswith("@"):
            raise AddressError(
                "vhost-vsock addresses name a filesystem socket, not an abstract one"
            )
        UnixAddress(self.path)
        UnixAddress(self.listen_path)

    @property
    def listen_path(self) -> str:
        """The unix socket where the backend delivers guest connections to host port `port`."""
        return f"{self.path}_{self.port}"

    def __str__(self) -> str:
        return f"vhost-vsock://{self.path}:{self.port}"


Address = VsockAddress | TcpAddress | UnixAddress | VhostVsockAddress


def parse_address(text: str) -> Address:
    """Parse `vsock://CID:PORT`, `tcp://HOST:PORT`, `unix://PATH` (`unix:///abs/path`) or
    `vhost-vsock://PATH:PORT` (`vhost-vsock:///run/vm.vsock:5000`).

    A vsock CID may be `any` (VMADDR_CID_ANY). IPv6 hosts are written in brackets. Raises
    AddressError naming what is wrong.
    """
    if not isinstance(text, str):
        raise AddressError(f"address must be a string, not {type(text).__name__}")
    if len(text) > MAX_ADDRESS_CHARS:  # before any copy: error messages quote the address
        raise AddressError(
            f"address is {len(text)} characters long; the limit is {MAX_ADDRESS_CHARS}"
        )
    scheme, sep, rest = text.partition("://")
    if not sep:
        raise AddressError(
            f"address {text!r} has no scheme; expected vsock://CID:PORT, tcp://HOST:PORT, "
            "unix:///path or vhost-vsock:///path:PORT"
        )
    scheme = scheme.lower()
    if scheme == "unix":
        return UnixAddress(rest)
    if scheme == "vhost-vsock":
        path, sep, port_text = rest.rpartition(":")
        if not sep or not path:
            raise AddressError(f"address {text!r}: expected vhost-vsock:///PATH:PORT")
        return VhostVsockAddress(path, _parse_int(text, "port", port_text))
    if scheme not in ("vsock", "tcp"):
        raise AddressError(
            f"unknown address scheme {scheme!r} in {text!r}; use vsock, tcp, unix or vhost-vsock"
        )
    host, port_text = _split_host_port(text, rest)
    if scheme == "vsock":
        return VsockAddress(_parse_cid(text, host), _parse_int(text, "port", port_text))
    return TcpAddress(host, _parse_int(text, "port", port_text))


def format_address(address: Address) -> str:
    return str(address)


def _split_host_port(text: str, rest: str) -> tuple[str, str]:
    if rest.startswith("["):
        host, bracket, tail = rest[1:].partition("]")
        if not bracket or not tail.startswith(":"):
            raise AddressError(f"address {text!r}: expected [IPV6]:PORT")
        return host, tail[1:]
    host, sep, port_text = rest.rpartition(":")
    if not sep:
        raise AddressError(f"address {text!r} has no port")
    if not host:
        raise AddressError(f"address {text!r} has no host")
    if ":" in host:
        raise AddressError(f"address {text!r}: write IPv6 hosts in brackets, as [::1]:PORT")
    return host, port_text


def _parse_cid(text: str, value: str) -> int:
    if value.lower() == "any":
        return VMADDR_CID_ANY
    return _parse_int(text, "CID", value)


def _parse_int(text: str, what: str, value: str) -> int:
    if not _DECIMAL.match(value):
        raise AddressError(f"address {text!r}: {what} {value!r} is not a decimal number")
    return int(value)


def _check_range(what: str, value: int, maximum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise AddressError(f"{what} must be an integer, not {type(value).__name__}")
    if not 0 <= value <= maximum:
        raise AddressError(f"{what} {value} is out of range 0..{maximum}")


def _check_host(host: str) -> None:
    if not isinstance(host, str) or not host:
        raise AddressError("TCP address has an empty host")
    with contextlib.suppress(ValueError):
        ipaddress.ip_address(host)
        return
    if not _HOSTNAME.match(host):
        raise AddressError(f"{host!r} is not a valid host name or IP address")
