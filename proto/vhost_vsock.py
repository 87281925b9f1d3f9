"""The host side of vhost-device-vsock's unix-socket convention, as bytes in and bytes out.

A host process reaches port P of the guest by connecting to the backend's `--uds-path` socket,
sending `CONNECT P` and a newline, and reading one line back: `OK <host port>` once the guest
accepted, after which the connection carries the guest's stream. When the guest refuses (nothing
listens on P) the backend closes the connection without a line. The reply line is capped at
MAX_REPLY_BYTES: a real one is at most `OK 4294967295` plus a newline (14 bytes), so anything
longer is not the backend talking. Bytes after the newline already belong to the stream and are
handed back to the caller.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from nitrokms.proto import codes
from nitrokms.proto.errors import RemoteProtocolError

__all__ = [
    "HANDSHAKE_CODE",
    "MAX_REPLY_BYTES",
    "VsockHandshakeError",
    "VsockReply",
    "connect_request",
    "parse_reply",
]

MAX_REPLY_BYTES = 64
HANDSHAKE_CODE = codes.VSOCK_HANDSHAKE
MAX_PORT = 0xFFFFFFFF
_OK = re.compile(rb"\AOK(?: ([0-9]{1,10}))?\n\Z")


class VsockHandshakeError(RemoteProtocolError, ConnectionError):
    """The backend answered the CONNECT line with something other than `OK [port]`; also a
    ConnectionError, so code that handles failed connects handles this one."""

    default_code = HANDSHAKE_CODE


@dataclass(frozen=True)
class VsockReply:
    """A complete `OK` line: the host-side port the backend names (None if it names none) and
    the stream bytes that followed it in the same read."""

    host_port: int | None
    rest: bytes


def connect_request(port: int) -> bytes:
    """The line asking the backend for the guest's `port`. Raises ValueError for a bad port."""
    if isinstance(port, bool) or not isinstance(port, int) or not 0 <= port <= MAX_PORT:
        raise ValueError(f"vsock port {port!r} is out of range 0..{MAX_PORT}")
    return b"CONNECT %d\n" % port


def parse_reply(buffer: bytes) -> VsockReply | None:
    """Parse what the backend sent so far: None while the line is incomplete.

    Raises VsockHandshakeError for a line that is not `OK [port]`, or when MAX_REPLY_BYTES pass
    without a newline.
    """
    end = buffer.find(b"\n", 0, MAX_REPLY_BYTES)
    if end < 0:
        if len(buffer) >= MAX_REPLY_BYTES:
            raise VsockHandshakeError(
                f"vhost-vsock handshake: no reply line within {MAX_REPLY_BYTES} bytes"
            )
        return None
    line = buffer[: end + 1]
    match = _OK.match(line)
    if match is None:
        shown = line[:32].decode("ascii", "replace").rstrip("\n")
        raise VsockHandshakeError(f"vhost-vsock handshake: expected 'OK', got {shown!r}")
    port = int(match.group(1)) if match.group(1) is not None else None
    if port is not None and port > MAX_PORT:
        raise VsockHandshakeError(f"vhost-vsock handshake: port {port} is out of range")
    return VsockReply(port, buffer[end + 1 :])
