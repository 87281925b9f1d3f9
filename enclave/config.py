"""Configuration of `python -m nitrokms.enclave`: built-in defaults, then the image's settings
file, then the `NITROKMS_*` environment, then the command line (each wins over the one before).

On Nitro hardware nitro-cli starts the enclave with no arguments and no environment beyond the
image's own, so the settings file (`/etc/nitrokms/enclave.json`, JSON object keyed by option name
with underscores, e.g. `{"region": "eu-west-1", "parent_cid": 3}`) is where a deployment's values
live: it is baked into the image at build time (`make image REGION=...`), hence measured into PCR2
and pinned by the key policy. The environment and the command line are for development.
`--show-config` prints the result. Nothing secret is configured here: credentials arrive over RPC
(SetCredentials).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

from nitrokms import __version__
from nitrokms.enclave.session import READ_CHUNK_BYTES
from nitrokms.proto.addresses import Address, VsockAddress, parse_address
from nitrokms.proto.errors import AddressError
from nitrokms.proto.framing import DEFAULT_MAX_FRAME_BYTES
from nitrokms.proto.messages import REGION

ENV_PREFIX: Final = "NITROKMS_"
DEFAULT_LISTEN: Final = "vsock://any:5000"
PARENT_CID: Final = 3
RELAY_PORT: Final = 8000
SETTINGS_PATH: Final = "/etc/nitrokms/enclave.json"
SETTINGS_ENV: Final = ENV_PREFIX + "SETTINGS"
MAX_SETTINGS_BYTES: Final = 64 * 1024
DEFAULT_CONTROL_LISTEN: Final = "vsock://any:5001"
NO_ADDRESS: Final = "none"
MiB: Final = 1024 * 1024
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
    parent_cid: int
    relay_port: int
    pool_size: int
    pool_max_age_s: float
    pool_max_uses: int
    pool_document_max_age_s: float
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

    def public(self) -> dict[str, object]:
        """The settings as JSON-ready values (`--show-config`)."""
        values: dict[str, object] = {}
        for name in self.__dataclass_fields__:
            value = getattr(self, name)
            values[name] = value if isinstance(value, int | float | str | None) else str(value)
        return values

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


@dataclass(frozen=True)
class Option:
    flag: str
    default: Any
    help: str
    kind: Callable[[str], Any] = str

    @property
    def name(self) -> str:
        return self.flag.lstrip("-").replace("-", "_")

    @property
    def env(self) -> str:
        return ENV_PREFIX + self.name.upper()


def _options(default_region: str) -> tuple[Option, ...]:
    frame_limit = _bounded(int, 1024, DEFAULT_MAX_FRAME_BYTES)
    log_choice = lambda s: _choice(s.upper(), LOG_LEVELS)  # noqa: E731
    return (
        Option("--listen", DEFAULT_LISTEN, "RPC listen address", _address),
        Option(
            "--control-listen",
            DEFAULT_CONTROL_LISTEN,
            "listen address for the credential provider (SetCredentials and Health only, with "
            f"connection slots of its own); '{NO_ADDRESS}' turns it off",
            _optional_address,
        ),
        Option("--region", default_region, "AWS region of the KMS keys"),
        Option("--kms-endpoint", None, "KMS host[:port] (default kms.REGION.amazonaws.com:443)"),
        Option("--parent-cid", PARENT_CID, "vsock CID of the parent (3 on Nitro)", _cid),
        Option(
            "--relay-port", RELAY_PORT, "the parent relay's vsock port", _bounded(int, 1, 65535)
        ),
        Option(
            "--kms-relay", None, "relay address (default vsock://PARENT_CID:RELAY_PORT)", _address
        ),
        Option(
            "--proxy-port", 0, "in-enclave CONNECT proxy port (0 = any)", _bounded(int, 0, 65535)
        ),
        Option("--ca-bundle", None, "CA roots for KMS TLS, PEM (default: system/certifi)"),
        Option("--pool-size", 2, "recipient RSA keys kept ready", _bounded(int, 1, 64)),
        Option("--pool-max-age-s", 3600.0, "recipient key lifetime", _bounded(float, 1, 86400)),
        Option("--pool-max-uses", 1000, "uses per recipient key", _bounded(int, 1, 10**9)),
        Option(
            "--pool-document-max-age-s",
            60.0,
            "reuse a key's pre-made attestation document up to this age (0 = a new one per call)",
            _bounded(float, 0, 3600),
        ),
        Option("--max-keys", 1024, "data keys held at once (LRU beyond)", _bounded(int, 1, 10**6)),
        Option("--key-ttl-s", 3600.0, "data key lifetime", _bounded(float, 1, 7 * 86400)),
        Option("--max-connections", 256, "RPC connections at once", _bounded(int, 1, 65536)),
        Option("--max-in-flight", 64, "requests in flight per connection", _bounded(int, 1, 4096)),
        Option("--max-frame-bytes", DEFAULT_MAX_FRAME_BYTES, "largest RPC frame", frame_limit),
        Option(
            "--connection-buffer-bytes",
            16 * MiB,
            "bytes held per connection: the frame being read, requests running, replies unsent "
            "(at least max-frame-bytes + 128 KiB)",
            _bounded(int, 1024, 2**40),
        ),
        Option(
            "--total-buffer-bytes",
            256 * MiB,
            "bytes held for all connections together (each may still use 128 KiB beyond it)",
            _bounded(int, 1024, 2**42),
        ),
        Option(
            "--max-bad-requests",
            4,
            "invalid requests before a connection is closed",
            _bounded(int, 1, 10**6),
        ),
        Option("--request-timeout-s", 30.0, "per-request timeout", _bounded(float, 0.01, 3600)),
        Option("--idle-timeout-s", 60.0, "idle/read timeout", _bounded(float, 0.01, 86400)),
        Option(
            "--send-timeout-s",
            10.0,
            "close a connection that takes no reply bytes for this long",
            _bounded(float, 0.01, 86400),
        ),
        Option("--shutdown-grace-s", 10.0, "drain time on SIGTERM", _bounded(float, 0.01, 600)),
        Option("--workers", 16, "threads running KMS-bound requests", _bounded(int, 1, 1024)),
        Option(
            "--local-workers",
            4,
            "threads running requests that need no KMS call",
            _bounded(int, 1, 1024),
        ),
        Option(
            "--max-workers-per-connection",
            8,
            "threads of each kind one connection may hold",
            _bounded(int, 1, 1024),
        ),
        Option(
            "--control-max-connections",
            8,
            "connections at once on --control-listen",
            _bounded(int, 1, 1024),
        ),
        Option("--kms-max-attempts", 4, "KMS attempts per call", _bounded(int, 1, 20)),
        Option("--log-level", "INFO", "log level", log_choice),
    )


def _cid(text: str) -> int:
    """A peer CID: 2 (the host, under a VM) and up; 0 and 1 are never a parent."""
    return int(_bounded(int, 2, 0xFFFFFFFE)(text))


class SettingsError(ValueError):
    """The settings file is unreadable, not a JSON object, or holds an unknown or bad value."""


def load_settings(path: str, options: Sequence[Option], *, required: bool) -> dict[str, str]:
    """Option name -> value as text (the form argparse converts), from the JSON settings file at
    `path`. A missing file is no settings unless `required`. Raises SettingsError."""
    try:
        with open(path, "rb") as fh:
            data = fh.read(MAX_SETTINGS_BYTES + 1)
    except FileNotFoundError:
        if required:
            raise SettingsError(f"settings file {path} does not exist") from None
        return {}
    except OSError as exc:
        raise SettingsError(f"settings file {path}: {exc.strerror or exc}") from None
    if len(data) > MAX_SETTINGS_BYTES:
        raise SettingsError(f"settings file {path} exceeds {MAX_SETTINGS_BYTES} bytes")
    try:
        document = json.loads(data)
    except (ValueError, UnicodeDecodeError):
        raise SettingsError(f"settings file {path} is not JSON") from None
    if not isinstance(document, dict):
        raise SettingsError(f"settings file {path} is not a JSON object")
    by_name = {option.name: option for option in options}
    values: dict[str, str] = {}
    for key, value in document.items():
        option = by_name.get(key)
        if option is None:
            raise SettingsError(f"settings file {path}: unknown setting {key!r}")
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, str | int | float):
            raise SettingsError(f"settings file {path}: {key} must be a string or a number")
        try:
            option.kind(str(value))
        except (argparse.ArgumentTypeError, ValueError) as exc:
            raise SettingsError(f"settings file {path}: {key}: {exc}") from None
        values[key] = str(value)
    return values


def build_parser(
    environ: Mapping[str, str], settings: Mapping[str, str] | None = None
) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m nitrokms.enclave",
        description="The nitrokms enclave service: attested KMS data keys behind an RPC socket.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"nitrokms enclave {__version__}")
    parser.add_argument(
        "--settings", metavar="FILE",
        help=f"settings file (JSON) [env {SETTINGS_ENV}; default {SETTINGS_PATH} if present]",
    )  # fmt: skip
    parser.add_argument(
        "--show-config", action="store_true", help="print the effective settings (JSON) and exit"
    )
    settings = settings or {}
    default_region = environ.get("AWS_REGION") or environ.get("AWS_DEFAULT_REGION")
    for option in _options(default_region or DEFAULT_REGION):
        raw = environ.get(option.env, settings.get(option.name))
        value = option.default if raw is None else raw
        help_text = f"{option.help} [env {option.env}]"
        parser.add_argument(option.flag, type=option.kind, default=value, help=help_text)
    return parser


def _settings_path(argv: Sequence[str], environ: Mapping[str, str]) -> tuple[str, bool]:
    """(path, whether it was asked for explicitly)."""
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--settings")
    known, _ = pre.parse_known_args(list(argv))
    explicit = known.settings or environ.get(SETTINGS_ENV)
    return (explicit, True) if explicit else (SETTINGS_PATH, False)


def _choice(value: str, choices: Sequence[str]) -> str:
    if value not in choices:
        raise argparse.ArgumentTypeError(f"{value!r} is not one of {', '.join(choices)}")
    return value


def parse_config(argv: Sequence[str], environ: Mapping[str, str] | None = None) -> Config:
    """Parse settings; exits with status 2 and a usage message on a bad value (argparse)."""
    environ = os.environ if environ is None else environ
    path, required = _settings_path(argv, environ)
    try:
        settings = load_settings(path, _options(DEFAULT_REGION), required=required)
    except SettingsError as exc:
        build_parser(environ).error(str(exc))
    parser = build_parser(environ, settings)
    args = parser.parse_args(list(argv))
    try:
        kms_host, kms_port = split_endpoint(args.kms_endpoint or f"kms.{args.region}.amazonaws.com")
    except ValueError as exc:
        parser.error(str(exc))
    if not _REGION.fullmatch(args.region):
        parser.error(f"--region {args.region!r} is not an AWS region name")
    if args.kms_relay is None:
        args.kms_relay = VsockAddress(args.parent_cid, args.relay_port)
    whole_frame = args.max_frame_bytes + 2 * READ_CHUNK_BYTES
    if args.connection_buffer_bytes < whole_frame:
        parser.error(f"--connection-buffer-bytes must be at least {whole_frame} (a whole frame)")
    if args.total_buffer_bytes < args.connection_buffer_bytes:
        parser.error("--total-buffer-bytes must be at least --connection-buffer-bytes")
    skipped = ("kms_endpoint", "settings", "show_config")
    values = {k: v for k, v in vars(args).items() if k not in skipped}
    return Config(kms_host=kms_host, kms_port=kms_port, **values)


def log_level(config: Config) -> int:
    level: int = getattr(logging, config.log_level)
    return level
