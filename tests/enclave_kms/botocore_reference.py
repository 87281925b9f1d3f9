"""The enclave's KMS calls as botocore made them: the oracle the lean path is held to.

Before the lean path, `EnclaveKMS` sent every call through one boto3 KMS client (standard retries,
`total_max_attempts`, the attested hooks) and translated botocore's exceptions with the rules
below, copied from enclave/kms.py as of commit 2548d10. `ReferenceKMS` does the same, so a test
can run one scripted exchange through both and compare what the caller sees.
"""

from __future__ import annotations

import functools
import ssl
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any
from unittest import mock

import botocore.endpoint
import botocore.session
from botocore.config import Config
from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    HTTPClientError,
    ParamValidationError,
    SSLError,
)
from botocore.exceptions import ConnectionError as BotoConnectionError
from nitrokms.enclave.attested_kms import attach_recipient
from nitrokms.enclave.keypool import Attestor, RecipientKeyPool
from nitrokms.enclave.kms import (
    KMSError,
    KMSRequestError,
    KMSTLSError,
    KMSUnavailableError,
)

MAX_ERROR_MESSAGE_CHARS = 512


class ReferenceKMS:
    """A boto3 KMS client built as the old EnclaveKMS built it, with its error translation."""

    def __init__(
        self,
        region: str,
        *,
        endpoint_url: str,
        attestor: Attestor,
        pool: RecipientKeyPool,
        access_key_id: str,
        secret_access_key: str,
        session_token: str | None = None,
        ca_bundle: str | None = None,
        max_attempts: int = 4,
        read_timeout_s: float = 10.0,
    ) -> None:
        config = Config(
            retries={"mode": "standard", "total_max_attempts": max_attempts},
            connect_timeout=3.0,
            read_timeout=read_timeout_s,
            max_pool_connections=32,
            tcp_keepalive=True,
        )
        client = _session().create_client(
            "kms",
            region_name=region,
            endpoint_url=endpoint_url,
            verify=ca_bundle if ca_bundle else True,
            aws_access_key_id=access_key_id,
            aws_secret_access_key=secret_access_key,
            aws_session_token=session_token,
            config=config,
        )
        self.client = attach_recipient(client, attestor=attestor, pool=pool)

    def call(self, method: str, **params: Any) -> dict[str, Any]:
        """One call; raises the KMSError family as the old EnclaveKMS did."""
        try:
            with no_backoff():
                reply: dict[str, Any] = getattr(self.client, method)(**params)
        except (ClientError, BotoCoreError) as exc:
            raise translate_botocore_error(exc) from None
        return reply


@functools.cache
def _session() -> botocore.session.Session:
    """One session for every reference client (its loaded service models are reused)."""
    return botocore.session.Session()


@contextmanager
def no_backoff() -> Iterator[None]:
    """botocore sleeps between attempts in botocore.endpoint; skip the sleeping, keep the count."""
    with mock.patch.object(botocore.endpoint.time, "sleep"):
        yield


def translate_botocore_error(exc: ClientError | BotoCoreError) -> KMSError:
    """Map one botocore exception to the KMSError family (the old EnclaveKMS's rules)."""
    if isinstance(exc, ClientError):
        error = exc.response.get("Error", {})
        code = str(error.get("Code") or "UnknownError")
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        message = _clip(str(error.get("Message") or code))
        return KMSError(message, code=f"kms.{code}", status=status)
    if isinstance(exc, SSLError):
        if _is_verification_failure(exc):
            return KMSTLSError(f"TLS verification of KMS failed: {exc}")
        return KMSUnavailableError(f"KMS unreachable (TLS handshake cut): {exc}")
    if isinstance(exc, ParamValidationError):
        return KMSRequestError(_clip(str(exc)))
    if isinstance(exc, BotoConnectionError | HTTPClientError):
        return KMSUnavailableError(f"KMS unreachable: {_clip(str(exc))}")
    return KMSError(_clip(str(exc)), code=f"kms.{type(exc).__name__}")


def _is_verification_failure(exc: SSLError) -> bool:
    seen: set[int] = set()
    pending: list[BaseException | None] = [exc, getattr(exc, "kwargs", {}).get("error")]
    while pending:
        current = pending.pop()
        if current is None or id(current) in seen:
            continue
        seen.add(id(current))
        if isinstance(current, ssl.SSLCertVerificationError) or (
            type(current).__name__ == "CertificateError"
        ):
            return True
        pending += [current.__cause__, current.__context__]
        pending += [arg for arg in current.args if isinstance(arg, BaseException)]
    return "certificate verify failed" in str(getattr(exc, "kwargs", {}).get("error", exc))


def _clip(text: str) -> str:
    return text if len(text) <= MAX_ERROR_MESSAGE_CHARS else text[:MAX_ERROR_MESSAGE_CHARS] + "…"
