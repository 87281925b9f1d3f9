"""The AWS Encryption SDK, a library that creates its own KMS clients, inside the simulated
enclave: given an attested botocore session it encrypts and decrypts under a key whose policy
admits only attested calls. The same SDK on the parent, with the parent's credentials, is denied.

Uses this package's own pytest plugin fixtures (nitrokms_world, nitrokms_enclave, ...).
"""

from __future__ import annotations

import json
import sys

import aws_encryption_sdk
import botocore.session
import pytest
from aws_encryption_sdk.exceptions import GenerateKeyError
from aws_encryption_sdk.identifiers import CommitmentPolicy
from botocore.exceptions import ClientError
from nitrokms.sim.world import World

MESSAGE = "attested envelope encryption, inside the enclave"

IN_ENCLAVE = """
import json, sys
import aws_encryption_sdk
from aws_encryption_sdk.identifiers import CommitmentPolicy
from nitrokms.enclave.attested_kms import attested_session
from nitrokms.enclave.keypool import RecipientKeyPool
from nitrokms.enclave.network import kms_network_path
from nitrokms.enclave.nsm import NSMClient

key_arn, message = sys.argv[1], sys.argv[2].encode()
nsm = NSMClient.open()
with RecipientKeyPool(size=1) as pool, kms_network_path() as path:
    session = attested_session(attestor=nsm.get_attestation_doc, pool=pool, network=path)
    sdk = aws_encryption_sdk.EncryptionSDKClient(
        commitment_policy=CommitmentPolicy.REQUIRE_ENCRYPT_REQUIRE_DECRYPT
    )
    provider = aws_encryption_sdk.StrictAwsKmsMasterKeyProvider(
        key_ids=[key_arn], botocore_session=session
    )
    ciphertext, _ = sdk.encrypt(
        source=message, key_provider=provider, encryption_context={"purpose": "test"}
    )
    plaintext, header = sdk.decrypt(source=ciphertext, key_provider=provider)
    print(json.dumps({
        "round_trip": plaintext == message,
        "message_in_ciphertext": message in ciphertext,
        "ciphertext_bytes": len(ciphertext),
        "context": header.encryption_context.get("purpose"),
        "keys": [k.key_provider.key_info.decode() for k in header.encrypted_data_keys],
    }))
"""


def test_the_sdk_round_trips_inside_the_enclave(nitrokms_enclave, nitrokms_attested_key) -> None:
    done = nitrokms_enclave.run([sys.executable, "-c", IN_ENCLAVE, nitrokms_attested_key, MESSAGE])
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout)
    assert result["round_trip"] is True
    assert result["message_in_ciphertext"] is False
    assert result["context"] == "test"
    assert result["keys"] == [nitrokms_attested_key]


def test_the_same_sdk_on_the_parent_is_denied(
    nitrokms_world: World, nitrokms_attested_key: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AWS_ENDPOINT_URL_KMS", nitrokms_world.kms_url)
    parent = nitrokms_world.parent_credentials()
    session = botocore.session.Session()
    session.set_credentials(parent.access_key_id, parent.secret_access_key, parent.session_token)
    session.set_config_variable("ca_bundle", str(nitrokms_world.kms_ca_path))
    provider = aws_encryption_sdk.StrictAwsKmsMasterKeyProvider(
        key_ids=[nitrokms_attested_key], botocore_session=session
    )
    sdk = aws_encryption_sdk.EncryptionSDKClient(
        commitment_policy=CommitmentPolicy.REQUIRE_ENCRYPT_REQUIRE_DECRYPT
    )
    kms_log = nitrokms_world.process("kms")
    mark = kms_log.mark()
    with pytest.raises(GenerateKeyError, match="unable to generate data key") as failed:
        sdk.encrypt(source=MESSAGE.encode(), key_provider=provider)
    cause = failed.value.__cause__
    assert isinstance(cause, ClientError)
    assert cause.response["Error"]["Code"] == "AccessDeniedException"
    denial = kms_log.wait_for_line("AccessDenied:", after=mark)
    assert "action=kms:GenerateDataKey" in denial
    assert "the request has no Recipient" in denial
