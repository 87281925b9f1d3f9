"""`nitrokms nsm describe|pcr N|attest`: talk to whatever answers at /dev/nsm."""

from __future__ import annotations

import argparse
import binascii
import hashlib
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from nitrokms.cli import CLIError, examples
from nitrokms.cli._blobs import read_input, write_private

if TYPE_CHECKING:
    from nitrokms.enclave.nsm import NSMClient, NSMDescription

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


def _subcommand(sub: Any, name: str, summary: str, *lines: str) -> argparse.ArgumentParser:
    parser: argparse.ArgumentParser = sub.add_parser(
        name,
        help=summary,
        description=summary[0].upper() + summary[1:] + ".",
        epilog=examples(*lines),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    return parser


def register(subparsers: Any) -> None:
    nsm = subparsers.add_parser(
        "nsm",
        help="query the Nitro Secure Module at /dev/nsm",
        description="Talk to whatever answers at /dev/nsm: the real device inside an enclave, or "
        "the simulated one under `python -m nitrokms.sim nsm run`. Exit 0 ok, 1 the NSM is "
        "missing or refused, 2 usage or unreadable input.",
        epilog=examples(
            "python -m nitrokms.sim nsm run --state DIR -- nitrokms nsm describe",
            "nitrokms nsm attest --nonce 0011 --out doc.cose",
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    nsm.add_argument("--device", help=argparse.SUPPRESS)  # default: the client's, /dev/nsm
    sub = nsm.add_subparsers(title="nsm commands", metavar="COMMAND", required=True)

    describe = _subcommand(
        sub, "describe", "module id, version, PCR count, locked PCRs", "nitrokms nsm describe"
    )
    describe.add_argument("--json", action="store_true", help="print JSON")
    describe.set_defaults(handler=_describe)

    pcr = _subcommand(sub, "pcr", "value and lock state of one PCR", "nitrokms nsm pcr 0")
    pcr.add_argument("index", type=_pcr_index, metavar="N")
    pcr.add_argument("--json", action="store_true", help="print JSON")
    pcr.set_defaults(handler=_pcr)

    attest = _subcommand(
        sub,
        "attest",
        "write a signed attestation document (raw COSE)",
        "nitrokms nsm attest --nonce $(openssl rand -hex 16) --public-key key.pem --out doc.cose",
    )
    attest.add_argument("--nonce", type=_hex_bytes, metavar="HEX")
    attest.add_argument("--user-data", type=_hex_bytes, metavar="HEX")
    attest.add_argument("--public-key", type=Path, metavar="FILE", help="SPKI as DER or PEM")
    attest.add_argument("--out", type=Path, required=True, metavar="FILE")
    attest.add_argument("--json", action="store_true", help="print a JSON summary")
    attest.set_defaults(handler=_attest)


def _client(args: argparse.Namespace) -> NSMClient:
    from nitrokms.enclave.errors import EnclaveError  # noqa: PLC0415 - fast start-up (cffi)
    from nitrokms.enclave.nsm import NSMClient  # noqa: PLC0415

    try:
        return NSMClient.open(args.device) if args.device else NSMClient.open()
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
    from nitrokms.enclave.errors import EnclaveError  # noqa: PLC0415

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
    from nitrokms.enclave.errors import EnclaveError  # noqa: PLC0415

    with _client(args) as client:
        try:
            state = client.describe_pcr(args.index)
        except EnclaveError as exc:
            raise CLIError(f"PCR {args.index}: {exc.message}") from None
    if args.json:
        print(json.dumps({"index": args.index, "locked": state.locked, "data": state.data.hex()}))
        return 0
    print(f"PCR{args.index} ({'locked' if state.locked else 'unlocked'}): {state.data.hex()}")
    return 0


def _read_public_key(path: Path) -> bytes:
    """The DER SubjectPublicKeyInfo in `path` (DER or PEM). Raises CLIError exit 2."""
    from cryptography.exceptions import UnsupportedAlgorithm  # noqa: PLC0415
    from cryptography.hazmat.primitives import serialization  # noqa: PLC0415

    data = read_input(path, MAX_PUBLIC_KEY_FILE_BYTES, what="public key")
    try:
        if data.lstrip().startswith(b"-----BEGIN"):
            key = serialization.load_pem_public_key(data)
        else:
            key = serialization.load_der_public_key(data)
    except (ValueError, TypeError, binascii.Error, UnsupportedAlgorithm):
        raise CLIError(f"{path}: not a SubjectPublicKeyInfo (DER or PEM)", 2) from None
    return key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def _attest(args: argparse.Namespace) -> int:
    from nitrokms.enclave.errors import EnclaveError  # noqa: PLC0415

    public_key = _read_public_key(args.public_key) if args.public_key else None
    with _client(args) as client:
        try:
            document = client.get_attestation_doc(
                user_data=args.user_data, nonce=args.nonce, public_key=public_key
            )
        except EnclaveError as exc:
            raise CLIError(f"attestation failed: {exc.message}") from None
    write_private(args.out, document)
    digest = hashlib.sha256(document).hexdigest()
    summary: dict[str, Any] = {
        "out": str(args.out),
        "document_bytes": len(document),
        "sha256": digest,
        "nonce": None if args.nonce is None else args.nonce.hex(),
        "user_data_bytes": None if args.user_data is None else len(args.user_data),
        "public_key_bytes": None if public_key is None else len(public_key),
    }
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        extras = [
            f"{name} {summary[key]}"
            for name, key in (("nonce", "nonce"), ("public key bytes", "public_key_bytes"))
            if summary[key] is not None
        ]
        print(
            f"wrote attestation document ({len(document)} bytes, sha256 "
            f"{digest[:16]}...{''.join(', ' + e for e in extras)}) to {args.out}"
        )
    return 0
