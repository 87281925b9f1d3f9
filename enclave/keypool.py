"""The pool of ephemeral RSA key pairs whose public halves go into KMS `Recipient` documents.

Generating an RSA-2048 key takes tens of milliseconds, so it never happens on the request path: a
daemon thread keeps `size` *fresh* keys ready. A key is fresh until `renew_fraction * max_age_s`;
after that it is still served (when nothing fresher is ready) while its replacement is generated,
and once enough fresh keys exist it retires. A key also retires after `max_uses` acquisitions and,
hard, at `max_age_s`. Retired keys stay reachable through `lookup()` / `keys_by_ski()` for
`grace_s`, so a reply already in flight for one can still be decrypted. Keys live in memory only and
are never logged: `RecipientKey`'s repr shows only a prefix of its SKI.
"""

from __future__ import annotations

import hashlib
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from nitrokms.enclave.errors import KeyPoolError

PUBLIC_EXPONENT = 65537
ALLOWED_KEY_BITS = (2048, 3072, 4096)
DEFAULT_MAX_USES = 1000
DEFAULT_GRACE_S = 120.0
DEFAULT_RENEW_FRACTION = 0.8
MAX_IDLE_WAIT_S = 60.0

Clock = Callable[[], float]
KeyGenerator = Callable[[int], rsa.RSAPrivateKey]


def generate_rsa_key(bits: int) -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=PUBLIC_EXPONENT, key_size=bits)


def subject_key_identifier(spki_der: bytes) -> bytes:
    """SHA-256 of the DER SubjectPublicKeyInfo, as KMS puts it in the CMS recipient identifier."""
    return hashlib.sha256(spki_der).digest()


@dataclass(frozen=True, eq=False)
class RecipientKey:
    """One key pair. `private_key` never appears in reprs."""

    private_key: rsa.RSAPrivateKey = field(repr=False)
    spki_der: bytes = field(repr=False)
    ski: bytes = field(repr=False)
    created_at: float = field(repr=False)

    @classmethod
    def from_private_key(cls, private_key: rsa.RSAPrivateKey, created_at: float) -> RecipientKey:
        spki = private_key.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        return cls(private_key, spki, subject_key_identifier(spki), created_at)

    def __repr__(self) -> str:
        return f"RecipientKey(ski={self.ski.hex()[:16]}…)"


@dataclass(frozen=True)
class PoolStats:
    """A snapshot for Health: counts only, no key material."""

    size: int
    ready: int
    fresh: int
    retired: int
    generated: int
    acquired: int
    blocked_acquires: int
    oldest_ready_age_s: float | None
    last_error: str | None

    def as_dict(self) -> dict[str, object]:
        return dict(self.__dict__)


@dataclass(eq=False)
class _Slot:
    key: RecipientKey
    uses: int = 0
    retired_at: float | None = None


class RecipientKeyPool:
    """Thread-safe pool of pre-generated recipient keys; see the module docstring for rotation."""

    def __init__(
        self,
        size: int = 2,
        max_age_s: float = 3600.0,
        max_uses: int = DEFAULT_MAX_USES,
        key_bits: int = 2048,
        *,
        grace_s: float = DEFAULT_GRACE_S,
        renew_fraction: float = DEFAULT_RENEW_FRACTION,
        clock: Clock = time.monotonic,
        keygen: KeyGenerator = generate_rsa_key,
        start: bool = True,
    ) -> None:
        _check_config(size, max_age_s, max_uses, key_bits, grace_s, renew_fraction)
        self.size, self.max_age_s, self.max_uses, self.key_bits = (
            size,
            max_age_s,
            max_uses,
            key_bits,
        )
        self.grace_s, self._renew_age_s = grace_s, max_age_s * renew_fraction
        self._clock, self._keygen = clock, keygen
        self._cond = threading.Condition()
        self._ready: list[_Slot] = []
        self._retired: dict[bytes, _Slot] = {}
        self._closed = False
        self._error: str | None = None
        self._generated = self._acquired = self._blocked = 0
        self._thread: threading.Thread | None = None
        if start:
            self.start()

    def start(self) -> None:
        with self._cond:
            if self._thread is not None or self._closed:
                return
            self._thread = threading.Thread(target=self._run, name="recipient-keygen", daemon=True)
            self._thread.start()

    def close(self) -> None:
        """Stop the generator and drop every key. Idempotent."""
        with self._cond:
            self._closed = True
            self._ready.clear()
            self._retired.clear()
            self._cond.notify_all()
            thread, self._thread = self._thread, None
        if thread is not None and thread is not threading.current_thread():
            thread.join()

    def __enter__(self) -> RecipientKeyPool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def acquire(self, timeout_s: float | None = None) -> RecipientKey:
        """Return a ready key, counting one use; blocks only when no key is ready.

        Raises KeyPoolError if the pool is closed, `timeout_s` passes, or key generation fails.
        """
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        with self._cond:
            blocked = False
            while True:
                if self._closed:
                    raise KeyPoolError("recipient key pool is closed")
                slot = self._pick(self._clock())
                if slot is not None:
                    break
                if self._error is not None and self._thread is None:
                    raise KeyPoolError(f"recipient key generation failed: {self._error}")
                if not blocked:
                    blocked = True
                    self._blocked += 1
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    raise KeyPoolError("timed out waiting for a recipient key")
                self._cond.wait(remaining)
            slot.uses += 1
            self._acquired += 1
            if slot.uses >= self.max_uses:
                self._retire(slot, self._clock())
            return slot.key

    def lookup(self, ski: bytes) -> RecipientKey | None:
        """The ready or recently retired key with this SKI, or None."""
        with self._cond:
            self._housekeep(self._clock())
            for slot in self._ready:
                if slot.key.ski == ski:
                    return slot.key
            retired = self._retired.get(ski)
            return retired.key if retired is not None else None

    def keys_by_ski(self) -> dict[bytes, rsa.RSAPrivateKey]:
        """Every key that may still decrypt a reply (ready and in grace), by SKI."""
        with self._cond:
            self._housekeep(self._clock())
            slots = [*self._ready, *self._retired.values()]
            return {slot.key.ski: slot.key.private_key for slot in slots}

    def wait_ready(self, timeout_s: float | None = None) -> bool:
        """Block until `size` fresh keys are ready; False on timeout or close."""
        with self._cond:
            return (
                self._cond.wait_for(
                    lambda: self._closed or self._fresh_count(self._clock()) >= self.size, timeout_s
                )
                and not self._closed
            )

    def stats(self) -> PoolStats:
        with self._cond:
            now = self._clock()
            self._housekeep(now)
            ages = [now - slot.key.created_at for slot in self._ready]
            return PoolStats(
                size=self.size,
                ready=len(self._ready),
                fresh=self._fresh_count(now),
                retired=len(self._retired),
                generated=self._generated,
                acquired=self._acquired,
                blocked_acquires=self._blocked,
                oldest_ready_age_s=max(ages) if ages else None,
                last_error=self._error,
            )

    def __repr__(self) -> str:
        return f"RecipientKeyPool(size={self.size}, key_bits={self.key_bits})"

    # --- internals (called with the lock held) ------------------------------------------------

    def _is_fresh(self, slot: _Slot, now: float) -> bool:
        return now - slot.key.created_at < self._renew_age_s

    def _fresh_count(self, now: float) -> int:
        return sum(1 for slot in self._ready if self._is_fresh(slot, now))

    def _pick(self, now: float) -> _Slot | None:
        self._housekeep(now)
        fresh = [slot for slot in self._ready if self._is_fresh(slot, now)]
        if len(fresh) < self.size:
            self._cond.notify_all()
        candidates = fresh or self._ready
        return min(candidates, key=lambda s: s.uses) if candidates else None

    def _retire(self, slot: _Slot, now: float) -> None:
        if slot in self._ready:
            self._ready.remove(slot)
        slot.retired_at = now
        self._retired[slot.key.ski] = slot
        self._cond.notify_all()

    def _housekeep(self, now: float) -> None:
        for slot in [s for s in self._ready if now - s.key.created_at >= self.max_age_s]:
            self._retire(slot, now)
        if self._fresh_count(now) >= self.size:
            for slot in [s for s in self._ready if not self._is_fresh(s, now)]:
                self._retire(slot, now)
        for ski in [
            k for k, s in self._retired.items() if now - (s.retired_at or now) > self.grace_s
        ]:
            del self._retired[ski]

    def _needs_key(self, now: float) -> bool:
        self._housekeep(now)
        return self._fresh_count(now) < self.size

    def _idle_wait_s(self, now: float) -> float:
        waits = [self._renew_age_s - (now - s.key.created_at) for s in self._ready]
        return min([MAX_IDLE_WAIT_S, *waits]) if waits else MAX_IDLE_WAIT_S

    # --- generator thread ---------------------------------------------------------------------

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._closed and not self._needs_key(self._clock()):
                    self._cond.wait(max(0.01, self._idle_wait_s(self._clock())))
                if self._closed:
                    return
            try:
                private_key = self._keygen(self.key_bits)
            except Exception as exc:  # a keygen failure must reach waiters, not kill silently
                with self._cond:
                    self._error = f"{type(exc).__name__}: {exc}"
                    self._thread = None
                    self._cond.notify_all()
                return
            self._add(private_key)

    def _add(self, private_key: rsa.RSAPrivateKey) -> None:
        with self._cond:
            if self._closed:
                return
            now = self._clock()
            self._ready.append(_Slot(RecipientKey.from_private_key(private_key, now)))
            self._generated += 1
            self._error = None
            self._housekeep(now)
            self._cond.notify_all()


def _check_config(  # noqa: PLR0917
    size: int, max_age_s: float, max_uses: int, key_bits: int, grace_s: float, renew: float
) -> None:
    if size < 1:
        raise ValueError("pool size must be at least 1")
    if max_age_s <= 0 or grace_s < 0:
        raise ValueError("max_age_s must be positive and grace_s non-negative")
    if max_uses < 1:
        raise ValueError("max_uses must be at least 1")
    if key_bits not in ALLOWED_KEY_BITS:
        raise ValueError(f"key_bits must be one of {ALLOWED_KEY_BITS}")
    if not 0 < renew <= 1:
        raise ValueError("renew_fraction must be in (0, 1]")
