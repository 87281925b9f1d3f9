from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore.config import Config
from botocore.exceptions import ClientError
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from nitrokms.sim.kms.auth import Credential
from nitrokms.sim.kms.fixtures import kms_server  # noqa: F401
from nitrokms.sim.kms.server import LocalKMS
from nitrokms.sim.nsm.pki import SimulatedPKI

REGION = "us-east-1"
ACCOUNT = "111122223333"
ADMIN = Credential("AKIAADMIN0000000001", "admin-secret", f"arn:aws:iam::{ACCOUNT}:user/admin")
ENCLAVE = Credential(
    "ASIAENCLAVE00000001",
    "enclave-secret",
    f"arn:aws:sts::{ACCOUNT}:assumed-role/EnclaveRole/i-0123",
    session_token="enclave-session-token",
)
STRANGER = Credential(
    "AKIASTRANGER0000001", "stranger-secret", "arn:aws:iam::444455556666:user/eve"
)
CREDENTIALS = (ADMIN, ENCLAVE, STRANGER)
MODULE_ID = "i-0123456789abcdef0-enc0123456789abcdef"
PCRS = {i: bytes([i + 1]) * 48 for i in range(16)}
PCRS.update({i: bytes(48) for i in range(5, 16)})
DEBUG_PCRS = dict(PCRS) | {0: bytes(48), 1: bytes(48), 2: bytes(48)}


def expect_error(call: Callable[[], Any], code: str) -> str:
    """Run a client call that must fail with `code`; return the error message."""
    with pytest.raises(ClientError) as excinfo:
        call()
    error = excinfo.value.response["Error"]
    assert error["Code"] == code, error
    return str(error["Message"])


def statement(principal: str, actions: str | list[str], **extra: Any) -> dict[str, Any]:
    """An Allow statement for `principal` on the key (`extra` adds Sid, Condition, Effect...)."""
    return {
        "Effect": "Allow",
        "Principal": {"AWS": principal},
        "Action": actions,
        "Resource": "*",
    } | extra


def policy_of(*statements: dict[str, Any]) -> str:
    """A key policy: the admin keeps kms:* (so tests can tidy up), plus `statements`."""
    admin = statement(ADMIN.principal_arn, "kms:*", Sid="Admin")
    return json.dumps({"Version": "2012-10-17", "Statement": [admin, *statements]})


ENCLAVE_ROLE = f"arn:aws:iam::{ACCOUNT}:role/EnclaveRole"


def attested_statement(actions: str | list[str]) -> dict[str, Any]:
    """The enclave role may call `actions` only with a Recipient document showing PCRS[0..1]."""
    pins = {
        "kms:RecipientAttestation:ImageSha384": PCRS[0].hex(),
        "kms:RecipientAttestation:PCR1": PCRS[1].hex(),
    }
    return statement(ENCLAVE_ROLE, actions, Sid="Enclave", Condition={"StringEquals": pins})


def recipient(document: bytes, algorithm: str = "RSAES_OAEP_SHA_256") -> dict[str, Any]:
    return {"KeyEncryptionAlgorithm": algorithm, "AttestationDocument": document}


def client_for(url: str, ca: Path, credential: Credential, **config: Any) -> Any:
    return boto3.client(
        "kms",
        endpoint_url=url,
        region_name=REGION,
        verify=str(ca),
        aws_access_key_id=credential.access_key_id,
        aws_secret_access_key=credential.secret_access_key,
        aws_session_token=credential.session_token,
        config=Config(retries={"max_attempts": 1}, parameter_validation=False, **config),
    )


@pytest.fixture(scope="session")
def pki() -> SimulatedPKI:
    return SimulatedPKI.ephemeral()


@pytest.fixture(scope="session")
def rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture(scope="session")
def spki(rsa_key: rsa.RSAPrivateKey) -> bytes:
    return rsa_key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


@pytest.fixture(scope="session")
def make_document(pki: SimulatedPKI, spki: bytes) -> Callable[..., bytes]:
    def make(
        *,
        pcrs: dict[int, bytes] | None = None,
        timestamp_ms: int | None = None,
        public_key: bytes | None = spki,
        signer: SimulatedPKI | None = None,
    ) -> bytes:
        return (signer or pki).sign_document(
            module_id=MODULE_ID,
            timestamp_ms=timestamp_ms if timestamp_ms is not None else int(time.time() * 1000),
            pcrs=pcrs if pcrs is not None else PCRS,
            public_key=public_key,
            user_data=None,
            nonce=None,
        )

    return make


@pytest.fixture(scope="module")
def local_kms(tmp_path_factory: pytest.TempPathFactory, pki: SimulatedPKI) -> Iterator[LocalKMS]:
    state = tmp_path_factory.mktemp("kms")
    with LocalKMS(state, CREDENTIALS, pki.root_certificate_pem, region=REGION) as kms:
        yield kms


@pytest.fixture(scope="module")
def admin(local_kms: LocalKMS) -> Any:
    return client_for(local_kms.url, local_kms.ca_path, ADMIN)


@pytest.fixture(scope="module")
def enclave(local_kms: LocalKMS) -> Any:
    return client_for(local_kms.url, local_kms.ca_path, ENCLAVE)


@pytest.fixture(scope="module")
def stranger(local_kms: LocalKMS) -> Any:
    return client_for(local_kms.url, local_kms.ca_path, STRANGER)


@pytest.fixture
def key_id(admin: Any) -> str:
    return str(
        admin.create_key(Description=f"test key {os.urandom(4).hex()}")["KeyMetadata"]["KeyId"]
    )
