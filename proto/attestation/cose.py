"""COSE_Sign1 (RFC 9052) as the NSM uses it: ES384 only, external_aad empty, no detached payload.

Decoding goes through the shared loader (`proto.cbor`): size, item-count and depth limits, duplicate
keys refused, no tag but COSE_Sign1's own 18. The payload and protected header are kept exactly as
received; the signature is checked over the Sig_structure built from those bytes, never from a
re-encoding.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import cbor2
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature
from nitrokms.proto.attestation.errors import BadSignatureError, MalformedError
from nitrokms.proto.cbor import CBORDecodeError, CBORLimits, loads

MAX_DOCUMENT_BYTES = 16 * 1024
"""A real document is ~4.5 KB and the NSM caps its response at 12288 bytes; 16 KiB leaves room
for a tag and foreign encoders while bounding the work spent on junk."""
MAX_CBOR_DEPTH = 8
MAX_CBOR_ITEMS = 512
"""A document with 32 PCRs and a 16-certificate bundle has about 110 items; a real one about 60."""
COSE_SIGN1_TAG = 18
ALG_ES384 = -35
HEADER_ALG = 1
ES384_SIGNATURE_BYTES = 96
ES384_COORDINATE_BYTES = 48
CBOR_LIMITS = CBORLimits(
    MAX_DOCUMENT_BYTES, MAX_CBOR_ITEMS, MAX_CBOR_DEPTH, tags=frozenset({COSE_SIGN1_TAG})
)


def decode_cbor(data: bytes, what: str) -> Any:
    """Decode exactly one CBOR item within CBOR_LIMITS; trailing bytes are refused.

    Raises MalformedError naming `what` on any decoding failure.
    """
    try:
        return loads(data, CBOR_LIMITS)
    except CBORDecodeError as exc:
        raise MalformedError(f"malformed: {what} is not valid CBOR ({exc.message})") from None


@dataclass(frozen=True)
class CoseSign1:
    """A decoded COSE_Sign1 whose protected header has been checked to be `{1: -35}`."""

    protected: bytes = field(repr=False)
    payload: bytes = field(repr=False)
    signature: bytes = field(repr=False)

    def to_be_signed(self) -> bytes:
        """The Sig_structure `["Signature1", protected, h'', payload]`, CBOR-encoded."""
        return sig_structure(self.protected, self.payload)

    def verify(self, public_key: ec.EllipticCurvePublicKey) -> None:
        """Check the ES384 signature with `public_key`; raises BadSignatureError if it fails."""
        verify_es384(public_key, self.to_be_signed(), self.signature)


def sig_structure(protected: bytes, payload: bytes) -> bytes:
    return cbor2.dumps(["Signature1", protected, b"", payload])


def verify_es384(public_key: ec.EllipticCurvePublicKey, message: bytes, signature: bytes) -> None:
    """Verify a raw r||s ES384 signature over `message`; raises BadSignatureError."""
    if len(signature) != ES384_SIGNATURE_BYTES or public_key.curve.name != "secp384r1":
        raise BadSignatureError("bad signature: COSE signature is not an ES384 (P-384) signature")
    r = int.from_bytes(signature[:ES384_COORDINATE_BYTES], "big")
    s = int.from_bytes(signature[ES384_COORDINATE_BYTES:], "big")
    try:
        public_key.verify(encode_dss_signature(r, s), message, ec.ECDSA(hashes.SHA384()))
    except InvalidSignature:
        raise BadSignatureError(
            "bad signature: COSE signature does not verify with the leaf certificate key"
        ) from None


def decode_sign1(data: bytes) -> CoseSign1:
    """Decode a COSE_Sign1, untagged or with tag 18.

    Raises MalformedError when `data` is larger than MAX_DOCUMENT_BYTES, is not CBOR, is not a
    4-element COSE_Sign1, or its protected header is not exactly `{1: -35}` (ES384).
    """
    if len(data) > MAX_DOCUMENT_BYTES:
        raise MalformedError(
            f"malformed: document is {len(data)} bytes, larger than {MAX_DOCUMENT_BYTES}"
        )
    item = decode_cbor(bytes(data), "document")
    if isinstance(item, cbor2.CBORTag):
        if item.tag != COSE_SIGN1_TAG:
            raise MalformedError(
                f"malformed: document has CBOR tag {item.tag}, not 18 (COSE_Sign1)"
            )
        item = item.value
    if not isinstance(item, list | tuple) or len(item) != 4:
        raise MalformedError("malformed: document is not a 4-element COSE_Sign1 array")
    protected, unprotected, payload, signature = item
    if not isinstance(protected, bytes) or not isinstance(unprotected, Mapping):
        raise MalformedError("malformed: COSE headers are not (bstr, map)")
    if not isinstance(payload, bytes) or not isinstance(signature, bytes):
        raise MalformedError("malformed: COSE payload or signature is not a byte string")
    _check_protected(protected)
    return CoseSign1(protected=protected, payload=payload, signature=signature)


def _check_protected(protected: bytes) -> None:
    header = decode_cbor(protected, "protected header")
    entries = list(header.items()) if isinstance(header, Mapping) else []
    if [(type(k), k, type(v), v) for k, v in entries] != [(int, HEADER_ALG, int, ALG_ES384)]:
        raise MalformedError("malformed: protected header is not {1: -35} (ES384)")
