"""Reading binary inputs given on the command line as raw bytes, base64 or hex, or `-` for stdin,
and writing `--out` files.

Every `--out` goes through `write_private`: the bytes go to a fresh file created with mode 0600
(O_EXCL, O_NOFOLLOW) beside the target, which is then renamed over FILE. So an existing regular
FILE is replaced, never written through: its old mode, its other hard links and any descriptor
someone holds on it never see the data. A symbolic link, directory, device or FIFO at FILE is
refused (exit 2), and so is a FILE whose directory cannot be written.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import os
import re
import secrets
import stat
import sys
from pathlib import Path

from nitrokms.cli import CLIError

MAX_BLOB_BYTES = 1 << 20
_HEX = re.compile(rb"\A(?:[0-9a-fA-F]{2})+\Z")
_B64 = re.compile(rb"\A[A-Za-z0-9+/_-]+={0,2}\Z")


def read_input(source: str | Path, limit: int, *, what: str = "", exit_code: int = 2) -> bytes:
    """The raw bytes of file `source` (stdin for `-`), at most `limit` of them.

    `what` names the input in messages ("key", "measurements file"). Raises CLIError (with
    `exit_code`, by default 2: unreadable input) when it cannot be read or is larger than `limit`;
    only `limit + 1` bytes are read.
    """
    label = f"{what} {source}" if what else str(source)
    try:
        if str(source) == "-":
            data = sys.stdin.buffer.read(limit + 1)
        else:
            with Path(source).open("rb") as fh:
                data = fh.read(limit + 1)
    except OSError as exc:
        raise CLIError(f"cannot read {label}: {exc.strerror or exc}", exit_code) from None
    if len(data) > limit:
        raise CLIError(f"{label}: larger than {limit} bytes", exit_code)
    return data


def write_private(path: str | Path, data: bytes) -> None:
    """Put `data` at `path` as a new file readable by the owner only (mode 0600), renamed into
    place (see the module docstring). Raises CLIError (exit 2) for a target that is not a regular
    file or cannot be written."""
    target = Path(path)
    try:
        existing = target.lstat()
    except FileNotFoundError:
        existing = None
    except OSError as exc:
        raise CLIError(f"cannot write {path}: {exc.strerror or exc}", 2) from None
    if existing is not None and not stat.S_ISREG(existing.st_mode):
        kind = "a symbolic link" if stat.S_ISLNK(existing.st_mode) else "not a regular file"
        raise CLIError(f"refusing to write {path}: it is {kind}", 2)
    temp = target.with_name(f".{target.name}.{secrets.token_hex(6)}.tmp")
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    try:
        fd = os.open(temp, flags, 0o600)
        try:
            with os.fdopen(fd, "wb") as fh:
                os.fchmod(fh.fileno(), 0o600)  # whatever the umask
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(temp, target)
        except BaseException:
            with contextlib.suppress(OSError):
                temp.unlink()
            raise
    except OSError as exc:
        raise CLIError(f"cannot write {path}: {exc.strerror or exc}", 2) from None


def read_blob(source: str) -> bytes:
    """Return the bytes held in file `source` (or stdin for `-`), decoding hex or base64 text.

    Raises CLIError when the input cannot be read or is larger than MAX_BLOB_BYTES.
    """
    return decode_text_blob(read_input(source, MAX_BLOB_BYTES))


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
