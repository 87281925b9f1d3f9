"""The cryptography of asymmetric and HMAC keys, as pure functions over key material and bytes.

Signatures follow KMS: RSASSA-PSS uses MGF1 with the message hash and a salt as long as the hash;
ECDSA signatures are DER (X9.62 / RFC 3279); `DIGEST` messages are signed as given, after a length
check. RSA encryption is OAEP with MGF1 over the same hash, no label. Every failure to verify is
one typed KMS error, and every failure to decrypt is the one InvalidCiphertextException.
"""

from __future__ import annotations

import functools
import hmac

from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa, utils
from nitrokms.sim.kms.exceptions import (
    InvalidCiphertextException,
    KMSInvalidMacException,
    KMSInvalidSignatureException,
    ValidationException,
)

PrivateKey = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey
_HASHES: dict[str, type[hashes.HashAlgorithm]] = {
    "SHA_1": hashes.SHA1,
    "SHA_224": hashes.SHA224,
    "SHA_256": hashes.SHA256,
    "SHA_384": hashes.SHA384,
    "SHA_512": hashes.SHA512,
}
MAX_PEER_KEY_BYTES = 8192


def _hash(algorithm: str) -> hashes.HashAlgorithm:
    """The hash an algorithm name ends in (`..._SHA_256` -> SHA-256)."""
    return _HASHES["SHA_" + algorithm.rsplit("_", 1)[-1]]()


def _load(material: bytes) -> PrivateKey:
    key = serialization.load_der_private_key(material, password=None)
    if not isinstance(key, rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey):
        raise TypeError(f"unexpected key material type {type(key).__name__}")
    return key


@functools.lru_cache(maxsize=128)
def private_key(material: bytes) -> PrivateKey:
    """Load a KMS key's DER PKCS#8 material (cached: RSA loading costs milliseconds)."""
    return _load(material)


def public_key_der(material: bytes, *, cache: bool = True) -> bytes:
    """The DER SubjectPublicKeyInfo of DER PKCS#8 material (`cache=False` for one-off keys such
    as data key pairs, which should not linger in the cache)."""
    key = private_key(material) if cache else _load(material)
    return key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def _signing_input(
    algorithm: str, message: bytes, message_type: str
) -> tuple[hashes.HashAlgorithm, hashes.HashAlgorithm | utils.Prehashed]:
    digest = _hash(algorithm)
    if message_type == "RAW":
        return digest, digest
    if message_type != "DIGEST":
        raise ValidationException(f"MessageType {message_type} is only valid with ML-DSA keys.")
    if len(message) != digest.digest_size:
        raise ValidationException(f"Digest is invalid length for algorithm {algorithm}.")
    return digest, utils.Prehashed(digest)


def _rsa_padding(algorithm: str, digest: hashes.HashAlgorithm) -> padding.AsymmetricPadding:
    if algorithm.startswith("RSASSA_PSS"):
        return padding.PSS(mgf=padding.MGF1(digest), salt_length=digest.digest_size)
    return padding.PKCS1v15()


def sign(material: bytes, algorithm: str, message: bytes, message_type: str) -> bytes:
    """Sign with a compatible algorithm. Raises ValidationException for a bad digest length."""
    digest, mode = _signing_input(algorithm, message, message_type)
    key = private_key(material)
    if isinstance(key, ec.EllipticCurvePrivateKey):
        return key.sign(message, ec.ECDSA(mode))
    return key.sign(message, _rsa_padding(algorithm, digest), mode)


def verify(
    material: bytes, algorithm: str, message: bytes, message_type: str, signature: bytes
) -> None:
    """Raises KMSInvalidSignatureException unless `signature` is valid (ValidationException for a
    bad digest length)."""
    digest, mode = _signing_input(algorithm, message, message_type)
    public = private_key(material).public_key()
    try:
        if isinstance(public, ec.EllipticCurvePublicKey):
            public.verify(signature, message, ec.ECDSA(mode))
        else:
            public.verify(signature, message, _rsa_padding(algorithm, digest), mode)
    except (InvalidSignature, ValueError):
        raise KMSInvalidSignatureException() from None


def _oaep(algorithm: str) -> padding.OAEP:
    digest = _hash(algorithm)
    return padding.OAEP(mgf=padding.MGF1(digest), algorithm=digest, label=None)


def max_plaintext_bytes(rsa_bits: int, algorithm: str) -> int:
    """OAEP's limit: modulus bytes - 2 * hash bytes - 2 (190 for RSA_2048 with SHA-256)."""
    return rsa_bits // 8 - 2 * _hash(algorithm).digest_size - 2


def rsa_encrypt(material: bytes, spec: str, algorithm: str, plaintext: bytes) -> bytes:
    """RSA-OAEP encrypt. Raises ValidationException (KMS's message) when `plaintext` is too long."""
    key = private_key(material)
    assert isinstance(key, rsa.RSAPrivateKey)
    limit = max_plaintext_bytes(key.key_size, algorithm)
    if len(plaintext) > limit:
        raise ValidationException(
            f"Algorithm {algorithm} and key spec {spec} cannot encrypt data larger than "
            f"{limit} bytes."
        )
    return key.public_key().encrypt(plaintext, _oaep(algorithm))


def rsa_decrypt(material: bytes, algorithm: str, ciphertext: bytes) -> bytes:
    """RSA-OAEP decrypt. Raises InvalidCiphertextException on any failure."""
    key = private_key(material)
    assert isinstance(key, rsa.RSAPrivateKey)
    try:
        return key.decrypt(ciphertext, _oaep(algorithm))
    except ValueError:
        raise InvalidCiphertextException("The ciphertext is invalid for this key.") from None


def derive_shared_secret(material: bytes, peer_spki: bytes) -> bytes:
    """ECDH with a peer's DER SubjectPublicKeyInfo on the same curve (the raw x coordinate).

    Raises ValidationException when the peer key is not an EC key on this key's curve.
    """
    key = private_key(material)
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    try:
        peer = serialization.load_der_public_key(peer_spki)
    except (ValueError, TypeError, UnsupportedAlgorithm):
        raise ValidationException("PublicKey is not a DER SubjectPublicKeyInfo.") from None
    if not isinstance(peer, ec.EllipticCurvePublicKey) or peer.curve.name != key.curve.name:
        raise ValidationException(
            f"PublicKey must be an elliptic curve key on the KMS key's curve ({key.curve.name})."
        )
    return key.exchange(ec.ECDH(), peer)


def mac(material: bytes, algorithm: str, message: bytes) -> bytes:
    return hmac.new(material, message, _hash(algorithm).name).digest()


def verify_mac(material: bytes, algorithm: str, message: bytes, tag: bytes) -> None:
    """Raises KMSInvalidMacException unless `tag` is the MAC of `message`."""
    if not hmac.compare_digest(mac(material, algorithm, message), tag):
        raise KMSInvalidMacException()
