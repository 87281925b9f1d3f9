"""The one exception family of proto/.

h11's split: a LocalProtocolError means *we* were about to do something invalid (a bug or bad
arguments on this side); a RemoteProtocolError means the *peer* sent something invalid. Each error
carries a stable `code` that goes on the wire unchanged (see proto/README.md, "Error codes").
"""

from __future__ import annotations


class ProtocolError(Exception):
    """Root of every error raised by proto/."""

    default_code = "protocol.Error"

    def __init__(self, message: str, *, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.code = code or self.default_code


class AddressError(ProtocolError, ValueError):
    """A transport address that cannot be parsed or used; the message names the problem."""

    default_code = "protocol.BadAddress"


class LocalProtocolError(ProtocolError):
    """This side tried to send or build something the protocol does not allow."""

    default_code = "protocol.InvalidMessage"


class RemoteProtocolError(ProtocolError):
    """The peer sent bytes or a message the protocol does not allow."""

    default_code = "protocol.MalformedMessage"
