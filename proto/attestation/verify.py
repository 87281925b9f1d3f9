"""The attestation verifier: syntax, chain, COSE signature, then the relying party's checks."""

from __future__ import annotations

import datetime as dt
import hmac
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from cryptography import x509
from nitrokms.proto.attestation.chain import DEFAULT_CACHE_SIZE, ChainValidator
from nitrokms.proto.attestation.document import MAX_PCRS, AttestationDocument, parse_document
from nitrokms.proto.attestation.errors import (
    DebugModeError,
    FromFutureError,
    NonceMismatchError,
    PCRMismatchError,
    TooOldError,
)
from nitrokms.proto.attestation.roots import load_root

MAX_CLOCK_SKEW = dt.timedelta(minutes=5)
"""How far a document's timestamp may lie after the verification time (clocks differ)."""


@dataclass(frozen=True)
class Expectations:
    """What the relying party requires of a document beyond a valid signature and chain.

    `pcrs` maps PCR index to expected value; `nonce` must equal the document's nonce; `max_age`
    bounds how old the document's timestamp may be at the verification time; debug-mode documents
    (PCR0-2 all zero) are refused unless `allow_debug`.
    Raises ValueError on an impossible PCR index or a value that is not bytes.
    """

    pcrs: Mapping[int, bytes] = field(default_factory=dict)
    nonce: bytes | None = None
    max_age: dt.timedelta | None = None
    allow_debug: bool = False

    def __post_init__(self) -> None:
        for index in self.pcrs:
            if not 0 <= index < MAX_PCRS:
                raise ValueError(f"PCR index {index} is outside [0, {MAX_PCRS})")
            if not isinstance(self.pcrs[index], bytes):
                raise ValueError(f"expected PCR{index} must be bytes")
        object.__setattr__(self, "pcrs", MappingProxyType(dict(self.pcrs)))


class AttestationVerifier:
    """Verifies attestation documents against one pinned root (default: AWS Nitro Root-G1).

    Thread-safe; verified chains are cached (bounded), their validity re-checked on every call.
    """

    def __init__(
        self,
        root: x509.Certificate | bytes | None = None,
        *,
        cache_size: int = DEFAULT_CACHE_SIZE,
    ) -> None:
        self._chains = ChainValidator(load_root(root), cache_size=cache_size)

    @property
    def root(self) -> x509.Certificate:
        return self._chains.root

    def verify(
        self,
        data: bytes,
        *,
        at: dt.datetime | None = None,
        expect: Expectations | None = None,
    ) -> AttestationDocument:
        """Return the document once every check passes; `at=None` means now (naive = UTC).

        Raises an AttestationError subclass naming the first failed check: MalformedError,
        UntrustedRootError, BadChainError, BadSignatureError, ExpiredError, NotYetValidError,
        DebugModeError, PCRMismatchError, NonceMismatchError, FromFutureError, TooOldError.
        """
        when = _aware(at) if at is not None else dt.datetime.now(dt.UTC)
        doc = parse_document(data)
        leaf_key = self._chains.validate(doc.certificate, doc.cabundle, when)
        doc.cose.verify(leaf_key)
        check_expectations(doc, expect or Expectations(), when)
        return doc


def check_expectations(doc: AttestationDocument, expect: Expectations, at: dt.datetime) -> None:
    """The relying party's checks on an authentic document (see Expectations)."""
    if doc.debug_mode and not expect.allow_debug:
        raise DebugModeError(
            "debug mode: PCR0-2 are all zero (debug-mode enclave); pass allow_debug"
            " (--allow-debug) to accept it"
        )
    for index, value in sorted(expect.pcrs.items()):
        actual = doc.pcrs.get(index)
        if actual is None or not hmac.compare_digest(actual, value):
            raise PCRMismatchError(f"PCR mismatch: PCR{index} differs from the expected value")
    if expect.nonce is not None and (
        doc.nonce is None or not hmac.compare_digest(doc.nonce, expect.nonce)
    ):
        raise NonceMismatchError("nonce mismatch: document nonce differs from the expected nonce")
    issued = doc.issued_at
    if issued - at > MAX_CLOCK_SKEW:
        raise FromFutureError(
            f"from the future: document timestamp {_iso(issued)} is after the verification"
            f" time {_iso(at)}"
        )
    if expect.max_age is not None and at - issued > expect.max_age:
        raise TooOldError(
            f"too old: document timestamp {_iso(issued)} is more than"
            f" {expect.max_age.total_seconds():g} s before {_iso(at)}"
        )


def _aware(at: dt.datetime) -> dt.datetime:
    return at.replace(tzinfo=dt.UTC) if at.tzinfo is None else at


def _iso(at: dt.datetime) -> str:
    return at.astimezone(dt.UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
