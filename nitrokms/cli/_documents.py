"""The document work behind `nitrokms attestation`: reading DOC and --root, verifying, and the
JSON and text descriptions. Kept apart from the parser so `nitrokms --help` never loads it."""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import json
import warnings
from typing import Any

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.serialization import Encoding, load_der_public_key

from nitrokms.cli import CLIError
from nitrokms.cli._blobs import read_blob, read_input
from nitrokms.proto.attestation import (
    AttestationDocument,
    AttestationError,
    AttestationVerifier,
    Expectations,
    MalformedError,
    UntrustedRootError,
    parse_document,
)
from nitrokms.proto.attestation.cose import decode_sign1
from nitrokms.proto.attestation.roots import AWS_ROOT_SHA256

MAX_ROOT_FILE_BYTES = 64 * 1024
SIMULATED_ROOT_HINT = (
    "a document from the simulated NSM verifies with "
    "--root <(python -m nitrokms.sim nsm root --state DIR)"
)


def _read_root(path: str | None) -> AttestationVerifier:
    if path is None:
        return AttestationVerifier()
    data = read_input(path, MAX_ROOT_FILE_BYTES, exit_code=2)
    try:
        return AttestationVerifier(data)
    except UntrustedRootError as exc:
        raise CLIError(f"{path}: {exc.message}", exit_code=2) from None


def _read_document(source: str) -> bytes:
    """The document bytes of DOC. Raises CLIError exit 2 when DOC cannot be read or is not a
    COSE_Sign1 at all (garbage); a COSE_Sign1 whose payload breaks the rules is left to the
    caller (exit 1: the answer is no)."""
    data = read_blob(source)
    try:
        decode_sign1(data)
    except MalformedError as exc:
        raise CLIError(f"{source}: not an attestation document ({exc.message})", 2) from None
    return data


def inspect(args: argparse.Namespace) -> int:
    data = _read_document(args.doc)
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


def verify(args: argparse.Namespace) -> int:
    verifier = _read_root(args.root)
    data = _read_document(args.doc)
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
        message = exc.message
        if isinstance(exc, UntrustedRootError):
            message = _root_mismatch(data, verifier) or message
        if args.json:
            print(json.dumps({"valid": False, "code": exc.code, "error": message}))
        raise CLIError(f"invalid attestation document: {message}") from None
    if args.json:
        print(json.dumps({"valid": True, **describe(doc)}, indent=2))
    else:
        mode = " (debug mode)" if doc.debug_mode else ""
        print(f"valid: {doc.module_id} at {_iso(doc.issued_at)}{mode}")
    return 0


def _root_mismatch(data: bytes, verifier: AttestationVerifier) -> str | None:
    """One line naming the document's root and the pinned one apart (their subjects may read the
    same: the simulator copies AWS's), with a pointer at the simulator's root when the pinned root
    is AWS's. None when the document's root cannot be read."""
    try:
        first = x509.load_der_x509_certificate(parse_document(data).cabundle[0])
    except (AttestationError, ValueError):
        return None
    pinned = verifier.root
    theirs, ours = _fingerprint(first), _fingerprint(pinned)
    hint = f"; {SIMULATED_ROOT_HINT}" if ours == AWS_ROOT_SHA256 else ""
    return (
        f"untrusted root: the document chains to {_subject(first)} (SHA-256 {theirs[:16]}...), "
        f"not the pinned root {_subject(pinned)} (SHA-256 {ours[:16]}...){hint}"
    )


def _fingerprint(cert: x509.Certificate) -> str:
    return hashlib.sha256(cert.public_bytes(Encoding.DER)).hexdigest()


def _subject(cert: x509.Certificate) -> str:
    label = "AWS Nitro Enclaves Root-G1, " if _fingerprint(cert) == AWS_ROOT_SHA256 else ""
    return f"{label}{cert.subject.rfc4514_string()}"


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
