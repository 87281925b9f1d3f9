"""EIF v4: the writer checked against facts recomputed here (header read field by field as QEMU's
hw/core/eif.c reads it, zlib CRC-32, SHA-384 extends), the reader against corruption and arbitrary
bytes, and `nitrokms eif build|describe` with `nitrokms policy` as a user runs them."""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import json
import os
import struct
import subprocess
import sys
import zlib
from pathlib import Path
from typing import Any

import cbor2
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from hypothesis import given, settings
from hypothesis import strategies as st
from nitrokms.parent.eif import EIFError, build_eif, describe, metadata, read_eif

ZERO = bytes(48)
AWS_CMDLINE = (
    "reboot=k panic=30 pci=off nomodules console=ttyS0 i8042.noaux i8042.nomux i8042.nopnp "
    "i8042.dumbkbd random.trust_cpu=on"
)


def pcr(*parts: bytes) -> str:
    return hashlib.sha384(ZERO + hashlib.sha384(b"".join(parts)).digest()).hexdigest()


def qemu_header(data: bytes) -> dict[str, Any]:
    """The header as QEMU reads it: fixed offsets, big-endian, 548 bytes."""
    assert data[:4] == b".eif"
    version, flags = struct.unpack_from(">HH", data, 4)
    memory, cpus = struct.unpack_from(">QQ", data, 8)
    reserved, count = struct.unpack_from(">HH", data, 24)
    offsets = struct.unpack_from(">32Q", data, 28)
    sizes = struct.unpack_from(">32Q", data, 28 + 256)
    unused, crc = struct.unpack_from(">II", data, 540)
    return {"version": version, "flags": flags, "memory": memory, "cpus": cpus,
            "reserved": reserved, "count": count, "offsets": offsets, "sizes": sizes,
            "unused": unused, "crc": crc}  # fmt: skip


def qemu_sections(data: bytes, header: dict[str, Any]) -> list[tuple[int, bytes]]:
    """(type, data) per section, checking what QEMU checks (flags 0, sizes agree), and the CRC."""
    crc = zlib.crc32(data[:544])
    found = []
    for i in range(header["count"]):
        offset = header["offsets"][i]
        kind, flags, size = struct.unpack_from(">HHQ", data, offset)
        assert flags == 0
        assert size == header["sizes"][i]
        body = data[offset + 12 : offset + 12 + size]
        assert len(body) == size
        crc = zlib.crc32(data[offset : offset + 12 + size], crc)
        found.append((kind, body))
    assert crc == header["crc"]
    return found


@pytest.fixture(scope="module")
def parts() -> dict[str, Any]:
    rng = __import__("random").Random(7)
    return {
        "kernel": rng.randbytes(200_003),
        "cmdline": AWS_CMDLINE.encode(),
        "bootstrap": rng.randbytes(10_001),
        "app": rng.randbytes(30_002),
    }


@pytest.fixture(scope="module")
def image(parts: dict[str, Any]) -> bytes:
    meta = metadata(image_name="t", image_version="1", build_time=1_700_000_000,
                    kernel_version="6.12")  # fmt: skip
    return build_eif(parts["kernel"], parts["cmdline"], [parts["bootstrap"], parts["app"]],
                     metadata_json=meta)  # fmt: skip


def test_header_as_qemu_reads_it(image: bytes, parts: dict[str, Any]) -> None:
    header = qemu_header(image)
    assert (header["version"], header["flags"], header["reserved"], header["unused"]) == (
        4,
        0,
        0,
        0,
    )
    assert (header["memory"], header["cpus"]) == (1 << 30, 2)
    assert header["count"] == 5
    assert header["offsets"][5:] == (0,) * 27
    assert header["sizes"][5:] == (0,) * 27
    sections = qemu_sections(image, header)
    assert [kind for kind, _ in sections] == [1, 2, 5, 3, 3]  # nitro-cli's order
    assert sections[0][1] == parts["kernel"]
    assert sections[1][1] == AWS_CMDLINE.encode()  # no NUL
    assert sections[3][1] == parts["bootstrap"]
    assert sections[4][1] == parts["app"]
    # packed with no gaps, first section right after the header
    position = 548
    for i in range(5):
        assert header["offsets"][i] == position
        position += 12 + header["sizes"][i]
    assert position == len(image)


def test_metadata_is_compact_json_in_nitro_cli_order(image: bytes) -> None:
    sections = qemu_sections(image, qemu_header(image))
    raw = sections[2][1]
    assert b" " not in raw.replace(b"ImageName", b"")
    document = json.loads(raw)
    assert list(document) == ["ImageName", "ImageVersion", "BuildMetadata", "DockerInfo",
                              "CustomMetadata"]  # fmt: skip
    assert list(document["BuildMetadata"]) == ["BuildTime", "BuildTool", "BuildToolVersion",
                                               "OperatingSystem", "KernelVersion"]  # fmt: skip
    when = dt.datetime.fromisoformat(document["BuildMetadata"]["BuildTime"])
    assert when.timestamp() == 1_700_000_000


def test_measurements_recomputed_independently(image: bytes, parts: dict[str, Any]) -> None:
    info = describe(read_eif(image))
    kernel, cmdline, boot, app = (parts[k] for k in ("kernel", "cmdline", "bootstrap", "app"))
    assert info["Measurements"] == {
        "HashAlgorithm": "Sha384 { ... }",
        "PCR0": pcr(kernel, cmdline, boot, app),
        "PCR1": pcr(kernel, cmdline, boot),
        "PCR2": pcr(app),
    }
    assert info["EifVersion"] == 4
    assert info["IsSigned"] is False
    assert info["CheckCRC"] is True


def test_one_ramdisk_gives_the_extend_of_nothing_as_pcr2(parts: dict[str, Any]) -> None:
    single = build_eif(parts["kernel"], b"", [parts["bootstrap"]])
    info = describe(read_eif(single))
    assert info["Measurements"]["PCR2"] == pcr(b"")
    assert info["Measurements"]["PCR0"] == info["Measurements"]["PCR1"]
    assert "ImageName" not in info


def test_build_time_moves_bytes_but_not_pcrs(parts: dict[str, Any]) -> None:
    def built(when: int) -> bytes:
        meta = metadata(image_name="t", image_version="1", build_time=when, kernel_version="")
        return build_eif(parts["kernel"], b"x", [parts["bootstrap"]], metadata_json=meta)

    assert built(5) == built(5)
    assert built(5) != built(6)
    pcrs = [describe(read_eif(built(t)))["Measurements"] for t in (5, 6)]
    assert pcrs[0] == pcrs[1]


def signed_eif(parts: dict[str, Any]) -> tuple[bytes, bytes]:
    """An EIF with a signature section laid out by hand, as nitro-cli signs (the COSE signature
    itself is not checked by describe, only the certificate is measured)."""
    key = ec.generate_private_key(ec.SECP384R1())
    name = x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, "eif signer")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name)
        .public_key(key.public_key()).serial_number(1)
        .not_valid_before(now).not_valid_after(now + dt.timedelta(days=1))
        .sign(key, hashes.SHA384())
    )  # fmt: skip
    pem = cert.public_bytes(serialization.Encoding.PEM)
    signature = cbor2.dumps([{"signing_certificate": list(pem), "signature": list(b"\x01\x02")}])
    sections = [(1, parts["kernel"]), (2, b"c"), (3, parts["bootstrap"]), (4, signature)]
    offsets, sizes, body, position = [], [], b"", 548
    for kind, data in sections:
        offsets.append(position)
        sizes.append(len(data))
        body += struct.pack(">HHQ", kind, 0, len(data)) + data
        position += 12 + len(data)
    pad = [0] * (32 - len(sections))
    head = struct.pack(">4sHHQQHH32Q32QI", b".eif", 4, 0, 1 << 30, 2, 0, len(sections),
                       *offsets, *pad, *sizes, *pad, 0)  # fmt: skip
    crc = zlib.crc32(body, zlib.crc32(head))
    return head + struct.pack(">I", crc) + body, cert.public_bytes(serialization.Encoding.DER)


def test_signed_eif_measures_the_certificate_der_into_pcr8(parts: dict[str, Any]) -> None:
    data, der = signed_eif(parts)
    info = describe(read_eif(data))
    assert info["IsSigned"] is True
    assert info["Measurements"]["PCR8"] == pcr(der)
    assert info["Measurements"]["PCR1"] == pcr(parts["kernel"], b"c", parts["bootstrap"])


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda b: b"XEIF" + b[4:], "bad magic"),
        (lambda b: b[:300], "truncated"),
        (lambda b: b[:-1], "truncated"),
        (lambda b: b[:-5] + bytes([b[-5] ^ 1]) + b[-4:], "CRC mismatch"),
        (lambda b: b[:4] + b"\x00\x03" + b[6:], "version 3"),
        (lambda b: b[:26] + b"\x00\x21" + b[28:], "section count 33"),
        (lambda b: b[:548] + b"\x00\x09" + b[550:], "unknown type 9"),
    ],
    ids=["magic", "short-header", "short-section", "crc", "version", "count", "type"],
)
def test_corruption_is_a_typed_error(image: bytes, mutate, message: str) -> None:
    with pytest.raises(EIFError, match=message):
        read_eif(mutate(image))


def test_section_size_disagreement_is_refused(image: bytes) -> None:
    header = qemu_header(image)
    offset = header["offsets"][1]
    bad = image[: offset + 4] + struct.pack(">Q", header["sizes"][1] + 1) + image[offset + 12 :]
    with pytest.raises(EIFError, match="header says"):
        read_eif(bad)


def test_writer_refuses_what_nitro_cli_would_not_write() -> None:
    with pytest.raises(EIFError, match="at least one ramdisk"):
        build_eif(b"k", b"c", [])
    with pytest.raises(EIFError, match="NUL"):
        build_eif(b"k", b"c\0", [b"r"])
    with pytest.raises(EIFError, match="at most 32"):
        build_eif(b"k", b"c", [b"r"] * 31)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=2048))
def test_reader_on_arbitrary_bytes_parses_or_raises_eiferror(data: bytes) -> None:
    for candidate in (data, b".eif\x00\x04" + data):
        with contextlib.suppress(EIFError):
            read_eif(candidate)


@settings(max_examples=300, deadline=None)
@given(st.data())
def test_reader_on_mutated_images(data: st.DataObject) -> None:
    base = build_eif(b"kernel", b"cmd", [b"boot", b"app"], metadata_json=b"{}")
    position = data.draw(st.integers(0, len(base) - 1))
    value = data.draw(st.integers(0, 255))
    cut = data.draw(st.integers(0, len(base)))
    mutated = (base[:position] + bytes([value]) + base[position + 1 :])[:cut]
    try:
        parsed = read_eif(mutated, check_crc=data.draw(st.booleans()))
    except EIFError:
        return
    describe(parsed)  # whatever parses, describes (or raises EIFError for a bad signature)


# --- the command line ----------------------------------------------------------------------------


def nitrokms(*args: str, stdin: str | None = None, env: dict[str, str] | None = None):
    return subprocess.run(
        [sys.executable, "-m", "nitrokms.cli", *args], input=stdin, capture_output=True,
        text=True, timeout=60, check=False, env={**os.environ, **(env or {})},
    )  # fmt: skip


@pytest.fixture
def files(tmp_path: Path, parts: dict[str, Any]) -> Path:
    for name in ("kernel", "bootstrap", "app"):
        (tmp_path / name).write_bytes(parts[name])
    return tmp_path


def test_cli_build_describe_and_policy(files: Path, parts: dict[str, Any]) -> None:
    out = files / "x.eif"
    built = nitrokms("eif", "build", "--kernel", str(files / "kernel"), "--cmdline", AWS_CMDLINE,
                     "--ramdisk", str(files / "bootstrap"), "--ramdisk", str(files / "app"),
                     "--output", str(out), env={"SOURCE_DATE_EPOCH": "1700000000"})  # fmt: skip
    assert built.returncode == 0, built.stderr
    printed = json.loads(built.stdout)
    data = out.read_bytes()
    header = qemu_header(data)
    sections = qemu_sections(data, header)
    kernel, cmdline, boot, app = (sections[i][1] for i in (0, 1, 3, 4))
    assert printed["Measurements"]["PCR0"] == pcr(kernel, cmdline, boot, app)
    assert json.loads(sections[2][1])["BuildMetadata"]["BuildTime"].startswith(
        "2023-11-14T22:13:20"
    )
    described = nitrokms("eif", "describe", str(out), "--json")
    assert described.returncode == 0, described.stderr
    info = json.loads(described.stdout)
    assert info["EifVersion"] == 4
    assert info["Measurements"] == printed["Measurements"]
    policy = nitrokms("policy", "--measurements", "-", "--account", "111122223333",
                      stdin=described.stdout)  # fmt: skip
    assert policy.returncode == 0, policy.stderr
    condition = json.loads(policy.stdout)["Statement"][0]["Condition"]["StringEqualsIgnoreCase"]
    assert condition["kms:RecipientAttestation:PCR2"] == pcr(app)
    human = nitrokms("eif", "describe", str(out))
    assert f"PCR1: {pcr(kernel, cmdline, boot)}" in human.stdout.splitlines()


@pytest.mark.parametrize(
    ("content", "message"),
    [(b"", "empty"), (b"garbage", "truncated"), (b"\0" * 600, "bad magic")],
)
def test_cli_describe_refuses_a_corrupt_file_in_one_line(tmp_path: Path, content, message) -> None:
    path = tmp_path / "bad.eif"
    path.write_bytes(content)
    result = nitrokms("eif", "describe", str(path), "--json")
    assert result.returncode == 1
    assert result.stdout == ""
    (line,) = result.stderr.splitlines()
    assert message in line


def test_cli_describe_refuses_a_bad_crc(image: bytes, tmp_path: Path) -> None:
    path = tmp_path / "x.eif"
    path.write_bytes(image[:-1] + bytes([image[-1] ^ 0xFF]))
    result = nitrokms("eif", "describe", str(path))
    assert result.returncode == 1
    (line,) = result.stderr.splitlines()
    assert "CRC mismatch" in line


def test_cli_missing_inputs_are_usage_errors(tmp_path: Path) -> None:
    result = nitrokms("eif", "describe", str(tmp_path / "none.eif"))
    assert result.returncode == 2
    assert len(result.stderr.splitlines()) == 1
    result = nitrokms("eif", "build", "--kernel", str(tmp_path / "k"), "--cmdline", "x",
                      "--ramdisk", str(tmp_path / "r"), "--output",
                      str(tmp_path / "o"))  # fmt: skip
    assert result.returncode == 2
    assert "cannot read kernel" in result.stderr
    assert not (tmp_path / "o").exists()
