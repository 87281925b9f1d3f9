"""The deterministic cpio newc writer, read back by an independent reader written here from the
format's definition (the kernel's init/initramfs.c rules: 110-byte header, 4-byte alignment)."""

from __future__ import annotations

import stat
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from nitrokms.parent.cpio import CpioError, Entry, cpio_archive

FIELDS = ("ino", "mode", "uid", "gid", "nlink", "mtime", "filesize", "devmajor", "devminor",
          "rdevmajor", "rdevminor", "namesize", "check")  # fmt: skip


def read_newc(data: bytes) -> list[dict[str, Any]]:
    entries: list[dict[str, Any]] = []
    position = 0
    while True:
        assert position % 4 == 0
        assert data[position : position + 6] == b"070701"
        values: dict[str, Any] = {
            name: int(data[position + 6 + 8 * i : position + 14 + 8 * i], 16)
            for i, name in enumerate(FIELDS)
        }
        name_start = position + 110
        name = data[name_start : name_start + values["namesize"] - 1].decode()
        assert data[name_start + values["namesize"] - 1] == 0
        data_start = name_start + values["namesize"]
        data_start += -data_start % 4
        values["name"] = name
        values["data"] = data[data_start : data_start + values["filesize"]]
        position = data_start + values["filesize"]
        position += -position % 4
        if name == "TRAILER!!!":
            assert position == len(data)
            return entries
        entries.append(values)


def sample() -> list[Entry]:
    return [
        Entry.file("rootfs/usr/bin/python3.11", b"\x7fELF" + b"x" * 13, 0o755),
        Entry.directory("rootfs"),
        Entry.symlink("rootfs/bin", "usr/bin"),
        Entry.directory("rootfs/usr"),
        Entry.directory("rootfs/usr/bin"),
        Entry.char_device("dev/console", 5, 1),
        Entry.directory("dev"),
        Entry.file("cmd", b"/usr/bin/python3.11\n-m\nnitrokms.enclave\n"),
    ]


def test_round_trip_sorted_with_fixed_owners_times_and_inodes() -> None:
    entries = read_newc(cpio_archive(sample(), mtime=1_700_000_000))
    names = [e["name"] for e in entries]
    assert names == sorted(names)
    assert names.index("rootfs") < names.index("rootfs/usr") < names.index("rootfs/usr/bin")
    assert [e["ino"] for e in entries] == list(range(1, len(entries) + 1))
    assert {(e["uid"], e["gid"], e["mtime"], e["check"]) for e in entries} == {
        (0, 0, 1_700_000_000, 0)
    }
    by_name = {e["name"]: e for e in entries}
    python = by_name["rootfs/usr/bin/python3.11"]
    assert python["data"] == b"\x7fELF" + b"x" * 13
    assert python["mode"] == stat.S_IFREG | 0o755
    assert by_name["rootfs/bin"]["data"] == b"usr/bin"
    assert stat.S_ISLNK(by_name["rootfs/bin"]["mode"])
    console = by_name["dev/console"]
    assert stat.S_ISCHR(console["mode"])
    assert (console["rdevmajor"], console["rdevminor"]) == (5, 1)


def test_order_of_input_does_not_matter() -> None:
    entries = sample()
    assert cpio_archive(entries, 0) == cpio_archive(list(reversed(entries)), 0)


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        (Entry.file("/abs", b""), "relative"),
        (Entry.file("a/../b", b""), "relative"),
        (Entry.file("", b""), "relative"),
        (Entry("fifo", stat.S_IFIFO | 0o644), "not supported"),
        (Entry("d", stat.S_IFDIR | 0o755, b"x"), "carry data"),
    ],
)
def test_bad_entries_are_refused(entry: Entry, message: str) -> None:
    with pytest.raises(CpioError, match=message):
        cpio_archive([entry], 0)


def test_duplicates_are_refused() -> None:
    with pytest.raises(CpioError, match="twice"):
        cpio_archive([Entry.file("a", b"1"), Entry.file("a", b"2")], 0)


names = st.lists(st.text("abc/", min_size=1, max_size=6), max_size=8, unique=True)


@settings(max_examples=200, deadline=None)
@given(names, st.binary(max_size=9))
def test_any_valid_set_round_trips(paths: list[str], content: bytes) -> None:
    entries = [Entry.file(p, content) for p in paths]
    try:
        data = cpio_archive(entries, 7)
    except CpioError:
        return
    read = read_newc(data)
    assert [e["name"] for e in read] == sorted(paths, key=str.encode)
    assert all(e["data"] == content for e in read)
