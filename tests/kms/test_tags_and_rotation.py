"""Tags (limits, validation, ABAC conditions) and key rotation (status, on-demand, automatic, old
ciphertexts after rotation, KeyMaterialId)."""

from __future__ import annotations

import datetime as dt
import functools
from pathlib import Path
from typing import Any

import pytest
from nitrokms.sim.kms.server import LocalKMS
from nitrokms.sim.nsm.pki import SimulatedPKI

from .conftest import ADMIN, CREDENTIALS, STRANGER, client_for, expect_error, policy_of, statement

DAY = dt.timedelta(days=1)


def tags_of(admin: Any, key_id: str) -> dict[str, str]:
    return {t["TagKey"]: t["TagValue"] for t in admin.list_resource_tags(KeyId=key_id)["Tags"]}


def test_tags_are_added_replaced_listed_and_removed(admin: Any) -> None:
    key_id = admin.create_key(Tags=[{"TagKey": "team", "TagValue": "kms"}])["KeyMetadata"]["KeyId"]
    admin.tag_resource(
        KeyId=key_id,
        Tags=[{"TagKey": "team", "TagValue": "enclave"}, {"TagKey": "empty", "TagValue": ""}],
    )
    assert tags_of(admin, key_id) == {"team": "enclave", "empty": ""}
    admin.untag_resource(KeyId=key_id, TagKeys=["team", "never-there"])
    assert tags_of(admin, key_id) == {"empty": ""}
    admin.tag_resource(
        KeyId=key_id, Tags=[{"TagKey": f"k{i:02}", "TagValue": str(i)} for i in range(49)]
    )
    first = admin.list_resource_tags(KeyId=key_id, Limit=20)
    assert first["Truncated"]
    assert len(first["Tags"]) == 20
    rest = admin.list_resource_tags(KeyId=key_id, Marker=first["NextMarker"])
    assert len(first["Tags"]) + len(rest["Tags"]) == 50
    message = expect_error(
        lambda: admin.tag_resource(KeyId=key_id, Tags=[{"TagKey": "one-more", "TagValue": "x"}]),
        "TagException",
    )
    assert message == "Too many tags"


@pytest.mark.parametrize(
    ("tags", "code", "message"),
    [
        ([{"TagKey": "aws:owner", "TagValue": "x"}], "TagException", "Tags beginning with aws:"),
        ([{"TagKey": "AWS:owner", "TagValue": "x"}], "TagException", "Tags beginning with aws:"),
        (
            [{"TagKey": "a", "TagValue": "1"}, {"TagKey": "a", "TagValue": "2"}],
            "TagException",
            "Duplicate tag keys",
        ),
        ([{"TagKey": "k" * 129, "TagValue": "x"}], "ValidationException", "'tags.1.member.tagKey'"),
        (
            [{"TagKey": "a", "TagValue": "v"}, {"TagKey": "b", "TagValue": "v" * 257}],
            "ValidationException",
            "'tags.2.member.tagValue' failed to satisfy constraint: Member must have length less "
            "than or equal to 256",
        ),
        ([{"TagKey": f"k{i}", "TagValue": ""} for i in range(51)], "TagException", "Too many"),
    ],
)
def test_bad_tags_are_refused_on_create_and_tag(
    admin: Any, key_id: str, tags: list[dict[str, str]], code: str, message: str
) -> None:
    assert message in expect_error(lambda: admin.create_key(Tags=tags), code)
    assert message in expect_error(lambda: admin.tag_resource(KeyId=key_id, Tags=tags), code)
    assert tags_of(admin, key_id) == {}


def test_tag_operations_take_key_ids_not_aliases_and_not_pending_keys(admin: Any) -> None:
    key_id = admin.create_key()["KeyMetadata"]["KeyId"]
    admin.create_alias(AliasName=f"alias/tags-{key_id[:8]}", TargetKeyId=key_id)
    tag = [{"TagKey": "a", "TagValue": "b"}]
    message = expect_error(
        lambda: admin.tag_resource(KeyId=f"alias/tags-{key_id[:8]}", Tags=tag), "NotFoundException"
    )
    assert message == f"Invalid keyId 'alias/tags-{key_id[:8]}'"
    admin.schedule_key_deletion(KeyId=key_id, PendingWindowInDays=7)
    expect_error(lambda: admin.tag_resource(KeyId=key_id, Tags=tag), "KMSInvalidStateException")
    assert tags_of(admin, key_id) == {}


def test_resource_and_request_tags_in_key_policies(admin: Any, stranger: Any) -> None:
    abac = statement(
        STRANGER.principal_arn,
        ["kms:Encrypt", "kms:TagResource"],
        Condition={
            "StringEquals": {"aws:ResourceTag/stage": "test"},
            "ForAllValues:StringEquals": {"aws:TagKeys": ["owner"]},
        },
    )
    key = admin.create_key(Policy=policy_of(abac))["KeyMetadata"]
    expect_error(
        lambda: stranger.encrypt(KeyId=key["Arn"], Plaintext=b"x"), "AccessDeniedException"
    )
    admin.tag_resource(KeyId=key["KeyId"], Tags=[{"TagKey": "stage", "TagValue": "test"}])
    assert stranger.encrypt(KeyId=key["Arn"], Plaintext=b"x")["KeyId"] == key["Arn"]
    stranger.tag_resource(KeyId=key["Arn"], Tags=[{"TagKey": "owner", "TagValue": "eve"}])
    expect_error(
        lambda: stranger.tag_resource(
            KeyId=key["Arn"], Tags=[{"TagKey": "stage", "TagValue": "prod"}]
        ),
        "AccessDeniedException",
    )


def test_rotation_status_and_on_demand_rotation(admin: Any) -> None:
    meta = admin.create_key()["KeyMetadata"]
    key_id = meta["KeyId"]
    status = admin.get_key_rotation_status(KeyId=key_id)
    assert (status["KeyRotationEnabled"], status["KeyId"]) == (False, meta["Arn"])
    assert "NextRotationDate" not in status
    admin.enable_key_rotation(KeyId=key_id, RotationPeriodInDays=90)
    status = admin.get_key_rotation_status(KeyId=key_id)
    assert (status["KeyRotationEnabled"], status["RotationPeriodInDays"]) == (True, 90)
    until_next = status["NextRotationDate"] - dt.datetime.now(dt.UTC)
    assert 89 * DAY < until_next <= 90 * DAY
    old = admin.encrypt(KeyId=key_id, Plaintext=b"before", EncryptionContext={"v": "1"})
    assert admin.rotate_key_on_demand(KeyId=key_id)["KeyId"] == meta["Arn"]
    after = admin.describe_key(KeyId=key_id)["KeyMetadata"]["CurrentKeyMaterialId"]
    assert after != meta["CurrentKeyMaterialId"]
    opened = admin.decrypt(CiphertextBlob=old["CiphertextBlob"], EncryptionContext={"v": "1"})
    assert opened["Plaintext"] == b"before"
    assert opened["KeyMaterialId"] == meta["CurrentKeyMaterialId"]
    new = admin.generate_data_key(KeyId=key_id, KeySpec="AES_256")
    assert new["KeyMaterialId"] == after
    rotations = admin.list_key_rotations(KeyId=key_id)["Rotations"]
    assert [(r["RotationType"], r["KeyMaterialId"]) for r in rotations] == [("ON_DEMAND", after)]
    everything = admin.list_key_rotations(KeyId=key_id, IncludeKeyMaterial="ALL_KEY_MATERIAL")
    assert [r["KeyMaterialState"] for r in everything["Rotations"]] == ["NON_CURRENT", "CURRENT"]
    admin.disable_key_rotation(KeyId=key_id)
    assert admin.get_key_rotation_status(KeyId=key_id)["KeyRotationEnabled"] is False
    expect_error(
        lambda: admin.enable_key_rotation(KeyId=key_id, RotationPeriodInDays=89),
        "ValidationException",
    )


def test_on_demand_rotations_are_limited_to_25(admin: Any) -> None:
    meta = admin.create_key()["KeyMetadata"]
    blobs = [admin.encrypt(KeyId=meta["KeyId"], Plaintext=b"v0")["CiphertextBlob"]]
    for version in range(1, 26):
        admin.rotate_key_on_demand(KeyId=meta["KeyId"])
        plaintext = f"v{version}".encode()
        blobs.append(admin.encrypt(KeyId=meta["KeyId"], Plaintext=plaintext)["CiphertextBlob"])
    message = expect_error(
        lambda: admin.rotate_key_on_demand(KeyId=meta["KeyId"]), "LimitExceededException"
    )
    assert message == (
        "The on-demand rotations limit has been reached for the given keyId. No more on-demand "
        f"rotations can be performed for this key: {meta['Arn']}"
    )
    for version, blob in enumerate(blobs):
        assert admin.decrypt(CiphertextBlob=blob)["Plaintext"] == f"v{version}".encode()


def test_rotation_is_for_symmetric_encryption_keys_in_a_usable_state(admin: Any) -> None:
    for kwargs in (
        {"KeySpec": "HMAC_256", "KeyUsage": "GENERATE_VERIFY_MAC"},
        {"KeySpec": "ECC_NIST_P256", "KeyUsage": "SIGN_VERIFY"},
    ):
        key_id = admin.create_key(**kwargs)["KeyMetadata"]["KeyId"]
        for call in (
            admin.enable_key_rotation,
            admin.get_key_rotation_status,
            admin.rotate_key_on_demand,
            admin.list_key_rotations,
        ):
            expect_error(functools.partial(call, KeyId=key_id), "UnsupportedOperationException")
    disabled = admin.create_key()["KeyMetadata"]
    admin.disable_key(KeyId=disabled["KeyId"])
    message = expect_error(
        lambda: admin.rotate_key_on_demand(KeyId=disabled["KeyId"]), "DisabledException"
    )
    assert message == f"{disabled['Arn']} is disabled."
    expect_error(lambda: admin.enable_key_rotation(KeyId=disabled["KeyId"]), "DisabledException")
    expect_error(
        lambda: admin.get_key_rotation_status(KeyId=f"alias/none-{disabled['KeyId'][:8]}"),
        "NotFoundException",
    )


def test_automatic_rotation_happens_when_the_period_has_passed(
    tmp_path: Path, pki: SimulatedPKI
) -> None:
    now = [dt.datetime.now(dt.UTC).timestamp()]
    with LocalKMS(tmp_path, CREDENTIALS, pki.root_certificate_pem, clock=lambda: now[0]) as kms:
        admin = client_for(kms.url, kms.ca_path, ADMIN)
        key_id = admin.create_key()["KeyMetadata"]["KeyId"]
        admin.enable_key_rotation(KeyId=key_id, RotationPeriodInDays=90)
        blob = admin.encrypt(KeyId=key_id, Plaintext=b"old")["CiphertextBlob"]
        now[0] += 89 * 86400
        assert admin.list_key_rotations(KeyId=key_id)["Rotations"] == []
        now[0] += 2 * 86400
        (rotation,) = admin.list_key_rotations(KeyId=key_id)["Rotations"]
        assert rotation["RotationType"] == "AUTOMATIC"
        status = admin.get_key_rotation_status(KeyId=key_id)
        assert status["NextRotationDate"].timestamp() == pytest.approx(now[0] + 89 * 86400, abs=5)
        assert admin.decrypt(CiphertextBlob=blob)["Plaintext"] == b"old"
        admin.disable_key(KeyId=key_id)
        now[0] += 400 * 86400
        assert len(admin.list_key_rotations(KeyId=key_id)["Rotations"]) == 1
        admin.enable_key(KeyId=key_id)
        assert len(admin.list_key_rotations(KeyId=key_id)["Rotations"]) == 2
        late = admin.get_key_rotation_status(KeyId=key_id)["NextRotationDate"].timestamp()
        assert late == pytest.approx(now[0] + 90 * 86400, abs=5)
