"""`nitrokms proxy`: the vsock relay, argument- and allowlist-compatible with AWS vsock-proxy."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import resource
import signal
from typing import Any

from nitrokms.cli import CLIError, examples
from nitrokms.parent.proxy import logs
from nitrokms.parent.proxy.allowlist import (
    DEFAULT_CONFIG_PATH,
    AllowEntry,
    check_allowlist,
    load_allowlist,
)
from nitrokms.parent.proxy.errors import ProxyError
from nitrokms.parent.proxy.metrics import Metrics, start_metrics_server
from nitrokms.parent.proxy.relay import (
    DEFAULT_CONNECT_TIMEOUT_S,
    DEFAULT_DRAIN_TIMEOUT_S,
    DEFAULT_IDLE_TIMEOUT_S,
    DEFAULT_MAX_CONNECTIONS,
    Relay,
    RelaySettings,
)
from nitrokms.parent.proxy.resolver import (
    DEFAULT_FALLBACK_TTL_S,
    IpFamily,
    Resolver,
    normalise_host,
    parse_ip,
)
from nitrokms.proto.addresses import (
    VMADDR_CID_PARENT,
    Address,
    TcpAddress,
    VsockAddress,
    parse_address,
)
from nitrokms.proto.errors import AddressError
from nitrokms.transport.sockets import bound_address

FDS_PER_CONNECTION = 2
SPARE_FDS = 64

DESCRIPTION = """\
Relay connections from the enclave (vsock CID 3, LOCAL_PORT) to REMOTE_ADDR:REMOTE_PORT over TCP,
if the allowlist in --config permits that destination: checked at start-up, like vsock-proxy, and
again for every connection against the address REMOTE_ADDR resolves to then, so a changed DNS
answer cannot lead anywhere nobody allowlisted. The bytes are never parsed; TLS to KMS ends inside
the enclave.

-w/--num_workers is accepted for vsock-proxy compatibility (it must be >= 1) and has no effect:
one asyncio event loop serves every connection, so there is no worker pool to size.
"""


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "proxy",
        help="vsock-to-TCP relay for the enclave's KMS traffic (drop-in for vsock-proxy)",
        description=DESCRIPTION,
        epilog=examples(
            "nitrokms proxy 8000 kms.eu-west-1.amazonaws.com 443",
            "nitrokms proxy 8000 kms.eu-west-1.amazonaws.com 443 --config vsock-proxy.yaml "
            "--metrics tcp://127.0.0.1:9100",
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("local_port", type=_port, help="vsock port to listen on (CID 3)")
    parser.add_argument("remote_addr", help="destination host name or IP address")
    parser.add_argument("remote_port", type=_port, help="destination TCP port")
    parser.add_argument("--config", default=DEFAULT_CONFIG_PATH, help="allowlist YAML file")
    family = parser.add_mutually_exclusive_group()
    family.add_argument("-4", "--ipv4", action="store_true", help="use IPv4 addresses only")
    family.add_argument("-6", "--ipv6", action="store_true", help="use IPv6 addresses only")
    parser.add_argument(
        "-w",
        "--num_workers",
        "--num-workers",
        type=_positive_int,
        default=4,
        metavar="N",
        help="accepted for compatibility; no effect (see above)",
    )
    parser.add_argument(
        "--listen",
        type=_address,
        metavar="ADDR",
        help="listen here instead of vsock://3:LOCAL_PORT (tcp://HOST:PORT, unix:///path)",
    )
    parser.add_argument(
        "--connect-timeout",
        type=_positive_float,
        default=DEFAULT_CONNECT_TIMEOUT_S,
        metavar="S",
        help="upstream connect timeout (default %(default)s)",
    )
    parser.add_argument(
        "--idle-timeout",
        type=_non_negative_float,
        default=DEFAULT_IDLE_TIMEOUT_S,
        metavar="S",
        help="close a pair after S seconds without bytes either way; 0 disables "
        "(default %(default)s)",
    )
    parser.add_argument(
        "--max-connections",
        type=_positive_int,
        default=DEFAULT_MAX_CONNECTIONS,
        metavar="N",
        help="connections beyond N are closed at once and counted (default %(default)s)",
    )
    parser.add_argument(
        "--drain-timeout",
        type=_non_negative_float,
        default=DEFAULT_DRAIN_TIMEOUT_S,
        metavar="S",
        help="on SIGTERM, let open connections finish for S seconds",
    )
    parser.add_argument(
        "--dns-fallback-ttl",
        type=_non_negative_float,
        default=DEFAULT_FALLBACK_TTL_S,
        metavar="S",
        help="cache time for names resolved without a DNS TTL (/etc/hosts etc.)",
    )
    parser.add_argument(
        "--metrics",
        type=_tcp_address,
        metavar="ADDR",
        help="serve Prometheus text at http://ADDR/metrics (tcp://HOST:PORT)",
    )
    parser.add_argument("--log-format", choices=("text", "json"), default="text")
    parser.add_argument(
        "--log-level",
        choices=("debug", "info", "warning", "error"),
        default="info",
        help="debug adds one line per closed connection",
    )
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    logs.configure(args.log_format, getattr(logging, args.log_level.upper()))
    try:
        entries = load_allowlist(args.config)
    except ProxyError as exc:
        raise CLIError(exc.message) from exc
    family = IpFamily.V4 if args.ipv4 else IpFamily.V6 if args.ipv6 else IpFamily.ANY
    resolver = Resolver(family, fallback_ttl_s=args.dns_fallback_ttl)
    settings = RelaySettings(
        remote_host=args.remote_addr,
        remote_port=args.remote_port,
        connect_timeout_s=args.connect_timeout,
        idle_timeout_s=args.idle_timeout or None,
        max_connections=args.max_connections,
        allowlist=entries,
    )
    listen = args.listen or VsockAddress(VMADDR_CID_PARENT, args.local_port)
    _raise_fd_limit(settings.max_connections * FDS_PER_CONNECTION + SPARE_FDS)
    return asyncio.run(_serve(args, entries, resolver, settings, listen))


async def _serve(
    args: argparse.Namespace,
    entries: tuple[AllowEntry, ...],
    resolver: Resolver,
    settings: RelaySettings,
    listen: Address,
) -> int:
    try:
        if parse_ip(args.remote_addr) is None:
            normalise_host(args.remote_addr)
        else:
            await resolver.resolve_all(args.remote_addr)  # an IP of the wrong family never works
        await check_allowlist(entries, args.remote_addr, args.remote_port, resolver.resolve_all)
    except ProxyError as exc:
        raise CLIError(exc.message) from exc
    metrics = Metrics()
    relay = Relay(settings, resolver, metrics)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    bound = await _listen(relay, listen)
    metrics_server = await _start_metrics(metrics, args.metrics)
    logs.event(
        logging.INFO,
        "proxy.listening",
        address=str(bound),
        remote=f"{settings.remote_host}:{settings.remote_port}",
        family=resolver.family.value,
        metrics=str(bound_address(metrics_server)) if metrics_server else None,
    )
    await stop.wait()
    relay.stop_accepting()
    logs.event(logging.INFO, "proxy.draining", active=metrics.active, timeout_s=args.drain_timeout)
    aborted = await relay.drain(args.drain_timeout)
    if metrics_server is not None:
        metrics_server.close()
    logs.event(logging.INFO, "proxy.stopped", aborted=aborted, accepted=metrics.accepted)
    return 0


async def _listen(relay: Relay, listen: Address) -> Address:
    try:
        return await relay.start(listen)
    except (OSError, AddressError) as exc:
        hint = ""
        if isinstance(listen, VsockAddress):
            hint = " (is this a Nitro Enclaves parent with vsock? --listen overrides the address)"
        raise CLIError(f"cannot listen on {listen}: {_reason(exc)}{hint}") from exc


async def _start_metrics(
    metrics: Metrics, address: Address | None
) -> asyncio.AbstractServer | None:
    if address is None:
        return None
    try:
        return await start_metrics_server(metrics, address)
    except OSError as exc:
        raise CLIError(f"cannot serve metrics on {address}: {_reason(exc)}") from exc


def _reason(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc)


def _raise_fd_limit(wanted: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if soft != resource.RLIM_INFINITY and soft < target:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))


def _port(text: str) -> int:
    value = _positive_int(text)
    if value > 0xFFFF:
        raise argparse.ArgumentTypeError(f"port {value} is out of range 1..65535")
    return value


def _positive_int(text: str) -> int:
    try:
        value = int(text, 10)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} must be at least 1")
    return value


def _non_negative_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not 0 <= value < float("inf"):
        raise argparse.ArgumentTypeError(f"{text!r} must be a finite number >= 0")
    return value


def _positive_float(text: str) -> float:
    value = _non_negative_float(text)
    if value == 0:
        raise argparse.ArgumentTypeError("must be greater than 0")
    return value


def _address(text: str) -> Address:
    try:
        return parse_address(text)
    except AddressError as exc:
        raise argparse.ArgumentTypeError(exc.message) from None


def _tcp_address(text: str) -> Address:
    address = _address(text)
    if not isinstance(address, TcpAddress):
        raise argparse.ArgumentTypeError("the metrics endpoint needs a tcp://HOST:PORT address")
    return address
