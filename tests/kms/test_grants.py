"""Grants: what they allow (and stop allowing when retired or revoked), constraints, Name retries,
grant tokens, who may retire or revoke, grants made through a grant, and policy conditions."""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from nitrokms.sim.kms.server import LocalKMS
from nitrokms.sim.nsm.pki import SimulatedPKI

from .conftest import (
    ACCOUNT,
    ADMIN,
    CREDENTIALS,
    ENCLAVE,
    STRANGER,
    client_for,
    expect_error,
    policy_of,
    statement,
)

EVE = STRANGER.principal_arn


def denial_log(caplog: pytest.LogCaptureFixture) -> str:
    return [r.getMessage() for r in caplog.records if "AccessDenied" in r.getMessage()][-1]


def test_a_grant_lets_its_grantee_use_the_key_until_it_is_retired(
    admin: Any, stranger: Any, key_id: str, caplog: pytest.LogCaptureFixture
) -> None:
    arn = admin.describe_key(KeyId=key_id)["KeyMetadata"]["Arn"]
    expect_error(lambda: stranger.encrypt(KeyId=arn, Plaintext=b"x"), "AccessDeniedException")
    grant = admin.create_grant(
        KeyId=key_id,
        GranteePrincipal=EVE,
        RetiringPrincipal=ADMIN.principal_arn,
        Operations=["Encrypt", "Decrypt", "DescribeKey"],
    )
    assert len(grant["GrantId"]) == 64
    blob = stranger.encrypt(KeyId=arn, Plaintext=b"granted")["CiphertextBlob"]
    with_token = stranger.decrypt(CiphertextBlob=blob, GrantTokens=[grant["GrantToken"]])
    assert with_token["Plaintext"] == b"granted"
    assert stranger.describe_key(KeyId=arn)["KeyMetadata"]["KeyId"] == key_id
    caplog.set_level(logging.INFO, logger="nitrokms.sim.kms")
    expect_error(
        lambda: stranger.generate_data_key(KeyId=arn, KeySpec="AES_256"), "AccessDeniedException"
    )
    assert "GenerateDataKey is not among its operations" in denial_log(caplog)
    (entry,) = admin.list_grants(KeyId=key_id)["Grants"]
    assert entry["GrantId"] == grant["GrantId"]
    assert (entry["KeyId"], entry["GranteePrincipal"]) == (arn, EVE)
    assert entry["RetiringPrincipal"] == ADMIN.principal_arn
    assert entry["Operations"] == ["Encrypt", "Decrypt", "DescribeKey"]
    assert entry["IssuingAccount"] == f"arn:aws:iam::{ACCOUNT}:root"
    retirable = admin.list_retirable_grants(RetiringPrincipal=ADMIN.principal_arn)["Grants"]
    assert grant["GrantId"] in [g["GrantId"] for g in retirable]
    admin.retire_grant(GrantToken=grant["GrantToken"])
    assert admin.list_grants(KeyId=key_id)["Grants"] == []
    expect_error(lambda: stranger.decrypt(CiphertextBlob=blob), "AccessDeniedException")
    assert "grants: none on this key" in denial_log(caplog)
    expect_error(
        lambda: stranger.decrypt(CiphertextBlob=blob, GrantTokens=[grant["GrantToken"]]),
        "AccessDeniedException",
    )
    expect_error(lambda: admin.retire_grant(GrantToken=grant["GrantToken"]), "NotFoundException")


@pytest.mark.parametrize(
    "case",
    [
        (
            {"EncryptionContextSubset": {"tenant": "a"}},
            [{"tenant": "a"}, {"tenant": "a", "extra": "x"}],
            [{}, {"tenant": "b"}, {"Tenant": "a"}],
        ),
        (
            {"EncryptionContextEquals": {"tenant": "a"}},
            [{"tenant": "a"}],
            [{}, {"tenant": "a", "extra": "x"}, {"tenant": "A"}],
        ),
    ],
    ids=["subset", "equals"],
)
def test_encryption_context_constraints(
    admin: Any, stranger: Any, key_id: str, caplog: pytest.LogCaptureFixture, case: Any
) -> None:
    constraint, allowed, refused = case
    arn = admin.describe_key(KeyId=key_id)["KeyMetadata"]["Arn"]
    admin.create_grant(
        KeyId=key_id,
        GranteePrincipal=EVE,
        Operations=["GenerateDataKey", "Decrypt", "DescribeKey"],
        Constraints=constraint,
    )
    for context in allowed:
        made = stranger.generate_data_key(KeyId=arn, KeySpec="AES_128", EncryptionContext=context)
        blob = made["CiphertextBlob"]
        assert stranger.decrypt(CiphertextBlob=blob, EncryptionContext=context)["Plaintext"]
    assert stranger.describe_key(KeyId=arn)["KeyMetadata"]["Arn"] == arn
    caplog.set_level(logging.WARNING, logger="nitrokms.sim.kms")
    for context in refused:
        expect_error(
            functools.partial(
                stranger.generate_data_key, KeyId=arn, KeySpec="AES_128", EncryptionContext=context
            ),
            "AccessDeniedException",
        )
        assert next(iter(constraint)) in denial_log(caplog)
    (entry,) = admin.list_grants(KeyId=key_id)["Grants"]
    assert entry["Constraints"] == constraint


def test_a_repeated_name_with_the_same_parameters_returns_the_same_grant(
    admin: Any, key_id: str
) -> None:
    def create(*operations: str) -> Any:
        return admin.create_grant(
            KeyId=key_id, GranteePrincipal=EVE, Operations=list(operations), Name="app-grant"
        )

    first, again = create("Decrypt"), create("Decrypt")
    assert first["GrantId"] == again["GrantId"]
    assert first["GrantToken"] != again["GrantToken"]
    different = create("Decrypt", "Encrypt")
    assert different["GrantId"] != first["GrantId"]
    assert len(admin.list_grants(KeyId=key_id)["Grants"]) == 2
    filtered = admin.list_grants(KeyId=key_id, GrantId=first["GrantId"])["Grants"]
    assert [g["Name"] for g in filtered] == ["app-grant"]
    admin.retire_grant(GrantToken=again["GrantToken"])
    expect_error(lambda: admin.retire_grant(GrantToken=first["GrantToken"]), "NotFoundException")


def test_create_grant_refuses_what_the_key_cannot_do(admin: Any, key_id: str) -> None:
    signing = admin.create_key(KeySpec="ECC_NIST_P256", KeyUsage="SIGN_VERIFY")["KeyMetadata"]
    rsa_key = admin.create_key(KeySpec="RSA_2048", KeyUsage="ENCRYPT_DECRYPT")["KeyMetadata"]

    def create(key: str, operations: list[str], **extra: Any) -> Callable[[], Any]:
        extra.setdefault("GranteePrincipal", EVE)
        return lambda: admin.create_grant(KeyId=key, Operations=operations, **extra)

    subset = {"EncryptionContextSubset": {"a": "b"}}
    for call, code in (
        (create(key_id, ["Sign"]), "ValidationException"),
        (create(rsa_key["KeyId"], ["GenerateDataKey"]), "ValidationException"),
        (create(signing["KeyId"], ["Sign"], Constraints=subset), "ValidationException"),
        (create(key_id, ["Decrypt", "Frobnicate"]), "ValidationException"),
        (create(key_id, []), "ValidationException"),
        (create(key_id, ["Decrypt"], GranteePrincipal="eve"), "InvalidArnException"),
        (create(f"alias/none-{key_id[:8]}", ["Decrypt"]), "NotFoundException"),
        (create(key_id, ["Decrypt"], Name="bad name"), "ValidationException"),
        (create(key_id, ["Decrypt"], DryRun=True), "DryRunOperationException"),
    ):
        expect_error(call, code)
    expect_error(
        lambda: admin.create_grant(
            KeyId=key_id, GranteeServicePrincipal="logs.amazonaws.com", Operations=["Decrypt"]
        ),
        "UnsupportedOperationException",
    )
    assert admin.list_grants(KeyId=key_id)["Grants"] == []
    create(signing["KeyId"], ["DescribeKey", "Verify"])()
    create(rsa_key["KeyId"], ["DescribeKey"], Constraints=subset)()
    admin.disable_key(KeyId=key_id)
    expect_error(create(key_id, ["Decrypt"]), "DisabledException")


@pytest.mark.parametrize(
    "call",
    [
        lambda c, k, t: c.encrypt(KeyId=k, Plaintext=b"x", GrantTokens=t),
        lambda c, k, t: c.generate_data_key(KeyId=k, KeySpec="AES_256", GrantTokens=t),
        lambda c, k, t: c.describe_key(KeyId=k, GrantTokens=t),
        lambda c, k, t: c.create_grant(
            KeyId=k, GranteePrincipal=EVE, Operations=["Decrypt"], GrantTokens=t
        ),
        lambda c, k, t: c.retire_grant(GrantToken=t[-1]),
    ],
)
def test_tokens_from_elsewhere_are_invalid_grant_tokens(
    admin: Any, key_id: str, tmp_path: Path, pki: SimulatedPKI, call: Any
) -> None:
    with LocalKMS(tmp_path, CREDENTIALS, pki.root_certificate_pem) as other:
        other_admin = client_for(other.url, other.ca_path, ADMIN)
        other_key = other_admin.create_key()["KeyMetadata"]["KeyId"]
        foreign = other_admin.create_grant(
            KeyId=other_key, GranteePrincipal=EVE, Operations=["Decrypt"]
        )["GrantToken"]
    good = admin.create_grant(KeyId=key_id, GranteePrincipal=EVE, Operations=["Decrypt"])
    tampered = good["GrantToken"][:-2] + ("AA" if good["GrantToken"][-2:] != "AA" else "BA")
    for tokens in ([foreign], [good["GrantToken"], tampered], ["not-a-token"]):
        message = expect_error(
            functools.partial(call, admin, key_id, tokens), "InvalidGrantTokenException"
        )
        assert message == "The grant token is invalid."


def test_who_may_retire_and_revoke(admin: Any, stranger: Any, key_id: str) -> None:
    def grant(**extra: Any) -> str:
        return str(admin.create_grant(KeyId=key_id, GranteePrincipal=EVE, **extra)["GrantId"])

    plain = grant(Operations=["Decrypt"])
    expect_error(
        lambda: stranger.retire_grant(KeyId=f"arn:aws:kms:us-east-1:{ACCOUNT}:key/{key_id}",
                                      GrantId=plain),
        "AccessDeniedException",
    )  # fmt: skip
    key_arn = f"arn:aws:kms:us-east-1:{ACCOUNT}:key/{key_id}"
    self_retiring = grant(Operations=["Decrypt", "RetireGrant"])
    stranger.retire_grant(KeyId=key_arn, GrantId=self_retiring)
    retired_by_name = grant(Operations=["Decrypt"], RetiringPrincipal=EVE)
    stranger.retire_grant(KeyId=key_arn, GrantId=retired_by_name)
    expect_error(
        lambda: stranger.revoke_grant(KeyId=key_arn, GrantId=plain), "AccessDeniedException"
    )
    expect_error(
        lambda: stranger.list_retirable_grants(RetiringPrincipal=ADMIN.principal_arn),
        "AccessDeniedException",
    )
    expect_error(lambda: admin.revoke_grant(KeyId=key_id, GrantId="f" * 64), "NotFoundException")
    expect_error(
        lambda: admin.revoke_grant(KeyId=key_id, GrantId="not-an-id"), "InvalidGrantIdException"
    )
    admin.revoke_grant(KeyId=key_id, GrantId=plain)
    assert admin.list_grants(KeyId=key_id)["Grants"] == []


def test_a_grant_with_create_grant_hands_on_no_more_than_it_holds(
    admin: Any, stranger: Any, key_id: str, caplog: pytest.LogCaptureFixture
) -> None:
    key_arn = f"arn:aws:kms:us-east-1:{ACCOUNT}:key/{key_id}"
    admin.create_grant(
        KeyId=key_id,
        GranteePrincipal=EVE,
        Operations=["CreateGrant", "Decrypt", "Encrypt"],
        Constraints={"EncryptionContextSubset": {"tenant": "a"}},
    )
    caplog.set_level(logging.WARNING, logger="nitrokms.sim.kms")

    def delegate(operations: list[str], constraints: dict[str, Any] | None) -> Callable[[], Any]:
        extra = {"Constraints": constraints} if constraints else {}
        return lambda: stranger.create_grant(
            KeyId=key_arn, GranteePrincipal=ENCLAVE.principal_arn, Operations=operations, **extra
        )

    delegate(["Decrypt"], {"EncryptionContextSubset": {"tenant": "a"}})()
    delegate(["Decrypt"], {"EncryptionContextEquals": {"tenant": "a", "app": "x"}})()
    expect_error(delegate(["Decrypt"], None), "AccessDeniedException")
    assert "less strict" in denial_log(caplog)
    expect_error(
        delegate(["Decrypt", "GenerateDataKey"], {"EncryptionContextSubset": {"tenant": "a"}}),
        "AccessDeniedException",
    )
    assert "beyond this grant's" in denial_log(caplog)
    assert len(admin.list_grants(KeyId=key_id)["Grants"]) == 3


def test_key_policy_conditions_on_create_grant(admin: Any, stranger: Any) -> None:
    only_decrypt = statement(
        EVE,
        "kms:CreateGrant",
        Condition={
            "ForAllValues:StringEquals": {"kms:GrantOperations": ["Decrypt", "DescribeKey"]},
            "Bool": {"kms:GrantIsForAWSResource": "false"},
            "StringEquals": {"kms:GranteePrincipal": ENCLAVE.principal_arn},
        },
    )
    key = admin.create_key(Policy=policy_of(only_decrypt))["KeyMetadata"]

    def create(operations: list[str], grantee: str = ENCLAVE.principal_arn) -> Callable[[], Any]:
        return lambda: stranger.create_grant(
            KeyId=key["Arn"], GranteePrincipal=grantee, Operations=operations
        )

    assert create(["Decrypt"])()["GrantId"]
    expect_error(create(["Decrypt", "Encrypt"]), "AccessDeniedException")
    expect_error(create(["Decrypt"], grantee=EVE), "AccessDeniedException")
    for_aws_only = statement(
        EVE, "kms:CreateGrant", Condition={"Bool": {"kms:GrantIsForAWSResource": "true"}}
    )
    service_key = admin.create_key(Policy=policy_of(for_aws_only))["KeyMetadata"]
    expect_error(
        lambda: stranger.create_grant(
            KeyId=service_key["Arn"], GranteePrincipal=EVE, Operations=["Decrypt"]
        ),
        "AccessDeniedException",
    )
