"""Every operation and every error type, through unmodified boto3 over HTTPS."""

from __future__ import annotations

import datetime as dt
import json
from typing import Any

import pytest
from botocore.exceptions import ClientError
from nitrokms.sim.kms.responses import OPERATIONS

from .conftest import ACCOUNT, REGION


def error_code(excinfo: pytest.ExceptionInfo[ClientError]) -> str:
    return str(excinfo.value.response["Error"]["Code"])


def arn(key_id: str) -> str:
    return f"arn:aws:kms:{REGION}:{ACCOUNT}:key/{key_id}"


def test_create_key_defaults_to_symmetric_encrypt_decrypt(admin: Any) -> None:
    meta = admin.create_key(Description="hello")["KeyMetadata"]
    assert meta["KeySpec"] == "SYMMETRIC_DEFAULT"
    assert meta["KeyUsage"] == "ENCRYPT_DECRYPT"
    assert meta["KeyState"] == "Enabled"
    assert meta["Enabled"] is True
    assert meta["Arn"] == arn(meta["KeyId"])
    assert meta["AWSAccountId"] == ACCOUNT
    assert meta["Description"] == "hello"
    assert isinstance(meta["CreationDate"], dt.datetime)


def test_create_key_with_explicit_spec_usage_and_policy(admin: Any) -> None:
    policy = json.dumps(
        {
            "Version": "2012-10-17",
            "Statement": [
                {
                    "Effect": "Allow",
                    "Principal": {"AWS": ACCOUNT},
                    "Action": "kms:*",
                    "Resource": "*",
                }
            ],
        }
    )
    meta = admin.create_key(KeySpec="SYMMETRIC_DEFAULT", KeyUsage="ENCRYPT_DECRYPT", Policy=policy)
    key_id = meta["KeyMetadata"]["KeyId"]
    assert admin.get_key_policy(KeyId=key_id)["Policy"] == policy


def test_create_key_default_policy_gives_account_root_everything(admin: Any, key_id: str) -> None:
    policy = json.loads(admin.get_key_policy(KeyId=key_id, PolicyName="default")["Policy"])
    (statement,) = policy["Statement"]
    assert statement["Principal"] == {"AWS": f"arn:aws:iam::{ACCOUNT}:root"}
    assert statement["Action"] == "kms:*"


@pytest.mark.parametrize(
    ("kwargs", "code"),
    [
        ({"KeySpec": "SM2", "KeyUsage": "SIGN_VERIFY"}, "UnsupportedOperationException"),
        ({"KeySpec": "ML_DSA_44", "KeyUsage": "SIGN_VERIFY"}, "UnsupportedOperationException"),
        ({"KeySpec": "NOT_A_SPEC"}, "ValidationException"),
        ({"KeySpec": "HMAC_256", "KeyUsage": "ENCRYPT_DECRYPT"}, "ValidationException"),
        ({"KeySpec": "HMAC_256"}, "ValidationException"),
        ({"KeySpec": "ECC_NIST_P256", "KeyUsage": "ENCRYPT_DECRYPT"}, "ValidationException"),
        ({"KeySpec": "ECC_SECG_P256K1", "KeyUsage": "KEY_AGREEMENT"}, "ValidationException"),
        ({"KeySpec": "RSA_2048", "KeyUsage": "KEY_AGREEMENT"}, "ValidationException"),
        ({"KeySpec": "RSA_2048"}, "ValidationException"),
        ({"Policy": "{not json"}, "MalformedPolicyDocumentException"),
        (
            {"Policy": json.dumps({"Statement": [{"Effect": "Maybe"}]})},
            "MalformedPolicyDocumentException",
        ),
    ],
)
def test_create_key_refuses_bad_parameters(admin: Any, kwargs: dict[str, str], code: str) -> None:
    with pytest.raises(ClientError) as excinfo:
        admin.create_key(**kwargs)
    assert error_code(excinfo) == code


def test_create_key_refuses_a_policy_that_locks_the_caller_out(admin: Any) -> None:
    policy = json.dumps(
        {
            "Statement": [
                {
                    "Effect": "Allow",
                    "Principal": {"AWS": "arn:aws:iam::999999999999:root"},
                    "Action": "kms:*",
                    "Resource": "*",
                }
            ]
        }
    )
    with pytest.raises(ClientError) as excinfo:
        admin.create_key(Policy=policy)
    assert error_code(excinfo) == "MalformedPolicyDocumentException"
    created = admin.create_key(Policy=policy, BypassPolicyLockoutSafetyCheck=True)
    assert created["KeyMetadata"]["KeyState"] == "Enabled"


def test_describe_key_by_every_key_id_form(admin: Any, key_id: str) -> None:
    alias = f"alias/describe-{key_id[:8]}"
    admin.create_alias(AliasName=alias, TargetKeyId=key_id)
    for ref in (key_id, arn(key_id), alias, f"arn:aws:kms:{REGION}:{ACCOUNT}:{alias}"):
        assert admin.describe_key(KeyId=ref)["KeyMetadata"]["KeyId"] == key_id


@pytest.mark.parametrize(
    "ref",
    [
        "00000000-0000-0000-0000-000000000000",
        f"arn:aws:kms:{REGION}:{ACCOUNT}:key/00000000-0000-0000-0000-000000000000",
        "alias/does-not-exist",
        f"arn:aws:kms:{REGION}:{ACCOUNT}:alias/does-not-exist",
        "not-a-key-id",
    ],
)
def test_unknown_key_is_not_found(admin: Any, ref: str) -> None:
    with pytest.raises(ClientError) as excinfo:
        admin.describe_key(KeyId=ref)
    assert error_code(excinfo) == "NotFoundException"


def test_key_arn_from_another_region_is_not_found(admin: Any, key_id: str) -> None:
    with pytest.raises(ClientError) as excinfo:
        admin.encrypt(KeyId=arn(key_id).replace(REGION, "eu-west-1"), Plaintext=b"x")
    assert error_code(excinfo) == "NotFoundException"


def test_list_keys_pages_through_every_key(admin: Any, key_id: str) -> None:
    seen: list[str] = []
    kwargs: dict[str, Any] = {"Limit": 2}
    while True:
        page = admin.list_keys(**kwargs)
        seen += [k["KeyId"] for k in page["Keys"]]
        assert all(k["KeyArn"] == arn(k["KeyId"]) for k in page["Keys"])
        if not page["Truncated"]:
            break
        kwargs["Marker"] = page["NextMarker"]
    assert key_id in seen
    assert len(seen) == len(set(seen))


def test_alias_lifecycle(admin: Any, key_id: str) -> None:
    other = admin.create_key()["KeyMetadata"]["KeyId"]
    name = f"alias/life-{key_id[:8]}"
    admin.create_alias(AliasName=name, TargetKeyId=arn(key_id))
    listed = admin.list_aliases(KeyId=key_id)["Aliases"]
    assert [(a["AliasName"], a["TargetKeyId"]) for a in listed] == [(name, key_id)]
    assert listed[0]["AliasArn"] == f"arn:aws:kms:{REGION}:{ACCOUNT}:{name}"
    with pytest.raises(ClientError) as excinfo:
        admin.create_alias(AliasName=name, TargetKeyId=other)
    assert error_code(excinfo) == "AlreadyExistsException"
    admin.update_alias(AliasName=name, TargetKeyId=other)
    assert admin.describe_key(KeyId=name)["KeyMetadata"]["KeyId"] == other
    admin.delete_alias(AliasName=name)
    assert all(a["AliasName"] != name for a in admin.list_aliases()["Aliases"])
    with pytest.raises(ClientError) as excinfo:
        admin.delete_alias(AliasName=name)
    assert error_code(excinfo) == "NotFoundException"


@pytest.mark.parametrize(
    ("name", "code"),
    [
        ("alias/aws/reserved", "InvalidAliasNameException"),
        ("alias/bad name!", "ValidationException"),
    ],
)
def test_create_alias_refuses_bad_names(admin: Any, key_id: str, name: str, code: str) -> None:
    with pytest.raises(ClientError) as excinfo:
        admin.create_alias(AliasName=name, TargetKeyId=key_id)
    assert error_code(excinfo) == code


def test_disabled_key_refuses_crypto_until_enabled(admin: Any, key_id: str) -> None:
    admin.disable_key(KeyId=key_id)
    assert admin.describe_key(KeyId=key_id)["KeyMetadata"]["KeyState"] == "Disabled"
    with pytest.raises(ClientError) as excinfo:
        admin.encrypt(KeyId=key_id, Plaintext=b"data")
    assert error_code(excinfo) == "DisabledException"
    admin.enable_key(KeyId=key_id)
    assert admin.encrypt(KeyId=key_id, Plaintext=b"data")["KeyId"] == arn(key_id)


def test_scheduled_deletion_makes_key_invalid_state(admin: Any, key_id: str) -> None:
    blob = admin.encrypt(KeyId=key_id, Plaintext=b"data")["CiphertextBlob"]
    reply = admin.schedule_key_deletion(KeyId=key_id, PendingWindowInDays=7)
    assert reply["KeyState"] == "PendingDeletion"
    assert reply["KeyId"] == arn(key_id)
    assert reply["PendingWindowInDays"] == 7
    delay = reply["DeletionDate"] - dt.datetime.now(dt.UTC)
    assert dt.timedelta(days=6, hours=23) < delay <= dt.timedelta(days=7)
    calls = [
        lambda: admin.encrypt(KeyId=key_id, Plaintext=b"x"),
        lambda: admin.decrypt(CiphertextBlob=blob),
        lambda: admin.generate_data_key(KeyId=key_id, KeySpec="AES_256"),
        lambda: admin.enable_key(KeyId=key_id),
        lambda: admin.schedule_key_deletion(KeyId=key_id),
    ]
    for call in calls:
        with pytest.raises(ClientError) as excinfo:
            call()
        assert error_code(excinfo) == "KMSInvalidStateException"
    assert admin.cancel_key_deletion(KeyId=key_id)["KeyId"] == arn(key_id)
    assert admin.describe_key(KeyId=key_id)["KeyMetadata"]["KeyState"] == "Disabled"


def test_schedule_key_deletion_window_is_validated(admin: Any, key_id: str) -> None:
    with pytest.raises(ClientError) as excinfo:
        admin.schedule_key_deletion(KeyId=key_id, PendingWindowInDays=6)
    assert error_code(excinfo) == "ValidationException"


def test_put_key_policy_replaces_policy(admin: Any, stranger: Any, key_id: str) -> None:
    with pytest.raises(ClientError) as excinfo:
        stranger.encrypt(KeyId=arn(key_id), Plaintext=b"x")
    assert error_code(excinfo) == "AccessDeniedException"
    policy = json.dumps(
        {
            "Statement": [
                {
                    "Effect": "Allow",
                    "Principal": {"AWS": f"arn:aws:iam::{ACCOUNT}:root"},
                    "Action": "kms:*",
                    "Resource": "*",
                },
                {
                    "Effect": "Allow",
                    "Principal": {"AWS": "arn:aws:iam::444455556666:user/eve"},
                    "Action": "kms:Encrypt",
                    "Resource": "*",
                },
            ]
        }
    )
    admin.put_key_policy(KeyId=key_id, PolicyName="default", Policy=policy)
    assert admin.get_key_policy(KeyId=key_id)["Policy"] == policy
    assert stranger.encrypt(KeyId=arn(key_id), Plaintext=b"x")["KeyId"] == arn(key_id)


def test_put_key_policy_refuses_malformed_policy(admin: Any, key_id: str) -> None:
    bad = json.dumps(
        {
            "Statement": [
                {
                    "Effect": "Allow",
                    "Principal": "*",
                    "Action": "kms:*",
                    "Resource": "*",
                    "Condition": {"IpAddress": {"aws:SourceIp": "10.0.0.0/8"}},
                }
            ]
        }
    )
    with pytest.raises(ClientError) as excinfo:
        admin.put_key_policy(KeyId=key_id, PolicyName="default", Policy=bad)
    assert error_code(excinfo) == "MalformedPolicyDocumentException"


def test_encrypt_decrypt_round_trip_with_context(admin: Any, key_id: str) -> None:
    context = {"purpose": "test", "tenant": "a"}
    enc = admin.encrypt(KeyId=key_id, Plaintext=b"secret data", EncryptionContext=context)
    assert enc["KeyId"] == arn(key_id)
    assert enc["EncryptionAlgorithm"] == "SYMMETRIC_DEFAULT"
    dec = admin.decrypt(
        CiphertextBlob=enc["CiphertextBlob"], EncryptionContext=dict(reversed(context.items()))
    )
    assert dec["Plaintext"] == b"secret data"
    assert dec["KeyId"] == arn(key_id)
    dec = admin.decrypt(
        CiphertextBlob=enc["CiphertextBlob"], EncryptionContext=context, KeyId=key_id
    )
    assert dec["Plaintext"] == b"secret data"


@pytest.mark.parametrize("context", [None, {"purpose": "other"}, {"purpose": "test", "extra": "x"}])
def test_decrypt_with_wrong_context_is_invalid_ciphertext(
    admin: Any, key_id: str, context: Any
) -> None:
    blob = admin.encrypt(KeyId=key_id, Plaintext=b"x", EncryptionContext={"purpose": "test"})[
        "CiphertextBlob"
    ]
    kwargs = {"EncryptionContext": context} if context else {}
    with pytest.raises(ClientError) as excinfo:
        admin.decrypt(CiphertextBlob=blob, **kwargs)
    assert error_code(excinfo) == "InvalidCiphertextException"


def test_tampered_or_foreign_ciphertext_is_invalid(admin: Any, key_id: str) -> None:
    blob = bytearray(admin.encrypt(KeyId=key_id, Plaintext=b"x")["CiphertextBlob"])
    blob[-1] ^= 1
    for bad in (bytes(blob), b"\x01\x02\x02\x00" + bytes(100), b"z"):
        with pytest.raises(ClientError) as excinfo:
            admin.decrypt(CiphertextBlob=bad)
        assert error_code(excinfo) == "InvalidCiphertextException"


def test_decrypt_with_another_key_id_is_incorrect_key(admin: Any, key_id: str) -> None:
    other = admin.create_key()["KeyMetadata"]["KeyId"]
    blob = admin.encrypt(KeyId=key_id, Plaintext=b"x")["CiphertextBlob"]
    with pytest.raises(ClientError) as excinfo:
        admin.decrypt(CiphertextBlob=blob, KeyId=other)
    assert error_code(excinfo) == "IncorrectKeyException"


@pytest.mark.parametrize("size", [0, 4097])
def test_encrypt_plaintext_size_is_validated(admin: Any, key_id: str, size: int) -> None:
    with pytest.raises(ClientError) as excinfo:
        admin.encrypt(KeyId=key_id, Plaintext=b"p" * size)
    assert error_code(excinfo) == "ValidationException"


def test_encrypt_accepts_4096_bytes(admin: Any, key_id: str) -> None:
    blob = admin.encrypt(KeyId=key_id, Plaintext=b"p" * 4096)["CiphertextBlob"]
    assert admin.decrypt(CiphertextBlob=blob)["Plaintext"] == b"p" * 4096


def test_wrong_key_usage_is_invalid_key_usage(admin: Any) -> None:
    mac_key = admin.create_key(KeySpec="HMAC_256", KeyUsage="GENERATE_VERIFY_MAC")["KeyMetadata"]
    assert mac_key["KeyUsage"] == "GENERATE_VERIFY_MAC"
    for call in (
        lambda: admin.encrypt(KeyId=mac_key["KeyId"], Plaintext=b"x"),
        lambda: admin.generate_data_key(KeyId=mac_key["KeyId"], KeySpec="AES_256"),
    ):
        with pytest.raises(ClientError) as excinfo:
            call()
        assert error_code(excinfo) == "InvalidKeyUsageException"


def test_wrong_encryption_algorithm_is_invalid_key_usage(admin: Any, key_id: str) -> None:
    with pytest.raises(ClientError) as excinfo:
        admin.encrypt(KeyId=key_id, Plaintext=b"x", EncryptionAlgorithm="RSAES_OAEP_SHA_256")
    assert error_code(excinfo) == "InvalidKeyUsageException"


@pytest.mark.parametrize(
    ("kwargs", "size"),
    [
        ({"KeySpec": "AES_256"}, 32),
        ({"KeySpec": "AES_128"}, 16),
        ({"NumberOfBytes": 1}, 1),
        ({"NumberOfBytes": 1024}, 1024),
    ],
)
def test_generate_data_key_sizes(
    admin: Any, key_id: str, kwargs: dict[str, Any], size: int
) -> None:
    reply = admin.generate_data_key(KeyId=key_id, EncryptionContext={"k": "v"}, **kwargs)
    assert len(reply["Plaintext"]) == size
    assert reply["KeyId"] == arn(key_id)
    again = admin.decrypt(CiphertextBlob=reply["CiphertextBlob"], EncryptionContext={"k": "v"})
    assert again["Plaintext"] == reply["Plaintext"]


@pytest.mark.parametrize(
    "kwargs",
    [
        {},
        {"KeySpec": "AES_256", "NumberOfBytes": 32},
        {"NumberOfBytes": 0},
        {"NumberOfBytes": 1025},
        {"KeySpec": "AES_512"},
    ],
)
def test_generate_data_key_needs_exactly_one_valid_size(
    admin: Any, key_id: str, kwargs: dict[str, Any]
) -> None:
    with pytest.raises(ClientError) as excinfo:
        admin.generate_data_key(KeyId=key_id, **kwargs)
    assert error_code(excinfo) == "ValidationException"


def test_generate_data_key_without_plaintext(admin: Any, key_id: str) -> None:
    reply = admin.generate_data_key_without_plaintext(KeyId=key_id, KeySpec="AES_256")
    assert "Plaintext" not in reply
    assert len(admin.decrypt(CiphertextBlob=reply["CiphertextBlob"])["Plaintext"]) == 32


def test_generate_random(admin: Any) -> None:
    first = admin.generate_random(NumberOfBytes=1024)["Plaintext"]
    assert len(first) == 1024
    assert first != admin.generate_random(NumberOfBytes=1024)["Plaintext"]
    for bad in (0, 1025):
        with pytest.raises(ClientError) as excinfo:
            admin.generate_random(NumberOfBytes=bad)
        assert error_code(excinfo) == "ValidationException"


@pytest.mark.parametrize(
    "call",
    [
        lambda c, k, blob: c.encrypt(KeyId=k, Plaintext=b"x", DryRun=True),
        lambda c, k, blob: c.decrypt(CiphertextBlob=blob, DryRun=True),
        lambda c, k, blob: c.generate_data_key(KeyId=k, KeySpec="AES_256", DryRun=True),
        lambda c, k, blob: c.generate_data_key_without_plaintext(
            KeyId=k, NumberOfBytes=8, DryRun=True
        ),
    ],
)
def test_dry_run_reports_would_succeed(admin: Any, key_id: str, call: Any) -> None:
    blob = admin.encrypt(KeyId=key_id, Plaintext=b"x")["CiphertextBlob"]
    with pytest.raises(ClientError) as excinfo:
        call(admin, key_id, blob)
    assert error_code(excinfo) == "DryRunOperationException"


def test_dry_run_still_reports_denial_first(stranger: Any, key_id: str) -> None:
    with pytest.raises(ClientError) as excinfo:
        stranger.encrypt(KeyId=arn(key_id), Plaintext=b"x", DryRun=True)
    assert error_code(excinfo) == "AccessDeniedException"


@pytest.mark.parametrize("tokens", [["t"] * 11, [""], ["t" * 8193]])
def test_malformed_grant_tokens(admin: Any, key_id: str, tokens: list[str]) -> None:
    with pytest.raises(ClientError) as excinfo:
        admin.encrypt(KeyId=key_id, Plaintext=b"x", GrantTokens=tokens)
    assert error_code(excinfo) == "InvalidGrantTokenException"


def test_grant_tokens_this_kms_did_not_issue_are_invalid(admin: Any, key_id: str) -> None:
    with pytest.raises(ClientError) as excinfo:
        admin.encrypt(KeyId=key_id, Plaintext=b"x", GrantTokens=["t" * 8192] * 10)
    assert error_code(excinfo) == "InvalidGrantTokenException"
    assert excinfo.value.response["Error"]["Message"] == "The grant token is invalid."


def test_access_denied_message_names_user_action_and_key(stranger: Any, key_id: str) -> None:
    with pytest.raises(ClientError) as excinfo:
        stranger.describe_key(KeyId=arn(key_id))
    assert error_code(excinfo) == "AccessDeniedException"
    assert excinfo.value.response["Error"]["Message"] == (
        "User: arn:aws:iam::444455556666:user/eve is not authorized to perform: kms:DescribeKey "
        f"on resource: {arn(key_id)} because no resource-based policy allows the "
        "kms:DescribeKey action"
    )
    assert excinfo.value.response["ResponseMetadata"]["HTTPStatusCode"] == 400


def test_key_policy_operations_take_key_ids_not_aliases(admin: Any, key_id: str) -> None:
    alias = f"alias/policy-{key_id[:8]}"
    admin.create_alias(AliasName=alias, TargetKeyId=key_id)
    for ref in (alias, f"arn:aws:kms:{REGION}:{ACCOUNT}:{alias}"):
        for call in (
            lambda r=ref: admin.get_key_policy(KeyId=r, PolicyName="default"),
            lambda r=ref: admin.put_key_policy(
                KeyId=r, Policy=admin.get_key_policy(KeyId=key_id)["Policy"]
            ),
            lambda r=ref: admin.list_key_policies(KeyId=r),
            lambda r=ref: admin.update_key_description(KeyId=r, Description="x"),
            lambda r=ref: admin.disable_key(KeyId=r),
        ):
            with pytest.raises(ClientError) as excinfo:
                call()
            assert error_code(excinfo) == "NotFoundException"
            assert excinfo.value.response["Error"]["Message"] == f"Invalid keyId '{ref}'"
    assert admin.describe_key(KeyId=alias)["KeyMetadata"]["KeyState"] == "Enabled"


def test_list_key_policies_and_the_policy_names(admin: Any, key_id: str) -> None:
    reply = admin.list_key_policies(KeyId=key_id)
    assert (reply["PolicyNames"], reply["Truncated"]) == (["default"], False)
    assert admin.get_key_policy(KeyId=key_id)["PolicyName"] == "default"
    with pytest.raises(ClientError) as excinfo:
        admin.get_key_policy(KeyId=key_id, PolicyName="AWS_RAM")
    assert error_code(excinfo) == "NotFoundException"


def test_update_key_description(admin: Any, stranger: Any, key_id: str) -> None:
    admin.update_key_description(KeyId=arn(key_id), Description="renamed")
    assert admin.describe_key(KeyId=key_id)["KeyMetadata"]["Description"] == "renamed"
    admin.update_key_description(KeyId=key_id, Description="")
    assert admin.describe_key(KeyId=key_id)["KeyMetadata"]["Description"] == ""
    for call, code in (
        (lambda: admin.update_key_description(KeyId=key_id, Description="d" * 8193),
         "ValidationException"),
        (lambda: stranger.update_key_description(KeyId=arn(key_id), Description="mine"),
         "AccessDeniedException"),
    ):  # fmt: skip
        with pytest.raises(ClientError) as excinfo:
            call()
        assert error_code(excinfo) == code
    admin.schedule_key_deletion(KeyId=key_id, PendingWindowInDays=7)
    with pytest.raises(ClientError) as excinfo:
        admin.update_key_description(KeyId=key_id, Description="late")
    assert error_code(excinfo) == "KMSInvalidStateException"


def test_every_served_operation_is_in_botocores_kms_model(admin: Any) -> None:
    model = admin.meta.service_model.operation_names
    assert set(OPERATIONS) <= set(model)
    assert len(OPERATIONS) == 42
    with pytest.raises(ClientError) as excinfo:
        admin.describe_custom_key_stores()
    assert error_code(excinfo) == "UnknownOperationException"
