"""The development boot image: Debian's kernel with a ramdisk of our own, used until the enclave
image (`make image`, out/image/enclave.eif) exists. It is never the product: the product's init,
root filesystem and settings are the image's.

Two ramdisks, as nitro-cli lays an EIF out: the first ("bootstrap") holds the init, the kernel
modules (decompressed: busybox insmod cannot read .ko.xz) and the enclave's code and wheels over
trixie's Python; the second holds the run's settings (`etc/nitrokms/enclave.env`, the local KMS's
CA), so it changes with every world while the first stays the same. QEMU takes one initrd, so
they boot concatenated (the kernel unpacks each archive in turn); each is measured on its own,
as PCR1 and PCR2 are in an EIF.
"""

from __future__ import annotations

import hashlib
import io
import lzma
import shlex
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Final

from nitrokms.sim.vm import cpio
from nitrokms.sim.vm.toolchain import GUEST_PYTHON, Toolchain

# vm-facts.md: the load order that brings up virtio-mmio, vsock over virtio, and the NSM driver.
MODULES: Final = (
    "kernel/drivers/virtio/virtio_mmio",
    "kernel/net/vmw_vsock/vsock",
    "kernel/net/vmw_vsock/vmw_vsock_virtio_transport_common",
    "kernel/net/vmw_vsock/vmw_vsock_virtio_transport",
    "kernel/drivers/misc/nsm",
)
MODULE_DIR: Final = "usr/lib/nitrokms/modules"
SETTINGS_DIR: Final = "etc/nitrokms"
SITE: Final = f"usr/local/lib/python{GUEST_PYTHON}/dist-packages"
DROPPED_PREFIXES: Final = (
    "usr/share/doc/", "usr/share/locale/", "usr/share/man/", "usr/share/info/",
    "var/cache/", "var/lib/apt/", "var/log/",
)  # fmt: skip
BOTOCORE_KEPT_SERVICES: Final = ("kms",)
CMDLINE: Final = (
    "console=ttyS0 reboot=k panic=-1 pci=off quiet i8042.noaux i8042.nomux i8042.nopnp "
    "i8042.dumbkbd random.trust_cpu=on"
)
READY_MARK: Final = "nitrokms-vm:"

INIT: Final = """#!/bin/sh
# nitrokms development VM init (not the product's init: the enclave image brings its own).
export PATH=/usr/sbin:/usr/bin:/sbin:/bin
busybox mount -t proc proc /proc
busybox mount -t sysfs sysfs /sys
busybox mount -t devtmpfs dev /dev
for module in $(cat /{modules}/order); do
    busybox insmod "/{modules}/$module.ko" || echo "{mark} insmod $module failed"
done
echo "{mark} kernel $(busybox uname -r)"
if [ -c /dev/nsm ]; then echo "{mark} /dev/nsm present"; else echo "{mark} /dev/nsm absent"; fi
set -a
. /{settings}/enclave.env
set +a
/usr/bin/python3 -m nitrokms.enclave 2>&1
echo "{mark} enclave exited with status $?"
busybox poweroff -f
"""


def _package_entries() -> Iterator[cpio.Entry]:
    """The enclave side of the `nitrokms` package as this interpreter loaded it."""
    import nitrokms  # noqa: PLC0415 - the package's own folders, wherever they are installed
    import nitrokms.enclave  # noqa: PLC0415
    import nitrokms.proto  # noqa: PLC0415
    import nitrokms.transport  # noqa: PLC0415

    base = f"{SITE}/nitrokms"
    yield cpio.directory(base)
    for module in (nitrokms, nitrokms.enclave, nitrokms.proto, nitrokms.transport):
        sub = module.__name__.removeprefix("nitrokms").lstrip(".")
        target = f"{base}/{sub}" if sub else base
        if sub:
            yield cpio.directory(target)
        folder = Path(module.__file__ or "").parent
        if not sub:  # the root: its own files only (subpackages are chosen one by one)
            for path in sorted(p for p in folder.iterdir() if p.is_file()):
                if path.suffix in (".py", ".typed"):
                    yield cpio.file(f"{base}/{path.name}", path.read_bytes())
            continue
        yield from (e for e in cpio.tree_entries(folder, target) if not e.path.endswith(".toml"))


def _kept(path: str) -> bool:
    if path.startswith(DROPPED_PREFIXES):
        return False
    data = f"{SITE}/botocore/data/"
    if path.startswith(data):
        service = path[len(data) :].split("/", 1)
        return len(service) == 1 or service[0] in BOTOCORE_KEPT_SERVICES
    return "__pycache__" not in path


def bootstrap_entries(tools: Toolchain) -> Iterator[cpio.Entry]:
    """The first ramdisk: guest root, wheels, enclave code, modules and init."""
    for entry in cpio.tree_entries(tools.guest_root):
        if _kept(entry.path) and not entry.path.startswith(f"{SITE}/"):
            yield entry
    yield from (e for e in cpio.tree_entries(tools.wheels, SITE) if _kept(e.path))
    yield from (e for e in _package_entries() if _kept(e.path))
    yield cpio.directory("usr/lib/nitrokms")
    yield cpio.directory(MODULE_DIR)
    names = []
    for module in MODULES:
        name = module.rsplit("/", 1)[-1]
        names.append(name)
        packed = (tools.modules / f"{module}.ko.xz").read_bytes()
        yield cpio.file(f"{MODULE_DIR}/{name}.ko", lzma.decompress(packed))
    yield cpio.file(f"{MODULE_DIR}/order", ("\n".join(names) + "\n").encode())
    init = INIT.format(modules=MODULE_DIR, settings=SETTINGS_DIR, mark=READY_MARK)
    yield cpio.file("init", init.encode(), 0o755)


def settings_entries(env: Mapping[str, str], files: Mapping[str, bytes]) -> Iterator[cpio.Entry]:
    """The second ramdisk: `enclave.env` (shell-quoted NAME=VALUE lines) and extra files, all
    under etc/nitrokms."""
    yield cpio.directory("etc")
    yield cpio.directory(SETTINGS_DIR)
    lines = "".join(f"{name}={shlex.quote(value)}\n" for name, value in sorted(env.items()))
    yield cpio.file(f"{SETTINGS_DIR}/enclave.env", lines.encode())
    for name, data in sorted(files.items()):
        yield cpio.file(f"{SETTINGS_DIR}/{name}", data)


def archive(entries: Iterator[cpio.Entry]) -> bytes:
    out = io.BytesIO()
    cpio.write(out, entries)
    return out.getvalue()


def measurements(kernel: bytes, cmdline: bytes, ramdisks: list[bytes]) -> dict[int, str]:
    """PCR0/1/2 as an EIF of these sections measures (vm-facts.md): each is SHA384 of 48 zero
    bytes and the SHA384 of the measured bytes."""

    def register(*parts: bytes) -> str:
        inner = hashlib.sha384()
        for part in parts:
            inner.update(part)
        return hashlib.sha384(bytes(48) + inner.digest()).hexdigest()

    return {
        0: register(kernel, cmdline, *ramdisks),
        1: register(kernel, cmdline, ramdisks[0]),
        2: register(*ramdisks[1:]),
    }
