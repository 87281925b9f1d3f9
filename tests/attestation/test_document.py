"""Syntactic rules of the payload (spec 3.5 step 2, with the looser rules real documents need)."""

from __future__ import annotations

from typing import Any

import cbor2
import pytest
from nitrokms.proto.attestation import AttestationVerifier, MalformedError, parse_document
from nitrokms.sim.nsm.pki import PAYLOAD_KEYS, SimulatedPKI

from tests.attestation.conftest import MODULE_ID, NOW, NOW_MS, boot_pcrs


def _fields(pki: SimulatedPKI) -> dict[str, Any]:
    chain = pki.chain(MODULE_ID, NOW_MS)
    return {
        "module_id": MODULE_ID,
        "digest": "SHA384",
        "timestamp": NOW_MS,
        "pcrs": boot_pcrs(),
        "certificate": chain.leaf.der,
        "cabundle": list(chain.cabundle),
        "public_key": None,
        "user_data": None,
        "nonce": None,
    }


def _signed(pki: SimulatedPKI, **changes: Any) -> bytes:
    fields = _fields(pki)
    for key, value in changes.items():
        if value is _DROP:
            del fields[key]
        else:
            fields[key] = value
    return pki.sign_payload(cbor2.dumps(fields), module_id=MODULE_ID, timestamp_ms=NOW_MS)


_DROP = object()

BAD_FIELDS = [
    ("module_id", ""),
    ("module_id", 7),
    ("module_id", "x" * 257),
    ("digest", "SHA256"),
    ("digest", b"SHA384"),
    ("timestamp", 0),
    ("timestamp", -5),
    ("timestamp", 1.5e12),
    ("timestamp", True),
    ("timestamp", 2**63),
    ("timestamp", 2**64 - 1),
    ("pcrs", {}),
    ("pcrs", [bytes(48)]),
    ("pcrs", {i: bytes(48) for i in range(33)}),
    ("pcrs", {32: bytes(48)}),
    ("pcrs", {-1: bytes(48)}),
    ("pcrs", {"0": bytes(48)}),
    ("pcrs", {0: bytes(47)}),
    ("pcrs", {0: "00" * 48}),
    ("certificate", b""),
    ("certificate", b"\x30" * 1025),
    ("cabundle", []),
    ("cabundle", b"\x30"),
    ("cabundle", [b""]),
    ("public_key", "key"),
    ("user_data", bytes(1025)),
    ("nonce", 5),
]


@pytest.mark.parametrize(("key", "value"), BAD_FIELDS)
def test_field_rules_raise_malformed_naming_the_field(
    pki: SimulatedPKI, key: str, value: Any
) -> None:
    with pytest.raises(MalformedError, match=key) as err:
        parse_document(_signed(pki, **{key: value}))
    assert err.value.code == "attestation.Malformed"


@pytest.mark.parametrize("timestamp", [2**63, 253_402_300_800_000])
def test_the_verifier_refuses_timestamps_no_datetime_holds(
    pki: SimulatedPKI, timestamp: int
) -> None:
    """Issue 15: 2**63 ms used to escape as an OverflowError from `issued_at`."""
    verifier = AttestationVerifier(pki.root_certificate)
    with pytest.raises(MalformedError, match="out of range") as err:
        verifier.verify(_signed(pki, timestamp=timestamp), at=NOW)
    assert err.value.code == "attestation.Malformed"
    last_ok = parse_document(_signed(pki, timestamp=253_402_300_799_999))
    assert last_ok.issued_at.year == 9999


@pytest.mark.parametrize("key", PAYLOAD_KEYS[:6])
def test_mandatory_fields(pki: SimulatedPKI, key: str) -> None:
    with pytest.raises(MalformedError, match=f"lacks {key}"):
        parse_document(_signed(pki, **{key: _DROP}))


@pytest.mark.parametrize("key", PAYLOAD_KEYS[6:])
def test_optional_fields_may_be_absent_null_empty_or_1024_bytes(
    pki: SimulatedPKI, key: str
) -> None:
    verifier = AttestationVerifier(pki.root_certificate)
    assert getattr(verifier.verify(_signed(pki, **{key: _DROP}), at=NOW), key) is None
    assert getattr(verifier.verify(_signed(pki, **{key: b""}), at=NOW), key) == b""
    assert len(getattr(verifier.verify(_signed(pki, **{key: bytes(1024)}), at=NOW), key)) == 1024


def test_unknown_keys_are_ignored_and_32_byte_pcrs_accepted(pki: SimulatedPKI) -> None:
    data = _signed(pki, future_field=[1, 2], pcrs={0: bytes([1]) * 32, 31: bytes(64)})
    doc = AttestationVerifier(pki.root_certificate).verify(data, at=NOW)
    assert sorted(doc.pcrs) == [0, 31]


def test_payload_must_be_a_map(pki: SimulatedPKI) -> None:
    with pytest.raises(MalformedError, match="not a CBOR map"):
        parse_document(pki.sign_payload(cbor2.dumps([1, 2])))


def test_duplicate_payload_keys_are_refused(pki: SimulatedPKI) -> None:
    body = cbor2.dumps(_fields(pki))
    duplicated = b"\xaa" + body[1:] + cbor2.dumps("nonce") + b"\xf6"
    with pytest.raises(MalformedError, match=r"(?i)duplicate"):
        parse_document(pki.sign_payload(duplicated))


def test_semantic_tags_in_the_payload_are_refused(pki: SimulatedPKI) -> None:
    tagged_time = cbor2.dumps(_fields(pki) | {"timestamp": cbor2.CBORTag(2, bytes(9))})
    with pytest.raises(MalformedError, match="tag"):
        parse_document(pki.sign_payload(tagged_time))


@pytest.mark.parametrize(
    "protected",
    [b"\xa1\x01\x26", b"\xa2\x01\x38\x22\x04\x40", b"", b"\xa1\x01\xf5", b"\xa1\xf5\x38\x22"],
)
def test_protected_header_must_be_es384_alone(pki: SimulatedPKI, protected: bytes) -> None:
    payload = cbor2.dumps(_fields(pki))
    with pytest.raises(MalformedError, match="protected header"):
        parse_document(pki.sign_payload(payload, protected=protected))


@pytest.mark.parametrize(
    "cose",
    [
        [b"\xa1\x01\x38\x22", {}, None, bytes(96)],
        [b"\xa1\x01\x38\x22", {}, b"\xa0"],
        [b"\xa1\x01\x38\x22", [], b"\xa0", bytes(96)],
        {"a": 1},
    ],
)
def test_cose_envelope_shape(cose: Any) -> None:
    with pytest.raises(MalformedError):
        parse_document(cbor2.dumps(cose))


def test_short_signature_is_a_bad_signature(pki: SimulatedPKI) -> None:
    protected, unprotected, payload, signature = cbor2.loads(_signed(pki))
    data = cbor2.dumps([protected, unprotected, payload, signature[:64]])
    with pytest.raises(Exception, match="ES384") as err:
        AttestationVerifier(pki.root_certificate).verify(data, at=NOW)
    assert err.value.code == "attestation.BadSignature"  # type: ignore[attr-defined]
