"""`nitrokms eif build|describe`: Enclave Image Format files and their measurements, without
nitro-cli. `build` prints the measurements as `nitro-cli build-enclave` does (the input of
`nitrokms policy --measurements`); `describe --json` prints what `nitro-cli describe-eif` does."""

from __future__ import annotations

import argparse
import contextlib
import json
import mmap
import os
import sys
from pathlib import Path
from typing import Any

from nitrokms import __version__
from nitrokms.cli import CLIError, examples
from nitrokms.parent.eif import (
    EIF,
    EIFError,
    build_eif,
    describe,
    measurements,
    measurements_document,
    metadata,
    read_eif,
)

MAX_PART_BYTES = 4 << 30
MAX_CMDLINE_BYTES = 4096


def register(subparsers: Any) -> None:
    build_example = (
        "nitrokms eif build --kernel vmlinuz --cmdline 'console=ttyS0' "
        "--ramdisk bootstrap.cpio --ramdisk app.cpio --output enclave.eif"
    )
    describe_example = "nitrokms eif describe out/image/enclave.eif --json"
    parser = subparsers.add_parser(
        "eif", help="build an EIF or print its measurements (PCR0/1/2[/8])",
        description="Enclave Image Format (version 4) files without nitro-cli. Exit 0 ok; 1 a "
        "corrupted EIF (bad magic, CRC or layout); 2 usage or unreadable input.",
        epilog=examples(build_example, describe_example),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )  # fmt: skip
    sub = parser.add_subparsers(dest="eif_command", required=True, metavar="COMMAND")
    build = sub.add_parser(
        "build", help="write an EIF from a kernel, a command line and ramdisks",
        epilog=examples(build_example), formatter_class=argparse.RawDescriptionHelpFormatter,
    )  # fmt: skip
    build.add_argument("--kernel", type=Path, required=True, metavar="FILE")
    build.add_argument("--cmdline", required=True, metavar="TEXT", help="kernel command line")
    build.add_argument(
        "--ramdisk", type=Path, action="append", required=True, metavar="FILE",
        help="a ramdisk (cpio); the first is the bootstrap (PCR1), the others the app (PCR2)",
    )  # fmt: skip
    build.add_argument("--output", type=Path, required=True, metavar="FILE")
    build.add_argument("--name", default="nitrokms-enclave", help="metadata ImageName")
    build.add_argument("--version", dest="image_version", default=__version__)
    build.add_argument("--kernel-version", default="", help="metadata KernelVersion")
    build.add_argument(
        "--build-time", type=int, metavar="EPOCH",
        help="metadata BuildTime in seconds (default: $SOURCE_DATE_EPOCH, else 0)",
    )  # fmt: skip
    build.add_argument("--memory-mib", type=int, default=1024, help="header default memory")
    build.add_argument("--cpus", type=int, default=2, help="header default CPU count")
    build.set_defaults(handler=_build)
    show = sub.add_parser(
        "describe", help="print an EIF's measurements and metadata",
        epilog=examples(describe_example), formatter_class=argparse.RawDescriptionHelpFormatter,
    )  # fmt: skip
    show.add_argument("eif", type=Path, metavar="FILE")
    show.add_argument("--json", action="store_true", help="nitro-cli describe-eif JSON")
    show.set_defaults(handler=_describe)


def _read_part(path: Path, what: str) -> bytes:
    try:
        with path.open("rb") as fh:
            data = fh.read(MAX_PART_BYTES + 1)
    except OSError as exc:
        raise CLIError(f"cannot read {what} {path}: {exc.strerror or exc}", 2) from None
    if len(data) > MAX_PART_BYTES:
        raise CLIError(f"{what} {path} is larger than {MAX_PART_BYTES} bytes", 2)
    return data


def _build_time(given: int | None) -> int:
    if given is not None:
        return given
    text = os.environ.get("SOURCE_DATE_EPOCH", "0")
    if not text.isdigit():
        raise CLIError(f"SOURCE_DATE_EPOCH {text[:40]!r} is not a number of seconds", 2)
    return int(text)


def _build(args: argparse.Namespace) -> int:
    cmdline = args.cmdline.encode()
    if len(cmdline) > MAX_CMDLINE_BYTES:
        raise CLIError(f"--cmdline is longer than {MAX_CMDLINE_BYTES} bytes", 2)
    kernel = _read_part(args.kernel, "kernel")
    ramdisks = [_read_part(path, "ramdisk") for path in args.ramdisk]
    meta = metadata(
        image_name=args.name, image_version=args.image_version,
        build_time=_build_time(args.build_time), kernel_version=args.kernel_version,
        build_tool_version=__version__,
    )  # fmt: skip
    try:
        image = build_eif(kernel, cmdline, ramdisks, metadata_json=meta,
                          default_memory=args.memory_mib << 20, default_cpus=args.cpus)  # fmt: skip
        pcrs = measurements(read_eif(image))
    except EIFError as exc:
        raise CLIError(str(exc), 2) from None
    _write_atomically(args.output, image)
    print(json.dumps(measurements_document(pcrs), indent=2))
    return 0


def _write_atomically(path: Path, data: bytes) -> None:
    partial = path.with_name(f".{path.name}.partial")
    try:
        partial.write_bytes(data)
        partial.replace(path)
    except OSError as exc:
        with contextlib.suppress(OSError):
            partial.unlink()
        raise CLIError(f"cannot write {path}: {exc.strerror or exc}") from None


def _describe(args: argparse.Namespace) -> int:
    try:
        with args.eif.open("rb") as fh:
            size = os.fstat(fh.fileno()).st_size
            if size == 0:
                raise CLIError(f"{args.eif}: truncated: the file is empty")
            mapped = mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ)
            try:
                info = _describe_mapped(args.eif, mapped)
            finally:
                # A failed parse may leave views into the map alive in its traceback: the map
                # is then freed with them instead of here.
                with contextlib.suppress(BufferError):
                    mapped.close()
    except OSError as exc:
        raise CLIError(f"cannot read {args.eif}: {exc.strerror or exc}", 2) from None
    if args.json:
        print(json.dumps(info, indent=2))
    else:
        _print_human(info)
    return 0


def _describe_mapped(path: Path, mapped: mmap.mmap) -> dict[str, Any]:
    try:
        eif: EIF = read_eif(mapped)
        info = describe(eif)
    except EIFError as exc:
        raise CLIError(f"{path}: {exc}") from None
    info["Sections"] = [
        {"Type": s.type.name.lower(), "Offset": s.offset, "Size": len(s)} for s in eif.sections
    ]
    info["Cmdline"] = eif.cmdline
    return info


def _print_human(info: dict[str, Any]) -> None:
    signed = "signed" if info["IsSigned"] else "unsigned (no PCR8)"
    lines = [f"EIF version {info['EifVersion']}, CRC ok, {signed}"]
    for name, value in info["Measurements"].items():
        if name.startswith("PCR"):
            lines.append(f"{name}: {value}")
    if "ImageName" in info:
        lines.append(f"image: {info['ImageName']} {info['ImageVersion']}")
        lines.append(f"built: {info['Metadata'].get('BuildTime')}")
    lines.append(f"cmdline: {info['Cmdline']}")
    lines += [f"section {s['Type']}: {s['Size']} bytes at {s['Offset']}" for s in info["Sections"]]
    sys.stdout.write("\n".join(lines) + "\n")
