"""Errors of attestation-document parsing and verification: one class per failed check.

Every error is one line naming the check that failed, carries a stable `code`, and never includes
secrets (documents hold none; the messages name certificates, PCR indices and times).
"""

from __future__ import annotations

from nitrokms.proto.errors import ProtocolError


class AttestationError(ProtocolError):
    """Root of every attestation failure; `code` says which check failed."""

    default_code = "attestation.Error"


class MalformedError(AttestationError):
    """The bytes are not a well-formed attestation document (CBOR, COSE or payload rules)."""

    default_code = "attestation.Malformed"


class BadSignatureError(AttestationError):
    """The COSE signature or a certificate signature in the chain does not verify."""

    default_code = "attestation.BadSignature"


class UntrustedRootError(AttestationError):
    """The chain does not end at the pinned root, or the pinned root itself is unusable."""

    default_code = "attestation.UntrustedRoot"


class ExpiredError(AttestationError):
    """A certificate of the chain had expired at the verification time."""

    default_code = "attestation.Expired"


class NotYetValidError(AttestationError):
    """A certificate of the chain was not yet valid at the verification time."""

    default_code = "attestation.NotYetValid"


class BadChainError(AttestationError):
    """The chain breaks a structural rule: names, constraints, key usage, algorithms."""

    default_code = "attestation.BadChain"


class PCRMismatchError(AttestationError):
    """A PCR differs from the expected value (the message names the PCR)."""

    default_code = "attestation.PCRMismatch"


class NonceMismatchError(AttestationError):
    """The document's nonce is not the expected one."""

    default_code = "attestation.NonceMismatch"


class TooOldError(AttestationError):
    """The document's timestamp is older than the allowed maximum age."""

    default_code = "attestation.TooOld"


class FromFutureError(AttestationError):
    """The document's timestamp lies after the verification time by more than the allowed skew."""

    default_code = "attestation.FromFuture"


class DebugModeError(AttestationError):
    """The document comes from a debug-mode enclave (PCR0-2 all zero) and debug was not allowed."""

    default_code = "attestation.DebugMode"
