"""The `Recipient` parameter: parse it, verify its attestation document, expose condition keys.

A malformed Recipient (missing fields, another algorithm, a document that does not parse, no public
key, a public key that is not RSA 2048..4096) is a ValidationException. A document that parses but
does not verify (signature, chain to the configured root, validity, maximum age) is NOT an error
here: it yields no `kms:RecipientAttestation:*` condition keys, so a policy that requires them
denies, and the reason travels with the request for the denial log. Real KMS's exact behaviour for
such documents is unconfirmed (spec 7.1); this choice keeps "policy decides" as the single rule.
Debug-mode documents verify (allow_debug): the policy decides through the zero PCR values.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.serialization import load_der_public_key
from nitrokms.proto.attestation import AttestationVerifier, Expectations, parse_document
from nitrokms.proto.attestation.errors import AttestationError
from nitrokms.sim.kms.exceptions import ValidationException

ALGORITHM = "RSAES_OAEP_SHA_256"
MAX_DOCUMENT_BYTES = 262144
MIN_RSA_BITS, MAX_RSA_BITS = 2048, 4096
CONDITION_PREFIX = "kms:recipientattestation:"


@dataclass(frozen=True)
class Recipient:
    public_key_der: bytes = field(repr=False)
    module_id: str
    verified: bool
    failure: str | None
    pcrs: Mapping[int, bytes] = field(repr=False)

    def condition_keys(self) -> dict[str, str]:
        """Lower-cased `kms:RecipientAttestation:*` keys; empty unless the document verified."""
        if not self.verified:
            return {}
        keys = {f"{CONDITION_PREFIX}pcr{i}": v.hex() for i, v in self.pcrs.items()}
        if 0 in self.pcrs:
            keys[f"{CONDITION_PREFIX}imagesha384"] = self.pcrs[0].hex()
        return keys

    def absent_reason(self) -> dict[str, str]:
        if self.verified:
            return {}
        return {CONDITION_PREFIX: f"the attestation document did not verify ({self.failure})"}


class RecipientReader:
    def __init__(
        self,
        root: bytes | None,
        *,
        max_age: timedelta | None = None,
        clock: Callable[[], datetime] | None = None,
    ) -> None:
        self._verifier = AttestationVerifier(root)
        self._max_age = max_age
        self._clock = clock

    def read(self, raw: Any) -> Recipient:
        """Parse a Recipient JSON object. Raises ValidationException when it is malformed."""
        if not isinstance(raw, dict):
            raise ValidationException("Recipient must be an object")
        if raw.get("KeyEncryptionAlgorithm") != ALGORITHM:
            raise ValidationException(
                f"Recipient.KeyEncryptionAlgorithm must be {ALGORITHM}, "
                f"not {str(raw.get('KeyEncryptionAlgorithm'))[:64]!r}"
            )
        document = _document_bytes(raw.get("AttestationDocument"))
        try:
            parsed = parse_document(document)
        except AttestationError as exc:
            raise ValidationException(
                f"Recipient.AttestationDocument is malformed: {exc}"
            ) from None
        public_key = parsed.public_key
        if not public_key:
            raise ValidationException("The attestation document carries no public key")
        _check_rsa(public_key)
        return self._verified(document, parsed.module_id, public_key, parsed.pcrs)

    def _verified(
        self, document: bytes, module_id: str, public_key: bytes, pcrs: Mapping[int, bytes]
    ) -> Recipient:
        expect = Expectations(max_age=self._max_age, allow_debug=True)
        at = self._clock() if self._clock is not None else None
        try:
            verified = self._verifier.verify(document, at=at, expect=expect)
        except AttestationError as exc:
            return Recipient(public_key, module_id, False, f"{exc.code}: {exc}", dict(pcrs))
        return Recipient(public_key, module_id, True, None, dict(verified.pcrs))


def _document_bytes(value: Any) -> bytes:
    if not isinstance(value, str) or not value:
        raise ValidationException("Recipient.AttestationDocument is required")
    if len(value) > (MAX_DOCUMENT_BYTES + 2) // 3 * 4:
        raise ValidationException(
            f"Recipient.AttestationDocument exceeds {MAX_DOCUMENT_BYTES} bytes"
        )
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise ValidationException("Recipient.AttestationDocument is not valid base64") from None


def _check_rsa(public_key_der: bytes) -> None:
    try:
        key = load_der_public_key(public_key_der)
    except (ValueError, TypeError, UnsupportedAlgorithm):
        raise ValidationException(
            "The attestation document's public key is not a DER SubjectPublicKeyInfo"
        ) from None
    if not isinstance(key, rsa.RSAPublicKey) or not (MIN_RSA_BITS <= key.key_size <= MAX_RSA_BITS):
        raise ValidationException(
            f"The attestation document's public key must be RSA {MIN_RSA_BITS}..{MAX_RSA_BITS} bits"
        )
