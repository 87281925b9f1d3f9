"""The pool of ephemeral RSA key pairs whose public halves go into KMS `Recipient` documents.

Generating an RSA-2048 key takes tens of milliseconds, so it never happens on the request path: a
daemon thread keeps `size` *fresh* keys ready.

Pre-attested keys: given an `attestor`, the same thread also asks the NSM for an attestation
document carrying each ready key's SPKI and renews it before `document_max_age_s`, so
`acquire_attested()` hands out a key and its document with no NSM round trip on the request path.
A document is reused for every call with its key until it is `document_max_age_s` old (and never
closer than a minute to its leaf certificate's expiry). Replaying such a document gains nothing to
anyone without the key's private half, which never leaves the enclave; what the age limit bounds
is the risk that KMS refuses older documents (whether KMS checks a document's timestamp is not
documented). `document_max_age_s=0` turns reuse off: a fresh document per call, made inline.

A key is fresh until `renew_fraction * max_age_s`; after that it is still served (when nothing
fresher is ready) while its replacement is generated, and once enough fresh keys exist it retires. A
key also retires after `max_uses` acquisitions and, hard, at `max_age_s`. Retired keys stay
reachable through `lookup()` / `keys_by_ski()` for `grace_s`, so a reply already in flight for one
can still be decrypted. Keys live in memory only and are never logged: `RecipientKey`'s repr shows
only a prefix of its SKI.
"""

from __future__ import annotations

import hashlib
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from nitrokms.enclave.errors import KeyPoolError
from nitrokms.proto.attestation import parse_document
from nitrokms.proto.attestation.errors import AttestationError

PUBLIC_EXPONENT = 65537
ALLOWED_KEY_BITS = (2048, 3072, 4096)
DEFAULT_MAX_USES = 1000
DEFAULT_GRACE_S = 120.0
DEFAULT_RENEW_FRACTION = 0.8
DEFAULT_DOCUMENT_MAX_AGE_S = 60.0
LEAF_EXPIRY_MARGIN_S = 60.0
ATTEST_RETRY_S = 1.0
MAX_IDLE_WAIT_S = 60.0

Clock = Callable[[], float]
KeyGenerator = Callable[[int], rsa.RSAPrivateKey]


class Attestor(Protocol):
    """Returns a fresh attestation document (COSE_Sign1 bytes) carrying `public_key`.

    `NSMClient.get_attestation_doc` satisfies it.
    """

    def __call__(self, *, public_key: bytes) -> bytes: ...


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
class AttestedKey:
    """A pooled key and an attestation document carrying its SPKI."""

    key: RecipientKey
    document: bytes = field(repr=False)


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
    attested: int = 0
    documents_made: int = 0
    inline_documents: int = 0

    def as_dict(self) -> dict[str, object]:
        return dict(self.__dict__)


@dataclass(eq=False)
class _Slot:
    key: RecipientKey
    uses: int = 0
    retired_at: float | None = None
    document: bytes | None = field(default=None, repr=False)
    document_until: float = 0.0  # clock time after which the document is not handed out
    document_renew_at: float = 0.0  # clock time from which the generator thread renews it

    def document_if_fresh(self, now: float) -> bytes | None:
        return self.document if self.document is not None and now < self.document_until else None


class RecipientKeyPool:
    """Thread-safe pool of pre-generated (and, with an attestor, pre-attested) recipient keys;
    see the module docstring for rotation and document reuse."""

    def __init__(
        self,
        size: int = 2,
        max_age_s: float = 3600.0,
        max_uses: int = DEFAULT_MAX_USES,
        key_bits: int = 2048,
        *,
        grace_s: float = DEFAULT_GRACE_S,
        renew_fraction: float = DEFAULT_RENEW_FRACTION,
        attestor: Attestor | None = None,
        document_max_age_s: float = DEFAULT_DOCUMENT_MAX_AGE_S,
        clock: Clock = time.monotonic,
        wall_clock: Clock = time.time,
        keygen: KeyGenerator = generate_rsa_key,
        start: bool = True,
    ) -> None:
        _check_config(size, max_age_s, max_uses, key_bits, grace_s, renew_fraction)
        if document_max_age_s < 0:
            raise ValueError("document_max_age_s must be non-negative (0 turns reuse off)")
        self.size, self.max_age_s, self.max_uses, self.key_bits = (
            size,
            max_age_s,
            max_uses,
            key_bits,
        )
        self.grace_s, self._renew_fraction = grace_s, renew_fraction
        self._renew_age_s = max_age_s * renew_fraction
        self.document_max_age_s = document_max_age_s
        self._attestor = attestor
        self._clock, self._wall_clock, self._keygen = clock, wall_clock, keygen
        self._cond = threading.Condition()
        self._ready: list[_Slot] = []
        self._retired: dict[bytes, _Slot] = {}
        self._closed = False
        self._error: str | None = None
        self._attest_retry_at = 0.0
        self._generated = self._acquired = self._blocked = 0
        self._documents_made = self._inline_documents = 0
        self._thread: threading.Thread | None = None
        if start:
            self.start()

    @property
    def pre_attested(self) -> bool:
        """Whether documents are made ahead of time and reused (an attestor and a non-zero age)."""
        return self._attestor is not None and self.document_max_age_s > 0

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
        with self._cond:
            return self._take(timeout_s).key

    def acquire_attested(self, timeout_s: float | None = None) -> AttestedKey:
        """A ready key (one use counted, as `acquire`) with an attestation document for it: the
        pre-made one while it is fresh, else one made now (kept for reuse when pre-attested).

        Raises KeyPoolError as `acquire` (and when the pool has no attestor), or whatever the
        attestor raises (NSMError).
        """
        with self._cond:
            slot = self._take(timeout_s)
            now = self._clock()
            document = slot.document_if_fresh(now)
            if self.pre_attested and now >= slot.document_renew_at:
                self._cond.notify_all()  # the generator renews it (it may be asleep)
        if document is None:
            document = self._attest(slot, inline=True)
        return AttestedKey(slot.key, document)

    def attest(self, *, public_key: bytes) -> bytes:
        """An `Attestor` over the pool's own: the pre-made document when `public_key` is a pooled
        key's and its document is fresh, else a new one. Lets `attested_kms` hooks reuse documents
        (`attested_kms_client(attestor=pool.attest, pool=pool)`). Raises what the attestor raises.
        """
        with self._cond:
            slot = self._slot_for(public_key)
            document = None if slot is None else slot.document_if_fresh(self._clock())
        if document is not None:
            return document
        if slot is not None:
            return self._attest(slot, inline=True)
        return self._require_attestor()(public_key=public_key)

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
        """Block until `size` fresh keys are ready (and, when pre-attested, carry fresh documents);
        False on timeout or close."""
        with self._cond:
            return (
                self._cond.wait_for(lambda: self._closed or self._warm(self._clock()), timeout_s)
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
                attested=sum(1 for s in self._ready if s.document_if_fresh(now) is not None),
                documents_made=self._documents_made,
                inline_documents=self._inline_documents,
            )

    def __repr__(self) -> str:
        return f"RecipientKeyPool(size={self.size}, key_bits={self.key_bits})"

    # --- documents ------------------------------------------------------------------------------

    def _require_attestor(self) -> Attestor:
        if self._attestor is None:
            raise KeyPoolError("this recipient key pool has no attestor")
        return self._attestor

    def _attest(self, slot: _Slot, *, inline: bool) -> bytes:
        """Make a document for `slot`'s key (without the lock held) and, when pre-attested, keep
        it for reuse. Raises (and records in `stats().last_error`) what the attestor raises."""
        attestor = self._require_attestor()
        try:
            document = attestor(public_key=slot.key.spki_der)
        except Exception as exc:
            with self._cond:
                self._error = f"attestation failed: {type(exc).__name__}: {exc}"
            raise
        made_at = self._clock()
        until = self._usable_until(document, made_at)
        with self._cond:
            self._documents_made += 1
            self._inline_documents += inline
            if self.pre_attested and until > max(made_at, slot.document_until):
                slot.document, slot.document_until = document, until
                slot.document_renew_at = made_at + (until - made_at) * self._renew_fraction
                self._cond.notify_all()
            elif self.pre_attested:  # unusable at once (leaf about to expire): ask again later
                slot.document_renew_at = max(slot.document_renew_at, made_at + ATTEST_RETRY_S)
        return document

    def _usable_until(self, document: bytes, made_at: float) -> float:
        """Clock time until which `document` may be handed out: its age limit, and a margin
        before its leaf certificate expires (a document that does not parse gets the age limit)."""
        until = made_at + self.document_max_age_s
        try:
            leaf = x509.load_der_x509_certificate(parse_document(document).certificate)
        except (AttestationError, ValueError):
            return until
        left_s = leaf.not_valid_after_utc.timestamp() - self._wall_clock() - LEAF_EXPIRY_MARGIN_S
        return min(until, made_at + left_s)

    def _slot_for(self, public_key: bytes) -> _Slot | None:
        for slot in [*self._ready, *self._retired.values()]:
            if slot.key.spki_der == public_key:
                return slot
        return None

    # --- internals (called with the lock held) ------------------------------------------------

    def _take(self, timeout_s: float | None) -> _Slot:
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
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
        return slot

    def _is_fresh(self, slot: _Slot, now: float) -> bool:
        return now - slot.key.created_at < self._renew_age_s

    def _fresh_count(self, now: float) -> int:
        return sum(1 for slot in self._ready if self._is_fresh(slot, now))

    def _warm(self, now: float) -> bool:
        if self._fresh_count(now) < self.size:
            return False
        return not self.pre_attested or all(s.document_if_fresh(now) for s in self._ready)

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

    def _needs_document(self, now: float) -> _Slot | None:
        """A ready key whose document is missing or due for renewal (not while backing off)."""
        if not self.pre_attested or now < self._attest_retry_at:
            return None
        due = [s for s in self._ready if now >= s.document_renew_at]
        return min(due, key=lambda s: s.document_renew_at) if due else None

    def _idle_wait_s(self, now: float) -> float:
        waits = [self._renew_age_s - (now - s.key.created_at) for s in self._ready]
        if self.pre_attested:
            waits += [max(s.document_renew_at, self._attest_retry_at) - now for s in self._ready]
        return min([MAX_IDLE_WAIT_S, *waits]) if waits else MAX_IDLE_WAIT_S

    # --- generator thread ---------------------------------------------------------------------

    def _run(self) -> None:
        while True:
            with self._cond:
                while True:
                    if self._closed:
                        return
                    now = self._clock()
                    due = self._needs_document(now)
                    if due is not None or self._needs_key(now):
                        break
                    self._cond.wait(max(0.01, self._idle_wait_s(now)))
            if due is not None:
                self._renew_document(due)
                continue
            try:
                private_key = self._keygen(self.key_bits)
            except Exception as exc:  # a keygen failure must reach waiters, not kill silently
                with self._cond:
                    self._error = f"{type(exc).__name__}: {exc}"
                    self._thread = None
                    self._cond.notify_all()
                return
            self._add(private_key)

    def _renew_document(self, slot: _Slot) -> None:
        """Attest `slot`'s key off the request path. A failure is recorded and retried after
        ATTEST_RETRY_S; meanwhile requests attest inline (and see the error themselves)."""
        try:
            self._attest(slot, inline=False)
        except Exception:  # recorded by _attest; callers meet the NSM's error inline
            with self._cond:
                self._attest_retry_at = self._clock() + ATTEST_RETRY_S
            return
        with self._cond:
            if self._error is not None and self._error.startswith("attestation failed"):
                self._error = None

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
