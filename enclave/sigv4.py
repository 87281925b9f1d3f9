"""AWS Signature Version 4 for the enclave's own KMS requests: pure functions over bytes.

Only what an AWS JSON 1.1 call needs: `POST /`, no query string, a JSON body, signed headers
`content-type`, `host`, `x-amz-date`, `x-amz-target` and, with a session token,
`x-amz-security-token`, in the same canonical form botocore's `SigV4Auth` produces (the tests sign
the same inputs with botocore and compare the canonical request and the signature). The derived
signing key depends only on the secret, the date, the region and the service, so a `Signer` keeps
the last one and derives it again only when the UTC date changes.
"""

from __future__ import annotations

import hashlib
import hmac
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime

ALGORITHM = "AWS4-HMAC-SHA256"
TIMESTAMP_FORMAT = "%Y%m%dT%H%M%SZ"
TERMINATOR = "aws4_request"
METHOD = "POST"
PATH = "/"

Header = tuple[str, str]


def host_header(host: str, port: int, default_port: int) -> str:
    """The Host value botocore signs: lower case, IPv6 in brackets, port only if not default."""
    name = host.lower()
    if ":" in name and not name.startswith("["):
        name = f"[{name}]"
    return name if port == default_port else f"{name}:{port}"


def canonical_request(headers: Sequence[Header], body: bytes) -> tuple[str, str]:
    """(canonical request, signed header list) for a `POST /` with `headers` and `body`."""
    by_name: dict[str, list[str]] = {}
    for name, value in headers:
        by_name.setdefault(name.lower(), []).append(" ".join(value.split()))
    names = sorted(by_name)
    canonical_headers = "".join(f"{n}:{','.join(by_name[n])}\n" for n in names)
    signed = ";".join(names)
    digest = hashlib.sha256(body).hexdigest()
    return f"{METHOD}\n{PATH}\n\n{canonical_headers}\n{signed}\n{digest}", signed


def string_to_sign(timestamp: str, scope: str, request: str) -> str:
    digest = hashlib.sha256(request.encode("utf-8")).hexdigest()
    return f"{ALGORITHM}\n{timestamp}\n{scope}\n{digest}"


def signing_key(secret_access_key: str, date: str, region: str, service: str) -> bytes:
    key = f"AWS4{secret_access_key}".encode()
    for part in (date, region, service, TERMINATOR):
        key = hmac.new(key, part.encode("utf-8"), hashlib.sha256).digest()
    return key


@dataclass(frozen=True)
class Signer:
    """Signs requests with one credential set for one region and service. Thread-safe; the
    secret and token never appear in its repr."""

    access_key_id: str
    secret_access_key: str = field(repr=False)
    session_token: str | None = field(repr=False)
    region: str
    service: str = "kms"
    _cache: list[tuple[str, bytes]] = field(default_factory=list, repr=False, compare=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def _key(self, date: str) -> bytes:
        with self._lock:
            if self._cache and self._cache[0][0] == date:
                return self._cache[0][1]
        key = signing_key(self.secret_access_key, date, self.region, self.service)
        with self._lock:
            self._cache[:] = [(date, key)]
        return key

    def sign(self, headers: Sequence[Header], body: bytes, now: datetime) -> list[Header]:
        """The headers to add to `headers` (which must hold Host, Content-Type and X-Amz-Target):
        X-Amz-Date, X-Amz-Security-Token when there is a session token, and Authorization.
        `now` must be UTC."""
        timestamp = now.strftime(TIMESTAMP_FORMAT)
        added = [("X-Amz-Date", timestamp)]
        if self.session_token:
            added.append(("X-Amz-Security-Token", self.session_token))
        request, signed = canonical_request([*headers, *added], body)
        scope = f"{timestamp[:8]}/{self.region}/{self.service}/{TERMINATOR}"
        signature = hmac.new(
            self._key(timestamp[:8]),
            string_to_sign(timestamp, scope, request).encode("utf-8"),
            hashlib.sha256,
        ).hexdigest()
        authorization = (
            f"{ALGORITHM} Credential={self.access_key_id}/{scope}, "
            f"SignedHeaders={signed}, Signature={signature}"
        )
        return [*added, ("Authorization", authorization)]
