"""`nitrokms attestation inspect|verify`: read and check a Nitro Enclaves attestation document."""

from __future__ import annotations

import argparse
import datetime as dt
import re
from typing import Any

from nitrokms.cli import examples

_PCR_ARG = re.compile(r"\A(\d{1,2})=([0-9a-fA-F]*)\Z")


def register(subparsers: argparse._SubParsersAction[Any]) -> None:
    parser = subparsers.add_parser(
        "attestation",
        help="inspect or verify a Nitro Enclaves attestation document",
        description="Inspect or verify a Nitro Enclaves attestation document. Exit 0 valid, "
        "1 invalid (one line naming the failed check), 2 usage or unreadable input.",
        epilog=examples(
            "nitrokms attestation inspect doc.cose",
            "nitrokms attestation verify doc.cose --pcr 0=$PCR0 --nonce $NONCE",
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    commands = parser.add_subparsers(title="attestation commands", metavar="COMMAND", required=True)
    inspect = commands.add_parser(
        "inspect",
        help="describe a document (no verification)",
        description="Describe a document's fields, certificates and key; nothing is verified.",
        epilog=examples("nitrokms attestation inspect doc.cose --json"),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    inspect.add_argument("doc", metavar="DOC", help="file (raw, base64 or hex) or - for stdin")
    inspect.add_argument("--json", action="store_true", help="print JSON")
    inspect.set_defaults(handler=_inspect)
    verify = commands.add_parser(
        "verify",
        help="verify signature, chain and expectations",
        description="Verify the COSE signature, the certificate chain to --root (default: the "
        "AWS Nitro Enclaves Root-G1) and the expected PCRs, nonce and age.",
        epilog=examples(
            "nitrokms attestation verify doc.cose --pcr 0=$PCR0 --pcr 1=$PCR1 --pcr 2=$PCR2",
            "python -m nitrokms.sim nsm root --state DIR > sim-root.pem\n"
            "  nitrokms attestation verify doc.cose --root sim-root.pem --at doc",
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
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


def _inspect(args: argparse.Namespace) -> int:
    from nitrokms.cli import _documents  # noqa: PLC0415 - fast start-up (nitrokms.cli docstring)

    return _documents.inspect(args)


def _verify(args: argparse.Namespace) -> int:
    from nitrokms.cli import _documents  # noqa: PLC0415

    return _documents.verify(args)
