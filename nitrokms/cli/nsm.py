"""`nitrokms nsm describe|pcr N|attest`: talk to whatever answers at /dev/nsm."""

from __future__ import annotations

import argparse
import binascii
import json
import os
from pathlib import Path
from typing import Any

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization

from nitrokms.cli import CLIError
from nitrokms.cli._blobs import read_input
from nitrokms.enclave.errors import EnclaveError
from nitrokms.enclave.nsm import DEFAULT_DEVICE_PATH, NSMClient, NSMDescription, PCRState

MAX_PUBLIC_KEY_FILE_BYTES = 64 * 1024


def _hex_bytes(text: str) -> bytes:
    try:
        return bytes.fromhex(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not hex: {text[:40]!r}") from None


def _pcr_index(text: str) -> int:
    try:
        value = int(text, 10)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a PCR index: {text!r}") from None
    if not 0 <= value <= 0xFFFF:
        raise argparse.ArgumentTypeError(f"PCR index out of range 0..65535: {value}")
    return value


def register(subparsers: Any) -> None:
    nsm = subparsers.add_parser("nsm", help="query the Nitro Secure Module at /dev/nsm")
    nsm.add_argument("--device", default=DEFAULT_DEVICE_PATH, help=argparse.SUPPRESS)
    sub = nsm.add_subparsers(title="nsm commands", metavar="COMMAND", required=True)

    describe = sub.add_parser("describe", help="module id, version, PCR count, locked PCRs")
    describe.add_argument("--json", action="store_true", help="print JSON")
    describe.set_defaults(handler=_describe)

    pcr = sub.add_parser("pcr", help="value and lock state of one PCR")
    pcr.add_argument("index", type=_pcr_index, metavar="N")
    pcr.add_argument("--json", action="store_true", help="print JSON")
    pcr.set_defaults(handler=_pcr)

    attest = sub.add_parser("attest", help="write a signed attestation document (raw COSE)")
    attest.add_argument("--nonce", type=_hex_bytes, metavar="HEX")
    attest.add_argument("--user-data", type=_hex_bytes, metavar="HEX")
    attest.add_argument("--public-key", type=Path, metavar="FILE", help="SPKI as DER or PEM")
    attest.add_argument("--out", type=Path, required=True, metavar="FILE")
    attest.set_defaults(handler=_attest)


def _client(args: argparse.Namespace) -> NSMClient:
    try:
        return NSMClient.open(args.device)
    except EnclaveError as exc:
        raise CLIError(exc.message) from None


def _describe_dict(desc: NSMDescription) -> dict[str, Any]:
    return {
        "module_id": desc.module_id,
        "version": f"{desc.version_major}.{desc.version_minor}.{desc.version_patch}",
        "max_pcrs": desc.max_pcrs,
        "locked_pcrs": list(desc.locked_pcrs),
        "digest": desc.digest,
    }


def _ranges(indexes: tuple[int, ...]) -> str:
    parts: list[str] = []
    for index in indexes:
        if parts and parts[-1].split("-")[-1] == str(index - 1):
            parts[-1] = f"{parts[-1].split('-')[0]}-{index}"
        else:
            parts.append(str(index))
    return ", ".join(parts) or "none"


def _describe(args: argparse.Namespace) -> int:
    with _client(args) as client:
        try:
            desc = client.describe_nsm()
        except EnclaveError as exc:
            raise CLIError(exc.message) from None
    info = _describe_dict(desc)
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    print(f"module_id:   {desc.module_id}")
    print(f"version:     {info['version']}")
    print(f"digest:      {desc.digest}")
    print(f"max_pcrs:    {desc.max_pcrs}")
    print(f"locked_pcrs: {_ranges(desc.locked_pcrs)}")
    return 0


def _pcr(args: argparse.Namespace) -> int:
    with _client(args) as client:
        try:
            state: PCRState = client.describe_pcr(args.index)
        except EnclaveError as exc:
            raise CLIError(f"PCR {args.index}: {exc.message}") from None
    if args.json:
        print(json.dumps({"index": args.index, "locked": state.locked, "data": state.data.hex()}))
        return 0
    print(f"PCR{args.index} ({'locked' if state.locked else 'unlocked'}): {state.data.hex()}")
    return 0


def _read_public_key(path: Path) -> bytes:
    """The DER SubjectPublicKeyInfo in `path` (DER or PEM). Raises CLIError."""
    data = read_input(path, MAX_PUBLIC_KEY_FILE_BYTES, what="public key")
    try:
        if data.lstrip().startswith(b"-----BEGIN"):
            key = serialization.load_pem_public_key(data)
        else:
            key = serialization.load_der_public_key(data)
    except (ValueError, TypeError, binascii.Error, UnsupportedAlgorithm):
        raise CLIError(f"{path}: not a SubjectPublicKeyInfo (DER or PEM)") from None
    return key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def _attest(args: argparse.Namespace) -> int:
    public_key = _read_public_key(args.public_key) if args.public_key else None
    with _client(args) as client:
        try:
            document = client.get_attestation_doc(
                user_data=args.user_data, nonce=args.nonce, public_key=public_key
            )
        except EnclaveError as exc:
            raise CLIError(f"attestation failed: {exc.message}") from None
    try:
        _write(args.out, document)
    except OSError as exc:
        raise CLIError(f"cannot write {args.out}: {exc.strerror or exc}") from None
    return 0


def _write(path: Path, data: bytes) -> None:
    if path.exists() and not path.is_file():
        path.write_bytes(data)
        return
    temp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        temp.write_bytes(data)
        temp.replace(path)
    finally:
        temp.unlink(missing_ok=True)
