"""Build the enclave image: `out/image/rootfs.tar` and `out/image/enclave.eif`, byte for byte the
same from the same inputs (`make image`; `python -m image.build --help`).

Inputs, all pinned or recorded in `manifest.json`:
- Debian bookworm: python3.11-minimal and libpython3.11-stdlib with their dependency closure,
  unpacked (no maintainer scripts); the KMS TLS roots taken by name from ca-certificates;
- the hash-locked wheels of requirements/enclave.lock (--only-binary, --require-hashes, --no-deps),
  for CPython 3.11 on manylinux x86_64;
- this checkout's nitrokms root, proto, transport and enclave packages (never parent, cli, sim or
  tests) and the settings file /etc/nitrokms/enclave.json made from the command line;
- Debian trixie's cloud kernel (bzImage and the virtio-mmio, vsock and nsm modules) and our init
  (image/init.c), compiled statically here.
Every file's owner, mode and mtime are normalised (image/tree.py) and archives are sorted, so the
host's clock, umask and file order never reach the output. Downloads are cached (--cache).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import lzma
import os
import shutil
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from nitrokms.parent.cpio import Entry, cpio_archive
from nitrokms.parent.eif import build_eif, measurements, metadata, read_eif
from nitrokms.parent.eif import measurements_document as nitro_cli_measurements

from image.debian import Apt, DebianError, Package, host_mirror
from image.tree import entries, tar_archive

REPO: Final = Path(__file__).resolve().parents[1]
PYTHON: Final = "/usr/bin/python3.11"
SITE: Final = "usr/local/lib/python3.11/dist-packages"
ROOTFS_PACKAGES: Final = ("python3.11-minimal", "libpython3.11-stdlib")
KERNEL_PACKAGE: Final = "linux-image-cloud-amd64"
MODULES: Final = ("virtio_mmio", "vsock", "vmw_vsock_virtio_transport_common",
                  "vmw_vsock_virtio_transport", "nsm")  # fmt: skip
# The roots KMS endpoints chain to: Amazon Trust Services' four roots and the Starfield root that
# cross-signs them (file names in Debian's ca-certificates, /usr/share/ca-certificates/mozilla).
KMS_ROOTS: Final = (
    "Amazon_Root_CA_1", "Amazon_Root_CA_2", "Amazon_Root_CA_3", "Amazon_Root_CA_4",
    "Starfield_Services_Root_Certificate_Authority_-_G2",
)  # fmt: skip
KMS_ROOTS_PATH: Final = "etc/nitrokms/kms-roots.pem"
SETTINGS_PATH: Final = "etc/nitrokms/enclave.json"
AWS_CMDLINE: Final = ("reboot=k panic=30 pci=off nomodules console=ttyS0 i8042.noaux i8042.nomux "
                      "i8042.nopnp i8042.dumbkbd random.trust_cpu=on")  # fmt: skip
CMD: Final = (PYTHON, "-m", "nitrokms.enclave")
ENV: Final = ("PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
              "PYTHONUNBUFFERED=1", "PYTHONDONTWRITEBYTECODE=1", "LANG=C.UTF-8")  # fmt: skip
# bookworm's glibc is 2.36: every manylinux tag up to it, newest first (pip does not expand one
# --platform into the older tags it implies).
WHEEL_PLATFORM: Final = (
    *(arg for minor in range(36, 16, -1) for arg in ("--platform", f"manylinux_2_{minor}_x86_64")),
    "--platform", "manylinux2014_x86_64", "--python-version", "3.11", "--implementation", "cp",
    "--abi", "cp311", "--abi", "abi3", "--abi", "none",
)  # fmt: skip
PRUNED: Final = ("usr/share/doc", "usr/share/man", "usr/share/info", "usr/share/locale",
                 "usr/share/lintian", "usr/share/bug", "usr/share/polkit-1", "usr/share/binfmts",
                 "var/lib/dpkg", "var/lib/apt", "var/cache", "var/log", "etc/apt",
                 "usr/lib/python3.11/ensurepip", "usr/lib/python3.11/idlelib",
                 "usr/lib/python3.11/lib2to3", "usr/lib/python3.11/pydoc_data",
                 "usr/lib/python3.11/turtledemo")  # fmt: skip
MOUNT_POINTS: Final = ("dev", "proc", "sys", "tmp", "run")


class BuildError(RuntimeError):
    """A build step failed; the message names it."""


@dataclass(frozen=True)
class Options:
    out: Path
    work: Path
    cache: Path
    epoch: int
    mirror: str
    settings: dict[str, Any]
    kms_roots: tuple[str, ...]
    bytecode: bool
    parent_cid: int
    kms_roots_pem: bytes | None = None  # replaces the named roots (a simulated KMS's CA)


def run(command: Sequence[str], **kwargs: Any) -> None:
    result = subprocess.run(list(command), capture_output=True, text=True, check=False, **kwargs)
    if result.returncode != 0:
        tail = (result.stderr or result.stdout).strip().splitlines()[-5:]
        raise BuildError(f"{command[0]} failed: " + " / ".join(tail))


def step(message: str) -> None:
    print(f"image: {message}", file=sys.stderr, flush=True)


# --- root filesystem -----------------------------------------------------------------------------


def debian_base(options: Options, staging: Path) -> list[Package]:
    apt = Apt(options.cache / "apt" / "bookworm", "bookworm", options.mirror)
    packages = apt.closure(list(ROOTFS_PACKAGES))
    for package in packages:
        apt.extract(package, staging)
    ca = apt.fetch("ca-certificates")
    unpacked = options.work / "ca-certificates"
    apt.extract(ca, unpacked)
    if options.kms_roots_pem is not None:
        target = staging / KMS_ROOTS_PATH
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(options.kms_roots_pem)
    else:
        kms_roots(unpacked / "usr/share/ca-certificates/mozilla", options.kms_roots, staging)
    for relative in PRUNED:
        shutil.rmtree(staging / relative, ignore_errors=True)
    for relative in MOUNT_POINTS:
        (staging / relative).mkdir(exist_ok=True)
    return [*packages, ca]


def kms_roots(source: Path, names: Sequence[str], staging: Path) -> None:
    """The named roots, concatenated in the given order, as the service's only TLS anchors."""
    pems = []
    for name in names:
        path = source / f"{name}.crt"
        if not path.is_file():
            raise BuildError(f"ca-certificates has no {name}.crt (KMS_ROOTS names its files)")
        pems.append(path.read_text().strip() + "\n")
    target = staging / KMS_ROOTS_PATH
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text("".join(pems))


def wheels(options: Options, staging: Path) -> list[str]:
    lock = REPO / "requirements" / "enclave.lock"
    cache = options.cache / "wheels"
    cache.mkdir(parents=True, exist_ok=True)
    common = ["--only-binary=:all:", "--no-deps", "--require-hashes", *WHEEL_PLATFORM]
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "--quiet"]
    run([*pip, "download", *common, "--dest", str(cache), "-r", str(lock)])
    target = staging / SITE
    run([*pip, "install", *common, "--no-index", "--find-links", str(cache), "--no-compile",
         "--target", str(target), "-r", str(lock)])  # fmt: skip
    shutil.rmtree(target / "bin", ignore_errors=True)
    prune_botocore(target / "botocore" / "data")
    return sorted(p.name for p in target.glob("*.dist-info"))


def prune_botocore(data: Path) -> None:
    """Keep the shared endpoint and retry data and the KMS model; the other 400-odd service
    models are never loaded by the enclave and would only cost enclave memory."""
    for child in data.iterdir():
        if child.is_dir() and child.name != "kms":
            shutil.rmtree(child)


def nitrokms_package(staging: Path, version: str) -> None:
    site = staging / SITE
    package = site / "nitrokms"
    package.mkdir(parents=True)
    for name in ("__init__.py", "py.typed"):
        shutil.copy(REPO / "nitrokms" / name, package / name)
    keep = shutil.ignore_patterns("__pycache__", "*.pyc", "ruff.toml", "README.md")
    for folder in ("proto", "transport", "enclave"):
        shutil.copytree(REPO / folder, package / folder, ignore=keep)
    info = site / f"nitrokms-{version}.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: nitrokms\nVersion: {version}\n")


def settings_file(staging: Path, settings: dict[str, Any]) -> None:
    path = staging / SETTINGS_PATH
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(settings, indent=2, sort_keys=True) + "\n")


def compile_bytecode(staging: Path) -> None:
    """Deterministic .pyc (unchecked-hash: no mtimes inside) by the image's own interpreter."""
    env = {"PYTHONHASHSEED": "0", "PATH": "/usr/bin:/bin", "LANG": "C.UTF-8"}
    run(["/usr/sbin/chroot", str(staging), PYTHON, "-m", "compileall", "-q", "-j1",
         "--invalidation-mode", "unchecked-hash", "/usr/lib/python3.11", "/" + SITE],
        env=env)  # fmt: skip


def build_rootfs(options: Options, version: str) -> tuple[Path, dict[str, Any]]:
    staging = options.work / "rootfs"
    step("Debian bookworm packages")
    debs = debian_base(options, staging)
    step("hash-locked wheels")
    dists = wheels(options, staging)
    nitrokms_package(staging, version)
    settings_file(staging, options.settings)
    smoke_test(staging)
    if options.bytecode:
        step("bytecode")
        compile_bytecode(staging)
    manifest = {
        "debian": [f"{p.name}={p.version} ({p.arch})" for p in debs],
        "wheels": dists,
        "kms_roots": (
            list(options.kms_roots)
            if options.kms_roots_pem is None
            else [f"pem sha256:{hashlib.sha256(options.kms_roots_pem).hexdigest()}"]
        ),
        "settings": options.settings,
    }
    return staging, manifest


def smoke_test(staging: Path) -> None:
    """The image's interpreter imports the service and reads the baked settings, no arguments."""
    env = {"PATH": "/usr/bin:/bin", "PYTHONDONTWRITEBYTECODE": "1"}
    result = subprocess.run(
        ["/usr/sbin/chroot", str(staging), PYTHON, "-m", "nitrokms.enclave", "--show-config"],
        capture_output=True, text=True, env=env, check=False,
    )  # fmt: skip
    if result.returncode != 0:
        raise BuildError(f"the image cannot start the service: {result.stderr.strip()[-300:]}")


# --- kernel, init, ramdisks, EIF -----------------------------------------------------------------


def kernel(options: Options) -> tuple[bytes, dict[str, bytes], Package]:
    apt = Apt(options.cache / "apt" / "trixie", "trixie", options.mirror)
    package = apt.fetch(apt.depends(KERNEL_PACKAGE))
    unpacked = options.work / "kernel"
    apt.extract(package, unpacked)
    (image,) = sorted((unpacked / "boot").glob("vmlinuz-*"))
    modules = {}
    for name in MODULES:
        found = sorted(unpacked.glob(f"**/lib/modules/*/kernel/**/{name}.ko*"))
        if len(found) != 1:
            raise BuildError(f"{package.name}: {len(found)} files for module {name}")
        data = found[0].read_bytes()
        modules[name] = lzma.decompress(data) if found[0].suffix == ".xz" else data
    return image.read_bytes(), modules, package


def compile_init(options: Options) -> bytes:
    output = options.work / "init"
    run(["gcc", "-static", "-Os", "-s", "-Wall", "-Wextra", "-Werror",
         "-o", str(output), str(REPO / "image" / "init.c")])  # fmt: skip
    return output.read_bytes()


def bootstrap_ramdisk(init: bytes, modules: dict[str, bytes], epoch: int) -> bytes:
    items = [
        Entry.directory("dev"), Entry.char_device("dev/console", 5, 1),
        Entry.directory("proc"), Entry.directory("sys"), Entry.directory("modules"),
        Entry.file("init", init, 0o755),
        Entry.file("modules.order", "".join(f"{name}\n" for name in modules).encode()),
        *(Entry.file(f"modules/{name}.ko", data) for name, data in modules.items()),
    ]  # fmt: skip
    return cpio_archive(items, epoch)


def app_ramdisk(rootfs: list[Entry], epoch: int) -> bytes:
    prefixed = [Entry(f"rootfs/{e.path}", e.mode, e.data) for e in rootfs]
    items = [
        Entry.directory("rootfs"), *prefixed,
        Entry.file("cmd", "".join(f"{word}\n" for word in CMD).encode()),
        Entry.file("env", "".join(f"{line}\n" for line in ENV).encode()),
    ]  # fmt: skip
    return cpio_archive(items, epoch)


def write(path: Path, data: bytes) -> str:
    path.write_bytes(data)
    return hashlib.sha256(data).hexdigest()


def build(options: Options) -> str:
    version = _version()
    shutil.rmtree(options.work, ignore_errors=True)
    options.work.mkdir(parents=True)
    options.out.mkdir(parents=True, exist_ok=True)
    staging, manifest = build_rootfs(options, version)
    rootfs = entries(staging)
    files = {"rootfs.tar": write(options.out / "rootfs.tar", tar_archive(rootfs, options.epoch))}
    step("kernel and init")
    bz_image, modules, kernel_package = kernel(options)
    init = compile_init(options)
    cmdline = f"{AWS_CMDLINE} nitrokms.parent_cid={options.parent_cid}"
    parts = {
        "vmlinuz": bz_image,
        "cmdline": cmdline.encode(),
        "bootstrap.cpio": bootstrap_ramdisk(init, modules, options.epoch),
        "app.cpio": app_ramdisk(rootfs, options.epoch),
    }
    for name, data in parts.items():
        files[name] = write(options.out / name, data)
    step("EIF")
    kernel_version = kernel_package.name.removeprefix("linux-image-")
    meta = metadata(image_name="nitrokms-enclave", image_version=version, build_time=options.epoch,
                    kernel_version=kernel_version, build_tool_version=version)  # fmt: skip
    eif = build_eif(bz_image, cmdline.encode(), [parts["bootstrap.cpio"], parts["app.cpio"]],
                    metadata_json=meta)  # fmt: skip
    files["enclave.eif"] = write(options.out / "enclave.eif", eif)
    pcrs = nitro_cli_measurements(measurements(read_eif(eif)))
    (options.out / "measurements.json").write_text(json.dumps(pcrs, indent=2) + "\n")
    manifest |= {
        "source_date_epoch": options.epoch,
        "kernel": f"{kernel_package.name}={kernel_package.version}",
        "cmdline": cmdline,
        "cmd": list(CMD),
        "env": list(ENV),
        "sha256": files,
        "measurements": pcrs["Measurements"],
    }
    (options.out / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    return files["enclave.eif"]


def _version() -> str:
    from importlib import metadata as importlib_metadata  # noqa: PLC0415

    return importlib_metadata.version("nitrokms")


# --- command line --------------------------------------------------------------------------------


def parse(argv: Sequence[str]) -> Options:
    parser = argparse.ArgumentParser(
        prog="python -m image.build", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--out", type=Path, default=REPO / "out" / "image")
    parser.add_argument("--work", type=Path, default=REPO / "build" / "image")
    parser.add_argument("--cache", type=Path, default=Path.home() / ".cache" / "nitrokms")
    parser.add_argument("--mirror", help="Debian archive URI (default: the host's apt mirror)")
    parser.add_argument("--region", required=True)
    parser.add_argument("--kms-endpoint", help="KMS host[:port] (default kms.REGION.amazonaws.com)")
    parser.add_argument("--parent-cid", type=int, default=3, help="3 on Nitro; 2 under a VM")
    parser.add_argument("--relay-port", type=int, default=8000)
    parser.add_argument("--listen-port", type=int, default=5000)
    parser.add_argument("--pool-size", type=int, default=2)
    parser.add_argument(
        "--setting",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="any other enclave setting (python -m nitrokms.enclave --help)",
    )
    parser.add_argument(
        "--kms-roots",
        default=" ".join(KMS_ROOTS),
        help="ca-certificates file names (without .crt) of the KMS TLS roots",
    )
    parser.add_argument(
        "--kms-roots-pem",
        type=Path,
        help="a PEM bundle to trust for KMS instead of --kms-roots (a simulated KMS's CA, as "
        "`make vm-demo` builds its image; never for a deployment)",
    )
    parser.add_argument("--no-bytecode", action="store_true", help="ship no .pyc")
    args = parser.parse_args(argv)
    epoch_text = os.environ.get("SOURCE_DATE_EPOCH", "")
    if not epoch_text.isdigit():
        parser.error("SOURCE_DATE_EPOCH must be set to seconds since the epoch")
    settings: dict[str, Any] = {
        "region": args.region,
        "parent_cid": args.parent_cid,
        "relay_port": args.relay_port,
        "listen": f"vsock://any:{args.listen_port}",
        "pool_size": args.pool_size,
        "ca_bundle": "/" + KMS_ROOTS_PATH,
    }
    if args.kms_endpoint:
        settings["kms_endpoint"] = args.kms_endpoint
    for item in args.setting:
        name, sep, value = item.partition("=")
        if not sep:
            parser.error(f"--setting {item!r} is not NAME=VALUE")
        settings[name.replace("-", "_")] = value
    return Options(
        out=args.out.resolve(), work=args.work.resolve(), cache=args.cache,
        epoch=int(epoch_text), mirror=args.mirror or host_mirror(), settings=settings,
        kms_roots=tuple(args.kms_roots.split()), bytecode=not args.no_bytecode,
        parent_cid=args.parent_cid, kms_roots_pem=_read_pem(parser, args.kms_roots_pem),
    )  # fmt: skip


def _read_pem(parser: argparse.ArgumentParser, path: Path | None) -> bytes | None:
    if path is None:
        return None
    try:
        data = path.read_bytes()
    except OSError as exc:
        parser.error(f"--kms-roots-pem {path}: {exc.strerror or exc}")
    if b"-----BEGIN CERTIFICATE-----" not in data:
        parser.error(f"--kms-roots-pem {path} holds no PEM certificate")
    return data


def main(argv: Sequence[str] | None = None) -> int:
    os.umask(0o022)
    options = parse(sys.argv[1:] if argv is None else argv)
    try:
        digest = build(options)
    except (BuildError, DebianError, OSError, ValueError) as exc:
        print(f"image: {exc}", file=sys.stderr)
        return 1
    print(f"sha256:{digest}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
