"""Test-only CMS builder for variants the KMS-shaped encoder never makes (other algorithms, IV
sizes, several recipients, originatorInfo, primitive content, bad padding). Written against
RFC 5652 directly; shares no code with the reader or the encoder."""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding as asym_padding
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPublicKey
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.padding import PKCS7


def tlv(tag: int, *content: bytes) -> bytes:
    body = b"".join(content)
    n = len(body)
    if n < 0x80:
        return bytes([tag, n]) + body
    size = n.to_bytes((n.bit_length() + 7) // 8, "big")
    return bytes([tag, 0x80 | len(size)]) + size + body


def indef(tag: int, *content: bytes) -> bytes:
    return bytes([tag, 0x80]) + b"".join(content) + b"\x00\x00"


def oid(dotted: str) -> bytes:
    arcs = [int(a) for a in dotted.split(".")]
    out = bytearray()
    for arc in [40 * arcs[0] + arcs[1], *arcs[2:]]:
        groups = [(arc >> shift) & 0x7F for shift in range(0, max(arc.bit_length(), 1), 7)]
        out += bytes(g | 0x80 for g in reversed(groups[1:])) + bytes([groups[0]])
    return tlv(0x06, bytes(out))


SHA1, SHA256 = "1.3.14.3.2.26", "2.16.840.1.101.3.4.2.1"
AES128_CBC, AES256_CBC = "2.16.840.1.101.3.4.1.2", "2.16.840.1.101.3.4.1.42"
HASHES = {SHA1: hashes.SHA1(), SHA256: hashes.SHA256()}


def ski_of(public_key: RSAPublicKey) -> bytes:
    der = public_key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return hashlib.sha256(der).digest()


@dataclass
class Variant:
    hash_oid: str = SHA256
    mgf_hash_oid: str = SHA256
    label: bytes = b""
    pkcs1v15: bool = False
    content_oid: str = AES256_CBC
    content_key_bytes: int = 32
    iv_bytes: int = 16
    pad: bool = True
    chunks: int | None = 1
    originator_info: bool = False
    unprotected_attrs: bool = False
    ski: bytes | None = None


def recipient(public_key: RSAPublicKey, content_key: bytes, v: Variant) -> bytes:
    if v.pkcs1v15:
        alg = tlv(0x30, oid("1.2.840.113549.1.1.1"), tlv(0x05))
        enc = public_key.encrypt(content_key, asym_padding.PKCS1v15())
    else:
        params = [
            tlv(0xA0, tlv(0x30, oid(v.hash_oid), tlv(0x05))),
            tlv(0xA1, tlv(0x30, oid("1.2.840.113549.1.1.8"), tlv(0x30, oid(v.mgf_hash_oid)))),
        ]
        if v.label:
            params.append(tlv(0xA2, tlv(0x30, oid("1.2.840.113549.1.1.9"), tlv(0x04, v.label))))
        alg = tlv(0x30, oid("1.2.840.113549.1.1.7"), tlv(0x30, *params))
        oaep = asym_padding.OAEP(
            mgf=asym_padding.MGF1(HASHES[v.mgf_hash_oid]),
            algorithm=HASHES[v.hash_oid],
            label=v.label or None,
        )
        enc = public_key.encrypt(content_key, oaep)
    ski = v.ski if v.ski is not None else ski_of(public_key)
    return tlv(0x30, tlv(0x02, b"\x02"), tlv(0x80, ski), alg, tlv(0x04, enc))


def build(plaintext: bytes, public_keys: list[RSAPublicKey], v: Variant | None = None) -> bytes:
    """A BER EnvelopedData for every key in `public_keys`, shaped by `v`."""
    v = v or Variant()
    content_key, iv = os.urandom(v.content_key_bytes), os.urandom(v.iv_bytes)
    data = plaintext
    if v.pad:
        padder = PKCS7(128).padder()
        data = padder.update(plaintext) + padder.finalize()
    cbc_iv = iv if v.iv_bytes == 16 else os.urandom(16)
    enc = Cipher(algorithms.AES(content_key), modes.CBC(cbc_iv)).encryptor()
    ciphertext = enc.update(data) + enc.finalize()
    if v.chunks is None:
        content = tlv(0x80, ciphertext)
    else:
        size = -(-len(ciphertext) // v.chunks)
        parts = [tlv(0x04, ciphertext[i : i + size]) for i in range(0, len(ciphertext), size)]
        content = indef(0xA0, *parts)
    fields = [tlv(0x02, b"\x02")]
    if v.originator_info:
        fields.append(tlv(0xA0, tlv(0xA1)))  # OriginatorInfo with an empty crls set
    fields.append(tlv(0x31, *(recipient(k, content_key, v) for k in public_keys)))
    fields.append(
        indef(
            0x30,
            oid("1.2.840.113549.1.7.1"),
            tlv(0x30, oid(v.content_oid), tlv(0x04, iv)),
            content,
        )
    )
    if v.unprotected_attrs:
        fields.append(tlv(0xA1, tlv(0x30, oid("1.2.840.113549.1.9.3"), tlv(0x31, oid("1.2.3")))))
    return indef(0x30, oid("1.2.840.113549.1.7.3"), indef(0xA0, indef(0x30, *fields)))
