from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
from asn1crypto import cms as asn1_cms
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.asymmetric.padding import MGF1, OAEP
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.padding import PKCS7
from hypothesis import given, settings
from hypothesis import strategies as st
from nitrokms.enclave.cms import (
    decrypt_enveloped_data,
    inspect_enveloped_data,
    subject_key_identifier,
)
from nitrokms.sim.kms.cms_encoder import encrypt_for_recipient

from tests.cms.conftest import HELLO_PLAINTEXT, VECTORS


def _spki(key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey) -> bytes:
    return key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def _fixed_rng(n: int) -> bytes:
    return bytes(range(n))


def _asn1crypto_decrypt(blob: bytes, key: rsa.RSAPrivateKey) -> bytes:
    """An independent reader: asn1crypto for the structure, cryptography for the maths."""
    info = asn1_cms.ContentInfo.load(blob)
    assert info["content_type"].native == "enveloped_data"
    enveloped = info["content"]
    assert enveloped["version"].native == "v2"
    [recipient] = list(enveloped["recipient_infos"])
    ktri = recipient.chosen
    assert ktri["rid"].name == "subject_key_identifier"
    assert ktri["rid"].chosen.native == subject_key_identifier(key.public_key())
    algorithm = ktri["key_encryption_algorithm"]
    assert algorithm["algorithm"].native == "rsaes_oaep"
    assert algorithm["parameters"]["hash_algorithm"]["algorithm"].native == "sha256"
    mgf = algorithm["parameters"]["mask_gen_algorithm"]
    assert (mgf["algorithm"].native, mgf["parameters"]["algorithm"].native) == ("mgf1", "sha256")
    content_key = key.decrypt(
        ktri["encrypted_key"].native,
        OAEP(mgf=MGF1(hashes.SHA256()), algorithm=hashes.SHA256(), label=None),
    )
    eci = enveloped["encrypted_content_info"]
    assert eci["content_encryption_algorithm"]["algorithm"].native == "aes256_cbc"
    iv = eci["content_encryption_algorithm"]["parameters"].native
    decryptor = Cipher(algorithms.AES(content_key), modes.CBC(iv)).decryptor()
    padded = decryptor.update(eci["encrypted_content"].native) + decryptor.finalize()
    unpadder = PKCS7(128).unpadder()
    return unpadder.update(padded) + unpadder.finalize()


class TestShape:
    def test_byte_layout_matches_real_kms_blob(self, hello_blob, hello_key):
        ours = encrypt_for_recipient(HELLO_PLAINTEXT, _spki(hello_key))
        assert len(ours) == len(hello_blob)
        random_spans = [(131, 387), (415, 431), (435, 451)]  # encryptedKey, IV, ciphertext
        masked_ours, masked_real = bytearray(ours), bytearray(hello_blob)
        for start, end in random_spans:
            masked_ours[start:end] = masked_real[start:end] = bytes(end - start)
        assert masked_ours == masked_real

    def test_chunked_layout(self, hello_key):
        blob = encrypt_for_recipient(b"k" * 300, _spki(hello_key), chunk_size=100)
        assert blob.endswith(b"\x00\x00" * 5)
        start = len(blob) - 10 - (3 * 102 + 6) - 2  # 304 bytes in chunks of 100, 100, 100, 4
        assert blob[start : start + 4] == b"\xa0\x80\x04\x64"
        assert [blob[start + 2 + 102 * i] for i in range(4)] == [0x04] * 4
        assert blob[start + 2 + 306 : start + 2 + 308] == b"\x04\x04"
        info = inspect_enveloped_data(blob)
        assert (info.content_chunked, info.chunk_count, info.encrypted_content_size) == (
            True,
            4,
            304,
        )

    def test_data_key_sized_plaintext_gives_48_bytes(self, hello_key):
        info = inspect_enveloped_data(encrypt_for_recipient(bytes(32), _spki(hello_key)))
        assert info.encrypted_content_size == 48
        assert info.recipients[0].encrypted_key_size == 256

    def test_rng_supplies_content_key_and_iv(self, hello_key):
        blob = encrypt_for_recipient(b"x", _spki(hello_key), rng=_fixed_rng)
        assert inspect_enveloped_data(blob).iv == bytes(range(16))

    def test_bigger_keys_get_bigger_encrypted_keys(self):
        key = rsa.generate_private_key(public_exponent=65537, key_size=3072)
        blob = encrypt_for_recipient(b"three", _spki(key))
        assert inspect_enveloped_data(blob).recipients[0].encrypted_key_size == 384
        assert decrypt_enveloped_data(blob, key) == b"three"


class TestIndependentReaders:
    @pytest.mark.parametrize("chunk_size", [None, 16, 5])
    @pytest.mark.parametrize("size", [0, 12, 32, 1000])
    def test_our_reader_and_asn1crypto_agree(self, hello_key, chunk_size, size):
        plaintext = bytes(range(256)) * 4
        plaintext = plaintext[:size]
        blob = encrypt_for_recipient(plaintext, _spki(hello_key), chunk_size=chunk_size)
        assert decrypt_enveloped_data(blob, hello_key) == plaintext
        assert _asn1crypto_decrypt(blob, hello_key) == plaintext

    def test_asn1crypto_reads_the_real_vector_the_same_way(self, hello_blob, hello_key):
        assert _asn1crypto_decrypt(hello_blob, hello_key) == HELLO_PLAINTEXT

    @pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl CLI not installed")
    @pytest.mark.parametrize("chunk_size", [None, 7])
    def test_openssl_cli_decrypts_it(self, tmp_path: Path, chunk_size):
        key_path = VECTORS / "kms_cms_hello-world.key.pem"
        key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
        assert isinstance(key, rsa.RSAPrivateKey)
        plaintext = b"opened by openssl\n" * 10
        blob_path = tmp_path / "blob.ber"
        blob_path.write_bytes(encrypt_for_recipient(plaintext, _spki(key), chunk_size=chunk_size))
        result = subprocess.run(
            ["openssl", "cms", "-decrypt", "-inform", "DER", "-binary",
             "-inkey", str(key_path), "-in", str(blob_path)],
            capture_output=True, check=True, timeout=30,
        )  # fmt: skip
        assert result.stdout == plaintext


@settings(max_examples=200, deadline=None)
@given(plaintext=st.binary(max_size=2048), chunk_size=st.one_of(st.none(), st.integers(1, 600)))
def test_round_trip_any_plaintext_and_chunking(hello_key, plaintext, chunk_size):
    blob = encrypt_for_recipient(plaintext, _spki(hello_key), chunk_size=chunk_size)
    assert decrypt_enveloped_data(blob, hello_key) == plaintext
    expected_chunks = 1 if chunk_size is None else -(-(len(plaintext) // 16 + 1) * 16 // chunk_size)
    assert inspect_enveloped_data(blob).chunk_count == expected_chunks


class TestValidation:
    def test_rejects_ec_key(self):
        key = ec.generate_private_key(ec.SECP256R1())
        with pytest.raises(ValueError, match="must be an RSA key"):
            encrypt_for_recipient(b"x", _spki(key))

    def test_rejects_small_rsa_key(self):
        key = rsa.generate_private_key(public_exponent=65537, key_size=1024)
        with pytest.raises(ValueError, match="2048 to 4096 bits, got 1024"):
            encrypt_for_recipient(b"x", _spki(key))

    @pytest.mark.parametrize("spki", [b"", b"not der", b"\x30\x03\x02\x01\x01", bytes(5000)])
    def test_rejects_garbage(self, spki):
        with pytest.raises(ValueError, match="SubjectPublicKeyInfo"):
            encrypt_for_recipient(b"x", spki)

    def test_rejects_unknown_key_algorithm(self, hello_key):
        rsa_oid = bytes.fromhex("06092a864886f70d010101")
        unknown = _spki(hello_key).replace(rsa_oid, bytes.fromhex("0609008648") + rsa_oid[5:], 1)
        with pytest.raises(ValueError, match="SubjectPublicKeyInfo"):
            encrypt_for_recipient(b"x", unknown)

    def test_rejects_nonpositive_chunk_size(self, hello_key):
        with pytest.raises(ValueError, match="chunk_size"):
            encrypt_for_recipient(b"x", _spki(hello_key), chunk_size=0)

    def test_rejects_short_rng(self, hello_key):
        with pytest.raises(ValueError, match="rng returned"):
            encrypt_for_recipient(b"x", _spki(hello_key), rng=lambda n: b"\x00")
