"""`nitrokms cms inspect|decrypt`: look into and open a KMS CiphertextForRecipient."""

from __future__ import annotations

import argparse
import base64
import json
import sys
from typing import TYPE_CHECKING, Any

from nitrokms.cli import CLIError, examples
from nitrokms.cli._blobs import read_blob, read_input, write_private

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.rsa import RSAPrivateKey

    from nitrokms.enclave.cms import EnvelopedInfo, RecipientInfo

MAX_KEY_FILE_BYTES = 64 * 1024


def register(subparsers: argparse._SubParsersAction[Any]) -> None:
    parser = subparsers.add_parser(
        "cms",
        help="inspect or decrypt a KMS CiphertextForRecipient (CMS EnvelopedData)",
        description="Inspect or decrypt a KMS CiphertextForRecipient (CMS EnvelopedData, raw, "
        "base64 or hex). Exit 0 ok; 1 refused, malformed or wrong key; 2 usage or unreadable "
        "input (missing file, not BER at all, not a PEM RSA key).",
        epilog=examples(
            "nitrokms cms inspect blob.b64",
            "nitrokms cms decrypt blob.b64 --key recipient.pem --out plaintext.bin",
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    commands = parser.add_subparsers(title="cms commands", metavar="COMMAND", required=True)
    inspect = commands.add_parser(
        "inspect",
        help="describe a CMS EnvelopedData and what decrypt would refuse",
        description="Describe any well-formed CMS EnvelopedData: algorithms, recipient "
        "identifier, IV, sizes, and what decrypt would refuse and why.",
        epilog=examples("nitrokms cms inspect blob.b64 --json"),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    inspect.add_argument("blob", metavar="BLOB", help="file (raw, base64 or hex) or - for stdin")
    inspect.add_argument("--json", action="store_true", help="print JSON")
    inspect.set_defaults(handler=_inspect)
    decrypt = commands.add_parser(
        "decrypt",
        help="decrypt with an RSA private key",
        description="Decrypt with an RSA private key (PEM, PKCS#1 or PKCS#8). The plaintext is "
        "printed as base64 unless --out is given.",
        epilog=examples(
            "nitrokms cms decrypt blob.b64 --key recipient.pem",
            "nitrokms cms decrypt - --key recipient.pem --out key.bin --json < blob.b64",
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    decrypt.add_argument("blob", metavar="BLOB", help="file (raw, base64 or hex) or - for stdin")
    decrypt.add_argument("--key", required=True, metavar="PEM", help="PKCS#1 or PKCS#8 RSA key")
    decrypt.add_argument(
        "--out", metavar="FILE", help="write the plaintext here (a new file, mode 0600)"
    )
    decrypt.add_argument("--json", action="store_true", help="print JSON")
    decrypt.set_defaults(handler=_decrypt)


def _read_cms(source: str) -> bytes:
    """BLOB's bytes. Raises CLIError exit 2 when it cannot be read or is not BER at all."""
    from nitrokms.enclave.cms import CMSError  # noqa: PLC0415 - fast start-up (module docstring)
    from nitrokms.enclave.cms.ber import parse  # noqa: PLC0415

    blob = read_blob(source)
    try:
        parse(blob)
    except CMSError as exc:
        raise CLIError(f"{source}: not a CMS structure ({exc.message})", 2) from None
    return blob


def _inspect(args: argparse.Namespace) -> int:
    from nitrokms.enclave.cms import CMSError, inspect_enveloped_data  # noqa: PLC0415

    blob = _read_cms(args.blob)
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
    from nitrokms.enclave.cms import CMSError, decrypt_enveloped_data  # noqa: PLC0415
    from nitrokms.enclave.errors import DecryptionError  # noqa: PLC0415

    blob = _read_cms(args.blob)
    key = load_private_key(args.key)
    try:
        plaintext = decrypt_enveloped_data(blob, key)
    except DecryptionError:
        raise CLIError(f"{args.blob}: decryption failed (wrong key or corrupted data)") from None
    except CMSError as exc:
        raise CLIError(f"{args.blob}: {exc.message}") from None
    output: dict[str, Any] = {"plaintext_bytes": len(plaintext)}
    if args.out is not None:
        write_private(args.out, plaintext)
        output["out"] = args.out
    elif args.json:
        output["plaintext"] = base64.b64encode(plaintext).decode()
    else:
        sys.stdout.write(base64.b64encode(plaintext).decode() + "\n")
    if args.json:
        print(json.dumps(output, indent=2, sort_keys=True))
    return 0


def load_private_key(path: str) -> RSAPrivateKey:
    """Load an unencrypted PEM RSA private key (PKCS#1 or PKCS#8). Raises CLIError exit 2 (the
    key file is unusable input)."""
    from cryptography.exceptions import UnsupportedAlgorithm  # noqa: PLC0415
    from cryptography.hazmat.primitives import serialization  # noqa: PLC0415
    from cryptography.hazmat.primitives.asymmetric.rsa import RSAPrivateKey  # noqa: PLC0415

    data = read_input(path, MAX_KEY_FILE_BYTES, what="key")
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except TypeError:
        raise CLIError(f"key {path}: encrypted PEM keys are not supported", 2) from None
    except ValueError:
        raise CLIError(f"key {path}: not a PEM private key (PKCS#1 or PKCS#8)", 2) from None
    except UnsupportedAlgorithm:
        raise CLIError(f"key {path}: unsupported private key", 2) from None
    if not isinstance(key, RSAPrivateKey):
        raise CLIError(f"key {path}: not an RSA private key", 2)
    return key
