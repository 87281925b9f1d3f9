"""Errors of attestation-document parsing and verification: one class per failed check.

Every error is one line naming the check that failed, carries a stable `code`, and never includes
secrets (documents hold none; the messages name certificates, PCR indices and times).
"""

from __future__ import annotations

from nitrokms.proto import codes
from nitrokms.proto.errors import ProtocolError


class AttestationError(ProtocolError):
    """Root of every attestation failure; `code` says which check failed."""

    default_code = codes.ATTESTATION_ERROR


class MalformedError(AttestationError):
    """The bytes are not a well-formed attestation document (CBOR, COSE or payload rules)."""

    default_code = codes.ATTESTATION_MALFORMED


class BadSignatureError(AttestationError):
    """The COSE signature or a certificate signature in the chain does not verify."""

    default_code = codes.ATTESTATION_BAD_SIGNATURE


class UntrustedRootError(AttestationError):
    """The chain does not end at the pinned root, or the pinned root itself is unusable."""

    default_code = codes.ATTESTATION_UNTRUSTED_ROOT


class ExpiredError(AttestationError):
    """A certificate of the chain had expired at the verification time."""

    default_code = codes.ATTESTATION_EXPIRED


class NotYetValidError(AttestationError):
    """A certificate of the chain was not yet valid at the verification time."""

    default_code = codes.ATTESTATION_NOT_YET_VALID


class BadChainError(AttestationError):
    """The chain breaks a structural rule: names, constraints, key usage, algorithms."""

    default_code = codes.ATTESTATION_BAD_CHAIN


class PCRMismatchError(AttestationError):
    """A PCR differs from the expected value (the message names the PCR)."""

    default_code = codes.ATTESTATION_PCR_MISMATCH


class NonceMismatchError(AttestationError):
    """The document's nonce is not the expected one."""

    default_code = codes.ATTESTATION_NONCE_MISMATCH


class TooOldError(AttestationError):
    """The document's timestamp is older than the allowed maximum age."""

    default_code = codes.ATTESTATION_TOO_OLD


class FromFutureError(AttestationError):
    """The document's timestamp lies after the verification time by more than the allowed skew."""

    default_code = codes.ATTESTATION_FROM_FUTURE


class DebugModeError(AttestationError):
    """The document comes from a debug-mode enclave (PCR0-2 all zero) and debug was not allowed."""

    default_code = codes.ATTESTATION_DEBUG_MODE
