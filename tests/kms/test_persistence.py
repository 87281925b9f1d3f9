"""State survives restarts, including a SIGKILL right after acknowledged changes."""

from __future__ import annotations

import base64
import json
import os
import signal
import uuid
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from nitrokms.sim.kms.fixtures import spawn_kms, stop_kms
from nitrokms.sim.kms.policy import default_policy
from nitrokms.sim.kms.server import LocalKMS
from nitrokms.sim.nsm.pki import SimulatedPKI

from .conftest import ACCOUNT, ADMIN, CREDENTIALS, STRANGER, client_for


def _snapshot(client: Any) -> dict[str, Any]:
    keys = {}
    for entry in client.list_keys(Limit=1000)["Keys"]:
        meta = client.describe_key(KeyId=entry["KeyId"])["KeyMetadata"]
        policy = client.get_key_policy(KeyId=entry["KeyId"])["Policy"]
        keys[entry["KeyId"]] = (
            meta["KeyState"],
            meta["Description"],
            meta.get("DeletionDate"),
            policy,
        )
    aliases = {a["AliasName"]: a["TargetKeyId"] for a in client.list_aliases()["Aliases"]}
    return {"keys": keys, "aliases": aliases}


def test_restart_keeps_keys_aliases_policies_states(tmp_path: Path, pki: SimulatedPKI) -> None:
    policy = json.dumps(
        {
            "Statement": [
                {
                    "Sid": "Custom",
                    "Effect": "Allow",
                    "Principal": {"AWS": ACCOUNT},
                    "Action": "kms:*",
                    "Resource": "*",
                }
            ]
        }
    )
    with LocalKMS(tmp_path, CREDENTIALS, pki.root_certificate_pem) as kms:
        client = client_for(kms.url, kms.ca_path, ADMIN)
        enabled = client.create_key(Description="enabled")["KeyMetadata"]["KeyId"]
        disabled = client.create_key(Description="disabled")["KeyMetadata"]["KeyId"]
        pending = client.create_key(Description="pending")["KeyMetadata"]["KeyId"]
        custom = client.create_key(Description="custom", Policy=policy)["KeyMetadata"]["KeyId"]
        client.disable_key(KeyId=disabled)
        client.schedule_key_deletion(KeyId=pending, PendingWindowInDays=7)
        client.create_alias(AliasName="alias/app", TargetKeyId=enabled)
        blob = client.encrypt(KeyId="alias/app", Plaintext=b"kept", EncryptionContext={"a": "b"})[
            "CiphertextBlob"
        ]
        before = _snapshot(client)
        ca_before = kms.ca_path.read_bytes()
    with LocalKMS(tmp_path, CREDENTIALS, pki.root_certificate_pem) as kms:
        assert kms.ca_path.read_bytes() == ca_before
        client = client_for(kms.url, kms.ca_path, ADMIN)
        assert _snapshot(client) == before
        assert before["keys"][custom][3] == policy
        assert before["keys"][disabled][0] == "Disabled"
        assert before["keys"][pending][0] == "PendingDeletion"
        assert (
            client.decrypt(CiphertextBlob=blob, EncryptionContext={"a": "b"})["Plaintext"]
            == b"kept"
        )


def test_state_file_is_private(tmp_path: Path, pki: SimulatedPKI) -> None:
    with LocalKMS(tmp_path, CREDENTIALS, pki.root_certificate_pem) as kms:
        client_for(kms.url, kms.ca_path, ADMIN).create_key()
    assert (tmp_path / "keys.json").stat().st_mode & 0o777 == 0o600
    assert (tmp_path / "ca-key.pem").stat().st_mode & 0o777 == 0o600


def test_sigkill_loses_nothing_acknowledged(tmp_path: Path) -> None:
    pki = SimulatedPKI.load_or_create(tmp_path / "nsm")
    server = spawn_kms(tmp_path / "kms", pki.root_certificate_pem)
    try:
        client = server.client()
        created = [client.create_key(Description=f"k{i}")["KeyMetadata"]["KeyId"] for i in range(5)]  # type: ignore[attr-defined]
        client.create_alias(AliasName="alias/last", TargetKeyId=created[-1])  # type: ignore[attr-defined]
        os.kill(server.process.pid, signal.SIGKILL)
    finally:
        stop_kms(server.process)
    server = spawn_kms(tmp_path / "kms", pki.root_certificate_pem)
    try:
        client = server.client()
        listed = {k["KeyId"] for k in client.list_keys()["Keys"]}  # type: ignore[attr-defined]
        assert set(created) <= listed
        assert client.describe_key(KeyId="alias/last")["KeyMetadata"]["KeyId"] == created[-1]  # type: ignore[attr-defined]
    finally:
        assert stop_kms(server.process) == 0
    assert not list((tmp_path / "kms").glob(".*.tmp"))


def test_restart_keeps_tags_grants_rotations_and_asymmetric_keys(
    tmp_path: Path, pki: SimulatedPKI
) -> None:
    with LocalKMS(tmp_path, CREDENTIALS, pki.root_certificate_pem) as kms:
        client = client_for(kms.url, kms.ca_path, ADMIN)
        key_id = client.create_key(Tags=[{"TagKey": "team", "TagValue": "a"}])["KeyMetadata"][
            "KeyId"
        ]
        before_rotation = client.encrypt(KeyId=key_id, Plaintext=b"v0")["CiphertextBlob"]
        client.rotate_key_on_demand(KeyId=key_id)
        client.enable_key_rotation(KeyId=key_id, RotationPeriodInDays=180)
        grant = client.create_grant(
            KeyId=key_id, GranteePrincipal=STRANGER.principal_arn, Operations=["Decrypt"]
        )
        signer = client.create_key(KeySpec="ECC_NIST_P256", KeyUsage="SIGN_VERIFY")
        signer_id = signer["KeyMetadata"]["KeyId"]
        public = client.get_public_key(KeyId=signer_id)["PublicKey"]
        mac_key = client.create_key(KeySpec="HMAC_384", KeyUsage="GENERATE_VERIFY_MAC")
        mac_id = mac_key["KeyMetadata"]["KeyId"]
        mac = client.generate_mac(KeyId=mac_id, Message=b"m", MacAlgorithm="HMAC_SHA_384")["Mac"]
        status = client.get_key_rotation_status(KeyId=key_id)
        material = client.describe_key(KeyId=key_id)["KeyMetadata"]["CurrentKeyMaterialId"]
    with LocalKMS(tmp_path, CREDENTIALS, pki.root_certificate_pem) as kms:
        client = client_for(kms.url, kms.ca_path, ADMIN)
        stranger = client_for(kms.url, kms.ca_path, STRANGER)
        assert client.list_resource_tags(KeyId=key_id)["Tags"] == [
            {"TagKey": "team", "TagValue": "a"}
        ]
        assert client.get_key_rotation_status(KeyId=key_id) | {"ResponseMetadata": None} == (
            status | {"ResponseMetadata": None}
        )
        assert client.describe_key(KeyId=key_id)["KeyMetadata"]["CurrentKeyMaterialId"] == material
        assert stranger.decrypt(CiphertextBlob=before_rotation)["Plaintext"] == b"v0"
        (entry,) = client.list_grants(KeyId=key_id)["Grants"]
        assert entry["GrantId"] == grant["GrantId"]
        client.retire_grant(GrantToken=grant["GrantToken"])
        assert client.get_public_key(KeyId=signer_id)["PublicKey"] == public
        again = client.generate_mac(KeyId=mac_id, Message=b"m", MacAlgorithm="HMAC_SHA_384")
        assert again["Mac"] == mac


def test_state_written_before_rotation_existed_still_loads(
    tmp_path: Path, pki: SimulatedPKI
) -> None:
    """A version-1 state file (one material per key) and a version-1 blob it made still work."""
    key_id = str(uuid.uuid4())
    material = os.urandom(32)
    nonce = os.urandom(12)
    header = b"NKMS\x01" + uuid.UUID(key_id).bytes + nonce
    context = b'{"a":"b"}'
    blob = header + AESGCM(material).encrypt(nonce, b"from v1", header + context)
    record = {
        "key_id": key_id, "arn": f"arn:aws:kms:us-east-1:{ACCOUNT}:key/{key_id}",
        "account": ACCOUNT, "creation_date": 1700000000.0, "key_state": "Enabled",
        "key_usage": "ENCRYPT_DECRYPT", "key_spec": "SYMMETRIC_DEFAULT", "description": "old",
        "policy": default_policy(ACCOUNT), "material": base64.b64encode(material).decode(),
        "deletion_date": None,
    }  # fmt: skip
    alias = {"name": "alias/old", "target_key_id": key_id, "creation_date": 1700000000.0,
             "last_updated": 1700000000.0}  # fmt: skip
    document = {"version": 1, "region": "us-east-1", "account": ACCOUNT, "keys": [record],
                "aliases": [alias]}  # fmt: skip
    (tmp_path / "keys.json").write_text(json.dumps(document))
    with LocalKMS(tmp_path, CREDENTIALS, pki.root_certificate_pem) as kms:
        client = client_for(kms.url, kms.ca_path, ADMIN)
        opened = client.decrypt(CiphertextBlob=blob, EncryptionContext={"a": "b"})
        assert opened["Plaintext"] == b"from v1"
        client.rotate_key_on_demand(KeyId=key_id)
        assert client.decrypt(CiphertextBlob=blob, EncryptionContext={"a": "b"})["KeyId"].endswith(
            key_id
        )
    assert json.loads((tmp_path / "keys.json").read_text())["version"] == 2
    with LocalKMS(tmp_path, CREDENTIALS, pki.root_certificate_pem) as kms:
        client = client_for(kms.url, kms.ca_path, ADMIN)
        assert client.describe_key(KeyId="alias/old")["KeyMetadata"]["Description"] == "old"
        assert len(client.list_key_rotations(KeyId=key_id)["Rotations"]) == 1
