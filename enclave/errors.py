"""Every exception the enclave raises, in one place.

All derive from EnclaveError (a `proto.errors.CodedError`), whose `code` goes on the wire
unchanged in RPC error replies; the codes are the table in `proto.codes`. They are namespaced by
where the failure came from, so a caller can tell "denied by policy" (`kms.AccessDeniedException`)
from "KMS unreachable" (`kms.Unreachable`) from "bad input" (`protocol.*`) from an NSM refusal
(`nsm.InvalidIndex`). Foreign exceptions (botocore, socket, cffi) are translated into these at the
edge, once: botocore in `enclave.kms`, the NSM device and libnsm in `enclave.nsm._binding`.
"""

from __future__ import annotations

from enum import IntEnum

from nitrokms.proto import codes
from nitrokms.proto.errors import CodedError


class EnclaveError(CodedError):
    """Root of every error raised by enclave/."""

    default_code = codes.ENCLAVE_ERROR


class DecryptionError(EnclaveError):
    """Any failure to decrypt (wrong key, bad padding, tampered data), deliberately opaque."""

    default_code = codes.DECRYPTION_FAILED

    def __init__(self, message: str = "decryption failed", *, code: str | None = None) -> None:
        super().__init__(message, code=code)


# --- the service and its state -------------------------------------------------------------------


class CredentialsError(EnclaveError):
    """No usable AWS credentials: `enclave.CredentialsMissing`, `enclave.CredentialsExpired`, or
    `enclave.CredentialsInvalid` for malformed ones given to `set_credentials`."""

    default_code = codes.CREDENTIALS_MISSING


class RegionMismatchError(EnclaveError):
    """SetCredentials named a region other than the one this enclave talks to."""

    default_code = codes.REGION_MISMATCH


class UnknownHandleError(EnclaveError):
    """No key is held under this handle: never issued, forgotten, evicted or expired."""

    default_code = codes.UNKNOWN_HANDLE


class ContextMismatchError(EnclaveError):
    """Seal with a handle asked for a context other than the one the key is bound to."""

    default_code = codes.CONTEXT_MISMATCH


class MalformedEnvelopeError(EnclaveError):
    """The bytes are not a well-formed envelope of a format this service reads."""

    default_code = codes.MALFORMED_ENVELOPE


class EnvelopeTooLargeError(EnclaveError):
    """The envelope (plaintext plus a very large KeyId or context) would exceed the wire limit."""

    default_code = codes.ENVELOPE_TOO_LARGE


class UnsupportedDataKeyError(EnclaveError):
    """Seal needs a 256-bit data key; the handle holds a key of another size."""

    default_code = codes.UNSUPPORTED_DATA_KEY


class DeadlineExceededError(EnclaveError):
    """The request's deadline passed before this step started (`enclave.deadlines`)."""

    default_code = codes.TIMEOUT


class LaneClosedError(EnclaveError):
    """The worker lanes are closed: the service is stopping."""

    default_code = codes.SHUTTING_DOWN


class KeyPoolError(EnclaveError):
    """The pool cannot hand out a key: it is closed, timed out, or key generation failed."""

    default_code = codes.KEY_POOL_UNAVAILABLE


class NetworkError(EnclaveError):
    """In-enclave network setup failed (loopback, listener)."""

    default_code = codes.NETWORK_SETUP_FAILED


# --- KMS ---------------------------------------------------------------------------------------


class KMSError(EnclaveError):
    """KMS refused the call; `code` is `kms.<__type>`, the message is KMS's."""

    default_code = codes.KMS_ERROR

    def __init__(self, message: str, *, code: str | None = None, status: int | None = None) -> None:
        super().__init__(message, code=code)
        self.status = status


class KMSRequestError(KMSError):
    """The request was invalid before it was sent (what KMS would call a ValidationException)."""

    default_code = codes.KMS_VALIDATION


class KMSUnavailableError(KMSError):
    """KMS could not be reached: connection refused or reset, timeout, relay closed."""

    default_code = codes.KMS_UNREACHABLE


class KMSTLSError(KMSUnavailableError):
    """The peer's certificate or hostname did not verify: possibly a man in the middle."""

    default_code = codes.KMS_TLS_FAILED


class RecipientReplyError(EnclaveError):
    """KMS answered an attested call without `CiphertextForRecipient`."""

    default_code = codes.KMS_MISSING_RECIPIENT_REPLY


# --- CMS (CiphertextForRecipient); decryption failures are DecryptionError ------------------------


class CMSError(EnclaveError):
    """Root of the CMS reader's own errors."""

    default_code = codes.CMS_ERROR


class CMSFormatError(CMSError):
    """The blob is not a well-formed CMS EnvelopedData (the message names what is wrong)."""

    default_code = codes.CMS_MALFORMED


class UnsupportedCMSError(CMSFormatError):
    """Well-formed, but uses something the reader refuses (an algorithm, an IV size...)."""

    default_code = codes.CMS_UNSUPPORTED


class UnknownRecipientError(CMSError):
    """No recipient of the blob is a key we hold."""

    default_code = codes.CMS_UNKNOWN_RECIPIENT


# --- the Nitro Secure Module ---------------------------------------------------------------------


class NSMErrorCode(IntEnum):
    """Mirror of nsm-api's `ErrorCode` (same names, same C values)."""

    Success = 0
    InvalidArgument = 1
    InvalidIndex = 2
    InvalidResponse = 3
    ReadOnlyIndex = 4
    InvalidOperation = 5
    BufferTooSmall = 6
    InputTooLarge = 7
    InternalError = 8


class NSMError(EnclaveError):
    """The NSM (or the path to it) refused or failed a request; `code` is `nsm.<ErrorCode name>`."""

    def __init__(self, nsm_code: NSMErrorCode, message: str | None = None) -> None:
        super().__init__(message or f"NSM error {nsm_code.name}", code=f"nsm.{nsm_code.name}")
        self.nsm_code = nsm_code


class NSMUnavailableError(EnclaveError):
    """The NSM device (or libnsm) cannot be opened: not in an enclave, or no driver loaded."""

    default_code = codes.NSM_UNAVAILABLE
