"""SigV4 verification of incoming requests against the configured credentials.

The canonical request is rebuilt from the bytes received (method, path, query, the signed headers,
the body), following the SigV4 rules botocore and the AWS SDKs sign with, and the signature is
compared with `hmac.compare_digest`. Failures raise the error types AWS uses: unknown access key or
session token -> UnrecognizedClientException; bad signature, wrong scope or a date more than five
minutes off -> InvalidSignatureException; unparsable header -> IncompleteSignatureException; no
header -> MissingAuthenticationTokenException.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import posixpath
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from urllib.parse import quote

from nitrokms.sim.kms.exceptions import (
    IncompleteSignatureException,
    InvalidSignatureException,
    MissingAuthenticationTokenException,
    UnrecognizedClientException,
)

ALGORITHM = "AWS4-HMAC-SHA256"
MAX_SKEW = timedelta(minutes=5)
DEFAULT_PRINCIPAL = "arn:aws:iam::111122223333:root"
_AMZ_DATE = "%Y%m%dT%H%M%SZ"
_MISMATCH = (
    "The request signature we calculated does not match the signature you provided. Check your "
    "AWS Secret Access Key and signing method. Consult the service documentation for details."
)


@dataclass(frozen=True)
class Credential:
    """One accepted access key and the principal it authenticates as."""

    access_key_id: str
    secret_access_key: str = field(repr=False)
    principal_arn: str = DEFAULT_PRINCIPAL
    session_token: str | None = field(default=None, repr=False)

    @property
    def account(self) -> str:
        parts = self.principal_arn.split(":")
        return parts[4] if len(parts) > 5 else ""


def load_credentials(path: Path) -> list[Credential]:
    """Read a JSON list of {access_key_id, secret_access_key, session_token?, principal_arn}.

    Raises ValueError naming the entry and field at fault (never echoing a secret).
    """
    try:
        entries = json.loads(Path(path).read_text())
    except (OSError, ValueError) as exc:
        raise ValueError(f"cannot read credentials file {path}: {exc}") from None
    if not isinstance(entries, list) or not entries:
        raise ValueError(f"credentials file {path} must hold a non-empty JSON list")
    return [_credential(i, e) for i, e in enumerate(entries)]


def _credential(index: int, entry: object) -> Credential:
    if not isinstance(entry, dict):
        raise ValueError(f"credentials entry {index} is not an object")
    for name in ("access_key_id", "secret_access_key", "principal_arn"):
        if not isinstance(entry.get(name), str) or not entry[name]:
            raise ValueError(f"credentials entry {index}: {name} must be a non-empty string")
    token = entry.get("session_token")
    if token is not None and (not isinstance(token, str) or not token):
        raise ValueError(f"credentials entry {index}: session_token must be a non-empty string")
    if not entry["principal_arn"].startswith("arn:"):
        raise ValueError(f"credentials entry {index}: principal_arn must be an ARN")
    return Credential(
        entry["access_key_id"], entry["secret_access_key"], entry["principal_arn"], token
    )


def credentials_from_environment(environ: Mapping[str, str]) -> list[Credential]:
    key_id = environ.get("AWS_ACCESS_KEY_ID")
    secret = environ.get("AWS_SECRET_ACCESS_KEY")
    if not key_id or not secret:
        return []
    token = environ.get("AWS_SESSION_TOKEN") or None
    return [Credential(key_id, secret, DEFAULT_PRINCIPAL, token)]


@dataclass(frozen=True)
class ReceivedRequest:
    method: str
    target: str
    headers: Sequence[tuple[str, str]]
    body: bytes

    def header_values(self, name: str) -> list[str]:
        lowered = name.lower()
        return [v for k, v in self.headers if k.lower() == lowered]

    def header(self, name: str) -> str | None:
        values = self.header_values(name)
        return ",".join(values) if values else None


@dataclass(frozen=True)
class _Authorization:
    access_key_id: str
    date: str
    region: str
    service: str
    signed_headers: tuple[str, ...]
    signature: str

    @property
    def scope(self) -> str:
        return f"{self.date}/{self.region}/{self.service}/aws4_request"


class SigV4Verifier:
    def __init__(
        self,
        credentials: Sequence[Credential],
        *,
        region: str,
        service: str = "kms",
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._by_key = {c.access_key_id: c for c in credentials}
        self._region = region
        self._service = service
        self._clock = clock

    def authenticate(self, request: ReceivedRequest) -> Credential:
        """Return the credential that signed `request`, or raise the AWS error for the failure."""
        header = request.header("Authorization")
        if header is None:
            raise MissingAuthenticationTokenException()
        auth = _parse_authorization(header)
        credential = self._by_key.get(auth.access_key_id)
        if credential is None:
            raise UnrecognizedClientException()
        self._check_token(credential, request.header("X-Amz-Security-Token"))
        amz_date = self._check_date(request.header("X-Amz-Date"))
        self._check_scope(auth, amz_date)
        expected = _signature(credential.secret_access_key, auth, amz_date, request)
        if not hmac.compare_digest(expected, auth.signature.encode()):
            raise InvalidSignatureException(_MISMATCH)
        return credential

    @staticmethod
    def _check_token(credential: Credential, token: str | None) -> None:
        if credential.session_token is None:
            if token is not None:
                raise UnrecognizedClientException()
            return
        if token is None or not hmac.compare_digest(
            token.encode(), credential.session_token.encode()
        ):
            raise UnrecognizedClientException()

    def _check_date(self, value: str | None) -> str:
        if value is None:
            raise IncompleteSignatureException(
                "Authorization header requires existence of either a 'X-Amz-Date' or a 'Date' "
                "header."
            )
        try:
            signed_at = datetime.strptime(value, _AMZ_DATE).replace(tzinfo=UTC)
        except ValueError:
            raise IncompleteSignatureException(
                f"Date must be in ISO-8601 'basic format'. Got '{value}'."
            ) from None
        now = datetime.fromtimestamp(self._clock(), UTC)
        if signed_at < now - MAX_SKEW:
            raise InvalidSignatureException(
                f"Signature expired: {value} is now earlier than "
                f"{(now - MAX_SKEW).strftime(_AMZ_DATE)} ({now.strftime(_AMZ_DATE)} - 5 min.)"
            )
        if signed_at > now + MAX_SKEW:
            raise InvalidSignatureException(
                f"Signature not yet current: {value} is still later than "
                f"{(now + MAX_SKEW).strftime(_AMZ_DATE)} ({now.strftime(_AMZ_DATE)} + 5 min.)"
            )
        return value

    def _check_scope(self, auth: _Authorization, amz_date: str) -> None:
        if auth.region != self._region:
            raise InvalidSignatureException(
                f"Credential should be scoped to a valid region, not '{auth.region}'. "
            )
        if auth.service != self._service:
            raise InvalidSignatureException(
                f"Credential should be scoped to correct service: '{self._service}'. "
            )
        if auth.date != amz_date[:8]:
            raise InvalidSignatureException(
                f"Date in Credential scope does not match YYYYMMDD from ISO-8601 version of date "
                f"from HTTP: '{auth.date}' != '{amz_date[:8]}', from '{amz_date}'."
            )
        if "host" not in auth.signed_headers:
            raise InvalidSignatureException(
                "'Host' or ':authority' must be a 'SignedHeader' in the AWS Authorization."
            )


def _parse_authorization(header: str) -> _Authorization:
    algorithm, _, rest = header.strip().partition(" ")
    if algorithm != ALGORITHM:
        raise IncompleteSignatureException(f"Unsupported AWS 'algorithm': '{algorithm}'")
    parts: dict[str, str] = {}
    for item in rest.split(","):
        name, sep, value = item.strip().partition("=")
        if sep:
            parts[name] = value
    missing = [n for n in ("Credential", "SignedHeaders", "Signature") if n not in parts]
    if missing:
        raise IncompleteSignatureException(
            f"Authorization header requires '{missing[0]}' parameter. Authorization={header[:200]}"
        )
    scope = parts["Credential"].split("/")
    if len(scope) != 5 or scope[4] != "aws4_request" or not scope[0]:
        raise IncompleteSignatureException(
            "Credential must have exactly 5 slash-delimited elements, e.g. "
            "keyid/date/region/service/term"
        )
    return _Authorization(
        access_key_id=scope[0],
        date=scope[1],
        region=scope[2],
        service=scope[3],
        signed_headers=tuple(parts["SignedHeaders"].split(";")),
        signature=parts["Signature"],
    )


def _signature(secret: str, auth: _Authorization, amz_date: str, request: ReceivedRequest) -> bytes:
    canonical = canonical_request(request, auth.signed_headers)
    to_sign = "\n".join(
        [ALGORITHM, amz_date, auth.scope, hashlib.sha256(canonical.encode()).hexdigest()]
    )
    key = ("AWS4" + secret).encode()
    for part in (auth.date, auth.region, auth.service, "aws4_request"):
        key = hmac.new(key, part.encode(), hashlib.sha256).digest()
    return hmac.new(key, to_sign.encode(), hashlib.sha256).hexdigest().encode()


def canonical_request(request: ReceivedRequest, signed_headers: Sequence[str]) -> str:
    """The SigV4 canonical request (non-S3 rules: normalised, re-encoded path)."""
    path, _, query = request.target.partition("?")
    lines = [f"{name}:{_header_value(request, name)}" for name in signed_headers]
    body_hash = hashlib.sha256(request.body).hexdigest()
    declared = request.header("X-Amz-Content-SHA256")
    if declared is not None and declared != body_hash:
        raise InvalidSignatureException(
            "The provided 'x-amz-content-sha256' header does not match what was computed."
        )
    return "\n".join(
        [
            request.method.upper(),
            quote(_normalise_path(path), safe="/~"),
            _canonical_query(query),
            "\n".join(lines) + "\n",
            ";".join(signed_headers),
            body_hash,
        ]
    )


def _header_value(request: ReceivedRequest, name: str) -> str:
    return ",".join(" ".join(v.split()) for v in request.header_values(name))


def _normalise_path(path: str) -> str:
    if not path:
        return "/"
    normalised = posixpath.normpath(path)
    if path.endswith("/") and normalised != "/":
        normalised += "/"
    return normalised.replace("//", "/")


def _canonical_query(query: str) -> str:
    if not query:
        return ""
    pairs = sorted(pair.partition("=")[::2] for pair in query.split("&"))
    return "&".join(f"{k}={v}" for k, v in pairs)
