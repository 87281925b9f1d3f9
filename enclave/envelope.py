"""The Seal envelope: one self-contained blob that Unseal can open given only KMS access.

Byte layout (integers big-endian, text UTF-8):

    offset  size  field
    0       4     magic b"NKSE" (nitrokms sealed envelope)
    4       1     format version, 1
    5       2     K = length of KeyId in bytes (1..8192; at most 2048 characters)
    7       K     KeyId: the key ARN KMS returned when the data key was made
    .       2     B = length of CiphertextBlob (1..6144)
    .       B     CiphertextBlob: the data key encrypted under the KMS key
    .       2     N = number of encryption context pairs (0..64)
    .       ...   N times: u16 length + key, u16 length + value; keys non-empty, strictly
                  increasing by their UTF-8 bytes (one canonical encoding per context), at most
                  8192 characters in all
    .       12    AES-256-GCM nonce (random per envelope)
    .       C+16  ciphertext followed by the 16-byte GCM tag

Everything before the ciphertext (magic through nonce) is the GCM associated data, so the KeyId,
the CiphertextBlob and the encryption context are all bound to the ciphertext: swapping any byte
of the header fails decryption just like tampering with the ciphertext does. The encryption
context is the same one the data key was bound to at KMS, so Unseal can always reload the key
through attested Decrypt with the context in the header.

Parsing is strict and bounded (every length checked against the remaining bytes and the limits
before anything is sliced); any junk raises MalformedEnvelopeError. Opening with a wrong key or a
tampered envelope raises the opaque DecryptionError.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Final

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from nitrokms.enclave.errors import DecryptionError, MalformedEnvelopeError
from nitrokms.proto.keys import MAX_KEY_ID_CHARS
from nitrokms.proto.messages import (
    MAX_CIPHERTEXT_BLOB_BYTES,
    MAX_ENVELOPE_BYTES,
    MAX_SEAL_PLAINTEXT_BYTES,
)

MAGIC: Final = b"NKSE"
FORMAT_VERSION: Final = 1
NONCE_BYTES: Final = 12
TAG_BYTES: Final = 16
DATA_KEY_BYTES: Final = 32
MAX_KEY_ID_BYTES: Final = 4 * MAX_KEY_ID_CHARS
MAX_CONTEXT_PAIRS: Final = 64
MAX_CONTEXT_CHARS: Final = 8192

_U16 = struct.Struct(">H")


@dataclass(frozen=True)
class Envelope:
    key_id: str
    ciphertext_blob: bytes = field(repr=False)
    encryption_context: dict[str, str]
    nonce: bytes = field(repr=False)
    ciphertext: bytes = field(repr=False)
    header: bytes = field(repr=False)


def encode_header(
    key_id: str, ciphertext_blob: bytes, encryption_context: Mapping[str, str], nonce: bytes
) -> bytes:
    """The associated-data header. Raises MalformedEnvelopeError if a field is out of bounds."""
    parts = [MAGIC, bytes([FORMAT_VERSION])]
    parts += _sized(key_id.encode(), MAX_KEY_ID_BYTES, "KeyId")
    parts += _sized(ciphertext_blob, MAX_CIPHERTEXT_BLOB_BYTES, "CiphertextBlob")
    parts.append(_encode_context(encryption_context))
    if len(nonce) != NONCE_BYTES:
        raise MalformedEnvelopeError(f"nonce must be {NONCE_BYTES} bytes")
    parts.append(nonce)
    return b"".join(parts)


def seal(
    key: bytes | bytearray,
    plaintext: bytes,
    *,
    key_id: str,
    ciphertext_blob: bytes,
    encryption_context: Mapping[str, str] | None = None,
) -> bytes:
    """Encrypt `plaintext` under the 256-bit data key `key` into a self-contained envelope."""
    if len(key) != DATA_KEY_BYTES:
        raise ValueError(f"seal needs a {DATA_KEY_BYTES}-byte data key")
    if len(plaintext) > MAX_SEAL_PLAINTEXT_BYTES:
        raise ValueError(f"plaintext longer than {MAX_SEAL_PLAINTEXT_BYTES} bytes")
    header = encode_header(key_id, ciphertext_blob, encryption_context or {}, os.urandom(12))
    return header + AESGCM(key).encrypt(header[-NONCE_BYTES:], plaintext, header)


def open_envelope(envelope: Envelope, key: bytes | bytearray) -> bytes:
    """Decrypt and authenticate. Raises DecryptionError on a wrong key or any tampering."""
    if len(key) != DATA_KEY_BYTES:
        raise DecryptionError()
    try:
        return AESGCM(key).decrypt(envelope.nonce, envelope.ciphertext, envelope.header)
    except InvalidTag:
        raise DecryptionError() from None


def parse(data: bytes) -> Envelope:
    """Split an envelope into its fields. Raises MalformedEnvelopeError on any junk."""
    if len(data) > MAX_ENVELOPE_BYTES:
        raise MalformedEnvelopeError(f"envelope larger than {MAX_ENVELOPE_BYTES} bytes")
    reader = _Reader(data)
    if reader.take(len(MAGIC), "magic") != MAGIC:
        raise MalformedEnvelopeError("not a nitrokms envelope (bad magic)")
    version = reader.take(1, "format version")[0]
    if version != FORMAT_VERSION:
        raise MalformedEnvelopeError(f"unsupported envelope format version {version}")
    key_id = _text(reader.sized(MAX_KEY_ID_BYTES, "KeyId"), "KeyId")
    if len(key_id) > MAX_KEY_ID_CHARS:
        raise MalformedEnvelopeError("KeyId too long")
    blob = reader.sized(MAX_CIPHERTEXT_BLOB_BYTES, "CiphertextBlob")
    context = _decode_context(reader)
    nonce = reader.take(NONCE_BYTES, "nonce")
    header_end = reader.offset
    ciphertext = data[header_end:]
    if len(ciphertext) < TAG_BYTES:
        raise MalformedEnvelopeError("envelope truncated: no room for the authentication tag")
    return Envelope(key_id, blob, context, nonce, bytes(ciphertext), bytes(data[:header_end]))


class _Reader:
    def __init__(self, data: bytes) -> None:
        self.data = data
        self.offset = 0

    def take(self, count: int, what: str) -> bytes:
        end = self.offset + count
        if end > len(self.data):
            raise MalformedEnvelopeError(f"envelope truncated in {what}")
        chunk = self.data[self.offset : end]
        self.offset = end
        return bytes(chunk)

    def u16(self, what: str) -> int:
        value: int = _U16.unpack(self.take(2, what))[0]
        return value

    def sized(self, limit: int, what: str, *, min_bytes: int = 1) -> bytes:
        length = self.u16(f"{what} length")
        if not min_bytes <= length <= limit:
            raise MalformedEnvelopeError(f"{what} length {length} outside {min_bytes}..{limit}")
        return self.take(length, what)


def _text(raw: bytes, what: str) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        raise MalformedEnvelopeError(f"{what} is not UTF-8") from None


def _sized(raw: bytes, limit: int, what: str, *, min_bytes: int = 1) -> list[bytes]:
    if not min_bytes <= len(raw) <= limit:
        raise MalformedEnvelopeError(f"{what} length {len(raw)} outside {min_bytes}..{limit}")
    return [_U16.pack(len(raw)), raw]


def _encode_context(context: Mapping[str, str]) -> bytes:
    if len(context) > MAX_CONTEXT_PAIRS:
        raise MalformedEnvelopeError(f"encryption context has more than {MAX_CONTEXT_PAIRS} pairs")
    if sum(len(k) + len(v) for k, v in context.items()) > MAX_CONTEXT_CHARS:
        raise MalformedEnvelopeError("encryption context too large")
    pairs = sorted((k.encode(), v.encode()) for k, v in context.items())
    parts = [_U16.pack(len(pairs))]
    for key, value in pairs:
        parts += _sized(key, 0xFFFF, "context key")
        parts += _sized(value, 0xFFFF, "context value", min_bytes=0)
    return b"".join(parts)


def _decode_context(reader: _Reader) -> dict[str, str]:
    count = reader.u16("context pair count")
    if count > MAX_CONTEXT_PAIRS:
        raise MalformedEnvelopeError(f"{count} context pairs; at most {MAX_CONTEXT_PAIRS}")
    context: dict[str, str] = {}
    previous: bytes | None = None
    chars = 0
    for _ in range(count):
        raw_key = reader.sized(0xFFFF, "context key")
        raw_value = reader.sized(0xFFFF, "context value", min_bytes=0)
        if previous is not None and raw_key <= previous:
            raise MalformedEnvelopeError("context keys are not in strictly increasing order")
        previous = raw_key
        key, value = _text(raw_key, "context key"), _text(raw_value, "context value")
        chars += len(key) + len(value)
        if chars > MAX_CONTEXT_CHARS:
            raise MalformedEnvelopeError("encryption context too large")
        context[key] = value
    return context
