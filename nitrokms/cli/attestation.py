"""`nitrokms attestation inspect|verify`: read and check a Nitro Enclaves attestation document."""

from __future__ import annotations

import argparse
import datetime as dt
import json
import re
import warnings
from typing import Any

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.serialization import load_der_public_key

from nitrokms.cli import CLIError
from nitrokms.cli._blobs import read_blob, read_input
from nitrokms.proto.attestation import (
    AttestationDocument,
    AttestationError,
    AttestationVerifier,
    Expectations,
    UntrustedRootError,
    parse_document,
)

MAX_ROOT_FILE_BYTES = 64 * 1024
_PCR_ARG = re.compile(r"\A(\d{1,2})=([0-9a-fA-F]*)\Z")


def register(subparsers: argparse._SubParsersAction[Any]) -> None:
    parser = subparsers.add_parser(
        "attestation", help="inspect or verify a Nitro Enclaves attestation document"
    )
    commands = parser.add_subparsers(title="attestation commands", metavar="COMMAND", required=True)
    inspect = commands.add_parser("inspect", help="describe a document (no verification)")
    inspect.add_argument("doc", metavar="DOC", help="file (raw, base64 or hex) or - for stdin")
    inspect.add_argument("--json", action="store_true", help="print JSON")
    inspect.set_defaults(handler=_inspect)
    verify = commands.add_parser("verify", help="verify signature, chain and expectations")
    verify.add_argument("doc", metavar="DOC", help="file (raw, base64 or hex) or - for stdin")
    verify.add_argument("--root", metavar="PEM", help="trust anchor (default: AWS Root-G1)")
    verify.add_argument(
        "--at", metavar="WHEN", type=_when, help="ISO 8601, ms since epoch, or 'doc'; default now"
    )
    verify.add_argument(
        "--pcr", metavar="N=HEX", type=_pcr, action="append", default=[], help="expected PCR"
    )
    verify.add_argument("--nonce", metavar="HEX", type=_hex, help="expected nonce")
    verify.add_argument("--allow-debug", action="store_true", help="accept debug-mode documents")
    verify.add_argument(
        "--max-age", metavar="SECONDS", type=_seconds, help="refuse documents older than this"
    )
    verify.add_argument("--json", action="store_true", help="print JSON")
    verify.set_defaults(handler=_verify)


def _when(value: str) -> dt.datetime | str:
    if value == "doc":
        return value
    if value.isdigit():
        try:
            return dt.datetime.fromtimestamp(int(value) / 1000, dt.UTC)
        except (OverflowError, ValueError, OSError):
            raise argparse.ArgumentTypeError(f"time out of range: {value}") from None
    try:
        parsed = dt.datetime.fromisoformat(value)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected ISO 8601, milliseconds since the epoch or 'doc', got {value!r}"
        ) from None
    return parsed.replace(tzinfo=dt.UTC) if parsed.tzinfo is None else parsed


def _pcr(value: str) -> tuple[int, bytes]:
    match = _PCR_ARG.match(value)
    if not match or int(match[1]) >= 32 or len(match[2]) % 2:
        raise argparse.ArgumentTypeError(f"expected N=HEX with N in 0..31, got {value!r}")
    return int(match[1]), bytes.fromhex(match[2])


def _hex(value: str) -> bytes:
    try:
        return bytes.fromhex(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected hex, got {value!r}") from None


def _seconds(value: str) -> dt.timedelta:
    try:
        seconds = float(value)
    except ValueError:
        seconds = -1.0
    if not 0 <= seconds < 10**9:
        raise argparse.ArgumentTypeError(f"expected a number of seconds, got {value!r}")
    return dt.timedelta(seconds=seconds)


def _read_root(path: str | None) -> AttestationVerifier:
    if path is None:
        return AttestationVerifier()
    data = read_input(path, MAX_ROOT_FILE_BYTES, exit_code=2)
    try:
        return AttestationVerifier(data)
    except UntrustedRootError as exc:
        raise CLIError(f"{path}: {exc.message}", exit_code=2) from None


def _inspect(args: argparse.Namespace) -> int:
    data = read_blob(args.doc)
    try:
        doc = parse_document(data)
    except AttestationError as exc:
        raise CLIError(f"{args.doc}: {exc.message}") from None
    info = describe(doc)
    if args.json:
        print(json.dumps(info, indent=2))
    else:
        print("\n".join(_text_lines(info)))
    return 0


def _verify(args: argparse.Namespace) -> int:
    verifier = _read_root(args.root)
    data = read_blob(args.doc)
    expect = Expectations(
        pcrs=dict(args.pcr),
        nonce=args.nonce,
        max_age=args.max_age,
        allow_debug=args.allow_debug,
    )
    try:
        at = parse_document(data).issued_at if args.at == "doc" else args.at
        doc = verifier.verify(data, at=at, expect=expect)
    except AttestationError as exc:
        if args.json:
            print(json.dumps({"valid": False, "code": exc.code, "error": exc.message}))
        raise CLIError(f"invalid attestation document: {exc.message}") from None
    if args.json:
        print(json.dumps({"valid": True, **describe(doc)}, indent=2))
    else:
        mode = " (debug mode)" if doc.debug_mode else ""
        print(f"valid: {doc.module_id} at {_iso(doc.issued_at)}{mode}")
    return 0


def describe(doc: AttestationDocument) -> dict[str, Any]:
    """A JSON-ready description of a document for `inspect` and `verify --json`."""
    return {
        "module_id": doc.module_id,
        "timestamp": _iso(doc.issued_at),
        "timestamp_ms": doc.timestamp,
        "digest": doc.digest,
        "debug_mode": doc.debug_mode,
        "pcrs": {str(i): v.hex() for i, v in doc.pcrs.items()},
        "zero_pcrs": [i for i, v in doc.pcrs.items() if not any(v)],
        "certificate": _cert_info(doc.certificate),
        "cabundle": [_cert_info(der) for der in doc.cabundle],
        "public_key": _key_info(doc.public_key),
        "user_data": None if doc.user_data is None else doc.user_data.hex(),
        "nonce": None if doc.nonce is None else doc.nonce.hex(),
    }


def _cert_info(der: bytes) -> dict[str, Any]:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            return _cert_fields(x509.load_der_x509_certificate(der))
    except (ValueError, x509.InvalidVersion, Warning):
        return {"error": f"not a valid DER X.509 certificate ({len(der)} bytes)"}


def _cert_fields(cert: x509.Certificate) -> dict[str, Any]:
    return {
        "subject": cert.subject.rfc4514_string(),
        "not_before": _iso(cert.not_valid_before_utc),
        "not_after": _iso(cert.not_valid_after_utc),
    }


def _key_info(der: bytes | None) -> dict[str, Any] | None:
    if der is None:
        return None
    info: dict[str, Any] = {"bytes": len(der), "hex": der.hex()}
    try:
        key = load_der_public_key(der)
    except (ValueError, TypeError, UnsupportedAlgorithm):
        info["type"] = "not a SubjectPublicKeyInfo"
        return info
    if isinstance(key, rsa.RSAPublicKey):
        info["type"] = f"RSA-{key.key_size}"
    elif isinstance(key, ec.EllipticCurvePublicKey):
        info["type"] = f"EC {key.curve.name}"
    else:
        info["type"] = type(key).__name__
    return info


def _text_lines(info: dict[str, Any]) -> list[str]:
    lines = [
        f"module id:  {info['module_id']}",
        f"timestamp:  {info['timestamp']} ({info['timestamp_ms']} ms)",
        f"digest:     {info['digest']}",
        f"debug mode: {'yes (PCR0-2 all zero)' if info['debug_mode'] else 'no'}",
    ]
    zero = set(info["zero_pcrs"])
    lines += [f"PCR{i:<2}      {v}" for i, v in info["pcrs"].items() if int(i) not in zero]
    if zero:
        lines.append(f"zero PCRs:  {', '.join(str(i) for i in sorted(zero))}")
    certs = [("leaf", info["certificate"])]
    certs += [(f"cabundle[{i}]", c) for i, c in enumerate(info["cabundle"])]
    for name, cert in certs:
        if "error" in cert:
            lines.append(f"{name}: {cert['error']}")
        else:
            window = f"{cert['not_before']} .. {cert['not_after']}"
            lines.append(f"{name}: {cert['subject']} ({window})")
    key = info["public_key"]
    lines.append(
        "public key: none" if key is None else f"public key: {key['type']}, {key['bytes']} bytes"
    )
    lines.append(f"user data:  {info['user_data'] if info['user_data'] is not None else 'none'}")
    lines.append(f"nonce:      {info['nonce'] if info['nonce'] is not None else 'none'}")
    return lines


def _iso(at: dt.datetime) -> str:
    return at.astimezone(dt.UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
