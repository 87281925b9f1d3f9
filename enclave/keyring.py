"""Plaintext data keys held in enclave memory under opaque handles.

Each key lives in a `bytearray` that the keyring owns and zeroes in place when the key leaves:
on `forget`, on eviction of the least recently used key when the count bound is reached, on TTL
expiry and on `clear` (shutdown). A key that is in use (`borrow`) when it leaves is unlisted at
once and wiped when its last borrower returns it, so a concurrent ForgetKey can never make a Seal
encrypt under a half-zeroed key. Handles are `kh-` + 32 random hex digits from `secrets` and carry
no information about the key. The keyring is thread-safe: the service runs KMS calls and AEAD
work in a thread pool.
"""

from __future__ import annotations

import secrets
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Final

from nitrokms.enclave.errors import UnknownHandleError

DEFAULT_MAX_KEYS: Final = 1024
DEFAULT_KEY_TTL_S: Final = 3600.0
HANDLE_PREFIX: Final = "kh-"

Clock = Callable[[], float]
ContextKey = tuple[tuple[str, str], ...]


def context_key(context: Mapping[str, str] | None) -> ContextKey:
    """A hashable, order-independent form of an encryption context (None and {} are the same)."""
    return tuple(sorted((context or {}).items()))


@dataclass(eq=False)
class HeldKey:
    """One data key. `key` is the live buffer: read it only while borrowed, never copy it out."""

    key: bytearray = field(repr=False)
    key_id: str
    ciphertext_blob: bytes = field(repr=False)
    encryption_context: dict[str, str]
    expires_at: float
    borrowers: int = 0
    listed: bool = True

    def wipe(self) -> None:
        self.key[:] = bytes(len(self.key))


class Keyring:
    """Bounded, TTL'd map of handle -> HeldKey. `clock` is injectable for tests."""

    def __init__(
        self,
        max_keys: int = DEFAULT_MAX_KEYS,
        ttl_s: float = DEFAULT_KEY_TTL_S,
        *,
        clock: Clock = time.monotonic,
    ) -> None:
        if max_keys < 1:
            raise ValueError("max_keys must be at least 1")
        if ttl_s <= 0:
            raise ValueError("ttl_s must be positive")
        self.max_keys = max_keys
        self.ttl_s = ttl_s
        self._clock = clock
        self._lock = threading.Lock()
        self._keys: OrderedDict[str, HeldKey] = OrderedDict()
        self._by_blob: dict[tuple[bytes, ContextKey], str] = {}
        self._expiry: deque[tuple[float, str]] = deque()

    def __repr__(self) -> str:
        return f"<Keyring {len(self)} of {self.max_keys} keys, ttl {self.ttl_s:g}s>"

    def __len__(self) -> int:
        with self._lock:
            return len(self._keys)

    def add(
        self,
        key: bytearray,
        *,
        key_id: str,
        ciphertext_blob: bytes,
        encryption_context: Mapping[str, str] | None = None,
    ) -> str:
        """Take ownership of `key` (the caller must drop its reference) and return a new handle.

        Evicts (and wipes) the least recently used key when the keyring is full.
        """
        held = HeldKey(
            key=key,
            key_id=key_id,
            ciphertext_blob=bytes(ciphertext_blob),
            encryption_context=dict(encryption_context or {}),
            expires_at=self._clock() + self.ttl_s,
        )
        handle = HANDLE_PREFIX + secrets.token_hex(16)
        with self._lock:
            self._expire_locked()
            while len(self._keys) >= self.max_keys:
                oldest_handle, oldest = self._keys.popitem(last=False)
                self._unlist_locked(oldest, oldest_handle)
            self._keys[handle] = held
            self._expiry.append((held.expires_at, handle))
            if len(self._expiry) > 2 * self.max_keys:
                self._expiry = deque(sorted((k.expires_at, h) for h, k in self._keys.items()))
            self._by_blob[self._blob_key(held)] = handle
        return handle

    @contextmanager
    def borrow(self, handle: str) -> Iterator[HeldKey]:
        """Use the key under `handle` for the duration of the block.

        Raises UnknownHandleError if no live key is held under it.
        """
        with self._lock:
            self._expire_locked()
            held = self._keys.get(handle)
            if held is None:
                raise UnknownHandleError("no data key is held under that handle")
            self._keys.move_to_end(handle)
            held.borrowers += 1
        try:
            yield held
        finally:
            self._release(held)

    def find(
        self, ciphertext_blob: bytes, encryption_context: Mapping[str, str] | None
    ) -> str | None:
        """The handle of a live key loaded from this CiphertextBlob and context, if any."""
        with self._lock:
            self._expire_locked()
            return self._by_blob.get((bytes(ciphertext_blob), context_key(encryption_context)))

    def forget(self, handle: str) -> None:
        """Drop and wipe the key. Raises UnknownHandleError if it is not held."""
        with self._lock:
            self._expire_locked()
            held = self._keys.pop(handle, None)
            if held is None:
                raise UnknownHandleError("no data key is held under that handle")
            self._unlist_locked(held, handle)

    def sweep(self) -> int:
        """Wipe expired keys now; return how many went."""
        with self._lock:
            return self._expire_locked()

    def clear(self) -> None:
        """Wipe every key (shutdown). Borrowed keys are wiped when returned."""
        with self._lock:
            while self._keys:
                handle, held = self._keys.popitem(last=False)
                self._unlist_locked(held, handle)

    def _release(self, held: HeldKey) -> None:
        with self._lock:
            held.borrowers -= 1
            if not held.listed and held.borrowers == 0:
                held.wipe()

    def _expire_locked(self) -> int:
        """Expiry runs in creation order (TTL is fixed), so this is O(expired), not O(held)."""
        now = self._clock()
        count = 0
        while self._expiry and self._expiry[0][0] <= now:
            _, handle = self._expiry.popleft()
            held = self._keys.pop(handle, None)
            if held is not None:
                self._unlist_locked(held, handle)
                count += 1
        if not self._keys:
            self._expiry.clear()
        return count

    def _unlist_locked(self, held: HeldKey, handle: str) -> None:
        held.listed = False
        blob_key = self._blob_key(held)
        if self._by_blob.get(blob_key) == handle:
            del self._by_blob[blob_key]
        if held.borrowers == 0:
            held.wipe()

    @staticmethod
    def _blob_key(held: HeldKey) -> tuple[bytes, ContextKey]:
        return held.ciphertext_blob, context_key(held.encryption_context)
