"""One exception class per KMS `__type`, as moto does; the server turns them into error replies.

Each class carries the AWS error type, the HTTP status and a one-line message that is safe to send
(never a secret). Anything else escaping a handler becomes `KMSInternalException` (HTTP 500).
"""

from __future__ import annotations


class KMSServiceError(Exception):
    """Root of the local KMS's errors; `aws_type` goes on the wire as `__type`."""

    aws_type = "KMSInternalException"
    status = 400

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def to_json(self) -> dict[str, str]:
        return {"__type": self.aws_type, "message": self.message}


class ValidationException(KMSServiceError):
    aws_type = "ValidationException"


class NotFoundException(KMSServiceError):
    aws_type = "NotFoundException"


class DisabledException(KMSServiceError):
    aws_type = "DisabledException"


class KMSInvalidStateException(KMSServiceError):
    aws_type = "KMSInvalidStateException"


class InvalidKeyUsageException(KMSServiceError):
    aws_type = "InvalidKeyUsageException"


class InvalidCiphertextException(KMSServiceError):
    aws_type = "InvalidCiphertextException"


class IncorrectKeyException(KMSServiceError):
    aws_type = "IncorrectKeyException"


class DryRunOperationException(KMSServiceError):
    aws_type = "DryRunOperationException"

    def __init__(
        self, message: str = "The request would have succeeded, but the DryRun option is set."
    ) -> None:
        super().__init__(message)


class InvalidGrantTokenException(KMSServiceError):
    aws_type = "InvalidGrantTokenException"


class AccessDeniedException(KMSServiceError):
    aws_type = "AccessDeniedException"


class AlreadyExistsException(KMSServiceError):
    aws_type = "AlreadyExistsException"


class InvalidAliasNameException(KMSServiceError):
    aws_type = "InvalidAliasNameException"


class InvalidMarkerException(KMSServiceError):
    aws_type = "InvalidMarkerException"


class MalformedPolicyDocumentException(KMSServiceError):
    aws_type = "MalformedPolicyDocumentException"


class UnsupportedOperationException(KMSServiceError):
    aws_type = "UnsupportedOperationException"


class UnknownOperationException(KMSServiceError):
    aws_type = "UnknownOperationException"


class SerializationException(KMSServiceError):
    aws_type = "SerializationException"


class UnrecognizedClientException(KMSServiceError):
    aws_type = "UnrecognizedClientException"

    def __init__(
        self, message: str = "The security token included in the request is invalid."
    ) -> None:
        super().__init__(message)


class InvalidSignatureException(KMSServiceError):
    aws_type = "InvalidSignatureException"


class IncompleteSignatureException(KMSServiceError):
    aws_type = "IncompleteSignatureException"


class MissingAuthenticationTokenException(KMSServiceError):
    aws_type = "MissingAuthenticationTokenException"

    def __init__(self, message: str = "Missing Authentication Token") -> None:
        super().__init__(message)


class KMSInvalidSignatureException(KMSServiceError):
    aws_type = "KMSInvalidSignatureException"

    def __init__(self, message: str = "The signature is not valid for this message.") -> None:
        super().__init__(message)


class KMSInvalidMacException(KMSServiceError):
    aws_type = "KMSInvalidMacException"

    def __init__(self, message: str = "The MAC is not valid for this message.") -> None:
        super().__init__(message)


class TagException(KMSServiceError):
    aws_type = "TagException"


class LimitExceededException(KMSServiceError):
    aws_type = "LimitExceededException"


class InvalidGrantIdException(KMSServiceError):
    aws_type = "InvalidGrantIdException"


class InvalidArnException(KMSServiceError):
    aws_type = "InvalidArnException"


class RequestEntityTooLargeException(KMSServiceError):
    aws_type = "RequestEntityTooLargeException"
    status = 413


class KMSInternalException(KMSServiceError):
    aws_type = "KMSInternalException"
    status = 500

    def __init__(self, message: str = "An internal error occurred.") -> None:
        super().__init__(message)
