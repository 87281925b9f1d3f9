"""The VM's boot files and helpers without booting: the EIF taken apart for QEMU, the heartbeat
answer, the toolchain's guards."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest
from nitrokms.parent.eif import build_eif, measurements, read_eif
from nitrokms.sim.vm import toolchain
from nitrokms.sim.vm.bootimage import ImageError, load_eif
from nitrokms.sim.vm.heartbeat import HeartbeatListener
from nitrokms.sim.vm.toolchain import Toolchain, ToolchainError


def test_the_eif_parts_are_what_boots(tmp_path: Path) -> None:
    kernel, cmdline = b"bzImage" * 300, b"console=ttyS0 nitrokms.parent_cid=2"
    ramdisks = [b"bootstrap" * 100, b"app" * 1000]
    eif_path = tmp_path / "enclave.eif"
    eif_path.write_bytes(build_eif(kernel, cmdline, ramdisks))
    image = load_eif(eif_path, tmp_path / "boot")
    assert image.kernel.read_bytes() == kernel
    assert image.cmdline == cmdline.decode()
    assert image.initrd.read_bytes() == b"".join(ramdisks)
    expected = measurements(read_eif(eif_path.read_bytes()))
    assert image.measurements == {i: v.hex() for i, v in expected.items()}
    assert image.eif == eif_path


def test_a_corrupt_eif_is_refused(tmp_path: Path) -> None:
    eif_path = tmp_path / "enclave.eif"
    data = bytearray(build_eif(b"k" * 100, b"c", [b"r" * 100]))
    data[-1] ^= 1
    eif_path.write_bytes(bytes(data))
    with pytest.raises(ImageError, match=r"enclave\.eif: .*CRC"):
        load_eif(eif_path, tmp_path / "boot")
    with pytest.raises(ImageError):
        load_eif(tmp_path / "absent.eif", tmp_path / "boot")


def test_the_heartbeat_is_echoed(tmp_path: Path) -> None:
    listener = HeartbeatListener(tmp_path / "vm.vsock_9000").start()
    try:
        for _ in range(2):
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
                sock.settimeout(5)
                sock.connect(str(tmp_path / "vm.vsock_9000"))
                sock.sendall(b"\xb7")
                assert sock.recv(1) == b"\xb7"
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(5)
            sock.connect(str(tmp_path / "vm.vsock_9000"))
            sock.sendall(b"x")  # not the heartbeat: no echo, connection closed
            assert sock.recv(1) == b""
    finally:
        listener.close()
    assert listener.answered == 2
    assert not (tmp_path / "vm.vsock_9000").exists()


@pytest.mark.parametrize("flag", ["--forward-cid", "--forward-listen=5000"])
def test_vsock_forwarding_flags_are_refused(flag: str) -> None:
    with pytest.raises(ToolchainError, match="real vsock"):
        toolchain.check_vsock_argv(["vhost-device-vsock", flag, "3"])
    tools = Toolchain(Path("/x"), Path("/x/root"))
    with pytest.raises(ToolchainError):
        tools.chroot_argv(["vhost-device-vsock", flag], [])


def test_chroot_argv_mounts_in_a_private_namespace() -> None:
    tools = Toolchain(Path("/c"), Path("/c/root"))
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


def test_a_machine_without_mmdebstrap_gets_it_from_apt_before_the_chroot_is_built(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ran: list[list[str]] = []

    def run(step: str, argv: list[str], timeout_s: float = 0, env: object = None) -> str:
        ran.append(list(argv))
        if argv[0] == "mmdebstrap":
            (tmp_path / "chroot").mkdir()
        return ""

    monkeypatch.setattr(toolchain, "_run", run)
    monkeypatch.setattr(toolchain, "debian_mirror", lambda: "http://example.invalid/debian")
    monkeypatch.setattr("shutil.which", lambda program: None)
    toolchain._mmdebstrap("toolchain", tmp_path / "chroot", "sid", ["qemu-system-x86"], "apt")
    assert [argv[0] for argv in ran] == ["apt-get", "apt-get", "mmdebstrap"]
    assert ran[0][-1] == "update"
    assert ran[1][-2:] == ["install", "mmdebstrap"]
    assert (tmp_path / "chroot.ok").exists()

    ran.clear()  # installed and stamped: nothing runs again
    toolchain._mmdebstrap("toolchain", tmp_path / "chroot", "sid", ["qemu-system-x86"], "apt")
    assert ran == []
