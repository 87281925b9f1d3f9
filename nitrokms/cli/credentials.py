"""`nitrokms credentials`: push AWS credentials from boto3's chain to the enclave, and keep them
fresh (a daemon unless `--once`). Secrets come from the chain, never from argv."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import signal
import time
from datetime import datetime

from botocore.utils import InstanceMetadataRegionFetcher

from nitrokms.cli import CLIError, examples
from nitrokms.cli.call import add_enclave_arguments, make_client
from nitrokms.parent.credentials import (
    DEFAULT_POLL_INTERVAL_S,
    DEFAULT_REFRESH_MARGIN_S,
    CredentialProvider,
    CredentialSourceError,
    PushRecord,
)
from nitrokms.parent.rpc.client import AsyncEnclaveClient
from nitrokms.parent.rpc.endpoint import CONTROL_PORT
from nitrokms.parent.rpc.errors import RPCError

IMDS_TIMEOUT_S = 1.0


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "credentials",
        help="feed the enclave AWS credentials (IMDSv2, environment or profile)",
        description="Push AWS credentials from boto3's default chain to the enclave with "
        "SetCredentials, refresh them ahead of expiry and after an enclave restart. A CID "
        "means the service's control listener, vsock://CID:5001 (SetCredentials and Health "
        "only, with connection slots of its own). Exit 0 "
        "pushed (--once) or stopped by SIGTERM/SIGINT, 1 no credentials or the push failed, 2 "
        "usage.",
        epilog=examples(
            "nitrokms credentials --cid 16            # daemon: IMDSv2 on the parent instance",
            "AWS_PROFILE=dev nitrokms credentials --once --enclave unix:///run/enclave.sock --json",
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_enclave_arguments(parser, port=CONTROL_PORT)
    parser.add_argument(
        "--region", help="AWS region (default: the boto3 session's, else the instance's)"
    )
    parser.add_argument("--once", action="store_true", help="push once and exit")
    parser.add_argument(
        "--json",
        action="store_true",
        help="--once: print what was pushed (no secret) as JSON; daemon: log JSON lines",
    )
    parser.add_argument(
        "--refresh-margin",
        type=float,
        default=DEFAULT_REFRESH_MARGIN_S,
        metavar="S",
        help=f"refresh this long before expiry (default {DEFAULT_REFRESH_MARGIN_S:g})",
    )
    parser.add_argument(
        "--poll-interval",
        type=float,
        default=DEFAULT_POLL_INTERVAL_S,
        metavar="S",
        help=f"check the enclave's health this often (default {DEFAULT_POLL_INTERVAL_S:g})",
    )
    parser.set_defaults(handler=_handle)


def _handle(args: argparse.Namespace) -> int:
    if args.refresh_margin < 0 or args.poll_interval <= 0:
        raise CLIError("--refresh-margin must be >= 0 and --poll-interval > 0", exit_code=2)
    handler = logging.StreamHandler()
    handler.setFormatter(_JSONFormatter() if args.json else logging.Formatter(TEXT_FORMAT))
    logging.basicConfig(level=logging.INFO, handlers=[handler])
    client = make_client(args, port=CONTROL_PORT)
    try:
        provider = CredentialProvider(
            client,
            region=args.region,
            refresh_margin_s=args.refresh_margin,
            poll_interval_s=args.poll_interval,
        )
        provider.region = provider.region or _instance_region()
        if provider.region is None:
            raise CLIError(
                "no AWS region: pass --region, set AWS_REGION, or run on EC2", exit_code=2
            )
        record = asyncio.run(_main(client, provider, once=args.once))
    except (RPCError, CredentialSourceError) as exc:
        raise CLIError(str(exc)) from None
    if record is not None and args.json:
        print(json.dumps(_record_json(record), indent=2))
    return 0


TEXT_FORMAT = "%(asctime)s %(name)s %(levelname)s %(message)s"


class _JSONFormatter(logging.Formatter):
    """One JSON object per log line (the messages name no secret: see parent.credentials)."""

    def format(self, record: logging.LogRecord) -> str:
        return json.dumps(
            {
                "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)),
                "level": record.levelname.lower(),
                "logger": record.name,
                "message": record.getMessage(),
            }
        )


def _record_json(record: PushRecord) -> dict[str, object]:
    return {
        "pushed": True,
        "access_key": record.access_key_hint,
        "region": record.region,
        "expiration": _iso(record.expiry),
        "refresh_at": _iso(record.refresh_at),
    }


def _iso(value: datetime | None) -> str | None:
    return None if value is None else value.isoformat()


async def _main(
    client: AsyncEnclaveClient, provider: CredentialProvider, *, once: bool
) -> PushRecord | None:
    async with client:
        if once:
            return await provider.push_once()
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, stop.set)
        try:
            await provider.run(stop)
        finally:
            for signum in (signal.SIGTERM, signal.SIGINT):
                loop.remove_signal_handler(signum)
        return None


def _instance_region() -> str | None:
    """The EC2 instance's region from IMDSv2, or None off EC2 (or with IMDS disabled)."""
    if os.environ.get("AWS_EC2_METADATA_DISABLED", "").lower() == "true":
        return None
    with contextlib.suppress(Exception):
        region = InstanceMetadataRegionFetcher(timeout=IMDS_TIMEOUT_S).retrieve_region()
        return region if isinstance(region, str) and region else None
    return None
