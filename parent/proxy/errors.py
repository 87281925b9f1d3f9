"""The one exception family of parent/proxy/.

Every error carries a stable namespaced `code`. Start-up problems (config, allowlist, listening)
end the process with their message; per-connection problems (resolution, upstream connect) are
logged and counted and only that connection is closed.
"""

from __future__ import annotations

NOT_ALLOWED_MESSAGE = "The given address and port are not allowed"
NO_ACCEPTED_IP_MESSAGE = "No accepted IP was found."


class ProxyError(Exception):
    """Root of every error raised by parent/proxy/."""

    default_code = "proxy.Error"

    def __init__(self, message: str, *, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.code = code or self.default_code


class ConfigError(ProxyError, ValueError):
    """The allowlist file is missing, unreadable, too large or malformed."""

    default_code = "proxy.BadConfig"


class NotAllowedError(ProxyError):
    """REMOTE_ADDR:REMOTE_PORT is not covered by the allowlist."""

    default_code = "proxy.NotAllowed"


class ResolveError(ProxyError):
    """A host name could not be turned into an accepted IP address."""

    default_code = "proxy.ResolveFailed"


class UpstreamError(ProxyError):
    """The upstream connection could not be made (refused, unreachable or timed out)."""

    default_code = "proxy.UpstreamConnectFailed"
