"""CMS EnvelopedData (RFC 5652) read from a BER tree into `EnvelopedInfo`, with refusal reasons.

Reading and judging are separate: any well-formed EnvelopedData is described, and what the
decryptor would refuse (anything but RSAES-OAEP SHA-256/MGF1-SHA-256 with an empty label, a
256-bit AES-CBC content key with a 16-byte IV) is listed in `refusals`, so `inspect` can explain it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import NamedTuple

from nitrokms.enclave.cms import ber
from nitrokms.enclave.cms.ber import CONTEXT, UNIVERSAL, Element
from nitrokms.enclave.errors import CMSFormatError

MAX_BLOB_BYTES = 64 * 1024
MAX_RECIPIENTS = 16
IV_BYTES = 16
AES_BLOCK_BYTES = 16

ENVELOPED_DATA = "1.2.840.113549.1.7.3"
DATA = "1.2.840.113549.1.7.1"
RSA_PKCS1 = "1.2.840.113549.1.1.1"
RSAES_OAEP = "1.2.840.113549.1.1.7"
MGF1 = "1.2.840.113549.1.1.8"
P_SPECIFIED = "1.2.840.113549.1.1.9"
SHA1 = "1.3.14.3.2.26"
SHA256 = "2.16.840.1.101.3.4.2.1"
AES_256_CBC = "2.16.840.1.101.3.4.1.42"

OID_NAMES = {
    ENVELOPED_DATA: "envelopedData",
    DATA: "data",
    "1.2.840.113549.1.7.2": "signedData",
    "1.2.840.113549.1.9.16.1.23": "authEnvelopedData",
    RSA_PKCS1: "rsaEncryption (PKCS#1 v1.5)",
    RSAES_OAEP: "rsaesOaep",
    MGF1: "mgf1",
    SHA1: "sha1",
    "2.16.840.1.101.3.4.2.2": "sha384",
    "2.16.840.1.101.3.4.2.3": "sha512",
    "2.16.840.1.101.3.4.2.4": "sha224",
    SHA256: "sha256",
    "2.16.840.1.101.3.4.1.2": "aes-128-cbc",
    "2.16.840.1.101.3.4.1.22": "aes-192-cbc",
    AES_256_CBC: "aes-256-cbc",
    "2.16.840.1.101.3.4.1.6": "aes-128-gcm",
    "2.16.840.1.101.3.4.1.46": "aes-256-gcm",
    "1.2.840.113549.3.7": "des-ede3-cbc",
}

_RECIPIENT_KINDS = {1: "keyAgreement", 2: "kek", 3: "password", 4: "other"}


def oid_name(dotted: str) -> str:
    return OID_NAMES.get(dotted, dotted)


@dataclass(frozen=True)
class RecipientInfo:
    """One RecipientInfo. Only key transport (`kind == "keyTransport"`) fields are filled in."""

    kind: str
    version: int | None = None
    rid_kind: str | None = None
    subject_key_identifier: bytes | None = None
    issuer_der: bytes | None = None
    serial_number: int | None = None
    key_encryption_algorithm: str | None = None
    oaep_hash: str | None = None
    oaep_mgf: str | None = None
    oaep_mgf_hash: str | None = None
    oaep_label: bytes | None = None
    encrypted_key: bytes = field(default=b"", repr=False)
    refusals: tuple[str, ...] = ()

    @property
    def encrypted_key_size(self) -> int:
        return len(self.encrypted_key)

    def to_json(self) -> dict[str, object]:
        return {
            "kind": self.kind,
            "version": self.version,
            "rid": self.rid_kind,
            "subject_key_identifier": _hex(self.subject_key_identifier),
            "issuer_der": _hex(self.issuer_der),
            "serial_number": None if self.serial_number is None else str(self.serial_number),
            "key_encryption_algorithm": self.key_encryption_algorithm,
            "oaep_hash": self.oaep_hash,
            "oaep_mgf": self.oaep_mgf,
            "oaep_mgf_hash": self.oaep_mgf_hash,
            "oaep_label": _hex(self.oaep_label),
            "encrypted_key_size": self.encrypted_key_size,
            "refusals": list(self.refusals),
        }


@dataclass(frozen=True)
class EnvelopedInfo:
    """What a CMS EnvelopedData holds, and why `decrypt_enveloped_data` would refuse it."""

    content_type: str
    version: int
    has_originator_info: bool
    recipients: tuple[RecipientInfo, ...]
    encrypted_content_type: str
    content_encryption_algorithm: str
    iv: bytes | None
    content_chunked: bool
    chunk_count: int
    has_unprotected_attributes: bool
    encrypted_content: bytes = field(repr=False)
    refusals: tuple[str, ...] = ()

    @property
    def encrypted_content_size(self) -> int:
        return len(self.encrypted_content)

    def to_json(self) -> dict[str, object]:
        return {
            "content_type": self.content_type,
            "version": self.version,
            "originator_info": self.has_originator_info,
            "recipients": [r.to_json() for r in self.recipients],
            "encrypted_content_type": self.encrypted_content_type,
            "content_encryption_algorithm": self.content_encryption_algorithm,
            "iv": _hex(self.iv),
            "encrypted_content_size": self.encrypted_content_size,
            "content_chunked": self.content_chunked,
            "chunk_count": self.chunk_count,
            "unprotected_attributes": self.has_unprotected_attributes,
            "refusals": list(self.refusals),
        }


def _hex(value: bytes | None) -> str | None:
    return None if value is None else value.hex()


def _fail(what: str) -> CMSFormatError:
    return CMSFormatError(what)


def _need(element: Element, tag_class: int, number: int, what: str) -> Element:
    if not element.is_(tag_class, number):
        raise _fail(f"{what}: expected {_tag_name(tag_class, number)}, got {element.describe()}")
    return element


def _tag_name(tag_class: int, number: int) -> str:
    if tag_class == CONTEXT:
        return f"[{number}]"
    return ber.UNIVERSAL_NAMES.get(number, f"tag {number}")


def _sequence(element: Element, what: str, lo: int, hi: int) -> tuple[Element, ...]:
    _need(element, UNIVERSAL, ber.SEQUENCE, what)
    if not element.constructed or not lo <= len(element.children) <= hi:
        expected = f"{lo}" if lo == hi else f"{lo} to {hi}"
        raise _fail(f"{what}: expected {expected} fields, got {len(element.children)}")
    return element.children


def _algorithm(element: Element, what: str) -> tuple[str, Element | None]:
    fields = _sequence(element, what, 1, 2)
    return ber.oid(fields[0], what), fields[1] if len(fields) == 2 else None


def _octet_string(element: Element, what: str) -> bytes:
    _need(element, UNIVERSAL, ber.OCTET_STRING, what)
    return ber.octets(element, what)


def parse_enveloped_data(blob: bytes) -> EnvelopedInfo:
    """Parse a CMS ContentInfo holding EnvelopedData.

    Raises CMSFormatError when the blob is larger than MAX_BLOB_BYTES, is not well-formed BER, is
    not a ContentInfo, or its content is not a well-formed EnvelopedData.
    """
    if len(blob) > MAX_BLOB_BYTES:
        raise _fail(f"blob of {len(blob)} bytes is larger than {MAX_BLOB_BYTES}")
    if not blob:
        raise _fail("empty input")
    root = ber.parse(blob)
    fields = _sequence(root, "ContentInfo", 2, 2)
    content_type = ber.oid(fields[0], "ContentInfo contentType")
    if content_type != ENVELOPED_DATA:
        raise _fail(f"content type is {oid_name(content_type)}, not envelopedData")
    explicit = _need(fields[1], CONTEXT, 0, "ContentInfo content")
    if not explicit.constructed or len(explicit.children) != 1:
        raise _fail("ContentInfo content: [0] must hold exactly one EnvelopedData")
    return _enveloped_data(explicit.children[0])


def _enveloped_data(element: Element) -> EnvelopedInfo:
    fields = list(_sequence(element, "EnvelopedData", 3, 5))
    version = ber.integer(fields.pop(0), "EnvelopedData version", max_bytes=1)
    has_originator = fields[0].is_(CONTEXT, 0)
    if has_originator:
        fields.pop(0)
    has_attributes = bool(fields) and fields[-1].is_(CONTEXT, 1)
    if has_attributes:
        fields.pop()
    if len(fields) != 2:
        raise _fail("EnvelopedData: expected recipientInfos and encryptedContentInfo")
    recipients = _recipient_infos(fields[0])
    content = _encrypted_content_info(fields[1])
    refusals = list(content.refusals)
    if not any(r.kind == "keyTransport" and not r.refusals for r in recipients):
        refusals.extend(
            f"recipient {i + 1}: {reason}"
            for i, recipient in enumerate(recipients)
            for reason in recipient.refusals
        )
    return EnvelopedInfo(
        content_type=oid_name(ENVELOPED_DATA),
        version=version,
        has_originator_info=has_originator,
        recipients=recipients,
        encrypted_content_type=content.content_type,
        content_encryption_algorithm=content.algorithm,
        iv=content.iv,
        content_chunked=content.chunked,
        chunk_count=content.chunk_count,
        has_unprotected_attributes=has_attributes,
        encrypted_content=content.data,
        refusals=tuple(refusals),
    )


class _EncryptedContent(NamedTuple):
    content_type: str
    algorithm: str
    iv: bytes | None
    chunked: bool
    chunk_count: int
    data: bytes
    refusals: tuple[str, ...]


def _encrypted_content_info(element: Element) -> _EncryptedContent:
    fields = _sequence(element, "EncryptedContentInfo", 2, 3)
    content_type = oid_name(ber.oid(fields[0], "EncryptedContentInfo contentType"))
    algorithm, params = _algorithm(fields[1], "contentEncryptionAlgorithm")
    refusals: list[str] = []
    iv: bytes | None = None
    if algorithm != AES_256_CBC:
        refusals.append(
            f"content encryption {oid_name(algorithm)} is not supported; need aes-256-cbc"
        )
    elif params is None or not params.is_(UNIVERSAL, ber.OCTET_STRING):
        refusals.append("aes-256-cbc parameters are not an OCTET STRING IV")
    else:
        iv = _octet_string(params, "aes-256-cbc IV")
        if len(iv) != IV_BYTES:
            refusals.append(f"IV is {len(iv)} bytes; aes-256-cbc needs {IV_BYTES}")
    if len(fields) == 2:
        refusals.append("no encrypted content (detached content is not supported)")
        return _EncryptedContent(
            content_type, oid_name(algorithm), iv, False, 0, b"", tuple(refusals)
        )
    encrypted = _need(fields[2], CONTEXT, 0, "encryptedContent")
    data = ber.octets(encrypted, "encryptedContent")
    chunk_count = len(encrypted.children) if encrypted.constructed else 1
    if not data or len(data) % AES_BLOCK_BYTES:
        refusals.append(
            f"encrypted content is {len(data)} bytes, not a positive multiple of {AES_BLOCK_BYTES}"
        )
    return _EncryptedContent(
        content_type,
        oid_name(algorithm),
        iv,
        encrypted.constructed,
        chunk_count,
        data,
        tuple(refusals),
    )


def _recipient_infos(element: Element) -> tuple[RecipientInfo, ...]:
    _need(element, UNIVERSAL, ber.SET, "recipientInfos")
    if not element.constructed or not 1 <= len(element.children) <= MAX_RECIPIENTS:
        raise _fail(f"recipientInfos: expected 1 to {MAX_RECIPIENTS} recipients")
    return tuple(_recipient_info(child) for child in element.children)


def _recipient_info(element: Element) -> RecipientInfo:
    if element.tag_class == CONTEXT and element.number in _RECIPIENT_KINDS:
        kind = _RECIPIENT_KINDS[element.number]
        return RecipientInfo(kind=kind, refusals=(f"{kind} recipients are not supported",))
    fields = _sequence(element, "KeyTransRecipientInfo", 4, 4)
    version = ber.integer(fields[0], "KeyTransRecipientInfo version", max_bytes=1)
    if version not in (0, 2):
        raise _fail(f"KeyTransRecipientInfo version {version} is neither 0 nor 2")
    rid = _recipient_identifier(fields[1])
    algorithm, params = _algorithm(fields[2], "keyEncryptionAlgorithm")
    encrypted_key = _octet_string(fields[3], "encryptedKey")
    oaep = _oaep_params(params) if algorithm == RSAES_OAEP else None
    return RecipientInfo(
        kind="keyTransport",
        version=version,
        rid_kind=rid.kind,
        subject_key_identifier=rid.ski,
        issuer_der=rid.issuer_der,
        serial_number=rid.serial,
        key_encryption_algorithm=oid_name(algorithm),
        oaep_hash=None if oaep is None else oid_name(oaep.hash),
        oaep_mgf=None if oaep is None else oid_name(oaep.mgf),
        oaep_mgf_hash=None if oaep is None else oid_name(oaep.mgf_hash),
        oaep_label=None if oaep is None else oaep.label,
        encrypted_key=encrypted_key,
        refusals=_key_transport_refusals(algorithm, oaep),
    )


class _RecipientId(NamedTuple):
    kind: str
    ski: bytes | None = None
    issuer_der: bytes | None = None
    serial: int | None = None


def _recipient_identifier(element: Element) -> _RecipientId:
    if element.is_(CONTEXT, 0):
        return _RecipientId("subjectKeyIdentifier", ski=ber.octets(element, "subjectKeyIdentifier"))
    fields = _sequence(element, "issuerAndSerialNumber", 2, 2)
    issuer = _need(fields[0], UNIVERSAL, ber.SEQUENCE, "issuer")
    serial = ber.integer(fields[1], "serialNumber", max_bytes=64)
    return _RecipientId(
        "issuerAndSerialNumber", issuer_der=ber.encode_definite(issuer), serial=serial
    )


class _Oaep(NamedTuple):
    hash: str
    mgf: str
    mgf_hash: str
    label: bytes


def _oaep_params(params: Element | None) -> _Oaep:
    """RSAES-OAEP-params (RFC 4055); absent fields, or absent/NULL params, mean SHA-1 defaults."""
    hash_oid, mgf_oid, mgf_hash, label = SHA1, MGF1, SHA1, b""
    if params is None or params.is_(UNIVERSAL, ber.NULL):
        return _Oaep(hash_oid, mgf_oid, mgf_hash, label)
    for item in _sequence(params, "RSAES-OAEP-params", 0, 3):
        if not item.constructed or item.tag_class != CONTEXT or len(item.children) != 1:
            raise _fail(f"RSAES-OAEP-params: unexpected {item.describe()}")
        inner = item.children[0]
        if item.number == 0:
            hash_oid, _ = _algorithm(inner, "OAEP hashAlgorithm")
        elif item.number == 1:
            mgf_oid, mgf_params = _algorithm(inner, "OAEP maskGenAlgorithm")
            if mgf_params is not None:
                mgf_hash, _ = _algorithm(mgf_params, "MGF1 hash")
        elif item.number == 2:
            source, value = _algorithm(inner, "OAEP pSourceAlgorithm")
            if source != P_SPECIFIED or value is None:
                raise _fail("OAEP pSourceAlgorithm is not pSpecified with a label")
            label = _octet_string(value, "OAEP label")
        else:
            raise _fail(f"RSAES-OAEP-params: unexpected [{item.number}]")
    return _Oaep(hash_oid, mgf_oid, mgf_hash, label)


def _key_transport_refusals(algorithm: str, oaep: _Oaep | None) -> tuple[str, ...]:
    if oaep is None:
        return (
            f"key transport {oid_name(algorithm)} is not supported; need rsaesOaep with sha256",
        )
    refusals = []
    if oaep.hash != SHA256:
        refusals.append(f"OAEP hash {oid_name(oaep.hash)} is not supported; need sha256")
    if oaep.mgf != MGF1 or oaep.mgf_hash != SHA256:
        refusals.append(
            f"OAEP mask generation {oid_name(oaep.mgf)}/{oid_name(oaep.mgf_hash)} is not "
            "supported; need mgf1/sha256"
        )
    if oaep.label:
        refusals.append("OAEP with a non-empty label is not supported")
    return tuple(refusals)
