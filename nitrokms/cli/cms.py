"""`nitrokms cms inspect|decrypt`: look into and open a KMS CiphertextForRecipient."""

from __future__ import annotations

import argparse
import base64
import json
import sys
from pathlib import Path
from typing import Any

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPrivateKey

from nitrokms.cli import CLIError
from nitrokms.cli._blobs import read_blob, read_input, write_private
from nitrokms.enclave.cms import (
    CMSError,
    EnvelopedInfo,
    RecipientInfo,
    decrypt_enveloped_data,
    inspect_enveloped_data,
)
from nitrokms.enclave.errors import DecryptionError

MAX_KEY_FILE_BYTES = 64 * 1024


def register(subparsers: argparse._SubParsersAction[Any]) -> None:
    parser = subparsers.add_parser(
        "cms", help="inspect or decrypt a KMS CiphertextForRecipient (CMS EnvelopedData)"
    )
    commands = parser.add_subparsers(title="cms commands", metavar="COMMAND", required=True)
    inspect = commands.add_parser(
        "inspect", help="describe a CMS EnvelopedData and what decrypt would refuse"
    )
    inspect.add_argument("blob", metavar="BLOB", help="file (raw, base64 or hex) or - for stdin")
    inspect.add_argument("--json", action="store_true", help="print JSON")
    inspect.set_defaults(handler=_inspect)
    decrypt = commands.add_parser("decrypt", help="decrypt with an RSA private key")
    decrypt.add_argument("blob", metavar="BLOB", help="file (raw, base64 or hex) or - for stdin")
    decrypt.add_argument("--key", required=True, metavar="PEM", help="PKCS#1 or PKCS#8 RSA key")
    decrypt.add_argument("--out", metavar="FILE", help="write the plaintext here (mode 0600)")
    decrypt.set_defaults(handler=_decrypt)


def _inspect(args: argparse.Namespace) -> int:
    blob = read_blob(args.blob)
    try:
        info = inspect_enveloped_data(blob)
    except CMSError as exc:
        raise CLIError(f"{args.blob}: {exc.message}") from None
    if args.json:
        print(json.dumps(info.to_json(), indent=2))
    else:
        print("\n".join(describe(info)))
    return 0


def describe(info: EnvelopedInfo) -> list[str]:
    """Human-readable lines for `cms inspect`."""
    lines = [
        f"content type: {info.content_type} (version {info.version})",
        f"originator info: {'present' if info.has_originator_info else 'none'}",
    ]
    for index, recipient in enumerate(info.recipients, 1):
        lines.extend(_describe_recipient(index, recipient))
    iv = "none" if info.iv is None else f"{info.iv.hex()} ({len(info.iv)} bytes)"
    form = f"constructed, {info.chunk_count} chunk(s)" if info.content_chunked else "primitive"
    lines += [
        f"content encryption: {info.content_encryption_algorithm}, IV {iv}",
        f"encrypted content: {info.encrypted_content_type}, "
        f"{info.encrypted_content_size} bytes ({form})",
        f"unprotected attributes: {'present' if info.has_unprotected_attributes else 'none'}",
    ]
    if info.refusals:
        lines.append("decrypt would refuse: " + "; ".join(info.refusals))
    else:
        lines.append("decrypt: supported")
    return lines


def _describe_recipient(index: int, recipient: RecipientInfo) -> list[str]:
    if recipient.kind != "keyTransport":
        return [f"recipient {index}: {recipient.kind} (not supported)"]
    if recipient.subject_key_identifier is not None:
        rid = f"subjectKeyIdentifier {recipient.subject_key_identifier.hex()}"
    else:
        rid = f"issuerAndSerialNumber serial {recipient.serial_number}"
    algorithm = recipient.key_encryption_algorithm
    if recipient.oaep_hash is not None:
        label = recipient.oaep_label.hex() if recipient.oaep_label else "empty"
        algorithm = (
            f"{algorithm} (hash {recipient.oaep_hash}, "
            f"mgf {recipient.oaep_mgf}/{recipient.oaep_mgf_hash}, label {label})"
        )
    lines = [
        f"recipient {index}: keyTransport v{recipient.version}, {rid}",
        f"  key encryption: {algorithm}",
        f"  encrypted key: {recipient.encrypted_key_size} bytes",
    ]
    lines += [f"  refused: {reason}" for reason in recipient.refusals]
    return lines


def _decrypt(args: argparse.Namespace) -> int:
    blob = read_blob(args.blob)
    key = load_private_key(args.key)
    try:
        plaintext = decrypt_enveloped_data(blob, key)
    except DecryptionError:
        raise CLIError(f"{args.blob}: decryption failed (wrong key or corrupted data)") from None
    except CMSError as exc:
        raise CLIError(f"{args.blob}: {exc.message}") from None
    if args.out is None:
        sys.stdout.write(base64.b64encode(plaintext).decode() + "\n")
        return 0
    write_private(Path(args.out), plaintext)
    return 0


def load_private_key(path: str) -> RSAPrivateKey:
    """Load an unencrypted PEM RSA private key (PKCS#1 or PKCS#8). Raises CLIError."""
    data = read_input(path, MAX_KEY_FILE_BYTES, what="key")
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except TypeError:
        raise CLIError(f"key {path}: encrypted PEM keys are not supported") from None
    except ValueError:
        raise CLIError(f"key {path}: not a PEM private key (PKCS#1 or PKCS#8)") from None
    except UnsupportedAlgorithm:
        raise CLIError(f"key {path}: unsupported private key") from None
    if not isinstance(key, RSAPrivateKey):
        raise CLIError(f"key {path}: not an RSA private key")
    return key
