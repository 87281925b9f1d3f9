"""Fixtures: an in-process simulated NSM, a warm key pool, the local KMS and attested keys."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import boto3
import pytest
from nitrokms.enclave.keypool import RecipientKeyPool
from nitrokms.enclave.nsm.backend import TransportBackend
from nitrokms.enclave.nsm.client import NSMClient
from nitrokms.sim.kms.auth import Credential
from nitrokms.sim.kms.server import LocalKMS
from nitrokms.sim.nsm.pki import SimulatedPKI
from nitrokms.sim.nsm.simulator import (
    NSMSimulator,
    boot_pcrs,
    load_or_create_instance_id,
    new_module_id,
)

REGION = "us-east-1"
ACCESS_KEY_ID = "AKIAENCLAVETEST00001"
SECRET_ACCESS_KEY = "enclave-test-secret-key-do-not-log-0000000"
PRINCIPAL = "arn:aws:iam::111122223333:root"
KMS_HOST = f"kms.{REGION}.amazonaws.com"
ADMIN_ACTIONS = [
    "kms:DescribeKey",
    "kms:GetKeyPolicy",
    "kms:PutKeyPolicy",
    "kms:Encrypt",
    "kms:GenerateDataKeyWithoutPlaintext",
    "kms:EnableKey",
    "kms:DisableKey",
    "kms:ScheduleKeyDeletion",
]
ATTESTED_ACTIONS = ["kms:Decrypt", "kms:GenerateDataKey"]


@pytest.fixture(scope="session")
def nsm_state(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("nsm-state")


@pytest.fixture(scope="session")
def pki(nsm_state: Path) -> SimulatedPKI:
    return SimulatedPKI.load_or_create(nsm_state, region=REGION)


@pytest.fixture(scope="session")
def simulator(pki: SimulatedPKI, nsm_state: Path) -> NSMSimulator:
    instance_id = load_or_create_instance_id(nsm_state)
    return NSMSimulator(
        pki, module_id=new_module_id(instance_id), pcrs=boot_pcrs(instance_id=instance_id)
    )


@pytest.fixture(scope="session")
def nsm(simulator: NSMSimulator) -> NSMClient:
    """The production NSMClient over a transport that calls the simulator directly."""
    return NSMClient(TransportBackend(simulator))


@pytest.fixture(scope="session")
def pool() -> Iterator[RecipientKeyPool]:
    with RecipientKeyPool(size=2) as key_pool:
        assert key_pool.wait_ready(60)
        yield key_pool


@pytest.fixture(scope="session")
def local_kms(tmp_path_factory: pytest.TempPathFactory, pki: SimulatedPKI) -> Iterator[LocalKMS]:
    credentials = [Credential(ACCESS_KEY_ID, SECRET_ACCESS_KEY, PRINCIPAL)]
    kms = LocalKMS(
        tmp_path_factory.mktemp("kms-state"), credentials, pki.root_certificate_pem, region=REGION
    )
    with kms:
        yield kms


def client_kwargs(kms: LocalKMS) -> dict[str, object]:
    return {
        "region_name": REGION,
        "endpoint_url": kms.url,
        "verify": str(kms.ca_path),
        "aws_access_key_id": ACCESS_KEY_ID,
        "aws_secret_access_key": SECRET_ACCESS_KEY,
    }


@pytest.fixture(scope="session")
def plain_client(local_kms: LocalKMS):
    """An unhooked boto3 client: administration, and proof that attestation is required."""
    return boto3.session.Session().client("kms", **client_kwargs(local_kms))


def attested_policy(pcr0_hex: str, actions: list[str] = ATTESTED_ACTIONS) -> str:
    return json.dumps(
        {
            "Version": "2012-10-17",
            "Statement": [
                {
                    "Sid": "Admin",
                    "Effect": "Allow",
                    "Principal": {"AWS": PRINCIPAL},
                    "Action": ADMIN_ACTIONS,
                    "Resource": "*",
                },
                {
                    "Sid": "EnclaveOnly",
                    "Effect": "Allow",
                    "Principal": {"AWS": PRINCIPAL},
                    "Action": actions,
                    "Resource": "*",
                    "Condition": {
                        "StringEqualsIgnoreCase": {"kms:RecipientAttestation:PCR0": pcr0_hex}
                    },
                },
            ],
        }
    )


@pytest.fixture(scope="session")
def attested_key_id(plain_client, simulator: NSMSimulator) -> str:
    """A KMS key that releases data keys only to documents with the simulator's PCR0."""
    policy = attested_policy(simulator.pcr(0).hex())
    return str(plain_client.create_key(Policy=policy)["KeyMetadata"]["Arn"])
