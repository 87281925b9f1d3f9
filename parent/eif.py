"""Enclave Image Format (EIF) version 4: a writer and a reader, pure functions over bytes.

Layout (all integers big-endian; spec vm-facts "EIF, version 4"): a 548-byte header (magic `.eif`,
version, flags, default memory and CPUs, section count, 32 section offsets, 32 section sizes, an
unused word and a CRC-32), then the sections, each a 12-byte header (type, flags, size) and its
data. The CRC is zlib's CRC-32 over the header's first 544 bytes continued over every section
header and its data in file order. The writer lays sections out as nitro-cli does: kernel,
cmdline, metadata, the ramdisks (bootstrap first), packed with no gaps.

Measurements (PCRs) are TPM-style extends of a zero register with the SHA-384 of a stream:
PCR0 = kernel || cmdline || every ramdisk, PCR1 = kernel || cmdline || first ramdisk, PCR2 = the
other ramdisks, PCR8 (signed EIFs only) = the DER of the signing certificate. Section headers and
the metadata are not measured, so the metadata's build time does not move a PCR.

The reader takes any buffer (bytes, or an mmap of a multi-gigabyte file: nothing is copied but the
signature section) and checks every bound before it reads; anything malformed is EIFError.
"""

from __future__ import annotations

import hashlib
import json
import mmap
import struct
import zlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import IntEnum
from typing import Any, Final, TypeAlias

import cbor2
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

Buffer: TypeAlias = bytes | bytearray | memoryview | mmap.mmap

EIF_MAGIC: Final = b".eif"
EIF_VERSION: Final = 4
MAX_SECTIONS: Final = 32
HEADER = struct.Struct(">4sHHQQHH32Q32QII")
SECTION_HEADER = struct.Struct(">HHQ")
HEADER_BYTES: Final = HEADER.size  # 548
CRC_COVERED_HEADER_BYTES: Final = HEADER_BYTES - 4
ARCH_X86_64: Final = 0
ARCH_AARCH64: Final = 1
DEFAULT_MEMORY_BYTES: Final = 1 << 30
DEFAULT_CPUS: Final = 2
PCR_BYTES: Final = 48
HASH_ALGORITHM: Final = "Sha384 { ... }"
MAX_SIGNATURE_BYTES: Final = 64 * 1024
MAX_METADATA_BYTES: Final = 1 << 20
BUILD_TOOL: Final = "nitrokms"


class SectionType(IntEnum):
    KERNEL = 1
    CMDLINE = 2
    RAMDISK = 3
    SIGNATURE = 4
    METADATA = 5


class EIFError(ValueError):
    """Not a well-formed EIF, or not one this reader accepts; the message says why."""


@dataclass(frozen=True)
class Section:
    type: SectionType
    data: Buffer
    offset: int = 0

    def __len__(self) -> int:
        return memoryview(self.data).nbytes


@dataclass(frozen=True)
class EIF:
    """A parsed EIF. `crc_ok` is False only when a reader was asked not to insist on it."""

    version: int
    flags: int
    default_memory: int
    default_cpus: int
    sections: tuple[Section, ...]
    crc32: int
    crc_ok: bool = True

    def of_type(self, kind: SectionType) -> list[Section]:
        return [s for s in self.sections if s.type == kind]

    @property
    def kernel(self) -> Section:
        return self.of_type(SectionType.KERNEL)[0]

    @property
    def cmdline(self) -> str:
        return bytes(self.of_type(SectionType.CMDLINE)[0].data).decode("utf-8", "replace")

    @property
    def ramdisks(self) -> list[Section]:
        return self.of_type(SectionType.RAMDISK)

    @property
    def metadata(self) -> dict[str, Any] | None:
        """The metadata section's JSON object, or None when there is none or it is not JSON."""
        found = self.of_type(SectionType.METADATA)
        if not found or len(found[0]) > MAX_METADATA_BYTES:
            return None
        try:
            value = json.loads(bytes(found[0].data))
        except (ValueError, UnicodeDecodeError):
            return None
        return value if isinstance(value, dict) else None

    @property
    def signature(self) -> Section | None:
        found = self.of_type(SectionType.SIGNATURE)
        return found[0] if found else None


# --- measurements --------------------------------------------------------------------------------


def extend(digest: bytes) -> bytes:
    """A PCR extended once from zero: SHA384(48 zero bytes || digest)."""
    return hashlib.sha384(bytes(PCR_BYTES) + digest).digest()


def _stream_digest(parts: Iterable[Buffer]) -> bytes:
    hasher = hashlib.sha384()
    for part in parts:
        hasher.update(part)
    return hasher.digest()


def measure(
    kernel: Buffer, cmdline: Buffer, ramdisks: Sequence[Buffer], certificate_der: bytes | None
) -> dict[int, bytes]:
    """PCR index -> value for an image of these parts (8 only with a signing certificate)."""
    pcrs = {
        0: extend(_stream_digest([kernel, cmdline, *ramdisks])),
        1: extend(_stream_digest([kernel, cmdline, *ramdisks[:1]])),
        2: extend(_stream_digest(ramdisks[1:])),
    }
    if certificate_der is not None:
        pcrs[8] = extend(hashlib.sha384(certificate_der).digest())
    return pcrs


def measurements(eif: EIF) -> dict[int, bytes]:
    """The image's PCRs as nitro-cli computes them. Raises EIFError for a bad signature section."""
    signature = eif.signature
    certificate = None if signature is None else signing_certificate(signature.data)
    return measure(eif.kernel.data, eif.of_type(SectionType.CMDLINE)[0].data,
                   [r.data for r in eif.ramdisks], certificate)  # fmt: skip


def measurements_document(pcrs: Mapping[int, bytes]) -> dict[str, Any]:
    """nitro-cli's `{"Measurements": {"HashAlgorithm": ..., "PCR0": hex, ...}}` (keys sorted)."""
    inner = {"HashAlgorithm": HASH_ALGORITHM} | {f"PCR{i}": v.hex() for i, v in pcrs.items()}
    return {"Measurements": dict(sorted(inner.items()))}


def signing_certificate(signature: Buffer) -> bytes:
    """The DER of the first signing certificate in a signature section (a CBOR array of maps whose
    `signing_certificate` is an array of byte-valued integers holding the PEM). Raises EIFError."""
    raw = bytes(signature)
    if len(raw) > MAX_SIGNATURE_BYTES:
        raise EIFError(f"signature section exceeds {MAX_SIGNATURE_BYTES} bytes")
    try:
        entries = cbor2.loads(raw)
    except (cbor2.CBORDecodeError, ValueError, RecursionError, MemoryError):
        raise EIFError("signature section is not CBOR") from None
    first = entries[0] if isinstance(entries, list) and entries else None
    cert = first.get("signing_certificate") if isinstance(first, dict) else None
    if not isinstance(cert, list) or not cert or not all(_is_byte(b) for b in cert):
        raise EIFError("signature section holds no signing_certificate byte array")
    try:
        text = bytes(cert)
        loaded = (
            x509.load_pem_x509_certificate(text)
            if text.lstrip().startswith(b"-----")
            else x509.load_der_x509_certificate(text)
        )
    except ValueError:
        raise EIFError("signing certificate is neither PEM nor DER X.509") from None
    return loaded.public_bytes(Encoding.DER)


def _is_byte(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= 0xFF


# --- writer --------------------------------------------------------------------------------------


def metadata(
    *,
    image_name: str,
    image_version: str,
    build_time: int,
    kernel_version: str,
    operating_system: str = "Linux",
    build_tool_version: str = "",
    custom: Mapping[str, Any] | None = None,
) -> bytes:
    """The metadata section: compact JSON in nitro-cli's key order; `build_time` in seconds since
    the epoch (SOURCE_DATE_EPOCH for a reproducible EIF), written as RFC 3339 UTC."""
    document = {
        "ImageName": image_name,
        "ImageVersion": image_version,
        "BuildMetadata": {
            "BuildTime": datetime.fromtimestamp(build_time, UTC).isoformat(),
            "BuildTool": BUILD_TOOL,
            "BuildToolVersion": build_tool_version,
            "OperatingSystem": operating_system,
            "KernelVersion": kernel_version,
        },
        "DockerInfo": {},
        "CustomMetadata": dict(custom or {}),
    }
    return json.dumps(document, separators=(",", ":")).encode()


def build_eif(
    kernel: Buffer,
    cmdline: bytes,
    ramdisks: Sequence[Buffer],
    *,
    metadata_json: bytes | None = None,
    default_memory: int = DEFAULT_MEMORY_BYTES,
    default_cpus: int = DEFAULT_CPUS,
    flags: int = ARCH_X86_64,
) -> bytes:
    """The EIF bytes (unsigned). Raises EIFError for an image nitro-cli would not accept (no
    ramdisk, too many sections, a NUL in the command line)."""
    if not ramdisks:
        raise EIFError("an EIF needs at least one ramdisk (the bootstrap)")
    if b"\0" in cmdline:
        raise EIFError("the kernel command line holds a NUL byte")
    sections: list[tuple[SectionType, Buffer]] = [
        (SectionType.KERNEL, kernel),
        (SectionType.CMDLINE, cmdline),
    ]
    if metadata_json is not None:
        sections.append((SectionType.METADATA, metadata_json))
    sections += [(SectionType.RAMDISK, r) for r in ramdisks]
    if len(sections) > MAX_SECTIONS:
        raise EIFError(f"{len(sections)} sections: an EIF holds at most {MAX_SECTIONS}")
    offsets, sizes, body = [], [], []
    position = HEADER_BYTES
    for kind, data in sections:
        size = memoryview(data).nbytes
        offsets.append(position)
        sizes.append(size)
        body += [SECTION_HEADER.pack(kind, 0, size), data]
        position += SECTION_HEADER.size + size
    pad = [0] * (MAX_SECTIONS - len(sections))
    fields = (EIF_MAGIC, EIF_VERSION, flags, default_memory, default_cpus, 0, len(sections),
              *offsets, *pad, *sizes, *pad, 0)  # fmt: skip
    head = HEADER.pack(*fields, 0)[:CRC_COVERED_HEADER_BYTES]
    crc = zlib.crc32(head)
    for part in body:
        crc = zlib.crc32(part, crc)
    return b"".join([head, struct.pack(">I", crc), *body])


# --- reader --------------------------------------------------------------------------------------


def read_eif(data: Buffer, *, check_crc: bool = True) -> EIF:
    """Parse `data` (the whole file). Raises EIFError: bad magic, unsupported version or flags, a
    section count over 32, a section outside the file or overlapping another, a section header
    that disagrees with the file header, a missing or repeated kernel or cmdline, no ramdisk, and
    (with `check_crc`) a CRC mismatch."""
    view = memoryview(data).cast("B")
    if view.nbytes < HEADER_BYTES:
        raise EIFError(
            f"truncated: {view.nbytes} bytes, shorter than the {HEADER_BYTES}-byte header"
        )
    fields = HEADER.unpack_from(view)
    magic, version, flags, memory, cpus, _reserved, count = fields[:7]
    offsets, sizes, stored_crc = fields[7:39], fields[39:71], fields[72]
    if magic != EIF_MAGIC:
        raise EIFError(f"bad magic {bytes(magic)!r}: not an EIF")
    if version != EIF_VERSION:
        raise EIFError(f"EIF version {version} is not supported (only {EIF_VERSION})")
    if flags not in (ARCH_X86_64, ARCH_AARCH64):
        raise EIFError(f"unknown EIF flags {flags:#x}")
    if count > MAX_SECTIONS:
        raise EIFError(f"section count {count} exceeds {MAX_SECTIONS}")
    crc = zlib.crc32(view[:CRC_COVERED_HEADER_BYTES])
    sections, end = [], HEADER_BYTES
    for index in range(count):
        section, crc = _read_section(
            view, index, offsets[index], sizes[index], previous_end=end, crc=crc
        )
        sections.append(section)
        end = section.offset + SECTION_HEADER.size + len(section)
    crc_ok = crc == stored_crc
    if check_crc and not crc_ok:
        raise EIFError(f"CRC mismatch: header says {stored_crc:#010x}, contents give {crc:#010x}")
    eif = EIF(version, flags, memory, cpus, tuple(sections), stored_crc, crc_ok)
    _check_section_set(eif)
    return eif


def _read_section(
    view: memoryview, index: int, offset: int, size: int, *, previous_end: int, crc: int
) -> tuple[Section, int]:
    if offset < previous_end:
        raise EIFError(f"section {index} at offset {offset} overlaps what precedes it")
    data_start = offset + SECTION_HEADER.size
    if data_start > view.nbytes or size > view.nbytes - data_start:
        raise EIFError(f"truncated: section {index} ({offset}+{size}) runs past the file end")
    kind, section_flags, own_size = SECTION_HEADER.unpack_from(view, offset)
    if own_size != size:
        raise EIFError(f"section {index}: its header says {own_size} bytes, the EIF header {size}")
    if section_flags != 0:
        raise EIFError(f"section {index}: flags {section_flags:#x} are not 0")
    try:
        section_type = SectionType(kind)
    except ValueError:
        raise EIFError(f"section {index}: unknown type {kind}") from None
    crc = zlib.crc32(view[offset:data_start], crc)
    payload = view[data_start : data_start + size]
    return Section(section_type, payload, offset), zlib.crc32(payload, crc)


def _check_section_set(eif: EIF) -> None:
    for kind in (SectionType.KERNEL, SectionType.CMDLINE):
        found = len(eif.of_type(kind))
        if found != 1:
            raise EIFError(f"{found} {kind.name.lower()} sections; an EIF has exactly one")
    if not eif.ramdisks:
        raise EIFError("no ramdisk section")
    if len(eif.of_type(SectionType.SIGNATURE)) > 1:
        raise EIFError("more than one signature section")


def describe(eif: EIF) -> dict[str, Any]:
    """nitro-cli `describe-eif` JSON: EifVersion, Measurements, IsSigned, CheckCRC and, when the
    metadata section is there, ImageName, ImageVersion and Metadata. Raises EIFError."""
    pcrs = measurements(eif)
    info: dict[str, Any] = {"EifVersion": eif.version} | measurements_document(pcrs)
    info["IsSigned"] = 8 in pcrs
    info["CheckCRC"] = eif.crc_ok
    meta = eif.metadata
    if meta is not None:
        info["ImageName"] = meta.get("ImageName")
        info["ImageVersion"] = meta.get("ImageVersion")
        build = meta.get("BuildMetadata")
        described = dict(build) if isinstance(build, dict) else {}
        described["DockerInfo"] = meta.get("DockerInfo")
        custom = meta.get("CustomMetadata")
        if isinstance(custom, dict):
            described |= custom
        info["Metadata"] = described
    return info
