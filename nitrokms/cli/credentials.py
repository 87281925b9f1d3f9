"""`nitrokms credentials`: push AWS credentials from boto3's chain to the enclave, and keep them
fresh (a daemon unless `--once`). Secrets come from the chain, never from argv."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import signal

from botocore.utils import InstanceMetadataRegionFetcher

from nitrokms.cli import CLIError
from nitrokms.cli.call import add_enclave_arguments, make_client
from nitrokms.parent.credentials import (
    DEFAULT_POLL_INTERVAL_S,
    DEFAULT_REFRESH_MARGIN_S,
    CredentialProvider,
    CredentialSourceError,
)
from nitrokms.parent.rpc.client import AsyncEnclaveClient
from nitrokms.parent.rpc.errors import RPCError

IMDS_TIMEOUT_S = 1.0


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "credentials",
        help="feed the enclave AWS credentials (IMDSv2, environment or profile)",
        description="Push AWS credentials from boto3's default chain to the enclave with "
        "SetCredentials, refresh them ahead of expiry and after an enclave restart.",
    )
    add_enclave_arguments(parser)
    parser.add_argument(
        "--region", help="AWS region (default: the boto3 session's, else the instance's)"
    )
    parser.add_argument("--once", action="store_true", help="push once and exit")
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
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    client = make_client(args)
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
        asyncio.run(_main(client, provider, once=args.once))
    except (RPCError, CredentialSourceError) as exc:
        raise CLIError(str(exc)) from None
    return 0


async def _main(client: AsyncEnclaveClient, provider: CredentialProvider, *, once: bool) -> None:
    async with client:
        if once:
            await provider.push_once()
            return
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, stop.set)
        try:
            await provider.run(stop)
        finally:
            for signum in (signal.SIGTERM, signal.SIGINT):
                loop.remove_signal_handler(signum)


def _instance_region() -> str | None:
    """The EC2 instance's region from IMDSv2, or None off EC2 (or with IMDS disabled)."""
    if os.environ.get("AWS_EC2_METADATA_DISABLED", "").lower() == "true":
        return None
    with contextlib.suppress(Exception):
        region = InstanceMetadataRegionFetcher(timeout=IMDS_TIMEOUT_S).retrieve_region()
        return region if isinstance(region, str) and region else None
    return None
