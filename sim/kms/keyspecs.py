"""The key specs this local KMS creates: usages, algorithms, key material, grant operations.

One table (`SPECS`) answers every "what may this key do" question, so CreateKey, DescribeKey,
GetPublicKey, the data plane and CreateGrant cannot disagree. Specs that the API names but this
KMS cannot serve (SM2 is China-only, ML-DSA, ML-KEM, Ed25519) are UnsupportedOperationException.
Asymmetric key material is the private key as DER PKCS#8; symmetric material is the raw key.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from nitrokms.sim.kms.exceptions import UnsupportedOperationException, ValidationException

SYMMETRIC = "SYMMETRIC_DEFAULT"
ENCRYPT_DECRYPT = "ENCRYPT_DECRYPT"
SIGN_VERIFY = "SIGN_VERIFY"
GENERATE_VERIFY_MAC = "GENERATE_VERIFY_MAC"
KEY_AGREEMENT = "KEY_AGREEMENT"
KEY_USAGES = (
    ENCRYPT_DECRYPT, SIGN_VERIFY, GENERATE_VERIFY_MAC, KEY_AGREEMENT, "ENCAPSULATE_DECAPSULATE",
)  # fmt: skip
SYMMETRIC_KEY_BYTES = 32
RSA_ENCRYPTION = ("RSAES_OAEP_SHA_1", "RSAES_OAEP_SHA_256")
RSA_SIGNING = (
    "RSASSA_PSS_SHA_256", "RSASSA_PSS_SHA_384", "RSASSA_PSS_SHA_512",
    "RSASSA_PKCS1_V1_5_SHA_256", "RSASSA_PKCS1_V1_5_SHA_384", "RSASSA_PKCS1_V1_5_SHA_512",
)  # fmt: skip
ENCRYPTION_ALGORITHMS = (SYMMETRIC, *RSA_ENCRYPTION, "SM2PKE")
SIGNING_ALGORITHMS = (
    *RSA_SIGNING, "ECDSA_SHA_256", "ECDSA_SHA_384", "ECDSA_SHA_512", "SM2DSA", "ML_DSA_SHAKE_256",
    "ED25519_SHA_512", "ED25519_PH_SHA_512",
)  # fmt: skip
MAC_ALGORITHMS = ("HMAC_SHA_224", "HMAC_SHA_256", "HMAC_SHA_384", "HMAC_SHA_512")
UNSUPPORTED_SPECS = (
    "SM2", "ML_DSA_44", "ML_DSA_65", "ML_DSA_87", "ECC_NIST_EDWARDS25519", "ML_KEM_512",
    "ML_KEM_768", "ML_KEM_1024",
)  # fmt: skip
_COMMON_GRANT_OPERATIONS = ("DescribeKey", "CreateGrant", "RetireGrant")
_REENCRYPT = ("ReEncryptFrom", "ReEncryptTo")
_GRANT_OPERATIONS = {
    (SYMMETRIC, ENCRYPT_DECRYPT): (
        "Encrypt", "Decrypt", "GenerateDataKey", "GenerateDataKeyWithoutPlaintext",
        "GenerateDataKeyPair", "GenerateDataKeyPairWithoutPlaintext", *_REENCRYPT,
    ),
    ("rsa", ENCRYPT_DECRYPT): ("Encrypt", "Decrypt", "GetPublicKey", *_REENCRYPT),
    ("rsa", SIGN_VERIFY): ("Sign", "Verify", "GetPublicKey"),
    ("ecc", SIGN_VERIFY): ("Sign", "Verify", "GetPublicKey"),
    ("ecc", KEY_AGREEMENT): ("DeriveSharedSecret", "GetPublicKey"),
    ("hmac", GENERATE_VERIFY_MAC): ("GenerateMac", "VerifyMac"),
}  # fmt: skip


@dataclass(frozen=True)
class KeySpec:
    name: str
    family: str  # "SYMMETRIC_DEFAULT", "hmac", "rsa" or "ecc"
    usages: tuple[str, ...]
    rsa_bits: int = 0
    curve: type[ec.EllipticCurve] | None = None
    secret_bytes: int = 0
    signing: tuple[str, ...] = ()
    mac: str = ""

    @property
    def asymmetric(self) -> bool:
        return self.family in ("rsa", "ecc")

    def new_material(self) -> bytes:
        """Fresh key material: raw bytes for symmetric and HMAC keys, DER PKCS#8 otherwise."""
        if not self.asymmetric:
            return os.urandom(self.secret_bytes)
        private: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey
        if self.curve is not None:
            private = ec.generate_private_key(self.curve())
        else:
            private = rsa.generate_private_key(public_exponent=65537, key_size=self.rsa_bits)
        return private.private_bytes(
            serialization.Encoding.DER,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )

    def algorithms(self, usage: str) -> dict[str, Any]:
        """The algorithm lists DescribeKey and GetPublicKey report for a key of this spec."""
        if self.family == SYMMETRIC:
            return {"EncryptionAlgorithms": [SYMMETRIC]}
        if self.family == "hmac":
            return {"MacAlgorithms": [self.mac]}
        if usage == ENCRYPT_DECRYPT:
            return {"EncryptionAlgorithms": list(RSA_ENCRYPTION)}
        if usage == KEY_AGREEMENT:
            return {"KeyAgreementAlgorithms": ["ECDH"]}
        return {"SigningAlgorithms": list(self.signing)}

    def grant_operations(self, usage: str) -> tuple[str, ...]:
        """The grant operations a grant on a key of this spec and usage may list."""
        return (*_GRANT_OPERATIONS.get((self.family, usage), ()), *_COMMON_GRANT_OPERATIONS)


def _hmac(bits: int) -> KeySpec:
    return KeySpec(
        f"HMAC_{bits}",
        "hmac",
        (GENERATE_VERIFY_MAC,),
        secret_bytes=bits // 8,
        mac=f"HMAC_SHA_{bits}",
    )


def _rsa(bits: int) -> KeySpec:
    return KeySpec(f"RSA_{bits}", "rsa", (ENCRYPT_DECRYPT, SIGN_VERIFY), bits, signing=RSA_SIGNING)


def _ecc(name: str, curve: type[ec.EllipticCurve], algorithm: str) -> KeySpec:
    usages = (SIGN_VERIFY, KEY_AGREEMENT) if name.startswith("ECC_NIST") else (SIGN_VERIFY,)
    return KeySpec(name, "ecc", usages, curve=curve, signing=(algorithm,))


SPECS = {
    spec.name: spec
    for spec in (
        KeySpec(SYMMETRIC, SYMMETRIC, (ENCRYPT_DECRYPT,), secret_bytes=SYMMETRIC_KEY_BYTES),
        *(_hmac(bits) for bits in (224, 256, 384, 512)),
        *(_rsa(bits) for bits in (2048, 3072, 4096)),
        _ecc("ECC_NIST_P256", ec.SECP256R1, "ECDSA_SHA_256"),
        _ecc("ECC_NIST_P384", ec.SECP384R1, "ECDSA_SHA_384"),
        _ecc("ECC_NIST_P521", ec.SECP521R1, "ECDSA_SHA_512"),
        _ecc("ECC_SECG_P256K1", ec.SECP256K1, "ECDSA_SHA_256"),
    )
}
KEY_SPEC_ENUM = (*SPECS, *UNSUPPORTED_SPECS)
DATA_KEY_PAIR_SPECS = tuple(name for name, spec in SPECS.items() if spec.asymmetric)
DATA_KEY_PAIR_SPEC_ENUM = (*DATA_KEY_PAIR_SPECS, "SM2", "ECC_NIST_EDWARDS25519", "ML_KEM_512",
                           "ML_KEM_768", "ML_KEM_1024")  # fmt: skip


def spec_for_new_key(name: str, usage: str | None) -> tuple[KeySpec, str]:
    """The spec and usage of a CreateKey request (`name` is already one of KEY_SPEC_ENUM).

    Raises UnsupportedOperationException for specs this KMS cannot create and
    ValidationException (with KMS's messages) for a missing or incompatible usage.
    """
    spec = SPECS.get(name)
    if spec is None:
        raise UnsupportedOperationException(f"KeySpec {name} is not supported by this local KMS")
    if usage is None:
        if spec.family != SYMMETRIC:
            raise ValidationException(
                "You must specify a KeyUsage value for all KMS keys except for symmetric "
                "encryption keys."
            )
        usage = ENCRYPT_DECRYPT
    if usage not in spec.usages:
        raise ValidationException(f"KeyUsage {usage} is not compatible with KeySpec {name}")
    return spec, usage


def data_key_pair_spec(name: str) -> KeySpec:
    """The spec of a GenerateDataKeyPair request. Raises UnsupportedOperationException."""
    spec = SPECS.get(name)
    if spec is None or not spec.asymmetric:
        raise UnsupportedOperationException(
            f"KeyPairSpec {name} is not supported by this local KMS"
        )
    return spec
