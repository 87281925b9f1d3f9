"""The VM's boot files without booting: cpio archives read back by an independent newc reader,
the settings ramdisk, the measurements, and the toolchain's guards."""

from __future__ import annotations

import hashlib
import io
import os
import stat
from pathlib import Path

import pytest
from nitrokms.sim.vm import cpio, initramfs, toolchain
from nitrokms.sim.vm.toolchain import Toolchain, ToolchainError


def read_newc(data: bytes) -> list[tuple[str, int, bytes, int, int]]:
    """(name, mode, data, rdevmajor, rdevminor) of each member, as the kernel reads them."""
    members: list[tuple[str, int, bytes, int, int]] = []
    offset = 0
    while True:
        assert data[offset : offset + 6] == b"070701", f"bad magic at {offset}"
        fields = [int(data[offset + 6 + 8 * i : offset + 14 + 8 * i], 16) for i in range(13)]
        name_size, file_size = fields[11], fields[6]
        name_start = offset + 110
        name = data[name_start : name_start + name_size - 1].decode()
        assert data[name_start + name_size - 1] == 0
        body = name_start + name_size + (-(110 + name_size) % 4)
        if name == "TRAILER!!!":
            assert 0 <= len(data) - body < 4, "bytes after the trailer"
            return members
        members.append((name, fields[1], data[body : body + file_size], fields[9], fields[10]))
        offset = body + file_size + (-file_size % 4)


def test_archive_reads_back_sorted_with_fixed_metadata(tmp_path: Path) -> None:
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "script").write_bytes(b"#!/bin/sh\n")
    (tmp_path / "b" / "script").chmod(0o755)
    (tmp_path / "a.txt").write_bytes(b"x" * 5)
    (tmp_path / "link").symlink_to("a.txt")
    out = io.BytesIO()
    written = cpio.write(out, cpio.tree_entries(tmp_path, "root"))
    data = out.getvalue()
    assert written == len(data)
    assert len(data) % 4 == 0
    members = read_newc(data)
    assert [m[0] for m in members] == ["root/a.txt", "root/b", "root/b/script", "root/link"]
    by_name = {m[0]: m for m in members}
    assert by_name["root/a.txt"][2] == b"xxxxx"
    assert stat.S_IMODE(by_name["root/b/script"][1]) == 0o755
    assert stat.S_ISLNK(by_name["root/link"][1])
    assert by_name["root/link"][2] == b"a.txt"
    again = io.BytesIO()
    os.utime(tmp_path / "a.txt", (1, 1))  # times do not matter
    cpio.write(again, cpio.tree_entries(tmp_path, "root"))
    assert again.getvalue() == data
    # uid, gid and mtime fields are zero for every member
    assert data[6 + 8 * 2 : 6 + 8 * 4] == b"0" * 16


def test_device_nodes_keep_their_numbers() -> None:
    console = cpio.Entry("dev/console", stat.S_IFCHR | 0o600, rdev=os.makedev(5, 1))
    ((name, mode, _, major, minor),) = read_newc(_archive([console]))
    assert (name, stat.S_ISCHR(mode), major, minor) == ("dev/console", True, 5, 1)


def _archive(entries: list[cpio.Entry]) -> bytes:
    out = io.BytesIO()
    cpio.write(out, entries)
    return out.getvalue()


@pytest.mark.parametrize("path", ["", "/abs", "a/../../b"])
def test_entry_paths_stay_inside(path: str) -> None:
    with pytest.raises(ValueError, match="relative"):
        cpio.Entry(path, stat.S_IFREG | 0o644)


def test_fifos_are_refused(tmp_path: Path) -> None:
    os.mkfifo(tmp_path / "pipe")
    with pytest.raises(ValueError, match="socket or fifo"):
        list(cpio.tree_entries(tmp_path))


def test_settings_ramdisk_quotes_values() -> None:
    entries = initramfs.settings_entries({"B": "it's", "A": "x y"}, {"ca.pem": b"PEM"})
    members = {m[0]: m[2] for m in read_newc(initramfs.archive(entries))}
    assert members["etc/nitrokms/enclave.env"] == b"A='x y'\nB='it'\"'\"'s'\n"
    assert members["etc/nitrokms/ca.pem"] == b"PEM"


def test_measurements_follow_the_eif_rules() -> None:
    kernel, cmdline, first, second = b"K" * 1000, b"console=ttyS0", b"R1" * 50, b"R2" * 70

    def extend(data: bytes) -> str:
        return hashlib.sha384(bytes(48) + hashlib.sha384(data).digest()).hexdigest()

    pcrs = initramfs.measurements(kernel, cmdline, [first, second])
    assert pcrs == {
        0: extend(kernel + cmdline + first + second),
        1: extend(kernel + cmdline + first),
        2: extend(second),
    }


def test_the_init_loads_the_modules_in_the_documented_order() -> None:
    names = [module.rsplit("/", 1)[1] for module in initramfs.MODULES]
    assert names == [
        "virtio_mmio", "vsock", "vmw_vsock_virtio_transport_common",
        "vmw_vsock_virtio_transport", "nsm",
    ]  # fmt: skip
    assert "python3 -m nitrokms.enclave" in initramfs.INIT


@pytest.mark.parametrize("flag", ["--forward-cid", "--forward-listen=5000"])
def test_vsock_forwarding_flags_are_refused(flag: str) -> None:
    with pytest.raises(ToolchainError, match="real vsock"):
        toolchain.check_vsock_argv(["vhost-device-vsock", flag, "3"])
    tools = Toolchain(*(Path("/x"),) * 4, "v", Path("/g"), Path("/w"))
    with pytest.raises(ToolchainError):
        tools.chroot_argv(["vhost-device-vsock", flag], [])


def test_chroot_argv_mounts_in_a_private_namespace() -> None:
    tools = Toolchain(
        Path("/c"), Path("/c/root"), Path("/k"), Path("/m"), "v", Path("/g"), Path("/w")
    )
    argv = tools.chroot_argv(["qemu-system-x86_64", "-version"], [Path("/work/run")])
    assert argv[:4] == ["unshare", "-m", "--propagation", "private"]
    assert argv[-3:] == ["/c/root", "qemu-system-x86_64", "-version"]
    assert 'mount --bind "/work/run" "$root/work/run"' in argv[6]


def test_the_mirror_comes_from_the_apt_sources(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "x.sources").write_text(
        "Types: deb\nURIs: http://example.invalid/debian-security\n\n"
        "Types: deb\nURIs: http://example.invalid/debian\nSuites: bookworm\n"
    )
    monkeypatch.setattr(toolchain, "APT_SOURCES", (tmp_path / "none.list", tmp_path / "d"))
    assert toolchain.debian_mirror() == "http://example.invalid/debian"
    monkeypatch.setattr(toolchain, "APT_SOURCES", (tmp_path / "none.list",))
    with pytest.raises(ToolchainError, match="no Debian archive"):
        toolchain.debian_mirror()
