"""`nitrokms proxy`: the parent's vsock-to-TCP byte relay, a drop-in for AWS vsock-proxy.

It never imports or parses proto messages: it only moves bytes (DESIGN.md, threat model).
"""

from __future__ import annotations

from nitrokms.parent.proxy.allowlist import (
    DEFAULT_CONFIG_PATH,
    AllowEntry,
    check_allowlist,
    load_allowlist,
    parse_allowlist,
)
from nitrokms.parent.proxy.errors import (
    NOT_ALLOWED_MESSAGE,
    ConfigError,
    NotAllowedError,
    ProxyError,
    ResolveError,
    UpstreamError,
)
from nitrokms.parent.proxy.metrics import Metrics, start_metrics_server
from nitrokms.parent.proxy.relay import Relay, RelaySettings
from nitrokms.parent.proxy.resolver import IpFamily, Resolver

__all__ = [
    "DEFAULT_CONFIG_PATH",
    "NOT_ALLOWED_MESSAGE",
    "AllowEntry",
    "ConfigError",
    "IpFamily",
    "Metrics",
    "NotAllowedError",
    "ProxyError",
    "Relay",
    "RelaySettings",
    "ResolveError",
    "Resolver",
    "UpstreamError",
    "check_allowlist",
    "load_allowlist",
    "parse_allowlist",
    "start_metrics_server",
]
