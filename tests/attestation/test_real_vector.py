"""The real (debug-mode) document from AWS hardware, against the pinned AWS root."""

from __future__ import annotations

import datetime as dt
import hashlib

import pytest
from cryptography.hazmat.primitives.serialization import Encoding
from nitrokms.proto.attestation import (
    AttestationVerifier,
    DebugModeError,
    Expectations,
    ExpiredError,
    NotYetValidError,
    PCRMismatchError,
    UntrustedRootError,
    aws_nitro_root,
    load_root,
    parse_document,
)
from nitrokms.proto.attestation.roots import AWS_ROOT_SHA256

from tests.attestation.conftest import REAL_ROOT

DEBUG_OK = Expectations(allow_debug=True)


def test_parses_with_the_documented_fields(real_doc: bytes) -> None:
    doc = parse_document(real_doc)
    assert doc.module_id == "i-0f73a4b4cb74cc9f2-enc0192e4188fef781d"
    assert doc.timestamp == 1731627989450
    assert doc.issued_at == dt.datetime(2024, 11, 14, 23, 46, 29, 450000, tzinfo=dt.UTC)
    assert doc.digest == "SHA384"
    assert sorted(doc.pcrs) == list(range(16))
    assert doc.debug_mode
    assert doc.pcr_hex(0) == "00" * 48
    assert doc.pcrs[4] == hashlib.sha384(bytes(48) + b"i-0f73a4b4cb74cc9f2").digest()
    assert doc.public_key is None
    assert doc.nonce is None
    assert doc.user_data is not None
    assert len(doc.user_data) == 32
    assert len(doc.cabundle) == 4
    assert doc.payload in real_doc


def test_verifies_at_its_own_time_with_debug_allowed(real_doc: bytes) -> None:
    at = parse_document(real_doc).issued_at
    doc = AttestationVerifier().verify(real_doc, at=at, expect=DEBUG_OK)
    assert doc.module_id.startswith("i-0f73a4b4cb74cc9f2")


def test_three_hours_later_the_leaf_has_expired(real_doc: bytes) -> None:
    at = parse_document(real_doc).issued_at + dt.timedelta(hours=3)
    with pytest.raises(ExpiredError) as err:
        AttestationVerifier().verify(real_doc, at=at, expect=DEBUG_OK)
    assert err.value.code == "attestation.Expired"
    assert "leaf certificate" in str(err.value)
    assert "2024-11-15T00:24:29Z" in str(err.value)


def test_today_it_has_expired(real_doc: bytes) -> None:
    with pytest.raises(ExpiredError):
        AttestationVerifier().verify(real_doc, expect=DEBUG_OK)


def test_before_the_leaf_was_issued_it_is_not_yet_valid(real_doc: bytes) -> None:
    at = dt.datetime(2024, 11, 14, 21, 0, tzinfo=dt.UTC)
    with pytest.raises(NotYetValidError, match="leaf certificate"):
        AttestationVerifier().verify(real_doc, at=at, expect=DEBUG_OK)


def test_debug_mode_is_refused_unless_allowed_and_says_how(real_doc: bytes) -> None:
    at = parse_document(real_doc).issued_at
    with pytest.raises(DebugModeError) as err:
        AttestationVerifier().verify(real_doc, at=at)
    assert err.value.code == "attestation.DebugMode"
    assert "--allow-debug" in str(err.value)


def test_pcr_expectation_names_the_pcr(real_doc: bytes) -> None:
    doc = parse_document(real_doc)
    pcr3 = doc.pcrs[3]
    expect = Expectations(pcrs={3: pcr3, 4: bytes(48)}, allow_debug=True)
    with pytest.raises(PCRMismatchError, match="PCR4"):
        AttestationVerifier().verify(real_doc, at=doc.issued_at, expect=expect)


def test_bundled_root_is_pinned_and_matches_the_vector() -> None:
    root = aws_nitro_root()
    assert hashlib.sha256(root.public_bytes(Encoding.DER)).hexdigest() == AWS_ROOT_SHA256
    assert load_root(REAL_ROOT.read_bytes()) == root
    assert load_root(None) is root


def test_garbage_root_is_refused_with_the_typed_error() -> None:
    with pytest.raises(UntrustedRootError):
        AttestationVerifier(b"not a certificate")
