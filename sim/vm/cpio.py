"""Deterministic cpio archives in the `newc` format the Linux kernel unpacks as an initramfs.

Entries are written in sorted path order with fixed owners (root), a fixed mtime and inode
numbers counted from 1, so the same tree gives the same bytes. Directories, regular files,
symbolic links and device nodes (the kernel needs `dev/console` before anything mounts /dev)
are written; sockets and fifos in a tree are refused.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

MAGIC = b"070701"
TRAILER = "TRAILER!!!"
MAX_FIELD = 0xFFFFFFFF


@dataclass(frozen=True)
class Entry:
    """One archive member: `path` relative to the archive root, no leading slash."""

    path: str
    mode: int
    data: bytes = b""
    rdev: int = 0

    def __post_init__(self) -> None:
        if not self.path or self.path.startswith("/") or ".." in self.path.split("/"):
            raise ValueError(f"cpio entry path {self.path!r} must be relative and stay inside")
        if len(self.data) > MAX_FIELD:
            raise ValueError(f"cpio entry {self.path!r} is over 4 GiB")


def _header(entry: Entry, ino: int, mtime: int) -> bytes:
    name = entry.path.encode() + b"\0"
    nlink = 2 if stat.S_ISDIR(entry.mode) else 1
    major, minor = os.major(entry.rdev), os.minor(entry.rdev)
    size = len(entry.data)
    fields = (ino, entry.mode, 0, 0, nlink, mtime, size, 0, 0, major, minor, len(name), 0)
    return MAGIC + b"".join(b"%08X" % value for value in fields) + name


def _pad(length: int) -> bytes:
    return b"\0" * (-length % 4)


def write(out: BinaryIO, entries: Iterable[Entry], *, mtime: int = 0) -> int:
    """Write `entries` (sorted by path here) and the trailer; return the bytes written."""
    written = 0
    ordered = sorted(entries, key=lambda e: e.path)
    trailer = Entry(TRAILER, 0)
    for ino, entry in enumerate([*ordered, trailer], start=1):
        head = _header(entry, 0 if entry is trailer else ino, mtime)
        chunk = head + _pad(len(head)) + entry.data + _pad(len(entry.data))
        out.write(chunk)
        written += len(chunk)
    return written


def tree_entries(root: Path, prefix: str = "") -> Iterator[Entry]:
    """The entries of the directory tree at `root` (not root itself), under `prefix`.

    Modes keep their permission bits; owners and times are dropped. Raises ValueError for a
    device, socket or fifo in the tree.
    """
    for directory, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for name in sorted([*dirnames, *filenames]):
            path = Path(directory, name)
            relative = (Path(prefix) / path.relative_to(root)).as_posix()
            info = path.lstat()
            if stat.S_ISLNK(info.st_mode):
                yield Entry(relative, stat.S_IFLNK | 0o777, os.readlink(path).encode())
            elif stat.S_ISDIR(info.st_mode):
                yield Entry(relative, stat.S_IFDIR | stat.S_IMODE(info.st_mode))
            elif stat.S_ISREG(info.st_mode):
                yield Entry(relative, stat.S_IFREG | stat.S_IMODE(info.st_mode), path.read_bytes())
            elif stat.S_ISCHR(info.st_mode) or stat.S_ISBLK(info.st_mode):
                yield Entry(relative, info.st_mode, rdev=info.st_rdev)
            else:
                raise ValueError(f"{path}: a socket or fifo cannot go in an initramfs")


def directory(path: str, mode: int = 0o755) -> Entry:
    return Entry(path, stat.S_IFDIR | mode)


def file(path: str, data: bytes, mode: int = 0o644) -> Entry:
    return Entry(path, stat.S_IFREG | mode, data)
