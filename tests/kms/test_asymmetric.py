"""Asymmetric keys through boto3: every spec and usage, Sign/Verify with every algorithm, RSA-OAEP,
ECDH; every result cross-checked with `cryptography` against the SPKI GetPublicKey returns."""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Callable
from typing import Any

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from nitrokms.enclave.cms import decrypt_enveloped_data

from .conftest import (
    ENCLAVE,
    PCRS,
    attested_statement,
    client_for,
    expect_error,
    policy_of,
    recipient,
)

RSA_SIGNING = [
    "RSASSA_PSS_SHA_256", "RSASSA_PSS_SHA_384", "RSASSA_PSS_SHA_512",
    "RSASSA_PKCS1_V1_5_SHA_256", "RSASSA_PKCS1_V1_5_SHA_384", "RSASSA_PKCS1_V1_5_SHA_512",
]  # fmt: skip
ECC_SIGNING = {
    "ECC_NIST_P256": ("ECDSA_SHA_256", ec.SECP256R1),
    "ECC_NIST_P384": ("ECDSA_SHA_384", ec.SECP384R1),
    "ECC_NIST_P521": ("ECDSA_SHA_512", ec.SECP521R1),
    "ECC_SECG_P256K1": ("ECDSA_SHA_256", ec.SECP256K1),
}
SIGNING_CASES = [
    *((spec, alg) for spec in ("RSA_2048", "RSA_3072", "RSA_4096") for alg in RSA_SIGNING),
    *((spec, alg) for spec, (alg, _) in ECC_SIGNING.items()),
]
RSA_ENCRYPTION = ["RSAES_OAEP_SHA_1", "RSAES_OAEP_SHA_256"]
OAEP_LIMITS = {
    ("RSA_2048", "RSAES_OAEP_SHA_1"): 214,
    ("RSA_2048", "RSAES_OAEP_SHA_256"): 190,
    ("RSA_3072", "RSAES_OAEP_SHA_1"): 342,
    ("RSA_3072", "RSAES_OAEP_SHA_256"): 318,
    ("RSA_4096", "RSAES_OAEP_SHA_1"): 470,
    ("RSA_4096", "RSAES_OAEP_SHA_256"): 446,
}
AGREEMENT_CURVES: dict[str, type[ec.EllipticCurve]] = {
    "ECC_NIST_P256": ec.SECP256R1,
    "ECC_NIST_P384": ec.SECP384R1,
    "ECC_NIST_P521": ec.SECP521R1,
}
HASHES: dict[str, Callable[[], hashes.HashAlgorithm]] = {
    "256": hashes.SHA256,
    "384": hashes.SHA384,
    "512": hashes.SHA512,
    "1": hashes.SHA1,
}


def _hash(algorithm: str) -> hashes.HashAlgorithm:
    return HASHES[algorithm.rsplit("_", 1)[-1]]()


@pytest.fixture(scope="module")
def key_for(admin: Any) -> Callable[..., str]:
    """One key per (spec, usage, policy), created on first use (RSA keys are slow to make)."""
    made: dict[tuple[str, str, str | None], str] = {}

    def get(spec: str, usage: str, policy: str | None = None) -> str:
        if (spec, usage, policy) not in made:
            extra = {"Policy": policy} if policy is not None else {}
            meta = admin.create_key(KeySpec=spec, KeyUsage=usage, **extra)["KeyMetadata"]
            made[(spec, usage, policy)] = meta["KeyId"]
        return made[(spec, usage, policy)]

    return get


def public_key(admin: Any, key_id: str) -> Any:
    return serialization.load_der_public_key(admin.get_public_key(KeyId=key_id)["PublicKey"])


def local_verify(public: Any, algorithm: str, signature: bytes, message: bytes) -> None:
    """Verify as an outside party would (raises InvalidSignature)."""
    digest = _hash(algorithm)
    if isinstance(public, ec.EllipticCurvePublicKey):
        public.verify(signature, message, ec.ECDSA(digest))
    elif algorithm.startswith("RSASSA_PSS"):
        pss = padding.PSS(mgf=padding.MGF1(digest), salt_length=digest.digest_size)
        public.verify(signature, message, pss, digest)
    else:
        public.verify(signature, message, padding.PKCS1v15(), digest)


@pytest.mark.parametrize(
    ("key", "field", "expected"),
    [
        (("RSA_2048", "SIGN_VERIFY"), "SigningAlgorithms", RSA_SIGNING),
        (("RSA_3072", "ENCRYPT_DECRYPT"), "EncryptionAlgorithms", RSA_ENCRYPTION),
        (("ECC_NIST_P384", "SIGN_VERIFY"), "SigningAlgorithms", ["ECDSA_SHA_384"]),
        (("ECC_SECG_P256K1", "SIGN_VERIFY"), "SigningAlgorithms", ["ECDSA_SHA_256"]),
        (("ECC_NIST_P521", "KEY_AGREEMENT"), "KeyAgreementAlgorithms", ["ECDH"]),
    ],
)
def test_metadata_and_public_key_describe_the_key(
    admin: Any, key_for: Callable[..., str], key: tuple[str, str], field: str, expected: Any
) -> None:
    spec, usage = key
    key_id = key_for(spec, usage)
    meta = admin.describe_key(KeyId=key_id)["KeyMetadata"]
    assert (meta["KeySpec"], meta["CustomerMasterKeySpec"], meta["KeyUsage"]) == (spec, spec, usage)
    assert meta[field] == expected
    assert "CurrentKeyMaterialId" not in meta
    reply = admin.get_public_key(KeyId=key_id)
    assert (reply["KeySpec"], reply["KeyUsage"], reply[field]) == (spec, usage, expected)
    assert reply["KeyId"] == meta["Arn"]
    public = serialization.load_der_public_key(reply["PublicKey"])
    if spec.startswith("RSA"):
        assert isinstance(public, rsa.RSAPublicKey)
        assert public.key_size == int(spec.removeprefix("RSA_"))
    else:
        assert isinstance(public, ec.EllipticCurvePublicKey)
        curve = ECC_SIGNING[spec][1] if spec in ECC_SIGNING else AGREEMENT_CURVES[spec]
        assert isinstance(public.curve, curve)


@pytest.mark.parametrize(("spec", "algorithm"), SIGNING_CASES)
def test_sign_and_verify_raw_and_digest_with_every_algorithm(
    admin: Any, key_for: Callable[..., str], spec: str, algorithm: str
) -> None:
    key_id = key_for(spec, "SIGN_VERIFY")
    public = public_key(admin, key_id)
    message = b"a message worth signing " + spec.encode()
    digest = hashlib.new(_hash(algorithm).name, message).digest()
    for payload, message_type in ((message, "RAW"), (digest, "DIGEST")):
        signed = admin.sign(
            KeyId=key_id, Message=payload, MessageType=message_type, SigningAlgorithm=algorithm
        )
        assert signed["SigningAlgorithm"] == algorithm
        local_verify(public, algorithm, signed["Signature"], message)
        verified = admin.verify(
            KeyId=key_id,
            Message=payload,
            MessageType=message_type,
            Signature=signed["Signature"],
            SigningAlgorithm=algorithm,
        )
        assert verified["SignatureValid"] is True
        assert verified["KeyId"] == signed["KeyId"]
    expect_error(
        lambda: admin.verify(
            KeyId=key_id, Message=message + b"!", Signature=signed["Signature"],
            SigningAlgorithm=algorithm,
        ),
        "KMSInvalidSignatureException",
    )  # fmt: skip


def test_signatures_made_outside_verify_inside(admin: Any, key_for: Callable[..., str]) -> None:
    """Verify is a real check: a signature by another key of the same spec is refused."""
    key_id = key_for("ECC_NIST_P256", "SIGN_VERIFY")
    outsider = ec.generate_private_key(ec.SECP256R1())
    signature = outsider.sign(b"message", ec.ECDSA(hashes.SHA256()))
    expect_error(
        lambda: admin.verify(
            KeyId=key_id, Message=b"message", Signature=signature,
            SigningAlgorithm="ECDSA_SHA_256",
        ),
        "KMSInvalidSignatureException",
    )  # fmt: skip


@pytest.mark.parametrize(
    ("spec", "algorithm"), [("RSA_2048", "RSASSA_PSS_SHA_384"), ("ECC_NIST_P256", "ECDSA_SHA_256")]
)
def test_digest_of_the_wrong_length_is_refused(
    admin: Any, key_for: Callable[..., str], spec: str, algorithm: str
) -> None:
    key_id = key_for(spec, "SIGN_VERIFY")
    message = expect_error(
        lambda: admin.sign(
            KeyId=key_id, Message=b"\x01" * 20, MessageType="DIGEST", SigningAlgorithm=algorithm
        ),
        "ValidationException",
    )
    assert message == f"Digest is invalid length for algorithm {algorithm}."


def test_signing_misuse_errors(admin: Any, key_for: Callable[..., str]) -> None:
    rsa_sign = key_for("RSA_2048", "SIGN_VERIFY")
    rsa_encrypt = key_for("RSA_2048", "ENCRYPT_DECRYPT")
    p256 = key_for("ECC_NIST_P256", "SIGN_VERIFY")
    symmetric = admin.create_key()["KeyMetadata"]

    def sign(key_id: str, algorithm: str = "ECDSA_SHA_256", **extra: Any) -> Callable[[], Any]:
        return lambda: admin.sign(
            KeyId=key_id, Message=extra.pop("Message", b"m"), SigningAlgorithm=algorithm, **extra
        )

    assert (
        expect_error(sign(rsa_sign, "ECDSA_SHA_256"), "InvalidKeyUsageException")
        == "Algorithm ECDSA_SHA_256 is incompatible with key spec RSA_2048."
    )
    expect_error(sign(p256, "ECDSA_SHA_384"), "InvalidKeyUsageException")
    expect_error(sign(p256, "RSASSA_PSS_SHA_256"), "InvalidKeyUsageException")
    assert expect_error(sign(rsa_encrypt, "RSASSA_PSS_SHA_256"), "InvalidKeyUsageException") == (
        f"{admin.describe_key(KeyId=rsa_encrypt)['KeyMetadata']['Arn']} key usage is "
        "ENCRYPT_DECRYPT which is not valid for Sign."
    )
    assert expect_error(sign(symmetric["KeyId"]), "InvalidKeyUsageException") == (
        f"{symmetric['Arn']} key usage is ENCRYPT_DECRYPT which is not valid for Sign."
    )
    expect_error(sign(p256, "ECDSA_SHA_256", Message=b"m" * 4097), "ValidationException")
    expect_error(sign(p256, "ECDSA_SHA_256", MessageType="EXTERNAL_MU"), "ValidationException")
    expect_error(sign(p256, "NOT_AN_ALGORITHM"), "ValidationException")
    expect_error(lambda: admin.sign(KeyId=p256, Message=b"m"), "ValidationException")
    expect_error(sign(p256, DryRun=True), "DryRunOperationException")
    disabled = admin.create_key(KeySpec="ECC_NIST_P256", KeyUsage="SIGN_VERIFY")["KeyMetadata"]
    admin.disable_key(KeyId=disabled["KeyId"])
    assert expect_error(sign(disabled["KeyId"]), "DisabledException") == (
        f"{disabled['Arn']} is disabled."
    )


def test_get_public_key_of_a_symmetric_or_hmac_key_is_unsupported(admin: Any) -> None:
    for kwargs in ({}, {"KeySpec": "HMAC_256", "KeyUsage": "GENERATE_VERIFY_MAC"}):
        key_id = admin.create_key(**kwargs)["KeyMetadata"]["KeyId"]
        expect_error(
            functools.partial(admin.get_public_key, KeyId=key_id), "UnsupportedOperationException"
        )


@pytest.mark.parametrize(("spec", "algorithm"), list(OAEP_LIMITS))
def test_rsa_encryption_up_to_the_oaep_limit(
    admin: Any, key_for: Callable[..., str], spec: str, algorithm: str
) -> None:
    key_id = key_for(spec, "ENCRYPT_DECRYPT")
    limit = OAEP_LIMITS[(spec, algorithm)]
    plaintext = bytes(range(256)) * 2
    blob = admin.encrypt(KeyId=key_id, Plaintext=plaintext[:limit], EncryptionAlgorithm=algorithm)
    assert blob["EncryptionAlgorithm"] == algorithm
    assert len(blob["CiphertextBlob"]) == int(spec.removeprefix("RSA_")) // 8
    decrypted = admin.decrypt(
        CiphertextBlob=blob["CiphertextBlob"], KeyId=key_id, EncryptionAlgorithm=algorithm
    )
    assert decrypted["Plaintext"] == plaintext[:limit]
    assert "KeyMaterialId" not in decrypted
    digest = _hash(algorithm)
    oaep = padding.OAEP(mgf=padding.MGF1(digest), algorithm=digest, label=None)
    outside = public_key(admin, key_id).encrypt(b"made outside KMS", oaep)
    assert (
        admin.decrypt(CiphertextBlob=outside, KeyId=key_id, EncryptionAlgorithm=algorithm)[
            "Plaintext"
        ]
        == b"made outside KMS"
    )
    message = expect_error(
        lambda: admin.encrypt(
            KeyId=key_id, Plaintext=plaintext[: limit + 1], EncryptionAlgorithm=algorithm
        ),
        "ValidationException",
    )
    assert message == (
        f"Algorithm {algorithm} and key spec {spec} cannot encrypt data larger than {limit} bytes."
    )


def test_rsa_encryption_misuse_errors(admin: Any, key_for: Callable[..., str]) -> None:
    key_id = key_for("RSA_2048", "ENCRYPT_DECRYPT")
    blob = admin.encrypt(KeyId=key_id, Plaintext=b"x", EncryptionAlgorithm="RSAES_OAEP_SHA_256")[
        "CiphertextBlob"
    ]
    expect_error(lambda: admin.decrypt(CiphertextBlob=blob), "InvalidCiphertextException")
    expect_error(
        lambda: admin.decrypt(
            CiphertextBlob=blob, KeyId=key_id, EncryptionAlgorithm="RSAES_OAEP_SHA_1"
        ),
        "InvalidCiphertextException",
    )
    assert (
        expect_error(
            lambda: admin.encrypt(KeyId=key_id, Plaintext=b"x"), "InvalidKeyUsageException"
        )
        == "Algorithm SYMMETRIC_DEFAULT is incompatible with key spec RSA_2048."
    )
    expect_error(
        lambda: admin.encrypt(
            KeyId=key_id, Plaintext=b"x", EncryptionAlgorithm="RSAES_OAEP_SHA_256",
            EncryptionContext={"a": "b"},
        ),
        "ValidationException",
    )  # fmt: skip
    expect_error(
        lambda: admin.generate_data_key(KeyId=key_id, KeySpec="AES_256"), "InvalidKeyUsageException"
    )
    signing = key_for("RSA_2048", "SIGN_VERIFY")
    expect_error(
        lambda: admin.encrypt(
            KeyId=signing, Plaintext=b"x", EncryptionAlgorithm="RSAES_OAEP_SHA_1"
        ),
        "InvalidKeyUsageException",
    )


@pytest.mark.parametrize("spec", list(AGREEMENT_CURVES))
def test_derive_shared_secret_matches_ecdh_outside(
    admin: Any, key_for: Callable[..., str], spec: str
) -> None:
    key_id = key_for(spec, "KEY_AGREEMENT")
    curve: Callable[[], ec.EllipticCurve] = AGREEMENT_CURVES[spec]
    peer = ec.generate_private_key(curve())
    peer_spki = peer.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    reply = admin.derive_shared_secret(
        KeyId=key_id, KeyAgreementAlgorithm="ECDH", PublicKey=peer_spki
    )
    ours = peer.exchange(ec.ECDH(), public_key(admin, key_id))
    assert reply["SharedSecret"] == ours
    assert (reply["KeyAgreementAlgorithm"], reply["KeyOrigin"]) == ("ECDH", "AWS_KMS")


def test_two_kms_keys_agree_on_one_secret(admin: Any, key_for: Callable[..., str]) -> None:
    alice = key_for("ECC_NIST_P256", "KEY_AGREEMENT")
    bob = admin.create_key(KeySpec="ECC_NIST_P256", KeyUsage="KEY_AGREEMENT")["KeyMetadata"]
    spki = {k: admin.get_public_key(KeyId=k)["PublicKey"] for k in (alice, bob["KeyId"])}
    one = admin.derive_shared_secret(
        KeyId=alice, KeyAgreementAlgorithm="ECDH", PublicKey=spki[bob["KeyId"]]
    )
    two = admin.derive_shared_secret(
        KeyId=bob["KeyId"], KeyAgreementAlgorithm="ECDH", PublicKey=spki[alice]
    )
    assert one["SharedSecret"] == two["SharedSecret"]
    assert len(one["SharedSecret"]) == 32


def test_derive_shared_secret_misuse_errors(admin: Any, key_for: Callable[..., str]) -> None:
    key_id = key_for("ECC_NIST_P256", "KEY_AGREEMENT")

    def derive(public: bytes, key: str = key_id, algorithm: str = "ECDH") -> Callable[[], Any]:
        return lambda: admin.derive_shared_secret(
            KeyId=key, KeyAgreementAlgorithm=algorithm, PublicKey=public
        )

    def spki(private: Any) -> bytes:
        return bytes(
            private.public_key().public_bytes(
                serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
            )
        )

    p384 = spki(ec.generate_private_key(ec.SECP384R1()))
    rsa_peer = spki(rsa.generate_private_key(public_exponent=65537, key_size=2048))
    good = spki(ec.generate_private_key(ec.SECP256R1()))
    for bad in (p384, rsa_peer, b"\x30\x00 not a key"):
        expect_error(derive(bad), "ValidationException")
    expect_error(derive(good, algorithm="DH"), "ValidationException")
    signing = key_for("ECC_NIST_P256", "SIGN_VERIFY")
    arn = admin.describe_key(KeyId=signing)["KeyMetadata"]["Arn"]
    assert expect_error(derive(good, key=signing), "InvalidKeyUsageException") == (
        f"{arn} key usage is SIGN_VERIFY which is not valid for DeriveSharedSecret."
    )
    expect_error(
        lambda: admin.derive_shared_secret(
            KeyId=key_id, KeyAgreementAlgorithm="ECDH", PublicKey=good, DryRun=True
        ),
        "DryRunOperationException",
    )


def test_derive_shared_secret_with_recipient_reaches_only_the_attested_enclave(
    local_kms: Any,
    admin: Any,
    key_for: Callable[..., str],
    make_document: Callable[..., bytes],
    rsa_key: rsa.RSAPrivateKey,
) -> None:
    policy = policy_of(attested_statement(["kms:DeriveSharedSecret", "kms:GetPublicKey"]))
    key_id = key_for("ECC_NIST_P384", "KEY_AGREEMENT", policy)
    peer = ec.generate_private_key(ec.SECP384R1())
    peer_spki = peer.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    enclave = client_for(local_kms.url, local_kms.ca_path, ENCLAVE)
    reply = enclave.derive_shared_secret(
        KeyId=key_id,
        KeyAgreementAlgorithm="ECDH",
        PublicKey=peer_spki,
        Recipient=recipient(make_document()),
    )
    assert "SharedSecret" not in reply
    secret = decrypt_enveloped_data(reply["CiphertextForRecipient"], rsa_key)
    assert secret == peer.exchange(ec.ECDH(), public_key(admin, key_id))
    other_image = make_document(pcrs=PCRS | {0: b"\x99" * 48})
    for extra in ({"Recipient": recipient(other_image)}, {}):
        expect_error(
            functools.partial(
                enclave.derive_shared_secret,
                KeyId=key_id,
                KeyAgreementAlgorithm="ECDH",
                PublicKey=peer_spki,
                **extra,
            ),
            "AccessDeniedException",
        )
