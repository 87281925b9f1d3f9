"""The enclave service's KMS client: credentials, retries, one attested path, error mapping.

One boto3 KMS client (one connection pool, keep-alive) with the issue-10 Recipient hooks attached
is built per credential set and rebuilt only when the parent sends new credentials, so every data
key the service fetches goes through `enclave.attested_kms`. botocore's "standard" retry mode
retries throttling, 5xx, timeouts and connection errors with exponential backoff and full jitter,
bounded by `max_attempts`; it never retries AccessDenied or InvalidCiphertext. Every foreign
exception is translated once, here: `ClientError` into `KMSError` (`kms.<__type>`), connection
failures and timeouts into `KMSUnavailableError` (`kms.Unreachable`), and certificate or hostname
verification failures into `KMSTLSError` (`kms.TLSVerificationFailed`), whose message names the
certificate problem.
"""

from __future__ import annotations

import logging
import ssl
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import botocore.session
from botocore.config import Config
from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    HTTPClientError,
    ParamValidationError,
    SSLError,
)
from botocore.exceptions import (
    ConnectionError as BotoConnectionError,
)
from nitrokms.enclave import deadlines
from nitrokms.enclave.attested_kms import Attestor, attach_recipient
from nitrokms.enclave.errors import EnclaveError
from nitrokms.enclave.keypool import RecipientKeyPool

DEFAULT_MAX_ATTEMPTS = 4
DEFAULT_CONNECT_TIMEOUT_S = 3.0
DEFAULT_READ_TIMEOUT_S = 10.0
DEFAULT_MAX_POOL_CONNECTIONS = 32
MIN_RANDOM_BYTES, MAX_RANDOM_BYTES = 1, 1024
MAX_ERROR_MESSAGE_CHARS = 512
INVALID_CREDENTIALS = "enclave.CredentialsInvalid"

Now = Callable[[], datetime]


class KMSError(EnclaveError):
    """KMS refused the call; `code` is `kms.<__type>`, the message is KMS's."""

    default_code = "kms.Error"

    def __init__(self, message: str, *, code: str | None = None, status: int | None = None) -> None:
        super().__init__(message, code=code)
        self.status = status


class KMSRequestError(KMSError):
    """The request was invalid before it was sent (what KMS would call a ValidationException)."""

    default_code = "kms.ValidationException"


class KMSUnavailableError(KMSError):
    """KMS could not be reached: connection refused or reset, timeout, relay closed."""

    default_code = "kms.Unreachable"


class KMSTLSError(KMSUnavailableError):
    """The peer's certificate or hostname did not verify: possibly a man in the middle."""

    default_code = "kms.TLSVerificationFailed"


class CredentialsError(EnclaveError):
    """No usable AWS credentials: `enclave.CredentialsMissing`, `enclave.CredentialsExpired`, or
    `enclave.CredentialsInvalid` for malformed ones given to `set_credentials`."""

    default_code = "enclave.CredentialsMissing"


@dataclass(frozen=True)
class Credentials:
    """AWS credentials held in enclave memory only; the repr shows the access key id alone."""

    access_key_id: str
    secret_access_key: str = field(repr=False)
    session_token: str | None = field(default=None, repr=False)
    expiration: datetime | None = None

    def __post_init__(self) -> None:
        if not self.access_key_id or not self.secret_access_key:
            raise CredentialsError(
                "access key id and secret access key must be non-empty", code=INVALID_CREDENTIALS
            )
        if self.expiration is not None and self.expiration.tzinfo is None:
            raise CredentialsError(
                "credential expiration must be timezone-aware", code=INVALID_CREDENTIALS
            )

    def expired(self, now: datetime) -> bool:
        return self.expiration is not None and now >= self.expiration


@dataclass(eq=False)
class DataKey:
    """A plaintext data key, as a bytearray the holder can wipe; never shown in reprs."""

    plaintext: bytearray = field(repr=False)
    ciphertext_blob: bytes = field(repr=False)
    key_id: str

    def wipe(self) -> None:
        self.plaintext[:] = bytes(len(self.plaintext))


@dataclass(frozen=True)
class EncryptedDataKey:
    ciphertext_blob: bytes = field(repr=False)
    key_id: str


@dataclass(frozen=True)
class KMSHealth:
    kms_reachable: bool | None
    last_error: str | None
    last_success_at: float | None
    credentials_present: bool
    credentials_expire_at: datetime | None


def keep_secrets_out_of_logs() -> None:
    """Raise botocore's and urllib3's loggers above DEBUG, where botocore prints request headers
    (x-amz-security-token among them)."""
    for name in ("botocore", "urllib3"):
        logger = logging.getLogger(name)
        if logger.getEffectiveLevel() < logging.INFO:
            logger.setLevel(logging.INFO)


def _utcnow() -> datetime:
    return datetime.now(UTC)


def _as_datetime(value: datetime | float | None) -> datetime | None:
    if value is None or isinstance(value, datetime):
        return value
    return datetime.fromtimestamp(float(value), UTC)


class EnclaveKMS:
    """Thread-safe attested KMS operations for the enclave service."""

    def __init__(
        self,
        region: str,
        *,
        attestor: Attestor,
        pool: RecipientKeyPool,
        endpoint_url: str | None = None,
        ca_bundle: str | None = None,
        proxy_url: str | None = None,
        max_attempts: int = DEFAULT_MAX_ATTEMPTS,
        connect_timeout_s: float = DEFAULT_CONNECT_TIMEOUT_S,
        read_timeout_s: float = DEFAULT_READ_TIMEOUT_S,
        max_pool_connections: int = DEFAULT_MAX_POOL_CONNECTIONS,
        now: Now = _utcnow,
    ) -> None:
        if max_attempts < 1:
            raise ValueError("max_attempts must be at least 1")
        keep_secrets_out_of_logs()
        self.region = region
        self._attestor, self._pool = attestor, pool
        self._endpoint_url, self._ca_bundle = endpoint_url, ca_bundle
        self._config = Config(
            retries={"mode": "standard", "total_max_attempts": max_attempts},
            connect_timeout=connect_timeout_s,
            read_timeout=read_timeout_s,
            max_pool_connections=max_pool_connections,
            proxies={"https": proxy_url} if proxy_url else None,
            tcp_keepalive=True,
        )
        self._now = now
        self._lock = threading.Lock()
        self._session: Any = None
        self._credentials: Credentials | None = None
        self._client: Any = None
        self._reachable: bool | None = None
        self._last_error: str | None = None
        self._last_success_at: float | None = None

    def __repr__(self) -> str:
        return f"EnclaveKMS(region={self.region!r}, endpoint_url={self._endpoint_url!r})"

    # --- credentials ---------------------------------------------------------------------------

    def set_credentials(
        self,
        access_key_id: str,
        secret_access_key: str,
        session_token: str | None = None,
        expiration: datetime | float | None = None,
    ) -> None:
        """Replace the credentials (kept in memory only). Raises CredentialsError if unusable."""
        credentials = Credentials(
            access_key_id, secret_access_key, session_token or None, _as_datetime(expiration)
        )
        if credentials.expired(self._now()):
            raise CredentialsError(
                "the credentials are already expired", code="enclave.CredentialsExpired"
            )
        with self._lock:
            if credentials == self._credentials:
                return
            self._client = self._build_client(credentials)
            self._credentials = credentials

    @property
    def credentials(self) -> Credentials | None:
        return self._credentials

    def _build_client(self, credentials: Credentials) -> Any:
        if self._session is None:
            self._session = botocore.session.Session()
        client = self._session.create_client(
            "kms",
            region_name=self.region,
            endpoint_url=self._endpoint_url,
            verify=self._ca_bundle if self._ca_bundle else True,
            aws_access_key_id=credentials.access_key_id,
            aws_secret_access_key=credentials.secret_access_key,
            aws_session_token=credentials.session_token,
            config=self._config,
        )
        client.meta.events.register("before-send.kms", deadlines.before_send)
        return attach_recipient(client, attestor=self._attestor, pool=self._pool)

    def client(self) -> Any:
        """The current attested boto3 client. Raises CredentialsError before any network I/O."""
        with self._lock:
            credentials, client = self._credentials, self._client
        if credentials is None or client is None:
            raise CredentialsError("no AWS credentials: the parent has not sent SetCredentials")
        if credentials.expired(self._now()):
            raise CredentialsError(
                f"the AWS credentials expired at {credentials.expiration:%Y-%m-%dT%H:%M:%SZ}",
                code="enclave.CredentialsExpired",
            )
        return client

    # --- operations ----------------------------------------------------------------------------

    def generate_data_key(
        self,
        key_id: str,
        *,
        key_spec: str | None = None,
        number_of_bytes: int | None = None,
        encryption_context: Mapping[str, str] | None = None,
        grant_tokens: Sequence[str] | None = None,
    ) -> DataKey:
        """Attested GenerateDataKey (AES_256 unless told otherwise). Raises KMSError family,
        CredentialsError, KeyPoolError, NSMError, CMS errors."""
        params = _key_params(key_id, key_spec, number_of_bytes, encryption_context, grant_tokens)
        reply = self._call("generate_data_key", params)
        return DataKey(bytearray(reply["Plaintext"]), reply["CiphertextBlob"], reply["KeyId"])

    def generate_data_key_without_plaintext(
        self,
        key_id: str,
        *,
        key_spec: str | None = None,
        number_of_bytes: int | None = None,
        encryption_context: Mapping[str, str] | None = None,
        grant_tokens: Sequence[str] | None = None,
    ) -> EncryptedDataKey:
        params = _key_params(key_id, key_spec, number_of_bytes, encryption_context, grant_tokens)
        reply = self._call("generate_data_key_without_plaintext", params)
        return EncryptedDataKey(reply["CiphertextBlob"], reply["KeyId"])

    def decrypt(
        self,
        ciphertext_blob: bytes,
        *,
        key_id: str | None = None,
        encryption_context: Mapping[str, str] | None = None,
        grant_tokens: Sequence[str] | None = None,
    ) -> DataKey:
        """Attested Decrypt of a data key's CiphertextBlob."""
        params: dict[str, Any] = {"CiphertextBlob": bytes(ciphertext_blob)}
        _put_optional(params, key_id, encryption_context, grant_tokens)
        reply = self._call("decrypt", params)
        return DataKey(bytearray(reply["Plaintext"]), bytes(ciphertext_blob), reply["KeyId"])

    def generate_random(self, number_of_bytes: int) -> bytes:
        """Attested GenerateRandom of 1..1024 bytes."""
        if type(number_of_bytes) is not int or not (
            MIN_RANDOM_BYTES <= number_of_bytes <= MAX_RANDOM_BYTES
        ):
            raise KMSRequestError(
                f"number_of_bytes must be in {MIN_RANDOM_BYTES}..{MAX_RANDOM_BYTES}"
            )
        reply = self._call("generate_random", {"NumberOfBytes": number_of_bytes})
        return bytes(reply["Plaintext"])

    # --- health and error translation ----------------------------------------------------------

    @property
    def kms_reachable(self) -> bool | None:
        """True after the last call reached KMS, False after it could not, None before any."""
        return self._reachable

    @property
    def last_error(self) -> str | None:
        return self._last_error

    def health(self) -> KMSHealth:
        credentials = self._credentials
        return KMSHealth(
            kms_reachable=self._reachable,
            last_error=self._last_error,
            last_success_at=self._last_success_at,
            credentials_present=credentials is not None,
            credentials_expire_at=credentials.expiration if credentials else None,
        )

    def _call(self, method: str, params: dict[str, Any]) -> dict[str, Any]:
        client = self.client()
        with self._translated():
            reply: dict[str, Any] = getattr(client, method)(**params)
        self._reachable, self._last_success_at = True, time.time()
        return reply

    @contextmanager
    def _translated(self) -> Iterator[None]:
        try:
            yield
        except (ClientError, BotoCoreError) as exc:
            error = translate_botocore_error(exc)
            self._record(error)
            raise error from None
        except EnclaveError as exc:
            self._last_error = f"{exc.code}: {exc.message}"
            raise

    def _record(self, error: KMSError) -> None:
        self._reachable = not isinstance(error, KMSUnavailableError)
        self._last_error = f"{error.code}: {error.message}"


def translate_botocore_error(exc: ClientError | BotoCoreError) -> KMSError:
    """Map one botocore exception to the KMSError family."""
    if isinstance(exc, ClientError):
        error = exc.response.get("Error", {})
        code = str(error.get("Code") or "UnknownError")
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        message = _clip(str(error.get("Message") or code))
        return KMSError(message, code=f"kms.{code}", status=status)
    if isinstance(exc, SSLError):
        if _is_verification_failure(exc):
            return KMSTLSError(f"TLS verification of KMS failed: {_tls_problem(exc)}")
        # A reset or EOF during the handshake is a network failure, not a certificate problem:
        # kms.TLSVerificationFailed must stay the signal for a man in the middle.
        return KMSUnavailableError(f"KMS unreachable (TLS handshake cut): {_tls_problem(exc)}")
    if isinstance(exc, ParamValidationError):
        return KMSRequestError(_clip(str(exc)))
    if isinstance(exc, BotoConnectionError | HTTPClientError):
        return KMSUnavailableError(f"KMS unreachable: {_clip(str(exc))}")
    return KMSError(_clip(str(exc)), code=f"kms.{type(exc).__name__}")


def _is_verification_failure(exc: SSLError) -> bool:
    """Whether the peer's certificate or host name failed verification (vs a cut connection)."""
    seen: set[int] = set()
    pending: list[BaseException | None] = [exc, getattr(exc, "kwargs", {}).get("error")]
    while pending:
        current = pending.pop()
        if current is None or id(current) in seen:
            continue
        seen.add(id(current))
        # ssl's own verification error, or urllib3's host-name check (its own CertificateError).
        if isinstance(current, ssl.SSLCertVerificationError) or (
            type(current).__name__ == "CertificateError"
        ):
            return True
        pending += [current.__cause__, current.__context__, *_exception_args(current)]
    return "certificate verify failed" in str(getattr(exc, "kwargs", {}).get("error", exc))


def _exception_args(exc: BaseException) -> list[BaseException]:
    return [arg for arg in exc.args if isinstance(arg, BaseException)]


def _tls_problem(exc: SSLError) -> str:
    text = str(getattr(exc, "kwargs", {}).get("error", "")) or str(exc)
    marker = "certificate verify failed:"
    if marker in text:
        return text.split(marker, 1)[1].split("(_ssl.c", 1)[0].strip()
    return _clip(text)


def _clip(text: str) -> str:
    return text if len(text) <= MAX_ERROR_MESSAGE_CHARS else text[:MAX_ERROR_MESSAGE_CHARS] + "…"


def _key_params(
    key_id: str,
    key_spec: str | None,
    number_of_bytes: int | None,
    encryption_context: Mapping[str, str] | None,
    grant_tokens: Sequence[str] | None,
) -> dict[str, Any]:
    if key_spec is not None and number_of_bytes is not None:
        raise KMSRequestError("give key_spec or number_of_bytes, not both")
    params: dict[str, Any] = {"KeyId": key_id}
    if number_of_bytes is not None:
        params["NumberOfBytes"] = number_of_bytes
    else:
        params["KeySpec"] = key_spec or "AES_256"
    _put_optional(params, None, encryption_context, grant_tokens)
    return params


def _put_optional(
    params: dict[str, Any],
    key_id: str | None,
    encryption_context: Mapping[str, str] | None,
    grant_tokens: Sequence[str] | None,
) -> None:
    if key_id is not None:
        params["KeyId"] = key_id
    if encryption_context:
        params["EncryptionContext"] = dict(encryption_context)
    if grant_tokens:
        params["GrantTokens"] = list(grant_tokens)
