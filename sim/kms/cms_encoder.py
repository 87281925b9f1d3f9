"""The local KMS's `CiphertextForRecipient` encoder: CMS EnvelopedData shaped like real KMS output.

The layout follows spec 4.6 and the real blob in `tests/vectors/cms/` byte for byte: a BER
ContentInfo whose ContentInfo, `[0]` content, EnvelopedData and EncryptedContentInfo use
indefinite lengths; everything else (the RecipientInfo SET, the algorithm identifiers, the
encryptedKey) uses minimal definite lengths; the encrypted content is a constructed indefinite
`[0]` holding one OCTET STRING per chunk, then the four end-of-contents markers.

The BER is written by the small TLV helpers below on purpose: this encoder must stay independent
of the reader in `enclave/cms/` (and of asn1crypto), so a bug in one cannot hide one in the other.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, padding, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.asymmetric.padding import MGF1, OAEP
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

MIN_RSA_BITS = 2048
MAX_RSA_BITS = 4096
MAX_SPKI_BYTES = 4096
CONTENT_KEY_BYTES = 32
IV_BYTES = 16

_EOC = b"\x00\x00"
_SEQUENCE = 0x30
_SET = 0x31
_INTEGER = 0x02
_OCTET_STRING = 0x04
_NULL = 0x05
_OID = 0x06
_CTX0_CONSTRUCTED = 0xA0
_CTX1_CONSTRUCTED = 0xA1
_CTX0_PRIMITIVE = 0x80


def _length(n: int) -> bytes:
    if n < 0x80:
        return bytes([n])
    body = n.to_bytes((n.bit_length() + 7) // 8, "big")
    return bytes([0x80 | len(body)]) + body


def _tlv(tag: int, *content: bytes) -> bytes:
    body = b"".join(content)
    return bytes([tag]) + _length(len(body)) + body


def _indefinite(tag: int, *content: bytes) -> bytes:
    return bytes([tag, 0x80]) + b"".join(content) + _EOC


def _oid(dotted: str) -> bytes:
    first, second, *rest = (int(arc) for arc in dotted.split("."))
    body = bytearray()
    for arc in (40 * first + second, *rest):
        septets = [arc & 0x7F]
        rest_of_arc = arc >> 7
        while rest_of_arc:
            septets.append(0x80 | (rest_of_arc & 0x7F))
            rest_of_arc >>= 7
        body.extend(reversed(septets))
    return _tlv(_OID, bytes(body))


_ENVELOPED_DATA = _oid("1.2.840.113549.1.7.3")
_DATA = _oid("1.2.840.113549.1.7.1")
_RSAES_OAEP = _oid("1.2.840.113549.1.1.7")
_MGF1 = _oid("1.2.840.113549.1.1.8")
_SHA256 = _oid("2.16.840.1.101.3.4.2.1")
_AES_256_CBC = _oid("2.16.840.1.101.3.4.1.42")
_SHA256_ALGORITHM = _tlv(_SEQUENCE, _SHA256, _tlv(_NULL))
_OAEP_ALGORITHM = _tlv(
    _SEQUENCE,
    _RSAES_OAEP,
    _tlv(
        _SEQUENCE,
        _tlv(_CTX0_CONSTRUCTED, _SHA256_ALGORITHM),
        _tlv(_CTX1_CONSTRUCTED, _tlv(_SEQUENCE, _MGF1, _SHA256_ALGORITHM)),
    ),
)
_VERSION_2 = _tlv(_INTEGER, b"\x02")


def recipient_public_key(recipient_spki_der: bytes) -> rsa.RSAPublicKey:
    """Load and check a recipient SubjectPublicKeyInfo (DER).

    Raises ValueError, with a message fit for a KMS ValidationException, when the bytes are not a
    DER SubjectPublicKeyInfo, not an RSA key, or not 2048 to 4096 bits.
    """
    if not recipient_spki_der or len(recipient_spki_der) > MAX_SPKI_BYTES:
        raise ValueError("recipient public key must be a DER SubjectPublicKeyInfo")
    try:
        key = serialization.load_der_public_key(recipient_spki_der)
    except (ValueError, TypeError, UnsupportedAlgorithm):
        raise ValueError("recipient public key is not a valid DER SubjectPublicKeyInfo") from None
    if not isinstance(key, rsa.RSAPublicKey):
        raise ValueError("recipient public key must be an RSA key")
    if not MIN_RSA_BITS <= key.key_size <= MAX_RSA_BITS:
        raise ValueError(
            f"recipient RSA key must be {MIN_RSA_BITS} to {MAX_RSA_BITS} bits, got {key.key_size}"
        )
    return key


def subject_key_identifier(key: rsa.RSAPublicKey) -> bytes:
    """SHA-256 of the key's DER SubjectPublicKeyInfo, as KMS puts in the recipient's `[0]` rid."""
    spki = key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return hashlib.sha256(spki).digest()


def _aes_cbc_encrypt(plaintext: bytes, key: bytes, iv: bytes) -> bytes:
    padder = padding.PKCS7(128).padder()
    padded = padder.update(plaintext) + padder.finalize()
    encryptor = Cipher(algorithms.AES(key), modes.CBC(iv)).encryptor()
    return encryptor.update(padded) + encryptor.finalize()


def _chunks(data: bytes, chunk_size: int | None) -> list[bytes]:
    if chunk_size is None:
        return [data]
    return [data[i : i + chunk_size] for i in range(0, len(data), chunk_size)]


def _random(rng: Callable[[int], bytes], n: int) -> bytes:
    value = rng(n)
    if len(value) != n:
        raise ValueError(f"rng returned {len(value)} bytes, expected {n}")
    return value


def encrypt_for_recipient(
    plaintext: bytes,
    recipient_spki_der: bytes,
    *,
    chunk_size: int | None = None,
    rng: Callable[[int], bytes] = os.urandom,
) -> bytes:
    """Encrypt `plaintext` for the holder of `recipient_spki_der`, as KMS's CiphertextForRecipient.

    A fresh 32-byte AES key and 16-byte IV come from `rng` (the OAEP seed comes from OpenSSL's own
    generator; `cryptography` offers no way to inject it). The encrypted content is written as one
    OCTET STRING chunk, or as chunks of `chunk_size` bytes.

    Raises ValueError when the recipient key is unusable (see `recipient_public_key`) or
    `chunk_size` is not positive.
    """
    if chunk_size is not None and chunk_size < 1:
        raise ValueError(f"chunk_size must be at least 1, got {chunk_size}")
    key = recipient_public_key(recipient_spki_der)
    content_key = _random(rng, CONTENT_KEY_BYTES)
    iv = _random(rng, IV_BYTES)
    encrypted_key = key.encrypt(
        content_key,
        OAEP(mgf=MGF1(algorithm=hashes.SHA256()), algorithm=hashes.SHA256(), label=None),
    )
    chunks = _chunks(_aes_cbc_encrypt(plaintext, content_key, iv), chunk_size)
    recipient_info = _tlv(
        _SEQUENCE,
        _VERSION_2,
        _tlv(_CTX0_PRIMITIVE, subject_key_identifier(key)),
        _OAEP_ALGORITHM,
        _tlv(_OCTET_STRING, encrypted_key),
    )
    encrypted_content_info = _indefinite(
        _SEQUENCE,
        _DATA,
        _tlv(_SEQUENCE, _AES_256_CBC, _tlv(_OCTET_STRING, iv)),
        _indefinite(_CTX0_CONSTRUCTED, *(_tlv(_OCTET_STRING, chunk) for chunk in chunks)),
    )
    enveloped_data = _indefinite(
        _SEQUENCE, _VERSION_2, _tlv(_SET, recipient_info), encrypted_content_info
    )
    return _indefinite(_SEQUENCE, _ENVELOPED_DATA, _indefinite(_CTX0_CONSTRUCTED, enveloped_data))
