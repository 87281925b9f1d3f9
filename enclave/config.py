"""Configuration of `python -m nitrokms.enclave`: command-line options over the `NITROKMS_*`
environment. Every option has an environment variable (named in `--help`); an option given on
the command line wins. Nothing secret is configured here: credentials arrive over RPC
(SetCredentials).
"""

from __future__ import annotations

import argparse
import logging
import os
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

from nitrokms import __version__
from nitrokms.enclave.session import READ_CHUNK_BYTES
from nitrokms.proto.addresses import Address, parse_address
from nitrokms.proto.errors import AddressError
from nitrokms.proto.framing import DEFAULT_MAX_FRAME_BYTES
from nitrokms.proto.messages import REGION

ENV_PREFIX: Final = "NITROKMS_"
DEFAULT_LISTEN: Final = "vsock://any:5000"
DEFAULT_CONTROL_LISTEN: Final = "vsock://any:5001"
NO_ADDRESS: Final = "none"
MiB: Final = 1024 * 1024
DEFAULT_RELAY: Final = "vsock://3:8000"
DEFAULT_REGION: Final = "us-east-1"
KMS_PORT: Final = 443
LOG_LEVELS: Final = ("DEBUG", "INFO", "WARNING", "ERROR")
_REGION: Final = re.compile(REGION.pattern or "")


@dataclass(frozen=True)
class Config:
    listen: Address
    control_listen: Address | None
    region: str
    kms_host: str
    kms_port: int
    kms_relay: Address
    proxy_port: int
    ca_bundle: str | None
    pool_size: int
    pool_max_age_s: float
    pool_max_uses: int
    max_keys: int
    key_ttl_s: float
    max_connections: int
    max_in_flight: int
    max_frame_bytes: int
    connection_buffer_bytes: int
    total_buffer_bytes: int
    max_bad_requests: int
    request_timeout_s: float
    idle_timeout_s: float
    send_timeout_s: float
    shutdown_grace_s: float
    workers: int
    local_workers: int
    max_workers_per_connection: int
    control_max_connections: int
    kms_max_attempts: int
    log_level: str

    @property
    def endpoint_url(self) -> str:
        host = f"[{self.kms_host}]" if ":" in self.kms_host else self.kms_host
        return f"https://{host}" + ("" if self.kms_port == KMS_PORT else f":{self.kms_port}")


def _address(text: str) -> Address:
    try:
        return parse_address(text)
    except AddressError as exc:
        raise argparse.ArgumentTypeError(exc.message) from None


def _optional_address(text: str) -> Address | None:
    return None if text.strip().lower() == NO_ADDRESS else _address(text)


def _bounded(kind: Callable[[str], Any], lo: float, hi: float) -> Callable[[str], Any]:
    def convert(text: str) -> Any:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
        if not lo <= value <= hi:
            raise argparse.ArgumentTypeError(f"{text} is outside {lo:g}..{hi:g}")
        return value

    return convert


def split_endpoint(text: str) -> tuple[str, int]:
    """`HOST`, `HOST:PORT` or `https://HOST[:PORT]` -> (host, port). Raises ValueError."""
    rest = text.removeprefix("https://").rstrip("/")
    if "/" in rest or not rest or "://" in rest:
        raise ValueError(f"KMS endpoint {text!r} must be HOST, HOST:PORT or https://HOST[:PORT]")
    if rest.startswith("["):
        host, _, tail = rest[1:].partition("]")
        port_text = tail.removeprefix(":") if tail else str(KMS_PORT)
    else:
        host, sep, port_text = rest.partition(":")
        port_text = port_text if sep else str(KMS_PORT)
    if not host or not port_text.isdigit() or not 1 <= int(port_text) <= 0xFFFF:
        raise ValueError(f"KMS endpoint {text!r} has a bad host or port")
    return host, int(port_text)


def build_parser(environ: Mapping[str, str]) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m nitrokms.enclave",
        description="The nitrokms enclave service: attested KMS data keys behind an RPC socket.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"nitrokms enclave {__version__}")

    def option(flag: str, default: Any, help_text: str, kind: Callable[[str], Any] = str) -> None:
        env = ENV_PREFIX + flag.lstrip("-").replace("-", "_").upper()
        raw = environ.get(env)
        value = default if raw is None else raw
        parser.add_argument(flag, type=kind, default=value, help=f"{help_text} [env {env}]")

    default_region = environ.get("AWS_REGION") or environ.get("AWS_DEFAULT_REGION")
    option("--listen", DEFAULT_LISTEN, "RPC listen address", _address)
    option(
        "--control-listen",
        DEFAULT_CONTROL_LISTEN,
        "listen address for the credential provider (SetCredentials and Health only, with "
        f"connection slots of its own); '{NO_ADDRESS}' turns it off",
        _optional_address,
    )
    option("--region", default_region or DEFAULT_REGION, "AWS region of the KMS keys")
    option("--kms-endpoint", None, "KMS host[:port] (default kms.REGION.amazonaws.com:443)")
    option("--kms-relay", DEFAULT_RELAY, "the parent's KMS relay address", _address)
    option("--proxy-port", 0, "in-enclave CONNECT proxy port (0 = any)", _bounded(int, 0, 65535))
    option("--ca-bundle", None, "CA bundle for KMS TLS (default: system/certifi)")
    option("--pool-size", 2, "recipient RSA keys kept ready", _bounded(int, 1, 64))
    option("--pool-max-age-s", 3600.0, "recipient key lifetime", _bounded(float, 1, 86400))
    option("--pool-max-uses", 1000, "uses per recipient key", _bounded(int, 1, 10**9))
    option("--max-keys", 1024, "data keys held at once (LRU beyond)", _bounded(int, 1, 10**6))
    option("--key-ttl-s", 3600.0, "data key lifetime in the keyring", _bounded(float, 1, 7 * 86400))
    option("--max-connections", 256, "RPC connections at once", _bounded(int, 1, 65536))
    option("--max-in-flight", 64, "requests in flight per connection", _bounded(int, 1, 4096))
    option(
        "--max-frame-bytes",
        DEFAULT_MAX_FRAME_BYTES,
        "largest RPC frame",
        _bounded(int, 1024, DEFAULT_MAX_FRAME_BYTES),
    )
    option(
        "--connection-buffer-bytes",
        16 * MiB,
        "bytes held per connection: the frame being read, requests running, replies unsent "
        "(at least max-frame-bytes + 128 KiB)",
        _bounded(int, 1024, 2**40),
    )
    option(
        "--total-buffer-bytes",
        256 * MiB,
        "bytes held for all connections together (each may still use 128 KiB beyond it)",
        _bounded(int, 1024, 2**42),
    )
    option(
        "--max-bad-requests", 4, "invalid requests before a connection is closed",
        _bounded(int, 1, 10**6),
    )  # fmt: skip
    option("--request-timeout-s", 30.0, "per-request timeout", _bounded(float, 0.01, 3600))
    option(
        "--idle-timeout-s", 60.0, "idle/read timeout per connection", _bounded(float, 0.01, 86400)
    )
    option(
        "--send-timeout-s", 10.0, "close a connection that takes no reply bytes for this long",
        _bounded(float, 0.01, 86400),
    )  # fmt: skip
    option(
        "--shutdown-grace-s", 10.0, "time to finish requests on SIGTERM", _bounded(float, 0.01, 600)
    )
    option("--workers", 16, "threads running KMS-bound requests", _bounded(int, 1, 1024))
    option(
        "--local-workers", 4, "threads running requests that need no KMS call",
        _bounded(int, 1, 1024),
    )  # fmt: skip
    option(
        "--max-workers-per-connection", 8, "threads of each kind one connection may hold",
        _bounded(int, 1, 1024),
    )  # fmt: skip
    option(
        "--control-max-connections", 8, "connections at once on --control-listen",
        _bounded(int, 1, 1024),
    )  # fmt: skip
    option("--kms-max-attempts", 4, "KMS attempts per call (retries + 1)", _bounded(int, 1, 20))
    option("--log-level", "INFO", "log level", lambda s: _choice(s.upper(), LOG_LEVELS))
    return parser


def _choice(value: str, choices: Sequence[str]) -> str:
    if value not in choices:
        raise argparse.ArgumentTypeError(f"{value!r} is not one of {', '.join(choices)}")
    return value


def parse_config(argv: Sequence[str], environ: Mapping[str, str] | None = None) -> Config:
    """Parse options; exits with status 2 and a usage message on a bad value (argparse)."""
    environ = os.environ if environ is None else environ
    parser = build_parser(environ)
    args = parser.parse_args(list(argv))
    try:
        kms_host, kms_port = split_endpoint(args.kms_endpoint or f"kms.{args.region}.amazonaws.com")
    except ValueError as exc:
        parser.error(str(exc))
    if not _REGION.fullmatch(args.region):
        parser.error(f"--region {args.region!r} is not an AWS region name")
    whole_frame = args.max_frame_bytes + 2 * READ_CHUNK_BYTES
    if args.connection_buffer_bytes < whole_frame:
        parser.error(f"--connection-buffer-bytes must be at least {whole_frame} (a whole frame)")
    if args.total_buffer_bytes < args.connection_buffer_bytes:
        parser.error("--total-buffer-bytes must be at least --connection-buffer-bytes")
    values = {k: v for k, v in vars(args).items() if k != "kms_endpoint"}
    return Config(kms_host=kms_host, kms_port=kms_port, **values)


def log_level(config: Config) -> int:
    level: int = getattr(logging, config.log_level)
    return level
