"""A test file as an outside project writes it: no conftest, no import of this repository's tests;
only the fixtures of the nitrokms pytest plugin (found through its pytest11 entry point).

tests/plugin/test_plugin.py copies this file into an empty directory and runs pytest there.
"""

import json
import subprocess
import sys
from pathlib import Path

import pytest
from botocore.exceptions import ClientError
from cryptography import x509

IN_ENCLAVE = """
import sys
from nitrokms.enclave.attested_kms import attested_kms_client
from nitrokms.enclave.keypool import RecipientKeyPool
from nitrokms.enclave.network import kms_network_path
from nitrokms.enclave.nsm import NSMClient

nsm = NSMClient.open()
with RecipientKeyPool(size=1) as pool, kms_network_path() as path:
    kms = attested_kms_client(attestor=nsm.get_attestation_doc, pool=pool, **path.client_kwargs())
    key = kms.generate_data_key(KeyId=sys.argv[1], KeySpec="AES_256")
    again = kms.decrypt(CiphertextBlob=key["CiphertextBlob"])
    print(len(key["Plaintext"]), again["Plaintext"] == key["Plaintext"])
"""


def test_the_world_follows_this_projects_settings(nitrokms_world):
    """pytest.ini names this project's region and image measurements."""
    expected = json.loads(Path("measurements.json").read_text())["Measurements"]
    with nitrokms_world.client() as enclave:
        pcrs = enclave.describe().pcrs
    assert nitrokms_world.region == "eu-west-1"
    assert [pcrs[i].hex() for i in (0, 1, 2)] == [expected[f"PCR{i}"] for i in (0, 1, 2)]


def test_the_enclave_service_gets_and_uses_a_data_key(nitrokms_world, nitrokms_attested_key):
    with nitrokms_world.client() as enclave:
        key = enclave.generate_data_key(nitrokms_attested_key, key_spec="AES_256")
        sealed = enclave.seal(b"hello", handle=key.handle)
        assert enclave.unseal(sealed.envelope) == b"hello"


def test_the_parent_alone_is_denied(nitrokms_world, nitrokms_attested_key):
    parent = nitrokms_world.kms_as_parent()
    with pytest.raises(ClientError, match="AccessDeniedException"):
        parent.generate_data_key(KeyId=nitrokms_attested_key, KeySpec="AES_256")


def test_application_code_inside_the_enclave(nitrokms_enclave, nitrokms_attested_key):
    done = nitrokms_enclave.run([sys.executable, "-c", IN_ENCLAVE, nitrokms_attested_key])
    assert done.returncode == 0, done.stderr
    assert done.stdout == "32 True\n"


def test_the_same_code_outside_the_enclave_has_no_nsm(nitrokms_world, nitrokms_attested_key):
    env = nitrokms_world.enclave_environment()
    done = subprocess.run(
        [sys.executable, "-c", IN_ENCLAVE, nitrokms_attested_key],
        env=env, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode != 0
    assert "/dev/nsm" in done.stderr


def test_the_local_kms_alone(nitrokms_kms):
    kms = nitrokms_kms.client()
    arn = kms.create_key()["KeyMetadata"]["Arn"]
    assert len(kms.generate_data_key(KeyId=arn, NumberOfBytes=16)["Plaintext"]) == 16


def test_code_under_the_simulated_nsm(nitrokms_nsm, tmp_path):
    doc = tmp_path / "doc.cose"
    root = tmp_path / "root.pem"
    root.write_bytes(nitrokms_nsm.root_pem)
    assert x509.load_pem_x509_certificate(nitrokms_nsm.root_pem).subject
    cli = [sys.executable, "-m", "nitrokms.cli"]
    made = nitrokms_nsm.run([*cli, "nsm", "attest", "--out", str(doc)])
    assert made.returncode == 0, made.stderr
    checked = subprocess.run(
        [*cli, "attestation", "verify", str(doc), "--root", str(root)],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert checked.returncode == 0, checked.stderr
