"""Decrypting a KMS CiphertextForRecipient: pick the recipient, RSA-OAEP the key, AES-CBC the data.

Key choice: with a mapping of SKI -> key, a recipient whose subjectKeyIdentifier is a held SKI is
used; failing that, held keys are tried against issuerAndSerialNumber recipients (an SKI cannot be
derived from those). A single key is tried against the recipient whose SKI matches it, or else
against every acceptable recipient, so a blob whose SKI was computed differently still opens.
Every failure past the structure (wrong key, OAEP, content-key length, padding) is one opaque
DecryptionError.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Mapping

from cryptography.hazmat.primitives import hashes, padding, serialization
from cryptography.hazmat.primitives.asymmetric.padding import MGF1, OAEP
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPrivateKey, RSAPublicKey
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from nitrokms.enclave.cms.structure import EnvelopedInfo, RecipientInfo, parse_enveloped_data
from nitrokms.enclave.errors import DecryptionError, UnknownRecipientError, UnsupportedCMSError

CONTENT_KEY_BYTES = 32
_OAEP_SHA256 = OAEP(mgf=MGF1(algorithm=hashes.SHA256()), algorithm=hashes.SHA256(), label=None)


def subject_key_identifier(public_key: RSAPublicKey) -> bytes:
    """SHA-256 of the key's DER SubjectPublicKeyInfo: the SKI KMS writes for a Recipient key."""
    spki = public_key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return hashlib.sha256(spki).digest()


def inspect_enveloped_data(blob: bytes) -> EnvelopedInfo:
    """Describe a CMS EnvelopedData, including what decryption would refuse and why.

    Raises CMSFormatError when the blob is not a well-formed EnvelopedData (or is over 64 KiB).
    """
    return parse_enveloped_data(blob)


def decrypt_enveloped_data(
    blob: bytes, keys: Mapping[bytes, RSAPrivateKey] | RSAPrivateKey
) -> bytes:
    """Return the plaintext of a KMS CiphertextForRecipient.

    `keys` maps SKI (see `subject_key_identifier`) to private key, or is a single key.
    Raises CMSFormatError when malformed, UnsupportedCMSError (a CMSFormatError) when it uses an
    algorithm or size this reader refuses, UnknownRecipientError when no held key is a recipient,
    and DecryptionError (opaque) when the chosen key does not open it.
    """
    info = parse_enveloped_data(blob)
    usable = [r for r in info.recipients if r.kind == "keyTransport" and not r.refusals]
    if info.refusals or not usable:
        raise UnsupportedCMSError("cannot decrypt: " + "; ".join(info.refusals))
    candidates = list(_candidates(info.recipients, usable, keys))
    for recipient, key in candidates:
        content_key = _unwrap(recipient, key)
        if content_key is not None:
            return _decrypt_content(info, content_key)
    raise DecryptionError()


def _candidates(
    recipients: tuple[RecipientInfo, ...],
    usable: list[RecipientInfo],
    keys: Mapping[bytes, RSAPrivateKey] | RSAPrivateKey,
) -> Iterator[tuple[RecipientInfo, RSAPrivateKey]]:
    """(recipient, key) pairs to try, best first. Raises UnknownRecipientError or
    UnsupportedCMSError when no pair is worth trying."""
    if isinstance(keys, RSAPrivateKey):
        if len(usable) == 1:
            yield usable[0], keys
            return
        ski = subject_key_identifier(keys.public_key())
        matched = [r for r in usable if r.subject_key_identifier == ski]
        yield from ((r, keys) for r in matched or usable)
        return
    by_ski = [(r, key) for r in usable if (key := _held_key(r, keys)) is not None]
    if by_ski:
        yield from by_ski
        return
    _refuse_matched_but_unsupported(recipients, keys)
    by_issuer = [r for r in usable if r.rid_kind == "issuerAndSerialNumber"]
    if not by_issuer or not keys:
        raise UnknownRecipientError("none of the held keys is a recipient of this CMS message")
    yield from ((r, key) for r in by_issuer for key in keys.values())


def _held_key(
    recipient: RecipientInfo, keys: Mapping[bytes, RSAPrivateKey]
) -> RSAPrivateKey | None:
    ski = recipient.subject_key_identifier
    return None if ski is None else keys.get(ski)


def _refuse_matched_but_unsupported(
    recipients: tuple[RecipientInfo, ...], keys: Mapping[bytes, RSAPrivateKey]
) -> None:
    for recipient in recipients:
        if recipient.refusals and _held_key(recipient, keys) is not None:
            raise UnsupportedCMSError("cannot decrypt: " + "; ".join(recipient.refusals))


def _unwrap(recipient: RecipientInfo, key: RSAPrivateKey) -> bytes | None:
    if len(recipient.encrypted_key) != (key.key_size + 7) // 8:
        return None
    try:
        content_key = key.decrypt(recipient.encrypted_key, _OAEP_SHA256)
    except ValueError:
        return None
    return content_key if len(content_key) == CONTENT_KEY_BYTES else None


def _decrypt_content(info: EnvelopedInfo, content_key: bytes) -> bytes:
    assert info.iv is not None
    decryptor = Cipher(algorithms.AES(content_key), modes.CBC(info.iv)).decryptor()
    padded = decryptor.update(info.encrypted_content) + decryptor.finalize()
    unpadder = padding.PKCS7(128).unpadder()
    try:
        return unpadder.update(padded) + unpadder.finalize()
    except ValueError:
        raise DecryptionError() from None
