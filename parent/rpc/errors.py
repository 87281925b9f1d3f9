"""The RPC client's one exception family.

Every failure a caller of the enclave client sees is an `RPCError` carrying a namespaced `code`.
Error replies from the enclave become `RemoteError` subclasses chosen by the wire code, so callers
can branch on "denied by policy" versus "no credentials" versus "bad input" without parsing
strings; failures on this side are `RPCTimeoutError`, `RPCConnectionError` and
`InvalidRequestError`. Unknown remote codes still arrive as a plain `RemoteError` with the code.
"""

from __future__ import annotations

from typing import Final

from nitrokms.proto import codes
from nitrokms.proto.codes import Family
from nitrokms.proto.errors import CodedError
from nitrokms.proto.messages import ErrorReply

TIMEOUT: Final = codes.CLIENT_TIMEOUT
CONNECTION_FAILED: Final = codes.CONNECTION_FAILED
CONNECTION_LOST: Final = codes.CONNECTION_LOST
CLIENT_CLOSED: Final = codes.CLIENT_CLOSED


class RPCError(CodedError):
    """Root of every error raised by the enclave RPC client; `code` is stable and namespaced."""

    default_code = codes.CLIENT_ERROR

    def __str__(self) -> str:
        return f"{self.code}: {self.message}"


class InvalidRequestError(RPCError, ValueError):
    """The arguments cannot form a valid request; nothing was sent."""

    default_code = codes.INVALID_FIELD


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

    default_code = codes.MALFORMED_MESSAGE


class RemoteError(RPCError):
    """The enclave answered the request with an error reply."""

    default_code = codes.ENCLAVE_ERROR

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

    default_code = codes.KMS_ERROR


class AccessDeniedError(KMSError):
    """A key policy or IAM denied the call (`kms.AccessDeniedException`)."""

    default_code = codes.KMS_ACCESS_DENIED


class CredentialsError(RemoteError):
    """The enclave has no usable AWS credentials (`enclave.Credentials*`)."""

    default_code = codes.CREDENTIALS_MISSING


class ProtocolViolationError(RemoteError):
    """The enclave rejected the request as malformed or unsupported (`protocol.*`)."""

    default_code = codes.MALFORMED_MESSAGE


class NSMError(RemoteError):
    """The Nitro Secure Module refused the request (`nsm.*`)."""

    default_code = codes.NSM_ERROR


class DecryptionFailedError(RemoteError):
    """The envelope or ciphertext could not be decrypted (`crypto.DecryptionFailed`)."""

    default_code = codes.DECRYPTION_FAILED


_BY_FAMILY: Final[dict[Family, type[RemoteError]]] = {
    Family.PROTOCOL: ProtocolViolationError,
    Family.KMS: KMSError,
    Family.ACCESS_DENIED: AccessDeniedError,
    Family.CREDENTIALS: CredentialsError,
    Family.NSM: NSMError,
    Family.DECRYPTION: DecryptionFailedError,
    Family.OTHER: RemoteError,
}


def remote_error_class(code: str) -> type[RemoteError]:
    """The exception class for a wire error code: one per family in `proto.codes`."""
    return _BY_FAMILY[codes.family(code)]


def error_from_reply(reply: ErrorReply) -> RemoteError:
    cls = remote_error_class(reply.code)
    return cls(reply.message, code=reply.code, operation=reply.operation, request_id=reply.id)
