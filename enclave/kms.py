"""The enclave service's KMS client: credentials, retries, one attested path, error mapping.

The service's own calls (GenerateDataKey, Decrypt, GenerateRandom, GenerateDataKeyWithoutPlaintext)
do not go through botocore: a request is a JSON body (`enclave.kms_wire`), signed with SigV4
(`enclave.sigv4`) and sent on a kept-alive TLS connection (`enclave.kms_connection`), in production
straight through the stream to the parent's relay. botocore spends about a millisecond of CPU per
call on events, models and urllib3 (BENCHMARKS.md); this path does the same work in a tenth of it.
Applications inside the enclave keep boto3 with the attested hooks (`enclave.attested_kms`).

It behaves as the boto3 client with those hooks did, and the tests hold it to that against botocore
itself: the same body and SigV4 signature for the same inputs; every attested call carries
`Recipient` with a pooled key's document, and `CiphertextForRecipient` is decrypted with exactly
that key; retries follow botocore's "standard" mode (`enclave.kms_retry`: throttling, 5xx,
timeouts and connection failures, with jitter, bounded by `max_attempts`; never AccessDenied or
InvalidCiphertext); and errors map as before: an error reply becomes `KMSError` with
`kms.<__type>` (botocore's parsing: `__type` after `#`, or the HTTP status when the body has none),
connection failures and timeouts `KMSUnavailableError` (`kms.Unreachable`), certificate or host-name
verification failures `KMSTLSError` (`kms.TLSVerificationFailed`, named, never retried), and
parameters a KMS would refuse `KMSRequestError` before anything is sent.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

from nitrokms import __version__
from nitrokms.enclave import deadlines, kms_retry
from nitrokms.enclave import kms_shapes as shapes
from nitrokms.enclave.attested_kms import KEY_ENCRYPTION_ALGORITHM
from nitrokms.enclave.cms import decrypt_enveloped_data
from nitrokms.enclave.errors import (
    CredentialsError,
    EnclaveError,
    KMSError,
    KMSRequestError,
    KMSTLSError,
    KMSUnavailableError,
    RecipientReplyError,
)
from nitrokms.enclave.keypool import AttestedKey, Attestor, RecipientKeyPool
from nitrokms.enclave.kms_connection import (
    Endpoint,
    KMSTransport,
    TLSVerificationError,
    TransportError,
    TransportStats,
)
from nitrokms.enclave.kms_errors import clip, error_from_response
from nitrokms.enclave.kms_wire import Response, encode_body, encode_request, request_headers
from nitrokms.enclave.network import kms_endpoint
from nitrokms.enclave.sigv4 import Signer, host_header
from nitrokms.proto import codes
from nitrokms.proto.addresses import Address
from nitrokms.proto.keys import KeyRequest

DEFAULT_MAX_ATTEMPTS = 4
DEFAULT_CONNECT_TIMEOUT_S = 3.0
DEFAULT_READ_TIMEOUT_S = 10.0
DEFAULT_MAX_POOL_CONNECTIONS = 32
MIN_RANDOM_BYTES, MAX_RANDOM_BYTES = 1, 1024
USER_AGENT = f"nitrokms/{__version__}"

Now = Callable[[], datetime]

__all__ = [
    "Credentials",
    "CredentialsError",
    "DataKey",
    "EnclaveKMS",
    "EncryptedDataKey",
    "KMSError",
    "KMSHealth",
    "KMSRequestError",
    "KMSTLSError",
    "KMSUnavailableError",
]


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
                "access key id and secret access key must be non-empty",
                code=codes.CREDENTIALS_INVALID,
            )
        if self.expiration is not None and self.expiration.tzinfo is None:
            raise CredentialsError(
                "credential expiration must be timezone-aware", code=codes.CREDENTIALS_INVALID
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


def _utcnow() -> datetime:
    return datetime.now(UTC)


def _as_datetime(value: datetime | float | None) -> datetime | None:
    if value is None or isinstance(value, datetime):
        return value
    return datetime.fromtimestamp(float(value), UTC)


def endpoint_of(region: str, endpoint_url: str | None) -> Endpoint:
    """The KMS endpoint: `endpoint_url` (https://HOST[:PORT], or http:// for a local stand-in),
    or the region's own. Raises ValueError for anything else."""
    if endpoint_url is None:
        return Endpoint(*kms_endpoint(region))
    parts = urlsplit(endpoint_url)
    try:
        port = parts.port
    except ValueError as exc:
        raise ValueError(f"bad KMS endpoint URL {endpoint_url!r}: {exc}") from None
    if parts.scheme not in ("https", "http") or not parts.hostname or parts.path not in ("", "/"):
        raise ValueError(f"KMS endpoint URL must be https://HOST[:PORT], not {endpoint_url!r}")
    tls = parts.scheme == "https"
    return Endpoint(parts.hostname, port or (443 if tls else 80), tls)


def _proxy_address(proxy_url: str) -> tuple[str, int]:
    parts = urlsplit(proxy_url)
    if parts.scheme != "http" or not parts.hostname or not parts.port:
        raise ValueError(f"proxy URL must be http://HOST:PORT, not {proxy_url!r}")
    return parts.hostname, parts.port


class EnclaveKMS:
    """Thread-safe attested KMS operations for the enclave service.

    `attestor=None` takes each key's document from the pool (`acquire_attested`: pre-made, off
    the request path); an explicit attestor is asked for a fresh document per call. The route to
    KMS: `relay` (a stream to the parent's relay), else `proxy_url` (an HTTP CONNECT proxy), else
    TCP to the endpoint.
    """

    def __init__(
        self,
        region: str,
        *,
        pool: RecipientKeyPool,
        attestor: Attestor | None = None,
        endpoint_url: str | None = None,
        ca_bundle: str | None = None,
        relay: Address | None = None,
        proxy_url: str | None = None,
        max_attempts: int = DEFAULT_MAX_ATTEMPTS,
        connect_timeout_s: float = DEFAULT_CONNECT_TIMEOUT_S,
        read_timeout_s: float = DEFAULT_READ_TIMEOUT_S,
        max_pool_connections: int = DEFAULT_MAX_POOL_CONNECTIONS,
        now: Now = _utcnow,
    ) -> None:
        if max_attempts < 1:
            raise ValueError("max_attempts must be at least 1")
        self.region, self.max_attempts = region, max_attempts
        self._pool, self._attestor = pool, attestor
        self._endpoint_url = endpoint_url
        endpoint = endpoint_of(region, endpoint_url)
        self._host = host_header(endpoint.host, endpoint.port, 443 if endpoint.tls else 80)
        self._transport = KMSTransport(
            endpoint,
            relay=relay,
            proxy=None if relay is not None or not proxy_url else _proxy_address(proxy_url),
            ca_bundle=ca_bundle,
            connect_timeout_s=connect_timeout_s,
            read_timeout_s=read_timeout_s,
            max_idle=max_pool_connections,
        )
        self._quota = kms_retry.RetryQuota()
        self._now = now
        self._lock = threading.Lock()
        self._credentials: Credentials | None = None
        self._signer: Signer | None = None
        self._reachable: bool | None = None
        self._last_error: str | None = None
        self._last_success_at: float | None = None
        self.sleep: Callable[[float], None] = time.sleep

    def __repr__(self) -> str:
        return f"EnclaveKMS(region={self.region!r}, endpoint_url={self._endpoint_url!r})"

    def close(self) -> None:
        """Close the kept-alive connections (new calls open new ones)."""
        self._transport.close()

    def transport_stats(self) -> TransportStats:
        """TLS handshakes, connections, requests and reuses so far."""
        return self._transport.stats()

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
                "the credentials are already expired", code=codes.CREDENTIALS_EXPIRED
            )
        with self._lock:
            if credentials == self._credentials:
                return
            self._signer = Signer(
                credentials.access_key_id,
                credentials.secret_access_key,
                credentials.session_token,
                self.region,
            )
            self._credentials = credentials

    @property
    def credentials(self) -> Credentials | None:
        return self._credentials

    def signer(self) -> Signer:
        """The current credentials' signer. Raises CredentialsError before any network I/O."""
        with self._lock:
            credentials, signer = self._credentials, self._signer
        if credentials is None or signer is None:
            raise CredentialsError("no AWS credentials: the parent has not sent SetCredentials")
        if credentials.expired(self._now()):
            raise CredentialsError(
                f"the AWS credentials expired at {credentials.expiration:%Y-%m-%dT%H:%M:%SZ}",
                code=codes.CREDENTIALS_EXPIRED,
            )
        return signer

    # --- operations ----------------------------------------------------------------------------

    def generate_data_key(self, request: KeyRequest) -> DataKey:
        """Attested GenerateDataKey (AES_256 unless the request names a size). Raises KMSError
        family, CredentialsError, KeyPoolError, NSMError, CMS errors."""
        reply, plaintext = self._call(
            "GenerateDataKey", shapes.generate_params(request), attested=True
        )
        return DataKey(plaintext, shapes.blob(reply, "CiphertextBlob"), shapes.text(reply, "KeyId"))

    def generate_data_key_without_plaintext(self, request: KeyRequest) -> EncryptedDataKey:
        reply, _ = self._call(
            "GenerateDataKeyWithoutPlaintext", shapes.generate_params(request), attested=False
        )
        return EncryptedDataKey(shapes.blob(reply, "CiphertextBlob"), shapes.text(reply, "KeyId"))

    def decrypt(self, ciphertext_blob: bytes, request: KeyRequest | None = None) -> DataKey:
        """Attested Decrypt of a data key's CiphertextBlob; `request` may name the key id, the
        encryption context and grant tokens (a size is refused: Decrypt takes none)."""
        request = request or KeyRequest()
        if request.key_spec is not None or request.number_of_bytes is not None:
            raise KMSRequestError("Decrypt takes no key_spec or number_of_bytes")
        params = {"CiphertextBlob": bytes(ciphertext_blob), **shapes.key_params(request)}
        reply, plaintext = self._call("Decrypt", params, attested=True)
        return DataKey(plaintext, bytes(ciphertext_blob), shapes.text(reply, "KeyId"))

    def generate_random(self, number_of_bytes: int) -> bytes:
        """Attested GenerateRandom of 1..1024 bytes."""
        if type(number_of_bytes) is not int or not (
            MIN_RANDOM_BYTES <= number_of_bytes <= MAX_RANDOM_BYTES
        ):
            raise KMSRequestError(
                f"number_of_bytes must be in {MIN_RANDOM_BYTES}..{MAX_RANDOM_BYTES}"
            )
        _, plaintext = self._call(
            "GenerateRandom", {"NumberOfBytes": number_of_bytes}, attested=True
        )
        return bytes(plaintext)

    # --- health --------------------------------------------------------------------------------

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

    # --- one call ------------------------------------------------------------------------------

    def _call(
        self, operation: str, params: dict[str, Any], *, attested: bool
    ) -> tuple[dict[str, Any], bytearray]:
        """(parsed reply, decrypted plaintext or empty). Raises the KMSError family,
        CredentialsError, KeyPoolError, NSMError, CMS errors."""
        signer = self.signer()
        shapes.validate(params)
        key = self._attested_key() if attested else None
        if key is not None:
            params["Recipient"] = {
                "KeyEncryptionAlgorithm": KEY_ENCRYPTION_ALGORITHM,
                "AttestationDocument": key.document,
            }
        body = encode_body(params)
        with self._recorded():
            reply = shapes.json_object(self._send(operation, signer, body))
            plaintext = bytearray()
            if key is not None:
                blob = reply.get("CiphertextForRecipient")
                if not blob:
                    raise RecipientReplyError(
                        f"KMS answered an attested {operation} without CiphertextForRecipient"
                    )
                sealed = shapes.decode_blob(blob, "CiphertextForRecipient")
                plaintext = bytearray(
                    decrypt_enveloped_data(sealed, {key.key.ski: key.key.private_key})
                )
        self._reachable, self._last_success_at = True, time.time()
        return reply, plaintext

    def _attested_key(self) -> AttestedKey:
        if self._attestor is None:
            return self._pool.acquire_attested()
        key = self._pool.acquire()
        return AttestedKey(key, self._attestor(public_key=key.spki_der))

    def _send(self, operation: str, signer: Signer, body: bytes) -> Response:
        """Send, retrying as botocore's standard mode does; no attempt starts past the request's
        deadline (`enclave.deadlines`). Raises the KMSError family, DeadlineExceededError."""
        signed = request_headers(self._host, operation)
        attempt, taken = 1, 0
        while True:
            deadlines.check("a KMS attempt")
            headers = [*signed, ("User-Agent", USER_AGENT)]
            headers += signer.sign(signed, body, self._now().astimezone(UTC))
            headers.append(("Accept-Encoding", "identity"))
            response: Response | None = None
            try:
                response = self._transport.exchange(encode_request(headers, body))
            except TLSVerificationError as exc:
                raise KMSTLSError(f"TLS verification of KMS failed: {exc.message}") from None
            except TransportError as exc:
                error: KMSError = KMSUnavailableError(f"KMS unreachable: {clip(exc.message)}")
                code, status = None, None
            else:
                if response.status < 300:
                    self._quota.release(taken)
                    return response
                error = error_from_response(response)
                code, status = error.code.removeprefix("kms."), response.status
            if attempt >= self.max_attempts or not kms_retry.is_retryable(operation, code, status):
                raise error
            throttled = kms_retry.is_throttling(operation, code, status)
            taken = self._quota.acquire(throttled)
            if not taken:
                raise error
            retry_after = None if response is None else response.headers.get("x-amz-retry-after")
            self.sleep(kms_retry.backoff_s(attempt, throttled, retry_after))
            attempt += 1

    @contextmanager
    def _recorded(self) -> Iterator[None]:
        try:
            yield
        except KMSError as exc:
            self._reachable = not isinstance(exc, KMSUnavailableError)
            self._last_error = f"{exc.code}: {exc.message}"
            raise
        except EnclaveError as exc:
            self._last_error = f"{exc.code}: {exc.message}"
            raise
