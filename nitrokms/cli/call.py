"""`nitrokms call OP ...`: one enclave operation from the command line.

Human output by default, `--json` for scripts (bytes as base64; PCR values as hex, the form KMS
policy conditions use). Exit 0 on success, 1 on a remote or connection error (one line on stderr:
code and message), 2 on a usage error (arguments that cannot form a valid request included).
SetCredentials is deliberately absent: secrets never go on argv; `nitrokms credentials` pushes
them.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import binascii
import json
import sys
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

from nitrokms.cli import CLIError, examples
from nitrokms.cli._blobs import decode_text_blob, parse_hex, read_input, write_private
from nitrokms.parent.rpc.client import DEFAULT_TIMEOUT_S, AsyncEnclaveClient
from nitrokms.parent.rpc.endpoint import ENCLAVE_PORT, enclave_address
from nitrokms.parent.rpc.errors import InvalidRequestError, RPCError
from nitrokms.proto import messages as m
from nitrokms.proto.errors import AddressError, LocalProtocolError
from nitrokms.proto.keys import KeyRequest

DEFAULT_CONNECT_TIMEOUT_S = 2.0
MAX_ENVELOPE_TEXT_BYTES = 2 * m.MAX_ENVELOPE_BYTES

Output = dict[str, Any]
Operation = Callable[[AsyncEnclaveClient, argparse.Namespace], Awaitable[Output]]


def add_enclave_arguments(parser: argparse.ArgumentParser, port: int = ENCLAVE_PORT) -> None:
    """--enclave/--cid/--timeout, shared by every command that talks to the enclave; a CID
    means `vsock://CID:port`."""
    parser.add_argument(
        "--enclave",
        metavar="ADDR",
        help="enclave service address (vsock://CID:PORT, unix:///path, tcp://HOST:PORT, "
        "vhost-vsock:///path:PORT for a VM behind vhost-device-vsock); default $NITROKMS_ENCLAVE "
        f"or vsock://CID:{port}",
    )
    parser.add_argument(
        "--cid",
        type=int,
        help=f"enclave CID for vsock://CID:{port} (default $NITROKMS_ENCLAVE_CID)",
    )
    parser.add_argument(
        "--timeout",
        type=_positive_seconds,
        default=DEFAULT_TIMEOUT_S,
        metavar="S",
        help=f"per-request timeout in seconds (default {DEFAULT_TIMEOUT_S:g})",
    )
    parser.add_argument(
        "--connect-timeout",
        type=_positive_seconds,
        default=DEFAULT_CONNECT_TIMEOUT_S,
        metavar="S",
        help=f"time allowed to connect, retries included (default {DEFAULT_CONNECT_TIMEOUT_S:g})",
    )


def _positive_seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not 0 < value < 86400:
        raise argparse.ArgumentTypeError(f"{text} is not in (0, 86400) seconds")
    return value


def make_client(args: argparse.Namespace, port: int = ENCLAVE_PORT) -> AsyncEnclaveClient:
    """A client for the address in `args` (a CID means `vsock://CID:port`). Raises CLIError
    (exit 2) when there is none."""
    try:
        address = enclave_address(args.enclave, args.cid, port=port)
    except AddressError as exc:
        raise CLIError(exc.message, exit_code=2) from None
    return AsyncEnclaveClient(
        address, timeout_s=args.timeout, connect_timeout_s=args.connect_timeout
    )


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    call = subparsers.add_parser(
        "call",
        help="call one enclave operation",
        description="Call one enclave service operation. Exit 0 ok, 1 remote or connection "
        "error or (health) not ready, 2 usage or unreadable input. The address comes from "
        "--enclave, --cid, $NITROKMS_ENCLAVE or $NITROKMS_ENCLAVE_CID.",
        epilog=examples(*(f"nitrokms call {name} {line}" for name, line in _EXAMPLES.items())),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ops = call.add_subparsers(title="operations", metavar="OP", required=True)
    common = argparse.ArgumentParser(add_help=False)
    add_enclave_arguments(common)
    common.add_argument("--json", action="store_true", help="machine-readable output")
    for name, (configure, operation, summary) in _OPERATIONS.items():
        parser = ops.add_parser(
            name,
            parents=[common],
            help=summary,
            description=summary,
            epilog=examples(f"nitrokms call {name} {_EXAMPLES[name]}"),
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        configure(parser)
        parser.set_defaults(handler=_handler(operation))


def _handler(operation: Operation) -> Callable[[argparse.Namespace], int]:
    def handle(args: argparse.Namespace) -> int:
        client = make_client(args)
        try:
            output = asyncio.run(_run(client, operation, args))
        except InvalidRequestError as exc:  # nothing was sent: the arguments are at fault
            raise CLIError(str(exc), exit_code=2) from None
        except RPCError as exc:
            raise CLIError(str(exc)) from None
        refusal = output.pop("_refusal", None)
        _print(output, args)
        if refusal is not None:  # the call worked; the answer is no (health: not ready)
            raise CLIError(refusal)
        return 0

    return handle


async def _run(
    client: AsyncEnclaveClient, operation: Operation, args: argparse.Namespace
) -> Output:
    async with client:
        return await operation(client, args)


def _print(output: Output, args: argparse.Namespace) -> None:
    raw = output.pop("_raw", None)
    human = output.pop("_human", None)
    if args.json:
        print(json.dumps(output, indent=2, sort_keys=True))
    elif raw is not None:
        sys.stdout.buffer.write(raw)
        sys.stdout.buffer.flush()
    elif human is not None:
        print(human)
    else:
        for key, value in output.items():
            print(f"{key.replace('_', ' ')}: {_human_value(value)}")


def _human_value(value: object) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    return str(value)


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


# --- argument helpers -------------------------------------------------------------------------


def _context_pair(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    return key, value


def _add_context(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--context",
        type=_context_pair,
        action="append",
        metavar="K=V",
        help="encryption context pair (repeatable)",
    )
    parser.add_argument(
        "--grant-token", action="append", metavar="TOKEN", help="KMS grant token (repeatable)"
    )


def _context(args: argparse.Namespace) -> dict[str, str] | None:
    return dict(args.context) if args.context else None


# --- operations -------------------------------------------------------------------------------


def _configure_generate(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--key-id", required=True, help="KMS key id, ARN, alias or alias ARN")
    size = parser.add_mutually_exclusive_group()
    size.add_argument("--key-spec", choices=("AES_256", "AES_128"), help="default AES_256")
    size.add_argument("--number-of-bytes", type=int, metavar="N")
    _add_context(parser)


def _key_request(args: argparse.Namespace) -> KeyRequest:
    """The key request the arguments spell. Raises CLIError (exit 2) when it is not valid."""
    try:
        return KeyRequest(
            args.key_id,
            args.key_spec,
            args.number_of_bytes,
            _context(args),
            tuple(args.grant_token) if args.grant_token else None,
        )
    except LocalProtocolError as exc:
        raise CLIError(exc.message, exit_code=2) from None


async def _generate(client: AsyncEnclaveClient, args: argparse.Namespace) -> Output:
    result = await client.generate_data_key(_key_request(args))
    return {
        "handle": result.handle,
        "key_id": result.key_id,
        "ciphertext_blob": _b64(result.ciphertext_blob),
    }


def _configure_load(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--ciphertext-blob", required=True, metavar="B64", help="base64")
    parser.add_argument("--key-id", help="KMS key the blob was made under (optional)")
    _add_context(parser)


async def _load(client: AsyncEnclaveClient, args: argparse.Namespace) -> Output:
    try:
        blob = base64.b64decode(args.ciphertext_blob, validate=True)
    except (binascii.Error, ValueError):
        raise CLIError("--ciphertext-blob must be base64", exit_code=2) from None
    result = await client.load_data_key(
        blob,
        key_id=args.key_id,
        encryption_context=_context(args),
        grant_tokens=args.grant_token,
    )
    return {"handle": result.handle, "key_id": result.key_id}


def _configure_forget(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("handle", metavar="HANDLE")


async def _forget(client: AsyncEnclaveClient, args: argparse.Namespace) -> Output:
    await client.forget_key(args.handle)
    return {"handle": args.handle, "forgotten": True, "_human": f"forgot key {args.handle}"}


def _configure_seal(parser: argparse.ArgumentParser) -> None:
    key = parser.add_mutually_exclusive_group(required=True)
    key.add_argument("--handle", help="a data key the enclave holds")
    key.add_argument("--key-id", help="KMS key to generate a fresh data key under")
    parser.add_argument("--in", dest="input", default="-", metavar="FILE", help="default stdin")
    parser.add_argument("--out", metavar="FILE", help="write the raw envelope here")
    _add_context(parser)


async def _seal(client: AsyncEnclaveClient, args: argparse.Namespace) -> Output:
    plaintext = read_input(args.input, m.MAX_SEAL_PLAINTEXT_BYTES)
    result = await client.seal(
        plaintext,
        handle=args.handle,
        key_id=args.key_id,
        encryption_context=_context(args),
        grant_tokens=args.grant_token,
    )
    output: Output = {
        "key_id": result.key_id,
        "handle": result.handle,
        "envelope_bytes": len(result.envelope),
    }
    if args.out:
        write_private(args.out, result.envelope)
        output["out"] = args.out
        output["_human"] = f"wrote envelope ({len(result.envelope)} bytes) to {args.out}"
    else:
        output["envelope"] = _b64(result.envelope)
        output["_human"] = output["envelope"]
    return output


def _configure_unseal(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--in", dest="input", default="-", metavar="FILE", help="envelope: raw, base64 or hex"
    )
    parser.add_argument("--out", metavar="FILE", help="write the plaintext here (mode 0600)")
    _add_context(parser)


async def _unseal(client: AsyncEnclaveClient, args: argparse.Namespace) -> Output:
    envelope = decode_text_blob(read_input(args.input, MAX_ENVELOPE_TEXT_BYTES))
    result = await client.unseal_result(
        envelope, encryption_context=_context(args), grant_tokens=args.grant_token
    )
    output: Output = {"key_id": result.key_id, "plaintext_bytes": len(result.plaintext)}
    if args.out:
        write_private(args.out, result.plaintext)
        output["out"] = args.out
        output["_human"] = f"wrote plaintext ({len(result.plaintext)} bytes) to {args.out}"
    elif args.json:
        output["plaintext"] = _b64(result.plaintext)
    else:
        output["_raw"] = result.plaintext
    return output


def _configure_attest(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--nonce", metavar="HEX")
    parser.add_argument("--user-data", metavar="HEX")
    parser.add_argument("--out", required=True, metavar="FILE", help="raw COSE_Sign1 bytes")


async def _attest(client: AsyncEnclaveClient, args: argparse.Namespace) -> Output:
    nonce = parse_hex(args.nonce, "--nonce") if args.nonce is not None else None
    user_data = parse_hex(args.user_data, "--user-data") if args.user_data is not None else None
    document = await client.attest(nonce=nonce, user_data=user_data)
    write_private(args.out, document)
    return {
        "out": args.out,
        "document_bytes": len(document),
        "document": _b64(document),
        "_human": f"wrote attestation document ({len(document)} bytes) to {args.out}",
    }


def _configure_nothing(parser: argparse.ArgumentParser) -> None:
    """Describe and Health take no arguments."""


async def _describe(client: AsyncEnclaveClient, args: argparse.Namespace) -> Output:
    result = await client.describe()
    output: Output = {
        "module_id": result.module_id,
        "debug_mode": result.debug_mode,
        "service_version": result.service_version,
        "nsm_version": result.nsm_version,
        "digest": result.digest,
        "locked_pcrs": list(result.locked_pcrs),
        "pcrs": {str(i): value.hex() for i, value in sorted(result.pcrs.items())},
    }
    lines = [f"{k.replace('_', ' ')}: {_human_value(v)}" for k, v in list(output.items())[:5]]
    lines.append("locked PCRs: " + (", ".join(map(str, result.locked_pcrs)) or "-"))
    lines += [f"PCR{i}: {value}" for i, value in output["pcrs"].items()]
    output["_human"] = "\n".join(lines)
    return output


async def _health(client: AsyncEnclaveClient, args: argparse.Namespace) -> Output:
    result = await client.health()
    expiry = result.credentials_expiration_ms
    output: Output = {
        "ready": result.ready,
        "credentials_present": result.credentials_present,
        "credentials_expiration": _iso(expiry) if expiry is not None else None,
        "credentials_expiration_ms": expiry,
        "region": result.region,
        "kms_reachable": result.kms_reachable,
        "key_pool_ready": result.key_pool_ready,
        "key_pool_target": result.key_pool_target,
        "handles": result.handles,
        "last_error": result.last_error,
    }
    output["_human"] = "\n".join(
        f"{k.replace('_', ' ')}: {_human_value(v)}"
        for k, v in output.items()
        if k != "credentials_expiration_ms"
    )
    if not result.ready:
        output["_refusal"] = f"enclave not ready: {_not_ready_reason(output)}"
    return output


def _not_ready_reason(health: Output) -> str:
    if not health["credentials_present"]:
        return "no credentials (is `nitrokms credentials` running?)"
    if health["last_error"]:
        return str(health["last_error"])
    if not health["kms_reachable"]:
        return "KMS unreachable (is the relay running?)"
    return f"key pool {health['key_pool_ready']}/{health['key_pool_target']} keys ready"


def _iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).isoformat()


_EXAMPLES: dict[str, str] = {
    "generate-data-key": "--key-id alias/app --context tenant=a --json",
    "load-data-key": "--ciphertext-blob $BLOB_B64 --key-id alias/app",
    "forget-key": "$HANDLE",
    "seal": "--key-id alias/app --in secret.txt --out secret.sealed",
    "unseal": "--in secret.sealed --out secret.txt",
    "attest": "--nonce 00112233 --out doc.cose",
    "describe": "--enclave vsock://16:5000",
    "health": "--json",
}

_OPERATIONS: dict[str, tuple[Callable[[argparse.ArgumentParser], None], Operation, str]] = {
    "generate-data-key": (_configure_generate, _generate, "new data key held in the enclave"),
    "load-data-key": (_configure_load, _load, "load a data key from its CiphertextBlob"),
    "forget-key": (_configure_forget, _forget, "wipe a data key from the enclave"),
    "seal": (_configure_seal, _seal, "encrypt data into a self-contained envelope"),
    "unseal": (_configure_unseal, _unseal, "decrypt an envelope"),
    "attest": (_configure_attest, _attest, "fetch an attestation document"),
    "describe": (_configure_nothing, _describe, "module id, PCRs, versions"),
    "health": (_configure_nothing, _health, "readiness, credentials, key pool"),
}
