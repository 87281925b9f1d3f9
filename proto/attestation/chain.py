"""Certificate-chain validation for attestation documents (spec 3.5 steps 3-6).

The path is `[pinned root, cabundle[1], ..., cabundle[-1], leaf]`. The trust decision is strict:
cabundle[0] must be the pinned root itself (same DER), or carry the pinned root's subject and
public key (a re-issued root with the same key is still the same trust anchor). A bundle that
reaches the pinned root only through a cross-signature is refused; AWS documents always carry the
root as cabundle[0]. The pinned root's own validity and constraints are the ones checked.

Every signature must be ecdsa-with-SHA384 by a P-384 key. CAs need BasicConstraints CA=true and
KeyUsage keyCertSign, and their pathLenConstraint must cover the intermediates below them; the leaf
needs KeyUsage digitalSignature, must not be a CA, and must hold a P-384 key. Unknown critical
extensions are refused. CRLs are not consulted (as AWS prescribes).

What does not depend on time (parsing, names, signatures, constraints) is cached per chain; the
validity windows are re-checked against the time of every verification.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import threading
import warnings
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TypeVar

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtensionOID, NameOID, SignatureAlgorithmOID
from nitrokms.proto.attestation.errors import (
    BadChainError,
    BadSignatureError,
    ExpiredError,
    MalformedError,
    NotYetValidError,
    UntrustedRootError,
)

DEFAULT_CACHE_SIZE = 256
_KNOWN_CRITICAL = frozenset(
    {
        ExtensionOID.BASIC_CONSTRAINTS,
        ExtensionOID.KEY_USAGE,
        ExtensionOID.SUBJECT_KEY_IDENTIFIER,
        ExtensionOID.AUTHORITY_KEY_IDENTIFIER,
        ExtensionOID.CRL_DISTRIBUTION_POINTS,
        ExtensionOID.EXTENDED_KEY_USAGE,
    }
)
_ECDSA = ec.ECDSA(hashes.SHA384())
_WARNINGS_LOCK = threading.Lock()
_E = TypeVar("_E", bound=x509.ExtensionType)


@dataclass(frozen=True)
class Window:
    """The validity window of one certificate of a chain, with a label for messages."""

    label: str
    not_before: dt.datetime
    not_after: dt.datetime


@dataclass(frozen=True)
class VerifiedChain:
    """A chain whose structure and signatures verified; time is checked by `check_time`."""

    leaf_key: ec.EllipticCurvePublicKey = field(repr=False)
    windows: tuple[Window, ...]

    def check_time(self, at: dt.datetime) -> None:
        """Raise ExpiredError or NotYetValidError naming the first certificate (leaf first)
        whose validity window does not contain `at`."""
        stamp = _iso(at)
        for window in self.windows:
            if at < window.not_before:
                raise NotYetValidError(
                    f"not yet valid: {window.label} is valid from {_iso(window.not_before)}"
                    f" (verification time {stamp})"
                )
            if at > window.not_after:
                raise ExpiredError(
                    f"expired: {window.label} expired at {_iso(window.not_after)}"
                    f" (verification time {stamp})"
                )


class ChainValidator:
    """Validates chains up to one pinned root, caching verified chains (LRU, bounded)."""

    def __init__(self, root: x509.Certificate, *, cache_size: int = DEFAULT_CACHE_SIZE) -> None:
        self.root = root
        self._root_der = root.public_bytes(serialization.Encoding.DER)
        self._root_id = hashlib.sha256(self._root_der).digest()
        self._root_spki = _spki(root)
        self._cache: OrderedDict[tuple[bytes, bytes, tuple[bytes, ...]], VerifiedChain]
        self._cache = OrderedDict()
        self._cache_size = cache_size
        self._lock = threading.Lock()

    def validate(
        self, certificate: bytes, cabundle: Sequence[bytes], at: dt.datetime
    ) -> ec.EllipticCurvePublicKey:
        """Return the leaf's public key once the chain verifies and is valid at `at`.

        Raises MalformedError (undecodable certificate), UntrustedRootError, BadChainError,
        BadSignatureError, ExpiredError or NotYetValidError.
        """
        key = (self._root_id, certificate, tuple(cabundle))
        with self._lock:
            chain = self._cache.get(key)
            if chain is not None:
                self._cache.move_to_end(key)
        if chain is None:
            chain = self._verify_strictly(certificate, cabundle)
            with self._lock:
                self._cache[key] = chain
                while len(self._cache) > self._cache_size:
                    self._cache.popitem(last=False)
        chain.check_time(at)
        return chain.leaf_key

    def cached_chains(self) -> int:
        with self._lock:
            return len(self._cache)

    def _verify_strictly(self, certificate: bytes, cabundle: Sequence[bytes]) -> VerifiedChain:
        """`_verify`, refusing what cryptography only warns about (RFC 5280 violations such as a
        non-positive serial or a bad name attribute length). The warnings filter is global
        state, hence the lock; only cold verifications take it."""
        with _WARNINGS_LOCK, warnings.catch_warnings():
            warnings.simplefilter("error")
            try:
                return self._verify(certificate, cabundle)
            except Warning as exc:
                detail = str(exc).splitlines()[0][:120] if str(exc) else type(exc).__name__
                raise BadChainError(f"bad chain: invalid certificate ({detail})") from None

    def _verify(self, certificate: bytes, cabundle: Sequence[bytes]) -> VerifiedChain:
        leaf = _load(certificate, "certificate")
        cas = [_load(der, f"cabundle[{i}]") for i, der in enumerate(cabundle)]
        try:
            self._check_anchor(cabundle[0], cas[0])
            return _check_path([self.root, *cas[1:], leaf])
        except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
            detail = str(exc).splitlines()[0][:120] if str(exc) else type(exc).__name__
            raise BadChainError(f"bad chain: unreadable certificate field ({detail})") from None

    def _check_anchor(self, der: bytes, first: x509.Certificate) -> None:
        if der == self._root_der:
            return
        if first.subject == self.root.subject and _spki(first) == self._root_spki:
            return
        raise UntrustedRootError(
            f"untrusted root: cabundle[0] ({_cn(first)}) is not the pinned root ({_cn(self.root)})"
        )


def _check_path(path: list[x509.Certificate]) -> VerifiedChain:
    """Check names, signatures, constraints and extensions of `[root, ..., leaf]`."""
    labels = [f"root ({_cn(path[0])})"]
    labels += [f"cabundle[{i}] ({_cn(c)})" for i, c in enumerate(path[1:-1], 1)]
    labels.append(f"leaf certificate ({_cn(path[-1])})")
    for i in range(1, len(path)):
        _check_signed(path[i], path[i - 1], labels[i], labels[i - 1])
    for i in range(len(path) - 1):
        _check_ca(path[i], labels[i], intermediates_below=len(path) - 2 - i)
    leaf_key = _check_leaf(path[-1], labels[-1])
    for cert, label in zip(path, labels, strict=True):
        _check_critical(cert, label)
    windows = [
        Window(label, cert.not_valid_before_utc, cert.not_valid_after_utc)
        for cert, label in zip(path, labels, strict=True)
    ]
    return VerifiedChain(leaf_key, tuple(reversed(windows)))


def _load(der: bytes, what: str) -> x509.Certificate:
    try:
        return x509.load_der_x509_certificate(der)
    except (ValueError, x509.InvalidVersion):
        raise MalformedError(f"malformed: {what} is not a valid DER X.509 certificate") from None


def _spki(cert: x509.Certificate) -> bytes:
    return cert.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def _p384(cert: x509.Certificate, label: str) -> ec.EllipticCurvePublicKey:
    key = cert.public_key()
    if not isinstance(key, ec.EllipticCurvePublicKey) or key.curve.name != "secp384r1":
        raise BadChainError(f"bad chain: {label} key is not ECDSA P-384")
    return key


def _check_signed(cert: x509.Certificate, issuer: x509.Certificate, label: str, by: str) -> None:
    if cert.issuer != issuer.subject:
        raise BadChainError(f"bad chain: issuer of {label} is not the subject of {by}")
    if cert.signature_algorithm_oid != SignatureAlgorithmOID.ECDSA_WITH_SHA384:
        raise BadChainError(f"bad chain: {label} is not signed with ecdsa-with-SHA384")
    try:
        _p384(issuer, by).verify(cert.signature, cert.tbs_certificate_bytes, _ECDSA)
    except InvalidSignature:
        raise BadSignatureError(f"bad signature: {label} is not signed by {by}") from None


def _extension(cert: x509.Certificate, kind: type[_E], label: str) -> _E:
    try:
        return cert.extensions.get_extension_for_class(kind).value
    except x509.ExtensionNotFound:
        raise BadChainError(f"bad chain: {label} lacks {kind.__name__}") from None


def _check_ca(cert: x509.Certificate, label: str, *, intermediates_below: int) -> None:
    constraints = _extension(cert, x509.BasicConstraints, label)
    if not constraints.ca:
        raise BadChainError(f"bad chain: {label} is not a CA (BasicConstraints CA=false)")
    if constraints.path_length is not None and intermediates_below > constraints.path_length:
        raise BadChainError(
            f"bad chain: {label} allows {constraints.path_length} intermediate(s) below it,"
            f" the chain has {intermediates_below}"
        )
    if not _extension(cert, x509.KeyUsage, label).key_cert_sign:
        raise BadChainError(f"bad chain: {label} KeyUsage lacks keyCertSign")


def _check_leaf(cert: x509.Certificate, label: str) -> ec.EllipticCurvePublicKey:
    try:
        constraints = cert.extensions.get_extension_for_class(x509.BasicConstraints).value
    except x509.ExtensionNotFound:
        constraints = None
    if constraints is not None and (constraints.ca or constraints.path_length is not None):
        raise BadChainError(f"bad chain: {label} is a CA certificate")
    if not _extension(cert, x509.KeyUsage, label).digital_signature:
        raise BadChainError(f"bad chain: {label} KeyUsage lacks digitalSignature")
    return _p384(cert, label)


def _check_critical(cert: x509.Certificate, label: str) -> None:
    for ext in cert.extensions:
        if ext.critical and ext.oid not in _KNOWN_CRITICAL:
            raise BadChainError(
                f"bad chain: {label} has unknown critical extension {ext.oid.dotted_string}"
            )


def _cn(cert: x509.Certificate) -> str:
    names = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    value = names[0].value if names else cert.subject.rfc4514_string()
    text = value if isinstance(value, str) else value.decode(errors="replace")
    return "CN=" + text[:80].replace("\n", " ")


def _iso(at: dt.datetime) -> str:
    return at.astimezone(dt.UTC).isoformat(timespec="seconds").replace("+00:00", "Z")
