"""What the VM boots: the kernel, command line and ramdisks of an enclave image's EIF, taken out
with the project's own EIF reader (`nitrokms.parent.eif`), so the bytes that boot are the bytes
that were measured. QEMU takes one initrd, so the ramdisks boot concatenated, in order (the
kernel unpacks each archive in turn); the measurements are the EIF's own.

`ImageBuild` makes that EIF as `make image` does (`python -m image.build`, from the checkout the
package runs from) with the settings a VM needs: parent CID 2 (the host, as vhost-device-vsock's
guest sees it) and, as the only KMS trust anchor, the local KMS's CA, since the guest's TLS to KMS
ends in the guest and is verified there. Everything else is the production build. `PrebuiltEif`
boots an EIF given as a file, as it is.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Final, Protocol

from nitrokms.parent.eif import EIFError, SectionType, measurements, read_eif
from nitrokms.sim.vm.machine import BootImage

VM_PARENT_CID: Final = 2
BUILD_TIMEOUT_S: Final = 900.0
DEFAULT_EPOCH: Final = "1700000000"


class ImageError(RuntimeError):
    """The image could not be built or read; the message says why."""


class BootSource(Protocol):
    def build(self, out_dir: Path, region: str, kms_ca: Path) -> BootImage:
        """Write what boots into `out_dir`. Raises ImageError."""
        ...


def load_eif(eif_path: Path, out_dir: Path) -> BootImage:
    """The EIF's kernel and concatenated ramdisks as files in `out_dir`, with its command line
    and measurements. Raises ImageError for a file the EIF reader refuses."""
    try:
        eif = read_eif(eif_path.read_bytes())
    except (OSError, EIFError) as exc:
        raise ImageError(f"{eif_path}: {exc}") from None
    out_dir.mkdir(parents=True, exist_ok=True)
    kernel, initrd = out_dir / "vmlinuz", out_dir / "initrd.cpio"
    kernel.write_bytes(bytes(eif.kernel.data))
    with initrd.open("wb") as out:
        for ramdisk in eif.ramdisks:
            out.write(ramdisk.data)
    cmdline = bytes(eif.of_type(SectionType.CMDLINE)[0].data).decode()
    pcrs = {index: value.hex() for index, value in measurements(eif).items()}
    return BootImage(kernel, cmdline, initrd, pcrs, eif_path)


class PrebuiltEif:
    """An EIF built elsewhere (`make image PARENT_CID=2 ...`), booted as it is."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def build(self, out_dir: Path, region: str, kms_ca: Path) -> BootImage:
        return load_eif(self.path, out_dir)


def checkout() -> Path | None:
    """The source checkout the `nitrokms` package was loaded from, when it has image/build.py."""
    import nitrokms  # noqa: PLC0415

    root = Path(nitrokms.__file__).resolve().parent.parent
    return root if (root / "image" / "build.py").is_file() else None


class ImageBuild:
    """The enclave image, built by image/build.py with the VM's settings."""

    def __init__(self, repo: Path) -> None:
        self.repo = repo
        self.seconds = 0.0

    def build(self, out_dir: Path, region: str, kms_ca: Path) -> BootImage:
        out_dir.mkdir(parents=True, exist_ok=True)
        work = out_dir / "build"
        argv = [
            sys.executable, "-m", "image.build", "--region", region,
            "--parent-cid", str(VM_PARENT_CID), "--kms-roots-pem", str(kms_ca),
            "--out", str(out_dir / "image"), "--work", str(work),
        ]  # fmt: skip
        env = dict(os.environ, SOURCE_DATE_EPOCH=os.environ.get("SOURCE_DATE_EPOCH", DEFAULT_EPOCH))
        started = time.monotonic()
        try:
            result = subprocess.run(
                argv, cwd=self.repo, env=env, capture_output=True, text=True,
                timeout=BUILD_TIMEOUT_S, check=False,
            )  # fmt: skip
        except subprocess.TimeoutExpired:
            raise ImageError(f"image build still running after {BUILD_TIMEOUT_S:g} s") from None
        self.seconds = time.monotonic() - started
        (out_dir / "image-build.log").write_text(result.stderr)
        if result.returncode != 0:
            raise ImageError(f"image build failed: {result.stderr.strip()[-600:]}")
        shutil.rmtree(work, ignore_errors=True)  # the staging tree; out_dir/image keeps the EIF
        return load_eif(out_dir / "image" / "enclave.eif", out_dir / "boot")
