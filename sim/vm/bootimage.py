"""Where the VM's boot image comes from, and its measurements.

`DevelopmentImage` is Debian's kernel with our development ramdisks (`initramfs`): a bootstrap
ramdisk that stays the same between runs, and a settings ramdisk per world (the local KMS's
endpoint and CA). The measurements are computed over exactly the bytes that boot, by the EIF
rules, so the simulated NSM reports them and the key policy pins them.
"""

from __future__ import annotations

import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Protocol

from nitrokms.sim.vm import initramfs
from nitrokms.sim.vm.machine import BootImage
from nitrokms.sim.vm.toolchain import Toolchain

KMS_CA_NAME = "kms-ca.pem"


class BootSource(Protocol):
    tools: Toolchain

    def build(self, out_dir: Path, settings: Mapping[str, str], kms_ca: bytes) -> BootImage:
        """Write what boots into `out_dir`; `settings` are NITROKMS_* values for the enclave."""
        ...


class DevelopmentImage:
    """Debian's kernel, `initramfs.CMDLINE`, the bootstrap ramdisk and a settings ramdisk."""

    def __init__(self, tools: Toolchain) -> None:
        self.tools = tools

    def build(self, out_dir: Path, settings: Mapping[str, str], kms_ca: bytes) -> BootImage:
        out_dir.mkdir(parents=True, exist_ok=True)
        kernel = out_dir / "vmlinuz"
        shutil.copyfile(self.tools.kernel, kernel)
        env = dict(settings)
        env["NITROKMS_CA_BUNDLE"] = f"/{initramfs.SETTINGS_DIR}/{KMS_CA_NAME}"
        ramdisks = [
            initramfs.archive(initramfs.bootstrap_entries(self.tools)),
            initramfs.archive(initramfs.settings_entries(env, {KMS_CA_NAME: kms_ca})),
        ]
        initrd = out_dir / "initrd.cpio"
        initrd.write_bytes(b"".join(ramdisks))
        cmdline = initramfs.CMDLINE
        pcrs = initramfs.measurements(kernel.read_bytes(), cmdline.encode(), ramdisks)
        return BootImage(kernel, cmdline, initrd, pcrs)
