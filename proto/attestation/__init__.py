"""Nitro Enclaves attestation documents: parsing, chain and signature verification, policy.

    doc = parse_document(data)                       # syntax only, no cryptography
    verifier = AttestationVerifier()                 # pinned AWS Nitro Enclaves Root-G1
    doc = verifier.verify(data, at=None, expect=Expectations(pcrs={0: pcr0}, nonce=nonce))

Every failure is an AttestationError (a proto ProtocolError) whose `code` names the check.
"""

from __future__ import annotations

from nitrokms.proto.attestation.cose import MAX_DOCUMENT_BYTES
from nitrokms.proto.attestation.document import AttestationDocument, parse_document
from nitrokms.proto.attestation.errors import (
    AttestationError,
    BadChainError,
    BadSignatureError,
    DebugModeError,
    ExpiredError,
    FromFutureError,
    MalformedError,
    NonceMismatchError,
    NotYetValidError,
    PCRMismatchError,
    TooOldError,
    UntrustedRootError,
)
from nitrokms.proto.attestation.roots import aws_nitro_root, load_root
from nitrokms.proto.attestation.verify import MAX_CLOCK_SKEW, AttestationVerifier, Expectations

__all__ = [
    "MAX_CLOCK_SKEW",
    "MAX_DOCUMENT_BYTES",
    "AttestationDocument",
    "AttestationError",
    "AttestationVerifier",
    "BadChainError",
    "BadSignatureError",
    "DebugModeError",
    "Expectations",
    "ExpiredError",
    "FromFutureError",
    "MalformedError",
    "NonceMismatchError",
    "NotYetValidError",
    "PCRMismatchError",
    "TooOldError",
    "UntrustedRootError",
    "aws_nitro_root",
    "load_root",
    "parse_document",
]
