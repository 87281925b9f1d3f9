"""The local KMS's own CiphertextBlob format and its symmetric crypto (pure functions over bytes).

Blob layout (all fixed-size fields, big-endian):

    version 2: magic b"NKMS" (4) | 0x02 (1) | key id: UUID bytes (16) | key material version (4)
               | nonce (12) | AES-256-GCM ciphertext || tag (>= 16)
    version 1: magic b"NKMS" (4) | 0x01 (1) | key id (16) | nonce (12) | ciphertext || tag

Version 1 blobs (written before key rotation existed) name material version 0 implicitly and still
open. The material version says which of a rotated key's materials sealed the blob, so ciphertexts
made before a rotation still decrypt after it. The AAD is the header (magic .. nonce) followed by
the canonical encryption context (sorted, compact UTF-8 JSON), so neither the key id nor the
material version can be swapped and a different context fails authentication. Every failure to
open a blob raises the one `InvalidCiphertextException`, whatever the cause.
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
VERSION = 2
LEGACY_VERSION = 1
NONCE_BYTES = 12
TAG_BYTES = 16
KEY_MATERIAL_BYTES = 32
MATERIAL_VERSION_BYTES = 4
HEADER_BYTES = len(MAGIC) + 1 + 16 + MATERIAL_VERSION_BYTES + NONCE_BYTES
LEGACY_HEADER_BYTES = len(MAGIC) + 1 + 16 + NONCE_BYTES
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
    material_version: int
    nonce: bytes
    size: int  # header bytes, the authenticated prefix


def read_header(blob: bytes) -> BlobHeader:
    """The header of a blob of ours. Raises InvalidCiphertextException if it is not one."""
    if len(blob) > MAX_BLOB_BYTES or not blob.startswith(MAGIC) or len(blob) <= len(MAGIC):
        raise InvalidCiphertextException(_INVALID)
    version = blob[len(MAGIC)]
    size = {VERSION: HEADER_BYTES, LEGACY_VERSION: LEGACY_HEADER_BYTES}.get(version)
    if size is None or len(blob) < size + TAG_BYTES:
        raise InvalidCiphertextException(_INVALID)
    offset = len(MAGIC) + 1
    key_id = str(uuid.UUID(bytes=blob[offset : offset + 16]))
    material_version = 0
    if version == VERSION:
        field = blob[offset + 16 : offset + 16 + MATERIAL_VERSION_BYTES]
        material_version = int.from_bytes(field, "big")
    return BlobHeader(key_id, material_version, blob[size - NONCE_BYTES : size], size)


def blob_key_id(blob: bytes) -> str:
    """The key id (UUID string) a blob names. Raises InvalidCiphertextException if not ours."""
    return read_header(blob).key_id


def seal(
    material: bytes,
    key_id: str,
    plaintext: bytes,
    context: dict[str, str] | None,
    material_version: int = 0,
) -> bytes:
    nonce = os.urandom(NONCE_BYTES)
    header = (
        MAGIC
        + bytes([VERSION])
        + uuid.UUID(key_id).bytes
        + material_version.to_bytes(MATERIAL_VERSION_BYTES, "big")
        + nonce
    )
    body = AESGCM(material).encrypt(nonce, plaintext, header + canonical_context(context))
    return header + body


def open_blob(material: bytes, blob: bytes, context: dict[str, str] | None) -> bytes:
    """Decrypt a blob made by `seal`. Raises InvalidCiphertextException on any mismatch."""
    header = read_header(blob)
    aad = blob[: header.size] + canonical_context(context)
    try:
        return AESGCM(material).decrypt(header.nonce, blob[header.size :], aad)
    except InvalidTag:
        raise InvalidCiphertextException(_INVALID) from None
