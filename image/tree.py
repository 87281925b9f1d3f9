"""A staged directory tree as normalised archive entries, and the deterministic tar of them.

Normalisation makes the archive a function of the files' contents and names alone: owners root,
every mtime SOURCE_DATE_EPOCH, directories 0755, files 0755 when any execute bit is set and 0644
otherwise (no setuid, setgid or sticky bits), symlinks kept as links, hard links written as
separate files; entries sorted by path. Other file types (sockets, fifos, devices) are refused.
"""

from __future__ import annotations

import io
import os
import stat
import tarfile
from collections.abc import Iterable
from pathlib import Path

from nitrokms.parent.cpio import Entry


class TreeError(ValueError):
    """The staged tree holds something an image must not (a device, a socket, a fifo)."""


def normalised_mode(mode: int) -> int:
    if stat.S_ISDIR(mode):
        return stat.S_IFDIR | 0o755
    if stat.S_ISLNK(mode):
        return stat.S_IFLNK | 0o777
    return stat.S_IFREG | (0o755 if mode & 0o111 else 0o644)


def entries(root: Path, prefix: str = "") -> list[Entry]:
    """Every file, directory and symlink under `root` (not `root` itself), paths prefixed with
    `prefix` + "/" when given, sorted."""
    found: list[Entry] = [Entry.directory(prefix)] if prefix else []
    for current, dirs, files in os.walk(root):
        dirs.sort()
        base = Path(current)
        for name in [*dirs, *sorted(files)]:
            path = base / name
            relative = path.relative_to(root).as_posix()
            found.append(_entry(path, f"{prefix}/{relative}" if prefix else relative))
    return sorted(found, key=lambda e: e.path.encode())


def _entry(path: Path, name: str) -> Entry:
    info = path.lstat()
    mode = info.st_mode
    if stat.S_ISLNK(mode):
        return Entry.symlink(name, os.readlink(path))
    if stat.S_ISDIR(mode):
        return Entry.directory(name)
    if stat.S_ISREG(mode):
        return Entry(name, normalised_mode(mode), path.read_bytes())
    raise TreeError(f"{name}: not a file, directory or symlink (mode {mode:#o})")


def tar_archive(items: Iterable[Entry], mtime: int) -> bytes:
    """A GNU tar of `items` (sorted by path) with root owners and the given mtime."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.GNU_FORMAT) as tar:
        for item in sorted(items, key=lambda e: e.path.encode()):
            info = tarfile.TarInfo(item.path)
            info.mode = stat.S_IMODE(item.mode)
            info.mtime = mtime
            info.uid = info.gid = 0
            info.uname = info.gname = "root"
            if stat.S_ISDIR(item.mode):
                info.type = tarfile.DIRTYPE
                tar.addfile(info)
            elif stat.S_ISLNK(item.mode):
                info.type = tarfile.SYMTYPE
                info.linkname = item.data.decode()
                tar.addfile(info)
            else:
                info.size = len(item.data)
                tar.addfile(info, io.BytesIO(item.data))
    return buffer.getvalue()
