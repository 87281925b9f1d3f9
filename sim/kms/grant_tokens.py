"""Grant tokens: opaque strings that name a grant, authenticated with the store's token key.

Layout before unpadded base64url: version 0x01 (1) | grant id, the 64-hex GrantId as bytes (32) |
nonce (16) | HMAC-SHA256(token key, everything before it) (32). The nonce makes every token unique
(KMS hands out a new token on each CreateGrant, even when a repeated Name returns an existing
grant) while every token of one grant names that grant. Anything else, including a token made
by another store, is InvalidGrantTokenException. Pure functions over strings and bytes.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import os

from nitrokms.sim.kms.exceptions import InvalidGrantTokenException

TOKEN_VERSION = 1
GRANT_ID_BYTES = 32
NONCE_BYTES = 16
MAC_BYTES = 32
TOKEN_BYTES = 1 + GRANT_ID_BYTES + NONCE_BYTES + MAC_BYTES
TOKEN_CHARS = (TOKEN_BYTES * 4 + 2) // 3
_INVALID = "The grant token is invalid."


def new_grant_id() -> str:
    """A fresh GrantId: 64 lower-case hex digits, as KMS's."""
    return os.urandom(GRANT_ID_BYTES).hex()


def is_grant_id(value: str) -> bool:
    return len(value) == 2 * GRANT_ID_BYTES and all(c in "0123456789abcdef" for c in value)


def issue(token_key: bytes, grant_id: str) -> str:
    """A new token for `grant_id` (64 hex digits)."""
    body = bytes([TOKEN_VERSION]) + bytes.fromhex(grant_id) + os.urandom(NONCE_BYTES)
    token = body + hmac.new(token_key, body, hashlib.sha256).digest()
    return base64.urlsafe_b64encode(token).rstrip(b"=").decode()


def grant_id_of(token_key: bytes, token: str) -> str:
    """The GrantId a token names. Raises InvalidGrantTokenException unless this store made it."""
    if not isinstance(token, str) or len(token) != TOKEN_CHARS:
        raise InvalidGrantTokenException(_INVALID)
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
    except (binascii.Error, ValueError):
        raise InvalidGrantTokenException(_INVALID) from None
    if len(raw) != TOKEN_BYTES or raw[0] != TOKEN_VERSION:
        raise InvalidGrantTokenException(_INVALID)
    body, mac = raw[:-MAC_BYTES], raw[-MAC_BYTES:]
    if not hmac.compare_digest(hmac.new(token_key, body, hashlib.sha256).digest(), mac):
        raise InvalidGrantTokenException(_INVALID)
    return body[1 : 1 + GRANT_ID_BYTES].hex()
