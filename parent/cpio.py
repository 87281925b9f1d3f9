"""Deterministic cpio "newc" archives: the format of Linux initramfs images and EIF ramdisks.

An archive is a function of its entries alone: entries are written sorted by path (so a directory
precedes what it holds, as the kernel's unpacker needs), owners are root, every mtime is the one
given (SOURCE_DATE_EPOCH), inode numbers count from 1 in that order, and no entry is a hard link.
Each entry is a 110-byte ASCII header (`070701` and thirteen 8-digit hex fields), the NUL-ended
name padded to 4 bytes, then the data padded to 4 bytes; `TRAILER!!!` ends the archive.
"""

from __future__ import annotations

import itertools
import stat
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Final

MAGIC: Final = b"070701"
TRAILER: Final = "TRAILER!!!"
HEADER_BYTES: Final = 110
MAX_FIELD: Final = 0xFFFFFFFF


class CpioError(ValueError):
    """An entry that newc cannot carry or a kernel could not unpack (bad path, size, type)."""


@dataclass(frozen=True)
class Entry:
    """One file, directory, symlink or device node. `mode` holds the type bits (stat.S_IFREG...)
    and the permissions; `data` is a file's contents or a symlink's target."""

    path: str
    mode: int
    data: bytes = b""
    rdev_major: int = 0
    rdev_minor: int = 0

    @classmethod
    def directory(cls, path: str, perm: int = 0o755) -> Entry:
        return cls(path, stat.S_IFDIR | perm)

    @classmethod
    def file(cls, path: str, data: bytes, perm: int = 0o644) -> Entry:
        return cls(path, stat.S_IFREG | perm, data)

    @classmethod
    def symlink(cls, path: str, target: str) -> Entry:
        return cls(path, stat.S_IFLNK | 0o777, target.encode())

    @classmethod
    def char_device(cls, path: str, major: int, minor: int, perm: int = 0o600) -> Entry:
        return cls(path, stat.S_IFCHR | perm, b"", major, minor)


def _check(entry: Entry) -> None:
    parts = entry.path.split("/")
    if not entry.path or entry.path.startswith("/") or any(p in ("", ".", "..") for p in parts):
        raise CpioError(f"entry path {entry.path!r} is not a relative normalised path")
    kind = stat.S_IFMT(entry.mode)
    if kind not in (stat.S_IFREG, stat.S_IFDIR, stat.S_IFLNK, stat.S_IFCHR, stat.S_IFBLK):
        raise CpioError(f"{entry.path}: file type {kind:#o} is not supported")
    if kind in (stat.S_IFDIR, stat.S_IFCHR, stat.S_IFBLK) and entry.data:
        raise CpioError(f"{entry.path}: only files and symlinks carry data")
    if len(entry.data) > MAX_FIELD:
        raise CpioError(f"{entry.path}: {len(entry.data)} bytes exceed newc's 4 GiB limit")


def _pad(length: int) -> bytes:
    return b"\0" * (-length % 4)


def _header(ino: int, entry: Entry, mtime: int, name: bytes) -> bytes:
    nlink = 2 if stat.S_ISDIR(entry.mode) else 1
    fields = (ino, entry.mode, 0, 0, nlink, mtime, len(entry.data), 0, 0,
              entry.rdev_major, entry.rdev_minor, len(name) + 1, 0)  # fmt: skip
    return MAGIC + b"".join(b"%08X" % f for f in fields)


def iter_cpio(entries: Iterable[Entry], mtime: int) -> Iterator[bytes]:
    """The archive in chunks. Raises CpioError for a bad entry or a path given twice."""
    if not 0 <= mtime <= MAX_FIELD:
        raise CpioError(f"mtime {mtime} does not fit newc's 32-bit field")
    ordered = sorted(entries, key=lambda e: e.path.encode())
    for previous, current in itertools.pairwise(ordered):
        if previous.path == current.path:
            raise CpioError(f"{current.path} is in the archive twice")
    trailer = Entry(TRAILER, 0)
    for ino, entry in enumerate(ordered, 1):
        _check(entry)
        name = entry.path.encode()
        header = _header(ino, entry, mtime, name)
        yield header + name + b"\0" + _pad(HEADER_BYTES + len(name) + 1)
        yield entry.data + _pad(len(entry.data))
    name = TRAILER.encode()
    yield _header(0, trailer, 0, name) + name + b"\0" + _pad(HEADER_BYTES + len(name) + 1)


def cpio_archive(entries: Iterable[Entry], mtime: int) -> bytes:
    """The whole archive as bytes (see iter_cpio)."""
    return b"".join(iter_cpio(entries, mtime))
