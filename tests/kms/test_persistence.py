"""State survives restarts, including a SIGKILL right after acknowledged changes."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path
from typing import Any

from nitrokms.sim.kms.fixtures import spawn_kms, stop_kms
from nitrokms.sim.kms.server import LocalKMS
from nitrokms.sim.nsm.pki import SimulatedPKI

from .conftest import ACCOUNT, ADMIN, CREDENTIALS, client_for


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
