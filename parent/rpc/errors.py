"""The RPC client's one exception family.

Every failure a caller of the enclave client sees is an `RPCError` carrying a namespaced `code`.
Error replies from the enclave become `RemoteError` subclasses chosen by the wire code, so callers
can branch on "denied by policy" versus "no credentials" versus "bad input" without parsing
strings; failures on this side are `RPCTimeoutError`, `RPCConnectionError` and
`InvalidRequestError`. Unknown remote codes still arrive as a plain `RemoteError` with the code.
"""

from __future__ import annotations

from typing import Final

from nitrokms.proto.messages import ErrorReply

TIMEOUT: Final = "client.Timeout"
CONNECTION_FAILED: Final = "client.ConnectionFailed"
CONNECTION_LOST: Final = "client.ConnectionLost"
CLIENT_CLOSED: Final = "client.Closed"


class RPCError(Exception):
    """Root of every error raised by the enclave RPC client; `code` is stable and namespaced."""

    default_code = "client.Error"

    def __init__(self, message: str, *, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.code = code or self.default_code

    def __str__(self) -> str:
        return f"{self.code}: {self.message}"


class InvalidRequestError(RPCError, ValueError):
    """The arguments cannot form a valid request; nothing was sent."""

    default_code = "protocol.InvalidField"


class RPCTimeoutError(RPCError, TimeoutError):
    """No reply within the request's timeout. The request was cancelled; the connection lives."""

    default_code = TIMEOUT


class RPCConnectionError(RPCError, ConnectionError):
    """The enclave could not be reached, or the connection dropped with the request in flight."""

    default_code = CONNECTION_LOST


class BrokenStreamError(RPCConnectionError):
    """The enclave sent bytes the protocol does not allow; the connection was closed.

    `code` is the proto error's code (e.g. `protocol.MalformedFrame`).
    """

    default_code = "protocol.MalformedMessage"


class RemoteError(RPCError):
    """The enclave answered the request with an error reply."""

    default_code = "enclave.Error"

    def __init__(
        self,
        message: str,
        *,
        code: str | None = None,
        operation: str | None = None,
        request_id: int | None = None,
    ) -> None:
        super().__init__(message, code=code)
        self.operation = operation
        self.request_id = request_id

    @property
    def namespace(self) -> str:
        return self.code.partition(".")[0]


class KMSError(RemoteError):
    """KMS refused or failed the call the enclave made (`kms.*`)."""

    default_code = "kms.Error"


class AccessDeniedError(KMSError):
    """A key policy or IAM denied the call (`kms.AccessDeniedException`)."""

    default_code = "kms.AccessDeniedException"


class CredentialsError(RemoteError):
    """The enclave has no usable AWS credentials (`enclave.Credentials*`)."""

    default_code = "enclave.CredentialsMissing"


class ProtocolViolationError(RemoteError):
    """The enclave rejected the request as malformed or unsupported (`protocol.*`)."""

    default_code = "protocol.MalformedMessage"


class NSMError(RemoteError):
    """The Nitro Secure Module refused the request (`nsm.*`)."""

    default_code = "nsm.Error"


class DecryptionFailedError(RemoteError):
    """The envelope or ciphertext could not be decrypted (`crypto.DecryptionFailed`)."""

    default_code = "crypto.DecryptionFailed"


_BY_CODE: Final[dict[str, type[RemoteError]]] = {
    "kms.AccessDeniedException": AccessDeniedError,
    "crypto.DecryptionFailed": DecryptionFailedError,
}
_BY_NAMESPACE: Final[dict[str, type[RemoteError]]] = {
    "kms": KMSError,
    "protocol": ProtocolViolationError,
    "nsm": NSMError,
}


def remote_error_class(code: str) -> type[RemoteError]:
    """The exception class for a wire error code: exact code, then namespace, then RemoteError."""
    if code in _BY_CODE:
        return _BY_CODE[code]
    namespace, _, name = code.partition(".")
    if namespace == "enclave" and name.startswith("Credentials"):
        return CredentialsError
    return _BY_NAMESPACE.get(namespace, RemoteError)


def error_from_reply(reply: ErrorReply) -> RemoteError:
    cls = remote_error_class(reply.code)
    return cls(reply.message, code=reply.code, operation=reply.operation, request_id=reply.id)
