from __future__ import annotations

import os
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from nitrokms.enclave import envelope
from nitrokms.enclave.errors import DecryptionError, MalformedEnvelopeError
from nitrokms.proto.messages import MAX_ENVELOPE_BYTES

KEY = bytes(range(32))
ARN = "arn:aws:kms:us-east-1:111122223333:key/k1"
BLOB = b"\x01\x02\x03blob"
CONTEXT = {"tenant": "acme", "purpose": "backup", "ü": "ß"}


def _seal(plaintext: bytes = b"attack at dawn", context=None) -> bytes:
    return envelope.seal(
        KEY,
        plaintext,
        key_id=ARN,
        ciphertext_blob=BLOB,
        encryption_context=CONTEXT if context is None else context,
    )


def test_round_trip_and_fields():
    sealed = _seal()
    parsed = envelope.parse(sealed)
    assert parsed.key_id == ARN
    assert parsed.ciphertext_blob == BLOB
    assert parsed.encryption_context == CONTEXT
    assert envelope.open_envelope(parsed, bytearray(KEY)) == b"attack at dawn"


def test_layout_matches_the_documented_one():
    sealed = _seal(b"xy", context={"b": "2", "a": "1"})
    assert sealed[:5] == b"NKSE\x01"
    (k,) = struct.unpack_from(">H", sealed, 5)
    assert sealed[7 : 7 + k] == ARN.encode()
    offset = 7 + k
    (b,) = struct.unpack_from(">H", sealed, offset)
    assert sealed[offset + 2 : offset + 2 + b] == BLOB
    offset += 2 + b
    assert sealed[offset : offset + 2] == b"\x00\x02"
    assert sealed[offset + 2 : offset + 14] == b"\x00\x01a\x00\x011\x00\x01b\x00\x012"
    assert len(sealed) == offset + 2 + 12 + 12 + 2 + 16


def test_empty_plaintext_and_empty_context():
    sealed = _seal(b"", context={})
    parsed = envelope.parse(sealed)
    assert parsed.encryption_context == {}
    assert envelope.open_envelope(parsed, KEY) == b""


def test_each_seal_uses_a_fresh_nonce():
    assert envelope.parse(_seal()).nonce != envelope.parse(_seal()).nonce


def test_tampering_with_any_byte_is_detected():
    sealed = _seal(b"secret!")
    for index in range(len(sealed)):
        tampered = bytearray(sealed)
        tampered[index] ^= 0x01
        try:
            parsed = envelope.parse(bytes(tampered))
        except MalformedEnvelopeError:
            continue
        with pytest.raises(DecryptionError) as info:
            envelope.open_envelope(parsed, KEY)
        assert info.value.code == "crypto.DecryptionFailed"
        assert info.value.message == "decryption failed"


def test_wrong_key_fails_opaquely():
    parsed = envelope.parse(_seal())
    with pytest.raises(DecryptionError):
        envelope.open_envelope(parsed, bytes(32))
    with pytest.raises(DecryptionError):
        envelope.open_envelope(parsed, bytes(16))


def test_truncations_and_trailing_junk_are_rejected():
    sealed = _seal()
    header_len = len(envelope.parse(sealed).header)
    for cut in range(header_len + 16):
        with pytest.raises(MalformedEnvelopeError):
            envelope.parse(sealed[:cut])
    with pytest.raises(DecryptionError):
        envelope.open_envelope(envelope.parse(sealed + b"\x00"), KEY)


@pytest.mark.parametrize(
    ("data", "problem"),
    [
        (b"NOPE\x01", "magic"),
        (b"NKSE\x02", "version"),
        (b"NKSE\x01\x00\x00", "KeyId length"),
        (b"NKSE\x01\x00\x01\xff\x00\x01b\x00\x00" + bytes(28), "UTF-8"),
        (b"NKSE\x01\x00\x01k\x00\x00", "CiphertextBlob length"),
        (b"NKSE\x01\x00\x01k\x00\x01b\x00\x41", "pairs"),
        (
            b"NKSE\x01\x00\x01k\x00\x01b\x00\x02\x00\x01b\x00\x00\x00\x01a\x00\x00" + bytes(28),
            "increasing",
        ),
        (
            b"NKSE\x01\x00\x01k\x00\x01b\x00\x02\x00\x01a\x00\x00\x00\x01a\x00\x00" + bytes(28),
            "increasing",
        ),
    ],
)
def test_named_malformations(data: bytes, problem: str):
    with pytest.raises(MalformedEnvelopeError, match=problem) as info:
        envelope.parse(data)
    assert info.value.code == "enclave.MalformedEnvelope"


def test_oversize_envelope_is_refused_before_parsing():
    with pytest.raises(MalformedEnvelopeError, match="larger"):
        envelope.parse(b"NKSE\x01" + bytes(MAX_ENVELOPE_BYTES))


def test_seal_refuses_bad_inputs():
    with pytest.raises(ValueError, match="32-byte"):
        envelope.seal(bytes(16), b"x", key_id=ARN, ciphertext_blob=BLOB)
    with pytest.raises(MalformedEnvelopeError):
        envelope.seal(KEY, b"x", key_id=ARN, ciphertext_blob=b"")


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=300))
def test_any_bytes_parse_or_raise_the_typed_error(data: bytes):
    try:
        parsed = envelope.parse(data)
    except MalformedEnvelopeError:
        return
    with pytest.raises(DecryptionError):
        envelope.open_envelope(parsed, KEY)


@settings(max_examples=200, deadline=None)
@given(st.binary(min_size=5, max_size=200))
def test_junk_after_a_valid_prefix_parses_or_raises_the_typed_error(tail: bytes):
    try:
        parsed = envelope.parse(b"NKSE\x01" + tail)
    except MalformedEnvelopeError:
        return
    assert len(parsed.ciphertext) >= envelope.TAG_BYTES


@settings(max_examples=200, deadline=None)
@given(
    plaintext=st.binary(max_size=256),
    context=st.dictionaries(st.text(min_size=1, max_size=20), st.text(max_size=20), max_size=8),
    key_id=st.text(min_size=1, max_size=60),
    blob=st.binary(min_size=1, max_size=64),
)
def test_round_trip_property(plaintext: bytes, context: dict[str, str], key_id: str, blob: bytes):
    key = os.urandom(32)
    sealed = envelope.seal(
        key, plaintext, key_id=key_id, ciphertext_blob=blob, encryption_context=context
    )
    parsed = envelope.parse(sealed)
    assert (parsed.key_id, parsed.ciphertext_blob, parsed.encryption_context) == (
        key_id,
        blob,
        context,
    )
    assert envelope.open_envelope(parsed, key) == plaintext
