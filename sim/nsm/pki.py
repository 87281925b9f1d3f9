"""The simulated NSM's PKI and attestation-document signer.

Documents are shaped byte for byte like the real NSM's (spec section 3): an untagged COSE_Sign1
with protected header `A1 01 38 22` (ES384), an empty unprotected map, a payload map with the nine
keys in the real order (nulls for absent optionals, 8-byte timestamp) and a 96-byte r||s signature.
The chain mirrors AWS's: root, regional, zonal and instance CAs, then a ~3-hour leaf per enclave,
all P-384 / ecdsa-with-SHA384 with the real subject names and extensions.

Only the root persists (in `state_dir`, so documents from separate runs chain to the same root).
Every other certificate is issued on demand *for the document's timestamp*: a document stamped in
the past gets a chain that was valid then (and is expired now), which is how tests produce expired
documents. Issued certificates and keys are cached in memory and re-issued when the timestamp falls
outside their window or too close to its end for the child below them.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
import hashlib
import re
import secrets
import struct
import threading
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import cbor2
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from cryptography.x509.oid import NameOID
from nitrokms.sim.files import atomic_write

ROOT_CERT_FILE = "root.pem"
ROOT_KEY_FILE = "root-key.pem"
PROTECTED_ES384 = bytes.fromhex("a1013822")
PAYLOAD_KEYS = (
    "module_id",
    "digest",
    "timestamp",
    "pcrs",
    "certificate",
    "cabundle",
    "public_key",
    "user_data",
    "nonce",
)
MAX_CACHED_CERTS = 4096
ROOT_VALIDITY = dt.timedelta(days=30 * 365 + 7)
ROOT_BACKDATE = dt.timedelta(days=30)
_CURVE = ec.SECP384R1()
_HASH = hashes.SHA384()
_UTC = dt.UTC
_MODULE_ID = re.compile(r"\A(?P<instance>.+)-enc(?P<enclave>[0-9a-f]{16})\Z")
_CRL_BASE = "http://crl.nitro-enclaves.invalid/crl/"


@dataclass(frozen=True)
class _Tier:
    """One level of the chain: how long its certificates live and when they are re-issued."""

    name: str
    validity: dt.timedelta
    reissue_before_end: dt.timedelta
    backdate: dt.timedelta


_REGIONAL = _Tier(
    "regional", dt.timedelta(days=20, hours=1), dt.timedelta(days=7), dt.timedelta(hours=1)
)
_ZONAL = _Tier(
    "zonal",
    dt.timedelta(days=6) - dt.timedelta(hours=1),
    dt.timedelta(days=2),
    dt.timedelta(hours=1),
)
_INSTANCE = _Tier("instance", dt.timedelta(days=1), dt.timedelta(hours=6), dt.timedelta(minutes=10))
_LEAF = _Tier("leaf", dt.timedelta(hours=3), dt.timedelta(hours=1), dt.timedelta(seconds=3))


@dataclass(frozen=True)
class IssuedCert:
    """A certificate and its private key (never shown in reprs)."""

    certificate: x509.Certificate
    key: ec.EllipticCurvePrivateKey = field(repr=False)
    der: bytes = field(repr=False)

    def covers(self, at: dt.datetime, margin: dt.timedelta) -> bool:
        cert = self.certificate
        return cert.not_valid_before_utc <= at <= cert.not_valid_after_utc - margin


@dataclass(frozen=True)
class IssuedChain:
    """The chain a document signed at one moment carries: root, intermediates (regional,
    zonal, instance) and the leaf, each with its key."""

    root: IssuedCert
    intermediates: tuple[IssuedCert, ...]
    leaf: IssuedCert

    @property
    def cabundle(self) -> tuple[bytes, ...]:
        """`[ROOT, INTERM_1, ..., INTERM_N]` as DER, the order documents carry."""
        return (self.root.der, *(cert.der for cert in self.intermediates))


_Maker = Callable[[IssuedCert, str, dt.datetime, dt.datetime], IssuedCert]


def _name(cn: str, *, shape: str) -> x509.Name:
    attrs = {
        "C": x509.NameAttribute(NameOID.COUNTRY_NAME, "US"),
        "O": x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Amazon"),
        "OU": x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, "AWS"),
        "CN": x509.NameAttribute(NameOID.COMMON_NAME, cn),
        "ST": x509.NameAttribute(NameOID.STATE_OR_PROVINCE_NAME, "WA"),
        "STATE": x509.NameAttribute(NameOID.STATE_OR_PROVINCE_NAME, "Washington"),
        "L": x509.NameAttribute(NameOID.LOCALITY_NAME, "Seattle"),
    }
    order = {
        "plain": ("C", "O", "OU", "CN"),
        "zonal": ("CN", "OU", "O", "C", "ST", "L"),
        "instance": ("C", "STATE", "L", "O", "OU", "CN"),
    }[shape]
    return x509.Name([attrs[a] for a in order])


def _key_usage(
    *, digital_signature: bool, content_commitment: bool, cert_sign: bool, crl_sign: bool
) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=digital_signature,
        content_commitment=content_commitment,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=cert_sign,
        crl_sign=crl_sign,
        encipher_only=False,
        decipher_only=False,
    )


_CA_USAGE = _key_usage(
    digital_signature=True, content_commitment=False, cert_sign=True, crl_sign=True
)
_INSTANCE_USAGE = _key_usage(
    digital_signature=False, content_commitment=False, cert_sign=True, crl_sign=False
)
_LEAF_USAGE = _key_usage(
    digital_signature=True, content_commitment=True, cert_sign=False, crl_sign=False
)


def _random_serial() -> int:
    return int.from_bytes(secrets.token_bytes(20), "big") >> 1 or 1


def issue_certificate(
    *,
    subject: x509.Name,
    issuer: IssuedCert | None,
    key: ec.EllipticCurvePrivateKey,
    not_before: dt.datetime,
    not_after: dt.datetime,
    serial: int,
    path_length: int | None,
    ca: bool,
    usage: tuple[x509.KeyUsage, bool],
    crl: bool = False,
    key_ids: bool = True,
    hash_algorithm: hashes.SHA256 | hashes.SHA384 | hashes.SHA512 = _HASH,
) -> IssuedCert:
    """Issue a certificate for `key` signed by `issuer` (self-signed when None).

    `usage` is (KeyUsage, critical). Tests use this to craft odd chains.
    """
    signer = issuer.key if issuer else key
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer.certificate.subject if issuer else subject)
        .public_key(key.public_key())
        .serial_number(serial)
        .not_valid_before(not_before.replace(microsecond=0))
        .not_valid_after(not_after.replace(microsecond=0))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=path_length), critical=True)
    )
    if issuer and key_ids:
        ski = issuer.certificate.extensions.get_extension_for_class(x509.SubjectKeyIdentifier)
        builder = builder.add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski.value),
            critical=False,
        )
    if key_ids:
        builder = builder.add_extension(
            x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False
        )
    builder = builder.add_extension(usage[0], critical=usage[1])
    if crl:
        url = f"{_CRL_BASE}{secrets.token_hex(16)}.crl"
        point = x509.DistributionPoint([x509.UniformResourceIdentifier(url)], None, None, None)
        builder = builder.add_extension(x509.CRLDistributionPoints([point]), critical=False)
    cert = builder.sign(signer, hash_algorithm)
    return IssuedCert(cert, key, cert.public_bytes(serialization.Encoding.DER))


def create_root(*, now: dt.datetime | None = None) -> IssuedCert:
    """A fresh self-signed root shaped like AWS's Root-G1 (30 years, no pathlen)."""
    start = (now or dt.datetime.now(_UTC)) - ROOT_BACKDATE
    return issue_certificate(
        subject=_name("aws.nitro-enclaves", shape="plain"),
        issuer=None,
        key=ec.generate_private_key(_CURVE),
        not_before=start,
        not_after=start + ROOT_VALIDITY,
        serial=int.from_bytes(secrets.token_bytes(16), "big") >> 1 or 1,
        path_length=None,
        ca=True,
        usage=(_CA_USAGE, True),
    )


def split_module_id(module_id: str) -> tuple[str, bytes]:
    """Return (instance id, 8-byte enclave id) for `module_id`; odd ids get derived stand-ins."""
    match = _MODULE_ID.match(module_id)
    if match:
        return match["instance"], bytes.fromhex(match["enclave"])
    digest = hashlib.sha256(module_id.encode()).digest()
    return "i-" + digest[8:16].hex()[:17], digest[:8]


def _encode_uint64(value: int) -> bytes:
    return b"\x1b" + struct.pack(">Q", value)


def encode_payload(
    *,
    module_id: str,
    timestamp_ms: int,
    pcrs: Mapping[int, bytes],
    certificate: bytes,
    cabundle: tuple[bytes, ...] | list[bytes],
    public_key: bytes | None,
    user_data: bytes | None,
    nonce: bytes | None,
    digest: str = "SHA384",
    indefinite_map: bool = False,
) -> bytes:
    """The payload map exactly as the NSM writes it (key order, nulls, 8-byte timestamp)."""
    values: dict[str, bytes] = {
        "module_id": cbor2.dumps(module_id),
        "digest": cbor2.dumps(digest),
        "timestamp": _encode_uint64(timestamp_ms),
        "pcrs": cbor2.dumps({int(k): bytes(pcrs[k]) for k in sorted(pcrs)}),
        "certificate": cbor2.dumps(certificate),
        "cabundle": cbor2.dumps(list(cabundle)),
        "public_key": cbor2.dumps(public_key),
        "user_data": cbor2.dumps(user_data),
        "nonce": cbor2.dumps(nonce),
    }
    body = b"".join(cbor2.dumps(k) + values[k] for k in PAYLOAD_KEYS)
    if indefinite_map:
        return b"\xbf" + body + b"\xff"
    return b"\xa9" + body


def sign1(
    payload: bytes,
    key: ec.EllipticCurvePrivateKey,
    *,
    protected: bytes = PROTECTED_ES384,
    tagged: bool = False,
) -> bytes:
    """COSE_Sign1 over `payload` (ES384, r||s signature); untagged unless `tagged`."""
    to_sign = cbor2.dumps(["Signature1", protected, b"", payload])
    r, s = decode_dss_signature(key.sign(to_sign, ec.ECDSA(_HASH)))
    signature = r.to_bytes(48, "big") + s.to_bytes(48, "big")
    encoded = cbor2.dumps([protected, {}, payload, signature])
    return (b"\xd2" + encoded) if tagged else encoded


@contextlib.contextmanager
def _locked(state_dir: Path) -> Iterator[None]:
    with (state_dir / ".lock").open("a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def root_certificate_path(state_dir: Path) -> Path:
    """Where `load_or_create(state_dir)` keeps the root certificate (PEM)."""
    return Path(state_dir) / ROOT_CERT_FILE


class SimulatedPKI:
    """The simulated NSM's certificate authority and document signer (thread-safe)."""

    def __init__(self, root: IssuedCert, *, region: str = "us-east-1") -> None:
        self._root = root
        self.region = region
        self.root_certificate: x509.Certificate = root.certificate
        self.root_certificate_pem: bytes = root.certificate.public_bytes(serialization.Encoding.PEM)
        self._lock = threading.Lock()
        self._cache: dict[tuple[str, str], tuple[IssuedCert, IssuedCert]] = {}
        self._ids = {t: secrets.token_hex(8) for t in ("regional", "zonal")}

    def __repr__(self) -> str:
        root = self.root_certificate.subject.rfc4514_string()
        return f"SimulatedPKI(region={self.region!r}, root={root!r})"

    @classmethod
    def load_or_create(cls, state_dir: Path, *, region: str = "us-east-1") -> SimulatedPKI:
        """Load the root from `state_dir`, creating it (atomically, key mode 0600) if absent."""
        state_dir = Path(state_dir)
        state_dir.mkdir(parents=True, exist_ok=True)
        with _locked(state_dir):
            cert_path, key_path = state_dir / ROOT_CERT_FILE, state_dir / ROOT_KEY_FILE
            if cert_path.exists() and key_path.exists():
                return cls(_load_root(cert_path, key_path), region=region)
            root = create_root()
            key_pem = root.key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
            atomic_write(key_path, key_pem, 0o600)
            atomic_write(
                cert_path, root.certificate.public_bytes(serialization.Encoding.PEM), 0o644
            )
            return cls(root, region=region)

    @property
    def root(self) -> IssuedCert:
        """The root certificate with its key (for tests that craft their own chains)."""
        return self._root

    @classmethod
    def ephemeral(cls, *, region: str = "us-east-1") -> SimulatedPKI:
        """A PKI with a fresh in-memory root (nothing written to disk)."""
        return cls(create_root(), region=region)

    def chain(self, module_id: str, timestamp_ms: int) -> IssuedChain:
        """The leaf and cabundle a document for `module_id` stamped `timestamp_ms` carries."""
        at = dt.datetime.fromtimestamp(timestamp_ms / 1000, _UTC)
        instance, enclave = split_module_id(module_id)
        with self._lock:
            regional = self._tier(_REGIONAL, "", at, self._root, self._regional)
            zonal = self._tier(_ZONAL, "", at, regional, self._zonal)
            inst = self._tier(_INSTANCE, instance, at, zonal, self._instance)
            leaf = self._tier(_LEAF, module_id, at, inst, self._leaf(enclave))
        return IssuedChain(self._root, (regional, zonal, inst), leaf)

    def sign_document(
        self,
        *,
        module_id: str,
        timestamp_ms: int,
        pcrs: Mapping[int, bytes],
        public_key: bytes | None,
        user_data: bytes | None,
        nonce: bytes | None,
        digest: str = "SHA384",
        indefinite_map: bool = False,
        tagged: bool = False,
    ) -> bytes:
        """An attestation document (untagged COSE_Sign1 bytes unless `tagged`)."""
        chain = self.chain(module_id, timestamp_ms)
        payload = encode_payload(
            module_id=module_id,
            timestamp_ms=timestamp_ms,
            pcrs=pcrs,
            certificate=chain.leaf.der,
            cabundle=chain.cabundle,
            public_key=public_key,
            user_data=user_data,
            nonce=nonce,
            digest=digest,
            indefinite_map=indefinite_map,
        )
        return sign1(payload, chain.leaf.key, tagged=tagged)

    def sign_payload(
        self,
        payload: bytes,
        *,
        module_id: str = "i-0123456789abcdef0-enc0123456789abcdef",
        timestamp_ms: int | None = None,
        protected: bytes = PROTECTED_ES384,
        tagged: bool = False,
    ) -> bytes:
        """COSE_Sign1 over arbitrary payload bytes with the leaf key of `module_id` (for tests)."""
        if timestamp_ms is None:
            timestamp_ms = int(dt.datetime.now(_UTC).timestamp() * 1000)
        leaf = self.chain(module_id, timestamp_ms).leaf
        return sign1(payload, leaf.key, protected=protected, tagged=tagged)

    def _tier(
        self, tier: _Tier, ident: str, at: dt.datetime, parent: IssuedCert, make: _Maker
    ) -> IssuedCert:
        key = (tier.name, ident)
        cached = self._cache.get(key)
        if (
            cached is not None
            and cached[1] is parent
            and cached[0].covers(at, tier.reissue_before_end)
        ):
            return cached[0]
        start = at - tier.backdate
        issued = make(parent, ident, start, start + tier.validity)
        if len(self._cache) >= MAX_CACHED_CERTS:
            self._cache = {k: v for k, v in self._cache.items() if k[0] in ("regional", "zonal")}
        self._cache[key] = (issued, parent)
        return issued

    def _regional(self, parent: IssuedCert, _: str, nb: dt.datetime, na: dt.datetime) -> IssuedCert:
        cn = f"{self._ids['regional']}.{self.region}.aws.nitro-enclaves"
        return issue_certificate(
            subject=_name(cn, shape="plain"), issuer=parent, key=ec.generate_private_key(_CURVE),
            not_before=nb, not_after=na, serial=_random_serial(), path_length=2, ca=True,
            usage=(_CA_USAGE, True), crl=True,
        )  # fmt: skip

    def _zonal(self, parent: IssuedCert, _: str, nb: dt.datetime, na: dt.datetime) -> IssuedCert:
        cn = f"{self._ids['zonal']}.zonal.{self.region}.aws.nitro-enclaves"
        return issue_certificate(
            subject=_name(cn, shape="zonal"), issuer=parent, key=ec.generate_private_key(_CURVE),
            not_before=nb, not_after=na, serial=_random_serial(), path_length=1, ca=True,
            usage=(_CA_USAGE, True), crl=True,
        )  # fmt: skip

    def _instance(
        self, parent: IssuedCert, ident: str, nb: dt.datetime, na: dt.datetime
    ) -> IssuedCert:
        cn = f"{ident}.{self.region}.aws.nitro-enclaves"
        return issue_certificate(
            subject=_name(cn, shape="instance"), issuer=parent, key=ec.generate_private_key(_CURVE),
            not_before=nb, not_after=na, serial=_random_serial(), path_length=0, ca=True,
            usage=(_INSTANCE_USAGE, True),
        )  # fmt: skip

    def _leaf(self, enclave: bytes) -> _Maker:
        def make(
            parent: IssuedCert, module_id: str, nb: dt.datetime, na: dt.datetime
        ) -> IssuedCert:
            stamp = int(nb.timestamp()) + 3
            serial = int.from_bytes(
                enclave + bytes(4) + struct.pack(">I", stamp & 0xFFFFFFFF), "big"
            )
            cached = self._cache.get(("leaf", module_id))
            key = cached[0].key if cached is not None else ec.generate_private_key(_CURVE)
            return issue_certificate(
                subject=_name(f"{module_id}.{self.region}.aws", shape="instance"), issuer=parent,
                key=key, not_before=nb, not_after=na, serial=serial or 1, path_length=None,
                ca=False, usage=(_LEAF_USAGE, False), key_ids=False,
            )  # fmt: skip

        return make


def _load_root(cert_path: Path, key_path: Path) -> IssuedCert:
    cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
    key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise ValueError(f"{key_path}: not an EC private key")
    return IssuedCert(cert, key, cert.public_bytes(serialization.Encoding.DER))
