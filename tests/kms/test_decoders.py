"""Fuzz invariants of the decoders that face untrusted bytes: blob, SigV4 header, Recipient."""

from __future__ import annotations

import base64
import uuid
from typing import Any

import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from nitrokms.sim.kms import algorithms, crypto, grant_tokens
from nitrokms.sim.kms.auth import Credential, ReceivedRequest, SigV4Verifier
from nitrokms.sim.kms.exceptions import (
    InvalidCiphertextException,
    InvalidGrantTokenException,
    KMSServiceError,
    ValidationException,
)
from nitrokms.sim.kms.keyspecs import SPECS
from nitrokms.sim.kms.recipient import RecipientReader
from nitrokms.sim.nsm.pki import SimulatedPKI

MATERIAL = bytes(range(32))
KEY_ID = str(uuid.UUID(int=7))


def test_blob_round_trip_and_context_binding() -> None:
    blob = crypto.seal(MATERIAL, KEY_ID, b"payload", {"b": "2", "a": "1"})
    assert crypto.blob_key_id(blob) == KEY_ID
    assert crypto.open_blob(MATERIAL, blob, {"a": "1", "b": "2"}) == b"payload"
    for context in (None, {"a": "1"}, {"a": "1", "b": "3"}):
        with pytest.raises(InvalidCiphertextException):
            crypto.open_blob(MATERIAL, blob, context)


def test_blob_key_id_is_authenticated() -> None:
    blob = bytearray(crypto.seal(MATERIAL, KEY_ID, b"payload", None))
    blob[5] ^= 1
    with pytest.raises(InvalidCiphertextException):
        crypto.open_blob(MATERIAL, bytes(blob), None)


@settings(max_examples=500, deadline=None)
@given(
    st.binary(max_size=200)
    | st.binary(max_size=100).map(lambda b: crypto.MAGIC + b"\x01" + b)
    | st.binary(max_size=100).map(lambda b: crypto.MAGIC + b"\x02" + b)
)
def test_any_bytes_open_or_are_invalid_ciphertext(data: bytes) -> None:
    try:
        crypto.open_blob(MATERIAL, data, None)
    except InvalidCiphertextException:
        return
    pytest.fail("random bytes decrypted")


@settings(max_examples=300, deadline=None)
@given(st.data())
def test_one_flipped_bit_anywhere_is_invalid_ciphertext(data: st.DataObject) -> None:
    blob = bytearray(crypto.seal(MATERIAL, KEY_ID, b"some plaintext", {"k": "v"}))
    index = data.draw(st.integers(0, len(blob) * 8 - 1))
    blob[index // 8] ^= 1 << (index % 8)
    with pytest.raises(InvalidCiphertextException):
        crypto.open_blob(MATERIAL, bytes(blob), {"k": "v"})


def test_material_version_is_authenticated_and_legacy_blobs_open() -> None:
    blob = crypto.seal(MATERIAL, KEY_ID, b"payload", None, material_version=3)
    header = crypto.read_header(blob)
    assert (header.key_id, header.material_version) == (KEY_ID, 3)
    tampered = bytearray(blob)
    tampered[len(crypto.MAGIC) + 1 + 16 + 3] = 4
    assert crypto.read_header(bytes(tampered)).material_version == 4
    with pytest.raises(InvalidCiphertextException):
        crypto.open_blob(MATERIAL, bytes(tampered), None)
    nonce = bytes(12)
    legacy_header = crypto.MAGIC + b"\x01" + uuid.UUID(KEY_ID).bytes + nonce
    legacy = legacy_header + AESGCM(MATERIAL).encrypt(nonce, b"old", legacy_header)
    assert crypto.read_header(legacy).material_version == 0
    assert crypto.open_blob(MATERIAL, legacy, None) == b"old"


TOKEN_KEY = bytes(range(32))
GRANT_ID = "ab" * 32


def test_grant_token_round_trip_and_uniqueness() -> None:
    first = grant_tokens.issue(TOKEN_KEY, GRANT_ID)
    second = grant_tokens.issue(TOKEN_KEY, GRANT_ID)
    assert first != second
    assert grant_tokens.grant_id_of(TOKEN_KEY, first) == GRANT_ID
    assert grant_tokens.grant_id_of(TOKEN_KEY, second) == GRANT_ID
    with pytest.raises(InvalidGrantTokenException):
        grant_tokens.grant_id_of(bytes(32), first)


@settings(max_examples=400, deadline=None)
@given(
    st.text(max_size=200)
    | st.binary(min_size=80, max_size=82).map(lambda b: base64.urlsafe_b64encode(b).decode())
)
def test_any_string_is_a_grant_token_of_ours_or_invalid(token: str) -> None:
    with pytest.raises(InvalidGrantTokenException):
        grant_tokens.grant_id_of(TOKEN_KEY, token)


@settings(max_examples=300, deadline=None)
@given(st.data())
def test_one_changed_character_makes_a_token_invalid(data: st.DataObject) -> None:
    token = grant_tokens.issue(TOKEN_KEY, GRANT_ID)
    index = data.draw(st.integers(0, len(token) - 1))
    replacement = data.draw(
        st.sampled_from("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz-_=")
    )
    assume(replacement != token[index])
    changed = token[:index] + replacement + token[index + 1 :]
    with pytest.raises(InvalidGrantTokenException):
        grant_tokens.grant_id_of(TOKEN_KEY, changed)


P256_MATERIAL = SPECS["ECC_NIST_P256"].new_material()
P256_PEER = algorithms.public_key_der(SPECS["ECC_NIST_P256"].new_material(), cache=False)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200), st.data())
def test_any_peer_public_key_derives_or_is_a_validation_error(
    junk: bytes, data: st.DataObject
) -> None:
    index = data.draw(st.integers(0, len(P256_PEER) - 1))
    byte = bytes([data.draw(st.integers(0, 255))])
    corrupted = P256_PEER[:index] + byte + P256_PEER[index + 1 :]
    for peer in (junk, corrupted):
        try:
            secret = algorithms.derive_shared_secret(P256_MATERIAL, peer)
        except ValidationException:
            continue
        assert len(secret) == 32


VERIFIER = SigV4Verifier([Credential("AKID", "secret")], region="us-east-1")
header_text = st.text(max_size=200) | st.builds(
    lambda a, b, c: f"AWS4-HMAC-SHA256 Credential={a}, SignedHeaders={b}, Signature={c}",
    st.text(max_size=60),
    st.text(max_size=30),
    st.text(max_size=70),
)


@settings(max_examples=400, deadline=None)
@given(header_text, st.text(max_size=20), st.binary(max_size=50))
def test_any_authorization_header_is_a_kms_error(
    authorization: str, date: str, body: bytes
) -> None:
    request = ReceivedRequest(
        "POST", "/", [("Authorization", authorization), ("X-Amz-Date", date)], body
    )
    with pytest.raises(KMSServiceError):
        VERIFIER.authenticate(request)


READER_PKI = SimulatedPKI.ephemeral()
READER = RecipientReader(READER_PKI.root_certificate_pem)
recipient_values = (
    st.none()
    | st.text(max_size=20)
    | st.dictionaries(
        st.sampled_from(["KeyEncryptionAlgorithm", "AttestationDocument", "x"]),
        st.none()
        | st.integers()
        | st.sampled_from(["RSAES_OAEP_SHA_256", "RSAES_OAEP_SHA_1"])
        | st.binary(max_size=300).map(lambda b: base64.b64encode(b).decode())
        | st.text(max_size=30),
    )
)


@settings(max_examples=400, deadline=None)
@given(recipient_values)
def test_any_recipient_value_is_read_or_a_validation_error(raw: Any) -> None:
    with pytest.raises(ValidationException):
        READER.read(raw)


@settings(max_examples=300, deadline=None)
@given(st.data())
def test_any_corrupted_document_is_read_or_a_validation_error(data: st.DataObject) -> None:
    document = bytearray(_valid_document())
    index = data.draw(st.integers(0, len(document) - 1))
    document[index] = data.draw(st.integers(0, 255))
    raw = {
        "KeyEncryptionAlgorithm": "RSAES_OAEP_SHA_256",
        "AttestationDocument": base64.b64encode(bytes(document)).decode(),
    }
    try:
        recipient = READER.read(raw)
    except ValidationException:
        return
    assert not recipient.verified or bytes(document) == _valid_document()


def test_public_key_of_an_unknown_algorithm_is_a_validation_error() -> None:
    # Found by the fuzz test above: one byte of the SPKI's algorithm OID changed makes
    # cryptography raise UnsupportedAlgorithm, which must surface as ValidationException.
    document = _valid_document()
    rsa_oid = bytes.fromhex("06092a864886f70d010101")
    assert rsa_oid in document
    corrupted = document.replace(rsa_oid, bytes.fromhex("0609008648") + rsa_oid[5:], 1)
    with pytest.raises(ValidationException):
        READER.read(
            {
                "KeyEncryptionAlgorithm": "RSAES_OAEP_SHA_256",
                "AttestationDocument": base64.b64encode(corrupted).decode(),
            }
        )


_DOCUMENT: list[bytes] = []


def _valid_document() -> bytes:
    if not _DOCUMENT:
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric import rsa

        spki = (
            rsa.generate_private_key(public_exponent=65537, key_size=2048)
            .public_key()
            .public_bytes(
                serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
            )
        )
        _DOCUMENT.append(
            READER_PKI.sign_document(
                module_id="i-0123456789abcdef0-enc0123456789abcdef",
                timestamp_ms=int(__import__("time").time() * 1000),
                pcrs={i: bytes(48) for i in range(16)},
                public_key=spki,
                user_data=None,
                nonce=None,
            )
        )
    return _DOCUMENT[0]
