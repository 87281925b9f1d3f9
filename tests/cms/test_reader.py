from __future__ import annotations

import hashlib
import re
import shutil
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from nitrokms.enclave.cms import (
    MAX_BLOB_BYTES,
    CMSError,
    CMSFormatError,
    UnknownRecipientError,
    UnsupportedCMSError,
    decrypt_enveloped_data,
    inspect_enveloped_data,
    subject_key_identifier,
)
from nitrokms.enclave.errors import DecryptionError, EnclaveError

from tests.cms.builder import AES128_CBC, SHA1, Variant, build
from tests.cms.conftest import HELLO_PLAINTEXT, VECTORS
from tests.vectors.cms.make_vectors import PLAINTEXT as OPENSSL_PLAINTEXT
from tests.vectors.cms.make_vectors import make_openssl_blobs


def _spki_sha256(key: rsa.RSAPrivateKey) -> bytes:
    der = key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return hashlib.sha256(der).digest()


def _vector(name: str) -> bytes:
    return (VECTORS / name).read_bytes()


class TestRealKmsVector:
    def test_inspect_describes_kms_shape(self, hello_blob, hello_key):
        info = inspect_enveloped_data(hello_blob)
        assert (info.content_type, info.version) == ("envelopedData", 2)
        assert not info.has_originator_info
        assert not info.has_unprotected_attributes
        [recipient] = info.recipients
        assert (recipient.kind, recipient.version) == ("keyTransport", 2)
        assert recipient.rid_kind == "subjectKeyIdentifier"
        assert recipient.subject_key_identifier == _spki_sha256(hello_key)
        assert recipient.key_encryption_algorithm == "rsaesOaep"
        assert (recipient.oaep_hash, recipient.oaep_mgf, recipient.oaep_mgf_hash) == (
            "sha256",
            "mgf1",
            "sha256",
        )
        assert recipient.oaep_label == b""
        assert recipient.encrypted_key_size == 256
        assert info.content_encryption_algorithm == "aes-256-cbc"
        assert info.iv == bytes.fromhex("2c2ff1116ae6f8573fd58fd44f980624")
        assert info.encrypted_content_type == "data"
        assert info.encrypted_content_size == 16
        assert (info.content_chunked, info.chunk_count) == (True, 1)
        assert info.refusals == ()

    def test_decrypts_with_single_key_and_with_ski_map(self, hello_blob, hello_key):
        assert decrypt_enveloped_data(hello_blob, hello_key) == HELLO_PLAINTEXT
        keys = {subject_key_identifier(hello_key.public_key()): hello_key}
        assert decrypt_enveloped_data(hello_blob, keys) == HELLO_PLAINTEXT

    def test_ski_is_sha256_of_spki(self, hello_key):
        assert subject_key_identifier(hello_key.public_key()) == _spki_sha256(hello_key)

    def test_wrong_single_key_is_opaque_decryption_error(self, hello_blob, other_key):
        with pytest.raises(DecryptionError) as excinfo:
            decrypt_enveloped_data(hello_blob, other_key)
        assert excinfo.value.code == "crypto.DecryptionFailed"
        assert str(excinfo.value) == "decryption failed"

    def test_wrong_key_map_is_unknown_recipient(self, hello_blob, other_key):
        keys = {subject_key_identifier(other_key.public_key()): other_key}
        with pytest.raises(UnknownRecipientError) as excinfo:
            decrypt_enveloped_data(hello_blob, keys)
        assert excinfo.value.code == "cms.UnknownRecipient"

    def test_empty_key_map_is_unknown_recipient(self, hello_blob):
        with pytest.raises(UnknownRecipientError):
            decrypt_enveloped_data(hello_blob, {})

    def test_key_picked_by_ski_from_a_pool(self, hello_blob, hello_key, other_key, third_key):
        pool = {
            subject_key_identifier(k.public_key()): k for k in (other_key, hello_key, third_key)
        }
        assert decrypt_enveloped_data(hello_blob, pool) == HELLO_PLAINTEXT

    def test_every_truncation_is_malformed(self, hello_blob, hello_key):
        for end in range(len(hello_blob)):
            with pytest.raises(CMSFormatError):
                inspect_enveloped_data(hello_blob[:end])

    @pytest.mark.parametrize("tail", [b"\x00", b"\x00\x00", b"garbage", b"\x30\x80"])
    def test_trailing_bytes_are_malformed(self, hello_blob, hello_key, tail):
        with pytest.raises(CMSFormatError, match="trailing"):
            decrypt_enveloped_data(hello_blob + tail, hello_key)

    def test_oversized_blob_refused_before_parsing(self, hello_key):
        with pytest.raises(CMSFormatError, match="larger than"):
            decrypt_enveloped_data(b"\x30\x80" + bytes(MAX_BLOB_BYTES), hello_key)

    def test_repr_has_no_ciphertext(self, hello_blob):
        text = repr(inspect_enveloped_data(hello_blob))
        assert "263a97b7" not in text
        assert "x97" not in text
        assert "6d29802e" not in text


class TestOpenSSLVectors:
    def test_keyid_blob_decrypts_with_single_key(self, openssl_key):
        blob = _vector("openssl_oaep256_keyid.der")
        assert decrypt_enveloped_data(blob, openssl_key) == OPENSSL_PLAINTEXT

    def test_keyid_blob_with_sha1_ski_is_unknown_to_the_pool(self, openssl_key):
        blob = _vector("openssl_oaep256_keyid.der")
        [recipient] = inspect_enveloped_data(blob).recipients
        assert len(recipient.subject_key_identifier or b"") == 20
        with pytest.raises(UnknownRecipientError):
            decrypt_enveloped_data(blob, {_spki_sha256(openssl_key): openssl_key})

    def test_issuer_and_serial_blob_decrypts_by_trying_keys(self, openssl_key, other_key):
        blob = _vector("openssl_oaep256_issuer.der")
        info = inspect_enveloped_data(blob)
        assert info.version == 0
        [recipient] = info.recipients
        assert recipient.rid_kind == "issuerAndSerialNumber"
        assert recipient.serial_number == 0x4E4B4D53
        assert b"nitrokms CMS test recipient" in (recipient.issuer_der or b"")
        pool = {_spki_sha256(k): k for k in (other_key, openssl_key)}
        assert decrypt_enveloped_data(blob, pool) == OPENSSL_PLAINTEXT
        assert decrypt_enveloped_data(blob, openssl_key) == OPENSSL_PLAINTEXT

    def test_issuer_and_serial_blob_with_wrong_keys_fails_opaquely(self, other_key):
        blob = _vector("openssl_oaep256_issuer.der")
        with pytest.raises(DecryptionError):
            decrypt_enveloped_data(blob, {_spki_sha256(other_key): other_key})

    @pytest.mark.parametrize(
        ("name", "reason"),
        [
            ("openssl_pkcs1v15.der", "rsaEncryption (PKCS#1 v1.5) is not supported"),
            ("openssl_oaep_sha1.der", "OAEP hash sha1 is not supported"),
            ("openssl_aes128.der", "aes-128-cbc is not supported"),
        ],
    )
    def test_unsupported_blobs_are_described_and_refused(self, openssl_key, name, reason):
        blob = _vector(name)
        info = inspect_enveloped_data(blob)
        assert any(reason in r for r in info.refusals)
        with pytest.raises(UnsupportedCMSError, match=re.escape(reason)) as excinfo:
            decrypt_enveloped_data(blob, openssl_key)
        assert excinfo.value.code == "cms.Unsupported"

    def test_fresh_openssl_blobs_from_this_machine(self, tmp_path: Path, openssl_key):
        if not shutil.which("openssl"):
            pytest.skip("openssl CLI not installed")
        made = make_openssl_blobs(VECTORS / "test_recipient.cert.pem", tmp_path)
        for name in ("openssl_oaep256_keyid.der", "openssl_oaep256_issuer.der"):
            assert decrypt_enveloped_data(made[name].read_bytes(), openssl_key) == (
                OPENSSL_PLAINTEXT
            )


class TestVariants:
    def test_primitive_content_and_originator_and_attributes(self, hello_key):
        v = Variant(chunks=None, originator_info=True, unprotected_attrs=True)
        blob = build(b"secret data", [hello_key.public_key()], v)
        info = inspect_enveloped_data(blob)
        assert info.has_originator_info
        assert info.has_unprotected_attributes
        assert (info.content_chunked, info.chunk_count) == (False, 1)
        assert decrypt_enveloped_data(blob, hello_key) == b"secret data"

    def test_many_chunks_are_concatenated(self, hello_key):
        blob = build(b"z" * 200, [hello_key.public_key()], Variant(chunks=13))
        assert inspect_enveloped_data(blob).chunk_count == 13
        assert decrypt_enveloped_data(blob, hello_key) == b"z" * 200

    def test_several_recipients_pick_the_held_one(self, hello_key, other_key, third_key):
        blob = build(b"for two", [other_key.public_key(), hello_key.public_key()])
        assert len(inspect_enveloped_data(blob).recipients) == 2
        assert decrypt_enveloped_data(blob, {_spki_sha256(hello_key): hello_key}) == b"for two"
        assert decrypt_enveloped_data(blob, hello_key) == b"for two"
        with pytest.raises(UnknownRecipientError):
            decrypt_enveloped_data(blob, {_spki_sha256(third_key): third_key})
        with pytest.raises(DecryptionError):
            decrypt_enveloped_data(blob, third_key)

    def test_single_key_is_tried_even_when_ski_differs(self, hello_key):
        blob = build(b"odd ski", [hello_key.public_key()], Variant(ski=b"\x01" * 20))
        assert decrypt_enveloped_data(blob, hello_key) == b"odd ski"

    @pytest.mark.parametrize(
        ("variant", "reason"),
        [
            (Variant(pkcs1v15=True), "PKCS#1 v1.5"),
            (Variant(hash_oid=SHA1, mgf_hash_oid=SHA1), "OAEP hash sha1"),
            (Variant(mgf_hash_oid=SHA1), "mgf1/sha1"),
            (Variant(label=b"label"), "non-empty label"),
            (Variant(content_oid=AES128_CBC, content_key_bytes=16), "aes-128-cbc"),
            (Variant(iv_bytes=8), "IV is 8 bytes"),
        ],
    )
    def test_refusals(self, hello_key, variant, reason):
        blob = build(b"refused", [hello_key.public_key()], variant)
        info = inspect_enveloped_data(blob)
        assert any(reason in r for r in info.refusals), info.refusals
        with pytest.raises(UnsupportedCMSError, match=re.escape(reason)):
            decrypt_enveloped_data(blob, hello_key)

    def test_held_key_with_unsupported_algorithm_is_named(self, hello_key, other_key):
        blob = build(b"x", [hello_key.public_key(), other_key.public_key()], Variant())
        sha1 = build(b"x", [hello_key.public_key()], Variant(hash_oid=SHA1))
        assert decrypt_enveloped_data(blob, {_spki_sha256(other_key): other_key}) == b"x"
        with pytest.raises(UnsupportedCMSError, match="sha1"):
            decrypt_enveloped_data(sha1, {_spki_sha256(hello_key): hello_key})

    def test_bad_padding_and_wrong_key_length_look_like_wrong_key(self, hello_key, other_key):
        messages = set()
        for blob, key in [
            (build(b"\x00" * 16, [hello_key.public_key()], Variant(pad=False)), hello_key),
            (
                build(b"short key", [hello_key.public_key()], Variant(content_key_bytes=16)),
                hello_key,
            ),
            (build(b"wrong key", [hello_key.public_key()]), other_key),
        ]:
            with pytest.raises(DecryptionError) as excinfo:
                decrypt_enveloped_data(blob, key)
            messages.add((str(excinfo.value), excinfo.value.code))
        assert messages == {("decryption failed", "crypto.DecryptionFailed")}

    def test_content_not_block_multiple_is_refused(self, hello_key):
        blob = build(b"abc", [hello_key.public_key()])
        # The one 16-byte chunk sits before the five EOCs; a search could hit random ciphertext.
        idx = len(blob) - 10 - 16 - 2
        assert blob[idx : idx + 2] == b"\x04\x10"
        shorter = blob[:idx] + b"\x04\x0f" + blob[idx + 2 : idx + 17] + blob[idx + 18 :]
        info = inspect_enveloped_data(shorter)
        assert any("multiple of 16" in r for r in info.refusals)


class TestMalformed:
    @pytest.mark.parametrize(
        ("blob", "match"),
        [
            (b"", "empty"),
            (b"\x04\x00", "ContentInfo"),
            (b"\x30\x80\x06\x03\x2a\x03\x04\xa0\x80\x30\x00\x00\x00\x00\x00", "not envelopedData"),
            (b"\x30\x85\x01\x02\x03\x04\x05", "too long"),
            (b"\x04\x80\x00\x00", "indefinite length on a primitive"),
            (b"\x30\x80" * 40, "deeper"),
            (b"\x30\x02\x00\x00", "end-of-contents inside"),
            (b"\x30\x80" + b"\x05\x00" * 5000 + b"\x00\x00", "more than 4096 elements"),
            (b"\x1f\x81\x00\x00", "got universal tag 128"),
            (b"\x30\x84\xff\xff\xff\xff", "runs past the end"),
            (b"\x30\x80\x06\x02\x80\x01\xa0\x80\x00\x00\x00\x00", "malformed OBJECT IDENTIFIER"),
        ],
    )
    def test_structural_errors_are_named(self, blob, match):
        with pytest.raises(CMSFormatError, match=match):
            inspect_enveloped_data(blob)

    def test_error_family(self):
        assert issubclass(CMSFormatError, CMSError)
        assert issubclass(UnsupportedCMSError, CMSFormatError)
        assert issubclass(UnknownRecipientError, CMSError)
        assert issubclass(CMSError, EnclaveError)
        with pytest.raises(CMSFormatError) as excinfo:
            inspect_enveloped_data(b"\x30")
        assert excinfo.value.code == "cms.Malformed"
