"""GenerateDataKeyPair(+WithoutPlaintext), with and without Recipient."""

from __future__ import annotations

import functools
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from nitrokms.enclave.cms import decrypt_enveloped_data
from nitrokms.sim.kms.server import LocalKMS

from .conftest import (
    ENCLAVE,
    PCRS,
    attested_statement,
    client_for,
    expect_error,
    policy_of,
    recipient,
)

PAIR_SPECS = {
    "RSA_2048": (rsa.RSAPrivateKey, 2048),
    "RSA_3072": (rsa.RSAPrivateKey, 3072),
    "RSA_4096": (rsa.RSAPrivateKey, 4096),
    "ECC_NIST_P256": (ec.EllipticCurvePrivateKey, 256),
    "ECC_NIST_P384": (ec.EllipticCurvePrivateKey, 384),
    "ECC_NIST_P521": (ec.EllipticCurvePrivateKey, 521),
    "ECC_SECG_P256K1": (ec.EllipticCurvePrivateKey, 256),
}
HMAC_SPECS = {
    "HMAC_224": "sha224",
    "HMAC_256": "sha256",
    "HMAC_384": "sha384",
    "HMAC_512": "sha512",
}


def spki_of(private_der: bytes) -> bytes:
    private = serialization.load_der_private_key(private_der, None)
    return bytes(
        private.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )


@pytest.mark.parametrize("spec", list(PAIR_SPECS))
def test_data_key_pair_of_every_spec(admin: Any, key_id: str, spec: str) -> None:
    context = {"purpose": "pair"}
    reply = admin.generate_data_key_pair(KeyId=key_id, KeyPairSpec=spec, EncryptionContext=context)
    assert reply["KeyPairSpec"] == spec
    assert reply["KeyId"].endswith(key_id)
    assert len(reply["KeyMaterialId"]) == 64
    private = serialization.load_der_private_key(reply["PrivateKeyPlaintext"], None)
    kind, bits = PAIR_SPECS[spec]
    assert isinstance(private, kind)
    assert isinstance(private, rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey)
    assert private.key_size == bits
    assert spki_of(reply["PrivateKeyPlaintext"]) == reply["PublicKey"]
    unwrapped = admin.decrypt(
        CiphertextBlob=reply["PrivateKeyCiphertextBlob"], EncryptionContext=context
    )
    assert unwrapped["Plaintext"] == reply["PrivateKeyPlaintext"]
    expect_error(
        lambda: admin.decrypt(CiphertextBlob=reply["PrivateKeyCiphertextBlob"]),
        "InvalidCiphertextException",
    )


def test_data_key_pair_without_plaintext(admin: Any, key_id: str) -> None:
    reply = admin.generate_data_key_pair_without_plaintext(
        KeyId=key_id, KeyPairSpec="ECC_NIST_P256"
    )
    assert "PrivateKeyPlaintext" not in reply
    private = admin.decrypt(CiphertextBlob=reply["PrivateKeyCiphertextBlob"])["Plaintext"]
    assert spki_of(private) == reply["PublicKey"]


def test_data_key_pair_with_recipient_reaches_only_the_attested_enclave(
    local_kms: LocalKMS, admin: Any, make_document: Any, rsa_key: rsa.RSAPrivateKey
) -> None:
    policy = policy_of(attested_statement(["kms:GenerateDataKeyPair", "kms:Decrypt"]))
    key_id = admin.create_key(Policy=policy)["KeyMetadata"]["KeyId"]
    enclave = client_for(local_kms.url, local_kms.ca_path, ENCLAVE)
    for spec in ("RSA_2048", "ECC_NIST_P521"):
        reply = enclave.generate_data_key_pair(
            KeyId=key_id, KeyPairSpec=spec, Recipient=recipient(make_document())
        )
        assert "PrivateKeyPlaintext" not in reply
        private = decrypt_enveloped_data(reply["CiphertextForRecipient"], rsa_key)
        assert spki_of(private) == reply["PublicKey"]
        assert (
            admin.decrypt(CiphertextBlob=reply["PrivateKeyCiphertextBlob"])["Plaintext"] == private
        )
    other_image = make_document(pcrs=PCRS | {1: b"\x42" * 48})
    for extra in ({"Recipient": recipient(other_image)}, {}):
        expect_error(
            functools.partial(
                enclave.generate_data_key_pair, KeyId=key_id, KeyPairSpec="ECC_NIST_P256", **extra
            ),
            "AccessDeniedException",
        )


def test_data_key_pair_misuse_errors(admin: Any, key_id: str) -> None:
    expect_error(
        lambda: admin.generate_data_key_pair(KeyId=key_id, KeyPairSpec="SM2"),
        "UnsupportedOperationException",
    )
    expect_error(
        lambda: admin.generate_data_key_pair(KeyId=key_id, KeyPairSpec="RSA_1024"),
        "ValidationException",
    )
    expect_error(
        lambda: admin.generate_data_key_pair(KeyId=key_id, KeyPairSpec="RSA_2048", DryRun=True),
        "DryRunOperationException",
    )
    signing = admin.create_key(KeySpec="ECC_NIST_P256", KeyUsage="SIGN_VERIFY")["KeyMetadata"]
    assert expect_error(
        lambda: admin.generate_data_key_pair_without_plaintext(
            KeyId=signing["KeyId"], KeyPairSpec="ECC_NIST_P256"
        ),
        "InvalidKeyUsageException",
    ) == (
        f"{signing['Arn']} key usage is SIGN_VERIFY which is not valid for "
        "GenerateDataKeyPairWithoutPlaintext."
    )
