"""Generated policies installed on a key in the local KMS, which evaluates them for real: the
matching enclave gets data keys, other images, debug enclaves and unattested calls are denied."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore.config import Config
from botocore.exceptions import ClientError
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from nitrokms.parent.policy import (
    Measurements,
    PolicyRequest,
    generate_policy,
    measured_pcr,
    render,
)
from nitrokms.sim.kms.auth import Credential
from nitrokms.sim.kms.server import LocalKMS
from nitrokms.sim.nsm.pki import SimulatedPKI

from .conftest import ACCOUNT, INSTANCE_ID, ROLE_ARN

REGION = "us-east-1"
ADMIN = Credential("AKIAPOLICYADMIN00001", "admin-secret", f"arn:aws:iam::{ACCOUNT}:user/admin")
ENCLAVE = Credential(
    "ASIAPOLICYENCLAVE001",
    "enclave-secret",
    f"arn:aws:sts::{ACCOUNT}:assumed-role/EnclaveRole/{INSTANCE_ID}",
    session_token="enclave-session-token",
)
MODULE_ID = f"{INSTANCE_ID}-enc0123456789abcdef"
IMAGE = {0: b"\x10" * 48, 1: b"\x11" * 48, 2: b"\x12" * 48}
OTHER_IMAGE = {0: b"\x20" * 48, 1: b"\x11" * 48, 2: b"\x22" * 48}
DEBUG = {0: bytes(48), 1: bytes(48), 2: bytes(48)}
MEASUREMENTS = Measurements({i: v.hex() for i, v in IMAGE.items()})


def boot_pcrs(image: dict[int, bytes], *, role: str = ROLE_ARN) -> dict[int, bytes]:
    pcrs = {i: bytes(48) for i in range(16)}
    pcrs[3] = bytes.fromhex(measured_pcr(role))
    pcrs[4] = bytes.fromhex(measured_pcr(INSTANCE_ID))
    return pcrs | image


def client(kms: LocalKMS, credential: Credential) -> Any:
    return boto3.client(
        "kms",
        endpoint_url=kms.url,
        region_name=REGION,
        verify=str(kms.ca_path),
        aws_access_key_id=credential.access_key_id,
        aws_secret_access_key=credential.secret_access_key,
        aws_session_token=credential.session_token,
        config=Config(retries={"max_attempts": 1}),
    )


@pytest.fixture(scope="module")
def pki() -> SimulatedPKI:
    return SimulatedPKI.ephemeral()


@pytest.fixture(scope="module")
def kms(tmp_path_factory: pytest.TempPathFactory, pki: SimulatedPKI) -> Iterator[LocalKMS]:
    state: Path = tmp_path_factory.mktemp("policy-kms")
    with LocalKMS(state, (ADMIN, ENCLAVE), pki.root_certificate_pem, region=REGION) as server:
        yield server


@pytest.fixture(scope="module")
def spki() -> bytes:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


@pytest.fixture(scope="module")
def admin(kms: LocalKMS) -> Any:
    return client(kms, ADMIN)


@pytest.fixture(scope="module")
def enclave(kms: LocalKMS) -> Any:
    return client(kms, ENCLAVE)


def key_with(admin: Any, request: PolicyRequest) -> str:
    policy = render(generate_policy(request))
    return str(admin.create_key(Policy=policy)["KeyMetadata"]["KeyId"])


def attested(client: Any, key_id: str, document: bytes | None) -> str:
    extra = {} if document is None else {"Recipient": {
        "KeyEncryptionAlgorithm": "RSAES_OAEP_SHA_256", "AttestationDocument": document,
    }}  # fmt: skip
    try:
        reply = client.generate_data_key(KeyId=key_id, KeySpec="AES_256", **extra)
    except ClientError as exc:
        return str(exc.response["Error"]["Code"])
    assert "CiphertextForRecipient" in reply or document is None
    return "ok"


@pytest.fixture(scope="module")
def document(pki: SimulatedPKI, spki: bytes) -> Any:
    def make(pcrs: dict[int, bytes]) -> bytes:
        return pki.sign_document(
            module_id=MODULE_ID, timestamp_ms=int(time.time() * 1000), pcrs=pcrs,
            public_key=spki, user_data=None, nonce=None,
        )  # fmt: skip

    return make


def test_policy_allows_only_the_measured_image(admin, enclave, document) -> None:
    key_id = key_with(admin, PolicyRequest(MEASUREMENTS, role_arn=ROLE_ARN, pcrs=(3,)))
    assert attested(enclave, key_id, document(boot_pcrs(IMAGE))) == "ok"
    assert attested(enclave, key_id, document(boot_pcrs(OTHER_IMAGE))) == "AccessDeniedException"
    assert attested(enclave, key_id, document(boot_pcrs(DEBUG))) == "AccessDeniedException"
    other_role = boot_pcrs(IMAGE, role=f"arn:aws:iam::{ACCOUNT}:role/Other")
    assert attested(enclave, key_id, document(other_role)) == "AccessDeniedException"


def test_no_principal_gets_data_keys_without_attestation(admin, enclave, document) -> None:
    key_id = key_with(admin, PolicyRequest(MEASUREMENTS, account=ACCOUNT))
    assert attested(enclave, key_id, None) == "AccessDeniedException"
    assert attested(admin, key_id, None) == "AccessDeniedException"
    recipient = {"KeyEncryptionAlgorithm": "RSAES_OAEP_SHA_256"}
    good = recipient | {"AttestationDocument": document(boot_pcrs(IMAGE))}
    blob = enclave.generate_data_key(KeyId=key_id, KeySpec="AES_256", Recipient=good)
    for caller in (admin, enclave):
        with pytest.raises(ClientError, match="AccessDenied"):
            caller.decrypt(CiphertextBlob=blob["CiphertextBlob"])
    assert admin.describe_key(KeyId=key_id)["KeyMetadata"]["KeyId"] == key_id


def test_attested_decrypt_round_trip(admin, enclave, document) -> None:
    key_id = key_with(
        admin, PolicyRequest(MEASUREMENTS, role_arn=ROLE_ARN, instance_id=INSTANCE_ID)
    )
    recipient = {"KeyEncryptionAlgorithm": "RSAES_OAEP_SHA_256"}
    good = recipient | {"AttestationDocument": document(boot_pcrs(IMAGE))}
    blob = enclave.generate_data_key(KeyId=key_id, KeySpec="AES_256", Recipient=good)
    reply = enclave.decrypt(CiphertextBlob=blob["CiphertextBlob"], Recipient=good)
    assert reply["CiphertextForRecipient"]
    bad = recipient | {"AttestationDocument": document(boot_pcrs(OTHER_IMAGE))}
    with pytest.raises(ClientError, match="AccessDenied"):
        enclave.decrypt(CiphertextBlob=blob["CiphertextBlob"], Recipient=bad)


def test_allow_debug_admits_a_debug_enclave_of_the_role(admin, enclave, document) -> None:
    key_id = key_with(
        admin, PolicyRequest(MEASUREMENTS, role_arn=ROLE_ARN, pcrs=(3,), allow_debug=True)
    )
    assert attested(enclave, key_id, document(boot_pcrs(IMAGE))) == "ok"
    assert attested(enclave, key_id, document(boot_pcrs(DEBUG))) == "ok"
    assert attested(enclave, key_id, document(boot_pcrs(OTHER_IMAGE))) == "AccessDeniedException"
    other_role = boot_pcrs(DEBUG, role=f"arn:aws:iam::{ACCOUNT}:role/Other")
    assert attested(enclave, key_id, document(other_role)) == "AccessDeniedException"


def test_generated_policy_admits_no_other_recipient_operation_and_no_grants(
    admin, enclave, document
) -> None:
    """The generated policy names GenerateDataKey and Decrypt only: the other Recipient operations
    stay denied even to the measured image, and no one may hand out a grant around it, while the
    key administration actions (tags, rotation, grant listing) work."""
    key_id = key_with(admin, PolicyRequest(MEASUREMENTS, role_arn=ROLE_ARN))
    good = {
        "KeyEncryptionAlgorithm": "RSAES_OAEP_SHA_256",
        "AttestationDocument": document(boot_pcrs(IMAGE)),
    }
    assert attested(enclave, key_id, document(boot_pcrs(IMAGE))) == "ok"
    elsewhere = admin.create_key()["KeyMetadata"]["KeyId"]
    blob = admin.encrypt(KeyId=elsewhere, Plaintext=b"moved in")["CiphertextBlob"]
    for call in (
        lambda: enclave.generate_data_key_pair(
            KeyId=key_id, KeyPairSpec="ECC_NIST_P256", Recipient=good
        ),
        lambda: enclave.generate_data_key_without_plaintext(KeyId=key_id, KeySpec="AES_256"),
        lambda: admin.create_grant(KeyId=key_id, GranteePrincipal=ROLE_ARN, Operations=["Decrypt"]),
        lambda: admin.re_encrypt(CiphertextBlob=blob, DestinationKeyId=key_id),
    ):
        with pytest.raises(ClientError, match="AccessDenied"):
            call()
    admin.tag_resource(KeyId=key_id, Tags=[{"TagKey": "image", "TagValue": "measured"}])
    admin.enable_key_rotation(KeyId=key_id)
    assert admin.list_grants(KeyId=key_id)["Grants"] == []
