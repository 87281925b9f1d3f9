"""The attestation-document payload: model and syntactic checks (spec 3.2 and 3.5 step 2).

The checks follow AWS's list with the looser rules real documents need: `public_key`,
`user_data` and `nonce` are null or 0..1024 bytes each. Unknown text keys are ignored (they are
covered by the signature and carry nothing this verifier trusts), so a future NSM field does not
break verification; duplicate keys are refused by the decoder.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from nitrokms.proto.attestation.cose import CoseSign1, decode_cbor, decode_sign1
from nitrokms.proto.attestation.errors import MalformedError

DIGESTS = ("SHA384",)
MAX_PCRS = 32
PCR_LENGTHS = (32, 48, 64)
MAX_CERT_BYTES = 1024
MAX_CABUNDLE = 16
MAX_OPTIONAL_BYTES = 1024
MAX_MODULE_ID_CHARS = 256
MAX_TIMESTAMP_MS = 253_402_300_799_999
"""9999-12-31T23:59:59.999Z, the last millisecond a datetime holds. The NSM's field is a uint64,
but a later value cannot be compared with a verification time, so it is refused as malformed."""
DEBUG_PCRS = (0, 1, 2)


@dataclass(frozen=True)
class AttestationDocument:
    """A syntactically valid attestation document (its signature is checked only by the verifier).

    `payload`, `protected` and `signature` are the bytes as received.
    """

    module_id: str
    digest: str
    timestamp: int
    pcrs: Mapping[int, bytes] = field(repr=False)
    certificate: bytes = field(repr=False)
    cabundle: tuple[bytes, ...] = field(repr=False)
    public_key: bytes | None = field(repr=False)
    user_data: bytes | None = field(repr=False)
    nonce: bytes | None = field(repr=False)
    payload: bytes = field(repr=False)
    protected: bytes = field(repr=False)
    signature: bytes = field(repr=False)

    @property
    def issued_at(self) -> dt.datetime:
        """The timestamp as an aware UTC datetime."""
        return dt.datetime.fromtimestamp(0, dt.UTC) + dt.timedelta(milliseconds=self.timestamp)

    @property
    def debug_mode(self) -> bool:
        """True when PCR0-2 are all zero (or absent): a debug-mode enclave."""
        return all(not any(self.pcrs.get(i, b"")) for i in DEBUG_PCRS)

    def pcr(self, index: int) -> bytes | None:
        return self.pcrs.get(index)

    def pcr_hex(self, index: int) -> str | None:
        value = self.pcrs.get(index)
        return None if value is None else value.hex()

    @property
    def cose(self) -> CoseSign1:
        return CoseSign1(protected=self.protected, payload=self.payload, signature=self.signature)


def parse_document(data: bytes) -> AttestationDocument:
    """Parse and syntactically check a document; no cryptography, no trust decision.

    Raises MalformedError (an AttestationError) on anything that is not a well-formed document.
    """
    cose = decode_sign1(data)
    payload = decode_cbor(cose.payload, "payload")
    if not isinstance(payload, dict):
        raise MalformedError("malformed: payload is not a CBOR map")
    return AttestationDocument(
        module_id=_module_id(payload),
        digest=_digest(payload),
        timestamp=_timestamp(payload),
        pcrs=_pcrs(payload),
        certificate=_cert_bytes(_field(payload, "certificate"), "certificate"),
        cabundle=_cabundle(payload),
        public_key=_optional_bytes(payload, "public_key"),
        user_data=_optional_bytes(payload, "user_data"),
        nonce=_optional_bytes(payload, "nonce"),
        payload=cose.payload,
        protected=cose.protected,
        signature=cose.signature,
    )


def _field(payload: dict[Any, Any], key: str) -> Any:
    if key not in payload:
        raise MalformedError(f"malformed: payload lacks {key}")
    return payload[key]


def _module_id(payload: dict[Any, Any]) -> str:
    value = _field(payload, "module_id")
    if not isinstance(value, str) or not value or len(value) > MAX_MODULE_ID_CHARS:
        raise MalformedError(
            f"malformed: module_id must be non-empty text of at most {MAX_MODULE_ID_CHARS} chars"
        )
    return value


def _digest(payload: dict[Any, Any]) -> str:
    value = _field(payload, "digest")
    if value not in DIGESTS or not isinstance(value, str):
        raise MalformedError(f"malformed: digest must be one of {', '.join(DIGESTS)}")
    return value


def _timestamp(payload: dict[Any, Any]) -> int:
    value = _field(payload, "timestamp")
    if type(value) is not int or value <= 0:
        raise MalformedError("malformed: timestamp must be an unsigned integer > 0 (ms)")
    if value > MAX_TIMESTAMP_MS:
        raise MalformedError(
            f"malformed: timestamp {value} ms is after 9999-12-31T23:59:59.999Z (out of range)"
        )
    return value


def _pcrs(payload: dict[Any, Any]) -> Mapping[int, bytes]:
    value = _field(payload, "pcrs")
    if not isinstance(value, dict) or not 1 <= len(value) <= MAX_PCRS:
        raise MalformedError(f"malformed: pcrs must be a map of 1..{MAX_PCRS} entries")
    pcrs: dict[int, bytes] = {}
    for index, pcr in value.items():
        if type(index) is not int or not 0 <= index < MAX_PCRS:
            raise MalformedError(f"malformed: pcrs keys must be integers in [0, {MAX_PCRS})")
        if not isinstance(pcr, bytes) or len(pcr) not in PCR_LENGTHS:
            raise MalformedError(f"malformed: pcrs[{index}] must be 32, 48 or 64 bytes")
        pcrs[index] = pcr
    return MappingProxyType(dict(sorted(pcrs.items())))


def _cert_bytes(value: Any, what: str) -> bytes:
    if not isinstance(value, bytes) or not 1 <= len(value) <= MAX_CERT_BYTES:
        raise MalformedError(f"malformed: {what} must be 1..{MAX_CERT_BYTES} bytes")
    return value


def _cabundle(payload: dict[Any, Any]) -> tuple[bytes, ...]:
    value = _field(payload, "cabundle")
    if not isinstance(value, list) or not 1 <= len(value) <= MAX_CABUNDLE:
        raise MalformedError(f"malformed: cabundle must be an array of 1..{MAX_CABUNDLE} certs")
    return tuple(_cert_bytes(cert, f"cabundle[{i}]") for i, cert in enumerate(value))


def _optional_bytes(payload: dict[Any, Any], key: str) -> bytes | None:
    value = payload.get(key)
    if value is None:
        return None
    if not isinstance(value, bytes) or len(value) > MAX_OPTIONAL_BYTES:
        raise MalformedError(f"malformed: {key} must be null or 0..{MAX_OPTIONAL_BYTES} bytes")
    return value
