"""`python -m nitrokms.sim kms serve ...`: run the local KMS until SIGTERM/SIGINT.

The endpoint URL is the first line of stdout, printed (and flushed) only once the server accepts
requests, so a caller can use that line as its readiness signal. Logs go to stderr.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
from datetime import timedelta
from pathlib import Path
from types import FrameType

from nitrokms.sim.kms.auth import Credential, credentials_from_environment, load_credentials
from nitrokms.sim.kms.models import StateFileError
from nitrokms.sim.kms.server import DEFAULT_ACCOUNT, LocalKMS
from nitrokms.sim.nsm.pki import SimulatedPKI
from nitrokms.sim.paths import default_nsm_state_dir

log = logging.getLogger("nitrokms.sim.kms")


def _listen(value: str) -> tuple[str, int]:
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise argparse.ArgumentTypeError(f"expected HOST:PORT, got {value!r}")
    return host.strip("[]") or "127.0.0.1", int(port)


def _seconds(value: str) -> float:
    try:
        seconds = float(value)
    except ValueError:
        seconds = -1.0
    if not seconds > 0:
        raise argparse.ArgumentTypeError(f"expected a positive number of seconds, got {value!r}")
    return seconds


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m nitrokms.sim kms")
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser("serve", help="run the local KMS (HTTPS, AWS JSON 1.1)")
    serve.add_argument("--state", type=Path, required=True, help="state directory")
    serve.add_argument("--listen", type=_listen, default=("127.0.0.1", 0), help="HOST:PORT")
    serve.add_argument("--attestation-root", type=Path, help="PEM root for Recipient documents")
    serve.add_argument(
        "--max-document-age", type=_seconds, metavar="S", help="max attestation document age"
    )
    serve.add_argument("--credentials", type=Path, help="JSON list of credentials")
    serve.add_argument("--region", help="default: AWS_DEFAULT_REGION or us-east-1")
    serve.add_argument("--account", default=DEFAULT_ACCOUNT, help="account id owning the keys")
    serve.add_argument(
        "--log-timing", action="store_true", help="log each request's handling time (INFO)"
    )
    serve.add_argument(
        "--fault-plan", type=Path, metavar="FILE", help="inject scripted faults (see kms/faults.py)"
    )
    serve.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    return parser


def _credentials(path: Path | None) -> list[Credential]:
    if path is not None:
        return load_credentials(path)
    found = credentials_from_environment(os.environ)
    if not found:
        raise ValueError(
            "no credentials: pass --credentials FILE or set AWS_ACCESS_KEY_ID and "
            "AWS_SECRET_ACCESS_KEY"
        )
    return found


def _attestation_root(path: Path | None) -> bytes:
    if path is not None:
        return path.read_bytes()
    return SimulatedPKI.load_or_create(default_nsm_state_dir()).root_certificate_pem


def main(argv: list[str]) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        stream=sys.stderr,
        format="%(asctime)s %(name)s %(levelname)s %(message)s",
    )
    region = args.region or os.environ.get("AWS_DEFAULT_REGION") or "us-east-1"
    max_age = None if args.max_document_age is None else timedelta(seconds=args.max_document_age)
    try:
        kms = LocalKMS(
            args.state,
            _credentials(args.credentials),
            _attestation_root(args.attestation_root),
            region=region,
            account=args.account,
            host=args.listen[0],
            port=args.listen[1],
            max_document_age=max_age,
            log_timing=args.log_timing,
            fault_plan=args.fault_plan,
        )
        url = kms.start()
    except (ValueError, OSError, StateFileError) as exc:
        print(f"kms serve: {exc}", file=sys.stderr)
        return 1
    return _serve(kms, url)


def _serve(kms: LocalKMS, url: str) -> int:
    stop = threading.Event()

    def _on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    previous = {s: signal.signal(s, _on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        print(url, flush=True)
        stop.wait()
    finally:
        kms.stop()
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    log.info("local KMS stopped")
    return 0
