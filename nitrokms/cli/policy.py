"""`nitrokms policy`: print a KMS key policy pinned to an enclave image's measurements, or
`--check` any policy for data-plane grants that skip attestation."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from nitrokms.cli import CLIError, examples
from nitrokms.cli._blobs import read_input
from nitrokms.parent.policy import (
    MAX_MEASUREMENTS_BYTES,
    MAX_POLICY_BYTES,
    PolicyError,
    PolicyRequest,
    find_unconditional_grants,
    generate_policy,
    parse_measurements,
    render,
)

DEBUG_ONLY_WARNING = (
    "warning: these are debug-mode measurements (all-zero PCR0-2): the policy admits ANY "
    "debug-mode enclave the principal runs, whatever its image. Never use it for real keys."
)
DEBUG_TOO_WARNING = (
    "warning: --allow-debug: the policy also admits debug-mode enclaves (all-zero PCR0-2), whose "
    "image is not attested. Remove it before production."
)


def _pcr_option(text: str) -> tuple[int, str | None]:
    index_text, sep, value = text.partition("=")
    if not index_text.isdigit() or len(index_text) > 2:
        raise argparse.ArgumentTypeError(f"expected N or N=HEX, got {text[:40]!r}")
    return int(index_text), (value if sep else None)


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "policy",
        help="print a KMS key policy pinned to an enclave image, or check one",
        description=(
            "Print a KMS key policy whose Decrypt/GenerateDataKey grant requires an attestation "
            "document with the image's PCR0-2 (nitro-cli build-enclave output), or with --check "
            "report every statement that grants data-plane operations without one. Exit 0 ok; "
            "1 debug-mode measurements without --allow-debug, or --check found a problem; 2 usage "
            "or unreadable input (missing file, not JSON, bad PCR or ARN)."
        ),
        epilog=examples(
            "nitrokms policy --measurements out/measurements.json "
            "--role-arn arn:aws:iam::111122223333:role/parent > policy.json",
            "nitrokms policy --measurements m.json --role-arn ARN --pcr 3 --instance-id i-0abc...",
            "aws kms get-key-policy --key-id KEY --policy-name default | nitrokms policy --check -",
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--measurements", type=Path, metavar="FILE", help="nitro-cli JSON or -")
    source.add_argument("--check", type=Path, metavar="FILE", help="a policy (JSON) to check, or -")
    parser.add_argument("--role-arn", metavar="ARN", help="the parent instance's IAM role")
    parser.add_argument("--account", metavar="ID", help="the key's account (default: the role's)")
    parser.add_argument(
        "--pcr",
        type=_pcr_option,
        action="append",
        default=[],
        metavar="N[=HEX]",
        help="also pin PCR N (3: from --role-arn, 4: from --instance-id, 8: signed EIF) or N=HEX",
    )
    parser.add_argument("--instance-id", metavar="ID", help="pin PCR4 to this parent instance")
    parser.add_argument("--admin-arn", metavar="ARN", help="key administrator (default: root)")
    parser.add_argument(
        "--allow-debug",
        action="store_true",
        help="accept debug-mode enclaves (all-zero PCR0-2): development only",
    )
    parser.add_argument("--json", action="store_true", help="--check: print the result as JSON")
    parser.set_defaults(handler=_run)


def _run(args: argparse.Namespace) -> int:
    try:
        if args.check is not None:
            return _check(args)
        return _generate(args)
    except PolicyError as exc:
        raise CLIError(str(exc), exit_code=2) from None  # bad input: file, PCR, ARN


def _generate(args: argparse.Namespace) -> int:
    measurements = parse_measurements(
        read_input(args.measurements, MAX_MEASUREMENTS_BYTES, what="measurements file")
    )

    extra = tuple(index for index, value in args.pcr if value is None)
    explicit = {index: value for index, value in args.pcr if value is not None}
    request = PolicyRequest(
        measurements=measurements,
        role_arn=args.role_arn,
        account=args.account,
        admin_arn=args.admin_arn,
        instance_id=args.instance_id,
        pcrs=extra,
        explicit_pcrs=explicit,
        allow_debug=args.allow_debug,
    )
    try:
        text = render(generate_policy(request))
    except PolicyError as exc:
        # Debug-mode measurements without --allow-debug: the input is fine, the answer is no.
        refused = measurements.is_debug and not args.allow_debug
        raise CLIError(str(exc), exit_code=1 if refused else 2) from None
    if args.allow_debug:
        print(DEBUG_ONLY_WARNING if measurements.is_debug else DEBUG_TOO_WARNING, file=sys.stderr)
    sys.stdout.write(text)
    return 0


def _check(args: argparse.Namespace) -> int:
    data = read_input(args.check, MAX_POLICY_BYTES, what="policy file")
    try:
        document = json.loads(data)
    except (ValueError, UnicodeDecodeError):
        raise CLIError(f"policy file {str(args.check)!r} is not JSON", 2) from None
    if isinstance(document, dict) and "Statement" not in document:
        inner = document.get("Policy")
        if isinstance(inner, str):  # `aws kms get-key-policy` output
            try:
                document = json.loads(inner)
            except ValueError:
                raise CLIError("the Policy string is not JSON", 2) from None
    problems = find_unconditional_grants(document, allow_debug=args.allow_debug)
    if args.json:
        print(json.dumps({"ok": not problems, "problems": problems}, indent=2))
    for problem in problems:
        print(f"nitrokms: policy check: {problem}", file=sys.stderr)
    if problems:
        return 1
    if not args.json:
        print("ok: no statement grants data-plane operations without attestation")
    return 0
