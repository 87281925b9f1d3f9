"""The local KMS's own CiphertextBlob format and its symmetric crypto (pure functions over bytes).

Blob layout (all fixed-size fields, big-endian):

    magic  b"NKMS" (4) | version 0x01 (1) | key id: UUID bytes (16) | nonce (12) | AES-256-GCM
    ciphertext || tag (>= 16)

The AAD is the header (magic .. nonce) followed by the canonical encryption context (sorted, compact
UTF-8 JSON), so the key id cannot be swapped and a different context fails authentication. Every
failure to open a blob raises the one `InvalidCiphertextException`, whatever the cause.
"""

from __future__ import annotations

import json
import os
import uuid
from dataclasses import dataclass

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from nitrokms.sim.kms.exceptions import InvalidCiphertextException

MAGIC = b"NKMS"
VERSION = 1
NONCE_BYTES = 12
TAG_BYTES = 16
KEY_MATERIAL_BYTES = 32
HEADER_BYTES = len(MAGIC) + 1 + 16 + NONCE_BYTES
MAX_BLOB_BYTES = 6144

_INVALID = "The ciphertext is invalid or was not produced by this KMS with this encryption context."


def new_key_material() -> bytes:
    return os.urandom(KEY_MATERIAL_BYTES)


def canonical_context(context: dict[str, str] | None) -> bytes:
    """Canonical bytes of an encryption context: the empty context and `None` are the same."""
    if not context:
        return b""
    return json.dumps(context, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


@dataclass(frozen=True)
class BlobHeader:
    key_id: str
    nonce: bytes


def blob_key_id(blob: bytes) -> str:
    """The key id (UUID string) a blob names. Raises InvalidCiphertextException if not ours."""
    return _split(blob)[0].key_id


def seal(material: bytes, key_id: str, plaintext: bytes, context: dict[str, str] | None) -> bytes:
    nonce = os.urandom(NONCE_BYTES)
    header = MAGIC + bytes([VERSION]) + uuid.UUID(key_id).bytes + nonce
    body = AESGCM(material).encrypt(nonce, plaintext, header + canonical_context(context))
    return header + body


def open_blob(material: bytes, blob: bytes, context: dict[str, str] | None) -> bytes:
    """Decrypt a blob made by `seal`. Raises InvalidCiphertextException on any mismatch."""
    header, body = _split(blob)
    aad = blob[:HEADER_BYTES] + canonical_context(context)
    try:
        return AESGCM(material).decrypt(header.nonce, body, aad)
    except InvalidTag:
        raise InvalidCiphertextException(_INVALID) from None


def _split(blob: bytes) -> tuple[BlobHeader, bytes]:
    if (
        len(blob) < HEADER_BYTES + TAG_BYTES
        or len(blob) > MAX_BLOB_BYTES
        or not blob.startswith(MAGIC)
        or blob[len(MAGIC)] != VERSION
    ):
        raise InvalidCiphertextException(_INVALID)
    offset = len(MAGIC) + 1
    key_id = str(uuid.UUID(bytes=blob[offset : offset + 16]))
    nonce = blob[offset + 16 : HEADER_BYTES]
    return BlobHeader(key_id, nonce), blob[HEADER_BYTES:]
