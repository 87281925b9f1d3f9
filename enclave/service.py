"""The enclave's operations: one request body in, one result body out (no sockets here).

`EnclaveService.handle(body)` runs one RPC operation. It blocks (KMS calls go through boto3), so
the server calls it from a thread pool. Every failure is an EnclaveError whose `code` goes on the
wire unchanged; anything else is a bug and the server reports it as `enclave.InternalError`.

Encryption contexts: a data key is bound at KMS to the context it was made or loaded with, and a
Seal envelope binds exactly that context as associated data. So Seal with a handle uses the key's
own context (a different one in the request is refused with `enclave.ContextMismatch`), and Unseal
requires the caller to present the same context that was sealed (an omitted context equals the
empty one): anything else fails as the opaque `crypto.DecryptionFailed`, just as KMS refuses a
wrong context. An Unseal that has to reload its key through attested Decrypt keeps it in the
keyring (under a handle the parent never sees) until TTL or LRU eviction, so repeated Unseals of
envelopes under one data key cost one KMS call. Plaintext data keys never leave this module except
into the keyring.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import replace
from datetime import datetime
from typing import Any, Final, Protocol

from nitrokms import __version__
from nitrokms.enclave import envelope
from nitrokms.enclave.errors import (
    ContextMismatchError,
    DecryptionError,
    EnvelopeTooLargeError,
    RegionMismatchError,
    UnknownHandleError,
    UnsupportedDataKeyError,
)
from nitrokms.enclave.keyring import Keyring, context_key
from nitrokms.proto import messages as m
from nitrokms.proto.keys import KeyRequest

DEBUG_PCRS: Final = (0, 1, 2)
DESCRIBED_PCRS: Final = range(16)
SEAL_KEY_SPEC: Final = "AES_256"


class DataKey(Protocol):
    @property
    def plaintext(self) -> bytearray: ...
    @property
    def ciphertext_blob(self) -> bytes: ...
    @property
    def key_id(self) -> str: ...


class KMSHealth(Protocol):
    @property
    def kms_reachable(self) -> bool | None: ...
    @property
    def last_error(self) -> str | None: ...
    @property
    def credentials_present(self) -> bool: ...
    @property
    def credentials_expire_at(self) -> datetime | None: ...


class KMS(Protocol):
    """What the service needs from `enclave.kms.EnclaveKMS` (blocking calls)."""

    def health(self) -> KMSHealth: ...

    def set_credentials(
        self,
        access_key_id: str,
        secret_access_key: str,
        session_token: str | None,
        expiration: float | None = None,
    ) -> None: ...

    def generate_data_key(self, request: KeyRequest) -> DataKey: ...

    def decrypt(self, ciphertext_blob: bytes, request: KeyRequest) -> DataKey: ...


class NSMDescription(Protocol):
    @property
    def version_major(self) -> int: ...
    @property
    def version_minor(self) -> int: ...
    @property
    def version_patch(self) -> int: ...
    @property
    def module_id(self) -> str: ...
    @property
    def locked_pcrs(self) -> tuple[int, ...]: ...
    @property
    def digest(self) -> str: ...


class PCRState(Protocol):
    @property
    def data(self) -> bytes: ...


class NSM(Protocol):
    """What the service needs from `enclave.nsm.NSMClient`."""

    def describe_nsm(self) -> NSMDescription: ...
    def describe_pcr(self, index: int) -> PCRState: ...
    def get_attestation_doc(
        self,
        user_data: bytes | None = None,
        nonce: bytes | None = None,
        public_key: bytes | None = None,
    ) -> bytes: ...


class PoolStats(Protocol):
    @property
    def size(self) -> int: ...
    @property
    def ready(self) -> int: ...


class KeyPool(Protocol):
    def stats(self) -> PoolStats: ...


class EnclaveService:
    """Dispatch of request bodies to operations. Thread-safe given thread-safe collaborators."""

    def __init__(
        self,
        *,
        kms: KMS,
        nsm: NSM,
        keyring: Keyring,
        pool: KeyPool,
        region: str,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self.kms, self.nsm, self.keyring, self.pool = kms, nsm, keyring, pool
        self.region = region
        self._wall_clock = wall_clock
        self._handlers: dict[str, Callable[[Any], m.Body]] = {
            "SetCredentials": self.set_credentials,
            "GenerateDataKey": self.generate_data_key,
            "LoadDataKey": self.load_data_key,
            "ForgetKey": self.forget_key,
            "Seal": self.seal,
            "Unseal": self.unseal,
            "Attest": self.attest,
            "Describe": self.describe,
            "Health": self.health,
        }

    def __repr__(self) -> str:
        return f"<EnclaveService region={self.region} {self.keyring!r}>"

    def handle(self, body: m.Body) -> m.Body:
        """Run the operation for a validated request body. Raises EnclaveError."""
        return self._handlers[body.operation](body)

    # --- operations --------------------------------------------------------------------------

    def set_credentials(self, request: m.SetCredentialsRequest) -> m.SetCredentialsResult:
        if request.region != self.region:
            raise RegionMismatchError(
                f"this enclave talks to KMS in {self.region}, not {request.region}"
            )
        expiration_s = None if request.expiration_ms is None else request.expiration_ms / 1000
        self.kms.set_credentials(
            request.access_key_id,
            request.secret_access_key,
            request.session_token,
            expiration_s,
        )
        return m.SetCredentialsResult()

    def generate_data_key(self, request: m.GenerateDataKeyRequest) -> m.GenerateDataKeyResult:
        handle, key_id, blob = self._generate(request.key)
        return m.GenerateDataKeyResult(handle=handle, ciphertext_blob=blob, key_id=key_id)

    def load_data_key(self, request: m.LoadDataKeyRequest) -> m.LoadDataKeyResult:
        handle, key_id = self._load(request.ciphertext_blob, request.key)
        return m.LoadDataKeyResult(handle=handle, key_id=key_id)

    def forget_key(self, request: m.ForgetKeyRequest) -> m.ForgetKeyResult:
        self.keyring.forget(request.handle)
        return m.ForgetKeyResult()

    def seal(self, request: m.SealRequest) -> m.SealResult:
        if request.handle is not None:
            handle = request.handle
        else:
            handle, _, _ = self._generate(replace(request.key, key_spec=SEAL_KEY_SPEC))
        with self.keyring.borrow(handle) as held:
            if request.encryption_context is not None and context_key(
                request.encryption_context
            ) != context_key(held.encryption_context):
                raise ContextMismatchError(
                    "a key is sealed with the encryption context it was made with; "
                    "omit encryption_context or pass that one"
                )
            if len(held.key) != envelope.DATA_KEY_BYTES:
                raise UnsupportedDataKeyError("Seal needs an AES_256 (32-byte) data key")
            sealed = envelope.seal(
                held.key,
                request.plaintext,
                key_id=held.key_id,
                ciphertext_blob=held.ciphertext_blob,
                encryption_context=held.encryption_context,
            )
        if len(sealed) > m.MAX_ENVELOPE_BYTES:
            raise EnvelopeTooLargeError(
                f"the envelope would be {len(sealed)} bytes; the limit is {m.MAX_ENVELOPE_BYTES}"
            )
        return m.SealResult(envelope=sealed, key_id=held.key_id, handle=handle)

    def unseal(self, request: m.UnsealRequest) -> m.UnsealResult:
        sealed = envelope.parse(request.envelope)
        if context_key(request.encryption_context) != context_key(sealed.encryption_context):
            raise DecryptionError()
        for attempt in range(2):
            handle = self.keyring.find(sealed.ciphertext_blob, sealed.encryption_context)
            if handle is None:
                key = replace(
                    request.key,
                    key_id=sealed.key_id,
                    encryption_context=sealed.encryption_context,
                )
                handle, _ = self._load(sealed.ciphertext_blob, key)
            try:
                with self.keyring.borrow(handle) as held:
                    plaintext = envelope.open_envelope(sealed, held.key)
                return m.UnsealResult(plaintext=plaintext, key_id=sealed.key_id)
            except UnknownHandleError:
                if attempt:
                    raise
        raise AssertionError("unreachable")  # pragma: no cover

    def attest(self, request: m.AttestRequest) -> m.AttestResult:
        document = self.nsm.get_attestation_doc(user_data=request.user_data, nonce=request.nonce)
        return m.AttestResult(document=document)

    def describe(self, request: m.DescribeRequest) -> m.DescribeResult:
        description = self.nsm.describe_nsm()
        pcrs = {index: self.nsm.describe_pcr(index).data for index in DESCRIBED_PCRS}
        return m.DescribeResult(
            module_id=description.module_id,
            pcrs=pcrs,
            debug_mode=all(not any(pcrs[index]) for index in DEBUG_PCRS),
            service_version=__version__,
            nsm_version=(
                f"{description.version_major}.{description.version_minor}."
                f"{description.version_patch}"
            ),
            digest=description.digest,
            locked_pcrs=tuple(description.locked_pcrs),
        )

    def health(self, request: m.HealthRequest) -> m.HealthResult:
        stats = self.pool.stats()
        kms = self.kms.health()
        expires = kms.credentials_expire_at
        expires_ms = None if expires is None else max(0, int(expires.timestamp() * 1000))
        fresh = kms.credentials_present and (
            expires_ms is None or expires_ms > self._wall_clock() * 1000
        )
        last_error = None if kms.last_error is None else kms.last_error[: m.MAX_ERROR_MESSAGE_CHARS]
        return m.HealthResult(
            ready=fresh and stats.ready > 0 and kms.kms_reachable is not False,
            credentials_present=kms.credentials_present,
            key_pool_ready=stats.ready,
            key_pool_target=stats.size,
            handles=len(self.keyring),
            credentials_expiration_ms=expires_ms,
            region=self.region,
            kms_reachable=kms.kms_reachable,
            last_error=last_error or None,
        )

    # --- helpers ------------------------------------------------------------------------------

    def _generate(self, key: KeyRequest) -> tuple[str, str, bytes]:
        data_key = self.kms.generate_data_key(key)
        handle = self._hold(data_key, data_key.ciphertext_blob, key.encryption_context)
        return handle, data_key.key_id, data_key.ciphertext_blob

    def _load(self, ciphertext_blob: bytes, key: KeyRequest) -> tuple[str, str]:
        data_key = self.kms.decrypt(ciphertext_blob, key)
        return self._hold(data_key, ciphertext_blob, key.encryption_context), data_key.key_id

    def _hold(
        self, data_key: DataKey, blob: bytes, encryption_context: Mapping[str, str] | None
    ) -> str:
        return self.keyring.add(
            data_key.plaintext,
            key_id=data_key.key_id,
            ciphertext_blob=blob,
            encryption_context=encryption_context,
        )
