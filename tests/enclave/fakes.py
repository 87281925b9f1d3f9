"""In-process stand-ins for KMS, the NSM and the key pool, where they are not the point."""

from __future__ import annotations

import hashlib
import hmac
import secrets
import threading
from dataclasses import dataclass, field
from datetime import UTC, datetime

from nitrokms.enclave.errors import EnclaveError
from nitrokms.proto.keys import KeyRequest

KEY_ARN = "arn:aws:kms:us-east-1:111122223333:key/1234abcd-12ab-34cd-56ef-1234567890ab"


@dataclass
class FakeDataKey:
    plaintext: bytearray = field(repr=False)
    ciphertext_blob: bytes
    key_id: str


@dataclass
class FakeHealth:
    kms_reachable: bool | None
    last_error: str | None
    credentials_present: bool
    credentials_expire_at: datetime | None


class FakeKMS:
    """A deterministic 'KMS': the blob is a random id + HMAC(context); keys live in a dict."""

    def __init__(self) -> None:
        self._keys: dict[bytes, tuple[bytes, tuple[tuple[str, str], ...]]] = {}
        self.calls: list[str] = []
        self.key_requests: list[KeyRequest] = []
        self.credentials: tuple[str, str, str | None, float | None] | None = None
        self.fail_with: EnclaveError | None = None
        self.gate: threading.Event | None = None
        self._lock = threading.Lock()

    def health(self) -> FakeHealth:
        expires = None
        if self.credentials and self.credentials[3] is not None:
            expires = datetime.fromtimestamp(self.credentials[3], UTC)
        return FakeHealth(True, None, self.credentials is not None, expires)

    def set_credentials(
        self,
        access_key_id: str,
        secret_access_key: str,
        session_token: str | None = None,
        expiration: float | None = None,
    ) -> None:
        self.credentials = (access_key_id, secret_access_key, session_token, expiration)

    def _enter(self, name: str) -> None:
        with self._lock:
            self.calls.append(name)
        if self.gate is not None:
            self.gate.wait(10)
        if self.fail_with is not None:
            raise self.fail_with

    def generate_data_key(self, request: KeyRequest) -> FakeDataKey:
        self._enter("GenerateDataKey")
        self.key_requests.append(request)
        request = request.sized()
        size = {"AES_256": 32, "AES_128": 16}.get(
            request.key_spec or "", request.number_of_bytes or 0
        )
        key = secrets.token_bytes(size)
        blob = secrets.token_bytes(16) + hashlib.sha256(repr(request.key_id).encode()).digest()[:8]
        with self._lock:
            self._keys[blob] = (key, tuple(sorted((request.encryption_context or {}).items())))
        return FakeDataKey(bytearray(key), blob, KEY_ARN)

    def decrypt(self, ciphertext_blob: bytes, request: KeyRequest) -> FakeDataKey:
        self._enter("Decrypt")
        self.key_requests.append(request)
        entry = self._keys.get(ciphertext_blob)
        context = tuple(sorted((request.encryption_context or {}).items()))
        if entry is None or not hmac.compare_digest(repr(entry[1]), repr(context)):
            raise EnclaveError("bad ciphertext", code="kms.InvalidCiphertextException")
        return FakeDataKey(bytearray(entry[0]), ciphertext_blob, KEY_ARN)


@dataclass(frozen=True)
class FakeDescription:
    version_major: int = 1
    version_minor: int = 0
    version_patch: int = 0
    module_id: str = "i-0123456789abcdef0-enc0123456789abcdef"
    locked_pcrs: tuple[int, ...] = tuple(range(16))
    digest: str = "SHA384"


@dataclass(frozen=True)
class FakePCR:
    data: bytes


class FakeNSM:
    def __init__(self, *, debug: bool = False) -> None:
        self.debug = debug
        self.attest_calls: list[tuple[bytes | None, bytes | None, bytes | None]] = []

    def describe_nsm(self) -> FakeDescription:
        return FakeDescription()

    def describe_pcr(self, index: int) -> FakePCR:
        if self.debug and index < 3:
            return FakePCR(bytes(48))
        return FakePCR(hashlib.sha384(bytes([index])).digest())

    def get_attestation_doc(
        self,
        user_data: bytes | None = None,
        nonce: bytes | None = None,
        public_key: bytes | None = None,
    ) -> bytes:
        self.attest_calls.append((user_data, nonce, public_key))
        return b"\x84doc" + (nonce or b"") + (user_data or b"")


@dataclass(frozen=True)
class FakeStats:
    size: int = 2
    ready: int = 2


class FakePool:
    def stats(self) -> FakeStats:
        return FakeStats()
