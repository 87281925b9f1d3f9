"""Recipient: attestation-aware policy decisions, CMS output, and malformed input."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from botocore.exceptions import ClientError
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from nitrokms.sim.kms.server import LocalKMS
from nitrokms.sim.nsm.pki import SimulatedPKI

from .cms_reader import decrypt_for_recipient
from .conftest import ACCOUNT, ADMIN, DEBUG_PCRS, PCRS, client_for, recipient

DATA = Path(__file__).parent / "data"
ROLE = f"arn:aws:iam::{ACCOUNT}:role/EnclaveRole"


def attested_policy(pcr0: bytes, pcr1: bytes, *, deny_prod: bool = False) -> str:
    statements: list[dict[str, Any]] = [
        {
            "Sid": "Admin",
            "Effect": "Allow",
            "Principal": {"AWS": ADMIN.principal_arn},
            "Action": "kms:*",
            "Resource": "*",
        },
        {
            "Sid": "Enclave",
            "Effect": "Allow",
            "Principal": {"AWS": ROLE},
            "Action": ["kms:Decrypt", "kms:GenerateDataKey", "kms:DescribeKey"],
            "Resource": "*",
            "Condition": {
                "StringEqualsIgnoreCase": {
                    "kms:RecipientAttestation:ImageSha384": pcr0.hex().upper(),
                    "kms:RecipientAttestation:PCR1": pcr1.hex(),
                }
            },
        },
    ]
    if deny_prod:
        statements.append(
            {
                "Sid": "NoProd",
                "Effect": "Deny",
                "Principal": "*",
                "Action": "kms:*",
                "Resource": "*",
                "Condition": {"StringLike": {"kms:EncryptionContext:env": "prod*"}},
            }
        )
    return json.dumps({"Version": "2012-10-17", "Statement": statements})


@pytest.fixture
def pinned_key(admin: Any) -> str:
    policy = attested_policy(PCRS[0], PCRS[1], deny_prod=True)
    return str(admin.create_key(Policy=policy)["KeyMetadata"]["KeyId"])


def attested_call(client: Any, key_id: str, document: bytes, **kwargs: Any) -> str:
    """GenerateDataKey with a Recipient: "ok" or the error code."""
    try:
        reply = client.generate_data_key(
            KeyId=key_id, KeySpec="AES_256", Recipient=recipient(document), **kwargs
        )
    except ClientError as exc:
        return str(exc.response["Error"]["Code"])
    assert "Plaintext" not in reply
    return "ok"


def code_of(call: Callable[[], Any]) -> str:
    with pytest.raises(ClientError) as excinfo:
        call()
    return str(excinfo.value.response["Error"]["Code"])


def test_reader_decrypts_real_kms_output() -> None:
    key = serialization.load_pem_private_key(
        (DATA / "kms_cms_hello-world.key.pem").read_bytes(), None
    )
    assert isinstance(key, rsa.RSAPrivateKey)
    assert (
        decrypt_for_recipient((DATA / "kms_cms_hello-world.ber").read_bytes(), key)
        == b"Hello, World"
    )


def test_matching_pcrs_allow_and_the_data_key_reaches_only_the_enclave(
    enclave: Any, admin: Any, pinned_key: str, make_document: Any, rsa_key: rsa.RSAPrivateKey
) -> None:
    reply = enclave.generate_data_key(
        KeyId=pinned_key, KeySpec="AES_256", Recipient=recipient(make_document())
    )
    assert "Plaintext" not in reply
    data_key = decrypt_for_recipient(reply["CiphertextForRecipient"], rsa_key)
    assert len(data_key) == 32
    assert admin.decrypt(CiphertextBlob=reply["CiphertextBlob"])["Plaintext"] == data_key
    again = enclave.decrypt(
        CiphertextBlob=reply["CiphertextBlob"], Recipient=recipient(make_document())
    )
    assert "Plaintext" not in again
    assert again["KeyId"].endswith(pinned_key)
    assert decrypt_for_recipient(again["CiphertextForRecipient"], rsa_key) == data_key


def test_generate_random_with_recipient(
    enclave: Any, make_document: Any, rsa_key: rsa.RSAPrivateKey
) -> None:
    reply = enclave.generate_random(NumberOfBytes=100, Recipient=recipient(make_document()))
    assert "Plaintext" not in reply
    assert len(decrypt_for_recipient(reply["CiphertextForRecipient"], rsa_key)) == 100


def test_no_recipient_is_denied(enclave: Any, pinned_key: str) -> None:
    assert (
        code_of(lambda: enclave.generate_data_key(KeyId=pinned_key, KeySpec="AES_256"))
        == "AccessDeniedException"
    )


def test_pcr_mismatch_is_denied(enclave: Any, pinned_key: str, make_document: Any) -> None:
    doc = make_document(pcrs=PCRS | {1: b"\xee" * 48})
    assert attested_call(enclave, pinned_key, doc) == "AccessDeniedException"


def test_debug_document_denied_by_real_pcrs_allowed_by_zero_pcrs(
    enclave: Any, admin: Any, pinned_key: str, make_document: Any
) -> None:
    doc = make_document(pcrs=DEBUG_PCRS)
    assert attested_call(enclave, pinned_key, doc) == "AccessDeniedException"
    zero_policy = attested_policy(bytes(48), bytes(48))
    zero_key = admin.create_key(Policy=zero_policy)["KeyMetadata"]["KeyId"]
    assert attested_call(enclave, zero_key, doc) == "ok"


def test_expired_document_is_denied_and_the_log_says_why(
    enclave: Any, pinned_key: str, make_document: Any, caplog: pytest.LogCaptureFixture
) -> None:
    doc = make_document(timestamp_ms=int((time.time() - 86400) * 1000))
    caplog.set_level(logging.INFO, logger="nitrokms.sim.kms")
    assert attested_call(enclave, pinned_key, doc) == "AccessDeniedException"
    denial = [r.getMessage() for r in caplog.records if "AccessDenied" in r.getMessage()][-1]
    assert "attestation.Expired" in denial


def test_tampered_document_is_denied(enclave: Any, pinned_key: str, make_document: Any) -> None:
    doc = bytearray(make_document())
    doc[-1] ^= 0x01
    assert attested_call(enclave, pinned_key, bytes(doc)) == "AccessDeniedException"


def test_document_from_another_root_is_denied(
    enclave: Any, pinned_key: str, make_document: Any, tmp_path: Path
) -> None:
    doc = make_document(signer=SimulatedPKI.load_or_create(tmp_path / "other-nsm"))
    assert attested_call(enclave, pinned_key, doc) == "AccessDeniedException"


def test_explicit_deny_wins_over_a_matching_allow(
    enclave: Any, pinned_key: str, make_document: Any, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="nitrokms.sim.kms")
    assert attested_call(enclave, pinned_key, make_document()) == "ok"
    with pytest.raises(ClientError) as excinfo:
        enclave.generate_data_key(
            KeyId=pinned_key,
            KeySpec="AES_256",
            EncryptionContext={"env": "production"},
            Recipient=recipient(make_document()),
        )
    assert excinfo.value.response["Error"]["Code"] == "AccessDeniedException"
    assert (
        "with an explicit deny in a resource-based policy"
        in excinfo.value.response["Error"]["Message"]
    )
    denial = [r.getMessage() for r in caplog.records if "AccessDenied" in r.getMessage()][-1]
    assert "explicitly denied by statement #2 (Sid 'NoProd')" in denial
    assert "kms:EncryptionContext:env" in denial


def test_denial_log_names_statement_and_failed_condition(
    enclave: Any, pinned_key: str, make_document: Any, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="nitrokms.sim.kms")
    doc = make_document(pcrs=PCRS | {0: b"\x99" * 48})
    code_of(
        lambda: enclave.generate_data_key(
            KeyId=pinned_key, KeySpec="AES_256", Recipient=recipient(doc)
        )
    )
    denial = [r.getMessage() for r in caplog.records if "AccessDenied" in r.getMessage()][-1]
    assert f"key=arn:aws:kms:us-east-1:{ACCOUNT}:key/{pinned_key}" in denial
    assert "action=kms:GenerateDataKey" in denial
    assert "principal=arn:aws:sts::" in denial
    assert "statement #0 (Sid 'Admin'): principal does not match" in denial
    enclave_statement = "statement #1 (Sid 'Enclave'): condition StringEqualsIgnoreCase"
    assert f"{enclave_statement} kms:RecipientAttestation:ImageSha384" in denial
    assert ("99" * 48) in denial


def test_unverified_document_proceeds_when_the_policy_does_not_require_attestation(
    admin: Any, make_document: Any, rsa_key: rsa.RSAPrivateKey, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="nitrokms.sim.kms")
    key_id = admin.create_key()["KeyMetadata"]["KeyId"]
    doc = make_document(timestamp_ms=int((time.time() - 86400) * 1000))
    reply = admin.generate_data_key(KeyId=key_id, KeySpec="AES_128", Recipient=recipient(doc))
    assert len(decrypt_for_recipient(reply["CiphertextForRecipient"], rsa_key)) == 16
    assert any("did not verify" in r.getMessage() for r in caplog.records)


def test_max_document_age_is_enforced(
    tmp_path: Path, pki: SimulatedPKI, make_document: Any
) -> None:
    from datetime import timedelta

    from .conftest import CREDENTIALS, ENCLAVE

    with LocalKMS(
        tmp_path, CREDENTIALS, pki.root_certificate_pem, max_document_age=timedelta(seconds=60)
    ) as kms:
        admin = client_for(kms.url, kms.ca_path, ADMIN)
        enclave = client_for(kms.url, kms.ca_path, ENCLAVE)
        key_id = admin.create_key(Policy=attested_policy(PCRS[0], PCRS[1]))["KeyMetadata"]["KeyId"]
        fresh = recipient(make_document())
        stale = recipient(make_document(timestamp_ms=int((time.time() - 600) * 1000)))
        assert "CiphertextForRecipient" in enclave.generate_data_key(
            KeyId=key_id, NumberOfBytes=8, Recipient=fresh
        )
        assert (
            code_of(
                lambda: enclave.generate_data_key(KeyId=key_id, NumberOfBytes=8, Recipient=stale)
            )
            == "AccessDeniedException"
        )


RSA_1024 = rsa.generate_private_key(public_exponent=65537, key_size=1024)


def _spki(key: Any) -> bytes:
    spki: bytes = key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return spki


@pytest.mark.parametrize(
    "build",
    [
        lambda make: recipient(make(), algorithm="RSAES_OAEP_SHA_1"),
        lambda make: {"KeyEncryptionAlgorithm": "RSAES_OAEP_SHA_256"},
        lambda make: {"AttestationDocument": make()},
        lambda make: recipient(b"not a document at all"),
        lambda make: recipient(make(public_key=None)),
        lambda make: recipient(make(public_key=_spki(ec.generate_private_key(ec.SECP256R1())))),
        lambda make: recipient(
            make(public_key=_spki(rsa.generate_private_key(public_exponent=65537, key_size=1024)))
        ),
        lambda make: recipient(make(public_key=b"\x30\x03\x02\x01\x00")),
    ],
    ids=[
        "algorithm",
        "no-document",
        "no-algorithm",
        "garbage",
        "no-public-key",
        "ec-key",
        "rsa-1024",
        "bad-spki",
    ],
)
def test_malformed_recipient_is_validation_error(
    admin: Any, make_document: Any, build: Any
) -> None:
    key_id = admin.create_key()["KeyMetadata"]["KeyId"]
    rec = build(make_document)
    for call in (
        lambda: admin.generate_data_key(KeyId=key_id, KeySpec="AES_256", Recipient=rec),
        lambda: admin.generate_random(NumberOfBytes=8, Recipient=rec),
    ):
        assert code_of(call) == "ValidationException"
