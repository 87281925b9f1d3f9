"""Reading binary inputs given on the command line as raw bytes, base64 or hex, or `-` for stdin."""

from __future__ import annotations

import base64
import binascii
import re
import sys
from pathlib import Path

from parent.cli import CLIError

MAX_BLOB_BYTES = 1 << 20
_HEX = re.compile(rb"\A(?:[0-9a-fA-F]{2})+\Z")
_B64 = re.compile(rb"\A[A-Za-z0-9+/_-]+={0,2}\Z")


def read_blob(source: str) -> bytes:
    """Return the bytes held in file `source` (or stdin for `-`), decoding hex or base64 text.

    Raises CLIError when the input cannot be read or is larger than MAX_BLOB_BYTES.
    """
    try:
        if source == "-":
            data = sys.stdin.buffer.read(MAX_BLOB_BYTES + 1)
        else:
            with Path(source).open("rb") as fh:
                data = fh.read(MAX_BLOB_BYTES + 1)
    except OSError as exc:
        raise CLIError(f"cannot read {source}: {exc.strerror or exc}") from None
    if len(data) > MAX_BLOB_BYTES:
        raise CLIError(f"{source}: input larger than {MAX_BLOB_BYTES} bytes")
    return decode_text_blob(data)


def decode_text_blob(data: bytes) -> bytes:
    """Decode `data` if it is hex or base64 text (whitespace ignored); else return it as is."""
    text = b"".join(data.split())
    if not text:
        return data
    if _HEX.match(text):
        return bytes.fromhex(text.decode())
    if _B64.match(text) and len(text) % 4 in (0, 2, 3):
        try:
            padded = text + b"=" * (-len(text) % 4)
            if b"-" in text or b"_" in text:
                return base64.urlsafe_b64decode(padded)
            return base64.b64decode(padded, validate=True)
        except (binascii.Error, ValueError):
            return data
    return data


def parse_hex(value: str, what: str) -> bytes:
    """Parse a hex command-line value, raising CLIError naming `what` when it is not hex."""
    try:
        return bytes.fromhex(value)
    except ValueError:
        raise CLIError(f"{what} must be hex, got {value!r}", exit_code=2) from None
