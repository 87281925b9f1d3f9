"""The coded-error base every family shares, and the one exception family of proto/.

`CodedError` carries a stable `code` from `proto.codes` (the wire's error table) and a one-line
`message`; proto's `ProtocolError`, the enclave's `EnclaveError` and the parent RPC client's
`RPCError` all derive from it. Within proto, h11's split: a LocalProtocolError means *we* were
about to do something invalid (a bug or bad arguments on this side); a RemoteProtocolError means
the *peer* sent something invalid.
"""

from __future__ import annotations

from typing import ClassVar

from nitrokms.proto import codes


class CodedError(Exception):
    """An error with a stable, namespaced `code` (see `proto.codes`) and a one-line message.

    Subclasses set `default_code`; a raise site may pass a more specific `code`.
    """

    default_code: ClassVar[str]

    def __init__(self, message: str, *, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.code = code or self.default_code


class ProtocolError(CodedError):
    """Root of every error raised by proto/."""

    default_code = codes.PROTOCOL_ERROR


class AddressError(ProtocolError, ValueError):
    """A transport address that cannot be parsed or used; the message names the problem."""

    default_code = codes.BAD_ADDRESS


class LocalProtocolError(ProtocolError):
    """This side tried to send or build something the protocol does not allow."""

    default_code = codes.INVALID_MESSAGE


class RemoteProtocolError(ProtocolError):
    """The peer sent bytes or a message the protocol does not allow."""

    default_code = codes.MALFORMED_MESSAGE
